//! The `peer` command: share a folder, search, fetch, browse, hash, and
//! the instant-messaging commands (who, whois, msg, inbox).

#[macro_use]
mod cli_output;
mod daemon_cli;
mod demo;
mod im_cli;
mod search_cli;
mod uploads_cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use common::units::{parse_duration_in, parse_size_in, UnitError};
use peer::download::{EngineConfig, Progress};
use peer::index_client::IndexClient;
use peer::pipeline::Fetcher;
use peer::rate::{parse_rate, RateLimiter};
use tokio_util::sync::CancellationToken;

/// A peer of a p2pshare network: share a folder, search the index, and
/// fetch files directly from the peers that hold them, every chunk verified.
#[derive(Parser, Debug)]
#[command(name = "peer", version, about, long_about = None, after_help = EXIT_STATUS_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    security: SecurityArgs,
}

/// How this node's connections are secured (every command).
#[derive(Args, Debug, Clone)]
struct SecurityArgs {
    /// This node's identity key file (ed25519, mode 0600), created when
    /// missing. Default for `serve`: SHARE/.p2pshare/node.key (or in
    /// --cache-dir); other commands use a key made for the run.
    #[arg(long, global = true, env = "PEER_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// Private network: a 32-byte pre-shared key (raw, or libp2p's
    /// swarm.key text) every node of the network holds; without the same
    /// key no handshake completes.
    #[arg(long, global = true, env = "PEER_NETWORK_KEY", value_name = "FILE")]
    network_key: Option<PathBuf>,
    /// The index's node id (as `index-server` logs it at start): the index
    /// must prove it. Without it, `serve` pins the id seen first in
    /// SHARE/.p2pshare/known_index and refuses another later.
    #[arg(long, global = true, env = "PEER_INDEX_KEY", value_name = "ID")]
    index_key: Option<common::identity::PeerId>,
    /// Clear text: no handshake, no encryption, no ids checked (for a
    /// lab's comparison only). The other side must run --insecure too;
    /// any other pairing is refused, saying which side to change.
    #[arg(long, global = true, env = "PEER_INSECURE", value_parser = boolish())]
    insecure: bool,
}

/// Installs the process's connection security from `args`; `state` is
/// the folder of a sharing command's own files (its key and pinned index
/// id live there).
fn install_security(args: &SecurityArgs, state: Option<&std::path::Path>) -> anyhow::Result<()> {
    let key = match (&args.key, state, args.insecure) {
        (Some(k), _, _) => Some(k.clone()),
        (None, Some(dir), false) => Some(transfer::keyfile::default_key_path(dir)),
        _ => None,
    };
    let security =
        transfer::keyfile::security(args.insecure, key.as_deref(), args.network_key.as_deref())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(id) = security.peer_id() {
        tracing::info!(peer_id = %id, "node identity");
    }
    peer::index_client::set_index_pin(peer::index_client::IndexPin {
        fixed: args.index_key,
        known: state
            .filter(|_| !args.insecure)
            .map(|dir| dir.join("known_index")),
    });
    if common::secure::Security::install(security).is_err() {
        anyhow::bail!("the connection security was set twice");
    }
    Ok(())
}

/// What every command's `--help` says about how it ends.
const EXIT_STATUS_HELP: &str = "Exit status: 0 done; 1 failed (the message says what to do); \
2 usage error (bad flag or value, checked before anything runs); \
130 interrupted by Ctrl-C or SIGTERM (a download or upload resumes when run again). \
Boolean flags and their variables take 1/0, true/false, yes/no or on/off; \
sizes and rates take units in any case (10MB, 10mb/s, 2MiB, 2m).";

/// Boolean flags and their environment variables: 1/0, true/false, yes/no,
/// on/off in any case; an empty variable is false (as if unset).
fn boolish() -> impl Fn(&str) -> Result<bool, String> + Clone + Send + Sync + 'static {
    |s: &str| match s.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" | "n" | "f" => Ok(false),
        "1" | "true" | "yes" | "on" | "y" | "t" => Ok(true),
        _ => Err(format!(
            "{s:?} is not a boolean: use 1 or 0, true or false, yes or no, on or off"
        )),
    }
}

/// A count in `min..=max`; anything else is a usage error that states the range.
fn count(min: u64, max: u64) -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(min..=max)
}

/// A duration from `min` to `max`, refused at parse time otherwise.
fn duration(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, UnitError> + Clone + Send + Sync + 'static {
    move |s| parse_duration_in(s, min, max)
}

/// A library's default duration as clap shows and parses it (`10s`), so
/// that the default is written once, in the library.
fn default_duration(d: Duration) -> String {
    common::units::human_duration(d)
}

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
/// Gnutella's hop limit, which overlay nodes also enforce.
const MAX_TTL: u8 = 7;

#[derive(Args, Debug, Clone)]
struct IndexArg {
    /// Index server to talk to, HOST:PORT or HOST (port 8888); host names are resolved.
    #[arg(long, env = "PEER_INDEX", value_name = "HOST:PORT", default_value = "127.0.0.1:8888",
          value_parser = |s: &str| peer::addr::parse_host_port(s, peer::addr::INDEX_PORT))]
    index: String,
}

/// Which of the three paradigms a command uses.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Central index for search, transfers directly between peers (Napster).
    Hybrid,
    /// The index server's store holds and serves every file; clients talk
    /// only to it and never upload to anyone.
    ClientServer,
    /// No server at all: a Gnutella-style overlay of peers, queries flooded.
    P2p,
}

