//! Connecting with a deadline.

use std::time::Duration;

use tokio::net::TcpStream;

/// Connects to `addr` (`HOST:PORT`, resolved now) within `timeout`, with
/// Nagle's algorithm off (requests are small and pipelined).
pub async fn connect_tcp(addr: &str, timeout: Duration) -> Result<TcpStream, std::io::Error> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
