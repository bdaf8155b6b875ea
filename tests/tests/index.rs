//! The index server under restarts, expiring leases, ownership rules and
//! every class of bad input.

use std::time::Duration;

use common::hello::{self, Protocol};
use common::id::{content_info, FileId};
use common::index_proto::{ErrorCode, IndexRequest, IndexResponse, Login, SharedFile};
use common::wire::{self, Deadlines};
use peer::index_client::{IndexClient, IndexError};
use tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A hand-driven index connection.
struct Raw {
    stream: transfer::net::Conn,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = transfer::net::client(stream, Protocol::Index, None)
            .await
            .unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    async fn ask(&mut self, req: IndexRequest) -> IndexResponse {
        wire::send_message(&mut self.stream, &req).await.unwrap();
        wire::expect_message(
            &mut self.stream,
            &mut self.buf,
            Deadlines::with_idle(Duration::from_secs(10)),
        )
        .await
        .unwrap()
    }

    async fn login_with(addr: &str, port: u16, files: Vec<SharedFile>) -> Raw {
        let mut raw = Raw::connect(addr).await;
        let r = raw
            .ask(IndexRequest::Login(Login {
                listen_port: port,
                advertise: None,
                nick: None,
            }))
            .await;
        assert!(matches!(r, IndexResponse::Welcome { .. }), "{r:?}");
        let r = raw.ask(IndexRequest::AddFiles { files }).await;
        assert!(matches!(r, IndexResponse::Ack { .. }), "{r:?}");
        raw
    }
}

fn shared(data: &[u8], name: &str) -> SharedFile {
    SharedFile {
        id: content_info(data).id,
        name: name.into(),
        size: data.len() as u64,
    }
}

