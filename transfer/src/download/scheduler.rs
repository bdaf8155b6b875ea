//! Which chunk each source fetches next.
//!
//! Every source starts at its own point in the file (source `i` of `n` at
//! chunk `i * total / n`) and walks forward, taking chunks nobody has
//! requested yet, so sources work on different regions and a slow one holds
//! up little. When no chunk is left unrequested, a source with an empty
//! pipeline may request a chunk already in flight elsewhere (endgame), so
//! the download never waits on the slowest source; the first verified copy
//! wins. Chunks of a failed or banned source go back to the pool.
//!
//! There is no way to take back a request already sent (answers come in
//! order and the uploader may have sent it already), so a duplicate whose
//! first copy also arrives is a wasted chunk. To bound that waste, each
//! source owes one "debt" per duplicate it asked for, paid back when one of
//! the two requests is released (its source failed, so the duplicate was
//! needed); a source in debt asks for no further duplicates. With honest
//! sources a download therefore receives at most one chunk per source more
//! than the file size.
//!
//! In a swarm ([`Scheduler::shuffled`]) the endgame is always on for a
//! source with nothing missing to offer: many downloaders' requests queue
//! at each busy uploader, and a chunk waiting there for seconds is better
//! asked for again from an idle holder (issue 17: at N = 64, the upload
//! capacity left idle while its node held a wanted chunk fell from about
//! 22% to about 12%, for 1 to 1.5% of the bytes sent twice).
//!
//! Rarest first: sources report which chunks they hold ([`Scheduler::set_have`]),
//! and a source is given, among the missing chunks it has, one held by the
//! fewest connected sources (ties broken by its walk from its starting
//! point, or, in a swarm, at random: [`Scheduler::shuffled`]). With
//! complete sources only, every chunk is equally rare and this is the plain
//! walk; in a swarm it spreads the chunks only the seed has before the ones
//! every downloader can already pass on.

use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Missing,
    /// Requested from this many sources.
    Requested(u8),
    /// Arrived and waiting for the verifier: not worth requesting again.
    Received,
    Done,
}

/// What a source should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Chunk(u32),
    /// Nothing for this source right now; wait for a change.
    Wait,
    Finished,
}

/// What a source holds, as far as the availability counts know.
#[derive(Debug, Clone)]
enum Holds {
    /// Not reported (or the source left): not counted.
    Unknown,
    All,
    /// A `Have` bitfield.
    Some(Vec<u8>),
}

impl Holds {
    fn has(&self, index: u32) -> bool {
        match self {
            Holds::Unknown => false,
            Holds::All => true,
            Holds::Some(bits) => common::peer_proto::bit_is_set(bits, index),
        }
    }
}

struct State {
    chunks: Vec<ChunkState>,
    done: u32,
    cursors: Vec<u32>,
    banned: Vec<bool>,
    /// The first bad chunk of each banned source (reported back to it).
    bad_chunks: std::collections::HashMap<usize, u32>,
    holds: Vec<Holds>,
    /// How many connected sources hold each chunk.
    availability: Vec<u16>,
    /// Offset of the sources' starting points, random per download.
    rotation: u32,
    /// Per chunk: the sources that asked for its duplicates (at most
    /// `SWARM_MAX_DUPLICATES - 1`), newest last.
    dup_by: Vec<Vec<usize>>,
    /// Per source: duplicates it asked for that may still turn out wasted.
    debt: Vec<u32>,
    /// State of the generator that picks among equally rare chunks
    /// ([`Scheduler::shuffled`]); `None`: the walk order decides.
    random: Option<u64>,
}

impl State {
    /// The next number of the tie-breaking generator (xorshift64).
    fn next_random(&mut self) -> Option<u64> {
        let x = self.random.as_mut()?;
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        Some(*x)
    }

