//! The word index: which files' names hold an index token (a word, one of
//! its first 2 to 4 characters, or a character pair of a run of Chinese,
//! Japanese or Thai: `common::search::for_each_token`), keyed by a 32-bit
//! keyed hash of the token rather than by its text.
//!
//! Most words of real names (a track number, a date, a rare word) belong to
//! one file, and storing their text again beside the names costs more than
//! the rest of their entry. So no text is stored at all: an entry is the
//! word's hash and either the one file key (8 bytes in all) or the index of
//! a [`Postings`] list when several files, or several holders' names of one
//! file, contain it. Two words with the same hash share an entry, so a
//! posting list may name files that do not contain the word searched for:
//! search confirms every candidate against the file's names (see
//! `name_has_word`), which the names are stored for anyway. Adding and
//! removing count occurrences (one per distinct word of one holder's name),
//! so they commute and need no look at the names.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use parking_lot::RwLock;

use common::search::TokenKind;

use super::keyset::KeySet;
use super::FileKey;

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;
/// In an entry's value: the rest is a `lists` index, not a file key.
const LIST: u32 = 1 << 31;

/// Files with one token (well, one token hash) in their names.
#[derive(Default)]
struct Postings {
    keys: KeySet,
}

#[derive(Default)]
struct Shard {
    /// (token hash, file key or `LIST | index into lists`).
    table: HashTable<(u32, u32)>,
    lists: Vec<Postings>,
    free: Vec<u32>,
    /// (list, key) → occurrences beyond the first, for the few files with
    /// several holders whose names hold the token (kept here rather than in
    /// each list, which would cost every list an empty map).
    more: HashMap<(u32, FileKey), u32>,
}

/// In a token's code before [`mix`]: the token is spelled out, not hashed.
const EXACT: u32 = 1 << 31;
/// Longest token (in bytes, ASCII only) spelled out in its code.
pub const EXACT_BYTES: usize = 4;

/// The spelled-out code of a token of at most [`EXACT_BYTES`] ASCII bytes
/// (none of them NUL): [`EXACT`], the kind in 3 bits, the bytes in 7 bits
/// each. Distinct tokens get distinct codes, as no byte is 0.
fn exact_code(kind: TokenKind, text: &str) -> Option<u32> {
    let b = text.as_bytes();
    if b.len() > EXACT_BYTES || !b.iter().all(|&c| c != 0 && c.is_ascii()) {
        return None;
    }
    let mut code = EXACT | (kind as u32 & 7) << 28;
    for (i, &c) in b.iter().enumerate() {
        code |= u32::from(c) << (7 * (3 - i));
    }
    Some(code)
}

/// Whether a token's posting list holds exactly the files with it (no
/// other token can share its entry): see [`WordIndex::token_hash`].
pub fn token_is_exact(kind: TokenKind, text: &str) -> bool {
    exact_code(kind, text).is_some()
}

/// A keyed bijection of 32-bit values (murmur3's finalizer between two
/// keys): distinct codes stay distinct, and where a code lands in the table
/// cannot be foretold without the keys.
fn mix(mut x: u32, (k1, k2): (u32, u32)) -> u32 {
    x ^= k1;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^= x >> 16;
    x ^ k2
}

