//! Connecting with a deadline, and the socket settings every connection
//! that carries file data gets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use common::hello::Protocol;
use common::identity::PeerId;
use common::secure::{self, SecureStream, Security};
use common::wire::WireError;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::{debug, info, warn};

/// A TCP connection after its hello and (unless `--insecure`) its Noise
/// handshake: frames are read and written through it unchanged.
pub type Conn = SecureStream<OwnedReadHalf, OwnedWriteHalf>;
/// The read half of a [`Conn`].
pub type ConnReader = common::secure::SecureRead<OwnedReadHalf>;
/// The write half of a [`Conn`].
pub type ConnWriter = common::secure::SecureWrite<OwnedWriteHalf>;

/// Most listed ids remembered ([`note_listed`]); past it the table starts
/// over (a source dialed after that is checked once it is listed again).
pub const MAX_LISTED: usize = 65_536;

static LISTED: std::sync::Mutex<Option<std::collections::HashMap<String, PeerId>>> =
    std::sync::Mutex::new(None);

/// Notes the id the index listed for the source at `addr` (`None`: the
/// index listed none, e.g. an `--insecure` index): a later connection to
/// `addr` by the download engine must prove that id, or it is refused as
/// an impostor (see `download::source`).
pub fn note_listed(addr: &str, id: Option<PeerId>) {
    let mut listed = LISTED.lock().unwrap_or_else(|p| p.into_inner());
    let table = listed.get_or_insert_with(Default::default);
    match id {
        Some(id) => {
            if table.len() >= MAX_LISTED && !table.contains_key(addr) {
                table.clear();
            }
            table.insert(addr.to_string(), id);
        }
        None => {
            table.remove(addr);
        }
    }
}

/// The id last listed for the source at `addr` ([`note_listed`]).
pub fn listed_id(addr: &str) -> Option<PeerId> {
    let listed = LISTED.lock().unwrap_or_else(|p| p.into_inner());
    listed.as_ref()?.get(addr).copied()
}

/// The TCP stream under a clear-text [`Conn`] (`--insecure`, or the
/// relay's own leg, which carries two peers' end-to-end session); `None`
/// (the connection dropped) when it encrypts.
pub fn into_tcp(conn: Conn) -> Option<TcpStream> {
    let (r, w) = conn.into_clear()?;
    r.reunite(w).ok()
}

/// Client side of the connection setup on a connected `stream`, with the
/// process's [`Security`]: hello, handshake, and the server's feature bits.
/// With `expect`, a server that proves another [`PeerId`] is refused
/// (`common::secure::SecureError::WrongPeer`).
pub async fn client(
    stream: TcpStream,
    protocol: Protocol,
    expect: Option<PeerId>,
) -> Result<(Conn, u8), WireError> {
    client_with(stream, protocol, expect, &Security::process()).await
}

/// [`client`] with the given security (tests, and programs that hold
/// several identities).
pub async fn client_with(
    mut stream: TcpStream,
    protocol: Protocol,
    expect: Option<PeerId>,
    security: &Security,
) -> Result<(Conn, u8), WireError> {
    let (session, features) = secure::client(&mut stream, protocol, security, expect).await?;
    let (r, w) = stream.into_split();
    Ok((SecureStream::new(r, w, session), features))
}

/// Server side of the connection setup on an accepted `stream`, with the
/// process's [`Security`] (see `common::secure::server` for `busy` and
/// `features`). Returns the protocol the client asked for.
pub async fn accept(
    stream: TcpStream,
    accepted: &[Protocol],
    busy: impl FnOnce(Protocol) -> bool,
    features: impl FnOnce(Protocol) -> u8,
) -> Result<(Protocol, Conn), WireError> {
    accept_with(stream, accepted, busy, features, &Security::process()).await
}

/// [`accept`] with the given security.
pub async fn accept_with(
    mut stream: TcpStream,
    accepted: &[Protocol],
    busy: impl FnOnce(Protocol) -> bool,
    features: impl FnOnce(Protocol) -> u8,
    security: &Security,
) -> Result<(Protocol, Conn), WireError> {
    let (protocol, session) =
        secure::server(&mut stream, accepted, busy, features, security).await?;
    let (r, w) = stream.into_split();
    Ok((protocol, SecureStream::new(r, w, session)))
}

