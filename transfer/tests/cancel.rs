//! A capped uploader takes back chunk requests still waiting for their
//! turn (`Cancel`, BitTorrent's CANCEL): each is answered `Cancelled` in
//! its place, in order, and its turn at the cap goes to the next request.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::hello::{Protocol, FEATURE_CANCEL};
use common::id::content_info;
use common::peer_proto::{PeerRequest, PeerResponse};
use common::wire::{self, Deadlines};
use tokio::io::BufReader;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use transfer::chunk_server::{serve_with, ChunkServerConfig, UploadStats};
use transfer::library::{Library, PartialEntry};
use transfer::rate::RateLimiter;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_their_turn_are_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample::bytes(4 * common::CHUNK_SIZE, 3);
    let info = Arc::new(content_info(&data));
    let share = dir.path().join("source");
    std::fs::create_dir_all(&share).unwrap();
    let part = share.join("file.part");
    std::fs::write(&part, &data).unwrap();
    let library = Library::new(std::fs::canonicalize(&share).unwrap());
    let partial = Arc::new(PartialEntry::named(part, info.clone(), "file.bin".into()));
    for i in 0..4 {
        partial.set(i);
    }
    library.add_partial(partial);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let stats = Arc::new(UploadStats::default());
    // A chunk takes a quarter of a second through this cap: the requests
    // behind the first wait long enough to be taken back.
    let config = ChunkServerConfig {
        upload_limit: Some(Arc::new(RateLimiter::new(4 * common::CHUNK_SIZE as u64))),
        stats: stats.clone(),
        ..ChunkServerConfig::new(library)
    };
    tokio::spawn(serve_with(
        listener,
        config,
        TaskTracker::new(),
        stop.clone(),
    ));

    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (s, features) = transfer::net::client(s, Protocol::Peer, None)
        .await
        .unwrap();
    assert_ne!(
        features & FEATURE_CANCEL,
        0,
        "the server says it takes back"
    );
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let id = info.id;
    // Chunks 0, 1 and 2 asked at once; 1 and 2 taken back while 0 waits
    // for its turn; 3 asked after them.
    for request in [
        PeerRequest::Chunk { id, index: 0 },
        PeerRequest::Chunk { id, index: 1 },
        PeerRequest::Chunk { id, index: 2 },
        PeerRequest::Cancel { id, index: 2 },
        PeerRequest::Cancel { id, index: 1 },
        PeerRequest::Chunk { id, index: 3 },
    ] {
        wire::send_message(&mut w, &request).await.unwrap();
    }
    let mut frame = Vec::new();
    let deadlines = Deadlines::with_idle(Duration::from_secs(10));
    let mut answers = Vec::new();
    for _ in 0..4 {
        let answer: PeerResponse = wire::expect_message(&mut r, &mut frame, deadlines)
            .await
            .unwrap();
        if let PeerResponse::Chunk { len, .. } = answer {
            let mut chunk = vec![0u8; len as usize];
            wire::read_raw(&mut r, &mut chunk, Duration::from_secs(10))
                .await
                .unwrap();
        }
        answers.push(answer);
    }
    assert_eq!(
        answers,
        vec![
            PeerResponse::Chunk {
                id,
                index: 0,
                len: common::CHUNK_SIZE as u32
            },
            PeerResponse::Cancelled { id, index: 1 },
            PeerResponse::Cancelled { id, index: 2 },
            PeerResponse::Chunk {
                id,
                index: 3,
                len: common::CHUNK_SIZE as u32
            },
        ],
        "taken-back requests are answered in their places, the others served"
    );

    // A chunk taken back while it is the one waiting; a `Cancel` of a
    // chunk already sent is not answered (the next answer is the `Have`).
    for request in [
        PeerRequest::Chunk { id, index: 1 },
        PeerRequest::Cancel { id, index: 1 },
        PeerRequest::Cancel { id, index: 3 },
        PeerRequest::Have { id },
    ] {
        wire::send_message(&mut w, &request).await.unwrap();
    }
    let answer: PeerResponse = wire::expect_message(&mut r, &mut frame, deadlines)
        .await
        .unwrap();
    assert_eq!(answer, PeerResponse::Cancelled { id, index: 1 });
    let answer: PeerResponse = wire::expect_message(&mut r, &mut frame, deadlines)
        .await
        .unwrap();
    assert!(matches!(answer, PeerResponse::Have { .. }), "{answer:?}");
    assert_eq!(
        stats.chunks.load(Ordering::Relaxed),
        2,
        "only the chunks not taken back went through the cap"
    );
    stop.cancel();
}

