//! Downloads owned by the daemon: a list that outlives the process, at
//! most `max_active` running at once, the rest queued in order.
//!
//! # States
//! ```text
//!            POST                 a slot frees            sources connected
//!   (new) ---------> queued ----------------------> waiting <-----------> active
//!                     ^  ^                              |  no source connected |
//!           resume    |  | retry_at passed              |                      |
//!   paused -----------+  +---- failed <-----------------+----------------------+
//!     ^                        (reason,     error          |          |
//!     |  pause                  retry_at)                  | verified | pause
//!     +--------------------------------------------------------------+
//!                                                  done (path) <-----+
//! ```
//! `waiting` and `active` are one stored state (running): which one is
//! shown depends on whether a source is connected now. DELETE removes an
//! entry in any state (cancelling a running one; its part file stays, so
//! the same file asked for again resumes from its verified chunks).
//!
//! # Persistence
//! Every entry is a row of a redb table in `SHARE/.p2pshare/downloads.redb`,
//! written (and fsynced by redb's commit) at each change of state, never
//! for progress: progress is the part file's verified chunks, which the
//! engine finds again on resume. After a crash (`kill -9`) the rows that
//! were running are queued again at start and continue from their
//! verified chunks; finished ones stay listed until cleared.
//!
//! # Ownership
//! The fields are private. Every task (the scheduler and each running
//! download) belongs to the daemon's `TaskTracker` and stops with a token
//! that is cancelled when the daemon shuts down or when the last handle of
//! the manager is dropped.

pub mod client;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::download::{EngineConfig, Progress};
use crate::pipeline::{self, Fetcher, Swarming};

/// Default of `--max-active-downloads`.
pub const DEFAULT_MAX_ACTIVE: usize = 3;

/// The store's file in the share's state folder.
pub const STORE_FILE: &str = "downloads.redb";

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("downloads");
/// Settings kept with the list: the requester token ("requester").
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// First wait before a failed download is tried again; doubles per failure.
const RETRY_FIRST: Duration = Duration::from_secs(30);
/// First wait after a busy index or overlay node, or a file nobody
/// offers yet; doubles per failure up to [`RETRY_FIRST`].
const RETRY_SOON: Duration = Duration::from_secs(1);
/// Longest wait between two tries of a failed download.
const RETRY_MAX: Duration = Duration::from_secs(600);

/// A stored state. Running is shown as `waiting` or `active`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stored {
    Queued,
    Running,
    Paused,
    Done,
    Failed,
}

/// One row of the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: u64,
    /// What was asked for (id, id prefix or exact name).
    target: String,
    /// Known once resolved.
    file_id: Option<String>,
    name: String,
    size: Option<u64>,
    out_dir: PathBuf,
    state: Stored,
    path: Option<PathBuf>,
    error: Option<String>,
    /// Unix seconds when a failed download is queued again (none: never).
    retry_at: Option<u64>,
    /// Failures in a row (the backoff).
    failures: u32,
    /// Chunks a finished download found already verified in its part file.
    #[serde(default)]
    chunks_resumed: Option<u32>,
    /// Client-server mode: fetched from this index server's store only
    /// (never a peer); none: the daemon's own mode.
    #[serde(default)]
    server: Option<String>,
    /// Verified bytes when the download last stopped (paused, failed):
    /// what the list shows while it does not run.
    #[serde(default)]
    bytes_done: u64,
    /// Of a finished download: the engine's report, as a standalone
    /// `peer get --json` prints it (path, id, size, sources_used,
    /// per_source, ...).
    #[serde(default)]
    outcome: Option<serde_json::Value>,
}

