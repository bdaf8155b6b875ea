//! A capped uploader serves chunks in turns, a whole chunk at a time:
//! of two downloaders asking at once, one has its whole chunk before the
//! other's answer starts (interleaved, both would finish together at the
//! end), so the first can pass its chunk on at once.

use std::sync::Arc;
use std::time::Duration;

use common::hello::Protocol;
use common::id::content_info;
use common::peer_proto::{PeerRequest, PeerResponse};
use common::wire::{self, Deadlines};
use tokio::io::BufReader;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use transfer::chunk_server::{serve_with, ChunkServerConfig};
use transfer::library::{Library, PartialEntry};
use transfer::rate::RateLimiter;

#[derive(Debug, PartialEq)]
enum Event {
    Header(usize),
    Whole(usize),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_uploader_sends_one_whole_chunk_before_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample::bytes(2 * common::CHUNK_SIZE, 9);
    let info = Arc::new(content_info(&data));
    let share = dir.path().join("source");
    std::fs::create_dir_all(&share).unwrap();
    let part = share.join("file.part");
    std::fs::write(&part, &data).unwrap();
    let library = Library::new(std::fs::canonicalize(&share).unwrap());
    let partial = Arc::new(PartialEntry::named(part, info.clone(), "file.bin".into()));
    partial.set(0);
    partial.set(1);
    library.add_partial(partial);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    // A chunk takes a quarter of a second through this cap.
    let config = ChunkServerConfig {
        upload_limit: Some(Arc::new(RateLimiter::new(4 * common::CHUNK_SIZE as u64))),
        ..ChunkServerConfig::new(library)
    };
    tokio::spawn(serve_with(
        listener,
        config,
        TaskTracker::new(),
        stop.clone(),
    ));

    // Both connect first, then both ask at once.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (s, _) = transfer::net::client(s, Protocol::Peer, None)
            .await
            .unwrap();
        streams.push(s);
    }
    let (events, mut seen) = mpsc::unbounded_channel();
    let go = Arc::new(tokio::sync::Barrier::new(2));
    let mut tasks = Vec::new();
    for (k, s) in streams.into_iter().enumerate() {
        let (events, go, id) = (events.clone(), go.clone(), info.id);
        tasks.push(tokio::spawn(async move {
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            go.wait().await;
            let ask = PeerRequest::Chunk {
                id,
                index: k as u32,
            };
            wire::send_message(&mut w, &ask).await.unwrap();
            let deadlines = Deadlines::with_idle(Duration::from_secs(10));
            let header: PeerResponse = wire::expect_message(&mut r, &mut Vec::new(), deadlines)
                .await
                .unwrap();
            assert!(matches!(header, PeerResponse::Chunk { .. }), "{header:?}");
            events.send(Event::Header(k)).unwrap();
            let mut chunk = vec![0u8; common::CHUNK_SIZE];
            wire::read_raw(&mut r, &mut chunk, Duration::from_secs(10))
                .await
                .unwrap();
            events.send(Event::Whole(k)).unwrap();
            (w, r)
        }));
    }
    drop(events);
    for t in tasks {
        drop(t.await.unwrap());
    }
    let mut order = Vec::new();
    while let Some(e) = seen.recv().await {
        order.push(e);
    }
    let first = match order[0] {
        Event::Header(k) => k,
        ref other => panic!("a chunk was whole before any answer began: {other:?}"),
    };
    assert_eq!(
        order,
        vec![
            Event::Header(first),
            Event::Whole(first),
            Event::Header(1 - first),
            Event::Whole(1 - first)
        ],
        "the first chunk is whole before the second answer starts"
    );
    stop.cancel();
}
