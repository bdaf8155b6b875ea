//! Time to distribute one file to N peers (Kurose & Ross, section 2.5).
//!
//! - **client-server**: the index server's store (`index-server --store`,
//!   its uploads capped at `server_up`) holds the file and is the only
//!   source; the N downloaders fetch it with the client-server get
//!   ([`peer::client_server::get_from_server`]): no library and no chunk
//!   server, so they never serve each other.
//! - **hybrid**: an index, a seed peer capped at `server_up` and N peer
//!   daemons capped at `peer_up` that download through
//!   [`peer::Daemon::download`]: they list the file as partial at the index,
//!   serve every verified chunk at once, pick rarest first and refresh their
//!   sources from the index (swarming).
//! - **p2p**: no index at all. A seed and N peer daemons are overlay nodes
//!   (`peer serve --mode p2p`), each dialling the node started before it
//!   and a random earlier one (a line with random shortcuts, degree kept
//!   at 4 from pongs). Each downloader floods a search
//!   for the file through its own node and downloads from every node that
//!   answered; nodes answer from their partial holdings too, and each
//!   downloader searches again every [`peer::pipeline::P2P_SWARM_SOURCE_REFRESH`],
//!   so downloaders find each other and swarm as in hybrid
//!   ([`peer::Daemon::download`] in p2p mode).
//!
//! The bounds, with F the file size, u_s the server's upload, u each peer's
//! upload and d_min the slowest download:
//! D_cs = max(N F / u_s, F / d_min) and
//! D_p2p >= max(F / u_s, F / d_min, N F / (u_s + N u)).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::id::FileId;
use peer::download::{EngineConfig, Progress};
use peer::rate::RateLimiter;
use tokio_util::sync::CancellationToken;

use crate::report::{self, Chart, Csv, Series, Spread, COLORS};
use crate::uplinks::Holdings;
use crate::{human_bytes, human_rate, LabError, Written};

/// A way of distributing the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Mode {
    ClientServer,
    Hybrid,
    P2p,
    /// A real BitTorrent swarm (aria2c and opentracker) with the same
    /// settings, for comparison ([`crate::bittorrent`]).
    Bittorrent,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::ClientServer => "client-server",
            Mode::Hybrid => "hybrid",
            Mode::P2p => "p2p",
            Mode::Bittorrent => "bittorrent",
        }
    }
}

/// How the nodes are connected and their rates capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Net {
    /// Every node on 127.0.0.1, its rates capped by the application's
    /// token buckets.
    Loopback,
    /// Every node in its own network namespace on a bridge, its uplink
    /// (and downlink, if capped) shaped by the kernel (`tbf`) instead of
    /// the application ([`crate::netns`]). Needs root.
    Netns,
}

/// Where the nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
pub enum Engine {
    /// On this machine: tasks in the lab's process, or processes with
    /// `--processes`, on loopback or in namespaces (`--net`).
    #[default]
    Local,
    /// On a Docker Swarm stack of the project's image ([`crate::stack`]):
    /// needs a Swarm manager and the image.
    Swarm,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub ns: Vec<usize>,
    pub file_size: u64,
    /// Server (seed) upload, bytes per second.
    pub server_up: u64,
    /// Each peer's upload, bytes per second.
    pub peer_up: u64,
    /// Each peer's download, bytes per second (none: unlimited).
    pub peer_down: Option<u64>,
    pub modes: Vec<Mode>,
    pub out: PathBuf,
    /// Real `index-server` and `peer` processes instead of in-process tasks.
    pub processes: bool,
    /// With `processes`, hybrid: each download handed to its peer's daemon
    /// by a `peer get` process instead of by the lab through the API.
    pub handoff: bool,
    /// Times each (mode, N) point is measured (at least 1).
    pub runs: usize,
    /// Networks to run on, each a set of points side by side in the CSV.
    pub nets: Vec<Net>,
    /// Where the nodes run (`--engine`).
    pub engine: Engine,
}

/// The textbook's lower bounds, in seconds.
pub fn bounds(n: usize, f: f64, us: f64, u: f64, dmin: Option<f64>) -> (f64, f64) {
    let n = n as f64;
    let down = dmin.map_or(0.0, |d| f / d);
    let cs = (n * f / us).max(down);
    let p2p = (f / us).max(down).max(n * f / (us + n * u));
    (cs, p2p)
}

/// One measured (or skipped) run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    /// Where the nodes ran ([`engine_name`]).
    pub engine: &'static str,
    pub mode: Mode,
    pub n: usize,
    /// Which repetition (1-based).
    pub run: usize,
    pub seconds: Option<f64>,
    pub bound_cs: f64,
    pub bound_p2p: f64,
    pub seed_bytes: u64,
    pub peer_bytes: u64,
    /// Whether the upload counters were read (in one process directly,
    /// from processes' stats logs; not from client-server processes or
    /// the Swarm engine).
    pub counted: bool,
    /// Seconds from the start until each peer held the whole file, sorted.
    pub completions: Vec<f64>,
    /// Seconds from the start until each peer had its first verified
    /// chunk (start-up and source discovery), sorted; not for
    /// client-server processes nor the Swarm engine.
    pub first_chunks: Vec<f64>,
    /// Seconds until 95% of all the bytes the N peers need had arrived
    /// (the rest is the endgame); as `first_chunks`.
    pub t95: Option<f64>,
    /// Where the upload capacity went: used, idle while holding a chunk an
    /// unfinished peer lacked, idle with nothing anyone lacked
    /// ([`crate::uplinks`]); swarms in one process or as processes.
    #[serde(skip)]
    pub uplinks: Option<crate::uplinks::Ledger>,
    pub status: String,
}

/// A run whose measured time is below this fraction of its bound beat a
/// lower bound by more than measurement noise: something is not counted
/// (a limiter letting bytes through early, a file already present, a clock
/// started late). The rate limiter lets a transfer go at most 5 ms early
/// (`transfer::rate::TOLERANCE`), 1.25% of the default 0.4 s bound.
pub const SUSPECT_RATIO: f64 = 0.95;

impl Run {
    /// The bound of this run's own paradigm.
    pub fn bound(&self) -> f64 {
        match self.mode {
            Mode::ClientServer => self.bound_cs,
            _ => self.bound_p2p,
        }
    }

    /// Measured time over the bound, when measured.
    pub fn ratio(&self) -> Option<f64> {
        self.seconds.map(|s| s / self.bound())
    }

    /// Faster than the bound allows (ratio below [`SUSPECT_RATIO`]): the
    /// figure is not to be trusted.
    pub fn suspect(&self) -> bool {
        self.ratio().is_some_and(|r| r < SUSPECT_RATIO)
    }

    /// The seed's (or server's) share of all uploaded bytes.
    pub fn seed_share(&self) -> Option<f64> {
        let total = self.seed_bytes + self.peer_bytes;
        (self.counted && total > 0).then(|| self.seed_bytes as f64 / total as f64)
    }

    /// Bytes uploaded over what the upload links could have carried in the
    /// measured time ((u_s + N u) T for the swarms, u_s T for
    /// client-server): how busy the uplinks were.
    pub fn upload_use(&self, server_up: u64, peer_up: u64) -> Option<f64> {
        let seconds = self.seconds.filter(|s| *s > 0.0)?;
        if !self.counted {
            return None;
        }
        let capacity = match self.mode {
            Mode::ClientServer => server_up as f64,
            _ => server_up as f64 + self.n as f64 * peer_up as f64,
        } * seconds;
        Some((self.seed_bytes + self.peer_bytes) as f64 / capacity)
    }

