//! The download path shared by every mode: busy sources are waited for,
//! content already present is not fetched again, a part file has one
//! owner, a daemon's fetch survives I/O failures, the endgame's spare
//! requests stay bounded, and every download keeps asking for sources
//! (churn). Issue 12 cases 8 to 13 and issue 18 case 8.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::id::content_info;
use peer::download::{DownloadRequest, Progress};
use peer::rate::RateLimiter;
use tests::fake::{self, Behaviour};
use tests::*;
use tokio_util::sync::CancellationToken;

/// Non-hidden files in `dir` (what a user sees there).
fn visible_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// 12.8: a peer at its upload cap answers Busy; the gets it refused wait
/// with backoff and all complete (before: "all its upload slots are busy").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_refused_as_busy_wait_and_complete() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(8 * common::CHUNK_SIZE, 81);
    let id = content_info(&data).id;
    write_file(&dir.path().join("share"), "popular.bin", &data);
    let mut config = peer_config(&dir.path().join("share"), &index.addr_string());
    // Two connection places: the other gets are told Busy at the hello.
    config.max_upload_connections = 2;
    config.max_upload_rate = Some(16 << 20);
    let mut seed = start_peer_with(config).await;
    seed.wait_registered(1).await;

    let gets = (0..8).map(|i| {
        let out = dir.path().join(format!("out{i}"));
        let index = index.addr_string();
        async move { hybrid_get(&index, &id.to_hex(), &out, test_engine()).await }
    });
    let results = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(gets),
    )
    .await
    .expect("every get finished within 60 s");
    for r in results {
        let got = r.expect("a busy source is waited for, not a failure");
        assert_eq!(std::fs::read(&got.path).unwrap(), data);
    }
    seed.stop().await;
    index.stop().await;
}

/// 12.8, without an index: a lone source that is busy for a while is asked
/// again, and a download whose only source stays busy gives up at its
/// retry timeout with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_source_is_asked_again_until_the_retry_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(4 * common::CHUNK_SIZE, 82);
    let info = content_info(&data);
    // A peer with one connection place, held by an idle connection we own.
    let index = start_index().await;
    write_file(&dir.path().join("share"), "f.bin", &data);
    let mut config = peer_config(&dir.path().join("share"), &index.addr_string());
    config.max_upload_connections = 1;
    let mut seed = start_peer_with(config).await;
    seed.wait_registered(1).await;
    let holder = tokio::net::TcpStream::connect(seed.addr()).await.unwrap();
    let (holder, _) = transfer::net::client(holder, common::hello::Protocol::Peer, None)
        .await
        .unwrap();
    let request = |out: &str| DownloadRequest {
        id: info.id,
        name: "f.bin".into(),
        sources: vec![seed.addr()],
        out_dir: dir.path().join(out),
    };
    let engine = peer::EngineConfig {
        retry_timeout: Duration::from_secs(1),
        ..test_engine()
    };
    let err = peer::download::download(
        request("out1"),
        engine.clone(),
        Arc::new(Progress::default()),
        None,
        peer::download::StartOnly,
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("busy"), "{err}");

    // The slot frees up while the download waits: it completes.
    let download = tokio::spawn(peer::download::download(
        request("out2"),
        peer::EngineConfig {
            retry_timeout: Duration::from_secs(30),
            ..test_engine()
        },
        Arc::new(Progress::default()),
        None,
        peer::download::StartOnly,
        CancellationToken::new(),
    ));
    tokio::time::sleep(Duration::from_millis(600)).await; // let it be refused a few times
    drop(holder);
    let got = tokio::time::timeout(Duration::from_secs(30), download)
        .await
        .expect("finished once the slot was free")
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    seed.stop().await;
    index.stop().await;
}