/// A source that holds every chunk request until one is taken back: it
/// answers the hash list and `Have` (complete); once a held request is
/// taken back (`Cancel`), it answers the held requests in order up to that
/// one (`Cancelled` for it, the chunk for those before it). Counts the
/// `Cancel`s it got.
async fn holding_source(
    listener: tokio::net::TcpListener,
    data: Arc<Vec<u8>>,
    info: Arc<common::id::ContentInfo>,
    cancels: Arc<std::sync::atomic::AtomicUsize>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (data, info, cancels) = (data.clone(), info.clone(), cancels.clone());
        tokio::spawn(async move {
            let Ok((_, conn)) =
                transfer::net::accept(stream, &[Protocol::Peer], |_| false, |_| FEATURE_CANCEL)
                    .await
            else {
                return;
            };
            let (r, mut w) = conn.into_split();
            let mut r = BufReader::new(r);
            let mut frame = Vec::new();
            // Chunk requests held, each with whether it was taken back.
            let mut held: std::collections::VecDeque<(u32, bool)> = Default::default();
            let deadlines = Deadlines::with_idle(Duration::from_secs(60));
            while let Ok(Some(request)) =
                wire::read_message::<_, PeerRequest>(&mut r, &mut frame, deadlines).await
            {
                let answer = match request {
                    PeerRequest::HashList { id } => {
                        let raw = info.hash_list_bytes();
                        let header = PeerResponse::HashList {
                            id,
                            size: info.size,
                            len: raw.len() as u32,
                        };
                        wire::write_message(&mut w, &header).await.unwrap();
                        tokio::io::AsyncWriteExt::write_all(&mut w, &raw)
                            .await
                            .unwrap();
                        None
                    }
                    PeerRequest::Have { id } => Some(PeerResponse::Have {
                        id,
                        size: info.size,
                        complete: true,
                        bitfield: Vec::new(),
                    }),
                    PeerRequest::Chunk { index, .. } => {
                        held.push_back((index, false));
                        None
                    }
                    PeerRequest::Cancel { index, .. } => {
                        cancels.fetch_add(1, Ordering::Relaxed);
                        if let Some(h) = held.iter_mut().find(|(i, _)| *i == index) {
                            h.1 = true;
                        }
                        None
                    }
                    _ => None,
                };
                if let Some(answer) = answer {
                    wire::write_message(&mut w, &answer).await.unwrap();
                }
                while held.iter().any(|(_, taken)| *taken) {
                    let Some((index, taken)) = held.pop_front() else {
                        break;
                    };
                    if taken {
                        let answer = PeerResponse::Cancelled { id: info.id, index };
                        wire::write_message(&mut w, &answer).await.unwrap();
                        continue;
                    }
                    let len = info.chunk_len(index);
                    let header = PeerResponse::Chunk {
                        id: info.id,
                        index,
                        len: len as u32,
                    };
                    wire::write_message(&mut w, &header).await.unwrap();
                    let at = index as usize * common::CHUNK_SIZE;
                    tokio::io::AsyncWriteExt::write_all(&mut w, &data[at..at + len])
                        .await
                        .unwrap();
                }
                tokio::io::AsyncWriteExt::flush(&mut w).await.unwrap();
            }
        });
    }
}

