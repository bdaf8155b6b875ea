//! What one search costs: messages per query, share of nodes reached and hit
//! rate, for the central index and for flooding, by TTL.
//!
//! - **index** (measured): an index server on loopback with `n` peers
//!   registered, each file held by `replicas` of them; every query is one
//!   `Search` request and one answer, reaches the one node that knows every
//!   peer's list, and is answered by a real round trip.
//! - **flooding** (model): the Gnutella-style overlay (issue 3) is not in this
//!   build, so flooding is simulated on a random graph of degree `degree`:
//!   a node forwards a query it sees for the first time to every neighbour
//!   but the sender while hops remain; duplicates are dropped but their
//!   messages still count. Rows say `model` in their status; measuring the
//!   real overlay needs the p2p mode.

use std::collections::VecDeque;
use std::path::PathBuf;

use common::id::FileId;
use common::index_proto::SharedFile;
use peer::index_client::IndexClient;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::report::{self, Chart, Csv, Series, COLORS};
use crate::{LabError, Written};

#[derive(Debug, Clone)]
pub struct Config {
    pub ns: Vec<usize>,
    pub degree: usize,
    pub ttls: Vec<u32>,
    /// Share of nodes holding the searched file (at least one node).
    pub replication: f64,
    pub queries: usize,
    pub out: PathBuf,
}

pub const CSV_COLUMNS: &[&str] = &[
    "method",
    "n",
    "degree",
    "ttl",
    "messages_per_query",
    "reach_share",
    "hit_rate",
    "status",
];

#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub method: &'static str,
    pub n: usize,
    pub ttl: u32,
    pub messages: f64,
    pub reach: f64,
    pub hit_rate: f64,
    pub status: String,
}

pub async fn run(config: &Config) -> Result<(Written, Vec<Row>), LabError> {
    std::fs::create_dir_all(&config.out)?;
    let bar = report::progress(config.ns.len() as u64 * 2, "search-cost");
    let mut rows = Vec::new();
    for &n in &config.ns {
        bar.set_message(format!("index n={n}"));
        let (hit_rate, status) = index_queries(n, config).await?;
        for &ttl in &config.ttls {
            rows.push(Row {
                method: "index",
                n,
                ttl,
                messages: 2.0,
                reach: 1.0,
                hit_rate,
                status: status.clone(),
            });
        }
        bar.inc(1);
        bar.set_message(format!("flooding n={n}"));
        let graph = random_graph(n, config.degree, 0x9a11 + n as u64);
        for &ttl in &config.ttls {
            let (messages, reach, hit_rate) =
                flood_stats(&graph, ttl, config, n as u64 + ttl as u64);
            rows.push(Row {
                method: "flooding",
                n,
                ttl,
                messages,
                reach,
                hit_rate,
                status:
                    "model: random graph; measuring the real overlay needs the p2p mode (issue 3)"
                        .into(),
            });
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let written = write_outputs(config, &rows)?;
    Ok((written, rows))
}

/// `n` sessions at a real index, `replicas` holding the target file;
/// `queries` searches for it over one connection. Returns the hit rate.
async fn index_queries(n: usize, config: &Config) -> Result<(f64, String), LabError> {
    let server = index_server::Server::bind(index_server::Config {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        ..Default::default()
    })
    .await
    .map_err(LabError::setup)?;
    let addr = server.local_addr().to_string();
    let state = server.index();
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let _ = server.run(stop).await;
        }
    });
    let now = tokio::time::Instant::now();
    let holders = ((n as f64 * config.replication).round() as usize).clamp(1, n.max(1));
    for p in 0..n {
        let session = state
            .login(format!("10.0.{}.{}:6699", p / 250, p % 250), None, now)
            .map_err(LabError::setup)?;
        let mut files = vec![SharedFile {
            id: FileId([(p % 251) as u8; 32]),
            name: format!("filler {p}.txt"),
            size: 10,
        }];
        if p < holders {
            files.push(SharedFile {
                id: FileId([0xEE; 32]),
                name: "target needle.bin".into(),
                size: 1000,
            });
        }
        state
            .add_files(session, files, now)
            .map_err(LabError::setup)?;
    }
    let mut client = IndexClient::connect(&addr).await.map_err(LabError::setup)?;
    let mut hits = 0;
    for _ in 0..config.queries {
        let found = client
            .search(vec!["needle".into()], 10)
            .await
            .map_err(LabError::setup)?;
        if found.iter().any(|h| h.id == FileId([0xEE; 32])) {
            hits += 1;
        }
    }
    stop.cancel();
    let _ = task.await;
    Ok((
        hits as f64 / config.queries.max(1) as f64,
        "measured: one request, one answer".into(),
    ))
}

