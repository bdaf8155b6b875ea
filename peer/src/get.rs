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
use crate::target::{self, Holders, ResolveError, Target, TargetError};

/// Why a get failed.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Nothing, or several different files, match the target.
    #[error(transparent)]
    Target(#[from] ResolveError),
    #[error(transparent)]
    BadTarget(#[from] TargetError),
    #[error("no online peer offers file {0} right now")]
    IdNotFound(FileId),
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

/// Finds the file (by id, id prefix or exact name: see [`crate::target`])
/// and its live sources.
pub async fn resolve(index: &str, target: &str) -> Result<Resolved, GetError> {
    resolve_among(index, target, Holders::Any).await
}

/// [`resolve`] among the files `holders` hold.
pub async fn resolve_among(
    index: &str,
    target: &str,
    holders: Holders,
) -> Result<Resolved, GetError> {
    let target: Target = target.parse()?;
    let mut client = IndexClient::connect(index).await?;
    let chosen = target::resolve_at_index(&mut client, &target, holders)
        .await
        .map_err(|e| match e {
            ResolveError::Index(e) => GetError::Index(e),
            other => GetError::Target(other),
        })?;
    let Some((name, size, sources)) = client.lookup(chosen.id).await? else {
        return Err(GetError::IdNotFound(chosen.id));
    };
    Ok(Resolved {
        id: chosen.id,
        // Saved under the name asked for when it was a name.
        name: if chosen.name.is_empty() {
            name
        } else {
            chosen.name
        },
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
