//! The index server's Prometheus metrics (`/metrics` on `--http`).
//!
//! Everything but the search histogram is read from the index's own state
//! when scraped (see [`transfer::metrics::Sampled`]): request counts by
//! kind (a fixed set of request names), live peers, files, bytes, memory,
//! proof-of-possession checks by outcome.

use prometheus::proto::MetricType;
use prometheus::{Histogram, HistogramOpts, Registry};
use tokio::time::Instant;
use transfer::metrics::{register, Sampled};

use common::index_proto::IndexStats;

use crate::state::Index;

/// A gauge read from [`IndexStats`]: name, help, and which figure.
type StatsGauge = (&'static str, &'static str, fn(&IndexStats) -> f64);

/// Bucket bounds of the search histogram, seconds: 10 µs to 1 s (a search
/// over a big index takes milliseconds).
const SEARCH_BUCKETS: [f64; 11] = [
    1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0,
];

/// The search-duration histogram an [`Index`] observes ([`SEARCH_BUCKETS`]).
pub fn search_histogram() -> Histogram {
    let opts = HistogramOpts::new(
        "p2pshare_index_search_duration_seconds",
        "Time the index took to answer a keyword search.",
    )
    .buckets(SEARCH_BUCKETS.to_vec());
    Histogram::with_opts(opts).expect("a valid histogram")
}

/// A registry with the metrics of `index`.
pub fn registry(index: &Index) -> Registry {
    let registry = Registry::new();
    let i = index.clone();
    register(
        &registry,
        Sampled::new(
            MetricType::COUNTER,
            "p2pshare_index_requests_total",
            "Requests the index handled, by kind.",
            &["kind"],
            move || {
                i.request_counts()
                    .into_iter()
                    .map(|(kind, n)| (vec![kind.to_string()], n as f64))
                    .collect()
            },
        ),
    );
    let stats: [StatsGauge; 3] = [
        (
            "p2pshare_index_sessions",
            "Peers logged in with a live lease (sessions).",
            |s| s.peers as f64,
        ),
        (
            "p2pshare_index_files",
            "Distinct files offered by live peers.",
            |s| s.files as f64,
        ),
        (
            "p2pshare_index_shared_bytes",
            "Sum of the sizes of the distinct files offered by live peers.",
            |s| s.bytes as f64,
        ),
    ];
    for (name, help, pick) in stats {
        let i = index.clone();
        register(
            &registry,
            Sampled::gauge(name, help, move || pick(&i.stats(Instant::now()))),
        );
    }
    let i = index.clone();
    register(
        &registry,
        Sampled::gauge(
            "p2pshare_index_memory_used_bytes",
            "Estimated memory the listings take (see --memory-budget).",
            move || i.memory_used() as f64,
        ),
    );
    let i = index.clone();
    register(
        &registry,
        Sampled::new(
            MetricType::COUNTER,
            "p2pshare_index_possession_checks_total",
            "Proof-of-possession checks by outcome: passed, lacked (the listing was dropped), inconclusive (no effect).",
            &["outcome"],
            move || {
                let s = i.possession_stats();
                [
                    ("passed", s.passed),
                    ("lacked", s.lacked),
                    ("inconclusive", s.inconclusive),
                ]
                .into_iter()
                .map(|(outcome, n)| (vec![outcome.to_string()], n as f64))
                .collect()
            },
        ),
    );
    let i = index.clone();
    register(
        &registry,
        Sampled::counter(
            "p2pshare_index_possession_sessions_dropped_total",
            "Sessions ended for failing proof-of-possession checks in a row.",
            move || i.possession_stats().sessions_dropped,
        ),
    );
    register(&registry, index.search_seconds().clone());
    registry
}
