//! Transfer and hashing benchmarks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::gbps;

pub(crate) fn scratch(
    dir: Option<PathBuf>,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            Ok((d, None))
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("p2pshare-bench-")
                .tempdir_in(".")?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

pub(crate) fn write_file(path: &Path, size: u64, seed: u64) -> anyhow::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return Ok(());
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut buf = vec![0u8; 8 << 20];
    let mut left = size;
    let mut n = 0;
    while left > 0 {
        let take = left.min(buf.len() as u64) as usize;
        common::sample::fill(&mut buf[..take], seed + n);
        f.write_all(&buf[..take])?;
        left -= take as u64;
        n += 1;
    }
    f.flush()?;
    // On disk before anything is timed: write-back of a fresh file would
    // otherwise compete with whatever runs first.
    f.get_ref().sync_all()?;
    Ok(())
}

/// CPU seconds this process has used, all threads together.
fn process_cpu_secs() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// CPU seconds process `pid` has used, from /proc (0 where unreadable).
pub fn child_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces, hence the ')').
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// (busy, total) clock ticks of all CPUs, from /proc/stat; idle and I/O
/// wait count as not busy.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Single-core SHA-256 speed over an in-memory buffer, in GB/s: the best of
/// three passes, so that a pass slowed by a neighbour on this shared machine
/// cannot flatter the ratio.
fn sha256_single_core() -> f64 {
    let mut buf = vec![0u8; 256 << 20];
    common::sample::fill(&mut buf, 7);
    let _ = sha2::Sha256::digest(&buf[..16 << 20]); // warm up
    (0..3)
        .map(|_| {
            let start = Instant::now();
            let digest = sha2::Sha256::digest(&buf);
            std::hint::black_box(digest);
            gbps(buf.len() as u64, start.elapsed().as_secs_f64())
        })
        .fold(0.0, f64::max)
}

/// Seconds for `sha256sum` over `paths` (the coreutils tool).
fn sha256sum_secs(paths: &[PathBuf]) -> anyhow::Result<f64> {
    let start = Instant::now();
    let status = std::process::Command::new("sha256sum")
        .args(paths)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running sha256sum")?;
    anyhow::ensure!(status.success(), "sha256sum failed");
    Ok(start.elapsed().as_secs_f64())
}

/// Copies `src` over loopback TCP into `dst` with 1 MiB buffers; seconds
/// taken. Both sockets get the settings the engine's connections get
/// (`transfer::net::tune_socket`), so the two are compared like for like.
async fn tcp_copy(src: &Path, dst: &Path) -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let src = src.to_path_buf();
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await?;
        transfer::net::tune_socket(&sock);
        let mut file = tokio::fs::File::open(&src).await?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            sock.write_all(&buf[..n]).await?;
        }
        anyhow::Ok(())
    });
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    transfer::net::tune_socket(&sock);
    let mut out = tokio::fs::File::create(dst).await?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).await?;
    }
    out.sync_all().await?;
    sender.await??;
    Ok(start.elapsed().as_secs_f64())
}

/// What `transfer` measures besides the verified downloads.
pub struct Mode {
    /// Skip the baselines.
    pub ours_only: bool,
    /// This process and the source run in clear text.
    pub insecure: bool,
    /// Also time the downloads in clear text (a child process) and print
    /// the encrypted/clear ratio.
    pub vs_insecure: bool,
    /// Passed on to the child of `vs_insecure`.
    pub verifier_threads: Option<usize>,
    pub pipeline_depth: Option<usize>,
}

