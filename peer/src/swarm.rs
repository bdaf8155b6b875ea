//! Swarming downloads by a running daemon: the daemon fetches a file while
//! it serves, lists it at the index as partial as soon as it starts, passes
//! on every chunk it has verified, and keeps asking the index for new
//! (partial) sources while the download runs.
//!
//! In pure p2p mode there is no index: [`Daemon::download_p2p`] finds the
//! sources by flooding a search through the daemon's own overlay node, and
//! finds the other downloaders the same way, by searching again every
//! [`P2P_SOURCE_REFRESH`]: an overlay node answers a query from its partial
//! holdings too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::id::FileId;
use tracing::debug;

use crate::download::{self, DownloadOutcome, DownloadRequest, EngineConfig, Progress};
use crate::get::GetError;
use crate::index_client::IndexClient;
use crate::registrar::RegistrationState;
use crate::serve::Daemon;
use crate::target::{ResolveError, Target};

/// How often a swarming download asks the index for new sources.
pub const SOURCE_REFRESH: Duration = Duration::from_millis(200);

/// How often a p2p swarming download floods its search again to find new
/// (partial) sources; each search costs about one message per overlay link.
pub const P2P_SOURCE_REFRESH: Duration = Duration::from_millis(300);

/// How long one refresh search may wait for its answers.
const P2P_REFRESH_WAIT: Duration = Duration::from_secs(2);

