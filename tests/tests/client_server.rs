//! Client-server mode: the index server's store holds the files, `peer put`
//! uploads (verified, resumable, with a quota), and a client-server get
//! fetches from the server only.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::hello::Protocol;
use common::id::content_info;
use common::store_proto::{StoreErrorCode, StoreRequest, StoreResponse};
use common::wire::{self, Deadlines};
use peer::client_server::{put_file, PutError};
use peer::index_client::IndexClient;
use tests::*;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

async fn server_get(index: &str, target: &str, out: &std::path::Path) -> peer::DownloadOutcome {
    tests::server_get(index, target, out, test_engine())
        .await
        .expect("client-server get")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_then_get_is_byte_identical_and_names_never_clash() {
    let dir = tempfile::tempdir().unwrap();
    let (index, store) = start_index_with_store(&dir.path().join("store"), 1 << 30).await;
    let data = random_bytes(3 * common::CHUNK_SIZE + 77, 11);
    let file = write_file(&dir.path().join("mine"), "lecture notes.pdf", &data);

    let put = put_file(&index.addr_string(), &file, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(put.chunks_sent, 4);
    assert_eq!(put.stored_as, "lecture notes.pdf");
    assert_eq!(put.id, content_info(&data).id.to_hex());
    assert_eq!(
        std::fs::read(dir.path().join("store/lecture notes.pdf")).unwrap(),
        data
    );

    // Listed like any source, under the address we reached the server at.
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    let hits = client.search(vec!["lecture".into()], 0).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].sources, 1);
    let (_, _, sources) = client.lookup(hits[0].id).await.unwrap().unwrap();
    assert_eq!(sources[0].addr, index.addr_string());

    let out = dir.path().join("out");
    let got = server_get(&index.addr_string(), "lecture notes.pdf", &out).await;
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert_eq!(got.per_source.len(), 1);
    assert_eq!(got.per_source[0].addr, index.addr_string());
    assert!(store.uploads.chunks() >= 4);

    // The same content again: nothing to send.
    let again = put_file(&index.addr_string(), &file, CancellationToken::new())
        .await
        .unwrap();
    assert!(again.already_stored);
    assert_eq!(again.chunks_sent, 0);

    // Another content under the same name: stored beside it, never over it.
    let other = random_bytes(1000, 12);
    let file2 = write_file(&dir.path().join("theirs"), "lecture notes.pdf", &other);
    let clash = put_file(&index.addr_string(), &file2, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(clash.stored_as, "lecture notes (1).pdf");
    assert_eq!(
        std::fs::read(dir.path().join("store/lecture notes.pdf")).unwrap(),
        data
    );
    index.stop().await;
}

/// Connects to the store and starts uploading `info` as `name` by hand:
/// `Begin`, then the hash list. Returns the connection, its read buffer and
/// the answers to both.
async fn begin_upload(
    server: impl tokio::net::ToSocketAddrs,
    info: &common::id::ContentInfo,
    name: &str,
) -> (transfer::net::Conn, Vec<u8>, StoreResponse, StoreResponse) {
    let s = tokio::net::TcpStream::connect(server).await.unwrap();
    let (mut s, _) = transfer::net::client(s, Protocol::Store, None)
        .await
        .unwrap();
    let (mut buf, d) = (Vec::new(), Deadlines::default());
    wire::send_message(
        &mut s,
        &StoreRequest::Begin {
            id: info.id,
            name: name.into(),
            size: info.size,
        },
    )
    .await
    .unwrap();
    let begun: StoreResponse = wire::expect_message(&mut s, &mut buf, d).await.unwrap();
    let raw = info.hash_list_bytes();
    wire::send_message(
        &mut s,
        &StoreRequest::HashList {
            len: raw.len() as u32,
        },
    )
    .await
    .unwrap();
    s.write_all(&raw).await.unwrap();
    s.flush().await.unwrap();
    let ready: StoreResponse = wire::expect_message(&mut s, &mut buf, d).await.unwrap();
    (s, buf, begun, ready)
}

/// Starts an upload by hand and leaves after `chunks` chunks.
async fn partial_upload(server: &str, data: &[u8], name: &str, chunks: u32) {
    let info = content_info(data);
    let d = Deadlines::default();
    let (mut s, mut buf, begun, ready) = begin_upload(server, &info, name).await;
    assert_eq!(begun, StoreResponse::SendHashList);
    assert!(matches!(ready, StoreResponse::Ready { .. }), "{ready:?}");
    for i in 0..chunks {
        let chunk = &data[i as usize * common::CHUNK_SIZE..(i as usize + 1) * common::CHUNK_SIZE];
        wire::send_message(
            &mut s,
            &StoreRequest::Chunk {
                index: i,
                len: chunk.len() as u32,
            },
        )
        .await
        .unwrap();
        s.write_all(chunk).await.unwrap();
        s.flush().await.unwrap();
    }
    // Finish is the sync point: the chunks before it have been written.
    wire::send_message(&mut s, &StoreRequest::Finish)
        .await
        .unwrap();
    let r: StoreResponse = wire::expect_message(&mut s, &mut buf, d).await.unwrap();
    assert!(
        matches!(
            r,
            StoreResponse::Error {
                code: StoreErrorCode::Incomplete,
                ..
            }
        ),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_put_resumes_and_bad_chunks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (index, store) = start_index_with_store(&dir.path().join("store"), 1 << 30).await;
    let data = random_bytes(5 * common::CHUNK_SIZE, 21);
    let file = write_file(&dir.path().join("mine"), "big.iso", &data);
    partial_upload(&index.addr_string(), &data, "big.iso", 2).await;
    assert_eq!(store.chunks_received.load(Ordering::Relaxed), 2);
    assert!(
        !dir.path().join("store/big.iso").exists(),
        "published before complete"
    );

    let put = put_file(&index.addr_string(), &file, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((put.chunks_resumed, put.chunks_sent), (2, 3));
    assert_eq!(
        std::fs::read(dir.path().join("store/big.iso")).unwrap(),
        data
    );

    // A chunk that does not match the hash list is refused on arrival.
    let other = random_bytes(2 * common::CHUNK_SIZE, 22);
    let info = content_info(&other);
    let d = Deadlines::default();
    let (mut s, mut buf, _, _) = begin_upload(index.addr, &info, "x.bin").await;
    wire::send_message(
        &mut s,
        &StoreRequest::Chunk {
            index: 0,
            len: common::CHUNK_SIZE as u32,
        },
    )
    .await
    .unwrap();
    s.write_all(&vec![0u8; common::CHUNK_SIZE]).await.unwrap();
    s.flush().await.unwrap();
    let r: StoreResponse = wire::expect_message(&mut s, &mut buf, d).await.unwrap();
    assert!(
        matches!(
            r,
            StoreResponse::Error {
                code: StoreErrorCode::BadChunk,
                ..
            }
        ),
        "{r:?}"
    );
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_over_the_quota_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _store) = start_index_with_store(&dir.path().join("store"), 1 << 20).await;
    let small = write_file(
        &dir.path().join("mine"),
        "small.txt",
        &random_bytes(600_000, 1),
    );
    let big = write_file(
        &dir.path().join("mine"),
        "big.bin",
        &random_bytes(600_000, 2),
    );
    put_file(&index.addr_string(), &small, CancellationToken::new())
        .await
        .unwrap();
    let err = put_file(&index.addr_string(), &big, CancellationToken::new())
        .await
        .unwrap_err();
    match &err {
        PutError::Refused { code, .. } => assert_eq!(*code, StoreErrorCode::QuotaExceeded),
        other => panic!("expected a quota refusal, got {other:?}"),
    }
    assert!(err.to_string().contains("quota"), "{err}");
    assert!(!dir.path().join("store/big.bin").exists());

    // An index without a store says so.
    let plain = start_index().await;
    let err = put_file(&plain.addr_string(), &small, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, PutError::NoStore(_)), "{err:?}");
    plain.stop().await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_server_get_never_contacts_another_peer() {
    let dir = tempfile::tempdir().unwrap();
    let (index, store) = start_index_with_store(&dir.path().join("store"), 1 << 30).await;
    let data = random_bytes(4 * common::CHUNK_SIZE, 31);
    let file = write_file(&dir.path().join("mine"), "shared.bin", &data);
    put_file(&index.addr_string(), &file, CancellationToken::new())
        .await
        .unwrap();
    // A hybrid peer offers the very same file through the same index.
    write_file(&dir.path().join("peer"), "shared.bin", &data);
    let mut other = start_peer(&dir.path().join("peer"), &index.addr_string()).await;
    other.wait_registered(1).await;
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    let (_, _, sources) = client
        .lookup(content_info(&data).id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sources.len(), 2, "store and peer are both listed");

    let got = server_get(&index.addr_string(), "shared.bin", &dir.path().join("out")).await;
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert_eq!(other.chunks_served(), 0);
    assert_eq!(
        other.daemon.uploads().connections.load(Ordering::Relaxed),
        0,
        "the client-server client connected to a peer"
    );
    assert_eq!(store.uploads.chunks(), 4);
    other.stop().await;
    index.stop().await;
}

/// An index whose store in `dir` has `quota`, expires abandoned part files
/// after `expiry` and allows `pending` unfinished uploads per client.
async fn store_with(
    dir: &std::path::Path,
    quota: u64,
    expiry: std::time::Duration,
    pending: usize,
) -> (Index, Arc<index_server::store::Store>) {
    init_logging();
    let mut store = index_server::store::StoreConfig::new(dir.to_path_buf());
    store.quota = quota;
    store.rescan_interval = std::time::Duration::from_millis(100);
    store.part_expiry = expiry;
    store.max_pending_per_client = pending;
    let server = index_server::Server::bind(index_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: Some(store),
        ..Default::default()
    })
    .await
    .unwrap();
    let store = server.store().unwrap();
    (tests::run_index(server), store)
}

fn part_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect()
}

