//! Nicknames owned by node keys (issue 16), over real encrypted
//! connections: a nickname stays with the key that registered it after its
//! session ends, and that key logs in again at once, replacing its own
//! previous session.

use common::identity::Identity;
use common::index_proto::IndexResponse;
use common::secure::Security;
use tests::*;

fn refused_because(r: &IndexResponse, word: &str) -> bool {
    matches!(r, IndexResponse::Error { message, .. } if message.contains(word))
}

#[tokio::test]
async fn a_nickname_is_kept_for_its_key_and_its_key_comes_back_at_once() {
    let index = start_index().await;
    let addr = index.addr_string();
    let ana = Security::new(Identity::generate(), None);
    let mallory = Security::new(Identity::generate(), None);

    let (r, first) = login_as(&addr, &ana, "ana", 7101).await;
    assert!(matches!(r, IndexResponse::Welcome { .. }), "{r:?}");
    // Ana's connection dies unseen (no logout yet): she logs in again
    // with her key at once, from the same address, without waiting for the
    // old session's lease.
    let (r, second) = login_as(&addr, &ana, "ana", 7101).await;
    assert!(matches!(r, IndexResponse::Welcome { .. }), "{r:?}");
    drop(first);
    // While she is online, nobody else has it.
    let (r, _) = login_as(&addr, &mallory, "ana", 7102).await;
    assert!(refused_because(&r, "ana"), "{r:?}");
    // She goes offline: before this change, the next login took the name.
    drop(second);
    let peers_gone = || {
        let addr = addr.clone();
        async move {
            let mut c = peer::index_client::IndexClient::connect(&addr)
                .await
                .unwrap();
            c.stats().await.unwrap().peers == 0
        }
    };
    wait_until(
        "ana's session to end",
        std::time::Duration::from_secs(10),
        peers_gone,
    )
    .await;
    let (r, _) = login_as(&addr, &mallory, "ana", 7102).await;
    assert!(refused_because(&r, "reserved"), "{r:?}");
    let (r, _kept) = login_as(&addr, &ana, "ana", 7101).await;
    assert!(matches!(r, IndexResponse::Welcome { .. }), "{r:?}");
    index.stop().await;
}
