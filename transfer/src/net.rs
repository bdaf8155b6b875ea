//! Connecting with a deadline, and the socket settings every connection
//! that carries file data gets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::{debug, info, warn};

/// Whether `e` says the process (`EMFILE`) or the system (`ENFILE`) ran out
/// of file descriptors: a transient condition to back off from, never a
/// reason to forget state (a folder that cannot be opened now still holds
/// its files).
pub fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(e),
        Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
    )
}

/// First pause of an accept loop after a failed `accept`.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest pause of an accept loop between failed `accept`s.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Backoff of an accept loop whose `accept` fails (out of file descriptors,
/// mostly): the pause doubles from [`ACCEPT_BACKOFF_MIN`] to
/// [`ACCEPT_BACKOFF_MAX`] while failures go on, so the loop neither spins
/// nor stops, and the queued connections wait in the listen backlog until
/// descriptors are free again. Logs one warning per episode and one line
/// when it ends.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    /// Records a failed accept and returns how long to pause.
    pub fn failed(&mut self, what: &str, e: &std::io::Error) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let pause = ACCEPT_BACKOFF_MIN
            .saturating_mul(1u32 << (self.failures - 1).min(16))
            .min(ACCEPT_BACKOFF_MAX);
        if self.failures == 1 {
            if is_fd_exhaustion(e) {
                warn!(server = what, error = %e, "out of file descriptors: accepting connections more slowly until some are free (raise `ulimit -n`?)");
            } else {
                warn!(server = what, error = %e, "accept failed; backing off");
            }
        } else {
            debug!(server = what, error = %e, ?pause, failures = self.failures, "accept still failing");
        }
        pause
    }

    /// Records a successful accept (ends an episode of failures).
    pub fn succeeded(&mut self, what: &str) {
        if self.failures > 0 {
            info!(
                server = what,
                failures = self.failures,
                "accepting connections again"
            );
            self.failures = 0;
        }
    }

    /// Failed accepts in the current episode.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Binds a listening socket. `[::]` (the default of `peer serve` and
/// `index-server`) is dual-stack: one socket with `IPV6_V6ONLY` off
/// accepts IPv6 and IPv4 (as IPv4-mapped addresses), whatever the
/// system's `bindv6only` says. Where IPv6 is unavailable (a kernel or
/// container without it) it falls back to `0.0.0.0` on the same port and
/// says so in the log. Any other address is bound as given.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if addr.ip() != IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        return bind_one(addr, None);
    }
    match bind_one(addr, Some(false)) {
        Ok(listener) => Ok(listener),
        Err(e) if ipv6_unavailable(&e) => {
            let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
            info!(error = %e, listen = %v4, "IPv6 is unavailable here; listening on IPv4 only");
            bind_one(v4, None)
        }
        Err(e) => Err(e),
    }
}

/// Errors that mean this machine has no IPv6 (not that the port is taken).
fn ipv6_unavailable(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    [
        Errno::AFNOSUPPORT,
        Errno::ADDRNOTAVAIL,
        Errno::PROTONOSUPPORT,
    ]
    .iter()
    .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
}

fn bind_one(addr: SocketAddr, v6_only: Option<bool>) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(only) = v6_only {
        rustix::net::sockopt::set_ipv6_v6only(&socket, only)?;
    }
    // What `TcpListener::bind` does: rebinding right after a restart works.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Connects to `addr` (`HOST:PORT`, resolved now) within `timeout`, with
/// the settings of [`tune_socket`].
pub async fn connect_tcp(addr: &str, timeout: Duration) -> Result<TcpStream, std::io::Error> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"))??;
    tune_socket(&stream);
    Ok(stream)
}

