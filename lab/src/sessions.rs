//! The index under many sessions: `sessions` peer sessions log in, register
//! files and heartbeat while clients search (`lab sessions`).
//!
//! The index runs alone in a process of its own (`lab index-worker`,
//! hidden: the real `index_server::Server` with caps high enough for every
//! session to come from 127.0.0.1), so its memory (VmRSS) and CPU time
//! (utime + stime) are its own, read from /proc. The sessions come from `workers` child processes (`lab
//! session-worker`, hidden), each holding its share of the connections: one
//! process may hold 20,000 open files here, and the index holds one per
//! session. All on loopback, so the index is started with per-address caps
//! high enough for every session to come from 127.0.0.1.
//!
//! Phases, each measured:
//! 1. the index idle: RSS;
//! 2. every session logged in (no files): RSS, hence bytes per session;
//! 3. every session registered `files_per_session` files: RSS, hence bytes
//!    per file;
//! 4. `clients` connections search for `duration` with no heartbeats
//!    (quiet): p50/p99;
//! 5. every session heartbeats every `heartbeat` (spread evenly), for
//!    `duration` with nothing else: the index's CPU time over that window,
//!    per heartbeat and as a share of one core;
//! 6. the same heartbeats while the clients search for `duration`: search
//!    p50/p99 during the heartbeat load.
//!
//! With `--restart-index`, phases 4 to 6 are replaced by a restart: after
//! phase 3 the index is killed (SIGKILL) and started again on the same
//! port, and every session logs in again and registers its files the way
//! the peer daemon's registrar does after losing its index (first wait
//! drawn from `[0, 200 ms]`, the window doubling after each failed attempt
//! up to 10 s: `peer::registrar::reconnect_delay`). Measured: the time from
//! the kill, and from the new index accepting, until the last session has
//! registered all its files again.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::id::FileId;
use common::index_proto::{IndexRequest, Login, SharedFile};
use peer::index_client::IndexClient;
use rand::Rng;

use crate::report::{self, Chart, Csv, Series, Spread, COLORS};
use crate::{LabError, Written};

#[derive(Debug, Clone)]
pub struct Config {
    /// Peer sessions (connections that log in and stay).
    pub sessions: usize,
    /// Child processes that hold the sessions.
    pub workers: usize,
    pub files_per_session: usize,
    /// Each session's heartbeat interval.
    pub heartbeat: Duration,
    /// Length of each measuring window.
    pub duration: Duration,
    /// Concurrent search connections.
    pub clients: usize,
    pub runs: usize,
    /// Kill and restart the index after phase 3 and time the sessions'
    /// re-registration (instead of phases 4 to 6).
    pub restart_index: bool,
    /// With `restart_index`: wait as the registrar did before full jitter
    /// (backoff plus up to a quarter of it), the baseline of that fix.
    pub old_backoff: bool,
    /// Clear text between the sessions and the index (`lab --insecure`,
    /// which the worker processes inherit): only noted in the report.
    pub insecure: bool,
    pub out: PathBuf,
}

/// What one run measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    pub run: usize,
    pub rss_idle: u64,
    pub rss_sessions: u64,
    pub rss_files: u64,
    /// Index CPU seconds over the heartbeat-only window.
    pub heartbeat_cpu_s: f64,
    /// Heartbeats answered in the heartbeat-only window.
    pub heartbeats: u64,
    pub heartbeat_p99_us: f64,
    pub quiet_p50_us: f64,
    pub quiet_p99_us: f64,
    pub quiet_per_sec: f64,
    pub during_p50_us: f64,
    pub during_p99_us: f64,
    pub during_per_sec: f64,
    /// With `restart_index`: seconds from the kill until every session
    /// had logged in again and registered its files.
    pub restart_s: f64,
    /// The same from the moment the new index accepted connections.
    pub restart_from_up_s: f64,
    /// Seconds from the kill until the new index accepted connections.
    pub restart_up_s: f64,
    /// Login attempts that failed during the restart (and were retried).
    pub restart_failed: u64,
}