/// A downloader takes back its requests at a slow source once another
/// source delivered those chunks (the endgame's duplicates won). Here the
/// slow source sends nothing until a request is taken back: its two
/// requests stay out, the fast source's endgame duplicate leaves it in
/// debt (one possibly wasted duplicate at a time), so the download
/// finishes only if the duplicated request is taken back; without
/// `Cancel` it would wait for the slow source to stall (a minute here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downloader_takes_back_chunks_it_got_elsewhere() {
    use transfer::download::{download, DownloadRequest, EngineConfig, FixedSources, Progress};
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample::bytes(8 * common::CHUNK_SIZE, 5);
    let info = Arc::new(content_info(&data));
    let share = dir.path().join("fast");
    std::fs::create_dir_all(&share).unwrap();
    let part = share.join("file.part");
    std::fs::write(&part, &data).unwrap();
    let library = Library::new(std::fs::canonicalize(&share).unwrap());
    let partial = Arc::new(PartialEntry::named(part, info.clone(), "file.bin".into()));
    for i in 0..8 {
        partial.set(i);
    }
    library.add_partial(partial);
    let stop = CancellationToken::new();
    let fast = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fast_addr = fast.local_addr().unwrap().to_string();
    tokio::spawn(serve_with(
        fast,
        ChunkServerConfig::new(library),
        TaskTracker::new(),
        stop.clone(),
    ));
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow.local_addr().unwrap().to_string();
    let cancels = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let holder = tokio::spawn(holding_source(
        slow,
        Arc::new(data.clone()),
        info.clone(),
        cancels.clone(),
    ));

    let sources = vec![slow_addr, fast_addr];
    let config = EngineConfig {
        pipeline_depth: 2,
        stall_timeout: Duration::from_secs(60),
        ..EngineConfig::default()
    };
    let request = DownloadRequest {
        id: info.id,
        name: "file.bin".into(),
        sources: sources.clone(),
        out_dir: dir.path().join("out"),
    };
    let lookup = FixedSources {
        sources,
        every: Duration::from_secs(3600),
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(20),
        download(
            request,
            config,
            Arc::new(Progress::default()),
            None,
            lookup,
            stop.child_token(),
        ),
    )
    .await
    .expect("finished: the slow source's requests were taken back")
    .unwrap();
    assert_eq!(std::fs::read(&outcome.path).unwrap(), data);
    assert!(cancels.load(Ordering::Relaxed) >= 1, "a Cancel was sent");
    stop.cancel();
    holder.abort();
}

/// A source sharing `chunks` chunks of `data` from a partial entry,
/// capped at `limit` bytes per second; its address.
async fn partial_source(
    dir: &std::path::Path,
    data: &[u8],
    limit: Option<u64>,
    stop: &CancellationToken,
) -> String {
    let info = Arc::new(content_info(data));
    std::fs::create_dir_all(dir).unwrap();
    let part = dir.join("file.part");
    std::fs::write(&part, data).unwrap();
    let library = Library::new(std::fs::canonicalize(dir).unwrap());
    let partial = Arc::new(PartialEntry::named(part, info.clone(), "file.bin".into()));
    for i in 0..info.chunk_count() {
        partial.set(i);
    }
    library.add_partial(partial);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = ChunkServerConfig {
        upload_limit: limit.map(|l| Arc::new(RateLimiter::new(l))),
        ..ChunkServerConfig::new(library)
    };
    tokio::spawn(serve_with(
        listener,
        config,
        TaskTracker::new(),
        stop.clone(),
    ));
    addr
}

/// With `swarm_pipeline_depth`, a download that began with one slow
/// source (a deep pipeline there) takes back the requests beyond the
/// swarm's depth once a second source runs, and the fast one fetches
/// them: the slow source delivers only the few it was already sending.
/// Without it, the slow source would deliver the whole pipeline it was
/// given (16 chunks, 4 s at its cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_source_shortens_the_pipeline() {
    use transfer::download::{download, DownloadRequest, EngineConfig, FixedSources, Progress};
    const CHUNKS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample::bytes(CHUNKS * common::CHUNK_SIZE, 11);
    let info = content_info(&data);
    let stop = CancellationToken::new();
    // Four chunks a second.
    let slow_cap = 4 * common::CHUNK_SIZE as u64;
    let slow = partial_source(&dir.path().join("slow"), &data, Some(slow_cap), &stop).await;
    let fast = partial_source(&dir.path().join("fast"), &data, None, &stop).await;
    let config = EngineConfig {
        pipeline_depth: CHUNKS,
        swarm_pipeline_depth: Some(1),
        ..EngineConfig::default()
    };
    // The fast source is only found by the first refresh.
    let request = DownloadRequest {
        id: info.id,
        name: "file.bin".into(),
        sources: vec![slow.clone()],
        out_dir: dir.path().join("out"),
    };
    let lookup = FixedSources {
        sources: vec![slow.clone(), fast.clone()],
        every: Duration::from_millis(200),
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        download(
            request,
            config,
            Arc::new(Progress::default()),
            None,
            lookup,
            stop.child_token(),
        ),
    )
    .await
    .expect("finished")
    .unwrap();
    assert_eq!(std::fs::read(&outcome.path).unwrap(), data);
    let from_slow = outcome.source(&slow).map_or(0, |s| s.chunks);
    let from_fast = outcome.source(&fast).map_or(0, |s| s.chunks);
    assert!(
        from_slow <= CHUNKS as u64 / 2,
        "the slow source kept its deep pipeline: {from_slow} chunks from it, {from_fast} from the fast one"
    );
    stop.cancel();
}