/// Spreads a 32-bit word hash over the 64 bits hashbrown reads (it takes
/// buckets from the low bits and a tag from the top seven).
fn spread(h: u32) -> u64 {
    u64::from(h).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Shard {
    fn get(&self, h: u32) -> Option<u32> {
        self.table.find(spread(h), |e| e.0 == h).map(|e| e.1)
    }

    fn new_list(&mut self, postings: Postings) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.lists[i as usize] = postings;
                i
            }
            None => {
                self.lists.push(postings);
                (self.lists.len() - 1) as u32
            }
        }
    }

    fn free_list(&mut self, i: u32) {
        self.lists[i as usize] = Postings::default();
        self.free.push(i);
    }

    fn add(&mut self, h: u32, key: FileKey) {
        debug_assert!(key < LIST);
        let Some(value) = self.get(h) else {
            self.table
                .insert_unique(spread(h), (h, key), |e| spread(e.0));
            return;
        };
        if value & LIST != 0 {
            self.add_to_list(value & !LIST, key);
            return;
        }
        // One file so far: make it a list of two occurrences.
        let i = self.new_list(Postings::default());
        self.add_to_list(i, value);
        self.add_to_list(i, key);
        if let Some(e) = self.table.find_mut(spread(h), |e| e.0 == h) {
            e.1 = LIST | i;
        }
    }

    /// [`Self::add`] of every key of `keys` (in increasing order, a key
    /// once per occurrence) under one hash: one table look-up for them all.
    fn add_run(&mut self, h: u32, keys: &[FileKey]) {
        let [first, rest @ ..] = keys else {
            return;
        };
        if rest.is_empty() {
            self.add(h, *first);
            return;
        }
        let i = match self.get(h) {
            Some(value) if value & LIST != 0 => value & !LIST,
            found => {
                let i = self.new_list(Postings::default());
                match found {
                    None => {
                        self.table
                            .insert_unique(spread(h), (h, LIST | i), |e| spread(e.0));
                    }
                    Some(only) => {
                        self.add_to_list(i, only);
                        if let Some(e) = self.table.find_mut(spread(h), |e| e.0 == h) {
                            e.1 = LIST | i;
                        }
                    }
                }
                i
            }
        };
        for &key in keys {
            debug_assert!(key < LIST);
            self.add_to_list(i, key);
        }
    }

    /// [`Self::add_run`] of each run of one hash in `group` (pairs of this
    /// shard, sorted); `keys` is scratch space.
    fn add_group(&mut self, group: &[(u32, FileKey)], keys: &mut Vec<FileKey>) {
        let mut at = 0;
        while at < group.len() {
            let h = group[at].0;
            let run = group[at..].iter().take_while(|(g, _)| *g == h).count();
            keys.clear();
            keys.extend(group[at..at + run].iter().map(|(_, k)| *k));
            self.add_run(h, keys);
            at += run;
        }
    }

    fn add_to_list(&mut self, i: u32, key: FileKey) {
        if !self.lists[i as usize].keys.insert(key) {
            *self.more.entry((i, key)).or_insert(0) += 1;
        }
    }

    fn remove_from_list(&mut self, i: u32, key: FileKey) {
        match self.more.get_mut(&(i, key)) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.more.remove(&(i, key));
            }
            None => {
                self.lists[i as usize].keys.remove(key);
            }
        }
    }

    fn remove(&mut self, h: u32, key: FileKey) {
        let Some(value) = self.get(h) else {
            return;
        };
        // What the entry becomes: gone, or back to one file.
        let after = if value & LIST == 0 {
            if value != key {
                return;
            }
            None
        } else {
            let i = value & !LIST;
            self.remove_from_list(i, key);
            let list = &self.lists[i as usize];
            let after = match list.keys.len() {
                0 => None,
                1 => {
                    let only = list.keys.keys()[0];
                    if self.more.contains_key(&(i, only)) {
                        return;
                    }
                    Some(only)
                }
                _ => return,
            };
            self.free_list(i);
            after
        };
        if let Ok(entry) = self.table.find_entry(spread(h), |e| e.0 == h) {
            match after {
                None => drop(entry.remove()),
                Some(only) => entry.into_mut().1 = only,
            }
        }
    }
}

/// The word index, sharded by word hash.
pub(crate) struct WordIndex {
    hasher: RandomState,
    /// Keys of the bijection [`mix`] (random per index).
    seeds: (u32, u32),
    /// For tests: every word gets the same hash, as if all collided.
    #[cfg(test)]
    collide: bool,
    shards: Box<[RwLock<Shard>]>,
}

impl Default for WordIndex {
    fn default() -> Self {
        WordIndex {
            hasher: RandomState::new(),
            seeds: {
                let h = RandomState::new().hash_one(0x5eed_u32);
                (h as u32, (h >> 32) as u32)
            },
            #[cfg(test)]
            collide: false,
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }
}

impl WordIndex {
    /// The 32-bit hash of a (folded) word that every other method takes.
    #[cfg(test)]
    pub fn hash(&self, word: &str) -> u32 {
        self.token_hash(TokenKind::Word, word)
    }

