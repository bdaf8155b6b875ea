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
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the API answered within 10 s")
        .unwrap();
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
    let api = p.daemon.api_addr.expect("API on");

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
    let api = p.daemon.api_addr.unwrap();
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
