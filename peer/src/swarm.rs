//! Swarming downloads by a running daemon: the daemon fetches a file while
//! it serves, lists it at the index as partial as soon as it starts, passes
//! on every chunk it has verified, and keeps asking the index for new
//! (partial) sources while the download runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::id::FileId;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::debug;

use crate::download::{self, DownloadOutcome, DownloadRequest, EngineConfig, Progress};
use crate::get::GetError;
use crate::index_client::IndexClient;
use crate::registrar::RegistrationState;
use crate::serve::Daemon;

/// How often a swarming download asks the index for new sources.
pub const SOURCE_REFRESH: Duration = Duration::from_millis(200);

impl Daemon {
    /// The addresses this daemon is known by, to leave out of its own sources.
    fn own_addrs(&self) -> Vec<String> {
        let mut own = vec![self.listen_addr.to_string()];
        if let RegistrationState::Registered { addr, .. } = &*self.registration.borrow() {
            own.push(addr.clone());
        }
        own
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
        mut engine: EngineConfig,
        progress: Arc<Progress>,
    ) -> Result<DownloadOutcome, GetError> {
        if engine.download_limit.is_none() {
            engine.download_limit = self.download_limit.clone();
        }
        let mut client = IndexClient::connect(&self.index).await?;
        let Some(found) = client.swarm_lookup(id).await? else {
            return Err(GetError::IdNotFound(id));
        };
        let own = self.own_addrs();
        let addrs = |f: &crate::index_client::SwarmFound| -> Vec<String> {
            f.complete
                .iter()
                .chain(&f.partial)
                .map(|s| s.addr.clone())
                .filter(|a| !own.contains(a))
                .collect()
        };
        let request = DownloadRequest {
            id,
            name: found.name.clone(),
            sources: addrs(&found),
            out_dir,
        };

        let (feed_tx, feed_rx) = mpsc::channel(4);
        let stop = self.shutdown_token().child_token();
        let mut refresher = JoinSet::new();
        {
            let (stop, own) = (stop.clone(), own.clone());
            refresher.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(SOURCE_REFRESH) => {}
                    }
                    match client.swarm_lookup(id).await {
                        Ok(Some(found)) => {
                            let fresh: Vec<String> = found
                                .complete
                                .iter()
                                .chain(&found.partial)
                                .map(|s| s.addr.clone())
                                .filter(|a| !own.contains(a))
                                .collect();
                            if feed_tx.send(fresh).await.is_err() {
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
            });
        }
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
        // Share the finished file at once if it landed in the shared folder.
        self.library.request_rescan();
        Ok(outcome)
    }
}
