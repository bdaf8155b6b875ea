//! Connecting with a deadline, and the socket settings every connection
//! that carries file data gets.

use std::time::Duration;

use tokio::net::TcpStream;
use tracing::debug;

/// Connects to `addr` (`HOST:PORT`, resolved now) within `timeout`, with
/// the settings of [`tune_socket`].
pub async fn connect_tcp(addr: &str, timeout: Duration) -> Result<TcpStream, std::io::Error> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"))??;
    tune_socket(&stream);
    Ok(stream)
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