/// Connects to `addr` within `timeout` and runs [`client`].
pub async fn connect(addr: &str, timeout: Duration, protocol: Protocol) -> Result<Conn, WireError> {
    let stream = connect_tcp(addr, timeout).await?;
    Ok(client(stream, protocol, None).await?.0)
}

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
    socket.listen(LISTEN_BACKLOG)
}

/// Connections the kernel queues before they are accepted (it caps this
/// at `net.core.somaxconn`, 4096 on current kernels). tokio's default,
/// 1024, is smaller than the herd of peers that log in again after an
/// index restart: a SYN beyond the queue is dropped and retried by the
/// client's kernel only after 1 s (then 3 s, 7 s).
pub const LISTEN_BACKLOG: u32 = 8192;

/// Connects to `addr` (`HOST:PORT`, resolved now) within `timeout`, with
/// the settings of [`tune_socket`]. A name with several addresses (IPv6
/// and IPv4) is connected with Happy Eyeballs ([`connect_addrs`]).
/// Every outgoing TCP connection of the workspace's nodes is made here or
/// by [`connect_addrs`], so the dial policy lives in one place.
pub async fn connect_tcp(addr: &str, timeout: Duration) -> Result<TcpStream, std::io::Error> {
    let connect = async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
        if addrs.is_empty() {
            return Err(std::io::Error::other(format!(
                "{addr} resolves to no address"
            )));
        }
        race_connect(&addrs, CONNECTION_ATTEMPT_DELAY, TcpStream::connect).await
    };
    let (stream, _) = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"))??;
    tune_socket(&stream);
    Ok(stream)
}

/// RFC 8305 §5's "Connection Attempt Delay": how long one connection
/// attempt runs alone before the next address is tried beside it (the
/// RFC's recommended 250 ms).
pub const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Connects to the first of `addrs` to answer, with Happy Eyeballs
/// (RFC 8305): IPv6 first, families interleaved ([`happy_eyeballs_order`]),
/// the next attempt started [`CONNECTION_ATTEMPT_DELAY`] after the last
/// (or at once when it fails); the first connection made wins and every
/// other attempt is dropped (its socket closed). Within `timeout` in all,
/// with the settings of [`tune_socket`]. Returns the stream and the
/// address that won.
pub async fn connect_addrs(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    let raced = race_connect(addrs, CONNECTION_ATTEMPT_DELAY, TcpStream::connect);
    let (stream, won) = tokio::time::timeout(timeout, raced)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"))??;
    tune_socket(&stream);
    Ok((stream, won))
}

