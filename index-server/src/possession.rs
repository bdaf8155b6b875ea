//! Proof of possession, sampled: the index checks now and then that a peer
//! can serve what it registered (issue 16).
//!
//! A registration is only a claim: without a check, a client can list ids
//! it does not hold and send every downloader of them to a dead end. At a
//! bounded rate the index picks a directly reachable session (one due for
//! a check), a random file it lists, connects to the address it is listed
//! under with the peer protocol, fetches the file's hash list (which must
//! hash to the id: [`common::id::ContentInfo::from_hash_list`]) and one
//! random chunk (which must match its hash) — exactly what a downloader
//! would verify.
//!
//! - **Passed**: nothing changes.
//! - **Lacked** (the peer answered that it does not have the file, or sent
//!   a hash list or chunk that does not verify): the file's listing for
//!   that session is dropped at once, and the session gets a strike; after
//!   [`PossessionConfig::failures_to_drop`] strikes in a row (a passed
//!   check clears them) the session is ended (its other files go with it).
//!   A peer that answers "file changed" loses that listing but gets no
//!   strike: it said so itself, and an honest peer re-registers the file
//!   after hashing it again.
//! - **Inconclusive** (no connection, busy, stalled, timed out): no effect;
//!   the session is checked again at its next turn. A peer behind a NAT is
//!   never checked (it is never listed as a direct source either).
//!
//! Rate: each session at most once per [`PossessionConfig::interval`]
//! (first check a random time within its first interval), and at most
//! [`PossessionConfig::per_second`] checks per second in all, at most
//! [`CONCURRENT_CHECKS`] at once. The cost is per session, not per file:
//! one hash list (32 bytes per 256 KiB chunk) and one chunk per check; see
//! DESIGN.md "Proof of possession" for the figures at a million files.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use common::id::{ContentInfo, FileId};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use transfer::download::source::{PeerConnection, SourceError};

use crate::state::possession::CheckOutcome;
use crate::state::{Index, SessionId};

/// Checks that may run at once.
pub const CONCURRENT_CHECKS: usize = 8;
/// How often the list of sessions that can be checked is read again.
const CANDIDATES_REFRESH: Duration = Duration::from_secs(5);

/// How often registrations are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PossessionConfig {
    /// Each session at most once per this interval.
    pub interval: Duration,
    /// Most checks per second, over all sessions.
    pub per_second: u32,
    /// Failed checks after which a session is ended.
    pub failures_to_drop: u32,
    /// Longest one check may take (connection, hash list and chunk).
    pub timeout: Duration,
}

