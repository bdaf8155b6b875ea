//! Test harness: real index servers and peers in-process on 127.0.0.1 port 0,
//! misbehaving sources, and waiting on conditions with deadlines.
//!
//! # Layout
//! - [`Index`]/[`start_index`]: an index server with its address and state.
//! - [`Peer`]/[`start_peer`]: a sharing peer daemon in its own folder.
//! - [`fake`]: hand-written sources that die, stall or lie, speaking the
//!   real protocol (from `transfer`'s `test-support` feature).
//! - [`wait_until`]: polls a condition until a deadline (never a bare sleep).
//! - [`http`]: a minimal HTTP client for the HTTP endpoints, and promtool.
//! - [`netlab`]: an index and peers in network namespaces, behind NAT
//!   routers ([`lab::netns`]; root only).

pub mod capture;
pub mod http;
pub mod netlab;

pub use transfer::testing as fake;
pub use transfer::testing::random_bytes;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use peer::registrar::RegistrationState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Logs to the test output when RUST_LOG is set.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() > give_up {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running index server.
pub struct Index {
    pub addr: SocketAddr,
    pub state: index_server::Index,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), index_server::ServerError>>,
}

impl Index {
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// Stops the server and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("index task panicked")
            .expect("index failed");
    }
}

/// Starts an index on `listen` (use `127.0.0.1:0`).
pub async fn start_index_on(listen: SocketAddr, lease_ttl: Duration) -> Index {
    init_logging();
    let config = index_server::Config {
        listen,
        lease_ttl,
        ..Default::default()
    };
    let server = index_server::Server::bind(config)
        .await
        .expect("bind index");
    run_index(server)
}

/// Runs a bound index server until its [`Index`] is stopped.
pub fn run_index(server: index_server::Server) -> Index {
    let addr = server.local_addr();
    let state = server.index();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    Index {
        addr,
        state,
        shutdown,
        task,
    }
}

/// Starts an index on loopback that also holds a store in `dir` (client-server mode).
pub async fn start_index_with_store(
    dir: &Path,
    quota: u64,
) -> (Index, std::sync::Arc<index_server::store::Store>) {
    init_logging();
    let mut store = index_server::store::StoreConfig::new(dir.to_path_buf());
    store.quota = quota;
    store.rescan_interval = Duration::from_millis(200);
    // Tests write their files whole before sharing them (closed after writing).
    store.settle = Duration::ZERO;
    let config = index_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        lease_ttl: Duration::from_secs(30),
        store: Some(store),
        ..Default::default()
    };
    let server = index_server::Server::bind(config)
        .await
        .expect("bind index with store");
    let store = server.store().expect("the server has a store");
    (run_index(server), store)
}

/// The configuration of a pure peer-to-peer node sharing `share`, joining
/// through `neighbors` (no index: p2p mode never dials one).
pub fn p2p_config(share: &Path, neighbors: Vec<String>, degree: usize) -> peer::ServeConfig {
    let mut config = peer_config(share, "");
    config.p2p = Some(peer::overlay::OverlayConfig {
        neighbors,
        degree,
        ping_interval: Duration::from_millis(100),
        link_idle: Duration::from_secs(30),
    });
    config
}

/// Starts a pure peer-to-peer node sharing `share`, joining through `neighbors`.
pub async fn start_p2p_node(share: &Path, neighbors: Vec<String>, degree: usize) -> Peer {
    start_peer_with(p2p_config(share, neighbors, degree)).await
}

pub async fn start_index() -> Index {
    start_index_on("127.0.0.1:0".parse().unwrap(), Duration::from_secs(30)).await
}

/// A running peer daemon sharing `share`.
pub struct Peer {
    pub daemon: peer::Daemon,
    pub share: PathBuf,
    pub shutdown: CancellationToken,
}

impl Peer {
    pub fn addr(&self) -> String {
        self.daemon.listen_addr().to_string()
    }

    pub fn chunks_served(&self) -> u64 {
        self.daemon.uploads().chunks()
    }

    /// Waits until the peer is registered with exactly `files` files.
    pub async fn wait_registered(&mut self, files: usize) {
        let mut rx = self.daemon.registration().clone();
        let waited = tokio::time::timeout(
            Duration::from_secs(20),
            rx.wait_for(
                |s| matches!(s, RegistrationState::Registered { files: f, .. } if *f == files),
            ),
        )
        .await
        .map(|r| r.is_ok());
        assert_eq!(
            waited,
            Ok(true),
            "peer did not register {files} files; state {:?}",
            *self.daemon.registration().borrow()
        );
    }

    /// Stops the daemon and checks that no task was left running.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let tracker = self.daemon.tracker();
        self.daemon.wait().await;
        assert_eq!(tracker.len(), 0, "tasks left running after shutdown");
    }
}

