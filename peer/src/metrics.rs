//! The daemon's Prometheus metrics (`GET /metrics` on the API).
//!
//! One [`PeerMetrics`] per daemon (tests run many in one process): the
//! engine's counters (bytes downloaded, chunks verified and rejected, one
//! atomic add per chunk), API requests by route and the search histogram,
//! and families read from the daemon's state when scraped (bytes and
//! chunks uploaded, upload sessions, shared files, messages, downloads by
//! state, upload slots and queue), added with [`PeerMetrics::sample`].
//! Labels come from fixed sets: route templates, download states.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use transfer::metrics::{register, EngineMetrics, Sampled};

/// Bucket bounds of the search histogram, seconds: an index answers in
/// milliseconds, an overlay flood waits up to seconds.
const SEARCH_BUCKETS: [f64; 12] = [
    1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0,
];

/// A daemon's metrics and their registry.
pub struct PeerMetrics {
    registry: Registry,
    /// For every download of this daemon (`EngineConfig::metrics`).
    pub engine: EngineMetrics,
    /// `p2pshare_api_requests_total{route, method}`.
    pub api_requests: IntCounterVec,
    /// `p2pshare_search_duration_seconds`: searches through the API.
    pub search_seconds: Histogram,
}

impl Default for PeerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerMetrics {
    /// Counters at zero in a new registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let engine = EngineMetrics::new(&registry);
        let api_requests = IntCounterVec::new(
            Opts::new(
                "p2pshare_api_requests_total",
                "Requests to the daemon's HTTP API, by route template and method.",
            ),
            &["route", "method"],
        )
        .expect("a valid metric");
        register(&registry, api_requests.clone());
        let search_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "p2pshare_search_duration_seconds",
                "Time a search through the API took (index or overlay).",
            )
            .buckets(SEARCH_BUCKETS.to_vec()),
        )
        .expect("a valid histogram");
        register(&registry, search_seconds.clone());
        PeerMetrics {
            registry,
            engine,
            api_requests,
            search_seconds,
        }
    }

    /// Adds a family read from the daemon's state when scraped.
    pub fn sample(&self, family: Sampled) {
        register(&self.registry, family);
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        transfer::metrics::render(&self.registry)
    }
}

impl PeerMetrics {
    /// Adds the families read from a daemon's state: uploads (bytes,
    /// chunks, sessions), shared files and bytes, messages received, and
    /// whether the daemon is registered at the index.
    pub fn watch_daemon(
        &self,
        library: &crate::library::Library,
        uploads: &std::sync::Arc<crate::chunk_server::UploadStats>,
        inbox: &crate::inbox::Inbox,
        registration: &tokio::sync::watch::Receiver<crate::registrar::RegistrationState>,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        let u = uploads.clone();
        self.sample(Sampled::counter(
            "p2pshare_uploaded_bytes_total",
            "Chunk bytes sent to other peers.",
            move || u.bytes.load(Relaxed),
        ));
        let u = uploads.clone();
        self.sample(Sampled::counter(
            "p2pshare_uploaded_chunks_total",
            "Chunks sent to other peers.",
            move || u.chunks.load(Relaxed),
        ));
        let u = uploads.clone();
        self.sample(Sampled::counter(
            "p2pshare_upload_sessions_total",
            "Connections from other peers accepted by the chunk server (upload sessions).",
            move || u.connections.load(Relaxed),
        ));
        let l = library.clone();
        self.sample(Sampled::gauge(
            "p2pshare_shared_files",
            "Complete files this peer shares.",
            move || l.shared().len() as f64,
        ));
        let l = library.clone();
        self.sample(Sampled::gauge(
            "p2pshare_shared_bytes",
            "Total size of the files this peer shares.",
            move || l.shared().values().map(|e| e.size).sum::<u64>() as f64,
        ));
        let i = inbox.clone();
        self.sample(Sampled::counter(
            "p2pshare_messages_received_total",
            "Direct messages accepted into the inbox.",
            move || i.received(),
        ));
        let r = registration.clone();
        self.sample(Sampled::gauge(
            "p2pshare_index_registered",
            "1 while this peer is registered at the index (hybrid mode), else 0.",
            move || {
                f64::from(u8::from(matches!(
                    *r.borrow(),
                    crate::registrar::RegistrationState::Registered { .. }
                )))
            },
        ));
    }
}

impl PeerMetrics {
    /// Adds the upload slots and the fair queue: slots, slots in use,
    /// requesters waiting.
    pub fn watch_upload_queue(&self, queue: &transfer::upload_queue::UploadQueue) {
        let slots = queue.config().slots;
        self.sample(Sampled::gauge(
            "p2pshare_upload_slots",
            "Upload slots (--max-uploads): requesters served at once.",
            move || slots as f64,
        ));
        let q = queue.clone();
        self.sample(Sampled::gauge(
            "p2pshare_upload_slots_in_use",
            "Upload slots held now.",
            move || q.slots_in_use() as f64,
        ));
        let q = queue.clone();
        self.sample(Sampled::gauge(
            "p2pshare_upload_queue_length",
            "Requesters waiting in the upload queue (connected or within their grace period).",
            move || q.waiting() as f64,
        ));
    }
}

impl PeerMetrics {
    /// Adds the daemon's downloads by state (every state listed, zero
    /// included, so a dashboard sees each series from the start).
    pub fn watch_downloads(&self, downloads: &crate::daemon::DownloadManager) {
        const STATES: [&str; 6] = ["queued", "waiting", "active", "paused", "done", "failed"];
        let d = downloads.clone();
        self.sample(Sampled::new(
            prometheus::proto::MetricType::GAUGE,
            "p2pshare_downloads",
            "Downloads this daemon owns, by state.",
            &["state"],
            move || {
                let list = d.list();
                STATES
                    .iter()
                    .map(|s| {
                        let n = list.iter().filter(|x| x.state == *s).count();
                        (vec![s.to_string()], n as f64)
                    })
                    .collect()
            },
        ));
    }
}