    /// The median time to a peer's first verified chunk.
    pub fn first_chunk_median(&self) -> Option<f64> {
        Spread::of(&self.first_chunks).map(|s| s.median)
    }

    /// Seconds after 95% of the bytes had arrived (the endgame).
    pub fn tail(&self) -> Option<f64> {
        Some(self.seconds? - self.t95?)
    }

    /// Share of the upload capacity left idle while its node held a chunk
    /// an unfinished peer lacked (the protocol's share of the idle time).
    pub fn idle_wanted(&self) -> Option<f64> {
        self.uplinks.as_ref()?.fractions().map(|(_, w, _)| w)
    }

    /// Share of the upload capacity idle because its node held nothing
    /// anybody lacked (the chunk model's share: start-up and the end).
    pub fn idle_nothing(&self) -> Option<f64> {
        self.uplinks.as_ref()?.fractions().map(|(_, _, n)| n)
    }
}

/// The runs of one (mode, N) point, summarized.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Point {
    pub engine: &'static str,
    pub mode: Mode,
    pub n: usize,
    pub bound: f64,
    pub runs: usize,
    pub ok: usize,
    pub seconds: Option<Spread>,
    pub ratio: Option<Spread>,
    pub seed_share: Option<Spread>,
    pub first_chunk: Option<Spread>,
    pub tail: Option<Spread>,
    pub upload_use: Option<Spread>,
    pub idle_wanted: Option<Spread>,
    pub idle_nothing: Option<Spread>,
    pub seed_bytes: Option<Spread>,
    pub peer_bytes: Option<Spread>,
    pub suspect: bool,
}

