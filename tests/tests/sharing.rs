//! A peer's shared folder: only stable files are shared, a stale id is
//! noticed and withdrawn, scan errors never withdraw, a missing share root
//! is never created, and each problem is warned about once.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::id::{content_info, FileId};
use peer::download::{DownloadError, DownloadRequest, Progress};
use tests::*;
use tokio_util::sync::CancellationToken;
use transfer::library::SharedEntry;
use transfer::scan::{self, HashCache};

async fn fetch(
    id: FileId,
    sources: Vec<String>,
    out: &Path,
) -> Result<peer::DownloadOutcome, DownloadError> {
    peer::download::download(
        DownloadRequest {
            id,
            name: "file.bin".into(),
            sources,
            out_dir: out.to_path_buf(),
        },
        test_engine(),
        Arc::new(Progress::default()),
        None,
        peer::download::StartOnly,
        CancellationToken::new(),
    )
    .await
}

/// Whether the index lists `id` (from any holder).
async fn index_has(index: &str, id: FileId) -> bool {
    let mut c = peer::index_client::IndexClient::connect(index)
        .await
        .unwrap();
    c.lookup(id).await.unwrap().is_some()
}

/// Writes `data` to `path` in `pieces` pieces, one every `every`, on a
/// thread; the file exists (empty) when this returns.
fn slow_writer(
    path: std::path::PathBuf,
    data: Vec<u8>,
    pieces: usize,
    every: Duration,
) -> std::thread::JoinHandle<()> {
    let mut file = std::fs::File::create(&path).unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        let piece = data.len().div_ceil(pieces);
        for part in data.chunks(piece) {
            file.write_all(part).unwrap();
            file.flush().unwrap();
            std::thread::sleep(every);
        }
    })
}

// 12.14: a file being written is shared only once it is stable.
#[test]
fn a_file_being_written_is_not_shared_until_it_settles() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let data = random_bytes(3 * common::CHUNK_SIZE + 100, 41);
    let path = root.join("growing.bin");
    // Far above the writer's pauses (50 ms), so a busy machine does not
    // make a pause look like the end of the file.
    let settle = Duration::from_secs(1);
    let mut cache = HashCache::default().with_settle(settle);
    let writer = slow_writer(path.clone(), data.clone(), 24, Duration::from_millis(50));
    // While it grows (about 1.2 s), no scan shares it, whatever its size.
    while !writer.is_finished() {
        let shared = scan::scan(&root, &mut cache);
        assert!(
            shared.is_empty(),
            "shared while still being written: {} of {} bytes",
            shared[0].size,
            data.len()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    writer.join().unwrap();
    // Once it has stayed unchanged for the settle period, it is shared whole.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let shared = loop {
        let shared = scan::scan(&root, &mut cache);
        if !shared.is_empty() {
            break shared;
        }
        assert!(cache.pending() == 1, "the file waits to settle");
        assert!(
            cache.next_scan_in(Duration::from_secs(3600)) <= settle + Duration::from_millis(10)
        );
        assert!(std::time::Instant::now() < deadline, "never shared");
        std::thread::sleep(Duration::from_millis(30));
    };
    assert_eq!(shared.len(), 1);
    assert_eq!(shared[0].info.id, content_info(&data).id);
    assert_eq!(cache.hashed_total(), 1, "hashed once, when stable");
}

