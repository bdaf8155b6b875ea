//! Load on the index server: how fast it registers, looks up and searches,
//! and how much memory an indexed file costs.
//!
//! `peers` sessions log in and register `files_per_peer` files each (batches
//! of 512, the protocol's largest); then, for each number of client
//! connections in `clients`, they issue `Lookup`s of random known ids for
//! `duration`, then keyword `Search`es for `duration`. Every request waits
//! for its answer (no pipelining), so the figures are round trips over
//! loopback through the real server; throughput against clients shows
//! where the server saturates. The whole is repeated `runs` times, each
//! time on a fresh server.
//!
//! Memory: the resident set size of this process (`/proc/self/statm`) before
//! and after the registrations, divided by the files registered. It counts
//! everything allocated meanwhile (the index's tables, but also allocator
//! slack and buffers of the connections), so it is an upper estimate, as
//! long as this runs first in its process: memory freed by earlier work is
//! reused without growing the resident set (`lab all` runs it first), and
//! measured in the first run only for the same reason.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::id::FileId;
use common::index_proto::{IndexRequest, Login, SharedFile};
use peer::index_client::IndexClient;
use rand::Rng;

use crate::report::{self, Chart, Csv, Series, Spread, COLORS};
use crate::{LabError, Written};

#[derive(Debug, Clone)]
pub struct Config {
    pub peers: usize,
    pub files_per_peer: usize,
    /// Numbers of concurrent client connections to measure at.
    pub clients: Vec<usize>,
    pub duration: Duration,
    /// Repetitions, each on a fresh server (at least 1).
    pub runs: usize,
    pub out: PathBuf,
}

/// One row per operation, client count and run (`run` = 1, 2, ...), and one
/// per operation and client count with `run` = `median` (the medians of the
/// runs; `*_min`/`*_max` their spread).
pub const CSV_COLUMNS: &[&str] = &[
    "operation",
    "clients",
    "run",
    "operations",
    "seconds",
    "per_second",
    "per_second_min",
    "per_second_max",
    "p50_us",
    "p99_us",
    "p99_min_us",
    "p99_max_us",
    "files_indexed",
    "rss_bytes_per_file",
];

/// Figures of one operation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpStats {
    pub operation: &'static str,
    /// Which repetition (1-based).
    pub run: usize,
    pub clients: usize,
    pub operations: u64,
    pub seconds: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl OpStats {
    pub fn per_second(&self) -> f64 {
        self.operations as f64 / self.seconds.max(1e-9)
    }
}

const WORDS: usize = 1000;

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn file_of(peer: usize, k: usize) -> SharedFile {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(peer as u64).to_le_bytes());
    id[8..16].copy_from_slice(&(k as u64).to_le_bytes());
    id[31] = 0x1a;
    SharedFile {
        id: FileId(id),
        name: format!(
            "music/peer{peer} track{k} w{} w{}.ogg",
            (peer * 31 + k) % WORDS,
            (k * 7) % WORDS
        ),
        size: 1_000_000 + k as u64,
    }
}

pub async fn run(config: &Config) -> Result<(Written, Vec<OpStats>, Option<f64>), LabError> {
    std::fs::create_dir_all(&config.out)?;
    let repeats = config.runs.max(1);
    let bar = report::progress(
        (repeats * (1 + 2 * config.clients.len())) as u64,
        "index-load",
    );
    let mut stats = Vec::new();
    let mut rss = None;
    for k in 1..=repeats {
        let (mut s, r) = one_run(config, k, &bar).await?;
        stats.append(&mut s);
        if k == 1 {
            rss = r;
        }
    }
    bar.finish_and_clear();
    let total_files = config.peers * config.files_per_peer;
    let written = write_outputs(config, &stats, rss, total_files)?;
    Ok((written, stats, rss))
}

