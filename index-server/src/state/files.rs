//! The files table: id → size and holders, each file also reachable by its
//! 4-byte key.
//!
//! The table is split into 64 shards, each behind its own lock. A file lives
//! in the shard named by the top six bits of its id (ids are SHA-256
//! digests, so they spread evenly; an id prefix of 8 hex digits thus names
//! one shard, and resolving it walks 1/64 of the files), and its key is its
//! slot number in that shard with the shard number in the low bits, so
//! either the id or the key leads straight to one shard. In a shard:
//!
//! - `slots`: the records, in fixed-size segments (no slack from doubling
//!   and no copying of the whole table as it grows); a removed file's slot
//!   goes on a free list and is reused, with its key;
//! - `ids`: a hash table of slot numbers (4 bytes and a control byte a
//!   bucket), hashed and compared through the slots, so an id is stored
//!   once;
//! - `names`: the first holder's name of every file, packed in 8 KiB
//!   chunks instead of one allocation each; names that are replaced or
//!   removed are garbage until the shard is compacted, which happens when
//!   the garbage outweighs the live names;
//! - `more`: the further holders of the few files that have several.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use common::id::FileId;
use common::index_proto::SharedFile;
use common::target::IdPrefix;
use hashbrown::HashTable;
use parking_lot::RwLock;
use smallvec::SmallVec;

use super::{FileKey, SessionId};

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;
/// Slots in a shard: keys stay below 2^31, which the word index relies on.
const MAX_SLOTS: u32 = 1 << (31 - SHARD_BITS);
/// Slots in one segment: 256 x 56 bytes is 14 KiB, jemalloc's largest
/// small size class. A larger, "large" allocation gets a page of padding
/// from jemalloc (its cache-oblivious offset): 4 bytes a file at 1,024
/// slots a segment, measured.
const SEGMENT: usize = 256;
/// Keys looked at per read lock taken in [`FileTable::with_keys`]: enough
/// for the CPU to overlap their cache misses, few enough that a writer
/// waits microseconds.
const KEYS_PER_LOCK: usize = 64;
/// Bytes in one chunk of names (a name never straddles two): a small size
/// class of jemalloc, as [`SEGMENT`]'s (16 KiB chunks cost 8 bytes a file
/// more, measured).
const CHUNK: usize = 1 << 13;
/// In `NameRef::len`: the file has holders beyond the first (in `more`).
const MORE: u16 = 1 << 15;
/// No session has this id (they count from 1): marks a free slot.
const FREE: SessionId = 0;

/// Where a name lies in a shard's chunks.
#[derive(Clone, Copy, Default)]
struct NameRef {
    chunk: u32,
    at: u16,
    /// Length, and the `MORE` flag in the top bit.
    len: u16,
}

impl NameRef {
    fn len(self) -> usize {
        usize::from(self.len & !MORE)
    }
}

/// One file: 56 bytes.
struct Slot {
    id: FileId,
    size: u64,
    /// The first holder, or `FREE`.
    session: SessionId,
    /// The first holder's name.
    name: NameRef,
}

/// A holder beyond the first.
struct Holder {
    session: SessionId,
    name: Box<str>,
}

/// Names packed in chunks, each allocated once at its full size.
#[derive(Default)]
struct Names {
    chunks: Vec<Vec<u8>>,
    /// Bytes no slot refers to any more.
    garbage: usize,
}

impl Names {
    fn push(&mut self, name: &str) -> NameRef {
        // Names are at most MAX_NAME_LEN (1 KiB) long; the cap here only
        // keeps a longer one from corrupting the chunk layout.
        let bytes = &name.as_bytes()[..floor_char_boundary(name, CHUNK / 2)];
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.len() + bytes.len() <= CHUNK);
        if !fits {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let chunk = self.chunks.len() - 1;
        let c = &mut self.chunks[chunk];
        let at = c.len();
        c.extend_from_slice(bytes);
        NameRef {
            chunk: chunk as u32,
            at: at as u16,
            len: bytes.len() as u16,
        }
    }

