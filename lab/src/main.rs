//! The `lab` command: scale experiments on loopback, measured against the
//! textbook (Kurose & Ross ch. 2) and the lecture's models.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand};
use common::units::{parse_duration_in, parse_size_in, UnitError};
use lab::distribution::{Mode, Net};
use lab::{connections, distribution, index_load, search_cost, Written};
use peer::rate::parse_rate;

/// `println!` that ends quietly (status 0) when stdout is a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*).and_then(|()| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            errln!("error: cannot write the output: {e}");
            std::process::exit(1);
        }
    }};
}

/// `eprintln!` that ignores a closed stderr.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// A count in `min..=max`; anything else is a usage error stating the range.
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

/// A size from `min` to `max` bytes, refused at parse time otherwise.
fn size(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<u64, UnitError> + Clone + Send + Sync + 'static {
    move |s| parse_size_in(s, min, max)
}

/// Boolean flags and their variables: 1/0, true/false, yes/no, on/off (any
/// case); an empty variable is false.
fn boolish(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" | "n" | "f" => Ok(false),
        "1" | "true" | "yes" | "on" | "y" | "t" => Ok(true),
        _ => Err(format!(
            "{s:?} is not a boolean: use 1 or 0, true or false, yes or no, on or off"
        )),
    }
}

/// A share from 0 to 1.
fn fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a share from 0 to 1 (e.g. 0.01)")),
    }
}

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const GIB: u64 = 1 << 30;

/// What `--help` says about how the lab ends.
const EXIT_STATUS_HELP: &str =
    "Exit status: 0 done; 1 an experiment failed (the message says why); \
2 usage error (bad flag or value, checked before anything runs). \
Sizes and rates take units in any case (16MiB, 10mb/s); booleans take 1/0, true/false, yes/no.";

/// Scale experiments: an index and many peers in one process on 127.0.0.1.
/// Each experiment writes NAME.csv, NAME.svg, NAME.png and NAME.md into --out.
#[derive(Parser, Debug)]
#[command(name = "lab", version, about, long_about = None, after_help = EXIT_STATUS_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Clear text everywhere: every node of the experiment (in this
    /// process, and the `--processes` children) runs without the Noise
    /// handshake and encryption, as `peer --insecure` does; for measuring
    /// what encryption costs. Not with `--engine swarm` (its services run
    /// encrypted).
    #[arg(long, global = true, env = "LAB_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    insecure: bool,
}

#[derive(Args, Debug, Clone)]
struct OutArg {
    /// Folder for the CSV, plots and summary (created if missing).
    #[arg(long, env = "LAB_OUT", default_value = "lab-results")]
    out: PathBuf,
}

#[derive(Args, Debug, Clone)]
struct RunsArg {
    /// Times each point is measured (1 to 100); the CSV keeps every run
    /// plus their median, min and max; plots show the median with min-max
    /// bars. Default 1 (3 in `lab all`).
    #[arg(long, env = "LAB_RUNS", value_parser = count(1, 100))]
    runs: Option<usize>,
}