    /// One of a chunk's requests went away: one copy fewer can arrive, so
    /// one of its duplicates was not a waste.
    fn settle_duplicate(&mut self, index: usize) {
        if let Some(d) = self.dup_by.get_mut(index).and_then(Vec::pop) {
            if let Some(debt) = self.debt.get_mut(d) {
                *debt = debt.saturating_sub(1);
            }
        }
    }
}

impl State {
    fn set_holds(&mut self, source: usize, new: Holds) {
        let Some(slot) = self.holds.get_mut(source) else {
            return;
        };
        let old = std::mem::replace(slot, Holds::Unknown);
        for i in 0..self.chunks.len() as u32 {
            let (was, is) = (old.has(i), new.has(i));
            let a = &mut self.availability[i as usize];
            match (was, is) {
                (false, true) => *a = a.saturating_add(1),
                (true, false) => *a = a.saturating_sub(1),
                _ => {}
            }
        }
        self.holds[source] = new;
    }
}

/// Shared chunk bookkeeping of one download.
pub struct Scheduler {
    state: Mutex<State>,
    /// Woken when chunks return to the pool or the download finishes.
    pub changed: Notify,
    /// Woken whenever a chunk is verified (sources take back their
    /// requests for it).
    pub completed: Notify,
}

/// The endgame starts when at most this many chunks are still in flight.
const ENDGAME_OUTSTANDING: u32 = 16;

/// Most sources asked for the same chunk during the endgame.
const MAX_DUPLICATES: u8 = 2;

/// In a swarm: most sources asked for the same chunk. The last chunks of a
/// download wait in busy uploaders' queues; a third idle holder asked too
/// shortens that wait, and the copies that lose are mostly taken back
/// before they are sent (`Cancel`). Issue 17, 128 processes (hybrid, one
/// run each): endgame 2.4-2.5 s against 2.9-3.4 s with two (32 upload
/// slots), 1.8-1.9 s with 8 slots; at N = 64 in one process, 9% of the
/// upload capacity idle while wanted against 11-12%, for 1.8% of the
/// bytes sent twice against 1.0-1.5%.
const SWARM_MAX_DUPLICATES: u8 = 3;

impl Scheduler {
    /// `have[i]` is true for chunks already verified on disk.
    pub fn new(have: &[bool], sources: usize) -> Self {
        Self::with_rotation(have, sources, 0)
    }

    /// Like [`Scheduler::new`], with every starting point shifted by
    /// `rotation` chunks, so that downloaders fetching from the same seed at
    /// once do not all ask it for the same chunks first.
    pub fn with_rotation(have: &[bool], sources: usize, rotation: u32) -> Self {
        let total = have.len() as u32;
        let chunks: Vec<ChunkState> = have
            .iter()
            .map(|h| {
                if *h {
                    ChunkState::Done
                } else {
                    ChunkState::Missing
                }
            })
            .collect();
        let done = have.iter().filter(|h| **h).count() as u32;
        let rotation = if total == 0 { 0 } else { rotation % total };
        let cursors = (0..sources)
            .map(|i| {
                ((i as u64 * total as u64 / sources.max(1) as u64 + rotation as u64)
                    % total.max(1) as u64) as u32
            })
            .collect();
        Scheduler {
            state: Mutex::new(State {
                chunks,
                done,
                cursors,
                banned: vec![false; sources],
                bad_chunks: std::collections::HashMap::new(),
                holds: vec![Holds::Unknown; sources],
                availability: vec![0; total as usize],
                rotation,
                dup_by: vec![Vec::new(); total as usize],
                debt: vec![0; sources],
                random: None,
            }),
            changed: Notify::new(),
            completed: Notify::new(),
        }
    }