    fn get(&self, r: NameRef) -> &str {
        let at = usize::from(r.at);
        let bytes = &self.chunks[r.chunk as usize][at..at + r.len()];
        // Always valid: whole names (cut at a character boundary) go in.
        std::str::from_utf8(bytes).unwrap_or_default()
    }

    fn release(&mut self, r: NameRef) {
        self.garbage += r.len();
    }

    /// Bytes taken in the chunks (the unused ends of full chunks included).
    fn used(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |last| (self.chunks.len() - 1) * CHUNK + last.len())
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

#[derive(Default)]
struct Shard {
    ids: HashTable<u32>,
    slots: Vec<Vec<Slot>>,
    /// Slots in use or free (the next new slot's number).
    len: u32,
    free: Vec<u32>,
    names: Names,
    more: HashMap<u32, Vec<Holder>>,
}

/// A file in a shard, as seen under its lock.
#[derive(Clone, Copy)]
pub(crate) struct FileRef<'a> {
    shard: &'a Shard,
    slot: u32,
}

impl<'a> FileRef<'a> {
    fn slot(&self) -> &'a Slot {
        self.shard.slot(self.slot)
    }

    pub fn id(&self) -> FileId {
        self.slot().id
    }

    pub fn size(&self) -> u64 {
        self.slot().size
    }

    /// Every holder with the name it uses, in the order they came.
    pub fn holders(&self) -> impl Iterator<Item = (SessionId, &'a str)> + 'a {
        let slot = self.slot();
        let shard = self.shard;
        let first = std::iter::once((slot.session, shard.names.get(slot.name)));
        let more = (slot.name.len & MORE != 0)
            .then(|| shard.more.get(&self.slot))
            .flatten()
            .into_iter()
            .flatten()
            .map(|h| (h.session, &*h.name));
        first.chain(more)
    }
}

/// What registering one file changed.
pub(crate) enum Registered {
    New(FileKey),
    /// The session already held the file under another name (returned).
    Renamed(FileKey, String),
    Unchanged,
    Rejected,
}

/// What withdrawing one holder changed.
pub(crate) struct Dropped {
    pub key: FileKey,
    pub size: u64,
    /// The name that holder used.
    pub name: String,
}

impl Shard {
    fn slot(&self, n: u32) -> &Slot {
        let n = n as usize;
        &self.slots[n / SEGMENT][n % SEGMENT]
    }

    fn slot_mut(&mut self, n: u32) -> &mut Slot {
        let n = n as usize;
        &mut self.slots[n / SEGMENT][n % SEGMENT]
    }

    fn find(&self, h: u64, id: &FileId) -> Option<u32> {
        self.ids.find(h, |&n| self.slot(n).id == *id).copied()
    }

    /// A slot for a new file (not yet in `ids`).
    fn alloc(&mut self, slot: Slot) -> Option<u32> {
        if let Some(n) = self.free.pop() {
            *self.slot_mut(n) = slot;
            return Some(n);
        }
        if self.len >= MAX_SLOTS {
            return None;
        }
        let n = self.len;
        if self.slots.last().is_none_or(|s| s.len() == SEGMENT) {
            self.slots.push(Vec::with_capacity(SEGMENT));
        }
        if let Some(segment) = self.slots.last_mut() {
            segment.push(slot);
        }
        self.len += 1;
        Some(n)
    }

    fn set_more(&mut self, n: u32, on: bool) {
        let slot = self.slot_mut(n);
        if on {
            slot.name.len |= MORE;
        } else {
            slot.name.len &= !MORE;
        }
    }