#[derive(Args, Debug, Clone)]
struct DistributionArgs {
    /// Numbers of downloading peers (1 to 256 each), comma-separated.
    #[arg(
        long = "n",
        env = "LAB_N",
        value_delimiter = ',',
        default_value = "1,2,4,8,16,32",
        value_parser = count(1, 256)
    )]
    ns: Vec<usize>,
    /// Size of the file distributed (e.g. 16MiB; 1 byte to 64GiB).
    #[arg(long, env = "LAB_FILE_SIZE", default_value = "16MiB", value_parser = size(1, 64 * GIB))]
    file_size: u64,
    /// Upload cap of the server's store (client-server) or the seed (hybrid, p2p), e.g. 40MiB/s.
    #[arg(long, env = "LAB_SERVER_UP", default_value = "40MiB/s", value_parser = parse_rate)]
    server_up: u64,
    /// Upload cap of every downloading peer, e.g. 4MiB/s.
    #[arg(long, env = "LAB_PEER_UP", default_value = "4MiB/s", value_parser = parse_rate)]
    peer_up: u64,
    /// Download cap of every downloading peer (default: none).
    #[arg(long, env = "LAB_PEER_DOWN", value_parser = parse_rate)]
    peer_down: Option<u64>,
    /// Paradigms to run, comma-separated.
    #[arg(
        long,
        env = "LAB_MODES",
        value_delimiter = ',',
        default_value = "client-server,hybrid,p2p"
    )]
    modes: Vec<Mode>,
    /// Run real `index-server` and `peer` processes (from the lab binary's
    /// folder) instead of tasks in this process; the swarms' upload
    /// counters and holdings come from each daemon's stats log
    /// (`peer serve --stats-log`), client-server's are not collected.
    #[arg(long, env = "LAB_PROCESSES", value_parser = boolish)]
    processes: bool,
    /// With --processes, hybrid: hand each peer its download with a `peer
    /// get` process (which finds the daemon's API, as a user does) instead
    /// of the lab posting it to the daemon's API itself. Either way the
    /// clock starts once every peer is up and registered.
    #[arg(long, env = "LAB_HANDOFF", value_parser = boolish)]
    handoff: bool,
    /// Also run the same settings through a real BitTorrent swarm (aria2c
    /// and opentracker from Debian's packages aria2, opentracker and
    /// mktorrent), into the same CSV and plot (mode `bittorrent`).
    #[arg(long, env = "LAB_COMPARE_BITTORRENT", value_parser = boolish)]
    compare_bittorrent: bool,
    /// Networks, comma-separated, each run side by side into one CSV:
    /// loopback (rates capped by the application's token buckets) or netns
    /// (every node in its own network namespace on a bridge, its uplink
    /// and capped downlink shaped by the kernel's tbf; needs root; no RTT
    /// is emulated, as netem is not available).
    #[arg(
        long,
        env = "LAB_NET",
        value_delimiter = ',',
        default_value = "loopback"
    )]
    net: Vec<Net>,
    /// Where the nodes run: local (this machine, as --processes and --net
    /// say) or swarm (a Docker Swarm stack of the image P2PSHARE_IMAGE,
    /// default p2pshare:latest: an index, a seed and N peer replicas,
    /// fetches started with `docker exec`, the stack removed afterwards;
    /// needs a Swarm manager, `docker swarm init`; client-server and
    /// hybrid).
    #[arg(long, env = "LAB_ENGINE", default_value = "local")]
    engine: distribution::Engine,
    #[command(flatten)]
    runs: RunsArg,
}

#[derive(Args, Debug, Clone)]
struct IndexLoadArgs {
    /// Sharing peers that register files (1 to 100000).
    #[arg(long, env = "LAB_PEERS", default_value_t = 100, value_parser = count(1, 100_000))]
    peers: usize,
    /// Files each peer registers (1 to 1000000).
    #[arg(long, env = "LAB_FILES_PER_PEER", default_value_t = 1000, value_parser = count(1, 1_000_000))]
    files_per_peer: usize,
    /// Numbers of concurrent client connections for lookups and searches
    /// (1 to 1024 each), comma-separated: throughput and latency are
    /// measured at each, to show where the index saturates.
    #[arg(
        long,
        env = "LAB_CLIENTS",
        value_delimiter = ',',
        default_value = "1,4,16,64",
        value_parser = count(1, 1024)
    )]
    clients: Vec<usize>,
    /// How long lookups, then searches, are issued at each client count (10ms to 1h).
    #[arg(long, env = "LAB_DURATION", default_value = "1s", value_parser = duration(10 * MS, HOUR))]
    duration: Duration,
    #[command(flatten)]
    runs: RunsArg,
}