/// A download as the API shows it (RULES.md's contract).
#[derive(Debug, Clone, Serialize)]
pub struct Download {
    pub id: u64,
    pub target: String,
    pub file_id: Option<String>,
    pub name: String,
    pub size: Option<u64>,
    /// "queued", "waiting", "active", "paused", "done" or "failed".
    pub state: String,
    /// Verified bytes on disk (resumed ones included).
    pub bytes_done: u64,
    /// Bytes per second received in this run.
    pub rate_bps: u64,
    /// Each source of a running download: its state (connecting, active,
    /// queued at it with `queue_position`, retrying, failed, done) and rate.
    pub sources: Vec<crate::download::SourceView>,
    /// Sources connected now (a count, when per-source detail is unknown).
    pub active_sources: usize,
    /// Place among the queued downloads (1 = next to start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix seconds when a failed download is tried again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<u64>,
    pub out_dir: PathBuf,
    /// "client-server" (fetched from `server`'s store only), or the
    /// daemon's own mode ("hybrid" or "p2p").
    pub mode: &'static str,
    /// The index server whose store a client-server download comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Of a finished download: chunks that were already verified in its
    /// part file (an earlier run, before a pause or a crash) and not fetched again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks_resumed: Option<u32>,
    /// Of a finished download: the engine's report, the object a
    /// standalone `peer get --json` prints (`path`, `id`, `size`,
    /// `sources_used`, `chunks_resumed`, `chunks_total`, `per_source`,
    /// `already_present`, `bytes_received`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<serde_json::Value>,
}

/// A page of the download list (`GET /api/downloads`).
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub downloads: Vec<Download>,
    /// Downloads matching the filter (the page may hold fewer).
    pub total: usize,
    /// Downloads in each shown state, whatever the filter.
    pub counts: std::collections::BTreeMap<&'static str, usize>,
}

/// Why the manager refused a request.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no download {0}")]
    Unknown(u64),
    #[error("download {id} is {state}: {action} does not apply")]
    WrongState {
        id: u64,
        state: String,
        action: &'static str,
    },
    #[error(transparent)]
    BadTarget(#[from] crate::target::TargetError),
    #[error("the output folder must be an absolute path: {0}")]
    RelativeOut(PathBuf),
    #[error("cannot store the download list: {0}")]
    Store(String),
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        StoreError(e.into().to_string())
    }
}

/// A redb failure (kept as text: redb has several error types).
#[derive(Debug)]
pub struct StoreError(String);

