//! Search matching: how a query typed by a user is compared with file
//! names. One set of rules for the index server and for every overlay node
//! (`--mode p2p`), so both modes find the same files.
//!
//! **Folding** ([`fold`]): both the name and the query are folded before
//! they are compared, never what is shown or saved:
//! 1. Unicode compatibility decomposition (NFKD), so composed (NFC),
//!    decomposed (NFD) and compatibility forms (full-width `ｃａｆé`,
//!    ligatures `ﬁ`, half-width katakana) are one text;
//! 2. lower case;
//! 3. the generic diacritical marks (the blocks U+0300–036F, U+1AB0–1AFF,
//!    U+1DC0–1DFF, U+20D0–20FF, U+FE20–FE2F: accents, cedillas, umlauts,
//!    rings, tildes on Latin, Greek and Cyrillic letters) are dropped, so
//!    `e` finds `é` and `resume` finds `résumé`. Script-specific marks
//!    (Thai vowels, Devanagari signs, Japanese voicing marks) stay: they
//!    change the letter, not just its accent;
//! 4. the Latin letters that have no decomposition are spelled as their
//!    base letters ([`fold_letter`]: `ß`→`ss`, `æ`→`ae`, `œ`→`oe`,
//!    `ø`→`o`, `ł`→`l`, `đ`/`ð`→`d`, `þ`→`th`, `ı`→`i`, `ħ`→`h`, `ŧ`→`t`)
//!    and the Greek final sigma is `σ`;
//! 5. canonical composition (NFC), so what remains (Hangul syllables,
//!    kana with voicing marks) is one character per letter again;
//! 6. an apostrophe (`'`, `’`, `‘`, `ʼ`, `` ` ``) between two letters or
//!    digits is dropped, so `dont` finds `Don't`; elsewhere it separates.
//!
//! **Pieces** ([`for_each_piece`]): a folded text is cut at every character
//! that is neither a letter, a digit nor a combining mark. Within what is
//! left, a change between a script written with spaces and one written
//! without ([`is_unspaced`]: Chinese, Japanese kana, Thai, Lao, Khmer,
//! Myanmar) also cuts: `千尋2001` is the run `千尋` and the word `2001`.
//!
//! **Query** ([`Query::parse`]): each query word is folded and cut the same
//! way. A word piece of 2 or more characters matches a name word that
//! *starts with* it; a piece of 1 character matches only a whole word (a
//! one-letter prefix matches a twentieth of all files and narrows nothing,
//! while `Vol 2` or `a` as a whole word still means something). A run of 2
//! or more unspaced characters matches a name holding that sequence; a run
//! of 1 character only a run of just that character. Every term must match
//! (AND). A query word that starts with `-` excludes the names its pieces
//! match. [`Query::match_name`] also says how many terms matched only as
//! prefixes (of a longer word, or inside a longer run), which ranks
//! whole-word matches first.
//!
//! **Index tokens** ([`for_each_token`]): what an index must record so that
//! a term's candidates are a union of at most two posting lists: every word
//! ([`TokenKind::Word`]), its first 2, 3 and 4 characters when it is longer
//! ([`TokenKind::Prefix2`]...), every character pair of an unspaced run
//! ([`TokenKind::Pair`]) and a 1-character run as a word. Candidates are
//! then confirmed with [`Query::match_name`] (a longer query word is looked
//! up by its first 4 characters).

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Longest prefix an index records for each word, in characters. A query
/// word longer than this is looked up by its first this-many characters
/// and confirmed against the names.
pub const MAX_INDEXED_PREFIX: usize = 4;

/// Most terms (pieces of included and excluded words together) in one query.
pub const MAX_QUERY_TERMS: usize = 32;

/// Whether `c` is one of the generic diacritical marks [`fold`] drops.
fn is_diacritic(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}'
            | '\u{1AB0}'..='\u{1AFF}'
            | '\u{1DC0}'..='\u{1DFF}'
            | '\u{20D0}'..='\u{20FF}'
            | '\u{FE20}'..='\u{FE2F}')
}

/// Whether `c` is an apostrophe that [`fold`] drops inside a word.
fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '\u{2019}' | '\u{2018}' | '\u{02BC}' | '`')
}

/// The base-letter spelling of a lower-case Latin letter that Unicode does
/// not decompose (the letters a keyboard without them is typed around),
/// and `σ` for the final sigma; `None` for every other character.
pub fn fold_letter(c: char) -> Option<&'static str> {
    Some(match c {
        'ß' => "ss",
        'æ' => "ae",
        'œ' => "oe",
        'ø' => "o",
        'ł' => "l",
        'đ' | 'ð' => "d",
        'þ' => "th",
        'ı' => "i",
        'ħ' => "h",
        'ŧ' => "t",
        'ς' => "σ",
        _ => return None,
    })
}

