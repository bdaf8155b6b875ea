//! A minimal HTTP/1.1 client for tests of the HTTP endpoints (the daemon's
//! API, the index's page): one request per connection, the whole answer
//! read, chunked bodies decoded. Also [`promtool_check`] for `/metrics`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer: status, headers (names in lower case) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (with the body) if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends `method path` to `addr` with `headers` and `body` (a
/// `Content-Length` is added when there is a body) and reads the answer,
/// within 10 s.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    tokio::time::timeout(
        Duration::from_secs(10),
        raw(addr, method, path, headers, body),
    )
    .await
    .unwrap_or_else(|_| panic!("{method} {path}: no answer within 10 s"))
}

/// `GET path` with no extra header.
pub async fn get(addr: &str, path: &str) -> Response {
    request(addr, "GET", path, &[], b"").await
}

async fn raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Until the server closes or the whole body arrived (some servers keep
    // the connection open whatever it asked). A server may close as soon
    // as it answered (a refused body): what arrived is the answer.
    while !complete(&all) {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    parse(&all).unwrap_or_else(|| {
        panic!(
            "{method} {path}: not an HTTP answer: {:?}",
            String::from_utf8_lossy(&all)
        )
    })
}

/// Whether `all` holds a whole answer: its head and a body as long as
/// its `Content-Length`, or a chunked body's last chunk.
fn complete(all: &[u8]) -> bool {
    let Some(end) = all.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&all[..end]).to_ascii_lowercase();
    let body = &all[end + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    head.contains("transfer-encoding: chunked") && body.ends_with(b"0\r\n\r\n")
}

/// Parses a whole HTTP/1.1 answer.
pub fn parse(all: &[u8]) -> Option<Response> {
    let end = all.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&all[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = all[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok());
        let Some(size) = size else { break };
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
    out
}

/// Runs `promtool check metrics` on `text` and panics with its complaints
/// if it finds any. Without promtool (Debian's `prometheus` package) the
/// check is skipped with one line, except under CI (`CI` set), which
/// installs it: there a missing promtool fails.
pub fn promtool_check(what: &str, text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP promtool check of {what}: promtool not runnable ({e}); apt-get install prometheus");
            return;
        }
        Err(e) => panic!("promtool is needed under CI (apt-get install prometheus): {e}"),
    };
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics failed on {what}:\n{}{}\n--- metrics:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `GET path` and reads the (endless) answer, such as a stream of
/// server-sent events, until `enough` holds for the text read so far, or
/// panics after `deadline`. Returns the text (head and body, chunk framing
/// left in).
pub async fn read_stream(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    deadline: Duration,
    enough: impl Fn(&str) -> bool,
) -> String {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut text = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    let give_up = tokio::time::Instant::now() + deadline;
    while !enough(&text) {
        let n = tokio::time::timeout_at(give_up, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("GET {path}: not enough within {deadline:?}:\n{text}"))
            .unwrap_or(0);
        if n == 0 {
            panic!("GET {path}: the server closed the stream:\n{text}");
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text
}
