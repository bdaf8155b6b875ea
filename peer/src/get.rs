//! `peer get` in the hybrid model: ask the index for the sources, then let
//! the transfer engine fetch from them directly, asking the index again
//! every [`SOURCE_REFRESH`] while it runs (peers come and go).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::id::FileId;
use tokio_util::sync::CancellationToken;

use crate::download::{
    self, DownloadError, DownloadOutcome, DownloadRequest, EngineConfig, Progress,
};
use crate::index_client::{IndexClient, IndexError};

/// Why a get failed.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("no online peer offers a file named {0:?} (try `peer search` to see what is there)")]
    NameNotFound(String),
    #[error("no online peer offers file {0} right now")]
    IdNotFound(FileId),
    #[error("several different files are named {name:?}; pass one id instead:\n{}", .candidates.iter().map(|(id, n)| format!("  {id}  {}", common::names::escape_for_terminal(n))).collect::<Vec<_>>().join("\n"))]
    Ambiguous {
        name: String,
        candidates: Vec<(FileId, String)>,
    },
    #[error(transparent)]
    Download(#[from] DownloadError),
}

/// What a target resolved to.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub id: FileId,
    pub name: String,
    pub size: u64,
    pub sources: Vec<String>,
}

/// Finds the file (by id, or by exact name) and its live sources.
pub async fn resolve(index: &str, target: &str) -> Result<Resolved, GetError> {
    let mut client = IndexClient::connect(index).await?;
    let id = match target.parse::<FileId>() {
        Ok(id) => id,
        Err(_) => {
            let words = common::names::tokenize(target);
            if words.is_empty() {
                return Err(GetError::NameNotFound(target.into()));
            }
            let hits = client
                .search(words, common::limits::MAX_SEARCH_LIMIT)
                .await?;
            let base = |n: &str| n.rsplit('/').next().unwrap_or(n).to_string();
            let mut matching: Vec<(FileId, String)> = hits
                .into_iter()
                .filter(|h| h.name == target || base(&h.name) == target)
                .map(|h| (h.id, h.name))
                .collect();
            matching.dedup_by_key(|(id, _)| *id);
            match matching.len() {
                0 => return Err(GetError::NameNotFound(target.into())),
                1 => matching[0].0,
                _ => {
                    return Err(GetError::Ambiguous {
                        name: target.into(),
                        candidates: matching,
                    })
                }
            }
        }
    };
    let Some((name, size, sources)) = client.lookup(id).await? else {
        return Err(GetError::IdNotFound(id));
    };
    Ok(Resolved {
        id,
        name,
        size,
        sources: sources.into_iter().map(|s| s.addr).collect(),
    })
}

/// How often a `peer get` asks the index again who offers its file, so
/// that it uses peers that joined and sources that came back (churn).
pub const SOURCE_REFRESH: Duration = Duration::from_secs(1);

/// The sources the index lists for one file now: a download's feed
/// ([`download::SourceLookup`]). Reconnects to the index after a failure.
pub struct IndexSources {
    index: String,
    id: FileId,
    client: Option<IndexClient>,
}

impl IndexSources {
    pub fn new(index: &str, id: FileId) -> Self {
        IndexSources {
            index: index.to_string(),
            id,
            client: None,
        }
    }
}

impl download::SourceLookup for IndexSources {
    async fn sources(&mut self) -> Option<Vec<String>> {
        if self.client.is_none() {
            self.client = IndexClient::connect(&self.index).await.ok();
        }
        let client = self.client.as_mut()?;
        match client.lookup(self.id).await {
            Ok(found) => Some(
                found
                    .map(|(_, _, sources)| sources.into_iter().map(|s| s.addr).collect())
                    .unwrap_or_default(),
            ),
            Err(e) => {
                tracing::debug!(error = %e, "index lookup failed; reconnecting next time");
                self.client = None;
                None
            }
        }
    }
}

/// Resolves `target` at the index and downloads it into `out_dir`.
pub async fn get(
    index: &str,
    target: &str,
    out_dir: PathBuf,
    engine: EngineConfig,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
) -> Result<DownloadOutcome, GetError> {
    let resolved = resolve(index, target).await?;
    let request = DownloadRequest {
        id: resolved.id,
        name: resolved.name,
        sources: resolved.sources,
        out_dir,
    };
    let lookup = IndexSources::new(index, resolved.id);
    Ok(download::download_refreshed(
        request,
        engine,
        progress,
        None,
        lookup,
        SOURCE_REFRESH,
        shutdown,
    )
    .await?)
}