// 12.14, the daemon: `settle` reaches the rescan loop, which wakes up for a
// pending file without waiting for the (here hour-long) rescan interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_registers_a_growing_file_once_stable_with_its_final_id() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let data = random_bytes(4 * common::CHUNK_SIZE, 42);
    let writer = slow_writer(
        share.join("growing.bin"),
        data.clone(),
        20,
        Duration::from_millis(50),
    );
    let mut config = peer_config(&share, &index.addr_string());
    config.settle = Duration::from_secs(1);
    config.rescan_interval = Duration::from_secs(3600);
    let mut peer = start_peer_with(config).await;
    assert_eq!(peer.daemon.library().scans(), 1, "the scan at start");
    while !writer.is_finished() {
        let shared = peer.daemon.library().shared();
        assert!(shared.is_empty(), "a partial file was shared");
        // Waiting for it costs a stat of that file, not a walk of the folder.
        assert_eq!(
            peer.daemon.library().scans(),
            1,
            "the folder was walked again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.join().unwrap();
    peer.wait_registered(1).await;
    assert_eq!(
        peer.daemon.library().scans(),
        2,
        "one walk once it was stable"
    );
    let shared = peer.daemon.library().shared();
    assert!(shared.contains_key(&content_info(&data).id));
    assert!(index_has(&index.addr_string(), content_info(&data).id).await);
    peer.stop().await;
    index.stop().await;
}

// 12.15: an edit in place with the same size and the old mtime put back is
// noticed (ctime), even with no download, and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_with_its_old_mtime_restored_changes_the_id() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    let data = random_bytes(32 * common::CHUNK_SIZE, 43);
    let path = write_file(&share, "doc.bin", &data);
    let mut peer = start_peer(&share, &index.addr_string()).await;
    peer.wait_registered(1).await;
    let old_id = content_info(&data).id;
    assert!(peer.daemon.library().shared().contains_key(&old_id));

    let old_mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut edited = data.clone();
    edited[5 * common::CHUNK_SIZE..6 * common::CHUNK_SIZE].fill(7);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.write_all_at(
            &edited[5 * common::CHUNK_SIZE..6 * common::CHUNK_SIZE],
            5 * common::CHUNK_SIZE as u64,
        )
        .unwrap();
        f.set_modified(old_mtime).unwrap();
    }
    assert_eq!(std::fs::read(&path).unwrap(), edited);
    let new_id = content_info(&edited).id;
    let addr = index.addr_string();
    wait_until(
        "the new id registered and the old one withdrawn",
        Duration::from_secs(20),
        || {
            let addr = addr.clone();
            async move { index_has(&addr, new_id).await && !index_has(&addr, old_id).await }
        },
    )
    .await;
    let got = fetch(new_id, vec![peer.addr()], &dir.path().join("out"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(got.path).unwrap(), edited);
    peer.stop().await;
    index.stop().await;
}

// 12.15: a source whose hash cache is wrong about a file (same stamp, other
// content: nothing on disk tells) learns it from a downloader's bad-chunk
// report, withdraws the stale id and registers the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_chunk_report_makes_the_source_withdraw_a_stale_id() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    let real = random_bytes(8 * common::CHUNK_SIZE, 44);
    let claimed = random_bytes(8 * common::CHUNK_SIZE, 45);
    let path = write_file(&share, "doc.bin", &real);
    {
        // A cache that says doc.bin, in its current state, is `claimed`.
        let root = share.canonicalize().unwrap();
        let mut cache = HashCache::load(Some(&root.join(".p2pshare")), &root);
        let meta = std::fs::metadata(&path).unwrap();
        cache.remember(Arc::new(SharedEntry::new(
            "doc.bin".into(),
            root.join("doc.bin"),
            &meta,
            Arc::new(content_info(&claimed)),
        )));
    }
    let stale = content_info(&claimed).id;
    let right = content_info(&real).id;
    let mut peer = start_peer(&share, &index.addr_string()).await;
    peer.wait_registered(1).await;
    assert!(
        peer.daemon.library().shared().contains_key(&stale),
        "the cache is trusted at first"
    );

    let err = fetch(stale, vec![peer.addr()], &dir.path().join("out"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("verification"), "{err}");
    let addr = index.addr_string();
    wait_until(
        "the stale id withdrawn and the right one registered",
        Duration::from_secs(20),
        || {
            let addr = addr.clone();
            async move { index_has(&addr, right).await && !index_has(&addr, stale).await }
        },
    )
    .await;
    let got = fetch(right, vec![peer.addr()], &dir.path().join("out"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(got.path).unwrap(), real);
    peer.stop().await;
    index.stop().await;
}

// 12.15: reports are rate-limited per file, and a false one costs one chunk
// read, never a rehash.
#[test]
fn bad_chunk_reports_are_rate_limited_and_checked_before_rehashing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let data = random_bytes(4 * common::CHUNK_SIZE, 46);
    write_file(&root, "a.bin", &data);
    let library = transfer::library::Library::new(root.clone());
    let mut cache = HashCache::default().with_settle(Duration::ZERO);
    library.set_shared(scan::scan(&root, &mut cache));
    let id = content_info(&data).id;
    assert!(library.report_bad_chunk(id, 1));
    assert!(
        !library.report_bad_chunk(id, 2),
        "a second report within the cooldown is ignored"
    );
    assert!(
        !library.report_bad_chunk(id, 99),
        "a chunk the file does not have"
    );
    assert!(
        !library.report_bad_chunk(FileId([9; 32]), 0),
        "a file not held"
    );
    scan::check_reports(&library, &mut cache);
    library.set_shared(scan::scan(&root, &mut cache));
    assert_eq!(cache.hashed_total(), 1, "a false report does not rehash");
    assert!(library.shared().contains_key(&id));
}

