//! File names and search words: how they are compared.
//!
//! Every comparison of names or words (the index's tokens and exact-name
//! lookups, `peer get NAME`, the overlay's query matching, nicknames, the
//! store's clash check) goes through [`normalize`]: Unicode NFKC, then
//! lower case. So a name stored decomposed (NFD, `cafe` + U+0301) and one
//! typed composed (NFC, `café`) are the same name, and so are `CAFÉ`,
//! full-width `ｃａｆé` and the ligature in `ﬁle`. NFKC rather than NFC:
//! compatibility forms (full-width Latin and half-width katakana from CJK
//! input methods, ligatures, superscript digits) are how the same word
//! arrives from another keyboard, and this is a matching key only: the name
//! a peer registered is what is shown and saved, byte for byte. Two names
//! that NFKC merges (`x²` and `x2`) at worst make an exact-name lookup
//! ambiguous, which lists both.
//!
//! A name is split into words on every character that is neither
//! alphanumeric nor a combining mark, so `"Blue Monday (1983).MP3"` yields
//! `blue`, `monday`, `1983`, `mp3`. Search words go through the same
//! function, which is what makes matching case-insensitive.
//!
//! The second half holds the rules that keep a name from the network
//! harmless wherever it ends up (see "Names from the network" in DESIGN.md):
//! [`validate_name`] refuses control and invisible formatting characters at
//! registration, [`safe_file_name`] makes any name safe to save,
//! [`shorten_name`] cuts a name to a byte budget keeping its extension, and
//! [`escape_for_terminal`] makes any text from the network safe to print.

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// The comparison key of a name or word: NFKC, lower-cased (and NFKC again,
/// as lower-casing may leave a sequence unnormalized). ASCII only lower-cases.
pub fn normalize(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    let lower = s.nfkc().collect::<String>().to_lowercase();
    if unicode_normalization::is_nfkc_quick(lower.chars())
        == unicode_normalization::IsNormalized::Yes
    {
        lower
    } else {
        lower.nfkc().collect()
    }
}

/// Whether `c` separates words: neither alphanumeric nor a combining mark
/// (an accent left uncomposed by NFKC stays inside its word).
pub fn is_separator(c: char) -> bool {
    !(c.is_alphanumeric() || is_combining_mark(c))
}

/// The distinct words of a file name, [normalized](normalize), in order of
/// first appearance.
pub fn tokenize(name: &str) -> Vec<String> {
    let key = normalize(name);
    let mut words: Vec<String> = Vec::new();
    for word in key.split(is_separator) {
        if !word.is_empty() && !words.iter().any(|w| w == word) {
            words.push(word.to_string());
        }
    }
    words
}

/// The last `/`-separated component of a registered name (names are paths
/// relative to a shared folder).
pub fn base_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// Whether a registered `name` is the one asked for by `key` (a
/// [`normalize`]d name): the whole name or its last component, compared
/// after normalization. This is the one exact-name rule of every mode.
pub fn name_matches(name: &str, key: &str) -> bool {
    if name.is_ascii() {
        return name.eq_ignore_ascii_case(key) || base_name(name).eq_ignore_ascii_case(key);
    }
    let n = normalize(name);
    n == key || normalize(base_name(name)) == key
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
    #[error(
        "file name contains the invisible formatting character U+{:04X} (it can make a name read differently from what it is)",
        u32::from(*.0)
    )]
    InvisibleCharacter(char),
    #[error("file name has a `.` or `..` path component")]
    DotComponent,
}

/// Checks a name that came off the wire, the rule the index applies at
/// registration and every peer applies before registering: 1 to
/// [`crate::limits::MAX_NAME_LEN`] bytes, no control character, no
/// invisible formatting character ([`is_invisible_format`]), no `.` or `..`
/// component. Names are labels only: no peer ever opens a path built from
/// one, and a saved file's name comes from [`safe_file_name`].
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
    if name.is_ascii() {
        // Most names: one pass over the bytes (no ASCII character is an
        // invisible format one; the control ones are below 0x20 and 0x7F).
        if name.bytes().any(|b| b < 0x20 || b == 0x7F) {
            return Err(NameError::ControlCharacter);
        }
    } else {
        if name.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter);
        }
        if let Some(c) = name.chars().find(|c| is_invisible_format(*c)) {
            return Err(NameError::InvisibleCharacter(c));
        }
    }
    // A name is a path relative to a shared folder: it never climbs out of it.
    if name
        .split(['/', '\\'])
        .any(|part| part == "." || part == "..")
    {
        return Err(NameError::DotComponent);
    }
    Ok(())
}

