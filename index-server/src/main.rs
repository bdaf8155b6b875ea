use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::Parser;
use common::units::{parse_duration_in, parse_size_in, UnitError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// jemalloc rather than glibc's malloc: see the `jemalloc` feature in
/// Cargo.toml.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A duration from `min` to `max`, refused at parse time otherwise.
fn duration(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, UnitError> + Clone + Send + Sync + 'static {
    move |s| parse_duration_in(s, min, max)
}

/// A library default duration as clap shows and parses it (`60s`): the
/// default is written once, in the library.
fn default_duration(d: Duration) -> String {
    common::units::human_duration(d)
}

/// A library default size as clap shows and parses it (`2GiB`).
fn default_size(bytes: u64) -> String {
    common::units::human_bytes(bytes)
}

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);
const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3600);

/// What `--help` says about how the server ends.
const EXIT_STATUS_HELP: &str = "Exit status: 0 stopped by SIGINT or SIGTERM; \
1 could not start or failed (the message says what to do); \
2 usage error (bad flag or value, checked before anything runs). \
Durations and sizes take units in any case (30s, 2m, 500MiB, 10gb).";

/// Central index of a p2pshare network: records which peer offers which
/// file and answers searches. File data goes directly between peers.
#[derive(Parser, Debug)]
#[command(name = "index-server", version, about, long_about = None, after_help = EXIT_STATUS_HELP)]
struct Cli {
    /// Address to listen on (Napster's port by default). `[::]` takes both
    /// IPv6 and IPv4 (dual-stack), or IPv4 only where IPv6 is unavailable.
    #[arg(long, env = "INDEX_LISTEN", default_value_t = index_server::DEFAULT_LISTEN)]
    listen: SocketAddr,