pub async fn transfer(
    size: u64,
    dir: Option<PathBuf>,
    runs: usize,
    mode: Mode,
    engine: transfer::EngineConfig,
) -> anyhow::Result<()> {
    let ours_only = mode.ours_only;
    let (dir, _guard) = scratch(dir)?;
    let share = dir.join("share");
    std::fs::create_dir_all(&share)?;
    let file = share.join("payload.bin");
    eprintln!("writing a {size}-byte file in {}", share.display());
    write_file(&file, size, 1)?;

    // Ours: a real `peer serve` process sharing the file, this process's
    // engine fetching, verifying and writing it (as `peer get` would).
    let source = SourceProcess::start(&share, mode.insecure).await?;
    // Hashing it for its id also leaves it in the page cache for everyone.
    let id = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || transfer::scan::hash_file(&file))
            .await??
            .id
    };
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        let cpu_before = process_cpu_secs();
        let server_before = child_cpu_secs(source.peer.id());
        let machine_before = machine_ticks();
        let sources = vec![source.addr.clone()];
        let secs = fetch_from(id, sources, &dir.join("out"), size, engine.clone()).await?;
        let cpu = process_cpu_secs() - cpu_before;
        let server = child_cpu_secs(source.peer.id()) - server_before;
        let (busy, total) = machine_ticks();
        let busy_share =
            (busy - machine_before.0) as f64 / (total - machine_before.1).max(1) as f64;
        eprintln!(
            "  {:.2} GB/s, {secs:.2} s; CPU: downloader {cpu:.2} s, serving peer {server:.2} s ({:.2} cores together); machine busy {:.0}%",
            gbps(size, secs),
            (cpu + server) / secs,
            busy_share * 100.0
        );
        times.push(secs);
    }
    source.stop();
    times.sort_by(f64::total_cmp);
    let ours = gbps(size, times[times.len() / 2]);
    let each: Vec<String> = times
        .iter()
        .map(|t| format!("{:.2}", gbps(size, *t)))
        .collect();
    eprintln!(
        "verified downloads: {} GB/s (median {ours:.2})",
        each.join(", ")
    );
    if mode.vs_insecure {
        let clear = insecure_median(size, &dir, runs, &mode)?;
        let mode_name = if mode.insecure {
            "clear text"
        } else {
            "encrypted (Noise XX, AES-256-GCM)"
        };
        println!(
            "| one source, {} MiB, {mode_name}, verified and written (fsync), median of {} | {ours:.2} GB/s | same with --insecure on both sides, run right after: {clear:.2} GB/s | {:.2} (target >= 0.8) |",
            size >> 20,
            times.len(),
            ours / clear
        );
    }
    if ours_only {
        // For a parent's --vs-insecure.
        println!("median {ours:.4} GB/s");
        return Ok(());
    }

    let sha = sha256_single_core();

    // Baseline: raw loopback TCP copy to disk, then a separate sha256sum.
    let copy = dir.join("copy.bin");
    let copy_secs = tcp_copy(&file, &copy).await?;
    let sum_secs = sha256sum_secs(std::slice::from_ref(&copy))?;
    let baseline = gbps(size, copy_secs + sum_secs);
    std::fs::remove_file(&copy)?;

    println!("| one source, {} MiB, verified and written (fsync), median of {} | {ours:.2} GB/s | single-core SHA-256 (best of 3) {sha:.2} GB/s | {:.2} (target >= 0.85) |", size >> 20, times.len(), ours / sha);
    println!("| same | {ours:.2} GB/s | loopback TCP copy + sha256sum {baseline:.2} GB/s | {:.2} (target >= 1.0) |", ours / baseline);
    Ok(())
}

/// The median of `runs` verified downloads of a `size`-byte file with
/// `--insecure` on both sides: this program again, as a child process
/// (a process secures all its connections one way), in `dir`.
fn insecure_median(size: u64, dir: &Path, runs: usize, mode: &Mode) -> anyhow::Result<f64> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["transfer", "--insecure", "--ours-only"])
        .arg("--size")
        .arg(size.to_string())
        .arg("--runs")
        .arg(runs.to_string())
        .arg("--dir")
        .arg(dir.join("clear"))
        .stderr(std::process::Stdio::inherit());
    if let Some(n) = mode.verifier_threads {
        cmd.arg("--verifier-threads").arg(n.to_string());
    }
    if let Some(n) = mode.pipeline_depth {
        cmd.arg("--pipeline-depth").arg(n.to_string());
    }
    std::fs::create_dir_all(dir.join("clear"))?;
    let out = cmd.output()?;
    anyhow::ensure!(out.status.success(), "the --insecure run failed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("median ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .context("the --insecure run printed no median")
}

pub async fn hash_folder(files: usize, size: u64, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let (dir, _guard) = scratch(dir)?;
    let folder = dir.join("folder");
    std::fs::create_dir_all(&folder)?;
    let mut paths = Vec::new();
    for i in 0..files {
        let p = folder.join(format!("file-{i}.bin"));
        write_file(&p, size, 100 + i as u64)?;
        paths.push(p);
    }
    for p in &paths {
        let _ = std::fs::read(p).map(std::hint::black_box);
    }
    let theirs = sha256sum_secs(&paths)?;
    let root = std::fs::canonicalize(&folder)?;
    let start = Instant::now();
    let scanned = tokio::task::spawn_blocking(move || {
        let mut cache = transfer::scan::HashCache::default();
        transfer::scan::scan(&root, &mut cache).len()
    })
    .await?;
    let ours = start.elapsed().as_secs_f64();
    anyhow::ensure!(scanned == files, "scanned {scanned} of {files}");
    let total = files as u64 * size;
    println!(
        "| hashing a folder, {files} x {} MiB | {:.2} GB/s | sha256sum {:.2} GB/s | {:.2} (target >= 0.8) |",
        size >> 20,
        gbps(total, ours),
        gbps(total, theirs),
        theirs / ours
    );
    Ok(())
}