    /// Compacts the names once the garbage outweighs the live ones.
    fn maybe_compact(&mut self) {
        let garbage = self.names.garbage;
        if garbage < CHUNK || garbage * 2 < self.names.used() {
            return;
        }
        let mut names = Names::default();
        for segment in &mut self.slots {
            for slot in segment.iter_mut().filter(|s| s.session != FREE) {
                let more = slot.name.len & MORE;
                let name = self.names.get(slot.name);
                slot.name = names.push(name);
                slot.name.len |= more;
            }
        }
        self.names = names;
    }
}

/// The files table.
pub(crate) struct FileTable {
    hasher: RandomState,
    shards: Box<[RwLock<Shard>]>,
}

impl Default for FileTable {
    fn default() -> Self {
        FileTable {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }
}

/// The key of slot `n` of shard `s`.
fn key_of(s: usize, n: u32) -> FileKey {
    n << SHARD_BITS | s as u32
}

/// The shard and slot of a key.
fn split(key: FileKey) -> (usize, u32) {
    ((key as usize) & (SHARDS - 1), key >> SHARD_BITS)
}

impl FileTable {
    fn hash(&self, id: &FileId) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The shard of an id: its top six bits. A peer may claim made-up ids
    /// that all fall in one shard; that costs only lock sharing, as the
    /// table in the shard is still keyed by a keyed hash of the whole id.
    fn shard_of(id: &FileId) -> usize {
        usize::from(id.0[0] >> (8 - SHARD_BITS))
    }

    /// Records `session` as a holder of `file`.
    pub fn register(&self, session: SessionId, file: &SharedFile) -> Registered {
        let h = self.hash(&file.id);
        let s = Self::shard_of(&file.id);
        let mut guard = self.shards[s].write();
        let shard = &mut *guard;
        if let Some(n) = shard.find(h, &file.id) {
            let slot = shard.slot(n);
            let (size, first, old_ref) = (slot.size, slot.session, slot.name);
            if size != file.size {
                return Registered::Rejected;
            }
            let key = key_of(s, n);
            if first == session {
                if shard.names.get(old_ref) == file.name {
                    return Registered::Unchanged;
                }
                let old = shard.names.get(old_ref).to_string();
                let mut new_ref = shard.names.push(&file.name);
                new_ref.len |= old_ref.len & MORE;
                shard.slot_mut(n).name = new_ref;
                shard.names.release(old_ref);
                shard.maybe_compact();
                return Registered::Renamed(key, old);
            }
            let more = shard.more.entry(n).or_default();
            match more.iter_mut().find(|h| h.session == session) {
                Some(h) if *h.name == *file.name => Registered::Unchanged,
                Some(h) => {
                    let old = std::mem::replace(&mut h.name, file.name.as_str().into());
                    Registered::Renamed(key, old.into())
                }
                None => {
                    more.push(Holder {
                        session,
                        name: file.name.as_str().into(),
                    });
                    shard.set_more(n, true);
                    Registered::New(key)
                }
            }
        } else {
            let name = shard.names.push(&file.name);
            let slot = Slot {
                id: file.id,
                size: file.size,
                session,
                name,
            };
            let Some(n) = shard.alloc(slot) else {
                shard.names.release(name);
                return Registered::Rejected;
            };
            let Shard { ids, slots, .. } = shard;
            ids.insert_unique(h, n, |&m| {
                let m = m as usize;
                self.hash(&slots[m / SEGMENT][m % SEGMENT].id)
            });
            Registered::New(key_of(s, n))
        }
    }

    /// Withdraws `session`'s holding of `id`; the file goes (and its slot
    /// and key are free for reuse) with its last holder.
    pub fn drop_holder(&self, session: SessionId, id: &FileId) -> Option<Dropped> {
        let h = self.hash(id);
        let s = Self::shard_of(id);
        let mut shard = self.shards[s].write();
        let n = shard.find(h, id)?;
        Self::drop_from(&mut shard, s, n, h, session)
    }