/// 12.9: content already present (same id) in the output folder or the
/// share around it is reported as done with its path; nothing is fetched
/// and no ` (1)` copy appears, in a plain get and a restarted daemon alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_already_present_is_done_without_a_copy() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(6 * common::CHUNK_SIZE + 3, 91);
    let id = content_info(&data).id;
    write_file(&dir.path().join("seed"), "X.bin", &data);
    let mut seed = start_peer(&dir.path().join("seed"), &index.addr_string()).await;
    seed.wait_registered(1).await;

    // `peer get X` twice into one folder.
    let out = dir.path().join("out");
    let first = hybrid_get(&index.addr_string(), "X.bin", &out, test_engine())
        .await
        .unwrap();
    assert!(!first.already_present);
    let served = seed.chunks_served();
    let second = hybrid_get(&index.addr_string(), "X.bin", &out, test_engine())
        .await
        .unwrap();
    assert!(second.already_present);
    assert_eq!(second.path, first.path);
    assert_eq!(seed.chunks_served(), served, "nothing fetched again");
    assert_eq!(visible_files(&out), vec!["X.bin"]);

    // A get into the share of a peer that holds the content under another
    // name (known by its hash cache).
    write_file(&dir.path().join("other"), "sub/renamed.bin", &data);
    let mut other = start_peer(&dir.path().join("other"), &index.addr_string()).await;
    other.wait_registered(1).await;
    let into_share = dir.path().join("other").join("downloads");
    let got = hybrid_get(
        &index.addr_string(),
        &id.to_hex(),
        &into_share,
        test_engine(),
    )
    .await
    .unwrap();
    assert!(got.already_present);
    assert_eq!(
        got.path.canonicalize().unwrap(),
        dir.path()
            .join("other/sub/renamed.bin")
            .canonicalize()
            .unwrap()
    );
    assert!(visible_files(&into_share).is_empty());

    // A daemon that fetched the file into its share, restarted, and asked
    // for it again (what `peer serve --fetch ID` does at start).
    let leech_share = dir.path().join("leech");
    let leech = start_peer(&leech_share, &index.addr_string()).await;
    let fetched = leech
        .daemon
        .download(
            id,
            leech.share.clone(),
            test_engine(),
            Arc::new(Progress::default()),
        )
        .await
        .unwrap();
    assert!(!fetched.already_present);
    leech.stop().await;
    let leech = start_peer(&leech_share, &index.addr_string()).await;
    let again = leech
        .daemon
        .download(
            id,
            leech.share.clone(),
            test_engine(),
            Arc::new(Progress::default()),
        )
        .await
        .unwrap();
    assert!(again.already_present);
    assert_eq!(visible_files(&leech_share), vec!["X.bin"]);
    leech.stop().await;
    other.stop().await;
    seed.stop().await;
    index.stop().await;
}

/// 12.10: two downloads of one file into one folder at once: the second
/// waits for the first's part file, then reports the published file
/// (before: "cannot write .part" or a second copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_downloads_of_one_file_into_one_folder_share_one_part_file() {
    let data = random_bytes(16 * common::CHUNK_SIZE, 101);
    let info = content_info(&data);
    let source = fake::start(data.clone(), Behaviour::OnlyFirst(u32::MAX)).await;
    let dir = tempfile::tempdir().unwrap();
    let one = || {
        let request = DownloadRequest {
            id: info.id,
            name: "same.bin".into(),
            sources: vec![source.addr_string()],
            out_dir: dir.path().to_path_buf(),
        };
        // Slow enough (about a second) for the two to overlap.
        let engine = peer::EngineConfig {
            download_limit: Some(Arc::new(RateLimiter::new(4 << 20))),
            ..test_engine()
        };
        peer::download::download(
            request,
            engine,
            Arc::new(Progress::default()),
            None,
            peer::download::StartOnly,
            CancellationToken::new(),
        )
    };
    let (a, b) = tokio::join!(one(), one());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.path, b.path);
    assert!(
        a.already_present != b.already_present,
        "one fetched, the other found its result"
    );
    assert_eq!(visible_files(dir.path()), vec!["same.bin"]);
    assert_eq!(std::fs::read(&a.path).unwrap(), data);
    assert_eq!(source.served(), 16, "the file travelled once");
    assert!(
        !peer::download::output::part_path(dir.path(), &info.id).exists(),
        "no part file left"
    );
}

