//! The index itself: sessions, files, the word index, leases.
//!
//! Everything lives behind [`Index`], a cheap cloneable handle around
//! `Arc<Inner>`. Each table is a `DashMap` (sharded locks) so that the many
//! connection tasks mostly touch different shards; no method holds a guard
//! on one table while locking another, which rules out lock-order deadlocks,
//! and no guard is ever held across an `.await` (there are none in here).
//!
//! Reads (search, lookup, browse, stats) never write: expired sessions are
//! filtered out by comparing their lease with `now`, and the reaper removes
//! them later.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::id::FileId;
use common::index_proto::{IndexStats, PeerSummary, SearchHit, SharedFile, Source};
use common::limits::{MAX_FILES_PER_BATCH, MAX_FILE_SIZE};
use common::names::{tokenize, validate_name};
use dashmap::DashMap;
use tokio::time::Instant;

/// Identifies one login session (one connection of a sharing peer).
pub type SessionId = u64;

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("nickname {0:?} is already used by an online peer")]
    NickTaken(String),
    #[error("session has expired; log in again")]
    NoSession,
}

struct Session {
    addr: String,
    nick: Option<String>,
    /// id → (name, size) as this session registered it.
    files: HashMap<FileId, (String, u64)>,
    bytes: u64,
    lease_expires: Instant,
    /// id → name of files this session is still downloading (swarming).
    partial: HashMap<FileId, String>,
}

/// Most files one session may list as partial at once.
pub const MAX_PARTIAL_PER_SESSION: usize = 256;

/// Holders of part of a file, kept apart from complete holders so that
/// search and `Lookup` answers are unchanged by swarming.
struct PartialRecord {
    size: u64,
    holders: HashMap<SessionId, String>,
}

/// What `swarm_lookup` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmSources {
    pub name: String,
    pub size: u64,
    pub complete: Vec<Source>,
    pub partial: Vec<Source>,
}

struct FileRecord {
    size: u64,
    /// Every session offering this id, with the name it uses.
    holders: HashMap<SessionId, String>,
}

struct Inner {
    lease_ttl: Duration,
    next_session: AtomicU64,
    sessions: DashMap<SessionId, Session>,
    files: DashMap<FileId, FileRecord>,
    /// word → ids whose names contain it, with how many (session, name) pairs do.
    words: DashMap<String, HashMap<FileId, u32>>,
    /// nickname → the session holding it.
    nicks: DashMap<String, SessionId>,
    /// id → sessions holding part of it (still downloading).
    partials: DashMap<FileId, PartialRecord>,
}

/// Handle to the shared index state.
#[derive(Clone)]
pub struct Index {
    inner: Arc<Inner>,
}

/// What an `add_files` call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AddOutcome {
    pub added: u32,
    pub rejected: u32,
}

impl Index {
    pub fn new(lease_ttl: Duration) -> Self {
        Index {
            inner: Arc::new(Inner {
                lease_ttl,
                next_session: AtomicU64::new(1),
                sessions: DashMap::new(),
                files: DashMap::new(),
                words: DashMap::new(),
                nicks: DashMap::new(),
                partials: DashMap::new(),
            }),
        }
    }

    pub fn lease_ttl(&self) -> Duration {
        self.inner.lease_ttl
    }

    /// Opens a session for a peer reachable at `addr`.
    pub fn login(
        &self,
        addr: String,
        nick: Option<String>,
        now: Instant,
    ) -> Result<SessionId, StateError> {
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        if let Some(nick) = &nick {
            // entry() makes the check and the claim one step: no race between two logins.
            match self.inner.nicks.entry(nick.clone()) {
                dashmap::Entry::Occupied(mut held) => {
                    let holder = *held.get();
                    if self.is_live(holder, now) {
                        return Err(StateError::NickTaken(nick.clone()));
                    }
                    held.insert(id);
                }
                dashmap::Entry::Vacant(v) => {
                    v.insert(id);
                }
            }
        }
        self.inner.sessions.insert(
            id,
            Session {
                addr,
                nick,
                files: HashMap::new(),
                bytes: 0,
                lease_expires: now + self.inner.lease_ttl,
                partial: HashMap::new(),
            },
        );
        Ok(id)
    }