/// Settings of a flooding search (`--mode p2p`).
#[derive(Args, Debug, Clone)]
struct P2pSearchArgs {
    /// Overlay node that floods the query on our behalf (needed with
    /// --mode p2p): HOST:PORT of its peer port, or HOST (port 6699).
    #[arg(long, env = "PEER_VIA", value_name = "HOST:PORT",
          value_parser = |s: &str| peer::addr::parse_host_port(s, peer::addr::PEER_PORT))]
    via: Option<String>,
    /// Hop limit of the flooded query, counted from the --via node, 1 to 7
    /// (Gnutella's limit; every node clamps a larger one to 7).
    #[arg(long, env = "PEER_TTL", default_value_t = peer::overlay::DEFAULT_TTL,
          value_parser = clap::value_parser!(u8).range(1..=MAX_TTL as i64))]
    ttl: u8,
    /// Longest wait for answers, 10ms to 1h; the search stops earlier once
    /// every copy of the query is accounted for, or when no answer came for 1 s.
    #[arg(long, env = "PEER_WAIT", default_value = default_duration(peer::overlay::DEFAULT_WAIT),
          value_parser = duration(10 * MS, HOUR))]
    wait: Duration,
}

impl P2pSearchArgs {
    /// The --via node; its absence is a usage error (exit status 2).
    fn via(&self) -> String {
        match &self.via {
            Some(via) => via.clone(),
            None => usage_error(
                "--mode p2p needs --via HOST:PORT: an overlay node (`peer serve --mode p2p`) to search through",
            ),
        }
    }
}

#[derive(Args, Debug, Clone)]
struct RateArgs {
    /// Cap on the total rate of chunk uploads, e.g. 10MB/s or 500KiB/s
    /// (per second; plain 10MB means the same). Default: none.
    #[arg(long, env = "PEER_MAX_UPLOAD_RATE", value_parser = parse_rate)]
    max_upload_rate: Option<u64>,
    /// Cap on the total rate of the downloads this peer does, e.g. 10MB/s.
    /// Default: none.
    #[arg(long, env = "PEER_MAX_DOWNLOAD_RATE", value_parser = parse_rate)]
    max_download_rate: Option<u64>,
}

