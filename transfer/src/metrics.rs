//! Prometheus metrics shared by the peer daemon and the index server.
//!
//! Each server keeps its own [`Registry`] (tests run many servers in one
//! process, so there is no global one), renders it with [`render`] in the
//! classic text format (`text/plain; version=0.0.4`, what `promtool check
//! metrics` reads), and names its metrics `p2pshare_*` with the standard
//! suffixes (`_total` for counters, `_bytes`, `_seconds`).
//!
//! Two kinds of metric:
//! - counters the hot paths add to ([`EngineMetrics`]: one atomic add per
//!   verified chunk);
//! - [`Sampled`] families, read from state the server keeps anyway (upload
//!   statistics, request counts, sessions, download lists) when scraped, so
//!   they cost nothing between scrapes.
//!
//! Labels are bounded sets (request kinds, download states): never a file
//! id, name or peer address.

use std::collections::HashMap;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
pub use prometheus::Registry;
use prometheus::{Encoder, IntCounter, Opts, TextEncoder};

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry's metrics in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding into memory fails only on a malformed family, which a
    // registry does not hold (it checks descriptions when registering).
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        tracing::warn!(error = %e, "cannot encode the metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Registers `collector`, logging (not failing) on a clash: a metric left
/// out of a scrape is better than a server that does not start.
pub fn register(registry: &Registry, collector: impl Collector + 'static) {
    if let Err(e) = registry.register(Box::new(collector)) {
        tracing::warn!(error = %e, "metric not registered");
    }
}

type Read = Box<dyn Fn() -> Vec<(Vec<String>, f64)> + Send + Sync>;

/// A metric family whose samples are read when it is scraped: a counter
/// or gauge over a value the server keeps anyway (an atomic, a table's
/// size), optionally with labels from a fixed set.
pub struct Sampled {
    desc: Desc,
    kind: MetricType,
    labels: Vec<String>,
    read: Read,
}

impl Sampled {
    /// A family named `name` of type `kind` with these label names, whose
    /// samples `read` returns as (label values in the same order, value).
    ///
    /// # Panics
    /// On an invalid metric or label name (a programming error, caught by
    /// the tests that scrape every metric).
    pub fn new(
        kind: MetricType,
        name: &str,
        help: &str,
        labels: &[&str],
        read: impl Fn() -> Vec<(Vec<String>, f64)> + Send + Sync + 'static,
    ) -> Self {
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        let desc = Desc::new(name.into(), help.into(), labels.clone(), HashMap::new())
            .expect("a valid metric name and help");
        Sampled {
            desc,
            kind,
            labels,
            read: Box::new(read),
        }
    }

    /// A counter without labels read from `read` (which never decreases).
    pub fn counter(name: &str, help: &str, read: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self::new(MetricType::COUNTER, name, help, &[], move || {
            vec![(Vec::new(), read() as f64)]
        })
    }

    /// A gauge without labels read from `read`.
    pub fn gauge(name: &str, help: &str, read: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        Self::new(MetricType::GAUGE, name, help, &[], move || {
            vec![(Vec::new(), read())]
        })
    }
}

impl Collector for Sampled {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let metrics = (self.read)()
            .into_iter()
            .map(|(values, v)| {
                let mut m = proto::Metric::from_label(
                    self.labels
                        .iter()
                        .zip(values)
                        .map(|(name, value)| {
                            let mut pair = proto::LabelPair::default();
                            pair.set_name(name.clone());
                            pair.set_value(value);
                            pair
                        })
                        .collect(),
                );
                match self.kind {
                    MetricType::COUNTER => {
                        let mut c = proto::Counter::default();
                        c.set_value(v);
                        m.set_counter(c);
                    }
                    _ => {
                        let mut g = proto::Gauge::default();
                        g.set_value(v);
                        m.set_gauge(g);
                    }
                }
                m
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(self.kind);
        family.set_metric(metrics);
        vec![family]
    }
}

/// Counters the download engine adds to, shared by every download of a
/// node (set [`EngineConfig::metrics`](crate::EngineConfig::metrics)).
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    /// Bytes of verified chunks written (`p2pshare_downloaded_bytes_total`).
    pub downloaded_bytes: IntCounter,
    /// Chunks that matched their hash (`p2pshare_chunks_verified_total`).
    pub chunks_verified: IntCounter,
    /// Chunks that did not, whose source was dropped
    /// (`p2pshare_chunks_rejected_total`).
    pub chunks_rejected: IntCounter,
}

impl EngineMetrics {
    /// New counters at zero, registered in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(name, help)).expect("a valid metric name");
            register(registry, c.clone());
            c
        };
        EngineMetrics {
            downloaded_bytes: counter(
                "p2pshare_downloaded_bytes_total",
                "Bytes of verified chunks downloaded and written.",
            ),
            chunks_verified: counter(
                "p2pshare_chunks_verified_total",
                "Downloaded chunks that matched their hash.",
            ),
            chunks_rejected: counter(
                "p2pshare_chunks_rejected_total",
                "Downloaded chunks that did not match their hash (their source is dropped).",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_families_render_with_their_type_and_labels() {
        let registry = Registry::new();
        register(
            &registry,
            Sampled::counter("p2pshare_test_bytes_total", "Bytes.", || 42),
        );
        register(
            &registry,
            Sampled::new(
                MetricType::GAUGE,
                "p2pshare_test_things",
                "Things by state.",
                &["state"],
                || vec![(vec!["done".into()], 2.0), (vec!["failed".into()], 0.0)],
            ),
        );
        let engine = EngineMetrics::new(&registry);
        engine.chunks_verified.inc_by(3);
        let text = render(&registry);
        for line in [
            "# TYPE p2pshare_test_bytes_total counter",
            "p2pshare_test_bytes_total 42",
            "# TYPE p2pshare_test_things gauge",
            "p2pshare_test_things{state=\"done\"} 2",
            "p2pshare_test_things{state=\"failed\"} 0",
            "p2pshare_chunks_verified_total 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
    }
}