/// 12.12: with honest sources the bytes received stay within one chunk per
/// source of the file size (before: a 600 KiB file from two sources
/// received 1,228,800 bytes, every chunk twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endgame_wastes_at_most_one_chunk_per_source() {
    for (size, n_sources, seed) in [
        (600 * 1024, 2, 121u64),
        (20 * common::CHUNK_SIZE + 9, 4, 122),
    ] {
        let data = random_bytes(size, seed);
        let sources: Vec<_> = futures_util::future::join_all(
            (0..n_sources).map(|_| fake::start(data.clone(), Behaviour::OnlyFirst(u32::MAX))),
        )
        .await;
        let chunks = content_info(&data).chunk_count() as u64;
        for round in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let before: u64 = sources.iter().map(|s| s.served()).sum();
            let got = peer::download::download(
                DownloadRequest {
                    id: content_info(&data).id,
                    name: "f.bin".into(),
                    sources: sources.iter().map(|s| s.addr_string()).collect(),
                    out_dir: dir.path().to_path_buf(),
                },
                test_engine(),
                Arc::new(Progress::default()),
                None,
                peer::download::StartOnly,
                CancellationToken::new(),
            )
            .await
            .unwrap();
            let served: u64 = sources.iter().map(|s| s.served()).sum::<u64>() - before;
            assert!(
                served <= chunks + n_sources as u64,
                "round {round}: {served} chunks served for a {chunks}-chunk file from {n_sources} sources"
            );
            let bound = size as u64 + n_sources as u64 * common::CHUNK_SIZE as u64;
            assert!(
                got.bytes_received <= bound,
                "round {round}: received {} > {bound}",
                got.bytes_received
            );
        }
    }
}

/// 18.8: a plain `peer get` under churn: every source leaves and comes back
/// (some at the same address, some at a new one) about every second while
/// a get from these capped peers runs; the get asks the index again and
/// completes in one run (before: "every source failed").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_survives_sources_leaving_and_rejoining() {
    const PEERS: usize = 5;
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(24 * common::CHUNK_SIZE, 181);
    let id = content_info(&data).id;
    let mut peers = Vec::new();
    for i in 0..PEERS {
        let share = dir.path().join(format!("p{i}"));
        write_file(&share, "churn.bin", &data);
        let mut p = start_peer_with(churn_config(&share, &index.addr_string())).await;
        p.wait_registered(1).await;
        peers.push(p);
    }
    let stop = CancellationToken::new();
    let churners: Vec<_> = peers
        .into_iter()
        .enumerate()
        .map(|(i, p)| tokio::spawn(churn(i, p, index.addr_string(), stop.clone())))
        .collect();
    let out = dir.path().join("out");
    let got = tokio::time::timeout(
        Duration::from_secs(90),
        hybrid_get(&index.addr_string(), &id.to_hex(), &out, test_engine()),
    )
    .await
    .expect("the get finished within 90 s");
    stop.cancel();
    let mut cycles = Vec::new();
    for c in churners {
        cycles.push(c.await.unwrap());
    }
    let got = got.expect("the get survives churn in one run");
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert!(
        cycles.iter().all(|c| *c >= 2),
        "every peer left and came back during the get: {cycles:?}"
    );
    index.stop().await;
}

/// A churning peer: uploads capped, so that what it sent before leaving
/// is not a whole file waiting in socket buffers (a capped download would
/// still be reading that long after the peer left).
fn churn_config(share: &Path, index: &str) -> peer::ServeConfig {
    let mut config = peer_config(share, index);
    config.max_upload_rate = Some(512 << 10);
    config
}

/// Peer number `i`: up for 0.6-1.4 s, down for 0.2-0.5 s, over and over
/// until `stop`; even peers come back at their old address, odd ones at a
/// new port. Returns how many times it left.
async fn churn(i: usize, mut peer: Peer, index: String, stop: CancellationToken) -> u32 {
    let mut cycles = 0;
    let mut k = i as u64;
    loop {
        k += 1;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(600 + 200 * (k * 7 % 5))) => {}
        }
        let share = peer.share.clone();
        let port = peer.daemon.listen_addr().port();
        peer.stop().await;
        cycles += 1;
        tokio::time::sleep(Duration::from_millis(200 + 100 * (k * 3 % 4))).await;
        let mut config = churn_config(&share, &index);
        if i.is_multiple_of(2) {
            config.listen.set_port(port);
        }
        peer = match try_start_peer_with(config.clone()).await {
            Ok(p) => p,
            // The old port was taken meanwhile: a new one, like the odd peers.
            Err(_) => {
                config.listen.set_port(0);
                start_peer_with(config).await
            }
        };
    }
    peer.stop().await;
    cycles
}