/// Whether `c` belongs to a script written without spaces between words:
/// CJK ideographs (and their radicals, compatibility forms and iteration
/// marks), hiragana, katakana, Thai, Lao, Khmer and Myanmar. Hangul is
/// written with spaces and is not one of them.
pub fn is_unspaced(c: char) -> bool {
    matches!(c as u32,
        0x0E00..=0x0EFF // Thai, Lao
            | 0x1000..=0x109F // Myanmar
            | 0x1780..=0x17FF // Khmer
            | 0x19E0..=0x19FF // Khmer symbols
            | 0x2E80..=0x2FDF // CJK radicals, Kangxi radicals
            | 0x3005..=0x3007 // 々 〆 〇
            | 0x3021..=0x3029 // Hangzhou numerals
            | 0x3031..=0x3035 // kana repeat marks
            | 0x3038..=0x303C
            | 0x3040..=0x30FF // hiragana, katakana
            | 0x31F0..=0x31FF // katakana phonetic extensions
            | 0x3400..=0x4DBF // CJK extension A
            | 0x4E00..=0x9FFF // CJK unified ideographs
            | 0xF900..=0xFAFF // CJK compatibility ideographs
            | 0x20000..=0x3FFFF) // CJK extensions B and later
}

/// Whether [`fold`] leaves `c` as it is whatever surrounds it: CJK
/// ideographs, and kana other than the voicing marks (which compose with
/// the kana before them) and the compatibility digraphs `ゟ`, `ヿ`.
fn folds_to_itself(c: char) -> bool {
    matches!(c as u32,
        0x3041..=0x3096 | 0x309D..=0x309E | 0x30A0..=0x30FE | 0x3400..=0x4DBF | 0x4E00..=0x9FFF)
}

/// A name or query folded for comparison (see the module docs): NFKD, lower
/// case, diacritics dropped, [`fold_letter`], NFC, apostrophes inside words
/// dropped. ASCII text only has its case and apostrophes folded.
pub fn fold(s: &str) -> String {
    if s.is_ascii() {
        let b = s.as_bytes();
        let mut out = String::with_capacity(s.len());
        for (i, &c) in b.iter().enumerate() {
            if is_apostrophe(char::from(c))
                && i > 0
                && b[i - 1].is_ascii_alphanumeric()
                && b.get(i + 1).is_some_and(u8::is_ascii_alphanumeric)
            {
                continue;
            }
            out.push(char::from(c.to_ascii_lowercase()));
        }
        return out;
    }
    if s.chars().all(|c| c.is_ascii() || folds_to_itself(c)) {
        // Most Chinese and Japanese names: no normalization round trip.
        let chars: Vec<char> = s.chars().collect();
        let mut out = String::with_capacity(s.len());
        for (i, &c) in chars.iter().enumerate() {
            if is_apostrophe(c)
                && i > 0
                && chars[i - 1].is_alphanumeric()
                && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric())
            {
                continue;
            }
            out.push(c.to_ascii_lowercase());
        }
        return out;
    }
    let composed: Vec<char> = match fold_marks_simply(s) {
        Some(flat) => flat.chars().collect(),
        None => fold_marks(s).nfc().collect(),
    };
    drop_inner_apostrophes(&composed)
}

/// NFKD, diacritics dropped, lower case, [`fold_letter`]: what [`fold`]
/// then composes (NFC).
fn fold_marks(s: &str) -> String {
    let mut flat = String::with_capacity(s.len());
    for c in s.nfkd() {
        if is_diacritic(c) {
            continue;
        }
        for l in c.to_lowercase() {
            match fold_letter(l) {
                Some(base) => flat.push_str(base),
                None => flat.push(l),
            }
        }
    }
    flat
}

/// `fold_marks(s).nfc()` without the normalization round trip, for the
/// names it is the same for: each character decomposed on its own, and
/// `None` (use the full path) as soon as a combining mark other than a
/// dropped diacritic appears (NFKD would reorder such marks) or the result
/// might compose (NFC's quick check is not a plain yes). Accented Latin,
/// Greek and Cyrillic names take this path; it skips NFC's composition
/// pass, most of a search's folding time (docs/benchmarks.md, issue 13).
fn fold_marks_simply(s: &str) -> Option<String> {
    let mut flat = String::with_capacity(s.len());
    let mut simple = true;
    for c in s.chars() {
        if c.is_ascii() {
            flat.push(c.to_ascii_lowercase());
            continue;
        }
        unicode_normalization::char::decompose_compatible(c, |d| {
            if is_diacritic(d) {
                return;
            }
            if unicode_normalization::char::canonical_combining_class(d) != 0 {
                simple = false;
            }
            for l in d.to_lowercase() {
                match fold_letter(l) {
                    Some(base) => flat.push_str(base),
                    None => flat.push(l),
                }
            }
        });
        if !simple {
            return None;
        }
    }
    (unicode_normalization::is_nfc_quick(flat.chars()) == unicode_normalization::IsNormalized::Yes)
        .then_some(flat)
}

