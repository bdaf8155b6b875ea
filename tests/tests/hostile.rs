//! Hostile clients against the index server: slowloris, drip-feeding, a
//! thousand idle connections, a request flood, the connection cap. In every
//! case a normal client must still be answered.

use std::time::Duration;

use common::hello::Protocol;
use common::index_proto::IndexRequest;
use common::wire;
use peer::index_client::IndexClient;
use tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn index_with(
    config: impl FnOnce(&mut index_server::Config),
) -> (String, tokio_util::sync::CancellationToken) {
    init_logging();
    let mut c = index_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    config(&mut c);
    let server = index_server::Server::bind(c).await.unwrap();
    let addr = server.local_addr().to_string();
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(server.run(token.clone()));
    (addr, token)
}

async fn answered(addr: &str) {
    let mut c = IndexClient::connect(addr)
        .await
        .expect("a normal client can connect");
    c.stats().await.expect("a normal client is answered");
}

/// Waits (with a deadline) until the server closes `s`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> bool {
    let mut sink = [0u8; 64];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_off_by_the_frame_deadline() {
    let (addr, stop) = index_with(|c| c.frame_timeout = Duration::from_millis(300)).await;
    // A header and then nothing.
    let stalled = TcpStream::connect(&addr).await.unwrap();
    let (mut stalled, _) = transfer::net::client(stalled, Protocol::Index, None)
        .await
        .unwrap();
    stalled.write_all(&[0, 0, 0, 10, 1]).await.unwrap();
    stalled.flush().await.unwrap();
    // One byte at a time, each well within any per-read timeout.
    let drip = TcpStream::connect(&addr).await.unwrap();
    let (mut drip, _) = transfer::net::client(drip, Protocol::Index, None)
        .await
        .unwrap();
    let dripper = tokio::spawn(async move {
        let frame = common::frame::encode_frame(&IndexRequest::Search {
            words: vec!["x".repeat(60)],
            limit: 1,
        })
        .unwrap();
        for b in frame {
            if drip.write_all(&[b]).await.is_err() || drip.flush().await.is_err() {
                return drip;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drip
    });
    answered(&addr).await;
    assert!(
        closed_within(&mut stalled, Duration::from_secs(10)).await,
        "stalled frame not cut off"
    );
    let mut drip = dripper.await.unwrap();
    assert!(
        closed_within(&mut drip, Duration::from_secs(10)).await,
        "drip-feeding client not cut off"
    );
    answered(&addr).await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_do_not_block_a_normal_client() {
    // All from 127.0.0.1: lift the per-address cap (tests/tests/limits.rs
    // checks it) to see what 2,000 connections cost.
    let (addr, stop) = index_with(|c| c.max_connections_per_ip = 10_000).await;
    let rss_before = rss_bytes();
    let mut idle = Vec::new();
    for _ in 0..1800 {
        let s = TcpStream::connect(&addr).await.unwrap();
        let (s, _) = transfer::net::client(s, Protocol::Index, None)
            .await
            .unwrap();
        idle.push(s);
    }
    // Plus some that never even say hello.
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    answered(&addr).await;
    // Server and clients share this process: 2,000 connections on each side
    // must stay far below what one unbounded buffer per connection would cost.
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(
        grown < 256 << 20,
        "memory grew by {} MiB for 2,000 idle connections",
        grown >> 20
    );
    drop(idle);
    drop(silent);
    answered(&addr).await;
    stop.cancel();
}

/// Resident memory of this process, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_a_clear_refusal() {
    let (addr, stop) = index_with(|c| c.max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(IndexClient::connect(&addr).await.unwrap());
    }
    let err = IndexClient::connect(&addr)
        .await
        .err()
        .expect("a fourth connection is refused");
    assert!(err.to_string().contains("busy"), "{err}");
    held.pop();
    wait_until("a slot to free up", Duration::from_secs(10), || {
        let addr = addr.clone();
        async move { IndexClient::connect(&addr).await.is_ok() }
    })
    .await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_on_one_connection_does_not_starve_others() {
    let (addr, stop) = index_with(|c| c.max_requests_per_sec = 5_000).await;
    let flood = TcpStream::connect(&addr).await.unwrap();
    let (flood, _) = transfer::net::client(flood, Protocol::Index, None)
        .await
        .unwrap();
    let burst: Vec<u8> = (0..20_000)
        .flat_map(|_| common::frame::encode_frame(&IndexRequest::Stats).unwrap())
        .collect();
    let (mut reader, mut writer) = flood.into_split();
    let flooder = tokio::spawn(async move {
        let _ = writer.write_all(&burst).await;
        let _ = writer.flush().await;
        writer
    });
    // Drain answers in the background so the flood really is served.
    let drain = tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while let Ok(n) = reader.read(&mut sink).await {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    for _ in 0..20 {
        answered(&addr).await;
    }
    stop.cancel();
    drop(flooder.await);
    let _ = drain.await;
}

/// Sends `requests` on a fresh index connection and returns the answers
/// and the connection (which keeps any session alive).
async fn session(
    addr: &str,
    requests: Vec<IndexRequest>,
) -> (Vec<common::index_proto::IndexResponse>, transfer::net::Conn) {
    let s = TcpStream::connect(addr).await.unwrap();
    // Another node than the peers this process runs (they share its key):
    // a node's own key may take its own address over.
    let other_node = common::secure::Security::new(common::identity::Identity::generate(), None);
    let (mut s, _) = transfer::net::client_with(s, Protocol::Index, None, &other_node)
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    for req in requests {
        wire::send_message(&mut s, &req).await.unwrap();
        answers.push(
            wire::expect_message(&mut s, &mut buf, wire::Deadlines::default())
                .await
                .unwrap(),
        );
    }
    (answers, s)
}

fn login_as(advertise: &str) -> IndexRequest {
    IndexRequest::Login(common::index_proto::Login {
        listen_port: 7000,
        advertise: Some(advertise.into()),
        nick: None,
    })
}

fn refused_with(answer: &common::index_proto::IndexResponse, code: ErrorCode) -> bool {
    matches!(answer, common::index_proto::IndexResponse::Error { code: c, .. } if *c == code)
}

use common::index_proto::ErrorCode;

/// Issue 18.1: a session cannot claim a live peer's address (in any
/// spelling), nor an address that is no peer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_cannot_claim_another_peers_address() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "honest.txt", b"honest content");
    let mut honest = start_peer(dir.path(), &index.addr_string()).await;
    honest.wait_registered(1).await;
    let real = honest.addr();
    let port = honest.daemon.listen_addr().port();
    let decoy = common::index_proto::SharedFile {
        id: common::id::FileId([7; 32]),
        name: "decoy.txt".into(),
        size: 10,
    };
    for spelling in [
        real.clone(),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("localhost:{port}"),
    ] {
        let (answers, _impostor) = session(
            &index.addr_string(),
            vec![
                login_as(&spelling),
                IndexRequest::AddFiles {
                    files: vec![decoy.clone()],
                },
            ],
        )
        .await;
        assert!(
            refused_with(&answers[0], ErrorCode::AddressTaken),
            "{spelling}: {:?}",
            answers[0]
        );
        assert!(refused_with(&answers[1], ErrorCode::NotLoggedIn));
    }
    // Browse by address still shows the honest peer, and only it is listed there.
    let mut c = IndexClient::connect(&index.addr_string()).await.unwrap();
    let files = c.browse(&real).await.unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].name, "honest.txt");
    assert_eq!(
        c.peers()
            .await
            .unwrap()
            .iter()
            .filter(|p| p.addr == real)
            .count(),
        1
    );
    // Addresses that are not a peer's.
    for bad in [
        "localhost:22",
        "127.0.0.1:1",
        "127.0.0.1:0",
        "0.0.0.0:7000",
        "no-such-host.invalid:7000",
    ] {
        let (answers, _s) = session(&index.addr_string(), vec![login_as(bad)]).await;
        assert!(
            refused_with(&answers[0], ErrorCode::BadRequest),
            "{bad}: {:?}",
            answers[0]
        );
    }
    // The honest peer comes back on the same address after a restart.
    honest.stop().await;
    let mut config = peer_config(dir.path(), &index.addr_string());
    config.listen = real.parse().unwrap();
    let mut again = start_peer_with(config).await;
    again.wait_registered(1).await;
    again.stop().await;
    index.stop().await;
}

/// An index with `limits`, and its state.
async fn index_limited(
    limits: index_server::state::Limits,
) -> (
    String,
    index_server::Index,
    tokio_util::sync::CancellationToken,
) {
    init_logging();
    let server = index_server::Server::bind(index_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        limits,
        ..Default::default()
    })
    .await
    .unwrap();
    let (addr, state) = (server.local_addr().to_string(), server.index());
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(server.run(token.clone()));
    (addr, state, token)
}

