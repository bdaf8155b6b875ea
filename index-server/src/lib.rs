//! The p2pshare index server: which peer offers which file (the Napster model).
//!
//! Peers log in, register their whole share list, heartbeat to keep their
//! lease, and send additions and removals; anyone can search by keywords,
//! look up the live sources of a file id, browse one peer's list and read
//! counts. File data never passes through here.
//!
//! # Layout
//! - [`state`]: the index (sessions, files, word index, leases) behind a
//!   cloneable handle. Pure data structure, unit-tested with paused time.
//! - [`handler`]: one request in, one response out; no sockets.
//! - [`server`]: accept loop, per-connection tasks, connection cap, lease
//!   reaper, graceful shutdown.
//! - [`store`]: the optional client-server store (`--store DIR`): files held
//!   and served by the server itself, uploads with `peer put`, on the same
//!   port as the index (the hello's protocol byte tells them apart).
//!
//! - [`http`]: the optional read-only network page (`--http ADDR`): the
//!   network live, as HTML and JSON, and `/metrics` ([`metrics`]).
//!
//! Embed with [`Server::bind`] + [`Server::run`], or [`run`].

pub mod dialback_budget;
pub mod handler;
pub mod http;
mod lazy_buf;
pub mod metrics;
pub mod possession;
pub mod relay;
pub mod server;
pub mod state;
pub mod store;

use std::net::SocketAddr;
use std::time::Duration;

pub use server::Server;
pub use state::Index;
use tokio_util::sync::CancellationToken;

/// Settings of an index server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// A peer that sends no heartbeat for this long is dropped from every answer.
    pub lease_ttl: Duration,
    /// Most simultaneous connections; further ones are told the server is busy.
    pub max_connections: usize,
    /// Most simultaneous connections from one source address (IPv4, IPv6
    /// /64); further ones are told the server is busy.
    pub max_connections_per_ip: usize,
    /// Deadline for a new connection's first request (after the hello).
    pub first_request_timeout: Duration,
    /// How long a connection that is not a sharing peer may stay idle.
    pub client_idle: Duration,
    /// Deadline for a new connection's hello.
    pub hello_timeout: Duration,
    /// Deadline for the rest of a frame once its first byte arrived (slowloris).
    pub frame_timeout: Duration,
    /// Requests per second one connection may make; a faster client is
    /// slowed down (not cut off), so one flood cannot starve the others.
    pub max_requests_per_sec: u32,
    /// With a store, the server also holds and serves files (client-server mode).
    pub store: Option<store::StoreConfig>,
    /// Caps on sessions and the files they list.
    pub limits: state::Limits,
    /// Where to serve the read-only network page, its JSON and `/metrics`
    /// ([`http`]); none by default.
    pub http: Option<SocketAddr>,
    /// How long the index waits for one reachability dial-back (connect,
    /// hello and proof) before it counts the address as unproven
    /// (`common::reach`): a router that drops unasked connections makes
    /// every dial-back to a peer behind it wait this long.
    pub dialback_timeout: Duration,
    /// Dial-backs to hosts other than its own that one requester (an IPv4
    /// address or an IPv6 /64) may cause per minute ([`dialback_budget`]):
    /// past it a login's addresses on other hosts are left unproven at
    /// once, saying why, so that nobody can make the index connect to a
    /// third party's host over and over.
    pub max_dialbacks_per_minute: u32,
    /// Refuse to publish the address of a peer that logs in with the old
    /// `Login` (no reachability proof): such a peer is listed as
    /// firewalled. Off by default so that peers from before the check keep
    /// working; turn it on (`index-server --require-proof`) where no old
    /// peers are left, so that nobody can point downloaders at a third
    /// party's host.
    pub require_proof: bool,
    /// Callback requests (`IndexRequest::Callback`) one requester (an IPv4
    /// address or an IPv6 /64) may make per minute; past it they are
    /// refused (`TooMany`, saying why), so that nobody can make firewalled
    /// peers connect out over and over.
    pub max_callbacks_per_minute: u32,
    /// The relay through the index for peers that cannot reach each other
    /// otherwise ([`relay`]), with its caps; `None`: no relay
    /// (`index-server --relay false`).
    pub relay: Option<relay::RelayConfig>,
    /// Coordinate TCP hole punching (`IndexRequest::Punch`). On by
    /// default; off (`--hole-punching false`) where every peer sits behind
    /// NATs that never let it through, to spare downloaders the attempt.
    pub hole_punching: bool,
    /// Proof-of-possession checks of directly reachable peers' registrations
    /// ([`possession`]); `None`: off. Off in `Config::default()`, for the
    /// programs that embed the index (tests, the lab: a check is an upload
    /// their measurements do not expect); the `index-server` binary turns
    /// it on with [`possession::PossessionConfig::default`]
    /// (`--possession-checks`, default 10m; `off` to turn it off).
    pub possession: Option<possession::PossessionConfig>,
    /// How connections are secured (keys, network key, or clear text);
    /// `None`: the process's (`common::secure::Security::process`, which
    /// the binary installs from --key, --network-key and --insecure).
    pub security: Option<common::secure::Security>,
}

