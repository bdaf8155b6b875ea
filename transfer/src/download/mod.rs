//! The transfer engine: one verified multi-source download.
//!
//! The same engine serves every paradigm: it is given a file id and a list
//! of source addresses (from the index, from a flooding search, or the one
//! server in client-server mode) and knows nothing about where they came from.
//!
//! 1. The hash list is fetched from the first source that has a valid one
//!    (checked against the id, so no source can lie about it).
//! 2. The `.part` file is opened; chunks already in it that verify are kept.
//! 3. One task per source keeps a pipeline of chunk requests going
//!    ([`source`]), picking chunks through the shared [`scheduler`].
//! 4. Received chunks go to verifier threads, which hash each one, write it
//!    at its offset only if it matches, and ban a source on its first bad
//!    chunk (the chunk goes back to the pool for the others).
//! 5. When every chunk is verified the file is published under its name
//!    ([`output`]). On failure or interruption the verified part stays for
//!    the next attempt.
//!
//! Content already in the output folder (or the share around it) is not
//! fetched again; a part file belongs to one download at a time (a lock);
//! sources that are busy or leave are tried again with backoff ([`retry`]),
//! and every download takes its sources from one stream that may bring
//! fresh ones while it runs ([`feed`]). [`download`] is the one entry point.

pub mod disk;
pub mod feed;
pub mod output;
pub mod retry;
pub mod scheduler;
pub mod source;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use feed::{FixedSources, SourceLookup, StartOnly};
use feed::{Refresher, SourceFeed};

use common::id::{ContentInfo, FileId};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::library::{Library, PartialEntry};
use crate::rate::RateLimiter;
use scheduler::Scheduler;
use source::{PeerConnection, SourceError};

/// Tuning of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Chunk requests kept in flight per source.
    pub pipeline_depth: usize,
    /// In a swarm (more than one source running), chunk requests kept in
    /// flight per source instead of `pipeline_depth`; `None`: always
    /// `pipeline_depth`. One fast source wants a deep pipeline; many slow
    /// ones serving many downloaders in turns want short ones (a request
    /// queued at a slow uploader is a chunk nobody else may fetch). When
    /// a second source starts, requests beyond this depth are taken back
    /// from sources that allow it (`Cancel`) and go back to the pool.
    pub swarm_pipeline_depth: Option<usize>,
    /// A source that sends nothing for this long is dropped.
    pub stall_timeout: Duration,
    pub connect_timeout: Duration,
    /// Most sources used at once.
    pub max_sources: usize,
    /// How long to wait for every source to connect before starting, so that
    /// the first one to answer does not take every chunk.
    pub start_grace: Duration,
    /// Threads hashing and writing received chunks.
    pub verifier_threads: usize,
    /// Cap on the rate chunk data is read at, shared with whatever else
    /// holds the same limiter (a daemon's downloads share one).
    pub download_limit: Option<Arc<RateLimiter>>,
    /// How often a partial source (one still downloading) is asked again
    /// which chunks it holds; a source that pushes availability
    /// (`Subscribe`) is not asked: it tells.
    pub have_refresh: Duration,
    /// Most chunk requests in flight over all sources at once (none: only
    /// `pipeline_depth` per source). In a swarm with many slow sources,
    /// pipelines everywhere would request the whole file at once, chunks
    /// chosen from stale availability and queued behind everybody else's at
    /// slow uploaders; a small budget makes each request late and sends it
    /// to whichever source answers first, so fast sources get more.
    pub max_in_flight: Option<usize>,
    /// Files at least this large are written past the page cache
    /// (`O_DIRECT`) where the file system allows it ([`disk`]); `None`:
    /// never.
    pub direct_writes_from: Option<u64>,
    /// How long a download goes on without progress (no chunk verified)
    /// while its sources are busy or gone: a source that answers `Busy` is
    /// asked again with backoff, one that left is tried again when the feed
    /// offers it again. Past this, the download fails (keeping the
    /// verified part). While nothing was verified in this run and every
    /// source only refused (the connection, or the file), `stall_timeout`
    /// applies instead.
    pub retry_timeout: Duration,
    /// Who this download says it is to sources with an upload queue (its
    /// place there); `None`: the process's token
    /// ([`source::requester_token`]), shared by all its downloads.
    pub requester_token: Option<u64>,
    /// Counters of the node's downloads to add to (bytes, chunks verified
    /// and rejected), if it exports metrics.
    pub metrics: Option<crate::metrics::EngineMetrics>,
    /// Reaches the sources that cannot be dialed (callback, relay); `None`:
    /// every source is dialed at its address.
    pub connector: Option<Arc<dyn source::Connector>>,
}

impl EngineConfig {
    /// The requester token in force.
    pub fn requester(&self) -> u64 {
        self.requester_token.unwrap_or_else(source::requester_token)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pipeline_depth: DEFAULT_PIPELINE_DEPTH,
            swarm_pipeline_depth: None,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            connect_timeout: common::limits::CONNECT_TIMEOUT,
            max_sources: DEFAULT_MAX_SOURCES,
            start_grace: Duration::from_millis(300),
            // Twice the cores of the machines measured: a thread waiting on a
            // direct write leaves its core to one that hashes.
            verifier_threads: 4,
            download_limit: None,
            have_refresh: Duration::from_millis(250),
            max_in_flight: None,
            direct_writes_from: Some(16 << 20),
            retry_timeout: DEFAULT_RETRY_TIMEOUT,
            requester_token: None,
            metrics: None,
            connector: None,
        }
    }
}

/// Default of [`EngineConfig::stall_timeout`] (and of `peer get --stall-timeout`).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`EngineConfig::pipeline_depth`] (and of `peer get --pipeline`).
pub const DEFAULT_PIPELINE_DEPTH: usize = 16;
/// Default of [`EngineConfig::max_sources`] (and of `peer get --max-sources`).
pub const DEFAULT_MAX_SOURCES: usize = 16;

/// Default of [`EngineConfig::retry_timeout`].
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(300);