/// Config for a test peer: loopback, port 0, fast rescans and reconnects.
pub fn peer_config(share: &Path, index: &str) -> peer::ServeConfig {
    let mut config = peer::ServeConfig::new(share.to_path_buf(), index.to_string());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.rescan_interval = Duration::from_millis(100);
    // Tests write their files whole before sharing them (closed after
    // writing); tests of the settle rule set their own.
    config.settle = Duration::ZERO;
    config.backoff_min = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    config
}

pub async fn start_peer_with(config: peer::ServeConfig) -> Peer {
    try_start_peer_with(config).await.expect("start peer")
}

/// [`start_peer_with`] that returns the error (a port taken, say).
pub async fn try_start_peer_with(
    config: peer::ServeConfig,
) -> Result<Peer, peer::serve::ServeError> {
    init_logging();
    std::fs::create_dir_all(&config.share).unwrap();
    let shutdown = CancellationToken::new();
    let share = config.share.clone();
    let daemon = peer::serve::start(config, shutdown.clone()).await?;
    Ok(Peer {
        daemon,
        share,
        shutdown,
    })
}

pub async fn start_peer(share: &Path, index: &str) -> Peer {
    start_peer_with(peer_config(share, index)).await
}

/// Writes `data` to `dir/name` (creating folders) and returns the path.
pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, data).unwrap();
    path
}

/// An engine config for tests: quick to give up on bad sources.
pub fn test_engine() -> peer::EngineConfig {
    peer::EngineConfig {
        stall_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

/// `peer get` as the command runs it, through the one pipeline: `target`
/// (an id, id prefix or exact name) resolved and its sources found per
/// `fetcher`, fetched into `out` with `engine`, no progress shown, never
/// interrupted.
pub async fn fetch(
    fetcher: peer::pipeline::Fetcher,
    target: &str,
    out: &Path,
    engine: peer::EngineConfig,
) -> Result<peer::pipeline::Fetched, peer::pipeline::FetchError> {
    let options = peer::pipeline::FetchOptions::new(
        out.to_path_buf(),
        engine,
        std::sync::Arc::new(peer::download::Progress::default()),
    );
    peer::pipeline::fetch(&fetcher, target, options, CancellationToken::new()).await
}

/// [`fetch`] in the hybrid model, at `index`.
pub async fn hybrid_get(
    index: &str,
    target: &str,
    out: &Path,
    engine: peer::EngineConfig,
) -> Result<peer::DownloadOutcome, peer::pipeline::FetchError> {
    let index = index.to_string();
    fetch(
        peer::pipeline::Fetcher::Hybrid { index },
        target,
        out,
        engine,
    )
    .await
    .map(|f| f.download)
}

/// [`fetch`] in client-server mode, from the store of `server`.
pub async fn server_get(
    server: &str,
    target: &str,
    out: &Path,
    engine: peer::EngineConfig,
) -> Result<peer::DownloadOutcome, peer::pipeline::FetchError> {
    let server = server.to_string();
    fetch(
        peer::pipeline::Fetcher::ClientServer { server },
        target,
        out,
        engine,
    )
    .await
    .map(|f| f.download)
}

/// [`fetch`] in p2p mode: a flooding search through `via` with hop limit
/// `ttl`, answers collected for `wait`.
pub async fn p2p_get(
    via: &str,
    target: &str,
    ttl: u8,
    wait: Duration,
    out: &Path,
    engine: peer::EngineConfig,
) -> Result<peer::pipeline::Fetched, peer::pipeline::FetchError> {
    let via = via.to_string();
    fetch(
        peer::pipeline::Fetcher::P2p { via, ttl, wait },
        target,
        out,
        engine,
    )
    .await
}

/// How many sources the index at `index` lists for `id` (0 when it lists
/// none or does not know the id).
pub async fn sources_of(index: &str, id: common::id::FileId) -> usize {
    let mut c = peer::index_client::IndexClient::connect(index)
        .await
        .unwrap();
    c.lookup(id)
        .await
        .unwrap()
        .map(|(_, _, s)| s.len())
        .unwrap_or(0)
}

/// Logs in to `index` under `security` (a node key other than this
/// process's, for tests of several nodes) with `nick`, published at
/// 127.0.0.1:`port`: the index's answer and the connection (the session
/// lives while it is open).
pub async fn login_as(
    index: &str,
    security: &common::secure::Security,
    nick: &str,
    port: u16,
) -> (common::index_proto::IndexResponse, transfer::net::Conn) {
    use common::index_proto::{IndexRequest, Login};
    let s = tokio::net::TcpStream::connect(index).await.unwrap();
    let (mut s, _) = transfer::net::client_with(s, common::hello::Protocol::Index, None, security)
        .await
        .unwrap();
    let mut buf = Vec::new();
    let req = IndexRequest::Login(Login {
        listen_port: port,
        advertise: None,
        nick: Some(nick.into()),
    });
    common::wire::send_message(&mut s, &req).await.unwrap();
    let r = common::wire::expect_message(&mut s, &mut buf, common::wire::Deadlines::default())
        .await
        .unwrap();
    (r, s)
}
