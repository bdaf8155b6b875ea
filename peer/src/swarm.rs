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
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::download::{self, DownloadOutcome, DownloadRequest, EngineConfig, Progress};
use crate::get::GetError;
use crate::index_client::IndexClient;
use crate::registrar::RegistrationState;
use crate::serve::Daemon;

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
    /// finished file is then shared as a complete file.
    pub async fn download(
        &self,
        id: FileId,
        out_dir: PathBuf,
        engine: EngineConfig,
        progress: Arc<Progress>,
    ) -> Result<DownloadOutcome, GetError> {
        let mut client = IndexClient::connect(&self.index).await?;
        let Some(found) = client.swarm_lookup(id).await? else {
            return Err(GetError::IdNotFound(id));
        };
        let own = self.own_addrs();
        let addrs = move |f: &crate::index_client::SwarmFound| -> Vec<String> {
            others(&own(), f.complete.iter().chain(&f.partial).map(|s| &s.addr))
        };
        let request = DownloadRequest {
            id,
            name: found.name.clone(),
            sources: addrs(&found),
            out_dir,
        };
        let refresh = |feed: mpsc::Sender<Vec<String>>, stop: CancellationToken| async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(SOURCE_REFRESH) => {}
                }
                match client.swarm_lookup(id).await {
                    Ok(Some(found)) => {
                        if feed.send(addrs(&found)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        debug!(error = %e, "source refresh failed; keeping the sources we have");
                        return;
                    }
                }
            }
        };
        Ok(self.swarm(request, engine, progress, refresh).await?)
    }

    /// Runs a swarming download while `refresh` (given the feed of new
    /// sources and a stop token) looks for more, then shares the result.
    async fn swarm<R, Fut>(
        &self,
        request: DownloadRequest,
        mut engine: EngineConfig,
        progress: Arc<Progress>,
        refresh: R,
    ) -> Result<DownloadOutcome, download::DownloadError>
    where
        R: FnOnce(mpsc::Sender<Vec<String>>, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if engine.download_limit.is_none() {
            engine.download_limit = self.download_limit.clone();
        }
        let (feed_tx, feed_rx) = mpsc::channel(4);
        let stop = self.shutdown_token().child_token();
        let mut refresher = JoinSet::new();
        refresher.spawn(refresh(feed_tx, stop.clone()));
        let result = download::download_swarm(
            request,
            engine,
            progress,
            Some(self.library.clone()),
            Some(feed_rx),
            stop.clone(),
        )
        .await;
        stop.cancel();
        refresher.shutdown().await;
        let outcome = result?;
        // Share the finished file at once if it landed in the shared folder
        // (written whole and closed: no need to wait for it to settle).
        self.library.closed_after_writing(&outcome.path);
        self.library.request_rescan();
        Ok(outcome)
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
        let via = self.listen_addr.to_string();
        let own = self.own_addrs();
        let words = vec![id.to_hex()];
        let hex = id.to_hex();
        let sources_of =
            move |report: &crate::overlay::SearchReport| -> Option<(String, Vec<String>)> {
                let mut hits = report.hits.iter().filter(|h| h.id == hex).peekable();
                let name = hits.peek()?.name.clone();
                Some((name, others(&own(), hits.flat_map(|h| h.sources.iter()))))
            };
        let first = crate::overlay::search(&via, words.clone(), ttl, P2P_REFRESH_WAIT).await?;
        let Some((name, sources)) = sources_of(&first).filter(|(_, s)| !s.is_empty()) else {
            return Err(P2pSwarmError::NotFound { id, ttl });
        };
        let request = DownloadRequest {
            id,
            name,
            sources,
            out_dir,
        };
        let refresh = |feed: mpsc::Sender<Vec<String>>, stop: CancellationToken| async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(P2P_SOURCE_REFRESH) => {}
                }
                let searched = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = crate::overlay::search(&via, words.clone(), ttl, P2P_REFRESH_WAIT) => r,
                };
                match searched {
                    Ok(report) => {
                        let fresh = sources_of(&report).map(|(_, s)| s).unwrap_or_default();
                        if feed.send(fresh).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "p2p source refresh failed; keeping the sources we have");
                    }
                }
            }
        };
        Ok(self.swarm(request, engine, progress, refresh).await?)
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

/// How long `peer serve --fetch` keeps looking for a file nobody offers yet.
const FETCH_PATIENCE: Duration = Duration::from_secs(600);

/// Fetches each id into the daemon's shared folder, one after the other,
/// while the daemon serves (`peer serve --fetch`). A file nobody offers yet
/// (or an overlay still forming) is looked for again every second for up to
/// ten minutes; a failure is logged and the daemon goes on serving.
pub async fn fetch_into_share(daemon: &crate::Daemon, ids: &[FileId]) {
    let out_dir = daemon.library.root().to_path_buf();
    let stop = daemon.shutdown_token();
    for id in ids {
        let give_up = tokio::time::Instant::now() + FETCH_PATIENCE;
        tracing::info!(%id, folder = %out_dir.display(), "fetching into the shared folder");
        // A flooding search from a node with no neighbour yet finds nothing:
        // wait for the overlay to form first.
        if let Some(overlay) = &daemon.overlay {
            while overlay.neighbours().is_empty() && tokio::time::Instant::now() < give_up {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
        let mut said_missing = false;
        loop {
            // Never download into (and so create again) a shared folder
            // that was moved away: wait for it to come back.
            if !out_dir.is_dir() {
                if !said_missing {
                    tracing::warn!(%id, folder = %out_dir.display(), "the shared folder is missing; fetching once it is back");
                    said_missing = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            let progress = Arc::new(Progress::default());
            let result = if daemon.overlay.is_some() {
                daemon
                    .download_p2p(
                        *id,
                        crate::overlay::DEFAULT_TTL,
                        out_dir.clone(),
                        swarm_engine(),
                        progress,
                    )
                    .await
                    .map_err(|e| (matches!(e, P2pSwarmError::NotFound { .. }), e.to_string()))
            } else {
                daemon
                    .download(*id, out_dir.clone(), swarm_engine(), progress)
                    .await
                    .map_err(|e| (matches!(e, GetError::IdNotFound(_)), e.to_string()))
            };
            match result {
                Ok(outcome) => {
                    tracing::info!(%id, path = %outcome.path.display(), sources = outcome.sources_used, "fetched; now shared");
                    break;
                }
                Err((not_yet, message)) => {
                    if !not_yet || tokio::time::Instant::now() > give_up {
                        tracing::warn!(%id, error = %message, "could not fetch; still serving");
                        break;
                    }
                    tracing::debug!(%id, error = %message, "not offered yet; looking again");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