/// Whether `c` is an invisible formatting character: Unicode general
/// category Cf (bidirectional embeddings, overrides, isolates and marks such
/// as U+202E, zero-width spaces and joiners, the byte-order mark, soft
/// hyphen, tag characters; table from Unicode 15) or a line/paragraph
/// separator (U+2028, U+2029). Such characters make text display
/// differently from what it is, so names and direct messages refuse them
/// ([`validate_name`], [`crate::im::validate_message_text`]) and terminal
/// output escapes them ([`escape_for_terminal`]).
pub fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

/// Characters that never reach a terminal or a file name unescaped:
/// controls (C0, DEL, C1) and [`is_invisible_format`] ones.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control() || is_invisible_format(c)
}

/// Text from the network made safe to print on a terminal: every
/// [`is_unsafe_char`] character (escape sequences, newlines, direction
/// overrides, zero-width characters) is written as `\u{XXXX}`, so what is
/// shown is what is there. Borrowed when nothing needed escaping.
pub fn escape_for_terminal(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe_char(c) {
            out.push_str(&format!("\\u{{{:04X}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Longest name a download or an upload is saved under, in bytes: file
/// systems allow 255, and ` (999)` from [`numbered_name`] must still fit.
pub const MAX_SAVED_NAME_LEN: usize = 200;

/// Longest extension [`split_extension`] keeps apart, in bytes with its dot
/// (a longer "extension" is just part of the name).
pub const MAX_EXTENSION_LEN: usize = 16;

/// Splits `name` into stem and extension (with its dot): `"a.b.flac"` →
/// `("a.b", ".flac")`; `"x.tar.gz"` → `("x", ".tar.gz")`. No extension when
/// the name has no dot after its first character, or the part after the
/// last dot is empty, holds a space, or is longer than [`MAX_EXTENSION_LEN`].
pub fn split_extension(name: &str) -> (&str, &str) {
    let split_at = |s: &str| -> Option<usize> {
        let dot = s.rfind('.').filter(|d| *d > 0)?;
        let ext = &s[dot..];
        (ext.len() > 1 && ext.len() <= MAX_EXTENSION_LEN && !ext.contains(char::is_whitespace))
            .then_some(dot)
    };
    let Some(dot) = split_at(name) else {
        return (name, "");
    };
    // A compressed tarball keeps both parts: `.tar.gz`, `.tar.zst`.
    let dot = match name[..dot].strip_suffix(".tar") {
        Some(stem) if !stem.is_empty() && name.len() - stem.len() <= MAX_EXTENSION_LEN => {
            stem.len()
        }
        _ => dot,
    };
    (&name[..dot], &name[dot..])
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn prefix_within(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `name` cut to at most `max` bytes: the stem is shortened and the
/// extension ([`split_extension`]) kept, so `"…x.flac"` stays a `.flac`;
/// a cut never splits a UTF-8 character. A name whose extension alone
/// would not leave half of `max` to the stem is cut at the end instead.
/// This is the one place names are shortened (saved downloads, store
/// uploads, numbered copies, progress labels).
pub fn shorten_name(name: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if name.len() <= max {
        return std::borrow::Cow::Borrowed(name);
    }
    let (stem, ext) = split_extension(name);
    if ext.is_empty() || ext.len() > max / 2 {
        return std::borrow::Cow::Borrowed(prefix_within(name, max));
    }
    let stem = prefix_within(stem, max - ext.len());
    std::borrow::Cow::Owned(format!("{}{ext}", stem.trim_end()))
}

/// The `n`th alternative to a name already taken: `stem (n).ext`, the stem
/// shortened so that the result stays within [`MAX_SAVED_NAME_LEN`].
pub fn numbered_name(name: &str, n: u32) -> String {
    let (stem, ext) = split_extension(name);
    let suffix = format!(" ({n})");
    let room = MAX_SAVED_NAME_LEN.saturating_sub(ext.len() + suffix.len());
    format!("{}{suffix}{ext}", prefix_within(stem, room).trim_end())
}

/// Makes a name from the network (a `/`-separated label, never trusted)
/// into a safe file name, or `None` when nothing usable is left:
/// only its last path component is kept (`/` and `\` both separate), every
/// [`is_unsafe_char`] character becomes `_`, leading dots and surrounding
/// white space go (a saved file is never hidden, never `.` or `..`), and
/// the result is shortened to [`MAX_SAVED_NAME_LEN`] bytes by
/// [`shorten_name`]. `"../../.bashrc"` → `"bashrc"`.
pub fn safe_file_name(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .map(|c| if is_unsafe_char(c) { '_' } else { c })
        .collect();
    let cleaned = cleaned
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end();
    if cleaned.is_empty() {
        return None;
    }
    Some(shorten_name(cleaned, MAX_SAVED_NAME_LEN).into_owned())
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
    fn normalization_makes_composed_decomposed_and_compatibility_forms_equal() {
        let nfd = "cafe\u{301}.txt";
        let nfc = "caf\u{e9}.txt";
        assert_ne!(nfd, nfc);
        assert_eq!(normalize(nfd), normalize(nfc));
        assert_eq!(normalize("CAF\u{c9}.TXT"), nfc);
        assert_eq!(tokenize(nfd), vec!["caf\u{e9}", "txt"]);
        assert_eq!(tokenize(nfd), tokenize("Caf\u{e9} TXT"));
        // Full-width letters and a ligature are the same words.
        assert_eq!(
            tokenize("\u{ff23}\u{ff21}\u{ff26}\u{c9} \u{fb01}le"),
            vec!["caf\u{e9}", "file"]
        );
        // An accent with no precomposed form stays inside its word.
        assert_eq!(tokenize("q\u{303}x y"), vec!["q\u{303}x", "y"]);
        assert!(name_matches("music/Cafe\u{301}.TXT", &normalize(nfc)));
        assert!(name_matches(nfc, &normalize(nfd)));
        assert!(!name_matches("cafe.txt", &normalize(nfc)));
    }

    #[test]
    fn validates_names() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("a\nb"), Err(NameError::ControlCharacter));
        // Every control character, in an ASCII name and in one that is not.
        for c in (0u32..0x20).chain([0x7F]).chain(0x80..0xA0) {
            let c = char::from_u32(c).unwrap();
            for name in [format!("a{c}b"), format!("é{c}")] {
                assert_eq!(
                    validate_name(&name),
                    Err(NameError::ControlCharacter),
                    "{name:?}"
                );
            }
        }
        assert_eq!(
            validate_name("a\u{202E}b"),
            Err(NameError::InvisibleCharacter('\u{202E}'))
        );
        assert!(validate_name(" ~!#$%&()+,;=@[]^_{}").is_ok());
        assert!(validate_name(&"x".repeat(2000)).is_err());
        assert!(validate_name("música y más.ogg").is_ok());
        assert_eq!(validate_name("../../.bashrc"), Err(NameError::DotComponent));
        assert_eq!(validate_name("a\\..\\b"), Err(NameError::DotComponent));
        assert!(validate_name(".bashrc").is_ok());
        assert!(validate_name("a/...b/c..d").is_ok());
    }

    #[test]
    fn invisible_formatting_is_refused_like_in_messages() {
        for bad in [
            "invoice\u{202E}fdp.exe",
            "a\u{200D}b",
            "\u{FEFF}bom.txt",
            "x\u{2066}y",
            "line\u{2028}sep",
            "tag\u{E0041}",
        ] {
            assert!(
                matches!(validate_name(bad), Err(NameError::InvisibleCharacter(_))),
                "{bad:?}"
            );
            assert!(crate::im::validate_message_text(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name("日本語のファイル.txt").is_ok());
        assert!(validate_name("emoji 🎵 ok.mp3").is_ok());
    }

    #[test]
    fn terminal_output_shows_what_is_there() {
        assert_eq!(escape_for_terminal("plain ñ.txt"), "plain ñ.txt");
        assert_eq!(
            escape_for_terminal("evil\u{202E}4pm.exe"),
            "evil\\u{202E}4pm.exe"
        );
        assert_eq!(
            escape_for_terminal("a\x1b[2Jb\n"),
            "a\\u{001B}[2Jb\\u{000A}"
        );
        assert!(!escape_for_terminal("\u{200B}\u{85}\t")
            .chars()
            .any(is_unsafe_char));
    }

    #[test]
    fn extensions() {
        assert_eq!(split_extension("a.b.flac"), ("a.b", ".flac"));
        assert_eq!(split_extension("x.tar.gz"), ("x", ".tar.gz"));
        assert_eq!(split_extension(".bashrc"), (".bashrc", ""));
        assert_eq!(split_extension("README"), ("README", ""));
        assert_eq!(split_extension("v1. final cut"), ("v1. final cut", ""));
        assert_eq!(split_extension("end."), ("end.", ""));
        let long = format!("a.{}", "e".repeat(MAX_EXTENSION_LEN));
        assert_eq!(split_extension(&long), (long.as_str(), ""));
    }

    /// Issue 12 case 4: a 201-byte `… x.flac` was saved as `… x.fla`.
    #[test]
    fn shortening_keeps_the_extension_and_whole_characters() {
        let name = format!("{} x.flac", "a".repeat(MAX_SAVED_NAME_LEN + 1 - 7));
        assert_eq!(name.len(), 201);
        let short = shorten_name(&name, MAX_SAVED_NAME_LEN);
        assert!(short.len() <= MAX_SAVED_NAME_LEN);
        assert!(short.ends_with(".flac"), "{short}");
        // Every cut of a multi-byte name is whole characters, extension kept.
        let cjk = format!("{}.mkv", "日本語".repeat(40));
        for max in 8..cjk.len() {
            let s = shorten_name(&cjk, max);
            assert!(s.len() <= max, "{max}");
            assert!(s.ends_with(".mkv"), "{max}: {s}");
            assert!(s
                .trim_end_matches(".mkv")
                .chars()
                .all(|c| "日本語".contains(c)));
        }
        // No extension, or a huge one: a plain cut on a character boundary.
        assert_eq!(shorten_name(&"é".repeat(10), 5), "éé");
        assert_eq!(shorten_name("short.txt", 200), "short.txt");
    }

    #[test]
    fn numbered_names_stay_within_the_limit() {
        assert_eq!(numbered_name("song.mp3", 1), "song (1).mp3");
        assert_eq!(numbered_name("README", 2), "README (2)");
        assert_eq!(numbered_name("x.tar.gz", 3), "x (3).tar.gz");
        let long = format!("{}.flac", "ñ".repeat(100));
        let n = numbered_name(&long, 999);
        assert!(
            n.len() <= MAX_SAVED_NAME_LEN && n.ends_with(" (999).flac"),
            "{n}"
        );
    }

    /// Issue 18 case 2: `../../.bashrc` from a hostile registrant.
    #[test]
    fn saved_names_are_never_hidden_nor_paths() {
        assert_eq!(safe_file_name("../../.bashrc").as_deref(), Some("bashrc"));
        assert_eq!(safe_file_name("music/a b.mp3").as_deref(), Some("a b.mp3"));
        assert_eq!(safe_file_name("evil\\..\\x").as_deref(), Some("x"));
        assert_eq!(safe_file_name("a\nb\u{202E}c").as_deref(), Some("a_b_c"));
        assert_eq!(
            safe_file_name(" ...hidden.part").as_deref(),
            Some("hidden.part")
        );
        for nothing in ["", "..", ".", "a/", "...", " . "] {
            assert_eq!(safe_file_name(nothing), None, "{nothing:?}");
        }
        for raw in ["../../.bashrc", "x/\u{0}y", ". .z", "\u{FEFF}.a"] {
            let s = safe_file_name(raw).unwrap();
            assert!(
                !s.starts_with('.') && !s.contains(['/', '\\', '\0']),
                "{s:?}"
            );
            assert!(validate_name(&s).is_ok(), "{s:?}");
        }
    }
}
