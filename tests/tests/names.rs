//! File names from the network in every mode: what the index and peers
//! refuse, what a download or an upload is saved as, how names are
//! shortened (issue 12 cases 4 and 6, issue 18 case 2).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::hello::Protocol;
use common::id::content_info;
use common::index_proto::{IndexRequest, IndexResponse, Login, SharedFile};
use common::names::MAX_SAVED_NAME_LEN;
use common::wire::{self, Deadlines};
use peer::client_server::{put_file, PutError};
use peer::index_client::IndexClient;
use tests::*;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Everything the peer crates log at warn level, for every test in this
/// binary. Call first in each test, before anything starts logging.
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        struct W(Arc<Mutex<Vec<u8>>>);
        impl Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "peer=warn,transfer=warn",
            ))
            .with_ansi(false)
            .with_writer(move || W(writer.clone()))
            .try_init()
            .expect("the first logger of this test binary");
        buf
    })
}

/// Log lines holding every one of `parts`.
fn log_lines_with(parts: &[&str]) -> usize {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

async fn get(index: &str, target: &str, out: &std::path::Path) -> peer::DownloadOutcome {
    hybrid_get(index, target, out, test_engine()).await.unwrap()
}

/// A hand-made client session at the index.
struct Raw {
    stream: transfer::net::Conn,
    buf: Vec<u8>,
}

impl Raw {
    async fn login(index: &str, listen_port: u16) -> Raw {
        let stream = TcpStream::connect(index).await.unwrap();
        let (stream, _) = transfer::net::client(stream, Protocol::Index, None)
            .await
            .unwrap();
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
        };
        let r = raw
            .ask(IndexRequest::Login(Login {
                listen_port,
                advertise: None,
                nick: None,
            }))
            .await;
        assert!(matches!(r, IndexResponse::Welcome { .. }), "{r:?}");
        raw
    }

    async fn ask(&mut self, req: IndexRequest) -> IndexResponse {
        wire::send_message(&mut self.stream, &req).await.unwrap();
        wire::expect_message(
            &mut self.stream,
            &mut self.buf,
            Deadlines::with_idle(Duration::from_secs(10)),
        )
        .await
        .unwrap()
    }

    /// Registers one entry; returns how many the index accepted.
    async fn add(&mut self, file: SharedFile) -> u32 {
        match self.ask(IndexRequest::AddFiles { files: vec![file] }).await {
            IndexResponse::Ack { count } => count,
            other => panic!("{other:?}"),
        }
    }
}

/// A loopback port nothing listens on.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Issue 12 case 4: a 201-byte `… x.flac` was saved as `… x.fla`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_name_is_saved_shortened_with_its_extension() {
    logs();
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let name = format!("{} x.flac", "ñ".repeat(97));
    assert_eq!(name.len(), 201);
    let data = random_bytes(5000, 7);
    write_file(&dir.path().join("a"), &name, &data);
    let mut a = start_peer(&dir.path().join("a"), &index.addr_string()).await;
    a.wait_registered(1).await;
    let out = dir.path().join("out");
    let id = content_info(&data).id.to_hex();
    for round in 0..2 {
        if round == 1 {
            // Other bytes under the saved name: the same id fetched again is
            // not already there (issue 12.9), so it gets a number.
            let saved = std::fs::read_dir(&out)
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path();
            std::fs::write(saved, b"other content").unwrap();
        }
        let got = get(&index.addr_string(), &id, &out).await;
        let saved = got.path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(saved.len() <= MAX_SAVED_NAME_LEN, "{saved}");
        assert!(saved.ends_with(".flac"), "{saved}");
        assert!(saved.starts_with("ññ"), "{saved}");
        assert_eq!(std::fs::read(&got.path).unwrap(), data);
    }
    // The second copy got a number, still within the limit and a `.flac`.
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().any(|n| n.ends_with(" (1).flac")), "{names:?}");
    a.stop().await;
    index.stop().await;
}

