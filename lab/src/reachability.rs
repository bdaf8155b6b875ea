//! `lab reachability` (issue 15): which path connects each pair of peers
//! on an emulated network with NAT routers, and what it costs.
//!
//! On a [`crate::netns::Lan`]: an index on the public segment (dual
//! stack); a source and a downloader in each position {public (IPv4 and
//! IPv6), behind a home router, behind a strict NAT, IPv6-only on the
//! public segment} (each side with routers of its own), and one more
//! downloader behind the source's home router (the same NAT). Pairs with
//! no IP family in common (IPv6-only and IPv4 NAT) are not tried. The source in each position shares a file of
//! `file_size` bytes; each downloader fetches each file in turn (one pair
//! at a time, so that pairs do not share links or the relay), with the
//! same path `peer get` takes: direct, callback, hole punch, relay.
//!
//! Per pair: the path the bytes took, the time to first byte (from the
//! start of the fetch to the first verified byte, polled every 2 ms), the
//! throughput after it, and the bytes through the index's relay. Beside
//! it, what Napster's and eMule's model could do for that pair (direct; a
//! push or callback when only the source is firewalled; nothing when both
//! are).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::netns::{Host, HostRuntime, Lan, NatKind};
use crate::report::{self, Csv};
use crate::{human_bytes, human_rate, LabError};

/// Settings of the experiment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bytes of each shared file.
    pub file_size: u64,
    /// The relay's cap per session, bytes per second.
    pub relay_rate: u64,
    /// Where the CSV and the summary go.
    pub out: PathBuf,
}

/// Where a node sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// On the public segment, IPv4 and IPv6.
    Public,
    Home,
    Strict,
    /// On the public segment, IPv6 only.
    V6Only,
    /// A downloader behind the home source's own router.
    SameHome,
}

impl Position {
    /// Where sources sit, in the order of the table.
    pub const SOURCES: [Position; 4] = [
        Position::Public,
        Position::Home,
        Position::Strict,
        Position::V6Only,
    ];
    /// Where downloaders sit, in the order of the table.
    pub const DOWNLOADERS: [Position; 5] = [
        Position::Public,
        Position::Home,
        Position::Strict,
        Position::V6Only,
        Position::SameHome,
    ];

    /// `public`, `home NAT`, `strict NAT`, `IPv6-only` or `same home NAT`.
    pub fn label(self) -> &'static str {
        match self {
            Position::Public => "public",
            Position::Home => "home NAT",
            Position::Strict => "strict NAT",
            Position::V6Only => "IPv6-only",
            Position::SameHome => "same home NAT",
        }
    }

    fn has_ipv6(self) -> bool {
        matches!(self, Position::Public | Position::V6Only)
    }

    /// Whether the pair (this source, `downloader`) is measured: an IP
    /// family in common, and the same-NAT downloader only with the home
    /// source.
    pub fn tried(self, downloader: Position) -> bool {
        let v4 = self != Position::V6Only && downloader != Position::V6Only;
        let v6 = self.has_ipv6() && downloader.has_ipv6();
        (v4 || v6) && (downloader != Position::SameHome || self == Position::Home)
    }

    /// What Napster (push) and eMule (server callback) could do for a
    /// source here and a downloader at `downloader` (neither had IPv6).
    pub fn napster_emule(self, downloader: Position) -> &'static str {
        match (self, downloader) {
            (Position::V6Only, _) | (_, Position::V6Only) => "no IPv6",
            (Position::Public, _) => "direct",
            (_, Position::Public) => "push/callback",
            _ => "no transfer",
        }
    }
}

