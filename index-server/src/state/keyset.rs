//! A compact set of 32-bit file keys (the idea of a roaring bitmap, cut down
//! to what the index needs).
//!
//! Keys are grouped by their high 16 bits into chunks. A chunk with few keys
//! is a sorted `Vec<u16>` of their low halves (2 bytes a key); one with many
//! is a 65,536-bit bitmap (8 KiB, well under a byte a key once it holds more
//! than 4,096). A word found in every file, or a session sharing a million
//! files, thus costs about a bit per key instead of the 8 to 20 bytes of a
//! hash-set entry.

/// A sparse chunk with more keys than this becomes a bitmap.
const DENSE_ABOVE: usize = 4096;
/// A bitmap with fewer keys than this becomes sparse again (the gap keeps a
/// set that hovers around one threshold from converting back and forth).
const SPARSE_BELOW: usize = 2048;
/// 64-bit words in a bitmap chunk.
const WORDS: usize = 1 << 10;

/// A set with at most this many keys is a plain sorted `Vec<u32>` (4 bytes
/// a key, one allocation); chunks cost 2 bytes a key but about 48 bytes
/// each, and the keys of a small set are spread over every chunk (the index
/// holds a million keys in 16 chunks), so below this a plain list is smaller.
const SMALL_MAX: usize = 512;

/// A set of `u32` keys: insert, remove, membership, count, listing.
#[derive(Default)]
pub(crate) struct KeySet {
    len: u32,
    /// The keys, sorted, while the set is small (`chunks` is then empty).
    small: Vec<u32>,
    /// Sorted by `hi`, none empty.
    chunks: Vec<Chunk>,
}

struct Chunk {
    hi: u16,
    bits: Bits,
}

enum Bits {
    /// Sorted low halves.
    Sparse(Vec<u16>),
    /// One bit per low half, and how many are set.
    Dense(u32, Box<[u64]>),
}

fn split(key: u32) -> (u16, u16) {
    ((key >> 16) as u16, key as u16)
}

impl Bits {
    fn len(&self) -> usize {
        match self {
            Bits::Sparse(v) => v.len(),
            Bits::Dense(n, _) => *n as usize,
        }
    }

    fn contains(&self, lo: u16) -> bool {
        match self {
            Bits::Sparse(v) => v.binary_search(&lo).is_ok(),
            Bits::Dense(_, w) => w[usize::from(lo >> 6)] & (1 << (lo & 63)) != 0,
        }
    }

    fn insert(&mut self, lo: u16) -> bool {
        match self {
            Bits::Sparse(v) => match search_from_end(v, lo) {
                Ok(_) => false,
                Err(at) => {
                    v.insert(at, lo);
                    if v.len() > DENSE_ABOVE {
                        let mut words = vec![0u64; WORDS].into_boxed_slice();
                        for &l in v.iter() {
                            words[usize::from(l >> 6)] |= 1 << (l & 63);
                        }
                        *self = Bits::Dense(v.len() as u32, words);
                    }
                    true
                }
            },
            Bits::Dense(n, w) => {
                let word = &mut w[usize::from(lo >> 6)];
                let bit = 1 << (lo & 63);
                if *word & bit != 0 {
                    return false;
                }
                *word |= bit;
                *n += 1;
                true
            }
        }
    }

    fn remove(&mut self, lo: u16) -> bool {
        match self {
            Bits::Sparse(v) => match v.binary_search(&lo) {
                Ok(at) => {
                    v.remove(at);
                    // Give back most of the room once it is mostly empty.
                    if v.capacity() > 16 && v.len() * 4 < v.capacity() {
                        v.shrink_to(v.len() * 2);
                    }
                    true
                }
                Err(_) => false,
            },
            Bits::Dense(n, w) => {
                let word = &mut w[usize::from(lo >> 6)];
                let bit = 1 << (lo & 63);
                if *word & bit == 0 {
                    return false;
                }
                *word &= !bit;
                *n -= 1;
                if (*n as usize) < SPARSE_BELOW {
                    let mut v = Vec::with_capacity(*n as usize);
                    push_bits(w, 0, |lo| v.push(lo as u16));
                    *self = Bits::Sparse(v);
                }
                true
            }
        }
    }

