//! Encrypted, authenticated connections (issue 16) between real servers on
//! loopback: the index lists each source with the id its handshake proved,
//! a downloader refuses a source that proves another (an impostor), the
//! reachability dial-back requires the session's own key, a private
//! network's key is required of every node, a clear-text node and an
//! encrypting one refuse each other, and a transfer's bytes on the wire
//! carry no plaintext (`tests/tests/cleartext.rs` is the same capture with
//! `--insecure` on both sides, where the marker is seen).

use common::hello::Protocol;
use common::identity::Identity;
use common::index_proto::{IndexRequest, IndexResponse, Login, SharedFile};
use common::secure::Security;
use common::wire::{self, Deadlines};
use tests::*;
use tokio::net::{TcpListener, TcpStream};

/// An index whose connections run with `security`.
async fn index_with_security(security: Security) -> Index {
    init_logging();
    let config = index_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        security: Some(security),
        ..Default::default()
    };
    run_index(index_server::Server::bind(config).await.unwrap())
}

/// A session at `index` under `security` that lists `addr` as a source of
/// `file`; kept alive by the returned connection.
async fn register_as(
    index: &str,
    security: &Security,
    addr: &str,
    file: SharedFile,
) -> transfer::net::Conn {
    let s = TcpStream::connect(index).await.unwrap();
    let (mut s, _) = transfer::net::client_with(s, Protocol::Index, None, security)
        .await
        .unwrap();
    let mut buf = Vec::new();
    for req in [
        IndexRequest::Login(Login {
            listen_port: 1,
            advertise: Some(addr.into()),
            nick: None,
        }),
        IndexRequest::AddFiles { files: vec![file] },
    ] {
        wire::send_message(&mut s, &req).await.unwrap();
        let r: IndexResponse = wire::expect_message(&mut s, &mut buf, Deadlines::default())
            .await
            .unwrap();
        assert!(!matches!(r, IndexResponse::Error { .. }), "{r:?}");
    }
    s
}

/// A source listed under one key but answering with another is refused
/// as an impostor; listed under the key it proves, it serves the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_proving_another_key_than_listed_is_refused() {
    let index = start_index().await;
    let data = random_bytes(3 * common::CHUNK_SIZE + 5, 16);
    let info = common::id::content_info(&data);
    // Serves with this process's key.
    let source = fake::start(data.clone(), fake::Behaviour::OnlyFirst(u32::MAX)).await;
    let file = SharedFile {
        id: info.id,
        name: "f.bin".into(),
        size: info.size,
    };
    let someone_else = Security::new(Identity::generate(), None);
    let session = register_as(
        &index.addr_string(),
        &someone_else,
        &source.addr_string(),
        file.clone(),
    )
    .await;
    let listed = index.state.lookup(&info.id, tokio::time::Instant::now());
    let listed_id = listed.as_ref().and_then(|(_, _, s)| s[0].peer_id);
    assert_eq!(listed_id, someone_else.peer_id(), "{listed:?}");
    let dir = tempfile::tempdir().unwrap();
    let err = hybrid_get(
        &index.addr_string(),
        &info.id.to_hex(),
        &dir.path().join("out"),
        test_engine(),
    )
    .await
    .expect_err("an impostor must not be downloaded from");
    let text = common::report::error_chain(&err);
    assert!(text.contains("impostor"), "{text}");
    drop(session);

    // The same source listed under the key it proves: served.
    let _session = register_as(
        &index.addr_string(),
        &Security::process(),
        &source.addr_string(),
        file,
    )
    .await;
    let got = hybrid_get(
        &index.addr_string(),
        &info.id.to_hex(),
        &dir.path().join("out2"),
        test_engine(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    index.stop().await;
}

/// Answers one reachability dial-back at `listener` under `security`,
/// with the right proof for `nonce` (a host that knows the login's nonce).
async fn answer_dial_back(listener: TcpListener, security: Security, nonce: [u8; 16]) {
    use common::peer_proto::{PeerRequest, PeerResponse};
    while let Ok((s, _)) = listener.accept().await {
        let security = security.clone();
        tokio::spawn(async move {
            let Ok((_, mut s)) =
                transfer::net::accept_with(s, &[Protocol::Peer], |_| false, |_| 0, &security).await
            else {
                return;
            };
            let mut buf = Vec::new();
            if let Ok(PeerRequest::ProveReachable { challenge }) =
                wire::expect_message(&mut s, &mut buf, Deadlines::default()).await
            {
                let proof = common::reach::proof(&nonce, &challenge);
                let _ = wire::send_message(&mut s, &PeerResponse::Reachable { proof }).await;
            }
        });
    }
}

/// The dial-back's handshake must prove the session's own key: a host
/// that knows the nonce but answers with another key is not published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_back_answered_with_another_key_is_refused() {
    let index = start_index().await;
    for (same_key, published) in [(false, false), (true, true)] {
        let session_key = Security::new(Identity::generate(), None);
        let answering_key = if same_key {
            session_key.clone()
        } else {
            Security::new(Identity::generate(), None)
        };
        let nonce: [u8; 16] = rand::random();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let answering = tokio::spawn(answer_dial_back(listener, answering_key, nonce));
        let s = TcpStream::connect(index.addr).await.unwrap();
        let (mut s, _) = transfer::net::client_with(s, Protocol::Index, None, &session_key)
            .await
            .unwrap();
        let login = IndexRequest::LoginChecked {
            login: Login {
                listen_port: port,
                advertise: None,
                nick: None,
            },
            nonce,
        };
        wire::send_message(&mut s, &login).await.unwrap();
        let answer: IndexResponse =
            wire::expect_message(&mut s, &mut Vec::new(), Deadlines::default())
                .await
                .unwrap();
        let IndexResponse::WelcomeChecked { addr, refused, .. } = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(addr.is_some(), published, "{addr:?} {refused:?}");
        if !published {
            assert!(
                refused.iter().any(|r| r.contains("another node answers")),
                "{refused:?}"
            );
        }
        answering.abort();
    }
    index.stop().await;
}