/// `composed` as a string, less the apostrophes between two letters or
/// digits.
fn drop_inner_apostrophes(composed: &[char]) -> String {
    let mut out = String::with_capacity(composed.len());
    for (i, &c) in composed.iter().enumerate() {
        if is_apostrophe(c)
            && i > 0
            && composed[i - 1].is_alphanumeric()
            && composed.get(i + 1).is_some_and(|n| n.is_alphanumeric())
        {
            continue;
        }
        out.push(c);
    }
    out
}

/// A piece of a [`fold`]ed text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Letters and digits of a script written with spaces.
    Word(&'a str),
    /// Letters of a script written without spaces ([`is_unspaced`]).
    Run(&'a str),
}

/// Calls `f` with each piece of the folded text `folded`, in order (see the
/// module docs); a piece holds at least one letter or digit.
pub fn for_each_piece<'a>(folded: &'a str, mut f: impl FnMut(Piece<'a>)) {
    // (start byte, unspaced?, has a letter or digit)
    let mut current: Option<(usize, bool, bool)> = None;
    let mut flush = |cur: &mut Option<(usize, bool, bool)>, end: usize| {
        if let Some((start, unspaced, alnum)) = cur.take() {
            if alnum {
                let text = &folded[start..end];
                f(if unspaced {
                    Piece::Run(text)
                } else {
                    Piece::Word(text)
                });
            }
        }
    };
    for (i, c) in folded.char_indices() {
        if c.is_alphanumeric() {
            let unspaced = is_unspaced(c);
            match &mut current {
                Some((_, u, alnum)) if *u == unspaced => *alnum = true,
                _ => {
                    flush(&mut current, i);
                    current = Some((i, unspaced, true));
                }
            }
        } else if is_combining_mark(c) {
            // A mark stays with the letter before it.
            if current.is_none() {
                current = Some((i, is_unspaced(c), false));
            }
        } else {
            flush(&mut current, i);
        }
    }
    flush(&mut current, folded.len());
}

/// The pieces of a text, [`fold`]ed, as owned strings: `(is a run, text)`.
pub fn pieces(text: &str) -> Vec<(bool, String)> {
    let folded = fold(text);
    let mut out = Vec::new();
    for_each_piece(&folded, |p| match p {
        Piece::Word(w) => out.push((false, w.to_string())),
        Piece::Run(r) => out.push((true, r.to_string())),
    });
    out
}

/// What an index token stands for (see [`for_each_token`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TokenKind {
    /// A whole word (or a 1-character run).
    Word = 0,
    /// The first 2 characters of a longer word.
    Prefix2 = 2,
    /// The first 3 characters of a longer word.
    Prefix3 = 3,
    /// The first 4 characters of a longer word.
    Prefix4 = 4,
    /// Two consecutive characters of an unspaced run.
    Pair = 5,
}

impl TokenKind {
    /// The prefix token of `n` characters (2 to [`MAX_INDEXED_PREFIX`]).
    pub fn prefix(n: usize) -> Option<TokenKind> {
        match n {
            2 => Some(TokenKind::Prefix2),
            3 => Some(TokenKind::Prefix3),
            4 => Some(TokenKind::Prefix4),
            _ => None,
        }
    }
}

/// The byte length of the first `n` characters of `s`, if it has more
/// than `n`.
fn first_chars_of_longer(s: &str, n: usize) -> Option<usize> {
    let mut it = s.char_indices().skip(n);
    it.next().map(|(at, _)| at)
}

/// Calls `f` with every index token of the folded text `folded` (see the
/// module docs); a token may come more than once.
pub fn for_each_token(folded: &str, mut f: impl FnMut(TokenKind, &str)) {
    for_each_piece(folded, |piece| match piece {
        Piece::Word(w) => {
            f(TokenKind::Word, w);
            for n in 2..=MAX_INDEXED_PREFIX {
                match first_chars_of_longer(w, n) {
                    Some(end) => f(TokenKind::prefix(n).unwrap_or(TokenKind::Word), &w[..end]),
                    None => break,
                }
            }
        }
        Piece::Run(r) => {
            let mut chars = r.char_indices().peekable();
            let mut pairs = 0;
            while let Some((at, _)) = chars.next() {
                let Some(&(next, c2)) = chars.peek() else {
                    break;
                };
                f(TokenKind::Pair, &r[at..next + c2.len_utf8()]);
                pairs += 1;
            }
            if pairs == 0 {
                f(TokenKind::Word, r);
            }
        }
    });
}

