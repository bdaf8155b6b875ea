//! The daemon's HTTP/JSON API with real daemons on 127.0.0.1 port 0:
//! status, token, Host check, hostile input, and downloads owned by the daemon.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One raw HTTP/1.1 request (so tests can send what no client library
/// would); returns the status and the body parsed as JSON (Null if not JSON).
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    // Read the head and Content-Length bytes of body (a server may keep
    // the connection open to drain a body it refused).
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if let Some(len) = len {
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the API answered within 10 s");
    let text = String::from_utf8_lossy(&buf);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A request with the usual headers; `extra` are more header lines.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &[&str],
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    raw(addr, req.as_bytes()).await
}

fn api_config(token: Option<&str>) -> peer::api::ApiConfig {
    peer::api::ApiConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: token.map(str::to_string),
        fallback_to_any_port: false,
    }
}

async fn start_api_peer(share: &Path, index: &str, token: Option<&str>) -> Peer {
    let mut config = peer_config(share, index);
    config.api = Some(api_config(token));
    start_peer_with(config).await
}

fn is_error(body: &Value) -> bool {
    body.get("error")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
}

#[tokio::test]
async fn status_auth_host_check_and_hostile_input_get_json_answers() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    write_file(&share, "a.bin", &random_bytes(100_000, 1));
    let mut p = start_api_peer(&share, &index.addr_string(), None).await;
    p.wait_registered(1).await;
    let api = p.daemon.api_addr().expect("API on");

    // The state folder says where the API is.
    let file: Value =
        serde_json::from_slice(&std::fs::read(share.join(".p2pshare/api.json")).unwrap()).unwrap();
    assert_eq!(file["api"], format!("http://{api}"));

    let (code, status) = call(api, "GET", "/api/status", &[], None).await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["files"], 1);
    assert_eq!(status["bytes"], 100_000);
    assert_eq!(status["mode"], "hybrid");
    assert_eq!(status["listen"], p.addr());
    assert_eq!(status["api"], api.to_string());
    assert!(status["uptime_s"].is_u64());

    // DNS rebinding: a foreign name in Host is refused; localhost is fine.
    let req = "GET /api/status HTTP/1.1\r\nHost: evil.example:80\r\nConnection: close\r\n\r\n";
    let (code, body) = raw(api, req.as_bytes()).await;
    assert_eq!(code, 403);
    assert!(is_error(&body), "{body}");
    let req = format!(
        "GET /api/status HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
        api.port()
    );
    assert_eq!(raw(api, req.as_bytes()).await.0, 200);
    // A cross-site page's request.
    let (code, _) = call(
        api,
        "GET",
        "/api/status",
        &["Origin: http://evil.example"],
        None,
    )
    .await;
    assert_eq!(code, 403);

    // Unknown routes and methods.
    let (code, body) = call(api, "GET", "/api/nope", &[], None).await;
    assert_eq!(code, 404);
    assert!(is_error(&body), "{body}");
    let (code, body) = call(api, "DELETE", "/api/status", &[], None).await;
    assert_eq!(code, 405);
    assert!(is_error(&body), "{body}");
    // Garbage that is not HTTP: the connection is answered or closed, the daemon lives on.
    let mut s = TcpStream::connect(api).await.unwrap();
    s.write_all(b"\x00\x01\x02 hello\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
    assert_eq!(call(api, "GET", "/api/status", &[], None).await.0, 200);

    p.stop().await;
    assert!(
        !share.join(".p2pshare/api.json").exists(),
        "a clean stop removes the API file"
    );
    index.stop().await;
}

#[tokio::test]
async fn a_token_is_required_on_every_api_request() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let p = start_api_peer(&share, &index.addr_string(), Some("s3cret")).await;
    let api = p.daemon.api_addr().unwrap();
    let (code, body) = call(api, "GET", "/api/status", &[], None).await;
    assert_eq!(code, 401);
    assert!(is_error(&body));
    let (code, _) = call(
        api,
        "GET",
        "/api/status",
        &["Authorization: Bearer wrong"],
        None,
    )
    .await;
    assert_eq!(code, 401);
    // Unknown routes under /api are not told apart from known ones without the token.
    assert_eq!(call(api, "GET", "/api/nope", &[], None).await.0, 401);
    let (code, _) = call(
        api,
        "GET",
        "/api/status",
        &["Authorization: Bearer s3cret"],
        None,
    )
    .await;
    assert_eq!(code, 200);
    // The token is recorded for local commands, readable by its owner only.
    let token_file = share.join(".p2pshare/api-token");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), "s3cret");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "token file mode {mode:o}");
    p.stop().await;
    index.stop().await;
}