    /// Renews a session's lease; fails if it has already been reaped.
    pub fn heartbeat(&self, session: SessionId, now: Instant) -> Result<(), StateError> {
        let mut s = self
            .inner
            .sessions
            .get_mut(&session)
            .ok_or(StateError::NoSession)?;
        if s.lease_expires <= now {
            return Err(StateError::NoSession);
        }
        s.lease_expires = now + self.inner.lease_ttl;
        Ok(())
    }

    fn is_live(&self, session: SessionId, now: Instant) -> bool {
        self.inner
            .sessions
            .get(&session)
            .is_some_and(|s| s.lease_expires > now)
    }

    /// Adds files to a session's list. Invalid entries (bad name, absurd
    /// size, a size that contradicts an earlier registration of the same id)
    /// are counted as rejected; the rest are added.
    pub fn add_files(
        &self,
        session: SessionId,
        files: Vec<SharedFile>,
        now: Instant,
    ) -> Result<AddOutcome, StateError> {
        let mut outcome = AddOutcome::default();
        // Step 1: decide what changes, under the session's lock only.
        let mut renamed: Vec<(FileId, String, u64, Option<String>)> = Vec::new();
        // Partial holdings of this session that are now complete.
        let mut completed: Vec<FileId> = Vec::new();
        {
            let mut s = self
                .inner
                .sessions
                .get_mut(&session)
                .ok_or(StateError::NoSession)?;
            if s.lease_expires <= now {
                return Err(StateError::NoSession);
            }
            s.lease_expires = now + self.inner.lease_ttl;
            for f in files.into_iter().take(MAX_FILES_PER_BATCH) {
                let size_conflict = self
                    .inner
                    .files
                    .get(&f.id)
                    .is_some_and(|r| r.size != f.size);
                if validate_name(&f.name).is_err() || f.size > MAX_FILE_SIZE || size_conflict {
                    outcome.rejected += 1;
                    continue;
                }
                if s.partial.remove(&f.id).is_some() {
                    completed.push(f.id);
                }
                let old = s.files.insert(f.id, (f.name.clone(), f.size));
                match &old {
                    Some((old_name, _)) if *old_name == f.name => continue,
                    Some(_) => {}
                    None => s.bytes += f.size,
                }
                outcome.added += 1;
                renamed.push((f.id, f.name, f.size, old.map(|(n, _)| n)));
            }
        }
        // Step 2: the shared tables, one at a time.
        for id in completed {
            self.drop_partial_holder(session, id);
        }
        for (id, name, size, old_name) in renamed {
            if let Some(old) = old_name {
                self.unindex_name(id, &old);
            }
            self.inner
                .files
                .entry(id)
                .or_insert_with(|| FileRecord {
                    size,
                    holders: HashMap::new(),
                })
                .holders
                .insert(session, name.clone());
            self.index_name(id, &name);
        }
        Ok(outcome)
    }

    /// Removes files from this session's list only: other sessions' entries
    /// for the same ids are untouched.
    pub fn remove_files(
        &self,
        session: SessionId,
        ids: &[FileId],
        now: Instant,
    ) -> Result<u32, StateError> {
        let mut removed = Vec::new();
        let mut partial_removed = Vec::new();
        {
            let mut s = self
                .inner
                .sessions
                .get_mut(&session)
                .ok_or(StateError::NoSession)?;
            if s.lease_expires <= now {
                return Err(StateError::NoSession);
            }
            s.lease_expires = now + self.inner.lease_ttl;
            for id in ids.iter().take(MAX_FILES_PER_BATCH) {
                if let Some((name, size)) = s.files.remove(id) {
                    s.bytes -= size;
                    removed.push((*id, name));
                }
                if s.partial.remove(id).is_some() {
                    partial_removed.push(*id);
                }
            }
        }
        let count = (removed.len() + partial_removed.len()) as u32;
        for id in partial_removed {
            self.drop_partial_holder(session, id);
        }
        for (id, name) in removed {
            self.drop_holder(session, id, &name);
        }
        Ok(count)
    }

    /// Ends a session: its files, nickname and lease are gone at once.
    pub fn logout(&self, session: SessionId) {
        let Some((_, s)) = self.inner.sessions.remove(&session) else {
            return;
        };
        if let Some(nick) = &s.nick {
            self.inner
                .nicks
                .remove_if(nick, |_, holder| *holder == session);
        }
        for (id, (name, _)) in s.files {
            self.drop_holder(session, id, &name);
        }
        for id in s.partial.into_keys() {
            self.drop_partial_holder(session, id);
        }
    }

