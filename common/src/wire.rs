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
    #[error(transparent)]
    Secure(#[from] crate::secure::SecureError),
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
            WireError::Frame(_)
                | WireError::Hello(_)
                | WireError::Secure(_)
                | WireError::Unexpected(_)
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

/// Client side of the hello: send ours (with [`hello::CLIENT_SECURE`] and
/// [`hello::CLIENT_IDENTITY_STATIC`] when `we_encrypt`), check the answer.
/// Returns both hellos (the Noise prologue, `crate::secure`) and the
/// server's feature bits. Most code opens connections through
/// `crate::secure::client` instead.
pub async fn client_hello_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    protocol: Protocol,
    we_encrypt: bool,
) -> Result<([u8; HELLO_LEN], [u8; HELLO_LEN]), WireError> {
    client_hello_exchange_offering(s, protocol, we_encrypt, we_encrypt).await
}

/// [`client_hello_exchange`], offering [`hello::CLIENT_IDENTITY_STATIC`]
/// only when `identity_static` (a client that does not is a version-2 node
/// from before that feature).
pub async fn client_hello_exchange_offering<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    protocol: Protocol,
    we_encrypt: bool,
    identity_static: bool,
) -> Result<([u8; HELLO_LEN], [u8; HELLO_LEN]), WireError> {
    let flags = if we_encrypt && protocol != Protocol::Relay {
        let offer = if identity_static {
            hello::CLIENT_IDENTITY_STATIC
        } else {
            0
        };
        hello::CLIENT_SECURE | offer
    } else {
        0
    };
    let ours = hello::client_hello_with_flags(protocol, flags);
    s.write_all(&ours).await?;
    s.flush().await?;
    let mut answer = [0u8; HELLO_LEN];
    with_deadline(
        Some(HELLO_TIMEOUT),
        "the server's hello",
        s.read_exact(&mut answer),
    )
    .await?;
    if protocol == Protocol::Relay {
        // The relay's own leg is clear by design (see `crate::secure`).
        hello::check_server_hello(&answer)?;
    } else {
        hello::check_server_hello_mode(&answer, we_encrypt)?;
    }
    Ok((ours, answer))
}

/// Server side of the hello on a port that speaks `accepted` protocols, for
/// a server that encrypts when `we_encrypt`. `busy` is asked, once the
/// protocol is known and acceptable, whether to turn the client away as
/// busy (then the call fails with [`HelloError::Busy`]); `features(protocol)`
/// goes in the answer's last byte, with [`hello::FEATURE_SECURE`] added when
/// `we_encrypt`. A client whose [`hello::CLIENT_SECURE`] flag differs from
/// `we_encrypt` is answered [`HelloStatus::SecurityMismatch`], except on
/// [`Protocol::Relay`], whose own leg is always clear (the relayed peers
/// run their own handshake end to end). Returns the protocol and both
/// hellos (client's first).
pub async fn server_hello_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    accepted: &[Protocol],
    busy: impl FnOnce(Protocol) -> bool,
    features: impl FnOnce(Protocol) -> u8,
    we_encrypt: bool,
) -> Result<(Protocol, [u8; HELLO_LEN], [u8; HELLO_LEN]), WireError> {
    server_hello_exchange_offering(s, accepted, busy, features, we_encrypt, we_encrypt).await
}