    fn for_each(&self, base: u32, mut f: impl FnMut(u32)) {
        match self {
            Bits::Sparse(v) => v.iter().for_each(|&lo| f(base | u32::from(lo))),
            Bits::Dense(_, w) => push_bits(w, base, f),
        }
    }
}

/// `binary_search` for a key that is most likely near the end of `v`: a
/// gallop back from the end (1, 2, 4, ... places) brackets it, then a binary
/// search within the bracket. New files get roughly increasing keys (each
/// file shard hands out its own increasing slots, and the shards fill at
/// about the same pace), so a key added to a posting list lands a few
/// places, or a few hundred, before its end: O(log distance) probes, all in
/// the recently written tail, instead of a search from the cold middle of a
/// list of thousands.
fn search_from_end<T: Ord + Copy>(v: &[T], key: T) -> Result<usize, usize> {
    let Some(&last) = v.last() else {
        return Err(0);
    };
    if last < key {
        return Err(v.len());
    }
    // Invariant: v[hi] >= key.
    let mut hi = v.len() - 1;
    let mut step = 1;
    loop {
        let lo = hi.saturating_sub(step);
        if lo == 0 || v[lo] < key {
            return match v[lo..=hi].binary_search(&key) {
                Ok(i) => Ok(lo + i),
                Err(i) => Err(lo + i),
            };
        }
        hi = lo;
        step *= 2;
    }
}

/// Sets bit `key` of the bitmap `bits`, growing it as needed.
pub(crate) fn set_bit(bits: &mut Vec<u64>, key: u32) {
    let at = (key / 64) as usize;
    if bits.len() <= at {
        bits.resize(at + 1, 0);
    }
    bits[at] |= 1 << (key % 64);
}