/// 12.11: a daemon's fetch onto a full disk fails, is tried again with
/// backoff, and completes once space is freed, without a restart (before:
/// one warning, never again). Needs root for a small tmpfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_onto_a_full_disk_completes_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mount = |opts: &str| {
        let mut cmd = std::process::Command::new("mount");
        if opts.starts_with("remount") {
            cmd.args(["-o", opts]).arg(&small);
        } else {
            cmd.args(["-t", "tmpfs", "-o", opts, "tmpfs"]).arg(&small);
        }
        cmd.status().is_ok_and(|s| s.success())
    };
    if !mount("size=512k") {
        eprintln!("skipped: cannot mount a small tmpfs (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(small.clone());

    let index = start_index().await;
    let data = random_bytes(8 * common::CHUNK_SIZE, 111);
    let id = content_info(&data).id;
    write_file(&dir.path().join("seed"), "big.bin", &data);
    let mut seed = start_peer(&dir.path().join("seed"), &index.addr_string()).await;
    seed.wait_registered(1).await;
    let share = small.join("share");
    let leech = start_peer(&share, &index.addr_string()).await;
    let part = peer::download::output::part_path(&share, &id);

    let ids = [id];
    let fetching = peer::swarm::fetch_into_share(&leech.daemon, &ids);
    let freeing = async {
        // An attempt that ended leaves its part file unlocked (a finished
        // one would have removed it): the disk was full.
        wait_until(
            "a fetch attempt failed on the full disk",
            Duration::from_secs(20),
            || {
                let part = part.clone();
                async move {
                    part.exists()
                        && matches!(
                            peer::download::output::lock_part(&part),
                            Ok(peer::download::output::PartLock::Owned(_))
                        )
                }
            },
        )
        .await;
        assert!(!share.join("big.bin").exists());
        assert!(mount("remount,size=16m"), "tmpfs grows");
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(fetching, freeing)
    })
    .await
    .expect("the fetch completed once space was freed");
    assert_eq!(std::fs::read(share.join("big.bin")).unwrap(), data);
    leech.stop().await;
    seed.stop().await;
    index.stop().await;
}

/// A get whose only listed source refuses every connection (a crashed peer
/// the index still lists) fails after the stall timeout, saying why, not
/// after the whole retry timeout meant for sources that are busy or coming
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_sources_all_refuse_connections_fails_in_seconds() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(3 * common::CHUNK_SIZE, 191);
    // A loopback port with nothing listening: bound, then released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // An old-style login (no reachability proof; the index's default still
    // takes it) publishes the dead address, as a crashed peer's session
    // would stay listed until its lease ends. A real peer can no longer
    // publish an address it does not answer on.
    let mut session = peer::index_client::IndexClient::connect(&index.addr_string())
        .await
        .unwrap();
    let login = common::index_proto::IndexRequest::Login(common::index_proto::Login {
        listen_port: dead.port(),
        advertise: Some(dead.to_string()),
        nick: None,
    });
    assert!(matches!(
        session.request(&login).await.unwrap(),
        common::index_proto::IndexResponse::Welcome { .. }
    ));
    let added = session
        .request(&common::index_proto::IndexRequest::AddFiles {
            files: vec![common::index_proto::SharedFile {
                id: content_info(&data).id,
                name: "dead.bin".into(),
                size: data.len() as u64,
            }],
        })
        .await
        .unwrap();
    assert!(
        matches!(added, common::index_proto::IndexResponse::Ack { count: 1 }),
        "{added:?}"
    );
    let engine = peer::EngineConfig {
        retry_timeout: Duration::from_secs(600),
        ..test_engine()
    };
    let out = dir.path().join("out");
    let got = tokio::time::timeout(
        Duration::from_secs(120),
        hybrid_get(&index.addr_string(), "dead.bin", &out, engine),
    )
    .await
    .expect("a get with no reachable source fails instead of waiting the retry timeout");
    let err = got.expect_err("nothing could be fetched").to_string();
    assert!(err.contains(&dead.to_string()), "names the source: {err}");
    drop(session);
    index.stop().await;
}