/// Why a p2p swarming download failed.
#[derive(Debug, thiserror::Error)]
pub enum P2pSwarmError {
    #[error("this daemon is not an overlay node (start it with the p2p mode)")]
    NotInOverlay,
    #[error(transparent)]
    Search(#[from] crate::overlay::search::SearchError),
    #[error("no node within {ttl} hops offers {id} (raise the TTL or check the neighbours)")]
    NotFound { id: FileId, ttl: u8 },
    #[error(transparent)]
    Download(#[from] download::DownloadError),
}

impl Daemon {
    /// The addresses this daemon is known by, to leave out of its own sources.
    ///
    /// Read afresh on each call: a daemon that starts fetching at once is
    /// not registered yet, and its published address, which the index later
    /// lists among the partial sources, arrives with the registration.
    fn own_addrs(&self) -> impl Fn() -> Vec<String> + Send + Sync + 'static {
        let listen = self.listen_addr.to_string();
        let registration = self.registration.clone();
        move || {
            let mut own = vec![listen.clone()];
            if let RegistrationState::Registered { addr, .. } = &*registration.borrow() {
                own.push(addr.clone());
            }
            own
        }
    }

    /// Downloads `id` into `out_dir` while serving it: the chunks verified so
    /// far are served to other peers and the file is listed at the index as
    /// partial until it is complete. Sources are refreshed from the index
    /// every [`SOURCE_REFRESH`]. Uses the daemon's download cap unless
    /// `engine` brings one. When `out_dir` is inside the shared folder the
    /// finished file is then shared as a complete file. Content this daemon
    /// (or the folder) already holds is reported at once, without the index.
    pub async fn download(
        &self,
        id: FileId,
        out_dir: PathBuf,
        engine: EngineConfig,
        progress: Arc<Progress>,
    ) -> Result<DownloadOutcome, GetError> {
        if let Some(done) =
            download::already_present(id, &out_dir, Some(&self.library), &progress).await
        {
            return Ok(done);
        }
        let mut lookup = SwarmSources {
            index: self.index.clone(),
            id,
            client: Some(IndexClient::connect(&self.index).await?),
            own: Box::new(self.own_addrs()),
        };
        let Some(found) = lookup.lookup().await? else {
            return Err(GetError::IdNotFound(id));
        };
        let request = DownloadRequest {
            id,
            name: found.0,
            sources: found.1,
            out_dir,
        };
        Ok(self
            .swarm(request, engine, progress, lookup, SOURCE_REFRESH)
            .await?)
    }

    /// Runs a swarming download (serving its verified chunks from the
    /// library) while `lookup` is asked every `every` for more sources, then
    /// shares the result.
    async fn swarm<L: download::SourceLookup>(
        &self,
        request: DownloadRequest,
        mut engine: EngineConfig,
        progress: Arc<Progress>,
        lookup: L,
        every: Duration,
    ) -> Result<DownloadOutcome, download::DownloadError> {
        if engine.download_limit.is_none() {
            engine.download_limit = self.download_limit.clone();
        }
        let outcome = download::download_refreshed(
            request,
            engine,
            progress,
            Some(self.library.clone()),
            lookup,
            every,
            self.shutdown_token().child_token(),
        )
        .await?;
        // Share the finished file at once if it landed in the shared folder
        // (written whole and closed: no need to wait for it to settle).
        self.library.closed_after_writing(&outcome.path);
        self.library.request_rescan();
        Ok(outcome)
    }
}

/// The complete and partial sources the index lists for one file, less
/// this daemon's own addresses: a swarming download's feed.
struct SwarmSources {
    index: String,
    id: FileId,
    client: Option<IndexClient>,
    own: Box<dyn Fn() -> Vec<String> + Send + Sync>,
}

impl SwarmSources {
    /// The file's name and its sources now (`None`: nobody offers it).
    async fn lookup(
        &mut self,
    ) -> Result<Option<(String, Vec<String>)>, crate::index_client::IndexError> {
        if self.client.is_none() {
            self.client = Some(IndexClient::connect(&self.index).await?);
        }
        let client = self.client.as_mut().expect("connected just above");
        let found = match client.swarm_lookup(self.id).await {
            Ok(found) => found,
            Err(e) => {
                self.client = None;
                return Err(e);
            }
        };
        Ok(found.map(|f| {
            let addrs = others(
                &(self.own)(),
                f.complete.iter().chain(&f.partial).map(|s| &s.addr),
            );
            (f.name, addrs)
        }))
    }
}

impl download::SourceLookup for SwarmSources {
    async fn sources(&mut self) -> Option<Vec<String>> {
        match self.lookup().await {
            Ok(found) => Some(found.map(|(_, addrs)| addrs).unwrap_or_default()),
            Err(e) => {
                debug!(error = %e, "source refresh failed; keeping the sources we have");
                None
            }
        }
    }
}

/// The nodes a flooding search through this daemon's own overlay node
/// finds for one id (complete or partial holders), less this daemon.
struct P2pSources {
    via: String,
    hex: String,
    ttl: u8,
    own: Box<dyn Fn() -> Vec<String> + Send + Sync>,
}

impl P2pSources {
    fn sources_of(&self, report: &crate::overlay::SearchReport) -> Option<(String, Vec<String>)> {
        let mut hits = report.hits.iter().filter(|h| h.id == self.hex).peekable();
        let name = hits.peek()?.name.clone();
        Some((
            name,
            others(&(self.own)(), hits.flat_map(|h| h.sources.iter())),
        ))
    }

    async fn search(
        &self,
    ) -> Result<crate::overlay::SearchReport, crate::overlay::search::SearchError> {
        crate::overlay::search(
            &self.via,
            vec![self.hex.clone()],
            self.ttl,
            P2P_REFRESH_WAIT,
        )
        .await
    }
}

impl download::SourceLookup for P2pSources {
    async fn sources(&mut self) -> Option<Vec<String>> {
        match self.search().await {
            Ok(report) => Some(self.sources_of(&report).map(|(_, s)| s).unwrap_or_default()),
            Err(e) => {
                debug!(error = %e, "p2p source refresh failed; keeping the sources we have");
                None
            }
        }
    }
}

impl Daemon {
    /// The id a target (id prefix or exact name) stands for, at the index
    /// or, for an overlay node, by flooding a search through itself. The
    /// error says whether it may still come (nobody offers it yet).
    async fn resolve_target(&self, target: &Target) -> Result<FileId, (bool, String)> {
        let not_found = |e: ResolveError| {
            let not_yet = matches!(e, ResolveError::NotFound { .. });
            (not_yet, e.to_string())
        };
        if self.overlay.is_some() {
            let via = self.listen_addr.to_string();
            let ttl = crate::overlay::DEFAULT_TTL;
            let report = crate::overlay::search::flood(
                &via,
                crate::target::overlay_words(target),
                ttl,
                P2P_REFRESH_WAIT,
            )
            .await
            .map_err(|e| (false, e.to_string()))?;
            let (_, chosen) =
                crate::target::resolve_in_hits(target, &report.hits, ttl).map_err(not_found)?;
            return Ok(chosen.id);
        }
        let mut client = IndexClient::connect(&self.index)
            .await
            .map_err(|e| (true, e.to_string()))?;
        crate::target::resolve_at_index(&mut client, target, crate::target::Holders::Any)
            .await
            .map(|c| c.id)
            .map_err(not_found)
    }
}

/// The addresses in `addrs` that are not this daemon's own.
fn others<'a>(own: &[String], addrs: impl Iterator<Item = &'a String>) -> Vec<String> {
    addrs.filter(|a| !own.contains(a)).cloned().collect()
}

