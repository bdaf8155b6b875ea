//! Every experiment at a tiny size: it writes its CSV with the expected
//! columns, an SVG and a PNG plot, and a summary.

use std::path::Path;
use std::time::Duration;

use lab::{connections, distribution, index_load, search_cost, Written};

fn check(w: &Written, columns: &[&str], min_rows: usize) {
    let csv = std::fs::read_to_string(&w.csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), columns.join(","), "CSV header");
    let rows: Vec<&str> = lines.collect();
    assert!(
        rows.len() >= min_rows,
        "{} rows in {}",
        rows.len(),
        w.csv.display()
    );
    for r in &rows {
        assert_eq!(r.split(',').count(), columns.len(), "row {r}");
    }
    let png = std::fs::read(&w.png).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let svg = std::fs::read_to_string(&w.svg).unwrap();
    assert!(svg.contains("<svg"), "SVG plot");
    assert!(std::fs::metadata(&w.summary).unwrap().len() > 0);
}

fn out(dir: &Path) -> std::path::PathBuf {
    dir.join("out")
}

/// A distribution of 4 chunks (1 MiB), one run, on loopback, in this
/// process, the seed at 8 MiB/s and each peer at 4 MiB/s; tests change
/// what they are about.
fn tiny_distribution(
    dir: &Path,
    ns: Vec<usize>,
    modes: Vec<distribution::Mode>,
) -> distribution::Config {
    distribution::Config {
        ns,
        file_size: 4 * 256 * 1024,
        server_up: 8 * 1024 * 1024,
        peer_up: 4 * 1024 * 1024,
        peer_down: None,
        modes,
        out: out(dir),
        processes: false,
        handoff: false,
        runs: 1,
        nets: vec![distribution::Net::Loopback],
        engine: distribution::Engine::Local,
    }
}