/// One term of a query (a piece of a query word).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Term {
    /// Matches a word starting with it (2 or more characters).
    Prefix(String),
    /// Matches only this whole word, or a run of just this character.
    Whole(String),
    /// Matches a run holding this sequence (2 or more characters).
    Seq(String),
}

impl Term {
    /// The text of the term, folded.
    pub fn text(&self) -> &str {
        match self {
            Term::Prefix(s) | Term::Whole(s) | Term::Seq(s) => s,
        }
    }

    /// How the term matches a piece: `Some(true)` whole, `Some(false)` as a
    /// prefix or inside a longer run, `None` not at all.
    fn matches(&self, piece: Piece<'_>) -> Option<bool> {
        match (self, piece) {
            (Term::Prefix(q), Piece::Word(w)) => w.starts_with(q.as_str()).then(|| w == q),
            (Term::Whole(q), Piece::Word(w) | Piece::Run(w)) => (w == q).then_some(true),
            (Term::Seq(q), Piece::Run(r)) => r.contains(q.as_str()).then(|| r == q),
            _ => None,
        }
    }

    /// [`Self::matches`] against an ASCII word, ignoring its case.
    fn matches_ascii(&self, w: &str) -> Option<bool> {
        match self {
            Term::Prefix(q) => (w.len() >= q.len()
                && w.as_bytes()[..q.len()].eq_ignore_ascii_case(q.as_bytes()))
            .then_some(w.len() == q.len()),
            Term::Whole(q) => w.eq_ignore_ascii_case(q).then_some(true),
            Term::Seq(_) => None,
        }
    }

    /// Index tokens whose posting lists, united, hold every file this term
    /// matches: `(kind, text)`, at most two; for a [`Term::Seq`] the pairs,
    /// each of which such a file must hold (intersect them).
    pub fn tokens(&self) -> Vec<(TokenKind, String)> {
        match self {
            Term::Whole(q) => vec![(TokenKind::Word, q.clone())],
            Term::Prefix(q) => {
                let n = q.chars().count().min(MAX_INDEXED_PREFIX);
                let end = first_chars_of_longer(q, n).unwrap_or(q.len());
                let kind = TokenKind::prefix(n).unwrap_or(TokenKind::Prefix2);
                vec![(TokenKind::Word, q.clone()), (kind, q[..end].to_string())]
            }
            Term::Seq(q) => {
                let mut out = Vec::new();
                for_each_token(q, |kind, t| {
                    let t = (kind, t.to_string());
                    if !out.contains(&t) {
                        out.push(t);
                    }
                });
                out
            }
        }
    }
}

/// Why a query cannot be searched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("nothing to search for: give at least one word with a letter or digit")]
    Empty,
    #[error("only excluded words: give at least one word to look for besides the `-word`s")]
    OnlyExclusions,
    #[error("the query has {terms} terms, more than the {max} allowed: use fewer words")]
    TooManyTerms { terms: usize, max: usize },
}

/// A parsed query: terms that must all match, terms that must not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    pub include: Vec<Term>,
    pub exclude: Vec<Term>,
}

/// How a name matched a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Match {
    /// Included terms that matched only as a prefix of a longer word (or
    /// inside a longer run): 0 when every term is a whole word of the name.
    pub prefix_only: u8,
}

fn terms_of(word: &str, out: &mut Vec<Term>) {
    for (run, text) in pieces(word) {
        let one = text.chars().nth(1).is_none();
        let term = match (run, one) {
            (_, true) => Term::Whole(text),
            (false, false) => Term::Prefix(text),
            (true, false) => Term::Seq(text),
        };
        if !out.contains(&term) {
            out.push(term);
        }
    }
}

impl Query {
    /// Parses query words as a user typed them (see the module docs): a
    /// word starting with `-` excludes.
    pub fn parse<S: AsRef<str>>(words: &[S]) -> Result<Query, QueryError> {
        let mut q = Query::default();
        for w in words {
            let w = w.as_ref();
            match w.strip_prefix('-') {
                Some(rest) if !rest.is_empty() => terms_of(rest, &mut q.exclude),
                _ => terms_of(w, &mut q.include),
            }
            let terms = q.include.len() + q.exclude.len();
            if terms > MAX_QUERY_TERMS {
                return Err(QueryError::TooManyTerms {
                    terms,
                    max: MAX_QUERY_TERMS,
                });
            }
        }
        if q.include.is_empty() {
            return Err(if q.exclude.is_empty() {
                QueryError::Empty
            } else {
                QueryError::OnlyExclusions
            });
        }
        Ok(q)
    }

    /// How `name` matches, or `None` when it does not (see [`Match`]).
    pub fn match_name(&self, name: &str) -> Option<Match> {
        self.match_folded(&fold(name))
    }

    /// [`Self::match_name`] of an already [`fold`]ed name.
    pub fn match_folded(&self, folded: &str) -> Option<Match> {
        self.terms_in_folded(folded).matched(self)
    }