// Parsed once per process and matched at once: boxing the big `Serve`
// variant would only add noise to every use of its fields.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Share a folder: hash it, register it at the index (or, with --mode
    /// p2p, join an overlay through --neighbor), serve chunks to other peers.
    Serve {
        /// Folder to share, recursively (names starting with '.' are skipped).
        #[arg(long, env = "PEER_SHARE")]
        share: PathBuf,
        #[command(flatten)]
        index: IndexArg,
        /// Address to accept chunk requests on; `[::]` takes both IPv6 and
        /// IPv4 (IPv4 only where IPv6 is unavailable).
        #[arg(long, env = "PEER_LISTEN", default_value_t = peer::serve::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// HOST:PORT other peers should use to reach this one, when the
        /// index would otherwise see a NAT or container address (HOST alone:
        /// the port we listen on).
        #[arg(long, env = "PEER_ADVERTISE", value_name = "HOST:PORT",
              value_parser = |s: &str| peer::addr::parse_host_port(s, 1).map(|_| s.trim().to_string()))]
        advertise: Option<String>,
        /// Nickname shown to other peers and used to browse and message this
        /// one: 1 to 32 letters, digits, '-', '_' or '.', unique among online
        /// peers. A nickname given here that another peer uses stops this
        /// one (exit status 1). Without it the host name is used, and when
        /// that is taken a free variant (host-2, host-3, ...), said in the log.
        #[arg(long, env = "PEER_NICK")]
        nick: Option<String>,
        /// Folder for the hash cache (default: SHARE/.p2pshare).
        #[arg(long, env = "PEER_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
        /// How often to look for added, changed and removed files (100ms to 1d).
        #[arg(long, env = "PEER_RESCAN_INTERVAL", default_value = default_duration(peer::serve::DEFAULT_RESCAN_INTERVAL),
              value_parser = duration(100 * MS, DAY))]
        rescan_interval: Duration,
        /// How long a file must stay unchanged (size, times, inode) before it
        /// is hashed and shared, so a file still being written is not shared
        /// half-done; 0 shares files as soon as they are seen (0 to 1d).
        #[arg(long, env = "PEER_SETTLE", default_value = default_duration(peer::scan::DEFAULT_SETTLE),
              value_parser = duration(Duration::ZERO, DAY))]
        settle: Duration,
        /// Upload slots: peers served at once (1 to 4096). Further peers wait
        /// in a fair queue (first come, first served, one place per
        /// requesting peer), told their position (`peer uploads` lists it).
        /// Default: one per 128 KiB/s of --max-upload-rate, 4 to 32 (8 at
        /// 1 MB/s); 32 without a cap.
        #[arg(long, env = "PEER_MAX_UPLOADS", value_parser = count(1, 4096))]
        max_uploads: Option<usize>,
        /// Most peers waiting in the upload queue (1 to 65536); past it a
        /// requester is told the peer is busy and retries later. Each place
        /// costs about 100 bytes.
        #[arg(long, env = "PEER_UPLOAD_QUEUE_MAX", value_name = "N",
              default_value_t = common::limits::UPLOAD_QUEUE_MAX, value_parser = count(1, 65_536))]
        upload_queue_max: usize,
        /// Most places in the upload queue one address (IPv4, or IPv6 /64)
        /// may hold (1 to 65536), so one host cannot fill the queue; a NAT
        /// with several users still gets several.
        #[arg(long, env = "PEER_UPLOAD_QUEUE_PER_IP", value_name = "N",
              default_value_t = common::limits::UPLOAD_QUEUE_PER_SOURCE, value_parser = count(1, 65_536))]
        upload_queue_per_ip: usize,
        /// How long a waiting peer keeps its place in the upload queue after
        /// its connection closed (0 to 1h): reconnecting within it keeps the
        /// place, after it the place is given up.
        #[arg(long, env = "PEER_UPLOAD_QUEUE_GRACE", value_name = "DURATION", default_value = default_duration(common::limits::UPLOAD_QUEUE_GRACE),
              value_parser = duration(Duration::ZERO, HOUR))]
        upload_queue_grace: Duration,
        /// While others wait, the longest one peer keeps an upload slot
        /// before going back to the end of the queue (1s to 1d).
        #[arg(long, env = "PEER_UPLOAD_SLOT_TIME", value_name = "DURATION", default_value = default_duration(common::limits::UPLOAD_SLOT_TIME),
              value_parser = duration(Duration::from_secs(1), DAY))]
        upload_slot_time: Duration,
        /// While others wait, a slot whose peer asked for no chunk for this
        /// long goes to the next in the queue (100ms to 1h).
        #[arg(long, env = "PEER_UPLOAD_SLOT_IDLE", value_name = "DURATION", default_value = default_duration(common::limits::UPLOAD_SLOT_IDLE),
              value_parser = duration(100 * MS, HOUR))]
        upload_slot_idle: Duration,
        /// Most upload connections at once; further peers are told the peer
        /// is busy (they retry later).
        #[arg(long, env = "PEER_MAX_UPLOAD_CONNECTIONS", default_value_t = common::limits::UPLOAD_CONNECTIONS,
              value_parser = count(1, 65_536))]
        max_upload_connections: usize,
        /// Most upload connections from one address (IPv4, or IPv6 /64), so
        /// one host cannot take every place.
        #[arg(long, env = "PEER_MAX_CONNECTIONS_PER_IP", default_value_t = common::limits::UPLOAD_CONNECTIONS_PER_SOURCE,
              value_parser = count(1, 65_536))]
        max_connections_per_ip: usize,
        /// hybrid: relay for others (peers that cannot connect to each
        /// other: both behind NATs), when the index has proven this peer's
        /// address: opaque bytes between the two, capped, never stored.
        #[arg(long, env = "PEER_RELAY")]
        relay: bool,
        /// Cap on the rate of one relayed connection (both directions),
        /// with --relay.
        #[arg(long, env = "PEER_RELAY_RATE", value_parser = transfer::rate::parse_rate,
              default_value = "4MiB/s")]
        relay_rate: u64,
        /// Cap on the rate of all relayed connections together, with --relay.
        #[arg(long, env = "PEER_RELAY_TOTAL_RATE", value_parser = transfer::rate::parse_rate,
              default_value = "16MiB/s")]
        relay_total_rate: u64,
        /// Relays pending or running at once, with --relay; more are refused.
        #[arg(long, env = "PEER_RELAY_MAX_SESSIONS", default_value_t = 64,
              value_parser = count(1, 65_536))]
        relay_max_sessions: usize,
        /// Write a sample of what this daemon uploaded and which chunks it
        /// holds to FILE (JSON lines, truncated at start) every
        /// --stats-every: for experiments with many daemons (`lab
        /// distribution --processes` uses it). Line format: `peer::stats_log`.
        /// Put it outside the shared folder (inside, it would be shared).
        #[arg(long, env = "PEER_STATS_LOG", value_name = "FILE")]
        stats_log: Option<PathBuf>,
        /// How often --stats-log samples (10ms to 1h).
        #[arg(long, env = "PEER_STATS_EVERY", default_value = default_duration(peer::stats_log::DEFAULT_EVERY),
              value_parser = duration(10 * MS, HOUR))]
        stats_every: Duration,
        /// hybrid: register at the index (default); p2p: join an overlay
        /// through --neighbor, no index. (client-server has no serving
        /// peers: run `index-server --store DIR` and `peer put` instead.)
        #[arg(long, env = "PEER_MODE", value_enum, default_value = "hybrid")]
        mode: Mode,
        /// p2p: an overlay node to join through, HOST:PORT or HOST (port
        /// 6699); repeat the flag (or separate with commas in PEER_NEIGHBORS)
        /// for several.
        #[arg(long = "neighbor", env = "PEER_NEIGHBORS", value_name = "HOST:PORT", value_delimiter = ',',
              value_parser = |s: &str| peer::addr::parse_host_port(s, peer::addr::PEER_PORT))]
        neighbors: Vec<String>,
        /// p2p: neighbours to keep (1 to 64); below it the node dials
        /// addresses it learned by ping/pong (and the --neighbor ones again).
        #[arg(long, env = "PEER_DEGREE", default_value_t = peer::overlay::DEFAULT_DEGREE, value_parser = count(1, 64))]
        degree: usize,
        /// p2p: how often to ping neighbours and replace missing ones (100ms to 1h).
        #[arg(long, env = "PEER_PING_INTERVAL", default_value = default_duration(peer::overlay::DEFAULT_PING_INTERVAL),
              value_parser = duration(100 * MS, HOUR))]
        ping_interval: Duration,
        #[command(flatten)]
        rates: RateArgs,
        /// Fetch this file (an id, its first 8 or more hex digits, or an
        /// exact name) into the shared folder while serving: its verified
        /// chunks are passed on to other peers at once (swarming), and the
        /// finished file is shared. Repeat the flag (or separate them with
        /// commas in PEER_FETCH) for several.
        /// A failed fetch (nobody offers it yet, a full disk, ...) is tried
        /// again with backoff (up to every minute) until it succeeds; content
        /// already in the folder counts as fetched.
        #[arg(long = "fetch", env = "PEER_FETCH", value_delimiter = ',')]
        fetch: Vec<peer::target::Target>,
        /// HTTP/JSON API (and web page) address, IP:PORT, or `off`. Loopback
        /// only unless --api-token is given. When the default port is taken
        /// (another daemon), a free one is used; the share's
        /// .p2pshare/api.json says which, so `peer get` and the other
        /// commands find it.
        #[arg(long, env = "PEER_API", value_name = "IP:PORT|off", default_value = peer::api::DEFAULT_API,
              value_parser = parse_api_addr)]
        api: ApiAddr,
        /// Bearer token the API requires (`Authorization: Bearer TOKEN`);
        /// needed to bind the API to a non-loopback address. Stored for
        /// local commands in .p2pshare/api-token (readable by you only).
        #[arg(
            long,
            env = "PEER_API_TOKEN",
            value_name = "TOKEN",
            hide_env_values = true
        )]
        api_token: Option<String>,
        /// Downloads the daemon runs at once (1 to 1000); more wait in its queue.
        #[arg(long, env = "PEER_MAX_ACTIVE_DOWNLOADS", default_value_t = peer::daemon::DEFAULT_MAX_ACTIVE,
              value_parser = count(1, 1000))]
        max_active_downloads: usize,
    },
    /// Search for files whose names match every WORD (prefixes, accents
    /// and case ignored, `-WORD` excludes): at the index, or with --mode
    /// p2p by flooding the overlay through --via.
    #[command(after_long_help = search_cli::SEARCH_HELP)]
    Search {
        #[command(flatten)]
        index: IndexArg,
        /// Print one JSON object instead of a table: {total, truncated,
        /// total_exact, results: [{id, name, size, sources}]}; with --mode
        /// p2p, {hits: [{id, name, names, size, sources: [ADDR]}], ttl,
        /// nodes_reached, query_messages, hit_messages, messages,
        /// duplicates, complete, elapsed_ms}.
        #[arg(long, env = "PEER_JSON", value_parser = boolish())]
        json: bool,
        /// Most results to show, 1 to 1000 (the index never sends more); when
        /// more files match, a note on stderr says how many.
        #[arg(long, env = "PEER_LIMIT", default_value_t = common::limits::DEFAULT_SEARCH_LIMIT,
              value_parser = clap::value_parser!(u32).range(1..=common::limits::MAX_SEARCH_LIMIT as i64))]
        limit: u32,
        /// Also list each file's sources under it: nickname, address and
        /// node id (short form; --json gives the whole id in
        /// `source_list: [{nick, addr, peer_id}]`). One lookup per result at
        /// the index; with --mode p2p, the addresses that answered.
        #[arg(long = "sources", env = "PEER_SHOW_SOURCES", value_parser = boolish())]
        show_sources: bool,
        /// hybrid and client-server: ask the index; p2p: flood the overlay
        /// through --via (and report the messages and nodes it cost).
        #[arg(long, env = "PEER_MODE", value_enum, default_value = "hybrid")]
        mode: Mode,
        #[command(flatten)]
        p2p: P2pSearchArgs,
        #[command(flatten)]
        filters: search_cli::SearchFilterArgs,
        /// Exclude names with a word starting with WORD (what `-WORD`
        /// among the words means); repeat for several (or separate them
        /// with commas in PEER_EXCLUDE).
        #[arg(long, env = "PEER_EXCLUDE", value_name = "WORD", value_delimiter = ',')]
        exclude: Vec<String>,
        /// Words that must all match (prefixes of the name's words);
        /// `-WORD` excludes. See the matching rules below.
        #[arg(required = true)]
        words: Vec<String>,
    },
    /// Download a file by id or exact name from every peer that has it.
    ///
    /// Content already in the output folder (the same id under its name or
    /// `name (N)`, or anywhere in a shared folder around it, by its hash
    /// cache) is not fetched again: its path is printed and the exit
    /// status is 0. Two downloads of one file into one folder never write
    /// the same part file: the second waits for the first, then reports its
    /// result. Sources are asked for again every second while the download
    /// runs, so peers that join or come back are used.
    Get {
        #[command(flatten)]
        index: IndexArg,
        /// Folder to put the file in (created if missing).
        #[arg(short = 'o', long = "out", env = "PEER_OUT", default_value = ".")]
        out: PathBuf,
        /// Print a JSON object (path, id, size, sources_used) instead of the path.
        #[arg(long, env = "PEER_JSON", value_parser = boolish())]
        json: bool,
        /// Drop a source that sends nothing for this long (100ms to 1d).
        #[arg(long, env = "PEER_STALL_TIMEOUT", default_value = default_duration(peer::download::DEFAULT_STALL_TIMEOUT),
              value_parser = duration(100 * MS, DAY))]
        stall_timeout: Duration,
        /// Most sources to fetch from at once (1 to 256).
        #[arg(long, env = "PEER_MAX_SOURCES", default_value_t = peer::download::DEFAULT_MAX_SOURCES, value_parser = count(1, 256))]
        max_sources: usize,
        /// Chunk requests kept in flight per source (1 to 256).
        #[arg(long, env = "PEER_PIPELINE", default_value_t = peer::download::DEFAULT_PIPELINE_DEPTH, value_parser = count(1, 256))]
        pipeline: usize,
        /// hybrid: every peer the index lists; client-server: the index
        /// server's store only (never another peer); p2p: the nodes a
        /// flooding search through --via finds.
        #[arg(long, env = "PEER_MODE", value_enum, default_value = "hybrid")]
        mode: Mode,
        #[command(flatten)]
        p2p: P2pSearchArgs,
        /// Cap on the download rate, e.g. 10MB/s or 500KiB/s (default: none).
        #[arg(long, env = "PEER_MAX_DOWNLOAD_RATE", value_parser = parse_rate)]
        max_download_rate: Option<u64>,
        /// How long the download waits without progress before it fails
        /// (keeping the verified part): a source at its upload cap (Busy) is
        /// asked again with backoff (0.25 s doubling to 8 s), and sources that
        /// left are tried again when the index lists them again. While every
        /// source only refuses (the connection, or the file), the download
        /// gives up after --stall-timeout instead.
        #[arg(long, env = "PEER_RETRY_TIMEOUT", default_value = default_duration(peer::download::DEFAULT_RETRY_TIMEOUT),
              value_parser = duration(Duration::from_secs(1), DAY))]
        retry_timeout: Duration,
        /// When a `peer serve` shares the output folder (or a folder above
        /// it; or PEER_API is set), the download is handed to that daemon,
        /// which keeps it across restarts: return at once instead of
        /// showing its progress until it is done. (The daemon then uses its
        /// own engine settings: 16 requests in flight to a single source,
        /// one per source once several run, as in a swarm.)
        #[arg(long, env = "PEER_DETACH", value_parser = boolish())]
        detach: bool,
        /// Where to accept callbacks (hybrid mode): a source that accepts
        /// no connections (firewalled, behind a NAT) is asked through the
        /// index to connect out to this port, at the address the index
        /// sees this machine at. Port 0: any free port. When the index
        /// finds this port unreachable, such a source is reached by a hole
        /// punch or through the index's relay instead.
        #[arg(long, env = "PEER_CALLBACK_LISTEN", default_value = "[::]:0")]
        callback_listen: std::net::SocketAddr,
        /// Use only sources that can be dialed (no callback, hole punch or
        /// relay: firewalled sources are left out).
        #[arg(long, env = "PEER_NO_CALLBACKS", value_parser = boolish())]
        no_callbacks: bool,
        /// A file id (64 hex digits, or an unambiguous prefix of at least
        /// 8), or a file's exact name (any holder's, compared ignoring case
        /// and Unicode normalization; the last path component is enough).
        target: String,
    },
    /// Upload files into the index server's store (client-server mode; the
    /// server runs `index-server --store DIR`).
    ///
    /// Each file is hashed here and checked chunk by chunk by the server;
    /// an interrupted upload resumes where it stopped when run again (the
    /// server keeps the verified chunks). Content the store already holds is
    /// not sent again, whatever its name. A name the store already uses for
    /// other content is never overwritten: the upload is stored as
    /// `name (1).ext` (the output says which name it got). An upload that
    /// would take the store over its quota (`--store-quota`) is refused.
    Put {
        #[command(flatten)]
        index: IndexArg,
        /// Print a JSON array (path, id, stored_as, chunks_sent, ...) instead of lines.
        #[arg(long, env = "PEER_JSON", value_parser = boolish())]
        json: bool,
        /// Files to upload.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the files one peer shares (by nickname, or by address as `peer who` shows it).
    Browse {
        #[command(flatten)]
        index: IndexArg,
        /// Print one JSON array (id, name, size) instead of a table.
        #[arg(long, env = "PEER_JSON", value_parser = boolish())]
        json: bool,
        /// The peer: its nickname (`peer who` lists them), or HOST:PORT of
        /// its chunk server (a host name is resolved; HOST alone means port 6699).
        peer: String,
    },
    /// Print the id of each FILE (what `peer get` and the index know it by).
    Hash {
        /// Print one JSON array (path, id, size, chunks) instead of lines.
        #[arg(long, env = "PEER_JSON", value_parser = boolish())]
        json: bool,
        /// Files to hash; with several, each line is `ID  PATH`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Counts of online peers, files and bytes at the index.
    Stats {
        #[command(flatten)]
        index: IndexArg,
        /// Print a JSON object (peers, files, bytes) instead of a line.
        #[arg(long, env = "PEER_JSON", value_parser = boolish())]
        json: bool,
    },
    /// Start an index and three peers on loopback, share sample files,
    /// search and fetch, and explain each step. Needs nothing set up.
    Demo {
        /// Size of the large sample file shared by two peers (1 byte to 1TiB;
        /// it is written twice into a temporary folder).
        #[arg(long, env = "PEER_DEMO_SIZE", default_value = "32MiB",
              value_parser = |s: &str| parse_size_in(s, 1, common::limits::MAX_FILE_SIZE))]
        size: u64,
        /// Keep the demo's folders instead of deleting them.
        #[arg(long, env = "PEER_DEMO_KEEP", value_parser = boolish())]
        keep: bool,
    },
    #[command(flatten)]
    Im(im_cli::ImCommand),
    #[command(flatten)]
    Daemon(daemon_cli::DaemonCommand),
    /// Who the running daemon uploads to (peer, file, rate, bytes) and who
    /// waits in its upload queue (position, waiting since).
    Uploads(uploads_cli::UploadsArgs),
}

