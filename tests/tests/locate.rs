//! Finding a file by what the user types, in every mode: names compared
//! after Unicode normalization and case folding, exact names of any length,
//! every holder's name, and id prefixes.
//!
//! The tests go through the string-taking entry point that `peer get`
//! uses in every mode (`peer::pipeline::fetch`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::id::{content_info, FileId};
use common::index_proto::{IndexRequest, IndexResponse, Login, SharedFile};
use peer::index_client::IndexClient;
use tests::*;
use tokio_util::sync::CancellationToken;

const NFD: &str = "cafe\u{301}.txt";
const NFC: &str = "caf\u{e9}.txt";
const WAIT: Duration = Duration::from_secs(3);

/// A hybrid get's saved path, or its error as the user reads it.
async fn get_path(index: &str, target: &str, out: &Path) -> Result<PathBuf, String> {
    tests::hybrid_get(index, target, out, test_engine())
        .await
        .map(|o| o.path)
        .map_err(|e| e.to_string())
}

async fn server_get(index: &str, target: &str, out: &Path) -> Result<PathBuf, String> {
    tests::server_get(index, target, out, test_engine())
        .await
        .map(|o| o.path)
        .map_err(|e| e.to_string())
}

async fn p2p_get(via: &str, target: &str, out: &Path) -> Result<PathBuf, String> {
    tests::p2p_get(via, target, 7, WAIT, out, test_engine())
        .await
        .map(|o| o.download.path)
        .map_err(|e| e.to_string())
}

/// Two overlay nodes, linked, sharing `root/a` and `root/b`.
async fn two_nodes(root: &Path) -> (Peer, Peer) {
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::create_dir_all(root.join("b")).unwrap();
    let a = start_p2p_node(&root.join("a"), vec![], 1).await;
    let b = start_p2p_node(&root.join("b"), vec![a.addr()], 1).await;
    wait_until(
        "the two nodes are linked",
        Duration::from_secs(10),
        || async {
            [&a, &b]
                .iter()
                .all(|p| p.daemon.overlay().unwrap().neighbours().len() == 1)
        },
    )
    .await;
    (a, b)
}

/// Waits until a node shares `files` files (its first scan is done).
async fn wait_shared(p: &Peer, files: usize) {
    wait_until(
        "the node shares its files",
        Duration::from_secs(10),
        || async { p.daemon.library().shared().len() == files },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decomposed_and_composed_names_are_one_name_in_hybrid_mode() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("a");
    let cafe = random_bytes(1000, 1);
    let the = random_bytes(1000, 2);
    // One stored decomposed, one composed (Linux keeps the bytes given).
    write_file(&share, NFD, &cafe);
    write_file(&share, "TH\u{c9} vert.txt", &the);
    let mut a = start_peer(&share, &index.addr_string()).await;
    a.wait_registered(2).await;
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();

    // Typed composed, stored decomposed.
    let hits = client.search(vec!["caf\u{e9}".into()], 0).await.unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].id, content_info(&cafe).id);
    let out = dir.path().join("out");
    let got = get_path(&index.addr_string(), NFC, &out).await.unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), cafe);
    // Typed decomposed (and in another case), stored composed.
    let hits = client.search(vec!["the\u{301}".into()], 0).await.unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    let got = get_path(&index.addr_string(), "the\u{301} VERT.txt", &out)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), the);
    a.stop().await;
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decomposed_and_composed_names_are_one_name_in_client_server_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _store) = start_index_with_store(&dir.path().join("store"), 1 << 30).await;
    let cafe = random_bytes(1000, 3);
    let file = write_file(&dir.path().join("mine"), NFD, &cafe);
    peer::client_server::put_file(&index.addr_string(), &file, CancellationToken::new())
        .await
        .unwrap();
    let out = dir.path().join("out");
    let got = server_get(&index.addr_string(), NFC, &out).await.unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), cafe);
    let got = server_get(&index.addr_string(), "CAFE\u{301}.TXT", &out)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), cafe);
    // Other content under a name equal after normalization is stored under
    // another name, so that the first stays unambiguous.
    let other = random_bytes(1000, 13);
    let file = write_file(&dir.path().join("mine2"), "CAF\u{c9}.TXT", &other);
    let put = peer::client_server::put_file(&index.addr_string(), &file, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(put.stored_as, "CAF\u{c9} (1).TXT");
    let got = server_get(&index.addr_string(), NFC, &dir.path().join("out2"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), cafe);
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decomposed_and_composed_names_are_one_name_in_p2p_mode() {
    let dir = tempfile::tempdir().unwrap();
    let cafe = random_bytes(1000, 4);
    let the = random_bytes(1000, 5);
    write_file(&dir.path().join("b"), NFD, &cafe);
    write_file(&dir.path().join("b"), "th\u{e9}.txt", &the);
    let (a, b) = two_nodes(dir.path()).await;
    wait_shared(&b, 2).await;
    let via = a.addr();
    let report = peer::overlay::search(&via, vec!["CAF\u{c9}".into()], 7, WAIT)
        .await
        .unwrap();
    assert_eq!(report.hits.len(), 1, "{report:?}");
    let out = dir.path().join("out");
    let got = p2p_get(&via, NFC, &out).await.unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), cafe);
    let got = p2p_get(&via, "the\u{301}.txt", &out).await.unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), the);
    a.stop().await;
    b.stop().await;
}