/// `n` files with 1 KB names, numbered from `from`.
fn big_names(from: u32, n: u32) -> Vec<common::index_proto::SharedFile> {
    (from..from + n)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            common::index_proto::SharedFile {
                id: common::id::FileId(id),
                name: format!("{i:08} {}", "n".repeat(1015)),
                size: 1000,
            }
        })
        .collect()
}

fn login_port(port: u16) -> IndexRequest {
    IndexRequest::Login(common::index_proto::Login {
        listen_port: port,
        advertise: None,
        nick: None,
    })
}

fn batches(from: u32, n: u32) -> Vec<IndexRequest> {
    big_names(from, n)
        .chunks(512)
        .map(|b| IndexRequest::AddFiles { files: b.to_vec() })
        .collect()
}

/// Issue 18.3: files per session, sessions per source address and the
/// index's memory are capped, with a clear refusal instead of growth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_capped_per_session_per_address_and_in_memory() {
    let limits = index_server::state::Limits {
        max_files_per_session: 1024,
        max_sessions_per_source: 3,
        memory_budget: 2 << 20,
        ..Default::default()
    };
    let (addr, state, stop) = index_limited(limits).await;
    let message = |a: &common::index_proto::IndexResponse| match a {
        common::index_proto::IndexResponse::Error {
            code: ErrorCode::TooMany,
            message,
        } => message.clone(),
        other => panic!("not refused: {other:?}"),
    };
    // One session: 2,048 files offered, 1,024 listed.
    let mut requests = vec![login_port(7001)];
    requests.extend(batches(0, 2048));
    let (answers, _one) = session(&addr, requests).await;
    assert_eq!(
        answers[1],
        common::index_proto::IndexResponse::Ack { count: 512 }
    );
    assert_eq!(
        answers[2],
        common::index_proto::IndexResponse::Ack { count: 512 }
    );
    assert!(
        message(&answers[3]).contains("at most 1024 files"),
        "{:?}",
        answers[3]
    );
    assert_eq!(state.stats(tokio::time::Instant::now()).files, 1024);
    // A second session fills the memory budget (2 MiB at ~1.2 KB a file).
    let mut requests = vec![login_port(7002)];
    requests.extend(batches(10_000, 1024));
    let (answers, _two) = session(&addr, requests).await;
    let refused = answers[1..]
        .iter()
        .find(|a| !matches!(a, common::index_proto::IndexResponse::Ack { .. }))
        .expect("the memory budget stops the second session");
    assert!(message(refused).contains("memory budget"), "{refused:?}");
    assert!(state.memory_used() <= 2 << 20);
    // A third session from this address is allowed, a fourth is not.
    let (answers, _three) = session(&addr, vec![login_port(7003)]).await;
    assert!(matches!(
        answers[0],
        common::index_proto::IndexResponse::Welcome { .. }
    ));
    let (answers, _four) = session(&addr, vec![login_port(7004)]).await;
    assert!(
        message(&answers[0]).contains("sessions"),
        "{:?}",
        answers[0]
    );
    answered(&addr).await;
    stop.cancel();
}

