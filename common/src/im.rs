//! Instant messaging rules shared by sender, receiver and index: what a
//! nickname may be and what a direct message may contain.
//!
//! A message is shown on a terminal by `peer inbox`, so it may not carry
//! anything that steers the terminal: no control characters except newline
//! and tab, and no invisible formatting characters such as Unicode
//! bidirectional overrides (which can make text read differently from what
//! it is): the rule file names follow too ([`crate::names::is_invisible_format`]).

use crate::identity::{Identity, PeerId};
use crate::limits::{MAX_MESSAGE_LEN, MAX_NICK_LEN};
use crate::names::is_invisible_format;

/// Length of a direct message's signature (ed25519, RFC 8032).
pub const SIGNATURE_LEN: usize = 64;

/// Domain separation: these bytes start everything a direct message's
/// signature covers, so it can never pass for a signature of anything else
/// the key signs (the handshake payload has its own prefix).
const SIGNED_MESSAGE_CONTEXT: &[u8] = b"p2pshare-direct-message-v1\0";

/// The bytes a direct message's signature covers: the context, the
/// receiver's id (so that a message cannot be replayed to someone else as
/// addressed to them), the time it was sent (milliseconds since the Unix
/// epoch, u64 big-endian), and the sender's nickname and the text, each
/// after its length (u32 big-endian).
pub fn signed_message_bytes(to: &PeerId, sent_unix_ms: u64, from: &str, text: &str) -> Vec<u8> {
    let to = to.to_string();
    let mut out =
        Vec::with_capacity(SIGNED_MESSAGE_CONTEXT.len() + to.len() + 16 + from.len() + text.len());
    out.extend_from_slice(SIGNED_MESSAGE_CONTEXT);
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(&sent_unix_ms.to_be_bytes());
    for part in [from, text] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// `identity`'s signature of a direct message to `to` ([`signed_message_bytes`]).
pub fn sign_message(
    identity: &Identity,
    to: &PeerId,
    sent_unix_ms: u64,
    from: &str,
    text: &str,
) -> [u8; SIGNATURE_LEN] {
    identity.sign(&signed_message_bytes(to, sent_unix_ms, from, text))
}

/// Whether `signature` is `sender`'s signature of this message to `to`
/// (false for a signature of the wrong length).
pub fn verify_message(
    sender: &PeerId,
    to: &PeerId,
    sent_unix_ms: u64,
    from: &str,
    text: &str,
    signature: &[u8],
) -> bool {
    let Ok(signature) = <&[u8; SIGNATURE_LEN]>::try_from(signature) else {
        return false;
    };
    sender.verify(
        &signed_message_bytes(to, sent_unix_ms, from, text),
        signature,
    )
}

/// Why a nickname is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NickError {
    #[error("a nickname cannot be empty")]
    Empty,
    #[error("nickname is {len} bytes, more than the {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error("nickname {0:?} has a character other than letters, digits, '-', '_' or '.'")]
    BadCharacter(String),
}

/// Why a message text is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageTextError {
    #[error("the message is empty")]
    Empty,
    #[error("the message is {len} bytes, more than the {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error("the message contains a control or invisible formatting character (only newline and tab are allowed)")]
    ControlCharacter,
}

fn nick_char_allowed(c: char) -> bool {
    c.is_alphanumeric() || "-_.".contains(c)
}

/// A nickname is 1 to [`MAX_NICK_LEN`] bytes of letters, digits, `-`, `_` and `.`.
pub fn validate_nick(nick: &str) -> Result<(), NickError> {
    if nick.is_empty() {
        return Err(NickError::Empty);
    }
    if nick.len() > MAX_NICK_LEN {
        return Err(NickError::TooLong {
            len: nick.len(),
            max: MAX_NICK_LEN,
        });
    }
    if !nick.chars().all(nick_char_allowed) {
        return Err(NickError::BadCharacter(nick.into()));
    }
    Ok(())
}

/// Makes a valid nickname out of anything (a host name, say): every other
/// character becomes `-`, the result is cut to [`MAX_NICK_LEN`] bytes, and an
/// empty result becomes `fallback`.
pub fn sanitize_nick(raw: &str, fallback: &str) -> String {
    let mut nick = String::new();
    for c in raw.trim().chars() {
        let c = if nick_char_allowed(c) { c } else { '-' };
        if nick.len() + c.len_utf8() > MAX_NICK_LEN {
            break;
        }
        nick.push(c);
    }
    if nick.is_empty() {
        fallback.to_string()
    } else {
        nick
    }
}

