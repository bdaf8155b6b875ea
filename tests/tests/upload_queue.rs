//! Upload slots and the visible upload queue (issue 14): over
//! `--max-uploads` a requester gets a place in a fair queue, is told its
//! position, keeps it across a reconnection within the grace period, and is
//! served when its turn comes, while its download goes on from other
//! sources. Real peers and chunk servers on 127.0.0.1 port 0; hand-made
//! requesters speak the real protocol from several loopback addresses.
//! The queue's rules under paused time are unit tests in
//! `transfer::upload_queue`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::hello::{Protocol, FEATURE_UPLOAD_QUEUE};
use common::id::{content_info, FileId};
use common::peer_proto::{PeerErrorCode, PeerRequest, PeerResponse};
use common::wire::{self, Deadlines};
use peer::download::{DownloadRequest, Progress, SourceState};
use tests::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use transfer::upload_queue::{QueueConfig, UploadQueue};

/// A hand-made requester: one connection from loopback address `from`,
/// announced as `token` (or, with `None`, an older build that never says
/// who it is).
struct Requester {
    stream: transfer::net::Conn,
    buf: Vec<u8>,
}

impl Requester {
    async fn connect(from: &str, addr: &str, token: Option<u64>) -> Requester {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("{from}:0").parse::<SocketAddr>().unwrap())
            .unwrap();
        let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
        let (stream, features) = transfer::net::client(stream, Protocol::Peer, None)
            .await
            .unwrap();
        assert_ne!(features & FEATURE_UPLOAD_QUEUE, 0, "the peer keeps a queue");
        let mut r = Requester {
            stream,
            buf: Vec::new(),
        };
        if let Some(token) = token {
            let ack = r.ask(&PeerRequest::Requester { token }).await;
            assert_eq!(ack, PeerResponse::Delivered);
        }
        r
    }

    async fn ask(&mut self, request: &PeerRequest) -> PeerResponse {
        wire::send_message(&mut self.stream, request).await.unwrap();
        self.answer().await
    }

    async fn answer(&mut self) -> PeerResponse {
        wire::expect_message(
            &mut self.stream,
            &mut self.buf,
            Deadlines::with_idle(Duration::from_secs(20)),
        )
        .await
        .unwrap()
    }

    /// Asks for chunk `index` of `id`; reads the chunk's bytes if it came.
    async fn chunk(&mut self, id: FileId, index: u32) -> PeerResponse {
        let answer = self.ask(&PeerRequest::Chunk { id, index }).await;
        if let PeerResponse::Chunk { len, .. } = answer {
            let mut bytes = vec![0u8; len as usize];
            self.stream.read_exact(&mut bytes).await.unwrap();
        }
        answer
    }

    /// Sends `Wait` until the answer is not `Queued { position: shown }`.
    async fn wait_change(&mut self, shown: u32) -> PeerResponse {
        loop {
            let answer = self.ask(&PeerRequest::Wait).await;
            if answer != (PeerResponse::Queued { position: shown }) {
                return answer;
            }
        }
    }
}

/// `GET path` on the daemon's API; the body as JSON.
async fn api_get(addr: SocketAddr, path: &str) -> serde_json::Value {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the API answered within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn queued(position: u32) -> PeerResponse {
    PeerResponse::Queued { position }
}

fn is_chunk(answer: &PeerResponse) -> bool {
    matches!(answer, PeerResponse::Chunk { .. })
}

/// A bare chunk server over one file with `queue` as its slots and queue
/// (and generous connection caps, so the queue's own caps are what is
/// tested); returns its address, the file's id and its stop token.
async fn chunk_server(
    root: &std::path::Path,
    data: &[u8],
    queue: UploadQueue,
) -> (String, FileId, CancellationToken) {
    write_file(root, "f.bin", data);
    let library = transfer::library::Library::new(root.to_path_buf());
    let mut cache = transfer::scan::HashCache::load(None, root).with_settle(Duration::ZERO);
    library.set_shared(transfer::scan::scan(root, &mut cache));
    let mut config = transfer::chunk_server::ChunkServerConfig::new(library);
    config.queue = Some(queue);
    config.max_connections_per_ip = 256;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    tokio::spawn(transfer::chunk_server::serve_with(
        listener,
        config,
        tokio_util::task::TaskTracker::new(),
        stop.clone(),
    ));
    (addr, content_info(data).id, stop)
}

/// A peer daemon sharing `data` as `name` with `slots` upload slots.
async fn seed(
    root: &std::path::Path,
    index: &str,
    name: &str,
    data: &[u8],
    slots: usize,
    rate: Option<u64>,
) -> Peer {
    write_file(root, name, data);
    let mut config = peer_config(root, index);
    config.upload_queue.slots = slots;
    config.max_upload_rate = rate;
    config.api = Some(peer::api::ApiConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: None,
        fallback_to_any_port: false,
    });
    let mut p = start_peer_with(config).await;
    p.wait_registered(1).await;
    p
}

