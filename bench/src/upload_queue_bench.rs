//! The upload queue under 1,000 waiting requesters: the uploader's memory
//! for them, and how soon the head of the queue is served once a slot
//! frees. The uploader is a real `peer serve` process with one upload slot;
//! the requesters are hand-made clients in this process, each from its own
//! loopback address. Baseline, same run, on a fresh uploader: as many
//! requesters of an older build, which are told `Busy` and ask again with
//! the engine's backoff (0.25 s doubling to 8 s, with jitter).

use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::hello::{Protocol, FEATURE_UPLOAD_QUEUE};
use common::id::FileId;
use common::peer_proto::{PeerErrorCode, PeerRequest, PeerResponse};
use common::wire::{self, Deadlines};
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;
use tokio::sync::mpsc;

/// Requests refused with `Busy` (the baseline's polling load at the uploader).
static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct Uploader {
    index: Child,
    peer: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Uploader {
    fn start(data: &[u8]) -> anyhow::Result<Uploader> {
        use std::process::Command;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("popular.bin"), data)?;
        let exe = std::env::current_exe()?;
        let bin = exe.parent().context("exe dir")?;
        let mut index_cmd = Command::new(bin.join("index-server"));
        index_cmd
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info");
        let (index, index_addr) = crate::index_load::spawn_with_addr(index_cmd, true)
            .context("start target/release/index-server (build it first)")?;
        let mut peer_cmd = Command::new(bin.join("peer"));
        peer_cmd
            .arg("serve")
            .arg("--share")
            .arg(dir.path())
            .args(["--index", &index_addr, "--listen", "127.0.0.1:0"])
            .args(["--nick", "uploader", "--settle", "0", "--api", "off"])
            .args(["--max-uploads", "1", "--max-upload-connections", "8192"])
            .env("RUST_LOG", "info");
        let (peer, addr) = crate::index_load::spawn_with_addr(peer_cmd, true)
            .context("start target/release/peer (build it first)")?;
        Ok(Uploader {
            index,
            peer,
            addr,
            _dir: dir,
        })
    }

    fn rss(&self) -> anyhow::Result<u64> {
        crate::index_load::rss_bytes(self.peer.id())
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        for child in [&mut self.peer, &mut self.index] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A requester's connection.
struct Client {
    stream: transfer::net::Conn,
    buf: Vec<u8>,
}

/// The `i`-th loopback address of group `group` (127.G.x.y, never .0).
fn source(group: u8, i: usize) -> String {
    format!("127.{group}.{}.{}", i / 250, i % 250 + 1)
}

impl Client {
    async fn connect(from: &str, addr: &str, token: Option<u64>) -> anyhow::Result<Client> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(format!("{from}:0").parse::<SocketAddr>()?)?;
        let stream = socket.connect(addr.parse()?).await?;
        let (stream, features) = transfer::net::client(stream, Protocol::Peer, None).await?;
        anyhow::ensure!(
            features & FEATURE_UPLOAD_QUEUE != 0,
            "no upload queue there"
        );
        let mut c = Client {
            stream,
            buf: Vec::new(),
        };
        if let Some(token) = token {
            let ack = c.ask(&PeerRequest::Requester { token }).await?;
            anyhow::ensure!(
                ack == PeerResponse::Delivered,
                "requester not taken: {ack:?}"
            );
        }
        Ok(c)
    }

    async fn ask(&mut self, request: &PeerRequest) -> anyhow::Result<PeerResponse> {
        wire::send_message(&mut self.stream, request).await?;
        Ok(wire::expect_message(
            &mut self.stream,
            &mut self.buf,
            Deadlines::with_idle(Duration::from_secs(30)),
        )
        .await?)
    }

    /// Asks for chunk 0; reads its bytes when it comes.
    async fn chunk(&mut self, id: FileId) -> anyhow::Result<PeerResponse> {
        let answer = self.ask(&PeerRequest::Chunk { id, index: 0 }).await?;
        if let PeerResponse::Chunk { len, .. } = answer {
            let mut bytes = vec![0u8; len as usize];
            self.stream.read_exact(&mut bytes).await?;
        }
        Ok(answer)
    }
}

/// A requester that got the slot: who (its number) and when its chunk came.
type Served = (usize, Instant, Client);

/// Waits in the queue (`Wait` until `SlotGranted`), then takes its chunk.
async fn queued_waiter(
    i: usize,
    mut c: Client,
    id: FileId,
    served: mpsc::UnboundedSender<Served>,
) -> anyhow::Result<()> {
    loop {
        match c.ask(&PeerRequest::Wait).await? {
            PeerResponse::Queued { .. } => {}
            PeerResponse::SlotGranted => break,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    let answer = c.chunk(id).await?;
    anyhow::ensure!(matches!(answer, PeerResponse::Chunk { .. }), "{answer:?}");
    let _ = served.send((i, Instant::now(), c));
    Ok(())
}

/// An older build's requester: asks, is told Busy, asks again after the
/// engine's backoff, until served.
async fn busy_poller(
    i: usize,
    mut c: Client,
    id: FileId,
    served: mpsc::UnboundedSender<Served>,
) -> anyhow::Result<()> {
    let mut failures = 1;
    loop {
        let wait = transfer::download::retry::backoff(
            failures,
            transfer::download::retry::RETRY_MIN,
            transfer::download::retry::RETRY_MAX,
        );
        tokio::time::sleep(wait).await;
        failures += 1;
        match c.chunk(id).await? {
            PeerResponse::Chunk { .. } => break,
            PeerResponse::Error {
                code: PeerErrorCode::Busy,
                ..
            } => {
                REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    let _ = served.send((i, Instant::now(), c));
    Ok(())
}

/// What one side measured.
struct Figures {
    /// Uploader RSS growth for the requesters, bytes.
    memory: u64,
    /// Time from a slot freeing to the next requester's first chunk, per round.
    latencies: Vec<Duration>,
    /// Rounds in which the one served was the one waiting longest.
    in_order: usize,
    /// Requests refused per second while they waited (after the first ask).
    refused_per_s: f64,
}

fn median_max(v: &[Duration]) -> (Duration, Duration) {
    let mut s = v.to_vec();
    s.sort();
    (s[s.len() / 2], *s.last().unwrap())
}

async fn measure(
    data: &[u8],
    id: FileId,
    requesters: usize,
    rounds: usize,
    queue: bool,
) -> anyhow::Result<Figures> {
    let uploader = Uploader::start(data)?;
    let addr = uploader.addr.clone();
    let mut holder = Client::connect("127.0.0.1", &addr, Some(u64::MAX)).await?;
    let first = holder.chunk(id).await?;
    anyhow::ensure!(matches!(first, PeerResponse::Chunk { .. }), "{first:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = uploader.rss()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Served>();
    let mut tasks = tokio::task::JoinSet::new();
    let group = if queue { 1 } else { 2 };
    for i in 0..requesters {
        let from = source(group, i);
        if queue {
            let mut c = Client::connect(&from, &addr, Some(i as u64)).await?;
            let answer = c.chunk(id).await?;
            let expected = PeerResponse::Queued {
                position: i as u32 + 1,
            };
            anyhow::ensure!(answer == expected, "requester {i}: {answer:?}");
            tasks.spawn(queued_waiter(i, c, id, tx.clone()));
        } else {
            let mut c = Client::connect(&from, &addr, None).await?;
            let answer = c.chunk(id).await?;
            anyhow::ensure!(
                matches!(
                    answer,
                    PeerResponse::Error {
                        code: PeerErrorCode::Busy,
                        ..
                    }
                ),
                "requester {i}: {answer:?}"
            );
            tasks.spawn(busy_poller(i, c, id, tx.clone()));
        }
    }
    // Every requester waiting (or polling) for a while.
    let refused_before = REFUSED.load(std::sync::atomic::Ordering::Relaxed);
    let waited = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = uploader.rss()?;

    let mut latencies = Vec::new();
    let mut in_order = 0;
    // Requesters not served yet, oldest first.
    let mut waiting: std::collections::VecDeque<usize> = (0..requesters).collect();
    for _ in 0..rounds {
        let freed = Instant::now();
        drop(holder);
        let (i, at, c) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .context("nobody was served within 60 s of the slot freeing")?
            .context("every requester ended")?;
        latencies.push(at.duration_since(freed));
        if waiting.front() == Some(&i) {
            in_order += 1;
        }
        waiting.retain(|w| *w != i);
        holder = c;
    }
    let refused = REFUSED.load(std::sync::atomic::Ordering::Relaxed) - refused_before;
    let refused_per_s = refused as f64 / waited.elapsed().as_secs_f64();
    tasks.abort_all();
    drop(holder);
    Ok(Figures {
        memory: rss_after.saturating_sub(rss_before),
        latencies,
        in_order,
        refused_per_s,
    })
}

/// `p2pshare-bench upload-queue`.
pub async fn run(requesters: usize, rounds: usize) -> anyhow::Result<()> {
    // Any bytes do: xorshift, so that nothing compresses or dedups.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..4 * common::CHUNK_SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let id = common::id::content_info(&data).id;
    println!(
        "upload queue: {requesters} requesters for one upload slot of a `peer serve` process, {rounds} slot hand-overs"
    );
    let queued = measure(&data, id, requesters, rounds, true).await?;
    let polled = measure(&data, id, requesters, rounds, false).await?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (q_med, q_max) = median_max(&queued.latencies);
    let (p_med, p_max) = median_max(&polled.latencies);
    println!("| what | measured (queue) | baseline: Busy + backoff (same run) | target |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| uploader memory for {requesters} waiting requesters (RSS delta) | {:.2} MiB ({} B each) | {:.2} MiB | < 10 MiB |",
        mib(queued.memory),
        queued.memory / requesters.max(1) as u64,
        mib(polled.memory)
    );
    println!(
        "| slot freed -> next requester's first chunk, median / max of {rounds} | {:.1} ms / {:.1} ms | {:.1} ms / {:.1} ms | < 1 s |",
        ms(q_med),
        ms(q_max),
        ms(p_med),
        ms(p_max)
    );
    println!(
        "| the one served had waited longest | {} of {rounds} | {} of {rounds} | all |",
        queued.in_order, polled.in_order
    );
    println!(
        "| requests refused at the uploader per second while they wait | {:.0} | {:.0} | - |",
        queued.refused_per_s, polled.refused_per_s
    );
    Ok(())
}