impl Daemon {
    /// The p2p counterpart of [`Daemon::download`]: floods a search for `id`
    /// (with hop limit `ttl`) through this daemon's own overlay node, then
    /// downloads from every node that answered, complete or partial, while
    /// serving the verified chunks and searching again every
    /// [`P2P_SOURCE_REFRESH`] for nodes that started downloading since.
    pub async fn download_p2p(
        &self,
        id: FileId,
        ttl: u8,
        out_dir: PathBuf,
        engine: EngineConfig,
        progress: Arc<Progress>,
    ) -> Result<DownloadOutcome, P2pSwarmError> {
        if self.overlay.is_none() {
            return Err(P2pSwarmError::NotInOverlay);
        }
        if let Some(done) =
            download::already_present(id, &out_dir, Some(&self.library), &progress).await
        {
            return Ok(done);
        }
        let lookup = P2pSources {
            via: self.listen_addr.to_string(),
            hex: id.to_hex(),
            ttl,
            own: Box::new(self.own_addrs()),
        };
        let first = lookup.search().await?;
        let Some((name, sources)) = lookup.sources_of(&first).filter(|(_, s)| !s.is_empty()) else {
            return Err(P2pSwarmError::NotFound { id, ttl });
        };
        let request = DownloadRequest {
            id,
            name,
            sources,
            out_dir,
        };
        Ok(self
            .swarm(request, engine, progress, lookup, P2P_SOURCE_REFRESH)
            .await?)
    }
}

/// The engine settings for swarming downloads: short pipelines and a small
/// budget of requests in flight over all sources, so that chunks spread
/// through the swarm instead of every downloader queueing for the seed
/// (measured by the lab: about 1.3x the P2P bound at N = 32, against 1.6x
/// without the budget).
pub fn swarm_engine() -> EngineConfig {
    EngineConfig {
        pipeline_depth: 2,
        max_sources: 64,
        stall_timeout: Duration::from_secs(30),
        have_refresh: Duration::from_millis(100),
        max_in_flight: Some(12),
        ..EngineConfig::default()
    }
}

/// Longest wait between two tries of one `--fetch` download.
const FETCH_RETRY_MAX: Duration = Duration::from_secs(60);

/// One id `peer serve --fetch` still has to fetch.
struct Pending {
    id: FileId,
    failures: u32,
    next_try: tokio::time::Instant,
    /// The last failure logged as a warning (the same one is not repeated).
    warned: Option<String>,
}