/// Default of [`Config::listen`] (and of `index-server --listen`): both
/// IPv6 and IPv4 (see `transfer::net::bind_listener`), Napster's port 8888.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V6(std::net::SocketAddrV6::new(
    std::net::Ipv6Addr::UNSPECIFIED,
    8888,
    0,
    0,
));
/// Default of [`Config::lease_ttl`] (`--lease-ttl`).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
/// Default of [`Config::max_connections`] (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default of [`Config::max_connections_per_ip`] (`--max-connections-per-ip`).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Default of [`Config::client_idle`] (`--client-idle`).
pub const DEFAULT_CLIENT_IDLE: Duration = Duration::from_secs(300);
/// Default of [`Config::max_requests_per_sec`] (`--max-requests-per-sec`).
pub const DEFAULT_MAX_REQUESTS_PER_SEC: u32 = 200_000;
/// Default of [`Config::dialback_timeout`] (`--dialback-timeout`).
pub const DEFAULT_DIALBACK_TIMEOUT: Duration = Duration::from_secs(3);
/// Default of [`Config::max_dialbacks_per_minute`]
/// (`--max-dialbacks-per-minute`): a peer restarting every few seconds
/// with an address and an `--advertise` stays under it.
pub const DEFAULT_MAX_DIALBACKS_PER_MINUTE: u32 = 30;
/// Default of [`Config::max_callbacks_per_minute`]
/// (`--max-callbacks-per-minute`): a downloader asks once per firewalled
/// source and again only when that source's connection ended.
pub const DEFAULT_MAX_CALLBACKS_PER_MINUTE: u32 = 120;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN,
            lease_ttl: DEFAULT_LEASE_TTL,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            first_request_timeout: common::limits::FIRST_REQUEST_TIMEOUT,
            client_idle: DEFAULT_CLIENT_IDLE,
            hello_timeout: common::limits::HELLO_TIMEOUT,
            frame_timeout: common::limits::FRAME_TIMEOUT,
            max_requests_per_sec: DEFAULT_MAX_REQUESTS_PER_SEC,
            store: None,
            limits: state::Limits::default(),
            http: None,
            dialback_timeout: DEFAULT_DIALBACK_TIMEOUT,
            max_dialbacks_per_minute: DEFAULT_MAX_DIALBACKS_PER_MINUTE,
            require_proof: false,
            max_callbacks_per_minute: DEFAULT_MAX_CALLBACKS_PER_MINUTE,
            relay: Some(relay::RelayConfig::default()),
            hole_punching: true,
            possession: None,
            security: None,
        }
    }
}

impl Config {
    /// The security this server's connections run with:
    /// [`Config::security`], else the process's.
    pub fn security(&self) -> common::secure::Security {
        self.security
            .clone()
            .unwrap_or_else(common::secure::Security::process)
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} (is another index server running there? pick another address with --listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} for the network page (is something else there? pick another address with --http)")]
    BindHttp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("I/O error: {0}")]
    Io(std::io::Error),
}

// The cause is in the message, so it is a plain field, not a `source`
// (an error chain would say it twice; see `common::report`).
impl From<std::io::Error> for ServerError {
    fn from(e: std::io::Error) -> Self {
        ServerError::Io(e)
    }
}

/// Binds and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServerError> {
    Server::bind(config).await?.run(shutdown).await
}