    /// The 32-bit code of an index token (its kind and folded text).
    ///
    /// A token of at most [`EXACT_BYTES`] ASCII bytes (every 2- to
    /// 4-letter prefix of a Latin word, every short word) is spelled out
    /// in the code: its kind and its 7-bit characters, with the top bit
    /// set, so no other token shares its entry and its posting list holds
    /// exactly the files with it (see [`token_is_exact`]). Any other token
    /// is a 31-bit keyed hash, which another token may share (search
    /// confirms candidates against the names). Both then go through a
    /// keyed bijection, so that nobody can choose tokens that crowd one
    /// bucket of the table.
    pub fn token_hash(&self, kind: TokenKind, text: &str) -> u32 {
        #[cfg(test)]
        if self.collide {
            return 0x5eed_cafe;
        }
        let code = match exact_code(kind, text) {
            Some(code) => code,
            None => {
                let h = self.hasher.hash_one((kind as u8, text));
                (h ^ (h >> 32)) as u32 & !EXACT
            }
        };
        mix(code, self.seeds)
    }

    /// Sets `bits[k / 64]` bit `k % 64` for every key `k` that may hold the
    /// token hashed to `h` (the vector grows as needed), under one read
    /// lock: a bitmap word at a time for the dense parts of a list.
    pub fn or_into(&self, h: u32, bits: &mut Vec<u64>) {
        let shard = self.shard(h).read();
        match shard.get(h) {
            None => {}
            Some(v) if v & LIST == 0 => super::keyset::set_bit(bits, v),
            Some(v) => shard.lists[(v & !LIST) as usize].keys.or_into(bits),
        }
    }

    /// Sets `marks[i]` for each of `keys[i]` that may hold the token hashed
    /// to `h` (one read lock for them all).
    pub fn mark_containing(&self, h: u32, keys: &[FileKey], marks: &mut [bool]) {
        let shard = self.shard(h).read();
        match shard.get(h) {
            None => {}
            Some(v) if v & LIST == 0 => {
                for (k, m) in keys.iter().zip(marks.iter_mut()) {
                    *m |= *k == v;
                }
            }
            Some(v) => {
                let list = &shard.lists[(v & !LIST) as usize].keys;
                for (k, m) in keys.iter().zip(marks.iter_mut()) {
                    if !*m && list.contains(*k) {
                        *m = true;
                    }
                }
            }
        }
    }

    fn shard(&self, h: u32) -> &RwLock<Shard> {
        &self.shards[(h >> (32 - SHARD_BITS)) as usize]
    }

    /// Records one more name of file `key` with the word hashed to `h`.
    pub fn add(&self, h: u32, key: FileKey) {
        self.shard(h).write().add(h, key);
    }

    /// [`Self::add`] of every `(hash, key)` pair, in any order: each shard
    /// is locked once, and each hash looked up once, for the whole batch
    /// (a registration of 512 names holds about 8,000 tokens, many of them
    /// the same common prefixes).
    ///
    /// Shards that another registration holds are passed over and done
    /// after the rest: two batches sorted the same way would otherwise
    /// visit the shards in the same order, the second waiting at each one
    /// for the first to leave it (a convoy that left half of each core
    /// idle with two connections registering).
    pub fn add_all(&self, pairs: &[(u32, FileKey)]) {
        let shard_of = |h: u32| (h >> (32 - SHARD_BITS)) as usize;
        // Grouped by shard in one counting pass, then each group sorted on
        // its own: ~125 pairs a group instead of one sort of 8,000.
        let mut starts = [0usize; SHARDS + 1];
        for &(h, _) in pairs.iter() {
            starts[shard_of(h) + 1] += 1;
        }
        for s in 0..SHARDS {
            starts[s + 1] += starts[s];
        }
        let mut grouped = vec![(0u32, 0 as FileKey); pairs.len()];
        let mut next = starts;
        for &pair in pairs.iter() {
            let s = shard_of(pair.0);
            grouped[next[s]] = pair;
            next[s] += 1;
        }
        let mut keys: Vec<FileKey> = Vec::new();
        let mut busy: Vec<usize> = Vec::new();
        for s in 0..SHARDS {
            let group = &mut grouped[starts[s]..starts[s + 1]];
            if group.is_empty() {
                continue;
            }
            group.sort_unstable_by_key(|&(h, k)| u64::from(h) << 32 | u64::from(k));
            match self.shards[s].try_write() {
                Some(mut shard) => shard.add_group(group, &mut keys),
                None => busy.push(s),
            }
        }
        for s in busy {
            let group = &grouped[starts[s]..starts[s + 1]];
            self.shards[s].write().add_group(group, &mut keys);
        }
    }

    /// Withdraws one name of file `key` with the word hashed to `h`.
    pub fn remove(&self, h: u32, key: FileKey) {
        self.shard(h).write().remove(h, key);
    }

