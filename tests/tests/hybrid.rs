//! The hybrid model end to end: share, search, browse and get across peers.

use std::sync::Arc;
use std::time::Duration;

use common::id::content_info;
use peer::download::{DownloadError, DownloadRequest, Progress};
use peer::index_client::IndexClient;
use peer::pipeline::FetchError;
use tests::*;
use tokio_util::sync::CancellationToken;

async fn get(
    index: &str,
    target: &str,
    out: &std::path::Path,
) -> Result<peer::DownloadOutcome, FetchError> {
    hybrid_get(index, target, out, test_engine()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_search_browse_and_get_across_three_peers() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let large = random_bytes(3 * common::CHUNK_SIZE + 12_345, 1);
    let spaced = random_bytes(1000, 2);
    write_file(&dir.path().join("a"), "big file.bin", &large);
    write_file(&dir.path().join("a"), "empty.txt", b"");
    write_file(
        &dir.path().join("b"),
        "música/canción número 1.ogg",
        &spaced,
    );
    write_file(&dir.path().join("b"), ".hidden-not-shared", b"secret");
    let mut a = start_peer(&dir.path().join("a"), &index.addr_string()).await;
    let mut b = start_peer(&dir.path().join("b"), &index.addr_string()).await;
    let mut c = start_peer(&dir.path().join("c"), &index.addr_string()).await;
    a.wait_registered(2).await;
    b.wait_registered(1).await;
    c.wait_registered(0).await;

    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    let stats = client.stats().await.unwrap();
    assert_eq!(
        (stats.peers, stats.files, stats.bytes),
        (3, 3, large.len() as u64 + 1000)
    );

    let hits = client
        .search(vec!["CANCIÓN".into(), "ogg".into()], 0)
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].name, "música/canción número 1.ogg");
    assert_eq!(hits[0].id, content_info(&spaced).id);
    assert_eq!(hits[0].sources, 1);
    assert!(client
        .search(vec!["hidden".into()], 0)
        .await
        .unwrap()
        .is_empty());
    assert!(client
        .search(vec!["big".into(), "nothing".into()], 0)
        .await
        .unwrap()
        .is_empty());

    let listing = client.browse(&a.addr()).await.unwrap();
    let mut names: Vec<_> = listing.iter().map(|f| f.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["big file.bin", "empty.txt"]);

    let out = dir.path().join("c-downloads");
    // By id.
    let got = get(
        &index.addr_string(),
        &content_info(&large).id.to_hex(),
        &out,
    )
    .await
    .unwrap();
    assert_eq!(got.path, out.join("big file.bin"));
    assert_eq!(std::fs::read(&got.path).unwrap(), large);
    // By exact name, including the empty file and a non-ASCII name.
    let got = get(&index.addr_string(), "empty.txt", &out).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), b"");
    assert_eq!(got.size, 0);
    let got = get(&index.addr_string(), "canción número 1.ogg", &out)
        .await
        .unwrap();
    assert_eq!(got.path, out.join("canción número 1.ogg"));
    assert_eq!(std::fs::read(&got.path).unwrap(), spaced);
    // No partial files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    for p in [a, b, c] {
        p.stop().await;
    }
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_uses_at_least_two_sources() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(64 * common::CHUNK_SIZE, 3);
    write_file(&dir.path().join("a"), "shared.bin", &data);
    write_file(&dir.path().join("b"), "shared.bin", &data);
    let mut a = start_peer(&dir.path().join("a"), &index.addr_string()).await;
    let mut b = start_peer(&dir.path().join("b"), &index.addr_string()).await;
    a.wait_registered(1).await;
    b.wait_registered(1).await;

    let got = get(&index.addr_string(), "shared.bin", &dir.path().join("out"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert_eq!(got.sources_used, 2, "{:?}", got.per_source);
    assert!(got.per_source.iter().all(|s| s.chunks > 0));
    // The peers' own counters agree: both uploaded.
    assert!(a.chunks_served() > 0 && b.chunks_served() > 0);
    assert!(a.chunks_served() + b.chunks_served() >= 64);
    a.stop().await;
    b.stop().await;
    index.stop().await;
}

/// The fast paths end to end: sources serve from the page cache with
/// `sendfile` or, for pages not cached (dropped here where the file system
/// allows), by reading; the downloader writes past the page cache, the
/// unaligned tail through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_copy_serving_and_direct_writes_keep_every_byte() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(24 * common::CHUNK_SIZE + 1234, 31);
    write_file(&dir.path().join("a"), "tail.bin", &data);
    let dropped = write_file(&dir.path().join("b"), "tail.bin", &data);
    let mut a = start_peer(&dir.path().join("a"), &index.addr_string()).await;
    let mut b = start_peer(&dir.path().join("b"), &index.addr_string()).await;
    a.wait_registered(1).await;
    b.wait_registered(1).await;
    let drop_cache = || {
        let file = std::fs::File::open(&dropped).unwrap();
        file.sync_all().unwrap();
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
    };
    let index_addr = index.addr_string();
    let get_direct = |out: &'static str| {
        let engine = peer::EngineConfig {
            direct_writes_from: Some(0),
            ..test_engine()
        };
        let out = dir.path().join(out);
        let index_addr = index_addr.clone();
        async move { tests::hybrid_get(&index_addr, "tail.bin", &out, engine).await }
    };

    drop_cache();
    let got = get_direct("out1").await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);

    // From the source whose pages were dropped alone.
    a.stop().await;
    drop_cache();
    let got = get_direct("out2").await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert_eq!(got.sources_used, 1, "{:?}", got.per_source);
    assert!(b.chunks_served() >= 25);
    b.stop().await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_clash_gets_a_suffix_and_never_overwrites() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir.path().join("a"), "report.txt", b"from the network");
    let mut a = start_peer(&dir.path().join("a"), &index.addr_string()).await;
    a.wait_registered(1).await;
    let out = dir.path().join("out");
    write_file(&out, "report.txt", b"my own precious file");
    let got = get(&index.addr_string(), "report.txt", &out).await.unwrap();
    assert_eq!(got.path, out.join("report (1).txt"));
    assert_eq!(
        std::fs::read(out.join("report.txt")).unwrap(),
        b"my own precious file"
    );
    assert_eq!(std::fs::read(&got.path).unwrap(), b"from the network");
    a.stop().await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_files_and_dead_sources_give_clear_errors() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let err = get(&index.addr_string(), "nothing-like-this.txt", dir.path())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::Target(peer::target::ResolveError::NotFound { .. })
        ),
        "{err}"
    );
    let err = get(&index.addr_string(), &"ab".repeat(32), dir.path())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::NotOffered(_)), "{err}");
    assert!(err.to_string().contains("no online peer"));

    // A source list where nobody answers.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let request = DownloadRequest {
        id: content_info(b"x").id,
        name: "x".into(),
        sources: vec![dead_addr],
        out_dir: dir.path().to_path_buf(),
    };
    let err = peer::download::download(
        request,
        test_engine(),
        Arc::new(Progress::default()),
        None,
        peer::download::StartOnly,
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DownloadError::NoHashList(_)), "{err}");

    // The index is not running at all.
    let stopped = index.addr_string();
    index.stop().await;
    let err = get(&stopped, "x", dir.path()).await.unwrap_err();
    assert!(err.to_string().contains("cannot reach the index"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_and_removed_files_are_noticed() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("a");
    write_file(&share, "first.txt", b"one");
    let mut a = start_peer(&share, &index.addr_string()).await;
    a.wait_registered(1).await;
    write_file(&share, "sub/second.txt", b"two");
    a.wait_registered(2).await;
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    assert_eq!(
        client.search(vec!["second".into()], 0).await.unwrap().len(),
        1
    );
    std::fs::remove_file(share.join("first.txt")).unwrap();
    a.wait_registered(1).await;
    assert!(client
        .search(vec!["first".into()], 0)
        .await
        .unwrap()
        .is_empty());
    a.stop().await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_out_of_the_share_is_not_served() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(&dir.path().join("private"), "secret.txt", b"top secret");
    let share = dir.path().join("share");
    write_file(&share, "inside.txt", b"public");
    std::os::unix::fs::symlink(&secret, share.join("link-out.txt")).unwrap();
    std::os::unix::fs::symlink(share.join("inside.txt"), share.join("link-in.txt")).unwrap();
    let mut a = start_peer(&share, &index.addr_string()).await;
    a.wait_registered(1).await; // inside.txt and link-in.txt have the same id
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    assert!(client
        .search(vec!["secret".into()], 0)
        .await
        .unwrap()
        .is_empty());
    assert!(client
        .search(vec!["link".into(), "out".into()], 0)
        .await
        .unwrap()
        .is_empty());
    assert!(a
        .daemon
        .library()
        .get(&content_info(b"top secret").id)
        .is_none());
    a.stop().await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_does_not_rehash_unchanged_files() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("a");
    write_file(&share, "file.bin", &random_bytes(100_000, 9));
    let mut a = start_peer(&share, &index.addr_string()).await;
    a.wait_registered(1).await;
    a.stop().await;
    let cache = share.join(".p2pshare/hashes.bin");
    assert!(cache.exists(), "hash cache written");
    let before = std::fs::metadata(&cache).unwrap().modified().unwrap();
    let mut a = start_peer(&share, &index.addr_string()).await;
    a.wait_registered(1).await;
    // Nothing was hashed, so the cache was not rewritten.
    assert_eq!(
        std::fs::metadata(&cache).unwrap().modified().unwrap(),
        before
    );
    a.stop().await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_lists_a_peer_under_its_advertised_address() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir.path().join("a"), "f.txt", b"f");
    let mut config = peer_config(&dir.path().join("a"), &index.addr_string());
    // A host name the index can resolve (one that does not is refused),
    // naming the port the peer really listens on: the index publishes an
    // advertised address only once the peer answers its dial-back there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.advertise = Some(format!("localhost:{port}"));
    let mut a = start_peer_with(config).await;
    a.wait_registered(1).await;
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    let (_, _, sources) = client.lookup(content_info(b"f").id).await.unwrap().unwrap();
    assert_eq!(sources[0].addr, format!("localhost:{port}"));
    a.stop().await;
    wait_until(
        "the stopped peer's files to be withdrawn",
        Duration::from_secs(10),
        || {
            let addr = index.addr_string();
            async move {
                let mut c = IndexClient::connect(&addr).await.unwrap();
                c.lookup(content_info(b"f").id).await.unwrap().is_none()
            }
        },
    )
    .await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_connections_over_the_cap_are_told_to_come_back_later() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(4 * common::CHUNK_SIZE, 21);
    write_file(&dir.path().join("a"), "f.bin", &data);
    let mut config = peer_config(&dir.path().join("a"), &index.addr_string());
    config.max_upload_connections = 1;
    let mut a = start_peer_with(config).await;
    a.wait_registered(1).await;
    // One connection holds the only place (upload slots are held only while
    // a chunk is sent: tests/tests/limits.rs).
    let holder = tokio::net::TcpStream::connect(a.addr()).await.unwrap();
    let (holder, _) = transfer::net::client(holder, common::hello::Protocol::Peer, None)
        .await
        .unwrap();
    let second = tokio::net::TcpStream::connect(a.addr()).await.unwrap();
    let err = transfer::net::client(second, common::hello::Protocol::Peer, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("busy"), "{err}");
    // Once the place is free, downloads go through again.
    drop(holder);
    let out = dir.path().join("out");
    let id = content_info(&data).id.to_hex();
    let fetched = std::sync::Arc::new(std::sync::Mutex::new(None));
    wait_until(
        "the upload connection place to be released",
        Duration::from_secs(10),
        || {
            let (index, out, id, fetched) = (
                index.addr_string(),
                out.clone(),
                id.clone(),
                fetched.clone(),
            );
            async move {
                match get(&index, &id, &out).await {
                    Ok(o) => {
                        *fetched.lock().unwrap() = Some(o);
                        true
                    }
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    let fetched = fetched.lock().unwrap().take().unwrap();
    assert_eq!(std::fs::read(fetched.path).unwrap(), data);
    a.stop().await;
    index.stop().await;
}