#[derive(Args, Debug, Clone)]
struct SessionsArgs {
    /// Peer sessions (1 to 100000).
    #[arg(long, env = "LAB_SESSIONS", default_value_t = 10_000, value_parser = count(1, 100_000))]
    sessions: usize,
    /// Worker processes holding the sessions (1 to 64): one process may
    /// hold 20,000 open files here.
    #[arg(long, env = "LAB_WORKERS", default_value_t = 4, value_parser = count(1, 64))]
    workers: usize,
    /// Files each session registers (0 to 10000).
    #[arg(long, env = "LAB_FILES_PER_SESSION", default_value_t = 10, value_parser = count(0, 10_000))]
    files_per_session: usize,
    /// Each session's heartbeat interval (100ms to 1h; peers use a third of
    /// the index's 60 s lease).
    #[arg(long, env = "LAB_HEARTBEAT", default_value = "20s", value_parser = duration(100 * MS, HOUR))]
    heartbeat: Duration,
    /// Length of each measuring window (100ms to 1h).
    #[arg(long, env = "LAB_DURATION", default_value = "20s", value_parser = duration(100 * MS, HOUR))]
    duration: Duration,
    /// Concurrent search connections (1 to 1024).
    #[arg(long, env = "LAB_CLIENTS", default_value_t = 4, value_parser = count(1, 1024))]
    clients: usize,
    /// After the sessions have registered their files, kill the index and
    /// start it again on the same port, and time until every session has
    /// logged in and registered its files again (with the peer daemon's
    /// reconnection backoff); replaces the search and heartbeat phases.
    #[arg(long, env = "LAB_RESTART_INDEX", value_parser = clap::builder::BoolishValueParser::new())]
    restart_index: bool,
    /// With --restart-index: the sessions wait as the registrar did before
    /// it spread reconnections over the whole window (the backoff plus up
    /// to a quarter of it): the baseline of the thundering-herd fix.
    #[arg(long, env = "LAB_OLD_BACKOFF", value_parser = clap::builder::BoolishValueParser::new())]
    old_backoff: bool,
    #[command(flatten)]
    runs: RunsArg,
}

#[derive(Args, Debug, Clone)]
struct ConnectionsArgs {
    /// Objects fetched while the RTT varies (1 to 10000).
    #[arg(long, env = "LAB_OBJECTS", default_value_t = 10, value_parser = count(1, 10_000))]
    objects: usize,
    /// Numbers of objects fetched at --rtt (1 to 10000 each), comma-separated.
    #[arg(
        long,
        env = "LAB_OBJECTS_SWEEP",
        value_delimiter = ',',
        default_value = "1,2,5,10",
        value_parser = count(1, 10_000)
    )]
    objects_sweep: Vec<usize>,
    /// Size of each object (1 byte to 1GiB).
    #[arg(long, env = "LAB_OBJECT_SIZE", default_value = "100KB", value_parser = size(1, GIB))]
    object_size: u64,
    /// Round-trip time injected by the delaying proxy while the number of objects varies (0 to 10s).
    #[arg(long, env = "LAB_RTT", default_value = "100ms", value_parser = duration(Duration::ZERO, 10_000 * MS))]
    rtt: Duration,
    /// Round-trip times for --objects objects (0 to 10s each), comma-separated.
    #[arg(
        long,
        env = "LAB_RTT_SWEEP",
        value_delimiter = ',',
        default_value = "10ms,50ms,100ms,200ms",
        value_parser = duration(Duration::ZERO, 10_000 * MS)
    )]
    rtt_sweep: Vec<Duration>,
    /// Bandwidth of the emulated link (server to client).
    #[arg(long, env = "LAB_BANDWIDTH", default_value = "10MB/s", value_parser = parse_rate)]
    bandwidth: u64,
    #[command(flatten)]
    runs: RunsArg,
}