// 12.17: a share moved away and back is not recreated meanwhile, and its
// hashes survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_moved_away_and_back_is_not_recreated_nor_rehashed() {
    use std::os::unix::fs::MetadataExt;
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    let away = dir.path().join("away");
    write_file(&share, "a.bin", &random_bytes(3 * common::CHUNK_SIZE, 47));
    write_file(
        &share,
        "sub/b.bin",
        &random_bytes(2 * common::CHUNK_SIZE, 48),
    );
    let mut peer = start_peer(&share, &index.addr_string()).await;
    peer.wait_registered(2).await;
    let cache_file = share.join(".p2pshare/hashes.bin");
    let cache_ino = std::fs::metadata(&cache_file).unwrap().ino();

    std::fs::rename(&share, &away).unwrap();
    peer.wait_registered(0).await;
    // Several more scans while it is away: none may create it again.
    let scans = peer.daemon.library().scans();
    let library = peer.daemon.library().clone();
    wait_until("five more scans", Duration::from_secs(10), || {
        let library = library.clone();
        async move { library.scans() >= scans + 5 }
    })
    .await;
    assert!(
        !share.exists(),
        "the daemon created the missing share folder again"
    );

    std::fs::rename(&away, &share).unwrap();
    peer.wait_registered(2).await;
    assert_eq!(
        std::fs::metadata(&cache_file).unwrap().ino(),
        cache_ino,
        "the hash cache was rewritten: files were hashed again"
    );
    peer.stop().await;
    index.stop().await;
}

/// Log lines written while `f` runs, at `info` and above, without colours.
fn logs_of<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

// 12.18: a symlink loop (and other problems) are warned about once, not on
// every rescan; a problem that goes away is said to be gone, and warned
// about again if it comes back.
#[test]
fn each_problem_in_the_share_is_warned_about_once() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    write_file(&root, "ok.bin", b"fine");
    symlink(root.join("loop-b"), root.join("loop-a")).unwrap();
    symlink(root.join("loop-a"), root.join("loop-b")).unwrap();
    symlink(&root, root.join("self")).unwrap();
    symlink("/nonexistent/nowhere", root.join("dangling")).unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    symlink("..", root.join("sub/up")).unwrap();
    let mut cache = HashCache::default().with_settle(Duration::ZERO);
    let warnings = |text: &str| text.lines().filter(|l| l.contains("WARN")).count();

    let (shared, first) = logs_of(|| scan::scan(&root, &mut cache));
    assert_eq!(shared.len(), 1);
    assert_eq!(warnings(&first), 5, "one per problem:\n{first}");
    for _ in 0..3 {
        let (_, again) = logs_of(|| scan::scan(&root, &mut cache));
        assert_eq!(warnings(&again), 0, "warned again:\n{again}");
    }
    std::fs::remove_file(root.join("self")).unwrap();
    let (_, fixed) = logs_of(|| scan::scan(&root, &mut cache));
    assert_eq!(warnings(&fixed), 0, "{fixed}");
    assert!(fixed.contains("no longer a problem"), "{fixed}");
    symlink(&root, root.join("self")).unwrap();
    let (_, back) = logs_of(|| scan::scan(&root, &mut cache));
    assert_eq!(
        warnings(&back),
        1,
        "a problem that came back is warned about:\n{back}"
    );
}