/// This host's source address toward the rest of the network in `family`'s
/// IP family (IPv6 when `v6`): the address the kernel would pick for a
/// packet to a global address (a "connected" UDP socket to a reserved
/// documentation address: a route lookup, no packet is sent). `None` when
/// the host has no route there (no IPv6, or no IPv4, or only loopback
/// and link-local addresses).
pub fn source_address(v6: bool) -> Option<IpAddr> {
    let (bind, probe): (SocketAddr, SocketAddr) = if v6 {
        (
            (Ipv6Addr::UNSPECIFIED, 0).into(),
            (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9).into(),
        )
    } else {
        (
            (Ipv4Addr::UNSPECIFIED, 0).into(),
            (Ipv4Addr::new(192, 0, 2, 1), 9).into(),
        )
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(probe).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    let link_local = match ip {
        IpAddr::V6(a) => a.is_unicast_link_local(),
        IpAddr::V4(a) => a.is_link_local(),
    };
    (!ip.is_unspecified() && !ip.is_loopback() && !link_local).then_some(ip)
}

/// The order RFC 8305 §4 tries addresses in: duplicates dropped, IPv6
/// first, then alternating families (v6, v4, v6, v4, ...), each family in
/// the order given. IPv4-mapped IPv6 addresses count as IPv4.
pub fn happy_eyeballs_order(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut seen = std::collections::HashSet::new();
    let (mut v6, mut v4) = (Vec::new(), Vec::new());
    for a in addrs {
        let a = SocketAddr::new(a.ip().to_canonical(), a.port());
        if seen.insert(a) {
            if a.is_ipv6() {
                v6.push(a);
            } else {
                v4.push(a);
            }
        }
    }
    let mut order = Vec::with_capacity(v6.len() + v4.len());
    let (mut six, mut four) = (v6.into_iter(), v4.into_iter());
    loop {
        match (six.next(), four.next()) {
            (None, None) => return order,
            (a, b) => order.extend(a.into_iter().chain(b)),
        }
    }
}

/// Happy Eyeballs with any `dial` (a TCP connect, or a fake in tests):
/// attempts start in [`happy_eyeballs_order`], one every `delay` while
/// none has finished, the next at once when one fails; the first to
/// succeed wins, and the attempts still running are aborted. `Err`: every
/// attempt failed (the last error, naming its address, keeping its kind).
pub async fn race_connect<T, F, Fut>(
    addrs: &[SocketAddr],
    delay: Duration,
    mut dial: F,
) -> std::io::Result<(T, SocketAddr)>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let order = happy_eyeballs_order(addrs);
    // One address: its error as it came (callers name the address).
    let many = order.len() > 1;
    let mut next = order.into_iter().peekable();
    // Aborted when dropped: the losers of the race go with it.
    let mut attempts = tokio::task::JoinSet::new();
    let mut last_error = None;
    loop {
        if let Some(addr) = next.next() {
            let attempt = dial(addr);
            attempts.spawn(async move { (addr, attempt.await) });
        }
        if attempts.is_empty() {
            return Err(last_error.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to connect to")
            }));
        }
        // Until the delay passes (then the next starts) or an attempt
        // ends (a failure starts the next at once).
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok((addr, Ok(won)))) => return Ok((won, addr)),
                Some(Ok((addr, Err(e)))) => {
                    debug!(%addr, error = %e, "connection attempt failed");
                    last_error = Some(if many {
                        std::io::Error::new(e.kind(), format!("{addr}: {e}"))
                    } else {
                        e
                    });
                }
                Some(Err(e)) => {
                    last_error = Some(std::io::Error::other(format!(
                        "a connection attempt ended: {e}"
                    )));
                }
                None => {}
            },
            _ = tokio::time::sleep(delay), if next.peek().is_some() => {}
        }
    }
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

    fn v6(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv6Addr::LOCALHOST, port))
    }

    fn v4(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    #[test]
    fn happy_eyeballs_order_interleaves_families_v6_first() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:5".parse().unwrap();
        let order = happy_eyeballs_order(&[v4(1), v4(2), v6(3), v4(1), mapped, v6(4)]);
        let canonical_mapped: SocketAddr = "10.0.0.1:5".parse().unwrap();
        assert_eq!(order, [v6(3), v4(1), v6(4), v4(2), canonical_mapped]);
        assert!(happy_eyeballs_order(&[]).is_empty());
    }

    /// A fake dial: each address answers after its delay (`None`: never),
    /// with `Ok(address)` or a refusal; every address dialed is noted.
    fn fake_dial(
        plan: Vec<(SocketAddr, Option<Duration>, bool)>,
        dialed: std::sync::Arc<std::sync::Mutex<Vec<(SocketAddr, Duration)>>>,
        start: tokio::time::Instant,
    ) -> impl FnMut(
        SocketAddr,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<SocketAddr>> + Send>,
    > {
        move |addr| {
            dialed.lock().unwrap().push((addr, start.elapsed()));
            let (_, after, ok) = *plan.iter().find(|(a, _, _)| *a == addr).unwrap();
            Box::pin(async move {
                match after {
                    None => std::future::pending().await,
                    Some(d) => tokio::time::sleep(d).await,
                }
                if ok {
                    Ok(addr)
                } else {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "refused",
                    ))
                }
            })
        }
    }

    type Dialed = std::sync::Arc<std::sync::Mutex<Vec<(SocketAddr, Duration)>>>;

    /// The IPv6 address never answers: IPv4 is tried after the connection
    /// attempt delay (250 ms, on tokio's paused clock) and wins.
    #[tokio::test(start_paused = true)]
    async fn a_silent_ipv6_address_loses_to_ipv4_after_the_delay() {
        let dialed = Dialed::default();
        let start = tokio::time::Instant::now();
        let plan = vec![
            (v6(1), None, true),
            (v4(2), Some(Duration::from_millis(10)), true),
        ];
        let (won, addr) = race_connect(
            &[v4(2), v6(1)],
            CONNECTION_ATTEMPT_DELAY,
            fake_dial(plan, dialed.clone(), start),
        )
        .await
        .unwrap();
        assert_eq!((won, addr), (v4(2), v4(2)));
        let dialed = dialed.lock().unwrap().clone();
        assert_eq!(dialed[0], (v6(1), Duration::ZERO), "IPv6 first");
        assert_eq!(dialed[1], (v4(2), CONNECTION_ATTEMPT_DELAY));
        assert_eq!(
            start.elapsed(),
            CONNECTION_ATTEMPT_DELAY + Duration::from_millis(10)
        );
    }

    /// Both answer: IPv6 wins and IPv4 is never dialed; an IPv6 address
    /// that refuses at once starts IPv4 at once (no delay); when all fail
    /// the last error says which address.
    #[tokio::test(start_paused = true)]
    async fn ipv6_wins_when_both_answer_and_a_refusal_moves_on_at_once() {
        let dialed = Dialed::default();
        let start = tokio::time::Instant::now();
        let plan = vec![
            (v6(1), Some(Duration::from_millis(20)), true),
            (v4(2), Some(Duration::from_millis(1)), true),
        ];
        let (_, addr) = race_connect(
            &[v4(2), v6(1)],
            CONNECTION_ATTEMPT_DELAY,
            fake_dial(plan, dialed.clone(), start),
        )
        .await
        .unwrap();
        assert_eq!(addr, v6(1));
        assert_eq!(dialed.lock().unwrap().len(), 1, "IPv4 was dialed too");

        let dialed = Dialed::default();
        let start = tokio::time::Instant::now();
        let plan = vec![
            (v6(1), Some(Duration::from_millis(5)), false),
            (v4(2), Some(Duration::from_millis(5)), true),
        ];
        let (_, addr) = race_connect(
            &[v6(1), v4(2)],
            CONNECTION_ATTEMPT_DELAY,
            fake_dial(plan, dialed.clone(), start),
        )
        .await
        .unwrap();
        assert_eq!(addr, v4(2));
        assert_eq!(dialed.lock().unwrap()[1], (v4(2), Duration::from_millis(5)));

        let plan = vec![
            (v6(1), Some(Duration::from_millis(5)), false),
            (v4(2), Some(Duration::from_millis(5)), false),
        ];
        let e = race_connect(
            &[v6(1), v4(2)],
            CONNECTION_ATTEMPT_DELAY,
            fake_dial(plan, Dialed::default(), start),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(e.to_string().contains("127.0.0.1:2"), "{e}");
    }

    /// `true` (after one line saying so) when this machine has no IPv6
    /// loopback to test with.
    fn no_ipv6_loopback(test: &str) -> bool {
        match std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) {
            Ok(_) => false,
            Err(e) => {
                eprintln!("skipped {test}: no IPv6 loopback here ({e})");
                true
            }
        }
    }

    /// Real sockets on loopback: with listeners on ::1 and 127.0.0.1 the
    /// IPv6 one wins; when the IPv6 listener's accept queue is full (the
    /// kernel drops the SYN, so the attempt hangs) IPv4 wins, after the
    /// attempt delay.
    #[tokio::test]
    async fn happy_eyeballs_on_loopback_sockets() {
        if no_ipv6_loopback("happy_eyeballs_on_loopback_sockets") {
            return;
        }
        let four = tokio::net::TcpListener::bind(v4(0)).await.unwrap();
        let six = tokio::net::TcpListener::bind(v6(0)).await.unwrap();
        let addrs = [four.local_addr().unwrap(), six.local_addr().unwrap()];
        let (stream, won) = connect_addrs(&addrs, Duration::from_secs(5)).await.unwrap();
        assert_eq!(won, addrs[1]);
        assert!(stream.peer_addr().unwrap().is_ipv6());

        // A backlog of 0 holds one connection nobody accepts; the next
        // SYN is dropped.
        let socket = TcpSocket::new_v6().unwrap();
        socket.bind(v6(0)).unwrap();
        let full = socket.listen(0).unwrap();
        let full_addr = full.local_addr().unwrap();
        let _filler = TcpStream::connect(full_addr).await.unwrap();
        let started = std::time::Instant::now();
        let (stream, won) = connect_addrs(&[full_addr, addrs[0]], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(won, addrs[0], "IPv4 should win over the full IPv6 listener");
        assert!(stream.peer_addr().unwrap().is_ipv4());
        assert!(started.elapsed() >= CONNECTION_ATTEMPT_DELAY);
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
