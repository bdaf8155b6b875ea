//! What the proof-of-possession sampler ([`crate::possession`]) asks of the
//! index state: which sessions can be checked, a random file of one, and
//! the counts of what the checks found.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::time::Instant;

use common::id::FileId;

use super::{Index, Reach, SessionId};

/// Counts of proof-of-possession checks since the index started.
#[derive(Debug, Default)]
pub struct PossessionCounters {
    passed: AtomicU64,
    lacked: AtomicU64,
    inconclusive: AtomicU64,
    sessions_dropped: AtomicU64,
}

/// A snapshot of [`PossessionCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PossessionStats {
    /// Checks whose hash list and chunk verified.
    pub passed: u64,
    /// Checks the peer failed (it lacked the file or sent bytes that do not
    /// verify): the file's listing was dropped.
    pub lacked: u64,
    /// Checks that could not be made (no connection, busy, stalled): no
    /// effect on the peer.
    pub inconclusive: u64,
    /// Sessions ended for failing [`crate::possession::PossessionConfig::failures_to_drop`] checks.
    pub sessions_dropped: u64,
}

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    Passed,
    Lacked,
    Inconclusive,
}

impl PossessionCounters {
    pub(crate) fn count(&self, outcome: CheckOutcome) {
        let c = match outcome {
            CheckOutcome::Passed => &self.passed,
            CheckOutcome::Lacked => &self.lacked,
            CheckOutcome::Inconclusive => &self.inconclusive,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_dropped(&self) {
        self.sessions_dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> PossessionStats {
        PossessionStats {
            passed: self.passed.load(Ordering::Relaxed),
            lacked: self.lacked.load(Ordering::Relaxed),
            inconclusive: self.inconclusive.load(Ordering::Relaxed),
            sessions_dropped: self.sessions_dropped.load(Ordering::Relaxed),
        }
    }
}

impl Index {
    /// The sessions a check can reach at `now`: live, published as
    /// directly dialable, holding at least one complete file; with the
    /// address they are listed under (`ID@HOST:PORT` when the session
    /// proved an id). One pass over the sessions.
    pub fn possession_candidates(&self, now: Instant) -> Vec<(SessionId, String)> {
        self.inner
            .sessions
            .iter()
            .filter(|s| s.reach == Reach::Direct && s.lease_expires > now && s.files.len() > 0)
            // The server's own store (no source address) holds what it lists.
            .filter(|s| s.source.is_some())
            // With the id its handshake proved (`ID@HOST:PORT`): the check
            // must reach that node, not whoever answers there.
            .map(|s| (*s.key(), common::identity::dial_addr(s.peer_id, &s.addr)))
            .collect()
    }

    /// File number `pick % n` of the `n` complete files `session` lists
    /// (id and size), or `None` if it lists none (or has ended).
    pub fn possession_file(&self, session: SessionId, pick: u64) -> Option<(FileId, u64)> {
        let key = {
            let s = self.inner.sessions.get(&session)?;
            let n = s.files.len();
            if n == 0 {
                return None;
            }
            let at = (pick % n as u64) as usize;
            s.files.nth(at)?
        };
        self.inner.files.with_key(key, |f| (f.id(), f.size()))
    }

    /// Whether `session` exists (live or not yet reaped).
    pub fn has_session(&self, session: SessionId) -> bool {
        self.inner.sessions.contains_key(&session)
    }

    /// The counters of the proof-of-possession checks.
    pub fn possession_counters(&self) -> &PossessionCounters {
        &self.inner.possession
    }

    /// What the proof-of-possession checks found so far.
    pub fn possession_stats(&self) -> PossessionStats {
        self.inner.possession.snapshot()
    }
}
