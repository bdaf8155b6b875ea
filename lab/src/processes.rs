//! `lab distribution --processes`: the same experiment with real
//! `index-server` and `peer` processes on loopback instead of tasks in the
//! lab's own process. The binaries are taken from the lab binary's folder
//! (`cargo build --release -p lab -p peer -p index-server`).
//!
//! Client-server: `index-server --store` capped at the server rate, N
//! `peer get --mode client-server` processes. Hybrid: an index, a seed
//! `peer serve` capped at the server rate, N `peer serve --fetch ID`
//! processes capped at the peer rate (they swarm). P2p: the same without an
//! index, nodes joined in a line plus a random earlier node. The clock runs
//! from starting the N downloaders until every one holds the whole file
//! under its name (a `peer get` exits 0; a `--fetch` publishes the file).
//! Upload counters are not collected from processes (reported as 0).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::id::FileId;

use crate::distribution::{Config, Measured};
use crate::LabError;

/// Longest a process-based run may take.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

/// Kills every child on drop, so a failed run leaves nothing behind.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn binary(name: &str) -> Result<PathBuf, LabError> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().map(|d| d.join(name)).unwrap_or_default();
    if path.is_file() {
        Ok(path)
    } else {
        Err(LabError::Setup(format!(
            "--processes needs the {name} binary beside the lab binary ({}); build it with `cargo build --release -p lab -p peer -p index-server`",
            path.display()
        )))
    }
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> Result<u16, LabError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(cmd: &mut Command, log: &Path) -> Result<Child, LabError> {
    let log = std::fs::File::create(log)?;
    Ok(cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

fn rate(bps: u64) -> String {
    format!("{bps}")
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
        for c in &mut children.0 {
            if let Ok(Some(status)) = c.try_wait() {
                if !status.success() {
                    return Err(LabError::Setup(format!(
                        "a peer process exited with {status}"
                    )));
                }
            }
        }
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
    n: usize,
    id: FileId,
    seed: &Path,
    run: &Path,
) -> Result<Measured, LabError> {
    let (index_bin, peer_bin) = (binary("index-server")?, binary("peer")?);
    std::fs::create_dir_all(run)?;
    let port = free_port()?;
    let index = format!("127.0.0.1:{port}");
    let mut children = Children(Vec::new());
    children.0.push(spawn(
        Command::new(&index_bin).args([
            "--listen",
            &index,
            "--store",
            seed.to_str().unwrap_or_default(),
            "--max-upload-rate",
            &rate(config.server_up),
            // Every client comes from 127.0.0.1.
            "--max-connections-per-ip",
            "10000",
        ]),
        &run.join("index.log"),
    )?);
    wait_listed(&index, id).await?;
    let start = Instant::now();
    let mut outs = Vec::new();
    for i in 0..n {
        let out = run.join(format!("client-{i}"));
        let mut cmd = Command::new(&peer_bin);
        cmd.args([
            "get",
            "--mode",
            "client-server",
            "--index",
            &index,
            "-o",
            out.to_str().unwrap_or_default(),
        ]);
        if let Some(d) = config.peer_down {
            cmd.args(["--max-download-rate", &rate(d)]);
        }
        cmd.arg(id.to_hex());
        children
            .0
            .push(spawn(&mut cmd, &run.join(format!("client-{i}.log")))?);
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

pub(crate) async fn swarm(
    config: &Config,
    n: usize,
    id: FileId,
    seed: &Path,
    run: &Path,
    p2p: bool,
) -> Result<Measured, LabError> {
    let (index_bin, peer_bin) = (binary("index-server")?, binary("peer")?);
    std::fs::create_dir_all(run)?;
    let mut children = Children(Vec::new());
    let index = format!("127.0.0.1:{}", free_port()?);
    if !p2p {
        children.0.push(spawn(
            Command::new(&index_bin).args([
                "--listen",
                &index,
                "--max-connections-per-ip",
                "10000",
            ]),
            &run.join("index.log"),
        )?);
    }
    let mut ports = vec![free_port()?];
    let mut seed_cmd = Command::new(&peer_bin);
    seed_cmd.args([
        "serve",
        "--share",
        seed.to_str().unwrap_or_default(),
        "--listen",
        &format!("127.0.0.1:{}", ports[0]),
        "--index",
        &index,
        "--nick",
        "seed",
        "--max-upload-rate",
        &rate(config.server_up),
        // Every downloader comes from 127.0.0.1.
        "--max-connections-per-ip",
        "256",
    ]);
    if p2p {
        seed_cmd.args(["--mode", "p2p"]);
    }
    children
        .0
        .push(spawn(&mut seed_cmd, &run.join("seed.log"))?);
    if p2p {
        // The seed must accept neighbours before the others join through it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", ports[0]))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err(LabError::Setup("the seed did not start within 30 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    } else {
        wait_listed(&index, id).await?;
    }
    let start = Instant::now();
    let mut dirs = Vec::new();
    for i in 0..n {
        let share = run.join(format!("peer-{i}"));
        std::fs::create_dir_all(&share)?;
        let port = free_port()?;
        let mut cmd = Command::new(&peer_bin);
        cmd.args([
            "serve",
            "--share",
            share.to_str().unwrap_or_default(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--index",
            &index,
            "--nick",
            &format!("peer{i}"),
            "--max-upload-rate",
            &rate(config.peer_up),
            "--max-connections-per-ip",
            "256",
            "--fetch",
            &id.to_hex(),
        ]);
        if let Some(d) = config.peer_down {
            cmd.args(["--max-download-rate", &rate(d)]);
        }
        if p2p {
            // A line through every node plus one random earlier node.
            let previous = ports[ports.len() - 1];
            let random = ports[(rand_index(i) as usize) % ports.len()];
            cmd.args([
                "--mode",
                "p2p",
                "--neighbor",
                &format!("127.0.0.1:{previous}"),
            ]);
            if random != previous {
                cmd.args(["--neighbor", &format!("127.0.0.1:{random}")]);
            }
        }
        children
            .0
            .push(spawn(&mut cmd, &run.join(format!("peer-{i}.log")))?);
        ports.push(port);
        dirs.push(share);
    }
    wait_files(
        &dirs,
        "lab-file.bin",
        config.file_size,
        &mut children,
        start,
    )
    .await
}

/// A cheap deterministic spread for choosing random earlier neighbours.
fn rand_index(i: usize) -> u64 {
    (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33
}
