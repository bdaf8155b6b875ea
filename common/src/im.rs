//! Instant messaging rules shared by sender, receiver and index: what a
//! nickname may be and what a direct message may contain.
//!
//! A message is shown on a terminal by `peer inbox`, so it may not carry
//! anything that steers the terminal: no control characters except newline
//! and tab, and no invisible formatting characters such as Unicode
//! bidirectional overrides (which can make text read differently from what
//! it is): the rule file names follow too ([`crate::names::is_invisible_format`]).

use crate::limits::{MAX_MESSAGE_LEN, MAX_NICK_LEN};
use crate::names::is_invisible_format;

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
