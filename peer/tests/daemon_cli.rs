//! `peer serve`'s API as a user meets it: the binary, its state file, its
//! refusals, and `peer get` / `downloads` / `pause` / `resume` / `cancel`
//! through a running daemon.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_peer");

/// Polls `cond` every 20 ms for up to 30 s.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One blocking HTTP/1.1 request; the status and the JSON body (Null if none).
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    try_http(addr, method, path, body).expect("the API answers")
}

fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, Value)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Some((code, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// Where the daemon sharing `share` says its API is, once it answers there
/// (a file left by a killed daemon names a port nobody answers on).
fn api_of(share: &Path) -> SocketAddr {
    let file = share.join(".p2pshare/api.json");
    let mut found = None;
    wait_for("the API file of a live daemon", || {
        let Ok(bytes) = std::fs::read(&file) else {
            return false;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            return false;
        };
        let Some(addr) = v["api"]
            .as_str()
            .and_then(|a| a.trim_start_matches("http://").parse::<SocketAddr>().ok())
        else {
            return false;
        };
        found = Some(addr);
        try_http(addr, "GET", "/api/status", None).is_some_and(|(c, _)| c == 200)
    });
    found.unwrap()
}

fn serve(share: &Path, index: &str, extra: &[&str]) -> Child {
    std::fs::create_dir_all(share).unwrap();
    Command::new(PEER)
        .args(["serve", "--share"])
        .arg(share)
        .args(["--index", index, "--listen", "127.0.0.1:0", "--settle", "0"])
        .args(extra)
        .env_remove("PEER_API")
        .env_remove("PEER_API_TOKEN")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap()
}

#[test]
fn a_non_loopback_api_without_a_token_stops_serve_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let out = Command::new(PEER)
        .args(["serve", "--share"])
        .arg(&share)
        .args(["--index", "127.0.0.1:1", "--listen", "127.0.0.1:0"])
        .args(["--api", "0.0.0.0:0"])
        .env_remove("PEER_API_TOKEN")
        .env_remove("PEER_API")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--api-token"), "{stderr}");
    let out = Command::new(PEER)
        .args(["serve", "--share"])
        .arg(&share)
        .args(["--api", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad --api is a usage error");
}

#[test]
fn serve_publishes_its_api_in_the_share_and_stops_it_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("x.txt"), b"hello").unwrap();
    let mut child = serve(&share, "127.0.0.1:1", &["--api", "127.0.0.1:0"]);
    let api = api_of(&share);
    wait_for("the file shared", || {
        http(api, "GET", "/api/status", None).1["files"] == 1
    });
    let (code, status) = http(api, "GET", "/api/status", None);
    assert_eq!(code, 200);
    assert_eq!(
        status["share"],
        std::fs::canonicalize(&share).unwrap().display().to_string()
    );
    let (code, body) = http(api, "POST", "/api/status", Some("{}"));
    assert_eq!(code, 405, "{body}");
    let status = sigterm(&mut child);
    assert!(status.success(), "{status:?}");
    assert!(!share.join(".p2pshare/api.json").exists());
}

// ---- downloads through a daemon ----

use common::id::{content_info, ContentInfo};
use tokio_util::sync::CancellationToken;
use transfer::testing::{self as fake, random_bytes, Behaviour};

mod support;
use support::start_index;

/// Registers `addr` at the index as the holder of `info` under `name`;
/// the returned connection keeps the registration alive.
async fn register_source(
    index: &str,
    addr: &str,
    info: &ContentInfo,
    name: &str,
) -> transfer::net::Conn {
    support::register_source(index, addr, support::shared_as(info, name)).await
}

async fn peer_cmd(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(PEER)
            .args(&args)
            .env_remove("RUST_LOG")
            .env_remove("PEER_API")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn wait_async(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_get_hands_the_download_to_the_daemon_of_the_share() {
    let (index, stop_index) = start_index().await;
    let data = random_bytes(6 * common::CHUNK_SIZE + 123, 41);
    let info = content_info(&data);
    let good = fake::start(data.clone(), Behaviour::OnlyFirst(u32::MAX)).await;
    let _reg = register_source(&index, &good.addr_string(), &info, "song.ogg").await;

    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    let mut daemon = serve(&share, &index, &["--api", "127.0.0.1:0"]);
    let api = api_of(&share);

    // Into a folder of the share that does not exist yet: found through
    // the share's API file, done by the daemon, the path printed as usual.
    let out_dir = share.join("music");
    let out = peer_cmd(args(&[
        "get",
        "--index",
        &index,
        "-o",
        out_dir.to_str().unwrap(),
        "--json",
        "song.ogg",
    ]))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(got["download"].is_u64(), "not through the daemon: {got}");
    assert_eq!(got["id"], info.id.to_hex());
    // The same object a standalone `peer get --json` prints.
    for key in [
        "path",
        "size",
        "sources_used",
        "chunks_resumed",
        "chunks_total",
        "per_source",
        "already_present",
        "bytes_received",
    ] {
        assert!(!got[key].is_null(), "{key} missing: {got}");
    }
    assert_eq!(got["sources_used"], 1, "{got}");
    assert_eq!(std::fs::read(got["path"].as_str().unwrap()).unwrap(), data);
    assert!(String::from_utf8_lossy(&out.stderr).contains("handed to the daemon"));

    // peer downloads lists it as done until it is cleared.
    let share_s = share.to_str().unwrap().to_string();
    let out = peer_cmd(args(&["downloads", "--share", &share_s, "--json"])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["downloads"][0]["state"], "done", "{list}");
    let id = list["downloads"][0]["id"].as_u64().unwrap().to_string();
    let out = peer_cmd(args(&["downloads", "--share", &share_s])).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("done") && table.contains("song.ogg"),
        "{table}"
    );
    let out = peer_cmd(args(&["cancel", "--share", &share_s, &id])).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        http(api, "GET", "/api/downloads", None).1["downloads"],
        serde_json::json!([])
    );
    let out = peer_cmd(args(&["pause", "--share", &share_s, &id])).await;
    assert_eq!(out.status.code(), Some(1), "an unknown id is an error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no download"));

    // --detach returns at once with the download's number.
    let other = dir.path().join("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    let out = peer_cmd(args(&[
        "get",
        "--index",
        &index,
        "-o",
        share.join("again").to_str().unwrap(),
        "--detach",
        "--json",
        &info.id.to_hex(),
    ]))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["id"].as_u64().unwrap();
    wait_async("the detached download done", || {
        http(api, "GET", &format!("/api/downloads/{id}"), None).1["state"] == "done"
    })
    .await;

    // Outside any share, with no PEER_API: standalone as before.
    let out = peer_cmd(args(&[
        "get",
        "--index",
        &index,
        "-o",
        other.to_str().unwrap(),
        "--json",
        &info.id.to_hex(),
    ]))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(got.get("download").is_none(), "{got}");
    // The fake source, and the daemon, which shares what it fetched.
    assert!(got["sources_used"].as_u64().unwrap() >= 1, "{got}");
    assert_eq!(std::fs::read(got["path"].as_str().unwrap()).unwrap(), data);

    assert!(sigterm(&mut daemon).success());
    stop_index.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_download_continues_from_its_verified_chunks_after_restart() {
    let (index, stop_index) = start_index().await;
    let data = random_bytes(16 * common::CHUNK_SIZE, 43);
    let info = content_info(&data);
    let slow = fake::start(data.clone(), Behaviour::StallAfter(5)).await;
    let registration = register_source(&index, &slow.addr_string(), &info, "movie.bin").await;

    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    let mut daemon = serve(&share, &index, &["--api", "127.0.0.1:0"]);
    let api = api_of(&share);
    let (code, created) = http(
        api,
        "POST",
        "/api/downloads",
        Some(r#"{"target":"movie.bin"}"#),
    );
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_u64().unwrap();
    let part = share.join(format!(".{}.part", info.id.to_hex()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !part_has(&part, &info, 5) {
        let state = http(api, "GET", "/api/downloads", None).1;
        let files: Vec<_> = std::fs::read_dir(&share)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            Instant::now() < deadline,
            "no five verified chunks in {part:?}: {state} {files:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.kill().unwrap(); // SIGKILL: no chance to save anything
    daemon.wait().unwrap();
    assert!(!share.join("movie.bin").exists());
    drop(registration);

    let good = fake::start(data.clone(), Behaviour::OnlyFirst(u32::MAX)).await;
    let _reg = register_source(&index, &good.addr_string(), &info, "movie.bin").await;
    let mut daemon = serve(&share, &index, &["--api", "127.0.0.1:0"]);
    let api = api_of(&share);
    let mut last = Value::Null;
    wait_async("the download done after the restart", || {
        last = http(api, "GET", &format!("/api/downloads/{id}"), None).1;
        last["state"] == "done"
    })
    .await;
    assert!(last["chunks_resumed"].as_u64().unwrap() >= 5, "{last}");
    assert_eq!(std::fs::read(share.join("movie.bin")).unwrap(), data);
    assert!(
        good.served.load(std::sync::atomic::Ordering::Relaxed) <= 11,
        "the verified chunks were fetched again"
    );
    assert!(sigterm(&mut daemon).success());
    stop_index.cancel();
}

/// Whether at least `n` chunks of the part file already verify.
fn part_has(part: &Path, info: &ContentInfo, n: u32) -> bool {
    let Ok(bytes) = std::fs::read(part) else {
        return false;
    };
    let verified = (0..info.chunk_count())
        .filter(|&i| {
            let start = i as usize * common::CHUNK_SIZE;
            let end = start + info.chunk_len(i);
            bytes.len() >= end && info.verify_chunk(i, &bytes[start..end])
        })
        .count();
    verified >= n as usize
}

/// `peer get --mode client-server` with a daemon sharing the output folder
/// hands the download to the daemon, which fetches it from the index
/// server's store only, through the same pipeline; the API refuses modes
/// the daemon cannot run with a 400 that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_get_in_client_server_mode_is_handed_to_the_daemon_and_served_by_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let data = random_bytes(5 * common::CHUNK_SIZE + 7, 47);
    std::fs::write(store_dir.join("lecture.pdf"), &data).unwrap();
    let mut store = index_server::store::StoreConfig::new(store_dir);
    // Written whole before the server starts: no need to wait for it to settle.
    store.settle = Duration::ZERO;
    let config = index_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: Some(store),
        ..Default::default()
    };
    let server = index_server::Server::bind(config).await.unwrap();
    let index = server.local_addr().to_string();
    let store = server.store().expect("a store");
    let stop_index = CancellationToken::new();
    tokio::spawn(server.run(stop_index.clone()));

    let share = dir.path().join("share");
    let mut daemon = serve(&share, &index, &["--api", "127.0.0.1:0"]);
    let api = api_of(&share);
    let out = peer_cmd(args(&[
        "get",
        "--mode",
        "client-server",
        "--index",
        &index,
        "-o",
        share.join("from store").to_str().unwrap(),
        "--json",
        "lecture.pdf",
    ]))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("handed to the daemon"), "{stderr}");
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = got["download"]
        .as_u64()
        .unwrap_or_else(|| panic!("not through the daemon: {got}"));
    assert_eq!(std::fs::read(got["path"].as_str().unwrap()).unwrap(), data);
    // Nobody but the store has the file: it served every chunk.
    assert!(store.uploads.chunks() >= 6, "the store served it");
    let (_, listed) = http(api, "GET", &format!("/api/downloads/{id}"), None);
    assert_eq!(listed["mode"], "client-server", "{listed}");
    assert_eq!(listed["server"], index.as_str(), "{listed}");

    // What this hybrid daemon cannot do is a 400 with the reason.
    for (body, says) in [
        (r#"{"target":"lecture.pdf","mode":"p2p"}"#, "hybrid mode"),
        (
            r#"{"target":"lecture.pdf","mode":"napster"}"#,
            "unknown mode",
        ),
        (
            r#"{"target":"lecture.pdf","server":"127.0.0.1:1"}"#,
            "client-server",
        ),
        (
            r#"{"target":"lecture.pdf","mode":"client-server","server":"a b:c"}"#,
            "server",
        ),
    ] {
        let (code, answer) = http(api, "POST", "/api/downloads", Some(body));
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap_or("").contains(says),
            "{body}: {answer}"
        );
    }
    assert!(sigterm(&mut daemon).success());
    stop_index.cancel();
}