#[tokio::test]
async fn a_non_loopback_api_without_a_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let mut config = peer_config(&share, "127.0.0.1:1");
    config.api = Some(peer::api::ApiConfig {
        addr: "0.0.0.0:0".parse().unwrap(),
        token: None,
        fallback_to_any_port: false,
    });
    let err = match try_start_peer_with(config).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a non-loopback API without a token started"),
    };
    assert!(err.contains("--api-token"), "{err}");
}

/// A peer sharing `files` (name, bytes) and an API daemon downloading at
/// most `rate` bytes/s with `max_active` downloads at once.
async fn source_and_daemon(
    dir: &Path,
    index: &str,
    files: &[(&str, Vec<u8>)],
    rate: Option<u64>,
    max_active: usize,
) -> (Peer, Peer) {
    let src_share = dir.join("src");
    for (name, data) in files {
        write_file(&src_share, name, data);
    }
    let mut source = start_peer(&src_share, index).await;
    source.wait_registered(files.len()).await;
    let mut config = peer_config(&dir.join("dst"), index);
    config.api = Some(api_config(None));
    config.max_download_rate = rate;
    config.max_active_downloads = max_active;
    let daemon = start_peer_with(config).await;
    (source, daemon)
}

async fn state_of(api: SocketAddr, id: u64) -> Value {
    let (code, d) = call(api, "GET", &format!("/api/downloads/{id}"), &[], None).await;
    assert_eq!(code, 200, "{d}");
    d
}

