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

const PEER: &str = env!("CARGO_BIN_EXE_peer");

async fn start_index() -> (String, CancellationToken) {
    let config = index_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let server = index_server::Server::bind(config).await.unwrap();
    let addr = server.local_addr().to_string();
    let token = CancellationToken::new();
    tokio::spawn(server.run(token.clone()));
    (addr, token)
}

/// Registers `addr` at the index as the holder of `file` (for fake sources);
/// the returned connection keeps the registration alive.
async fn register_source(index: &str, addr: &str, file: SharedFile) -> TcpStream {
    let mut s = TcpStream::connect(index).await.unwrap();
    wire::client_handshake(&mut s, Protocol::Index)
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

/// The index entry for the content `info` under `name`.
fn shared_as(info: &ContentInfo, name: &str) -> SharedFile {
    SharedFile {
        id: info.id,
        name: name.into(),
        size: info.size,
    }
}

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
        hits = serde_json::from_slice(&out.stdout).unwrap();
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

    // Without --json, just the path.
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
        out_dir.join("Some File (1).bin").to_str().unwrap()
    );

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
