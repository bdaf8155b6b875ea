//! The `peer` binary as a user runs it: help, JSON output, kill -9 and
//! resume, Ctrl-C, a full disk. The index runs in-process; sources are real
//! `peer serve` processes or fake sources from `transfer::testing`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::hello::Protocol;
use common::id::{content_info, ContentInfo};
use common::index_proto::{IndexRequest, IndexResponse, Login, SharedFile};
use common::wire::{self, Deadlines};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use transfer::testing::{self as fake, random_bytes, Behaviour};

mod support;
use support::{register_source, shared_as, start_index};

const PEER: &str = env!("CARGO_BIN_EXE_peer");

async fn run(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(PEER)
            .args(&args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run peer")
    })
    .await
    .unwrap()
}

/// Whether the first `n` chunks of the part file already verify.
fn part_has(part: &Path, info: &ContentInfo, n: u32) -> bool {
    let Ok(bytes) = std::fs::read(part) else {
        return false;
    };
    (0..n).all(|i| {
        let start = i as usize * common::CHUNK_SIZE;
        let end = start + info.chunk_len(i);
        bytes.len() >= end && info.verify_chunk(i, &bytes[start..end])
    })
}

/// Sends SIGTERM, as a container runtime does, and checks the exit is clean.
async fn stops_cleanly_on_sigterm(mut child: std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn help_names_every_command_and_its_environment_variables() {
    let out = run(&["--help"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "search", "get", "browse", "hash", "stats", "demo"] {
        assert!(text.contains(cmd), "--help lacks {cmd}: {text}");
    }
    let out = run(&["get", "--help"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["PEER_INDEX", "PEER_OUT", "--json", "--stall-timeout"] {
        assert!(text.contains(needle), "get --help lacks {needle}: {text}");
    }
    let out = run(&["serve", "--help"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "PEER_SHARE",
        "PEER_LISTEN",
        "PEER_ADVERTISE",
        "[::]:6699",
        "127.0.0.1:8888",
    ] {
        assert!(text.contains(needle), "serve --help lacks {needle}: {text}");
    }
}

#[tokio::test]
async fn hash_prints_the_id_and_bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(300_000, 1);
    std::fs::write(dir.path().join("f.bin"), &data).unwrap();
    let out = run(&["hash", dir.path().join("f.bin").to_str().unwrap()]).await;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        content_info(&data).id.to_hex()
    );

    let out = run(&["hash", dir.path().join("missing").to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    // An address nobody listens on: a port just released.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = run(&["search", "--index", &nobody, "x"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the index"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_search_and_get_with_json_output() {
    let (index, stop_index) = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let data = random_bytes(2 * common::CHUNK_SIZE + 5, 2);
    std::fs::write(share.join("Some File.bin"), &data).unwrap();
    let server = Command::new(PEER)
        .args([
            "serve",
            "--share",
            share.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("PEER_INDEX", &index)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let mut hits = serde_json::Value::Null;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        let out = run(&["search", "--index", &index, "--json", "some", "FILE"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        hits = answer["results"].clone();
        if hits.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hit = &hits[0];
    assert_eq!(hit["id"], content_info(&data).id.to_hex());
    assert_eq!(hit["name"], "Some File.bin");
    assert_eq!(hit["size"], data.len());
    assert_eq!(hit["sources"], 1);

    let out_dir = dir.path().join("out");
    let out = run(&[
        "get",
        "--index",
        &index,
        "-o",
        out_dir.to_str().unwrap(),
        "--json",
        "Some File.bin",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["id"], content_info(&data).id.to_hex());
    assert_eq!(got["size"], data.len());
    assert_eq!(got["sources_used"], 1);
    assert_eq!(std::fs::read(got["path"].as_str().unwrap()).unwrap(), data);

    // Without --json, just the path: the same file, already here (issue
    // 12.9: no second copy).
    let out = run(&[
        "get",
        "--index",
        &index,
        "-o",
        out_dir.to_str().unwrap(),
        &content_info(&data).id.to_hex(),
    ])
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        out_dir.join("Some File.bin").to_str().unwrap()
    );
    assert!(!out_dir.join("Some File (1).bin").exists());

    // SIGTERM stops the daemon cleanly.
    stops_cleanly_on_sigterm(server).await;
    stop_index.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_killed_with_sigkill_resumes_without_refetching() {
    let (index, stop_index) = start_index().await;
    let data = random_bytes(16 * common::CHUNK_SIZE, 3);
    let info = content_info(&data);
    let file = shared_as(&info, "movie.bin");
    let slow = fake::start(data.clone(), Behaviour::StallAfter(5)).await;
    let registration = register_source(&index, &slow.addr_string(), file.clone()).await;

    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let mut child = Command::new(PEER)
        .args([
            "get",
            "--index",
            &index,
            "-o",
            out_dir.to_str().unwrap(),
            "--stall-timeout",
            "60s",
            &info.id.to_hex(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let part = out_dir.join(format!(".{}.part", info.id.to_hex()));
    wait_for("five verified chunks in the part file", || {
        part_has(&part, &info, 5)
    })
    .await;
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert!(!out_dir.join("movie.bin").exists());
    drop(registration);

    let good = fake::start(data.clone(), Behaviour::OnlyFirst(u32::MAX)).await;
    let _registration = register_source(&index, &good.addr_string(), file).await;
    let out = run(&[
        "get",
        "--index",
        &index,
        "-o",
        out_dir.to_str().unwrap(),
        "--json",
        &info.id.to_hex(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["chunks_resumed"], 5);
    assert_eq!(good.served(), 11, "only the missing chunks were fetched");
    assert_eq!(std::fs::read(out_dir.join("movie.bin")).unwrap(), data);
    assert!(!part.exists());
    stop_index.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_keeps_the_part_and_exits_130() {
    let (index, stop_index) = start_index().await;
    let data = random_bytes(8 * common::CHUNK_SIZE, 4);
    let info = content_info(&data);
    let slow = fake::start(data.clone(), Behaviour::StallAfter(2)).await;
    let file = shared_as(&info, "x.bin");
    let _registration = register_source(&index, &slow.addr_string(), file).await;
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(PEER)
        .args([
            "get",
            "--index",
            &index,
            "-o",
            dir.path().to_str().unwrap(),
            "--stall-timeout",
            "60s",
            &info.id.to_hex(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let part = dir.path().join(format!(".{}.part", info.id.to_hex()));
    wait_for("two verified chunks", || part_has(&part, &info, 2)).await;
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("run the same command again"));
    assert!(part_has(&part, &info, 2));
    assert!(!dir.path().join("x.bin").exists());
    stop_index.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error_and_nothing_lands_under_the_final_name() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    // A 1 MiB tmpfs needs root; where mounting is not allowed there is no full disk to test.
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "tmpfs",
            small.to_str().unwrap(),
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    }
    let (index, stop_index) = start_index().await;
    let data = random_bytes(4 * 1024 * 1024, 5);
    let info = content_info(&data);
    let good = fake::start(data.clone(), Behaviour::OnlyFirst(u32::MAX)).await;
    let file = shared_as(&info, "big.bin");
    let _registration = register_source(&index, &good.addr_string(), file).await;
    let out = run(&[
        "get",
        "--index",
        &index,
        "-o",
        small.to_str().unwrap(),
        &info.id.to_hex(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let listing: Vec<String> = std::fs::read_dir(&small)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into())
        .collect();
    let _ = Command::new("umount").arg(&small).status();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left"), "{stderr}");
    assert!(stderr.contains("run the same command again"), "{stderr}");
    assert!(!listing.contains(&"big.bin".to_string()), "{listing:?}");
    assert!(
        listing.iter().any(|n| n.ends_with(".part")),
        "the verified part is kept: {listing:?}"
    );
    stop_index.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_fetch_downloads_into_the_share_and_shares_it() {
    let (index, stop_index) = start_index().await;
    let data = random_bytes(6 * common::CHUNK_SIZE + 3, 6);
    let info = content_info(&data);
    let source = fake::start(data.clone(), Behaviour::OnlyFirst(u32::MAX)).await;
    let file = shared_as(&info, "album.flac");
    let _registration = register_source(&index, &source.addr_string(), file).await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Command::new(PEER)
        .args([
            "serve",
            "--share",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args([
            "--index",
            &index,
            "--nick",
            "fetcher",
            "--fetch",
            &info.id.to_hex(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let target = dir.path().join("album.flac");
    wait_for("the fetched file in the share", || {
        std::fs::read(&target).is_ok_and(|b| b == data)
    })
    .await;
    // Once complete it is shared: the index lists the daemon as a source too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = peer::index_client::IndexClient::connect(&index)
            .await
            .unwrap();
        let sources = c
            .lookup(info.id)
            .await
            .unwrap()
            .map(|(_, _, s)| s)
            .unwrap_or_default();
        if sources.iter().any(|s| s.nick.as_deref() == Some("fetcher")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fetched file was not shared: {sources:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stops_cleanly_on_sigterm(daemon).await;
    stop_index.cancel();
}

// ---- Issue 12: command-line cases (12.1, 12.2, 12.20-12.26) ----

async fn start_index_with(config: index_server::Config) -> (String, CancellationToken) {
    let server = index_server::Server::bind(config).await.unwrap();
    let addr = server.local_addr().to_string();
    let token = CancellationToken::new();
    tokio::spawn(server.run(token.clone()));
    (addr, token)
}

/// A `peer serve` of `share` at `index` on a free loopback port; `args` are added.
fn spawn_serve(index: &str, share: &Path, args: &[&str]) -> std::process::Child {
    Command::new(PEER)
        .args(["serve", "--share", share.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--index", index])
        .args(args)
        .env_remove("PEER_NICK")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The nicknames online at `index` (empty when it cannot be reached).
async fn online_nicks(index: &str) -> Vec<String> {
    let Ok(mut c) = peer::index_client::IndexClient::connect(index).await else {
        return Vec::new();
    };
    let mut nicks: Vec<String> = c
        .peers()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.nick)
        .collect();
    nicks.sort();
    nicks
}

/// Waits (with a deadline) for `child` to exit; kills it and fails if it does not.
async fn exits_within(mut child: std::process::Child, what: &str) -> Output {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().unwrap().is_some() {
            return tokio::task::spawn_blocking(move || child.wait_with_output())
                .await
                .unwrap()
                .unwrap();
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what}: still running after 20 s; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// A session that logs in as `nick` (if any) and registers `files`; the
/// returned connection keeps them registered.
async fn raw_session(
    index: &str,
    nick: Option<&str>,
    files: Vec<SharedFile>,
) -> transfer::net::Conn {
    raw_session_with(index, nick, files, &common::secure::Security::process()).await
}

/// [`raw_session`] proving the key of `security` (the process's key is one
/// node: a second login with it replaces the first's nickname-less session).
async fn raw_session_with(
    index: &str,
    nick: Option<&str>,
    files: Vec<SharedFile>,
    security: &common::secure::Security,
) -> transfer::net::Conn {
    let s = TcpStream::connect(index).await.unwrap();
    let (mut s, _) = transfer::net::client_with(s, Protocol::Index, None, security)
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut requests = vec![IndexRequest::Login(Login {
        listen_port: 1,
        // A distinct unprivileged address per session (nothing listens there).
        advertise: Some(format!(
            "127.0.0.1:{}",
            40_000 + NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )),
        nick: nick.map(Into::into),
    })];
    for batch in files.chunks(500) {
        requests.push(IndexRequest::AddFiles {
            files: batch.to_vec(),
        });
    }
    for req in requests {
        wire::send_message(&mut s, &req).await.unwrap();
        let r: IndexResponse = wire::expect_message(&mut s, &mut buf, Deadlines::default())
            .await
            .unwrap();
        assert!(!matches!(r, IndexResponse::Error { .. }), "{r:?}");
    }
    s
}

/// `n` distinct small files named `song-<i>.txt`.
fn songs(n: usize) -> Vec<SharedFile> {
    (0..n)
        .map(|i| {
            let info = content_info(format!("song {i}").as_bytes());
            shared_as(&info, &format!("song-{i}.txt"))
        })
        .collect()
}

/// 12.1: several peers on one machine without --nick all run; the second
/// takes a free variant of the host name and says so. After an index
/// restart, with the default names taken by others, they register again
/// under free variants instead of stopping or retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_a_nick_on_one_host_take_free_variants() {
    let (index, stop_index) = start_index().await;
    let host = peer::im::default_nick();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let mut first = spawn_serve(&index, &a, &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while online_nicks(&index).await != vec![host.clone()] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first peer not online"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut second = spawn_serve(&index, &b, &[]);
    let variant = format!("{host}-2");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let nicks = online_nicks(&index).await;
        if nicks.contains(&host) && nicks.contains(&variant) {
            break;
        }
        if let Some(status) = second.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(second.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the second peer stopped ({status:?}): {err}");
        }
        assert!(tokio::time::Instant::now() < deadline, "online: {nicks:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Index restart on the same address; others take both names first.
    // The peers are paused meanwhile: they now reconnect at a random time
    // within their backoff, which may be at once, and a key's own
    // nickname is its own again (the squatters would find it taken).
    let signal = |child: &std::process::Child, sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal(&first, "-STOP");
    signal(&second, "-STOP");
    stop_index.cancel();
    let listen: std::net::SocketAddr = index.parse().unwrap();
    let mut restarted = None;
    for _ in 0..200 {
        match index_server::Server::bind(index_server::Config {
            listen,
            ..Default::default()
        })
        .await
        {
            Ok(server) => {
                restarted = Some(server);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let server = restarted.expect("the index address was not free again within 4 s");
    let stop_again = CancellationToken::new();
    tokio::spawn(server.run(stop_again.clone()));
    let _squatters = (
        raw_session(&index, Some(&host), vec![]).await,
        raw_session(&index, Some(&variant), songs(1)).await,
    );
    signal(&first, "-CONT");
    signal(&second, "-CONT");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let nicks = online_nicks(&index).await;
        let ours: Vec<&String> = nicks
            .iter()
            .filter(|n| **n != host && **n != variant && n.starts_with(&format!("{host}-")))
            .collect();
        if ours.len() == 2 {
            break;
        }
        for (name, child) in [("first", &mut first), ("second", &mut second)] {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the {name} peer stopped after the index restart"
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after the restart, online: {nicks:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stops_cleanly_on_sigterm(first).await;
    let second_log = {
        let mut err = String::new();
        let mut stderr = second.stderr.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &second.id().to_string()])
            .status()
            .unwrap();
        second.wait().unwrap();
        std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
        err
    };
    assert!(
        second_log.contains("free variant") && second_log.contains(&variant),
        "the log says which nickname was taken: {second_log}"
    );
    stop_again.cancel();
}

/// 12.1 (the other half) and 12.2: a nickname given with --nick that is
/// taken, an invalid one, or an index that refuses for good (another
/// service on that port) stops `peer serve` at start with exit status 1
/// and the reason, instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lasting_refusals_stop_serve_at_start() {
    let (index, stop_index) = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let _holder = raw_session(&index, Some("ana"), vec![]).await;

    let out = exits_within(
        spawn_serve(&index, dir.path(), &["--nick", "ana"]),
        "--nick ana",
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // Held by another node's key (this test process's): reserved for it.
    assert!(
        (err.contains("already used") || err.contains("reserved for the node"))
            && err.contains("--nick"),
        "{err}"
    );

    let out = exits_within(
        spawn_serve(&index, dir.path(), &["--nick", "bad nick!"]),
        "--nick 'bad nick!'",
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nickname") && err.contains("--nick"), "{err}");

    // A peer's chunk port given as the index: the hello says "wrong service".
    let not_an_index = fake::start(vec![1; 10], Behaviour::OnlyFirst(u32::MAX)).await;
    let out = exits_within(
        spawn_serve(&not_an_index.addr_string(), dir.path(), &["--nick", "bob"]),
        "--index at a peer port",
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("wrong service"), "{err}");
    stop_index.cancel();
}

/// 12.20: output into a pipe whose reader is gone ends the command quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_every_command_quietly() {
    let (index, stop_index) = start_index().await;
    let _session = raw_session(&index, Some("lister"), songs(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.bin");
    std::fs::write(&file, b"hello").unwrap();
    let file = file.to_str().unwrap();
    for args in [
        vec!["browse", "--index", &index, "lister"],
        vec!["browse", "--index", &index, "--json", "lister"],
        vec!["search", "--index", &index, "song"],
        vec!["who", "--index", &index],
        vec!["stats", "--index", &index],
        vec!["hash", file, file],
    ] {
        let mut child = Command::new(PEER)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the command writes anything.
        drop(child.stdout.take());
        let out = exits_within(child, &args.join(" ")).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    stop_index.cancel();
}

fn said_once(stderr: &str, needle: &str) {
    assert_eq!(
        stderr.matches(needle).count(),
        1,
        "{needle:?} should be said once: {stderr}"
    );
}

/// 12.21: each error says once what failed and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_is_said_once_and_is_the_right_one() {
    let dir = tempfile::tempdir().unwrap();
    // A folder given as a file.
    let out = run(&[
        "put",
        "--index",
        "127.0.0.1:1",
        dir.path().to_str().unwrap(),
    ])
    .await;
    said_once(&String::from_utf8_lossy(&out.stderr), "Is a directory");
    let out = run(&["hash", dir.path().to_str().unwrap()]).await;
    said_once(&String::from_utf8_lossy(&out.stderr), "Is a directory");

    // Another service on the port.
    let source = fake::start(vec![1; 10], Behaviour::OnlyFirst(u32::MAX)).await;
    let out = run(&["stats", "--index", &source.addr_string()]).await;
    assert_eq!(out.status.code(), Some(1));
    said_once(&String::from_utf8_lossy(&out.stderr), "wrong service");

    // A busy server.
    let (index, stop_index) = start_index_with(index_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_connections: 1,
        ..Default::default()
    })
    .await;
    let _holder = raw_session(&index, None, vec![]).await;
    let out = run(&["stats", "--index", &index]).await;
    assert_eq!(out.status.code(), Some(1));
    said_once(&String::from_utf8_lossy(&out.stderr), "busy");
    stop_index.cancel();

    // Host names resolve, and a missing port is the default one.
    let (index, stop_index) = start_index().await;
    let port = index.rsplit_once(':').unwrap().1;
    let out = run(&["stats", "--index", &format!("localhost:{port}")]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["stats", "--index", "localhost"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("invalid socket address"), "{err}");
    assert!(err.contains("localhost:8888"), "{err}");

    // A -o that cannot be written: nothing was kept, so nothing is promised.
    let data = random_bytes(3 * common::CHUNK_SIZE, 21);
    let info = content_info(&data);
    let good = fake::start(data.clone(), Behaviour::OnlyFirst(u32::MAX)).await;
    let _reg = register_source(&index, &good.addr_string(), shared_as(&info, "g.bin")).await;
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let bad_out = blocker.join("sub");
    let out = run(&[
        "get",
        "--index",
        &index,
        "-o",
        bad_out.to_str().unwrap(),
        &info.id.to_hex(),
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("verified part is kept"), "{err}");
    assert!(err.contains("-o"), "{err}");

    // A file deleted from a peer's share is "not there", not "changed".
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let gone = random_bytes(2 * common::CHUNK_SIZE, 22);
    let gone_info = content_info(&gone);
    std::fs::write(share.join("gone.bin"), &gone).unwrap();
    let daemon = spawn_serve(
        &index,
        &share,
        &["--nick", "keeper", "--rescan-interval", "1d"],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = peer::index_client::IndexClient::connect(&index)
            .await
            .unwrap();
        if c.lookup(gone_info.id).await.unwrap().is_some() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_file(share.join("gone.bin")).unwrap();
    let out_dir = dir.path().join("out");
    let out = run(&[
        "get",
        "--index",
        &index,
        "-o",
        out_dir.to_str().unwrap(),
        &gone_info.id.to_hex(),
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("changed on disk"), "{err}");
    assert!(err.contains("does not have the file"), "{err}");
    stops_cleanly_on_sigterm(daemon).await;
    stop_index.cancel();
}

/// 12.22: booleans take 1/0, units any case, and zero or nonsense is a
/// usage error (exit 2) that states the allowed range.
#[tokio::test]
async fn flags_are_checked_when_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.bin");
    std::fs::write(&file, b"abc").unwrap();
    for (var, value) in [
        ("PEER_JSON", "1"),
        ("PEER_JSON", "yes"),
        ("PEER_JSON", "TRUE"),
    ] {
        let out = tokio::task::spawn_blocking({
            let file = file.clone();
            move || {
                Command::new(PEER)
                    .args(["hash", file.to_str().unwrap()])
                    .env(var, value)
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{var}={value}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["size"], 3);
    }
    let out = tokio::task::spawn_blocking({
        let file = file.clone();
        move || {
            Command::new(PEER)
                .args(["hash", file.to_str().unwrap()])
                .env("PEER_JSON", "0")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(serde_json::from_slice::<serde_json::Value>(&out.stdout).is_err());

    // An empty variable counts as unset (the flag's default), never as an
    // empty value: exit 1 (the index at 127.0.0.1:1 is not running), not 2.
    let out = tokio::task::spawn_blocking(|| {
        let mut cmd = Command::new(PEER);
        cmd.args(["get", "--index", "127.0.0.1:1", "x.bin"]);
        for var in [
            "PEER_OUT",
            "PEER_STALL_TIMEOUT",
            "PEER_MAX_SOURCES",
            "PEER_MODE",
            "PEER_TTL",
            "PEER_MAX_DOWNLOAD_RATE",
            "PEER_RETRY_TIMEOUT",
            "PEER_NICK",
            "PEER_API",
        ] {
            cmd.env(var, "");
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Units in any case are accepted (the index is not running: exit 1, not 2).
    let out = run(&[
        "get",
        "--index",
        "127.0.0.1:1",
        "--max-download-rate",
        "10mb/s",
        "x",
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for (args, range) in [
        (vec!["get", "--stall-timeout", "0", "x"], "100ms to 1d"),
        (vec!["get", "--max-sources", "0", "x"], "1..=256"),
        (vec!["get", "--pipeline", "0", "x"], "1..=256"),
        (vec!["get", "--pipeline", "many", "x"], ""),
        (vec!["search", "--limit", "0", "x"], "1..=1000"),
        (vec!["search", "--mode", "p2p", "--ttl", "0", "x"], "1..=7"),
        (
            vec!["search", "--mode", "p2p", "--wait", "0", "x"],
            "10ms to 1h",
        ),
        (
            vec!["serve", "--share", ".", "--max-uploads", "0"],
            "1..=4096",
        ),
        (
            vec!["serve", "--share", ".", "--rescan-interval", "0s"],
            "100ms to 1d",
        ),
        (vec!["serve", "--share", ".", "--degree", "0"], "1..=64"),
        (
            vec!["serve", "--share", ".", "--max-upload-rate", "0"],
            "zero",
        ),
        (vec!["demo", "--size", "0"], "1B to 1TiB"),
        (vec!["stats", "--index", "host:0"], "HOST:PORT"),
    ] {
        let out = run(&args).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(range),
            "{args:?} should state {range:?}: {err}"
        );
    }
    let out = tokio::task::spawn_blocking(|| {
        Command::new(PEER)
            .args(["stats", "--index", "127.0.0.1:1"])
            .env("PEER_JSON", "maybe")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 or 0"));
    // A usage error found after parsing is one too.
    let out = run(&["search", "--mode", "p2p", "x"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--via"));
}

/// 12.24: a cut list says how many files matched; --help states the maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_says_how_many_matched_when_the_list_is_cut() {
    let (index, stop_index) = start_index().await;
    let _session = raw_session(&index, None, songs(150)).await;
    let out = run(&["search", "--index", &index, "--limit", "10", "song"]).await;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 11);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("showing 10 of 150"), "{err}");
    let out = run(&["search", "--index", &index, "song"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("100 of 150") && err.contains("1000"), "{err}");
    let out = run(&["search", "--index", &index, "--json", "song", "7"]).await;
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["results"].as_array().unwrap().len(), 1);
    assert_eq!(
        (&answer["total"], &answer["truncated"]),
        (&1.into(), &false.into())
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["search", "--index", &index, "--json", "--limit", "5", "so"]).await;
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["results"].as_array().unwrap().len(), 5);
    assert_eq!(
        (&answer["total"], &answer["truncated"]),
        (&150.into(), &true.into())
    );
    let out = run(&["search", "--help"]).await;
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("1000"), "{help}");
    for needle in ["-live", "--type", "--min-size", "千尋", "document  pdf"] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    // Thousands are grouped.
    let many: Vec<SharedFile> = (0..1234)
        .map(|i| {
            let info = content_info(format!("tune {i}").as_bytes());
            shared_as(&info, &format!("tune-{i}.mp3"))
        })
        .collect();
    let _more = raw_session(&index, Some("tunes"), many).await;
    let out = run(&["search", "--index", &index, "tune", "-7"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("showing 100 of 1,233"), "{err}");
    stop_index.cancel();
}

/// Issue 16: `peer search --sources` lists each hit's sources with the node
/// id the index saw them prove (short in the table, whole in --json).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_lists_sources_with_their_node_ids() {
    let (index, stop_index) = start_index().await;
    let info = content_info(b"the one shared tune");
    let node = || common::secure::Security::new(common::identity::Identity::generate(), None);
    let tune = || vec![shared_as(&info, "tune.mp3")];
    let _alice = raw_session_with(&index, Some("alice"), tune(), &node()).await;
    let _bob = raw_session_with(&index, Some("bob"), tune(), &node()).await;
    let _other = raw_session_with(&index, Some("carol"), songs(2), &node()).await;
    let whois = |nick: &'static str| {
        let index = index.clone();
        async move {
            let out = run(&["whois", "--index", &index, "--json", nick]).await;
            assert!(out.status.success(), "{out:?}");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["peer_id"].as_str().unwrap().to_string()
        }
    };
    let (alice_id, bob_id) = (whois("alice").await, whois("bob").await);
    assert_ne!(alice_id, bob_id);

    let out = run(&["search", "--index", &index, "--json", "--sources", "tune"]).await;
    assert!(out.status.success(), "{out:?}");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    let mut listed: Vec<(String, String)> = results[0]["source_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["nick"].as_str().unwrap().to_string(),
                s["peer_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            ("alice".into(), alice_id.clone()),
            ("bob".into(), bob_id.clone())
        ]
    );

    let out = run(&["search", "--index", &index, "--sources", "tune"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    let from: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("from"))
        .collect();
    assert_eq!(from.len(), 2, "{text}");
    for (nick, id) in [("alice", &alice_id), ("bob", &bob_id)] {
        assert!(
            from.iter()
                .any(|l| l.contains(nick) && l.contains(&id[..12])),
            "{nick} {id}: {text}"
        );
    }
    // Without the flag: the counts only, as before.
    let out = run(&["search", "--index", &index, "--json", "tune"]).await;
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(answer["results"][0].get("source_list").is_none());
    assert_eq!(answer["results"][0]["sources"], 2);
    stop_index.cancel();
}

/// Sends SIGINT to `child` once `ready` holds, and returns its output.
async fn interrupt_when(
    child: std::process::Child,
    what: &str,
    ready: impl FnMut() -> bool,
) -> Output {
    wait_for(what, ready).await;
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    exits_within(child, what).await
}

/// 12.25: Ctrl-C stops a long command promptly with exit status 130: the
/// demo while it writes its sample, and hashing a large file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_long_commands_with_130() {
    let tmp = tempfile::tempdir().unwrap();
    let child = Command::new(PEER)
        .args(["demo", "--size", "1GiB"])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sample = || {
        std::fs::read_dir(tmp.path())
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path().join("alice").join("big sample.bin"))
    };
    let out = interrupt_when(child, "the demo writing its sample", || {
        sample().is_some_and(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
    })
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(!err.contains("channel closed"), "{err}");
    // Its temporary folder is cleaned up.
    assert!(sample().is_none(), "the demo left its folder behind");

    let big = tmp.path().join("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let child = Command::new(PEER)
        .args(["hash", big.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let out = interrupt_when(child, "hashing started", || {
        started.elapsed() > Duration::from_millis(300)
    })
    .await;
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// 12.26: help and behaviour agree: exit statuses, every option has its
/// variable, arguments are described, `hash` takes several files.
#[tokio::test]
async fn help_documents_exit_statuses_variables_and_arguments() {
    let out = run(&["--help"]).await;
    let top = String::from_utf8_lossy(&out.stdout).to_string();
    for needle in ["Exit status", "2 usage error", "130", "1/0"] {
        assert!(top.contains(needle), "--help lacks {needle:?}: {top}");
    }
    let commands = [
        "serve", "search", "get", "put", "browse", "hash", "stats", "demo", "who", "whois", "msg",
        "inbox",
    ];
    for cmd in commands {
        let out = run(&[cmd, "--help"]).await;
        let help = String::from_utf8_lossy(&out.stdout).to_string();
        // Every option (but --help) has an environment variable.
        let options_part = help.split("Options:").nth(1).unwrap_or_default();
        let mut options: Vec<String> = Vec::new();
        for line in options_part.lines() {
            let t = line.trim_start();
            let indent = line.len() - t.len();
            if indent <= 6 && t.starts_with('-') {
                options.push(String::new());
            }
            if let Some(block) = options.last_mut() {
                block.push_str(line);
                block.push('\n');
            }
        }
        options.retain(|b| !b.trim_start().starts_with("-h, --help"));
        assert!(!options.is_empty(), "{cmd}: {help}");
        for block in options {
            assert!(
                block.contains("[env: "),
                "{cmd}: option without a variable: {block}"
            );
        }
        // Every positional argument is described.
        if let Some(args) = help.split("Arguments:").nth(1) {
            let args = args.split("Options:").next().unwrap();
            let mut blocks: Vec<String> = Vec::new();
            for line in args.lines() {
                let t = line.trim_start();
                if line.len() - t.len() <= 6 && t.starts_with('<') {
                    blocks.push(String::new());
                }
                if let Some(b) = blocks.last_mut() {
                    b.push_str(line);
                }
            }
            for block in blocks {
                let described = block
                    .trim_start()
                    .split_once('>')
                    .map(|(_, d)| d.trim_start_matches("...").trim());
                assert!(
                    described.is_some_and(|d| !d.is_empty()),
                    "{cmd}: argument without a description: {block}"
                );
            }
        }
        assert!(!help.contains("<INDEX>"), "{cmd}: {help}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, b"one").unwrap();
    std::fs::write(&b, b"two").unwrap();
    let out = run(&["hash", a.to_str().unwrap(), b.to_str().unwrap()]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with(&content_info(b"one").id.to_hex()) && lines[0].ends_with("a"));
    assert!(lines[1].starts_with(&content_info(b"two").id.to_hex()) && lines[1].ends_with("b"));
    let out = run(&["bogus"]).await;
    assert_eq!(out.status.code(), Some(2));
}

/// A daemon whose log reader went away (stderr a closed pipe) still stops
/// on SIGTERM: a log line it cannot write is dropped, not a panic in the
/// task that wrote it (before: the signal task panicked logging "SIGTERM
/// received" and the daemon never stopped).
#[tokio::test]
async fn serve_with_a_closed_stderr_still_stops_on_sigterm() {
    let (index, stop_index) = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = spawn_serve(&index, dir.path(), &["--nick", "deaf"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while online_nicks(&index).await != vec!["deaf".to_string()] {
        assert!(tokio::time::Instant::now() < deadline, "peer not online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(daemon.stderr.take());
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = daemon.kill();
            panic!("still running 20 s after SIGTERM with a closed stderr");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    stop_index.cancel();
}

/// `peer browse NICK` says whose files these are: the node id the index
/// knows the nickname by (the key its session proved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_names_the_node_id_of_the_peer() {
    let (index, stop_index) = start_index().await;
    let _session = raw_session(&index, Some("lister"), songs(3)).await;
    let out = run(&["browse", "--index", &index, "lister"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The raw session ran under this process's key.
    let id = common::secure::Security::process().peer_id().unwrap();
    assert!(
        stdout
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("lister at ") && l.ends_with(&format!("node id {id}"))),
        "{stdout}"
    );
    stop_index.cancel();
}