/// A socket with `SO_REUSEADDR` and `SO_REUSEPORT` bound to `port` on the
/// unspecified address of `family`'s kind: several such sockets may share
/// the port, one connection each (TCP hole punching: a connection made
/// from the same port as the index connection leaves a NAT at the port
/// the index saw).
fn shared_port_socket(family: SocketAddr, port: u16) -> std::io::Result<tokio::net::TcpSocket> {
    let (socket, any) = match family {
        SocketAddr::V4(_) => (
            tokio::net::TcpSocket::new_v4()?,
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ),
        SocketAddr::V6(_) => (
            tokio::net::TcpSocket::new_v6()?,
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ),
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(SocketAddr::new(any, port))?;
    Ok(socket)
}

/// [`connect_tcp`] from a port other sockets may share
/// ([`connect_from_port`]): the index connection of a peer that may punch
/// holes. Returns the stream and its local port.
pub async fn connect_shareable(addr: &str, timeout: Duration) -> std::io::Result<(TcpStream, u16)> {
    let connect = async {
        let target = tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to no address")))?;
        shared_port_socket(target, 0)?.connect(target).await
    };
    let stream = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"))??;
    tune_socket(&stream);
    let port = stream.local_addr()?.port();
    Ok((stream, port))
}

/// Connects to `peer` from local `port` (shared with a connection made by
/// [`connect_shareable`]), trying again until `timeout`: one side of a
/// TCP simultaneous open, the other side connecting to us at the same
/// time. A NAT's filter drops the first SYN that arrives before the other
/// side's left; the kernel sends it again (1 s later), and an attempt
/// refused outright (a RST) is made again after a short pause.
pub async fn connect_from_port(
    port: u16,
    peer: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let socket = shared_port_socket(peer, port)?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, socket.connect(peer)).await {
            Ok(Ok(stream)) => {
                tune_socket(&stream);
                return Ok(stream);
            }
            Ok(Err(e)) if tokio::time::Instant::now() + Duration::from_millis(100) < deadline => {
                tracing::debug!(%peer, error = %e, "punch attempt failed; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no simultaneous open with {peer} within {timeout:?}"),
                ))
            }
        }
    }
}

/// Settings for a connection that may carry file data, either way: Nagle's
/// algorithm off (requests are small and pipelined) and, on a loopback
/// connection, a congestion control that does not pace ([`unpaced_on_loopback`]).
pub fn tune_socket(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    unpaced_on_loopback(stream);
}

/// Congestion controls that pace every connection themselves.
const PACING: &[&str] = &["bbr"];

/// Non-pacing congestion controls to use instead, best first (`reno` is the
/// one Linux lets any process choose).
const UNPACED: &[&str] = &["cubic", "reno"];

/// On a loopback connection whose congestion control paces its sending
/// (BBR, the system default on some machines, including the ones the
/// benchmarks ran on), switches to one that does not.
///
/// Pacing protects a queue at a network bottleneck, and a loopback path
/// has none. What it does there is cap a stream near the rate the receiver
/// last showed: a 1 GiB download from a peer on the same machine ran at
/// 1.6-1.7 GB/s paced against 2.0-2.3 GB/s unpaced (docs/benchmarks.md).
/// Other connections keep the system's choice. Failures only cost speed,
/// so they are logged at debug level and ignored.
pub fn unpaced_on_loopback(stream: &TcpStream) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    if !peer.ip().to_canonical().is_loopback() {
        return;
    }
    let Ok(current) = rustix::net::sockopt::tcp_congestion(stream) else {
        return;
    };
    if !PACING.contains(&current.as_str()) {
        return;
    }
    for &algorithm in UNPACED {
        match rustix::net::sockopt::set_tcp_congestion(stream, algorithm) {
            Ok(()) => {
                debug!(%peer, from = %current, to = algorithm, "loopback connection: congestion control without pacing");
                return;
            }
            Err(e) => debug!(%peer, algorithm, error = %e, "cannot use this congestion control"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_grows_caps_and_resets() {
        let emfile = std::io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        assert!(is_fd_exhaustion(&emfile));
        assert!(is_fd_exhaustion(&std::io::Error::from_raw_os_error(
            rustix::io::Errno::NFILE.raw_os_error()
        )));
        assert!(!is_fd_exhaustion(&std::io::Error::other("x")));
        let mut backoff = AcceptBackoff::default();
        let pauses: Vec<Duration> = (0..10).map(|_| backoff.failed("t", &emfile)).collect();
        assert_eq!(pauses[0], ACCEPT_BACKOFF_MIN);
        assert_eq!(pauses[1], ACCEPT_BACKOFF_MIN * 2);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*pauses.last().unwrap(), ACCEPT_BACKOFF_MAX);
        backoff.succeeded("t");
        assert_eq!(backoff.failures(), 0);
        assert_eq!(backoff.failed("t", &emfile), ACCEPT_BACKOFF_MIN);
    }

    #[tokio::test]
    async fn loopback_connections_do_not_pace() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let client = connect_tcp(&addr, Duration::from_secs(5)).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let untouched = TcpStream::connect(&addr).await.unwrap();
        let system_default = rustix::net::sockopt::tcp_congestion(&untouched).unwrap();
        tune_socket(&server);
        for stream in [&client, &server] {
            assert!(stream.nodelay().unwrap());
            let now = rustix::net::sockopt::tcp_congestion(stream).unwrap();
            if PACING.contains(&system_default.as_str()) {
                assert!(UNPACED.contains(&now.as_str()), "still {now}");
            } else {
                assert_eq!(now, system_default, "a non-pacing default is kept");
            }
        }
    }
}
