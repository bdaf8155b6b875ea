//! `peer uploads [--json]` against a real `peer serve` process: who is
//! served and who waits, as the daemon's API reports them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::hello::{client_hello, Protocol, HELLO_LEN};
use common::peer_proto::{PeerRequest, PeerResponse};
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

/// `GET path` on the API; the JSON body.
fn api_get(addr: SocketAddr, path: &str) -> Value {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// A hand-made requester on the peer protocol (clear text: the peer runs
/// `--insecure`).
struct Requester(TcpStream);

impl Requester {
    fn connect(addr: &str, token: Option<u64>) -> Requester {
        let socket =
            std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5));
        let mut s = socket.unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&client_hello(Protocol::Peer)).unwrap();
        let mut answer = [0u8; HELLO_LEN];
        s.read_exact(&mut answer).unwrap();
        let mut r = Requester(s);
        if let Some(token) = token {
            assert_eq!(
                r.ask(&PeerRequest::Requester { token }),
                PeerResponse::Delivered
            );
        }
        r
    }

    fn ask(&mut self, req: &PeerRequest) -> PeerResponse {
        self.0
            .write_all(&common::frame::encode_frame(req).unwrap())
            .unwrap();
        let mut len = [0u8; 4];
        self.0.read_exact(&mut len).unwrap();
        let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
        self.0.read_exact(&mut payload).unwrap();
        let answer: PeerResponse = common::frame::decode_payload(&payload).unwrap();
        if let PeerResponse::Chunk { len, .. } = answer {
            let mut bytes = vec![0u8; len as usize];
            self.0.read_exact(&mut bytes).unwrap();
        }
        answer
    }
}

fn run(args: &[&str], dir: &Path) -> (bool, String, String) {
    let out = Command::new(PEER)
        .args(args)
        .current_dir(dir)
        .env_remove("PEER_API")
        .env_remove("PEER_API_TOKEN")
        .env_remove("PEER_JSON")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn peer_uploads_lists_who_is_served_and_who_waits() {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let data: Vec<u8> = (0..4 * common::CHUNK_SIZE)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(share.join("popular.bin"), &data).unwrap();
    let id = common::id::content_info(&data).id;
    // No index needed to serve chunks: an address nothing listens on.
    let (_serve, listen, api) = serve_with(&share, &["--max-uploads", "1"]);

    // Nothing yet.
    let (ok, out, err) = run(&["uploads", "--share", share.to_str().unwrap()], dir.path());
    assert!(ok, "{err}");
    assert!(
        out.contains("upload slots: 0 of 1 in use, 0 waiting"),
        "{out}"
    );

    let mut holder = Requester::connect(&listen, Some(1));
    assert!(matches!(
        holder.ask(&PeerRequest::Chunk { id, index: 0 }),
        PeerResponse::Chunk { .. }
    ));
    let mut waiter = Requester::connect(&listen, Some(2));
    assert_eq!(
        waiter.ask(&PeerRequest::Chunk { id, index: 0 }),
        PeerResponse::Queued { position: 1 }
    );
    let holder_addr = holder.0.local_addr().unwrap().to_string();
    let waiter_addr = waiter.0.local_addr().unwrap().to_string();
    wait_for("the chunk to be counted", || {
        api_get(api, "/api/uploads")["active"][0]["bytes"] == common::CHUNK_SIZE as u64
    });

    // From inside the share (found through .p2pshare/api.json).
    let (ok, out, err) = run(&["uploads"], &share);
    assert!(ok, "{err}");
    assert!(
        out.contains("upload slots: 1 of 1 in use, 1 waiting"),
        "{out}"
    );
    let serving = out
        .lines()
        .find(|l| l.contains(&holder_addr))
        .unwrap_or_else(|| panic!("the holder is listed: {out}"));
    assert!(
        serving.contains("popular.bin") && serving.contains("256.0 KiB"),
        "{serving}"
    );
    let waiting = out
        .lines()
        .find(|l| l.contains(&waiter_addr))
        .unwrap_or_else(|| panic!("the waiter is listed: {out}"));
    assert!(waiting.trim_start().starts_with("1 "), "{waiting}");

    let (ok, out, err) = run(&["uploads", "--json"], &share);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["slots"], 1);
    assert_eq!(v["active"][0]["peer"], holder_addr.as_str());
    assert_eq!(v["active"][0]["name"], "popular.bin");
    assert_eq!(v["queue"][0]["peer"], waiter_addr.as_str());
    assert_eq!(v["queue"][0]["position"], 1);
    assert!(v["queue"][0]["waiting_since"].as_u64().unwrap() > 1_700_000_000);

    // No daemon for a folder: a clear error.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (ok, _, err) = run(&["uploads", "--share", empty.to_str().unwrap()], dir.path());
    assert!(!ok);
    assert!(err.contains("no running daemon"), "{err}");
}

