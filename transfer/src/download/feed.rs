//! Keeping a download's sources fresh while it runs.
//!
//! Every download (a plain `peer get` in any mode as much as a daemon's
//! swarming one) asks again now and then who offers the file, so that it
//! learns of peers that joined and of sources that left and came back
//! (churn), instead of living on the list it started with. The engine
//! starts a source task for each new address and tries again, after a
//! backoff, an address whose task ended without a ban ([`super::download_swarm`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{
    download_swarm, DownloadError, DownloadOutcome, DownloadRequest, EngineConfig, Progress,
};
use crate::library::Library;

/// How a download learns who offers its file now (an index lookup, a
/// flooding search, or a fixed server).
pub trait SourceLookup: Send + 'static {
    /// The addresses offering the file now; `None` when the lookup failed
    /// (the download keeps the sources it has, and the next call may
    /// reconnect).
    fn sources(&mut self) -> impl Future<Output = Option<Vec<String>>> + Send;
}

/// Always the same sources (client-server mode: the one server), offered
/// again so that a server that went away is tried again when it is back.
pub struct FixedSources(pub Vec<String>);

impl SourceLookup for FixedSources {
    async fn sources(&mut self) -> Option<Vec<String>> {
        Some(self.0.clone())
    }
}

/// [`download_swarm`] with a task that calls `lookup` every `every` and
/// feeds what it finds to the engine; the task is stopped when the download
/// ends.
pub async fn download_refreshed<L: SourceLookup>(
    request: DownloadRequest,
    config: EngineConfig,
    progress: Arc<Progress>,
    library: Option<Library>,
    lookup: L,
    every: Duration,
    shutdown: CancellationToken,
) -> Result<DownloadOutcome, DownloadError> {
    let (feed_tx, feed_rx) = mpsc::channel(4);
    let stop = shutdown.child_token();
    let mut refresher = JoinSet::new();
    refresher.spawn(refresh(lookup, every, feed_tx, stop.clone()));
    let result = download_swarm(request, config, progress, library, Some(feed_rx), shutdown).await;
    stop.cancel();
    refresher.shutdown().await;
    result
}

async fn refresh<L: SourceLookup>(
    mut lookup: L,
    every: Duration,
    feed: mpsc::Sender<Vec<String>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let found = tokio::select! {
            _ = stop.cancelled() => return,
            found = lookup.sources() => found,
        };
        match found {
            Some(addrs) => {
                if feed.send(addrs).await.is_err() {
                    return;
                }
            }
            None => debug!("source refresh failed; keeping the sources we have"),
        }
    }
}