    /// [`drop_holder`](Self::drop_holder) for the file with this key, if
    /// there is one (no lookup by id: the key names the slot).
    pub fn drop_holder_by_key(&self, session: SessionId, key: FileKey) -> Option<Dropped> {
        let (s, n) = split(key);
        let mut shard = self.shards[s].write();
        if n >= shard.len || shard.slot(n).session == FREE {
            return None;
        }
        let h = self.hash(&shard.slot(n).id);
        Self::drop_from(&mut shard, s, n, h, session)
    }

    /// Withdraws `session`'s holding of file `n` of shard `s`, whose id
    /// hashes to `h`.
    fn drop_from(
        shard: &mut Shard,
        s: usize,
        n: u32,
        h: u64,
        session: SessionId,
    ) -> Option<Dropped> {
        let slot = shard.slot(n);
        let (size, first, first_ref) = (slot.size, slot.session, slot.name);
        let has_more = first_ref.len & MORE != 0;
        let dropped = |name: String| Dropped {
            key: key_of(s, n),
            size,
            name,
        };
        if first != session {
            let more = shard.more.get_mut(&n)?;
            let at = more.iter().position(|h| h.session == session)?;
            let gone = more.remove(at);
            if more.is_empty() {
                shard.more.remove(&n);
                shard.set_more(n, false);
            }
            return Some(dropped(gone.name.into()));
        }
        let name = shard.names.get(first_ref).to_string();
        shard.names.release(first_ref);
        let next = if has_more {
            shard
                .more
                .get_mut(&n)
                .filter(|more| !more.is_empty())
                .map(|more| more.remove(0))
        } else {
            None
        };
        match next {
            Some(next) => {
                // The next holder moves up into the slot.
                let still_more = shard.more.get(&n).is_some_and(|m| !m.is_empty());
                if !still_more {
                    shard.more.remove(&n);
                }
                let mut r = shard.names.push(&next.name);
                if still_more {
                    r.len |= MORE;
                }
                let slot = shard.slot_mut(n);
                slot.session = next.session;
                slot.name = r;
            }
            None => {
                if let Ok(entry) = shard.ids.find_entry(h, |&m| m == n) {
                    entry.remove();
                }
                let slot = shard.slot_mut(n);
                slot.session = FREE;
                slot.name = NameRef::default();
                shard.free.push(n);
            }
        }
        shard.maybe_compact();
        Some(dropped(name))
    }