/// Ends the command as clap ends a usage error: the message, exit status 2.
fn usage_error(message: &str) -> ! {
    errln!("error: {message}\n\nFor more information, try '--help'.");
    std::process::exit(2)
}

fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // A closed stderr (the log reader went away) must not turn every
        // log line into a panic: the line is dropped instead.
        .log_internal_errors(false)
        .init();
}

/// Cancels the token on SIGINT or SIGTERM.
fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
        }
        t.cancel();
    });
    Ok(token)
}

fn main() {
    // Before the runtime starts its threads: an empty variable is unset.
    common::env_vars::unset_empty(&["PEER_"]);
    async_main()
}

#[tokio::main]
async fn async_main() {
    let cli = Cli::parse_from(search_cli::exclusions_as_flags(std::env::args_os()));
    let default_log = match cli.command {
        Command::Serve { .. } => "info",
        _ => "warn",
    };
    init_tracing(default_log);
    let code = match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            errln!("error: {}", common::report::error_chain(e.as_ref()));
            1
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    if !matches!(cli.command, Command::Serve { .. }) {
        install_security(&cli.security, None)?;
    }
    match cli.command {
        Command::Serve {
            share,
            index,
            listen,
            advertise,
            nick,
            cache_dir,
            rescan_interval,
            settle,
            max_uploads,
            upload_queue_max,
            upload_queue_per_ip,
            upload_queue_grace,
            upload_slot_time,
            upload_slot_idle,
            max_upload_connections,
            max_connections_per_ip,
            relay,
            relay_rate,
            relay_total_rate,
            relay_max_sessions,
            stats_log,
            stats_every,
            mode,
            neighbors,
            degree,
            ping_interval,
            rates,
            fetch,
            api,
            api_token,
            max_active_downloads,
        } => {
            let state = cache_dir.clone().unwrap_or_else(|| share.join(".p2pshare"));
            install_security(&cli.security, Some(&state))?;
            let shutdown = shutdown_on_signals()?;
            let mut config = peer::ServeConfig::new(share, index.index);
            match mode {
                Mode::Hybrid => {}
                Mode::P2p => {
                    config.p2p = Some(peer::overlay::OverlayConfig {
                        neighbors,
                        degree: degree.max(1),
                        ping_interval,
                        link_idle: (ping_interval * 6).max(Duration::from_secs(30)),
                    });
                }
                Mode::ClientServer => usage_error(
                    "in client-server mode the server holds the files: run `index-server --store DIR` and upload with `peer put FILE`"
                ),
            }
            config.listen = listen;
            config.advertise = advertise;
            // Only a nickname the user chose stops the peer on a clash.
            config.nick_fallback = nick.is_none();
            config.nick = Some(nick.unwrap_or_else(peer::im::default_nick));
            config.cache_dir = cache_dir;
            config.rescan_interval = rescan_interval;
            config.settle = settle;
            config.upload_queue = transfer::upload_queue::QueueConfig {
                slots: max_uploads
                    .unwrap_or_else(|| common::limits::upload_slots_for(rates.max_upload_rate)),
                max_waiting: upload_queue_max,
                max_waiting_per_source: upload_queue_per_ip,
                grace: upload_queue_grace,
                slot_time: upload_slot_time,
                slot_idle: upload_slot_idle,
            };
            config.max_upload_connections = max_upload_connections;
            config.max_upload_connections_per_ip = max_connections_per_ip;
            config.relay = relay.then_some(transfer::relay::RelayConfig {
                session_rate: relay_rate,
                total_rate: relay_total_rate,
                max_sessions: relay_max_sessions,
                arrange_wait: transfer::relay::PEER_RELAY_ARRANGE_WAIT,
                ..Default::default()
            });
            config.stats_log = stats_log.map(|path| peer::stats_log::StatsLogConfig {
                path,
                every: stats_every,
            });
            config.max_upload_rate = rates.max_upload_rate;
            config.max_download_rate = rates.max_download_rate;
            config.fetch = fetch;
            config.max_active_downloads = max_active_downloads;
            config.api = match api {
                ApiAddr::Off => None,
                ApiAddr::At(addr) => Some(peer::api::ApiConfig {
                    addr,
                    token: api_token,
                    // Only the default may move to a free port.
                    fallback_to_any_port: addr.to_string() == peer::api::DEFAULT_API
                        && std::env::var_os("PEER_API").is_none()
                        && !std::env::args()
                            .any(|a| a.starts_with("--api") && !a.starts_with("--api-token")),
                }),
            };
            peer::serve::run(config, shutdown).await?;
            Ok(0)
        }
        Command::Search {
            index,
            json,
            limit,
            show_sources,
            mode: Mode::P2p,
            p2p,
            filters,
            exclude,
            mut words,
        } => {
            words.extend(exclude.iter().map(|w| format!("-{w}")));
            let filter = filters.filter().unwrap_or_else(|e| usage_error(&e));
            let shutdown = shutdown_on_signals()?;
            let via = p2p.via();
            let search = peer::overlay::search(&via, words, p2p.ttl, p2p.wait);
            let mut report = tokio::select! {
                report = search => report?,
                _ = shutdown.cancelled() => return Ok(interrupted()),
            };
            // No index here: the filters apply to what the nodes answered.
            report.hits.retain(|h| filter.accepts(h.size, &h.name));
            let total = report.hits.len() as u64;
            report.hits.truncate(limit as usize);
            let _ = index;
            if json {
                let mut value = serde_json::to_value(&report)?;
                value["total"] = total.into();
                value["truncated"] = (total > report.hits.len() as u64).into();
                cli_output::print_json(&value);
            } else {
                cli_output::print_p2p_report(&report, show_sources);
            }
            search_cli::note_cut(report.hits.len(), Some(total), true, limit);
            Ok(0)
        }
        Command::Search {
            index,
            json,
            limit,
            show_sources,
            mode: _,
            p2p: _,
            filters,
            exclude,
            mut words,
        } => {
            words.extend(exclude.iter().map(|w| format!("-{w}")));
            let filter = filters.filter().unwrap_or_else(|e| usage_error(&e));
            let mut client = IndexClient::connect(&index.index).await?;
            let answer = client.search_filtered(words, limit, filter).await?;
            let sources = if show_sources {
                Some(search_cli::sources_of(&mut client, &answer.hits).await?)
            } else {
                None
            };
            if json {
                cli_output::print_json(&search_cli::answer_json(&answer, sources.as_deref()));
            } else {
                cli_output::print_hits(&answer.hits, sources.as_deref());
            }
            search_cli::note_cut(answer.hits.len(), answer.total, answer.total_exact, limit);
            Ok(0)
        }
        Command::Get {
            index,
            out,
            json,
            stall_timeout,
            max_sources,
            pipeline,
            mode,
            p2p,
            max_download_rate,
            retry_timeout,
            detach,
            callback_listen,
            no_callbacks,
            target,
        } => {
            let shutdown = shutdown_on_signals()?;
            if let Some(client) = daemon_for_get(&out, mode, &index.index).await {
                let store = (mode == Mode::ClientServer).then_some(index.index.as_str());
                return daemon_cli::get_through(
                    &client, &target, &out, store, json, detach, shutdown,
                )
                .await;
            }
            let engine = EngineConfig {
                retry_timeout,
                stall_timeout,
                max_sources: max_sources.max(1),
                pipeline_depth: pipeline.clamp(1, 256),
                download_limit: max_download_rate.map(|r| Arc::new(RateLimiter::new(r))),
                ..EngineConfig::default()
            };
            let progress = Arc::new(Progress::default());
            // The mode only says where the file is resolved and its sources
            // come from; the rest is one path (peer::pipeline).
            let fetcher = match mode {
                Mode::Hybrid => Fetcher::Hybrid {
                    index: index.index.clone(),
                },
                // The server is the only source; no chunk server is started here.
                Mode::ClientServer => Fetcher::ClientServer {
                    server: index.index.clone(),
                },
                Mode::P2p => Fetcher::P2p {
                    via: p2p.via(),
                    ttl: p2p.ttl,
                    wait: p2p.wait,
                },
            };
            let bar = cli_output::ProgressBar::start(progress.clone(), &target);
            let options = peer::pipeline::FetchOptions {
                callbacks: (!no_callbacks).then_some(callback_listen),
                ..peer::pipeline::FetchOptions::new(out, engine, progress)
            };
            let result = peer::pipeline::fetch(&fetcher, &target, options, shutdown).await;
            bar.finish();
            match result {
                Ok(fetched) => {
                    if json {
                        cli_output::print_json(&fetched);
                    } else {
                        if let Some(search) = &fetched.search {
                            errln!(
                                "found by flooding: {}, {}",
                                cli_output::counted(
                                    search.nodes_reached,
                                    "node reached",
                                    "nodes reached"
                                ),
                                cli_output::counted(search.messages, "message", "messages")
                            );
                        }
                        outln!("{}", fetched.download.path.display());
                    }
                    Ok(0)
                }
                Err(e) if e.interrupted() => {
                    errln!("{e}");
                    Ok(130)
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Put { index, json, files } => {
            let shutdown = shutdown_on_signals()?;
            let mut outcomes = Vec::new();
            for file in &files {
                let outcome =
                    match peer::client_server::put_file(&index.index, file, shutdown.clone()).await
                    {
                        Ok(outcome) => outcome,
                        Err(e @ peer::client_server::PutError::Interrupted) => {
                            errln!("{e}");
                            return Ok(130);
                        }
                        Err(e) => return Err(e.into()),
                    };
                if !json {
                    if outcome.already_stored {
                        outln!(
                            "{}: already in the store as {:?}; nothing sent",
                            file.display(),
                            outcome.stored_as
                        );
                    } else {
                        outln!(
                            "{}: stored as {:?} ({} chunks sent, {} already there)",
                            file.display(),
                            outcome.stored_as,
                            outcome.chunks_sent,
                            outcome.chunks_resumed
                        );
                    }
                }
                outcomes.push(outcome);
            }
            if json {
                cli_output::print_json(&outcomes);
            }
            Ok(0)
        }
        Command::Browse { index, json, peer } => {
            let mut client = IndexClient::connect(&index.index).await?;
            let files = browse(&mut client, &peer).await?;
            if json {
                cli_output::print_json(&cli_output::files_json(&files));
            } else {
                // Whose files these are: the node id the index knows the
                // nickname by (a HOST:PORT names no key).
                if common::im::validate_nick(&peer).is_ok() {
                    if let Ok(Some(p)) = client.whois(&peer).await {
                        let esc = common::names::escape_for_terminal;
                        let who = format!("{} at {}", esc(&peer), esc(&p.addr));
                        match p.peer_id {
                            Some(id) => outln!("{who}, node id {id}"),
                            None => outln!("{who} (clear text: no node id)"),
                        }
                    }
                }
                cli_output::print_files(&files);
            }
            Ok(0)
        }
        Command::Hash { json, files } => {
            let shutdown = shutdown_on_signals()?;
            let mut all = Vec::new();
            for file in &files {
                let path = file.clone();
                let hashing = tokio::task::spawn_blocking(move || peer::scan::hash_file(&path));
                let info = tokio::select! {
                    info = hashing => info?.with_context(|| format!("cannot read {}", file.display()))?,
                    _ = shutdown.cancelled() => return Ok(interrupted()),
                };
                if json {
                    all.push(serde_json::json!({
                        "id": info.id.to_hex(), "size": info.size, "chunks": info.chunk_count(),
                        "path": file.display().to_string(),
                    }));
                } else if files.len() == 1 {
                    outln!("{}", info.id);
                } else {
                    outln!("{}  {}", info.id, file.display());
                }
            }
            if json {
                if files.len() == 1 {
                    cli_output::print_json(&all[0]);
                } else {
                    cli_output::print_json(&all);
                }
            }
            Ok(0)
        }
        Command::Stats { index, json } => {
            let mut client = IndexClient::connect(&index.index).await?;
            let s = client.stats().await?;
            if json {
                cli_output::print_json(
                    &serde_json::json!({"peers": s.peers, "files": s.files, "bytes": s.bytes}),
                );
            } else {
                outln!(
                    "{} peers online, {} files, {}",
                    s.peers,
                    s.files,
                    cli_output::human_size(s.bytes)
                );
            }
            Ok(0)
        }
        Command::Demo { size, keep } => {
            let shutdown = shutdown_on_signals()?;
            match demo::run(size, keep, shutdown).await {
                Err(e) if e.is::<demo::Interrupted>() => Ok(interrupted()),
                other => other.map(|()| 0),
            }
        }
        Command::Im(command) => im_cli::run(command).await,
        Command::Daemon(command) => daemon_cli::run(command).await,
        Command::Uploads(args) => uploads_cli::run(args).await,
    }
}

/// The running daemon a `peer get` into `out` is handed to: the one that
/// shares `out` (or a folder above it), or PEER_API; in hybrid and p2p
/// mode only when it runs in the same mode (and, in hybrid mode, with the
/// same index). Any daemon takes a client-server download, told the server.
async fn daemon_for_get(
    out: &std::path::Path,
    mode: Mode,
    index: &str,
) -> Option<peer::daemon::client::ApiClient> {
    let client = peer::daemon::client::ApiClient::discover(out)
        .await
        .ok()??;
    let status = client.get("/api/status").await.ok()?;
    let same_mode = match mode {
        Mode::Hybrid => status["mode"] == "hybrid" && status["index"].as_str() == Some(index),
        Mode::P2p => status["mode"] == "p2p",
        Mode::ClientServer => true,
    };
    if !same_mode {
        tracing::info!(
            "the daemon found runs in another mode or with another index; fetching here"
        );
    }
    same_mode.then_some(client)
}

/// `--api`: an address, or off.
#[derive(Debug, Clone, Copy)]
enum ApiAddr {
    Off,
    At(SocketAddr),
}

fn parse_api_addr(s: &str) -> Result<ApiAddr, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "off" | "no" | "none" | "false" | "0" => Ok(ApiAddr::Off),
        other => other
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .map(ApiAddr::At)
            .map_err(|_| format!("{s:?} is not IP:PORT or off (example: 127.0.0.1:6700)")),
    }
}

/// Says that the command was interrupted; returns its exit status (130).
fn interrupted() -> i32 {
    errln!("interrupted");
    130
}

/// One peer's files, by nickname or address; an address with a host name or
/// without a port is tried as the index publishes addresses (`IP:PORT`).
async fn browse(
    client: &mut IndexClient,
    peer: &str,
) -> Result<Vec<common::index_proto::SharedFile>, peer::index_client::IndexError> {
    let first = client.browse(peer).await;
    match &first {
        Err(e) if e.code() == Some(common::index_proto::ErrorCode::NotFound) => {}
        _ => return first,
    }
    for candidate in peer::addr::resolve_candidates(peer, peer::addr::PEER_PORT)
        .await
        .into_iter()
        .skip(1)
    {
        if let Ok(files) = client.browse(&candidate).await {
            return Ok(files);
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults clap shows are the library's (durations are written as
    /// text for --help, so they are checked here).
    #[test]
    fn get_defaults_are_the_engines() {
        let cli = Cli::try_parse_from(["peer", "get", "x"]).unwrap();
        let Command::Get {
            stall_timeout,
            retry_timeout,
            max_sources,
            pipeline,
            ..
        } = cli.command
        else {
            panic!("not get");
        };
        let engine = EngineConfig::default();
        assert_eq!(stall_timeout, engine.stall_timeout);
        assert_eq!(retry_timeout, engine.retry_timeout);
        assert_eq!(max_sources, engine.max_sources);
        assert_eq!(pipeline, engine.pipeline_depth);
        let cli = Cli::try_parse_from(["peer", "search", "--mode", "p2p", "x"]).unwrap();
        let Command::Search { p2p, .. } = cli.command else {
            panic!("not search");
        };
        assert_eq!(p2p.wait, peer::overlay::DEFAULT_WAIT);
        assert_eq!(p2p.ttl, peer::overlay::DEFAULT_TTL);
        let cli = Cli::try_parse_from(["peer", "serve", "--share", "/x"]).unwrap();
        let Command::Serve {
            rescan_interval,
            settle,
            max_active_downloads,
            listen,
            max_uploads,
            upload_queue_max,
            upload_queue_per_ip,
            upload_queue_grace,
            upload_slot_time,
            upload_slot_idle,
            degree,
            ping_interval,
            ..
        } = cli.command
        else {
            panic!("not serve");
        };
        let overlay = peer::overlay::OverlayConfig::default();
        assert_eq!(degree, overlay.degree);
        assert_eq!(ping_interval, overlay.ping_interval);
        let config = peer::ServeConfig::new("/x".into(), String::new());
        let queue = &config.upload_queue;
        assert_eq!(max_uploads, None);
        assert_eq!(common::limits::upload_slots_for(None), queue.slots);
        assert_eq!(upload_queue_max, queue.max_waiting);
        assert_eq!(upload_queue_per_ip, queue.max_waiting_per_source);
        assert_eq!(upload_queue_grace, queue.grace);
        assert_eq!(upload_slot_time, queue.slot_time);
        assert_eq!(upload_slot_idle, queue.slot_idle);
        assert_eq!(rescan_interval, config.rescan_interval);
        assert_eq!(settle, config.settle);
        assert_eq!(listen, config.listen);
        assert_eq!(max_active_downloads, config.max_active_downloads);
    }
}