/// A message is 1 to [`MAX_MESSAGE_LEN`] bytes with no control characters
/// other than newline and tab, and no invisible formatting characters (the
/// same rule as file names: [`is_invisible_format`]).
pub fn validate_message_text(text: &str) -> Result<(), MessageTextError> {
    if text.trim().is_empty() {
        return Err(MessageTextError::Empty);
    }
    if text.len() > MAX_MESSAGE_LEN {
        return Err(MessageTextError::TooLong {
            len: text.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    if text
        .chars()
        .any(|c| (c.is_control() && c != '\n' && c != '\t') || is_invisible_format(c))
    {
        return Err(MessageTextError::ControlCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_signed_message_verifies_only_unchanged_from_its_sender_to_its_receiver() {
        use super::{sign_message, verify_message};
        use crate::identity::Identity;
        let (alice, bob, carol) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let (a, b, c) = (alice.peer_id(), bob.peer_id(), carol.peer_id());
        let sig = sign_message(&alice, &b, 1_000, "alice", "hello");
        assert!(verify_message(&a, &b, 1_000, "alice", "hello", &sig));
        // Another sender, receiver, time, nickname or text: refused.
        assert!(!verify_message(&c, &b, 1_000, "alice", "hello", &sig));
        assert!(!verify_message(&a, &c, 1_000, "alice", "hello", &sig));
        assert!(!verify_message(&a, &b, 1_001, "alice", "hello", &sig));
        assert!(!verify_message(&a, &b, 1_000, "alicf", "hello", &sig));
        assert!(!verify_message(&a, &b, 1_000, "alice", "hellp", &sig));
        // The length prefixes keep "ab"+"c" apart from "a"+"bc".
        let split = sign_message(&alice, &b, 1, "ab", "c");
        assert!(!verify_message(&a, &b, 1, "a", "bc", &split));
        assert!(!verify_message(&a, &b, 1_000, "alice", "hello", &sig[..63]));
        assert!(!verify_message(&a, &b, 1_000, "alice", "hello", &[0u8; 64]));
    }

    use super::*;

    #[test]
    fn nicknames() {
        assert!(validate_nick("ana").is_ok());
        assert!(validate_nick("Núñez_2.b-c").is_ok());
        assert_eq!(validate_nick(""), Err(NickError::Empty));
        assert!(matches!(
            validate_nick(&"a".repeat(33)),
            Err(NickError::TooLong { .. })
        ));
        assert!(matches!(
            validate_nick("a b"),
            Err(NickError::BadCharacter(_))
        ));
    }

    #[test]
    fn sanitized_host_names_are_valid() {
        assert_eq!(sanitize_nick("my host.local\n", "peer"), "my-host.local");
        assert_eq!(sanitize_nick("", "peer"), "peer");
        assert_eq!(sanitize_nick("  ", "peer"), "peer");
        let long = sanitize_nick(&"ñ".repeat(40), "peer");
        assert_eq!(long, "ñ".repeat(16));
        for raw in ["a/b:c", "x\u{202E}y", &"z".repeat(100)] {
            assert!(validate_nick(&sanitize_nick(raw, "peer")).is_ok(), "{raw}");
        }
    }

    #[test]
    fn message_texts() {
        assert!(validate_message_text("hola\n\tqué tal").is_ok());
        assert_eq!(validate_message_text(" \n"), Err(MessageTextError::Empty));
        assert_eq!(
            validate_message_text("clear\x1b[2J"),
            Err(MessageTextError::ControlCharacter)
        );
        assert_eq!(
            validate_message_text("abc\u{202E}def"),
            Err(MessageTextError::ControlCharacter)
        );
        assert!(validate_message_text(&"x".repeat(MAX_MESSAGE_LEN)).is_ok());
        assert!(matches!(
            validate_message_text(&"x".repeat(MAX_MESSAGE_LEN + 1)),
            Err(MessageTextError::TooLong { .. })
        ));
    }
}
