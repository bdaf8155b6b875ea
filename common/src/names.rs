//! File-name tokenisation for keyword search.
//!
//! A name is split on every character that is not alphanumeric (Unicode
//! aware) and lower-cased, so `"Blue Monday (1983).MP3"` yields
//! `blue`, `monday`, `1983`, `mp3`. Search words go through the same
//! function, which is what makes matching case-insensitive.

/// The distinct lower-case words of a file name, in order of first appearance.
pub fn tokenize(name: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for word in name.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        let lower = word.to_lowercase();
        if !words.contains(&lower) {
            words.push(lower);
        }
    }
    words
}

/// Why a file name is refused by the index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("file name is empty")]
    Empty,
    #[error("file name is {len} bytes, more than the {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error("file name contains a control character")]
    ControlCharacter,
}

/// Checks a name that came off the wire. Names are labels only: no peer ever
/// opens a path built from one.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > crate::limits::MAX_NAME_LEN {
        return Err(NameError::TooLong {
            len: name.len(),
            max: crate::limits::MAX_NAME_LEN,
        });
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_lowercases() {
        assert_eq!(
            tokenize("Blue Monday (1983).MP3"),
            vec!["blue", "monday", "1983", "mp3"]
        );
        assert_eq!(
            tokenize("Canción_ÑANDÚ.txt"),
            vec!["canción", "ñandú", "txt"]
        );
        assert_eq!(tokenize("a-a A"), vec!["a"]);
        assert!(tokenize("..--").is_empty());
    }

    #[test]
    fn validates_names() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("a\nb"), Err(NameError::ControlCharacter));
        assert!(validate_name(&"x".repeat(2000)).is_err());
        assert!(validate_name("música y más.ogg").is_ok());
    }
}
