//! The HTTP side: the index's network page (`--http`), `/metrics` on the
//! index and the peer daemon (checked by promtool), the daemon's API
//! endpoints and its web page. Real servers on 127.0.0.1 port 0.

use std::time::Duration;

use tests::http::{self, promtool_check};
use tests::{start_peer, wait_until, write_file};
use tokio_util::sync::CancellationToken;

/// An index with its network page on loopback port 0.
struct PagedIndex {
    addr: String,
    http: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), index_server::ServerError>>,
}

async fn start_paged_index() -> PagedIndex {
    tests::init_logging();
    let config = index_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        lease_ttl: Duration::from_secs(30),
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    };
    let server = index_server::Server::bind(config)
        .await
        .expect("bind index");
    let addr = server.local_addr().to_string();
    let http = server.http_addr().expect("the page listens").to_string();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    PagedIndex {
        addr,
        http,
        shutdown,
        task,
    }
}

impl PagedIndex {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("index task").expect("index ran");
    }
}

/// The page shows a live network: a registered peer, its file and the
/// requests it made appear in the JSON (counts, rates, a history for the
/// chart); the page itself loads nothing from elsewhere; `/metrics`
/// passes promtool and counts the same; nothing can be changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_page_shows_the_network_live() {
    let index = start_paged_index().await;
    let dir = tempfile::tempdir().unwrap();
    write_file(&dir.path().join("share"), "lecture notes.pdf", &[7u8; 5000]);
    let mut peer = start_peer(&dir.path().join("share"), &index.addr).await;
    peer.wait_registered(1).await;
    let mut client = peer::index_client::IndexClient::connect(&index.addr)
        .await
        .unwrap();
    for _ in 0..3 {
        let hits = client.search(vec!["lecture".into()], 10).await.unwrap();
        assert_eq!(hits.len(), 1);
    }

    wait_until(
        "the page's JSON shows the peer, its file and the searches",
        Duration::from_secs(10),
        || {
            let http = index.http.clone();
            async move {
                let r = http::get(&http, "/api/network").await;
                assert_eq!(r.status, 200);
                assert!(r
                    .header("content-type")
                    .unwrap()
                    .starts_with("application/json"));
                let last = r.json();
                last["peers"] == 1
                    && last["files"] == 1
                    && last["bytes"] == 5000
                    && last["requests_total"]["Search"].as_u64() >= Some(3)
                    && last["requests_total"]["Login"] == 1
                    && last["history"].as_array().is_some_and(|h| {
                        h.iter()
                            .any(|s| s["requests"]["Search"].as_u64() >= Some(1))
                            && h.last().is_some_and(|s| s["peers"] == 1)
                    })
                    && last["requests_per_sec"]["Search"].as_f64() > Some(0.0)
            }
        },
    )
    .await;

    let page = http::get(&index.http, "/").await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = page.text();
    assert!(html.contains("<svg id=\"chart\""), "{html}");
    assert!(html.contains("api/network"));
    // Works offline: nothing is loaded from another host.
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));

    let metrics = http::get(&index.http, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text();
    promtool_check("the index's /metrics", &text);
    for line in [
        "p2pshare_index_sessions 1",
        "p2pshare_index_files 1",
        "p2pshare_index_shared_bytes 5000",
        "p2pshare_index_requests_total{kind=\"Login\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
    }
    let searches = metric(&text, "p2pshare_index_search_duration_seconds_count");
    assert!(searches >= 3.0, "{text}");

    // Read-only: nothing but GET.
    for (method, path) in [
        ("POST", "/api/network"),
        ("DELETE", "/"),
        ("PUT", "/metrics"),
    ] {
        let r = http::request(&index.http, method, path, &[], b"{}").await;
        assert_eq!(r.status, 405, "{method} {path}");
    }
    assert_eq!(http::get(&index.http, "/nope").await.status, 404);

    peer.stop().await;
    index.stop().await;
}

/// The value of the sample named exactly `name` (no labels).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
}

const TOKEN: &str = "test-token-0123456789";

/// A peer with its API on loopback port 0 (and a token, if given).
async fn start_api_peer(
    share: &std::path::Path,
    index: &str,
    nick: &str,
    token: Option<&str>,
) -> (tests::Peer, String) {
    let mut config = tests::peer_config(share, index);
    config.nick = Some(nick.into());
    config.api = Some(peer::api::ApiConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: token.map(Into::into),
        fallback_to_any_port: false,
    });
    let peer = tests::start_peer_with(config).await;
    let api = peer.daemon.api_addr().expect("the API listens").to_string();
    (peer, api)
}

