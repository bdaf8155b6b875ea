//! Issue 12.19: listening on both IP families, and publishing an address
//! the peer really listens on.

use std::time::Duration;

use common::id::content_info;
use peer::registrar::RegistrationState;
use tests::*;

/// Whether this machine has IPv6 loopback (containers may not).
async fn has_ipv6() -> bool {
    tokio::net::TcpListener::bind("[::1]:0").await.is_ok()
}

fn published(peer: &Peer) -> String {
    match &*peer.daemon.registration().borrow() {
        RegistrationState::Registered { addr, .. } => addr.clone(),
        other => panic!("not registered: {other:?}"),
    }
}

/// `peer serve --listen 127.0.0.1:Q --index [::1]:P` used to be published
/// as `[::1]:Q`, where nothing listens, and every get from it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_on_ipv4_loopback_is_published_where_it_listens() {
    if !has_ipv6().await {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    }
    let index = start_index_on("[::]:0".parse().unwrap(), Duration::from_secs(30)).await;
    let via_v6 = format!("[::1]:{}", index.addr.port());
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(3 * common::CHUNK_SIZE, 12);
    write_file(&dir.path().join("share"), "v4only.bin", &data);
    let mut peer = start_peer(&dir.path().join("share"), &via_v6).await;
    peer.wait_registered(1).await;
    assert_eq!(
        published(&peer),
        peer.addr(),
        "published where it does not listen"
    );
    let got = tests::hybrid_get(
        &via_v6,
        &content_info(&data).id.to_hex(),
        &dir.path().join("out"),
        test_engine(),
    )
    .await
    .expect("a get from the IPv4-only peer through the IPv6 index");
    assert_eq!(std::fs::read(got.path).unwrap(), data);
    peer.stop().await;
    index.stop().await;
}

/// The default listen address takes IPv4 and IPv6 on one socket, for the
/// peer and the index alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_listen_address_serves_both_families() {
    let default_peer = peer::ServeConfig::new(".".into(), String::new()).listen;
    let default_index = index_server::Config::default().listen;
    for default in [default_peer, default_index] {
        assert_eq!(default.ip(), std::net::Ipv6Addr::UNSPECIFIED, "{default}");
    }
    if !has_ipv6().await {
        eprintln!("skipped the IPv6 half: no IPv6 loopback here");
        return;
    }
    let index = start_index_on("[::]:0".parse().unwrap(), Duration::from_secs(30)).await;
    let port = index.addr.port();
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "both.txt", b"both families");
    let mut config = peer_config(dir.path(), &format!("127.0.0.1:{port}"));
    config.listen = "[::]:0".parse().unwrap();
    let mut peer = start_peer_with(config).await;
    peer.wait_registered(1).await;
    // Published under the IPv4 address it came from (not IPv4-mapped).
    let addr = published(&peer);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let peer_port = peer.daemon.listen_addr().port();
    for host in ["127.0.0.1", "[::1]"] {
        tokio::net::TcpStream::connect(format!("{host}:{peer_port}"))
            .await
            .unwrap_or_else(|e| panic!("peer not reachable on {host}: {e}"));
        let mut c = peer::index_client::IndexClient::connect(&format!("{host}:{port}"))
            .await
            .unwrap();
        c.stats().await.unwrap();
    }
    peer.stop().await;
    index.stop().await;
}
