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
use crate::inbox::{self, Inbox, InboxConfig};
use crate::library::Library;
use crate::rate::RateLimiter;
use crate::registrar::{self, RegistrarConfig, RegistrationState};
use crate::scan::{self, HashCache};

/// Default of [`ServeConfig::listen`] (and of `peer serve --listen`):
/// both IPv6 and IPv4 (see `transfer::net::bind_listener`), port 6699.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V6(std::net::SocketAddrV6::new(
    std::net::Ipv6Addr::UNSPECIFIED,
    crate::addr::PEER_PORT,
    0,
    0,
));

/// Default of [`ServeConfig::rescan_interval`] (and of `--rescan-interval`).
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(10);

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
    /// Nickname to register under (presence, browse and messages by name).
    pub nick: Option<String>,
    /// `nick` was not chosen by the user (it is the host name): when another
    /// peer uses it, register under a free variant (`nick-2`, ...) instead
    /// of stopping. A chosen nickname that clashes stops the peer.
    pub nick_fallback: bool,
    /// Where the hash cache lives; default `SHARE/.p2pshare`.
    pub cache_dir: Option<PathBuf>,
    /// How often the folder is scanned for added, changed and removed files.
    pub rescan_interval: Duration,
    /// How long a file must stay unchanged (size, mtime, ctime, inode)
    /// before it is hashed and shared: a file still being written is not
    /// registered under the id of its first bytes ([`scan::DEFAULT_SETTLE`]).
    pub settle: Duration,
    /// Upload slots (`slots`: requesters served at once) and the upload
    /// queue's caps and times: more requesters wait in the queue, told
    /// their position (`transfer::upload_queue`).
    pub upload_queue: transfer::upload_queue::QueueConfig,
    /// Upload connections held at once; more are told `Busy`.
    pub max_upload_connections: usize,
    /// Upload connections one source address (IPv4, IPv6 /64) may hold.
    pub max_upload_connections_per_ip: usize,
    /// Reconnection backoff towards the index.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Direct messages kept (in memory and in `SHARE/.p2pshare/inbox.jsonl`).
    pub inbox_capacity: usize,
    /// Messages one sender may send at once, then one per `message_refill`.
    pub message_burst: u32,
    pub message_refill: Duration,
    /// Pure peer-to-peer mode: join this overlay instead of registering at
    /// an index (`index` is then unused).
    pub p2p: Option<crate::overlay::OverlayConfig>,
    /// Cap on the total rate of chunk uploads, bytes per second.
    pub max_upload_rate: Option<u64>,
    /// Cap on the total rate of the downloads this daemon does, bytes per second.
    pub max_download_rate: Option<u64>,
    /// Files to fetch into the shared folder while serving (swarming): the
    /// verified chunks are served at once, the finished file is shared.
    pub fetch: Vec<crate::target::Target>,
    /// The HTTP/JSON API ([`crate::api`]); `None`: no API. `peer serve`
    /// turns it on by default ([`crate::api::DEFAULT_API`]); in-process
    /// daemons (tests, the demo) opt in.
    pub api: Option<crate::api::ApiConfig>,
    /// Downloads the daemon runs at once ([`crate::daemon`]); the list is
    /// kept (with the API) in the share's state folder.
    pub max_active_downloads: usize,
    /// Relay for other peers (`peer serve --relay`, hybrid mode, once the
    /// index has proven this peer's address), with these caps; `None`:
    /// relay for no one.
    pub relay: Option<transfer::relay::RelayConfig>,
    /// Samples of uploads and holdings written to a file (`--stats-log`);
    /// `None`: none.
    pub stats_log: Option<crate::stats_log::StatsLogConfig>,
}