fn bearer() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

/// `GET path` with the test token.
async fn get_auth(api: &str, path: &str) -> http::Response {
    let (n, v) = bearer();
    http::request(api, "GET", path, &[(n, &v)], b"").await
}

/// `POST path` with the test token and a JSON body.
async fn post_auth(api: &str, path: &str, body: &str) -> http::Response {
    let (n, v) = bearer();
    http::request(
        api,
        "POST",
        path,
        &[(n, &v), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
}

/// Shared files, peers online, messages both ways, the event stream, the
/// page and `/metrics` (promtool-clean, counting what happened), with real
/// daemons: alice without a token, bob with one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_endpoints_with_real_daemons() {
    let index = tests::start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let alice_share = dir.path().join("alice");
    write_file(&alice_share, "b side.ogg", &[1u8; 3000]);
    write_file(&alice_share, "a side.ogg", &[2u8; 2000]);
    write_file(&alice_share, "sub/notes.txt", b"hello");
    let (mut alice, alice_api) =
        start_api_peer(&alice_share, &index.addr_string(), "alice", None).await;
    alice.wait_registered(3).await;
    let (mut bob, bob_api) = start_api_peer(
        &dir.path().join("bob"),
        &index.addr_string(),
        "bob",
        Some(TOKEN),
    )
    .await;
    bob.wait_registered(0).await;

    // Shared files, sorted by name.
    let shared = http::get(&alice_api, "/api/shared").await;
    assert_eq!(shared.status, 200, "{}", shared.text());
    let names: Vec<String> = shared.json()["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a side.ogg", "b side.ogg", "sub/notes.txt"]);
    assert_eq!(shared.json()["files"][0]["size"], 2000);
    assert_eq!(shared.json()["files"][0]["id"].as_str().unwrap().len(), 64);

    // Search through bob's API (hybrid: at the index), with filters.
    let found = get_auth(&bob_api, "/api/search?q=side").await;
    assert_eq!(found.status, 200, "{}", found.text());
    let found = found.json();
    assert_eq!(found["total"], 2, "{found}");
    assert_eq!(found["truncated"], false);
    let mut hits: Vec<(String, u64, u64)> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().to_string(),
                h["size"].as_u64().unwrap(),
                h["sources"].as_u64().unwrap(),
            )
        })
        .collect();
    hits.sort();
    assert_eq!(
        hits,
        [
            ("a side.ogg".to_string(), 2000, 1),
            ("b side.ogg".to_string(), 3000, 1)
        ]
    );
    let small = get_auth(&bob_api, "/api/search?q=side&ext=OGG&max_size=2500")
        .await
        .json();
    assert_eq!(small["results"].as_array().unwrap().len(), 1, "{small}");
    assert_eq!(small["results"][0]["name"], "a side.ogg");
    let cut = get_auth(&bob_api, "/api/search?q=side&limit=1")
        .await
        .json();
    assert_eq!(
        (cut["results"].as_array().unwrap().len(), &cut["truncated"]),
        (1, &serde_json::json!(true)),
        "{cut}"
    );
    let none = get_auth(&bob_api, "/api/search?q=nothing+like+this")
        .await
        .json();
    assert_eq!(none["results"].as_array().unwrap().len(), 0, "{none}");

    // Who is online, through the index.
    let peers = get_auth(&bob_api, "/api/peers").await;
    assert_eq!(peers.status, 200, "{}", peers.text());
    assert_eq!(peers.json()["source"], "index");
    let mut nicks: Vec<String> = peers.json()["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["nick"].as_str().unwrap().to_string())
        .collect();
    nicks.sort();
    assert_eq!(nicks, ["alice", "bob"]);
    let a = &peers.json()["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["nick"] == "alice")
        .unwrap()
        .clone();
    assert_eq!(
        (a["files"].as_u64(), a["bytes"].as_u64()),
        (Some(3), Some(5005))
    );

    // bob writes to alice through his API; it goes straight to alice.
    let sent = post_auth(
        &bob_api,
        "/api/messages",
        r#"{"to": "alice", "text": "hola, ¿qué tal?"}"#,
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    assert_eq!(sent.json()["to"], "alice");
    assert_eq!(sent.json()["addr"], alice.addr());
    let inbox = http::get(&alice_api, "/api/messages").await.json();
    let got = &inbox["messages"][0];
    assert_eq!(
        (
            got["dir"].as_str(),
            got["from"].as_str(),
            got["text"].as_str()
        ),
        (Some("in"), Some("bob"), Some("hola, ¿qué tal?"))
    );
    let outbox = get_auth(&bob_api, "/api/messages").await.json();
    let out = &outbox["messages"][0];
    assert_eq!(
        (out["dir"].as_str(), out["to"].as_str()),
        (Some("out"), Some("alice"))
    );

    // Events: each kind arrives again and again; EventSource's ?token= works.
    let text = http::read_stream(
        &bob_api,
        &format!("/api/events?token={TOKEN}"),
        &[],
        Duration::from_secs(10),
        |t| t.matches("event: messages").count() >= 2,
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{text}"
    );
    assert!(text.contains("hola, ¿qué tal?"), "{text}");
    assert!(
        text.contains("event: uploads") && text.contains("\"slots_in_use\""),
        "{text}"
    );
    // Downloads come as changes: the whole list once, then only what moved
    // (nothing here: an empty change, still sent as a heartbeat).
    assert_eq!(text.matches("\"full\":true").count(), 1, "{text}");
    assert!(
        text.contains(r#""downloads":[],"full":false,"removed":[],"total":0"#),
        "{text}"
    );

    // The page: no token needed for the (data-free) page itself, nothing
    // from elsewhere, locked down by its CSP.
    let page = http::get(&bob_api, "/").await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = page.text();
    for path in [
        "/api/search",
        "/api/downloads",
        "/api/events",
        "/api/messages",
        "/api/peers",
    ] {
        assert!(html.contains(path), "the page does not use {path}");
    }
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("//cdn")
    );

    // Metrics: promtool-clean on both, counting what happened.
    let alice_metrics = http::get(&alice_api, "/metrics").await;
    assert_eq!(alice_metrics.status, 200);
    let text = alice_metrics.text();
    promtool_check("alice's /metrics", &text);
    for line in [
        "p2pshare_messages_received_total 1",
        "p2pshare_shared_files 3",
        "p2pshare_shared_bytes 5005",
        "p2pshare_index_registered 1",
        "p2pshare_api_requests_total{method=\"GET\",route=\"/api/shared\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
    }
    let bob_metrics = get_auth(&bob_api, "/metrics").await;
    assert_eq!(bob_metrics.status, 200);
    let text = bob_metrics.text();
    promtool_check("bob's /metrics", &text);
    assert!(
        text.lines()
            .any(|l| l == "p2pshare_api_requests_total{method=\"POST\",route=\"/api/messages\"} 1"),
        "{text}"
    );
    for family in [
        "p2pshare_downloaded_bytes_total",
        "p2pshare_chunks_verified_total",
        "p2pshare_chunks_rejected_total",
        "p2pshare_uploaded_bytes_total",
        "p2pshare_upload_sessions_total",
        "p2pshare_search_duration_seconds_count",
        "p2pshare_upload_slots_in_use",
        "p2pshare_upload_queue_length",
    ] {
        metric(&text, family);
    }

    bob.stop().await;
    alice.stop().await;
    index.stop().await;
}

/// One hostile request: method, path, headers, body, the status expected
/// and a word its error must say.
type Case<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

/// `/api/search` sends its words and every filter to the index, which
/// filters before it cuts to the limit: files past the first 1,000 matches
/// are found by their extension, `type=` works, and the total counts the
/// files that pass the filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_search_filters_at_the_index_before_the_limit() {
    use common::index_proto::{IndexRequest, IndexResponse, Login, SharedFile};
    let index = tests::start_index().await;
    // 1,100 short `.ogg` names rank before three longer `.flac` and `.mkv`
    // ones: a filter applied to the index's first 1,000 answers would miss
    // those three.
    let files: Vec<SharedFile> = (0..1100)
        .map(|i| (format!("track {i:04}.ogg"), 1000 + i as u64))
        .collect::<Vec<_>>()
        .into_iter()
        .chain([
            (
                "track 0001 the long live version.flac".to_string(),
                5_000_000,
            ),
            ("track 0002 the long live version.flac".to_string(), 50),
            (
                "track 0003 the long concert film.mkv".to_string(),
                9_000_000,
            ),
        ])
        .map(|(name, size)| SharedFile {
            id: common::id::content_info(name.as_bytes()).id,
            name,
            size,
        })
        .collect();
    let mut source = peer::index_client::IndexClient::connect(&index.addr_string())
        .await
        .unwrap();
    let login = IndexRequest::Login(Login {
        listen_port: 7001,
        advertise: None,
        nick: None,
    });
    assert!(matches!(
        source.request(&login).await.unwrap(),
        IndexResponse::Welcome { .. }
    ));
    for batch in files.chunks(512) {
        let r = source
            .request(&IndexRequest::AddFiles {
                files: batch.to_vec(),
            })
            .await
            .unwrap();
        assert!(matches!(r, IndexResponse::Ack { .. }), "{r:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut bob, api) = start_api_peer(
        &dir.path().join("bob"),
        &index.addr_string(),
        "bob",
        Some(TOKEN),
    )
    .await;
    bob.wait_registered(0).await;
    let names = |answer: &serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> = answer["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let search = |path: &'static str| {
        let api = api.clone();
        async move {
            let r = get_auth(&api, path).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            r.json()
        }
    };

    let all = search("/api/search?q=track&limit=10").await;
    assert_eq!(
        (&all["total"], &all["truncated"], &all["total_exact"]),
        (
            &serde_json::json!(1103),
            &serde_json::json!(true),
            &serde_json::json!(true)
        ),
        "{all}"
    );
    assert_eq!(all["results"].as_array().unwrap().len(), 10);

    let flac = search("/api/search?q=track&ext=FLAC").await;
    assert_eq!(
        names(&flac),
        [
            "track 0001 the long live version.flac",
            "track 0002 the long live version.flac"
        ],
        "{flac}"
    );
    assert_eq!(
        (&flac["total"], &flac["truncated"]),
        (&serde_json::json!(2), &serde_json::json!(false))
    );

    let video = search("/api/search?q=track+long&type=video").await;
    assert_eq!(
        names(&video),
        ["track 0003 the long concert film.mkv"],
        "{video}"
    );

    // A type and a size together; the limit counts what passed.
    let big_audio = search("/api/search?q=track&type=audio&min_size=1MB&limit=1").await;
    assert_eq!(
        names(&big_audio),
        ["track 0001 the long live version.flac"],
        "{big_audio}"
    );
    assert_eq!(big_audio["total"], 1, "{big_audio}");
    let small_audio = search("/api/search?q=track&type=audio,video&max_size=1002&limit=5").await;
    assert_eq!(
        names(&small_audio),
        [
            "track 0000.ogg",
            "track 0001.ogg",
            "track 0002 the long live version.flac",
            "track 0002.ogg"
        ],
        "{small_audio}"
    );
    // Excluded words reach the index too.
    let no_live = search("/api/search?q=track+long+-live").await;
    assert_eq!(
        names(&no_live),
        ["track 0003 the long concert film.mkv"],
        "{no_live}"
    );
    bob.stop().await;
    drop(source);
    index.stop().await;
}

/// Hostile input on these endpoints: a clear 4xx with a JSON error, never a
/// panic, and the daemon still answers afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_endpoints_refuse_hostile_input() {
    let index = tests::start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut bob, api) = start_api_peer(
        &dir.path().join("bob"),
        &index.addr_string(),
        "bob",
        Some(TOKEN),
    )
    .await;
    bob.wait_registered(0).await;
    let (n, v) = bearer();
    let auth = [(n, v.as_str())];
    let json = [(n, v.as_str()), ("Content-Type", "application/json")];

    let long_word = format!("/api/search?q={}", "w".repeat(200));
    let cases: Vec<Case> = vec![
        // Without the token (or with a wrong one), nothing but the page.
        ("GET", "/api/messages", vec![], vec![], 401, "token"),
        ("GET", "/metrics", vec![], vec![], 401, "token"),
        (
            "GET",
            "/api/events?token=wrong",
            vec![],
            vec![],
            401,
            "token",
        ),
        (
            "GET",
            "/api/peers",
            vec![("Authorization", "Bearer wrong")],
            vec![],
            401,
            "token",
        ),
        // A rebound name.
        (
            "GET",
            "/api/shared",
            vec![auth[0], ("Host", "evil.example:80")],
            vec![],
            403,
            "Host",
        ),
        // Messages: bad JSON, wrong fields, wrong type, bad nick, bad text.
        (
            "POST",
            "/api/messages",
            json.to_vec(),
            b"{\"to\": \"alice\", ".to_vec(),
            400,
            "",
        ),
        (
            "POST",
            "/api/messages",
            json.to_vec(),
            b"[1, 2]".to_vec(),
            422,
            "",
        ),
        (
            "POST",
            "/api/messages",
            json.to_vec(),
            b"{\"to\": \"alice\"}".to_vec(),
            422,
            "text",
        ),
        (
            "POST",
            "/api/messages",
            json.to_vec(),
            b"{\"to\": \"a\", \"text\": \"x\", \"admin\": true}".to_vec(),
            422,
            "admin",
        ),
        (
            "POST",
            "/api/messages",
            json.to_vec(),
            b"{\"to\": 5, \"text\": \"x\"}".to_vec(),
            422,
            "",
        ),
        (
            "POST",
            "/api/messages",
            auth.to_vec(),
            b"{\"to\": \"alice\", \"text\": \"x\"}".to_vec(),
            415,
            "JSON",
        ),
        (
            "POST",
            "/api/messages",
            json.to_vec(),
            b"{\"to\": \"../../etc/passwd\", \"text\": \"x\"}".to_vec(),
            400,
            "can be called",
        ),
        (
            "POST",
            "/api/messages",
            json.to_vec(),
            b"{\"to\": \"alice\", \"text\": \"a\\u0007b\"}".to_vec(),
            400,
            "not sent",
        ),
        (
            "POST",
            "/api/messages",
            json.to_vec(),
            format!("{{\"to\": \"alice\", \"text\": \"{}\"}}", "x".repeat(5000)).into_bytes(),
            400,
            "not sent",
        ),
        (
            "POST",
            "/api/messages",
            json.to_vec(),
            b"{\"to\": \"nobody\", \"text\": \"hello?\"}".to_vec(),
            404,
            "not online",
        ),
        (
            "POST",
            "/api/messages",
            json.to_vec(),
            format!(
                "{{\"to\": \"alice\", \"text\": \"{}\"}}",
                "x".repeat(100_000)
            )
            .into_bytes(),
            413,
            "body",
        ),
        // Search: no words, too many or too long, bad numbers and filters.
        ("GET", "/api/search", auth.to_vec(), vec![], 400, "q"),
        (
            "GET",
            "/api/search?q=%20%20",
            auth.to_vec(),
            vec![],
            400,
            "q",
        ),
        (
            "GET",
            "/api/search?q=a+b+c+d+e+f+g+h+i+j+k+l+m+n+o+p+q",
            auth.to_vec(),
            vec![],
            400,
            "words",
        ),
        ("GET", &long_word, auth.to_vec(), vec![], 400, "words"),
        (
            "GET",
            "/api/search?q=x&limit=0",
            auth.to_vec(),
            vec![],
            400,
            "limit",
        ),
        (
            "GET",
            "/api/search?q=x&limit=-3",
            auth.to_vec(),
            vec![],
            400,
            "limit",
        ),
        (
            "GET",
            "/api/search?q=x&limit=99999999999",
            auth.to_vec(),
            vec![],
            400,
            "limit",
        ),
        (
            "GET",
            "/api/search?q=x&min_size=lots",
            auth.to_vec(),
            vec![],
            400,
            "min_size",
        ),
        (
            "GET",
            "/api/search?q=x&min_size=2MB&max_size=1MB",
            auth.to_vec(),
            vec![],
            400,
            "larger",
        ),
        (
            "GET",
            "/api/search?q=x&ext=../../etc",
            auth.to_vec(),
            vec![],
            400,
            "extension",
        ),
        (
            "GET",
            "/api/search?q=x&type=everything",
            auth.to_vec(),
            vec![],
            400,
            "type",
        ),
        // Read-only endpoints.
        (
            "DELETE",
            "/api/shared",
            auth.to_vec(),
            vec![],
            405,
            "not allowed",
        ),
        (
            "POST",
            "/api/peers",
            json.to_vec(),
            b"{}".to_vec(),
            405,
            "not allowed",
        ),
        (
            "PUT",
            "/metrics",
            json.to_vec(),
            b"{}".to_vec(),
            405,
            "not allowed",
        ),
        (
            "POST",
            "/",
            json.to_vec(),
            b"{}".to_vec(),
            405,
            "not allowed",
        ),
        (
            "GET",
            "/api/nothing/../../etc/passwd",
            auth.to_vec(),
            vec![],
            404,
            "no such",
        ),
    ];
    for (method, path, headers, body, status, says) in cases {
        let r = http::request(&api, method, path, &headers, &body).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        let error = r.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: no error: {}", r.text()))
            .to_string();
        assert!(
            error.contains(says),
            "{method} {path}: {error:?} does not say {says:?}"
        );
    }
    // Still serving.
    assert_eq!(get_auth(&api, "/api/shared").await.status, 200);

    // Another origin, even on loopback, may not steer the peer (a "simple"
    // cross-origin POST a page elsewhere can send without a preflight);
    // the API's own origin may.
    let own = format!("http://{api}");
    let other_port = format!("http://127.0.0.1:{}", port_other_than(&api));
    for origin in [
        "http://localhost:9999",
        other_port.as_str(),
        "http://evil.example",
        "null",
        &own.replace("http:", "https:"),
    ] {
        let r = http::request(
            &api,
            "POST",
            "/api/downloads/5/pause",
            &[auth[0], ("Origin", origin), ("Content-Type", "text/plain")],
            b"",
        )
        .await;
        assert_eq!(r.status, 403, "Origin {origin}: {}", r.text());
        assert!(r.json()["error"].as_str().unwrap().contains("cross-origin"));
    }
    let r = http::request(
        &api,
        "GET",
        "/api/shared",
        &[auth[0], ("Origin", &own)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "own origin: {}", r.text());

    // The Bearer scheme in any case (RFC 7235).
    for scheme in ["bearer", "BEARER", "bEaRer"] {
        let v = format!("{scheme} {TOKEN}");
        let r = http::request(&api, "GET", "/api/shared", &[("Authorization", &v)], b"").await;
        assert_eq!(r.status, 200, "{scheme}: {}", r.text());
    }

    // The download list and its event stream check their query alike.
    for query in [
        "?state=bogus",
        "?state=bogus&foo=bar",
        "?foo=bar",
        "?limit=0",
        "?limit=100001",
        "?limit=-1",
        "?offset=x",
    ] {
        for path in ["/api/downloads", "/api/events"] {
            let r = get_auth(&api, &format!("{path}{query}")).await;
            assert_eq!(r.status, 400, "{path}{query}: {}", r.text());
            let error = r.json()["error"].as_str().unwrap().to_string();
            let says = if query.contains("foo") {
                "foo"
            } else if query.starts_with("?state") {
                "unknown state"
            } else {
                ""
            };
            assert!(error.contains(says), "{path}{query}: {error}");
            if query == "?limit=0" {
                assert!(error.contains("limit must be 1 to 100000"), "{error}");
            }
        }
    }
    // `?token=` is for the event stream only (EventSource sets no headers).
    let r = get_auth(&api, &format!("/api/downloads?token={TOKEN}")).await;
    assert_eq!(r.status, 400, "{}", r.text());

    bob.stop().await;
    index.stop().await;
}

/// A loopback port that is not `api`'s.
fn port_other_than(api: &str) -> u16 {
    let port: u16 = api.rsplit(':').next().unwrap().parse().unwrap();
    port.wrapping_add(1).max(1)
}

/// Connections that send half a request head and stop (8,000 of them
/// once held 8,000 descriptors) are closed after the header timeout, and
/// meanwhile a whole request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let index = tests::start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let (bob, api) =
        start_api_peer(&dir.path().join("bob"), &index.addr_string(), "bob", None).await;
    let started = std::time::Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(&api).await.unwrap();
        s.write_all(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    assert_eq!(http::get(&api, "/api/status").await.status, 200);
    let deadline = peer::api::HEADER_READ_TIMEOUT + Duration::from_secs(10);
    for s in &mut stalled {
        let mut buf = [0u8; 512];
        let closed = tokio::time::timeout(deadline.saturating_sub(started.elapsed()), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a half-sent request still open after {:?}",
            started.elapsed()
        );
    }
    // Not closed at once either: the timeout, not an error, closed them.
    assert!(started.elapsed() >= peer::api::HEADER_READ_TIMEOUT - Duration::from_secs(1));
    assert_eq!(http::get(&api, "/api/status").await.status, 200);
    bob.stop().await;
    index.stop().await;
}