/// With a network key, only nodes holding the same key complete a
/// handshake; one without it (or with another) is refused with a message
/// that names --network-key.
#[tokio::test]
async fn a_private_network_refuses_nodes_without_its_key() {
    let key: [u8; 32] = rand::random();
    let index = index_with_security(Security::new(Identity::generate(), Some(key))).await;
    for other in [None, Some(rand::random::<[u8; 32]>())] {
        let outsider = Security::new(Identity::generate(), other);
        let s = TcpStream::connect(index.addr).await.unwrap();
        let err = transfer::net::client_with(s, Protocol::Index, None, &outsider)
            .await
            .expect_err("no handshake without the network's key");
        assert!(err.to_string().contains("--network-key"), "{err}");
    }
    let member = Security::new(Identity::generate(), Some(key));
    let s = TcpStream::connect(index.addr).await.unwrap();
    let (mut s, _) = transfer::net::client_with(s, Protocol::Index, None, &member)
        .await
        .unwrap();
    wire::send_message(&mut s, &IndexRequest::Stats)
        .await
        .unwrap();
    let answer: IndexResponse = wire::expect_message(&mut s, &mut Vec::new(), Deadlines::default())
        .await
        .unwrap();
    assert!(matches!(answer, IndexResponse::Stats(_)), "{answer:?}");
    index.stop().await;
}

/// A clear-text node and an encrypting one refuse each other, each saying
/// which side to change; a client does not fall back to clear text.
#[tokio::test]
async fn clear_text_and_encryption_do_not_mix() {
    let clear_index = index_with_security(Security::insecure()).await;
    let s = TcpStream::connect(clear_index.addr).await.unwrap();
    let err = transfer::net::client_with(s, Protocol::Index, None, &Security::process())
        .await
        .expect_err("an encrypting client refuses a clear-text index");
    assert!(
        err.to_string()
            .contains("start the other side without --insecure"),
        "{err}"
    );
    clear_index.stop().await;

    let index = start_index().await;
    let s = TcpStream::connect(index.addr).await.unwrap();
    let err = transfer::net::client_with(s, Protocol::Index, None, &Security::insecure())
        .await
        .expect_err("a clear-text client is refused");
    assert!(err.to_string().contains("drop --insecure here"), "{err}");
    index.stop().await;
}

