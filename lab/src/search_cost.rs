//! What one search costs: messages per query, share of nodes reached and hit
//! rate, for the central index and for flooding, by TTL.
//!
//! - **index** (measured): an index server on loopback with `n` peers
//!   registered, each file held by `replicas` of them; every query is one
//!   `Search` request and one answer, reaches the one node that knows every
//!   peer's list, and is answered by a real round trip.
//! - **overlay** (measured): `n` real overlay nodes (`peer serve --mode p2p`
//!   daemons) in this process on loopback, each joining through `degree / 2`
//!   random earlier nodes and keeping at least `degree` neighbours; queries
//!   from random nodes that do not hold the file, flooded with each TTL.
//!   Messages are the query copies sent over overlay links (duplicates
//!   included), as the searcher counts them from the answers
//!   ([`peer::overlay::search`]); the `QueryHit`s' trips back are reported
//!   apart. Run for `overlay_ns` (smaller than `ns` by default: a thousand
//!   daemons in one process on 2 cores is too heavy).
//! - **flooding model**: the same flooding simulated on a random graph of
//!   degree `degree` (a node forwards a query it sees for the first time to
//!   every neighbour but the sender while hops remain; duplicates are
//!   dropped but their messages still count), for every `n`.

use std::collections::VecDeque;
use std::path::PathBuf;

use common::id::FileId;
use common::index_proto::SharedFile;
use peer::index_client::IndexClient;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::report::{self, Chart, Csv, Series, Spread, COLORS};
use crate::{LabError, Written};

#[derive(Debug, Clone)]
pub struct Config {
    pub ns: Vec<usize>,
    pub degree: usize,
    pub ttls: Vec<u32>,
    /// Share of nodes holding the searched file (at least one node).
    pub replication: f64,
    pub queries: usize,
    /// Node counts for the measured overlay (real daemons).
    pub overlay_ns: Vec<usize>,
    /// Queries per TTL on the real overlay.
    pub overlay_queries: usize,
    /// Repetitions (at least 1), each with a new overlay, graph and queries.
    pub runs: usize,
    pub out: PathBuf,
}

/// One row per method, n, TTL and run (`run` = 1, 2, ...), and one per
/// method, n and TTL with `run` = `median` (medians of the runs, the
/// messages' min and max beside).
pub const CSV_COLUMNS: &[&str] = &[
    "method",
    "n",
    "degree",
    "ttl",
    "run",
    "messages_per_query",
    "messages_min",
    "messages_max",
    "reach_share",
    "hit_rate",
    "hit_messages_per_query",
    "status",
];

#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub method: &'static str,
    pub n: usize,
    pub ttl: u32,
    /// Which repetition (1-based).
    pub run: usize,
    pub messages: f64,
    pub reach: f64,
    pub hit_rate: f64,
    pub status: String,
    /// Overlay only: `QueryHit` messages per query (their trips back).
    pub hit_messages: f64,
}

pub async fn run(config: &Config) -> Result<(Written, Vec<Row>), LabError> {
    std::fs::create_dir_all(&config.out)?;
    let repeats = config.runs.max(1);
    let steps = (config.ns.len() * 2 + config.overlay_ns.len()) * repeats;
    let bar = report::progress(steps as u64, "search-cost");
    let mut rows = Vec::new();
    for k in 1..=repeats {
        rows.extend(one_run(config, k, &bar).await?);
    }
    bar.finish_and_clear();
    let written = write_outputs(config, &rows)?;
    Ok((written, rows))
}

