//! Async frame I/O over any stream, with a deadline on every whole frame.
//!
//! tokio sockets have no read timeout of their own, and a per-read timeout
//! lets a slowloris client drip one byte at a time forever. Here the wait
//! for a frame's first byte has its own (idle) deadline, and once it has
//! arrived the rest of the frame must arrive within `frame` time.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use crate::frame::{self, FrameError, LEN_PREFIX};
use crate::hello::{self, HelloError, HelloStatus, Protocol, HELLO_LEN};
use crate::limits::{FRAME_TIMEOUT, HELLO_TIMEOUT, MAX_FRAME_LEN};

/// Why a connection could not go on.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    // The cause is in the text, so it is a plain field, not a `source`
    // (see `crate::report`).
    #[error("connection error: {0}")]
    Io(std::io::Error),
    #[error("the other side closed the connection")]
    Closed,
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Hello(#[from] HelloError),
    #[error("unexpected message: {0}")]
    Unexpected(String),
}

impl From<std::io::Error> for WireError {
    fn from(e: std::io::Error) -> Self {
        WireError::Io(e)
    }
}

impl WireError {
    /// Whether the error is the other side misbehaving (as opposed to the network).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            WireError::Frame(_) | WireError::Hello(_) | WireError::Unexpected(_)
        )
    }
}

/// The deadlines used while reading frames.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Longest wait for the first byte of the next frame; `None` waits forever.
    pub idle: Option<Duration>,
    /// Longest time from a frame's first byte to its last.
    pub frame: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            idle: None,
            frame: FRAME_TIMEOUT,
        }
    }
}

impl Deadlines {
    pub fn with_idle(idle: Duration) -> Self {
        Deadlines {
            idle: Some(idle),
            frame: FRAME_TIMEOUT,
        }
    }
}

async fn with_deadline<T>(
    limit: Option<Duration>,
    what: &'static str,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, WireError> {
    let result = match limit {
        Some(d) => timeout(d, fut)
            .await
            .map_err(|_| WireError::Timeout(what))?,
        None => fut.await,
    };
    result.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            WireError::Closed
        } else {
            WireError::Io(e)
        }
    })
}

/// Reads one frame's payload into `buf`. `Ok(false)` means the other side
/// closed the connection cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
    deadlines: Deadlines,
) -> Result<bool, WireError> {
    let mut prefix = [0u8; LEN_PREFIX];
    let first = with_deadline(deadlines.idle, "the next message", r.read(&mut prefix[..1])).await?;
    if first == 0 {
        return Ok(false);
    }
    let rest = async {
        r.read_exact(&mut prefix[1..]).await?;
        let len = frame::parse_len(prefix, max).map_err(std::io::Error::other)?;
        buf.clear();
        buf.resize(len, 0);
        r.read_exact(buf).await?;
        Ok(())
    };
    match with_deadline(Some(deadlines.frame), "the rest of a message", rest).await {
        Err(WireError::Io(e)) if e.get_ref().is_some_and(|i| i.is::<FrameError>()) => {
            let inner = e.into_inner().and_then(|i| i.downcast::<FrameError>().ok());
            match inner {
                Some(fe) => Err(WireError::Frame(*fe)),
                None => Err(WireError::Closed),
            }
        }
        other => other.map(|_| true),
    }
}

/// Reads and decodes one message; `Ok(None)` on a clean close between frames.
pub async fn read_message<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    buf: &mut Vec<u8>,
    deadlines: Deadlines,
) -> Result<Option<T>, WireError> {
    if !read_frame(r, buf, MAX_FRAME_LEN, deadlines).await? {
        return Ok(None);
    }
    Ok(Some(frame::decode_payload(buf)?))
}

/// Reads one message where a close is an error.
pub async fn expect_message<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    buf: &mut Vec<u8>,
    deadlines: Deadlines,
) -> Result<T, WireError> {
    read_message(r, buf, deadlines)
        .await?
        .ok_or(WireError::Closed)
}

/// Queues one message without flushing (for pipelining several requests).
pub async fn write_message<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), WireError> {
    let bytes = frame::encode_frame(msg)?;
    w.write_all(&bytes).await?;
    Ok(())
}

/// Writes one message and flushes it.
pub async fn send_message<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), WireError> {
    write_message(w, msg).await?;
    w.flush().await?;
    Ok(())
}

/// Reads exactly `buf.len()` raw bytes (file data after a header) within `limit`.
pub async fn read_raw<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    limit: Duration,
) -> Result<(), WireError> {
    with_deadline(Some(limit), "file data", r.read_exact(buf))
        .await
        .map(|_| ())
}

/// Client side of the hello: send ours, check the answer.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    protocol: Protocol,
) -> Result<(), WireError> {
    client_handshake_features(s, protocol).await.map(|_| ())
}

/// [`client_handshake`] that also returns the server's feature bits
/// ([`hello::FEATURE_UPLOAD_QUEUE`]; 0 from older servers).
pub async fn client_handshake_features<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    protocol: Protocol,
) -> Result<u8, WireError> {
    s.write_all(&hello::client_hello(protocol)).await?;
    s.flush().await?;
    let mut answer = [0u8; HELLO_LEN];
    with_deadline(
        Some(HELLO_TIMEOUT),
        "the server's hello",
        s.read_exact(&mut answer),
    )
    .await?;
    hello::check_server_hello(&answer)?;
    Ok(hello::server_features(&answer))
}