impl From<StoreError> for ManagerError {
    fn from(e: StoreError) -> Self {
        ManagerError::Store(e.0)
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Settings of the download manager.
#[derive(Clone)]
pub struct ManagerConfig {
    /// Downloads running at once (`--max-active-downloads`).
    pub max_active: usize,
    /// Where downloads go when no folder is given (the shared folder).
    pub default_out: PathBuf,
    /// The state folder holding the store.
    pub state_dir: PathBuf,
    pub engine: EngineConfig,
}

struct Running {
    progress: Arc<Progress>,
    cancel: CancellationToken,
    started: Instant,
}

struct Entry {
    rec: Record,
    run: Option<Running>,
}

struct Table {
    /// The daemon's own mode, as downloads show it ("hybrid" or "p2p").
    mode: &'static str,
    next_id: u64,
    entries: BTreeMap<u64, Entry>,
}

struct Inner {
    table: Mutex<Table>,
    db: redb::Database,
    wake: Arc<Notify>,
    changed: watch::Sender<u64>,
    fetcher: Fetcher,
    swarming: Option<Swarming>,
    config: ManagerConfig,
    tracker: TaskTracker,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

/// The daemon's downloads; a cheap handle (clone it freely). Dropping the
/// last handle stops every download task.
#[derive(Clone)]
pub struct DownloadManager {
    inner: Arc<Inner>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl DownloadManager {
    /// Opens (or creates) the store, queues again what was running when the
    /// daemon stopped, and starts the scheduler on `tracker`.
    pub fn start(
        mut config: ManagerConfig,
        fetcher: Fetcher,
        swarming: Option<Swarming>,
        tracker: TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&config.state_dir).map_err(|e| StoreError(e.to_string()))?;
        let db = redb::Database::create(config.state_dir.join(STORE_FILE))?;
        let mut entries = BTreeMap::new();
        {
            let tx = db.begin_write()?;
            {
                // One requester token for this share's downloads, kept across
                // restarts: a restarted daemon keeps its places in the
                // sources' upload queues (within their grace period).
                let mut meta = tx.open_table(META)?;
                let token = match meta.get("requester")? {
                    Some(t) => t.value(),
                    None => rand::random::<u64>() | 1,
                };
                meta.insert("requester", token)?;
                if config.engine.requester_token.is_none() {
                    config.engine.requester_token = Some(token);
                }
            }
            {
                let mut t = tx.open_table(TABLE)?;
                let mut requeue = Vec::new();
                for row in t.iter()? {
                    let (k, v) = row?;
                    match serde_json::from_slice::<Record>(v.value()) {
                        Ok(mut rec) => {
                            if rec.state == Stored::Running {
                                rec.state = Stored::Queued;
                                requeue.push(rec.clone());
                            }
                            entries.insert(k.value(), Entry { rec, run: None });
                        }
                        Err(e) => {
                            warn!(row = k.value(), error = %e, "unreadable download row skipped")
                        }
                    }
                }
                for rec in requeue {
                    let bytes = serde_json::to_vec(&rec).expect("records serialize");
                    t.insert(rec.id, bytes.as_slice())?;
                }
            }
            tx.commit()?;
        }
        if !entries.is_empty() {
            info!(
                downloads = entries.len(),
                "download list loaded; interrupted ones continue"
            );
        }
        let next_id = entries.keys().next_back().map_or(1, |k| k + 1);
        let stop = shutdown.child_token();
        let inner = Arc::new(Inner {
            table: Mutex::new(Table {
                mode: mode_name(&fetcher),
                next_id,
                entries,
            }),
            db,
            wake: Arc::new(Notify::new()),
            changed: watch::Sender::new(0),
            fetcher,
            swarming,
            config,
            tracker: tracker.clone(),
            stop: stop.clone(),
            _stop_on_drop: stop.clone().drop_guard(),
        });
        // The scheduler holds only a weak handle, so dropping the manager stops it.
        tracker.spawn(schedule(Arc::downgrade(&inner), inner.wake.clone(), stop));
        inner.wake.notify_one();
        Ok(DownloadManager { inner })
    }

    /// Queues a download of `target` into `out` (default: the shared
    /// folder), in the daemon's mode, or with `server` in client-server
    /// mode: from that index server's store only, through the same pipeline.
    /// An unfinished download of the same target into the same folder (and
    /// from the same server) is returned instead of a second one.
    pub fn add(
        &self,
        target: &str,
        out: Option<PathBuf>,
        server: Option<String>,
    ) -> Result<Download, ManagerError> {
        let target = target.trim();
        let _: crate::target::Target = target.parse()?;
        let out_dir = match out {
            Some(p) if !p.is_absolute() => return Err(ManagerError::RelativeOut(p)),
            Some(p) => p,
            None => self.inner.config.default_out.clone(),
        };
        let mut table = self.inner.table.lock().expect("table lock");
        // The same target into the same folder, not finished yet: that
        // download is the answer (asking twice does not fetch twice).
        let same = table.entries.iter().find(|(_, e)| {
            e.rec.state != Stored::Done
                && e.rec.target == target
                && e.rec.out_dir == out_dir
                && e.rec.server == server
        });
        if let Some((&id, _)) = same {
            return Ok(view_of(&table, id).expect("present"));
        }
        let id = table.next_id;
        let rec = Record {
            id,
            target: target.to_string(),
            file_id: None,
            name: target.to_string(),
            size: None,
            out_dir,
            state: Stored::Queued,
            path: None,
            error: None,
            retry_at: None,
            failures: 0,
            chunks_resumed: None,
            server,
            bytes_done: 0,
            outcome: None,
        };
        self.inner.persist(&rec)?;
        table.next_id += 1;
        table.entries.insert(id, Entry { rec, run: None });
        let view = view_of(&table, id).expect("just inserted");
        drop(table);
        self.inner.touch();
        Ok(view)
    }

    /// Every download, oldest first.
    pub fn list(&self) -> Vec<Download> {
        let table = self.inner.table.lock().expect("table lock");
        let mut position = 0;
        table
            .entries
            .values()
            .map(|e| {
                let pos = (e.rec.state == Stored::Queued).then(|| {
                    position += 1;
                    position
                });
                view(e, pos, table.mode)
            })
            .collect()
    }

    /// One page of the list, oldest first: the downloads whose shown
    /// state is in `states` (all when empty), skipping `offset`, at most
    /// `limit`; with how many match and how many are in each state.
    pub fn page(&self, states: &[String], offset: usize, limit: usize) -> Page {
        // One pass over every entry under the lock, so it stays cheap: the
        // counts in an array, a state's name looked up once (issue 14: a
        // list call under 5 ms at p99 with 10,100 downloads).
        let wanted: Vec<bool> = SHOWN_STATES
            .iter()
            .map(|n| states.is_empty() || states.iter().any(|s| s == n))
            .collect();
        let table = self.inner.table.lock().expect("table lock");
        let mut counts = [0usize; SHOWN_STATES.len()];
        let mut total = 0;
        let mut position = 0;
        let mut downloads = Vec::new();
        for e in table.entries.values() {
            let pos = (e.rec.state == Stored::Queued).then(|| {
                position += 1;
                position
            });
            let state = state_index(e);
            counts[state] += 1;
            if !wanted[state] {
                continue;
            }
            if total >= offset && downloads.len() < limit {
                downloads.push(view(e, pos, table.mode));
            }
            total += 1;
        }
        drop(table);
        Page {
            downloads,
            total,
            counts: SHOWN_STATES
                .iter()
                .zip(counts)
                .filter(|(_, n)| *n > 0)
                .map(|(s, n)| (*s, n))
                .collect(),
        }
    }

    pub fn get(&self, id: u64) -> Result<Download, ManagerError> {
        let table = self.inner.table.lock().expect("table lock");
        view_of(&table, id).ok_or(ManagerError::Unknown(id))
    }

    /// Stops a queued, running or failed download; its verified chunks stay.
    pub fn pause(&self, id: u64) -> Result<Download, ManagerError> {
        self.transition(id, "pause", |s| {
            matches!(s, Stored::Queued | Stored::Running | Stored::Failed).then_some(Stored::Paused)
        })
    }

    /// Queues a paused or failed download again.
    pub fn resume(&self, id: u64) -> Result<Download, ManagerError> {
        self.transition(id, "resume", |s| {
            matches!(s, Stored::Paused | Stored::Failed).then_some(Stored::Queued)
        })
    }

    /// Cancels a download (or clears a finished or failed one) and forgets it.
    pub fn remove(&self, id: u64) -> Result<Download, ManagerError> {
        let mut table = self.inner.table.lock().expect("table lock");
        let view = view_of(&table, id).ok_or(ManagerError::Unknown(id))?;
        self.inner.unpersist(id)?;
        if let Some(entry) = table.entries.remove(&id) {
            if let Some(run) = entry.run {
                run.cancel.cancel();
            }
        }
        drop(table);
        self.inner.touch();
        Ok(view)
    }

    /// Bumped at every change of state (not progress): for event streams.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    fn transition(
        &self,
        id: u64,
        action: &'static str,
        next: impl FnOnce(Stored) -> Option<Stored>,
    ) -> Result<Download, ManagerError> {
        let mut table = self.inner.table.lock().expect("table lock");
        let entry = table
            .entries
            .get_mut(&id)
            .ok_or(ManagerError::Unknown(id))?;
        let Some(to) = next(entry.rec.state) else {
            return Err(ManagerError::WrongState {
                id,
                state: state_name(entry).to_string(),
                action,
            });
        };
        let mut rec = entry.rec.clone();
        rec.state = to;
        rec.retry_at = None;
        if let Some(run) = &entry.run {
            note_progress(&mut rec, &run.progress);
        }
        if to == Stored::Queued {
            rec.error = None;
        }
        self.inner.persist(&rec)?;
        entry.rec = rec;
        if let Some(run) = entry.run.take() {
            run.cancel.cancel();
        }
        let view = view_of(&table, id).expect("present");
        drop(table);
        self.inner.touch();
        Ok(view)
    }
}

impl Inner {
    fn persist(&self, rec: &Record) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).expect("records serialize");
        let tx = self.db.begin_write()?;
        tx.open_table(TABLE)?.insert(rec.id, bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    fn unpersist(&self, id: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(TABLE)?.remove(id)?;
        tx.commit()?;
        Ok(())
    }

    /// Something changed: tell watchers, let the scheduler look.
    fn touch(&self) {
        self.changed.send_modify(|v| *v += 1);
        self.wake.notify_one();
    }
}

/// The states a download is shown in (the API's `state` filter takes
/// these names).
pub const SHOWN_STATES: [&str; 6] = ["queued", "waiting", "active", "paused", "done", "failed"];

fn state_name(e: &Entry) -> &'static str {
    SHOWN_STATES[state_index(e)]
}

/// `e`'s shown state, an index into [`SHOWN_STATES`].
fn state_index(e: &Entry) -> usize {
    match e.rec.state {
        Stored::Queued => 0,
        // Active while some source sends; waiting while every source is
        // connecting, queued at its upload slots, or retrying.
        Stored::Running => match &e.run {
            Some(run) if sending(&run.progress) => 2,
            _ => 1,
        },
        Stored::Paused => 3,
        Stored::Done => 4,
        Stored::Failed => 5,
    }
}

fn sending(progress: &Progress) -> bool {
    let sources = progress.sources.snapshot();
    if sources.is_empty() {
        return progress
            .active_sources
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0;
    }
    sources
        .iter()
        .any(|s| s.state == crate::download::SourceState::Active)
}

fn view_of(table: &Table, id: u64) -> Option<Download> {
    let entry = table.entries.get(&id)?;
    let pos = (entry.rec.state == Stored::Queued).then(|| {
        table
            .entries
            .range(..=id)
            .filter(|(_, e)| e.rec.state == Stored::Queued)
            .count()
    });
    Some(view(entry, pos, table.mode))
}

/// How a download in `fetcher`'s mode is shown.
fn mode_name(fetcher: &Fetcher) -> &'static str {
    match fetcher {
        Fetcher::Hybrid { .. } => "hybrid",
        Fetcher::P2p { .. } => "p2p",
        Fetcher::ClientServer { .. } => "client-server",
    }
}