/// Names no search query can hold: one 129-byte word, a long CJK title
/// (one word of 240 bytes), and 20 words.
fn long_names() -> Vec<String> {
    vec![
        format!("{} x.flac", "w".repeat(129)),
        "\u{6f22}\u{5b57}".repeat(40) + ".mkv",
        (1..=20)
            .map(|n| format!("w{n}"))
            .collect::<Vec<_>>()
            .join(" ")
            + ".txt",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_name_that_can_be_shared_can_be_fetched_by_that_name() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _store) = start_index_with_store(&dir.path().join("store"), 1 << 30).await;
    let share = dir.path().join("a");
    let names = long_names();
    for (n, name) in names.iter().enumerate() {
        write_file(&share, name, &random_bytes(500, 10 + n as u64));
    }
    let mut a = start_peer(&share, &index.addr_string()).await;
    a.wait_registered(names.len()).await;
    let out = dir.path().join("out");
    for (n, name) in names.iter().enumerate() {
        let got = get_path(&index.addr_string(), name, &out).await.unwrap();
        assert_eq!(
            std::fs::read(&got).unwrap(),
            random_bytes(500, 10 + n as u64)
        );
    }
    // Client-server: the store holds other content under one of the names
    // (the peer's copy is no candidate there: the store is the only source).
    let stored = dir.path().join("to-store");
    let file = write_file(&stored, &names[0], &random_bytes(600, 20));
    let put = peer::client_server::put_file(&index.addr_string(), &file, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(put.stored_as, names[0]);
    let got = server_get(&index.addr_string(), &names[0], &dir.path().join("out2"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), random_bytes(600, 20));
    a.stop().await;
    index.stop().await;

    // p2p: flooded as a whole name.
    let (a, b) = two_nodes(&dir.path().join("p2p")).await;
    for (n, name) in names.iter().enumerate() {
        write_file(&b.share, name, &random_bytes(400, 30 + n as u64));
    }
    wait_shared(&b, names.len()).await;
    for (n, name) in names.iter().enumerate() {
        let got = p2p_get(&a.addr(), name, &dir.path().join("out3"))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(&got).unwrap(),
            random_bytes(400, 30 + n as u64)
        );
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_holders_name_is_searchable_and_fetchable_and_most_holders_name_it() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let movie = random_bytes(2 * common::CHUNK_SIZE + 10, 6);
    let id = content_info(&movie).id;
    // The first registrant uses a name nobody else does.
    write_file(&dir.path().join("first"), "zz odd name.mkv", &movie);
    let mut first = start_peer(&dir.path().join("first"), &index.addr_string()).await;
    first.wait_registered(1).await;
    write_file(&dir.path().join("a"), "alpha-release.mkv", &movie);
    write_file(&dir.path().join("b"), "Movie.2023.mkv", &movie);
    write_file(&dir.path().join("c"), "Movie.2023.mkv", &movie);
    let mut peers = vec![first];
    for p in ["a", "b", "c"] {
        let mut peer = start_peer(&dir.path().join(p), &index.addr_string()).await;
        peer.wait_registered(1).await;
        peers.push(peer);
    }
    let mut client = IndexClient::connect(&index.addr_string()).await.unwrap();
    let hits = client.search(vec!["alpha".into()], 0).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(
        (hits[0].id, hits[0].name.as_str(), hits[0].sources),
        (id, "alpha-release.mkv", 4)
    );
    // The name shown for the id is the one most holders use.
    let hits = client.search(vec!["mkv".into()], 0).await.unwrap();
    assert_eq!(hits[0].name, "Movie.2023.mkv");
    let (name, _, _) = client.lookup(id).await.unwrap().unwrap();
    assert_eq!(name, "Movie.2023.mkv");

    // Any holder's name fetches it, saved under the name asked for; by id,
    // under the name most holders use.
    let out = dir.path().join("out");
    let got = get_path(&index.addr_string(), "alpha-release.mkv", &out)
        .await
        .unwrap();
    assert_eq!(got, out.join("alpha-release.mkv"));
    assert_eq!(std::fs::read(&got).unwrap(), movie);
    let got = get_path(&index.addr_string(), "zz odd name.mkv", &out)
        .await
        .unwrap();
    assert_eq!(got, out.join("zz odd name.mkv"));
    let got = get_path(&index.addr_string(), &id.to_hex(), &out)
        .await
        .unwrap();
    assert_eq!(got, out.join("Movie.2023.mkv"));
    for p in peers {
        p.stop().await;
    }
    index.stop().await;

    // p2p: each node answers with its own name; any of them fetches it.
    let (a, b) = two_nodes(&dir.path().join("p2p")).await;
    write_file(&a.share, "alpha-release.mkv", &movie);
    write_file(&b.share, "Movie.2023.mkv", &movie);
    wait_shared(&a, 1).await;
    wait_shared(&b, 1).await;
    let out = dir.path().join("out-p2p");
    let got = p2p_get(&a.addr(), "alpha-release.mkv", &out).await.unwrap();
    assert_eq!(got, out.join("alpha-release.mkv"));
    let got = p2p_get(&a.addr(), "movie.2023.MKV", &out).await.unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), movie);
    a.stop().await;
    b.stop().await;
}

