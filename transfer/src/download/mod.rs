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

pub mod disk;
pub mod output;
pub mod scheduler;
pub mod source;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::id::{ContentInfo, FileId};
use tokio::sync::{mpsc, Notify};
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
    /// which chunks it holds.
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pipeline_depth: 16,
            stall_timeout: Duration::from_secs(10),
            connect_timeout: common::limits::CONNECT_TIMEOUT,
            max_sources: 16,
            start_grace: Duration::from_millis(300),
            // Twice the cores of the machines measured: a thread waiting on a
            // direct write leaves its core to one that hashes.
            verifier_threads: 4,
            download_limit: None,
            have_refresh: Duration::from_millis(250),
            max_in_flight: None,
            direct_writes_from: Some(16 << 20),
        }
    }
}

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
    /// Sources currently connected.
    pub active_sources: AtomicUsize,
}

/// How one source did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceReport {
    pub addr: String,
    /// Chunks it delivered that verified.
    pub chunks: u64,
    /// Why it was dropped, if it was.
    pub error: Option<String>,
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
}

impl Shared {
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
                let mut delivered = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(c) = delivered.get_mut(job.source) {
                    *c += 1;
                }
            }
        }
    }
}

/// The next batch from the feed; pends forever without one.
async fn recv_feed(feed: &mut Option<SourceFeed>) -> Option<Vec<String>> {
    match feed {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn dedupe(sources: &[String], max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in sources {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out.truncate(max.max(1));
    out
}

/// Fetches the hash list from the first source that has a valid one.
async fn fetch_hash_list(
    id: FileId,
    sources: &[String],
    config: &EngineConfig,
    failures: &mut Vec<(String, String)>,
) -> Option<ContentInfo> {
    for addr in sources {
        let attempt = async {
            let mut conn =
                PeerConnection::connect(addr, config.connect_timeout, config.stall_timeout).await?;
            conn.hash_list(id).await
        };
        match attempt.await {
            Ok(info) => return Some(info),
            Err(e) => {
                debug!(%addr, error = %e, "no hash list from this source");
                failures.push((addr.clone(), e.to_string()));
            }
        }
    }
    None
}

/// Runs one download to completion, failure or interruption (`shutdown`).
///
/// With a `library`, the partial file is published there while it grows, so
/// that a serving peer passes on the chunks it already has.
pub async fn download(
    request: DownloadRequest,
    config: EngineConfig,
    progress: Arc<Progress>,
    library: Option<Library>,
    shutdown: CancellationToken,
) -> Result<DownloadOutcome, DownloadError> {
    download_swarm(request, config, progress, library, None, shutdown).await
}

/// Addresses of sources found while a download runs (for example partial
/// sources the index learned of since the download started).
pub type SourceFeed = mpsc::Receiver<Vec<String>>;

/// [`download`] that also takes sources from `feed` while it runs: each new
/// address (or one whose connection ended without it being banned) gets a
/// source task, up to `max_sources` at once. Without any source left it
/// waits up to `stall_timeout` for the feed to bring one.
pub async fn download_swarm(
    request: DownloadRequest,
    config: EngineConfig,
    progress: Arc<Progress>,
    library: Option<Library>,
    mut feed: Option<SourceFeed>,
    shutdown: CancellationToken,
) -> Result<DownloadOutcome, DownloadError> {
    let mut sources = dedupe(&request.sources, config.max_sources);
    if sources.is_empty() {
        return Err(DownloadError::NoSources);
    }
    let out_dir = request.out_dir.clone();
    let output_error = |reason: std::io::Error| DownloadError::OutputDir {
        path: out_dir.clone(),
        reason,
    };
    std::fs::create_dir_all(&request.out_dir).map_err(output_error)?;

    let mut failures = Vec::new();
    let info = tokio::select! {
        _ = shutdown.cancelled() => return Err(DownloadError::Interrupted { done: 0, total: 0 }),
        info = fetch_hash_list(request.id, &sources, &config, &mut failures) => info,
    };
    let Some(info) = info else {
        return Err(DownloadError::NoHashList(failures));
    };
    let info = Arc::new(info);
    debug!(size = info.size, "hash list fetched");
    progress.total_bytes.store(info.size, Ordering::Relaxed);

    let part = output::part_path(&request.out_dir, &request.id);
    let (file, have) = {
        let (part_c, info) = (part.clone(), info.clone());
        tokio::task::spawn_blocking(move || output::open_part(&part_c, &info))
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
    let name = output::sanitize_name(&request.name, &request.id);
    let partial = Arc::new(PartialEntry::named(
        part.clone(),
        info.clone(),
        name.clone(),
    ));
    let resumed_bytes: u64 = (0..total)
        .filter(|i| have[*i as usize])
        .map(|i| info.chunk_len(i) as u64)
        .sum();
    progress.done_bytes.store(resumed_bytes, Ordering::Relaxed);
    for (i, h) in have.iter().enumerate() {
        if *h {
            partial.set(i as u32);
        }
    }
    if let Some(lib) = &library {
        lib.add_partial(partial.clone());
    }

    // In a swarm, downloaders start at random points so that they do not
    // all ask the seed for the same chunks first; a plain download walks
    // from the start (sources in their regions), as it always did.
    let rotation = match feed {
        Some(_) => {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish() as u32
        }
        None => 0,
    };
    let scheduler = Arc::new(Scheduler::with_rotation(&have, sources.len(), rotation));
    let threads = config.verifier_threads.max(1);
    let verify_queue = config.pipeline_depth.max(2) * 2;
    // Enough buffers for every source filling one, a full queue and every
    // verifier holding one: past the start, a download allocates nothing.
    let buffers = Arc::new(disk::BufferPool::new(
        sources.len() + verify_queue + threads,
    ));
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
        delivered: Mutex::new(vec![0; sources.len()]),
        write_error: Mutex::new(None),
        abort: abort.clone(),
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
    });
    let mut workers = JoinSet::new();
    for (i, addr) in sources.iter().enumerate() {
        let (shared, addr) = (shared.clone(), addr.clone());
        workers.spawn(async move { (i, source::run(shared, i, addr).await) });
    }
    progress
        .active_sources
        .store(sources.len(), Ordering::Relaxed);

    // Start once every source has connected (or failed), or after the grace period.
    let grace = tokio::time::sleep(config.start_grace);
    tokio::pin!(grace);
    while shared.ready.load(Ordering::Acquire) < sources.len() {
        tokio::select! {
            _ = &mut grace => break,
            _ = shared.ready_changed.notified() => {}
        }
    }
    shared.started.cancel();
    debug!(sources = sources.len(), "requesting chunks");

    let mut reasons: Vec<Option<String>> = vec![None; sources.len()];
    let mut alive: Vec<bool> = vec![true; sources.len()];
    let mut interrupted = false;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    let mut idle_since: Option<tokio::time::Instant> = None;
    while !scheduler.is_finished() {
        tokio::select! {
            _ = shutdown.cancelled() => { interrupted = true; break; }
            _ = abort.cancelled() => break,
            _ = poll.tick() => {}
            _ = scheduler.changed.notified() => {}
            joined = workers.join_next(), if !workers.is_empty() => {
                if let Some(Ok((i, result))) = joined {
                    alive[i] = false;
                    if let Err(e) = result {
                        info!(source = %sources[i], error = %e, "source dropped");
                        reasons[i] = Some(e.to_string());
                    }
                }
                progress.active_sources.fetch_sub(1, Ordering::Relaxed);
            }
            found = recv_feed(&mut feed) => match found {
                Some(addrs) => {
                    for addr in addrs {
                        if workers.len() >= config.max_sources.max(1) {
                            break;
                        }
                        // A known address is tried again only if its task
                        // ended without a ban (it may have finished the
                        // file, or come back).
                        let known = sources.iter().enumerate().filter(|(_, a)| **a == addr);
                        if known.clone().any(|(i, _)| alive[i] || scheduler.is_banned(i)) {
                            continue;
                        }
                        if known.count() >= 3 {
                            continue;
                        }
                        let i = scheduler.add_source();
                        debug_assert_eq!(i, sources.len());
                        sources.push(addr.clone());
                        reasons.push(None);
                        alive.push(true);
                        verifier
                            .delivered
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(0);
                        let shared = shared.clone();
                        workers.spawn(async move { (i, source::run(shared, i, addr).await) });
                        progress.active_sources.fetch_add(1, Ordering::Relaxed);
                        debug!(source = %sources[i], "source added during the download");
                    }
                }
                None => feed = None,
            },
        }
        if workers.is_empty() {
            // Without a feed, or when the feed brings nobody for a while:
            // let the verifiers finish the last chunks, then judge.
            if feed.is_none() {
                break;
            }
            let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= config.stall_timeout {
                break;
            }
        } else {
            idle_since = None;
        }
    }
    workers.abort_all();
    while let Some(joined) = workers.join_next().await {
        if let Ok((i, Err(e))) = joined {
            if !matches!(e, SourceError::Wire(_)) || reasons[i].is_none() {
                reasons[i].get_or_insert(e.to_string());
            }
        }
    }
    progress.active_sources.store(0, Ordering::Relaxed);
    let received = shared.bytes_received.load(Ordering::Relaxed);
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
        let reasons = sources
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
    let path = tokio::task::spawn_blocking(move || output::publish(&part_c, &file, &dir_c, &name))
        .await
        .map_err(|e| DownloadError::Output {
            path: part.clone(),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| DownloadError::Output {
            path: part.clone(),
            source,
        })?;

    let delivered = verifier
        .delivered
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let per_source: Vec<SourceReport> = sources
        .iter()
        .zip(&delivered)
        .zip(reasons)
        .map(|((addr, n), error)| SourceReport {
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
    })
}