/// Queue order, the positions told, the head served when the slot frees,
/// and what the daemon's upload listing shows meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requesters_wait_in_order_are_told_their_positions_and_the_head_is_served() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(4 * common::CHUNK_SIZE, 141);
    let id = content_info(&data).id;
    let seed = seed(
        &dir.path().join("s"),
        &index.addr_string(),
        "q.bin",
        &data,
        1,
        None,
    )
    .await;
    let addr = seed.addr();

    let mut holder = Requester::connect("127.0.0.2", &addr, Some(1)).await;
    assert!(
        is_chunk(&holder.chunk(id, 0).await),
        "a free slot serves at once"
    );
    // Three more, from three hosts, in this order: places 1, 2, 3.
    let mut a = Requester::connect("127.0.0.3", &addr, Some(2)).await;
    let mut b = Requester::connect("127.0.0.4", &addr, Some(3)).await;
    let mut c = Requester::connect("127.0.0.5", &addr, Some(4)).await;
    assert_eq!(a.chunk(id, 1).await, queued(1));
    assert_eq!(b.chunk(id, 1).await, queued(2));
    assert_eq!(c.chunk(id, 1).await, queued(3));
    // Asking again does not move anyone; the holder is still served.
    assert_eq!(c.chunk(id, 2).await, queued(3));
    assert_eq!(a.chunk(id, 2).await, queued(1));
    assert!(is_chunk(&holder.chunk(id, 1).await));
    // An older build that cannot wait is told Busy, as before.
    let mut old = Requester::connect("127.0.0.6", &addr, None).await;
    let busy = old.chunk(id, 0).await;
    assert!(
        matches!(
            busy,
            PeerResponse::Error {
                code: PeerErrorCode::Busy,
                ..
            }
        ),
        "{busy:?}"
    );

    // Counted once the chunk has left (the holder may read it first).
    let two_chunks = 2 * common::CHUNK_SIZE as u64;
    wait_until(
        "the holder's bytes to be counted",
        Duration::from_secs(10),
        || {
            let q = seed.daemon.upload_queue().clone();
            async move {
                q.snapshot()
                    .active
                    .first()
                    .is_some_and(|h| h.bytes == two_chunks)
            }
        },
    )
    .await;
    let listing = seed.daemon.upload_queue().snapshot();
    assert_eq!((listing.slots, listing.slots_in_use), (1, 1));
    assert!(
        listing.active[0].peer.starts_with("127.0.0.2:"),
        "{listing:?}"
    );
    assert_eq!(
        listing.active[0].file_id.as_deref(),
        Some(id.to_hex().as_str())
    );
    let waiting: Vec<(u32, &str)> = listing
        .queue
        .iter()
        .map(|w| (w.position, w.peer.split(':').next().unwrap()))
        .collect();
    assert_eq!(
        waiting,
        [(1, "127.0.0.3"), (2, "127.0.0.4"), (3, "127.0.0.5")]
    );

    // The same through the daemon's API (what `peer uploads` prints).
    let api = api_get(seed.daemon.api_addr().unwrap(), "/api/uploads").await;
    assert_eq!(api["slots"], 1);
    assert_eq!(api["slots_in_use"], 1);
    assert_eq!(api["active"][0]["name"], "q.bin");
    assert_eq!(api["active"][0]["file_id"], id.to_hex());
    assert_eq!(api["active"][0]["bytes"], two_chunks);
    assert!(api["active"][0]["rate_bps"].is_u64());
    let queue = api["queue"].as_array().unwrap();
    assert_eq!(queue.len(), 3);
    for (i, w) in queue.iter().enumerate() {
        assert_eq!(w["position"], i + 1);
        assert!(w["waiting_since"].as_u64().unwrap() > 1_700_000_000, "{w}");
        assert_eq!(w["connected"], true);
    }
    assert!(queue[0]["peer"].as_str().unwrap().starts_with("127.0.0.3:"));

    // The holder leaves: the head gets the slot, the others move up.
    drop(holder);
    assert_eq!(a.wait_change(1).await, PeerResponse::SlotGranted);
    assert!(is_chunk(&a.chunk(id, 3).await));
    assert_eq!(b.wait_change(2).await, queued(1));
    assert_eq!(c.wait_change(3).await, queued(2));
    drop(a);
    assert_eq!(b.wait_change(1).await, PeerResponse::SlotGranted);
    assert_eq!(c.wait_change(2).await, queued(1));
    seed.stop().await;
    index.stop().await;
}