    /// Which terms one name holds, to be [united](TermsFound::unite) with
    /// those of the file's other names (each holder of a file may name it
    /// differently, and the index finds a file by any of its names).
    pub fn terms_in(&self, name: &str) -> TermsFound {
        if name.is_ascii() && !name.chars().any(is_apostrophe) {
            return self.terms_in_ascii(name);
        }
        self.terms_in_folded(&fold(name))
    }

    /// [`Self::terms_in`] of an ASCII name without apostrophes, without
    /// folding it first: its pieces are its runs of letters and digits,
    /// compared ignoring ASCII case (what folding would do).
    fn terms_in_ascii(&self, name: &str) -> TermsFound {
        let mut found = TermsFound::default();
        for w in name
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            found.excluded |= self.exclude.iter().any(|t| t.matches_ascii(w).is_some());
            for (i, t) in self.include.iter().enumerate() {
                match t.matches_ascii(w) {
                    Some(true) => {
                        found.whole |= 1 << i;
                        found.any |= 1 << i;
                    }
                    Some(false) => found.any |= 1 << i,
                    None => {}
                }
            }
        }
        found
    }

    fn terms_in_folded(&self, folded: &str) -> TermsFound {
        let mut pieces: Vec<Piece<'_>> = Vec::with_capacity(16);
        for_each_piece(folded, |p| pieces.push(p));
        let mut found = TermsFound {
            excluded: self
                .exclude
                .iter()
                .any(|t| pieces.iter().any(|p| t.matches(*p).is_some())),
            ..TermsFound::default()
        };
        for (i, t) in self.include.iter().enumerate() {
            for p in &pieces {
                match t.matches(*p) {
                    Some(true) => {
                        found.whole |= 1 << i;
                        found.any |= 1 << i;
                        break;
                    }
                    Some(false) => found.any |= 1 << i,
                    None => {}
                }
            }
        }
        found
    }
}

/// Which terms of a [`Query`] one or more names hold: bit `i` stands for
/// `include[i]` (a query has at most [`MAX_QUERY_TERMS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TermsFound {
    /// Terms matched as whole words (or whole runs).
    pub whole: u64,
    /// Terms matched at all.
    pub any: u64,
    /// Whether an excluded term matched.
    pub excluded: bool,
}

impl TermsFound {
    /// The terms found in either.
    pub fn unite(self, other: TermsFound) -> TermsFound {
        TermsFound {
            whole: self.whole | other.whole,
            any: self.any | other.any,
            excluded: self.excluded || other.excluded,
        }
    }

    /// How these terms match `query`: `None` unless every included term is
    /// there and no excluded one.
    pub fn matched(self, query: &Query) -> Option<Match> {
        let all = if query.include.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << query.include.len()) - 1
        };
        (!self.excluded && self.any & all == all).then(|| Match {
            prefix_only: (all & !self.whole).count_ones() as u8,
        })
    }
}

/// Kinds of file for the `--type` filter, each a list of extensions (the
/// table eMule and Napster clients had, with today's formats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Audio,
    Video,
    Image,
    Document,
    Archive,
    Program,
}

impl FileKind {
    pub const ALL: [FileKind; 6] = [
        FileKind::Audio,
        FileKind::Video,
        FileKind::Image,
        FileKind::Document,
        FileKind::Archive,
        FileKind::Program,
    ];

    /// The name used on the command line (`--type audio`).
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Audio => "audio",
            FileKind::Video => "video",
            FileKind::Image => "image",
            FileKind::Document => "document",
            FileKind::Archive => "archive",
            FileKind::Program => "program",
        }
    }

    /// The kind called `name` (case-insensitive).
    pub fn parse(name: &str) -> Option<FileKind> {
        FileKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name.trim()))
    }

    /// The extensions of this kind, lower case, without the dot.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            FileKind::Audio => &[
                "mp3", "flac", "ogg", "oga", "opus", "wav", "aac", "m4a", "wma", "aiff", "aif",
                "ape", "alac", "mid", "midi", "mka",
            ],
            FileKind::Video => &[
                "mkv", "mp4", "avi", "mov", "wmv", "webm", "m4v", "mpg", "mpeg", "flv", "ogv",
                "ts", "3gp", "vob",
            ],
            FileKind::Image => &[
                "jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff", "svg", "heic", "raw",
                "psd", "ico",
            ],
            FileKind::Document => &[
                "pdf", "txt", "md", "doc", "docx", "odt", "rtf", "epub", "mobi", "xls", "xlsx",
                "ods", "ppt", "pptx", "odp", "csv", "html", "htm", "tex", "djvu",
            ],
            FileKind::Archive => &[
                "zip", "rar", "7z", "tar", "gz", "tgz", "bz2", "xz", "zst", "tar.gz", "tar.bz2",
                "tar.xz", "tar.zst", "iso",
            ],
            FileKind::Program => &[
                "exe", "msi", "dmg", "pkg", "deb", "rpm", "apk", "appimage", "jar", "bin", "sh",
                "bat", "com",
            ],
        }
    }
}

