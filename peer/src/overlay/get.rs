//! `peer get --mode p2p`: find the file by flooding, then fetch it from
//! every node that answered, with the same verified engine as every mode.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::id::FileId;
use tokio_util::sync::CancellationToken;

use super::search::{search, SearchError, SearchReport};
use crate::download::{
    self, DownloadError, DownloadOutcome, DownloadRequest, EngineConfig, Progress,
};

/// Why a p2p get failed.
#[derive(Debug, thiserror::Error)]
pub enum P2pGetError {
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error("no node within {ttl} hops offers {target:?} (raise --ttl or --wait, or try another --via node)")]
    NotFound { target: String, ttl: u8 },
    #[error("several different files are named {name:?}; pass one id instead:\n{}", .candidates.iter().map(|(id, n)| format!("  {id}  {}", common::names::escape_for_terminal(n))).collect::<Vec<_>>().join("\n"))]
    Ambiguous {
        name: String,
        candidates: Vec<(String, String)>,
    },
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

/// Searches through `via` for `target` (a 64-digit id or an exact name) and
/// downloads it from the nodes that have it.
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
    let by_id = target.parse::<FileId>().ok();
    let words = match by_id {
        Some(id) => vec![id.to_hex()],
        None => vec![target.to_string()],
    };
    let report = search(via, words, ttl, wait).await?;
    let base = |n: &str| n.rsplit('/').next().unwrap_or(n).to_string();
    let matching: Vec<_> = report
        .hits
        .iter()
        .filter(|h| match by_id {
            Some(id) => h.id == id.to_hex(),
            None => h.name == target || base(&h.name) == target,
        })
        .collect();
    let hit = match matching.as_slice() {
        [] => {
            return Err(P2pGetError::NotFound {
                target: target.into(),
                ttl,
            })
        }
        [one] => (*one).clone(),
        many => {
            return Err(P2pGetError::Ambiguous {
                name: target.into(),
                candidates: many
                    .iter()
                    .map(|h| (h.id.clone(), h.name.clone()))
                    .collect(),
            })
        }
    };
    let id: FileId = hit.id.parse().map_err(|_| P2pGetError::NotFound {
        target: target.into(),
        ttl,
    })?;
    let request = DownloadRequest {
        id,
        name: hit.name,
        sources: hit.sources,
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