/// Starts `peer serve` over `share` with `flags` (no index needed to serve
/// chunks); returns the process and its chunk and API addresses.
fn serve_with(share: &Path, flags: &[&str]) -> (Killed, String, SocketAddr) {
    let serve = Killed(
        Command::new(PEER)
            .args(["serve", "--share"])
            .arg(share)
            .args(["--index", "127.0.0.1:9", "--listen", "127.0.0.1:0"])
            .args(["--settle", "0", "--api", "127.0.0.1:0"])
            // The hand-made requesters speak clear text.
            .arg("--insecure")
            .args(flags)
            .env_remove("PEER_API")
            .env_remove("PEER_API_TOKEN")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let api_file = share.join(".p2pshare/api.json");
    wait_for("the API file", || api_file.exists());
    let api: SocketAddr = serde_json::from_slice::<Value>(&std::fs::read(&api_file).unwrap())
        .unwrap()["api"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    wait_for("the file to be shared", || {
        api_get(api, "/api/status")["files"] == 1
    });
    let listen = api_get(api, "/api/status")["listen"]
        .as_str()
        .unwrap()
        .to_string();
    (serve, listen, api)
}

/// The upload-queue flags of `peer serve` change what requesters get, not
/// just what parses: `--max-uploads 2` serves two at once where
/// `--max-uploads 1` queues the second (served when the first leaves), and
/// `--upload-queue-grace 2s` keeps a place across a quick reconnection but
/// loses it well before the default minute would.
#[test]
fn the_upload_queue_flags_of_serve_change_who_is_served_and_who_keeps_a_place() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..2 * common::CHUNK_SIZE)
        .map(|i| (i * 13 % 251) as u8)
        .collect();
    let id = common::id::content_info(&data).id;
    let chunk = PeerRequest::Chunk { id, index: 0 };
    let is_chunk = |a: &PeerResponse| matches!(a, PeerResponse::Chunk { .. });
    let queued = |position| PeerResponse::Queued { position };
    let mut shares = Vec::new();
    for name in ["two", "one"] {
        let share = dir.path().join(name);
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(share.join("f.bin"), &data).unwrap();
        shares.push(share);
    }
    // Holders never idle out here, however slow this machine is.
    let (_two, two, two_api) = serve_with(
        &shares[0],
        &["--max-uploads", "2", "--upload-slot-idle", "1h"],
    );
    let (_one, one, one_api) = serve_with(
        &shares[1],
        &[
            "--max-uploads",
            "1",
            "--upload-queue-grace",
            "2s",
            "--upload-slot-idle",
            "1h",
        ],
    );

    // Two slots: two requesters served at once, the third waits.
    let mut r1 = Requester::connect(&two, Some(1));
    let mut r2 = Requester::connect(&two, Some(2));
    assert!(is_chunk(&r1.ask(&chunk)));
    assert!(is_chunk(&r2.ask(&chunk)));
    let mut r3 = Requester::connect(&two, Some(3));
    assert_eq!(r3.ask(&chunk), queued(1));
    assert_eq!(api_get(two_api, "/api/uploads")["slots_in_use"], 2);

    // One slot: the second requester waits at position 1, the third at 2.
    let mut holder = Requester::connect(&one, Some(1));
    assert!(is_chunk(&holder.ask(&chunk)));
    let mut a = Requester::connect(&one, Some(2));
    let mut b = Requester::connect(&one, Some(3));
    assert_eq!(a.ask(&chunk), queued(1));
    assert_eq!(b.ask(&chunk), queued(2));

    // `a` leaves and comes back within the 2 s grace: still first.
    drop(a);
    wait_for("the queue to see a leave", || {
        api_get(one_api, "/api/uploads")["queue"][0]["connected"] == false
    });
    let mut a = Requester::connect(&one, Some(2));
    assert_eq!(a.ask(&chunk), queued(1), "back within the grace");
    // Away past the grace (wait_for gives up after 30 s, long before the
    // default 60 s grace would end): the place goes, `b` moves up, and `a`
    // starts again at the end.
    drop(a);
    wait_for("the place to be given up after 2 s", || {
        let q = api_get(one_api, "/api/uploads");
        q["queue"].as_array().map(Vec::len) == Some(1)
    });
    let mut a = Requester::connect(&one, Some(2));
    assert_eq!(a.ask(&chunk), queued(2), "a lost place starts at the end");

    // The holder finishes: the head of the queue (`b`) gets the slot.
    drop(holder);
    let give_up = Instant::now() + Duration::from_secs(30);
    let mut granted = b.ask(&PeerRequest::Wait);
    while granted == queued(1) && Instant::now() < give_up {
        granted = b.ask(&PeerRequest::Wait);
    }
    assert_eq!(granted, PeerResponse::SlotGranted);
    assert!(is_chunk(&b.ask(&chunk)));
    assert_eq!(a.ask(&chunk), queued(1));
    drop((r1, r2, r3));
}