// 12.17, the scan itself: a missing root withdraws everything but keeps
// every hash, logs once, and nothing is written at its path.
#[test]
fn a_missing_root_is_reported_once_and_keeps_its_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("share");
    write_file(&root, "a.bin", b"alpha");
    let root = root.canonicalize().unwrap();
    let mut cache =
        HashCache::load(Some(&root.join(".p2pshare")), &root).with_settle(Duration::ZERO);
    assert_eq!(scan::scan(&root, &mut cache).len(), 1);
    std::fs::rename(&root, dir.path().join("away")).unwrap();
    let (shared, first) = logs_of(|| scan::scan(&root, &mut cache));
    assert!(shared.is_empty());
    assert_eq!(
        first.lines().filter(|l| l.contains("missing")).count(),
        1,
        "{first}"
    );
    let (_, again) = logs_of(|| scan::scan(&root, &mut cache));
    assert!(!again.contains("WARN"), "{again}");
    assert!(!root.exists());
    assert_eq!(cache.len(), 1, "hashes kept while missing");
    std::fs::rename(dir.path().join("away"), &root).unwrap();
    assert_eq!(scan::scan(&root, &mut cache).len(), 1);
    assert_eq!(cache.hashed_total(), 1, "not hashed again on return");
}

// 12.14, "or closed after writing": a download the daemon finished into its
// own share is shared at once, not after the settle period (an hour here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_finished_into_the_share_is_shared_without_settling() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(6 * common::CHUNK_SIZE, 49);
    write_file(&dir.path().join("a"), "movie.bin", &data);
    let mut a = start_peer(&dir.path().join("a"), &index.addr_string()).await;
    a.wait_registered(1).await;
    let mut config = peer_config(&dir.path().join("b"), &index.addr_string());
    config.settle = Duration::from_secs(3600);
    let b = start_peer_with(config).await;
    let id = content_info(&data).id;
    let share = b.daemon.library().root().to_path_buf();
    let got = b
        .daemon
        .download(id, share, test_engine(), Arc::new(Progress::default()))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    let library = b.daemon.library().clone();
    wait_until(
        "the finished download shared",
        Duration::from_secs(10),
        || {
            let library = library.clone();
            async move { library.shared().contains_key(&id) }
        },
    )
    .await;
    a.stop().await;
    b.stop().await;
    index.stop().await;
}

// A finished download published into the share is shared with the hashes
// its chunks were verified against, not read and hashed again; one changed
// after it was published is hashed as any other file.
#[test]
fn a_verified_download_is_shared_without_hashing_it_again_unless_it_changed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let library = transfer::library::Library::new(root.clone());
    let mut cache = HashCache::default().with_settle(Duration::from_secs(3600));
    let data = random_bytes(3 * common::CHUNK_SIZE + 11, 7);
    let path = write_file(&root, "fetched.bin", &data);
    let stamp = transfer::library::FileStamp::of(&std::fs::metadata(&path).unwrap());
    library.downloaded(&path, stamp, Arc::new(content_info(&data)));
    scan::take_closed(&library, &mut cache);
    let shared = scan::scan(&root, &mut cache);
    assert_eq!(shared.len(), 1);
    assert_eq!(shared[0].info.id, content_info(&data).id);
    assert_eq!(cache.hashed_total(), 0, "taken from the download");

    // Changed between publishing and the scan: its stamp no longer matches.
    let other = random_bytes(2 * common::CHUNK_SIZE, 8);
    let path = write_file(&root, "changed.bin", &data);
    let stamp = transfer::library::FileStamp::of(&std::fs::metadata(&path).unwrap());
    std::fs::write(&path, &other).unwrap();
    library.downloaded(&path, stamp, Arc::new(content_info(&data)));
    scan::take_closed(&library, &mut cache);
    let shared = scan::scan(&root, &mut cache);
    let changed = shared.iter().find(|e| e.rel == "changed.bin").unwrap();
    assert_eq!(
        changed.info.id,
        content_info(&other).id,
        "hashed as it is now"
    );
    assert_eq!(cache.hashed_total(), 1);
}