fn view(e: &Entry, queue_position: Option<usize>, mode: &'static str) -> Download {
    use std::sync::atomic::Ordering::Relaxed;
    let rec = &e.rec;
    let (bytes_done, rate_bps, active_sources, size, sources) = match &e.run {
        Some(run) => {
            let p = &run.progress;
            let total = p.total_bytes.load(Relaxed);
            (
                p.done_bytes.load(Relaxed),
                p.rate(run.started.elapsed()).0 as u64,
                p.active_sources.load(Relaxed),
                if total > 0 { Some(total) } else { rec.size },
                p.sources.snapshot(),
            )
        }
        None => (
            if rec.state == Stored::Done {
                rec.size.unwrap_or(0)
            } else {
                rec.bytes_done
            },
            0,
            0,
            rec.size,
            Vec::new(),
        ),
    };
    Download {
        id: rec.id,
        target: rec.target.clone(),
        file_id: rec.file_id.clone(),
        name: rec.name.clone(),
        size,
        state: state_name(e).to_string(),
        bytes_done,
        rate_bps,
        sources,
        active_sources,
        queue_position,
        path: rec.path.clone(),
        error: rec.error.clone(),
        retry_at: rec.retry_at,
        out_dir: rec.out_dir.clone(),
        mode: match rec.server {
            Some(_) => "client-server",
            None => mode,
        },
        server: rec.server.clone(),
        chunks_resumed: rec.chunks_resumed,
        outcome: rec.outcome.clone(),
    }
}