    fn drop_partial_holder(&self, session: SessionId, id: FileId) {
        if let Some(mut rec) = self.inner.partials.get_mut(&id) {
            rec.holders.remove(&session);
        }
        self.inner
            .partials
            .remove_if(&id, |_, rec| rec.holders.is_empty());
    }

    /// Lists files a session is still downloading, so that other downloaders
    /// fetch the chunks it already has. Ids it holds complete are skipped;
    /// bad names, absurd or contradicting sizes and entries over
    /// [`MAX_PARTIAL_PER_SESSION`] are rejected.
    pub fn add_partial(
        &self,
        session: SessionId,
        files: Vec<SharedFile>,
        now: Instant,
    ) -> Result<AddOutcome, StateError> {
        let mut outcome = AddOutcome::default();
        let mut added = Vec::new();
        {
            let mut s = self
                .inner
                .sessions
                .get_mut(&session)
                .ok_or(StateError::NoSession)?;
            if s.lease_expires <= now {
                return Err(StateError::NoSession);
            }
            s.lease_expires = now + self.inner.lease_ttl;
            for f in files.into_iter().take(MAX_FILES_PER_BATCH) {
                let conflicts = |size: u64| size != f.size;
                let size_conflict = self
                    .inner
                    .files
                    .get(&f.id)
                    .is_some_and(|r| conflicts(r.size))
                    || self
                        .inner
                        .partials
                        .get(&f.id)
                        .is_some_and(|r| conflicts(r.size));
                if validate_name(&f.name).is_err()
                    || f.size > MAX_FILE_SIZE
                    || size_conflict
                    || (s.partial.len() >= MAX_PARTIAL_PER_SESSION
                        && !s.partial.contains_key(&f.id))
                {
                    outcome.rejected += 1;
                    continue;
                }
                if s.files.contains_key(&f.id) {
                    continue;
                }
                s.partial.insert(f.id, f.name.clone());
                outcome.added += 1;
                added.push(f);
            }
        }
        for f in added {
            self.inner
                .partials
                .entry(f.id)
                .or_insert_with(|| PartialRecord {
                    size: f.size,
                    holders: HashMap::new(),
                })
                .holders
                .insert(session, f.name);
        }
        Ok(outcome)
    }

    /// Live sources of a file for a swarming downloader: complete holders
    /// and partial ones (each address once, complete first).
    pub fn swarm_lookup(&self, id: &FileId, now: Instant) -> Option<SwarmSources> {
        let complete = self.lookup(id, now);
        let (psize, holders): (Option<u64>, Vec<(SessionId, String)>) =
            match self.inner.partials.get(id) {
                Some(rec) => (
                    Some(rec.size),
                    rec.holders.iter().map(|(s, n)| (*s, n.clone())).collect(),
                ),
                None => (None, Vec::new()),
            };
        let (mut name, mut size, complete) = match complete {
            Some((name, size, sources)) => (Some(name), Some(size), sources),
            None => (None, psize, Vec::new()),
        };
        let mut partial: Vec<Source> = Vec::new();
        for (session, holder_name) in holders {
            let Some(s) = self.inner.sessions.get(&session) else {
                continue;
            };
            if s.lease_expires <= now
                || complete
                    .iter()
                    .chain(&partial)
                    .any(|src| src.addr == s.addr)
            {
                continue;
            }
            partial.push(Source {
                addr: s.addr.clone(),
                nick: s.nick.clone(),
            });
            name.get_or_insert(holder_name);
        }
        partial.sort_by(|a, b| a.addr.cmp(&b.addr));
        partial.truncate(200);
        size.get_or_insert(0);
        Some(SwarmSources {
            name: name?,
            size: size?,
            complete,
            partial,
        })
    }

    /// Removes every session whose lease has run out. Returns how many.
    pub fn reap_expired(&self, now: Instant) -> usize {
        let expired: Vec<SessionId> = self
            .inner
            .sessions
            .iter()
            .filter(|s| s.lease_expires <= now)
            .map(|s| *s.key())
            .collect();
        for id in &expired {
            self.logout(*id);
        }
        expired.len()
    }