    /// Runs `f` on the file with this id, under its shard's read lock.
    pub fn with_id<R>(&self, id: &FileId, f: impl FnOnce(FileRef<'_>) -> R) -> Option<R> {
        let h = self.hash(id);
        let shard = self.shards[Self::shard_of(id)].read();
        let n = shard.find(h, id)?;
        Some(f(FileRef {
            shard: &shard,
            slot: n,
        }))
    }

    /// Runs `f` on the file with this key (if any), under its shard's read lock.
    pub fn with_key<R>(&self, key: FileKey, f: impl FnOnce(FileRef<'_>) -> R) -> Option<R> {
        let (s, n) = split(key);
        let shard = self.shards[s].read();
        if n >= shard.len || shard.slot(n).session == FREE {
            return None;
        }
        Some(f(FileRef {
            shard: &shard,
            slot: n,
        }))
    }

    /// Runs `f` on each file of `keys` that exists (in shard order, not in
    /// the order given), taking each shard's read lock once per
    /// [`KEYS_PER_LOCK`] keys; `between` runs after each such block with
    /// no lock held, given the keys it covered (a search paces itself
    /// there).
    ///
    /// Why not [`Self::with_key`] in a loop: a search confirms thousands of
    /// keys spread over the whole table, and each costs two cache misses
    /// (its slot, then its name), one after the other. Here a block's slots
    /// are read first and its names touched next, each pass a run of
    /// independent loads the CPU overlaps, so that `f` finds both in cache
    /// (measured: docs/benchmarks.md, issue 13).
    pub fn with_keys(
        &self,
        keys: &[FileKey],
        mut f: impl FnMut(FileKey, FileRef<'_>),
        mut between: impl FnMut(usize),
    ) {
        // Shard in the top bits, slot below: sorting groups a shard's keys.
        let mut by_shard: Vec<u32> = keys.iter().map(|k| k.rotate_right(SHARD_BITS)).collect();
        by_shard.sort_unstable();
        let mut rest = &by_shard[..];
        while let Some(first) = rest.first() {
            let s = (first >> (32 - SHARD_BITS)) as usize;
            let run = rest
                .iter()
                .position(|k| (k >> (32 - SHARD_BITS)) as usize != s)
                .unwrap_or(rest.len());
            for block in rest[..run].chunks(KEYS_PER_LOCK) {
                let shard = self.shards[s].read();
                let mut live: SmallVec<[u32; KEYS_PER_LOCK]> = SmallVec::new();
                let mut refs: SmallVec<[NameRef; KEYS_PER_LOCK]> = SmallVec::new();
                // Pass 1: the slots (independent loads).
                for &k in block {
                    let n = k & ((1 << (32 - SHARD_BITS)) - 1);
                    if n < shard.len {
                        let slot = shard.slot(n);
                        if slot.session != FREE {
                            live.push(n);
                            refs.push(slot.name);
                        }
                    }
                }
                // Pass 2: the first byte of each name.
                let mut touched = 0u8;
                for r in &refs {
                    if let Some(b) = shard
                        .names
                        .chunks
                        .get(r.chunk as usize)
                        .and_then(|c| c.get(usize::from(r.at)))
                    {
                        touched ^= *b;
                    }
                }
                std::hint::black_box(touched);
                // Pass 3: the work, on cached lines.
                for &n in &live {
                    f(
                        n << SHARD_BITS | s as u32,
                        FileRef {
                            shard: &shard,
                            slot: n,
                        },
                    );
                }
                drop(shard);
                between(block.len());
            }
            rest = &rest[run..];
        }
    }

    /// Runs `f` on every file whose id starts with `prefix`, under the read
    /// lock of the one shard those ids live in, until `f` returns false.
    pub fn for_prefix(&self, prefix: &IdPrefix, mut f: impl FnMut(FileRef<'_>) -> bool) {
        let s = usize::from(prefix.first_byte() >> (8 - SHARD_BITS));
        let shard = self.shards[s].read();
        for n in 0..shard.len {
            let slot = shard.slot(n);
            if slot.session != FREE
                && prefix.matches(&slot.id)
                && !f(FileRef {
                    shard: &shard,
                    slot: n,
                })
            {
                return;
            }
        }
    }

    /// Runs `f` on every file, one shard at a time.
    pub fn for_each(&self, mut f: impl FnMut(FileRef<'_>)) {
        for shard in self.shards.iter() {
            let shard = shard.read();
            for n in 0..shard.len {
                if shard.slot(n).session != FREE {
                    f(FileRef {
                        shard: &shard,
                        slot: n,
                    });
                }
            }
        }
    }

    /// How many files are indexed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().ids.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn file(n: u32, name: &str) -> SharedFile {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&n.to_le_bytes());
        SharedFile {
            id: FileId(id),
            name: name.into(),
            size: u64::from(n) + 1,
        }
    }

    fn holders(t: &FileTable, f: &SharedFile) -> Vec<(SessionId, String)> {
        t.with_id(&f.id, |r| {
            r.holders()
                .map(|(s, n)| (s, n.to_string()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
    }

    #[test]
    fn with_keys_visits_each_live_key_once_whatever_the_order() {
        let t = FileTable::default();
        let mut keys = Vec::new();
        for n in 0..3000u32 {
            // Ids spread over every shard (the first byte picks it).
            let mut f = file(n, &format!("name {n}"));
            f.id.0[0] = (n.wrapping_mul(37) % 256) as u8;
            let Registered::New(k) = t.register(1, &f) else {
                panic!("new file {n}");
            };
            keys.push((k, f));
        }
        // Withdraw every third file: its key is free now.
        for (_, f) in keys.iter().step_by(3) {
            t.drop_holder(1, &f.id).expect("held");
        }
        let mut asked: Vec<FileKey> = keys.iter().map(|(k, _)| *k).rev().collect();
        asked.push(u32::MAX >> 1); // never handed out
        let mut seen = std::collections::HashMap::new();
        let mut covered = 0;
        t.with_keys(
            &asked,
            |k, r| {
                let name = r.holders().next().map(|(_, n)| n.to_string());
                assert!(seen.insert(k, (r.id(), name)).is_none(), "key {k} twice");
            },
            |n| covered += n,
        );
        assert_eq!(covered, asked.len(), "every key is covered by a block");
        assert_eq!(seen.len(), 2000);
        for (i, (k, f)) in keys.iter().enumerate() {
            match seen.get(k) {
                Some((id, name)) => {
                    assert!(i % 3 != 0, "withdrawn file {i} visited");
                    assert_eq!((*id, name.as_deref()), (f.id, Some(f.name.as_str())));
                }
                None => assert!(i % 3 == 0, "live file {i} missed"),
            }
        }
    }

    #[test]
    fn holders_come_and_go_in_order() {
        let t = FileTable::default();
        let f = file(1, "one");
        let Registered::New(key) = t.register(1, &f) else {
            panic!("new file");
        };
        assert!(matches!(t.register(1, &f), Registered::Unchanged));
        assert!(matches!(t.register(2, &file(1, "uno")), Registered::New(k) if k == key));
        assert!(matches!(t.register(3, &file(1, "eins")), Registered::New(k) if k == key));
        assert!(matches!(
            t.register(2, &file(1, "un")),
            Registered::Renamed(k, old) if k == key && old == "uno"
        ));
        let mut liar = file(1, "one");
        liar.size += 1;
        assert!(matches!(t.register(4, &liar), Registered::Rejected));
        assert_eq!(
            holders(&t, &f),
            vec![(1, "one".into()), (2, "un".into()), (3, "eins".into())]
        );
        // The first holder leaves: the next one moves up.
        let d = t.drop_holder(1, &f.id).unwrap();
        assert_eq!((d.key, d.size, d.name.as_str()), (key, 2, "one"));
        assert!(t.drop_holder(1, &f.id).is_none(), "already gone");
        assert_eq!(holders(&t, &f), vec![(2, "un".into()), (3, "eins".into())]);
        assert!(matches!(
            t.register(2, &file(1, "deux")),
            Registered::Renamed(_, old) if old == "un"
        ));
        assert_eq!(t.drop_holder(3, &f.id).unwrap().name, "eins");
        assert_eq!(holders(&t, &f), vec![(2, "deux".into())]);
        assert_eq!(t.with_key(key, |f| f.id()), Some(f.id));
        assert_eq!(t.drop_holder(2, &f.id).unwrap().name, "deux");
        assert!(t.with_id(&f.id, |_| ()).is_none());
        assert!(t.with_key(key, |f| f.id()).is_none(), "the key is free");
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn keys_are_reused_and_lead_to_the_new_file() {
        let t = FileTable::default();
        let mut keys = Vec::new();
        for n in 0..5000 {
            let Registered::New(k) = t.register(1, &file(n, &format!("f{n}"))) else {
                panic!("new file");
            };
            keys.push(k);
        }
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), keys.len(), "keys are distinct");
        for n in 0..2500 {
            t.drop_holder(1, &file(n, "").id).unwrap();
        }
        assert_eq!(t.len(), 2500);
        let mut reused = Vec::new();
        for n in 5000..7500 {
            let Registered::New(k) = t.register(2, &file(n, &format!("g{n}"))) else {
                panic!("new file");
            };
            reused.push(k);
        }
        let reused_in_order = reused.clone();
        // Each shard takes its own freed keys first; shards that got more
        // new files than they had freed slots make new ones.
        let freed: HashSet<FileKey> = keys[..2500].iter().copied().collect();
        let taken_again = reused.iter().filter(|k| freed.contains(k)).count();
        assert!(taken_again > 2000, "{taken_again} freed keys reused");
        let slots: u32 = t.shards.iter().map(|s| s.read().len).sum();
        assert_eq!(slots as usize, 5000 + 2500 - taken_again);
        reused.sort();
        reused.dedup();
        assert_eq!(reused.len(), 2500, "keys are distinct");
        let key_of_file: HashMap<u32, FileKey> = (2500..5000)
            .map(|n| (n, keys[n as usize]))
            .chain((5000..7500).zip(reused_in_order))
            .collect();
        for n in (0..7500).filter(|n| !(2500..5000).contains(n) || n % 7 == 0) {
            let f = file(n, "");
            let found = t.with_id(&f.id, |r| (r.id(), r.size()));
            if n < 2500 {
                assert!(found.is_none());
                continue;
            }
            assert_eq!(found, Some((f.id, f.size)));
            let key = key_of_file[&n];
            assert_eq!(t.with_key(key, |f| f.id()), Some(f.id));
            let name = t
                .with_key(key, |r| r.holders().next().unwrap().1.to_string())
                .unwrap();
            let want = if n < 5000 { "f" } else { "g" };
            assert_eq!(name, format!("{want}{n}"));
        }
        let mut seen = 0;
        t.for_each(|_| seen += 1);
        assert_eq!(seen, 5000);
    }

    #[test]
    fn names_are_compacted_without_losing_any() {
        let t = FileTable::default();
        let long = |n: u32, round: u32| format!("{round:04} {n:06} {}", "x".repeat(200));
        let files = 20_000;
        for n in 0..files {
            t.register(1, &file(n, &long(n, 0)));
        }
        // Rename everything many times: far more garbage than live names.
        for round in 1..=10 {
            for n in 0..files {
                assert!(matches!(
                    t.register(1, &file(n, &long(n, round))),
                    Registered::Renamed(..)
                ));
            }
        }
        let used: usize = t.shards.iter().map(|s| s.read().names.used()).sum();
        let live = files as usize * long(0, 0).len();
        // Garbage stays under the live names (or one chunk) in each shard.
        assert!(
            used < 2 * live + SHARDS * 2 * CHUNK,
            "{used} bytes held for {live} live"
        );
        for n in 0..files {
            assert_eq!(holders(&t, &file(n, "")), vec![(1, long(n, 10))]);
        }
    }

    #[test]
    fn a_prefix_finds_its_files_in_one_shard() {
        let t = FileTable::default();
        let mut a = file(1, "a");
        a.id.0[..4].copy_from_slice(&[0xab, 0xcd, 0xef, 0x01]);
        let mut b = file(2, "b");
        b.id.0[..5].copy_from_slice(&[0xab, 0xcd, 0xef, 0x01, 0x22]);
        let mut c = file(3, "c");
        c.id.0[..4].copy_from_slice(&[0x12, 0xcd, 0xef, 0x01]);
        for f in [&a, &b, &c] {
            t.register(1, f);
        }
        let found = |p: &str| {
            let mut ids = Vec::new();
            t.for_prefix(&IdPrefix::parse(p).unwrap(), |f| {
                ids.push(f.id());
                true
            });
            ids.sort();
            ids
        };
        let mut both = vec![a.id, b.id];
        both.sort();
        assert_eq!(found("abcdef01"), both);
        assert_eq!(found("ABCDEF0100"), vec![a.id]);
        assert_eq!(found("abcdef0122"), vec![b.id]);
        assert!(found("abcdef00").is_empty());
        assert_eq!(found("12cdef01"), vec![c.id]);
    }

    #[test]
    fn a_slot_is_56_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 56);
    }
}