    /// How many files may contain the word (0: none does).
    pub fn len(&self, h: u32) -> usize {
        let shard = self.shard(h).read();
        match shard.get(h) {
            None => 0,
            Some(v) if v & LIST == 0 => 1,
            Some(v) => shard.lists[(v & !LIST) as usize].keys.len(),
        }
    }

    /// The files that may contain the word, in key order.
    pub fn keys(&self, h: u32) -> Vec<FileKey> {
        let shard = self.shard(h).read();
        match shard.get(h) {
            None => Vec::new(),
            Some(v) if v & LIST == 0 => vec![v],
            Some(v) => shard.lists[(v & !LIST) as usize].keys.keys(),
        }
    }

    /// The `n` smallest keys of files that may contain the word.
    pub fn keys_first(&self, h: u32, n: usize) -> Vec<FileKey> {
        let shard = self.shard(h).read();
        match shard.get(h) {
            None => Vec::new(),
            Some(_) if n == 0 => Vec::new(),
            Some(v) if v & LIST == 0 => vec![v],
            Some(v) => shard.lists[(v & !LIST) as usize].keys.first_keys(n),
        }
    }

    /// Whether file `key` may contain the word.
    #[cfg(test)]
    pub fn contains(&self, h: u32, key: FileKey) -> bool {
        let shard = self.shard(h).read();
        match shard.get(h) {
            None => false,
            Some(v) if v & LIST == 0 => v == key,
            Some(v) => shard.lists[(v & !LIST) as usize].keys.contains(key),
        }
    }

    /// Keeps the `keys` that may contain the word.
    pub fn retain_containing(&self, h: u32, keys: &mut Vec<FileKey>) {
        let shard = self.shard(h).read();
        match shard.get(h) {
            None => keys.clear(),
            Some(v) if v & LIST == 0 => keys.retain(|k| *k == v),
            Some(v) => {
                let list = &shard.lists[(v & !LIST) as usize].keys;
                keys.retain(|k| list.contains(*k));
            }
        }
    }

    /// An index in which every word collides with every other.
    #[cfg(test)]
    pub fn colliding() -> Self {
        WordIndex {
            collide: true,
            ..WordIndex::default()
        }
    }

    /// Entries in the index (distinct word hashes), and of them how many
    /// hold a list.
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        let mut entries = 0;
        let mut lists = 0;
        for s in self.shards.iter() {
            let s = s.read();
            entries += s.table.len();
            lists += s.lists.len() - s.free.len();
        }
        (entries, lists)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_goes_from_one_file_to_many_and_back() {
        let words = WordIndex::default();
        let h = words.hash("blue");
        words.add(h, 1);
        assert_eq!(words.counts(), (1, 0), "one file: no list");
        assert_eq!((words.len(h), words.keys(h)), (1, vec![1]));
        words.add(h, 2);
        words.add(h, 3);
        assert_eq!(words.counts(), (1, 1));
        assert_eq!(words.keys(h), vec![1, 2, 3]);
        assert!(words.contains(h, 2) && !words.contains(h, 4));
        words.remove(h, 1);
        words.remove(h, 3);
        assert_eq!(words.counts(), (1, 0), "one file again: the list is gone");
        assert_eq!(words.keys(h), vec![2]);
        words.add(h, 5);
        assert_eq!(words.counts(), (1, 1), "the freed list is reused");
        words.remove(h, 5);
        words.remove(h, 2);
        assert_eq!(words.counts(), (0, 0));
        assert_eq!(words.len(h), 0);
        // Removing what is not there changes nothing.
        words.remove(h, 2);
        assert_eq!(words.counts(), (0, 0));
    }

    #[test]
    fn occurrences_of_one_file_are_counted() {
        let words = WordIndex::default();
        let h = words.hash("moon");
        // Two holders of file 7 both name it with the word.
        words.add(h, 7);
        words.add(h, 7);
        assert_eq!(words.counts(), (1, 1));
        assert_eq!(words.keys(h), vec![7]);
        words.remove(h, 7);
        assert_eq!(words.counts(), (1, 0), "one occurrence left: no list");
        assert!(words.contains(h, 7));
        words.remove(h, 7);
        assert_eq!(words.counts(), (0, 0));
        // Three occurrences and another file, removed in another order.
        for k in [7, 8, 7, 7] {
            words.add(h, k);
        }
        for k in [7, 7, 8] {
            words.remove(h, k);
            assert!(words.contains(h, 7));
        }
        assert_eq!(words.counts(), (1, 0));
        words.remove(h, 7);
        assert_eq!(words.counts(), (0, 0));
    }

