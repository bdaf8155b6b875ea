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
//!   downloader searches again every [`peer::swarm::P2P_SOURCE_REFRESH`],
//!   so downloaders find each other and swarm as in hybrid
//!   ([`peer::Daemon::download_p2p`]).
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

use crate::report::{self, Chart, Csv, Series, COLORS};
use crate::{human_bytes, human_rate, LabError, Written};

/// A way of distributing the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Mode {
    ClientServer,
    Hybrid,
    P2p,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::ClientServer => "client-server",
            Mode::Hybrid => "hybrid",
            Mode::P2p => "p2p",
        }
    }
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
    pub mode: Mode,
    pub n: usize,
    pub seconds: Option<f64>,
    pub bound_cs: f64,
    pub bound_p2p: f64,
    pub seed_bytes: u64,
    pub peer_bytes: u64,
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
}

pub const CSV_COLUMNS: &[&str] = &[
    "mode",
    "n",
    "file_bytes",
    "server_up_bps",
    "peer_up_bps",
    "peer_down_bps",
    "measured_s",
    "bound_cs_s",
    "bound_p2p_s",
    "bound_s",
    "ratio",
    "seed_upload_bytes",
    "peer_upload_bytes",
    "status",
    "suspect",
];

pub async fn run(config: &Config) -> Result<(Written, Vec<Run>), LabError> {
    std::fs::create_dir_all(&config.out)?;
    let work = tempfile::tempdir()?;
    let data = common::sample::bytes(config.file_size as usize, 0x5eed);
    let seed_dir = work.path().join("seed");
    std::fs::create_dir_all(&seed_dir)?;
    std::fs::write(seed_dir.join("lab-file.bin"), &data)?;
    let id = common::id::content_info(&data).id;
    drop(data);

    let total = (config.ns.len() * config.modes.len()) as u64;
    let bar = report::progress(total, "distribution");
    let mut runs = Vec::new();
    let (f, us, u) = (
        config.file_size as f64,
        config.server_up as f64,
        config.peer_up as f64,
    );
    let dmin = config.peer_down.map(|d| d as f64);
    for mode in &config.modes {
        for (k, n) in config.ns.iter().enumerate() {
            bar.set_message(format!("{} N={n}", mode.name()));
            let (bound_cs, bound_p2p) = bounds(*n, f, us, u, dmin);
            let run_dir = work.path().join(format!("{}-{n}-{k}", mode.name()));
            let measured = if config.processes {
                let seconds = match mode {
                    Mode::ClientServer => {
                        crate::processes::client_server(config, *n, id, &seed_dir, &run_dir).await
                    }
                    Mode::Hybrid => {
                        crate::processes::swarm(config, *n, id, &seed_dir, &run_dir, false).await
                    }
                    Mode::P2p => {
                        crate::processes::swarm(config, *n, id, &seed_dir, &run_dir, true).await
                    }
                };
                seconds.map(|seconds| Measured {
                    seconds,
                    seed_bytes: 0,
                    peer_bytes: 0,
                })
            } else {
                match mode {
                    Mode::ClientServer => client_server(config, *n, id, &seed_dir, &run_dir).await,
                    Mode::Hybrid => hybrid(config, *n, id, &seed_dir, &run_dir).await,
                    Mode::P2p => p2p(config, *n, id, &seed_dir, &run_dir).await,
                }
            };
            let run = match measured {
                Ok(m) => Run {
                    mode: *mode,
                    n: *n,
                    seconds: Some(m.seconds),
                    bound_cs,
                    bound_p2p,
                    seed_bytes: m.seed_bytes,
                    peer_bytes: m.peer_bytes,
                    status: "ok".into(),
                },
                Err(e) => Run {
                    mode: *mode,
                    n: *n,
                    seconds: None,
                    bound_cs,
                    bound_p2p,
                    seed_bytes: 0,
                    peer_bytes: 0,
                    status: e.to_string(),
                },
            };
            let _ = std::fs::remove_dir_all(&run_dir);
            runs.push(run);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let written = write_outputs(config, &runs)?;
    Ok((written, runs))
}

struct Measured {
    seconds: f64,
    seed_bytes: u64,
    peer_bytes: u64,
}

/// The engine `peer serve --fetch` uses for swarming, with the lab's
/// download cap.
fn swarm_engine(config: &Config) -> EngineConfig {
    EngineConfig {
        download_limit: config.peer_down.map(|d| Arc::new(RateLimiter::new(d))),
        ..peer::swarm::swarm_engine()
    }
}

async fn start_index() -> Result<(String, CancellationToken, tokio::task::JoinHandle<()>), LabError>
{
    let server = crate::bind_index(Default::default()).await?;
    let addr = server.local_addr().to_string();
    let (stop, task) = crate::run_index(server);
    Ok((addr, stop, task))
}

/// A daemon sharing `share` (created) on loopback with these caps, for
/// `peer serve` at `index` (empty: no index).
fn daemon_config(
    share: &Path,
    index: &str,
    up: Option<u64>,
    down: Option<u64>,
) -> Result<peer::ServeConfig, LabError> {
    std::fs::create_dir_all(share)?;
    let mut c = peer::ServeConfig::new(share.to_path_buf(), index.to_string());
    c.listen = "127.0.0.1:0".parse().expect("valid address");
    c.max_upload_rate = up;
    c.max_download_rate = down;
    c.max_uploads = 256;
    // Every downloader comes from 127.0.0.1: no per-address cap here.
    c.max_upload_connections_per_ip = c.max_upload_connections;
    c.rescan_interval = Duration::from_secs(3600);
    // The lab writes its files whole before sharing them.
    c.settle = Duration::ZERO;
    Ok(c)
}

async fn start_daemon(
    share: &Path,
    index: &str,
    up: Option<u64>,
    down: Option<u64>,
    shutdown: &CancellationToken,
) -> Result<peer::Daemon, LabError> {
    let c = daemon_config(share, index, up, down)?;
    peer::serve::start(c, shutdown.clone())
        .await
        .map_err(LabError::setup)
}

async fn wait_registered(d: &peer::Daemon, files: usize) -> Result<(), LabError> {
    let mut rx = d.registration.clone();
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
    n: usize,
    id: FileId,
    seed_dir: &Path,
    run_dir: &Path,
) -> Result<Measured, LabError> {
    // The store serves a folder of its own (it keeps its hash cache there).
    let store_dir = run_dir.join("store");
    std::fs::create_dir_all(&store_dir)?;
    std::fs::copy(
        seed_dir.join("lab-file.bin"),
        store_dir.join("lab-file.bin"),
    )?;
    let mut store = index_server::store::StoreConfig::new(store_dir);
    store.max_upload_rate = Some(config.server_up);
    store.rescan_interval = Duration::from_secs(3600);
    store.settle = Duration::ZERO;
    let server = crate::bind_index(index_server::Config {
        store: Some(store),
        ..Default::default()
    })
    .await?;
    let addr = server.local_addr().to_string();
    let uploads = server
        .store()
        .ok_or_else(|| LabError::Setup("the index server started without its store".into()))?
        .uploads
        .clone();
    let (stop, server_task) = crate::run_index(server);
    let started = Instant::now();
    let mut downloads = tokio::task::JoinSet::new();
    for i in 0..n {
        let engine = EngineConfig {
            max_sources: 1,
            stall_timeout: Duration::from_secs(60),
            download_limit: config.peer_down.map(|d| Arc::new(RateLimiter::new(d))),
            ..EngineConfig::default()
        };
        let (addr, out_dir, stop) = (
            addr.clone(),
            run_dir.join(format!("client{i}")),
            stop.child_token(),
        );
        downloads.spawn(async move {
            peer::client_server::get_from_server(
                &addr,
                &id.to_hex(),
                out_dir,
                engine,
                Arc::new(Progress::default()),
                stop,
            )
            .await
        });
    }
    let mut failure = None;
    while let Some(done) = downloads.join_next().await {
        match done {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => failure = Some(e.to_string()),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let seed_bytes = uploads.bytes.load(std::sync::atomic::Ordering::Relaxed);
    stop.cancel();
    let _ = server_task.await;
    if let Some(f) = failure {
        return Err(LabError::Setup(format!("a download failed: {f}")));
    }
    Ok(Measured {
        seconds,
        seed_bytes,
        peer_bytes: 0,
    })
}

/// Hop limit of the p2p searches: Gnutella's 7 covers the lab's graphs.
const P2P_TTL: u8 = 7;

async fn start_node(
    share: &Path,
    neighbors: Vec<String>,
    up: Option<u64>,
    down: Option<u64>,
    shutdown: &CancellationToken,
) -> Result<peer::Daemon, LabError> {
    // No index: `peer serve --mode p2p`.
    let mut c = daemon_config(share, "", up, down)?;
    c.p2p = Some(peer::overlay::OverlayConfig {
        neighbors,
        degree: 4,
        ping_interval: Duration::from_millis(500),
        link_idle: Duration::from_secs(60),
    });
    peer::serve::start(c, shutdown.clone())
        .await
        .map_err(LabError::setup)
}

/// Waits until a search from `node` through the overlay finds the seed's file.
async fn wait_reachable(node: &peer::Daemon, id: FileId) -> Result<(), LabError> {
    let via = node.listen_addr.to_string();
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
    n: usize,
    id: FileId,
    seed_dir: &Path,
    run_dir: &Path,
) -> Result<Measured, LabError> {
    use rand::{Rng, SeedableRng};
    let shutdown = CancellationToken::new();
    let seed = start_node(
        seed_dir,
        Vec::new(),
        Some(config.server_up),
        None,
        &shutdown,
    )
    .await?;
    let mut addrs = vec![seed.listen_addr.to_string()];
    let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
    let mut peers = Vec::new();
    for i in 0..n {
        // The previous node (a line, so the graph is connected) and a random
        // earlier one (shortcuts, so searches reach everyone within the TTL);
        // the degree keeper adds more links from pongs.
        let mut neighbors = vec![addrs[addrs.len() - 1].clone()];
        let other = addrs[rng.random_range(0..addrs.len())].clone();
        if !neighbors.contains(&other) {
            neighbors.push(other);
        }
        let d = start_node(
            &run_dir.join(format!("peer{i}")),
            neighbors,
            Some(config.peer_up),
            config.peer_down,
            &shutdown,
        )
        .await?;
        addrs.push(d.listen_addr.to_string());
        peers.push(Arc::new(d));
    }
    for p in &peers {
        wait_reachable(p, id).await?;
    }
    let measured = swarm_all(config, id, seed, peers, true, shutdown).await;
    measured
}

async fn hybrid(
    config: &Config,
    n: usize,
    id: FileId,
    seed_dir: &Path,
    run_dir: &Path,
) -> Result<Measured, LabError> {
    let (index, index_stop, index_task) = start_index().await?;
    let shutdown = CancellationToken::new();
    let seed = start_daemon(seed_dir, &index, Some(config.server_up), None, &shutdown).await?;
    wait_registered(&seed, 1).await?;
    let mut peers = Vec::new();
    for i in 0..n {
        let d = start_daemon(
            &run_dir.join(format!("peer{i}")),
            &index,
            Some(config.peer_up),
            config.peer_down,
            &shutdown,
        )
        .await?;
        peers.push(Arc::new(d));
    }
    for p in &peers {
        wait_registered(p, 0).await?;
    }
    let measured = swarm_all(config, id, seed, peers, false, shutdown).await;
    index_stop.cancel();
    let _ = index_task.await;
    measured
}

/// Starts every peer's swarming download at once (through the index, or
/// through the overlay when `p2p`), times them until the last one is done,
/// reads the upload counters and stops the daemons.
async fn swarm_all(
    config: &Config,
    id: FileId,
    seed: peer::Daemon,
    peers: Vec<Arc<peer::Daemon>>,
    p2p: bool,
    shutdown: CancellationToken,
) -> Result<Measured, LabError> {
    let started = Instant::now();
    let mut downloads = tokio::task::JoinSet::new();
    for p in &peers {
        let p = p.clone();
        let engine = swarm_engine(config);
        downloads.spawn(async move {
            let out = p.library.root().to_path_buf();
            let progress = Arc::new(Progress::default());
            if p2p {
                p.download_p2p(id, P2P_TTL, out, engine, progress)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                p.download(id, out, engine, progress)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        });
    }
    let mut failure = None;
    while let Some(done) = downloads.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let bytes = |d: &peer::Daemon| d.uploads.bytes.load(std::sync::atomic::Ordering::Relaxed);
    let seed_bytes = bytes(&seed);
    let peer_bytes = peers.iter().map(|p| bytes(p)).sum();
    let mut all = vec![seed];
    for p in peers {
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
    })
}

fn write_outputs(config: &Config, runs: &[Run]) -> Result<Written, LabError> {
    let mut csv = Csv::new(CSV_COLUMNS);
    let fmt = |x: f64| format!("{x:.3}");
    for r in runs {
        csv.row(vec![
            r.mode.name().into(),
            r.n.to_string(),
            config.file_size.to_string(),
            config.server_up.to_string(),
            config.peer_up.to_string(),
            config.peer_down.map_or(String::new(), |d| d.to_string()),
            r.seconds.map_or(String::new(), fmt),
            fmt(r.bound_cs),
            fmt(r.bound_p2p),
            fmt(r.bound()),
            r.ratio().map_or(String::new(), fmt),
            r.seed_bytes.to_string(),
            r.peer_bytes.to_string(),
            r.status.clone(),
            r.suspect().to_string(),
        ]);
    }

    // Bound curves over every N from 1 to the largest, like the book's figure.
    let max_n = config.ns.iter().copied().max().unwrap_or(1);
    let (f, us, u) = (
        config.file_size as f64,
        config.server_up as f64,
        config.peer_up as f64,
    );
    let dmin = config.peer_down.map(|d| d as f64);
    let curve = |pick: fn((f64, f64)) -> f64| -> Vec<(f64, f64)> {
        (1..=max_n)
            .map(|n| (n as f64, pick(bounds(n, f, us, u, dmin))))
            .collect()
    };
    let mut series = vec![
        Series {
            name: "client-server bound D_cs".into(),
            points: curve(|b| b.0),
            line: true,
            color: COLORS[1],
        },
        Series {
            name: "P2P bound D_p2p".into(),
            points: curve(|b| b.1),
            line: true,
            color: COLORS[0],
        },
    ];
    for (k, mode) in config.modes.iter().enumerate() {
        let points: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r.mode == *mode)
            .filter_map(|r| r.seconds.map(|s| (r.n as f64, s)))
            .collect();
        if !points.is_empty() {
            series.push(Series {
                name: format!("{} measured", mode.name()),
                points,
                line: false,
                color: COLORS[[1, 2, 4][k % 3] % COLORS.len()],
            });
        }
    }
    let chart = Chart {
        title: format!(
            "Distribution time, F = {}, u_s = {}, u = {}",
            human_bytes(f),
            human_rate(us),
            human_rate(u)
        ),
        x_label: "N (peers)".into(),
        y_label: "time to distribute (s)".into(),
        series,
        x_names: None,
    };

    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.mode.name().into(),
                r.n.to_string(),
                r.seconds.map_or("-".into(), |s| format!("{s:.2}")),
                format!("{:.2}", r.bound()),
                match r.ratio() {
                    Some(ratio) if r.suspect() => format!("{ratio:.2} (suspect)"),
                    Some(ratio) => format!("{ratio:.2}"),
                    None => "-".into(),
                },
                human_bytes(r.seed_bytes as f64),
                human_bytes(r.peer_bytes as f64),
                r.status.clone(),
            ]
        })
        .collect();
    let mut md = format!(
        "# Distribution time\n\nF = {}, u_s = {}, u = {} per peer, d = {}.\n\
         Bounds (Kurose & Ross): D_cs = max(N F/u_s, F/d_min); \
         D_p2p >= max(F/u_s, F/d_min, N F/(u_s + N u)). \
         The ratio is measured / the bound of the run's own paradigm \
         (client-server: D_cs; hybrid swarming and p2p: D_p2p). \
         A ratio below {SUSPECT_RATIO} beats a lower bound by more than \
         measurement noise and is marked (suspect): something was not counted.\n\n",
        human_bytes(f),
        human_rate(us),
        human_rate(u),
        dmin.map_or("unlimited".into(), human_rate),
    );
    md.push_str(&report::md_table(
        &[
            "mode",
            "N",
            "measured s",
            "bound s",
            "ratio",
            "seed uploaded",
            "peers uploaded",
            "status",
        ],
        &rows,
    ));
    if config.modes.contains(&Mode::P2p) {
        md.push_str(
            "\nclient-server: the index server's store is the only source. \
             hybrid: sources and partial sources from the index. p2p: no index; \
             sources found by flooding searches (TTL 7) through a random overlay \
             graph, repeated while the download runs to find the other downloaders.\n",
        );
    }
    report::write_all(&config.out, "distribution", &csv, &chart, &md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seconds: f64) -> Run {
        let (bound_cs, bound_p2p) = bounds(1, 16.0 * 1048576.0, 40.0 * 1048576.0, 4.0, None);
        Run {
            mode: Mode::ClientServer,
            n: 1,
            seconds: Some(seconds),
            bound_cs,
            bound_p2p,
            seed_bytes: 0,
            peer_bytes: 0,
            status: "ok".into(),
        }
    }

    #[test]
    fn runs_faster_than_their_bound_are_flagged_in_every_output() {
        assert!(run(0.224).suspect(), "ratio 0.56");
        assert!(!run(0.395).suspect(), "within the limiter's 5 ms");
        assert!(!run(0.6).suspect());
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            ns: vec![1],
            file_size: 16 << 20,
            server_up: 40 << 20,
            peer_up: 4 << 20,
            peer_down: None,
            modes: vec![Mode::ClientServer],
            out: dir.path().to_path_buf(),
            processes: false,
        };
        write_outputs(&config, &[run(0.224), run(0.5)]).unwrap();
        let csv = std::fs::read_to_string(dir.path().join("distribution.csv")).unwrap();
        let rows: Vec<&str> = csv.lines().collect();
        assert!(rows[0].ends_with(",suspect"), "{}", rows[0]);
        assert!(rows[1].ends_with(",true"), "{}", rows[1]);
        assert!(rows[2].ends_with(",false"), "{}", rows[2]);
        let md = std::fs::read_to_string(dir.path().join("distribution.md")).unwrap();
        assert!(md.contains("0.56 (suspect)"), "{md}");
        assert!(!md.contains("1.25 (suspect)"), "{md}");
    }
}