#[derive(Args, Debug, Clone)]
struct SearchCostArgs {
    /// Numbers of nodes (1 to 1000000 each), comma-separated.
    #[arg(
        long = "n",
        env = "LAB_SEARCH_N",
        value_delimiter = ',',
        default_value = "100,1000",
        value_parser = count(1, 1_000_000)
    )]
    ns: Vec<usize>,
    /// Neighbours per node, 1 to 64 (the model's graph; the least the real overlay nodes keep).
    #[arg(long, env = "LAB_DEGREE", default_value_t = 4, value_parser = count(1, 64))]
    degree: usize,
    /// TTLs: a range like 1..7 or a list like 1,2,3.
    #[arg(long, env = "LAB_TTL", default_value = "1..7", value_parser = parse_ttls)]
    ttl: TtlList,
    /// Share of nodes holding the searched file (0 to 1).
    #[arg(long, env = "LAB_REPLICATION", default_value_t = 0.01, value_parser = fraction)]
    replication: f64,
    /// Queries per point (1 to 1000000).
    #[arg(long, env = "LAB_QUERIES", default_value_t = 200, value_parser = count(1, 1_000_000))]
    queries: usize,
    /// Node counts for flooding measured on real overlay nodes in this
    /// process (2 to 5000 each, comma-separated). Each node is a full
    /// p2p daemon, so keep these small on a small machine.
    #[arg(
        long = "overlay-n",
        env = "LAB_OVERLAY_N",
        value_delimiter = ',',
        default_value = "100,300",
        value_parser = count(2, 5000)
    )]
    overlay_ns: Vec<usize>,
    /// Queries per TTL on the real overlay (1 to 100000).
    #[arg(long, env = "LAB_OVERLAY_QUERIES", default_value_t = 50, value_parser = count(1, 100_000))]
    overlay_queries: usize,
    #[command(flatten)]
    runs: RunsArg,
}

#[derive(Debug, Clone)]
struct TtlList(Vec<u32>);

