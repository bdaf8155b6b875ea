//! Instant messaging, the lecture's second hybrid: the index knows who is
//! online and where (presence and location, `WhoIs`); the message itself
//! goes straight to the other peer's chunk-server port as a
//! `PeerRequest::Message`, and the index never carries it. There is no store
//! and forward: a peer that is offline cannot be messaged.

use std::time::Duration;

use common::hello::{Protocol, FEATURE_SIGNED_MESSAGES};
use common::im::{validate_message_text, validate_nick, MessageTextError, NickError};
use common::limits::CONNECT_TIMEOUT;
use common::peer_proto::{PeerErrorCode, PeerRequest, PeerResponse};
use common::wire::{self, Deadlines, WireError};
use serde::Serialize;

use crate::index_client::{connect_tcp, IndexClient, IndexError};

/// How long to wait for the receiving peer to answer.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a message was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    // Causes are named `reason`, not `source`: they are part of the message
    // already, and a `source` would print twice in an error chain.
    #[error("message not sent: {0}")]
    BadText(MessageTextError),
    #[error("cannot send as {nick:?}: {reason} (set another sender name with --from)")]
    BadFrom { nick: String, reason: NickError },
    #[error("no peer can be called {nick:?}: {reason}")]
    BadNick { nick: String, reason: NickError },
    #[error("{nick} is not online (no peer with that nickname is registered at the index; messages are not stored for offline peers, try again when it is online)")]
    Offline { nick: String },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{nick} is registered at {addr} but cannot be reached: {reason} (it may have just gone offline; messages are not stored)")]
    Unreachable {
        nick: String,
        addr: String,
        reason: std::io::Error,
    },
    #[error("talking to {nick} at {addr}: {reason}")]
    Wire {
        nick: String,
        addr: String,
        reason: WireError,
    },
    #[error("{nick} refused the message: {message}")]
    Refused {
        nick: String,
        code: PeerErrorCode,
        message: String,
    },
    #[error("{nick} at {addr} sent an unexpected answer: {answer}")]
    Unexpected {
        nick: String,
        addr: String,
        answer: String,
    },
}

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// The recipient's nickname.
    pub to: String,
    /// The address it was delivered to, as the index published it.
    pub addr: String,
}

/// Checks what the sender controls before anything goes on the network.
pub fn check_outgoing(to: &str, from: &str, text: &str) -> Result<(), MessageError> {
    validate_message_text(text).map_err(MessageError::BadText)?;
    validate_nick(from).map_err(|reason| MessageError::BadFrom {
        nick: from.into(),
        reason,
    })?;
    validate_nick(to).map_err(|reason| MessageError::BadNick {
        nick: to.into(),
        reason,
    })?;
    Ok(())
}

/// Looks `to` up at the index, then delivers `text` directly to that peer.
pub async fn send_message(
    index: &str,
    to: &str,
    from: &str,
    text: &str,
) -> Result<Delivery, MessageError> {
    check_outgoing(to, from, text)?;
    let mut client = IndexClient::connect(index).await?;
    let peer = client
        .whois(to)
        .await?
        .ok_or_else(|| MessageError::Offline { nick: to.into() })?;
    drop(client);
    deliver_to(&peer.addr, to, from, text).await?;
    Ok(Delivery {
        to: to.into(),
        addr: peer.addr,
    })
}

/// Delivers `text` to the peer at `addr` (known as `to`) over the peer protocol.
pub async fn deliver_to(addr: &str, to: &str, from: &str, text: &str) -> Result<(), MessageError> {
    check_outgoing(to, from, text)?;
    let unreachable = |reason| MessageError::Unreachable {
        nick: to.into(),
        addr: addr.into(),
        reason,
    };
    let wire_error = |reason| MessageError::Wire {
        nick: to.into(),
        addr: addr.into(),
        reason,
    };
    let stream = connect_tcp(addr, CONNECT_TIMEOUT)
        .await
        .map_err(unreachable)?;
    let (mut stream, features) = transfer::net::client(stream, Protocol::Peer, None)
        .await
        .map_err(wire_error)?;
    let security = common::secure::Security::process();
    // Signed with this node's key for the key the receiver proved; a peer
    // that does not take signed messages (an older build) gets them plain.
    let request = match (security.identity(), stream.remote()) {
        (Some(identity), Some(receiver)) if features & FEATURE_SIGNED_MESSAGES != 0 => {
            let sent_unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            PeerRequest::SignedMessage {
                from: from.into(),
                text: text.into(),
                sent_unix_ms,
                signature: common::im::sign_message(identity, &receiver, sent_unix_ms, from, text)
                    .to_vec(),
            }
        }
        _ => PeerRequest::Message {
            from: from.into(),
            text: text.into(),
        },
    };
    wire::send_message(&mut stream, &request)
        .await
        .map_err(wire_error)?;
    let mut buf = Vec::new();
    let answer: PeerResponse = wire::expect_message(
        &mut stream,
        &mut buf,
        Deadlines::with_idle(DELIVERY_TIMEOUT),
    )
    .await
    .map_err(wire_error)?;
    match answer {
        PeerResponse::Delivered => Ok(()),
        PeerResponse::Error { code, message } => Err(MessageError::Refused {
            nick: to.into(),
            code,
            message: common::names::escape_for_terminal(&message).into_owned(),
        }),
        other => Err(MessageError::Unexpected {
            nick: to.into(),
            addr: addr.into(),
            answer: format!("{other:?}"),
        }),
    }
}

/// This machine's host name as a valid nickname (`peer` if it has none):
/// the default for `peer serve --nick` and `peer msg --from`.
pub fn default_nick() -> String {
    let raw = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .filter(|name| !name.trim().is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    common::im::sanitize_nick(&raw, "peer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_nick_is_valid() {
        assert!(validate_nick(&default_nick()).is_ok());
    }

    #[test]
    fn outgoing_checks_come_first() {
        assert!(matches!(
            check_outgoing("bob", "ana", &"x".repeat(4097)),
            Err(MessageError::BadText(MessageTextError::TooLong { .. }))
        ));
        assert!(matches!(
            check_outgoing("bob", "a b", "hi"),
            Err(MessageError::BadFrom { .. })
        ));
        assert!(matches!(
            check_outgoing("b/b", "ana", "hi"),
            Err(MessageError::BadNick { .. })
        ));
        assert!(check_outgoing("bob", "ana", "hi").is_ok());
    }
}