/// What to fetch and where to put it.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    pub id: FileId,
    /// Name for the finished file (only its last component is used).
    pub name: String,
    /// `HOST:PORT` of each candidate source.
    pub sources: Vec<String>,
    pub out_dir: PathBuf,
}

/// Live counters, for progress bars.
#[derive(Debug, Default)]
pub struct Progress {
    /// File size, known once the hash list arrived.
    pub total_bytes: AtomicU64,
    /// Bytes verified and on disk (resumed ones included).
    pub done_bytes: AtomicU64,
    /// Of `done_bytes`, those found in the part file at the start (not
    /// received in this run).
    pub resumed_bytes: AtomicU64,
    /// Sources currently connected.
    pub active_sources: AtomicUsize,
    /// What each source is doing (connecting, sending, queued at position
    /// N, waiting to be tried again, ...).
    pub sources: SourceStates,
}

/// What one source of a download is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    Connecting,
    /// Connected; sending chunks (or ready to).
    Active,
    /// Every upload slot there is taken: waiting in its upload queue.
    Queued,
    /// Busy or gone for now: tried again later.
    Retrying,
    /// Given up on (it lied, broke the protocol, or is gone for good).
    Failed,
    /// Its part is over (the download is complete).
    Done,
}

/// One source as the user sees it (`sources[]` of a daemon's download).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SourceView {
    /// `HOST:PORT`.
    pub addr: String,
    pub state: SourceState,
    /// Place in that source's upload queue (1 = next), while `Queued`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    /// Chunk bytes received from it in this run.
    pub bytes: u64,
    /// Bytes per second received from it over the last second or so.
    pub rate_bps: u64,
}

/// The per-source view of one download, kept by the engine.
#[derive(Debug, Default)]
pub struct SourceStates {
    inner: Mutex<Vec<(SourceView, crate::upload_queue::RateMeter)>>,
}

impl SourceStates {
    fn with(
        &self,
        i: usize,
        addr: &str,
        f: impl FnOnce(&mut SourceView, &mut crate::upload_queue::RateMeter),
    ) {
        let mut v = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while v.len() <= i {
            v.push((
                SourceView {
                    addr: String::new(),
                    state: SourceState::Connecting,
                    queue_position: None,
                    bytes: 0,
                    rate_bps: 0,
                },
                crate::upload_queue::RateMeter::new(tokio::time::Instant::now()),
            ));
        }
        let (view, meter) = &mut v[i];
        if view.addr != addr {
            view.addr = addr.to_string();
        }
        f(view, meter);
    }

    /// Source `i` (at `addr`) is now in `state` (`position` when queued).
    pub(crate) fn set(&self, i: usize, addr: &str, state: SourceState, position: Option<u32>) {
        self.with(i, addr, |v, _| {
            v.state = state;
            v.queue_position = position;
        });
    }

    /// `bytes` of chunk data came from source `i`.
    pub(crate) fn received(&self, i: usize, addr: &str, bytes: u64) {
        self.with(i, addr, |v, m| {
            v.bytes += bytes;
            m.add(bytes, tokio::time::Instant::now());
        });
    }

    /// Every source, in the order they were added.
    pub fn snapshot(&self) -> Vec<SourceView> {
        let now = tokio::time::Instant::now();
        let v = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        v.iter()
            .map(|(view, meter)| SourceView {
                rate_bps: meter.rate(now).round() as u64,
                ..view.clone()
            })
            .collect()
    }

    /// The download is complete: every source still in play is done.
    pub(crate) fn finish(&self) {
        let mut v = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (view, _) in v.iter_mut() {
            if view.state != SourceState::Failed {
                view.state = SourceState::Done;
                view.queue_position = None;
            }
        }
    }

