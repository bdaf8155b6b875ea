//! Running out of file descriptors (12.16). Alone in its test binary: it
//! lowers this process's descriptor limit and uses them all up.

use std::sync::Arc;
use std::time::Duration;

use common::id::content_info;
use tests::*;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use transfer::scan::{self, HashCache};

/// Opens files until the process is out of descriptors; returns them.
fn use_up_descriptors() -> Vec<std::fs::File> {
    let mut held = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if transfer::net::is_fd_exhaustion(&e) => return held,
            Err(e) => panic!("unexpected error while using up descriptors: {e}"),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn out_of_descriptors_withdraws_nothing_and_the_server_accepts_later() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let a = random_bytes(2 * common::CHUNK_SIZE, 51);
    let b = random_bytes(common::CHUNK_SIZE + 9, 52);
    write_file(&root, "a.bin", &a);
    write_file(&root, "sub/b.bin", &b);
    let mut cache =
        HashCache::load(Some(&root.join(".p2pshare")), &root).with_settle(Duration::ZERO);
    let first = scan::scan(&root, &mut cache);
    assert_eq!(first.len(), 2);
    assert_eq!(cache.hashed_total(), 2);

    // A chunk server, started while descriptors are free.
    let library = transfer::library::Library::new(root.clone());
    library.set_shared(first.clone());
    let listener = transfer::chunk_server::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
    tracker.spawn(transfer::chunk_server::serve(
        listener,
        library,
        4,
        Arc::new(transfer::chunk_server::UploadStats::default()),
        None,
        tracker.clone(),
        shutdown.clone(),
    ));

    // A downloader connected before the descriptors run out.
    let early = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut early, _) = transfer::net::client(early, common::hello::Protocol::Peer, None)
        .await
        .unwrap();

    let saved = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(256),
            maximum: saved.maximum,
        },
    )
    .unwrap();
    let mut held = use_up_descriptors();

    // Scanning now fails to open the folder: nothing is withdrawn or forgotten.
    let during = scan::scan(&root, &mut cache);
    assert_eq!(
        during.len(),
        2,
        "a scan short of descriptors withdrew files"
    );
    assert_eq!(cache.len(), 2, "a scan short of descriptors forgot hashes");
    assert!(
        cache.next_scan_in(Duration::from_secs(10)) < Duration::from_secs(10),
        "it is retried with backoff"
    );

    // The server cannot open the file for it: it says "busy" (come back
    // later), not an internal error that would drop this source for good.
    common::wire::send_message(
        &mut early,
        &common::peer_proto::PeerRequest::Chunk {
            id: content_info(&a).id,
            index: 0,
        },
    )
    .await
    .unwrap();
    let answer: common::peer_proto::PeerResponse = common::wire::expect_message(
        &mut early,
        &mut Vec::new(),
        common::wire::Deadlines::default(),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            answer,
            common::peer_proto::PeerResponse::Error {
                code: common::peer_proto::PeerErrorCode::Busy,
                ..
            }
        ),
        "{answer:?}"
    );

    // A client connects (one descriptor freed for its socket); the server
    // cannot accept it yet, and must neither die nor lose it.
    held.pop();
    let connecting = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        transfer::net::client(stream, common::hello::Protocol::Peer, None)
            .await
            .map(|_| ())
    });
    // Let the accept loop fail a few times.
    for _ in 0..20 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!connecting.is_finished(), "answered without a descriptor?");

    drop(held);
    setrlimit(Resource::Nofile, saved).unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("the server accepts again once descriptors are free")
        .unwrap();
    assert!(answered.is_ok(), "{answered:?}");

    // And a scan afterwards finds everything without hashing anything again.
    let after = scan::scan(&root, &mut cache);
    assert_eq!(after.len(), 2);
    assert_eq!(cache.hashed_total(), 2, "files were hashed again");
    assert!(after.iter().any(|e| e.info.id == content_info(&a).id));
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
}
