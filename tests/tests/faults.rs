//! Sources that die, stall, lie or change under us; interrupted downloads.

use std::sync::Arc;
use std::time::Duration;

use common::id::content_info;
use peer::download::{DownloadError, DownloadRequest, Progress};
use tests::fake::{self, Behaviour};
use tests::*;
use tokio_util::sync::CancellationToken;

fn request(data: &[u8], sources: Vec<String>, out: &std::path::Path) -> DownloadRequest {
    DownloadRequest {
        id: content_info(data).id,
        name: "file.bin".into(),
        sources,
        out_dir: out.to_path_buf(),
    }
}

/// Fetches `data` from `sources` into `out`, which must succeed with the
/// exact bytes.
async fn fetch_whole(
    data: &[u8],
    sources: Vec<String>,
    out: &std::path::Path,
) -> peer::DownloadOutcome {
    let got = fetch(request(data, sources, out)).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    got
}

async fn fetch(req: DownloadRequest) -> Result<peer::DownloadOutcome, DownloadError> {
    peer::download::download(
        req,
        test_engine(),
        Arc::new(Progress::default()),
        None,
        peer::download::StartOnly,
        CancellationToken::new(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_killed_mid_transfer_is_replaced() {
    // Enough chunks that the dying source is surely asked for a fourth
    // even when its connection opens late on a loaded machine (with 40,
    // the good source once took all but two).
    let data = random_bytes(160 * common::CHUNK_SIZE + 7, 11);
    let dying = fake::start(data.clone(), Behaviour::DieAfter(3)).await;
    let good = fake::start(data.clone(), Behaviour::OnlyFirst(u32::MAX)).await;
    let dir = tempfile::tempdir().unwrap();
    let got = fetch_whole(
        &data,
        vec![dying.addr_string(), good.addr_string()],
        dir.path(),
    )
    .await;
    assert_eq!(
        dying.served(),
        3,
        "the dying source did deliver before it died"
    );
    let report = got.source(&dying.addr_string()).unwrap();
    assert!(report.error.is_some(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_source_is_dropped_and_its_chunks_refetched() {
    let data = random_bytes(30 * common::CHUNK_SIZE, 12);
    let staller = fake::start(data.clone(), Behaviour::StallAfter(2)).await;
    let good = fake::start(data.clone(), Behaviour::OnlyFirst(u32::MAX)).await;
    let dir = tempfile::tempdir().unwrap();
    // Every byte is checked: the chunks the staller held back came from the
    // good source (by the endgame or after the stall timeout). How many it
    // served before stalling (at most 2, by construction) depends on which
    // source got a core first.
    fetch_whole(
        &data,
        vec![staller.addr_string(), good.addr_string()],
        dir.path(),
    )
    .await;

    // Alone, a staller is detected and reported.
    let dir = tempfile::tempdir().unwrap();
    let err = fetch(request(&data, vec![staller.addr_string()], dir.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DownloadError::SourcesExhausted { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("stalled"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_sending_bad_data_is_banned_after_its_first_bad_chunk() {
    let data = random_bytes(30 * common::CHUNK_SIZE, 13);
    let liar = fake::start(data.clone(), Behaviour::Garbage).await;
    let dir = tempfile::tempdir().unwrap();
    // Alone, the liar is caught and dropped; nothing of it is kept.
    let err = fetch(request(&data, vec![liar.addr_string()], dir.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DownloadError::SourcesExhausted { missing: 30, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("verification"), "{err}");
    // Banned on its first bad chunk: it was asked for no more than what fits
    // in its pipeline, the verification queue and the verifiers at that
    // moment (the worker blocks on a full queue), never the whole file.
    let engine = test_engine();
    let bound = engine.pipeline_depth as u64 * 3 + engine.verifier_threads as u64 + 1;
    assert!(
        liar.served() <= bound,
        "liar served {} > {bound}",
        liar.served()
    );

    // Beside an honest source, the download completes without any of its bytes.
    let good = fake::start(data.clone(), Behaviour::OnlyFirst(u32::MAX)).await;
    let got = fetch_whole(
        &data,
        vec![liar.addr_string(), good.addr_string()],
        dir.path(),
    )
    .await;
    let report = got.source(&liar.addr_string()).unwrap();
    assert_eq!(report.chunks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_bad_sources_fail_cleanly_and_keep_nothing_under_the_final_name() {
    let data = random_bytes(5 * common::CHUNK_SIZE, 14);
    let liar = fake::start(data.clone(), Behaviour::Garbage).await;
    let dir = tempfile::tempdir().unwrap();
    let err = fetch(request(&data, vec![liar.addr_string()], dir.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::SourcesExhausted {
                missing: 5,
                total: 5,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("run the same command again"));
    assert!(!dir.path().join("file.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_without_refetching_verified_chunks() {
    let data = random_bytes(20 * common::CHUNK_SIZE + 99, 15);
    let dir = tempfile::tempdir().unwrap();
    // First attempt: the only source has the first 8 chunks, then nothing.
    let half = fake::start(data.clone(), Behaviour::OnlyFirst(8)).await;
    let err = fetch(request(&data, vec![half.addr_string()], dir.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::SourcesExhausted {
                missing: 13,
                total: 21,
                ..
            }
        ),
        "{err}"
    );
    assert!(!dir.path().join("file.bin").exists());
    // Second attempt with a complete source: only the 13 missing chunks travel.
    let full = fake::start(data.clone(), Behaviour::OnlyFirst(u32::MAX)).await;
    let got = fetch(request(&data, vec![full.addr_string()], dir.path()))
        .await
        .unwrap();
    assert_eq!(got.chunks_resumed, 8);
    assert_eq!(full.served(), 13);
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_download_keeps_the_verified_part_for_later() {
    let data = random_bytes(20 * common::CHUNK_SIZE, 16);
    let dir = tempfile::tempdir().unwrap();
    let slow = fake::start(data.clone(), Behaviour::StallAfter(5)).await;
    let shutdown = CancellationToken::new();
    let progress = Arc::new(Progress::default());
    let task = tokio::spawn(peer::download::download(
        request(&data, vec![slow.addr_string()], dir.path()),
        peer::EngineConfig {
            stall_timeout: Duration::from_secs(60),
            ..test_engine()
        },
        progress.clone(),
        None,
        peer::download::StartOnly,
        shutdown.clone(),
    ));
    wait_until("five chunks verified", Duration::from_secs(10), || {
        let p = progress.clone();
        async move {
            p.done_bytes.load(std::sync::atomic::Ordering::Relaxed) >= 5 * common::CHUNK_SIZE as u64
        }
    })
    .await;
    shutdown.cancel();
    let err = task.await.unwrap().unwrap_err();
    assert!(
        matches!(err, DownloadError::Interrupted { done: 5, total: 20 }),
        "{err}"
    );
    let full = fake::start(data.clone(), Behaviour::OnlyFirst(u32::MAX)).await;
    let got = fetch(request(&data, vec![full.addr_string()], dir.path()))
        .await
        .unwrap();
    assert_eq!(got.chunks_resumed, 5);
    assert_eq!(full.served(), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_on_disk_after_hashing_is_not_served_as_the_old_one() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(12 * common::CHUNK_SIZE, 17);
    let changed_path = write_file(&dir.path().join("a"), "doc.bin", &data);
    write_file(&dir.path().join("b"), "doc.bin", &data);
    let mut config = peer_config(&dir.path().join("a"), &index.addr_string());
    config.rescan_interval = Duration::from_secs(3600); // only a served chunk may trigger a rescan
    let mut a = start_peer_with(config).await;
    let mut b = start_peer(&dir.path().join("b"), &index.addr_string()).await;
    a.wait_registered(1).await;
    b.wait_registered(1).await;

    // Same size, other bytes, and the old modification time put back: only
    // chunk verification can tell.
    let old_mtime = std::fs::metadata(&changed_path)
        .unwrap()
        .modified()
        .unwrap();
    let other = random_bytes(data.len(), 18);
    std::fs::write(&changed_path, &other).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&changed_path)
        .unwrap()
        .set_modified(old_mtime)
        .unwrap();

    // Alone, `a` is caught: its ctime moved (it refuses the file as changed)
    // or, failing that, by chunk verification on its first chunk.
    let err = fetch(request(&data, vec![a.addr()], &dir.path().join("out")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DownloadError::SourcesExhausted { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("verification") || err.to_string().contains("changed on disk"),
        "{err}"
    );
    // With an honest source beside it, the download completes and verifies.
    let got = fetch_whole(&data, vec![a.addr(), b.addr()], &dir.path().join("out")).await;
    assert_eq!(got.source(&a.addr()).unwrap().chunks, 0);

    // Now a change the peer can see (new mtime): it refuses, rescans and
    // registers the new content under its new id.
    std::fs::write(&changed_path, &other).unwrap();
    fetch_whole(&data, vec![a.addr(), b.addr()], &dir.path().join("out2")).await;
    let new_id = content_info(&other).id;
    wait_until(
        "the changed file to be registered under its new id",
        Duration::from_secs(10),
        || {
            let addr = index.addr_string();
            async move {
                let mut c = peer::index_client::IndexClient::connect(&addr)
                    .await
                    .unwrap();
                c.lookup(new_id).await.unwrap().is_some()
            }
        },
    )
    .await;
    a.stop().await;
    b.stop().await;
    index.stop().await;
}
