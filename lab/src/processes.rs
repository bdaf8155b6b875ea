//! `lab distribution --processes`: the same experiment with real
//! `index-server` and `peer` processes on loopback instead of tasks in the
//! lab's own process. The binaries are taken from the lab binary's folder
//! (`cargo build --release -p lab -p peer -p index-server`).
//!
//! Client-server: `index-server --store` capped at the server rate, N
//! `peer get --mode client-server` processes; the clock runs from starting
//! them. Hybrid: an index, a seed `peer serve` capped at the server rate,
//! N `peer serve` processes capped at the peer rate (they swarm). P2p: the
//! same without an index, nodes joined in a line plus a random earlier
//! node. In both, the N peers are up first (registered at the index, or
//! with an overlay neighbour and a search that reaches the seed), as in
//! the model and the tasks engine; the
//! clock then starts and each daemon is handed its download through its
//! API (`POST /api/downloads`, or with `--handoff` a `peer get` process
//! per peer, as a user does), and runs until every one holds the whole
//! file under its name. Each daemon samples its uploads and holdings into
//! a stats log (`peer serve --stats-log`), which [`crate::samples`]
//! replays into the same figures the in-process swarms measure (seed
//! share, first chunks, endgame, where the upload capacity went).
//!
//! With `--net netns` every process runs in a network namespace of its own
//! (`ip netns exec`) on a LAN of [`crate::netns`], listening on its host's
//! address, and its rates are capped by the kernel there instead of by its
//! own `--max-upload-rate`/`--max-download-rate`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::id::FileId;

use crate::distribution::{Config, Measured, Net};
use crate::netns::{Host, Lan};
use crate::LabError;

/// Longest a process-based run may take.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

