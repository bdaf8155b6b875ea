//! The index server as a separate process under load, beside a bare echo
//! server over the same framing, both measured in the same run.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::hello::Protocol;
use common::id::FileId;
use common::index_proto::{IndexRequest, IndexResponse, Login, SharedFile};
use common::wire::{self, Deadlines};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

/// Pipelined requests per connection (the field notes measured echo with 16).
const DEPTH: usize = 16;

fn file(i: usize) -> SharedFile {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(i as u64).to_le_bytes());
    id[31] = 0xA5;
    SharedFile {
        id: FileId(id),
        name: format!("file-{i:07} word{} tag{}.dat", i % 1000, i % 97),
        size: 1 + i as u64,
    }
}

/// Spawns a child that logs or prints `addr=HOST:PORT`, and returns it with that address.
pub fn spawn_with_addr(mut cmd: Command, from_stderr: bool) -> anyhow::Result<(Child, String)> {
    let mut child = if from_stderr {
        cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn()?
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?
    };
    let reader: Box<dyn std::io::Read + Send> = if from_stderr {
        Box::new(child.stderr.take().context("stderr")?)
    } else {
        Box::new(child.stdout.take().context("stdout")?)
    };
    let mut lines = std::io::BufReader::new(reader).lines();
    let addr = loop {
        let line = lines
            .next()
            .context("child exited before saying its address")??;
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap_or("").to_string();
        }
    };
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((child, addr))
}

pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kb * 1024)
}

struct Conn {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: &str) -> anyhow::Result<Conn> {
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        wire::client_handshake(&mut s, Protocol::Index).await?;
        let (r, w) = s.into_split();
        Ok(Conn {
            reader: BufReader::new(r),
            writer: BufWriter::new(w),
            buf: Vec::new(),
        })
    }

    async fn pipelined(&mut self, requests: &[IndexRequest]) -> anyhow::Result<Vec<IndexResponse>> {
        for r in requests {
            wire::write_message(&mut self.writer, r).await?;
        }
        self.writer.flush().await?;
        let mut out = Vec::with_capacity(requests.len());
        for _ in requests {
            out.push(
                wire::expect_message(
                    &mut self.reader,
                    &mut self.buf,
                    Deadlines::with_idle(Duration::from_secs(60)),
                )
                .await?,
            );
        }
        Ok(out)
    }
}

/// Pipelined request/response rate with `clients` connections for `duration`.
async fn rate(addr: &str, clients: usize, duration: Duration, files: usize) -> anyhow::Result<f64> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await?;
            let start = Instant::now();
            let mut done = 0u64;
            let mut i = c * 7919;
            while start.elapsed() < duration {
                let batch: Vec<IndexRequest> = (0..DEPTH)
                    .map(|k| {
                        i = (i + 104_729 + k) % files.max(1);
                        IndexRequest::Lookup { id: file(i).id }
                    })
                    .collect();
                conn.pipelined(&batch).await?;
                done += DEPTH as u64;
            }
            anyhow::Ok((done, start.elapsed().as_secs_f64()))
        }));
    }
    let mut total = 0.0;
    for t in tasks {
        let (n, secs) = t.await??;
        total += n as f64 / secs;
    }
    Ok(total)
}