/// A requester that reconnects within the grace period keeps its place
/// (even from another port); one that stays away longer loses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnection_within_the_grace_keeps_the_place_and_a_longer_absence_loses_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(2 * common::CHUNK_SIZE, 142);
    let queue = UploadQueue::new(QueueConfig {
        grace: Duration::from_secs(2),
        slot_idle: Duration::from_secs(3600),
        ..QueueConfig::new(1)
    });
    let (addr, id, stop) = chunk_server(dir.path(), &data, queue.clone()).await;
    let mut holder = Requester::connect("127.0.0.2", &addr, Some(1)).await;
    assert!(is_chunk(&holder.chunk(id, 0).await));
    let mut a = Requester::connect("127.0.0.3", &addr, Some(2)).await;
    let mut b = Requester::connect("127.0.0.4", &addr, Some(3)).await;
    assert_eq!(a.chunk(id, 0).await, queued(1));
    assert_eq!(b.chunk(id, 0).await, queued(2));

    drop(a);
    wait_until("the queue to see a leave", Duration::from_secs(10), || {
        let q = queue.clone();
        async move { !q.snapshot().queue[0].connected }
    })
    .await;
    let mut a = Requester::connect("127.0.0.3", &addr, Some(2)).await;
    assert_eq!(
        a.chunk(id, 0).await,
        queued(1),
        "back within the grace: first still"
    );

    // Away past the grace (and a requester that never comes back at all):
    // the place goes, the one behind moves up.
    drop(a);
    wait_until("the place to be given up", Duration::from_secs(20), || {
        let q = queue.clone();
        async move { q.waiting() == 1 }
    })
    .await;
    assert_eq!(b.wait_change(2).await, queued(1));
    let mut a = Requester::connect("127.0.0.3", &addr, Some(2)).await;
    assert_eq!(
        a.chunk(id, 0).await,
        queued(2),
        "a lost place starts at the end"
    );
    stop.cancel();
}

/// One address cannot fill the queue with made-up requester tokens, nor
/// hold places it never comes back to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requesters_from_one_address_get_a_few_places_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(common::CHUNK_SIZE, 143);
    let queue = UploadQueue::new(QueueConfig {
        grace: Duration::from_secs(1),
        slot_idle: Duration::from_secs(3600),
        ..QueueConfig::new(1)
    });
    let per_source = queue.config().max_waiting_per_source;
    let (addr, id, stop) = chunk_server(dir.path(), &data, queue.clone()).await;
    let mut holder = Requester::connect("127.0.0.2", &addr, Some(1)).await;
    assert!(is_chunk(&holder.chunk(id, 0).await));
    let mut flood = Vec::new();
    let mut answers = Vec::new();
    for token in 0..per_source as u64 + 10 {
        let mut r = Requester::connect("127.0.0.9", &addr, Some(1000 + token)).await;
        answers.push(r.chunk(id, 0).await);
        flood.push(r);
    }
    let places = answers
        .iter()
        .filter(|a| matches!(a, PeerResponse::Queued { .. }))
        .count();
    assert_eq!(places, per_source, "{answers:?}");
    assert!(answers[per_source..].iter().all(|a| matches!(
        a,
        PeerResponse::Error {
            code: PeerErrorCode::Busy,
            ..
        }
    )));
    // Another host still gets a place, behind the flood.
    let mut other = Requester::connect("127.0.0.10", &addr, Some(7)).await;
    assert_eq!(other.chunk(id, 0).await, queued(per_source as u32 + 1));
    // The flood goes away and never comes back: its places go after the grace.
    drop(flood);
    assert_eq!(other.wait_change(per_source as u32 + 1).await, queued(1));
    assert_eq!(queue.waiting(), 1);
    stop.cancel();
}

