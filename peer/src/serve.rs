//! `peer serve`: the daemon that shares a folder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::index_proto::Login;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::chunk_server::{self, UploadStats};
use crate::library::Library;
use crate::rate::RateLimiter;
use crate::registrar::{self, RegistrarConfig, RegistrationState};
use crate::scan::{self, HashCache};

/// Settings of a sharing peer.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Folder to share (recursively).
    pub share: PathBuf,
    /// Index server, `HOST:PORT`.
    pub index: String,
    /// Where to accept chunk requests.
    pub listen: SocketAddr,
    /// `HOST:PORT` the index should publish instead of our source IP and port.
    pub advertise: Option<String>,
    pub nick: Option<String>,
    /// Where the hash cache lives; default `SHARE/.p2pshare`.
    pub cache_dir: Option<PathBuf>,
    /// How often the folder is scanned for added, changed and removed files.
    pub rescan_interval: Duration,
    /// Most simultaneous upload connections.
    pub max_uploads: usize,
    /// Reconnection backoff towards the index.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Cap on the total rate of chunk uploads, bytes per second.
    pub max_upload_rate: Option<u64>,
    /// Cap on the total rate of the downloads this daemon does, bytes per second.
    pub max_download_rate: Option<u64>,
}

impl ServeConfig {
    pub fn new(share: PathBuf, index: String) -> Self {
        ServeConfig {
            share,
            index,
            listen: "0.0.0.0:6699".parse().expect("valid default address"),
            advertise: None,
            nick: None,
            cache_dir: None,
            rescan_interval: Duration::from_secs(10),
            max_uploads: 32,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            max_upload_rate: None,
            max_download_rate: None,
        }
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot share {path}: {source} (does the folder exist?)")]
    Share {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a folder")]
    NotAFolder(PathBuf),
    #[error("cannot listen on {addr}: {source} (is another peer running there? pick another address with --listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

/// A running peer daemon.
pub struct Daemon {
    /// Where the chunk server actually listens (useful with port 0).
    pub listen_addr: SocketAddr,
    pub library: Library,
    pub uploads: Arc<UploadStats>,
    pub registration: watch::Receiver<RegistrationState>,
    /// Shared by every upload connection, when capped.
    pub upload_limit: Option<Arc<RateLimiter>>,
    /// Shared by every download this daemon does, when capped.
    pub download_limit: Option<Arc<RateLimiter>>,
    /// The index server this daemon registers with.
    pub index: String,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Daemon {
    /// Waits until `shutdown` is cancelled and every task has stopped.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .is_err()
        {
            warn!("some peer tasks did not stop within 5 s");
        }
        info!("peer stopped");
    }

    /// Tasks still running (zero after [`Daemon::wait`]).
    pub fn task_count(&self) -> usize {
        self.tracker.len()
    }

    pub fn tracker(&self) -> TaskTracker {
        self.tracker.clone()
    }

    /// Cancelled when the daemon shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Scans the folder, binds, and starts serving and registering. Returns once
/// the files are hashed and the chunk server listens.
pub async fn start(config: ServeConfig, shutdown: CancellationToken) -> Result<Daemon, ServeError> {
    let root = std::fs::canonicalize(&config.share).map_err(|source| ServeError::Share {
        path: config.share.clone(),
        source,
    })?;
    if !root.is_dir() {
        return Err(ServeError::NotAFolder(config.share.clone()));
    }
    let listener = chunk_server::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let listen_addr = listener
        .local_addr()
        .map_err(|e| ServeError::Internal(e.to_string()))?;

    let library = Library::new(root.clone());
    let cache_dir = config
        .cache_dir
        .clone()
        .unwrap_or_else(|| root.join(".p2pshare"));
    let (cache, entries) = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || {
            let mut cache = HashCache::load(Some(&cache_dir), &root);
            let entries = scan::scan(&root, &mut cache);
            (cache, entries)
        })
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))?
    };
    info!(folder = %root.display(), files = entries.len(), addr = %listen_addr, "sharing");
    library.set_shared(entries);

    let tracker = TaskTracker::new();
    let uploads = Arc::new(UploadStats::default());
    let upload_limit = config
        .max_upload_rate
        .map(|r| Arc::new(RateLimiter::new(r)));
    let download_limit = config
        .max_download_rate
        .map(|r| Arc::new(RateLimiter::new(r)));
    tracker.spawn(chunk_server::serve_limited(
        listener,
        library.clone(),
        config.max_uploads,
        upload_limit.clone(),
        uploads.clone(),
        tracker.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(rescan_loop(
        library.clone(),
        cache,
        config.rescan_interval,
        shutdown.clone(),
    ));

    let (state_tx, state_rx) = watch::channel(RegistrationState::Connecting);
    let registrar_config = RegistrarConfig {
        index: config.index.clone(),
        login: Login {
            listen_port: listen_addr.port(),
            advertise: config.advertise.clone(),
            nick: config.nick.clone(),
        },
        backoff_min: config.backoff_min,
        backoff_max: config.backoff_max,
    };
    tracker.spawn(registrar::run(
        registrar_config,
        library.clone(),
        state_tx,
        shutdown.clone(),
    ));

    Ok(Daemon {
        listen_addr,
        library,
        uploads,
        registration: state_rx,
        upload_limit,
        download_limit,
        index: config.index.clone(),
        tracker,
        shutdown,
    })
}

/// Runs a peer daemon until `shutdown` is cancelled.
pub async fn run(config: ServeConfig, shutdown: CancellationToken) -> Result<(), ServeError> {
    start(config, shutdown).await?.wait().await;
    Ok(())
}

async fn rescan_loop(
    library: Library,
    mut cache: HashCache,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = library.rescan_requested() => {}
        }
        let root = library.root().to_path_buf();
        let scanned = tokio::task::spawn_blocking(move || {
            let entries = scan::scan(&root, &mut cache);
            (cache, entries)
        })
        .await;
        match scanned {
            Ok((c, entries)) => {
                cache = c;
                library.set_shared(entries);
            }
            Err(e) => {
                warn!(error = %e, "folder scan failed; sharing stopped updating");
                return;
            }
        }
    }
}
