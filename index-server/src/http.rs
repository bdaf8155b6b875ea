//! `index-server --http ADDR`: a read-only page showing the network live,
//! the same figures as JSON, and the Prometheus metrics.
//!
//! - `GET /`: the page (embedded; its script draws the chart as inline SVG
//!   from the JSON, no CDN, works offline).
//! - `GET /api/network`: [`Network`] as JSON.
//! - `GET /metrics`: Prometheus text format ([`crate::metrics`]).
//!
//! Nothing here changes the index. A sampler task records the figures once
//! a second for the last [`HISTORY`] samples (ten minutes), from which the
//! requests per second by kind are computed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Json};
use axum::routing::get;
use axum::Router;
use prometheus::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::state::Index;

/// Samples kept: one a second for ten minutes.
pub const HISTORY: usize = 600;

/// Seconds over which the current requests per second are averaged.
const RATE_WINDOW: usize = 5;

/// The page, embedded in the binary.
const PAGE: &str = include_str!("http/page.html");

/// One second of the network's life.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Unix time, seconds.
    pub t: u64,
    pub peers: u64,
    pub files: u64,
    pub bytes: u64,
    /// Requests handled in the second before `t`, by kind.
    pub requests: BTreeMap<&'static str, u64>,
}

/// What `GET /api/network` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Network {
    /// Peers logged in with a live lease.
    pub peers: u64,
    /// Distinct files offered by live peers, and the sum of their sizes.
    pub files: u64,
    pub bytes: u64,
    pub uptime_s: u64,
    /// Requests handled since the server started, by kind.
    pub requests_total: BTreeMap<&'static str, u64>,
    /// Requests per second by kind, over the last few seconds.
    pub requests_per_sec: BTreeMap<&'static str, f64>,
    /// One sample a second, oldest first, at most [`HISTORY`].
    pub history: Vec<Sample>,
}

struct Shared {
    index: Index,
    registry: Registry,
    started: Instant,
    history: Mutex<VecDeque<Sample>>,
}

/// Serves the page on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    index: Index,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        registry: crate::metrics::registry(&index),
        index,
        started: Instant::now(),
        history: Mutex::new(VecDeque::with_capacity(HISTORY)),
    });
    let sampler = tokio::spawn(sample_loop(shared.clone(), shutdown.clone()));
    let app = Router::new()
        .route("/", get(page))
        .route("/api/network", get(network))
        .route("/metrics", get(metrics))
        .with_state(shared);
    tracing::info!(addr = %listener.local_addr()?, "network page listening");
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    sampler.abort();
    result
}

async fn sample_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = shared.index.request_counts();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let counts = shared.index.request_counts();
        let requests = counts
            .iter()
            .map(|(k, n)| (*k, n.saturating_sub(last.get(k).copied().unwrap_or(0))))
            .filter(|(_, n)| *n > 0)
            .collect();
        last = counts;
        let stats = shared.index.stats(Instant::now());
        let sample = Sample {
            t: unix_now(),
            peers: stats.peers,
            files: stats.files,
            bytes: stats.bytes,
            requests,
        };
        let mut history = shared.history.lock().unwrap_or_else(|p| p.into_inner());
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(sample);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE))
}

async fn network(State(shared): State<Arc<Shared>>) -> Json<Network> {
    let stats = shared.index.stats(Instant::now());
    let history: Vec<Sample> = shared
        .history
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    let window = &history[history.len().saturating_sub(RATE_WINDOW)..];
    let mut requests_per_sec = BTreeMap::new();
    for sample in window {
        for (k, n) in &sample.requests {
            *requests_per_sec.entry(*k).or_insert(0.0) += *n as f64;
        }
    }
    for r in requests_per_sec.values_mut() {
        *r /= window.len().max(1) as f64;
    }
    Json(Network {
        peers: stats.peers,
        files: stats.files,
        bytes: stats.bytes,
        uptime_s: shared.started.elapsed().as_secs(),
        requests_total: shared.index.request_counts(),
        requests_per_sec,
        history,
    })
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, transfer::metrics::CONTENT_TYPE)],
        transfer::metrics::render(&shared.registry),
    )
}