    #[test]
    fn short_ascii_tokens_are_spelled_out_and_never_share_an_entry() {
        let words = WordIndex::default();
        assert!(token_is_exact(TokenKind::Prefix2, "mp"));
        assert!(token_is_exact(TokenKind::Word, "love"));
        assert!(token_is_exact(TokenKind::Word, ""));
        assert!(!token_is_exact(TokenKind::Word, "lovely"));
        assert!(!token_is_exact(TokenKind::Prefix2, "été"));
        // Every 1- and 2-character token of letters and digits, of each
        // kind: all codes distinct.
        let chars: Vec<char> = ('a'..='z').chain('0'..='9').collect();
        let mut seen = std::collections::HashSet::new();
        for kind in [TokenKind::Word, TokenKind::Prefix2, TokenKind::Pair] {
            assert!(seen.insert(words.token_hash(kind, "")));
            for a in &chars {
                assert!(seen.insert(words.token_hash(kind, &a.to_string())));
                for b in &chars {
                    assert!(seen.insert(words.token_hash(kind, &format!("{a}{b}"))));
                }
            }
        }
        // The same token, the same code; another index, other keys.
        assert_eq!(
            words.token_hash(TokenKind::Word, "ab"),
            words.token_hash(TokenKind::Word, "ab")
        );
        let other = WordIndex::default();
        assert_ne!(words.seeds, other.seeds);
    }

    #[test]
    fn a_batch_adds_what_one_by_one_adds() {
        let one = WordIndex::default();
        let batch = WordIndex::default();
        let mut pairs = Vec::new();
        // Many hashes over every shard, lists and single files, a key more
        // than once (two holders' names), and an entry that exists first.
        let pre = one.hash("pre");
        one.add(pre, 3);
        batch.add(pre, 3);
        for k in 0..2000u32 {
            for h in [
                pre,
                k.wrapping_mul(0x9e37_79b9),
                (k % 7) << 27 | 5,
                42 << 26,
            ] {
                pairs.push((h, k % 1500));
            }
        }
        for &(h, k) in &pairs {
            one.add(h, k);
        }
        batch.add_all(&pairs);
        assert_eq!(one.counts(), batch.counts());
        for &(h, _) in &pairs {
            assert_eq!(one.keys(h), batch.keys(h));
        }
        // Occurrences were counted the same: removing each pair once
        // empties both.
        for &(h, k) in &pairs {
            one.remove(h, k);
            batch.remove(h, k);
        }
        one.remove(pre, 3);
        batch.remove(pre, 3);
        assert_eq!(one.counts(), (0, 0));
        assert_eq!(batch.counts(), (0, 0));
    }

    /// Batches added from several threads at once, over the same hashes
    /// (so that shards are often held by another batch and done after the
    /// rest), leave what adding them one by one leaves.
    #[test]
    fn concurrent_batches_add_what_one_by_one_adds() {
        let one = WordIndex::default();
        let shared = WordIndex::default();
        let batches: Vec<Vec<(u32, FileKey)>> = (0..4u32)
            .map(|t| {
                (0..20_000u32)
                    .map(|i| ((i % 3000).wrapping_mul(0x9e37_79b9), t * 20_000 + i))
                    .collect()
            })
            .collect();
        for &(h, k) in batches.iter().flatten() {
            one.add(h, k);
        }
        std::thread::scope(|scope| {
            for batch in &batches {
                let shared = &shared;
                scope.spawn(move || {
                    for part in batch.chunks(500) {
                        shared.add_all(part);
                    }
                });
            }
        });
        assert_eq!(one.counts(), shared.counts());
        for &(h, _) in &batches[0] {
            assert_eq!(one.keys(h), shared.keys(h));
        }
    }

    #[test]
    fn colliding_words_share_an_entry_and_part_again() {
        let words = WordIndex::default();
        // Two words whose hashes collide are the same entry: use one hash
        // for both, as a collision would.
        let h = 0xdead_beef;
        words.add(h, 1); // "alpha" in file 1
        words.add(h, 2); // "omega" in file 2
        assert_eq!(words.keys(h), vec![1, 2]);
        words.remove(h, 1);
        assert_eq!(words.keys(h), vec![2]);
        assert_eq!(words.counts(), (1, 0));
    }
}