/// Four sources, each capped, one downloader: throughput against the sum of caps.
pub async fn capped(
    size: u64,
    cap: u64,
    sources: usize,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (dir, _guard) = scratch(dir)?;
    let mut shares = Vec::new();
    // One file, linked into every source's folder (they only read it).
    let payload = dir.join("payload.bin");
    write_file(&payload, size, 9)?;
    for i in 0..sources {
        let share = dir.join(format!("source-{i}"));
        std::fs::create_dir_all(&share)?;
        let linked = share.join("payload.bin");
        let _ = std::fs::remove_file(&linked); // from an earlier run, maybe of another size
        std::fs::hard_link(&payload, &linked)?;
        shares.push(share);
    }
    let bed = Sources::start(shares, Some(cap)).await?;
    let id = bed.daemons[0]
        .library()
        .shared()
        .keys()
        .next()
        .copied()
        .context("file not shared")?;
    let addrs: Vec<String> = bed
        .daemons
        .iter()
        .map(|d| d.listen_addr().to_string())
        .collect();
    let secs = fetch_from(
        id,
        addrs,
        &dir.join("out"),
        size,
        transfer::EngineConfig::default(),
    )
    .await?;
    bed.stop().await;
    let measured = size as f64 / secs;
    let caps = (cap * sources as u64) as f64;
    println!(
        "| {sources} sources capped at {:.0} MB/s each, {} MiB | {:.1} MB/s | sum of caps {:.1} MB/s | {:.2} (target >= 0.9) |",
        cap as f64 / 1e6,
        size >> 20,
        measured / 1e6,
        caps / 1e6,
        measured / caps
    );
    Ok(())
}

/// An index and one sharing daemon per folder on loopback, each folder
/// holding the same `payload.bin`.
struct Sources {
    stop: CancellationToken,
    index_task: tokio::task::JoinHandle<Result<(), index_server::ServerError>>,
    daemons: Vec<peer::Daemon>,
}

impl Sources {
    async fn start(shares: Vec<PathBuf>, upload_cap: Option<u64>) -> anyhow::Result<Sources> {
        let index = index_server::Server::bind(index_server::Config {
            listen: "127.0.0.1:0".parse()?,
            ..Default::default()
        })
        .await?;
        let index_addr = index.local_addr().to_string();
        let stop = CancellationToken::new();
        let index_task = tokio::spawn(index.run(stop.clone()));
        let mut daemons = Vec::new();
        for (i, share) in shares.into_iter().enumerate() {
            let mut config = peer::ServeConfig::new(share, index_addr.clone());
            config.listen = "127.0.0.1:0".parse()?;
            config.nick = Some(format!("source{i}"));
            config.max_upload_rate = upload_cap;
            daemons.push(peer::serve::start(config, stop.clone()).await?);
        }
        Ok(Sources {
            stop,
            index_task,
            daemons,
        })
    }

    async fn stop(self) {
        self.stop.cancel();
        for d in self.daemons {
            d.wait().await;
        }
        let _ = self.index_task.await;
    }
}

/// Downloads `id` from `sources` into `out` (then removes it); returns the
/// seconds the verified download took.
async fn fetch_from(
    id: common::id::FileId,
    sources: Vec<String>,
    out: &Path,
    size: u64,
    engine: transfer::EngineConfig,
) -> anyhow::Result<f64> {
    let _ = std::fs::remove_dir_all(out);
    let start = Instant::now();
    let outcome = transfer::download::download(
        transfer::DownloadRequest {
            id,
            name: "payload.bin".into(),
            sources,
            out_dir: out.to_path_buf(),
        },
        engine,
        Arc::new(transfer::Progress::default()),
        None,
        transfer::download::StartOnly,
        CancellationToken::new(),
    )
    .await?;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(outcome.size == size, "size mismatch");
    std::fs::remove_dir_all(out)?;
    Ok(secs)
}

/// The real binaries: an `index-server` and a `peer serve` sharing one
/// folder, as separate processes (as a user runs them).
struct SourceProcess {
    index: std::process::Child,
    peer: std::process::Child,
    addr: String,
}

impl SourceProcess {
    async fn start(share: &Path, insecure: bool) -> anyhow::Result<SourceProcess> {
        use std::process::Command;
        let exe = std::env::current_exe()?;
        let bin = exe.parent().context("exe dir")?;
        let mut index_cmd = Command::new(bin.join("index-server"));
        index_cmd
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info");
        if insecure {
            index_cmd.arg("--insecure");
        }
        let (index, index_addr) = crate::index_load::spawn_with_addr(index_cmd, true)
            .context("start target/release/index-server (build it first)")?;
        let mut peer_cmd = Command::new(bin.join("peer"));
        peer_cmd
            .arg("serve")
            .arg("--share")
            .arg(share)
            .args([
                "--index",
                &index_addr,
                "--listen",
                "127.0.0.1:0",
                "--nick",
                "source",
                // Its address line would come first while a large file hashes.
                "--api",
                "off",
                // Served as soon as hashed (it was written whole before).
                "--settle",
                "0",
            ])
            .env("RUST_LOG", "info");
        if insecure {
            peer_cmd.arg("--insecure");
        }
        // It says its address once the folder is hashed and served.
        let (peer, addr) = crate::index_load::spawn_with_addr(peer_cmd, true)
            .context("start target/release/peer (build it first)")?;
        Ok(SourceProcess { index, peer, addr })
    }

    fn stop(mut self) {
        for child in [&mut self.peer, &mut self.index] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