/// Watches a download's per-source states until `done`; returns every
/// "queued at HOST, position N" seen.
fn watch_queue(
    progress: Arc<Progress>,
    done: CancellationToken,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut seen: Vec<String> = Vec::new();
        while !done.is_cancelled() {
            let s = progress.sources.queued_summary();
            if !s.is_empty() && seen.last() != Some(&s) {
                seen.push(s);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    })
}

/// A chunk server with one slot whose holder never idles out, however
/// slow this machine is.
async fn one_slot_server(
    root: &std::path::Path,
    data: &[u8],
) -> (String, UploadQueue, CancellationToken) {
    let queue = UploadQueue::new(QueueConfig {
        slot_idle: Duration::from_secs(3600),
        ..QueueConfig::new(1)
    });
    let (addr, _, stop) = chunk_server(root, data, queue.clone()).await;
    (addr, queue, stop)
}

/// A download queued at one source completes from the others; its view
/// shows "queued at HOST, position 1" meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_queued_at_one_source_completes_from_the_others() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(16 * common::CHUNK_SIZE, 144);
    let id = content_info(&data).id;
    let (full, full_queue, stop_full) = one_slot_server(&dir.path().join("full"), &data).await;
    // The other source is slow enough (4 MiB/s) for the queue to be seen.
    let free = seed(
        &dir.path().join("free"),
        &index.addr_string(),
        "f.bin",
        &data,
        4,
        Some(4 << 20),
    )
    .await;
    let mut holder = Requester::connect("127.0.0.2", &full, Some(1)).await;
    assert!(is_chunk(&holder.chunk(id, 0).await));

    let progress = Arc::new(Progress::default());
    let done = CancellationToken::new();
    let seen = watch_queue(progress.clone(), done.clone());
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        peer::download::download(
            DownloadRequest {
                id,
                name: "f.bin".into(),
                sources: vec![full.clone(), free.addr()],
                out_dir: dir.path().join("out"),
            },
            test_engine(),
            progress.clone(),
            None,
            peer::download::StartOnly,
            CancellationToken::new(),
        ),
    )
    .await
    .expect("finished within 60 s")
    .expect("completed from the free source");
    done.cancel();
    assert_eq!(std::fs::read(&outcome.path).unwrap(), data);
    assert_eq!(
        outcome.source(&full).unwrap().chunks,
        0,
        "the full source sent nothing"
    );
    assert_eq!(outcome.source(&free.addr()).unwrap().chunks, 16);
    let seen = seen.await.unwrap();
    assert!(
        seen.contains(&format!("queued at {full}, position 1")),
        "{seen:?}"
    );
    // The holder kept its slot throughout.
    assert_eq!(full_queue.snapshot().slots_in_use, 1);
    assert!(is_chunk(&holder.chunk(id, 1).await));
    drop(holder);
    stop_full.cancel();
    free.stop().await;
    index.stop().await;
}