/// The server still answers a well-behaved client.
async fn still_serving(index: &str) {
    let mut c = IndexClient::connect(index).await.unwrap();
    c.stats().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_remove_another_peers_entries() {
    let index = start_index().await;
    let file = shared(b"alice's", "alice.txt");
    let _alice = Raw::login_with(&index.addr_string(), 7001, vec![file.clone()]).await;
    let mut mallory = Raw::login_with(&index.addr_string(), 7002, vec![]).await;
    let r = mallory
        .ask(IndexRequest::RemoveFiles { ids: vec![file.id] })
        .await;
    assert_eq!(r, IndexResponse::Ack { count: 0 });
    // Registering the same id under another name adds a source; it does not
    // rename or replace alice's entry.
    mallory
        .ask(IndexRequest::AddFiles {
            files: vec![SharedFile {
                name: "renamed.txt".into(),
                ..file.clone()
            }],
        })
        .await;
    assert_eq!(sources_of(&index.addr_string(), file.id).await, 2);
    let mut c = IndexClient::connect(&index.addr_string()).await.unwrap();
    assert_eq!(
        c.browse("127.0.0.1:7001").await.unwrap()[0].name,
        "alice.txt"
    );
    // And an anonymous client cannot touch anything.
    let mut anon = Raw::connect(&index.addr_string()).await;
    let r = anon
        .ask(IndexRequest::RemoveFiles { ids: vec![file.id] })
        .await;
    assert!(
        matches!(
            r,
            IndexResponse::Error {
                code: ErrorCode::NotLoggedIn,
                ..
            }
        ),
        "{r:?}"
    );
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_withdraws_its_files_at_once() {
    let index = start_index().await;
    let file = shared(b"bye", "bye.txt");
    let raw = Raw::login_with(&index.addr_string(), 7003, vec![file.clone()]).await;
    assert_eq!(sources_of(&index.addr_string(), file.id).await, 1);
    drop(raw);
    wait_until(
        "the closed peer's file to vanish",
        Duration::from_secs(5),
        || {
            let a = index.addr_string();
            async move { sources_of(&a, file.id).await == 0 }
        },
    )
    .await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_expires_after_its_lease() {
    let index = start_index_on("127.0.0.1:0".parse().unwrap(), Duration::from_millis(600)).await;
    let file = shared(b"silent", "silent.txt");
    // Logged in, connection kept open, but never a heartbeat.
    let _silent = Raw::login_with(&index.addr_string(), 7004, vec![file.clone()]).await;
    assert_eq!(sources_of(&index.addr_string(), file.id).await, 1);
    wait_until("the silent peer to expire", Duration::from_secs(10), || {
        let a = index.addr_string();
        async move { sources_of(&a, file.id).await == 0 }
    })
    .await;
    // A real peer heartbeats and stays listed across several leases.
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "alive.txt", b"alive");
    let mut p = start_peer(dir.path(), &index.addr_string()).await;
    p.wait_registered(1).await;
    let id = content_info(b"alive").id;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await; // span several leases on purpose
        assert_eq!(
            sources_of(&index.addr_string(), id).await,
            1,
            "a heartbeating peer expired"
        );
    }
    p.stop().await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_register_again_after_the_index_restarts() {
    let index = start_index().await;
    let addr = index.addr;
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "persist.txt", b"still here");
    let mut p = start_peer(dir.path(), &index.addr_string()).await;
    p.wait_registered(1).await;
    index.stop().await;
    let err = IndexClient::connect(&addr.to_string()).await.err().unwrap();
    assert!(matches!(err, IndexError::Connect { .. }), "{err}");
    // A new index on the same address knows nothing until the peer comes back.
    let index = start_index_on(addr, Duration::from_secs(30)).await;
    let id = content_info(b"still here").id;
    wait_until(
        "the peer to register with the restarted index",
        Duration::from_secs(10),
        || {
            let a = index.addr_string();
            async move { sources_of(&a, id).await == 1 }
        },
    )
    .await;
    p.stop().await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_that_connection() {
    let index = start_index().await;
    let addr = index.addr_string();
    let keeper = Raw::login_with(&addr, 7005, vec![shared(b"kept", "kept.txt")]).await;

    // 1. Not our protocol at all.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_closed(&mut s).await;

    // 2. A frame that claims 2 GiB.
    let mut raw = Raw::connect(&addr).await;
    raw.stream
        .write_all(&[0x7F, 0xFF, 0xFF, 0xFF, 0])
        .await
        .unwrap();
    raw.stream.flush().await.unwrap();
    assert_closed(&mut raw.stream).await;

    // 3. Garbage inside a well-sized frame.
    let mut raw = Raw::connect(&addr).await;
    raw.stream
        .write_all(&[0, 0, 0, 5, 0xFF, 0xFE, 0xFD, 0xFC, 0xFB])
        .await
        .unwrap();
    raw.stream.flush().await.unwrap();
    assert_closed(&mut raw.stream).await;

    // 4. An unknown message type.
    let mut raw = Raw::connect(&addr).await;
    raw.stream.write_all(&[0, 0, 0, 1, 250]).await.unwrap();
    raw.stream.flush().await.unwrap();
    assert_closed(&mut raw.stream).await;

    // 5. Trailing bytes after a valid message.
    let mut raw = Raw::connect(&addr).await;
    raw.stream.write_all(&[0, 0, 0, 2, 7, 0]).await.unwrap();
    raw.stream.flush().await.unwrap();
    assert_closed(&mut raw.stream).await;

    // 6. A truncated frame, then the client goes away.
    let mut raw = Raw::connect(&addr).await;
    raw.stream.write_all(&[0, 0, 0, 50, 1, 2]).await.unwrap();
    raw.stream.flush().await.unwrap();
    drop(raw);

    // 7. A valid frame with absurd content gets a clear refusal, connection kept.
    let mut raw = Raw::connect(&addr).await;
    let r = raw
        .ask(IndexRequest::Search {
            words: vec!["w".repeat(10_000)],
            limit: 5,
        })
        .await;
    assert!(
        matches!(
            r,
            IndexResponse::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{r:?}"
    );
    let r = raw
        .ask(IndexRequest::Login(Login {
            listen_port: 1,
            advertise: None,
            nick: Some("bad nick\n".into()),
        }))
        .await;
    assert!(
        matches!(
            r,
            IndexResponse::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{r:?}"
    );
    let r = raw.ask(IndexRequest::Stats).await;
    assert!(matches!(r, IndexResponse::Stats(_)), "{r:?}");

    still_serving(&addr).await;
    assert_eq!(
        sources_of(&addr, content_info(b"kept").id).await,
        1,
        "an innocent peer was disturbed"
    );
    drop(keeper);
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_protocol_mismatches_are_reported_clearly() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let p = start_peer(dir.path(), &index.addr_string()).await;

    // A future version speaking to us.
    let mut s = TcpStream::connect(index.addr).await.unwrap();
    let mut hello = hello::client_hello(Protocol::Index);
    hello[5] = 99;
    s.write_all(&hello).await.unwrap();
    let mut answer = [0u8; hello::HELLO_LEN];
    s.read_exact(&mut answer).await.unwrap();
    let err = hello::check_server_hello(&answer).unwrap_err();
    assert!(err.to_string().contains("version"), "{err}");

    // The index client pointed at a peer's port.
    let err = IndexClient::connect(&p.addr()).await.err().unwrap();
    assert!(err.to_string().contains("wrong service"), "{err}");
    p.stop().await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_chunk_server_survives_bad_input_too() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(300_000, 5);
    write_file(dir.path(), "f.bin", &data);
    let mut p = start_peer(dir.path(), &index.addr_string()).await;
    p.wait_registered(1).await;
    for junk in [
        &[0x7Fu8, 0xFF, 0xFF, 0xFF][..],
        &[0, 0, 0, 3, 9, 9, 9][..],
        &[0, 0, 0, 1, 2][..],
    ] {
        let s = TcpStream::connect(p.addr()).await.unwrap();
        let (mut s, _) = transfer::net::client(s, Protocol::Peer, None)
            .await
            .unwrap();
        s.write_all(junk).await.unwrap();
        s.flush().await.unwrap();
        assert_closed(&mut s).await;
    }
    // An id it does not have and a chunk past the end get refusals, not a hang.
    let s = TcpStream::connect(p.addr()).await.unwrap();
    let (mut s, _) = transfer::net::client(s, Protocol::Peer, None)
        .await
        .unwrap();
    let id = content_info(&data).id;
    let mut buf = Vec::new();
    for req in [
        common::peer_proto::PeerRequest::Chunk {
            id: FileId([0; 32]),
            index: 0,
        },
        common::peer_proto::PeerRequest::Chunk { id, index: 99 },
    ] {
        wire::send_message(&mut s, &req).await.unwrap();
        let r: common::peer_proto::PeerResponse = wire::expect_message(
            &mut s,
            &mut buf,
            Deadlines::with_idle(Duration::from_secs(5)),
        )
        .await
        .unwrap();
        assert!(
            matches!(r, common::peer_proto::PeerResponse::Error { .. }),
            "{r:?}"
        );
    }
    // And it still serves.
    let out = tempfile::tempdir().unwrap();
    let got = peer::download::download(
        peer::DownloadRequest {
            id,
            name: "f.bin".into(),
            sources: vec![p.addr()],
            out_dir: out.path().into(),
        },
        test_engine(),
        Default::default(),
        None,
        peer::download::StartOnly,
        Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(got.path).unwrap(), data);
    p.stop().await;
    index.stop().await;
}

/// Reads until the server closes the connection (with a deadline).
async fn assert_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) {
    let mut sink = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept a misbehaving connection open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_go_on_while_the_index_is_down_and_peers_come_back() {
    let index = start_index().await;
    let addr = index.addr;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(8 * common::CHUNK_SIZE, 31);
    let id = content_info(&data).id;
    let mut peers = Vec::new();
    for name in ["a", "b"] {
        write_file(&dir.path().join(name), "film.bin", &data);
        let mut config = peer_config(&dir.path().join(name), &index.addr_string());
        // Slow enough that the download is still running when the index dies.
        config.max_upload_rate = Some(512 * 1024);
        let mut p = start_peer_with(config).await;
        p.wait_registered(1).await;
        peers.push(p);
    }
    let hybrid = peer::pipeline::Fetcher::Hybrid {
        index: index.addr_string(),
    };
    let resolved = peer::pipeline::resolve(&hybrid, &id.to_hex())
        .await
        .unwrap();
    let progress = std::sync::Arc::new(peer::Progress::default());
    let download = tokio::spawn(peer::download::download(
        peer::DownloadRequest {
            id,
            name: resolved.name,
            sources: resolved.sources,
            out_dir: dir.path().join("out"),
        },
        test_engine(),
        progress.clone(),
        None,
        peer::download::StartOnly,
        Default::default(),
    ));
    wait_until(
        "the download to be under way",
        Duration::from_secs(20),
        || {
            let p = progress.clone();
            async move { p.done_bytes.load(std::sync::atomic::Ordering::Relaxed) > 0 }
        },
    )
    .await;
    index.stop().await;
    assert!(
        progress
            .done_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
            < data.len() as u64,
        "the download finished before the index went down; the test proves nothing"
    );
    let got = download.await.unwrap().unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);

    // The index comes back: the peers register again and search works.
    let index = start_index_on(addr, Duration::from_secs(30)).await;
    wait_until(
        "both peers to register again",
        Duration::from_secs(10),
        || {
            let a = index.addr_string();
            async move { sources_of(&a, id).await == 2 }
        },
    )
    .await;
    let mut c = IndexClient::connect(&index.addr_string()).await.unwrap();
    assert_eq!(c.search(vec!["film".into()], 0).await.unwrap().len(), 1);
    for p in peers {
        p.stop().await;
    }
    index.stop().await;
}