    /// For a swarm: like [`Scheduler::with_rotation`] (by `seed`), and a
    /// chunk is picked at random among the rarest a source holds instead
    /// of by the walk order. Downloaders that walk a seed's chunks in the
    /// same order fall into step (one catches up with the other's region)
    /// and then fetch the same chunks at the same time, so neither holds
    /// anything the other lacks; random choice keeps their holdings apart
    /// (BitTorrent's random rarest-first).
    pub fn shuffled(have: &[bool], sources: usize, seed: u64) -> Self {
        let s = Self::with_rotation(have, sources, seed as u32);
        // xorshift must not start at zero.
        s.lock().random = Some(seed | 1);
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a source found during the download; returns its number.
    pub fn add_source(&self) -> usize {
        let mut s = self.lock();
        let k = s.cursors.len() as u64;
        let total = s.chunks.len().max(1) as u64;
        // Golden-ratio steps spread late sources' starting points evenly.
        let start = (s.rotation as u64 + k * total * 618 / 1000) % total;
        s.cursors.push(start as u32);
        s.banned.push(false);
        s.holds.push(Holds::Unknown);
        s.debt.push(0);
        s.cursors.len() - 1
    }

    /// Records which chunks `source` holds: `None` for all of them, else a
    /// `Have` bitfield.
    pub fn set_have(&self, source: usize, bitfield: Option<&[u8]>) {
        let holds = match bitfield {
            None => Holds::All,
            Some(bits) => Holds::Some(bits.to_vec()),
        };
        self.lock().set_holds(source, holds);
    }

    /// `source`, which reported a `Have` bitfield, now holds chunk `index`
    /// too (pushed by the source as it gained it).
    pub fn gained(&self, source: usize, index: u32) {
        let mut guard = self.lock();
        let s = &mut *guard;
        if let Some(Holds::Some(bits)) = s.holds.get_mut(source) {
            let (byte, bit) = ((index / 8) as usize, 1u8 << (index % 8));
            if let Some(b) = bits.get_mut(byte) {
                if *b & bit == 0 {
                    *b |= bit;
                    if let Some(a) = s.availability.get_mut(index as usize) {
                        *a = a.saturating_add(1);
                    }
                }
            }
        }
    }

    /// A source left: its chunks no longer count as available.
    pub fn forget(&self, source: usize) {
        self.lock().set_holds(source, Holds::Unknown);
    }

    /// How many connected sources hold chunk `index`.
    #[cfg(test)]
    pub fn availability(&self, index: u32) -> u16 {
        self.lock()
            .availability
            .get(index as usize)
            .copied()
            .unwrap_or(0)
    }

    pub fn total(&self) -> u32 {
        self.lock().chunks.len() as u32
    }

    pub fn done(&self) -> u32 {
        self.lock().done
    }

    pub fn is_finished(&self) -> bool {
        let s = self.lock();
        s.done as usize == s.chunks.len()
    }

    /// The next chunk for `source`, among those `available` at it.
    /// `endgame_ok` allows duplicating a chunk in flight elsewhere.
    pub fn next(&self, source: usize, available: impl Fn(u32) -> bool, endgame_ok: bool) -> Pick {
        let mut s = self.lock();
        let total = s.chunks.len() as u32;
        if s.done == total {
            return Pick::Finished;
        }
        if s.banned.get(source).copied().unwrap_or(true) {
            return Pick::Wait;
        }
        let start = s.cursors[source];
        // Rarest first; the walk order breaks ties. A chunk this source has
        // is held by at least one source and by every complete one, so a
        // count that low cannot be beaten: the walk stops there (with only
        // complete sources, at the first missing chunk).
        let floor = s
            .holds
            .iter()
            .filter(|h| matches!(h, Holds::All))
            .count()
            .clamp(1, u16::MAX as usize) as u16;
        let mut best: Option<(u16, u32)> = None;
        let mut any_missing = false;
        let mut outstanding = 0u32;
        // Shuffled: the walk goes on past the floor, and each of the k
        // equally rare chunks seen so far is kept with chance 1/k.
        let shuffled = s.random.is_some();
        let mut ties = 0u64;
        for step in 0..total {
            let i = (start + step) % total;
            match s.chunks[i as usize] {
                ChunkState::Missing => any_missing = true,
                ChunkState::Requested(_) => outstanding += 1,
                _ => {}
            }
            if s.chunks[i as usize] == ChunkState::Missing && available(i) {
                let rarity = s.availability[i as usize];
                if best.is_none_or(|(r, _)| rarity < r) {
                    best = Some((rarity, i));
                    ties = 1;
                    if rarity <= floor && !shuffled {
                        break;
                    }
                } else if shuffled && best.is_some_and(|(r, _)| rarity == r) {
                    ties += 1;
                    if s.next_random().is_some_and(|x| x % ties == 0) {
                        best = Some((rarity, i));
                    }
                }
            }
        }
        if let Some((_, i)) = best {
            s.chunks[i as usize] = ChunkState::Requested(1);
            s.cursors[source] = (i + 1) % total;
            return Pick::Chunk(i);
        }
        // Endgame only once every missing chunk is requested and few are
        // still out: before that, a duplicate would take upload from chunks
        // nobody has asked for yet. In a swarm (shuffled), an idle source
        // with nothing missing to offer may duplicate at any time: a request
        // there waits its turn behind other downloaders' at a busy uploader
        // for seconds while this one, holding the chunk, sits idle, and the
        // copy that loses is taken back (`Cancel`) before it is sent.
        // A source whose earlier duplicate may still be wasted asks for no
        // other (see the module notes: the waste stays within one chunk per
        // source).
        let in_debt = s.debt.get(source).copied().unwrap_or(1) > 0;
        let max_copies = if shuffled {
            SWARM_MAX_DUPLICATES
        } else {
            MAX_DUPLICATES
        };
        let endgame = shuffled || (!any_missing && outstanding <= ENDGAME_OUTSTANDING);
        if endgame_ok && !in_debt && endgame {
            for step in 0..total {
                let i = (start + step) % total;
                if let ChunkState::Requested(n) = s.chunks[i as usize] {
                    if n < max_copies && available(i) {
                        s.chunks[i as usize] = ChunkState::Requested(n + 1);
                        s.dup_by[i as usize].push(source);
                        s.debt[source] += 1;
                        return Pick::Chunk(i);
                    }
                }
            }
        }
        Pick::Wait
    }

    /// Records chunk `index` as verified and written. False if it already was
    /// (a duplicate from the endgame).
    pub fn complete(&self, index: u32) -> bool {
        let finished;
        {
            let mut s = self.lock();
            match s.chunks.get(index as usize) {
                Some(ChunkState::Done) | None => return false,
                _ => {}
            }
            s.chunks[index as usize] = ChunkState::Done;
            s.done += 1;
            finished = s.done as usize == s.chunks.len();
        }
        self.completed.notify_waiters();
        if finished {
            self.changed.notify_waiters();
        }
        true
    }

    /// Records that chunk `index` arrived and went to the verifier.
    pub fn received(&self, index: u32) {
        if let Some(c) = self.lock().chunks.get_mut(index as usize) {
            if matches!(*c, ChunkState::Requested(_)) {
                *c = ChunkState::Received;
            }
        }
    }

    /// Chunk `index` failed verification: it is missing again.
    pub fn reject(&self, index: u32) {
        {
            let mut s = self.lock();
            if let Some(c) = s.chunks.get_mut(index as usize) {
                if *c != ChunkState::Done {
                    *c = ChunkState::Missing;
                }
            }
            s.settle_duplicate(index as usize);
        }
        self.changed.notify_waiters();
    }

    /// Whether chunk `index` is already verified.
    pub fn is_done(&self, index: u32) -> bool {
        self.lock().chunks.get(index as usize) == Some(&ChunkState::Done)
    }

    /// Returns requested chunks to the pool (their source failed or sent bad data).
    pub fn release(&self, indices: impl IntoIterator<Item = u32>) {
        {
            let mut s = self.lock();
            for i in indices {
                let Some(c) = s.chunks.get_mut(i as usize) else {
                    continue;
                };
                *c = match *c {
                    ChunkState::Requested(n) if n > 1 => ChunkState::Requested(n - 1),
                    ChunkState::Requested(_) => ChunkState::Missing,
                    other => other,
                };
                // Whichever copy this was, it will not arrive now.
                s.settle_duplicate(i as usize);
            }
        }
        self.changed.notify_waiters();
    }

    /// Bans a source that sent bad data: it gets nothing more.
    pub fn ban(&self, source: usize) {
        if let Some(b) = self.lock().banned.get_mut(source) {
            *b = true;
        }
        self.changed.notify_waiters();
    }

    /// Bans a source whose chunk `chunk` failed verification, remembering
    /// that chunk so the source can be told ([`Scheduler::bad_chunk`]).
    pub fn ban_for_chunk(&self, source: usize, chunk: u32) {
        self.lock().bad_chunks.entry(source).or_insert(chunk);
        self.ban(source);
    }

    /// The first chunk from `source` that failed verification, if any.
    pub fn bad_chunk(&self, source: usize) -> Option<u32> {
        self.lock().bad_chunks.get(&source).copied()
    }

    pub fn is_banned(&self, source: usize) -> bool {
        self.lock().banned.get(source).copied().unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_start_in_different_regions() {
        let s = Scheduler::new(&[false; 10], 2);
        assert_eq!(s.next(0, |_| true, false), Pick::Chunk(0));
        assert_eq!(s.next(1, |_| true, false), Pick::Chunk(5));
        assert_eq!(s.next(1, |_| true, false), Pick::Chunk(6));
    }

    #[test]
    fn released_chunks_are_picked_again_and_endgame_duplicates() {
        let s = Scheduler::new(&[false, false, false], 3);
        assert_eq!(s.next(0, |_| true, false), Pick::Chunk(0));
        assert_eq!(s.next(0, |_| true, false), Pick::Chunk(1));
        assert_eq!(s.next(0, |_| true, false), Pick::Chunk(2));
        assert_eq!(s.next(1, |_| true, false), Pick::Wait);
        // Source 0's chunk 1 arrived and waits for the verifier: not worth a duplicate.
        s.received(1);
        assert_eq!(
            s.next(1, |_| true, true),
            Pick::Chunk(2),
            "endgame duplicates a chunk still in flight"
        );
        assert_eq!(
            s.next(1, |_| true, true),
            Pick::Wait,
            "one duplicate that may be wasted at a time"
        );
        assert_eq!(
            s.next(2, |_| true, true),
            Pick::Chunk(0),
            "at most two copies of a chunk: 2 is skipped"
        );
        assert!(s.complete(1));
        assert!(!s.complete(1), "a duplicate copy is not counted twice");
        assert!(s.complete(2));
        // Source 0 dies: its copies go back; source 2's copy of chunk 0 still counts.
        s.release([0, 2]);
        assert_eq!(s.next(0, |_| true, false), Pick::Wait);
        s.release([0]);
        assert_eq!(
            s.next(0, |_| true, false),
            Pick::Chunk(0),
            "released by both: missing again"
        );
        s.received(0);
        s.reject(0);
        assert_eq!(
            s.next(1, |_| true, false),
            Pick::Chunk(0),
            "a rejected chunk is missing again"
        );
        assert!(s.complete(0));
        assert!(s.is_finished());
        assert_eq!(s.next(0, |_| true, true), Pick::Finished);
    }

    #[test]
    fn wasted_duplicates_stay_within_one_chunk_per_source() {
        // Source 0 took every chunk before source 1 connected (issue 12.12:
        // both then received every chunk).
        let s = Scheduler::new(&[false; 8], 2);
        for i in 0..8 {
            assert_eq!(s.next(0, |_| true, false), Pick::Chunk(i));
        }
        let mut duplicates = 0;
        for i in 0..8 {
            if let Pick::Chunk(_) = s.next(1, |_| true, true) {
                duplicates += 1;
            }
            // Source 0's copy of chunk i arrives first; any duplicate of it
            // from source 1 will be wasted.
            s.received(i);
            s.complete(i);
        }
        assert_eq!(duplicates, 1, "source 1 stays in debt after one duplicate");

        // A duplicate that turned out needed (the other copy was released)
        // is paid back: the source may ask for another.
        let s = Scheduler::new(&[false; 2], 2);
        assert_eq!(s.next(0, |_| true, false), Pick::Chunk(0));
        assert_eq!(s.next(0, |_| true, false), Pick::Chunk(1));
        assert_eq!(s.next(1, |_| true, true), Pick::Chunk(1));
        assert_eq!(s.next(1, |_| true, true), Pick::Wait);
        s.release([1]); // source 0 failed before chunk 1 arrived
        s.received(1);
        assert!(s.complete(1));
        assert_eq!(s.next(1, |_| true, true), Pick::Chunk(0));
    }

    #[test]
    fn resumed_chunks_are_skipped_and_availability_is_respected() {
        let s = Scheduler::new(&[true, false, false], 1);
        assert_eq!(s.done(), 1);
        assert_eq!(s.next(0, |i| i == 2, false), Pick::Chunk(2));
        assert_eq!(s.next(0, |i| i == 2, false), Pick::Wait);
        s.ban(0);
        assert_eq!(s.next(0, |_| true, true), Pick::Wait);
    }

    #[test]
    fn rarest_chunk_first_then_walk_order() {
        let s = Scheduler::new(&[false; 4], 2);
        s.set_have(0, None); // a seed: everything
        s.set_have(1, Some(&[0b0000_0011])); // a leecher: chunks 0 and 1
        assert_eq!(s.availability(0), 2);
        assert_eq!(s.availability(2), 1);
        // The seed is asked first for what only it has.
        assert_eq!(s.next(0, |_| true, false), Pick::Chunk(2));
        assert_eq!(s.next(0, |_| true, false), Pick::Chunk(3));
        assert_eq!(s.next(0, |_| true, false), Pick::Chunk(0));
        s.forget(1);
        assert_eq!(s.availability(0), 1, "a source that left no longer counts");
        let late = s.add_source();
        assert_eq!(late, 2);
        s.set_have(late, Some(&[0b0000_0010]));
        assert_eq!(s.next(late, |i| i == 1, false), Pick::Chunk(1));
    }

    #[test]
    fn shuffled_picks_vary_among_equally_rare_chunks() {
        // Two downloaders of one seed, started at the same point: with the
        // walk order they ask for the same chunks; shuffled, they mostly
        // do not (the lockstep of issue 17's N = 2 runs).
        let a = Scheduler::shuffled(&[false; 64], 1, 11);
        let b = Scheduler::shuffled(&[false; 64], 1, 11 + 64);
        let (mut same, mut seen) = (0, std::collections::HashSet::new());
        for _ in 0..16 {
            let (Pick::Chunk(x), Pick::Chunk(y)) =
                (a.next(0, |_| true, false), b.next(0, |_| true, false))
            else {
                panic!("every chunk is missing");
            };
            same += usize::from(x == y);
            seen.insert(x);
        }
        assert!(same <= 4, "{same} of 16 picks alike");
        assert_eq!(seen.len(), 16, "a chunk is picked once");
        // Rarity still comes first: only chunk 5 is held by one source only.
        let s = Scheduler::shuffled(&[false; 8], 2, 3);
        s.set_have(0, None);
        s.set_have(1, Some(&[0b1101_1111]));
        assert_eq!(s.next(0, |_| true, false), Pick::Chunk(5));
        // The walk order (no shuffle) is kept for plain downloads.
        let w = Scheduler::with_rotation(&[false; 8], 1, 3);
        assert_eq!(w.next(0, |_| true, false), Pick::Chunk(3));
        assert_eq!(w.next(0, |_| true, false), Pick::Chunk(4));
    }

    #[test]
    fn in_a_swarm_an_idle_holder_duplicates_before_the_endgame() {
        // Chunks 0 and 1 are in flight at source 0; chunks 2 to 9 are
        // missing, but source 1 holds only chunks 0 and 1.
        let plain = Scheduler::new(&[false; 10], 2);
        let swarm = Scheduler::shuffled(&[false; 10], 2, 5);
        for s in [&plain, &swarm] {
            s.set_have(0, None);
            s.set_have(1, Some(&[0b0000_0011]));
            assert!(matches!(s.next(0, |i| i < 2, false), Pick::Chunk(_)));
            assert!(matches!(s.next(0, |i| i < 2, false), Pick::Chunk(_)));
        }
        assert_eq!(
            plain.next(1, |i| i < 2, true),
            Pick::Wait,
            "a plain download duplicates only once every chunk is requested"
        );
        let Pick::Chunk(c) = swarm.next(1, |i| i < 2, true) else {
            panic!("an idle holder in a swarm duplicates a chunk in flight");
        };
        assert!(c < 2);
        assert_eq!(
            swarm.next(1, |i| i < 2, true),
            Pick::Wait,
            "still one possibly wasted duplicate per source at a time"
        );
    }

    #[test]
    fn a_swarm_asks_three_sources_for_a_last_chunk_a_plain_download_two() {
        // One chunk, four sources holding it: the first takes it, the
        // others are idle with nothing missing.
        let plain = Scheduler::new(&[false], 4);
        let swarm = Scheduler::shuffled(&[false], 4, 9);
        let copies = |s: &Scheduler| {
            (0..4)
                .filter(|k| matches!(s.next(*k, |_| true, true), Pick::Chunk(0)))
                .count()
        };
        assert_eq!(copies(&plain), 2, "a plain download: one duplicate");
        assert_eq!(copies(&swarm), 3, "a swarm: two duplicates");
    }

    #[test]
    fn both_duplicators_of_a_three_copy_chunk_are_out_of_debt_once_two_copies_went_away() {
        // Chunk 0 asked of source 0, then duplicated by 1 and by 2.
        let s = Scheduler::shuffled(&[false, false], 4, 9);
        let only_0 = |i: u32| i == 0;
        assert_eq!(s.next(0, only_0, true), Pick::Chunk(0));
        assert_eq!(s.next(1, only_0, true), Pick::Chunk(0));
        assert_eq!(s.next(2, only_0, true), Pick::Chunk(0));
        // Two of the three requests are taken back (the third copy arrives):
        // neither duplicate was a waste.
        s.release([0]);
        s.release([0]);
        // Chunk 1 shows up at source 0; both 1 and 2 may duplicate again.
        assert_eq!(s.next(0, |_| true, true), Pick::Chunk(1));
        assert!(
            matches!(s.next(1, |_| true, true), Pick::Chunk(_)),
            "source 1 left in debt"
        );
        assert!(
            matches!(s.next(2, |_| true, true), Pick::Chunk(_)),
            "source 2 left in debt"
        );
    }

    #[test]
    fn rotation_shifts_every_starting_point() {
        let s = Scheduler::with_rotation(&[false; 10], 2, 3);
        assert_eq!(s.next(0, |_| true, false), Pick::Chunk(3));
        assert_eq!(s.next(1, |_| true, false), Pick::Chunk(8));
    }

    #[test]
    fn empty_file_is_finished_at_once() {
        let s = Scheduler::new(&[], 3);
        assert!(s.is_finished());
        assert_eq!(s.next(0, |_| true, true), Pick::Finished);
    }
}