    fn drop_holder(&self, session: SessionId, id: FileId, name: &str) {
        if let Some(mut rec) = self.inner.files.get_mut(&id) {
            rec.holders.remove(&session);
        }
        self.inner
            .files
            .remove_if(&id, |_, rec| rec.holders.is_empty());
        self.unindex_name(id, name);
    }

    fn index_name(&self, id: FileId, name: &str) {
        for word in tokenize(name) {
            *self
                .inner
                .words
                .entry(word)
                .or_default()
                .entry(id)
                .or_insert(0) += 1;
        }
    }

    fn unindex_name(&self, id: FileId, name: &str) {
        for word in tokenize(name) {
            if let Some(mut postings) = self.inner.words.get_mut(&word) {
                if let Some(count) = postings.get_mut(&id) {
                    *count -= 1;
                    if *count == 0 {
                        postings.remove(&id);
                    }
                }
            }
            self.inner.words.remove_if(&word, |_, p| p.is_empty());
        }
    }

    /// Live sources of a file, as (name, size, sources); `None` if no live peer has it.
    pub fn lookup(&self, id: &FileId, now: Instant) -> Option<(String, u64, Vec<Source>)> {
        let (size, holders): (u64, Vec<(SessionId, String)>) = {
            let rec = self.inner.files.get(id)?;
            (
                rec.size,
                rec.holders.iter().map(|(s, n)| (*s, n.clone())).collect(),
            )
        };
        let mut sources: Vec<Source> = Vec::new();
        let mut name = None;
        for (session, holder_name) in holders {
            let Some(s) = self.inner.sessions.get(&session) else {
                continue;
            };
            if s.lease_expires <= now || sources.iter().any(|src| src.addr == s.addr) {
                continue;
            }
            sources.push(Source {
                addr: s.addr.clone(),
                nick: s.nick.clone(),
            });
            name.get_or_insert(holder_name);
        }
        sources.sort_by(|a, b| a.addr.cmp(&b.addr));
        sources.truncate(200);
        Some((name?, size, sources))
    }

    /// Files whose names contain every word, most live sources first.
    pub fn search(&self, words: &[String], limit: usize, now: Instant) -> Vec<SearchHit> {
        let mut tokens: Vec<String> = words.iter().flat_map(|w| tokenize(w)).collect();
        tokens.sort();
        tokens.dedup();
        if tokens.is_empty() {
            return Vec::new();
        }
        // Start from the rarest word; copy its ids so that no guard is held
        // while the other words are checked.
        let mut sizes = Vec::with_capacity(tokens.len());
        for t in &tokens {
            match self.inner.words.get(t) {
                Some(p) => sizes.push((p.len(), t)),
                None => return Vec::new(),
            }
        }
        sizes.sort();
        let mut candidates: Vec<FileId> = match self.inner.words.get(sizes[0].1) {
            Some(p) => p.keys().copied().collect(),
            None => return Vec::new(),
        };
        for (_, t) in &sizes[1..] {
            match self.inner.words.get(*t) {
                Some(p) => candidates.retain(|id| p.contains_key(id)),
                None => return Vec::new(),
            }
        }
        let mut hits: Vec<SearchHit> = candidates
            .into_iter()
            .filter_map(|id| {
                let (name, size, sources) = self.lookup(&id, now)?;
                Some(SearchHit {
                    id,
                    name,
                    size,
                    sources: sources.len() as u32,
                })
            })
            .collect();
        hits.sort_by(|a, b| {
            b.sources
                .cmp(&a.sources)
                .then_with(|| a.name.cmp(&b.name))
                .then(a.id.cmp(&b.id))
        });
        hits.truncate(limit);
        hits
    }

    fn find_session(&self, who: &str, now: Instant) -> Option<SessionId> {
        self.inner
            .sessions
            .iter()
            .filter(|s| s.lease_expires > now && (s.addr == who || s.nick.as_deref() == Some(who)))
            .map(|s| *s.key())
            .max()
    }

    /// A page of one live peer's list (by address or nickname), sorted by name.
    pub fn browse(
        &self,
        who: &str,
        start: usize,
        page: usize,
        now: Instant,
    ) -> Option<(Vec<SharedFile>, Option<u32>)> {
        let session = self.find_session(who, now)?;
        let s = self.inner.sessions.get(&session)?;
        let mut files: Vec<SharedFile> = s
            .files
            .iter()
            .map(|(id, (name, size))| SharedFile {
                id: *id,
                name: name.clone(),
                size: *size,
            })
            .collect();
        drop(s);
        files.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        let end = (start + page).min(files.len());
        let next = (end < files.len()).then_some(end as u32);
        let page = files
            .get(start..end)
            .map(|p| p.to_vec())
            .unwrap_or_default();
        Some((page, next))
    }

