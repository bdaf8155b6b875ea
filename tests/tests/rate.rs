//! Rate limits on real transfers. The bucket's accuracy is tested with paused
//! time in transfer/src/rate.rs; here only a lower bound on wall-clock time
//! is checked (robust on a busy machine, unlike an upper bound).

use std::sync::Arc;
use std::time::Instant;

use peer::rate::RateLimiter;
use tests::*;

const RATE: u64 = 1024 * 1024;
const SIZE: usize = 2 * 1024 * 1024 + 1000;

/// Seconds a SIZE transfer needs at RATE, less the bucket's burst and the
/// first piece, which go out at once.
fn expected_secs() -> f64 {
    (SIZE as f64 - RATE as f64 / 20.0 - 256.0 * 1024.0) / RATE as f64
}

/// `peer get capped.bin` into `dir/out`; the outcome and the seconds taken.
async fn timed_get(
    index: &Index,
    dir: &std::path::Path,
    engine: peer::EngineConfig,
) -> (peer::DownloadOutcome, f64) {
    let started = Instant::now();
    let outcome = tests::hybrid_get(&index.addr_string(), "capped.bin", &dir.join("out"), engine)
        .await
        .unwrap();
    (outcome, started.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capped_upload_is_not_faster_than_the_cap() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(
        &dir.path().join("seed"),
        "capped.bin",
        &random_bytes(SIZE, 7),
    );
    let mut config = peer_config(&dir.path().join("seed"), &index.addr_string());
    config.max_upload_rate = Some(RATE);
    let mut seed = start_peer_with(config).await;
    seed.wait_registered(1).await;

    let (outcome, took) = timed_get(&index, dir.path(), test_engine()).await;
    assert_eq!(outcome.size, SIZE as u64);
    assert!(
        took >= 0.9 * expected_secs(),
        "{SIZE} bytes at {RATE} B/s took only {took:.2} s"
    );
    let limit = seed.daemon.upload_limit().expect("upload limiter");
    assert_eq!(
        limit.granted(),
        SIZE as u64,
        "every chunk byte went through the cap"
    );
    seed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capped_download_is_not_faster_than_the_cap() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(
        &dir.path().join("seed"),
        "capped.bin",
        &random_bytes(SIZE, 8),
    );
    let mut seed = start_peer(&dir.path().join("seed"), &index.addr_string()).await;
    seed.wait_registered(1).await;

    let limit = Arc::new(RateLimiter::new(RATE));
    let engine = peer::EngineConfig {
        download_limit: Some(limit.clone()),
        ..test_engine()
    };
    let (_, took) = timed_get(&index, dir.path(), engine).await;
    assert!(
        took >= 0.9 * expected_secs(),
        "{SIZE} bytes at {RATE} B/s took only {took:.2} s"
    );
    assert_eq!(limit.granted(), SIZE as u64);
    seed.stop().await;
}