/// Starts queued downloads while fewer than `max_active` run; queues
/// failed ones again when their retry time comes.
async fn schedule(inner: std::sync::Weak<Inner>, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        let next_retry = {
            let Some(inner) = inner.upgrade() else { return };
            start_ready(&inner)
        };
        let wait = next_retry.unwrap_or(Duration::from_secs(3600));
        // A wake-up sent while we were not waiting is kept as a permit.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One pass of the scheduler; returns how long until the next retry is due.
fn start_ready(inner: &Arc<Inner>) -> Option<Duration> {
    let now = now_unix();
    let mut table = inner.table.lock().expect("table lock");
    let mut next_retry: Option<u64> = None;
    let due: Vec<u64> = table
        .entries
        .values()
        .filter(|e| e.rec.state == Stored::Failed)
        .filter_map(|e| e.rec.retry_at.map(|at| (e.rec.id, at)))
        .filter_map(|(id, at)| {
            if at <= now {
                Some(id)
            } else {
                next_retry = Some(next_retry.map_or(at, |n: u64| n.min(at)));
                None
            }
        })
        .collect();
    for id in due {
        let entry = table.entries.get_mut(&id).expect("listed");
        let mut rec = entry.rec.clone();
        rec.state = Stored::Queued;
        rec.retry_at = None;
        if inner.persist(&rec).is_ok() {
            entry.rec = rec;
        }
    }
    let running = table
        .entries
        .values()
        .filter(|e| e.rec.state == Stored::Running)
        .count();
    let free = inner.config.max_active.saturating_sub(running);
    let ready: Vec<u64> = table
        .entries
        .values()
        .filter(|e| e.rec.state == Stored::Queued)
        .take(free)
        .map(|e| e.rec.id)
        .collect();
    for id in ready {
        let entry = table.entries.get_mut(&id).expect("listed");
        let mut rec = entry.rec.clone();
        rec.state = Stored::Running;
        if let Err(e) = inner.persist(&rec) {
            warn!(error = %e, "cannot store the download list; not starting more");
            break;
        }
        entry.rec = rec.clone();
        let run = Running {
            progress: Arc::new(Progress::default()),
            cancel: inner.stop.child_token(),
            started: Instant::now(),
        };
        let task = run_one(
            Arc::downgrade(inner),
            rec,
            run.progress.clone(),
            run.cancel.clone(),
        );
        entry.run = Some(run);
        inner.tracker.spawn(task);
    }
    drop(table);
    inner.changed.send_modify(|v| *v += 1);
    next_retry.map(|at| Duration::from_secs(at.saturating_sub(now).max(1)))
}

/// Runs one download through the pipeline and records how it ended
/// (unless it was paused or removed meanwhile).
async fn run_one(
    inner: std::sync::Weak<Inner>,
    rec: Record,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) {
    let Some(strong) = inner.upgrade() else {
        return;
    };
    // One pipeline for every mode: only where the file is resolved and
    // its sources come from differs.
    let fetcher = match &rec.server {
        Some(server) => Fetcher::ClientServer {
            server: server.clone(),
        },
        None => strong.fetcher.clone(),
    };
    let swarming = strong.swarming.clone();
    let engine = strong.config.engine.clone();
    drop(strong);
    // Once resolved, the id is asked for (not the name again).
    let target = rec.file_id.clone().unwrap_or_else(|| rec.target.clone());
    let id = rec.id;
    let on_resolved = {
        let inner = inner.clone();
        move |file_id: String, name: String, size: u64| {
            let Some(inner) = inner.upgrade() else { return };
            let mut table = inner.table.lock().expect("table lock");
            if let Some(entry) = table.entries.get_mut(&id) {
                let mut rec = entry.rec.clone();
                rec.file_id = Some(file_id);
                rec.name = name;
                rec.size = Some(size);
                if inner.persist(&rec).is_ok() {
                    entry.rec = rec;
                }
            }
        }
    };
    let options = pipeline::FetchOptions {
        swarming,
        on_resolved: Some(Box::new(on_resolved)),
        // Firewalled sources too (callback, hole punch, relay).
        callbacks: Some(pipeline::CALLBACKS_ANY_PORT),
        ..pipeline::FetchOptions::new(rec.out_dir.clone(), engine, progress)
    };
    let result = pipeline::fetch(&fetcher, &target, options, cancel.clone()).await;
    let Some(inner) = inner.upgrade() else { return };
    let mut table = inner.table.lock().expect("table lock");
    let Some(entry) = table.entries.get_mut(&id) else {
        return; // removed meanwhile
    };
    if entry.rec.state != Stored::Running {
        entry.run = None; // paused meanwhile
        drop(table);
        inner.touch();
        return;
    }
    let mut rec = entry.rec.clone();
    match result {
        Ok(pipeline::Fetched { download: done, .. }) => {
            info!(id, path = %done.path.display(), "download done");
            rec.state = Stored::Done;
            rec.size = Some(done.size);
            rec.file_id = Some(done.id.clone());
            rec.path = Some(done.path.clone());
            rec.error = None;
            rec.failures = 0;
            rec.chunks_resumed = Some(done.chunks_resumed);
            rec.outcome = serde_json::to_value(&done).ok();
        }
        Err(e) if cancel.is_cancelled() && inner.stop.is_cancelled() => {
            // The daemon is stopping: stays running in the store, resumes at start.
            let _ = e;
            entry.run = None;
            return;
        }
        Err(e) => {
            if let Some(run) = &entry.run {
                note_progress(&mut rec, &run.progress);
            }
            rec.state = Stored::Failed;
            rec.failures += 1;
            rec.error = Some(common::report::error_chain(&e));
            // A busy index or overlay node, or a file nobody offers yet (a
            // seed registering right now), is a moment's matter: tried
            // again within seconds, not after RETRY_FIRST.
            let soon = e.busy() || e.not_offered_yet();
            rec.retry_at = e
                .retryable()
                .then(|| now_unix() + retry_wait(rec.failures, soon).as_secs());
            warn!(id, error = %e, "download failed");
        }
    }
    if let Err(e) = inner.persist(&rec) {
        warn!(error = %e, "cannot store the download list");
    }
    entry.rec = rec;
    entry.run = None;
    drop(table);
    inner.touch();
}

/// How long a download that failed `failures` times in a row waits before
/// its next try: from [`RETRY_FIRST`], doubling, up to [`RETRY_MAX`]; from
/// [`RETRY_SOON`] up to [`RETRY_FIRST`] when the failure is a moment's
/// matter (`soon`: a busy index or node, a file nobody offers yet).
fn retry_wait(failures: u32, soon: bool) -> Duration {
    let (first, max) = if soon {
        (RETRY_SOON, RETRY_FIRST)
    } else {
        (RETRY_FIRST, RETRY_MAX)
    };
    first
        .saturating_mul(1 << failures.min(8).saturating_sub(1))
        .min(max)
}

/// Keeps what a run had verified (and the size it learnt) in its record,
/// for the list to show once the run stops.
fn note_progress(rec: &mut Record, progress: &Progress) {
    use std::sync::atomic::Ordering::Relaxed;
    rec.bytes_done = progress.done_bytes.load(Relaxed);
    let total = progress.total_bytes.load(Relaxed);
    if total > 0 {
        rec.size = Some(total);
    }
}

/// Where the store of a share lives.
pub fn store_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STORE_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_or_not_yet_offered_is_retried_within_seconds() {
        assert_eq!(retry_wait(1, true), RETRY_SOON);
        assert_eq!(retry_wait(2, true), 2 * RETRY_SOON);
        assert_eq!(
            retry_wait(30, true),
            RETRY_FIRST,
            "soon tops out at the usual first wait"
        );
        assert_eq!(retry_wait(1, false), RETRY_FIRST);
        assert_eq!(retry_wait(2, false), 2 * RETRY_FIRST);
        assert_eq!(retry_wait(30, false), RETRY_MAX);
    }

    #[test]
    fn a_busy_overlay_node_or_index_counts_as_busy() {
        use common::hello::HelloError;
        use common::wire::WireError;
        let node = pipeline::FetchError::Search(crate::overlay::search::SearchError::Wire {
            addr: "127.0.0.1:1".into(),
            reason: WireError::Hello(HelloError::Busy),
        });
        assert!(node.busy() && node.retryable());
        let index = pipeline::FetchError::Index(crate::index_client::IndexError::Wire(
            WireError::Hello(HelloError::Busy),
        ));
        assert!(index.busy());
        let other = pipeline::FetchError::Index(crate::index_client::IndexError::Wire(
            WireError::Hello(HelloError::WrongProtocol),
        ));
        assert!(!other.busy());
        assert!(pipeline::FetchError::NotOffered(common::id::FileId([1; 32])).not_offered_yet());
    }
}