impl ServeConfig {
    pub fn new(share: PathBuf, index: String) -> Self {
        ServeConfig {
            share,
            index,
            listen: DEFAULT_LISTEN,
            advertise: None,
            nick: None,
            nick_fallback: false,
            cache_dir: None,
            rescan_interval: DEFAULT_RESCAN_INTERVAL,
            settle: scan::DEFAULT_SETTLE,
            upload_queue: transfer::upload_queue::QueueConfig::new(common::limits::UPLOAD_SLOTS),
            max_upload_connections: common::limits::UPLOAD_CONNECTIONS,
            max_upload_connections_per_ip: common::limits::UPLOAD_CONNECTIONS_PER_SOURCE,
            backoff_min: crate::registrar::DEFAULT_BACKOFF_MIN,
            backoff_max: crate::registrar::DEFAULT_BACKOFF_MAX,
            inbox_capacity: 100,
            message_burst: 5,
            message_refill: Duration::from_secs(1),
            p2p: None,
            max_upload_rate: None,
            max_download_rate: None,
            fetch: Vec::new(),
            api: None,
            max_active_downloads: crate::daemon::DEFAULT_MAX_ACTIVE,
            relay: None,
            stats_log: None,
        }
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot share {path} (does the folder exist?)")]
    Share {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a folder")]
    NotAFolder(PathBuf),
    #[error("cannot listen on {addr} (is another peer running there? pick another address with --listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("the index refused this peer: {0}")]
    Refused(String),
    #[error("{reason} (pick another nickname with --nick or PEER_NICK)")]
    BadNick {
        nick: String,
        reason: common::im::NickError,
    },
    #[error("{0} (check --advertise or PEER_ADVERTISE)")]
    BadAdvertise(crate::addr::AddrError),
    #[error(transparent)]
    Api(#[from] crate::api::ApiStartError),
    #[error("cannot open the download list in {path}: {reason} (is another `peer serve` sharing this folder?)")]
    DownloadStore { path: PathBuf, reason: String },
    #[error("{0} (check --stats-log)")]
    StatsLog(#[from] crate::stats_log::StatsLogError),
}

/// A running peer daemon. Its state is private (read it through the
/// accessors); every task it started stops when it is dropped.
pub struct Daemon {
    listen_addr: SocketAddr,
    library: Library,
    uploads: Arc<UploadStats>,
    inbox: Inbox,
    registration: watch::Receiver<RegistrationState>,
    overlay: Option<crate::overlay::Overlay>,
    relay: Option<Arc<transfer::relay::Relay>>,
    upload_limit: Option<Arc<RateLimiter>>,
    upload_queue: transfer::upload_queue::UploadQueue,
    download_limit: Option<Arc<RateLimiter>>,
    index: String,
    api_addr: Option<SocketAddr>,
    downloads: Option<crate::daemon::DownloadManager>,
    metrics: Arc<crate::metrics::PeerMetrics>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// No task outlives a dropped daemon.
    _stop_on_drop: tokio_util::sync::DropGuard,
}

impl Daemon {
    /// The relay this daemon runs for others (`ServeConfig::relay`).
    pub fn relay(&self) -> Option<&Arc<transfer::relay::Relay>> {
        self.relay.as_ref()
    }

    /// Where the chunk server actually listens (useful with port 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The files this daemon shares.
    pub fn library(&self) -> &Library {
        &self.library
    }

    /// Counters of the chunks and bytes this daemon uploaded.
    pub fn uploads(&self) -> &Arc<UploadStats> {
        &self.uploads
    }

    /// Direct messages received.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Where registration at the index stands (clone it to wait for a change).
    pub fn registration(&self) -> &watch::Receiver<RegistrationState> {
        &self.registration
    }

    /// The overlay node, in pure peer-to-peer mode.
    pub fn overlay(&self) -> Option<&crate::overlay::Overlay> {
        self.overlay.as_ref()
    }

    /// Shared by every upload connection, when uploads are capped.
    pub fn upload_limit(&self) -> Option<&Arc<RateLimiter>> {
        self.upload_limit.as_ref()
    }

    /// Upload slots and the queue of requesters waiting for one (`peer uploads`).
    pub fn upload_queue(&self) -> &transfer::upload_queue::UploadQueue {
        &self.upload_queue
    }

    /// Shared by every download this daemon does, when downloads are capped.
    pub fn download_limit(&self) -> Option<&Arc<RateLimiter>> {
        self.download_limit.as_ref()
    }

    /// The index server this daemon registers with.
    pub fn index(&self) -> &str {
        &self.index
    }

    /// Where the HTTP/JSON API listens, when it is on.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// The downloads this daemon owns (with the API).
    pub fn downloads(&self) -> Option<&crate::daemon::DownloadManager> {
        self.downloads.as_ref()
    }

    /// Prometheus metrics (`GET /metrics` on the API); its engine counters
    /// go into every download this daemon does.
    pub fn metrics(&self) -> &Arc<crate::metrics::PeerMetrics> {
        &self.metrics
    }

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

    /// The tracker of every task this daemon started: empty once it has
    /// stopped (after [`Daemon::wait`], or soon after a drop).
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
    // Our own token: cancelled with the caller's, and when the daemon is dropped.
    let shutdown = shutdown.child_token();
    let stop_on_drop = shutdown.clone().drop_guard();
    // What the index would refuse for good is refused here, before anything starts.
    if let Some(nick) = &config.nick {
        common::im::validate_nick(nick).map_err(|reason| ServeError::BadNick {
            nick: nick.clone(),
            reason,
        })?;
    }
    if let Some(advertise) = &config.advertise {
        crate::addr::parse_host_port(advertise, 1).map_err(ServeError::BadAdvertise)?;
    }
    let root = std::fs::canonicalize(&config.share).map_err(|source| ServeError::Share {
        path: config.share.clone(),
        source,
    })?;
    if !root.is_dir() {
        return Err(ServeError::NotAFolder(config.share.clone()));
    }
    // A refused API config (non-loopback without a token) stops us before anything starts.
    let api = match &config.api {
        Some(api) => Some(crate::api::bind(api).await?),
        None => None,
    };
    let listener =
        transfer::net::bind_listener(config.listen).map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let listen_addr = listener
        .local_addr()
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    // `--advertise HOST` alone: the port we listen on.
    let advertise = config
        .advertise
        .as_deref()
        .map(|a| crate::addr::with_default_port(a, listen_addr.port()));

    let library = Library::new(root.clone());
    let cache_dir = config
        .cache_dir
        .clone()
        .unwrap_or_else(|| root.join(".p2pshare"));
    let settle = config.settle;
    let (cache, entries) = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || {
            let mut cache = HashCache::load(Some(&cache_dir), &root).with_settle(settle);
            let entries = scan::scan(&root, &mut cache);
            (cache, entries)
        })
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))?
    };
    let inbox_config = InboxConfig {
        capacity: config.inbox_capacity,
        burst: config.message_burst,
        refill: config.message_refill,
        file: Some(inbox::inbox_file_in(&root)),
        sender_check: Some(sender_check(config.index.clone())),
    };
    let inbox = tokio::task::spawn_blocking(move || Inbox::open(inbox_config))
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    // Files still being written are shared once they settle.
    info!(folder = %root.display(), files = entries.len(), settling = cache.pending(), addr = %listen_addr, nick = config.nick.as_deref().unwrap_or("-"), "sharing");
    library.set_shared(entries);

