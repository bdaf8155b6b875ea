//! What a user names a file by, and the one rule that turns candidates
//! into the file: shared by every mode (hybrid, client-server, p2p) and
//! every command that takes a file (`peer get`, `peer serve --fetch`).
//!
//! A target is
//! - a 64-digit id;
//! - an id prefix: 8 to 63 hex digits
//!   ([`MIN_ID_PREFIX_LEN`](crate::limits::MIN_ID_PREFIX_LEN)), any case;
//! - otherwise an exact name: a holder's whole name or its last
//!   component, compared after [normalization](crate::names::normalize).
//!
//! A prefix is also a possible name (`cafe1234` could name a file), so its
//! candidates are the files whose id starts with it and those named by it.
//! [`pick`]: no candidate is "not found", one is the file, several (distinct
//! ids) are ambiguous and listed.

use crate::id::FileId;
use crate::limits::MIN_ID_PREFIX_LEN;
use crate::names::{name_matches, normalize};

/// A prefix of a file id's hex form, lower case, 8 to 63 digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdPrefix(String);

impl IdPrefix {
    /// `s` as a prefix if it is 8 to 63 hex digits (of any case).
    pub fn parse(s: &str) -> Option<IdPrefix> {
        ((MIN_ID_PREFIX_LEN..64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| IdPrefix(s.to_ascii_lowercase()))
    }

    /// The lower-case hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `id` starts with this prefix.
    pub fn matches(&self, id: &FileId) -> bool {
        self.0.bytes().enumerate().all(|(i, digit)| {
            let byte = id.0[i / 2];
            let nibble = if i % 2 == 0 { byte >> 4 } else { byte & 0xf };
            char::from_digit(u32::from(nibble), 16) == Some(char::from(digit))
        })
    }

    /// The first byte the prefix fixes (it has at least two digits).
    pub fn first_byte(&self) -> u8 {
        u8::from_str_radix(&self.0[..2], 16).unwrap_or(0)
    }
}

impl std::fmt::Display for IdPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A file as a user names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Id(FileId),
    /// An id prefix, also looked up as a name.
    Prefix(IdPrefix),
    /// An exact name, as typed.
    Name(String),
}

/// Why a target cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("no file given: pass an id (64 hex digits, or at least the first {MIN_ID_PREFIX_LEN}) or an exact file name")]
    Empty,
}

impl std::str::FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(TargetError::Empty);
        }
        if let Ok(id) = s.to_ascii_lowercase().parse::<FileId>() {
            return Ok(Target::Id(id));
        }
        Ok(match IdPrefix::parse(s) {
            Some(p) => Target::Prefix(p),
            None => Target::Name(s.to_string()),
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Id(id) => write!(f, "{id}"),
            Target::Prefix(p) => write!(f, "{p}"),
            Target::Name(n) => f.write_str(n),
        }
    }
}

impl Target {
    /// The name this target may stand for (a prefix may be a name too).
    pub fn name(&self) -> Option<&str> {
        match self {
            Target::Id(_) => None,
            Target::Prefix(p) => Some(p.as_str()),
            Target::Name(n) => Some(n),
        }
    }

    /// Whether a file with this id, held under `name`, is a candidate.
    pub fn matches(&self, id: &FileId, name: &str) -> bool {
        match self {
            Target::Id(want) => want == id,
            Target::Prefix(p) => p.matches(id) || name_matches(name, &normalize(p.as_str())),
            Target::Name(n) => name_matches(name, &normalize(n)),
        }
    }
}

/// What a target came to among the candidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Picked<T> {
    NotFound,
    One(T),
    /// Several different files, by id; the user must choose.
    Ambiguous(Vec<T>),
}

/// The one ambiguity rule: candidates are merged by id (the first of each
/// id is kept), then none is not found, one is the file, more are ambiguous.
pub fn pick<T>(candidates: Vec<T>, id_of: impl Fn(&T) -> FileId) -> Picked<T> {
    let mut distinct: Vec<T> = Vec::with_capacity(candidates.len());
    for c in candidates {
        if !distinct.iter().any(|d| id_of(d) == id_of(&c)) {
            distinct.push(c);
        }
    }
    match distinct.len() {
        0 => Picked::NotFound,
        1 => Picked::One(distinct.remove(0)),
        _ => Picked::Ambiguous(distinct),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(first: [u8; 4]) -> FileId {
        let mut b = [0x77; 32];
        b[..4].copy_from_slice(&first);
        FileId(b)
    }

    #[test]
    fn targets_parse_as_ids_prefixes_or_names() {
        let full = id([0xab, 0xcd, 0xef, 0x01]);
        assert_eq!(full.to_hex().parse(), Ok(Target::Id(full)));
        assert_eq!(
            full.to_hex().to_uppercase().parse(),
            Ok(Target::Id(full)),
            "any case"
        );
        let Ok(Target::Prefix(p)) = "ABCDEF01".parse::<Target>() else {
            panic!("a prefix");
        };
        assert!(p.matches(&full));
        assert_eq!(p.first_byte(), 0xab);
        assert!("abcdef0"
            .parse::<Target>()
            .is_ok_and(|t| matches!(t, Target::Name(_))));
        assert!(IdPrefix::parse("abcdef017").unwrap().matches(&full));
        assert!(!IdPrefix::parse("abcdef018").unwrap().matches(&full));
        assert!(!IdPrefix::parse("abcdef02").unwrap().matches(&full));
        assert_eq!("".parse::<Target>(), Err(TargetError::Empty));
        assert_eq!(
            "café.txt".parse::<Target>(),
            Ok(Target::Name("café.txt".into()))
        );
    }

    #[test]
    fn one_rule_for_every_mode() {
        let (a, b) = (id([1, 2, 3, 4]), id([1, 2, 3, 5]));
        assert_eq!(pick(Vec::<FileId>::new(), |x| *x), Picked::NotFound);
        assert_eq!(pick(vec![a, a], |x| *x), Picked::One(a), "same id twice");
        assert_eq!(pick(vec![a, b, a], |x| *x), Picked::Ambiguous(vec![a, b]));
        let t: Target = "cafe\u{301}.txt".parse().unwrap();
        assert!(t.matches(&a, "dir/CAFÉ.txt"));
        let t: Target = "01020304".parse().unwrap();
        assert!(t.matches(&a, "x") && !t.matches(&b, "x"));
        assert!(
            t.matches(&id([9; 4]), "01020304"),
            "a prefix is also a name"
        );
    }
}