    /// A page of live peers, sorted by address.
    pub fn peers(
        &self,
        start: usize,
        page: usize,
        now: Instant,
    ) -> (Vec<PeerSummary>, Option<u32>) {
        let mut all: Vec<PeerSummary> = self
            .inner
            .sessions
            .iter()
            .filter(|s| s.lease_expires > now)
            .map(|s| PeerSummary {
                addr: s.addr.clone(),
                nick: s.nick.clone(),
                files: s.files.len() as u64,
                bytes: s.bytes,
            })
            .collect();
        all.sort_by(|a, b| a.addr.cmp(&b.addr));
        let end = (start + page).min(all.len());
        let next = (end < all.len()).then_some(end as u32);
        (
            all.get(start..end).map(|p| p.to_vec()).unwrap_or_default(),
            next,
        )
    }

    /// Live peers, distinct live files and their bytes.
    pub fn stats(&self, now: Instant) -> IndexStats {
        let live: std::collections::HashSet<SessionId> = self
            .inner
            .sessions
            .iter()
            .filter(|s| s.lease_expires > now)
            .map(|s| *s.key())
            .collect();
        let mut stats = IndexStats {
            peers: live.len() as u64,
            ..Default::default()
        };
        for rec in self.inner.files.iter() {
            if rec.holders.keys().any(|h| live.contains(h)) {
                stats.files += 1;
                stats.bytes += rec.size;
            }
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u8, name: &str) -> SharedFile {
        SharedFile {
            id: FileId([n; 32]),
            name: name.into(),
            size: n as u64 * 10,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn partial_holders_are_listed_apart_and_upgrade_to_complete() {
        let index = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let seed = index.login("10.0.0.1:1".into(), None, now).unwrap();
        let leecher = index.login("10.0.0.2:1".into(), None, now).unwrap();
        index
            .add_files(seed, vec![file(1, "movie.mkv")], now)
            .unwrap();
        let added = index
            .add_partial(leecher, vec![file(1, "movie.mkv")], now)
            .unwrap();
        assert_eq!(added.added, 1);
        let found = index.swarm_lookup(&FileId([1; 32]), now).unwrap();
        assert_eq!(found.complete.len(), 1);
        assert_eq!(found.partial[0].addr, "10.0.0.2:1");
        // Search and Lookup ignore partial holders.
        assert_eq!(index.lookup(&FileId([1; 32]), now).unwrap().2.len(), 1);
        assert_eq!(index.search(&["movie".into()], 10, now)[0].sources, 1);
        // A partial holding with no complete source is still found.
        index
            .add_partial(leecher, vec![file(2, "other")], now)
            .unwrap();
        let only = index.swarm_lookup(&FileId([2; 32]), now).unwrap();
        assert_eq!(
            (only.complete.len(), only.partial.len(), only.size),
            (0, 1, 20)
        );
        // A size that contradicts the complete holders is refused.
        let mut liar = file(1, "movie.mkv");
        liar.size = 5;
        assert_eq!(
            index
                .add_partial(leecher, vec![liar], now)
                .unwrap()
                .rejected,
            1
        );
        // Finishing turns the partial holding into a complete one.
        index
            .add_files(leecher, vec![file(1, "movie.mkv")], now)
            .unwrap();
        let found = index.swarm_lookup(&FileId([1; 32]), now).unwrap();
        assert_eq!((found.complete.len(), found.partial.len()), (2, 0));
        // Logging out drops partial holdings too.
        index.logout(leecher);
        assert!(index.swarm_lookup(&FileId([2; 32]), now).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn search_needs_every_word_and_ranks_by_sources() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let a = idx.login("a:1".into(), None, now).unwrap();
        let b = idx.login("b:1".into(), None, now).unwrap();
        idx.add_files(
            a,
            vec![file(1, "Blue Monday.mp3"), file(2, "blue moon.ogg")],
            now,
        )
        .unwrap();
        idx.add_files(b, vec![file(2, "Blue Moon.ogg")], now)
            .unwrap();
        let hits = idx.search(&["BLUE".into()], 100, now);
        assert_eq!(
            hits.iter().map(|h| (h.id, h.sources)).collect::<Vec<_>>(),
            vec![(FileId([2; 32]), 2), (FileId([1; 32]), 1)]
        );
        assert_eq!(
            idx.search(&["blue".into(), "monday".into()], 100, now)
                .len(),
            1
        );
        assert!(idx
            .search(&["blue".into(), "tuesday".into()], 100, now)
            .is_empty());
        assert_eq!(idx.search(&["blue".into()], 1, now).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_cannot_remove_anothers_entries() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let a = idx.login("a:1".into(), None, now).unwrap();
        let b = idx.login("b:1".into(), None, now).unwrap();
        idx.add_files(a, vec![file(1, "x")], now).unwrap();
        assert_eq!(idx.remove_files(b, &[FileId([1; 32])], now).unwrap(), 0);
        assert_eq!(idx.lookup(&FileId([1; 32]), now).unwrap().2.len(), 1);
        assert_eq!(idx.remove_files(a, &[FileId([1; 32])], now).unwrap(), 1);
        assert!(idx.lookup(&FileId([1; 32]), now).is_none());
        assert!(idx.search(&["x".into()], 10, now).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn leases_expire_without_heartbeats() {
        let ttl = Duration::from_secs(30);
        let idx = Index::new(ttl);
        let a = idx
            .login("a:1".into(), Some("ana".into()), Instant::now())
            .unwrap();
        idx.add_files(a, vec![file(1, "song")], Instant::now())
            .unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        idx.heartbeat(a, Instant::now()).unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            idx.stats(Instant::now()).peers,
            1,
            "heartbeat renewed the lease"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        let now = Instant::now();
        assert!(
            idx.lookup(&FileId([1; 32]), now).is_none(),
            "expired peer still listed"
        );
        assert!(idx.search(&["song".into()], 10, now).is_empty());
        assert_eq!(idx.stats(now), IndexStats::default());
        assert!(idx.heartbeat(a, now).is_err());
        // The nickname is free again even before the reaper runs.
        assert!(idx.login("c:1".into(), Some("ana".into()), now).is_ok());
        assert_eq!(idx.reap_expired(now), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_entries_are_rejected_and_nicks_are_unique() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let a = idx.login("a:1".into(), Some("ana".into()), now).unwrap();
        assert_eq!(
            idx.login("b:1".into(), Some("ana".into()), now),
            Err(StateError::NickTaken("ana".into()))
        );
        let out = idx
            .add_files(
                a,
                vec![
                    file(1, "ok"),
                    file(2, "bad\u{7}name"),
                    SharedFile {
                        id: FileId([3; 32]),
                        name: "huge".into(),
                        size: u64::MAX,
                    },
                ],
                now,
            )
            .unwrap();
        assert_eq!(
            out,
            AddOutcome {
                added: 1,
                rejected: 2
            }
        );
        // Same id with a contradicting size is refused.
        let b = idx.login("b:1".into(), None, now).unwrap();
        let out = idx
            .add_files(
                b,
                vec![SharedFile {
                    id: FileId([1; 32]),
                    name: "ok".into(),
                    size: 999,
                }],
                now,
            )
            .unwrap();
        assert_eq!(out.rejected, 1);
        idx.logout(a);
        assert!(idx.login("c:1".into(), Some("ana".into()), now).is_ok());
        assert_eq!(idx.stats(now).files, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn browse_pages_and_renames() {
        let idx = Index::new(Duration::from_secs(60));
        let now = Instant::now();
        let a = idx.login("a:1".into(), Some("ana".into()), now).unwrap();
        idx.add_files(a, (1..=5).map(|n| file(n, &format!("f{n}"))).collect(), now)
            .unwrap();
        let (page, next) = idx.browse("a:1", 0, 2, now).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(next, Some(2));
        let (page, next) = idx.browse("ana", 4, 2, now).unwrap();
        assert_eq!((page.len(), next), (1, None));
        // Re-registering under a new name moves the word index along.
        idx.add_files(a, vec![file(1, "renamed")], now).unwrap();
        assert!(idx.search(&["f1".into()], 10, now).is_empty());
        assert_eq!(idx.search(&["renamed".into()], 10, now).len(), 1);
        assert!(idx.browse("nobody", 0, 2, now).is_none());
    }
}