/// Default of [`PossessionConfig::interval`]: 10 minutes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);
/// Default of [`PossessionConfig::per_second`].
pub const DEFAULT_PER_SECOND: u32 = 10;
/// Default of [`PossessionConfig::failures_to_drop`].
pub const DEFAULT_FAILURES_TO_DROP: u32 = 3;
/// Default of [`PossessionConfig::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for PossessionConfig {
    fn default() -> Self {
        PossessionConfig {
            interval: DEFAULT_INTERVAL,
            per_second: DEFAULT_PER_SECOND,
            failures_to_drop: DEFAULT_FAILURES_TO_DROP,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Why a check did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The peer does not hold what it registered (or serves bytes that do
    /// not verify).
    #[error("the peer lacks the file: {0}")]
    Lacked(String),
    /// The peer said its copy changed on disk since it registered it.
    #[error("the peer's copy changed: {0}")]
    Changed(String),
    /// The check could not be made.
    #[error("no check possible: {0}")]
    Inconclusive(String),
}

/// One check: connects to `addr`, fetches the hash list of `id` (checked
/// against the id and `size`) and chunk `pick % chunks` (checked against
/// its hash), within `timeout`.
///
/// # Errors
/// [`CheckError::Lacked`] when the peer answered without the file or with
/// bytes that do not verify; [`CheckError::Inconclusive`] otherwise.
pub async fn check(
    addr: &str,
    id: FileId,
    size: u64,
    pick: u64,
    timeout: Duration,
) -> Result<(), CheckError> {
    let work = async {
        let mut conn = PeerConnection::connect(addr, timeout, timeout)
            .await
            .map_err(|e| CheckError::Inconclusive(e.to_string()))?;
        let info: ContentInfo = conn.hash_list(id).await.map_err(judge)?;
        if info.size != size {
            return Err(CheckError::Lacked(format!(
                "its hash list is for {} bytes, it registered {size}",
                info.size
            )));
        }
        let index = (pick % u64::from(info.chunk_count().max(1))) as u32;
        conn.chunk(&info, index).await.map_err(judge)?;
        Ok(())
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(CheckError::Inconclusive(format!(
            "not done within {timeout:?}"
        ))),
    }
}

/// What a source error says about possession.
fn judge(e: SourceError) -> CheckError {
    match e {
        SourceError::FileChanged => CheckError::Changed(e.to_string()),
        SourceError::NotFound | SourceError::BadData => CheckError::Lacked(e.to_string()),
        SourceError::Connect(_)
        | SourceError::Wire(_)
        | SourceError::Busy
        | SourceError::Stalled(_)
        | SourceError::Protocol(_) => CheckError::Inconclusive(e.to_string()),
    }
}

/// Runs the checks until `shutdown`: see the module's documentation.
pub async fn run(index: Index, config: PossessionConfig, shutdown: CancellationToken) {
    let per_second = config.per_second.max(1);
    info!(
        every = ?config.interval,
        per_second,
        "proof-of-possession checks on: each directly reachable peer at most once per interval"
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When each session is next due, and its failures so far.
    let mut due: HashMap<SessionId, Instant> = HashMap::new();
    let mut failures: HashMap<SessionId, u32> = HashMap::new();
    let mut candidates: Vec<(SessionId, String)> = Vec::new();
    let mut next = 0usize;
    let mut refreshed: Option<Instant> = None;
    // Owned here: the running checks end with this loop.
    let mut checks: JoinSet<(SessionId, FileId, Result<(), CheckError>)> = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            done = checks.join_next(), if !checks.is_empty() => {
                if let Some(Ok((session, id, result))) = done {
                    settle(&index, &config, &mut failures, session, id, result);
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if refreshed
            .is_none_or(|t| now.duration_since(t) >= CANDIDATES_REFRESH.min(config.interval))
        {
            candidates = index.possession_candidates(now);
            // Forget sessions that ended; new ones get their first turn a
            // random time within their first interval (spread, not a burst).
            let live: std::collections::HashSet<SessionId> =
                candidates.iter().map(|(s, _)| *s).collect();
            due.retain(|s, _| live.contains(s));
            // Strikes are kept while the session lives, even when it is
            // not a candidate for a while (no files between two scans).
            failures.retain(|s, _| index.has_session(*s));
            for (s, _) in &candidates {
                due.entry(*s)
                    .or_insert_with(|| now + config.interval.mul_f64(rand::random::<f64>()));
            }
            refreshed = Some(now);
        }
        if checks.len() >= CONCURRENT_CHECKS || candidates.is_empty() {
            continue;
        }
        // The next due session, round robin from where the last search
        // stopped (one pass at most).
        let mut chosen = None;
        for step in 0..candidates.len() {
            let at = (next + step) % candidates.len();
            let (s, _) = &candidates[at];
            if due.get(s).is_some_and(|d| *d <= now) {
                chosen = Some(at);
                next = at + 1;
                break;
            }
        }
        let Some(at) = chosen else { continue };
        let (session, addr) = candidates[at].clone();
        due.insert(session, now + config.interval);
        let Some((id, size)) = index.possession_file(session, rand::random()) else {
            continue;
        };
        let (pick, timeout) = (rand::random::<u64>(), config.timeout);
        checks.spawn(async move {
            let result = check(&addr, id, size, pick, timeout).await;
            debug!(session, %addr, id = %id.short(), ?result, "proof-of-possession check");
            (session, id, result)
        });
    }
}

/// Applies one check's result to the index (see the module's documentation).
fn settle(
    index: &Index,
    config: &PossessionConfig,
    failures: &mut HashMap<SessionId, u32>,
    session: SessionId,
    id: FileId,
    result: Result<(), CheckError>,
) {
    let counters = index.possession_counters();
    match result {
        Ok(()) => {
            counters.count(CheckOutcome::Passed);
            failures.remove(&session);
        }
        Err(CheckError::Inconclusive(_)) => counters.count(CheckOutcome::Inconclusive),
        Err(CheckError::Changed(why)) => {
            counters.count(CheckOutcome::Lacked);
            let _ = index.remove_files(session, &[id], Instant::now());
            info!(session, id = %id.short(), %why, "dropped a listing whose file changed (the peer re-registers it)");
        }
        Err(CheckError::Lacked(why)) => {
            counters.count(CheckOutcome::Lacked);
            let n = failures.entry(session).or_default();
            *n += 1;
            // The session may have ended meanwhile: nothing to drop then.
            let _ = index.remove_files(session, &[id], Instant::now());
            if *n >= config.failures_to_drop.max(1) {
                warn!(session, failures = *n, %why, "ending a session that failed its proof-of-possession checks");
                index.logout(session);
                counters.count_dropped();
                failures.remove(&session);
            } else {
                info!(session, id = %id.short(), %why, "dropped a listing that failed its proof-of-possession check");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_not_a_strike_but_a_missing_or_bad_one_is() {
        assert!(matches!(
            judge(SourceError::FileChanged),
            CheckError::Changed(_)
        ));
        assert!(matches!(
            judge(SourceError::NotFound),
            CheckError::Lacked(_)
        ));
        assert!(matches!(judge(SourceError::BadData), CheckError::Lacked(_)));
        assert!(matches!(
            judge(SourceError::Busy),
            CheckError::Inconclusive(_)
        ));
    }
}
