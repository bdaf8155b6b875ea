//! Where the upload capacity of a swarm went: used, idle while the
//! uploader held a chunk some unfinished peer still lacked (the protocol
//! did not ask for it: stale availability, request budgets, hand-overs),
//! or idle because it held nothing anyone lacked (start-up before its
//! first chunk, the end once every other peer has what it holds).
//!
//! The distribution experiment samples every node's upload counter and
//! every downloader's holdings every [`SAMPLE`] and feeds each interval to
//! [`Ledger::add`]: the capacity of an interval is the node's cap times its
//! length; what was not sent is charged to one of the two idle kinds by
//! the holdings at the interval's start. Counters move in lumps (a 64 KiB
//! piece of the rate limiter, or a whole chunk), larger than an interval's
//! capacity: what a node counted beyond its capacity is carried into its
//! next intervals, so no byte is lost and none counts twice.

use std::time::Duration;

/// How often the lab samples the uploads and holdings.
pub const SAMPLE: Duration = Duration::from_millis(50);

/// What one node held at a sample: a chunk bitmap (bit `i` of word
/// `i / 64`) and whether it still downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holdings {
    pub bits: Vec<u64>,
    /// Still downloading: its missing chunks are wanted.
    pub downloading: bool,
}

impl Holdings {
    /// Every one of `chunks` chunks, not downloading (a seed, a finished peer).
    pub fn complete(chunks: u32) -> Holdings {
        let mut bits = vec![u64::MAX; (chunks as usize).div_ceil(64)];
        if !chunks.is_multiple_of(64) {
            if let Some(last) = bits.last_mut() {
                *last = (1u64 << (chunks % 64)) - 1;
            }
        }
        Holdings {
            bits,
            downloading: false,
        }
    }

    /// From a `Have` bitfield (bit `i` in byte `i / 8`, LSB first).
    pub fn from_bitfield(bitfield: &[u8], chunks: u32, downloading: bool) -> Holdings {
        let mut bits = vec![0u64; (chunks as usize).div_ceil(64)];
        for i in 0..chunks {
            if common::peer_proto::bit_is_set(bitfield, i) {
                bits[(i / 64) as usize] |= 1 << (i % 64);
            }
        }
        Holdings { bits, downloading }
    }

    /// Holds nothing yet.
    pub fn empty(chunks: u32) -> Holdings {
        Holdings {
            bits: vec![0; (chunks as usize).div_ceil(64)],
            downloading: true,
        }
    }
}

/// Whether node `k` holds a chunk that some other node still downloading lacks.
pub fn wanted(nodes: &[Holdings], k: usize) -> bool {
    let mine = &nodes[k].bits;
    nodes.iter().enumerate().any(|(j, other)| {
        j != k && other.downloading && mine.iter().zip(&other.bits).any(|(m, o)| m & !o != 0)
    })
}

/// Upload capacity, summed over nodes and intervals, by what became of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    /// Bytes the uplinks could have carried.
    pub capacity: f64,
    /// Bytes they carried (at most the capacity of each interval).
    pub used: f64,
    /// Capacity left unused while the node held a chunk somebody lacked.
    pub idle_wanted: f64,
    /// Capacity left unused while the node held nothing anybody lacked.
    pub idle_nothing: f64,
    /// Per node: bytes counted beyond an interval's capacity, carried on.
    carry: Vec<f64>,
}

impl Ledger {
    /// One interval of `seconds`: node `k` could send `caps[k]` bytes per
    /// second and sent `sent[k]`; `held` are the holdings of every node at
    /// the interval's start (the same order).
    pub fn add(&mut self, seconds: f64, caps: &[f64], sent: &[u64], held: &[Holdings]) {
        if self.carry.len() < caps.len() {
            self.carry.resize(caps.len(), 0.0);
        }
        for k in 0..caps.len() {
            let capacity = caps[k] * seconds;
            let counted = sent[k] as f64 + self.carry[k];
            let used = counted.min(capacity);
            self.carry[k] = counted - used;
            self.capacity += capacity;
            self.used += used;
            let idle = capacity - used;
            if wanted(held, k) {
                self.idle_wanted += idle;
            } else {
                self.idle_nothing += idle;
            }
        }
    }

    /// Of the capacity: (used, idle while wanted, idle with nothing wanted).
    pub fn fractions(&self) -> Option<(f64, f64, f64)> {
        (self.capacity > 0.0).then(|| {
            (
                self.used / self.capacity,
                self.idle_wanted / self.capacity,
                self.idle_nothing / self.capacity,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdings_from_a_bitfield_and_whole() {
        let h = Holdings::from_bitfield(&[0b0000_0101, 0b1000_0000], 16, true);
        assert_eq!(h.bits, vec![0b1000_0000_0000_0101]);
        assert_eq!(Holdings::complete(3).bits, vec![0b111]);
        assert_eq!(Holdings::complete(64).bits, vec![u64::MAX]);
        assert_eq!(Holdings::complete(65).bits, vec![u64::MAX, 1]);
    }

    #[test]
    fn idle_capacity_is_charged_by_what_the_node_could_have_sent() {
        let seed = Holdings::complete(4);
        let a = Holdings::from_bitfield(&[0b0001], 4, true);
        let b = Holdings::from_bitfield(&[0b0001], 4, true);
        let nodes = [seed, a, b];
        assert!(wanted(&nodes, 0), "the seed holds what a and b lack");
        assert!(!wanted(&nodes, 1), "a holds only what b has too");
        let mut l = Ledger::default();
        // One second: the seed sent half its cap, a and b nothing.
        l.add(1.0, &[100.0, 10.0, 10.0], &[50, 0, 0], &nodes);
        assert_eq!(l.capacity, 120.0);
        assert_eq!(l.used, 50.0);
        assert_eq!(l.idle_wanted, 50.0);
        assert_eq!(l.idle_nothing, 20.0);
        // A lump over the cap counts as the cap; the rest goes on to the
        // next interval.
        l.add(1.0, &[100.0, 10.0, 10.0], &[150, 0, 0], &nodes);
        assert_eq!(l.used, 150.0);
        l.add(1.0, &[100.0, 10.0, 10.0], &[0, 0, 0], &nodes);
        assert_eq!(l.used, 200.0, "the 50 bytes carried are counted once");
        assert_eq!(l.idle_wanted, 100.0);
        let (used, w, n) = l.fractions().unwrap();
        assert!((used + w + n - 1.0).abs() < 1e-9);
        // Nobody downloading any more: nothing is wanted.
        let done = [Holdings::complete(4), Holdings::complete(4)];
        assert!(!wanted(&done, 0));
    }
}