async fn one_run(
    config: &Config,
    k: usize,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<Row>, LabError> {
    let mut rows = Vec::new();
    for &n in &config.ns {
        bar.set_message(format!("index n={n}"));
        let hit_rate = index_queries(n, config).await?;
        for &ttl in &config.ttls {
            rows.push(Row {
                method: "index",
                n,
                ttl,
                run: k,
                messages: 2.0,
                reach: 1.0,
                hit_rate,
                status: "measured: one request, one answer".into(),
                hit_messages: 0.0,
            });
        }
        bar.inc(1);
    }
    for &n in &config.overlay_ns {
        bar.set_message(format!("overlay n={n} (real nodes)"));
        rows.extend(overlay_queries(n, config, k).await?);
        bar.inc(1);
    }
    // Each run its own graph and queries (run 1 as before runs existed).
    let salt = (k as u64 - 1) << 32;
    for &n in &config.ns {
        bar.set_message(format!("flooding model n={n}"));
        let graph = random_graph(n, config.degree, (0x9a11 + n as u64) ^ salt);
        for &ttl in &config.ttls {
            let (messages, reach, hit_rate) =
                flood_stats(&graph, ttl, config, (n as u64 + ttl as u64) ^ salt);
            rows.push(Row {
                method: "flooding-model",
                n,
                ttl,
                run: k,
                messages,
                reach,
                hit_rate,
                status: "model: flooding simulated on a random graph".into(),
                hit_messages: 0.0,
            });
        }
        bar.inc(1);
    }
    Ok(rows)
}

/// `n` real overlay nodes, the needle held by `replication` of them;
/// `overlay_queries` searches per TTL from random nodes that lack it.
async fn overlay_queries(n: usize, config: &Config, k: usize) -> Result<Vec<Row>, LabError> {
    let work = tempfile::tempdir()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64((0x0e7 ^ n as u64) ^ ((k as u64 - 1) << 32));
    let holders = holders(n, config.replication);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let holder_set: Vec<usize> = order[..holders.min(n)].to_vec();
    let needle = common::sample::bytes(1000, 0xee);
    let shutdown = CancellationToken::new();
    let mut nodes: Vec<peer::Daemon> = Vec::new();
    let join = (config.degree / 2).max(1);
    for i in 0..n {
        let share = work.path().join(format!("node{i}"));
        std::fs::create_dir_all(&share)?;
        std::fs::write(share.join(format!("filler {i}.txt")), format!("node {i}"))?;
        if holder_set.contains(&i) {
            std::fs::write(share.join("target needle.bin"), &needle)?;
        }
        let mut earlier: Vec<String> = nodes.iter().map(|d| d.listen_addr().to_string()).collect();
        earlier.shuffle(&mut rng);
        earlier.truncate(join);
        let mut c = peer::ServeConfig::new(share, String::new());
        c.listen = "127.0.0.1:0".parse().expect("valid address");
        c.rescan_interval = std::time::Duration::from_secs(3600);
        // The lab writes its files whole before sharing them.
        c.settle = std::time::Duration::ZERO;
        c.p2p = Some(peer::overlay::OverlayConfig {
            neighbors: earlier,
            degree: config.degree.max(1),
            // Slow pings: hundreds of nodes pinging often would load the
            // 2 cores the queries are measured on.
            ping_interval: std::time::Duration::from_secs(2),
            link_idle: std::time::Duration::from_secs(120),
        });
        nodes.push(
            peer::serve::start(c, shutdown.clone())
                .await
                .map_err(LabError::setup)?,
        );
    }
    // Let the degree keepers settle: every node at its degree (or 10 s).
    let degree_of = |d: &peer::Daemon| d.overlay().map_or(0, |o| o.neighbours().len());
    let settle = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::time::Instant::now() < settle
        && nodes
            .iter()
            .any(|d| degree_of(d) < config.degree.min(n - 1))
    {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let degrees: Vec<usize> = nodes.iter().map(degree_of).collect();
    let mean_degree = degrees.iter().sum::<usize>() as f64 / n.max(1) as f64;
    let min_degree = degrees.iter().copied().min().unwrap_or(0);

    let origins: Vec<usize> = (0..n).filter(|i| !holder_set.contains(i)).collect();
    if origins.is_empty() {
        return Err(LabError::Setup(
            "every overlay node holds the file: lower the replication".into(),
        ));
    }
    let queries = config.overlay_queries.max(1);
    let mut rows = Vec::new();
    for &ttl in &config.ttls {
        let (mut messages, mut hit_messages, mut reached, mut hits, mut incomplete) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        for _ in 0..queries {
            // A node at its link limit turns a search client away as busy:
            // search from another one then.
            let mut attempt = 0;
            let report = loop {
                let origin = origins[rng.random_range(0..origins.len())];
                let via = nodes[origin].listen_addr().to_string();
                match peer::overlay::search(
                    &via,
                    vec!["needle".into()],
                    ttl.min(255) as u8,
                    std::time::Duration::from_secs(5),
                )
                .await
                {
                    Ok(r) => break r,
                    Err(e) if attempt >= 20 => return Err(LabError::setup(e)),
                    Err(_) => attempt += 1,
                }
            };
            messages += report.query_messages;
            hit_messages += report.hit_messages;
            // The origin answers too; the model counts the others.
            reached += report.nodes_reached.saturating_sub(1);
            if !report.hits.is_empty() {
                hits += 1;
            }
            if !report.complete {
                incomplete += 1;
            }
        }
        let q = queries as f64;
        rows.push(Row {
            method: "overlay",
            n,
            ttl,
            run: k,
            messages: messages as f64 / q,
            reach: reached as f64 / q / (n.max(2) - 1) as f64,
            hit_rate: hits as f64 / q,
            status: format!(
                "measured: {n} real overlay nodes; degree mean {mean_degree:.1} min {min_degree}; \
                 {queries} queries; {incomplete} not fully accounted for"
            ),
            hit_messages: hit_messages as f64 / q,
        });
    }
    shutdown.cancel();
    for d in nodes {
        d.wait().await;
    }
    Ok(rows)
}

/// `n` sessions at a real index, `replicas` holding the target file;
/// `queries` searches for it over one connection. Returns the hit rate.
async fn index_queries(n: usize, config: &Config) -> Result<f64, LabError> {
    let server = crate::bind_index(Default::default()).await?;
    let addr = server.local_addr().to_string();
    let state = server.index();
    let (stop, task) = crate::run_index(server);
    let now = tokio::time::Instant::now();
    let holders = holders(n, config.replication);
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
    Ok(hits as f64 / config.queries.max(1) as f64)
}

/// How many of `n` nodes hold the file: the replication share, at least one.
fn holders(n: usize, replication: f64) -> usize {
    ((n as f64 * replication).round() as usize).clamp(1, n.max(1))
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
    let holders = holders(n, config.replication);
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

/// The runs of one method, n and TTL, summarized.
#[derive(Debug, Clone)]
pub struct Point {
    pub method: &'static str,
    pub n: usize,
    pub ttl: u32,
    pub messages: Spread,
    pub reach: Spread,
    pub hit_rate: Spread,
    pub hit_messages: Spread,
}

/// Groups `rows` by method, n and TTL, in order of appearance.
pub fn summarize(rows: &[Row]) -> Vec<Point> {
    let mut keys: Vec<(&'static str, usize, u32)> = Vec::new();
    for r in rows {
        if !keys.contains(&(r.method, r.n, r.ttl)) {
            keys.push((r.method, r.n, r.ttl));
        }
    }
    keys.into_iter()
        .filter_map(|(method, n, ttl)| {
            let these: Vec<&Row> = rows
                .iter()
                .filter(|r| r.method == method && r.n == n && r.ttl == ttl)
                .collect();
            let of =
                |f: fn(&Row) -> f64| Spread::of(&these.iter().map(|r| f(r)).collect::<Vec<_>>());
            Some(Point {
                method,
                n,
                ttl,
                messages: of(|r| r.messages)?,
                reach: of(|r| r.reach)?,
                hit_rate: of(|r| r.hit_rate)?,
                hit_messages: of(|r| r.hit_messages)?,
            })
        })
        .collect()
}

fn write_outputs(config: &Config, rows: &[Row]) -> Result<Written, LabError> {
    let points = summarize(rows);
    let mut csv = Csv::new(CSV_COLUMNS);
    for r in rows {
        csv.row(vec![
            r.method.into(),
            r.n.to_string(),
            config.degree.to_string(),
            r.ttl.to_string(),
            r.run.to_string(),
            format!("{:.1}", r.messages),
            String::new(),
            String::new(),
            format!("{:.3}", r.reach),
            format!("{:.3}", r.hit_rate),
            format!("{:.1}", r.hit_messages),
            r.status.clone(),
        ]);
    }
    for p in &points {
        csv.row(vec![
            p.method.into(),
            p.n.to_string(),
            config.degree.to_string(),
            p.ttl.to_string(),
            "median".into(),
            format!("{:.1}", p.messages.median),
            format!("{:.1}", p.messages.min),
            format!("{:.1}", p.messages.max),
            format!("{:.3}", p.reach.median),
            format!("{:.3}", p.hit_rate.median),
            format!("{:.1}", p.hit_messages.median),
            format!("{} run(s)", p.messages.count),
        ]);
    }
    let repeats = config.runs.max(1);
    let select = |method: &str, n: usize| -> Vec<&Point> {
        points
            .iter()
            .filter(|p| p.method == method && p.n == n)
            .collect()
    };
    let line_of = |ps: &[&Point], pick: fn(&Point) -> Spread| -> Vec<(f64, f64)> {
        ps.iter().map(|p| (p.ttl as f64, pick(p).median)).collect()
    };
    let bars_of = |ps: &[&Point], pick: fn(&Point) -> Spread| -> Vec<(f64, f64, f64)> {
        ps.iter()
            .filter(|p| pick(p).count > 1)
            .map(|p| (p.ttl as f64, pick(p).min, pick(p).max))
            .collect()
    };
    let mut messages = Vec::new();
    let mut reach = Vec::new();
    for (k, &n) in config.ns.iter().enumerate() {
        let ps = select("flooding-model", n);
        let color = COLORS[(k + 1) % COLORS.len()];
        messages.push(Series::line(
            format!("flooding model, n = {n}"),
            line_of(&ps, |p| p.messages),
            color,
        ));
        reach.push(Series::line(
            format!("reach, model n = {n}"),
            line_of(&ps, |p| p.reach),
            color,
        ));
        reach.push(Series::points(
            format!("hit rate, model n = {n}"),
            line_of(&ps, |p| p.hit_rate),
            color,
        ));
    }
    for (k, &n) in config.overlay_ns.iter().enumerate() {
        let ps = select("overlay", n);
        let color = COLORS[(config.ns.len() + k + 1) % COLORS.len()];
        messages.push(
            Series::points(
                format!("overlay measured, n = {n}"),
                line_of(&ps, |p| p.messages),
                color,
            )
            .with_bars(bars_of(&ps, |p| p.messages)),
        );
        reach.push(
            Series::joined(
                format!("reach, overlay n = {n}"),
                line_of(&ps, |p| p.reach),
                color,
            )
            .with_bars(bars_of(&ps, |p| p.reach)),
        );
        reach.push(
            Series::points(
                format!("hit rate, overlay n = {n}"),
                line_of(&ps, |p| p.hit_rate),
                color,
            )
            .with_bars(bars_of(&ps, |p| p.hit_rate)),
        );
    }
    messages.push(Series::line(
        "index (measured), any n",
        config.ttls.iter().map(|t| (*t as f64, 2.0)).collect(),
        COLORS[0],
    ));
    let mut cost = Chart::new(
        format!("Messages per query, degree {}", config.degree),
        "TTL (hops)",
        "messages per query (log scale)",
        messages,
    );
    cost.y_log = true;
    cost.notes = vec![
        "index: 2 messages (request, answer) at any n".into(),
        format!(
            "flooding: ~ d (d-1)^(TTL-1) copies until it covers the graph, d = {}",
            config.degree
        ),
        format!("overlay: median of {repeats} run(s); bars: min to max"),
    ];
    let mut reached = Chart::new(
        format!(
            "Reach and hit rate (file on {:.1}% of nodes)",
            config.replication * 100.0
        ),
        "TTL (hops)",
        "share of nodes reached / of queries answered",
        reach,
    );
    reached.y_range = Some((0.0, 1.05));
    let md_rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            vec![
                p.method.into(),
                p.n.to_string(),
                p.ttl.to_string(),
                p.messages.text(1),
                format!("{:.1}%", p.reach.median * 100.0),
                format!("{:.1}%", p.hit_rate.median * 100.0),
                if p.method == "overlay" {
                    format!("{:.1}", p.hit_messages.median)
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    let mut md = format!(
        "# Search cost\n\nDegree {}, the searched file held by {:.1}% of the nodes (at least one), \
         {} queries per point ({} on the real overlay), median of {repeats} run(s) (messages \
         with [min–max]). **index**: measured on a real index \
         server (one request, one answer, every registered peer known). **overlay**: measured \
         on real overlay nodes in this process (n = {:?}); messages are the query copies sent \
         over overlay links, duplicates included; the QueryHits' trips back are the last \
         column. **flooding-model**: flooding simulated on a random graph, not a measurement.\n\n",
        config.degree,
        config.replication * 100.0,
        config.queries,
        config.overlay_queries,
        config.overlay_ns,
    );
    md.push_str(&report::md_table(
        &[
            "method",
            "n",
            "TTL",
            "messages/query",
            "reached",
            "hit rate",
            "hit messages/query",
        ],
        &md_rows,
    ));
    report::write_all(&config.out, "search-cost", &csv, &[cost, reached], &md)
}