    /// Lease of a peer, 1s to 1d: one that sends no heartbeat for this long
    /// is dropped from every answer (e.g. 30s, 2m). Peers heartbeat every third of it.
    #[arg(long, env = "INDEX_LEASE_TTL", default_value = default_duration(index_server::DEFAULT_LEASE_TTL),
          value_parser = duration(SEC, DAY))]
    lease_ttl: Duration,

    /// Most simultaneous connections (1 to 1000000); further ones are told the server is busy.
    #[arg(long, env = "INDEX_MAX_CONNECTIONS", default_value_t = index_server::DEFAULT_MAX_CONNECTIONS,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    max_connections: usize,

    /// Most simultaneous connections from one address (IPv4, or IPv6 /64),
    /// so that one host cannot take every place (1 to 1000000).
    #[arg(long, env = "INDEX_MAX_CONNECTIONS_PER_IP", default_value_t = index_server::DEFAULT_MAX_CONNECTIONS_PER_IP,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    max_connections_per_ip: usize,

    /// How long a non-sharing client (search, get) may keep an idle connection (1s to 1d).
    #[arg(long, env = "INDEX_CLIENT_IDLE", default_value = default_duration(index_server::DEFAULT_CLIENT_IDLE),
          value_parser = duration(SEC, DAY))]
    client_idle: Duration,

    /// Deadline for the rest of a message once its first byte arrived
    /// (100ms to 1h); a client dripping bytes slower than this is cut off.
    #[arg(long, env = "INDEX_FRAME_TIMEOUT", default_value = default_duration(common::limits::FRAME_TIMEOUT),
          value_parser = duration(100 * MS, HOUR))]
    frame_timeout: Duration,

    /// Requests per second one connection may make (at least 1); faster clients are slowed down.
    #[arg(long, env = "INDEX_MAX_REQUESTS_PER_SEC", default_value_t = index_server::DEFAULT_MAX_REQUESTS_PER_SEC,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_requests_per_sec: u32,

    /// Most files one peer may list; further ones are refused with a clear error.
    #[arg(long, env = "INDEX_MAX_FILES_PER_SESSION", default_value_t = index_server::state::DEFAULT_MAX_FILES_PER_SESSION as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_files_per_session: u64,

    /// Most peers logged in at once from one source address (an IPv4
    /// address or an IPv6 /64).
    #[arg(long, env = "INDEX_MAX_SESSIONS_PER_ADDRESS", default_value_t = index_server::state::DEFAULT_MAX_SESSIONS_PER_SOURCE as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_sessions_per_address: u64,

    /// Memory the listings may take, estimated as 128 bytes plus the name
    /// per listed file (e.g. 512MiB, 4GiB); registrations beyond it are
    /// refused with a clear error instead of growing the server.
    #[arg(long, env = "INDEX_MEMORY_BUDGET", default_value = default_size(index_server::state::DEFAULT_MEMORY_BUDGET), value_parser = |s: &str| parse_size_in(s, 1, u64::MAX))]
    memory_budget: u64,

    /// Let peers publish ports below 1024 (refused by default: a peer never
    /// needs one, and `HOST:22` only points downloaders at another service).
    #[arg(long, env = "INDEX_ALLOW_PRIVILEGED_PORTS", value_parser = clap::builder::BoolishValueParser::new())]
    allow_privileged_ports: bool,
    /// How long a nickname stays reserved for the node key that registered
    /// it after that node was last online: nobody else can take it
    /// meanwhile, and the node itself replaces its previous session at once
    /// when it logs in again (0s: no reservation; at most 365d).
    #[arg(long, env = "INDEX_NICK_RESERVATION",
          default_value = default_duration(index_server::state::DEFAULT_NICK_RESERVATION),
          value_parser = duration(Duration::ZERO, 365 * 24 * 3600 * SEC))]
    nick_reservation: Duration,
    /// Also hold and serve files from this folder (client-server mode): it is
    /// listed in search results as a source like any peer, serves downloads
    /// on the index's own port, and accepts uploads from `peer put`.
    #[arg(long, env = "INDEX_STORE")]
    store: Option<std::path::PathBuf>,

    /// Most bytes the store holds, counting uploads in progress (e.g. 500MiB,
    /// 10GiB; at least 1 byte); an upload that would exceed it is refused with a clear message.
    #[arg(long, env = "INDEX_STORE_QUOTA", default_value = default_size(index_server::store::DEFAULT_QUOTA), value_parser = |s: &str| parse_size_in(s, 1, u64::MAX))]
    store_quota: u64,

    /// How long the part file of an abandoned upload is kept for a resume
    /// (it counts against the quota meanwhile), e.g. 30m, 1h, 24h (1s to 30d).
    #[arg(long, env = "INDEX_STORE_PART_EXPIRY", default_value = default_duration(index_server::store::DEFAULT_PART_EXPIRY),
          value_parser = duration(SEC, 30 * DAY))]
    store_part_expiry: Duration,

    /// Most uploads one client address may have unfinished at once (in
    /// progress, or interrupted and not yet expired).
    #[arg(long, env = "INDEX_STORE_MAX_PENDING_PER_CLIENT", default_value_t = index_server::store::DEFAULT_MAX_PENDING_PER_CLIENT as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    store_max_pending_per_client: u64,

    /// HOST:PORT to list the store under (HOST alone: the port we listen
    /// on); by default each client sees the address it reached this server at.
    #[arg(long, env = "INDEX_STORE_ADVERTISE", value_name = "HOST:PORT", value_parser = store_advertise)]
    store_advertise: Option<String>,

    /// How long a file copied into the store folder by hand must stay
    /// unchanged before it is hashed and listed (0 to 1h; 0: at once).
    #[arg(long, env = "INDEX_STORE_SETTLE", default_value = default_duration(transfer::scan::DEFAULT_SETTLE),
          value_parser = duration(Duration::ZERO, HOUR))]
    store_settle: Duration,

    /// Cap on the total rate the store serves downloads at, e.g. 10MB/s or
    /// 500KiB/s (client-server mode's server upload rate). Default: none.
    #[arg(long, env = "INDEX_MAX_UPLOAD_RATE", value_parser = transfer::rate::parse_rate)]
    max_upload_rate: Option<u64>,

    /// Also serve a read-only web page with the network live (peers,
    /// files, requests per second, a chart) at http://ADDR/, the same as
    /// JSON at /api/network and Prometheus metrics at /metrics, e.g.
    /// 127.0.0.1:8080. Off by default; it shows only counts, never files.
    #[arg(long, env = "INDEX_HTTP", value_name = "ADDR")]
    http: Option<SocketAddr>,

    /// Publish only addresses that prove themselves: a peer that logs in
    /// the old way (builds from before the reachability check, which
    /// cannot answer the dial-back) is listed as firewalled instead of at
    /// the address it claims. Recommended once every peer is up to date.
    #[arg(long, env = "INDEX_REQUIRE_PROOF")]
    require_proof: bool,

    /// How long one reachability dial-back (connect, hello, proof) may take
    /// before the address counts as unproven, e.g. 3s (100ms to 60s).
    #[arg(long, env = "INDEX_DIALBACK_TIMEOUT", default_value = default_duration(index_server::DEFAULT_DIALBACK_TIMEOUT),
          value_parser = duration(Duration::from_millis(100), 60 * SEC))]
    dialback_timeout: Duration,

    /// Reachability dial-backs to hosts other than its own that one
    /// requester (an IPv4 address or an IPv6 /64) may cause per minute;
    /// past it a login's addresses on other hosts are left unproven and it
    /// is told why. Bounds how often anyone can make the index connect to a
    /// host they name with --advertise.
    #[arg(long, env = "INDEX_MAX_DIALBACKS_PER_MINUTE",
          default_value_t = index_server::DEFAULT_MAX_DIALBACKS_PER_MINUTE)]
    max_dialbacks_per_minute: u32,
    /// Callback requests (a downloader asking that a firewalled peer
    /// connect out to it) one requester (an IPv4 address or an IPv6 /64)
    /// may make per minute; past it they are refused, saying why.
    #[arg(long, env = "INDEX_MAX_CALLBACKS_PER_MINUTE",
          default_value_t = index_server::DEFAULT_MAX_CALLBACKS_PER_MINUTE)]
    max_callbacks_per_minute: u32,
    /// Relay bytes between logged-in peers that cannot connect to each
    /// other (both behind NATs or firewalls): opaque bytes, rate-capped,
    /// never stored. On by default; `--relay false` turns it off.
    #[arg(long, env = "INDEX_RELAY", default_value_t = true, action = clap::ArgAction::Set)]
    relay: bool,
    /// Cap on the rate of one relayed connection (both directions), e.g.
    /// 4MiB/s.
    #[arg(long, env = "INDEX_RELAY_RATE", value_parser = transfer::rate::parse_rate,
          default_value = "4MiB/s")]
    relay_rate: u64,
    /// Cap on the rate of all relayed connections together.
    #[arg(long, env = "INDEX_RELAY_TOTAL_RATE", value_parser = transfer::rate::parse_rate,
          default_value = "32MiB/s")]
    relay_total_rate: u64,
    /// Relays pending or running at once; more are refused.
    #[arg(long, env = "INDEX_RELAY_MAX_SESSIONS",
          default_value_t = index_server::relay::DEFAULT_RELAY_MAX_SESSIONS)]
    relay_max_sessions: usize,
    /// Coordinate TCP hole punching between peers behind NATs (home
    /// routers let it through, strict NATs do not). On by default.
    #[arg(long, env = "INDEX_HOLE_PUNCHING", default_value_t = true, action = clap::ArgAction::Set)]
    hole_punching: bool,
    /// Proof of possession: check each directly reachable peer at most once
    /// per this interval (a random registered file: its hash list against
    /// the id, one random chunk against its hash, as a downloader would); a
    /// failed check drops that listing, 3 failures end the session. `off`
    /// turns the checks off (1s to 30d, or off).
    #[arg(long, env = "INDEX_POSSESSION_CHECKS",
          default_value = default_duration(index_server::possession::DEFAULT_INTERVAL),
          value_parser = possession_interval)]
    possession_checks: EveryOrOff,
    /// Most proof-of-possession checks per second over all peers (1 to
    /// 10000); at most 8 run at once.
    #[arg(long, env = "INDEX_POSSESSION_CHECKS_PER_SECOND",
          default_value_t = index_server::possession::DEFAULT_PER_SECOND,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    possession_checks_per_second: u32,
    /// This index's identity key file (ed25519, mode 0600), created on first
    /// start. Default: STORE/.p2pshare/node.key with --store, else
    /// $XDG_STATE_HOME/p2pshare/index-server.key (~/.local/state/...).
    /// Peers pin the key on first use (or take `peer --index-key ID`).
    #[arg(long, env = "INDEX_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// Private network: a 32-byte pre-shared key (raw, or libp2p's
    /// swarm.key text) every node of the network holds; a node without it
    /// cannot complete a handshake with this index.
    #[arg(long, env = "INDEX_NETWORK_KEY", value_name = "FILE")]
    network_key: Option<PathBuf>,
    /// Clear text: no handshake, no encryption, no node ids (for a lab's
    /// comparison only). Peers must be started with --insecure too; any
    /// other pairing is refused with a message saying which side to change.
    #[arg(long, env = "INDEX_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    insecure: bool,
}