/// One measured pair.
#[derive(Debug, Clone)]
pub struct PairResult {
    pub source: Position,
    pub downloader: Position,
    /// `direct`, `callback`, `punched`, `relayed`, or `failed: why`.
    pub path: String,
    pub ttfb: Option<Duration>,
    /// Bytes per second after the first byte.
    pub throughput: Option<f64>,
    pub relay_bytes: u64,
    /// CPU time of the index's thread while the pair ran (all the index
    /// did: the lookups, the orders, and for a relayed pair the splicing).
    pub index_cpu: Duration,
    /// Requests the index handled for the pair, by kind (each a round trip
    /// to the index; `Login` includes the dial-back it makes).
    pub index_requests: Vec<(&'static str, u64)>,
}

/// The requests counted in `after` and not in `before`, by kind.
fn requests_between(
    before: &std::collections::BTreeMap<&'static str, u64>,
    after: &std::collections::BTreeMap<&'static str, u64>,
) -> Vec<(&'static str, u64)> {
    after
        .iter()
        .map(|(k, n)| (*k, n - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// `Login 1, Lookup 2`: requests by kind.
fn requests_text(requests: &[(&'static str, u64)]) -> String {
    requests
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Files written.
#[derive(Debug, Clone)]
pub struct Written {
    pub csv: PathBuf,
    pub summary: PathBuf,
}

/// A node's daemon on its host's runtime; stopped on drop.
struct Node {
    stop: CancellationToken,
    _rt: HostRuntime,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Runs the matrix and writes `reachability.csv` and `reachability.md`
/// into `config.out`.
pub async fn run(config: &Config) -> Result<Written, LabError> {
    crate::netns::available().map_err(LabError::setup)?;
    std::fs::create_dir_all(&config.out)?;
    let mut lan = Lan::create().map_err(LabError::setup)?;
    let result = measure(config, &mut lan).await;
    lan.remove();
    let results = result?;
    write(config, &results)
}

async fn measure(config: &Config, lan: &mut Lan) -> Result<Vec<PairResult>, LabError> {
    let setup = LabError::setup;
    let index_host = lan.add_host("index", None, None).map_err(setup)?;
    let mut routers = Vec::new();
    for side in ["s", "d"] {
        let home = lan
            .add_router(&format!("home{side}"), NatKind::Home)
            .map_err(setup)?;
        let strict = lan
            .add_router(&format!("strict{side}"), NatKind::Strict)
            .map_err(setup)?;
        routers.push((home, strict));
    }
    let mut host = |pos: Position, side: usize| -> Result<Host, LabError> {
        let role = ["src", "dl"][side];
        let (home, strict) = &mut routers[side];
        match pos {
            Position::Public => lan.add_host(&format!("{role}pub"), None, None),
            Position::V6Only => lan.add_host_v6only(&format!("{role}six")),
            Position::Home => lan.add_behind(home, &format!("{role}home")),
            Position::Strict => lan.add_behind(strict, &format!("{role}strict")),
            Position::SameHome => lan.add_behind(&mut routers[0].0, "dlsame"),
        }
        .map_err(setup)
    };
    let sources: Vec<Host> = Position::SOURCES
        .iter()
        .map(|p| host(*p, 0))
        .collect::<Result<_, _>>()?;
    let downloaders: Vec<Host> = Position::DOWNLOADERS
        .iter()
        .map(|p| host(*p, 1))
        .collect::<Result<_, _>>()?;

    // The index.
    let rt = index_host.runtime().map_err(setup)?;
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let index_config = index_server::Config {
        // Dual stack: IPv6-only peers too.
        listen: "[::]:0".parse().expect("an address"),
        dialback_timeout: Duration::from_millis(800),
        relay: Some(index_server::relay::RelayConfig {
            session_rate: config.relay_rate,
            total_rate: config.relay_rate.saturating_mul(4),
            ..Default::default()
        }),
        ..Default::default()
    };
    {
        let stop = stop.clone();
        rt.handle().spawn(async move {
            match index_server::Server::bind(index_config).await {
                Ok(server) => {
                    let _ = tx.send(Ok((
                        server.local_addr().port(),
                        server.relay(),
                        server.index(),
                    )));
                    let _ = server.run(stop).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        });
    }
    let (port, relay, index_state) = rx
        .await
        .map_err(LabError::setup)?
        .map_err(LabError::Setup)?;
    let relay = relay.ok_or_else(|| LabError::Setup("the index has no relay".into()))?;
    let index_addr = SocketAddr::from((index_host.addr, port));
    let index_addr6 = index_host
        .addr6
        .map(|a| SocketAddr::from((a, port)))
        .ok_or_else(|| LabError::Setup("the namespaces get no IPv6 address here".into()))?;
    let index_for = |pos: Position| match pos {
        Position::V6Only => index_addr6,
        _ => index_addr,
    };
    let index_node = Node { stop, _rt: rt };

    // The sources, each sharing its own file.
    let work = tempfile::tempdir()?;
    let mut nodes = Vec::new();
    let mut files = Vec::new();
    for (i, (h, pos)) in sources.iter().zip(Position::SOURCES).enumerate() {
        let share = work.path().join(format!("src{i}"));
        std::fs::create_dir_all(&share)?;
        let data = {
            use rand::{RngCore, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + i as u64);
            let mut data = vec![0u8; config.file_size as usize];
            rng.fill_bytes(&mut data);
            data
        };
        std::fs::write(share.join(format!("file{i}.bin")), &data)?;
        files.push(common::id::content_info(&data).id);
        nodes.push(start_source(h, &share, index_for(pos)).await?);
    }
    let runtimes: Vec<HostRuntime> = downloaders
        .iter()
        .map(|h| h.runtime().map_err(setup))
        .collect::<Result<_, _>>()?;
    // Every file listed (sources registered) before the first fetch,
    // asked from the public downloader's host (the index is on the LAN).
    let check = {
        let files = files.clone();
        runtimes[0].handle().spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            for id in &files {
                loop {
                    let client =
                        peer::index_client::IndexClient::connect(&index_addr.to_string()).await;
                    let found = match client {
                        Ok(mut c) => matches!(c.lookup_reach(*id).await, Ok(Some(_))),
                        Err(_) => false,
                    };
                    if found {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(format!("file {id} was never listed"));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Ok(())
        })
    };
    check
        .await
        .map_err(LabError::setup)?
        .map_err(LabError::Setup)?;
    let mut results = Vec::new();
    for (s, src) in Position::SOURCES.iter().enumerate() {
        for (d, dl) in Position::DOWNLOADERS.iter().enumerate() {
            if !src.tried(*dl) {
                continue;
            }
            let out = work.path().join(format!("out-{s}-{d}"));
            let before = relay.relayed_bytes();
            let cpu_before = thread_cpu(index_node._rt.handle()).await;
            let requests_before = index_state.request_counts();
            let (path, ttfb, throughput) =
                fetch_one(&runtimes[d], index_for(*dl), files[s], out).await;
            let relay_bytes = relay.relayed_bytes() - before;
            let index_cpu = thread_cpu(index_node._rt.handle())
                .await
                .saturating_sub(cpu_before);
            let index_requests = requests_between(&requests_before, &index_state.request_counts());
            eprintln!(
                "source {} -> downloader {}: {path}",
                src.label(),
                dl.label()
            );
            results.push(PairResult {
                source: *src,
                downloader: *dl,
                path,
                ttfb,
                throughput,
                relay_bytes,
                index_cpu,
                index_requests,
            });
        }
    }
    drop(nodes);
    Ok(results)
}

/// CPU time used so far by the thread of the current-thread runtime
/// `handle` runs on (the index's: `netns::Host::runtime`).
async fn thread_cpu(handle: &tokio::runtime::Handle) -> Duration {
    handle
        .spawn(async {
            let mut t = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `t` is a valid, writable timespec.
            let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
            if rc != 0 {
                return Duration::ZERO;
            }
            Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
        })
        .await
        .unwrap_or_default()
}

async fn start_source(host: &Host, share: &Path, index: SocketAddr) -> Result<Node, LabError> {
    let rt = host.runtime().map_err(LabError::setup)?;
    let mut config = peer::ServeConfig::new(share.to_path_buf(), index.to_string());
    // Dual stack, as `peer serve` by default.
    config.listen = "[::]:0".parse().expect("an address");
    config.settle = Duration::ZERO;
    config.rescan_interval = Duration::from_millis(200);
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(500);
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    {
        let stop = stop.clone();
        rt.handle().spawn(async move {
            match peer::serve::start(config, stop).await {
                Ok(daemon) => {
                    let _ = tx.send(Ok(()));
                    daemon.wait().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        });
    }
    rx.await
        .map_err(LabError::setup)?
        .map_err(LabError::Setup)?;
    Ok(Node { stop, _rt: rt })
}

/// Fetches `id` on the downloader's host as `peer get` does: (path, time
/// to first byte, throughput after it).
async fn fetch_one(
    rt: &HostRuntime,
    index: SocketAddr,
    id: common::id::FileId,
    out: PathBuf,
) -> (String, Option<Duration>, Option<f64>) {
    let progress = Arc::new(peer::download::Progress::default());
    let started = Instant::now();
    let job = {
        let progress = progress.clone();
        rt.handle().spawn(async move {
            let engine = peer::EngineConfig {
                stall_timeout: Duration::from_secs(5),
                ..Default::default()
            };
            let options = peer::pipeline::FetchOptions {
                callbacks: Some("[::]:0".parse().expect("an address")),
                ..peer::pipeline::FetchOptions::new(out, engine, progress)
            };
            let fetcher = peer::pipeline::Fetcher::Hybrid {
                index: index.to_string(),
            };
            peer::pipeline::fetch(&fetcher, &id.to_hex(), options, CancellationToken::new()).await
        })
    };
    tokio::pin!(job);
    let mut first = None;
    let result = loop {
        tokio::select! {
            done = &mut job => break done,
            _ = tokio::time::sleep(Duration::from_millis(2)) => {
                if first.is_none() && progress.done_bytes.load(Ordering::Relaxed) > 0 {
                    first = Some(Instant::now());
                }
            }
        }
    };
    let ended = Instant::now();
    match result {
        Ok(Ok(fetched)) => {
            let first = first.unwrap_or(ended);
            let path = fetched
                .download
                .per_source
                .iter()
                .filter(|s| s.chunks > 0)
                .map(|s| s.path)
                .collect::<Vec<_>>()
                .join("+");
            let after = ended.duration_since(first).as_secs_f64();
            let rate = (after > 0.0).then(|| fetched.download.size as f64 / after);
            (path, Some(first.duration_since(started)), rate)
        }
        Ok(Err(e)) => (format!("failed: {e}"), None, None),
        Err(e) => (format!("failed: {e}"), None, None),
    }
}

fn write(config: &Config, results: &[PairResult]) -> Result<Written, LabError> {
    let mut csv = Csv::new(&[
        "source",
        "downloader",
        "path",
        "ttfb_ms",
        "throughput_bytes_per_s",
        "relay_bytes",
        "index_cpu_ms",
        "index_requests",
        "napster_emule",
    ]);
    let mut rows = Vec::new();
    for r in results {
        let ttfb = r
            .ttfb
            .map(|t| format!("{:.1}", t.as_secs_f64() * 1000.0))
            .unwrap_or_default();
        let rate = r.throughput.map(|t| format!("{t:.0}")).unwrap_or_default();
        csv.row(vec![
            r.source.label().into(),
            r.downloader.label().into(),
            r.path.clone(),
            ttfb.clone(),
            rate,
            r.relay_bytes.to_string(),
            format!("{:.1}", r.index_cpu.as_secs_f64() * 1000.0),
            requests_text(&r.index_requests),
            r.source.napster_emule(r.downloader).into(),
        ]);
        rows.push(vec![
            r.source.label().into(),
            r.downloader.label().into(),
            r.path.clone(),
            if ttfb.is_empty() {
                "-".into()
            } else {
                format!("{ttfb} ms")
            },
            r.throughput.map(human_rate).unwrap_or_else(|| "-".into()),
            human_bytes(r.relay_bytes as f64),
            format!("{:.1} ms", r.index_cpu.as_secs_f64() * 1000.0),
            requests_text(&r.index_requests),
            r.source.napster_emule(r.downloader).into(),
        ]);
    }
    let csv_path = config.out.join("reachability.csv");
    csv.write(&csv_path)?;
    let completed = results
        .iter()
        .filter(|r| !r.path.starts_with("failed"))
        .count();
    let napster = results
        .iter()
        .filter(|r| {
            !matches!(
                r.source.napster_emule(r.downloader),
                "no transfer" | "no IPv6"
            )
        })
        .count();
    let relayed: Vec<f64> = results
        .iter()
        .filter(|r| r.path == "relayed")
        .filter_map(|r| r.throughput)
        .collect();
    let relay_share = relayed
        .iter()
        .map(|t| t / config.relay_rate as f64)
        .fold(f64::INFINITY, f64::min);
    let mut md = String::new();
    md.push_str("# Reachability: which path connects each pair\n\n");
    md.push_str(&format!(
        "`lab reachability --file-size {} --relay-rate {}`: a source and a downloader in each position on an emulated network (network namespaces; home routers: port-preserving masquerade; strict NATs: `masquerade random`; both drop unasked inbound connections), one pair at a time, each fetching a {} file as `peer get` does. Time to first byte is from the start of the fetch (index lookup included) to the first verified byte.\n\n",
        config.file_size,
        config.relay_rate,
        human_bytes(config.file_size as f64)
    ));
    md.push_str(&report::md_table(
        &[
            "source",
            "downloader",
            "path",
            "time to first byte",
            "throughput",
            "through the relay",
            "index CPU",
            "index requests",
            "Napster / eMule",
        ],
        &rows,
    ));
    md.push_str(&format!(
        "\n{completed} of {} pairs completed and verified; Napster's push and eMule's callback connect {napster} of them (a firewalled source only to a public downloader; two firewalled peers: no transfer; neither spoke IPv6).",
        results.len()
    ));
    if relay_share.is_finite() {
        md.push_str(&format!(
            " Relayed pairs ran at {:.2} or more of the relay's per-session cap ({}/s).",
            relay_share,
            human_bytes(config.relay_rate as f64)
        ));
    }
    let relayed_bytes: u64 = results
        .iter()
        .filter(|r| r.path == "relayed")
        .map(|r| r.relay_bytes)
        .sum();
    let relayed_cpu: f64 = results
        .iter()
        .filter(|r| r.path == "relayed")
        .map(|r| r.index_cpu.as_secs_f64())
        .sum();
    if relayed_bytes > 0 {
        md.push_str(&format!(
            " The index spent {:.2} s of CPU per relayed GB (its thread's CPU time over the relayed pairs, lookups and orders included; {}).",
            relayed_cpu / (relayed_bytes as f64 / 1e9),
            if cfg!(debug_assertions) { "a debug build" } else { "a release build" }
        ));
    }
    md.push('\n');
    let summary = config.out.join("reachability.md");
    report::write_file(&summary, &md)?;
    Ok(Written {
        csv: csv_path,
        summary,
    })
}