/// Issue 18.6: uploads begun and abandoned count against the quota, are
/// capped per client, keep their part for a resume, and expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_count_against_the_quota_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let size = 4 * common::CHUNK_SIZE;
    let (index, store) = store_with(
        &store_dir,
        4 * size as u64,
        std::time::Duration::from_millis(1500),
        3,
    )
    .await;
    // Three connections each begin a 1 MiB upload and leave.
    let mut abandoned = Vec::new();
    for seed in 0..3 {
        let data = random_bytes(size, 100 + seed);
        let (s, _, begun, ready) = begin_upload(index.addr, &content_info(&data), "junk.bin").await;
        assert_eq!(begun, StoreResponse::SendHashList);
        assert!(matches!(ready, StoreResponse::Ready { .. }), "{ready:?}");
        drop(s);
        abandoned.push(data);
    }
    wait_until(
        "the abandoned parts to be counted",
        std::time::Duration::from_secs(10),
        || {
            let used = store.used_bytes();
            async move { used == 3 * size as u64 }
        },
    )
    .await;
    assert_eq!(part_files(&store_dir).len(), 3);
    // A fourth pending upload from the same client is refused...
    let fourth = random_bytes(size, 104);
    let (_s, _, begun, _) = begin_upload(index.addr, &content_info(&fourth), "more.bin").await;
    assert!(
        matches!(
            begun,
            StoreResponse::Error {
                code: StoreErrorCode::TooManyPending,
                ..
            }
        ),
        "{begun:?}"
    );
    // ...and the quota counts the parts: 3 of 4 MiB used, 2 MiB do not fit.
    let big = write_file(
        &dir.path().join("mine"),
        "big.bin",
        &random_bytes(2 * size, 105),
    );
    let err = put_file(&index.addr_string(), &big, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("quota") || err.to_string().contains("unfinished"),
        "{err}"
    );
    // A resume within the expiry keeps its part (no new pending upload).
    partial_upload(&index.addr_string(), &abandoned[0], "junk.bin", 2).await;
    let resumed = write_file(&dir.path().join("mine"), "junk.bin", &abandoned[0]);
    let put = put_file(&index.addr_string(), &resumed, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(put.chunks_resumed, 2);
    // The other two expire: their parts are deleted and no longer counted.
    wait_until(
        "the abandoned parts to expire",
        std::time::Duration::from_secs(20),
        || {
            let parts = part_files(&store_dir).len();
            async move { parts == 0 }
        },
    )
    .await;
    assert_eq!(store.used_bytes(), store.stored_bytes());
    put_file(&index.addr_string(), &big, CancellationToken::new())
        .await
        .expect("the quota is free again");
    index.stop().await;
}

/// A tmpfs of `bytes` mounted on a temporary folder, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// Issue 18.7: a store whose disk is too small says so with figures when
/// the upload begins, and leaves no part file behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_says_it_is_out_of_space() {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").map_or(true, |m| m.uid() != 0) {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let Some(disk) = SmallDisk::mount(2 << 20) else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    let (index, _store) = store_with(
        disk.dir.path(),
        1 << 30,
        std::time::Duration::from_secs(3600),
        4,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let big = write_file(dir.path(), "big.bin", &random_bytes(3 << 20, 7));
    let err = put_file(&index.addr_string(), &big, CancellationToken::new())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("the server is out of space (3145728 bytes needed,"),
        "{message}"
    );
    assert!(
        matches!(
            err,
            PutError::Refused {
                code: StoreErrorCode::OutOfSpace,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        part_files(disk.dir.path()).is_empty(),
        "a part file was left"
    );
    // A file that fits is stored.
    let small = write_file(dir.path(), "small.bin", &random_bytes(1 << 20, 8));
    put_file(&index.addr_string(), &small, CancellationToken::new())
        .await
        .expect("a file that fits is stored");
    index.stop().await;
}