/// Ids of every child process alive, for [`kill_all`].
static LIVE: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Kills every child process the lab started and has not reaped yet (for
/// a signal handler: Ctrl-C, SIGTERM).
pub fn kill_all() {
    let pids = match LIVE.lock() {
        Ok(mut l) => std::mem::take(&mut *l),
        Err(p) => std::mem::take(&mut *p.into_inner()),
    };
    for pid in pids {
        if let Ok(pid) = i32::try_from(pid) {
            // SAFETY: kill has no memory preconditions; a reaped pid fails
            // with ESRCH (the lab reaps only after taking it off the list).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Kills every child on drop, so a failed run leaves nothing behind;
/// [`kill_all`] reaches them on Ctrl-C and SIGTERM.
pub(crate) struct Children(pub(crate) Vec<Child>);

impl Children {
    /// An error if a child already exited with a failure.
    fn check(&mut self) -> Result<(), LabError> {
        for c in &mut self.0 {
            if let Ok(Some(status)) = c.try_wait() {
                if !status.success() {
                    return Err(LabError::Setup(format!(
                        "a peer process exited with {status}"
                    )));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn push(&mut self, c: Child) {
        if let Ok(mut l) = LIVE.lock() {
            l.push(c.id());
        }
        self.0.push(c);
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if let Ok(mut l) = LIVE.lock() {
                l.retain(|p| *p != c.id());
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where one run's processes live: on loopback (free ports, the
/// application's caps) or each on a host of a LAN (the kernel's caps).
struct Spots {
    lan: Option<Lan>,
}

/// One process's place.
struct Spot {
    host: Option<Host>,
    ip: std::net::IpAddr,
    port: u16,
}

/// The port every process listens on in its own namespace.
const NETNS_PORT: u16 = 7000;

impl Spots {
    fn new(net: Net) -> Result<Spots, LabError> {
        Ok(Spots {
            lan: match net {
                Net::Loopback => None,
                Net::Netns => Some(Lan::create().map_err(LabError::setup)?),
            },
        })
    }

    /// A place for a process named `label`, its uplink capped at `up` and
    /// its downlink at `down` (by the kernel in a namespace; on loopback
    /// the caller passes the caps as flags, see [`Spot::app`]).
    fn spot(&mut self, label: &str, up: Option<u64>, down: Option<u64>) -> Result<Spot, LabError> {
        match &mut self.lan {
            None => Ok(Spot {
                host: None,
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                port: free_port()?,
            }),
            Some(lan) => {
                let host = lan.add_host(label, up, down).map_err(LabError::setup)?;
                Ok(Spot {
                    ip: host.addr.into(),
                    port: NETNS_PORT,
                    host: Some(host),
                })
            }
        }
    }
}

impl Spot {
    fn addr(&self) -> String {
        std::net::SocketAddr::new(self.ip, self.port).to_string()
    }

    /// `program` to run here.
    fn command(&self, program: &Path) -> Command {
        match &self.host {
            None => Command::new(program),
            Some(h) => h.command(program),
        }
    }

    /// The cap the process applies itself: none where the kernel caps.
    fn app(&self, cap: Option<u64>) -> Option<u64> {
        if self.host.is_some() {
            None
        } else {
            cap
        }
    }

    /// Runs `f` where this spot's sockets live and waits for it.
    async fn run<F, Fut, T>(&self, f: F) -> Result<T, LabError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + Send,
        T: Send + 'static,
    {
        match &self.host {
            None => Ok(f().await),
            Some(h) => {
                let h = h.clone();
                tokio::task::spawn_blocking(move || h.run_in(f))
                    .await
                    .map_err(LabError::setup)?
                    .map_err(LabError::setup)
            }
        }
    }
}

/// The binary `name` beside the lab binary (or one folder up, for tests).
pub(crate) fn binary(name: &str) -> Result<PathBuf, LabError> {
    let exe = std::env::current_exe()?;
    // Beside the lab binary; for tests (target/*/deps/), one folder up.
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let candidates = [dir.join(name), dir.parent().unwrap_or(&dir).join(name)];
    let path = candidates[0].clone();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        Ok(found.clone())
    } else {
        Err(LabError::Setup(format!(
            "--processes needs the {name} binary beside the lab binary ({}); build it with `cargo build --release -p lab -p peer -p index-server`",
            path.display()
        )))
    }
}

/// Ports [`free_port`] has handed out in this process: a child binds its
/// port only when it starts, after every port of the run was chosen, so a
/// port that is merely free now could be chosen twice.
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A free loopback port for a child to listen on, below the kernel's
/// ephemeral range (32768 and up): a port taken from that range and
/// released is soon handed out again for some outgoing connection, and
/// with a hundred processes connecting to each other a child then fails
/// to bind (seen at N = 64 and 128). Never the same port twice in one lab
/// process: the ports of a run are all chosen before its children bind
/// them, and 130 random picks among 12,000 ports collide about every
/// second run. That is the likely cause of the failed N = 128 runs (their
/// logs were not kept): a second child on a port exits with status 1,
/// "cannot listen ... Address already in use", the status they reported.
pub(crate) fn free_port() -> Result<u16, LabError> {
    use rand::Rng;
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..32_000);
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts a child with its stderr in `log`, at the log level
/// `LAB_CHILD_LOG` names (a `RUST_LOG` filter; default `warn`).
fn spawn(cmd: &mut Command, log: &Path) -> Result<Child, LabError> {
    let log = std::fs::File::create(log)?;
    let level = std::env::var("LAB_CHILD_LOG").unwrap_or_else(|_| "warn".into());
    Ok(cmd
        .env("RUST_LOG", level)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

/// A peer's per-address caps in a run (`--max-connections-per-ip`,
/// `--upload-queue-per-ip`): every node on loopback is one address, so the
/// defaults (8 connections, 16 queue places per address: one host must not
/// take every place) would turn the 17th downloader away as busy. It then
/// reconnected with backoff, a new handshake each time: 24,000 refusals in
/// one N = 128 run, and 10% of its CPU in X25519.
const LOOPBACK_PER_IP: &str = "10000";

fn rate(bps: u64) -> String {
    format!("{bps}")
}

/// `--max-uploads` of a peer capped at `bps` (what `peer serve` takes by
/// default at that cap; given, so that it holds where the kernel caps).
fn slots(bps: u64) -> String {
    common::limits::upload_slots_for(Some(bps)).to_string()
}

/// Waits until the index lists `id` with at least one source.
async fn wait_listed(index: &str, id: FileId) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut c) = peer::index_client::IndexClient::connect(index).await {
            if let Ok(Some(_)) = c.lookup(id).await {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(LabError::Setup(
                "the seed was not listed at the index within 60 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every `dirs[i]/name` exists with `size` bytes; returns
/// what was measured: the time since `start` when the last one appeared,
/// and when each did (sorted), seen every 10 ms.
async fn wait_files(
    dirs: &[PathBuf],
    name: &str,
    size: u64,
    children: &mut Children,
    start: Instant,
) -> Result<Measured, LabError> {
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut seen: Vec<Option<f64>> = vec![None; dirs.len()];
    loop {
        let now = start.elapsed().as_secs_f64();
        for (d, s) in dirs.iter().zip(seen.iter_mut()) {
            if s.is_none() && std::fs::metadata(d.join(name)).is_ok_and(|m| m.len() == size) {
                *s = Some(now);
            }
        }
        let done = seen.iter().flatten().count();
        if done == dirs.len() {
            let mut completions: Vec<f64> = seen.into_iter().flatten().collect();
            completions.sort_by(f64::total_cmp);
            return Ok(Measured {
                seconds: now,
                completions,
                ..Measured::default()
            });
        }
        children.check()?;
        if Instant::now() > deadline {
            return Err(LabError::Setup(format!(
                "{done} of {} downloads finished within {RUN_DEADLINE:?}",
                dirs.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn client_server(
    config: &Config,
    net: Net,
    n: usize,
    id: FileId,
    seed: &Path,
    run: &Path,
) -> Result<Measured, LabError> {
    let (index_bin, peer_bin) = (binary("index-server")?, binary("peer")?);
    std::fs::create_dir_all(run)?;
    // Declared first, dropped last: the processes die before their hosts.
    let mut spots = Spots::new(net)?;
    let mut children = Children(Vec::new());
    let server = spots.spot("server", Some(config.server_up), None)?;
    let index = server.addr();
    let mut cmd = server.command(&index_bin);
    cmd.args([
        "--listen",
        &index,
        "--store",
        seed.to_str().unwrap_or_default(),
        // Every client may come from 127.0.0.1.
        "--max-connections-per-ip",
        "10000",
    ]);
    if let Some(r) = server.app(Some(config.server_up)) {
        cmd.args(["--max-upload-rate", &rate(r)]);
    }
    children.push(spawn(&mut cmd, &run.join("index.log"))?);
    let clients: Vec<Spot> = (0..n)
        .map(|i| spots.spot(&format!("c{i}"), None, config.peer_down))
        .collect::<Result<_, _>>()?;
    {
        let index = index.clone();
        match clients.first() {
            Some(c) => {
                c.run(move || async move { wait_listed(&index, id).await })
                    .await??
            }
            None => wait_listed(&index, id).await?,
        }
    }
    let start = Instant::now();
    let mut outs = Vec::new();
    for (i, spot) in clients.iter().enumerate() {
        let out = run.join(format!("client-{i}"));
        let mut cmd = spot.command(&peer_bin);
        cmd.args([
            "get",
            "--mode",
            "client-server",
            "--index",
            &index,
            "-o",
            out.to_str().unwrap_or_default(),
        ]);
        if let Some(d) = spot.app(config.peer_down) {
            cmd.args(["--max-download-rate", &rate(d)]);
        }
        cmd.arg(id.to_hex());
        children.push(spawn(&mut cmd, &run.join(format!("client-{i}.log")))?);
        outs.push(out);
    }
    // Like the swarms: done when every client holds the file under its name.
    wait_files(
        &outs,
        "lab-file.bin",
        config.file_size,
        &mut children,
        start,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn swarm(
    config: &Config,
    net: Net,
    n: usize,
    id: FileId,
    seed: &Path,
    run: &Path,
    p2p: bool,
) -> Result<Measured, LabError> {
    let (index_bin, peer_bin) = (binary("index-server")?, binary("peer")?);
    std::fs::create_dir_all(run)?;
    // Declared first, dropped last: the processes die before their hosts.
    let mut spots = Spots::new(net)?;
    let mut children = Children(Vec::new());
    let index_spot = if p2p {
        None
    } else {
        Some(spots.spot("index", None, None)?)
    };
    // p2p: no index (and no --index).
    let index = index_spot.as_ref().map(Spot::addr).unwrap_or_default();
    if let Some(spot) = &index_spot {
        let mut cmd = spot.command(&index_bin);
        cmd.args(["--listen", &index, "--max-connections-per-ip", "10000"]);
        children.push(spawn(&mut cmd, &run.join("index.log"))?);
    }
    let seed_spot = spots.spot("seed", Some(config.server_up), None)?;
    let mut seed_cmd = seed_spot.command(&peer_bin);
    seed_cmd.args([
        "serve",
        "--share",
        seed.to_str().unwrap_or_default(),
        "--listen",
        &seed_spot.addr(),
        "--nick",
        "seed",
        // Every downloader may come from 127.0.0.1: the per-address caps
        // (connections, and places in the upload queue) are lifted.
        "--max-connections-per-ip",
        LOOPBACK_PER_IP,
        "--upload-queue-per-ip",
        LOOPBACK_PER_IP,
    ]);
    if let Some(r) = seed_spot.app(Some(config.server_up)) {
        seed_cmd.args(["--max-upload-rate", &rate(r)]);
    }
    // The slots it takes at its rate, also where the kernel caps it.
    seed_cmd.args(["--max-uploads", &slots(config.server_up)]);
    let mut logs = vec![run.join("seed.stats")];
    seed_cmd.arg("--stats-log").arg(&logs[0]);
    if p2p {
        seed_cmd.args(["--mode", "p2p"]);
    } else {
        seed_cmd.args(["--index", &index]);
    }
    children.push(spawn(&mut seed_cmd, &run.join("seed.log"))?);
    if p2p {
        // The seed must accept neighbours before the others join through it.
        let addr = seed_spot.addr();
        seed_spot
            .run(move || async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                while tokio::net::TcpStream::connect(&addr).await.is_err() {
                    if Instant::now() > deadline {
                        return Err(LabError::Setup("the seed did not start within 30 s".into()));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(())
            })
            .await??;
    } else {
        let index = index.clone();
        seed_spot
            .run(move || async move { wait_listed(&index, id).await })
            .await??;
    }
    let peers: Vec<Spot> = (0..n)
        .map(|i| spots.spot(&format!("p{i}"), Some(config.peer_up), config.peer_down))
        .collect::<Result<_, _>>()?;
    let mut dirs = Vec::new();
    let mut addrs = vec![seed_spot.addr()];
    let launched = Instant::now();
    for (i, spot) in peers.iter().enumerate() {
        let share = run.join(format!("peer-{i}"));
        std::fs::create_dir_all(&share)?;
        let mut cmd = spot.command(&peer_bin);
        cmd.args([
            "serve",
            "--share",
            share.to_str().unwrap_or_default(),
            "--listen",
            &spot.addr(),
            "--nick",
            &format!("peer{i}"),
            "--max-connections-per-ip",
            LOOPBACK_PER_IP,
            "--upload-queue-per-ip",
            LOOPBACK_PER_IP,
        ]);
        if let Some(r) = spot.app(Some(config.peer_up)) {
            cmd.args(["--max-upload-rate", &rate(r)]);
        }
        if let Some(d) = spot.app(config.peer_down) {
            cmd.args(["--max-download-rate", &rate(d)]);
        }
        cmd.args(["--max-uploads", &slots(config.peer_up)]);
        let log = run.join(format!("peer-{i}.stats"));
        cmd.arg("--stats-log").arg(&log);
        logs.push(log);
        if p2p {
            // A line through every node plus one random earlier node.
            let previous = addrs[addrs.len() - 1].clone();
            let random = addrs[(rand_index(i) as usize) % addrs.len()].clone();
            cmd.args(["--mode", "p2p", "--neighbor", &previous]);
            if random != previous {
                cmd.args(["--neighbor", &random]);
            }
        } else {
            cmd.args(["--index", &index]);
        }
        children.push(spawn(&mut cmd, &run.join(format!("peer-{i}.log")))?);
        addrs.push(spot.addr());
        dirs.push(share);
    }
    // The N peers are present before the file is distributed, as in the
    // model (and as the tasks engine starts them): starting 129 processes
    // on a small machine takes seconds that are no part of distribution.
    let apis = wait_ready(&peers, &dirs, p2p, &mut children).await?;
    if p2p {
        // As the tasks engine does: every node's search reaches the seed
        // before the clock starts. A neighbour alone may be a later node
        // not yet linked towards the seed: the first searches of most
        // nodes found nothing and were tried again 1 and 2 s later.
        let searches = peers.iter().map(|spot| {
            let via = spot.addr();
            spot.run(move || crate::distribution::wait_reachable(via, id))
        });
        for r in futures_util::future::join_all(searches).await {
            r??;
        }
    }
    tracing::info!(
        peers = n,
        seconds = format!("{:.2}", launched.elapsed().as_secs_f64()),
        "every peer process is up{}; the clock starts",
        if p2p {
            " and its searches reach the seed"
        } else {
            " and registered"
        }
    );
    let start = Instant::now();
    let start_unix = unix_now();
    // `peer get` finds a hybrid daemon by its index; p2p goes through the API.
    if config.handoff && !p2p {
        hand_off(&peers, &dirs, &peer_bin, &index, id, run, &mut children)?;
    } else {
        start_downloads(&peers, apis, &dirs, id).await?;
    }
    let mut measured = wait_files(
        &dirs,
        "lab-file.bin",
        config.file_size,
        &mut children,
        start,
    )
    .await?;
    // The last chunks' bytes are counted at the next sample: wait for every
    // log to pass the end before the processes stop.
    logs_past(&logs, start_unix + measured.seconds).await;
    let caps: Vec<f64> = std::iter::once(config.server_up)
        .chain(std::iter::repeat_n(config.peer_up, n))
        .map(|c| c as f64)
        .collect();
    match replay_logs(
        &logs,
        id,
        config.file_size,
        start_unix,
        &caps,
        measured.seconds,
    ) {
        Ok(r) => {
            measured.seed_bytes = r.seed_bytes;
            measured.peer_bytes = r.peer_bytes;
            measured.counted = true;
            measured.first_chunks = r.first_chunks;
            measured.t95 = r.t95;
            measured.uplinks = Some(r.uplinks);
        }
        Err(e) => tracing::warn!(error = %e, "uploads and holdings not counted"),
    }
    Ok(measured)
}

/// Waits (up to 2 s) until every stats log has a sample taken at `t`
/// (Unix seconds) or later.
async fn logs_past(logs: &[PathBuf], t: f64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    // The last whole line of the log's last 8 KiB (a line is a few hundred
    // bytes): the logs of a long run are megabytes.
    let last_t = |log: &PathBuf| -> Option<f64> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(log).ok()?;
        let len = f.metadata().ok()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(8192))).ok()?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail).ok()?;
        let tail = String::from_utf8_lossy(&tail);
        let line = tail.lines().rev().find(|l| l.ends_with('}'))?;
        serde_json::from_str::<peer::stats_log::Sample>(line)
            .ok()
            .map(|s| s.t)
    };
    let mut waiting: Vec<&PathBuf> = logs.iter().collect();
    while !waiting.is_empty() && Instant::now() < deadline {
        waiting.retain(|l| last_t(l).is_none_or(|lt| lt < t));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !waiting.is_empty() {
        tracing::warn!(
            logs = waiting.len(),
            "stats logs without a sample after the end; the last bytes may be missing"
        );
    }
}

/// Seconds since the Unix epoch now, as the stats logs write them.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Reads the stats logs (the seed's first) of a run that started at
/// `start` (Unix seconds) and lasted `seconds`, and replays them
/// ([`crate::samples`]).
fn replay_logs(
    logs: &[PathBuf],
    id: FileId,
    file_size: u64,
    start: f64,
    caps: &[f64],
    seconds: f64,
) -> Result<crate::samples::Replayed, crate::samples::SampleError> {
    let chunks = common::id::chunk_count(file_size) as u32;
    let hex = id.to_hex();
    let traces = logs
        .iter()
        .enumerate()
        .map(|(k, log)| crate::samples::Trace::read(log, &hex, chunks, start, k == 0))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(crate::samples::replay(
        &traces,
        caps,
        seconds,
        file_size,
        common::id::CHUNK_SIZE as u64,
    ))
}

/// How long the peer processes of a run may take to come up.
const READY_DEADLINE: Duration = Duration::from_secs(120);

/// Waits until every peer daemon answers on its API (its share's
/// `.p2pshare/api.json`) and is ready to fetch: registered at the index,
/// or, in p2p mode, with an overlay neighbour. Returns their API clients.
async fn wait_ready(
    peers: &[Spot],
    dirs: &[PathBuf],
    p2p: bool,
    children: &mut Children,
) -> Result<Vec<peer::daemon::client::ApiClient>, LabError> {
    let deadline = Instant::now() + READY_DEADLINE;
    let mut apis = Vec::with_capacity(dirs.len());
    for (spot, dir) in peers.iter().zip(dirs) {
        loop {
            let d = dir.clone();
            let ready = spot
                .run(move || async move {
                    use peer::daemon::client::ApiClient;
                    let client = ApiClient::discover(&d).await.ok()??;
                    let ready = if p2p {
                        let peers = client.get("/api/peers").await.ok()?;
                        peers["peers"].as_array().is_some_and(|a| !a.is_empty())
                    } else {
                        let status = client.get("/api/status").await.ok()?;
                        status["registered"] == true
                    };
                    ready.then_some(client)
                })
                .await?;
            if let Some(client) = ready {
                apis.push(client);
                break;
            }
            children.check()?;
            if Instant::now() > deadline {
                return Err(LabError::Setup(format!(
                    "{} of {} peer processes were ready within {READY_DEADLINE:?} \
                     (the first one not: {})",
                    apis.len(),
                    dirs.len(),
                    dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(apis)
}

/// Hands every peer its download at once through its daemon's API
/// (`POST /api/downloads`, what `peer get` does for a running daemon),
/// into its shared folder.
async fn start_downloads(
    peers: &[Spot],
    apis: Vec<peer::daemon::client::ApiClient>,
    dirs: &[PathBuf],
    id: FileId,
) -> Result<(), LabError> {
    let mut posts = Vec::with_capacity(apis.len());
    for ((spot, client), dir) in peers.iter().zip(apis).zip(dirs) {
        let body = serde_json::json!({
            "target": id.to_hex(),
            "out": std::path::absolute(dir)?,
        });
        posts.push(spot.run(move || async move {
            client
                .post("/api/downloads", body)
                .await
                .map_err(|e| format!("{}: {e}", client.addr))
        }));
    }
    for done in futures_util::future::join_all(posts).await {
        done?.map_err(|e| LabError::Setup(format!("a peer refused its download: {e}")))?;
    }
    Ok(())
}

/// Hands each peer's download to its daemon as a user does: `peer get -o
/// SHARE ID` for each, which finds that daemon (through its share's API
/// file) and gives it the download.
fn hand_off(
    peers: &[Spot],
    dirs: &[PathBuf],
    peer_bin: &Path,
    index: &str,
    id: FileId,
    run: &Path,
    children: &mut Children,
) -> Result<(), LabError> {
    for (i, (spot, dir)) in peers.iter().zip(dirs).enumerate() {
        let mut cmd = spot.command(peer_bin);
        cmd.args([
            "get",
            "--index",
            index,
            "-o",
            dir.to_str().unwrap_or_default(),
            &id.to_hex(),
        ]);
        children.push(spawn(&mut cmd, &run.join(format!("get-{i}.log")))?);
    }
    Ok(())
}

/// A cheap deterministic spread for choosing random earlier neighbours.
fn rand_index(i: usize) -> u64 {
    (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_never_handed_out_twice() {
        // 2,000 picks among the 12,000 ports below the ephemeral range:
        // without the record of handed-out ports a repeat is all but certain.
        let mut ports: Vec<u16> = (0..2000).map(|_| super::free_port().unwrap()).collect();
        ports.sort_unstable();
        let before = ports.len();
        ports.dedup();
        assert_eq!(ports.len(), before, "a port was handed out twice");
    }
}