/// [`server_hello_exchange`], answering [`hello::FEATURE_IDENTITY_STATIC`]
/// to a client that offers it only when `identity_static` (a server that
/// does not is a version-2 node from before that feature).
pub async fn server_hello_exchange_offering<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    accepted: &[Protocol],
    busy: impl FnOnce(Protocol) -> bool,
    features: impl FnOnce(Protocol) -> u8,
    we_encrypt: bool,
    identity_static: bool,
) -> Result<(Protocol, [u8; HELLO_LEN], [u8; HELLO_LEN]), WireError> {
    let mut theirs = [0u8; HELLO_LEN];
    with_deadline(
        Some(HELLO_TIMEOUT),
        "the client's hello",
        s.read_exact(&mut theirs),
    )
    .await?;
    let (mut status, protocol) = hello::check_client_hello_any(&theirs, accepted)?;
    let they_encrypt = hello::client_flags(&theirs) & hello::CLIENT_SECURE != 0;
    // The relay's own leg is clear by design: it carries a one-time token
    // and then the bytes of two peers' own end-to-end Noise session.
    let relay = protocol == Some(Protocol::Relay);
    if status == HelloStatus::Ok && !relay && they_encrypt != we_encrypt {
        status = HelloStatus::SecurityMismatch;
    }
    if let (HelloStatus::Ok, Some(p)) = (status, protocol) {
        if busy(p) {
            status = HelloStatus::Busy;
        }
    }
    let mut bits = match (status, protocol) {
        (HelloStatus::Ok, Some(p)) => features(p),
        _ => 0,
    };
    if we_encrypt && !relay {
        bits |= hello::FEATURE_SECURE;
        if status == HelloStatus::Ok
            && identity_static
            && hello::client_flags(&theirs) & hello::CLIENT_IDENTITY_STATIC != 0
        {
            bits |= hello::FEATURE_IDENTITY_STATIC;
        }
    }
    let answer = hello::server_hello_with_features(status, bits);
    s.write_all(&answer).await?;
    s.flush().await?;
    match (status, protocol) {
        (HelloStatus::Ok, Some(p)) => Ok((p, theirs, answer)),
        (HelloStatus::UnsupportedVersion, _) => Err(HelloError::VersionMismatch {
            ours: crate::limits::PROTOCOL_VERSION,
            theirs: u16::from_be_bytes([theirs[4], theirs[5]]),
        }
        .into()),
        (HelloStatus::Busy, _) => Err(HelloError::Busy.into()),
        (HelloStatus::SecurityMismatch, _) => {
            Err(HelloError::SecurityMismatch { we_encrypt }.into())
        }
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
        let srv = tokio::spawn(async move {
            server_hello_exchange(&mut server, &[Protocol::Index], |_| false, |_| 0, false).await
        });
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
        let both = [Protocol::Peer, Protocol::Overlay];
        let (mut client, mut server) = tokio::io::duplex(64);
        let srv = tokio::spawn(async move {
            server_hello_exchange(&mut server, &both, |_| false, |_| 0, false).await
        });
        client_hello_exchange(&mut client, Protocol::Overlay, false)
            .await
            .unwrap();
        assert_eq!(srv.await.unwrap().unwrap().0, Protocol::Overlay);

        let (mut client, mut server) = tokio::io::duplex(64);
        let srv = tokio::spawn(async move {
            server_hello_exchange(&mut server, &[Protocol::Peer], |_| false, |_| 0, false).await
        });
        let err = client_hello_exchange(&mut client, Protocol::Store, false)
            .await
            .unwrap_err();
        assert!(matches!(err, WireError::Hello(HelloError::WrongProtocol)));
        assert!(srv.await.unwrap().is_err());

        let (mut client, mut server) = tokio::io::duplex(64);
        let srv = tokio::spawn(async move {
            server_hello_exchange(
                &mut server,
                &[Protocol::Peer],
                |p| p == Protocol::Peer,
                |_| 0,
                false,
            )
            .await
        });
        let err = client_hello_exchange(&mut client, Protocol::Peer, false)
            .await
            .unwrap_err();
        assert!(matches!(err, WireError::Hello(HelloError::Busy)));
        assert!(srv.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn clear_and_encrypting_sides_refuse_each_other() {
        for (client_encrypts, server_encrypts) in [(true, false), (false, true)] {
            let (mut client, mut server) = tokio::io::duplex(64);
            let srv = tokio::spawn(async move {
                server_hello_exchange(
                    &mut server,
                    &[Protocol::Peer],
                    |_| false,
                    |_| 0,
                    server_encrypts,
                )
                .await
            });
            let err = client_hello_exchange(&mut client, Protocol::Peer, client_encrypts)
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    WireError::Hello(HelloError::SecurityMismatch { we_encrypt }) if we_encrypt == client_encrypts
                ),
                "{err:?}"
            );
            let server_err = srv.await.unwrap().unwrap_err();
            assert!(
                matches!(
                    server_err,
                    WireError::Hello(HelloError::SecurityMismatch { .. })
                ),
                "{server_err:?}"
            );
        }
    }
}