async fn wait_state(api: SocketAddr, id: u64, states: &[&str]) -> Value {
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        last = state_of(api, id).await;
        if states.iter().any(|s| last["state"] == *s) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("download {id} never reached {states:?}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_created_listed_paused_resumed_and_cancelled_through_the_api() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let small = random_bytes(300_000, 7);
    let big = random_bytes(4 << 20, 8);
    let (source, daemon) = source_and_daemon(
        dir.path(),
        &index.addr_string(),
        &[("small.bin", small.clone()), ("big.bin", big.clone())],
        Some(512 * 1024),
        3,
    )
    .await;
    let api = daemon.daemon.api_addr().unwrap();

    // A small file by name: done, in the shared folder, listed until cleared.
    let (code, d) = call(
        api,
        "POST",
        "/api/downloads",
        &[],
        Some(r#"{"target":"small.bin"}"#),
    )
    .await;
    assert_eq!(code, 201, "{d}");
    let small_id = d["id"].as_u64().unwrap();
    let done = wait_state(api, small_id, &["done", "failed"]).await;
    assert_eq!(done["state"], "done", "{done}");
    let path = done["path"].as_str().unwrap();
    assert_eq!(std::fs::read(path).unwrap(), small);
    assert_eq!(done["size"], small.len());
    assert_eq!(done["bytes_done"], small.len());

    // Asked again into a folder outside the share: the share's copy is
    // copied there (verified), not just pointed at.
    let elsewhere = tempfile::tempdir().unwrap();
    let body = format!(
        r#"{{"target":"small.bin","out":{:?}}}"#,
        elsewhere.path().display().to_string()
    );
    let (code, d) = call(api, "POST", "/api/downloads", &[], Some(&body)).await;
    assert_eq!(code, 201, "{d}");
    let copy_id = d["id"].as_u64().unwrap();
    let copy = wait_state(api, copy_id, &["done", "failed"]).await;
    assert_eq!(copy["state"], "done", "{copy}");
    let copied = std::path::PathBuf::from(copy["path"].as_str().unwrap());
    assert_eq!(
        copied.parent().map(|p| p.canonicalize().unwrap()),
        Some(elsewhere.path().canonicalize().unwrap()),
        "{copy}"
    );
    assert_eq!(std::fs::read(&copied).unwrap(), small);
    assert_eq!(
        std::fs::read(path).unwrap(),
        small,
        "the share's copy stays"
    );
    assert_eq!(copy["outcome"]["already_present"], true, "{copy}");
    // Nothing but the file is left in that folder (no temporary copy).
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 1);
    // Cleared from the list (the file stays).
    let (code, d) = call(
        api,
        "DELETE",
        &format!("/api/downloads/{copy_id}"),
        &[],
        None,
    )
    .await;
    assert!(code == 200 || code == 204, "{code} {d}");
    assert!(copied.is_file());
    assert_eq!(
        done["file_id"],
        common::id::content_info(&small).id.to_hex()
    );

    // A slow one (rate-capped): pause keeps it, resume continues, DELETE cancels.
    let body = format!(
        r#"{{"target":"big.bin","out":{:?}}}"#,
        dir.path().join("out").display().to_string()
    );
    let (code, d) = call(api, "POST", "/api/downloads", &[], Some(&body)).await;
    assert_eq!(code, 201, "{d}");
    let big_id = d["id"].as_u64().unwrap();
    // Asked again while it runs: the same download, not a second one.
    let (code, again) = call(api, "POST", "/api/downloads", &[], Some(&body)).await;
    assert_eq!(code, 201, "{again}");
    assert_eq!(again["id"], big_id, "{again}");
    wait_until("some bytes verified", Duration::from_secs(30), || async {
        state_of(api, big_id).await["bytes_done"]
            .as_u64()
            .unwrap_or(0)
            > 0
    })
    .await;
    let (code, d) = call(
        api,
        "POST",
        &format!("/api/downloads/{big_id}/pause"),
        &[],
        None,
    )
    .await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["state"], "paused");
    // A paused download still shows what it had verified (not 0%).
    let paused_at = d["bytes_done"].as_u64().unwrap_or(0);
    assert!(paused_at > 0, "{d}");
    assert_eq!(state_of(api, big_id).await["bytes_done"], paused_at);
    // Pausing twice is a conflict, not a crash.
    let (code, d) = call(
        api,
        "POST",
        &format!("/api/downloads/{big_id}/pause"),
        &[],
        None,
    )
    .await;
    assert_eq!(code, 409, "{d}");
    assert!(is_error(&d));
    let (code, list) = call(api, "GET", "/api/downloads", &[], None).await;
    assert_eq!(code, 200);
    let ids: Vec<u64> = list["downloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![small_id, big_id]);
    assert_eq!(list["total"], 2);
    assert_eq!(list["counts"]["done"], 1);
    assert_eq!(list["counts"]["paused"], 1);
    // Filtered and paged.
    let (_, done_only) = call(api, "GET", "/api/downloads?state=done", &[], None).await;
    assert_eq!(done_only["total"], 1);
    assert_eq!(done_only["downloads"][0]["id"], small_id);
    let (_, page) = call(api, "GET", "/api/downloads?offset=1&limit=1", &[], None).await;
    assert_eq!(page["total"], 2);
    assert_eq!(page["downloads"].as_array().unwrap().len(), 1);
    assert_eq!(page["downloads"][0]["id"], big_id);
    let (code, bad) = call(api, "GET", "/api/downloads?state=bogus", &[], None).await;
    assert_eq!(code, 400, "{bad}");
    let (code, bad) = call(api, "GET", "/api/downloads?limit=-1", &[], None).await;
    assert_eq!(code, 400, "{bad}");
    let (code, d) = call(
        api,
        "POST",
        &format!("/api/downloads/{big_id}/resume"),
        &[],
        None,
    )
    .await;
    assert_eq!(code, 200, "{d}");
    wait_state(api, big_id, &["waiting", "active"]).await;
    let (code, _) = call(
        api,
        "DELETE",
        &format!("/api/downloads/{big_id}"),
        &[],
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        call(api, "GET", &format!("/api/downloads/{big_id}"), &[], None)
            .await
            .0,
        404
    );
    // Clearing a finished one.
    assert_eq!(
        call(
            api,
            "DELETE",
            &format!("/api/downloads/{small_id}"),
            &[],
            None
        )
        .await
        .0,
        200
    );
    let (_, list) = call(api, "GET", "/api/downloads", &[], None).await;
    assert_eq!(list["downloads"].as_array().unwrap().len(), 0);

    daemon.stop().await;
    source.stop().await;
    index.stop().await;
}

#[tokio::test]
async fn hostile_download_requests_get_4xx_json_errors() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let p = start_api_peer(&dir.path().join("share"), &index.addr_string(), None).await;
    let api = p.daemon.api_addr().unwrap();
    let cases: Vec<(&str, String, Option<String>, u16)> = vec![
        (
            "POST",
            "/api/downloads".into(),
            Some("{not json".into()),
            400,
        ),
        (
            "POST",
            "/api/downloads".into(),
            Some(r#"{"target": 5}"#.into()),
            422,
        ),
        (
            "POST",
            "/api/downloads".into(),
            Some(r#"{"nothing":"x"}"#.into()),
            422,
        ),
        (
            "POST",
            "/api/downloads".into(),
            Some(r#"{"target":"  "}"#.into()),
            400,
        ),
        (
            "POST",
            "/api/downloads".into(),
            Some(r#"{"target":"x","out":"relative/dir"}"#.into()),
            400,
        ),
        (
            "POST",
            "/api/downloads".into(),
            Some(format!(r#"{{"target":"{}"}}"#, "a".repeat(100_000))),
            413,
        ),
        ("GET", "/api/downloads/999".into(), None, 404),
        ("GET", "/api/downloads/-1".into(), None, 400),
        (
            "GET",
            "/api/downloads/99999999999999999999999".into(),
            None,
            400,
        ),
        ("POST", "/api/downloads/999/pause".into(), None, 404),
        ("DELETE", "/api/downloads/abc".into(), None, 400),
    ];
    for (method, path, body, want) in cases {
        let (code, answer) = call(api, method, &path, &[], body.as_deref()).await;
        assert_eq!(code, want, "{method} {path} {body:?}: {answer}");
        assert!(is_error(&answer), "{method} {path}: {answer}");
    }
    // Without the JSON content type.
    let req = format!("POST /api/downloads HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n\r\n{{\"target\":\"x\"}}");
    let (code, answer) = raw(api, req.as_bytes()).await;
    assert_eq!(code, 415, "{answer}");
    // A body that claims more than the cap is refused before it is read.
    let req = format!("POST /api/downloads HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{{");
    let (code, answer) = raw(api, req.as_bytes()).await;
    assert_eq!(code, 413, "{answer}");
    // Still alive, nothing listed.
    let (code, list) = call(api, "GET", "/api/downloads", &[], None).await;
    assert_eq!(code, 200);
    assert_eq!(list["downloads"].as_array().unwrap().len(), 0);
    p.stop().await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_active_downloads_run_and_the_rest_queue_in_order() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("f{i}.bin"), random_bytes(2 << 20, 20 + i)))
        .collect();
    let named: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let (source, daemon) = source_and_daemon(
        dir.path(),
        &index.addr_string(),
        &named,
        Some(256 * 1024),
        1,
    )
    .await;
    let api = daemon.daemon.api_addr().unwrap();
    let mut ids = Vec::new();
    for (name, _) in &files {
        let body = format!(r#"{{"target":"{name}"}}"#);
        let (code, d) = call(api, "POST", "/api/downloads", &[], Some(&body)).await;
        assert_eq!(code, 201, "{d}");
        ids.push(d["id"].as_u64().unwrap());
    }
    let first = wait_state(api, ids[0], &["waiting", "active"]).await;
    assert!(first.get("queue_position").is_none());
    let second = state_of(api, ids[1]).await;
    let third = state_of(api, ids[2]).await;
    assert_eq!(second["state"], "queued", "{second}");
    assert_eq!(second["queue_position"], 1);
    assert_eq!(third["queue_position"], 2);
    // Pausing the running one frees its slot for the next in line.
    call(
        api,
        "POST",
        &format!("/api/downloads/{}/pause", ids[0]),
        &[],
        None,
    )
    .await;
    wait_state(api, ids[1], &["waiting", "active"]).await;
    assert_eq!(state_of(api, ids[2]).await["queue_position"], 1);
    let (_, list) = call(api, "GET", "/api/downloads", &[], None).await;
    let running = list["downloads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["state"] == "active" || d["state"] == "waiting")
        .count();
    assert_eq!(running, 1, "{list}");
    daemon.stop().await;
    source.stop().await;
    index.stop().await;
}

/// The API of a daemon in p2p mode (no index anywhere): search floods the
/// overlay through its own node, peers are its overlay neighbours, and a
/// download created by name goes through the same pipeline, found by
/// flooding, and lands byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p2p_daemon_searches_lists_peers_and_downloads_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(3 * common::CHUNK_SIZE + 17, 77);
    write_file(&dir.path().join("seed"), "p2p only song.ogg", &data);
    let seed = start_p2p_node(&dir.path().join("seed"), Vec::new(), 4).await;
    let mut config = p2p_config(&dir.path().join("me"), vec![seed.addr()], 4);
    config.api = Some(api_config(None));
    let me = start_peer_with(config).await;
    let api = me.daemon.api_addr().unwrap();
    wait_until(
        "the overlay link is up",
        Duration::from_secs(10),
        || async {
            me.daemon
                .overlay()
                .is_some_and(|o| !o.neighbours().is_empty())
        },
    )
    .await;

    let (code, status) = call(api, "GET", "/api/status", &[], None).await;
    assert_eq!(
        (code, status["mode"].as_str()),
        (200, Some("p2p")),
        "{status}"
    );
    let (code, peers) = call(api, "GET", "/api/peers", &[], None).await;
    assert_eq!(code, 200, "{peers}");
    assert_eq!(peers["source"], "overlay");
    assert_eq!(peers["peers"][0]["addr"], seed.addr(), "{peers}");
    let (code, found) = call(api, "GET", "/api/search?q=song", &[], None).await;
    assert_eq!(code, 200, "{found}");
    assert_eq!(found["results"][0]["name"], "p2p only song.ogg", "{found}");
    assert_eq!(
        found["results"][0]["id"],
        common::id::content_info(&data).id.to_hex()
    );

    let (code, created) = call(
        api,
        "POST",
        "/api/downloads",
        &[],
        Some(r#"{"target": "p2p only song.ogg"}"#),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_u64().unwrap();
    let done = wait_state(api, id, &["done", "failed"]).await;
    assert_eq!(done["state"], "done", "{done}");
    let path = done["path"].as_str().unwrap();
    assert_eq!(std::fs::read(path).unwrap(), data);
    assert!(seed.chunks_served() >= 4, "the seed served it");
}

/// No task outlives a dropped daemon: with the API up, one download
/// running and one queued, dropping the `Daemon` (no shutdown token
/// cancelled, no `wait`) stops every task it started, closes its chunk
/// and API ports, and releases its download list, which a new daemon on
/// the same share opens with both downloads still listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_daemon_stops_every_task_and_closes_its_ports() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("one.bin", random_bytes(2 << 20, 31)),
        ("two.bin", random_bytes(2 << 20, 32)),
    ];
    // Slow enough that the first download is still running when dropped.
    let (source, daemon) =
        source_and_daemon(dir.path(), &index.addr_string(), &files, Some(64 * 1024), 1).await;
    let api = daemon.daemon.api_addr().unwrap();
    let mut ids = Vec::new();
    for (name, _) in &files {
        let body = format!(r#"{{"target":"{name}"}}"#);
        let (code, d) = call(api, "POST", "/api/downloads", &[], Some(&body)).await;
        assert_eq!(code, 201, "{d}");
        ids.push(d["id"].as_u64().unwrap());
    }
    wait_state(api, ids[0], &["waiting", "active"]).await;
    assert_eq!(state_of(api, ids[1]).await["state"], "queued");

    let Peer {
        daemon,
        share,
        shutdown,
    } = daemon;
    let tracker = daemon.tracker();
    let chunk_port = daemon.listen_addr();
    assert!(!tracker.is_empty(), "a running daemon has tasks");
    drop(daemon);
    wait_until(
        "every task of the dropped daemon to stop",
        Duration::from_secs(10),
        || {
            let tracker = tracker.clone();
            async move { tracker.is_empty() }
        },
    )
    .await;
    assert!(!shutdown.is_cancelled(), "only the drop stopped it");
    for (what, addr) in [("chunk server", chunk_port), ("API", api)] {
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the {what} port {addr} still accepts connections"
        );
    }

    // The store was closed with it: a new daemon opens it and lists both.
    let mut config = peer_config(&share, &index.addr_string());
    config.api = Some(api_config(None));
    config.max_active_downloads = 1;
    let again = start_peer_with(config).await;
    let (code, list) = call(
        again.daemon.api_addr().unwrap(),
        "GET",
        "/api/downloads",
        &[],
        None,
    )
    .await;
    assert_eq!(code, 200, "{list}");
    let listed: Vec<u64> = list["downloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, ids, "{list}");
    again.stop().await;
    source.stop().await;
    index.stop().await;
}

/// The first `downloads` event of `/api/events{query}`, parsed (axum
/// writes an event's `data:` line before its `event:` line).
async fn first_downloads_event(api: SocketAddr, query: &str) -> Value {
    let marker = "\nevent: downloads";
    let text = http::read_stream(
        &api.to_string(),
        &format!("/api/events{query}"),
        &[],
        Duration::from_secs(20),
        |t| t.contains(marker),
    )
    .await;
    let before = text.split_once(marker).unwrap().0;
    let data = before
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no data line before the event: {before}"));
    serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"))
}

/// A long download list is watched a page at a time (what the web page
/// does): `/api/events?offset=&limit=` sends that page's downloads only,
/// with the whole list's total and counts, and refuses a zero limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_of_one_page_of_a_long_download_list_hold_that_page_only() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = peer_config(&dir.path().join("share"), &index.addr_string());
    config.api = Some(api_config(None));
    config.max_active_downloads = 1;
    let daemon = start_peer_with(config).await;
    let api = daemon.daemon.api_addr().unwrap();
    // Names nobody offers: they fail or wait, and every one stays listed.
    const N: u64 = 130;
    for i in 0..N {
        let body = format!(r#"{{"target":"nobody has {i}.bin"}}"#);
        let (code, d) = call(api, "POST", "/api/downloads", &[], Some(&body)).await;
        assert_eq!(code, 201, "{d}");
    }

    let page = first_downloads_event(api, "?offset=50&limit=50").await;
    assert_eq!(page["full"], true, "{page}");
    assert_eq!(page["total"], N, "{page}");
    let ids: Vec<u64> = page["downloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (51..=100).collect::<Vec<u64>>());
    let counted: u64 = page["counts"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(counted, N, "{page}");
    // Without a window: every download, as before.
    let all = first_downloads_event(api, "").await;
    assert_eq!(all["downloads"].as_array().unwrap().len() as u64, N);

    let (code, answer) = call(api, "GET", "/api/events?limit=0", &[], None).await;
    assert_eq!(code, 400, "{answer}");
    assert!(is_error(&answer), "{answer}");
    daemon.stop().await;
    index.stop().await;
}

/// A download still resolving its target (here at an index that accepts
/// and never answers) stops with the daemon at once, not after the
/// index's hello timeout: `stop` finds no task left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_stuck_resolving_stops_with_the_daemon() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut config = peer_config(&dir.path().join("share"), &silent_addr);
    config.api = Some(api_config(None));
    let daemon = start_peer_with(config).await;
    let api = daemon.daemon.api_addr().unwrap();
    let (code, d) = call(
        api,
        "POST",
        "/api/downloads",
        &[],
        Some(r#"{"target":"anything.bin"}"#),
    )
    .await;
    assert_eq!(code, 201, "{d}");
    wait_state(api, d["id"].as_u64().unwrap(), &["waiting"]).await;
    let stopping = std::time::Instant::now();
    daemon.stop().await;
    assert!(
        stopping.elapsed() < common::limits::HELLO_TIMEOUT,
        "stopping waited for the index's hello timeout"
    );
    held.abort();
}