async fn one_run(
    config: &Config,
    k: usize,
    bar: &indicatif::ProgressBar,
) -> Result<(Vec<OpStats>, Option<f64>), LabError> {
    let server = crate::bind_index(Default::default()).await?;
    let addr = server.local_addr().to_string();
    let (stop, task) = crate::run_index(server);

    // Register.
    bar.set_message("register");
    let rss_before = rss_bytes();
    let started = Instant::now();
    let mut sessions = tokio::task::JoinSet::new();
    for p in 0..config.peers {
        let (addr, files) = (addr.clone(), config.files_per_peer);
        sessions.spawn(async move {
            let mut client = IndexClient::connect(&addr).await?;
            client
                .request(&IndexRequest::Login(Login {
                    listen_port: 1024 + (p % 60000) as u16,
                    advertise: None,
                    nick: None,
                }))
                .await?;
            let mut latencies = Vec::new();
            let all: Vec<usize> = (0..files).collect();
            for batch in all.chunks(common::limits::MAX_FILES_PER_BATCH) {
                let files = batch.iter().map(|k| file_of(p, *k)).collect();
                let t = Instant::now();
                client.request(&IndexRequest::AddFiles { files }).await?;
                latencies.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Ok::<_, peer::index_client::IndexError>((client, latencies))
        });
    }
    let mut clients = Vec::new();
    let mut batch_latencies = Vec::new();
    while let Some(joined) = sessions.join_next().await {
        let (client, lat) = joined.map_err(LabError::setup)?.map_err(LabError::setup)?;
        clients.push(client);
        batch_latencies.extend(lat);
    }
    let register_secs = started.elapsed().as_secs_f64();
    let total_files = config.peers * config.files_per_peer;
    let rss_per_file = match (rss_before, rss_bytes()) {
        (Some(a), Some(b)) if total_files > 0 => {
            Some(b.saturating_sub(a) as f64 / total_files as f64)
        }
        _ => None,
    };
    batch_latencies.sort_by(f64::total_cmp);
    let mut stats = vec![OpStats {
        operation: "register",
        run: k,
        clients: config.peers,
        operations: total_files as u64,
        seconds: register_secs,
        p50_us: report::percentile(&batch_latencies, 50.0),
        p99_us: report::percentile(&batch_latencies, 99.0),
    }];
    bar.inc(1);

    for &c in &config.clients {
        for op in ["lookup", "search"] {
            bar.set_message(format!("{op}, {c} clients, run {k}"));
            stats.push(hammer(&addr, config, op, c, k).await?);
            bar.inc(1);
        }
    }
    drop(clients);
    stop.cancel();
    let _ = task.await;
    Ok((stats, rss_per_file))
}

/// `clients` connections issuing `op` requests for `duration`.
async fn hammer(
    addr: &str,
    config: &Config,
    op: &'static str,
    clients: usize,
    run: usize,
) -> Result<OpStats, LabError> {
    let deadline = Instant::now() + config.duration;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let (peers, files) = (config.peers.max(1), config.files_per_peer.max(1));
    for _ in 0..clients.max(1) {
        let addr = addr.to_string();
        tasks.spawn(async move {
            let mut client = IndexClient::connect(&addr).await?;
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let request = {
                    let mut rng = rand::rng();
                    match op {
                        "lookup" => IndexRequest::Lookup {
                            id: file_of(rng.random_range(0..peers), rng.random_range(0..files)).id,
                        },
                        _ => IndexRequest::Search {
                            words: vec![format!("w{}", rng.random_range(0..WORDS))],
                            limit: 100,
                        },
                    }
                };
                let t = Instant::now();
                match client.request(&request).await {
                    Ok(_) => {}
                    // An id or word nobody has is an answer too.
                    Err(peer::index_client::IndexError::Refused { .. }) => {}
                    Err(e) => return Err(e),
                }
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Ok::<_, peer::index_client::IndexError>(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.map_err(LabError::setup)?.map_err(LabError::setup)?);
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok(OpStats {
        operation: op,
        run,
        clients: clients.max(1),
        operations: all.len() as u64,
        seconds,
        p50_us: report::percentile(&all, 50.0),
        p99_us: report::percentile(&all, 99.0),
    })
}

/// The runs of one operation at one client count, summarized.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Point {
    pub operation: &'static str,
    pub clients: usize,
    pub per_second: Spread,
    pub p50_us: Spread,
    pub p99_us: Spread,
}

/// Groups `stats` by operation and client count, in order of appearance.
pub fn summarize(stats: &[OpStats]) -> Vec<Point> {
    let mut keys: Vec<(&'static str, usize)> = Vec::new();
    for s in stats {
        if !keys.contains(&(s.operation, s.clients)) {
            keys.push((s.operation, s.clients));
        }
    }
    keys.into_iter()
        .filter_map(|(operation, clients)| {
            let these: Vec<&OpStats> = stats
                .iter()
                .filter(|s| s.operation == operation && s.clients == clients)
                .collect();
            let of = |f: fn(&OpStats) -> f64| {
                Spread::of(&these.iter().map(|s| f(s)).collect::<Vec<_>>())
            };
            Some(Point {
                operation,
                clients,
                per_second: of(|s| s.per_second())?,
                p50_us: of(|s| s.p50_us)?,
                p99_us: of(|s| s.p99_us)?,
            })
        })
        .collect()
}

/// The smallest client count whose throughput is within 10% of the best:
/// more clients than that only queue.
pub fn saturation(points: &[Point], operation: &str) -> Option<(usize, f64)> {
    let mine: Vec<&Point> = points.iter().filter(|p| p.operation == operation).collect();
    let best = mine.iter().map(|p| p.per_second.median).fold(0.0, f64::max);
    mine.iter()
        .filter(|p| p.per_second.median >= 0.9 * best)
        .map(|p| (p.clients, p.per_second.median))
        .min_by_key(|p| p.0)
}

fn write_outputs(
    config: &Config,
    stats: &[OpStats],
    rss_per_file: Option<f64>,
    files: usize,
) -> Result<Written, LabError> {
    let points = summarize(stats);
    let mut csv = Csv::new(CSV_COLUMNS);
    let rss = rss_per_file.map_or(String::new(), |b| format!("{b:.0}"));
    for s in stats {
        csv.row(vec![
            s.operation.into(),
            s.clients.to_string(),
            s.run.to_string(),
            s.operations.to_string(),
            format!("{:.3}", s.seconds),
            format!("{:.0}", s.per_second()),
            String::new(),
            String::new(),
            format!("{:.0}", s.p50_us),
            format!("{:.0}", s.p99_us),
            String::new(),
            String::new(),
            files.to_string(),
            if s.run == 1 {
                rss.clone()
            } else {
                String::new()
            },
        ]);
    }
    for p in &points {
        csv.row(vec![
            p.operation.into(),
            p.clients.to_string(),
            "median".into(),
            String::new(),
            String::new(),
            format!("{:.0}", p.per_second.median),
            format!("{:.0}", p.per_second.min),
            format!("{:.0}", p.per_second.max),
            format!("{:.0}", p.p50_us.median),
            format!("{:.0}", p.p99_us.median),
            format!("{:.0}", p.p99_us.min),
            format!("{:.0}", p.p99_us.max),
            files.to_string(),
            rss.clone(),
        ]);
    }
    let repeats = config.runs.max(1);
    let measured = |op: &str, pick: fn(&Point) -> Spread, name: String, color| {
        let mine: Vec<&Point> = points.iter().filter(|p| p.operation == op).collect();
        Series::joined(
            name,
            mine.iter()
                .map(|p| (p.clients as f64, pick(p).median))
                .collect(),
            color,
        )
        .with_bars(
            mine.iter()
                .filter(|p| pick(p).count > 1)
                .map(|p| (p.clients as f64, pick(p).min, pick(p).max))
                .collect(),
        )
    };
    let mut throughput = Chart::new(
        format!("Index throughput, {files} files indexed"),
        "concurrent clients (log scale)",
        "requests per second (log scale)",
        vec![
            measured("lookup", |p| p.per_second, "lookup".into(), COLORS[0]),
            measured("search", |p| p.per_second, "search".into(), COLORS[1]),
        ],
    );
    let several = config.clients.len() > 1;
    throughput.x_log = several;
    throughput.y_log = true;
    throughput.notes = ["lookup", "search"]
        .iter()
        .filter_map(|op| saturation(&points, op))
        .zip(["lookup", "search"])
        .map(|((c, r), op)| format!("{op}: within 10% of its best ({r:.0}/s) from {c} clients"))
        .chain([format!("median of {repeats} run(s); bars: min to max")])
        .collect();
    let mut latency = Chart::new(
        "Index latency (one request at a time per client)",
        "concurrent clients (log scale)",
        "latency (µs, log scale)",
        vec![
            measured("lookup", |p| p.p50_us, "lookup p50".into(), COLORS[0]),
            measured("lookup", |p| p.p99_us, "lookup p99".into(), COLORS[5]),
            measured("search", |p| p.p50_us, "search p50".into(), COLORS[1]),
            measured("search", |p| p.p99_us, "search p99".into(), COLORS[3]),
        ],
    );
    latency.x_log = several;
    latency.y_log = true;
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            vec![
                p.operation.into(),
                p.clients.to_string(),
                p.per_second.text(0),
                p.p50_us.text(0),
                p.p99_us.text(0),
            ]
        })
        .collect();
    let mut md = format!(
        "# Index load\n\n{} peers x {} files = {} files indexed; {:?} clients for {:?} per \
         operation and client count, one request at a time per connection, over loopback; \
         median of {repeats} run(s) with [min–max], each run on a fresh server.\n\n",
        config.peers, config.files_per_peer, files, config.clients, config.duration
    );
    md.push_str(&report::md_table(
        &["operation", "clients", "per second", "p50 µs", "p99 µs"],
        &rows,
    ));
    for op in ["lookup", "search"] {
        if let Some((c, r)) = saturation(&points, op) {
            md.push_str(&format!(
                "\n{op}: throughput within 10% of its best ({r:.0}/s) from {c} clients on; \
                 beyond that, more clients only wait longer (the server is saturated)."
            ));
        }
    }
    md.push_str(&format!(
        "\n\nRegister counts files (per second) and times one 512-file `AddFiles` batch.\n\
         Memory per indexed file: {} (resident set growth of the whole lab process during \
         the first run's registration, from /proc/self/statm, divided by the files; an upper \
         estimate when this experiment runs first in the process, as `lab index-load` and \
         `lab all` run it; `p2pshare-bench index` measures the index server's own process at \
         1,000,000 files).\n",
        rss_per_file.map_or("not measurable here".into(), |b| format!("{b:.0} bytes"))
    ));
    report::write_all(&config.out, "index-load", &csv, &[throughput, latency], &md)
}