pub async fn run(files: usize, clients: usize, duration: Duration) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?;
    let mut index_cmd = Command::new(dir.join("index-server"));
    index_cmd
        .args(["--listen", "127.0.0.1:0", "--lease-ttl", "1h"])
        .env("RUST_LOG", "info");
    let (mut index, addr) = spawn_with_addr(index_cmd, true)
        .context("start target/release/index-server (build it first)")?;
    let mut echo_cmd = Command::new(&exe);
    echo_cmd.arg("echo-server");
    let (mut echo, echo_addr) = spawn_with_addr(echo_cmd, false)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss_bytes(index.id())?;

    // Registration: 8 sessions, batches of 512, all pipelined.
    let sessions = 8;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await?;
            conn.pipelined(&[IndexRequest::Login(Login {
                listen_port: 7000 + s as u16,
                advertise: None,
                nick: None,
            })])
            .await?;
            let mine: Vec<usize> = (s..files).step_by(sessions).collect();
            let mut names = 0u64;
            for group in mine.chunks(512 * 16) {
                let batches: Vec<IndexRequest> = group
                    .chunks(512)
                    .map(|b| IndexRequest::AddFiles {
                        files: b.iter().map(|&i| file(i)).collect(),
                    })
                    .collect();
                for r in conn.pipelined(&batches).await? {
                    anyhow::ensure!(
                        matches!(r, IndexResponse::Ack { .. }),
                        "registration refused: {r:?}"
                    );
                }
                names += group
                    .iter()
                    .map(|&i| file(i).name.len() as u64)
                    .sum::<u64>();
            }
            anyhow::Ok((conn, names))
        }));
    }
    let mut held = Vec::new();
    let mut name_bytes = 0;
    for t in tasks {
        let (conn, names) = t.await??;
        held.push(conn);
        name_bytes += names;
    }
    let reg_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after = rss_bytes(index.id())?;
    let per_file = (rss_after
        .saturating_sub(rss_before)
        .saturating_sub(name_bytes)) as f64
        / files as f64;

    let echo_rate = rate(&echo_addr, clients, duration, files).await?;
    let lookup_rate = rate(&addr, clients, duration, files).await?;

    // Search latency: one client, sequential, random vocabulary words.
    let mut conn = Conn::open(&addr).await?;
    let mut latencies = Vec::new();
    for q in 0..2000usize {
        let words = vec![
            format!("word{}", (q * 37) % 1000),
            format!("tag{}", (q * 11) % 97),
        ];
        let t = Instant::now();
        conn.pipelined(&[IndexRequest::Search { words, limit: 100 }])
            .await?;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    let mut single = Vec::new();
    for q in 0..500usize {
        let t = Instant::now();
        conn.pipelined(&[IndexRequest::Search {
            words: vec![format!("word{}", (q * 37) % 1000)],
            limit: 100,
        }])
        .await?;
        single.push(t.elapsed());
    }
    single.sort();
    let single_p99 = single[single.len() * 99 / 100];

    drop(held);
    let _ = index.kill();
    let _ = echo.kill();
    let _ = index.wait();
    let _ = echo.wait();

    println!("| registration, {files} files over 8 sessions | {:.0} files/s | target 200,000 files/s | {:.2} |", files as f64 / reg_secs, files as f64 / reg_secs / 200_000.0);
    println!("| lookups, {clients} clients x {DEPTH} pipelined | {lookup_rate:.0} /s | echo on the same framing {echo_rate:.0} /s | {:.2} (target >= 0.5) |", lookup_rate / echo_rate);
    println!("| search, 2 words (about 10 hits), p50 / p99 | {:.2} ms / {:.2} ms | target p99 < 10 ms | {:.2} |", p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3, 10.0 / (p99.as_secs_f64() * 1e3));
    println!("| search, 1 word (1000 hits ranked, 100 returned), p99 | {:.2} ms | target p99 < 10 ms | {:.2} |", single_p99.as_secs_f64() * 1e3, 10.0 / (single_p99.as_secs_f64() * 1e3));
    println!("| index memory per file beyond names (RSS delta) | {per_file:.0} B | target 256 B | {:.2} |", 256.0 / per_file.max(1.0));
    Ok(())
}

/// A bare echo server on the protocol's framing: hello, then one small
/// answer per request frame, flushed like the index server does.
pub async fn echo_server() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("echo server addr={}", listener.local_addr()?);
    loop {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        tokio::spawn(async move {
            wire::server_handshake(&mut s, Protocol::Index, false).await?;
            let (r, w) = s.into_split();
            let (mut r, mut w) = (BufReader::new(r), BufWriter::new(w));
            let mut buf = Vec::new();
            while let Some(req) =
                wire::read_message::<_, IndexRequest>(&mut r, &mut buf, Deadlines::default())
                    .await?
            {
                std::hint::black_box(req);
                wire::write_message(&mut w, &IndexResponse::Ack { count: 0 }).await?;
                if r.buffer().is_empty() {
                    w.flush().await?;
                }
            }
            anyhow::Ok(())
        });
    }
}