fn parse_ttls(s: &str) -> Result<TtlList, String> {
    let bad = || {
        format!(
            "TTLs {s:?} not understood: use a range like 1..7 or a list like 1,2,3 (each 1 to 64)"
        )
    };
    let list: Vec<u32> = if let Some((a, b)) = s.split_once("..") {
        let a: u32 = a.trim().parse().map_err(|_| bad())?;
        let b: u32 = b
            .trim()
            .trim_start_matches('=')
            .parse()
            .map_err(|_| bad())?;
        (a..=b).collect()
    } else {
        s.split(',')
            .map(|t| t.trim().parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?
    };
    if list.is_empty() || list.len() > 64 || list.iter().any(|t| *t == 0 || *t > 64) {
        return Err(bad());
    }
    Ok(TtlList(list))
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Time for N peers to get a file, per paradigm, beside the K&R bounds.
    Distribution {
        #[command(flatten)]
        args: DistributionArgs,
        #[command(flatten)]
        out: OutArg,
    },
    /// Register, lookup and search throughput and latency of the index; memory per file.
    IndexLoad {
        #[command(flatten)]
        args: IndexLoadArgs,
        #[command(flatten)]
        out: OutArg,
    },
    /// Non-persistent, persistent and pipelined fetches with injected RTT.
    Connections {
        #[command(flatten)]
        args: ConnectionsArgs,
        #[command(flatten)]
        out: OutArg,
    },
    /// Messages, reach and hit rate per query: index and flooding on real overlay nodes (measured), flooding on a random graph (model).
    SearchCost {
        #[command(flatten)]
        args: SearchCostArgs,
        #[command(flatten)]
        out: OutArg,
    },
    /// The index under many peer sessions that log in, register files and
    /// heartbeat while clients search: memory per session, heartbeat CPU,
    /// search p50/p99 (a real index-server process; sessions spread over
    /// worker processes).
    Sessions {
        #[command(flatten)]
        args: SessionsArgs,
        #[command(flatten)]
        out: OutArg,
    },
    /// (internal) the index server for `lab sessions`.
    #[command(hide = true)]
    IndexWorker {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        cap: usize,
    },
    /// (internal) one process of sessions for `lab sessions`.
    #[command(hide = true)]
    SessionWorker {
        #[arg(long)]
        index: String,
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        files: usize,
        #[arg(long)]
        heartbeat_ms: u64,
        #[arg(long)]
        old_backoff: bool,
    },
    /// Which path (direct, callback, hole punch, relay) connects a source
    /// and a downloader in each position {public, home NAT, strict NAT} on
    /// an emulated network, with time to first byte, throughput and bytes
    /// through the relay (needs root: network namespaces).
    Reachability {
        /// Size of each file fetched (e.g. 8MiB; 1 byte to 1GiB).
        #[arg(long, env = "LAB_FILE_SIZE", default_value = "8MiB", value_parser = size(1, GIB))]
        file_size: u64,
        /// The index relay's cap per session, e.g. 4MiB/s.
        #[arg(long, env = "LAB_RELAY_RATE", default_value = "4MiB/s", value_parser = parse_rate)]
        relay_rate: u64,
        #[command(flatten)]
        out: OutArg,
    },
    /// All four experiments with their default settings, each point measured --runs times (default 3).
    All {
        /// Times each point is measured (1 to 100).
        #[arg(long, env = "LAB_RUNS", default_value_t = 3, value_parser = count(1, 100))]
        runs: usize,
        #[command(flatten)]
        out: OutArg,
    },
}

fn report(name: &str, w: &Written) {
    outln!(
        "{name}: {} {} {} {}",
        w.csv.display(),
        w.svg.display(),
        w.png.display(),
        w.summary.display()
    );
}

async fn distribution(a: DistributionArgs, out: PathBuf, insecure: bool) -> anyhow::Result<()> {
    if insecure && a.engine == distribution::Engine::Swarm {
        anyhow::bail!(
            "--insecure runs this process's nodes and its --processes children in clear text; \
             the Swarm stack's services run encrypted: drop --insecure or use --engine local"
        );
    }
    let config = distribution::Config {
        ns: a.ns,
        file_size: a.file_size,
        server_up: a.server_up,
        peer_up: a.peer_up,
        peer_down: a.peer_down,
        modes: a.modes,
        out,
        processes: a.processes,
        handoff: a.handoff,
        runs: a.runs.runs.unwrap_or(1),
        nets: a.net,
        engine: a.engine,
    };
    let mut config = config;
    if a.compare_bittorrent && !config.modes.contains(&Mode::Bittorrent) {
        config.modes.push(Mode::Bittorrent);
    }
    // Each mode once (`--modes hybrid,hybrid` is not two runs).
    let mut seen = Vec::new();
    config.modes.retain(|m| {
        let new = !seen.contains(m);
        seen.push(*m);
        new
    });
    if config.engine == distribution::Engine::Swarm && config.modes.contains(&Mode::P2p) {
        config.modes.retain(|m| *m != Mode::P2p);
        if config.modes.is_empty() {
            anyhow::bail!(
                "--engine swarm runs client-server and hybrid (p2p runs with --engine local): \
                 choose --modes client-server,hybrid"
            );
        }
        errln!("--engine swarm: p2p left out (it runs with --engine local)");
    }
    if config.ns.is_empty() || config.ns.iter().any(|n| *n == 0 || *n > 256) {
        anyhow::bail!("--n takes peer counts from 1 to 256");
    }
    let (w, runs) = distribution::run(&config).await?;
    for r in &runs {
        match r.seconds {
            Some(s) => errln!(
                "{:>15} {:>13} N={:<3} run {} {s:7.2} s  bound {:6.2} s  ratio {:.2}{}",
                r.engine,
                r.mode.name(),
                r.n,
                r.run,
                r.bound(),
                s / r.bound(),
                if r.suspect() {
                    format!(
                        "  SUSPECT: faster than the bound allows (below {})",
                        distribution::SUSPECT_RATIO
                    )
                } else {
                    String::new()
                }
            ),
            None => errln!(
                "{:>15} {:>13} N={:<3} run {} {}",
                r.engine,
                r.mode.name(),
                r.n,
                r.run,
                r.status
            ),
        }
    }
    if config.runs > 1 {
        for p in distribution::summarize(&runs, config.server_up, config.peer_up) {
            if let (Some(s), Some(r)) = (p.seconds, p.ratio) {
                errln!(
                    "{:>15} {:>13} N={:<3} median {} s  ratio {}",
                    p.engine,
                    p.mode.name(),
                    p.n,
                    s.text(2),
                    r.text(2)
                );
            }
        }
    }
    report("distribution", &w);
    Ok(())
}

async fn index_load(a: IndexLoadArgs, out: PathBuf) -> anyhow::Result<()> {
    let config = index_load::Config {
        peers: a.peers,
        files_per_peer: a.files_per_peer,
        clients: a.clients,
        duration: a.duration,
        runs: a.runs.runs.unwrap_or(1),
        out,
    };
    let (w, stats, rss) = index_load::run(&config).await?;
    for s in &stats {
        errln!(
            "{:>9}: {:>9.0}/s  p50 {:>7.0} µs  p99 {:>7.0} µs",
            s.operation,
            s.per_second(),
            s.p50_us,
            s.p99_us
        );
    }
    if let Some(b) = rss {
        errln!("memory: {b:.0} bytes per indexed file (RSS growth)");
    }
    report("index-load", &w);
    Ok(())
}

async fn connections(a: ConnectionsArgs, out: PathBuf) -> anyhow::Result<()> {
    let config = connections::Config {
        objects: a.objects.max(1),
        objects_sweep: a.objects_sweep,
        object_size: a.object_size,
        rtt: a.rtt,
        rtt_sweep: a.rtt_sweep,
        bandwidth: a.bandwidth,
        runs: a.runs.runs.unwrap_or(1),
        out,
    };
    let (w, results) = connections::run(&config).await?;
    for r in &results {
        errln!(
            "{:>15}: {:.3} s  model {:.3} s",
            r.fetch.name(),
            r.seconds,
            r.model
        );
    }
    report("connections", &w);
    Ok(())
}

async fn sessions(a: SessionsArgs, out: PathBuf, insecure: bool) -> anyhow::Result<()> {
    lab::raise_open_files_limit();
    let config = lab::sessions::Config {
        sessions: a.sessions,
        workers: a.workers,
        files_per_session: a.files_per_session,
        heartbeat: a.heartbeat,
        duration: a.duration,
        clients: a.clients,
        runs: a.runs.runs.unwrap_or(1),
        restart_index: a.restart_index,
        old_backoff: a.old_backoff,
        insecure,
        out,
    };
    let (w, outcomes) = lab::sessions::run(&config).await?;
    for o in outcomes.iter().filter(|_| config.restart_index) {
        errln!(
            "run {}: {:.0} bytes/session, {:.0} bytes/file; after the index restart every session registered again {:.2} s after the kill ({:.2} s after the new index accepted; {} failed attempts retried)",
            o.run,
            o.bytes_per_session(&config),
            o.bytes_per_file(&config),
            o.restart_s,
            o.restart_from_up_s,
            o.restart_failed
        );
    }
    for o in outcomes.iter().filter(|_| !config.restart_index) {
        errln!(
            "run {}: {:.0} bytes/session, {:.0} bytes/file, {:.1} µs CPU/heartbeat ({:.1}% of a core), search p99 {:.0} µs quiet, {:.0} µs during heartbeats",
            o.run,
            o.bytes_per_session(&config),
            o.bytes_per_file(&config),
            o.cpu_per_heartbeat_us(),
            o.heartbeat_core_share(&config) * 100.0,
            o.quiet_p99_us,
            o.during_p99_us
        );
    }
    report("sessions", &w);
    Ok(())
}

async fn search_cost(a: SearchCostArgs, out: PathBuf) -> anyhow::Result<()> {
    let config = search_cost::Config {
        ns: a.ns,
        degree: a.degree,
        ttls: a.ttl.0,
        replication: a.replication.clamp(0.0, 1.0),
        queries: a.queries.max(1),
        overlay_ns: a.overlay_ns,
        overlay_queries: a.overlay_queries.max(1),
        runs: a.runs.runs.unwrap_or(1),
        out,
    };
    if config.ns.iter().any(|n| *n == 0 || *n > 1_000_000) {
        anyhow::bail!("--n takes node counts from 1 to 1000000");
    }
    if config.overlay_ns.iter().any(|n| *n < 2 || *n > 5_000) {
        anyhow::bail!(
            "--overlay-n takes node counts from 2 to 5000 (each is a real daemon in this process)"
        );
    }
    let (w, _) = search_cost::run(&config).await?;
    report("search-cost", &w);
    Ok(())
}

fn main() {
    // Before the runtime starts its threads: an empty variable is unset.
    common::env_vars::unset_empty(&["LAB_", "PEER_", "INDEX_"]);
    let cli = Cli::parse();
    if cli.insecure {
        // Every child (peer and index processes, session workers, hosts of
        // the emulated network) inherits clear text; set while this is
        // the only thread.
        for var in ["PEER_INSECURE", "INDEX_INSECURE", "LAB_INSECURE"] {
            std::env::set_var(var, "1");
        }
        if common::secure::Security::install(common::secure::Security::insecure()).is_err() {
            errln!("error: the connection security was set twice");
            std::process::exit(1);
        }
    }
    async_main(cli)
}

#[tokio::main]
async fn async_main(cli: Cli) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // A closed stderr (the log reader went away) must not turn every
        // log line into a panic: the line is dropped instead.
        .log_internal_errors(false)
        .init();
    if cli.insecure {
        tracing::warn!("--insecure: every node of this run speaks clear text");
    }
    // Ctrl-C or SIGTERM: remove the network namespaces and kill the child
    // processes before going (a plain exit would leave both behind).
    tokio::spawn(async {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        lab::processes::kill_all();
        lab::netns::cleanup_all();
        let left = lab::stack::remove_all();
        if left.is_empty() {
            errln!("interrupted: child processes, network namespaces and Swarm stacks removed");
        } else {
            errln!(
                "interrupted: child processes and network namespaces removed; Swarm stack(s) {} \
                 outlived the wait: remove with `docker stack rm {}`",
                left.join(", "),
                left.join(" ")
            );
        }
        std::process::exit(130);
    });
    let result = match cli.command {
        Command::Distribution { args, out } => distribution(args, out.out, cli.insecure).await,
        Command::IndexLoad { args, out } => index_load(args, out.out).await,
        Command::Connections { args, out } => connections(args, out.out).await,
        Command::SearchCost { args, out } => search_cost(args, out.out).await,
        Command::Sessions { args, out } => sessions(args, out.out, cli.insecure).await,
        Command::Reachability {
            file_size,
            relay_rate,
            out,
        } => {
            let config = lab::reachability::Config {
                file_size,
                relay_rate,
                out: out.out,
            };
            lab::reachability::run(&config)
                .await
                .map(|w| outln!("reachability: {} {}", w.csv.display(), w.summary.display()))
                .map_err(Into::into)
        }
        Command::IndexWorker { listen, cap } => lab::sessions::index_worker(listen, cap)
            .await
            .map_err(Into::into),
        Command::SessionWorker {
            index,
            first,
            count,
            files,
            heartbeat_ms,
            old_backoff,
        } => lab::sessions::worker(
            index,
            first,
            count,
            files,
            Duration::from_millis(heartbeat_ms.max(1)),
            old_backoff,
        )
        .await
        .map_err(Into::into),
        Command::All { runs, out } => run_all(runs, out.out, cli.insecure).await,
    };
    if let Err(e) = result {
        errln!("error: {}", common::report::error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

async fn run_all(runs: usize, out: PathBuf, insecure: bool) -> anyhow::Result<()> {
    // Defaults come from clap, so `lab all` and the single commands agree.
    // All parsed before anything runs: an invalid LAB_* variable is an
    // error at once, as in the single commands.
    let defaults =
        |name: &str| -> anyhow::Result<Command> { Ok(Cli::try_parse_from(["lab", name])?.command) };
    // Index load first: its memory figure is this process's growth, which
    // memory freed by the other experiments (and reused) would hide.
    let experiments = [
        defaults("index-load")?,
        defaults("connections")?,
        defaults("search-cost")?,
        defaults("distribution")?,
    ];
    // A --runs given to `lab all` (or its default 3) wins over LAB_RUNS's
    // single-command default of 1.
    let r = Some(runs);
    for experiment in experiments {
        match experiment {
            Command::IndexLoad { mut args, .. } => {
                args.runs.runs = r;
                index_load(args, out.clone()).await?
            }
            Command::Connections { mut args, .. } => {
                args.runs.runs = r;
                connections(args, out.clone()).await?
            }
            Command::SearchCost { mut args, .. } => {
                args.runs.runs = r;
                search_cost(args, out.clone()).await?
            }
            Command::Distribution { mut args, .. } => {
                args.runs.runs = r;
                distribution(args, out.clone(), insecure).await?
            }
            _ => unreachable!("only experiments are listed"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zero or nonsense is a usage error (exit status 2) that states the
    /// allowed range, in every experiment.
    #[test]
    fn flags_are_checked_when_parsed() {
        for (args, says) in [
            (vec!["distribution", "--n", "1,0"], "1..=256"),
            (vec!["distribution", "--file-size", "0"], "1B to 64GiB"),
            (vec!["distribution", "--peer-up", "0"], "zero"),
            (vec!["index-load", "--clients", "0"], "1..=1024"),
            (vec!["index-load", "--clients", "4,2000"], "1..=1024"),
            (vec!["distribution", "--runs", "0"], "1..=100"),
            (vec!["distribution", "--net", "vlan"], "loopback, netns"),
            (vec!["all", "--runs", "101"], "1..=100"),
            (vec!["connections", "--rtt-sweep", "10ms,20s"], "0ms to 10s"),
            (vec!["index-load", "--duration", "0"], "10ms to 1h"),
            (vec!["connections", "--objects", "0"], "1..=10000"),
            (vec!["search-cost", "--degree", "0"], "1..=64"),
            (vec!["search-cost", "--replication", "2"], "from 0 to 1"),
            (vec!["search-cost", "--ttl", "0..3"], "each 1 to 64"),
            (vec!["search-cost", "--overlay-n", "1"], "2..=5000"),
        ] {
            let e = Cli::try_parse_from(std::iter::once("lab").chain(args.iter().copied()))
                .unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(e.to_string().contains(says), "{args:?}: {e}");
        }
        assert!(Cli::try_parse_from(["lab", "distribution", "--file-size", "16mib"]).is_ok());
        assert!(Cli::try_parse_from(["lab", "connections", "--bandwidth", "10mb/s"]).is_ok());
    }

    #[test]
    fn booleans_take_one_and_zero() {
        for yes in ["1", "true", "YES", "on"] {
            assert_eq!(boolish(yes), Ok(true), "{yes}");
        }
        for no in ["0", "false", "No", "off", ""] {
            assert_eq!(boolish(no), Ok(false), "{no}");
        }
        assert!(boolish("maybe").is_err());
    }
}