/// Groups `runs` by (engine, mode, N), in the order they first appear.
pub fn summarize(runs: &[Run], server_up: u64, peer_up: u64) -> Vec<Point> {
    let mut keys: Vec<(&'static str, Mode, usize)> = Vec::new();
    for r in runs {
        if !keys.contains(&(r.engine, r.mode, r.n)) {
            keys.push((r.engine, r.mode, r.n));
        }
    }
    keys.into_iter()
        .map(|(engine, mode, n)| {
            let these: Vec<&Run> = runs
                .iter()
                .filter(|r| r.engine == engine && r.mode == mode && r.n == n)
                .collect();
            let of = |f: &dyn Fn(&Run) -> Option<f64>| {
                Spread::of(&these.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            Point {
                engine,
                mode,
                n,
                bound: these[0].bound(),
                runs: these.len(),
                ok: these.iter().filter(|r| r.seconds.is_some()).count(),
                seconds: of(&|r| r.seconds),
                ratio: of(&|r| r.ratio()),
                seed_share: of(&|r| r.seed_share()),
                first_chunk: of(&|r| r.first_chunk_median()),
                tail: of(&|r| r.tail()),
                upload_use: of(&|r| r.upload_use(server_up, peer_up)),
                idle_wanted: of(&|r| r.idle_wanted()),
                idle_nothing: of(&|r| r.idle_nothing()),
                seed_bytes: of(&|r| r.counted.then_some(r.seed_bytes as f64)),
                peer_bytes: of(&|r| r.counted.then_some(r.peer_bytes as f64)),
                suspect: these.iter().any(|r| r.suspect()),
            }
        })
        .collect()
}

/// The CSV's columns. One row per run (`run` = 1, 2, ...) and one per
/// (mode, N) with `run` = `median`: its figures are the medians of the
/// runs, `min_s`/`max_s` and `ratio_min`/`ratio_max` their spread.
pub const CSV_COLUMNS: &[&str] = &[
    "mode",
    "n",
    "run",
    "engine",
    "file_bytes",
    "server_up_bps",
    "peer_up_bps",
    "peer_down_bps",
    "measured_s",
    "min_s",
    "max_s",
    "bound_cs_s",
    "bound_p2p_s",
    "bound_s",
    "ratio",
    "ratio_min",
    "ratio_max",
    "seed_upload_bytes",
    "peer_upload_bytes",
    "seed_share",
    "first_chunk_s",
    "endgame_s",
    "upload_use",
    "idle_wanted",
    "idle_nothing",
    "status",
    "suspect",
];

/// How the nodes run, as the CSV's `engine` column says it: `tasks` or
/// `processes` on loopback (application-shaped), `netns` or
/// `netns-processes` in namespaces (kernel-shaped), `swarm` on a Docker
/// Swarm stack (application-shaped, on the stack's overlay network).
pub fn engine_name(engine: Engine, processes: bool, net: Net) -> &'static str {
    if engine == Engine::Swarm {
        return "swarm";
    }
    match (processes, net) {
        (false, Net::Loopback) => "tasks",
        (true, Net::Loopback) => "processes",
        (false, Net::Netns) => "netns",
        (true, Net::Netns) => "netns-processes",
    }
}

/// Where one run's in-process nodes live: tasks on the caller's runtime
/// on loopback, or tasks on runtimes inside namespaces on a LAN.
pub(crate) struct Nodes {
    // Fields drop in order: the runtimes stop before the LAN goes.
    runtimes: Vec<crate::netns::HostRuntime>,
    lan: Option<crate::netns::Lan>,
}

/// One node: where its tasks run, its address, and whether the kernel
/// caps its rates (then the application must not).
#[derive(Clone)]
pub(crate) struct Node {
    handle: tokio::runtime::Handle,
    ip: std::net::IpAddr,
    kernel: bool,
}

impl Node {
    /// The cap the application applies: none when the kernel does.
    fn app(&self, cap: Option<u64>) -> Option<u64> {
        if self.kernel {
            None
        } else {
            cap
        }
    }

    /// Runs `f` on this node (in its namespace) and waits for it.
    async fn on<F, T>(&self, f: F) -> Result<T, LabError>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.handle.spawn(f).await.map_err(LabError::setup)
    }
}

impl Nodes {
    pub(crate) fn new(net: Net) -> Result<Nodes, LabError> {
        let lan = match net {
            Net::Loopback => None,
            Net::Netns => Some(crate::netns::Lan::create().map_err(LabError::setup)?),
        };
        Ok(Nodes {
            runtimes: Vec::new(),
            lan,
        })
    }

    /// A node named `label` whose uplink is capped at `up` and downlink
    /// at `down` bytes per second (by the kernel in a namespace; by the
    /// application, through [`Node::app`], on loopback).
    fn node(&mut self, label: &str, up: Option<u64>, down: Option<u64>) -> Result<Node, LabError> {
        match &mut self.lan {
            None => Ok(Node {
                handle: tokio::runtime::Handle::current(),
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                kernel: false,
            }),
            Some(lan) => {
                let host = lan.add_host(label, up, down).map_err(LabError::setup)?;
                let rt = host.runtime().map_err(LabError::setup)?;
                let node = Node {
                    handle: rt.handle().clone(),
                    ip: host.addr.into(),
                    kernel: true,
                };
                self.runtimes.push(rt);
                Ok(node)
            }
        }
    }
}

pub async fn run(config: &Config) -> Result<(Written, Vec<Run>), LabError> {
    std::fs::create_dir_all(&config.out)?;
    let work = tempfile::tempdir()?;
    let data = common::sample::bytes(config.file_size as usize, 0x5eed);
    let seed_dir = work.path().join("seed");
    std::fs::create_dir_all(&seed_dir)?;
    std::fs::write(seed_dir.join("lab-file.bin"), &data)?;
    let id = common::id::content_info(&data).id;
    drop(data);

    let repeats = config.runs.max(1);
    let nets = if config.nets.is_empty() {
        vec![Net::Loopback]
    } else {
        config.nets.clone()
    };
    if config.modes.contains(&Mode::Bittorrent) {
        crate::bittorrent::available()?;
    }
    if config.engine == Engine::Swarm {
        if config.processes || nets.iter().any(|n| *n != Net::Loopback) {
            return Err(LabError::Setup(
                "--engine swarm runs every node in a container on the stack's network: \
                 leave out --processes and --net"
                    .into(),
            ));
        }
        if let Some(m) = config.modes.iter().find(|m| matches!(m, Mode::P2p)) {
            return Err(LabError::Setup(format!(
                "--engine swarm runs client-server and hybrid (and bittorrent locally); \
                 run {} with --engine local",
                m.name()
            )));
        }
        crate::stack::available().await?;
    }
    if nets.contains(&Net::Netns) {
        crate::netns::available().map_err(|e| LabError::Setup(format!("--net netns: {e}")))?;
    }
    if !config.processes && config.engine == Engine::Local {
        let n = config.ns.iter().copied().max().unwrap_or(1);
        let limit = crate::raise_open_files_limit().unwrap_or(u64::MAX);
        if in_process_open_files(n) > limit {
            return Err(LabError::Setup(format!(
                "N = {n} peers in one process may need about {} open files, over this \
                 process's limit of {limit}: run it with --processes (each peer its own process)",
                in_process_open_files(n)
            )));
        }
    }
    let total = (config.ns.len() * config.modes.len() * repeats * nets.len()) as u64;
    let bar = report::progress(total, "distribution");
    let mut runs = Vec::new();
    let (f, us, u) = (
        config.file_size as f64,
        config.server_up as f64,
        config.peer_up as f64,
    );
    let dmin = config.peer_down.map(|d| d as f64);
    // Repetitions outermost: a slow spell on the machine spreads over the
    // points instead of spoiling every run of one of them.
    for k in 1..=repeats {
        let points = nets
            .iter()
            .flat_map(|net| config.modes.iter().map(move |m| (*net, *m)))
            .flat_map(|(net, m)| config.ns.iter().map(move |n| (net, m, *n)));
        for (net, mode, n) in points {
            // BitTorrent runs once per repetition, as processes on loopback.
            if mode == Mode::Bittorrent && net != nets[0] {
                bar.inc(1);
                continue;
            }
            let engine = if mode == Mode::Bittorrent {
                "aria2c"
            } else {
                engine_name(config.engine, config.processes, net)
            };
            {
                let (n, mode) = (&n, &mode);
                bar.set_message(format!("{engine} {} N={n} run {k}/{repeats}", mode.name()));
                let (bound_cs, bound_p2p) = bounds(*n, f, us, u, dmin);
                let run_dir = work
                    .path()
                    .join(format!("{engine}-{}-{n}-{k}", mode.name()));
                let mut note = None;
                let measured = if *mode == Mode::Bittorrent {
                    crate::bittorrent::swarm(config, *n, &seed_dir, &run_dir).await
                } else if config.engine == Engine::Swarm {
                    let data = common::sample::bytes(config.file_size as usize, 0x5eed);
                    let label = format!("{}-{n}-{k}", mode.name());
                    crate::stack::distribution(config, *mode, *n, &data, id, &run_dir, &label)
                        .await
                        .map(|(m, status)| {
                            note = Some(status);
                            m
                        })
                } else if config.processes {
                    let p2p = match mode {
                        Mode::ClientServer => None,
                        Mode::Hybrid => Some(false),
                        _ => Some(true),
                    };
                    match p2p {
                        None => {
                            crate::processes::client_server(
                                config, net, *n, id, &seed_dir, &run_dir,
                            )
                            .await
                        }
                        Some(p2p) => {
                            crate::processes::swarm(config, net, *n, id, &seed_dir, &run_dir, p2p)
                                .await
                        }
                    }
                } else {
                    match mode {
                        Mode::ClientServer => {
                            client_server(config, net, *n, id, &seed_dir, &run_dir).await
                        }
                        Mode::Hybrid => hybrid(config, net, *n, id, &seed_dir, &run_dir).await,
                        _ => p2p(config, net, *n, id, &seed_dir, &run_dir).await,
                    }
                };
                let mut run = Run {
                    engine,
                    mode: *mode,
                    n: *n,
                    run: k,
                    seconds: None,
                    bound_cs,
                    bound_p2p,
                    seed_bytes: 0,
                    peer_bytes: 0,
                    counted: false,
                    completions: Vec::new(),
                    first_chunks: Vec::new(),
                    t95: None,
                    uplinks: None,
                    status: "ok".into(),
                };
                match measured {
                    Ok(m) => {
                        if let Some(note) = note {
                            run.status = note;
                        }
                        run.seconds = Some(m.seconds);
                        run.seed_bytes = m.seed_bytes;
                        run.peer_bytes = m.peer_bytes;
                        run.counted = m.counted;
                        run.completions = m.completions;
                        run.first_chunks = m.first_chunks;
                        run.t95 = m.t95;
                        run.uplinks = m.uplinks;
                    }
                    Err(e) => run.status = e.to_string(),
                }
                if run.seconds.is_some() && std::env::var_os("LAB_KEEP_LOGS").is_some() {
                    // Asked for (with LAB_CHILD_LOG=debug, say): every run's.
                    keep_logs(&run_dir, &config.out.join("logs"));
                }
                if run.seconds.is_none() {
                    // Keep the logs of a failed run (processes write them).
                    let kept = keep_logs(&run_dir, &config.out.join("failed-logs"));
                    if let Some(dir) = kept {
                        run.status = format!("{} (logs in {})", run.status, dir.display());
                    }
                }
                let _ = std::fs::remove_dir_all(&run_dir);
                runs.push(run);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    let written = write_outputs(config, &runs)?;
    Ok((written, runs))
}

/// Open files N peers in one process may need at worst: each peer's
/// download connected to up to 64 sources (both ends in this process),
/// connections replaced while others close, plus its listener, index and
/// overlay links and files. Measured: 12,025 at the peak of a hybrid run
/// at N = 64 (2026-12-01; this gives 13,376); at N = 128 the in-process
/// run ran out of its 20,000 and a download stalled until the deadline.
pub fn in_process_open_files(n: usize) -> u64 {
    let n = n as u64;
    n * (3 * n.min(64) + 16) + 64
}

/// Copies the `*.log` and `*.stats` files (the processes' logs and
/// stats logs) of `run_dir` into `into/<run_dir's name>`;
/// returns that folder if there were any.
fn keep_logs(run_dir: &Path, into: &Path) -> Option<PathBuf> {
    let logs: Vec<PathBuf> = std::fs::read_dir(run_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log" || x == "stats"))
        .collect();
    if logs.is_empty() {
        return None;
    }
    let dest = into.join(run_dir.file_name()?);
    std::fs::create_dir_all(&dest).ok()?;
    for l in logs {
        let _ = std::fs::copy(&l, dest.join(l.file_name()?));
    }
    Some(dest)
}

/// What one run measured.
#[derive(Debug, Default)]
pub(crate) struct Measured {
    pub seconds: f64,
    pub seed_bytes: u64,
    pub peer_bytes: u64,
    /// Whether the upload counters were read.
    pub counted: bool,
    pub completions: Vec<f64>,
    pub first_chunks: Vec<f64>,
    pub t95: Option<f64>,
    /// Where the upload capacity went (in-process swarms only).
    pub uplinks: Option<crate::uplinks::Ledger>,
}

/// Samples the downloads' progress every 10 ms from `started`: when each
/// had its first verified chunk, and when 95% of all the bytes had arrived;
/// with [`Uplinks`], also where the upload capacity went
/// ([`crate::uplinks`]).
struct Watch {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Watched>,
}

/// What a [`Watch`] saw.
#[derive(Default)]
struct Watched {
    first_chunks: Vec<f64>,
    t95: Option<f64>,
    uplinks: Option<crate::uplinks::Ledger>,
}

/// The swarm's uploaders, for the uplink ledger: the seed (complete) and
/// every downloading peer (in the order of the watched progress), each with
/// its upload counter and cap.
struct Uplinks {
    id: FileId,
    seed: (Counter, f64),
    peers: Vec<(Counter, f64, peer::library::Library)>,
}

/// A node's upload counter: its rate limiter's grants (64 KiB pieces) where
/// the application caps it, else its chunk server's sent bytes (whole
/// chunks).
#[derive(Clone)]
enum Counter {
    Granted(Arc<RateLimiter>),
    Sent(Arc<peer::chunk_server::UploadStats>),
}

impl Counter {
    fn of(d: &peer::Daemon) -> Counter {
        match d.upload_limit() {
            Some(l) => Counter::Granted(l.clone()),
            None => Counter::Sent(d.uploads().clone()),
        }
    }

    fn read(&self) -> u64 {
        match self {
            Counter::Granted(l) => l.granted(),
            Counter::Sent(s) => s.bytes.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl Uplinks {
    /// Every node's holdings now, the seed first.
    fn holdings(&self, progress: &[Arc<Progress>], file_size: u64) -> Vec<Holdings> {
        let chunks = common::id::chunk_count(file_size) as u32;
        let mut held = vec![Holdings::complete(chunks)];
        for ((_, _, library), p) in self.peers.iter().zip(progress) {
            let done = p.done_bytes.load(std::sync::atomic::Ordering::Relaxed);
            held.push(if done >= file_size {
                Holdings::complete(chunks)
            } else {
                match library.get(&self.id) {
                    Some(peer::library::Holding::Partial(h)) => {
                        Holdings::from_bitfield(&h.bitfield(), chunks, true)
                    }
                    Some(peer::library::Holding::Complete(_)) => Holdings::complete(chunks),
                    None => Holdings::empty(chunks),
                }
            });
        }
        held
    }

    fn counters(&self) -> Vec<u64> {
        std::iter::once(self.seed.0.read())
            .chain(self.peers.iter().map(|(c, _, _)| c.read()))
            .collect()
    }

    fn caps(&self) -> Vec<f64> {
        std::iter::once(self.seed.1)
            .chain(self.peers.iter().map(|(_, c, _)| *c))
            .collect()
    }
}

impl Watch {
    fn start(
        progress: Vec<Arc<Progress>>,
        file_size: u64,
        started: Instant,
        uplinks: Option<Uplinks>,
    ) -> Watch {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut first: Vec<Option<f64>> = vec![None; progress.len()];
                let mut t95 = None;
                let need = 0.95 * file_size as f64 * progress.len() as f64;
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                // The ledger's last sample: when, the counters, the holdings.
                let mut ledger = crate::uplinks::Ledger::default();
                let mut last = uplinks.as_ref().map(|u| {
                    (
                        Instant::now(),
                        u.counters(),
                        u.holdings(&progress, file_size),
                    )
                });
                let caps = uplinks.as_ref().map(|u| u.caps()).unwrap_or_default();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let now = started.elapsed().as_secs_f64();
                    let mut sum = 0u64;
                    for (p, f) in progress.iter().zip(first.iter_mut()) {
                        let done = p.done_bytes.load(std::sync::atomic::Ordering::Relaxed);
                        sum += done;
                        if done > 0 && f.is_none() {
                            *f = Some(now);
                        }
                    }
                    if t95.is_none() && sum as f64 >= need {
                        t95 = Some(now);
                    }
                    if let (Some(u), Some((at, counters, held))) = (&uplinks, &mut last) {
                        if at.elapsed() >= crate::uplinks::SAMPLE {
                            let (now, counts) = (Instant::now(), u.counters());
                            let sent: Vec<u64> = counts
                                .iter()
                                .zip(counters.iter())
                                .map(|(n, o)| n.saturating_sub(*o))
                                .collect();
                            ledger.add((now - *at).as_secs_f64(), &caps, &sent, held);
                            *at = now;
                            *counters = counts;
                            *held = u.holdings(&progress, file_size);
                        }
                    }
                }
                let mut first: Vec<f64> = first.into_iter().flatten().collect();
                first.sort_by(f64::total_cmp);
                Watched {
                    first_chunks: first,
                    t95,
                    uplinks: uplinks.map(|_| ledger),
                }
            }
        });
        Watch { stop, task }
    }

    async fn finish(self) -> Watched {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// The engine `peer serve --fetch` uses for swarming, with the lab's
/// download cap.
fn swarm_engine(config: &Config, node: &Node) -> EngineConfig {
    EngineConfig {
        download_limit: node
            .app(config.peer_down)
            .map(|d| Arc::new(RateLimiter::new(d))),
        ..peer::swarm::swarm_engine()
    }
}

/// An index server running on `node`.
struct RunningIndex {
    addr: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// Its store's upload counters, if it has a store.
    uploads: Option<Arc<peer::chunk_server::UploadStats>>,
}

impl RunningIndex {
    async fn start(node: &Node, config: index_server::Config) -> Result<RunningIndex, LabError> {
        let ip = node.ip;
        node.on(async move {
            let server = crate::bind_index_at(config, ip).await?;
            let addr = server.local_addr().to_string();
            let uploads = server.store().map(|s| s.uploads.clone());
            // Spawned on this node's runtime: its sockets are the node's.
            let (stop, task) = crate::run_index(server);
            Ok::<_, LabError>(RunningIndex {
                addr,
                stop,
                task,
                uploads,
            })
        })
        .await?
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// A daemon sharing `share` (created) on `node` with these caps (the
/// application's only where the kernel does not cap), for `peer serve` at
/// `index` (empty: no index).
fn daemon_config(
    share: &Path,
    index: &str,
    node: &Node,
    up: Option<u64>,
    down: Option<u64>,
) -> Result<peer::ServeConfig, LabError> {
    std::fs::create_dir_all(share)?;
    let mut c = peer::ServeConfig::new(share.to_path_buf(), index.to_string());
    c.listen = std::net::SocketAddr::new(node.ip, 0);
    c.max_upload_rate = node.app(up);
    c.max_download_rate = node.app(down);
    // The slots `peer serve` takes at this rate, also where the kernel caps.
    c.upload_queue.slots = common::limits::upload_slots_for(up);
    // Every downloader comes from 127.0.0.1: no per-address cap here.
    c.max_upload_connections_per_ip = c.max_upload_connections;
    c.rescan_interval = Duration::from_secs(3600);
    // The lab writes its files whole before sharing them.
    c.settle = Duration::ZERO;
    Ok(c)
}

/// Starts a daemon on `node` (see [`daemon_config`]).
async fn start_daemon(
    c: peer::ServeConfig,
    node: &Node,
    shutdown: &CancellationToken,
) -> Result<peer::Daemon, LabError> {
    let shutdown = shutdown.clone();
    node.on(async move { peer::serve::start(c, shutdown).await })
        .await?
        .map_err(LabError::setup)
}

async fn wait_registered(d: &peer::Daemon, files: usize) -> Result<(), LabError> {
    let mut rx = d.registration().clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        rx.wait_for(|s| {
            matches!(s, peer::registrar::RegistrationState::Registered { files: f, .. } if *f == files)
        }),
    )
    .await
    .map_err(|_| LabError::Setup("a peer did not register within 30 s".into()))?
    .map_err(LabError::setup)?;
    Ok(())
}

async fn stop_daemons(daemons: Vec<peer::Daemon>, shutdown: CancellationToken) {
    shutdown.cancel();
    for d in daemons {
        d.wait().await;
    }
}

async fn client_server(
    config: &Config,
    net: Net,
    n: usize,
    id: FileId,
    seed_dir: &Path,
    run_dir: &Path,
) -> Result<Measured, LabError> {
    let mut nodes = Nodes::new(net)?;
    // The store serves a folder of its own (it keeps its hash cache there).
    let store_dir = run_dir.join("store");
    std::fs::create_dir_all(&store_dir)?;
    std::fs::copy(
        seed_dir.join("lab-file.bin"),
        store_dir.join("lab-file.bin"),
    )?;
    let server_node = nodes.node("server", Some(config.server_up), None)?;
    let mut store = index_server::store::StoreConfig::new(store_dir);
    store.max_upload_rate = server_node.app(Some(config.server_up));
    store.rescan_interval = Duration::from_secs(3600);
    store.settle = Duration::ZERO;
    let index = RunningIndex::start(
        &server_node,
        index_server::Config {
            store: Some(store),
            ..Default::default()
        },
    )
    .await?;
    let uploads = index
        .uploads
        .clone()
        .ok_or_else(|| LabError::Setup("the index server started without its store".into()))?;
    let clients: Vec<Node> = (0..n)
        .map(|i| nodes.node(&format!("c{i}"), None, config.peer_down))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let progress: Vec<Arc<Progress>> = (0..n).map(|_| Arc::new(Progress::default())).collect();
    let watch = Watch::start(progress.clone(), config.file_size, started, None);
    let mut downloads = tokio::task::JoinSet::new();
    for (i, (progress, node)) in progress.into_iter().zip(&clients).enumerate() {
        let engine = EngineConfig {
            max_sources: 1,
            stall_timeout: Duration::from_secs(60),
            download_limit: node
                .app(config.peer_down)
                .map(|d| Arc::new(RateLimiter::new(d))),
            ..EngineConfig::default()
        };
        let (addr, out_dir, stop) = (
            index.addr.clone(),
            run_dir.join(format!("client{i}")),
            index.stop.child_token(),
        );
        downloads.spawn_on(
            async move {
                let fetcher = peer::pipeline::Fetcher::ClientServer { server: addr };
                let options = peer::pipeline::FetchOptions::new(out_dir, engine, progress);
                peer::pipeline::fetch(&fetcher, &id.to_hex(), options, stop)
                    .await
                    .map(|_| started.elapsed().as_secs_f64())
            },
            &node.handle,
        );
    }
    let mut failure = None;
    let mut completions = Vec::new();
    while let Some(done) = downloads.join_next().await {
        match done {
            Ok(Ok(t)) => completions.push(t),
            Ok(Err(e)) => failure = Some(e.to_string()),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let Watched {
        first_chunks, t95, ..
    } = watch.finish().await;
    let seed_bytes = uploads.bytes.load(std::sync::atomic::Ordering::Relaxed);
    index.stop().await;
    if let Some(f) = failure {
        return Err(LabError::Setup(format!("a download failed: {f}")));
    }
    completions.sort_by(f64::total_cmp);
    Ok(Measured {
        seconds,
        seed_bytes,
        peer_bytes: 0,
        counted: true,
        completions,
        first_chunks,
        t95,
        uplinks: None,
    })
}

/// Hop limit of the p2p searches: Gnutella's 7 covers the lab's graphs.
const P2P_TTL: u8 = 7;

/// An overlay node (`peer serve --mode p2p`, no index) on `node`.
async fn start_overlay_node(
    share: &Path,
    neighbors: Vec<String>,
    node: &Node,
    up: Option<u64>,
    down: Option<u64>,
    shutdown: &CancellationToken,
) -> Result<peer::Daemon, LabError> {
    let mut c = daemon_config(share, "", node, up, down)?;
    c.p2p = Some(peer::overlay::OverlayConfig {
        neighbors,
        degree: 4,
        ping_interval: Duration::from_millis(500),
        link_idle: Duration::from_secs(60),
    });
    start_daemon(c, node, shutdown).await
}

/// Waits until a search through the overlay node at `via` finds the
/// seed's file (run it on that node: it connects from there).
pub(crate) async fn wait_reachable(via: String, id: FileId) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = peer::overlay::search(&via, vec![id.to_hex()], P2P_TTL, Duration::from_secs(2))
            .await
            .map(|r| r.hits.iter().any(|h| h.id == id.to_hex()))
            .unwrap_or(false);
        if found {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::Setup(format!(
                "the overlay node at {via} found no source within 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn p2p(
    config: &Config,
    net: Net,
    n: usize,
    id: FileId,
    seed_dir: &Path,
    run_dir: &Path,
) -> Result<Measured, LabError> {
    use rand::{Rng, SeedableRng};
    let mut nodes = Nodes::new(net)?;
    let shutdown = CancellationToken::new();
    let seed_node = nodes.node("seed", Some(config.server_up), None)?;
    let seed = start_overlay_node(
        seed_dir,
        Vec::new(),
        &seed_node,
        Some(config.server_up),
        None,
        &shutdown,
    )
    .await?;
    let mut addrs = vec![seed.listen_addr().to_string()];
    let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
    let mut peers = Vec::new();
    for i in 0..n {
        let node = nodes.node(&format!("p{i}"), Some(config.peer_up), config.peer_down)?;
        // The previous node (a line, so the graph is connected) and a random
        // earlier one (shortcuts, so searches reach everyone within the TTL);
        // the degree keeper adds more links from pongs.
        let mut neighbors = vec![addrs[addrs.len() - 1].clone()];
        let other = addrs[rng.random_range(0..addrs.len())].clone();
        if !neighbors.contains(&other) {
            neighbors.push(other);
        }
        let d = start_overlay_node(
            &run_dir.join(format!("peer{i}")),
            neighbors,
            &node,
            Some(config.peer_up),
            config.peer_down,
            &shutdown,
        )
        .await?;
        addrs.push(d.listen_addr().to_string());
        peers.push((Arc::new(d), node));
    }
    for (p, node) in &peers {
        node.on(wait_reachable(p.listen_addr().to_string(), id))
            .await??;
    }
    swarm_all(config, id, seed, peers, shutdown).await
}

async fn hybrid(
    config: &Config,
    net: Net,
    n: usize,
    id: FileId,
    seed_dir: &Path,
    run_dir: &Path,
) -> Result<Measured, LabError> {
    let mut nodes = Nodes::new(net)?;
    let index = RunningIndex::start(&nodes.node("index", None, None)?, Default::default()).await?;
    let shutdown = CancellationToken::new();
    let seed_node = nodes.node("seed", Some(config.server_up), None)?;
    let c = daemon_config(
        seed_dir,
        &index.addr,
        &seed_node,
        Some(config.server_up),
        None,
    )?;
    let seed = start_daemon(c, &seed_node, &shutdown).await?;
    wait_registered(&seed, 1).await?;
    let mut peers = Vec::new();
    for i in 0..n {
        let node = nodes.node(&format!("p{i}"), Some(config.peer_up), config.peer_down)?;
        let c = daemon_config(
            &run_dir.join(format!("peer{i}")),
            &index.addr,
            &node,
            Some(config.peer_up),
            config.peer_down,
        )?;
        let d = start_daemon(c, &node, &shutdown).await?;
        peers.push((Arc::new(d), node));
    }
    for (p, _) in &peers {
        wait_registered(p, 0).await?;
    }
    let measured = swarm_all(config, id, seed, peers, shutdown).await;
    index.stop().await;
    measured
}

/// Starts every peer's swarming download at once (through the index, or
/// through the overlay for overlay nodes), each on its own node, times them until
/// the last one is done, reads the upload counters and stops the daemons.
async fn swarm_all(
    config: &Config,
    id: FileId,
    seed: peer::Daemon,
    peers: Vec<(Arc<peer::Daemon>, Node)>,
    shutdown: CancellationToken,
) -> Result<Measured, LabError> {
    let started = Instant::now();
    let progress: Vec<Arc<Progress>> = peers
        .iter()
        .map(|_| Arc::new(Progress::default()))
        .collect();
    let uplinks = Uplinks {
        id,
        seed: (Counter::of(&seed), config.server_up as f64),
        peers: peers
            .iter()
            .map(|(p, _)| (Counter::of(p), config.peer_up as f64, p.library().clone()))
            .collect(),
    };
    let watch = Watch::start(progress.clone(), config.file_size, started, Some(uplinks));
    let mut downloads = tokio::task::JoinSet::new();
    for ((p, node), progress) in peers.iter().zip(progress) {
        let p = p.clone();
        let engine = swarm_engine(config, node);
        downloads.spawn_on(
            async move {
                let out = p.library().root().to_path_buf();
                // The daemon's mode (p2p: flooding through its own node,
                // hop limit DEFAULT_TTL = P2P_TTL) picks where sources come from.
                let done = p
                    .download(id, out, engine, progress)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                done.map(|()| started.elapsed().as_secs_f64())
            },
            &node.handle,
        );
    }
    let mut failure = None;
    let mut completions = Vec::new();
    while let Some(done) = downloads.join_next().await {
        match done {
            Ok(Ok(t)) => completions.push(t),
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let Watched {
        first_chunks,
        t95,
        uplinks,
    } = watch.finish().await;
    completions.sort_by(f64::total_cmp);
    let bytes = |d: &peer::Daemon| d.uploads().bytes.load(std::sync::atomic::Ordering::Relaxed);
    let seed_bytes = bytes(&seed);
    let peer_bytes = peers.iter().map(|(p, _)| bytes(p)).sum();
    let mut all = vec![seed];
    for (p, _) in peers {
        all.push(Arc::into_inner(p).ok_or_else(|| LabError::Setup("peer still in use".into()))?);
    }
    stop_daemons(all, shutdown).await;
    if let Some(f) = failure {
        return Err(LabError::Setup(format!("a download failed: {f}")));
    }
    Ok(Measured {
        seconds,
        seed_bytes,
        peer_bytes,
        counted: true,
        completions,
        first_chunks,
        t95,
        uplinks,
    })
}

fn write_outputs(config: &Config, runs: &[Run]) -> Result<Written, LabError> {
    let points = summarize(runs, config.server_up, config.peer_up);
    let mut csv = Csv::new(CSV_COLUMNS);
    let fmt = |x: f64| format!("{x:.3}");
    let opt = |x: Option<f64>| x.map_or(String::new(), fmt);
    let settings = [
        config.file_size.to_string(),
        config.server_up.to_string(),
        config.peer_up.to_string(),
        config.peer_down.map_or(String::new(), |d| d.to_string()),
    ];
    for r in runs {
        let mut row = vec![
            r.mode.name().into(),
            r.n.to_string(),
            r.run.to_string(),
            r.engine.into(),
        ];
        row.extend(settings.iter().cloned());
        row.extend([
            opt(r.seconds),
            String::new(),
            String::new(),
            fmt(r.bound_cs),
            fmt(r.bound_p2p),
            fmt(r.bound()),
            opt(r.ratio()),
            String::new(),
            String::new(),
            if r.counted {
                r.seed_bytes.to_string()
            } else {
                String::new()
            },
            if r.counted {
                r.peer_bytes.to_string()
            } else {
                String::new()
            },
            opt(r.seed_share()),
            opt(r.first_chunk_median()),
            opt(r.tail()),
            opt(r.upload_use(config.server_up, config.peer_up)),
            opt(r.idle_wanted()),
            opt(r.idle_nothing()),
            r.status.clone(),
            r.suspect().to_string(),
        ]);
        csv.row(row);
    }
    for p in &points {
        let first = runs
            .iter()
            .find(|r| r.engine == p.engine && r.mode == p.mode && r.n == p.n)
            .expect("a point has runs");
        let mut row = vec![
            p.mode.name().into(),
            p.n.to_string(),
            "median".into(),
            p.engine.into(),
        ];
        row.extend(settings.iter().cloned());
        let med = |s: &Option<Spread>| opt(s.map(|s| s.median));
        row.extend([
            med(&p.seconds),
            opt(p.seconds.map(|s| s.min)),
            opt(p.seconds.map(|s| s.max)),
            fmt(first.bound_cs),
            fmt(first.bound_p2p),
            fmt(p.bound),
            med(&p.ratio),
            opt(p.ratio.map(|s| s.min)),
            opt(p.ratio.map(|s| s.max)),
            p.seed_bytes
                .map_or(String::new(), |s| format!("{:.0}", s.median)),
            p.peer_bytes
                .map_or(String::new(), |s| format!("{:.0}", s.median)),
            med(&p.seed_share),
            med(&p.first_chunk),
            med(&p.tail),
            med(&p.upload_use),
            med(&p.idle_wanted),
            med(&p.idle_nothing),
            format!("{} of {} runs ok", p.ok, p.runs),
            p.suspect.to_string(),
        ]);
        csv.row(row);
    }

    let (f, us, u) = (
        config.file_size as f64,
        config.server_up as f64,
        config.peer_up as f64,
    );
    let dmin = config.peer_down.map(|d| d as f64);
    let repeats = config.runs.max(1);
    let panels = vec![
        time_panel(config, runs, &points),
        share_panel(config, runs, &points),
        cdf_panel(config, runs),
    ];

    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            let text = |s: &Option<Spread>, d: usize| s.map_or("-".into(), |s| s.text(d));
            let pct =
                |s: &Option<Spread>| s.map_or("-".into(), |s| format!("{:.0}%", s.median * 100.0));
            vec![
                p.engine.into(),
                p.mode.name().into(),
                p.n.to_string(),
                text(&p.seconds, 2),
                format!("{:.2}", p.bound),
                match &p.ratio {
                    Some(r) if p.suspect => format!("{} (suspect)", r.text(2)),
                    Some(r) => r.text(2),
                    None => "-".into(),
                },
                pct(&p.seed_share),
                text(&p.first_chunk, 2),
                text(&p.tail, 2),
                pct(&p.upload_use),
                pct(&p.idle_wanted),
                pct(&p.idle_nothing),
                format!("{}/{}", p.ok, p.runs),
            ]
        })
        .collect();
    let mut md = format!(
        "# Distribution time\n\nF = {}, u_s = {}, u = {} per peer, d = {}; \
         median of {repeats} run(s) with [min–max].\n\n{}\n\
         Bounds (Kurose & Ross): D_cs = max(N F/u_s, F/d_min); \
         D_p2p >= max(F/u_s, F/d_min, N F/(u_s + N u)). \
         The ratio is measured / the bound of the run's own paradigm \
         (client-server: D_cs; hybrid swarming and p2p: D_p2p). \
         A ratio below {SUSPECT_RATIO} beats a lower bound by more than \
         measurement noise and is marked (suspect): something was not counted.\n\n\
         Where the time goes: *first chunk* is the median time until a peer had \
         its first verified chunk (start-up and source discovery); *endgame* \
         the time after 95% of all the bytes had arrived; *uplinks busy* the \
         bytes uploaded over what the upload links could have carried in the \
         measured time ((u_s + N u) T; u_s T for client-server); *idle, held \
         wanted* the upload capacity left unused while its node held a chunk \
         some unfinished peer lacked (sampled every 50 ms: the protocol did not \
         ask for it in time); *idle, nothing wanted* the capacity unused while \
         its node held nothing anybody lacked (start-up before its first chunk, \
         the end); *seed share* the seed's part of the uploaded bytes.\n\n",
        human_bytes(f),
        human_rate(us),
        human_rate(u),
        dmin.map_or("unlimited".into(), human_rate),
        engines_text(runs),
    );
    md.push_str(&report::md_table(
        &[
            "engine",
            "mode",
            "N",
            "measured s",
            "bound s",
            "ratio",
            "seed share",
            "first chunk s",
            "endgame s",
            "uplinks busy",
            "idle, held wanted",
            "idle, nothing wanted",
            "runs ok",
        ],
        &rows,
    ));
    let failed: Vec<&Run> = runs.iter().filter(|r| r.seconds.is_none()).collect();
    if !failed.is_empty() {
        md.push_str("\nFailed runs:\n\n");
        for r in failed {
            md.push_str(&format!(
                "- {} {} N={} run {}: {}\n",
                r.engine,
                r.mode.name(),
                r.n,
                r.run,
                r.status
            ));
        }
    }
    if config.modes.contains(&Mode::P2p) {
        md.push_str(
            "\nclient-server: the index server's store is the only source. \
             hybrid: sources and partial sources from the index. p2p: no index; \
             sources found by flooding searches (TTL 7) through a random overlay \
             graph, repeated while the download runs to find the other downloaders.\n",
        );
    }
    report::write_all(&config.out, "distribution", &csv, &panels, &md)
}

/// The engines in `runs`, in order of appearance.
fn engines(runs: &[Run]) -> Vec<&'static str> {
    let mut e: Vec<&'static str> = Vec::new();
    for r in runs {
        if !e.contains(&r.engine) {
            e.push(r.engine);
        }
    }
    e
}

/// What each engine in `runs` is, one line each.
fn engines_text(runs: &[Run]) -> String {
    engines(runs)
        .iter()
        .map(|e| {
            let what = match *e {
                "processes" => {
                    "real index-server and peer processes on loopback, rates capped by the \
                     application's token buckets; the swarms' uploads and holdings read back \
                     from each daemon's stats log (`peer serve --stats-log`, every 50 ms)"
                }
                "netns" => {
                    "every node in its own network namespace on a bridge (tasks of the lab \
                     process on a thread inside the namespace), uplinks (and capped downlinks) \
                     shaped by the kernel's tbf instead of the application; no RTT is \
                     emulated (netem is not available: latency would be a user-space delay)"
                }
                "aria2c" => {
                    "a real BitTorrent swarm: an opentracker on 127.0.0.1, aria2c seed and \
                     peers (256 KiB pieces, DHT and local discovery off, peer exchange on) \
                     capped by aria2's own --max-overall-upload-limit, like p2pshare's \
                     loopback runs"
                }
                "swarm" => {
                    "a Docker Swarm stack (`--engine swarm`): the index, the seed and N peer \
                     replicas each a container of the project's image on the stack's overlay \
                     network, rates capped by the application's token buckets; the N fetches \
                     are `peer get --json` started at once with `docker exec` (handed to each \
                     replica's daemon, which swarms), so one exec's start-up (in the status \
                     column) is inside the time; upload counters are not collected"
                }
                "netns-processes" => {
                    "real index-server and peer processes, each in its own network namespace \
                     on a bridge, uplinks (and capped downlinks) shaped by the kernel's tbf \
                     instead of the application; no RTT is emulated (netem is not available)"
                }
                _ => {
                    "every node a task in the lab's process on loopback, rates capped by the \
                     application's token buckets"
                }
            };
            format!("- **{e}**: {what}.\n")
        })
        .collect()
}

fn mode_color(mode: Mode, engine: usize) -> plotters::style::RGBColor {
    let c = match mode {
        Mode::ClientServer => COLORS[1],
        Mode::Hybrid => COLORS[2],
        Mode::P2p => COLORS[4],
        Mode::Bittorrent => COLORS[5],
    };
    // A second engine in a darker shade, a third lighter.
    match engine {
        0 => c,
        1 => plotters::style::RGBColor(c.0 / 2, c.1 / 2, c.2 / 2),
        _ => plotters::style::RGBColor(c.0 / 2 + 128, c.1 / 2 + 128, c.2 / 2 + 128),
    }
}

/// "hybrid" with one engine, "hybrid (netns)" with several.
fn label(mode: Mode, engine: &str, several: bool) -> String {
    if several {
        format!("{} ({engine})", mode.name())
    } else {
        mode.name().to_string()
    }
}

/// Time against N (log x): the bounds as curves with their formulas, the
/// medians with min-max bars.
fn time_panel(config: &Config, runs: &[Run], points: &[Point]) -> Chart {
    let (f, us, u) = (
        config.file_size as f64,
        config.server_up as f64,
        config.peer_up as f64,
    );
    let dmin = config.peer_down.map(|d| d as f64);
    let repeats = config.runs.max(1);
    let max_n = config.ns.iter().copied().max().unwrap_or(1);
    let min_n = config.ns.iter().copied().min().unwrap_or(1);
    let curve = |pick: fn((f64, f64)) -> f64| -> Vec<(f64, f64)> {
        (min_n..=max_n)
            .map(|n| (n as f64, pick(bounds(n, f, us, u, dmin))))
            .collect()
    };
    let mut series = vec![
        Series::line("client-server bound D_cs", curve(|b| b.0), COLORS[3]),
        Series::line("P2P bound D_P2P", curve(|b| b.1), COLORS[0]),
    ];
    let engines = engines(runs);
    for (e, engine) in engines.iter().enumerate() {
        for mode in &config.modes {
            let mine: Vec<&Point> = points
                .iter()
                .filter(|p| p.mode == *mode && p.engine == *engine)
                .collect();
            let pts: Vec<(f64, f64)> = mine
                .iter()
                .filter_map(|p| p.seconds.map(|s| (p.n as f64, s.median)))
                .collect();
            let bars = mine
                .iter()
                .filter_map(|p| {
                    p.seconds
                        .filter(|s| s.count > 1)
                        .map(|s| (p.n as f64, s.min, s.max))
                })
                .collect();
            if !pts.is_empty() {
                series.push(
                    Series::points(
                        label(*mode, engine, engines.len() > 1),
                        pts,
                        mode_color(*mode, e),
                    )
                    .with_bars(bars),
                );
            }
        }
    }
    let mut chart = Chart::new(
        format!(
            "Time to distribute F = {} to N peers ({})",
            human_bytes(f),
            engines.join(", ")
        ),
        "N (peers, log scale)",
        "time (s)",
        series,
    );
    chart.x_log = max_n > min_n;
    chart.notes = vec![
        "D_cs = max(N F / u_s, F / d_min)".into(),
        "D_P2P >= max(F / u_s, F / d_min, N F / (u_s + N u))".into(),
        format!(
            "u_s = {}, u = {}, d = {}",
            human_rate(us),
            human_rate(u),
            dmin.map_or("unlimited".into(), human_rate)
        ),
        format!("dots: median of {repeats} run(s); bars: min to max"),
    ];
    chart
}

/// The seed's and the peers' share of the uploaded bytes against N.
fn share_panel(config: &Config, runs: &[Run], points: &[Point]) -> Chart {
    let mut series = Vec::new();
    let engines = engines(runs);
    for (e, engine) in engines.iter().enumerate() {
        for mode in config.modes.iter().filter(|m| **m != Mode::ClientServer) {
            let mine: Vec<&Point> = points
                .iter()
                .filter(|p| p.mode == *mode && p.engine == *engine)
                .collect();
            let seed: Vec<(f64, f64)> = mine
                .iter()
                .filter_map(|p| p.seed_share.map(|s| (p.n as f64, s.median)))
                .collect();
            if seed.is_empty() {
                continue;
            }
            let peers = seed.iter().map(|(n, s)| (*n, 1.0 - s)).collect();
            let color = mode_color(*mode, e);
            let name = label(*mode, engine, engines.len() > 1);
            series.push(Series::joined(format!("{name}: peers"), peers, color));
            let mut seed = Series::joined(format!("{name}: seed"), seed, color);
            // The seed's line drawn without dots (the peers' has them).
            seed.marks = false;
            series.push(seed);
        }
    }
    let mut chart = Chart::new(
        "Who uploaded the bytes (median)",
        "N (peers, log scale)",
        "share of uploaded bytes",
        series,
    );
    chart.x_log = config.ns.iter().max() > config.ns.iter().min();
    chart.y_range = Some((0.0, 1.05));
    chart.notes = vec!["dots: the peers' share; line alone: the seed's".into()];
    if chart.series.is_empty() {
        chart.notes = vec!["no upload counters (client-server processes, swarm)".into()];
    }
    chart
}

/// Per-peer completion times at the largest N, every run pooled: the
/// share of peers done against time, with the P2P bound.
fn cdf_panel(config: &Config, runs: &[Run]) -> Chart {
    let max_n = config.ns.iter().copied().max().unwrap_or(1);
    let mut series = Vec::new();
    let bound = runs.iter().find(|r| r.n == max_n).map(|r| r.bound_p2p);
    let engines = engines(runs);
    for (e, engine) in engines.iter().enumerate() {
        for mode in &config.modes {
            let mut times: Vec<f64> = runs
                .iter()
                .filter(|r| r.mode == *mode && r.n == max_n && r.engine == *engine)
                .flat_map(|r| r.completions.iter().copied())
                .collect();
            if times.is_empty() {
                continue;
            }
            times.sort_by(f64::total_cmp);
            let k = times.len() as f64;
            let mut pts = vec![(0.0, 0.0)];
            for (i, t) in times.iter().enumerate() {
                pts.push((*t, i as f64 / k));
                pts.push((*t, (i + 1) as f64 / k));
            }
            series.push(Series::line(
                label(*mode, engine, engines.len() > 1),
                pts,
                mode_color(*mode, e),
            ));
        }
    }
    if let Some(b) = bound {
        series.push(Series::line(
            "P2P bound",
            vec![(b, 0.0), (b, 1.0)],
            COLORS[0],
        ));
    }
    let mut chart = Chart::new(
        format!("Per-peer completion, N = {max_n} (all runs)"),
        "time since start (s)",
        "share of peers done",
        series,
    );
    chart.y_range = Some((0.0, 1.05));
    chart
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(k: usize, seconds: f64) -> Run {
        let (bound_cs, bound_p2p) = bounds(1, 16.0 * 1048576.0, 40.0 * 1048576.0, 4.0, None);
        Run {
            engine: "tasks",
            mode: Mode::ClientServer,
            n: 1,
            run: k,
            seconds: Some(seconds),
            bound_cs,
            bound_p2p,
            seed_bytes: 16 << 20,
            peer_bytes: 0,
            counted: true,
            completions: vec![seconds],
            first_chunks: vec![0.01],
            t95: Some(seconds * 0.9),
            uplinks: None,
            status: "ok".into(),
        }
    }

    fn config(dir: &Path, runs: usize) -> Config {
        Config {
            ns: vec![1],
            file_size: 16 << 20,
            server_up: 40 << 20,
            peer_up: 4 << 20,
            peer_down: None,
            modes: vec![Mode::ClientServer],
            out: dir.to_path_buf(),
            processes: false,
            handoff: false,
            runs,
            nets: vec![Net::Loopback],
            engine: Engine::Local,
        }
    }

    #[test]
    fn runs_faster_than_their_bound_are_flagged_in_every_output() {
        assert!(run(1, 0.224).suspect(), "ratio 0.56");
        assert!(!run(1, 0.395).suspect(), "within the limiter's 5 ms");
        assert!(!run(1, 0.6).suspect());
        let dir = tempfile::tempdir().unwrap();
        write_outputs(&config(dir.path(), 2), &[run(1, 0.224), run(2, 0.5)]).unwrap();
        let csv = std::fs::read_to_string(dir.path().join("distribution.csv")).unwrap();
        let rows: Vec<&str> = csv.lines().collect();
        assert!(rows[0].ends_with(",suspect"), "{}", rows[0]);
        assert!(rows[1].ends_with(",true"), "{}", rows[1]);
        assert!(rows[2].ends_with(",false"), "{}", rows[2]);
        // The median row: one suspect run makes the point suspect.
        assert!(
            rows[3].contains(",median,") && rows[3].ends_with(",true"),
            "{}",
            rows[3]
        );
        let md = std::fs::read_to_string(dir.path().join("distribution.md")).unwrap();
        assert!(md.contains("(suspect)"), "{md}");
    }

    /// Every run is kept, and one more row per point holds the median
    /// with the min and max of the runs.
    #[test]
    fn the_csv_keeps_every_run_and_their_median_and_spread() {
        let dir = tempfile::tempdir().unwrap();
        let runs = [run(1, 0.5), run(2, 0.8), run(3, 0.42)];
        write_outputs(&config(dir.path(), 3), &runs).unwrap();
        let csv = std::fs::read_to_string(dir.path().join("distribution.csv")).unwrap();
        let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
        let col = |name: &str| CSV_COLUMNS.iter().position(|c| *c == name).unwrap();
        assert_eq!(rows.len(), 1 + 3 + 1, "{csv}");
        let runs_col: Vec<&str> = rows[1..].iter().map(|r| r[col("run")]).collect();
        assert_eq!(runs_col, ["1", "2", "3", "median"]);
        let median = &rows[4];
        assert_eq!(median[col("measured_s")], "0.500");
        assert_eq!(median[col("min_s")], "0.420");
        assert_eq!(median[col("max_s")], "0.800");
        assert_eq!(median[col("seed_share")], "1.000");
        let md = std::fs::read_to_string(dir.path().join("distribution.md")).unwrap();
        assert!(md.contains("0.50 [0.42–0.80]"), "{md}");
    }

    #[test]
    fn spread_is_the_median_and_the_extremes() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.count), (2.0, 1.0, 3.0, 3));
        assert_eq!(Spread::of(&[1.0, 2.0, 4.0, 10.0]).unwrap().median, 3.0);
        assert!(Spread::of(&[]).is_none());
    }
}
