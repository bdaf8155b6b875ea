//! Swarming: downloading daemons pass verified chunks on to each other.

use std::sync::Arc;
use std::time::Duration;

use common::id::content_info;
use peer::download::Progress;
use tests::*;

const DOWNLOADERS: usize = 4;
const CHUNKS: usize = 16;

/// A seed capped at 2 MiB/s could serve four copies of a 4 MiB file in 8 s
/// at best; the downloaders swarm, so the seed sends far fewer than four
/// copies and the downloaders upload to each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloading_peers_serve_each_other_the_chunks_they_have() {
    hybrid_swarm(short_pipelines()).await;
}

/// Downloads that keep two requests in flight per source, like a daemon's
/// swarming downloads ([`peer::swarm::swarm_engine`]): with sixteen, each
/// downloader would ask the seed for the whole file at once, and partial
/// sources could only help by endgame duplicates, which now stay within
/// one wasted chunk per source (issue 12.12).
fn short_pipelines() -> peer::EngineConfig {
    peer::EngineConfig {
        pipeline_depth: 2,
        ..test_engine()
    }
}

/// The same with a budget of two chunk requests in flight per download
/// (the lab's swarm tuning, smaller): partial sources share the budget, the
/// seed still gets one request whenever it is idle, and nothing deadlocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_with_a_small_in_flight_budget_still_finishes_and_shares() {
    hybrid_swarm(peer::EngineConfig {
        max_in_flight: Some(2),
        ..test_engine()
    })
    .await;
}

async fn hybrid_swarm(engine: peer::EngineConfig) {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(CHUNKS * common::CHUNK_SIZE, 42);
    let info = content_info(&data);
    write_file(&dir.path().join("seed"), "swarm.bin", &data);
    let mut seed_config = peer_config(&dir.path().join("seed"), &index.addr_string());
    seed_config.max_upload_rate = Some(2 * 1024 * 1024);
    let mut seed = start_peer_with(seed_config).await;
    seed.wait_registered(1).await;

    let mut leechers = Vec::new();
    for i in 0..DOWNLOADERS {
        let mut p = start_peer(&dir.path().join(format!("leech{i}")), &index.addr_string()).await;
        p.wait_registered(0).await;
        leechers.push(p);
    }
    let downloads = leechers.iter().map(|p| {
        let out = p.share.clone();
        p.daemon
            .download(info.id, out, engine.clone(), Arc::new(Progress::default()))
    });
    let outcomes = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(downloads),
    )
    .await
    .expect("swarm finished within 60 s");
    assert_swarmed(outcomes, &data, &seed, &leechers);
    // The finished copies become complete holdings at the index.
    let addr = index.addr_string();
    wait_until(
        "finished copies are listed as complete",
        Duration::from_secs(10),
        || {
            let addr = addr.clone();
            async move { complete_sources(&addr, info.id).await == DOWNLOADERS + 1 }
        },
    )
    .await;
    for p in leechers {
        p.stop().await;
    }
    seed.stop().await;
}

/// The same in pure p2p mode: no index, the downloaders find the seed and
/// each other by flooding searches through the overlay (a node answers from
/// its partial holdings too), and pass chunks on to each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_downloaders_find_and_serve_each_other_through_the_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(CHUNKS * common::CHUNK_SIZE, 43);
    let info = content_info(&data);
    write_file(&dir.path().join("seed"), "swarm.bin", &data);
    let mut seed_config = p2p_config(&dir.path().join("seed"), Vec::new(), 4);
    seed_config.max_upload_rate = Some(2 * 1024 * 1024);
    let seed = start_peer_with(seed_config).await;
    // A line: seed <- leech0 <- leech1 <- ...
    let mut leechers: Vec<Peer> = Vec::new();
    for i in 0..DOWNLOADERS {
        let previous = leechers.last().map_or(seed.addr(), |p| p.addr());
        let share = dir.path().join(format!("leech{i}"));
        std::fs::create_dir_all(&share).unwrap();
        leechers.push(start_p2p_node(&share, vec![previous], 4).await);
    }
    for (i, p) in leechers.iter().enumerate() {
        let via = p.addr();
        wait_until(
            &format!("downloader {i} finds the seed through the overlay"),
            Duration::from_secs(10),
            || {
                let via = via.clone();
                async move {
                    peer::overlay::search(&via, vec![info.id.to_hex()], 7, Duration::from_secs(2))
                        .await
                        .is_ok_and(|r| !r.hits.is_empty())
                }
            },
        )
        .await;
    }
    let downloads = leechers.iter().map(|p| {
        let out = p.share.clone();
        p.daemon.download(
            info.id,
            out,
            short_pipelines(),
            Arc::new(Progress::default()),
        )
    });
    let outcomes = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(downloads),
    )
    .await
    .expect("swarm finished within 60 s");
    assert_swarmed(outcomes, &data, &seed, &leechers);
    for p in leechers {
        p.stop().await;
    }
    seed.stop().await;
}

async fn complete_sources(index: &str, id: common::id::FileId) -> usize {
    let mut client = peer::index_client::IndexClient::connect(index)
        .await
        .unwrap();
    match client.swarm_lookup(id).await.unwrap() {
        Some(found) => found.complete.len(),
        None => 0,
    }
}

/// Every copy verifies, the downloaders uploaded to each other, and the
/// seed did not send every copy itself.
fn assert_swarmed<E: std::fmt::Display>(
    outcomes: Vec<Result<peer::DownloadOutcome, E>>,
    data: &[u8],
    seed: &Peer,
    leechers: &[Peer],
) {
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let outcome = outcome.unwrap_or_else(|e| panic!("downloader {i}: {e}"));
        assert_eq!(
            std::fs::read(&outcome.path).unwrap(),
            data,
            "copy {i} verifies"
        );
    }
    let from_peers: u64 = leechers.iter().map(|p| p.chunks_served()).sum();
    let from_seed = seed.chunks_served();
    assert!(
        from_peers > 0,
        "downloaders uploaded nothing to each other (seed sent {from_seed} chunks)"
    );
    assert!(
        from_seed < (DOWNLOADERS * CHUNKS) as u64,
        "the seed sent every copy itself ({from_seed} chunks); no swarming"
    );
}