    /// "queued at HOST, position N" for each source where this download
    /// waits in the upload queue, joined with "; " (empty when none).
    pub fn queued_summary(&self) -> String {
        self.snapshot()
            .iter()
            .filter_map(|s| {
                s.queue_position
                    .filter(|_| s.state == SourceState::Queued)
                    .map(|p| format!("queued at {}, position {p}", s.addr))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Progress {
    /// Speed (bytes per second) and time left of this run, `elapsed` after
    /// it started: only bytes received in this run count, so that chunks
    /// resumed from disk do not look like an instant burst (issue 12.13).
    /// No time left is given before anything arrived.
    pub fn rate(&self, elapsed: Duration) -> (f64, Option<Duration>) {
        let total = self.total_bytes.load(Ordering::Relaxed);
        let done = self.done_bytes.load(Ordering::Relaxed);
        let this_run = done.saturating_sub(self.resumed_bytes.load(Ordering::Relaxed));
        let secs = elapsed.as_secs_f64();
        if this_run == 0 || secs <= 0.0 {
            return (0.0, None);
        }
        let speed = this_run as f64 / secs;
        let left = total.saturating_sub(done) as f64 / speed;
        (speed, Some(Duration::from_secs_f64(left.min(1e9))))
    }
}

/// How one source did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceReport {
    pub addr: String,
    /// Chunks it delivered that verified.
    pub chunks: u64,
    /// Why it was dropped, if it was.
    pub error: Option<String>,
    /// How it was reached: `direct`, `lan` (its inside address, behind
    /// our own NAT), `callback` (it connected out to us at the index's
    /// request), `punched` or `relayed`.
    pub path: &'static str,
    /// For a `relayed` source, the relay: a public peer's `IP:PORT`, or
    /// `index` for the index's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// A finished download.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DownloadOutcome {
    pub path: PathBuf,
    pub id: String,
    pub size: u64,
    /// Sources that delivered at least one verified chunk.
    pub sources_used: usize,
    /// Chunks found already verified in a `.part` file from an earlier attempt.
    pub chunks_resumed: u32,
    pub chunks_total: u32,
    pub per_source: Vec<SourceReport>,
    /// The content was already in the output folder (or the share around
    /// it) under `path`: nothing was fetched.
    pub already_present: bool,
    /// Chunk bytes received in this run, duplicates included.
    pub bytes_received: u64,
    /// The published file's stamp and the hashes every chunk was verified
    /// against (a download that fetched): a shared folder takes them
    /// instead of hashing the file again ([`Library::downloaded`]). `None`
    /// when nothing was fetched or the file could not be read back.
    #[serde(skip)]
    pub verified: Option<(crate::library::FileStamp, Arc<ContentInfo>)>,
}

impl DownloadOutcome {
    /// How the source at `addr` did, if it was one.
    pub fn source(&self, addr: &str) -> Option<&SourceReport> {
        self.per_source.iter().find(|s| s.addr == addr)
    }
}

/// Why a download did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("no source offers this file")]
    NoSources,
    #[error("no source could supply a valid hash list: {}", describe(.0))]
    NoHashList(Vec<(String, String)>),
    #[error("every source failed with {missing} of {total} chunks still missing ({}); the verified part is kept, run the same command again to resume", describe(.reasons))]
    SourcesExhausted {
        missing: u32,
        total: u32,
        reasons: Vec<(String, String)>,
    },
    #[error("cannot write {path} (the verified part is kept: fix this and run the same command again to resume)")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The output folder or part file could not be made: nothing was
    /// written, so there is no part to keep.
    #[error("cannot write into {path}: {reason} (nothing was written; give a folder you can write to with -o)")]
    OutputDir {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error(
        "interrupted with {done} of {total} chunks verified; run the same command again to resume"
    )]
    Interrupted { done: u32, total: u32 },
}

fn describe(reasons: &[(String, String)]) -> String {
    reasons
        .iter()
        .map(|(a, r)| format!("{a}: {r}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A chunk received from a source, waiting to be verified.
pub(crate) struct VerifyJob {
    source: usize,
    index: u32,
    data: disk::ChunkBuf,
}

/// What the source tasks share.
pub(crate) struct Shared {
    info: Arc<ContentInfo>,
    scheduler: Arc<Scheduler>,
    config: EngineConfig,
    /// The verifier threads' queue: any idle thread takes the next chunk,
    /// and handing one over wakes exactly one thread.
    verify: async_channel::Sender<VerifyJob>,
    /// Buffers for received chunks, given back by the verifiers.
    buffers: Arc<disk::BufferPool>,
    /// Sources that have connected or failed to.
    ready: AtomicUsize,
    ready_changed: Notify,
    /// Cancelled when chunk requests may start.
    started: CancellationToken,
    bytes_received: AtomicU64,
    /// Chunk requests in flight over all sources, counted only when
    /// `max_in_flight` sets a budget.
    pub(crate) in_flight: AtomicUsize,
    /// Woken when a unit of the budget is given back.
    in_flight_freed: Notify,
    /// Where the per-source states are shown.
    progress: Arc<Progress>,
    /// The hash list's connection, its source and when it came
    /// ([`Shared::take_spare`]).
    spare: std::sync::Mutex<Option<(Spare, tokio::time::Instant)>>,
}

impl Shared {
    /// The hash list's connection to `addr`, if it is still fresh (at most
    /// [`SPARE_MAX_AGE`] old): the first worker for that source goes on
    /// over it instead of connecting again, one connection set-up less
    /// before the first chunk (a callback, punch or relay less for a
    /// firewalled source).
    pub(crate) fn take_spare(&self, addr: &str) -> Option<source::PeerConnection> {
        let mut spare = match self.spare.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if spare.as_ref().is_some_and(|((a, _), _)| a != addr) {
            return None;
        }
        spare
            .take()
            .filter(|(_, at)| at.elapsed() < SPARE_MAX_AGE)
            .map(|((_, conn), _)| conn)
    }

    /// Chunk requests each source keeps in flight now (see
    /// [`EngineConfig::swarm_pipeline_depth`]).
    pub(crate) fn depth(&self) -> usize {
        match self.config.swarm_pipeline_depth {
            Some(d) if self.progress.active_sources.load(Ordering::Relaxed) > 1 => d.max(1),
            _ => self.config.pipeline_depth.max(1),
        }
    }

    /// Takes one unit of the in-flight budget; false when it is spent.
    /// Without a budget, always true (and nothing is counted).
    pub(crate) fn take_request(&self) -> bool {
        let Some(cap) = self.config.max_in_flight else {
            return true;
        };
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap.max(1)).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a unit taken for a request that was not made (no wake-up:
    /// nothing new became possible).
    pub(crate) fn untake_request(&self) {
        if self.config.max_in_flight.is_some() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Gives back `n` units of the in-flight budget, waking sources that
    /// wait for one.
    pub(crate) fn give_back(&self, n: usize) {
        if n > 0 && self.config.max_in_flight.is_some() {
            self.in_flight.fetch_sub(n, Ordering::AcqRel);
            self.in_flight_freed.notify_waiters();
        }
    }
}

/// Most received chunks one verifier thread takes at once.
const WRITE_BATCH: usize = 4;

/// What the verifier threads share.
struct Verifier {
    info: Arc<ContentInfo>,
    scheduler: Arc<Scheduler>,
    writer: disk::ChunkWriter,
    buffers: Arc<disk::BufferPool>,
    partial: Arc<PartialEntry>,
    progress: Arc<Progress>,
    /// Verified chunks per source number (grows as sources are added).
    delivered: Mutex<Vec<u64>>,
    write_error: Mutex<Option<std::io::Error>>,
    abort: CancellationToken,
    metrics: Option<crate::metrics::EngineMetrics>,
}

impl Verifier {
    /// Verifies a batch of received chunks and writes the good ones, each
    /// run of consecutive chunks with one write (fewer, larger direct
    /// writes when the queue is long).
    fn handle(&self, mut batch: Vec<VerifyJob>) {
        batch.sort_by_key(|j| j.index);
        let mut good: Vec<VerifyJob> = Vec::with_capacity(batch.len());
        for job in batch {
            let duplicate = good.last().is_some_and(|g| g.index == job.index);
            if duplicate || self.scheduler.is_done(job.index) {
                self.buffers.give(job.data); // an endgame duplicate
                continue;
            }
            if !self.info.verify_chunk(job.index, job.data.data()) {
                warn!(
                    source = job.source,
                    chunk = job.index,
                    "chunk failed verification; dropping that source"
                );
                self.scheduler.ban_for_chunk(job.source, job.index);
                self.scheduler.reject(job.index);
                if let Some(m) = &self.metrics {
                    m.chunks_rejected.inc();
                }
                self.buffers.give(job.data);
                continue;
            }
            good.push(job);
        }
        let mut rest = good.as_slice();
        while let Some(first) = rest.first() {
            let run = rest
                .iter()
                .enumerate()
                .take_while(|(k, j)| j.index == first.index + *k as u32)
                .count();
            self.write_run(&rest[..run]);
            rest = &rest[run..];
        }
        for job in good {
            self.buffers.give(job.data);
        }
    }

    /// Writes verified consecutive chunks, then marks them done.
    fn write_run(&self, run: &[VerifyJob]) {
        let offset = run[0].index as u64 * common::CHUNK_SIZE as u64;
        let slices: Vec<&[u8]> = run.iter().map(|j| j.data.data()).collect();
        if let Err(e) = self.writer.write_run_at(&slices, offset) {
            self.write_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(e);
            self.scheduler.release(run.iter().map(|j| j.index));
            self.abort.cancel();
            return;
        }
        for job in run {
            if self.scheduler.complete(job.index) {
                self.partial.set(job.index);
                self.progress
                    .done_bytes
                    .fetch_add(job.data.data().len() as u64, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.chunks_verified.inc();
                    m.downloaded_bytes.inc_by(job.data.data().len() as u64);
                }
                let mut delivered = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(c) = delivered.get_mut(job.source) {
                    *c += 1;
                }
            }
        }
    }
}

/// The next batch from the source stream; pends forever once it ended.
async fn recv_feed(feed: &mut Option<SourceFeed>) -> Option<Vec<String>> {
    match feed {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Adds the addresses in `found` not yet in `known`.
fn merge(known: &mut Vec<String>, found: Vec<String>) {
    for a in found {
        if !known.contains(&a) {
            known.push(a);
        }
    }
}

/// Whether a source that failed this way may be asked again: always when
/// it was busy; never when it lied or broke the protocol; otherwise (it
/// left, could not be reached, stalled, or did not hold the file for a
/// moment, like a peer between finishing a download and sharing the
/// result) while the source stream, which says who offers the file now,
/// is open: when it offers the address again.
fn worth_retrying(e: &SourceError, stream_open: bool) -> bool {
    match e {
        SourceError::Busy => true,
        SourceError::BadData | SourceError::Protocol(_) => false,
        SourceError::Connect(_)
        | SourceError::Wire(_)
        | SourceError::Stalled(_)
        | SourceError::NotFound
        | SourceError::FileChanged => stream_open,
    }
}

/// Why no hash list came.
enum HashListFailure {
    Interrupted,
    Failed(Vec<(String, String)>),
}

/// The connection the hash list came over, and from which source: the
/// first worker for that source goes on over it ([`Shared::take_spare`]).
type Spare = (String, source::PeerConnection);

/// How long the hash list's connection may wait for its worker: a source
/// closes idle connections, and a fresh one is then the surer start.
const SPARE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(2);

/// Fetches the hash list from the first source that has a valid one. When
/// every source failed and some may yet answer (busy, or gone while a feed
/// may bring them or others back), tries again with backoff until
/// `retry_timeout`; addresses from the feed join `sources`. Returns the
/// connection it came over too.
async fn fetch_hash_list(
    id: FileId,
    sources: &mut Vec<String>,
    feed: &mut Option<SourceFeed>,
    config: &EngineConfig,
    shutdown: &CancellationToken,
) -> Result<(ContentInfo, Spare), HashListFailure> {
    let start = tokio::time::Instant::now();
    let give_up = start + config.retry_timeout;
    // Sources that only refused get the stall timeout (see `refused_only`);
    // once one has answered anything else (even Busy), the retry timeout.
    let unreachable_give_up = start + config.stall_timeout.min(config.retry_timeout);
    let mut reached = false;
    let mut round = 0u32;
    loop {
        let mut failures = Vec::new();
        let mut hope = false;
        for addr in sources.iter() {
            let attempt = async {
                let mut conn = PeerConnection::connect_via(
                    addr,
                    config.connector.as_deref(),
                    config.connect_timeout,
                    config.stall_timeout,
                    config.requester(),
                )
                .await?;
                let info = conn.hash_list(id).await?;
                Ok::<_, SourceError>((info, conn))
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => return Err(HashListFailure::Interrupted),
                r = attempt => r,
            };
            match result {
                Ok((info, conn)) => return Ok((info, (addr.clone(), conn))),
                Err(e) => {
                    debug!(%addr, error = %e, "no hash list from this source");
                    hope |= worth_retrying(&e, feed.is_some());
                    reached |= !refused_only(&e);
                    failures.push((addr.clone(), e.to_string()));
                }
            }
        }
        round += 1;
        let wait = retry::backoff(round, retry::RETRY_MIN, retry::RETRY_MAX);
        let deadline = if reached {
            give_up
        } else {
            unreachable_give_up
        };
        if !hope || tokio::time::Instant::now() + wait > deadline {
            return Err(HashListFailure::Failed(failures));
        }
        if round == 1 {
            info!(
                sources = sources.len(),
                "no source could send the hash list yet (busy or gone); trying again"
            );
        }
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Err(HashListFailure::Interrupted),
                _ = &mut sleep => break,
                found = recv_feed(feed) => match found {
                    Some(addrs) => merge(sources, addrs),
                    None => *feed = None,
                },
            }
        }
    }
}

/// The outcome of a download whose content is already at `path`.
fn present(id: FileId, path: PathBuf, size: u64, progress: &Progress) -> DownloadOutcome {
    info!(path = %path.display(), "already here: nothing to fetch");
    progress.total_bytes.store(size, Ordering::Relaxed);
    progress.done_bytes.store(size, Ordering::Relaxed);
    progress.resumed_bytes.store(size, Ordering::Relaxed);
    let chunks = common::id::chunk_count(size) as u32;
    DownloadOutcome {
        path,
        id: id.to_hex(),
        size,
        sources_used: 0,
        chunks_resumed: chunks,
        chunks_total: chunks,
        per_source: Vec::new(),
        already_present: true,
        bytes_received: 0,
        verified: None,
    }
}

/// The download's outcome if content `id` is already in `out_dir` or the
/// share around it, or is a complete file of `library`, found without the
/// network ([`output::find_known`]). Callers that look sources up first
/// (a daemon's `--fetch`) ask this before they do.
pub async fn already_present(
    id: FileId,
    out_dir: &std::path::Path,
    library: Option<&Library>,
    progress: &Progress,
) -> Option<DownloadOutcome> {
    let (dir, lib) = (out_dir.to_path_buf(), library.cloned());
    let found = tokio::task::spawn_blocking(move || {
        // A library whose share does not hold `out_dir`: its copy is not
        // where the file was asked for, so it is copied there (verified).
        let outside = lib.as_ref().filter(|l| {
            !std::fs::canonicalize(&dir).is_ok_and(|d| d.starts_with(l.root()))
        });
        let Some(lib) = outside else {
            return output::find_known(&id, &dir, lib.as_ref());
        };
        if let Some(found) = output::find_known(&id, &dir, None) {
            return Some(found);
        }
        let (from, size) = output::find_in_library(&id, lib)?;
        let name = from.file_name()?.to_str()?.to_string();
        match output::copy_in(&from, &dir, &id, &name) {
            Ok(path) => {
                info!(from = %from.display(), to = %path.display(), "copied from the share");
                Some((path, size))
            }
            Err(e) => {
                warn!(from = %from.display(), error = %e, "cannot copy from the share; fetching instead");
                None
            }
        }
    })
    .await
    .ok()
    .flatten()?;
    Some(present(id, found.0, found.1, progress))
}

/// Waits until this download owns the part file at `part` ([`output::lock_part`]).
/// While another download holds it, says so once and waits for it; when
/// that one has published the content meanwhile, returns `Err(path)`.
async fn own_part(
    part: &std::path::Path,
    out_dir: &std::path::Path,
    name: &str,
    info: &Arc<ContentInfo>,
    shutdown: &CancellationToken,
) -> Result<Result<std::fs::File, PathBuf>, DownloadError> {
    let mut said = false;
    loop {
        let (p, d, n, i) = (
            part.to_path_buf(),
            out_dir.to_path_buf(),
            name.to_string(),
            info.clone(),
        );
        let attempt = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            // Published by whoever held the lock? Then that is our file.
            if let Some(path) = output::find_same_named(&d, &n, &i) {
                return Ok(Err(path));
            }
            match output::lock_part(&p)? {
                output::PartLock::Owned(file) => Ok(Ok(Some(file))),
                output::PartLock::Held => Ok(Ok(None)),
            }
        })
        .await
        .map_err(|e| DownloadError::Output {
            path: part.to_path_buf(),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| DownloadError::Output {
            path: part.to_path_buf(),
            source,
        })?;
        match attempt {
            Err(path) => return Ok(Err(path)),
            Ok(Some(file)) => return Ok(Ok(file)),
            Ok(None) => {}
        }
        if !said {
            said = true;
            warn!(part = %part.display(), "another download of this file into the same folder is running (it holds the part file); waiting for it to finish");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(DownloadError::Interrupted { done: 0, total: info.chunk_count() }),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// The source tasks of one download and what the coordinator knows of
/// each: source number `i` is `addrs[i]`, the scheduler's and the
/// verifier's source `i` too. An address keeps its number when it is
/// tried again.
struct Sources {
    shared: Arc<Shared>,
    verifier: Arc<Verifier>,
    progress: Arc<Progress>,
    workers: JoinSet<(usize, Result<(), SourceError>)>,
    max: usize,
    stream_open: bool,
    addrs: Vec<String>,
    alive: Vec<bool>,
    reasons: Vec<Option<String>>,
    /// Failed runs in a row (reset by a run that delivered a chunk).
    failures: Vec<u32>,
    /// Chunks delivered when the current run started.
    delivered_at_start: Vec<u64>,
    /// Not to be started again before this.
    retry_at: Vec<Option<tokio::time::Instant>>,
    /// Busy: started again when due, whether offered again or not.
    auto_retry: Vec<bool>,
    /// Offered while every slot was taken: started when one frees up.
    waiting: Vec<String>,
    /// Some source ended with more than a refusal (of the connection or
    /// the file): see [`refused_only`].
    answered: bool,
}

/// Whether a source that failed this way only refused: the connection, or
/// the file. Sources that only ever refused may be gone for good (a crashed
/// peer the index still lists, a file deleted from the only share), so
/// while nothing else was heard a download gives up after the stall
/// timeout rather than the whole retry timeout.
fn refused_only(e: &SourceError) -> bool {
    matches!(e, SourceError::Connect(_) | SourceError::NotFound)
}

impl Sources {
    fn delivered(&self, i: usize) -> u64 {
        self.verifier
            .delivered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(i)
            .copied()
            .unwrap_or(0)
    }

    /// Starts (or starts again) the task of source `i`.
    fn start(&mut self, i: usize) {
        let (shared, addr) = (self.shared.clone(), self.addrs[i].clone());
        self.alive[i] = true;
        self.retry_at[i] = None;
        self.auto_retry[i] = false;
        self.delivered_at_start[i] = self.delivered(i);
        self.progress
            .sources
            .set(i, &addr, SourceState::Connecting, None);
        self.workers
            .spawn(async move { (i, source::run(shared, i, addr).await) });
        self.progress.active_sources.fetch_add(1, Ordering::Relaxed);
    }

    /// A new address: a new source number, started now.
    fn add(&mut self, addr: String) {
        let i = self.shared.scheduler.add_source();
        debug_assert_eq!(i, self.addrs.len());
        self.addrs.push(addr);
        self.alive.push(false);
        self.reasons.push(None);
        self.failures.push(0);
        self.delivered_at_start.push(0);
        self.retry_at.push(None);
        self.auto_retry.push(false);
        self.verifier
            .delivered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(0);
        self.start(i);
        debug!(source = %self.addrs[i], "source added during the download");
    }

    /// Addresses that offer the file now: new ones are started, known ones
    /// whose task ended without a ban are started again once their backoff
    /// is over (they may have come back), up to `max` at once.
    fn offer(&mut self, mut addrs: Vec<String>) {
        let now = tokio::time::Instant::now();
        // More on offer than free slots: which ones get them is chosen at
        // random, not by the list's (address) order (see [`download`]).
        if addrs.len() > self.max.saturating_sub(self.workers.len()) {
            use rand::seq::SliceRandom;
            addrs.shuffle(&mut rand::rng());
        }
        for addr in addrs {
            match self.addrs.iter().position(|a| *a == addr) {
                Some(i) => {
                    let due = self.retry_at[i].is_none_or(|t| t <= now);
                    if self.alive[i] || self.shared.scheduler.is_banned(i) || !due {
                        continue;
                    }
                    if self.workers.len() >= self.max {
                        break;
                    }
                    self.start(i);
                }
                None => {
                    if self.workers.len() >= self.max {
                        if !self.waiting.contains(&addr) {
                            self.waiting.push(addr);
                        }
                        continue;
                    }
                    self.add(addr);
                }
            }
        }
    }

    /// Starts busy sources whose backoff is over, and waiting ones while
    /// slots are free.
    fn start_due(&mut self) {
        let now = tokio::time::Instant::now();
        for i in 0..self.addrs.len() {
            if self.workers.len() >= self.max {
                return;
            }
            if self.auto_retry[i] && !self.alive[i] && self.retry_at[i].is_some_and(|t| t <= now) {
                debug!(source = %self.addrs[i], "asking a busy source again");
                self.start(i);
            }
        }
        while self.workers.len() < self.max && !self.waiting.is_empty() {
            let addr = self.waiting.remove(0);
            self.offer(vec![addr]);
        }
    }

    /// Whether a busy source is waiting for its next try.
    fn retry_pending(&self) -> bool {
        (0..self.addrs.len()).any(|i| self.auto_retry[i] && !self.alive[i])
    }

    /// Records how a source task ended and when it may be tried again.
    fn ended(&mut self, i: usize, result: Result<(), SourceError>) {
        self.alive[i] = false;
        self.progress.active_sources.fetch_sub(1, Ordering::Relaxed);
        let Err(e) = result else {
            self.progress
                .sources
                .set(i, &self.addrs[i], SourceState::Done, None);
            return;
        };
        self.answered |= !refused_only(&e);
        if self.delivered(i) > self.delivered_at_start[i] {
            self.failures[i] = 0;
        }
        self.failures[i] += 1;
        if worth_retrying(&e, self.stream_open) && !self.shared.scheduler.is_banned(i) {
            let wait = retry::backoff(self.failures[i], retry::RETRY_MIN, retry::RETRY_MAX);
            self.retry_at[i] = Some(tokio::time::Instant::now() + wait);
            self.auto_retry[i] = matches!(e, SourceError::Busy);
            debug!(source = %self.addrs[i], error = %e, ?wait, "source dropped; may try it again");
            self.progress
                .sources
                .set(i, &self.addrs[i], SourceState::Retrying, None);
        } else {
            info!(source = %self.addrs[i], error = %e, "source dropped");
            self.progress
                .sources
                .set(i, &self.addrs[i], SourceState::Failed, None);
        }
        // A busy answer after a good run says less than why the run ended.
        if !matches!(e, SourceError::Wire(_)) || self.reasons[i].is_none() {
            self.reasons[i] = Some(e.to_string());
        }
    }
}

/// Runs one download to completion, failure or interruption (`shutdown`):
/// the one entry point of the engine, for every mode and caller.
///
/// It starts from `request.sources` and takes more from `sources` while it
/// runs (see [`feed`]): each new address gets a source task, up to
/// `max_sources` at once, and one whose task ended without a ban is tried
/// again (after a backoff) when the stream offers it again. Busy sources
/// are asked again with backoff whether offered again or not. The download
/// fails once it has made no progress for `retry_timeout` with nothing
/// left to try (once the stream has ended, a source that left or could
/// not be reached is not waited for).
///
/// With a `library`, the partial file is published there while it grows, so
/// that a serving peer passes on the chunks it already has.
pub async fn download<L: SourceLookup>(
    request: DownloadRequest,
    config: EngineConfig,
    progress: Arc<Progress>,
    library: Option<Library>,
    sources: L,
    shutdown: CancellationToken,
) -> Result<DownloadOutcome, DownloadError> {
    let (refresher, feed) = Refresher::start(sources, &shutdown);
    let result = run(request, config, progress, library, feed, shutdown).await;
    refresher.stop().await;
    result
}

/// [`download`] with its source stream started: `feed` is `None` once the
/// stream has ended.
async fn run(
    request: DownloadRequest,
    config: EngineConfig,
    progress: Arc<Progress>,
    library: Option<Library>,
    mut feed: Option<SourceFeed>,
    shutdown: CancellationToken,
) -> Result<DownloadOutcome, DownloadError> {
    let out_dir = request.out_dir.clone();
    let output_error = |reason: std::io::Error| DownloadError::OutputDir {
        path: out_dir.clone(),
        reason,
    };
    std::fs::create_dir_all(&request.out_dir).map_err(output_error)?;
    // Content already here needs no source at all.
    if let Some(outcome) =
        already_present(request.id, &request.out_dir, library.as_ref(), &progress).await
    {
        return Ok(outcome);
    }
    let mut known = Vec::new();
    merge(&mut known, request.sources.clone());
    if known.is_empty() {
        return Err(DownloadError::NoSources);
    }

    let (info, spare) = match fetch_hash_list(request.id, &mut known, &mut feed, &config, &shutdown)
        .await
    {
        Ok(found) => found,
        Err(HashListFailure::Interrupted) => {
            return Err(DownloadError::Interrupted { done: 0, total: 0 })
        }
        Err(HashListFailure::Failed(failures)) => return Err(DownloadError::NoHashList(failures)),
    };
    let fetched_at = tokio::time::Instant::now();
    let info = Arc::new(info);
    debug!(size = info.size, "hash list fetched");
    progress.total_bytes.store(info.size, Ordering::Relaxed);

    let name = output::sanitize_name(&request.name, &request.id);
    let part = output::part_path(&request.out_dir, &request.id);
    let file = match own_part(&part, &request.out_dir, &name, &info, &shutdown).await? {
        Ok(file) => file,
        Err(path) => return Ok(present(request.id, path, info.size, &progress)),
    };
    let (file, have) = {
        let info = info.clone();
        tokio::task::spawn_blocking(move || output::prepare_part(&file, &info).map(|h| (file, h)))
            .await
            .map_err(|e| DownloadError::Output {
                path: request.out_dir.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| {
                // Only a part file that exists holds anything to resume from.
                if part.exists() {
                    DownloadError::Output {
                        path: part.clone(),
                        source,
                    }
                } else {
                    DownloadError::OutputDir {
                        path: part.clone(),
                        reason: source,
                    }
                }
            })?
    };
    let chunks_resumed = have.iter().filter(|h| **h).count() as u32;
    let total = info.chunk_count();
    if chunks_resumed > 0 {
        info!(
            resumed = chunks_resumed,
            total, "resuming: verified chunks found on disk"
        );
    }
    let partial = Arc::new(PartialEntry::named(
        part.clone(),
        info.clone(),
        name.clone(),
    ));
    let resumed_bytes: u64 = (0..total)
        .filter(|i| have[*i as usize])
        .map(|i| info.chunk_len(i) as u64)
        .sum();
    progress
        .resumed_bytes
        .store(resumed_bytes, Ordering::Relaxed);
    progress.done_bytes.store(resumed_bytes, Ordering::Relaxed);
    for (i, h) in have.iter().enumerate() {
        if *h {
            partial.set(i as u32);
        }
    }
    if let Some(lib) = &library {
        lib.add_partial(partial.clone());
    }

    // In a swarm, downloaders pick at random among the rarest chunks so
    // that they do not ask the seed for the same ones at once
    // ([`Scheduler::shuffled`]); a plain download walks from the start
    // (sources in their regions, chunks in order on disk), as it always did.
    let max = config.max_sources.max(1);
    // More sources than slots: a random choice (past the hash list's
    // source), as a BitTorrent tracker answers with a random subset. The
    // index lists sources in address order, so taking the first ones left
    // every downloader of a large swarm on the same `max` uploaders and
    // the others idle (issue 17: at N = 128, 64 of 128 peers uploaded
    // nothing).
    if known.len() > max {
        use rand::seq::SliceRandom;
        known[1..].shuffle(&mut rand::rng());
    }
    let first: Vec<String> = known.iter().take(max).cloned().collect();
    let scheduler = Arc::new(match library {
        Some(_) => {
            use std::hash::{BuildHasher, Hasher};
            let seed = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            Scheduler::shuffled(&have, first.len(), seed)
        }
        None => Scheduler::new(&have, first.len()),
    });
    let threads = config.verifier_threads.max(1);
    let verify_queue = config.pipeline_depth.max(2) * 2;
    // Enough buffers for every source filling one, a full queue and every
    // verifier holding one: past the start, a download allocates nothing.
    let buffers = Arc::new(disk::BufferPool::new(first.len() + verify_queue + threads));
    let direct = config
        .direct_writes_from
        .is_some_and(|min| info.size >= min);
    let writer = disk::ChunkWriter::new(file, &part, direct);
    debug!(direct = writer.is_direct(), "part file opened");
    let abort = CancellationToken::new();
    let verifier = Arc::new(Verifier {
        info: info.clone(),
        scheduler: scheduler.clone(),
        writer,
        buffers: buffers.clone(),
        partial,
        progress: progress.clone(),
        delivered: Mutex::new(vec![0; first.len()]),
        write_error: Mutex::new(None),
        abort: abort.clone(),
        metrics: config.metrics.clone(),
    });
    let (verify_tx, verify_rx) = async_channel::bounded::<VerifyJob>(verify_queue);
    let mut verifiers = Vec::new();
    for _ in 0..threads {
        let (v, rx) = (verifier.clone(), verify_rx.clone());
        verifiers.push(tokio::task::spawn_blocking(move || {
            // Ends once every sender is gone and the queue is drained.
            while let Ok(job) = rx.recv_blocking() {
                // Chunks already waiting join this one (never waited for):
                // a long queue turns into fewer, larger writes.
                let mut batch = vec![job];
                while batch.len() < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                v.handle(batch);
            }
        }));
    }
    drop(verify_rx);

    let shared = Arc::new(Shared {
        info: info.clone(),
        scheduler: scheduler.clone(),
        config: config.clone(),
        verify: verify_tx,
        buffers,
        ready: AtomicUsize::new(0),
        ready_changed: Notify::new(),
        started: CancellationToken::new(),
        bytes_received: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        in_flight_freed: Notify::new(),
        progress: progress.clone(),
        spare: std::sync::Mutex::new(Some((spare, fetched_at))),
    });
    let n = first.len();
    let mut sources = Sources {
        shared: shared.clone(),
        verifier: verifier.clone(),
        progress: progress.clone(),
        workers: JoinSet::new(),
        max,
        stream_open: feed.is_some(),
        addrs: first,
        alive: vec![false; n],
        reasons: vec![None; n],
        failures: vec![0; n],
        delivered_at_start: vec![0; n],
        retry_at: vec![None; n],
        auto_retry: vec![false; n],
        waiting: known[n..].to_vec(),
        answered: false,
    };
    for i in 0..n {
        sources.start(i);
    }

    // Start once every source has connected (or failed), or after the grace period.
    let grace = tokio::time::sleep(config.start_grace);
    tokio::pin!(grace);
    while shared.ready.load(Ordering::Acquire) < n {
        tokio::select! {
            _ = &mut grace => break,
            _ = shared.ready_changed.notified() => {}
        }
    }
    shared.started.cancel();
    debug!(sources = n, "requesting chunks");

    let mut interrupted = false;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    let first_done = scheduler.done();
    let mut last_done = first_done;
    let mut last_progress = tokio::time::Instant::now();
    while !scheduler.is_finished() {
        tokio::select! {
            _ = shutdown.cancelled() => { interrupted = true; break; }
            _ = abort.cancelled() => break,
            _ = poll.tick() => {}
            _ = scheduler.changed.notified() => {}
            joined = sources.workers.join_next(), if !sources.workers.is_empty() => {
                if let Some(Ok((i, result))) = joined {
                    sources.ended(i, result);
                }
            }
            found = recv_feed(&mut feed) => match found {
                Some(addrs) => sources.offer(addrs),
                None => {
                    feed = None;
                    sources.stream_open = false;
                }
            },
        }
        let done = scheduler.done();
        if done > last_done {
            last_done = done;
            last_progress = tokio::time::Instant::now();
        }
        sources.start_due();
        let stuck = last_progress.elapsed() >= config.retry_timeout;
        if sources.workers.is_empty() {
            // With nothing running: wait for busy sources' next try or for
            // the feed to bring a source, up to the deadline; else let the
            // verifiers finish the last chunks, then judge.
            let hope = feed.is_some() || sources.retry_pending();
            // Nothing verified in this run and every source only refused:
            // the short deadline (see `refused_only`).
            let refused = !sources.answered
                && last_done == first_done
                && last_progress.elapsed() >= config.stall_timeout;
            if !hope || stuck || refused {
                break;
            }
        } else if stuck {
            break;
        }
    }
    sources.workers.abort_all();
    while let Some(joined) = sources.workers.join_next().await {
        if let Ok((i, Err(e))) = joined {
            if !matches!(e, SourceError::Wire(_)) || sources.reasons[i].is_none() {
                sources.reasons[i].get_or_insert(e.to_string());
            }
        }
    }
    progress.active_sources.store(0, Ordering::Relaxed);
    if scheduler.is_finished() {
        progress.sources.finish();
    }
    let received = shared.bytes_received.load(Ordering::Relaxed);
    let (addrs, reasons) = (
        std::mem::take(&mut sources.addrs),
        std::mem::take(&mut sources.reasons),
    );
    drop(sources);
    drop(shared); // closes the verify channel: the verifiers drain it and stop
    for v in verifiers {
        let _ = v.await;
    }
    if let Some(lib) = &library {
        lib.remove_partial(&request.id);
    }
    let verifier = Arc::into_inner(verifier).expect("verifier threads have stopped");
    if let Some(source) = verifier
        .write_error
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
    {
        return Err(DownloadError::Output { path: part, source });
    }
    let done = scheduler.done();
    if !scheduler.is_finished() {
        if interrupted {
            return Err(DownloadError::Interrupted { done, total });
        }
        let reasons = addrs
            .iter()
            .zip(&reasons)
            .map(|(a, r)| (a.clone(), r.clone().unwrap_or_else(|| "stopped".into())))
            .collect();
        return Err(DownloadError::SourcesExhausted {
            missing: total - done,
            total,
            reasons,
        });
    }

    debug!("every chunk verified and written; publishing");
    let file = verifier.writer.into_file();
    let (part_c, dir_c) = (part.clone(), request.out_dir.clone());
    let published = tokio::task::spawn_blocking(move || {
        let path = output::publish(&part_c, &file, &dir_c, &name)?;
        // Read after the link and unlink above (they change the ctime).
        let stamp = std::fs::metadata(&path)
            .ok()
            .map(|m| crate::library::FileStamp::of(&m));
        Ok::<_, std::io::Error>((path, stamp))
    })
    .await
    .map_err(|e| DownloadError::Output {
        path: part.clone(),
        source: std::io::Error::other(e),
    })?
    .map_err(|source| DownloadError::Output {
        path: part.clone(),
        source,
    })?;
    let (path, stamp) = published;

    let delivered = verifier
        .delivered
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let per_source: Vec<SourceReport> = addrs
        .iter()
        .zip(&delivered)
        .zip(reasons)
        .map(|((addr, n), error)| SourceReport {
            path: config.connector.as_ref().map_or("direct", |c| c.path(addr)),
            via: config.connector.as_ref().and_then(|c| c.via(addr)),
            addr: addr.clone(),
            chunks: *n,
            error,
        })
        .collect();
    let sources_used = per_source.iter().filter(|s| s.chunks > 0).count();
    info!(path = %path.display(), size = info.size, sources_used, received, "download complete and verified");
    Ok(DownloadOutcome {
        path,
        id: request.id.to_hex(),
        size: info.size,
        sources_used,
        chunks_resumed,
        chunks_total: total,
        per_source,
        already_present: false,
        bytes_received: received,
        verified: stamp.map(|s| (s, info.clone())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_and_time_left_count_only_this_runs_bytes() {
        // Issue 12.13: 78 MiB resumed from disk, then 5 MB in one second.
        let p = Progress::default();
        p.total_bytes.store(100 << 20, Ordering::Relaxed);
        p.resumed_bytes.store(78 << 20, Ordering::Relaxed);
        p.done_bytes.store(78 << 20, Ordering::Relaxed);
        assert_eq!(
            p.rate(Duration::from_secs(1)),
            (0.0, None),
            "nothing received yet"
        );
        p.done_bytes
            .store((78 << 20) + 5_000_000, Ordering::Relaxed);
        let (speed, left) = p.rate(Duration::from_secs(1));
        assert!((speed - 5e6).abs() < 1.0, "{speed}");
        let expected = ((100u64 << 20) - (78 << 20) - 5_000_000) as f64 / 5e6;
        let left = left.unwrap().as_secs_f64();
        assert!(
            (left - expected).abs() < 0.01,
            "{left} s left, expected {expected}"
        );
    }
}