/// A random graph where every node has about `degree` neighbours.
pub fn random_graph(n: usize, degree: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut adj: Vec<Vec<usize>> = vec![Vec::new(); n];
    if n < 2 {
        return adj;
    }
    let degree = degree.min(n - 1);
    // Stub matching: each node offers `degree` stubs; pair them at random,
    // skipping self-loops and duplicate edges.
    let mut stubs: Vec<usize> = (0..n)
        .flat_map(|i| std::iter::repeat_n(i, degree))
        .collect();
    stubs.shuffle(&mut rng);
    while stubs.len() >= 2 {
        let a = stubs.pop().expect("two stubs left");
        let b = stubs.pop().expect("two stubs left");
        if a != b && !adj[a].contains(&b) {
            adj[a].push(b);
            adj[b].push(a);
        }
    }
    adj
}

/// Average messages, share of other nodes reached, and hit rate of floods
/// with hop limit `ttl` from random origins.
pub fn flood_stats(graph: &[Vec<usize>], ttl: u32, config: &Config, seed: u64) -> (f64, f64, f64) {
    let n = graph.len();
    if n < 2 {
        return (0.0, 0.0, 0.0);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let holders = ((n as f64 * config.replication).round() as usize).clamp(1, n);
    let (mut messages, mut reached, mut hits) = (0u64, 0u64, 0u64);
    let queries = config.queries.max(1);
    for _ in 0..queries {
        let mut nodes: Vec<usize> = (0..n).collect();
        nodes.shuffle(&mut rng);
        let origin = nodes[0];
        let holder_set: Vec<usize> = nodes[1..=holders.min(n - 1)].to_vec();
        let mut seen = vec![false; n];
        seen[origin] = true;
        // (node, came from, hops left)
        let mut queue = VecDeque::from([(origin, usize::MAX, ttl)]);
        let mut count = 0u64;
        while let Some((node, from, left)) = queue.pop_front() {
            if left == 0 {
                continue;
            }
            for &next in &graph[node] {
                if next == from {
                    continue;
                }
                messages += 1;
                if !seen[next] {
                    seen[next] = true;
                    count += 1;
                    queue.push_back((next, node, left - 1));
                }
            }
        }
        reached += count;
        if holder_set.iter().any(|h| seen[*h]) {
            hits += 1;
        }
        let _ = rng.random::<u8>();
    }
    let q = queries as f64;
    (
        messages as f64 / q,
        reached as f64 / q / (n - 1) as f64,
        hits as f64 / q,
    )
}

fn write_outputs(config: &Config, rows: &[Row]) -> Result<Written, LabError> {
    let mut csv = Csv::new(CSV_COLUMNS);
    for r in rows {
        csv.row(vec![
            r.method.into(),
            r.n.to_string(),
            config.degree.to_string(),
            r.ttl.to_string(),
            format!("{:.1}", r.messages),
            format!("{:.3}", r.reach),
            format!("{:.3}", r.hit_rate),
            r.status.clone(),
        ]);
    }
    let csv_path = config.out.join("search-cost.csv");
    csv.write(&csv_path)?;
    let mut series = Vec::new();
    for (k, &n) in config.ns.iter().enumerate() {
        series.push(Series {
            name: format!("flooding model, n = {n}"),
            points: rows
                .iter()
                .filter(|r| r.method == "flooding" && r.n == n)
                .map(|r| (r.ttl as f64, r.messages))
                .collect(),
            line: true,
            color: COLORS[(k + 1) % COLORS.len()],
        });
    }
    series.push(Series {
        name: "index (measured), any n".into(),
        points: config.ttls.iter().map(|t| (*t as f64, 2.0)).collect(),
        line: true,
        color: COLORS[0],
    });
    let chart = Chart {
        title: format!("Messages per query, degree {}", config.degree),
        x_label: "TTL (hops)".into(),
        y_label: "messages per query".into(),
        series,
        x_names: None,
    };
    let (svg, png) = report::render(&chart, &config.out.join("search-cost"))?;
    let md_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.method.into(),
                r.n.to_string(),
                r.ttl.to_string(),
                format!("{:.1}", r.messages),
                format!("{:.1}%", r.reach * 100.0),
                format!("{:.1}%", r.hit_rate * 100.0),
            ]
        })
        .collect();
    let mut md = format!(
        "# Search cost\n\nDegree {}, the searched file held by {:.1}% of the nodes (at least one), \
         {} queries per point. **index**: measured on a real index server (one request, one \
         answer, every registered peer known). **flooding**: a model on a random graph, not \
         a measurement: the p2p overlay (issue 3) is not in this build.\n\n",
        config.degree,
        config.replication * 100.0,
        config.queries
    );
    md.push_str(&report::md_table(
        &[
            "method",
            "n",
            "TTL",
            "messages/query",
            "reached",
            "hit rate",
        ],
        &md_rows,
    ));
    let summary = config.out.join("search-cost.md");
    report::write_file(&summary, &md)?;
    Ok(Written {
        csv: csv_path,
        svg,
        png,
        summary,
    })
}