/// Fetches each id into the daemon's shared folder while the daemon serves
/// (`peer serve --fetch`), one download at a time. A download that fails,
/// whatever the reason (nobody offers the file yet, every source left, a
/// full disk or another I/O error), is tried again later, with backoff from
/// 1 s to [`FETCH_RETRY_MAX`], until it succeeds or the daemon stops, while
/// the other ids get their turn: freeing space or a source coming back is
/// enough, no restart needed. Each new reason is logged once as a warning.
/// Content already in the share is reported as fetched at once.
pub async fn fetch_into_share(daemon: &crate::Daemon, ids: &[FileId]) {
    let out_dir = daemon.library.root().to_path_buf();
    let stop = daemon.shutdown_token();
    let give_up_waiting = tokio::time::Instant::now() + Duration::from_secs(600);
    // A flooding search from a node with no neighbour yet finds nothing:
    // wait for the overlay to form first.
    if let Some(overlay) = &daemon.overlay {
        while overlay.neighbours().is_empty() && tokio::time::Instant::now() < give_up_waiting {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
    let mut said_missing = false;
    let now = tokio::time::Instant::now();
    let mut pending: Vec<Pending> = ids
        .iter()
        .map(|id| Pending {
            id: *id,
            failures: 0,
            next_try: now,
            warned: None,
        })
        .collect();
    while !pending.is_empty() {
        let Some(k) = (0..pending.len()).min_by_key(|k| pending[*k].next_try) else {
            return;
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(pending[k].next_try) => {}
        }
        let job = &mut pending[k];
        let id = job.id;
        // Never download into (and so create again) a shared folder that
        // was moved away: wait for it to come back.
        if !out_dir.is_dir() {
            if !said_missing {
                tracing::warn!(%id, folder = %out_dir.display(), "the shared folder is missing; fetching once it is back");
                said_missing = true;
            }
            job.next_try = tokio::time::Instant::now() + Duration::from_secs(1);
            continue;
        }
        tracing::info!(%id, folder = %out_dir.display(), "fetching into the shared folder");
        let progress = Arc::new(Progress::default());
        let result = if daemon.overlay.is_some() {
            daemon
                .download_p2p(
                    id,
                    crate::overlay::DEFAULT_TTL,
                    out_dir.clone(),
                    swarm_engine(),
                    progress,
                )
                .await
                .map_err(|e| (matches!(e, P2pSwarmError::NotFound { .. }), e.to_string()))
        } else {
            daemon
                .download(id, out_dir.clone(), swarm_engine(), progress)
                .await
                .map_err(|e| (matches!(e, GetError::IdNotFound(_)), e.to_string()))
        };
        if stop.is_cancelled() {
            return;
        }
        match result {
            Ok(outcome) => {
                if outcome.already_present {
                    tracing::info!(%id, path = %outcome.path.display(), "already in the shared folder");
                } else {
                    tracing::info!(%id, path = %outcome.path.display(), sources = outcome.sources_used, "fetched; now shared");
                }
                pending.remove(k);
            }
            Err((not_yet, message)) => {
                job.failures += 1;
                let wait = if not_yet {
                    // Nobody offers it yet: look again soon (a seed may be
                    // registering right now), then less often.
                    download::retry::backoff(
                        job.failures,
                        Duration::from_secs(1),
                        Duration::from_secs(10),
                    )
                } else {
                    download::retry::backoff(job.failures, Duration::from_secs(1), FETCH_RETRY_MAX)
                };
                if not_yet || job.warned.as_deref() == Some(message.as_str()) {
                    tracing::debug!(%id, error = %message, ?wait, "could not fetch yet; trying again");
                } else {
                    tracing::warn!(%id, error = %message, "could not fetch; still serving, and trying again with backoff (up to every {}s)", FETCH_RETRY_MAX.as_secs());
                    job.warned = Some(message);
                }
                job.next_try = tokio::time::Instant::now() + wait;
            }
        }
    }
}

/// `peer serve --fetch`: resolves each target (an id prefix or exact name,
/// see [`crate::target`]) to an id, looking again every second for up to ten
/// minutes while nobody offers it (an ambiguous target is logged and
/// skipped), then fetches the ids with [`fetch_into_share`].
pub async fn fetch_targets_into_share(daemon: &crate::Daemon, targets: &[Target]) {
    let stop = daemon.shutdown_token();
    let mut ids = Vec::with_capacity(targets.len());
    for target in targets {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(600);
        loop {
            let resolved = match target {
                Target::Id(id) => Ok(*id),
                other => daemon.resolve_target(other).await,
            };
            match resolved {
                Ok(id) => {
                    ids.push(id);
                    break;
                }
                Err((not_yet, message)) => {
                    if !not_yet || tokio::time::Instant::now() > give_up {
                        tracing::warn!(%target, error = %message, "cannot fetch; still serving");
                        break;
                    }
                    debug!(%target, error = %message, "not offered yet; looking again");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
    fetch_into_share(daemon, &ids).await;
}
