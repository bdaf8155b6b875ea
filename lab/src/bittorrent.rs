//! `lab distribution --compare-bittorrent`: the same file, N and caps
//! through a real BitTorrent swarm, for the CSV and plot beside p2pshare.
//!
//! An `opentracker` on 127.0.0.1, a `.torrent` made by `mktorrent` with
//! 256 KiB pieces (p2pshare's chunk size), a seed `aria2c` capped at u_s
//! (`--max-overall-upload-limit`) and N `aria2c` peers capped at u (and d),
//! DHT and local peer discovery off (the tracker and peer exchange find
//! peers), every peer seeding on after it finished. Like p2pshare's
//! loopback runs the caps are the application's token buckets. The clock
//! runs from starting the N peers until each has verified the whole file:
//! aria2 runs its `--on-bt-download-complete` hook then (before seeding),
//! which is `touch` run in a folder of the peer's own (it gets the
//! download's id, the number of files and the path, so a file named `1`
//! appears there).
//! Debian packages: aria2, opentracker, mktorrent (Debian's opentracker
//! serves whitelisted torrents only: the torrent's info hash is listed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::distribution::{Config, Measured};
use crate::processes::Children;
use crate::LabError;

/// Longest a BitTorrent run may take.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

/// The tools this needs and the Debian packages they come in.
const TOOLS: [(&str, &str); 3] = [
    ("aria2c", "aria2"),
    ("opentracker", "opentracker"),
    ("mktorrent", "mktorrent"),
];

/// Whether the BitTorrent tools are installed: `Err` names what is missing.
pub fn available() -> Result<(), LabError> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| find(tool).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::Setup(format!(
            "--compare-bittorrent needs aria2c, opentracker and mktorrent: install the Debian \
             packages {} (apt-get install {})",
            missing.join(", "),
            missing.join(" ")
        )))
    }
}

fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn spawn(cmd: &mut Command, log: &Path) -> Result<Child, LabError> {
    let log = std::fs::File::create(log)?;
    Ok(cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?)
}

use crate::processes::free_port;

async fn wait_port(port: u16, what: &str) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err(LabError::Setup(format!(
                "{what} did not listen within 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// aria2c's options common to the seed and the peers.
fn aria2(dir: &Path, port: u16, up: u64, down: Option<u64>, torrent: &Path) -> Command {
    let mut c = Command::new("aria2c");
    c.args([
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=true",
        // Seed on after finishing, until killed.
        "--seed-ratio=0.0",
        "--bt-max-peers=0",
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--allow-overwrite=true",
        "--check-certificate=false",
    ]);
    c.arg(format!("--dir={}", dir.display()));
    c.arg(format!("--listen-port={port}"));
    c.arg(format!("--max-overall-upload-limit={up}"));
    if let Some(d) = down {
        c.arg(format!("--max-overall-download-limit={d}"));
    }
    c.arg(torrent);
    c
}

/// One BitTorrent run of `n` peers; the file is `seed_dir/lab-file.bin`.
pub(crate) async fn swarm(
    config: &Config,
    n: usize,
    seed_dir: &Path,
    run: &Path,
) -> Result<Measured, LabError> {
    available()?;
    std::fs::create_dir_all(run)?;
    let mut children = Children(Vec::new());
    let tracker_port = free_port()?;
    // The seed's copy in a folder of its own (aria2 may write beside it).
    let seed = run.join("seed");
    std::fs::create_dir_all(&seed)?;
    std::fs::copy(seed_dir.join("lab-file.bin"), seed.join("lab-file.bin"))?;
    let torrent = run.join("lab-file.torrent");
    let made = Command::new("mktorrent")
        .args([
            "-a",
            &format!("http://127.0.0.1:{tracker_port}/announce"),
            // 2^18 = 256 KiB pieces, p2pshare's chunk size.
            "-l",
            "18",
            "-o",
        ])
        .arg(&torrent)
        .arg(seed.join("lab-file.bin"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if !made.status.success() {
        return Err(LabError::Setup(format!(
            "mktorrent failed: {}",
            String::from_utf8_lossy(&made.stderr).trim()
        )));
    }
    // Debian's opentracker serves only whitelisted torrents: list this
    // one's info hash (aria2c -S prints it). It changes to / on start, so
    // the list's path is absolute.
    let shown = Command::new("aria2c").arg("-S").arg(&torrent).output()?;
    let info_hash = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Info Hash:")
                .map(|h| h.trim().to_string())
        })
        .ok_or_else(|| LabError::Setup("aria2c -S printed no info hash".into()))?;
    let whitelist = std::path::absolute(run.join("whitelist"))?;
    std::fs::write(&whitelist, format!("{info_hash}\n"))?;
    children.push(spawn(
        Command::new("opentracker")
            .args([
                "-i",
                "127.0.0.1",
                "-p",
                &tracker_port.to_string(),
                "-P",
                &tracker_port.to_string(),
                "-w",
            ])
            .arg(&whitelist),
        &run.join("tracker.log"),
    )?);
    wait_port(tracker_port, "opentracker").await?;
    let seed_port = free_port()?;
    let mut seed_cmd = aria2(&seed, seed_port, config.server_up, None, &torrent);
    // The file is the seed's own: no need to hash it again.
    seed_cmd.arg("--bt-seed-unverified=true");
    children
        .0
        .push(spawn(&mut seed_cmd, &run.join("seed.log"))?);
    wait_port(seed_port, "the aria2c seed").await?;
    // The seed announced itself once its port is open; give the tracker
    // its first announce before the peers ask.
    wait_announced(tracker_port).await;

    let start = Instant::now();
    let touch = find("touch").ok_or_else(|| LabError::Setup("no touch on PATH".into()))?;
    let mut dirs = Vec::new();
    for i in 0..n {
        let dir = std::path::absolute(run.join(format!("peer-{i}")))?;
        let marks = std::path::absolute(run.join(format!("done-{i}")))?;
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(&marks)?;
        let port = free_port()?;
        let mut cmd = aria2(&dir, port, config.peer_up, config.peer_down, &torrent);
        cmd.arg(format!("--on-bt-download-complete={}", touch.display()))
            .current_dir(&marks);
        children
            .0
            .push(spawn(&mut cmd, &run.join(format!("peer-{i}.log")))?);
        dirs.push(marks);
    }
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut seen: Vec<Option<f64>> = vec![None; n];
    loop {
        let now = start.elapsed().as_secs_f64();
        for (marks, s) in dirs.iter().zip(seen.iter_mut()) {
            if s.is_none() && marks.join("1").exists() {
                *s = Some(now);
            }
        }
        let done = seen.iter().flatten().count();
        if done == n {
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
                return Err(LabError::Setup(format!(
                    "a BitTorrent process exited with {status} (logs in {})",
                    run.display()
                )));
            }
        }
        if Instant::now() > deadline {
            return Err(LabError::Setup(format!(
                "{done} of {n} BitTorrent peers finished within {RUN_DEADLINE:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (at most 2 s) until opentracker's statistics count a peer.
async fn wait_announced(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(text) = http_get(port, "/stats?mode=peer").await {
            if text
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse::<u64>().ok())
                .any(|v| v > 0)
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(1), s.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::other("timeout"))??;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}