    let tracker = TaskTracker::new();
    let uploads = Arc::new(UploadStats::default());
    let upload_limit = config
        .max_upload_rate
        .map(|r| Arc::new(RateLimiter::new(r)));
    let download_limit = config
        .max_download_rate
        .map(|r| Arc::new(RateLimiter::new(r)));
    let overlay = config.p2p.clone().map(|p2p| {
        crate::overlay::Overlay::start(
            p2p,
            library.clone(),
            listen_addr,
            advertise.clone(),
            tracker.clone(),
            shutdown.clone(),
        )
    });
    // Relaying for others: hybrid mode only (the index arranges each).
    let relay = config
        .relay
        .filter(|_| config.p2p.is_none())
        .map(|c| Arc::new(transfer::relay::Relay::new(c)));
    // One port for everything: chunks, the overlay in p2p mode, relays.
    let others =
        match (overlay.clone(), relay.clone()) {
            (Some(o), _) => Some(Arc::new(o) as Arc<dyn chunk_server::ProtocolHandler>),
            (None, Some(r)) => Some(Arc::new(transfer::relay::RelayHandler(r))
                as Arc<dyn chunk_server::ProtocolHandler>),
            (None, None) => None,
        };
    let upload_queue = transfer::upload_queue::UploadQueue::new(config.upload_queue.clone());
    let login_nonce = common::reach::LoginNonce::default();
    let chunk_config = chunk_server::ChunkServerConfig {
        login_nonce: Some(login_nonce.clone()),
        max_uploads: config.upload_queue.slots,
        queue: Some(upload_queue.clone()),
        max_connections: config.max_upload_connections,
        max_connections_per_ip: config.max_upload_connections_per_ip,
        stats: uploads.clone(),
        inbox: Some(inbox.clone()),
        others,
        upload_limit: upload_limit.clone(),
        ..chunk_server::ChunkServerConfig::new(library.clone())
    };
    tracker.spawn(chunk_server::serve_with(
        listener,
        chunk_config,
        tracker.clone(),
        shutdown.clone(),
    ));
    if let Some(stats) = &config.stats_log {
        let file = crate::stats_log::open(stats)?;
        tracker.spawn(crate::stats_log::run(
            stats.clone(),
            file,
            crate::stats_log::Sources {
                library: library.clone(),
                uploads: uploads.clone(),
                upload_limit: upload_limit.clone(),
                overlay: overlay.as_ref().map(|o| o.counters()),
            },
            shutdown.clone(),
        ));
    }
    tracker.spawn(rescan_loop(
        library.clone(),
        cache,
        config.rescan_interval,
        shutdown.clone(),
    ));

