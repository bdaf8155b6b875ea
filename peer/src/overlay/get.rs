//! `peer get --mode p2p`: find the file by flooding, then fetch it from
//! every node that answered, with the same verified engine as every mode.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::search::{flood, search, SearchError, SearchReport};
use crate::download::{
    self, DownloadError, DownloadOutcome, DownloadRequest, EngineConfig, Progress,
};
use crate::target::{overlay_words, resolve_in_hits, ResolveError, Target, TargetError};
use common::id::FileId;

/// Why a p2p get failed.
#[derive(Debug, thiserror::Error)]
pub enum P2pGetError {
    #[error(transparent)]
    Search(#[from] SearchError),
    /// Nothing, or several different files, match the target.
    #[error(transparent)]
    Target(#[from] ResolveError),
    #[error(transparent)]
    BadTarget(#[from] TargetError),
    #[error(transparent)]
    Download(#[from] DownloadError),
}

/// How often a p2p get floods its search again for fresh sources while it
/// downloads (each search costs about one message per overlay link).
pub const P2P_GET_REFRESH: Duration = Duration::from_secs(2);

/// The nodes that answer a flooding search for one id now: a download's
/// feed ([`download::SourceLookup`]).
pub struct FloodSources {
    pub via: String,
    pub id: FileId,
    pub ttl: u8,
    pub wait: Duration,
}

impl download::SourceLookup for FloodSources {
    async fn sources(&mut self) -> Option<Vec<String>> {
        let hex = self.id.to_hex();
        let report = search(&self.via, vec![hex.clone()], self.ttl, self.wait)
            .await
            .ok()?;
        Some(
            report
                .hits
                .into_iter()
                .filter(|h| h.id == hex)
                .flat_map(|h| h.sources)
                .collect(),
        )
    }
}

/// A finished p2p get: the download and the search that found its sources.
#[derive(Debug, Clone, serde::Serialize)]
pub struct P2pGetOutcome {
    #[serde(flatten)]
    pub download: DownloadOutcome,
    pub search: SearchReport,
}

/// Searches through `via` for `target` (an id, id prefix or exact name: see
/// [`crate::target`]) and downloads it from the nodes that have it.
#[allow(clippy::too_many_arguments)]
pub async fn get(
    via: &str,
    target: &str,
    ttl: u8,
    wait: Duration,
    out_dir: PathBuf,
    engine: EngineConfig,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
) -> Result<P2pGetOutcome, P2pGetError> {
    let target: Target = target.parse()?;
    let report = flood(via, overlay_words(&target), ttl, wait).await?;
    let (hit, chosen) = resolve_in_hits(&target, &report.hits, ttl)?;
    let (id, name, sources) = (chosen.id, chosen.name, hit.sources.clone());
    let request = DownloadRequest {
        id,
        name,
        sources,
        out_dir,
    };
    let lookup = FloodSources {
        via: via.to_string(),
        id,
        ttl,
        wait,
    };
    let download = download::download_refreshed(
        request,
        engine,
        progress,
        None,
        lookup,
        P2P_GET_REFRESH,
        shutdown,
    )
    .await?;
    Ok(P2pGetOutcome {
        download,
        search: report,
    })
}
