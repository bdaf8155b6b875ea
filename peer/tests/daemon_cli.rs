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
    let mut s = TcpStream::connect(addr).unwrap();
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
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf);
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Where the daemon sharing `share` says its API is (once it wrote it).
fn api_of(share: &Path) -> SocketAddr {
    let file = share.join(".p2pshare/api.json");
    wait_for("the API file", || file.exists());
    let v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    v["api"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap()
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