/// The default identity key file (see `Cli::key`); `None` when there is
/// no state folder to put it in (then the key lives for this run only).
fn default_key(store: Option<&std::path::Path>) -> Option<PathBuf> {
    if let Some(store) = store {
        return Some(store.join(".p2pshare").join("node.key"));
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(state.join("p2pshare").join("index-server.key"))
}

/// An interval, or `off` (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EveryOrOff(Option<Duration>);

/// `--possession-checks`: a duration from 1 s to 30 days, or `off`.
fn possession_interval(s: &str) -> Result<EveryOrOff, UnitError> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(EveryOrOff(None));
    }
    parse_duration_in(s, SEC, 30 * 24 * 3600 * SEC).map(|d| EveryOrOff(Some(d)))
}

/// Checks a `HOST:PORT` or `HOST` (kept as given: the port is added once
/// the listen port is known).
fn store_advertise(s: &str) -> Result<String, String> {
    let (host, port) = match s.trim().rsplit_once(':') {
        Some((h, p))
            if !h.ends_with(':') && !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()) =>
        {
            (h, Some(p))
        }
        _ => (s.trim(), None),
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0));
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c));
    if port_ok && host_ok {
        Ok(s.trim().to_string())
    } else {
        Err(format!(
            "address {s:?} not understood: use HOST:PORT or HOST, e.g. files.example.org:8888"
        ))
    }
}