/// Issue 18.3, the peer's side: a peer over the cap stays registered with
/// what the index took and says why, instead of reconnecting in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_the_files_cap_stays_registered() {
    let (addr, state, stop) = index_limited(index_server::state::Limits {
        max_files_per_session: 2,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    for i in 0..2 {
        write_file(
            dir.path(),
            &format!("f{i}.txt"),
            format!("file {i}").as_bytes(),
        );
    }
    let peer = start_peer(dir.path(), &addr).await;
    wait_until("the peer to register", Duration::from_secs(10), || {
        let registered = matches!(
            *peer.daemon.registration().borrow(),
            peer::registrar::RegistrationState::Registered { .. }
        );
        async move { registered }
    })
    .await;
    let stats = state.stats(tokio::time::Instant::now());
    assert_eq!((stats.peers, stats.files), (1, 2));
    // A third file is offered, refused, and the session still stands.
    write_file(dir.path(), "f2.txt", b"file 2");
    wait_until("the rescan to offer f2", Duration::from_secs(10), || {
        let added = state.request_counts().get("AddFiles").copied().unwrap_or(0) >= 2;
        async move { added }
    })
    .await;
    assert_eq!(
        state.request_counts().get("Login"),
        Some(&1),
        "the peer logged in again"
    );
    peer.stop().await;
    stop.cancel();
}