/// A download whose only source has no free slot waits in its queue and
/// is served as soon as the slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_download_is_served_when_the_slot_frees() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(4 * common::CHUNK_SIZE, 145);
    let id = content_info(&data).id;
    let (only, queue, stop) = one_slot_server(&dir.path().join("s"), &data).await;
    let mut holder = Requester::connect("127.0.0.2", &only, Some(1)).await;
    assert!(is_chunk(&holder.chunk(id, 0).await));

    let progress = Arc::new(Progress::default());
    let request = DownloadRequest {
        id,
        name: "f.bin".into(),
        sources: vec![only.clone()],
        out_dir: dir.path().join("out"),
    };
    let mut download = tokio::spawn(peer::download::download(
        request,
        test_engine(),
        progress.clone(),
        None,
        peer::download::StartOnly,
        CancellationToken::new(),
    ));
    wait_until("the download to be queued", Duration::from_secs(20), || {
        let p = progress.clone();
        async move {
            p.sources
                .snapshot()
                .iter()
                .any(|s| s.state == SourceState::Queued && s.queue_position == Some(1))
        }
    })
    .await;
    assert_eq!(queue.snapshot().queue.len(), 1);
    // Longer than the downloader's stall timeout (2 s): waiting is not stalling.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), &mut download)
            .await
            .is_err(),
        "still waiting its turn"
    );
    drop(holder);
    let outcome = tokio::time::timeout(Duration::from_secs(30), download)
        .await
        .expect("served once the slot freed")
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read(&outcome.path).unwrap(), data);
    let states = progress.sources.snapshot();
    assert_eq!(states[0].state, SourceState::Done, "{states:?}");
    stop.cancel();
}

/// `POST path` with a JSON body on the daemon's API; the status and body.
async fn api_post(addr: SocketAddr, path: &str, body: &str) -> (u16, serde_json::Value) {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the API answered within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, serde_json::from_str(body).unwrap_or_default())
}

/// A daemon's download shows "queued at that source, position 1" in its
/// JSON (`sources[].queue_position`) while the source's one slot is taken,
/// the source lists it in its queue, and it completes once the slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_download_shows_its_queue_position_at_a_busy_source() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(4 * common::CHUNK_SIZE, 146);
    let id = content_info(&data).id;
    let source = seed(
        &dir.path().join("s"),
        &index.addr_string(),
        "f.bin",
        &data,
        1,
        None,
    )
    .await;
    // The slot's holder keeps asking, so it never idles out of it.
    let mut holder = Requester::connect("127.0.0.2", &source.addr(), Some(1)).await;
    assert!(is_chunk(&holder.chunk(id, 0).await));
    let keep = CancellationToken::new();
    let holding = {
        let keep = keep.clone();
        tokio::spawn(async move {
            while !keep.is_cancelled() {
                assert!(is_chunk(&holder.chunk(id, 1).await));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let mut config = peer_config(&dir.path().join("d"), &index.addr_string());
    config.api = Some(peer::api::ApiConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: None,
        fallback_to_any_port: false,
    });
    let downloader = start_peer_with(config).await;
    let api = downloader.daemon.api_addr().unwrap();
    let (code, d) = api_post(
        api,
        "/api/downloads",
        &format!(r#"{{"target":"{}"}}"#, id.to_hex()),
    )
    .await;
    assert_eq!(code, 201, "{d}");
    let n = d["id"].as_u64().unwrap();
    let path = format!("/api/downloads/{n}");
    wait_until(
        "the download to show its queue position",
        Duration::from_secs(30),
        || {
            let path = path.clone();
            let source = source.addr();
            async move {
                let d = api_get(api, &path).await;
                d["sources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["addr"] == source.as_str() && s["queue_position"] == 1)
            }
        },
    )
    .await;
    let at_source = api_get(source.daemon.api_addr().unwrap(), "/api/uploads").await;
    assert_eq!(
        at_source["queue"].as_array().unwrap().len(),
        1,
        "{at_source}"
    );
    assert_eq!(at_source["queue"][0]["position"], 1);
    keep.cancel();
    holding.await.unwrap();
    wait_until("the download to be done", Duration::from_secs(30), || {
        let path = path.clone();
        async move { api_get(api, &path).await["state"] == "done" }
    })
    .await;
    let done = api_get(api, &path).await;
    assert_eq!(std::fs::read(done["path"].as_str().unwrap()).unwrap(), data);
    downloader.stop().await;
    source.stop().await;
    index.stop().await;
}
