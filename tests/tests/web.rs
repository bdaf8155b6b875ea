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