/// Issue 12 case 6: the index dropped a name with a newline while the peer
/// said it had registered it. Issue 18 case 2: invisible formatting
/// characters are refused at registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_registers_only_what_the_index_accepts_and_warns_once() {
    logs();
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("a");
    for i in 0..4 {
        write_file(&share, &format!("good {i}.txt"), &random_bytes(100, i));
    }
    write_file(&share, "bad\nname.txt", &random_bytes(100, 10));
    write_file(&share, "invoice\u{202E}fdp.exe", &random_bytes(100, 11));
    let mut a = start_peer(&share, &index.addr_string()).await;
    a.wait_registered(4).await;
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    assert_eq!(client.browse(&a.addr()).await.unwrap().len(), 4);

    // Later changes resend the listing; the refused files are not warned
    // about again.
    write_file(&share, "good 4.txt", &random_bytes(100, 4));
    a.wait_registered(5).await;
    write_file(&share, "good 5.txt", &random_bytes(100, 5));
    a.wait_registered(6).await;
    assert_eq!(client.browse(&a.addr()).await.unwrap().len(), 6);
    let warning = "not registering a shared file the index would refuse";
    assert_eq!(
        log_lines_with(&[warning, "bad\\u{000A}name.txt", "control character"]),
        1
    );
    assert_eq!(
        log_lines_with(&[warning, "invoice\\u{202E}fdp.exe", "U+202E"]),
        1
    );
    a.stop().await;
    index.stop().await;
}

/// Issue 18 case 2, hybrid mode: hostile sessions register an honest
/// file's id under a path and under a dotfile name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_name_is_refused_or_saved_harmless() {
    logs();
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(3000, 3);
    let info = content_info(&data);
    let entry = |name: &str| SharedFile {
        id: info.id,
        name: name.into(),
        size: info.size,
    };
    let mut hostile = Raw::login(&index.addr_string(), dead_port()).await;
    for refused in [
        "../../.bashrc",
        "docs/../../x",
        "gpj.\u{202E}exe",
        "zero\u{200B}width",
    ] {
        assert_eq!(hostile.add(entry(refused)).await, 0, "{refused:?}");
    }
    assert_eq!(hostile.add(entry(".bashrc")).await, 1);
    let mut second = Raw::login(&index.addr_string(), dead_port()).await;
    assert_eq!(second.add(entry(".bashrc")).await, 1);

    write_file(&dir.path().join("a"), "notes.txt", &data);
    let mut a = start_peer(&dir.path().join("a"), &index.addr_string()).await;
    a.wait_registered(1).await;
    let out = dir.path().join("home");
    let got = get(&index.addr_string(), &info.id.to_hex(), &out).await;
    assert_eq!(got.path, out.join("bashrc"));
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert!(!out.join(".bashrc").exists());
    a.stop().await;
    index.stop().await;
}

/// Issue 18 case 2, client-server mode: the store never saves a hidden
/// file nor takes an invisible character.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_never_saves_a_hidden_or_invisible_name() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    // Put into the store's folder by hand: never listed, warned about once.
    write_file(&store_dir, "by hand\u{2067}.txt", b"y");
    let (index, _store) = start_index_with_store(&store_dir, 1 << 30).await;
    let file = write_file(&dir.path().join("mine"), ".profile", b"export A=1\n");
    let put = put_file(&index.addr_string(), &file, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(put.stored_as, "profile");
    assert!(store_dir.join("profile").exists());
    assert!(!store_dir.join(".profile").exists());
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    let listed: Vec<String> = client
        .browse("store")
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(listed, ["profile"]);
    let warning = "not registering a shared file the index would refuse";
    assert_eq!(log_lines_with(&[warning, "by hand\\u{2067}.txt"]), 1);

    let odd = write_file(&dir.path().join("mine"), "a\u{2066}b.txt", b"x");
    let err = put_file(&index.addr_string(), &odd, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, PutError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("U+2066"), "{err}");
    index.stop().await;
}

/// Issue 18 case 2, p2p mode: a node never offers, and a searcher never
/// takes, a name with an invisible formatting character.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_search_drops_invisible_names() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    write_file(
        &dir.path().join("n0"),
        "evil\u{202E}gpj.exe",
        &random_bytes(100, 1),
    );
    write_file(
        &dir.path().join("n0"),
        "evil twin.txt",
        &random_bytes(100, 2),
    );
    let n0 = start_p2p_node(&dir.path().join("n0"), vec![], 1).await;
    let n1 = start_p2p_node(&dir.path().join("n1"), vec![n0.addr()], 1).await;
    wait_until("the nodes are linked", Duration::from_secs(10), || async {
        n1.daemon.overlay().unwrap().neighbours().len() == 1
    })
    .await;
    // The first scan may not be done yet: search until something is found.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let names = loop {
        let report =
            peer::overlay::search(&n1.addr(), vec!["evil".into()], 2, Duration::from_secs(2))
                .await
                .unwrap();
        if !report.hits.is_empty() {
            break report.hits.into_iter().map(|h| h.name).collect::<Vec<_>>();
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing found");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(names, ["evil twin.txt"]);
    n1.stop().await;
    n0.stop().await;
}