fn main() {
    // Before the runtime starts its threads: an empty variable is unset.
    common::env_vars::unset_empty(&["INDEX_"]);
    async_main()
}

#[tokio::main]
async fn async_main() {
    let cli = Cli::parse();
    if let Err(e) = serve(cli).await {
        // Each cause once; a closed stderr is ignored.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "error: {}",
            common::report::error_chain(e.as_ref())
        );
        std::process::exit(1);
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // A closed stderr (the log reader went away) must not turn every
        // log line into a panic: the line is dropped instead.
        .log_internal_errors(false)
        .init();
    let key = match (&cli.key, cli.insecure) {
        (Some(k), _) => Some(k.clone()),
        (None, false) => default_key(cli.store.as_deref()),
        (None, true) => None,
    };
    let mut security =
        transfer::keyfile::security(cli.insecure, key.as_deref(), cli.network_key.as_deref());
    if let (Err(transfer::keyfile::KeyFileError::Create { path, error }), None) =
        (&security, &cli.key)
    {
        // The default place cannot be written (a read-only home): a key
        // for this run only, said loudly; --key makes it last.
        warn!(key = %path.display(), %error, "cannot create the default key file; using a key for this run only (choose a file with --key)");
        security = transfer::keyfile::security(false, None, cli.network_key.as_deref());
    }
    let security = security.map_err(|e| anyhow::anyhow!("{e}"))?;
    match security.peer_id() {
        Some(id) => {
            info!(peer_id = %id, key = ?key, network_key = security.has_network_key(), "index identity")
        }
        None => warn!("--insecure: connections are in clear text, peers' ids are not checked"),
    }
    if common::secure::Security::install(security).is_err() {
        anyhow::bail!("the connection security was set twice");
    }
    let config = index_server::Config {
        listen: cli.listen,
        lease_ttl: cli.lease_ttl,
        max_connections: cli.max_connections,
        max_connections_per_ip: cli.max_connections_per_ip,
        client_idle: cli.client_idle,
        frame_timeout: cli.frame_timeout,
        max_requests_per_sec: cli.max_requests_per_sec,
        limits: index_server::state::Limits {
            max_files_per_session: usize::try_from(cli.max_files_per_session).unwrap_or(usize::MAX),
            max_sessions_per_source: usize::try_from(cli.max_sessions_per_address)
                .unwrap_or(usize::MAX),
            memory_budget: cli.memory_budget,
            allow_privileged_ports: cli.allow_privileged_ports,
            nick_reservation: cli.nick_reservation,
        },
        store: cli.store.map(|dir| {
            let mut store = index_server::store::StoreConfig::new(dir);
            store.quota = cli.store_quota;
            store.advertise = cli.store_advertise.map(|a| {
                if a.parse::<SocketAddr>().is_ok()
                    || a.rsplit_once(':')
                        .is_some_and(|(h, p)| !h.contains(':') && p.parse::<u16>().is_ok())
                {
                    a
                } else {
                    format!("{a}:{}", cli.listen.port())
                }
            });
            store.settle = cli.store_settle;
            store.max_upload_rate = cli.max_upload_rate;
            store.part_expiry = cli.store_part_expiry;
            store.max_pending_per_client = cli.store_max_pending_per_client as usize;
            store
        }),
        http: cli.http,
        require_proof: cli.require_proof,
        dialback_timeout: cli.dialback_timeout,
        max_dialbacks_per_minute: cli.max_dialbacks_per_minute,
        max_callbacks_per_minute: cli.max_callbacks_per_minute,
        relay: cli.relay.then_some(index_server::relay::RelayConfig {
            session_rate: cli.relay_rate,
            total_rate: cli.relay_total_rate,
            max_sessions: cli.relay_max_sessions,
            ..Default::default()
        }),
        hole_punching: cli.hole_punching,
        possession: cli.possession_checks.0.map(|interval| {
            index_server::possession::PossessionConfig {
                interval,
                per_second: cli.possession_checks_per_second,
                ..Default::default()
            }
        }),
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    index_server::run(config, shutdown).await?;
    Ok(())
}

/// Cancels `shutdown` on SIGINT or SIGTERM (containers send SIGTERM).
fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
            _ = shutdown.cancelled() => {}
        }
        shutdown.cancel();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zero or nonsense is a usage error (exit status 2) that states the
    /// allowed range; units are case-insensitive.
    #[test]
    fn flags_are_checked_when_parsed() {
        for (args, says) in [
            (["--lease-ttl", "0"], "1s to 1d"),
            (["--max-connections", "0"], "1..=1000000"),
            (["--client-idle", "0s"], "1s to 1d"),
            (["--frame-timeout", "0"], "100ms to 1h"),
            (["--max-requests-per-sec", "0"], "0 is not in 1.."),
            (["--store-quota", "0"], "1B to"),
            (["--max-upload-rate", "0"], "zero"),
            (["--client-idle", "soon"], "not understood"),
            (["--store-advertise", "host:0"], "HOST:PORT"),
        ] {
            let e = Cli::try_parse_from(std::iter::once("index-server").chain(args)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(e.to_string().contains(says), "{args:?}: {e}");
        }
        let cli = Cli::try_parse_from([
            "index-server",
            "--store-quota",
            "10gib",
            "--lease-ttl",
            "30S",
            "--max-upload-rate",
            "10mb/s",
        ])
        .unwrap();
        assert_eq!(cli.store_quota, 10 << 30);
        assert_eq!(cli.lease_ttl, Duration::from_secs(30));
        assert_eq!(cli.max_upload_rate, Some(10_000_000));
    }

    /// Parsing no flag gives the library's defaults (written once there;
    /// durations and sizes go through their text form for --help).
    #[test]
    fn defaults_are_the_librarys() {
        let cli = Cli::try_parse_from(["index-server", "--store", "/s"]).unwrap();
        let config = index_server::Config::default();
        assert_eq!(cli.listen, config.listen);
        assert_eq!(cli.lease_ttl, config.lease_ttl);
        assert_eq!(cli.max_connections, config.max_connections);
        assert_eq!(cli.max_connections_per_ip, config.max_connections_per_ip);
        assert_eq!(cli.client_idle, config.client_idle);
        assert_eq!(cli.frame_timeout, config.frame_timeout);
        assert_eq!(cli.max_requests_per_sec, config.max_requests_per_sec);
        assert_eq!(cli.dialback_timeout, config.dialback_timeout);
        assert_eq!(
            cli.max_dialbacks_per_minute,
            config.max_dialbacks_per_minute
        );
        assert_eq!(
            cli.max_callbacks_per_minute,
            config.max_callbacks_per_minute
        );
        let relay = config.relay.unwrap();
        assert!(cli.relay);
        assert_eq!(cli.relay_rate, relay.session_rate);
        assert_eq!(cli.relay_total_rate, relay.total_rate);
        assert_eq!(cli.relay_max_sessions, relay.max_sessions);
        assert_eq!(cli.hole_punching, config.hole_punching);
        let possession = index_server::possession::PossessionConfig::default();
        assert_eq!(cli.possession_checks.0, Some(possession.interval));
        assert_eq!(cli.possession_checks_per_second, possession.per_second);
        let off = Cli::try_parse_from(["index-server", "--possession-checks", "off"]).unwrap();
        assert_eq!(off.possession_checks.0, None);
        let limits = &config.limits;
        assert_eq!(
            cli.max_files_per_session,
            limits.max_files_per_session as u64
        );
        assert_eq!(
            cli.max_sessions_per_address,
            limits.max_sessions_per_source as u64
        );
        assert_eq!(cli.memory_budget, limits.memory_budget);
        assert_eq!(cli.nick_reservation, limits.nick_reservation);
        let store = index_server::store::StoreConfig::new("/s".into());
        assert_eq!(cli.store_quota, store.quota);
        assert_eq!(cli.store_part_expiry, store.part_expiry);
        assert_eq!(
            cli.store_max_pending_per_client,
            store.max_pending_per_client as u64
        );
        assert_eq!(cli.store_settle, store.settle);
    }

    #[test]
    fn help_states_the_exit_statuses() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("2 usage error"), "{help}");
    }
}
