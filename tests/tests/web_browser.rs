//! The daemon's web page in a real browser: Debian's headless Chromium,
//! driven through chromedriver (WebDriver) with fantoccini. Two real
//! daemons and an index on 127.0.0.1 port 0: the page (with an API token)
//! searches, starts a download with a click, shows its progress live up to
//! 100% and the file as done, lists who is online, sends a message and
//! shows one received. Leaves a screenshot in `target/web-ui.png` (and in
//! `docs/web-ui.png` with `P2PSHARE_DOCS_SCREENSHOT=1`).
//!
//! Without chromium and chromedriver the test is skipped with one line,
//! except under CI (`CI` set), which installs them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tests::{peer_config, start_index, start_peer_with, wait_until, write_file};

const TOKEN: &str = "page-test-token-4711";

/// A chromedriver process, killed when dropped.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

/// Starts chromedriver on a free loopback port, or says why it cannot.
async fn start_chromedriver() -> Result<(Chromedriver, PathBuf), String> {
    let driver = which(&["chromedriver"]).ok_or("chromedriver not found")?;
    let browser =
        which(&["chromium", "chromium-browser", "google-chrome"]).ok_or("chromium not found")?;
    // A free port: chromedriver takes a number, not a listener.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let child = Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", driver.display()))?;
    let addr = format!("127.0.0.1:{port}");
    let cd = Chromedriver {
        child,
        url: format!("http://{addr}"),
    };
    wait_until("chromedriver answers", Duration::from_secs(20), || {
        let addr = addr.clone();
        async move {
            match tokio::net::TcpStream::connect(&addr).await {
                Ok(_) => tests::http::get(&addr, "/status").await.status == 200,
                Err(_) => false,
            }
        }
    })
    .await;
    Ok((cd, browser))
}

async fn open_browser(driver: &Chromedriver, browser: &Path) -> Client {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": browser,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1100"],
        }
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Types `text` into the element `at`.
async fn type_into(page: &Client, at: Locator<'_>, text: &str) {
    page.find(at).await.unwrap().send_keys(text).await.unwrap();
}

/// Clicks the element `at`.
async fn click(page: &Client, at: Locator<'_>) {
    page.find(at).await.unwrap().click().await.unwrap();
}

/// Runs `script` (a function body that returns a value) in the page.
async fn js(page: &Client, script: &str) -> serde_json::Value {
    page.execute(script, vec![]).await.expect("script ran")
}