/// Registers `files` from a hand-made session; the connection must stay open.
async fn register(index: &str, files: Vec<SharedFile>) -> IndexClient {
    let mut client = IndexClient::connect(index).await.unwrap();
    let login = IndexRequest::Login(Login {
        listen_port: 40009,
        advertise: None,
        nick: None,
    });
    assert!(matches!(
        client.request(&login).await.unwrap(),
        IndexResponse::Welcome { .. }
    ));
    let added = client
        .request(&IndexRequest::AddFiles { files })
        .await
        .unwrap();
    assert!(
        matches!(added, IndexResponse::Ack { count } if count > 0),
        "{added:?}"
    );
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_prefix_works_wherever_an_id_does() {
    let dir = tempfile::tempdir().unwrap();
    let (index, _store) = start_index_with_store(&dir.path().join("store"), 1 << 30).await;
    let addr = index.addr_string();
    let data = random_bytes(1000, 7);
    let id = content_info(&data).id;
    let hex = id.to_hex();
    write_file(&dir.path().join("a"), "report.pdf", &data);
    let mut a = start_peer(&dir.path().join("a"), &addr).await;
    a.wait_registered(1).await;
    let out = dir.path().join("out");
    // What the demo prints (16 digits), the shortest (8) and upper case.
    for prefix in [&hex[..16], &hex[..8], &hex[..10].to_uppercase()] {
        let got = get_path(&addr, prefix, &out).await.unwrap();
        assert_eq!(std::fs::read(&got).unwrap(), data, "{prefix}");
    }
    let err = get_path(&addr, "0000000000000000", &out).await.unwrap_err();
    assert!(err.contains("no online peer"), "{err}");

    // Another file whose id shares the first 62 digits: ambiguous, and
    // the message lists both full ids.
    let mut twin = id;
    twin.0[31] ^= 1;
    let _decoy = register(
        &addr,
        vec![SharedFile {
            id: twin,
            name: "decoy.pdf".into(),
            size: 5,
        }],
    )
    .await;
    let err = get_path(&addr, &hex[..16], &out).await.unwrap_err();
    assert!(err.contains(&hex) && err.contains(&twin.to_hex()), "{err}");
    assert!(
        err.contains("decoy.pdf") && err.contains("report.pdf"),
        "{err}"
    );
    // The whole id is never ambiguous.
    assert!(get_path(&addr, &hex, &out).await.is_ok());

    // Client-server: the store's copy, by prefix.
    let stored = random_bytes(700, 8);
    let file = write_file(&dir.path().join("mine"), "stored.bin", &stored);
    let put = peer::client_server::put_file(&addr, &file, CancellationToken::new())
        .await
        .unwrap();
    let got = server_get(&addr, &put.id[..12], &dir.path().join("out2"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), stored);
    a.stop().await;
    index.stop().await;

    // p2p: flooded as a prefix.
    let (n1, n2) = two_nodes(&dir.path().join("p2p")).await;
    write_file(&n2.share, "report.pdf", &data);
    wait_shared(&n2, 1).await;
    let got = p2p_get(&n1.addr(), &hex[..16], &dir.path().join("out3"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), data);
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_fetch_takes_an_id_prefix() {
    let index = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(2 * common::CHUNK_SIZE, 9);
    let id: FileId = content_info(&data).id;
    write_file(&dir.path().join("seed"), "shared thing.bin", &data);
    let mut seed = start_peer(&dir.path().join("seed"), &index.addr_string()).await;
    seed.wait_registered(1).await;
    let fetcher = start_peer(&dir.path().join("fetcher"), &index.addr_string()).await;
    // What `peer serve --fetch 0123456789abcdef` runs.
    let target: peer::target::Target = id.to_hex()[..16].parse().unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        peer::swarm::fetch_targets_into_share(&fetcher.daemon, &[target]),
    )
    .await
    .expect("fetched in time");
    let want = fetcher.share.join("shared thing.bin");
    assert_eq!(std::fs::read(&want).unwrap(), data);
    fetcher.stop().await;
    seed.stop().await;
    index.stop().await;
}