impl Outcome {
    /// Index memory per session beyond its files, bytes.
    pub fn bytes_per_session(&self, config: &Config) -> f64 {
        self.rss_sessions.saturating_sub(self.rss_idle) as f64 / config.sessions.max(1) as f64
    }

    /// Index memory per registered file, bytes.
    pub fn bytes_per_file(&self, config: &Config) -> f64 {
        self.rss_files.saturating_sub(self.rss_sessions) as f64
            / (config.sessions * config.files_per_session).max(1) as f64
    }

    /// Index CPU per heartbeat, microseconds.
    pub fn cpu_per_heartbeat_us(&self) -> f64 {
        self.heartbeat_cpu_s * 1e6 / self.heartbeats.max(1) as f64
    }

    /// Share of one core the heartbeats took.
    pub fn heartbeat_core_share(&self, config: &Config) -> f64 {
        self.heartbeat_cpu_s / config.duration.as_secs_f64()
    }
}

pub const CSV_COLUMNS: &[&str] = &[
    "run",
    "sessions",
    "files_per_session",
    "heartbeat_s",
    "rss_idle_bytes",
    "rss_sessions_bytes",
    "rss_files_bytes",
    "bytes_per_session",
    "bytes_per_file",
    "heartbeats",
    "cpu_per_heartbeat_us",
    "heartbeat_core_share",
    "heartbeat_p99_us",
    "search_quiet_p50_us",
    "search_quiet_p99_us",
    "search_during_p50_us",
    "search_during_p99_us",
    "search_during_per_sec",
    "restart_s",
    "restart_from_up_s",
    "restart_failed",
];

