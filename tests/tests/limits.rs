//! Hostile clients against the places a node has to give: upload slots,
//! upload connections (in all and per source address), the index server's
//! connections, and the overlay's flood limits. A hand-made client speaking
//! the real protocol holds connections open, says only hello, or asks only
//! cheap questions; real downloads and searches must still go through.

use std::net::SocketAddr;
use std::time::Duration;

use common::hello::Protocol;
use common::id::content_info;
use common::peer_proto::{PeerRequest, PeerResponse};
use common::wire::{self, Deadlines};
use tests::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// A TCP connection to `addr` from the loopback address `from` (any of
/// 127.0.0.0/8 is local on Linux), so one test can be several hosts.
async fn connect_from(from: &str, addr: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{from}:0").parse::<SocketAddr>().unwrap())
        .unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

/// Says hello for `protocol` from `from`; the error text when refused.
async fn hello_from(
    from: &str,
    addr: &str,
    protocol: Protocol,
) -> Result<transfer::net::Conn, String> {
    let s = connect_from(from, addr).await;
    match transfer::net::client(s, protocol, None).await {
        Ok((s, _)) => Ok(s),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits (with a deadline) until the server closes `s`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> bool {
    let mut sink = [0u8; 4096];
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
async fn hello_only_connections_hold_no_upload_slot() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(3 * common::CHUNK_SIZE + 7, 181);
    write_file(&dir.path().join("a"), "slots.bin", &data);
    // The default peer: 32 upload slots.
    let mut a = start_peer(&dir.path().join("a"), &index.addr_string()).await;
    a.wait_registered(1).await;
    // 32 connections from 8 other hosts say hello and nothing else; a few
    // more ask only the cheap `Have`, again and again.
    let id = content_info(&data).id;
    let mut idle = Vec::new();
    for host in 2..10 {
        for _ in 0..4 {
            idle.push(
                hello_from(&format!("127.0.0.{host}"), &a.addr(), Protocol::Peer)
                    .await
                    .expect("an idle connection is admitted"),
            );
        }
    }
    let mut chatty = hello_from("127.0.0.10", &a.addr(), Protocol::Peer)
        .await
        .expect("admitted");
    let mut buf = Vec::new();
    for _ in 0..5 {
        wire::send_message(&mut chatty, &PeerRequest::Have { id })
            .await
            .unwrap();
        let _: PeerResponse = wire::expect_message(
            &mut chatty,
            &mut buf,
            Deadlines::with_idle(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    }
    // A real download still goes through at once: none of them holds a slot.
    let out = dir.path().join("out");
    let got = tests::hybrid_get(&index.addr_string(), &id.to_hex(), &out, test_engine())
        .await
        .expect("a real get is served although 33 connections sit idle");
    assert_eq!(std::fs::read(got.path).unwrap(), data);
    drop(idle);
    a.stop().await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_connections_per_source_address_are_capped() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let a = start_peer(&dir.path().join("a"), &index.addr_string()).await;
    let cap = common::limits::UPLOAD_CONNECTIONS_PER_SOURCE;
    let mut held = Vec::new();
    for _ in 0..cap {
        held.push(
            hello_from("127.0.0.2", &a.addr(), Protocol::Peer)
                .await
                .expect("within the per-address cap"),
        );
    }
    let err = hello_from("127.0.0.2", &a.addr(), Protocol::Peer)
        .await
        .expect_err("one more from the same address is refused");
    assert!(err.contains("busy"), "{err}");
    // Another host is not affected, and a place freed is given back.
    hello_from("127.0.0.3", &a.addr(), Protocol::Peer)
        .await
        .expect("another address is admitted");
    held.pop();
    wait_until(
        "the freed place to be given back",
        Duration::from_secs(10),
        || {
            let addr = a.addr();
            async move { hello_from("127.0.0.2", &addr, Protocol::Peer).await.is_ok() }
        },
    )
    .await;
    a.stop().await;
    index.stop().await;
}

/// A bare chunk server over one shared file, with `tweak` applied to its
/// config; returns its address, the file's id and its stop token.
async fn chunk_server_with(
    root: &std::path::Path,
    data: &[u8],
    tweak: impl FnOnce(&mut transfer::chunk_server::ChunkServerConfig),
) -> (String, common::FileId, CancellationToken) {
    write_file(root, "f.bin", data);
    let library = transfer::library::Library::new(root.to_path_buf());
    // Written just now: share it at once (no settle period).
    let mut cache = transfer::scan::HashCache::load(None, root).with_settle(Duration::ZERO);
    library.set_shared(transfer::scan::scan(root, &mut cache));
    let mut config = transfer::chunk_server::ChunkServerConfig::new(library);
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    tokio::spawn(transfer::chunk_server::serve_with(
        listener,
        config,
        tracker,
        stop.clone(),
    ));
    (addr, content_info(data).id, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_cheap_only_connections_are_closed() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(2 * common::CHUNK_SIZE, 182);
    let (addr, id, stop) = chunk_server_with(dir.path(), &data, |c| {
        c.first_request_timeout = Duration::from_millis(300);
        c.idle = Duration::from_secs(1);
    })
    .await;
    // Hello, then nothing: closed once the first-request deadline passes.
    let mut silent = hello_from("127.0.0.1", &addr, Protocol::Peer)
        .await
        .unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)).await,
        "a connection that never asked anything was kept"
    );
    // Only `Have`, every 100 ms: cheap requests do not renew the hold.
    let mut cheap = hello_from("127.0.0.1", &addr, Protocol::Peer)
        .await
        .unwrap();
    let mut buf = Vec::new();
    let kept_for = tokio::time::timeout(Duration::from_secs(10), async {
        let mut answered = 0u32;
        loop {
            if wire::send_message(&mut cheap, &PeerRequest::Have { id })
                .await
                .is_err()
            {
                return answered;
            }
            match wire::read_message::<_, PeerResponse>(
                &mut cheap,
                &mut buf,
                Deadlines::with_idle(Duration::from_secs(5)),
            )
            .await
            {
                Ok(Some(_)) => answered += 1,
                _ => return answered,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a connection asking only Have was kept open for 10 s");
    assert!(kept_for >= 1, "the first cheap request is answered");
    // A connection that asks for data keeps being served.
    let mut real = hello_from("127.0.0.1", &addr, Protocol::Peer)
        .await
        .unwrap();
    for round in 0..3 {
        wire::send_message(&mut real, &PeerRequest::Chunk { id, index: 0 })
            .await
            .unwrap();
        let header: PeerResponse = wire::expect_message(
            &mut real,
            &mut buf,
            Deadlines::with_idle(Duration::from_secs(5)),
        )
        .await
        .unwrap_or_else(|e| panic!("chunk request {round}: {e}"));
        let PeerResponse::Chunk { len, .. } = header else {
            panic!("not a chunk: {header:?}");
        };
        let mut bytes = vec![0u8; len as usize];
        real.read_exact(&mut bytes).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_caps_connections_per_address_and_closes_silent_ones() {
    init_logging();
    let server = index_server::Server::bind(index_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_connections_per_ip: 3,
        first_request_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await
    .unwrap();
    let addr = server.local_addr().to_string();
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            hello_from("127.0.0.2", &addr, Protocol::Index)
                .await
                .unwrap(),
        );
    }
    let err = hello_from("127.0.0.2", &addr, Protocol::Index)
        .await
        .expect_err("a fourth connection from one address is refused");
    assert!(err.contains("busy"), "{err}");
    // Everyone else is still answered.
    let mut client = peer::index_client::IndexClient::connect(&addr)
        .await
        .unwrap();
    client.stats().await.unwrap();
    // The three said only hello: they are closed at the first-request deadline.
    for s in &mut held {
        assert!(
            closed_within(s, Duration::from_secs(10)).await,
            "a hello-only index connection was kept"
        );
    }
    // A client that asked something keeps its connection (client_idle).
    client.stats().await.unwrap();
    stop.cancel();
}

// ---------------------------------------------------------------- overlay ---

use common::overlay_proto::{MessageId, OverlayMessage};

/// A line of `n` overlay nodes, node i joined through node i-1.
async fn overlay_line(root: &std::path::Path, n: usize) -> Vec<Peer> {
    let mut nodes: Vec<Peer> = Vec::new();
    for i in 0..n {
        let share = root.join(format!("node{i}"));
        std::fs::create_dir_all(&share).unwrap();
        let neighbors = nodes.last().map(|p| p.addr()).into_iter().collect();
        nodes.push(start_p2p_node(&share, neighbors, 1).await);
    }
    let ends_and_middle = |nodes: &[Peer]| {
        let count = |p: &Peer| p.daemon.overlay().unwrap().neighbours().len();
        count(&nodes[0]) >= 1
            && count(&nodes[n - 1]) >= 1
            && nodes[1..n - 1].iter().all(|p| count(p) >= 2)
    };
    // Generous: on a loaded machine ten daemons take a while to link up.
    wait_until("the line is connected", Duration::from_secs(60), || async {
        ends_and_middle(&nodes)
    })
    .await;
    nodes
}

/// Opens an overlay link to `addr` as a search client or as a neighbour.
async fn overlay_link(addr: &str, client: bool) -> transfer::net::Conn {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut s, _) = transfer::net::client(s, Protocol::Overlay, None)
        .await
        .unwrap();
    wire::send_message(
        &mut s,
        &OverlayMessage::Connect {
            // A port nothing listens on: nobody reaches this fake node.
            listen_port: if client { 0 } else { 1 },
            advertise: None,
            client,
        },
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let welcome: OverlayMessage = wire::expect_message(
        &mut s,
        &mut buf,
        Deadlines::with_idle(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert!(
        matches!(welcome, OverlayMessage::Welcome { .. }),
        "{welcome:?}"
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_with_ttl_255_goes_no_farther_than_seven_hops() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = overlay_line(dir.path(), 10).await;
    // A hand-made search client sends TTL 255 (the real one clamps it).
    let mut client = overlay_link(&nodes[0].addr(), true).await;
    let id = MessageId([0x55; 16]);
    wire::send_message(
        &mut client,
        &OverlayMessage::Query {
            id,
            ttl: 255,
            hops: 0,
            words: vec!["nothing".into()],
        },
    )
    .await
    .unwrap();
    // Every copy is answered once, so the flood is over when answers = 1 + Σ forwarded.
    let (mut answers, mut expected, mut reached, mut farthest) = (0u64, 1u64, 0u64, 0u8);
    let mut buf = Vec::new();
    while answers < expected {
        let msg: OverlayMessage = wire::expect_message(
            &mut client,
            &mut buf,
            Deadlines::with_idle(Duration::from_secs(20)),
        )
        .await
        .expect("every copy of the query is answered");
        if let OverlayMessage::QueryHit {
            id: hit,
            distance,
            forwarded,
            duplicate,
            ..
        } = msg
        {
            if hit != id {
                continue;
            }
            answers += 1;
            if !duplicate {
                reached += 1;
                expected += u64::from(forwarded);
                farthest = farthest.max(distance);
            }
        }
    }
    assert_eq!(farthest, 7, "the farthest answer is 7 hops out");
    assert_eq!(reached, 8, "the via node and the 7 hops after it, of 10");
    for (i, n) in nodes.iter().enumerate().skip(8) {
        let c = n.daemon.overlay().unwrap().counters();
        assert_eq!(
            OverlayCounters::get(&c.queries_processed),
            0,
            "node {i} is farther than 7 hops but processed the query"
        );
    }
    for n in nodes {
        n.stop().await;
    }
}

use peer::overlay::OverlayCounters;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_with_ttl_255_draws_pongs_only_from_two_hops() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = overlay_line(dir.path(), 8).await;
    // A hand-made neighbour of node 0 sends one ping with TTL 255.
    let mut fake = overlay_link(&nodes[0].addr(), false).await;
    let id = MessageId([0x77; 16]);
    wire::send_message(
        &mut fake,
        &OverlayMessage::Ping {
            id,
            ttl: 255,
            hops: 0,
        },
    )
    .await
    .unwrap();
    // Collect the pongs to that ping for a while (pings of the nodes' own arrive too).
    let mut pongs = std::collections::HashSet::new();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match wire::read_message::<_, OverlayMessage>(&mut fake, &mut buf, Deadlines::default())
                .await
            {
                Ok(Some(OverlayMessage::Pong { id: p, addr, .. })) if p == id => {
                    pongs.insert(addr);
                }
                Ok(Some(_)) => {}
                _ => return,
            }
        }
    })
    .await;
    assert!(
        pongs.len() <= 2,
        "one ping drew {} pongs (from {pongs:?}); a ping goes two hops",
        pongs.len()
    );
    assert!(pongs.contains(&nodes[0].addr()), "{pongs:?}");
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_answer_count_does_not_hold_the_searcher() {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("v");
    write_file(&share, "honest file.txt", b"honest");
    let v = start_p2p_node(&share, Vec::new(), 1).await;
    // A hand-made neighbour answers every query claiming 4,000,000,000 copies.
    let mut liar = overlay_link(&v.addr(), false).await;
    wait_until(
        "the liar is a neighbour",
        Duration::from_secs(10),
        || async { v.daemon.overlay().unwrap().neighbours().len() == 1 },
    )
    .await;
    let liar_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Ok(Some(msg)) =
            wire::read_message::<_, OverlayMessage>(&mut liar, &mut buf, Deadlines::default()).await
        {
            if let OverlayMessage::Query { id, hops, .. } = msg {
                let lie = OverlayMessage::QueryHit {
                    id,
                    responder: "127.0.0.1:1".into(),
                    files: Vec::new(),
                    distance: hops,
                    forwarded: 4_000_000_000,
                    duplicate: false,
                };
                if wire::send_message(&mut liar, &lie).await.is_err() {
                    return;
                }
            }
        }
    });
    // Without the checks the searcher would wait out its whole --wait (60 s).
    let report = tokio::time::timeout(
        Duration::from_secs(20),
        peer::overlay::search(&v.addr(), vec!["honest".into()], 7, Duration::from_secs(60)),
    )
    .await
    .expect("the searcher waited on a forged count")
    .unwrap();
    assert_eq!(report.hits.len(), 1, "{report:?}");
    assert!(
        !report.complete,
        "the liar's copy was never honestly answered"
    );
    assert!(report.query_messages <= 1, "{report:?}");
    liar_task.abort();
    v.stop().await;
}