/// Calls `f` with `base | i` for every set bit `i` of `words`, in order.
fn push_bits(words: &[u64], base: u32, mut f: impl FnMut(u32)) {
    for (i, &word) in words.iter().enumerate() {
        let mut w = word;
        while w != 0 {
            f(base | (i as u32) << 6 | w.trailing_zeros());
            w &= w - 1;
        }
    }
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    fn chunk(&self, hi: u16) -> Result<usize, usize> {
        self.chunks.binary_search_by_key(&hi, |c| c.hi)
    }

    pub fn contains(&self, key: u32) -> bool {
        if self.chunks.is_empty() {
            return self.small.binary_search(&key).is_ok();
        }
        let (hi, lo) = split(key);
        self.chunk(hi)
            .is_ok_and(|at| self.chunks[at].bits.contains(lo))
    }

    /// Adds `key`; true if it was not there.
    pub fn insert(&mut self, key: u32) -> bool {
        if self.chunks.is_empty() {
            // New files get the highest keys: most inserts append.
            if self.small.last().is_none_or(|&last| last < key) && self.small.len() < SMALL_MAX {
                self.small.push(key);
                self.len += 1;
                return true;
            }
            let Err(at) = search_from_end(&self.small, key) else {
                return false;
            };
            self.small.insert(at, key);
            self.len += 1;
            if self.small.len() > SMALL_MAX {
                // Grown out of the plain list: into chunks.
                let keys = std::mem::take(&mut self.small);
                self.len = 0;
                for k in keys {
                    self.insert_chunked(k);
                }
            }
            return true;
        }
        self.insert_chunked(key)
    }

    fn insert_chunked(&mut self, key: u32) -> bool {
        let (hi, lo) = split(key);
        // The common case, a key above every other one: the last chunk.
        if let Some(Chunk {
            hi: last_hi,
            bits: Bits::Sparse(v),
        }) = self.chunks.last_mut()
        {
            if *last_hi == hi && v.last().is_some_and(|&l| l < lo) && v.len() < DENSE_ABOVE {
                v.push(lo);
                self.len += 1;
                return true;
            }
        }
        // Most keys go to the last chunk; look there before searching.
        let last = self.chunks.len().wrapping_sub(1);
        let found = match self.chunks.last() {
            Some(c) if c.hi == hi => Ok(last),
            _ => self.chunk(hi),
        };
        let at = match found {
            Ok(at) => at,
            Err(at) => {
                self.chunks.insert(
                    at,
                    Chunk {
                        hi,
                        bits: Bits::Sparse(Vec::new()),
                    },
                );
                at
            }
        };
        let added = self.chunks[at].bits.insert(lo);
        self.len += u32::from(added);
        added
    }

    /// Removes `key`; true if it was there.
    pub fn remove(&mut self, key: u32) -> bool {
        if self.chunks.is_empty() {
            let Ok(at) = self.small.binary_search(&key) else {
                return false;
            };
            self.small.remove(at);
            self.len -= 1;
            if self.small.capacity() > 8 && self.small.len() * 4 < self.small.capacity() {
                self.small.shrink_to(self.small.len() * 2);
            }
            return true;
        }
        let (hi, lo) = split(key);
        let Ok(at) = self.chunk(hi) else {
            return false;
        };
        let removed = self.chunks[at].bits.remove(lo);
        if removed {
            self.len -= 1;
            if self.chunks[at].bits.len() == 0 {
                self.chunks.remove(at);
                if self.chunks.capacity() > 4 && self.chunks.len() * 4 < self.chunks.capacity() {
                    self.chunks.shrink_to(self.chunks.len() * 2);
                }
            }
        }
        removed
    }

    /// The `n` smallest keys, in increasing order.
    /// The key at position `i` in ascending order (`None` past the end),
    /// without allocating: O(i).
    pub fn nth(&self, i: usize) -> Option<u32> {
        if self.chunks.is_empty() {
            return self.small.get(i).copied();
        }
        let mut seen = 0usize;
        let mut found = None;
        for c in &self.chunks {
            c.bits.for_each(u32::from(c.hi) << 16, |k| {
                if seen == i {
                    found = Some(k);
                }
                seen += 1;
            });
            if found.is_some() {
                break;
            }
        }
        found
    }

    pub fn first_keys(&self, n: usize) -> Vec<u32> {
        if self.chunks.is_empty() {
            return self.small[..n.min(self.small.len())].to_vec();
        }
        let mut out = Vec::with_capacity(n.min(self.len()));
        for c in &self.chunks {
            if out.len() >= n {
                break;
            }
            c.bits.for_each(u32::from(c.hi) << 16, |k| {
                if out.len() < n {
                    out.push(k)
                }
            });
        }
        out
    }

    /// Sets bit `k` of the bitmap `bits` (grown as needed) for every key
    /// `k`; a dense chunk is ORed in a word at a time.
    pub fn or_into(&self, bits: &mut Vec<u64>) {
        if self.chunks.is_empty() {
            for &k in &self.small {
                set_bit(bits, k);
            }
            return;
        }
        for c in &self.chunks {
            let base = u32::from(c.hi) << 16;
            match &c.bits {
                Bits::Sparse(v) => {
                    for &lo in v {
                        set_bit(bits, base | u32::from(lo));
                    }
                }
                Bits::Dense(_, w) => {
                    let at = (base / 64) as usize;
                    if bits.len() < at + WORDS {
                        bits.resize(at + WORDS, 0);
                    }
                    for (out, word) in bits[at..at + WORDS].iter_mut().zip(w.iter()) {
                        *out |= word;
                    }
                }
            }
        }
    }

    /// Every key, in increasing order.
    pub fn keys(&self) -> Vec<u32> {
        if self.chunks.is_empty() {
            return self.small.clone();
        }
        let mut out = Vec::with_capacity(self.len());
        for c in &self.chunks {
            c.bits.for_each(u32::from(c.hi) << 16, |k| out.push(k));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Checks the set against a model, chunk invariants included.
    fn check(set: &KeySet, model: &BTreeSet<u32>) {
        assert_eq!(set.len(), model.len());
        assert_eq!(set.keys(), model.iter().copied().collect::<Vec<_>>());
        assert!(set.chunks.windows(2).all(|w| w[0].hi < w[1].hi));
        assert!(set.chunks.is_empty() || set.small.is_empty());
        let all = set.keys();
        for n in [0, 1, 3, all.len()] {
            assert_eq!(set.first_keys(n), all[..n.min(all.len())]);
        }
        let step = (all.len() / 7).max(1);
        for i in (0..all.len())
            .step_by(step)
            .chain([all.len().saturating_sub(1), all.len()])
        {
            assert_eq!(set.nth(i), all.get(i).copied(), "nth({i})");
        }
        let mut bits = Vec::new();
        if all.last().is_some_and(|&k| k >= 1 << 24) {
            return; // a bitmap of every key would be too big for a test
        }
        set.or_into(&mut bits);
        let from_bits: Vec<u32> = (0..bits.len() as u32 * 64)
            .filter(|k| bits[(k / 64) as usize] & (1 << (k % 64)) != 0)
            .collect();
        assert_eq!(from_bits, all, "or_into sets exactly the keys");
        for c in &set.chunks {
            assert!(c.bits.len() > 0, "no empty chunk is kept");
            if let Bits::Dense(n, w) = &c.bits {
                let ones: u32 = w.iter().map(|x| x.count_ones()).sum();
                assert_eq!(*n, ones);
            }
        }
    }

    #[test]
    fn search_from_end_agrees_with_binary_search() {
        for len in 0..70u16 {
            let v: Vec<u16> = (0..len).map(|i| i * 2 + 1).collect();
            for key in 0..=len * 2 + 2 {
                assert_eq!(
                    search_from_end(&v, key),
                    v.binary_search(&key),
                    "key {key} in 0..{len}"
                );
            }
        }
    }

    #[test]
    fn small_sets_insert_remove_and_list_in_order() {
        let mut set = KeySet::default();
        let mut model = BTreeSet::new();
        for k in [7, 3, 70_000, 3, 0, u32::MAX, 65_535, 65_536] {
            assert_eq!(set.insert(k), model.insert(k));
            check(&set, &model);
        }
        assert!(set.contains(70_000) && !set.contains(70_001));
        for k in [3, 3, 1, u32::MAX, 0, 7, 65_535, 65_536, 70_000] {
            assert_eq!(set.remove(k), model.remove(&k));
            check(&set, &model);
        }
        assert_eq!(set.len(), 0);
        assert!(set.chunks.is_empty());
    }

    #[test]
    fn chunks_become_bitmaps_and_back() {
        let mut set = KeySet::default();
        let mut model = BTreeSet::new();
        // Every third key of two chunks: well over the threshold in each.
        for k in (0..140_000u32).step_by(3) {
            set.insert(k);
            model.insert(k);
        }
        check(&set, &model);
        assert!(set
            .chunks
            .iter()
            .take(2)
            .all(|c| matches!(c.bits, Bits::Dense(..))));
        assert!(set.contains(3 * 20_000) && !set.contains(3 * 20_000 + 1));
        // Empty the first chunk down to sparse, then to nothing.
        for k in (0..65_536u32).step_by(3) {
            if k % 1000 != 0 {
                set.remove(k);
                model.remove(&k);
            }
        }
        check(&set, &model);
        assert!(matches!(set.chunks[0].bits, Bits::Sparse(_)));
        for k in (0..65_536u32).step_by(1000) {
            set.remove(k);
            model.remove(&k);
        }
        check(&set, &model);
        assert_eq!(set.chunks[0].hi, 1);
    }

    #[test]
    fn agrees_with_a_model_under_random_operations() {
        // A small xorshift: deterministic, no dependency.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut set = KeySet::default();
        let mut model = BTreeSet::new();
        for round in 0..200_000 {
            let r = next();
            // Keys crowd into three chunks so that they fill and empty.
            let key = ((r >> 32) % 3) as u32 * 65_536 + (r as u32 % 12_000);
            let insert = if round < 120_000 {
                r % 3 != 0
            } else {
                r % 10 == 0
            };
            if insert {
                assert_eq!(set.insert(key), model.insert(key));
            } else {
                assert_eq!(set.remove(key), model.remove(&key));
            }
            assert_eq!(set.contains(key), model.contains(&key));
        }
        check(&set, &model);
        assert!(set.chunks.iter().all(|c| matches!(c.bits, Bits::Sparse(_))));
    }
}