/// Polls `script` in the page until it returns true.
async fn wait_js(page: &Client, what: &str, script: &str) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if js(page, script).await == json!(true) {
            return;
        }
        if tokio::time::Instant::now() > give_up {
            let body = js(page, "return document.body.innerText").await;
            panic!(
                "timed out waiting for: {what}\n--- page:\n{}",
                body.as_str().unwrap_or("")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_searches_downloads_and_messages() {
    let (driver, browser) = match start_chromedriver().await {
        Ok(found) => found,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP the_web_page_searches_downloads_and_messages: {why} (apt-get install chromium chromium-driver)");
            return;
        }
        Err(why) => panic!("CI installs chromium and chromium-driver: {why}"),
    };

    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    // 4 MiB served at 1 MiB/s: the download takes a few seconds, so the
    // page shows it in progress before it is done.
    let data = tests::random_bytes(4 << 20, 77);
    write_file(&dir.path().join("alice"), "lecture notes 2026.pdf", &data);
    let mut alice_config = peer_config(&dir.path().join("alice"), &index.addr_string());
    alice_config.nick = Some("alice".into());
    alice_config.max_upload_rate = Some(1 << 20);
    let mut alice = start_peer_with(alice_config).await;
    alice.wait_registered(1).await;
    let mut bob_config = peer_config(&dir.path().join("bob"), &index.addr_string());
    bob_config.nick = Some("bob".into());
    bob_config.api = Some(peer::api::ApiConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: Some(TOKEN.into()),
        fallback_to_any_port: false,
    });
    let mut bob = start_peer_with(bob_config).await;
    bob.wait_registered(0).await;
    let api = bob.daemon.api_addr().expect("bob's API listens");

    let page = open_browser(&driver, &browser).await;
    page.goto(&format!("http://{api}/")).await.unwrap();

    // The daemon has a token: the page asks for it, then works.
    let token_box = page.wait().for_element(Locator::Id("token")).await.unwrap();
    wait_js(
        &page,
        "the token prompt",
        "return document.getElementById('tokenbox').style.display === 'block'",
    )
    .await;
    token_box.send_keys(TOKEN).await.unwrap();
    click(&page, Locator::Css("#tokenform button")).await;
    wait_js(
        &page,
        "the daemon's status",
        "return document.getElementById('who').textContent.startsWith('bob')",
    )
    .await;
    wait_js(
        &page,
        "alice online",
        "return document.getElementById('peers').innerText.includes('alice')",
    )
    .await;

    // Search, click Download, watch the progress.
    type_into(&page, Locator::Id("q"), "lecture").await;
    click(&page, Locator::Css("#searchform button")).await;
    let download = page
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#results button[data-id]"))
        .await
        .unwrap();
    assert!(
        js(&page, "return document.getElementById('results').innerText")
            .await
            .as_str()
            .unwrap()
            .contains("lecture notes 2026.pdf")
    );
    download.click().await.unwrap();

    let row = "document.querySelector('#downloads tbody tr')";
    let mut seen = Vec::new();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let now = js(&page, &format!(
            "const r = {row}; if (!r) return null; return [r.dataset.state, r.querySelector('.pct').textContent.trim()]"
        )).await;
        if let Some([state, pct]) = now.as_array().map(|a| a.as_slice()) {
            let entry = (
                state.as_str().unwrap().to_string(),
                pct.as_str().unwrap().to_string(),
            );
            if seen.last() != Some(&entry) {
                seen.push(entry.clone());
            }
            if entry.0 == "done" {
                break;
            }
            assert_ne!(entry.0, "failed", "the download failed: {seen:?}");
        }
        assert!(tokio::time::Instant::now() < give_up, "not done: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.last().unwrap().1, "100%", "{seen:?}");
    assert!(
        seen.iter()
            .any(|(s, p)| s == "active" && p != "0%" && p != "100%"),
        "no progress shown between 0 and 100%: {seen:?}"
    );
    let shown_path = js(&page, &format!("return {row}.innerText")).await;
    let done = bob.daemon.library().root().to_path_buf();
    let _ = done;
    let path = shown_path
        .as_str()
        .unwrap()
        .lines()
        .find(|l| l.ends_with("lecture notes 2026.pdf") && l.contains('/'))
        .map(|l| PathBuf::from(l.trim()))
        .unwrap_or_else(|| panic!("the done row shows no path: {shown_path}"));
    assert_eq!(std::fs::read(&path).unwrap(), data, "{}", path.display());

    // The daemon's metrics counted the download (16 chunks of 256 KiB).
    let auth = format!("Bearer {TOKEN}");
    let metrics = tests::http::request(
        &api.to_string(),
        "GET",
        "/metrics",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    tests::http::promtool_check("the downloading daemon's /metrics", &text);
    for line in [
        "p2pshare_downloaded_bytes_total 4194304",
        "p2pshare_chunks_verified_total 16",
        "p2pshare_chunks_rejected_total 0",
        "p2pshare_downloads{state=\"done\"} 1",
        "p2pshare_downloads{state=\"active\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
    }
    assert!(
        alice
            .daemon
            .uploads()
            .bytes
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 4 << 20
    );

    // A message sent from the page reaches alice; hers shows up in the page.
    type_into(&page, Locator::Id("to"), "alice").await;
    type_into(&page, Locator::Id("text"), "thanks for the notes").await;
    click(&page, Locator::Css("#sendform button")).await;
    wait_js(
        &page,
        "delivered",
        "return document.getElementById('sendinfo').textContent.startsWith('delivered to alice')",
    )
    .await;
    assert!(alice
        .daemon
        .inbox()
        .recent()
        .iter()
        .any(|m| m.from == "bob" && m.text == "thanks for the notes"));
    peer::im::send_message(&index.addr_string(), "bob", "alice", "you are welcome")
        .await
        .unwrap();
    wait_js(
        &page,
        "alice's message in the inbox",
        "return document.getElementById('inbox').innerText.includes('you are welcome')",
    )
    .await;
    page.find(Locator::Id("q"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();

    let png = page.screenshot().await.unwrap();
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/web-ui.png");
    std::fs::write(&target, &png).unwrap();
    if std::env::var_os("P2PSHARE_DOCS_SCREENSHOT").is_some() {
        std::fs::write(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/web-ui.png"),
            &png,
        )
        .unwrap();
    }
    page.close().await.unwrap();
    drop(driver);
    bob.stop().await;
    alice.stop().await;
    index.stop().await;
}

/// A long download list stays light in the page: it shows one page of it
/// (the API's offset/limit, and the events of that page only), with the
/// whole list's count, and pages through the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_shows_a_long_download_queue_a_page_at_a_time() {
    let (driver, browser) = match start_chromedriver().await {
        Ok(found) => found,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP the_web_page_shows_a_long_download_queue_a_page_at_a_time: {why} (apt-get install chromium chromium-driver)");
            return;
        }
        Err(why) => panic!("CI installs chromium and chromium-driver: {why}"),
    };
    // An "index" that accepts and never answers: the one running download
    // waits on it, so every other one stays queued.
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
    config.max_active_downloads = 1;
    config.api = Some(peer::api::ApiConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: None,
        fallback_to_any_port: false,
    });
    let daemon = start_peer_with(config).await;
    let api = daemon.daemon.api_addr().unwrap().to_string();
    const N: usize = 1000;
    for i in 0..N {
        let body = format!(r#"{{"target":"queued {i}.bin"}}"#);
        let r = tests::http::request(
            &api,
            "POST",
            "/api/downloads",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }

    let page = open_browser(&driver, &browser).await;
    page.goto(&format!("http://{api}/")).await.unwrap();
    let rows = "return [...document.querySelectorAll('#downloads tbody tr')].map((r) => Number(r.dataset.id))";
    wait_js(
        &page,
        "the first page and the whole count",
        &format!("return document.getElementById('dlinfo').textContent.startsWith('1–50 of {N}')"),
    )
    .await;
    wait_js(
        &page,
        "live events",
        "return document.getElementById('live').textContent === 'live'",
    )
    .await;
    let first: Vec<u64> = serde_json::from_value(js(&page, rows).await).unwrap();
    assert_eq!(first, (1..=50).collect::<Vec<u64>>());
    assert!(
        js(
            &page,
            "return document.getElementById('dlinfo').textContent"
        )
        .await
        .as_str()
        .unwrap()
        .contains("queued"),
        "the counts by state are shown"
    );

    click(&page, Locator::Id("dlnext")).await;
    wait_js(
        &page,
        "the second page",
        &format!(
            "return document.getElementById('dlinfo').textContent.startsWith('51–100 of {N}')"
        ),
    )
    .await;
    // The next events (of the new page) leave it as it is: 50 rows.
    wait_js(
        &page,
        "live events",
        "return document.getElementById('live').textContent === 'live'",
    )
    .await;
    let second: Vec<u64> = serde_json::from_value(js(&page, rows).await).unwrap();
    assert_eq!(second, (51..=100).collect::<Vec<u64>>());

    page.close().await.unwrap();
    daemon.stop().await;
    held.abort();
}
