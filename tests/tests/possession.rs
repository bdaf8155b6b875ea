//! Proof of possession, sampled (index_server::possession): the index
//! checks that directly reachable peers can serve what they registered,
//! drops listings that fail, ends sessions that fail repeatedly, and
//! leaves alone peers it cannot reach.

use std::time::Duration;

use common::hello::Protocol;
use common::id::content_info;
use common::index_proto::{IndexRequest, IndexResponse, Login, SharedFile};
use common::wire::{self, Deadlines};
use index_server::possession::PossessionConfig;
use peer::index_client::IndexClient;
use tests::*;
use tokio::net::TcpStream;
use transfer::testing::{self as fake, Behaviour};

/// An index that checks every reachable session every 200 ms.
async fn checking_index() -> Index {
    init_logging();
    let config = index_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        possession: Some(PossessionConfig {
            interval: Duration::from_millis(200),
            per_second: 200,
            failures_to_drop: 3,
            timeout: Duration::from_secs(5),
        }),
        ..Default::default()
    };
    run_index(index_server::Server::bind(config).await.unwrap())
}

/// A session logged in by hand: listed under `port` on 127.0.0.1 (where a
/// fake source may or may not answer), holding `files`.
async fn login(index: &str, port: u16, files: Vec<SharedFile>) -> transfer::net::Conn {
    let stream = TcpStream::connect(index).await.unwrap();
    let (mut stream, _) = transfer::net::client(stream, Protocol::Index, None)
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut ask = async |req: IndexRequest| -> IndexResponse {
        wire::send_message(&mut stream, &req).await.unwrap();
        wire::expect_message(
            &mut stream,
            &mut buf,
            Deadlines::with_idle(Duration::from_secs(10)),
        )
        .await
        .unwrap()
    };
    let r = ask(IndexRequest::Login(Login {
        listen_port: port,
        advertise: None,
        nick: None,
    }))
    .await;
    assert!(matches!(r, IndexResponse::Welcome { .. }), "{r:?}");
    let r = ask(IndexRequest::AddFiles { files }).await;
    assert!(matches!(r, IndexResponse::Ack { .. }), "{r:?}");
    stream
}

fn sample(seed: u8, size: usize) -> (Vec<u8>, SharedFile) {
    let data: Vec<u8> = (0..size)
        .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
        .collect();
    let file = SharedFile {
        id: content_info(&data).id,
        name: format!("claimed-{seed}.bin"),
        size: size as u64,
    };
    (data, file)
}

#[tokio::test]
async fn a_listing_whose_chunks_do_not_verify_is_dropped() {
    let index = checking_index().await;
    let addr = index.addr_string();
    let (data, file) = sample(3, 600_000);
    // Has the hash list, serves garbage for every chunk.
    let liar = fake::start(data, Behaviour::Garbage).await;
    let _session = login(&addr, liar.addr.port(), vec![file.clone()]).await;
    assert_eq!(sources_of(&addr, file.id).await, 1);
    let state = index.state.clone();
    wait_until(
        "the index to drop the listing that failed its check",
        Duration::from_secs(20),
        || {
            let (addr, state) = (addr.clone(), state.clone());
            async move { state.possession_stats().lacked >= 1 && sources_of(&addr, file.id).await == 0 }
        },
    )
    .await;
    index.stop().await;
}

#[tokio::test]
async fn an_honest_source_passes_and_stays_listed() {
    let index = checking_index().await;
    let addr = index.addr_string();
    let (data, file) = sample(5, 700_000);
    let honest = fake::start(data, Behaviour::DieAfter(u64::MAX)).await;
    let _session = login(&addr, honest.addr.port(), vec![file.clone()]).await;
    let state = index.state.clone();
    wait_until("three passed checks", Duration::from_secs(20), || {
        let state = state.clone();
        async move { state.possession_stats().passed >= 3 }
    })
    .await;
    let stats = index.state.possession_stats();
    assert_eq!(stats.lacked, 0, "{stats:?}");
    assert!(honest.served() >= 3, "each check fetched a chunk");
    assert_eq!(sources_of(&addr, file.id).await, 1);
    index.stop().await;
}

#[tokio::test]
async fn repeated_failures_end_the_session() {
    let index = checking_index().await;
    let addr = index.addr_string();
    // Claims four files; the source serves none of their chunks.
    let claimed: Vec<(Vec<u8>, SharedFile)> = (10..14).map(|s| sample(s, 300_000)).collect();
    let liar = fake::start(claimed[0].0.clone(), Behaviour::OnlyFirst(0)).await;
    let files: Vec<SharedFile> = claimed.iter().map(|(_, f)| f.clone()).collect();
    let _session = login(&addr, liar.addr.port(), files.clone()).await;
    let state = index.state.clone();
    wait_until("the session to be ended", Duration::from_secs(20), || {
        let state = state.clone();
        async move { state.possession_stats().sessions_dropped >= 1 }
    })
    .await;
    // Every listing is gone, the three that failed and the one never checked.
    for f in &files {
        assert_eq!(sources_of(&addr, f.id).await, 0, "{}", f.name);
    }
    let mut c = IndexClient::connect(&addr).await.unwrap();
    assert_eq!(c.stats().await.unwrap().peers, 0);
    let stats = index.state.possession_stats();
    assert!(stats.lacked >= 3);
    // The same counts on /metrics, for whoever watches the index.
    let text = metrics_text(&index.state);
    assert!(
        text.contains(&format!(
            "p2pshare_index_possession_checks_total{{outcome=\"lacked\"}} {}",
            stats.lacked
        )),
        "{text}"
    );
    assert!(
        text.contains("p2pshare_index_possession_sessions_dropped_total 1"),
        "{text}"
    );
    index.stop().await;
}

#[tokio::test]
async fn a_peer_that_cannot_be_reached_is_not_punished() {
    let index = checking_index().await;
    let addr = index.addr_string();
    let (_, file) = sample(7, 100_000);
    // A port with nobody listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _session = login(&addr, port, vec![file.clone()]).await;
    let state = index.state.clone();
    wait_until("two inconclusive checks", Duration::from_secs(20), || {
        let state = state.clone();
        async move { state.possession_stats().inconclusive >= 2 }
    })
    .await;
    assert_eq!(index.state.possession_stats().lacked, 0);
    assert_eq!(sources_of(&addr, file.id).await, 1);
    index.stop().await;
}

/// The index's Prometheus page as `/metrics` renders it.
fn metrics_text(state: &index_server::state::Index) -> String {
    let families = index_server::metrics::registry(state).gather();
    let mut out = Vec::new();
    prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}
