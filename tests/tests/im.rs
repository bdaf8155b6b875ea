//! The instant-messaging hybrid: presence and location at the index,
//! messages straight from peer to peer.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::hello::Protocol;
use common::peer_proto::{PeerErrorCode, PeerRequest, PeerResponse};
use common::wire::{self, Deadlines};
use peer::im::{deliver_to, send_message, MessageError};
use peer::inbox;
use peer::index_client::{connect_tcp, IndexClient};
use peer::serve::ServeError;
use tests::*;
use tokio_util::sync::CancellationToken;

fn nick_config(share: &Path, index: &str, nick: &str) -> peer::ServeConfig {
    let mut config = peer_config(share, index);
    config.nick = Some(nick.into());
    config
}

async fn start_nick(share: &Path, index: &str, nick: &str) -> Peer {
    start_peer_with(nick_config(share, index, nick)).await
}

/// Requests of each kind the index handled after `before`, zeros left out.
fn counts_since(
    index: &Index,
    before: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    index
        .state
        .request_counts()
        .into_iter()
        .map(|(kind, n)| (kind, n - before.get(kind).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_appears_and_disappears_with_the_peer() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir.path().join("ana"), "canción.ogg", b"la la la");
    let mut ana = start_nick(&dir.path().join("ana"), &index.addr_string(), "ana").await;
    let mut plain = start_peer(&dir.path().join("plain"), &index.addr_string()).await;
    ana.wait_registered(1).await;
    plain.wait_registered(0).await;

    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    let online = client.peers().await.unwrap();
    assert_eq!(online.len(), 2, "{online:?}");
    let listed = online
        .iter()
        .find(|p| p.nick.as_deref() == Some("ana"))
        .expect("ana listed by nickname");
    assert_eq!(
        (listed.addr.as_str(), listed.files, listed.bytes),
        (ana.addr().as_str(), 1, 8)
    );
    let found = client.whois("ana").await.unwrap().expect("ana is online");
    assert_eq!(found.addr, ana.addr());
    assert!(client.whois("bob").await.unwrap().is_none());
    // Browse by nickname gives the same list as by address.
    let by_nick = client.browse("ana").await.unwrap();
    assert_eq!(by_nick, client.browse(&ana.addr()).await.unwrap());
    assert_eq!(by_nick.len(), 1);
    assert_eq!(by_nick[0].name, "canción.ogg");

    ana.stop().await;
    wait_until("ana leaves the index", Duration::from_secs(10), || {
        let index = index.addr_string();
        async move {
            let mut c = IndexClient::connect(&index).await.unwrap();
            c.whois("ana").await.unwrap().is_none() && c.peers().await.unwrap().len() == 1
        }
    })
    .await;
    let err = client.browse("ana").await.unwrap_err();
    assert!(err.to_string().contains("no online peer"), "{err}");
    plain.stop().await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nickname_clash_stops_the_second_peer_at_start() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    // The first holder is another node (its own key): peers of this
    // process share one key, and a node's own key takes its nickname back.
    let other = common::secure::Security::new(common::identity::Identity::generate(), None);
    let (welcome, first) = login_as(&index.addr_string(), &other, "ana", 7201).await;
    let common::index_proto::IndexResponse::Welcome {
        addr: first_addr, ..
    } = welcome
    else {
        panic!("{welcome:?}")
    };

    let second = nick_config(&dir.path().join("two"), &index.addr_string(), "ana");
    std::fs::create_dir_all(&second.share).unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        peer::serve::run(second, CancellationToken::new()),
    )
    .await
    .expect("peer serve with a taken nickname must stop by itself");
    let err = result.expect_err("a nickname clash is an error");
    assert!(matches!(err, ServeError::Refused(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("\"ana\"") && message.contains("--nick"),
        "{message}"
    );
    // No silent takeover: the nickname still leads to the first peer.
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    assert_eq!(client.whois("ana").await.unwrap().unwrap().addr, first_addr);

    // Once the first peer leaves, the index withdraws it (a moment later,
    // when it sees the connection close), but the nickname stays its
    // key's: another node still cannot take it over.
    drop(first);
    let state = index.state.clone();
    wait_until(
        "the index to end the first peer's session",
        Duration::from_secs(10),
        || {
            let state = state.clone();
            async move { state.whois("ana", tokio::time::Instant::now()).is_none() }
        },
    )
    .await;
    let third = nick_config(&dir.path().join("three"), &index.addr_string(), "ana");
    std::fs::create_dir_all(&third.share).unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        peer::serve::run(third, CancellationToken::new()),
    )
    .await
    .expect("peer serve with a reserved nickname must stop by itself")
    .expect_err("a reserved nickname is an error");
    assert!(err.to_string().contains("reserved"), "{err}");
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_goes_straight_to_the_peer_and_not_through_the_index() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bob = start_nick(&dir.path().join("bob"), &index.addr_string(), "bob").await;
    bob.wait_registered(0).await;

    let before = index.state.request_counts();
    let text = "hola bob\n\tsegunda línea";
    let delivery = send_message(&index.addr_string(), "bob", "ana", text)
        .await
        .unwrap();
    assert_eq!(delivery.addr, bob.addr());

    // The index was asked where bob is, and by bob which key holds the
    // sender's nickname (to mark the message verified or not), and nothing
    // else (a heartbeat may fall in between): the text never crossed it.
    let mut handled = counts_since(&index, &before);
    handled.remove("Heartbeat");
    assert_eq!(handled, BTreeMap::from([("WhoIs", 2)]));

    let received = bob.daemon.inbox().recent();
    assert_eq!(received.len(), 1);
    assert_eq!(
        (
            received[0].from.as_str(),
            received[0].source.as_str(),
            received[0].text.as_str()
        ),
        ("ana", "127.0.0.1", text)
    );
    // `peer inbox --share` reads the file the daemon wrote.
    let on_disk = inbox::read_file(&inbox::inbox_file_in(&bob.share)).unwrap();
    assert_eq!(on_disk, received);
    bob.stop().await;
    index.stop().await;
}

/// A message is signed by the sender's key for the receiver's key: the
/// receiver keeps a signature anyone can check later, and refuses a
/// signature that does not verify (another signer, an altered text, a
/// message signed for someone else, a wrong length).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_signed_and_a_bad_signature_is_refused() {
    use common::identity::Identity;
    use common::im::{sign_message, verify_message};
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = nick_config(&dir.path().join("bob"), &index.addr_string(), "bob");
    config.message_burst = 100;
    let mut bob = start_peer_with(config).await;
    bob.wait_registered(0).await;
    // In-process peers share this process's key: it signs and receives.
    let me = common::secure::Security::process().peer_id().unwrap();

    send_message(&index.addr_string(), "bob", "ana", "firmado")
        .await
        .unwrap();
    let got = bob.daemon.inbox().recent();
    let m = &got[0];
    let signature = hex::decode(m.signature.as_deref().expect("signed")).unwrap();
    let sent = m.sent_unix_ms.expect("signing time kept");
    assert_eq!(m.sender_id.as_deref(), Some(me.to_string().as_str()));
    assert!(verify_message(&me, &me, sent, "ana", "firmado", &signature));
    assert!(!verify_message(
        &me, &me, sent, "ana", "firmadO", &signature
    ));

    let mut stream = raw_connection(&bob.addr()).await;
    let security = common::secure::Security::process();
    let own = security.identity().unwrap();
    let other = Identity::generate();
    let signed =
        |signer: &Identity, to: &common::identity::PeerId, text: &str| PeerRequest::SignedMessage {
            from: "ana".into(),
            text: text.into(),
            sent_unix_ms: 5,
            signature: sign_message(signer, to, 5, "ana", "hi").to_vec(),
        };
    let short = PeerRequest::SignedMessage {
        from: "ana".into(),
        text: "hi".into(),
        sent_unix_ms: 5,
        signature: vec![1; 10],
    };
    for (what, request) in [
        ("another signer", signed(&other, &me, "hi")),
        ("an altered text", signed(own, &me, "ho")),
        (
            "signed for someone else",
            signed(own, &other.peer_id(), "hi"),
        ),
        ("a short signature", short),
    ] {
        wire::send_message(&mut stream, &request).await.unwrap();
        match answer(&mut stream).await {
            PeerResponse::Error {
                code: PeerErrorCode::BadRequest,
                message,
            } => assert!(message.contains("signature"), "{what}: {message}"),
            other => panic!("{what} was answered {other:?}"),
        }
    }
    // The same request, well signed, is taken.
    wire::send_message(&mut stream, &signed(own, &me, "hi"))
        .await
        .unwrap();
    assert_eq!(answer(&mut stream).await, PeerResponse::Delivered);
    assert_eq!(
        bob.daemon.inbox().received(),
        2,
        "only the well-signed ones"
    );
    drop(stream);
    bob.stop().await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messaging_an_offline_peer_fails_clearly() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let err = send_message(&index.addr_string(), "nobody", "ana", "hi")
        .await
        .unwrap_err();
    assert!(matches!(err, MessageError::Offline { .. }), "{err:?}");
    assert!(err.to_string().contains("nobody is not online"), "{err}");

    // A peer that left: the index no longer knows it, and its old address
    // (a lookup made just before it left) does not answer. Nothing is stored.
    let mut bob = start_nick(&dir.path().join("bob"), &index.addr_string(), "bob").await;
    bob.wait_registered(0).await;
    let old_addr = bob.addr();
    bob.stop().await;
    wait_until("bob leaves the index", Duration::from_secs(10), || {
        let index = index.addr_string();
        async move {
            let mut c = IndexClient::connect(&index).await.unwrap();
            c.whois("bob").await.unwrap().is_none()
        }
    })
    .await;
    let err = send_message(&index.addr_string(), "bob", "ana", "hi")
        .await
        .unwrap_err();
    assert!(matches!(err, MessageError::Offline { .. }), "{err:?}");
    let err = deliver_to(&old_addr, "bob", "ana", "hi").await.unwrap_err();
    assert!(matches!(err, MessageError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot be reached"), "{err}");
    index.stop().await;
}

/// A peer-protocol connection for sending hand-made requests.
async fn raw_connection(addr: &str) -> transfer::net::Conn {
    let stream = connect_tcp(addr, Duration::from_secs(5)).await.unwrap();
    let (stream, _) = transfer::net::client(stream, Protocol::Peer, None)
        .await
        .unwrap();
    stream
}

async fn answer(stream: &mut transfer::net::Conn) -> PeerResponse {
    let mut buf = Vec::new();
    wire::expect_message(
        stream,
        &mut buf,
        Deadlines::with_idle(Duration::from_secs(10)),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_hostile_messages_are_refused() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = nick_config(&dir.path().join("bob"), &index.addr_string(), "bob");
    config.message_burst = 100; // this test is about content, not rate
    let mut bob = start_peer_with(config).await;
    bob.wait_registered(0).await;

    // The sender refuses before asking anyone anything.
    let before = index.state.request_counts();
    let huge = "x".repeat(common::limits::MAX_MESSAGE_LEN + 1);
    let err = send_message(&index.addr_string(), "bob", "ana", &huge)
        .await
        .unwrap_err();
    assert!(matches!(err, MessageError::BadText(_)), "{err:?}");
    assert!(err.to_string().contains("4096"), "{err}");
    let mut handled = counts_since(&index, &before);
    handled.remove("Heartbeat");
    assert!(handled.is_empty(), "{handled:?}");

    // The receiver refuses what a hand-made client sends anyway, and the
    // connection stays usable.
    let mut stream = raw_connection(&bob.addr()).await;
    for (from, text) in [
        ("ana", huge.as_str()),
        ("ana", "\x1b]0;pwned\x07"),
        ("not a nick", "hi"),
        ("ana", ""),
    ] {
        let request = PeerRequest::Message {
            from: from.into(),
            text: text.into(),
        };
        wire::send_message(&mut stream, &request).await.unwrap();
        match answer(&mut stream).await {
            PeerResponse::Error {
                code: PeerErrorCode::BadRequest,
                ..
            } => {}
            other => panic!("{from:?} {text:?} was answered {other:?}"),
        }
    }
    let ok = PeerRequest::Message {
        from: "ana".into(),
        text: "x".repeat(common::limits::MAX_MESSAGE_LEN),
    };
    wire::send_message(&mut stream, &ok).await.unwrap();
    assert_eq!(answer(&mut stream).await, PeerResponse::Delivered);
    assert_eq!(bob.daemon.inbox().received(), 1);
    drop(stream);
    bob.stop().await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_sender_is_limited() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = nick_config(&dir.path().join("bob"), &index.addr_string(), "bob");
    // No refill within the test, so the count cannot depend on its speed.
    config.message_burst = 3;
    config.message_refill = Duration::from_secs(3600);
    let mut bob = start_peer_with(config).await;
    bob.wait_registered(0).await;

    // Ten messages pipelined on one connection: the burst gets through.
    let mut stream = raw_connection(&bob.addr()).await;
    for i in 0..10 {
        let request = PeerRequest::Message {
            from: "ana".into(),
            text: format!("spam {i}"),
        };
        wire::write_message(&mut stream, &request).await.unwrap();
    }
    tokio::io::AsyncWriteExt::flush(&mut stream).await.unwrap();
    let mut delivered = 0;
    let mut limited = 0;
    for _ in 0..10 {
        match answer(&mut stream).await {
            PeerResponse::Delivered => delivered += 1,
            PeerResponse::Error {
                code: PeerErrorCode::RateLimited,
                ..
            } => limited += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((delivered, limited), (3, 7));
    drop(stream);

    // A new connection from the same address does not reset the limit.
    let err = send_message(&index.addr_string(), "bob", "ana", "one more")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MessageError::Refused {
                code: PeerErrorCode::RateLimited,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("too many messages"), "{err}");
    let texts: Vec<String> = bob
        .daemon
        .inbox()
        .recent()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["spam 0", "spam 1", "spam 2"]);
    bob.stop().await;
    index.stop().await;
}

/// The inbox says whether a sender's nickname belongs to the key its
/// connection proved (issue 16): the index lists that nickname's session
/// under the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_says_whether_the_sender_is_verified() {
    let index = start_index().await;
    let addr = index.addr_string();
    let dir = tempfile::tempdir().unwrap();
    let mut bob = start_nick(&dir.path().join("bob"), &addr, "bob").await;
    bob.wait_registered(0).await;
    // Ana's daemon runs in this process: her messages come with its key.
    let mut ana = start_nick(&dir.path().join("ana"), &addr, "ana").await;
    ana.wait_registered(0).await;
    // Carol is another node, holding her nickname under her own key.
    let carol = common::secure::Security::new(common::identity::Identity::generate(), None);
    let (welcome, _carol) = login_as(&addr, &carol, "carol", 7301).await;
    assert!(
        matches!(welcome, common::index_proto::IndexResponse::Welcome { .. }),
        "{welcome:?}"
    );

    for from in ["ana", "carol", "dave"] {
        send_message(&addr, "bob", from, &format!("hi from {from}"))
            .await
            .unwrap();
    }
    let seen: Vec<(String, Option<bool>)> = bob
        .daemon
        .inbox()
        .recent()
        .into_iter()
        .map(|m| (m.from, m.verified))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("ana".to_string(), Some(true)),
            // Claims Carol's nickname with another key.
            ("carol".to_string(), Some(false)),
            // Nobody holds it.
            ("dave".to_string(), Some(false)),
        ]
    );
    let on_disk = inbox::read_file(&inbox::inbox_file_in(&bob.share)).unwrap();
    assert_eq!(on_disk.last().unwrap().verified, Some(false));
    assert!(on_disk[0].sender_id.is_some());
    ana.stop().await;
    bob.stop().await;
    index.stop().await;
}