/// The extension of a name as the `--ext` and `--type` filters see it:
/// that of [`crate::names::split_extension`] on the last path component,
/// lower case, without the dot (`"a/B.Tar.GZ"` → `"tar.gz"`).
pub fn extension_of(name: &str) -> String {
    let base = crate::names::base_name(name).to_lowercase();
    let (_, ext) = crate::names::split_extension(&base);
    ext.trim_start_matches('.').to_string()
}

/// Most extensions in one filter (a `--type` expands to at most 20).
pub const MAX_FILTER_EXTENSIONS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    /// The quick fold is the full one wherever it answers: strings drawn
    /// from accented Latin, Greek, Cyrillic, Vietnamese, Hangul, kana with
    /// voicing marks, compatibility forms, ligatures and loose combining
    /// marks, in every order.
    #[test]
    fn the_quick_fold_agrees_with_the_full_one() {
        let pool: Vec<char> = "aAzZ09 -_.'\u{2019}éÉèàÀçÇñÑöÖüÜßæÆœŒøØłŁđĐþÞıİĳŉſǅǆﬁﬂ\
             ½²ªºµ°ÅåĀāĂăĄąŐőŰűŹźŻżŽžǍǎǗǘȘșȚțḀḁẞ\
             ΑαΆάΈέΉήΐΰςσΣωΏώἀἁᾳᾼ\
             АаЁёЙйЇїЎўЪъ\
             ĂẮẶặƠờỡỮữ\
             한국어가각각\
             かがカガﾊﾞﾊﾟｶﾞゕゖ゛゜\u{3099}\u{309A}\
             千と尋の神隠し々〆\
             ＡＢｃｄ１２\
             \u{0301}\u{0308}\u{0327}\u{0323}\u{0345}\u{0591}\u{05B0}\u{093C}\u{0B3E}\u{0B47}\u{20DD}\u{1DC0}\u{FE20}\
             ीिक़ஔொ"
            .chars()
            .collect();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut quick, mut full) = (0, 0);
        for _ in 0..200_000 {
            let len = 1 + next(8);
            let s: String = (0..len).map(|_| pool[next(pool.len())]).collect();
            let slow: String = fold_marks(&s).nfc().collect();
            match fold_marks_simply(&s) {
                Some(fast) => {
                    quick += 1;
                    assert_eq!(
                        fast,
                        slow,
                        "{s:?} ({:?})",
                        s.chars().map(|c| c as u32).collect::<Vec<_>>()
                    );
                }
                None => full += 1,
            }
        }
        // Both paths were exercised.
        assert!(
            quick > 10_000 && full > 10_000,
            "quick {quick}, full {full}"
        );
        // Typical names take the quick path.
        for name in [
            "Beyoncé_Halo.mp3",
            "Résumé 2026.pdf",
            "Dvořák – Symfonie č. 9.flac",
            "Ελληνικά.txt",
            "Москва.jpg",
        ] {
            assert!(fold_marks_simply(name).is_some(), "{name}");
        }
    }

    fn q(words: &[&str]) -> Query {
        Query::parse(words).unwrap()
    }

    fn finds(words: &[&str], name: &str) -> bool {
        q(words).match_name(name).is_some()
    }

    #[test]
    fn folding_ignores_case_form_diacritics_and_apostrophes() {
        assert_eq!(fold("Don't Stop Me Now.ogg"), "dont stop me now.ogg");
        assert_eq!(fold("Beyonc\u{e9}_Halo"), "beyonce_halo");
        assert_eq!(fold("Beyonce\u{301}_Halo"), "beyonce_halo");
        assert_eq!(fold("R\u{c9}SUM\u{c9}"), "resume");
        assert_eq!(fold("Stra\u{df}e"), "strasse");
        assert_eq!(fold("STRA\u{1e9e}E"), "strasse");
        assert_eq!(
            fold("\u{c6}sir K\u{f8}benhavn \u{141}\u{f3}d\u{17a}"),
            "aesir kobenhavn lodz"
        );
        assert_eq!(
            fold("\u{ff23}\u{ff21}\u{ff26}\u{c9} \u{fb01}le"),
            "cafe file"
        );
        assert_eq!(
            fold("\u{39f}\u{394}\u{3a5}\u{3a3}\u{3a3}\u{395}\u{3a5}\u{3a3}"),
            fold("οδυσσευς")
        );
        assert_eq!(fold("\u{130}stanbul"), "istanbul");
        // Apostrophes at the edge of a word separate; typographic ones fold too.
        assert_eq!(fold("rock 'n' roll"), "rock 'n' roll");
        assert_eq!(fold("Don\u{2019}t \u{e9}t\u{e9}'s"), "dont etes");
        // Japanese voicing marks and Hangul stay whole letters.
        assert_eq!(
            fold("\u{30ac}\u{30f3}\u{30c0}\u{30e0}"),
            "\u{30ac}\u{30f3}\u{30c0}\u{30e0}"
        );
        assert_eq!(fold("\u{ff76}\u{ff9e}"), "\u{30ac}");
        assert_eq!(fold("\u{d55c}\u{ae00}"), "\u{d55c}\u{ae00}");
        // The shortcut for CJK and kana agrees with the full folding.
        assert_eq!(fold("\u{304b}\u{3099}X"), "\u{304c}x");
        assert_eq!(fold("千と千尋 Don't"), "千と千尋 dont");
        for c in (0x3000u32..0x3100)
            .chain(0x4e00..0x4e10)
            .filter_map(char::from_u32)
        {
            let text = format!("a{c}\u{3099}B");
            let full: String = {
                let flat: String = text
                    .nfkd()
                    .filter(|c| !is_diacritic(*c))
                    .flat_map(char::to_lowercase)
                    .collect();
                flat.nfc().collect()
            };
            assert_eq!(fold(&text), full, "U+{:04X}", c as u32);
            if folds_to_itself(c) {
                assert_eq!(fold(&c.to_string()), c.to_string());
                assert_eq!(
                    c.to_string().nfkd().nfc().collect::<String>(),
                    c.to_string(),
                    "U+{:04X}",
                    c as u32
                );
            }
        }
        // Only combining marks or punctuation: nothing is left to match.
        assert!(pieces("\u{301}\u{302}\u{303}").is_empty());
        assert!(pieces("!!! --- ...").is_empty());
    }

    #[test]
    fn unspaced_scripts_are_runs() {
        let p = pieces("千と千尋の神隠し2001 (DVD).mkv");
        assert_eq!(
            p,
            vec![
                (true, "千と千尋の神隠し".to_string()),
                (false, "2001".to_string()),
                (false, "dvd".to_string()),
                (false, "mkv".to_string())
            ]
        );
        let mut tokens = Vec::new();
        for_each_token(&fold("千尋 x"), |k, t| tokens.push((k, t.to_string())));
        assert_eq!(
            tokens,
            vec![
                (TokenKind::Pair, "千尋".into()),
                (TokenKind::Word, "x".into())
            ]
        );
    }

    #[test]
    fn tokens_of_a_word_are_it_and_its_short_prefixes() {
        let mut tokens = Vec::new();
        for_each_token("monday mo", |k, t| tokens.push((k, t.to_string())));
        assert_eq!(
            tokens,
            vec![
                (TokenKind::Word, "monday".into()),
                (TokenKind::Prefix2, "mo".into()),
                (TokenKind::Prefix3, "mon".into()),
                (TokenKind::Prefix4, "mond".into()),
                (TokenKind::Word, "mo".into()),
            ]
        );
    }

    #[test]
    fn prefixes_whole_words_and_ranking_tiers() {
        assert!(finds(&["big"], "big50.bin"));
        assert!(finds(&["mon"], "Blue Monday.mp3"));
        assert!(
            !finds(&["onday"], "Blue Monday.mp3"),
            "prefix, not substring"
        );
        assert!(finds(&["dont"], "Don't Stop Me Now.ogg"));
        assert!(finds(&["don't"], "Dont Stop.ogg"));
        assert!(finds(&["Beyonce"], "Beyonc\u{e9}_Halo.mp3"));
        assert!(finds(&["beyonc\u{e9}"], "Beyonce_Halo.mp3"));
        assert!(finds(&["resume"], "r\u{e9}sum\u{e9}.pdf"));
        assert!(finds(&["strasse"], "Stra\u{df}e.txt"));
        assert!(finds(&["lodz"], "\u{141}\u{f3}d\u{17a}.jpg"));
        assert!(finds(&["千尋"], "千と千尋の神隠し.mkv"));
        assert!(!finds(&["尋千"], "千と千尋の神隠し.mkv"));
        assert!(finds(&["千と千尋"], "千と千尋の神隠し.mkv"));
        // Every term must match.
        assert!(finds(&["blue", "mon"], "Blue Monday.mp3"));
        assert!(!finds(&["blue", "tue"], "Blue Monday.mp3"));
        // One character: whole words only.
        assert!(finds(&["vol", "2"], "Vol 2.mp3"));
        assert!(!finds(&["vol", "2"], "Vol 21.mp3"));
        assert!(!finds(&["b"], "Blue.mp3"));
        // Tiers.
        assert_eq!(
            q(&["blue"]).match_name("blue.mp3"),
            Some(Match { prefix_only: 0 })
        );
        assert_eq!(
            q(&["blu"]).match_name("blue.mp3"),
            Some(Match { prefix_only: 1 })
        );
        assert_eq!(
            q(&["blue", "mon"]).match_name("blue monday"),
            Some(Match { prefix_only: 1 })
        );
        assert_eq!(
            q(&["千尋"]).match_name("千尋"),
            Some(Match { prefix_only: 0 })
        );
        assert_eq!(
            q(&["千尋"]).match_name("千と千尋"),
            Some(Match { prefix_only: 1 })
        );
    }

    /// The ASCII shortcut says what folding says.
    #[test]
    fn ascii_names_match_as_their_folded_form() {
        let names = [
            "Blue Monday (1983).MP3",
            "big50.bin",
            "a-b_c d",
            "MON mon Monday",
            "x",
        ];
        let queries: [&[&str]; 6] = [
            &["mon"],
            &["blue", "mo"],
            &["b", "-c"],
            &["monday", "-big"],
            &["x"],
            &["1983", "mp"],
        ];
        for name in names {
            for words in queries {
                let query = q(words);
                assert_eq!(
                    query.terms_in(name),
                    query.terms_in_folded(&fold(name)),
                    "{name:?} {words:?}"
                );
            }
        }
    }

    #[test]
    fn excluded_words() {
        assert!(finds(&["queen"], "Queen Live at Wembley.mp3"));
        assert!(!finds(&["queen", "-live"], "Queen Live at Wembley.mp3"));
        assert!(!finds(&["queen", "-liv"], "Queen Liverpool.mp3"));
        assert!(finds(&["queen", "-live"], "Queen Studio.mp3"));
        assert_eq!(Query::parse(&["-live"]), Err(QueryError::OnlyExclusions));
        // A lone dash is punctuation.
        assert_eq!(Query::parse(&["-"]), Err(QueryError::Empty));
    }

    #[test]
    fn hostile_queries_are_refused_or_bounded() {
        assert_eq!(Query::parse(&["!!!", "..."]), Err(QueryError::Empty));
        assert_eq!(Query::parse(&["\u{301}\u{301}"]), Err(QueryError::Empty));
        let many: Vec<String> = (0..1000).map(|i| format!("w{i}")).collect();
        assert!(matches!(
            Query::parse(&many),
            Err(QueryError::TooManyTerms { .. })
        ));
        let long = "a b ".repeat(2500);
        assert!(Query::parse(&[long]).is_ok(), "two distinct terms");
    }

    #[test]
    fn term_tokens() {
        assert_eq!(
            Term::Prefix("mo".into()).tokens(),
            vec![
                (TokenKind::Word, "mo".into()),
                (TokenKind::Prefix2, "mo".into())
            ]
        );
        assert_eq!(
            Term::Prefix("monday".into()).tokens(),
            vec![
                (TokenKind::Word, "monday".into()),
                (TokenKind::Prefix4, "mond".into())
            ]
        );
        assert_eq!(
            Term::Seq("千と千".into()).tokens(),
            vec![
                (TokenKind::Pair, "千と".into()),
                (TokenKind::Pair, "と千".into())
            ]
        );
    }

    /// Every name found by a term is in the union of its tokens' postings
    /// (the index's candidates), for words around the indexed lengths.
    #[test]
    fn candidates_cover_every_match() {
        let names = [
            "a",
            "ab",
            "abc",
            "abcd",
            "abcde",
            "abcdef",
            "千と千尋",
            "千",
            "x千尋y",
        ];
        let queries = [
            "a",
            "ab",
            "abc",
            "abcd",
            "abcde",
            "abcdef",
            "千尋",
            "千",
            "と千尋",
        ];
        for name in names {
            let mut tokens = Vec::new();
            for_each_token(&fold(name), |k, t| tokens.push((k, t.to_string())));
            for query in queries {
                let qy = q(&[query]);
                if qy.match_name(name).is_none() {
                    continue;
                }
                let t = &qy.include[0];
                let wanted = t.tokens();
                let covered = match t {
                    Term::Seq(_) => wanted.iter().all(|w| tokens.contains(w)),
                    _ => wanted.iter().any(|w| tokens.contains(w)),
                };
                assert!(covered, "{query:?} finds {name:?} but its tokens miss it");
            }
        }
    }

    #[test]
    fn extension_table() {
        assert_eq!(extension_of("music/Song.FLAC"), "flac");
        assert_eq!(extension_of("x.Tar.GZ"), "tar.gz");
        assert_eq!(extension_of("README"), "");
        assert!(FileKind::Audio.extensions().contains(&"mp3"));
        assert_eq!(FileKind::parse("Video"), Some(FileKind::Video));
        assert_eq!(FileKind::parse("nope"), None);
        for k in FileKind::ALL {
            assert!(k.extensions().len() <= MAX_FILTER_EXTENSIONS);
        }
    }
}
