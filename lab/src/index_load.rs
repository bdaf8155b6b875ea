//! Load on the index server: how fast it registers, looks up and searches,
//! and how much memory an indexed file costs.
//!
//! `peers` sessions log in and register `files_per_peer` files each (batches
//! of 512, the protocol's largest); then `clients` connections issue
//! `Lookup`s of random known ids for `duration`, then keyword `Search`es for
//! `duration`. Every request waits for its answer (no pipelining), so the
//! figures are round trips over loopback through the real server.
//!
//! Memory: the resident set size of this process (`/proc/self/statm`) before
//! and after the registrations, divided by the files registered. It counts
//! everything allocated meanwhile (the index's tables, but also allocator
//! slack and buffers of the connections), so it is an upper estimate, as
//! long as this runs first in its process: memory freed by earlier work is
//! reused without growing the resident set (`lab all` runs it first).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::id::FileId;
use common::index_proto::{IndexRequest, Login, SharedFile};
use peer::index_client::IndexClient;
use rand::Rng;

use crate::report::{self, Chart, Csv, Series, COLORS};
use crate::{LabError, Written};

#[derive(Debug, Clone)]
pub struct Config {
    pub peers: usize,
    pub files_per_peer: usize,
    pub clients: usize,
    pub duration: Duration,
    pub out: PathBuf,
}

pub const CSV_COLUMNS: &[&str] = &[
    "operation",
    "clients",
    "operations",
    "seconds",
    "per_second",
    "p50_us",
    "p99_us",
    "files_indexed",
    "rss_bytes_per_file",
];

/// Figures of one operation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpStats {
    pub operation: &'static str,
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
    let server = crate::bind_index(Default::default()).await?;
    let addr = server.local_addr().to_string();
    let (stop, task) = crate::run_index(server);
    let bar = report::progress(3, "index-load");

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
        clients: config.peers,
        operations: total_files as u64,
        seconds: register_secs,
        p50_us: report::percentile(&batch_latencies, 50.0),
        p99_us: report::percentile(&batch_latencies, 99.0),
    }];
    bar.inc(1);

    for op in ["lookup", "search"] {
        bar.set_message(op);
        stats.push(hammer(&addr, config, op).await?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    drop(clients);
    stop.cancel();
    let _ = task.await;

    let written = write_outputs(config, &stats, rss_per_file, total_files)?;
    Ok((written, stats, rss_per_file))
}

/// `clients` connections issuing `op` requests for `duration`.
async fn hammer(addr: &str, config: &Config, op: &'static str) -> Result<OpStats, LabError> {
    let deadline = Instant::now() + config.duration;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let (peers, files) = (config.peers.max(1), config.files_per_peer.max(1));
    for _ in 0..config.clients.max(1) {
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
        clients: config.clients.max(1),
        operations: all.len() as u64,
        seconds,
        p50_us: report::percentile(&all, 50.0),
        p99_us: report::percentile(&all, 99.0),
    })
}

fn write_outputs(
    config: &Config,
    stats: &[OpStats],
    rss_per_file: Option<f64>,
    files: usize,
) -> Result<Written, LabError> {
    let mut csv = Csv::new(CSV_COLUMNS);
    for s in stats {
        csv.row(vec![
            s.operation.into(),
            s.clients.to_string(),
            s.operations.to_string(),
            format!("{:.3}", s.seconds),
            format!("{:.0}", s.per_second()),
            format!("{:.0}", s.p50_us),
            format!("{:.0}", s.p99_us),
            files.to_string(),
            rss_per_file.map_or(String::new(), |b| format!("{b:.0}")),
        ]);
    }
    let names: Vec<String> = stats.iter().map(|s| s.operation.to_string()).collect();
    let chart = Chart {
        title: format!(
            "Index server latency ({} files, {} clients)",
            files, config.clients
        ),
        x_label: "operation (register: one 512-file batch)".into(),
        y_label: "latency (µs)".into(),
        series: vec![
            Series {
                name: "p50".into(),
                points: stats
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i as f64, s.p50_us))
                    .collect(),
                line: false,
                color: COLORS[0],
            },
            Series {
                name: "p99".into(),
                points: stats
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i as f64, s.p99_us))
                    .collect(),
                line: false,
                color: COLORS[1],
            },
        ],
        x_names: Some(names),
    };
    let rows: Vec<Vec<String>> = stats
        .iter()
        .map(|s| {
            vec![
                s.operation.into(),
                s.clients.to_string(),
                s.operations.to_string(),
                format!("{:.0}", s.per_second()),
                format!("{:.0}", s.p50_us),
                format!("{:.0}", s.p99_us),
            ]
        })
        .collect();
    let mut md = format!(
        "# Index load\n\n{} peers x {} files = {} files indexed; {} clients for {:?} per operation, \
         one request at a time per connection, over loopback.\n\n",
        config.peers, config.files_per_peer, files, config.clients, config.duration
    );
    md.push_str(&report::md_table(
        &[
            "operation",
            "clients",
            "operations",
            "per second",
            "p50 µs",
            "p99 µs",
        ],
        &rows,
    ));
    md.push_str(&format!(
        "\nRegister counts files (per second) and times one 512-file `AddFiles` batch.\n\
         Memory per indexed file: {} (resident set growth of the whole lab process during \
         registration, from /proc/self/statm, divided by the files; an upper estimate when this \
         experiment runs first in the process, as `lab index-load` and `lab all` run it; \
         `p2pshare-bench index` measures the index server's own process at 1,000,000 files).\n",
        rss_per_file.map_or("not measurable here".into(), |b| format!("{b:.0} bytes"))
    ));
    report::write_all(&config.out, "index-load", &csv, &chart, &md)
}