/// Server side of the hello. With `busy`, the client is told to come back
/// later and the call fails with [`HelloError::Busy`].
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    protocol: Protocol,
    busy: bool,
) -> Result<(), WireError> {
    server_handshake_any(s, &[protocol], |_| busy)
        .await
        .map(|_| ())
}

/// Server side of the hello on a port that speaks several protocols.
/// Returns the protocol the client asked for. `busy` is asked, once the
/// protocol is known and acceptable, whether to turn the client away as
/// busy (so each protocol can have its own connection cap); then the call
/// fails with [`HelloError::Busy`].
pub async fn server_handshake_any<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    accepted: &[Protocol],
    busy: impl FnOnce(Protocol) -> bool,
) -> Result<Protocol, WireError> {
    server_handshake_features(s, accepted, busy, |_| 0).await
}

/// [`server_handshake_any`] whose answer carries `features(protocol)`
/// in its last byte (see [`hello::server_hello_with_features`]).
pub async fn server_handshake_features<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    accepted: &[Protocol],
    busy: impl FnOnce(Protocol) -> bool,
    features: impl FnOnce(Protocol) -> u8,
) -> Result<Protocol, WireError> {
    let mut theirs = [0u8; HELLO_LEN];
    with_deadline(
        Some(HELLO_TIMEOUT),
        "the client's hello",
        s.read_exact(&mut theirs),
    )
    .await?;
    let (mut status, protocol) = hello::check_client_hello_any(&theirs, accepted)?;
    if let Some(p) = protocol {
        if busy(p) {
            status = HelloStatus::Busy;
        }
    }
    let bits = match (status, protocol) {
        (HelloStatus::Ok, Some(p)) => features(p),
        _ => 0,
    };
    s.write_all(&hello::server_hello_with_features(status, bits))
        .await?;
    s.flush().await?;
    match (status, protocol) {
        (HelloStatus::Ok, Some(p)) => Ok(p),
        (HelloStatus::UnsupportedVersion, _) => Err(HelloError::VersionMismatch {
            ours: crate::limits::PROTOCOL_VERSION,
            theirs: u16::from_be_bytes([theirs[4], theirs[5]]),
        }
        .into()),
        (HelloStatus::Busy, _) => Err(HelloError::Busy.into()),
        _ => Err(HelloError::WrongProtocol.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index_proto::IndexRequest;

    #[tokio::test]
    async fn oversized_length_is_refused_before_allocation() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let _ = a.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]).await;
            // Keep the pipe open so a bug would hang instead of erroring.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let mut buf = Vec::new();
        let err = read_message::<_, IndexRequest>(&mut b, &mut buf, Deadlines::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, WireError::Frame(FrameError::TooLarge { .. })),
            "{err:?}"
        );
        assert!(buf.capacity() < 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_frame_times_out() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 9, 1]).await.unwrap();
        let mut buf = Vec::new();
        let err = read_message::<_, IndexRequest>(&mut b, &mut buf, Deadlines::default())
            .await
            .unwrap_err();
        assert!(matches!(err, WireError::Timeout(_)), "{err:?}");
        drop(a);
    }

    #[tokio::test]
    async fn truncated_frame_is_closed_and_clean_close_is_none() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 9, 1]).await.unwrap();
        drop(a);
        let mut buf = Vec::new();
        let err = read_message::<_, IndexRequest>(&mut b, &mut buf, Deadlines::default())
            .await
            .unwrap_err();
        assert!(matches!(err, WireError::Closed), "{err:?}");

        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert!(
            read_message::<_, IndexRequest>(&mut b, &mut buf, Deadlines::default())
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn handshake_reports_version_mismatch() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let srv =
            tokio::spawn(
                async move { server_handshake(&mut server, Protocol::Index, false).await },
            );
        let mut hello = hello::client_hello(Protocol::Index);
        hello[5] = 42;
        client.write_all(&hello).await.unwrap();
        let mut answer = [0u8; HELLO_LEN];
        client.read_exact(&mut answer).await.unwrap();
        assert!(matches!(
            hello::check_server_hello(&answer),
            Err(HelloError::VersionMismatch { .. })
        ));
        assert!(srv.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn multi_protocol_handshake_reports_the_choice_and_refuses_others() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let srv = tokio::spawn(async move {
            server_handshake_any(&mut server, &[Protocol::Peer, Protocol::Overlay], |_| false).await
        });
        client_handshake(&mut client, Protocol::Overlay)
            .await
            .unwrap();
        assert_eq!(srv.await.unwrap().unwrap(), Protocol::Overlay);

        let (mut client, mut server) = tokio::io::duplex(64);
        let srv = tokio::spawn(async move {
            server_handshake_any(&mut server, &[Protocol::Peer], |_| false).await
        });
        let err = client_handshake(&mut client, Protocol::Store)
            .await
            .unwrap_err();
        assert!(matches!(err, WireError::Hello(HelloError::WrongProtocol)));
        assert!(srv.await.unwrap().is_err());

        let (mut client, mut server) = tokio::io::duplex(64);
        let srv = tokio::spawn(async move {
            server_handshake_any(&mut server, &[Protocol::Peer], |p| p == Protocol::Peer).await
        });
        let err = client_handshake(&mut client, Protocol::Peer)
            .await
            .unwrap_err();
        assert!(matches!(err, WireError::Hello(HelloError::Busy)));
        assert!(srv.await.unwrap().is_err());
    }
}