/// Resident set size of process `pid`, bytes.
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User plus system CPU time of process `pid`, seconds.
fn cpu_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) / tick)
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A worker: its process, the pipe to tell it the next phase and the
/// lines it answers.
struct Worker {
    _proc: Proc,
    stdin: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Worker {
    fn spawn(
        lab: &PathBuf,
        index: &str,
        first: usize,
        count: usize,
        config: &Config,
    ) -> Result<Worker, LabError> {
        let mut child = Command::new(lab)
            .args([
                "session-worker",
                "--index",
                index,
                "--first",
                &first.to_string(),
                "--count",
                &count.to_string(),
                "--files",
                &config.files_per_session.to_string(),
                "--heartbeat-ms",
                &config.heartbeat.as_millis().to_string(),
            ])
            .args(config.old_backoff.then_some("--old-backoff"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout: ChildStdout = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Worker {
            _proc: Proc(child),
            stdin,
            lines,
        })
    }

    fn tell(&mut self, what: &str) -> Result<(), LabError> {
        writeln!(self.stdin, "{what}")?;
        self.stdin.flush()?;
        Ok(())
    }

    fn expect(&self, prefix: &str, within: Duration) -> Result<String, LabError> {
        let line = self.lines.recv_timeout(within).map_err(|_| {
            LabError::Setup(format!(
                "a session worker did not say {prefix:?} within {within:?}"
            ))
        })?;
        if line.starts_with(prefix) {
            Ok(line)
        } else {
            Err(LabError::Setup(format!(
                "a session worker said {line:?}, expected {prefix:?}"
            )))
        }
    }
}

/// Search words: every file name holds two of these.
const WORDS: usize = 1000;

fn file_of(session: usize, k: usize) -> SharedFile {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(session as u64).to_le_bytes());
    id[8..16].copy_from_slice(&(k as u64).to_le_bytes());
    id[31] = 0x5e;
    SharedFile {
        id: FileId(id),
        name: format!(
            "sessions/s{session} file{k} w{} w{}.ogg",
            (session * 31 + k) % WORDS,
            (session + k * 7) % WORDS
        ),
        size: 1_000_000 + k as u64,
    }
}

fn lab_binary() -> Result<PathBuf, LabError> {
    let exe = std::env::current_exe()?;
    if exe.file_name().is_some_and(|n| n == "lab") {
        Ok(exe)
    } else {
        crate::processes::binary("lab")
    }
}

pub async fn run(config: &Config) -> Result<(Written, Vec<Outcome>), LabError> {
    std::fs::create_dir_all(&config.out)?;
    let repeats = config.runs.max(1);
    let mut outcomes = Vec::new();
    for k in 1..=repeats {
        outcomes.push(one_run(config, k).await?);
    }
    let written = write_outputs(config, &outcomes)?;
    Ok((written, outcomes))
}

async fn one_run(config: &Config, k: usize) -> Result<Outcome, LabError> {
    let lab = lab_binary()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let index = format!("127.0.0.1:{port}");
    let cap = (config.sessions + config.clients + 1000).to_string();
    let index_proc = start_index(&lab, &index, &cap).await?;
    let pid = index_proc.0.id();
    let rss =
        || rss_of(pid).ok_or_else(|| LabError::Setup("cannot read the index's memory".into()));
    let bar = report::progress(6, "sessions");
    let mut out = Outcome {
        run: k,
        rss_idle: rss()?,
        ..Outcome::default()
    };

    bar.set_message(format!("{} sessions log in (run {k})", config.sessions));
    let workers_n = config.workers.clamp(1, config.sessions.max(1));
    let mut workers = Vec::new();
    for w in 0..workers_n {
        let first = config.sessions * w / workers_n;
        let count = config.sessions * (w + 1) / workers_n - first;
        workers.push(Worker::spawn(&lab, &index, first, count, config)?);
    }
    let slow = Duration::from_secs(300);
    for w in &workers {
        w.expect("logged-in", slow)?;
    }
    out.rss_sessions = rss()?;
    bar.inc(1);

    bar.set_message("register");
    for w in &mut workers {
        w.tell("register")?;
    }
    for w in &workers {
        w.expect("registered", slow)?;
    }
    out.rss_files = rss()?;
    bar.inc(1);

    if config.restart_index {
        bar.set_message("restart the index");
        restart(
            &lab,
            &index,
            &cap,
            index_proc,
            &mut workers,
            config,
            &mut out,
        )
        .await?;
        bar.finish_and_clear();
        return Ok(out);
    }

    bar.set_message("search (quiet)");
    let quiet = searches(&index, config).await?;
    (out.quiet_p50_us, out.quiet_p99_us, out.quiet_per_sec) = quiet;
    bar.inc(1);

    bar.set_message("heartbeats only");
    for w in &mut workers {
        w.tell("heartbeat")?;
    }
    for w in &workers {
        w.expect("heartbeating", slow)?;
    }
    // One interval for every session's first beat to be under way.
    tokio::time::sleep(config.heartbeat.min(Duration::from_secs(5))).await;
    for w in &mut workers {
        w.tell("count")?;
    }
    let mut before = 0u64;
    for w in &workers {
        before += count_of(&w.expect("count", slow)?);
    }
    let cpu0 = cpu_of(pid).unwrap_or(0.0);
    tokio::time::sleep(config.duration).await;
    let cpu1 = cpu_of(pid).unwrap_or(0.0);
    for w in &mut workers {
        w.tell("count")?;
    }
    let mut after = 0u64;
    for w in &workers {
        after += count_of(&w.expect("count", slow)?);
    }
    out.heartbeat_cpu_s = cpu1 - cpu0;
    out.heartbeats = after.saturating_sub(before);
    bar.inc(1);

    bar.set_message("search during heartbeats");
    let during = searches(&index, config).await?;
    (out.during_p50_us, out.during_p99_us, out.during_per_sec) = during;
    bar.inc(1);

    for w in &mut workers {
        w.tell("stop")?;
    }
    let mut p99s = Vec::new();
    for w in &workers {
        let line = w.expect("stopped", slow)?;
        if let Some(p) = line
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<f64>().ok())
        {
            p99s.push(p);
        }
    }
    out.heartbeat_p99_us = p99s.iter().copied().fold(0.0, f64::max);
    bar.inc(1);
    bar.finish_and_clear();
    drop(workers);
    drop(index_proc);
    Ok(out)
}