fn all_three() -> Vec<distribution::Mode> {
    vec![
        distribution::Mode::ClientServer,
        distribution::Mode::Hybrid,
        distribution::Mode::P2p,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_tiny() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_distribution(dir.path(), vec![1, 2], all_three());
    let (w, runs) = distribution::run(&config).await.unwrap();
    // Six runs and six medians.
    check(&w, distribution::CSV_COLUMNS, 12);
    for r in &runs {
        let s = r.seconds.unwrap_or_else(|| panic!("{r:?}"));
        // A capped run cannot beat its lower bound by more than the
        // limiters' small bursts.
        assert!(s > 0.5 * r.bound(), "{r:?}");
        assert!(r.seed_bytes > 0, "the seed or server sent nothing: {r:?}");
        // Every peer's completion and first chunk were seen, none after the end.
        assert_eq!(r.completions.len(), r.n, "{r:?}");
        assert_eq!(r.first_chunks.len(), r.n, "{r:?}");
        assert!(r.completions.iter().all(|t| *t <= s + 1e-9), "{r:?}");
        assert!(r.first_chunks[0] <= r.completions[0], "{r:?}");
    }
    assert!(
        runs.iter()
            .any(|r| r.mode == distribution::Mode::P2p && r.n == 2),
        "a p2p row"
    );
}

/// `--processes` at a small size: real `index-server` and `peer`
/// processes (the binaries `cargo test` builds beside this test's),
/// started and registered before the clock, then handed their downloads
/// through their daemons' APIs; every download finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_with_processes_tiny() {
    let debug = std::env::current_exe().unwrap();
    let beside = debug
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .to_path_buf();
    if !beside.join("peer").is_file() || !beside.join("index-server").is_file() {
        println!(
            "skipped: no peer and index-server binaries in {} (run `cargo test --workspace`)",
            beside.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = distribution::Config {
        processes: true,
        ..tiny_distribution(
            dir.path(),
            vec![3],
            vec![distribution::Mode::Hybrid, distribution::Mode::P2p],
        )
    };
    let (w, runs) = distribution::run(&config).await.unwrap();
    check(&w, distribution::CSV_COLUMNS, 4);
    assert_eq!(runs.len(), 2, "{runs:?}");
    for r in &runs {
        let s = r.seconds.unwrap_or_else(|| panic!("{r:?}"));
        assert!(s > 0.5 * r.bound(), "{r:?}");
        assert_eq!(r.completions.len(), r.n, "{r:?}");
        // Read back from the daemons' stats logs: every peer's bytes came
        // from some uploader, each peer had a first chunk, and the ledger
        // charged every byte of capacity somewhere.
        assert!(r.counted, "{r:?}");
        let needed = r.n as u64 * config.file_size;
        assert!(r.seed_bytes + r.peer_bytes >= needed, "{r:?}");
        assert!(r.seed_bytes > 0, "{r:?}");
        assert_eq!(r.first_chunks.len(), r.n, "{r:?}");
        assert!(r.t95.is_some_and(|t| t <= s + 1e-9), "{r:?}");
        let (used, wanted, nothing) = r.uplinks.as_ref().and_then(|l| l.fractions()).unwrap();
        assert!((used + wanted + nothing - 1.0).abs() < 1e-6, "{r:?}");
        assert!(used > 0.0, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_load_tiny() {
    let dir = tempfile::tempdir().unwrap();
    let config = index_load::Config {
        peers: 3,
        files_per_peer: 600,
        clients: vec![1, 3],
        duration: Duration::from_millis(100),
        runs: 2,
        out: out(dir.path()),
    };
    let (w, stats, _) = index_load::run(&config).await.unwrap();
    // Per run: register, and lookup and search at 2 client counts; then
    // a median row for each of those 5.
    check(&w, index_load::CSV_COLUMNS, 2 * 5 + 5);
    assert_eq!(stats.len(), 10);
    assert!(stats.iter().all(|s| s.operations > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_tiny() {
    let dir = tempfile::tempdir().unwrap();
    let config = connections::Config {
        objects: 3,
        objects_sweep: vec![1, 3],
        object_size: 10_000,
        rtt: Duration::from_millis(20),
        rtt_sweep: vec![Duration::from_millis(10), Duration::from_millis(20)],
        bandwidth: 10_000_000,
        runs: 1,
        out: out(dir.path()),
    };
    let (w, results) = connections::run(&config).await.unwrap();
    // Points (1, 20ms), (3, 20ms), (3, 10ms): 3 fetches each, plus medians.
    check(&w, connections::CSV_COLUMNS, 9 + 9);
    assert_eq!(results.len(), 9);
    // The injected delays are a floor: no fetch beats its model by much.
    for r in &results {
        assert!(r.seconds >= 0.9 * r.model, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_cost_tiny() {
    let dir = tempfile::tempdir().unwrap();
    let config = search_cost::Config {
        ns: vec![30],
        degree: 3,
        ttls: vec![1, 2, 3],
        replication: 0.05,
        queries: 20,
        overlay_ns: vec![12],
        overlay_queries: 5,
        runs: 1,
        out: out(dir.path()),
    };
    let (w, rows) = search_cost::run(&config).await.unwrap();
    check(&w, search_cost::CSV_COLUMNS, 9);
    let flood: Vec<_> = rows
        .iter()
        .filter(|r| r.method == "flooding-model")
        .collect();
    assert!(flood.windows(2).all(|w| w[1].messages >= w[0].messages));
    // The real overlay: a flood with more hops costs more and reaches more.
    let overlay: Vec<_> = rows.iter().filter(|r| r.method == "overlay").collect();
    assert_eq!(overlay.len(), 3, "{rows:?}");
    assert!(overlay[0].messages > 0.0, "{overlay:?}");
    assert!(overlay[2].messages > overlay[0].messages, "{overlay:?}");
    assert!(overlay[2].reach > overlay[0].reach, "{overlay:?}");
    assert!(rows
        .iter()
        .filter(|r| r.method == "index")
        .all(|r| r.hit_rate == 1.0));
}

/// `--net loopback,netns`: the same tiny distribution with the
/// application's caps on loopback and with the kernel's in namespaces,
/// side by side in one CSV. The kernel's tbf is the only cap in the netns
/// runs (the application's buckets are off there), so a run at its bound
/// shows the shaping works; every namespace is gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_netns_smoke() {
    if let Err(e) = lab::netns::available() {
        eprintln!("skipped: --net netns needs root and iproute2 ({e})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = distribution::Config {
        // 4 chunks; bounds 0.5 s (client-server: 2 F / u_s) and 0.33 s.
        server_up: 4 * 1024 * 1024,
        peer_up: 2 * 1024 * 1024,
        nets: vec![distribution::Net::Loopback, distribution::Net::Netns],
        ..tiny_distribution(dir.path(), vec![2], all_three())
    };
    let (w, runs) = distribution::run(&config).await.unwrap();
    check(&w, distribution::CSV_COLUMNS, 12);
    let csv = std::fs::read_to_string(&w.csv).unwrap();
    assert!(csv.contains(",tasks,") && csv.contains(",netns,"), "{csv}");
    for r in &runs {
        let s = r.seconds.unwrap_or_else(|| panic!("{r:?}"));
        // Uncapped, 1 MiB crosses a veth in milliseconds: only the
        // kernel's shaping keeps a netns run near its bound.
        assert!(s > 0.8 * r.bound(), "{r:?}");
        assert!(r.seed_bytes > 0, "{r:?}");
    }
    assert_eq!(runs.iter().filter(|r| r.engine == "netns").count(), 3);
    let prefix = format!("p2l-{}-", std::process::id());
    let left: Vec<String> = lab::netns::existing()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

/// `lab sessions` at a small size: sessions log in, register and heartbeat
/// from worker processes against an index in a process of its own; the
/// figures come from that process (memory grows with sessions and files,
/// heartbeats were answered and cost CPU, searches were timed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_tiny() {
    let dir = tempfile::tempdir().unwrap();
    let config = lab::sessions::Config {
        sessions: 300,
        workers: 2,
        files_per_session: 20,
        heartbeat: Duration::from_millis(200),
        duration: Duration::from_millis(600),
        clients: 2,
        runs: 1,
        restart_index: false,
        old_backoff: false,
        insecure: false,
        out: out(dir.path()),
    };
    let (w, outcomes) = lab::sessions::run(&config).await.unwrap();
    check(&w, lab::sessions::CSV_COLUMNS, 2);
    let o = &outcomes[0];
    assert!(o.rss_idle > 0 && o.rss_files > o.rss_idle, "{o:?}");
    // 300 sessions heartbeating every 200 ms for 600 ms: about 900.
    assert!(o.heartbeats > 300, "{o:?}");
    assert!(o.quiet_p99_us > 0.0 && o.during_p99_us > 0.0, "{o:?}");
}

/// `lab sessions --restart-index` at a small size: the index is killed
/// and started again, and every session notices, logs in and registers
/// its files again (the run fails if one does not within its deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_come_back_after_an_index_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = lab::sessions::Config {
        sessions: 200,
        workers: 2,
        files_per_session: 5,
        heartbeat: Duration::from_secs(20),
        duration: Duration::from_millis(100),
        clients: 1,
        runs: 1,
        restart_index: true,
        old_backoff: false,
        insecure: false,
        out: out(dir.path()),
    };
    let (w, outcomes) = lab::sessions::run(&config).await.unwrap();
    check(&w, lab::sessions::CSV_COLUMNS, 2);
    let o = &outcomes[0];
    assert!(o.restart_s > 0.0 && o.restart_s >= o.restart_up_s, "{o:?}");
    assert!(o.rss_files > o.rss_idle, "{o:?}");
}

/// In one process, N peers may need more open files than this process
/// may hold: the lab says to use --processes instead of failing midway.
#[tokio::test]
async fn too_many_peers_in_one_process_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let config = distribution::Config {
        file_size: 1024,
        server_up: 1 << 20,
        peer_up: 1 << 20,
        ..tiny_distribution(dir.path(), vec![256], vec![distribution::Mode::Hybrid])
    };
    let limit = lab::raise_open_files_limit().unwrap();
    if distribution::in_process_open_files(256) <= limit {
        eprintln!("skipped: this process may open {limit} files, enough for 256 peers");
        return;
    }
    let e = distribution::run(&config).await.unwrap_err().to_string();
    assert!(e.contains("--processes"), "{e}");
}

/// `--compare-bittorrent`: the same tiny distribution through a real
/// BitTorrent swarm (aria2c, opentracker), in the same CSV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_compared_with_bittorrent() {
    if let Err(e) = lab::bittorrent::available() {
        eprintln!("skipped: {e}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = distribution::Config {
        server_up: 4_000_000,
        peer_up: 2_000_000,
        ..tiny_distribution(
            dir.path(),
            vec![2],
            vec![distribution::Mode::Hybrid, distribution::Mode::Bittorrent],
        )
    };
    let (w, runs) = distribution::run(&config).await.unwrap();
    check(&w, distribution::CSV_COLUMNS, 4);
    let bt = runs
        .iter()
        .find(|r| r.mode == distribution::Mode::Bittorrent)
        .expect("a BitTorrent run");
    assert_eq!(bt.engine, "aria2c");
    let s = bt.seconds.unwrap_or_else(|| panic!("{bt:?}"));
    // aria2's caps hold it to its bound at least.
    assert!(s > 0.8 * bt.bound(), "{bt:?}");
    assert_eq!(bt.completions.len(), 2, "{bt:?}");
    let csv = std::fs::read_to_string(&w.csv).unwrap();
    assert!(csv.contains("bittorrent,2,1,aria2c"), "{csv}");
}
