//! Pushed availability: a partial source tells its downloaders of each
//! chunk it gains (`Subscribe`, then `Gained`), so they need not ask `Have`
//! again and again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::id::content_info;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use transfer::chunk_server::{serve_with, ChunkServerConfig};
use transfer::download::{download, DownloadRequest, EngineConfig, FixedSources, Progress};
use transfer::library::{Library, PartialEntry};

const CHUNKS: u32 = 6;

/// The downloader asks `Have` once an hour: it can only finish if the
/// source tells it of each chunk as it gains one. The source gains its next
/// chunk only once the downloader has verified everything it had, so every
/// chunk but the first is learnt from a push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_source_pushes_each_chunk_it_gains() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::sample::bytes(CHUNKS as usize * common::CHUNK_SIZE - 1000, 7);
    let info = Arc::new(content_info(&data));
    let share = dir.path().join("source");
    std::fs::create_dir_all(&share).unwrap();
    let part = share.join("file.part");
    // Every byte is on disk, but only the chunks marked held are served.
    std::fs::write(&part, &data).unwrap();
    let library = Library::new(std::fs::canonicalize(&share).unwrap());
    let partial = Arc::new(PartialEntry::named(part, info.clone(), "file.bin".into()));
    partial.set(0);
    library.add_partial(partial.clone());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    tokio::spawn(serve_with(
        listener,
        ChunkServerConfig::new(library),
        tracker.clone(),
        stop.clone(),
    ));

    let progress = Arc::new(Progress::default());
    let config = EngineConfig {
        have_refresh: Duration::from_secs(3600),
        stall_timeout: Duration::from_secs(10),
        ..EngineConfig::default()
    };
    let request = DownloadRequest {
        id: info.id,
        name: "file.bin".into(),
        sources: vec![addr.clone()],
        out_dir: dir.path().join("out"),
    };
    let lookup = FixedSources {
        sources: vec![addr],
        every: Duration::from_secs(3600),
    };
    let fetching = tokio::spawn(download(
        request,
        config,
        progress.clone(),
        None,
        lookup,
        stop.child_token(),
    ));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for next in 1..CHUNKS {
        // Everything held so far has arrived: only then is the next one gained.
        let held = next as u64 * common::CHUNK_SIZE as u64;
        while progress.done_bytes.load(Ordering::Relaxed) < held {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chunk {} never fetched: the downloader was not told of it",
                next - 1
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        partial.set(next);
    }
    let outcome = tokio::time::timeout_at(deadline, fetching)
        .await
        .expect("the download finished: it was told of every chunk")
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read(&outcome.path).unwrap(), data);
    assert_eq!(outcome.bytes_received, data.len() as u64, "no chunk twice");
    stop.cancel();
}
