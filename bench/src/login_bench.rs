//! Authenticated logins per second at the index (issue 16): clients that
//! connect, run the hello and the Noise handshake, log in and leave, as
//! fast as they can, against a real `index-server` process; then the same
//! with `--insecure` on both sides, in the same run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::hello::Protocol;
use common::identity::Identity;
use common::index_proto::{IndexRequest, IndexResponse, Login};
use common::secure::Security;
use common::wire::{self, Deadlines};

/// Runs both modes and prints the table row.
pub async fn logins(clients: usize, duration: Duration) -> anyhow::Result<()> {
    let secure = run_mode(false, clients, duration).await?;
    let clear = run_mode(true, clients, duration).await?;
    println!(
        "| logins per second at the index, each a new connection with hello, Noise XX handshake and Login ({clients} clients, {} s, index and load generator on this machine) | {secure:.0}/s | same with --insecure on both sides: {clear:.0}/s | {:.2} of clear text (target >= 5,000/s) |",
        duration.as_secs(),
        secure / clear.max(1.0)
    );
    Ok(())
}

/// Logins per second against a fresh index in one mode.
async fn run_mode(insecure: bool, clients: usize, duration: Duration) -> anyhow::Result<f64> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("exe dir")?;
    let mut cmd = std::process::Command::new(bin.join("index-server"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .args(["--max-connections", "100000"])
        .args(["--max-connections-per-ip", "100000"])
        .args(["--max-sessions-per-address", "1000000"])
        .env("RUST_LOG", "info");
    if insecure {
        cmd.arg("--insecure");
    }
    let (mut index, addr) = crate::index_load::spawn_with_addr(cmd, true)
        .context("start target/release/index-server (build it first)")?;
    let security = if insecure {
        Security::insecure()
    } else {
        Security::new(Identity::generate(), None)
    };
    let done = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
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
    let _ = index.kill();
    let _ = index.wait();
    let n = done.load(Ordering::Relaxed);
    let per_sec = n as f64 / secs;
    eprintln!(
        "{}: {n} logins in {secs:.1} s = {per_sec:.0}/s ({} failed or refused)",
        if insecure { "clear text" } else { "encrypted" },
        refused.load(Ordering::Relaxed)
    );
    Ok(per_sec)
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