/// Starts `lab index-worker` on `index` and waits until it accepts.
async fn start_index(lab: &PathBuf, index: &str, cap: &str) -> Result<Proc, LabError> {
    let proc = Proc(
        Command::new(lab)
            .args(["index-worker", "--listen", index, "--cap", cap])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(index).await.is_err() {
        if Instant::now() > deadline {
            return Err(LabError::Setup(
                "the index did not start within 30 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(proc)
}

/// Kills the index, starts it again on the same address, and waits until
/// every session has registered again (at most 5 minutes).
async fn restart(
    lab: &PathBuf,
    index: &str,
    cap: &str,
    old: Proc,
    workers: &mut [Worker],
    config: &Config,
    out: &mut Outcome,
) -> Result<(), LabError> {
    let slow = Duration::from_secs(300);
    for w in workers.iter_mut() {
        w.tell("watch")?;
    }
    for w in workers.iter() {
        w.expect("watching", slow)?;
    }
    let killed = Instant::now();
    drop(old);
    let new = start_index(lab, index, cap).await?;
    out.restart_up_s = killed.elapsed().as_secs_f64();
    let deadline = killed + slow;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        for w in workers.iter_mut() {
            w.tell("back")?;
        }
        let (mut back, mut failed) = (0u64, 0u64);
        for w in workers.iter() {
            let line = w.expect("back", slow)?;
            let mut words = line.split_whitespace().skip(1);
            back += words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            failed += words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        }
        out.restart_failed = failed;
        if back as usize >= config.sessions {
            break;
        }
        if Instant::now() > deadline {
            return Err(LabError::Setup(format!(
                "only {back} of {} sessions registered again within {slow:?} of the restart",
                config.sessions
            )));
        }
    }
    // The last poll's delay is included: at most 20 ms of overstatement.
    out.restart_s = killed.elapsed().as_secs_f64();
    out.restart_from_up_s = out.restart_s - out.restart_up_s;
    for w in workers.iter_mut() {
        w.tell("stop")?;
    }
    drop(new);
    Ok(())
}

fn count_of(line: &str) -> u64 {
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// `clients` connections searching one random word at a time for
/// `duration`: (p50 µs, p99 µs, searches per second).
async fn searches(index: &str, config: &Config) -> Result<(f64, f64, f64), LabError> {
    let deadline = Instant::now() + config.duration;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..config.clients.max(1) {
        let index = index.to_string();
        tasks.spawn(async move {
            let mut c = IndexClient::connect(&index).await?;
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let word = format!("w{}", rand::rng().random_range(0..WORDS));
                let t = Instant::now();
                c.search(vec![word], 100).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Ok::<_, peer::index_client::IndexError>(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(j) = tasks.join_next().await {
        all.extend(j.map_err(LabError::setup)?.map_err(LabError::setup)?);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok((
        report::percentile(&all, 50.0),
        report::percentile(&all, 99.0),
        all.len() as f64 / secs.max(1e-9),
    ))
}

/// The hidden `lab index-worker`: an index server on `listen` taking `cap`
/// connections and sessions from any one address, leases of an hour (no
/// session expires while measured); runs until killed.
pub async fn index_worker(listen: std::net::SocketAddr, cap: usize) -> Result<(), LabError> {
    let mut config = index_server::Config {
        listen,
        lease_ttl: Duration::from_secs(3600),
        max_connections: cap,
        max_connections_per_ip: cap,
        ..Default::default()
    };
    config.limits.max_sessions_per_source = cap;
    let server = index_server::Server::bind(config)
        .await
        .map_err(LabError::setup)?;
    let _ = server.run(tokio_util::sync::CancellationToken::new()).await;
    Ok(())
}

/// The hidden `lab session-worker`: sessions `first..first+count`, driven
/// by lines on stdin (`register`, `heartbeat`, `count`, `stop`), answering
/// on stdout (`logged-in`, `registered`, `heartbeating`, `count N`,
/// `stopped P99_US`).
pub async fn worker(
    index: String,
    first: usize,
    count: usize,
    files: usize,
    heartbeat: Duration,
    old_backoff: bool,
) -> Result<(), LabError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let say = |what: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{what}");
        let _ = out.flush();
    };
    let mut lines = {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    };
    // Log in, at most 64 at a time.
    let mut clients: Vec<(usize, IndexClient)> = Vec::with_capacity(count);
    let sessions: Vec<usize> = (first..first + count).collect();
    for batch in sessions.chunks(64) {
        let mut set = tokio::task::JoinSet::new();
        for &s in batch {
            let index = index.clone();
            set.spawn(async move {
                let mut c = IndexClient::connect(&index).await?;
                c.request(&IndexRequest::Login(Login {
                    listen_port: 1024 + (s % 60_000) as u16,
                    advertise: None,
                    nick: None,
                }))
                .await?;
                Ok::<_, peer::index_client::IndexError>((s, c))
            });
        }
        while let Some(j) = set.join_next().await {
            clients.push(j.map_err(LabError::setup)?.map_err(LabError::setup)?);
        }
    }
    say("logged-in".into());
    // Wait for "register".
    loop {
        match lines.recv().await.as_deref() {
            Some("register") => break,
            Some(_) => continue,
            None => return Ok(()),
        }
    }
    for (s, c) in &mut clients {
        let all: Vec<SharedFile> = (0..files).map(|k| file_of(*s, k)).collect();
        for batch in all.chunks(common::limits::MAX_FILES_PER_BATCH) {
            c.request(&IndexRequest::AddFiles {
                files: batch.to_vec(),
            })
            .await
            .map_err(LabError::setup)?;
        }
    }
    say("registered".into());
    loop {
        match lines.recv().await.as_deref() {
            Some("heartbeat") => break,
            Some("watch") => return rejoin(index, clients, files, old_backoff, lines, say).await,
            Some(_) => continue,
            None => return Ok(()),
        }
    }
    let beats = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let n = clients.len().max(1) as u32;
    for (i, (_, mut c)) in clients.into_iter().enumerate() {
        let (beats, stop) = (beats.clone(), stop.clone());
        // Spread evenly over the interval.
        let offset = heartbeat * i as u32 / n;
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let start = tokio::time::Instant::now() + offset;
            let mut tick = tokio::time::interval_at(start, heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let t = Instant::now();
                if c.request(&IndexRequest::Heartbeat).await.is_err() {
                    break;
                }
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                beats.fetch_add(1, Ordering::Relaxed);
            }
            lat
        });
    }
    say("heartbeating".into());
    while let Some(line) = lines.recv().await {
        match line.as_str() {
            "count" => say(format!("count {}", beats.load(Ordering::Relaxed))),
            "stop" => break,
            _ => {}
        }
    }
    stop.cancel();
    let mut lat = Vec::new();
    while let Some(j) = tasks.join_next().await {
        lat.extend(j.unwrap_or_default());
    }
    lat.sort_by(f64::total_cmp);
    say(format!("stopped {:.0}", report::percentile(&lat, 99.0)));
    Ok(())
}

/// The wait before a login attempt: the registrar's, or (`old`) the one it
/// had before full jitter, the backoff plus up to a quarter of it.
fn wait(backoff: Duration, old: bool) -> Duration {
    let draw: u64 = rand::random();
    if old {
        backoff + Duration::from_millis(draw % (backoff.as_millis() as u64 / 4 + 1))
    } else {
        peer::registrar::reconnect_delay(backoff, draw)
    }
}

/// One session's login and file registration, as a new connection.
async fn join(index: &str, s: usize, files: usize) -> Result<IndexClient, LabError> {
    let mut c = IndexClient::connect(index).await.map_err(LabError::setup)?;
    c.request(&IndexRequest::Login(Login {
        listen_port: 1024 + (s % 60_000) as u16,
        advertise: None,
        nick: None,
    }))
    .await
    .map_err(LabError::setup)?;
    let all: Vec<SharedFile> = (0..files).map(|k| file_of(s, k)).collect();
    for batch in all.chunks(common::limits::MAX_FILES_PER_BATCH) {
        c.request(&IndexRequest::AddFiles {
            files: batch.to_vec(),
        })
        .await
        .map_err(LabError::setup)?;
    }
    Ok(c)
}

/// The worker's restart phase: every session waits for its connection to
/// close, then logs in and registers again as the peer daemon's registrar
/// does (`peer::registrar::reconnect_delay` with its default backoff),
/// until "stop". Answers "back N FAILED" to "back".
async fn rejoin(
    index: String,
    clients: Vec<(usize, IndexClient)>,
    files: usize,
    old_backoff: bool,
    mut lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    say: impl Fn(String),
) -> Result<(), LabError> {
    use peer::registrar::{DEFAULT_BACKOFF_MAX, DEFAULT_BACKOFF_MIN};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let back = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (s, mut c) in clients {
        let (index, back, failed, stop) =
            (index.clone(), back.clone(), failed.clone(), stop.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = c.closed() => {}
            }
            drop(c);
            let mut backoff = DEFAULT_BACKOFF_MIN;
            let again = loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait(backoff, old_backoff)) => {}
                }
                match join(&index, s, files).await {
                    Ok(c) => break c,
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        backoff = (backoff * 2).min(DEFAULT_BACKOFF_MAX);
                    }
                }
            };
            back.fetch_add(1, Ordering::Relaxed);
            // Held until the end, as a peer holds its session.
            stop.cancelled().await;
            drop(again);
        });
    }
    say("watching".into());
    while let Some(line) = lines.recv().await {
        match line.as_str() {
            "back" => say(format!(
                "back {} {}",
                back.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed)
            )),
            "stop" => break,
            _ => {}
        }
    }
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn write_outputs(config: &Config, outcomes: &[Outcome]) -> Result<Written, LabError> {
    let mut csv = Csv::new(CSV_COLUMNS);
    let row = |run: String, o: &Outcome| {
        vec![
            run,
            config.sessions.to_string(),
            config.files_per_session.to_string(),
            format!("{}", config.heartbeat.as_secs_f64()),
            o.rss_idle.to_string(),
            o.rss_sessions.to_string(),
            o.rss_files.to_string(),
            format!("{:.0}", o.bytes_per_session(config)),
            format!("{:.0}", o.bytes_per_file(config)),
            o.heartbeats.to_string(),
            format!("{:.1}", o.cpu_per_heartbeat_us()),
            format!("{:.4}", o.heartbeat_core_share(config)),
            format!("{:.0}", o.heartbeat_p99_us),
            format!("{:.0}", o.quiet_p50_us),
            format!("{:.0}", o.quiet_p99_us),
            format!("{:.0}", o.during_p50_us),
            format!("{:.0}", o.during_p99_us),
            format!("{:.0}", o.during_per_sec),
            format!("{:.3}", o.restart_s),
            format!("{:.3}", o.restart_from_up_s),
            o.restart_failed.to_string(),
        ]
    };
    for o in outcomes {
        csv.row(row(o.run.to_string(), o));
    }
    let of = |f: &dyn Fn(&Outcome) -> f64| {
        Spread::of(&outcomes.iter().map(f).collect::<Vec<_>>()).unwrap_or(Spread {
            median: 0.0,
            min: 0.0,
            max: 0.0,
            count: 0,
        })
    };
    let per_session = of(&|o| o.bytes_per_session(config));
    let per_file = of(&|o| o.bytes_per_file(config));
    let cpu = of(&|o| o.cpu_per_heartbeat_us());
    let share = of(&|o| o.heartbeat_core_share(config));
    let q50 = of(&|o| o.quiet_p50_us);
    let q99 = of(&|o| o.quiet_p99_us);
    let d50 = of(&|o| o.during_p50_us);
    let d99 = of(&|o| o.during_p99_us);
    let hb99 = of(&|o| o.heartbeat_p99_us);
    let median = Outcome {
        run: 0,
        rss_idle: of(&|o| o.rss_idle as f64).median as u64,
        rss_sessions: of(&|o| o.rss_sessions as f64).median as u64,
        rss_files: of(&|o| o.rss_files as f64).median as u64,
        heartbeat_cpu_s: of(&|o| o.heartbeat_cpu_s).median,
        heartbeats: of(&|o| o.heartbeats as f64).median as u64,
        heartbeat_p99_us: hb99.median,
        quiet_p50_us: q50.median,
        quiet_p99_us: q99.median,
        quiet_per_sec: of(&|o| o.quiet_per_sec).median,
        during_p50_us: d50.median,
        during_p99_us: d99.median,
        during_per_sec: of(&|o| o.during_per_sec).median,
        restart_s: of(&|o| o.restart_s).median,
        restart_from_up_s: of(&|o| o.restart_from_up_s).median,
        restart_up_s: of(&|o| o.restart_up_s).median,
        restart_failed: of(&|o| o.restart_failed as f64).median as u64,
    };
    let mut r = row("median".into(), &median);
    // The median row's derived figures are the medians of the runs'.
    r[7] = format!("{:.0}", per_session.median);
    r[8] = format!("{:.0}", per_file.median);
    r[10] = format!("{:.1}", cpu.median);
    r[11] = format!("{:.4}", share.median);
    csv.row(r);

    let ms = |s: &Spread| (s.median / 1000.0, s.min / 1000.0, s.max / 1000.0);
    let bar_series = |name: &str, x: f64, s: &Spread, color| {
        let (m, lo, hi) = ms(s);
        Series::points(name, vec![(x, m)], color).with_bars(vec![(x, lo, hi)])
    };
    let mut latency = Chart::new(
        format!(
            "Search latency, {} sessions heartbeating every {:?}",
            config.sessions, config.heartbeat
        ),
        "",
        "latency (ms, log scale)",
        vec![
            bar_series("p50, quiet", 0.0, &q50, COLORS[0]),
            bar_series("p99, quiet", 1.0, &q99, COLORS[1]),
            bar_series("p50, during heartbeats", 2.0, &d50, COLORS[2]),
            bar_series("p99, during heartbeats", 3.0, &d99, COLORS[3]),
            Series::line(
                "target p99 < 10 ms",
                vec![(-0.3, 10.0), (3.3, 10.0)],
                COLORS[5],
            ),
        ],
    );
    latency.x_names = Some(vec![
        "p50 quiet".into(),
        "p99 quiet".into(),
        "p50 during".into(),
        "p99 during".into(),
    ]);
    latency.y_log = true;
    latency.notes = vec![format!(
        "{} clients; median of {} run(s), bars min-max",
        config.clients,
        outcomes.len()
    )];
    let mib = |b: f64| b / 1048576.0;
    let phase = |name: &str, x: f64, f: &dyn Fn(&Outcome) -> f64, color| {
        let s = of(&|o| mib(f(o)));
        Series::points(name, vec![(x, s.median)], color).with_bars(vec![(x, s.min, s.max)])
    };
    let mut memory = Chart::new(
        "Index resident memory",
        "",
        "RSS (MiB)",
        vec![
            phase("idle", 0.0, &|o| o.rss_idle as f64, COLORS[0]),
            phase(
                &format!("{} sessions logged in", config.sessions),
                1.0,
                &|o| o.rss_sessions as f64,
                COLORS[1],
            ),
            phase(
                &format!("+ {} files each", config.files_per_session),
                2.0,
                &|o| o.rss_files as f64,
                COLORS[2],
            ),
        ],
    );
    memory.x_names = Some(vec!["idle".into(), "sessions".into(), "files".into()]);
    memory.notes = vec![
        format!(
            "{:.0} bytes per session (target < 8 KiB)",
            per_session.median
        ),
        format!("{:.0} bytes per file", per_file.median),
    ];
    let mut md = format!(
        "# Index under {} sessions\n\n{} peer sessions (held by {} worker processes) log in, \
         register {} files each and heartbeat every {:?}, against a real `index-server` \
         process on loopback; {} clients search one random word at a time for {:?}, before \
         and during the heartbeats. Median of {} run(s) with [min–max]. Memory is the index \
         process's VmRSS, CPU its utime + stime, from /proc.\n\n",
        config.sessions,
        config.sessions,
        config.workers,
        config.files_per_session,
        config.heartbeat,
        config.clients,
        config.duration,
        outcomes.len(),
    );
    let mut rows = vec![
        vec![
            "memory per session (beyond files)".into(),
            format!("{} bytes", per_session.text(0)),
            "< 8 KiB".into(),
        ],
        vec![
            "memory per file".into(),
            format!("{} bytes", per_file.text(0)),
            "-".into(),
        ],
        vec![
            "index CPU per heartbeat".into(),
            format!("{} µs", cpu.text(1)),
            "-".into(),
        ],
        vec![
            format!(
                "heartbeat load ({:.0}/s)",
                config.sessions as f64 / config.heartbeat.as_secs_f64()
            ),
            format!("{} of a core", share.text(3)),
            "-".into(),
        ],
        vec![
            "heartbeat round trip p99 (worst worker)".into(),
            format!("{} µs", hb99.text(0)),
            "-".into(),
        ],
        vec![
            "search p50 / p99, quiet".into(),
            format!("{} / {} µs", q50.text(0), q99.text(0)),
            "-".into(),
        ],
        vec![
            "search p50 / p99, during heartbeats".into(),
            format!("{} / {} µs", d50.text(0), d99.text(0)),
            "p99 < 10 ms".into(),
        ],
    ];
    if config.restart_index {
        // Phases 4 to 6 did not run: their rows would be zeros.
        rows.truncate(2);
        let restart = of(&|o| o.restart_s);
        let from_up = of(&|o| o.restart_from_up_s);
        let failed = of(&|o| o.restart_failed as f64);
        rows.push(vec![
            format!(
                "{} sessions registered again ({} files each) after an index restart, from the kill",
                config.sessions, config.files_per_session
            ),
            format!("{} s", restart.text(2)),
            "< 10 s".into(),
        ]);
        rows.push(vec![
            "the same, from the new index accepting".into(),
            format!("{} s", from_up.text(2)),
            "-".into(),
        ]);
        rows.push(vec![
            "login attempts that failed and were retried".into(),
            failed.text(0),
            "-".into(),
        ]);
    }
    if config.insecure || config.old_backoff {
        md.push_str(&format!(
            "Baseline run: {}{}.\n\n",
            if config.insecure {
                "clear text (`--insecure`)"
            } else {
                "encrypted"
            },
            if config.old_backoff {
                ", the registrar's wait before full jitter (`--old-backoff`)"
            } else {
                ""
            }
        ));
    }
    md.push_str(&report::md_table(&["figure", "measured", "target"], &rows));
    report::write_all(&config.out, "sessions", &csv, &[latency, memory], &md)
}