/// The bytes of a transfer on the wire never contain the file's text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_on_the_wire_carries_no_plaintext() {
    let (captured, marker) = tests::capture::captured_transfer().await;
    assert!(
        !captured.windows(marker.len()).any(|w| w == marker),
        "the marker crossed the wire in clear text ({} bytes captured)",
        captured.len()
    );
}

/// A man in the middle that runs its own handshakes with the downloader
/// and the source (to read the bytes and relay them): it can only prove
/// its own key.
async fn terminating_mitm(target: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mallory = Security::new(Identity::generate(), None);
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let mallory = mallory.clone();
            tokio::spawn(async move {
                let accepted = transfer::net::accept_with(
                    inbound,
                    &[Protocol::Peer],
                    |_| false,
                    |_| 0,
                    &mallory,
                )
                .await;
                let Ok((protocol, mut down)) = accepted else {
                    return;
                };
                let Ok(up) = TcpStream::connect(target).await else {
                    return;
                };
                let Ok((mut up, _)) =
                    transfer::net::client_with(up, protocol, None, &mallory).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
        }
    });
    addr
}

/// A man in the middle that relays the encrypted bytes as they are but
/// flips one byte of the source's answer on the first connection (past
/// the handshake); returns how many bytes it flipped.
async fn tampering_relay(
    target: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Past the handshake's ~250 bytes, inside the hash list or a chunk.
    const FLIP_AT: u64 = 4_000;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let flipped = std::sync::Arc::new(AtomicU64::new(0));
    let first = std::sync::Arc::new(AtomicBool::new(true));
    let count = flipped.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let tamper = first.swap(false, Ordering::SeqCst);
            let count = count.clone();
            tokio::spawn(async move {
                let (mut ir, mut iw) = inbound.into_split();
                let (mut or, mut ow) = outbound.into_split();
                let up = tokio::io::copy(&mut ir, &mut ow);
                let down = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut at = 0u64;
                    loop {
                        let n = match or.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if tamper && at <= FLIP_AT && FLIP_AT < at + n as u64 {
                            buf[(FLIP_AT - at) as usize] ^= 0x01;
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        at += n as u64;
                        if iw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let _ = tokio::join!(up, down);
            });
        }
    });
    (addr, flipped)
}

/// A man in the middle between a downloader and a source (the address the
/// index lists leads through it). Terminating the encryption to read and
/// relay: refused as an impostor, nothing written. Relaying the encrypted
/// bytes and altering one: the altered message fails its authentication
/// tag, that connection is dropped, and the file still arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_man_in_the_middle_is_refused_or_detected() {
    let index = start_index().await;
    let data = random_bytes(3 * common::CHUNK_SIZE + 5, 18);
    let info = common::id::content_info(&data);
    let source = fake::start(data.clone(), fake::Behaviour::OnlyFirst(u32::MAX)).await;
    let file = SharedFile {
        id: info.id,
        name: "f.bin".into(),
        size: info.size,
    };
    let dir = tempfile::tempdir().unwrap();

    let mitm = terminating_mitm(source.addr).await;
    let session = register_as(
        &index.addr_string(),
        &Security::process(),
        &mitm.to_string(),
        file.clone(),
    )
    .await;
    let out = dir.path().join("out");
    let err = hybrid_get(&index.addr_string(), &info.id.to_hex(), &out, test_engine())
        .await
        .expect_err("a man in the middle must not be downloaded from");
    let text = common::report::error_chain(&err);
    assert!(text.contains("impostor"), "{text}");
    assert_eq!(source.served(), 0, "the source served nothing through it");
    assert!(!out.join("f.bin").exists(), "nothing under the final name");
    drop(session);

    let (relay, flipped) = tampering_relay(source.addr).await;
    let _session = register_as(
        &index.addr_string(),
        &Security::process(),
        &relay.to_string(),
        file,
    )
    .await;
    let got = hybrid_get(
        &index.addr_string(),
        &info.id.to_hex(),
        &dir.path().join("out2"),
        test_engine(),
    )
    .await
    .unwrap();
    assert_eq!(flipped.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    index.stop().await;
}