    let (state_tx, state_rx) = watch::channel(RegistrationState::Connecting);
    let registrar_config = RegistrarConfig {
        index: config.index.clone(),
        login_nonce,
        login: Login {
            listen_port: listen_addr.port(),
            advertise: advertise.or_else(|| loopback_advertise(listen_addr)),
            nick: config.nick.clone(),
        },
        backoff_min: config.backoff_min,
        backoff_max: config.backoff_max,
        nick_fallback: config.nick_fallback,
        listen: Some(listen_addr),
        relay: relay.clone(),
        callbacks: Some(crate::callback::CallbackServer {
            library: library.clone(),
            stats: uploads.clone(),
            upload_limit: upload_limit.clone(),
            rules: transfer::chunk_server::SessionRules {
                queue: upload_queue.clone(),
                login_nonce: None,
                ..transfer::chunk_server::SessionRules::new(config.upload_queue.slots)
            },
        }),
    };
    if overlay.is_none() {
        tracker.spawn(warn_if_unreachable(
            listen_addr,
            state_rx.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(registrar::run(
            registrar_config,
            library.clone(),
            state_tx,
            shutdown.clone(),
        ));
    }

    let metrics = Arc::new(crate::metrics::PeerMetrics::new());
    metrics.watch_daemon(&library, &uploads, &inbox, &state_rx);
    metrics.watch_upload_queue(&upload_queue);
    let api_addr = api.as_ref().map(|a| a.addr);
    let downloads = match &api {
        None => None,
        Some(_) => {
            let state_dir = crate::api::state_dir(&root);
            let fetcher =
                crate::swarm::daemon_fetcher(overlay.is_some(), listen_addr, &config.index);
            let manager_config = crate::daemon::ManagerConfig {
                max_active: config.max_active_downloads.max(1),
                default_out: root.clone(),
                state_dir: state_dir.clone(),
                // Swarming settings once a download has several sources.
                engine: crate::download::EngineConfig {
                    download_limit: download_limit.clone(),
                    metrics: Some(metrics.engine.clone()),
                    ..crate::swarm::daemon_engine()
                },
            };
            let manager = crate::daemon::DownloadManager::start(
                manager_config,
                fetcher,
                Some(crate::pipeline::Swarming {
                    library: library.clone(),
                    own: crate::swarm::own_addrs(listen_addr, state_rx.clone()),
                }),
                tracker.clone(),
                &shutdown,
            )
            .map_err(|e| ServeError::DownloadStore {
                path: crate::daemon::store_path(&state_dir),
                reason: e.to_string(),
            })?;
            metrics.watch_downloads(&manager);
            Some(manager)
        }
    };
    if let Some(api) = api {
        let state = crate::api::ApiState {
            info: Arc::new(crate::api::DaemonInfo {
                nick: config.nick.clone(),
                share: root.clone(),
                index: config.index.clone(),
                mode: if overlay.is_some() { "p2p" } else { "hybrid" },
                listen: listen_addr,
                started: std::time::Instant::now(),
            }),
            api_addr: api.addr,
            library: library.clone(),
            uploads: uploads.clone(),
            inbox: inbox.clone(),
            registration: state_rx.clone(),
            overlay: overlay.clone(),
            upload_queue: upload_queue.clone(),
            downloads: downloads.clone(),
            shutdown: shutdown.clone(),
            metrics: metrics.clone(),
            sent: Default::default(),
        };
        crate::api::spawn(
            api,
            state,
            &crate::api::state_dir(&root),
            &tracker,
            shutdown.clone(),
        );
    }

    Ok(Daemon {
        listen_addr,
        library,
        uploads,
        inbox,
        registration: state_rx,
        overlay,
        relay,
        upload_limit,
        upload_queue,
        download_limit,
        index: config.index.clone(),
        api_addr,
        downloads,
        metrics,
        tracker,
        shutdown,
        _stop_on_drop: stop_on_drop,
    })
}

/// Runs a peer daemon until `shutdown` is cancelled, or until the index
/// refuses it for good (a nickname clash at start), which is an error.
pub async fn run(config: ServeConfig, shutdown: CancellationToken) -> Result<(), ServeError> {
    let daemon_shutdown = shutdown.child_token();
    let fetch = config.fetch.clone();
    let daemon = start(config, daemon_shutdown.clone()).await?;
    let mut registration = daemon.registration().clone();
    let watch_refusal = async {
        tokio::select! {
            _ = shutdown.cancelled() => None,
            state = registration.wait_for(|s| matches!(s, RegistrationState::Refused(_))) => {
                match state.as_deref() {
                    Ok(RegistrationState::Refused(message)) => Some(message.clone()),
                    // No registrar (p2p mode): nothing can be refused; run until shutdown.
                    _ => {
                        shutdown.cancelled().await;
                        None
                    }
                }
            }
        }
    };
    // Fetching ends before the daemon does: then it waits with it.
    let fetching = async {
        crate::swarm::fetch_targets_into_share(&daemon, &fetch).await;
        std::future::pending::<std::convert::Infallible>().await
    };
    let refused = tokio::select! {
        r = watch_refusal => r,
        never = fetching => match never {},
    };
    if refused.is_some() {
        daemon_shutdown.cancel();
    }
    daemon.wait().await;
    match refused {
        Some(message) => Err(ServeError::Refused(message)),
        None => Ok(()),
    }
}

/// The address to advertise for a listener bound to one loopback address:
/// that address, since it is the only one the peer is reachable at. (The
/// index would otherwise pair the port with the connection's source
/// address, which can be the other family's loopback: `127.0.0.1:Q`
/// connecting to an index at `[::1]:P` would be published as `[::1]:Q`.)
fn loopback_advertise(listen: SocketAddr) -> Option<String> {
    listen.ip().is_loopback().then(|| listen.to_string())
}

/// Why nobody can reach this peer at the address the index publishes, if
/// that is visible from here: a listener bound to one family (or one
/// address) and a published address of the other family (or another
/// loopback address). A dual-stack `[::]` listener takes both families.
pub fn unreachable_at(listen: SocketAddr, published: &str) -> Option<String> {
    let published_ip = published.parse::<SocketAddr>().ok()?.ip().to_canonical();
    let listen_ip = listen.ip();
    let dual_stack = listen_ip == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    if dual_stack {
        return None;
    }
    if listen_ip.is_ipv4() != published_ip.is_ipv4() {
        let (ours, theirs) = match listen_ip.is_ipv4() {
            true => ("IPv4", "IPv6"),
            false => ("IPv6", "IPv4"),
        };
        return Some(format!(
            "the index publishes this peer as {published}, an {theirs} address, but it listens on {listen}, {ours} only: downloads from it will fail (listen on [::]:{port} for both, or set --advertise HOST:{port})",
            port = listen.port()
        ));
    }
    if !listen_ip.is_unspecified() && listen_ip.is_loopback() && published_ip != listen_ip {
        return Some(format!(
            "the index publishes this peer as {published}, but it listens on {listen} only: downloads from it will fail (set --advertise {listen})"
        ));
    }
    None
}

/// Says once, at the first registration, when the published address is
/// one this peer does not listen on.
async fn warn_if_unreachable(
    listen: SocketAddr,
    mut registration: watch::Receiver<RegistrationState>,
    shutdown: CancellationToken,
) {
    let published = tokio::select! {
        _ = shutdown.cancelled() => return,
        state = registration.wait_for(|s| matches!(s, RegistrationState::Registered { .. })) => match state.as_deref() {
            // A firewalled peer has no published address to check.
            Ok(RegistrationState::Registered { reach: common::index_proto::Reach::Firewalled, .. }) => return,
            Ok(RegistrationState::Registered { addr, .. }) => addr.clone(),
            _ => return,
        },
    };
    if let Some(why) = unreachable_at(listen, &published) {
        warn!("{why}");
    }
}

async fn rescan_loop(
    library: Library,
    mut cache: HashCache,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut full_scan_at = tokio::time::Instant::now() + interval;
    loop {
        // Sooner when a file waits to become stable; later after running
        // out of file descriptors (backoff).
        let now = tokio::time::Instant::now();
        let wait = cache.next_scan_in(full_scan_at.saturating_duration_since(now));
        let requested = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => false,
            _ = library.rescan_requested() => true,
        };
        // Woken only because a file waiting to settle may be stable: look at
        // those files alone (one stat each) and walk the folder only if one
        // is, so a file written for hours does not make us walk every few
        // seconds.
        let early =
            !requested && !cache.backing_off() && tokio::time::Instant::now() < full_scan_at;
        let root = library.root().to_path_buf();
        let lib = library.clone();
        let scanned = tokio::task::spawn_blocking(move || {
            scan::take_closed(&lib, &mut cache);
            if early && !cache.pending_settled(&root) {
                return (cache, None);
            }
            scan::check_reports(&lib, &mut cache);
            let entries = scan::scan(&root, &mut cache);
            (cache, Some(entries))
        })
        .await;
        match scanned {
            Ok((c, entries)) => {
                cache = c;
                if let Some(entries) = entries {
                    library.set_shared(entries);
                    full_scan_at = tokio::time::Instant::now() + interval;
                }
            }
            Err(e) => {
                warn!(error = %e, "folder scan failed; sharing stopped updating");
                return;
            }
        }
    }
}

/// Whether a message's sender nickname belongs to the key its connection
/// proved: the index lists the nickname's online session under that key.
/// `None` when the index could not be asked.
fn sender_check(index: String) -> crate::inbox::SenderCheck {
    std::sync::Arc::new(move |nick: String, id: common::identity::PeerId| {
        let index = index.clone();
        Box::pin(async move {
            let mut client = crate::index_client::IndexClient::connect(&index)
                .await
                .ok()?;
            match client.whois(&nick).await {
                Ok(Some(summary)) => Some(summary.peer_id == Some(id)),
                Ok(None) => Some(false),
                Err(_) => None,
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_address_of_a_family_not_listened_on_is_noticed() {
        let v4: SocketAddr = "10.0.0.5:6699".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::5]:6699".parse().unwrap();
        let dual: SocketAddr = "[::]:6699".parse().unwrap();
        let any4: SocketAddr = "0.0.0.0:6699".parse().unwrap();
        assert!(unreachable_at(v4, "[2001:db8::5]:6699")
            .unwrap()
            .contains("IPv4 only"));
        assert!(unreachable_at(any4, "[::1]:6699").is_some());
        assert!(unreachable_at(v6, "10.0.0.5:6699")
            .unwrap()
            .contains("IPv6 only"));
        assert!(unreachable_at(dual, "10.0.0.5:6699").is_none());
        assert!(unreachable_at(dual, "[2001:db8::5]:6699").is_none());
        assert!(unreachable_at(any4, "10.0.0.5:6699").is_none());
        assert!(
            unreachable_at(v4, "host.example:6699").is_none(),
            "names are not judged"
        );
        let lo: SocketAddr = "127.0.0.1:6699".parse().unwrap();
        assert!(unreachable_at(lo, "127.0.0.2:6699").is_some());
        assert_eq!(loopback_advertise(lo), Some("127.0.0.1:6699".into()));
        assert_eq!(loopback_advertise(dual), None);
    }
}
