//! One path from a name to verified bytes, for every caller (the daemon's
//! download manager, `peer get`, `peer serve --fetch`) and every mode.
//!
//! ```text
//!  target ("id" | "id prefix" | "exact name")
//!     |  target::Target (parsed once)
//!     v
//!  resolve where the mode looks ............ one ambiguity rule (common::target::pick)
//!     |   hybrid: index LookupPrefix/LookupName     p2p: flooding search hits
//!     |   client-server: the index's store only
//!     v
//!  (id, name, first sources)
//!     |
//!     v                          source stream (SourceLookup, every refresh):
//!  download::download_refreshed <---- hybrid: index lookups (IndexSources)
//!     |  (the one engine entry        p2p: flooding searches (FloodSources)
//!     |   point: verified chunks,     client-server: the server (FixedSources)
//!     |   part file, resume)
//!     v
//!  DownloadOutcome (path under the final name once complete)
//! ```
//!
//! `peer get` (every mode) and the daemon's download manager both call
//! [`fetch`]; nothing else starts a download from a name.
//!
//! A [`Fetcher`] says which mode; [`fetch`] runs the whole path and reports
//! the resolved file as soon as it is known (the daemon records it, so a
//! restarted download asks for the id, not the name again).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::download::{self, DownloadOutcome, DownloadRequest, EngineConfig, Progress};
use crate::library::Library;

/// Where a download's file is resolved and its sources come from.
#[derive(Debug, Clone)]
pub enum Fetcher {
    /// The index resolves the target and lists the peers (and partial
    /// holders) that offer it, asked again every [`crate::get::SOURCE_REFRESH`].
    Hybrid { index: String },
    /// A flooding search through `via` resolves it and finds the nodes.
    P2p {
        via: String,
        ttl: u8,
        wait: Duration,
    },
    /// The index server's store is the only source.
    ClientServer { server: String },
}

/// Where the bytes go and how the engine runs.
pub struct FetchOptions {
    pub out_dir: PathBuf,
    pub engine: EngineConfig,
    pub progress: Arc<Progress>,
    /// The daemon's library: its verified chunks are served while the
    /// download runs (swarming); `None` for a standalone `peer get`.
    pub library: Option<Library>,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Hybrid(#[from] crate::get::GetError),
    #[error(transparent)]
    P2p(#[from] crate::overlay::get::P2pGetError),
    #[error(transparent)]
    Server(#[from] crate::client_server::ServerGetError),
}

/// A finished fetch: the download, and in p2p mode the flooding search
/// that found the file.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub download: DownloadOutcome,
    pub search: Option<crate::overlay::SearchReport>,
}

impl FetchError {
    /// Whether it stopped because `shutdown` was cancelled (exit status
    /// 130; the part file resumes).
    pub fn interrupted(&self) -> bool {
        use crate::download::DownloadError::Interrupted;
        matches!(
            self,
            FetchError::Hybrid(crate::get::GetError::Download(Interrupted { .. }))
                | FetchError::P2p(crate::overlay::get::P2pGetError::Download(
                    Interrupted { .. }
                ))
                | FetchError::Server(crate::client_server::ServerGetError::Download(
                    Interrupted { .. }
                ))
        )
    }

    /// Whether trying again later may succeed (not for a malformed or
    /// ambiguous target).
    pub fn retryable(&self) -> bool {
        use crate::target::ResolveError;
        let target = match self {
            FetchError::Hybrid(crate::get::GetError::Target(e)) => Some(e),
            FetchError::P2p(crate::overlay::get::P2pGetError::Target(e)) => Some(e),
            FetchError::Server(crate::client_server::ServerGetError::Resolve(
                crate::get::GetError::Target(e),
            )) => Some(e),
            FetchError::Hybrid(crate::get::GetError::BadTarget(_))
            | FetchError::P2p(crate::overlay::get::P2pGetError::BadTarget(_)) => return false,
            _ => None,
        };
        !matches!(target, Some(ResolveError::Ambiguous { .. }))
    }
}

/// Resolves `target`, streams its sources per `fetcher`, and downloads it
/// with the one engine entry point. `resolved(id_hex, name, size)` is
/// called once the file is known.
pub async fn fetch(
    fetcher: &Fetcher,
    target: &str,
    options: FetchOptions,
    resolved: impl FnOnce(String, String, u64) + Send,
    shutdown: CancellationToken,
) -> Result<Fetched, FetchError> {
    let FetchOptions {
        out_dir,
        engine,
        progress,
        library,
    } = options;
    match fetcher {
        Fetcher::Hybrid { index } => {
            let found = crate::get::resolve(index, target).await?;
            resolved(found.id.to_hex(), found.name.clone(), found.size);
            let lookup = crate::get::IndexSources::new(index, found.id);
            let request = DownloadRequest {
                id: found.id,
                name: found.name,
                sources: found.sources,
                out_dir,
            };
            let download = download::download_refreshed(
                request,
                engine,
                progress,
                library,
                lookup,
                crate::get::SOURCE_REFRESH,
                shutdown,
            )
            .await
            .map_err(crate::get::GetError::from)?;
            Ok(Fetched {
                download,
                search: None,
            })
        }
        Fetcher::P2p { via, ttl, wait } => {
            let outcome = crate::overlay::get::get(
                via, target, *ttl, *wait, out_dir, engine, progress, shutdown,
            )
            .await?;
            let d = &outcome.download;
            let name = d
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            resolved(d.id.clone(), name, d.size);
            Ok(Fetched {
                download: outcome.download,
                search: Some(outcome.search),
            })
        }
        Fetcher::ClientServer { server } => Ok(Fetched {
            download: crate::client_server::get_from_server(
                server, target, out_dir, engine, progress, shutdown,
            )
            .await?,
            search: None,
        }),
    }
}
