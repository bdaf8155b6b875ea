//! Authenticated logins per second at the index (issue 16): clients that
//! connect, run the hello and the Noise handshake, log in and leave, as
//! fast as they can, against a real `index-server` process; then the same
//! with the signed handshake of version-2 nodes from before
//! `FEATURE_IDENTITY_STATIC` (the client does not offer it), then with
//! `--insecure` on both sides, in the same run.
//!
//! Besides logins per second (what the index and this load generator do
//! together on a shared machine), the index's own CPU time (utime + stime
//! from /proc) is read before and after each mode: logins per second of
//! index CPU is what one core of index would complete. `--index-cpus`
//! pins the index (with `taskset`) so that it and this process do not
//! take each other's cores; run this process under `taskset` too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::hello::Protocol;
use common::identity::Identity;
use common::index_proto::{IndexRequest, IndexResponse, Login};
use common::secure::Security;
use common::wire::{self, Deadlines};

/// What one mode measured.
struct Measured {
    /// Logins per second of wall-clock time.
    per_sec: f64,
    /// Logins per second of the index's CPU time.
    per_index_cpu_sec: f64,
}

/// How the load generator's clients connect.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Encrypted, identity static keys (the current handshake).
    Identity,
    /// Encrypted, the signed handshake (what the client of a version-2
    /// node from before `FEATURE_IDENTITY_STATIC` gets).
    Signed,
    /// `--insecure` on both sides.
    Clear,
}

/// Runs the three modes and prints the table rows.
pub async fn logins(
    clients: usize,
    duration: Duration,
    index_cpus: Option<&str>,
) -> anyhow::Result<()> {
    let secure = run_mode(Mode::Identity, clients, duration, index_cpus).await?;
    let signed = run_mode(Mode::Signed, clients, duration, index_cpus).await?;
    let clear = run_mode(Mode::Clear, clients, duration, index_cpus).await?;
    let pinned = index_cpus
        .map(|c| format!("index pinned to CPU {c}"))
        .unwrap_or_else(|| "index and load generator sharing the machine".into());
    println!(
        "| logins per second at the index, each a new connection with hello, Noise XX handshake and Login ({clients} clients, {} s, {pinned}) | {:.0}/s | same with --insecure on both sides: {:.0}/s | {:.2} of clear text (target >= 5,000/s) |",
        duration.as_secs(),
        secure.per_sec,
        clear.per_sec,
        secure.per_sec / clear.per_sec.max(1.0)
    );
    println!(
        "| logins per second of index CPU time (same runs) | {:.0}/s | same with --insecure on both sides: {:.0}/s | {:.2} of clear text (target >= 5,000/s) |",
        secure.per_index_cpu_sec,
        clear.per_index_cpu_sec,
        secure.per_index_cpu_sec / clear.per_index_cpu_sec.max(1.0)
    );
    println!(
        "| logins per second, identity static keys vs the signed handshake (same runs) | {:.0}/s; {:.0}/s of index CPU | signed: {:.0}/s; {:.0}/s of index CPU | {:.2}; {:.2} |",
        secure.per_sec,
        secure.per_index_cpu_sec,
        signed.per_sec,
        signed.per_index_cpu_sec,
        secure.per_sec / signed.per_sec.max(1.0),
        secure.per_index_cpu_sec / signed.per_index_cpu_sec.max(1.0)
    );
    Ok(())
}

/// Logins per second against a fresh index in one mode.
async fn run_mode(
    mode: Mode,
    clients: usize,
    duration: Duration,
    index_cpus: Option<&str>,
) -> anyhow::Result<Measured> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("exe dir")?;
    let server = bin.join("index-server");
    let mut cmd = match index_cpus {
        Some(cpus) => {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", cpus]).arg(&server);
            c
        }
        None => std::process::Command::new(&server),
    };
    cmd.args(["--listen", "127.0.0.1:0"])
        .args(["--max-connections", "100000"])
        .args(["--max-connections-per-ip", "100000"])
        .args(["--max-sessions-per-address", "1000000"])
        .env("RUST_LOG", "info");
    let insecure = mode == Mode::Clear;
    if insecure {
        cmd.arg("--insecure");
    }
    let (mut index, addr) = crate::index_load::spawn_with_addr(cmd, true)
        .context("start target/release/index-server (build it first)")?;
    let security = match mode {
        Mode::Clear => Security::insecure(),
        Mode::Identity => Security::new(Identity::generate(), None),
        Mode::Signed => Security::new(Identity::generate(), None).signed_only(),
    };
    let done = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let cpu_before = crate::transfer_bench::child_cpu_secs(index.id());
    let started = Instant::now();
    let until = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (addr, security, done, refused) = (
            addr.clone(),
            security.clone(),
            done.clone(),
            refused.clone(),
        );
        tasks.spawn(async move {
            let mut i = 0u32;
            while Instant::now() < until {
                // Ports per client, reused only after a long cycle.
                let port = 1024 + ((c as u32 * 997 + i) % 64_000) as u16;
                i += 1;
                match login_once(&addr, &security, port).await {
                    Ok(true) => done.fetch_add(1, Ordering::Relaxed),
                    _ => refused.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let secs = started.elapsed().as_secs_f64();
    let index_cpu = crate::transfer_bench::child_cpu_secs(index.id()) - cpu_before;
    let _ = index.kill();
    let _ = index.wait();
    let n = done.load(Ordering::Relaxed);
    let per_sec = n as f64 / secs;
    let per_index_cpu_sec = n as f64 / index_cpu.max(1e-3);
    eprintln!(
        "{}: {n} logins in {secs:.1} s = {per_sec:.0}/s ({} failed or refused); index CPU {index_cpu:.2} s = {:.0} µs per login, {per_index_cpu_sec:.0} logins per index CPU second",
        match mode {
            Mode::Identity => "encrypted",
            Mode::Signed => "encrypted, signed handshake",
            Mode::Clear => "clear text",
        },
        refused.load(Ordering::Relaxed),
        index_cpu * 1e6 / (n.max(1) as f64)
    );
    Ok(Measured {
        per_sec,
        per_index_cpu_sec,
    })
}

/// One connection: hello, handshake, `Login`; whether it was welcomed.
async fn login_once(addr: &str, security: &Security, port: u16) -> anyhow::Result<bool> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut s, _) = transfer::net::client_with(stream, Protocol::Index, None, security).await?;
    let login = IndexRequest::Login(Login {
        listen_port: port,
        advertise: None,
        nick: None,
    });
    wire::send_message(&mut s, &login).await?;
    let answer: IndexResponse =
        wire::expect_message(&mut s, &mut Vec::new(), Deadlines::default()).await?;
    Ok(matches!(answer, IndexResponse::Welcome { .. }))
}
