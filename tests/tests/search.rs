//! Search that finds what people type (issue 13), against a real index on
//! 127.0.0.1 port 0: prefixes, ranking, folding of case, Unicode forms,
//! diacritics and apostrophes, runs of Chinese/Japanese/Thai, excluded
//! words, filters, totals, the overlay's matching, and hostile queries.

use std::time::Duration;

use common::hello::Protocol;
use common::id::content_info;
use common::index_proto::{
    ErrorCode, IndexRequest, IndexResponse, Login, SearchFilter, SharedFile,
};
use common::search::FileKind;
use common::wire::{self, Deadlines};
use peer::index_client::{IndexClient, IndexError, SearchAnswer};
use tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The index entry of the content labelled `label` (the same label, the
/// same file) under `name`.
fn entry(label: &str, name: &str, size: u64) -> SharedFile {
    SharedFile {
        id: content_info(label.as_bytes()).id,
        name: name.into(),
        size,
    }
}

/// A file only this name labels.
fn file(name: &str, size: u64) -> SharedFile {
    entry(name, name, size)
}

/// Logs in as a sharing peer on `port` and registers `files`; the client
/// keeps the session alive.
async fn share(index: &str, port: u16, files: Vec<SharedFile>) -> IndexClient {
    let mut c = IndexClient::connect(index).await.unwrap();
    let login = IndexRequest::Login(Login {
        listen_port: port,
        advertise: None,
        nick: None,
    });
    let r = c.request(&login).await.unwrap();
    assert!(matches!(r, IndexResponse::Welcome { .. }), "{r:?}");
    for batch in files.chunks(512) {
        let r = c
            .request(&IndexRequest::AddFiles {
                files: batch.to_vec(),
            })
            .await
            .unwrap();
        assert!(
            matches!(r, IndexResponse::Ack { count } if count as usize == batch.len()),
            "{r:?}"
        );
    }
    c
}

async fn find(
    c: &mut IndexClient,
    words: &[&str],
    filter: SearchFilter,
    limit: u32,
) -> SearchAnswer {
    c.search_filtered(words.iter().map(|w| w.to_string()).collect(), limit, filter)
        .await
        .unwrap_or_else(|e| panic!("{words:?}: {e}"))
}

async fn names(c: &mut IndexClient, words: &[&str]) -> Vec<String> {
    find(c, words, SearchFilter::default(), 100)
        .await
        .hits
        .into_iter()
        .map(|h| h.name)
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The refusal a search gets, as (code, message).
async fn refusal(c: &mut IndexClient, words: Vec<String>) -> (ErrorCode, String) {
    match c
        .request(&IndexRequest::SearchFiltered {
            words,
            limit: 10,
            filter: SearchFilter::default(),
        })
        .await
    {
        Err(IndexError::Refused { code, message }) => (code, message),
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn words_match_as_prefixes_whole_words_first_then_sources_then_shorter_names() {
    let index = start_index().await;
    let addr = index.addr_string();
    let popular = entry("popular", "Monday Blues.flac", 10);
    let _a = share(
        &addr,
        20_001,
        vec![
            file("Blue Monday.mp3", 1),
            file("Blue Monday (12 inch extended version).mp3", 1),
            file("big50.bin", 1),
            file("mon.txt", 1),
            file("Lemon.txt", 1),
            popular.clone(),
        ],
    )
    .await;
    let _b = share(&addr, 20_002, vec![popular.clone()]).await;
    let _c = share(&addr, 20_003, vec![popular.clone()]).await;
    let mut c = IndexClient::connect(&addr).await.unwrap();

    // Issue 13's first cases: `big` finds big50.bin, `mon` Blue Monday.
    assert_eq!(names(&mut c, &["big"]).await, ["big50.bin"]);
    assert_eq!(
        names(&mut c, &["mon"]).await,
        [
            // The whole word `mon` first,
            "mon.txt",
            // then prefixes: three sources first,
            "Monday Blues.flac",
            // then the shorter name.
            "Blue Monday.mp3",
            "Blue Monday (12 inch extended version).mp3",
        ],
        "never a substring (Lemon)"
    );
    let hits = find(&mut c, &["mon"], SearchFilter::default(), 100).await;
    assert_eq!(hits.hits[1].sources, 3);
    // AND of every word, each a prefix; case ignored.
    assert_eq!(
        names(&mut c, &["BLUE", "mond", "12"]).await,
        ["Blue Monday (12 inch extended version).mp3"]
    );
    assert!(names(&mut c, &["blue", "tue"]).await.is_empty());
    // One character: whole words only (a 1-letter prefix narrows nothing).
    assert!(names(&mut c, &["b"]).await.is_empty());
    assert_eq!(
        names(&mut c, &["blue", "12"]).await,
        ["Blue Monday (12 inch extended version).mp3"]
    );
    assert!(names(&mut c, &["blue", "1"]).await.is_empty());
    // The old requests follow the same rules.
    let old = c.search(vec!["mon".into()], 0).await.unwrap();
    assert_eq!(old.len(), 4);
    assert_eq!(old[0].name, "mon.txt");
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_unicode_forms_diacritics_and_apostrophes_are_ignored() {
    let index = start_index().await;
    let addr = index.addr_string();
    let _a = share(
        &addr,
        20_011,
        vec![
            // Composed (NFC) and decomposed (NFD) names.
            file("Caf\u{e9} Noir.mp3", 1),
            file("Re\u{301}sume\u{301} 2024.pdf", 2),
            file("Beyonc\u{e9}_Halo.mp3", 3),
            file("Don't Stop Me Now.ogg", 4),
            file("Stra\u{df}e der Sehnsucht.mp3", 5),
            file("\u{141}\u{f3}d\u{17a} \u{c6}r\u{f8}.jpg", 6),
            file("\u{ff26}\u{ff35}\u{ff2c}\u{ff2c} width.txt", 7),
        ],
    )
    .await;
    let mut c = IndexClient::connect(&addr).await.unwrap();
    // NFD query, NFC name; and NFC query, NFD name.
    assert_eq!(
        names(&mut c, &["cafe\u{301}"]).await,
        ["Caf\u{e9} Noir.mp3"]
    );
    assert_eq!(
        names(&mut c, &["r\u{e9}sum\u{e9}"]).await,
        ["Re\u{301}sume\u{301} 2024.pdf"]
    );
    // Diacritics either way.
    assert_eq!(
        names(&mut c, &["resume"]).await,
        ["Re\u{301}sume\u{301} 2024.pdf"]
    );
    assert_eq!(names(&mut c, &["Beyonce"]).await, ["Beyonc\u{e9}_Halo.mp3"]);
    assert_eq!(names(&mut c, &["caf\u{e8}"]).await, ["Caf\u{e9} Noir.mp3"]);
    // Letters without a decomposition.
    assert_eq!(
        names(&mut c, &["strasse"]).await,
        ["Stra\u{df}e der Sehnsucht.mp3"]
    );
    assert_eq!(
        names(&mut c, &["STRA\u{df}E"]).await,
        ["Stra\u{df}e der Sehnsucht.mp3"]
    );
    assert_eq!(
        names(&mut c, &["lodz", "aero"]).await,
        ["\u{141}\u{f3}d\u{17a} \u{c6}r\u{f8}.jpg"]
    );
    // Compatibility forms (full width) both ways.
    assert_eq!(
        names(&mut c, &["full"]).await,
        ["\u{ff26}\u{ff35}\u{ff2c}\u{ff2c} width.txt"]
    );
    assert_eq!(
        names(&mut c, &["\u{ff43}\u{ff41}\u{ff46}"]).await,
        ["Caf\u{e9} Noir.mp3"]
    );
    // Apostrophes inside words, typed or typographic, or left out.
    for q in ["dont", "don't", "Don\u{2019}t", "DONT", "don"] {
        assert_eq!(
            names(&mut c, &[q, "stop"]).await,
            ["Don't Stop Me Now.ogg"],
            "{q}"
        );
    }
    // Names are shown exactly as shared (the NFD bytes stay NFD).
    let hit = &find(&mut c, &["resume"], SearchFilter::default(), 10)
        .await
        .hits[0];
    assert_eq!(
        hit.name.as_bytes(),
        "Re\u{301}sume\u{301} 2024.pdf".as_bytes()
    );
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_chinese_japanese_and_thai_match_by_sequence() {
    let index = start_index().await;
    let addr = index.addr_string();
    let _a = share(
        &addr,
        20_021,
        vec![
            file("\u{5343}\u{3068}\u{5343}\u{5c0b}\u{306e}\u{795e}\u{96a0}\u{3057}.mkv", 1),
            file("\u{5c0b}\u{5343}.txt", 2),
            file("\u{0e40}\u{0e1e}\u{0e25}\u{0e07}\u{0e44}\u{0e17}\u{0e22}\u{0e2a}\u{0e32}\u{0e01}\u{0e25}.mp3", 3),
            file("\u{732b} cat.jpg", 4),
        ],
    )
    .await;
    let mut c = IndexClient::connect(&addr).await.unwrap();
    let spirited = "\u{5343}\u{3068}\u{5343}\u{5c0b}\u{306e}\u{795e}\u{96a0}\u{3057}.mkv";
    // 千尋 finds 千と千尋の神隠し.mkv; 尋千 finds only 尋千.txt.
    assert_eq!(names(&mut c, &["\u{5343}\u{5c0b}"]).await, [spirited]);
    assert_eq!(
        names(&mut c, &["\u{5c0b}\u{5343}"]).await,
        ["\u{5c0b}\u{5343}.txt"]
    );
    assert_eq!(
        names(&mut c, &["\u{795e}\u{96a0}\u{3057}", "mkv"]).await,
        [spirited]
    );
    assert_eq!(
        names(&mut c, &["\u{5343}\u{3068}\u{5343}\u{5c0b}"]).await,
        [spirited]
    );
    assert!(names(&mut c, &["\u{5343}\u{5343}"]).await.is_empty());
    // Thai: ไทย inside เพลงไทยสากล.
    assert_eq!(names(&mut c, &["\u{0e44}\u{0e17}\u{0e22}"]).await.len(), 1);
    // One character: only where it stands alone.
    assert_eq!(names(&mut c, &["\u{732b}"]).await, ["\u{732b} cat.jpg"]);
    assert!(names(&mut c, &["\u{5343}"]).await.is_empty());
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_words_remove_names() {
    let index = start_index().await;
    let addr = index.addr_string();
    let _a = share(
        &addr,
        20_031,
        vec![
            file("Queen - Live at Wembley.mp3", 1),
            file("Queen - Bohemian Rhapsody.mp3", 2),
            file("Queen - Liverpool demo.mp3", 3),
        ],
    )
    .await;
    let mut c = IndexClient::connect(&addr).await.unwrap();
    assert_eq!(names(&mut c, &["queen"]).await.len(), 3);
    assert_eq!(
        sorted(names(&mut c, &["queen", "-live"]).await),
        ["Queen - Bohemian Rhapsody.mp3"],
        "-live removes Live and Liverpool"
    );
    assert_eq!(
        sorted(names(&mut c, &["queen", "-wembley", "-demo"]).await),
        ["Queen - Bohemian Rhapsody.mp3"]
    );
    let (code, message) = refusal(&mut c, vec!["-live".into()]).await;
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("excluded"), "{message}");
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_run_at_the_index_before_the_limit() {
    let index = start_index().await;
    let addr = index.addr_string();
    let mut files: Vec<SharedFile> = (0..150)
        .map(|i| file(&format!("track {i:03}.mp3"), 1_000 + i))
        .collect();
    files.extend((0..5).map(|i| file(&format!("track {i:03} lossless.flac"), 50_000_000 + i)));
    files.push(file("track video.mkv", 700_000_000));
    files.push(file("track notes.pdf", 20_000));
    files.push(file("track bundle.tar.gz", 30_000));
    let _a = share(&addr, 20_041, files).await;
    let mut c = IndexClient::connect(&addr).await.unwrap();
    let exts = |e: &[&str]| SearchFilter {
        exts: e.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    // --ext flac with --limit 3: the cut comes after the filter.
    let found = find(&mut c, &["track"], exts(&["flac"]), 3).await;
    assert_eq!(
        (found.total, found.truncated, found.hits.len()),
        (Some(5), true, 3)
    );
    assert!(found.hits.iter().all(|h| h.name.ends_with(".flac")));
    let found = find(&mut c, &["track"], exts(&["flac", "mkv"]), 100).await;
    assert_eq!((found.total, found.truncated), (Some(6), false));
    // --type: the extension table.
    let kind = |k: FileKind| exts(k.extensions());
    assert_eq!(
        find(&mut c, &["track"], kind(FileKind::Audio), 1000)
            .await
            .total,
        Some(155)
    );
    assert_eq!(
        find(&mut c, &["track"], kind(FileKind::Video), 10)
            .await
            .hits[0]
            .name,
        "track video.mkv"
    );
    assert_eq!(
        find(&mut c, &["track"], kind(FileKind::Document), 10)
            .await
            .hits[0]
            .name,
        "track notes.pdf"
    );
    assert_eq!(
        find(&mut c, &["track"], kind(FileKind::Archive), 10)
            .await
            .hits[0]
            .name,
        "track bundle.tar.gz"
    );
    assert_eq!(
        find(&mut c, &["track"], kind(FileKind::Program), 10)
            .await
            .total,
        Some(0)
    );
    // Sizes.
    let sizes = |min: Option<u64>, max: Option<u64>| SearchFilter {
        min_size: min,
        max_size: max,
        ..Default::default()
    };
    let big = find(&mut c, &["track"], sizes(Some(50_000_000), None), 100).await;
    assert_eq!(big.total, Some(6));
    assert!(big.hits.iter().all(|h| h.size >= 50_000_000));
    let small = find(&mut c, &["track"], sizes(None, Some(1_009)), 100).await;
    assert_eq!(small.total, Some(10));
    let band = find(&mut c, &["track"], sizes(Some(1_005), Some(1_006)), 100).await;
    assert_eq!(
        sorted(band.hits.into_iter().map(|h| h.name).collect()),
        ["track 005.mp3", "track 006.mp3"]
    );
    // A size filter with an extension filter.
    let f = SearchFilter {
        min_size: Some(50_000_002),
        exts: vec!["flac".into()],
        ..Default::default()
    };
    assert_eq!(find(&mut c, &["track"], f, 100).await.total, Some(3));
    // A malformed filter is refused.
    let r = c
        .request(&IndexRequest::SearchFiltered {
            words: vec!["track".into()],
            limit: 10,
            filter: exts(&[&"x".repeat(100)]),
        })
        .await;
    assert!(
        matches!(
            r,
            Err(IndexError::Refused {
                code: ErrorCode::BadRequest,
                ..
            })
        ),
        "{r:?}"
    );
    index.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_says_how_many_matched_and_whether_it_was_cut() {
    let index = start_index().await;
    let addr = index.addr_string();
    let files: Vec<SharedFile> = (0..250)
        .map(|i| file(&format!("photo {i}.jpg"), 1))
        .collect();
    let _a = share(&addr, 20_051, files).await;
    let mut c = IndexClient::connect(&addr).await.unwrap();
    let found = find(&mut c, &["pho"], SearchFilter::default(), 100).await;
    assert_eq!(
        (
            found.hits.len(),
            found.total,
            found.truncated,
            found.total_exact
        ),
        (100, Some(250), true, true)
    );
    let found = find(&mut c, &["pho"], SearchFilter::default(), 1000).await;
    assert_eq!(
        (found.hits.len(), found.total, found.truncated),
        (250, Some(250), false)
    );
    // Asking for more than the maximum gets the maximum.
    let found = find(&mut c, &["photo"], SearchFilter::default(), u32::MAX).await;
    assert_eq!(found.hits.len(), 250);
    index.stop().await;
}

/// The p2p mode answers with the same rules on each node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_nodes_match_like_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    write_file(&one, "Blue Monday.mp3", b"blue");
    write_file(&one, "Queen Live at Wembley.mp3", b"live");
    write_file(&two, "Beyonc\u{e9}_Halo.mp3", b"halo");
    write_file(&two, "Don't Stop Me Now.ogg", b"dont");
    write_file(
        &two,
        "\u{5343}\u{3068}\u{5343}\u{5c0b}\u{306e}\u{795e}\u{96a0}\u{3057}.mkv",
        b"chihiro",
    );
    write_file(&two, "Queen Studio.mp3", b"studio");
    let a = start_p2p_node(&one, vec![], 4).await;
    let b = start_p2p_node(&two, vec![a.addr()], 4).await;
    let via = a.addr();
    let search = |words: &[&str]| {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        let via = via.clone();
        async move {
            let report = peer::overlay::search(&via, words, 3, Duration::from_secs(5))
                .await
                .unwrap();
            sorted(report.hits.into_iter().map(|h| h.name).collect())
        }
    };
    // Wait until both nodes hashed their files and are linked.
    wait_until("both nodes answer", Duration::from_secs(20), || async {
        search(&["mp3"]).await.len() == 4
    })
    .await;
    assert_eq!(search(&["mon"]).await, ["Blue Monday.mp3"]);
    assert_eq!(search(&["beyonce"]).await, ["Beyonc\u{e9}_Halo.mp3"]);
    assert_eq!(search(&["dont", "sto"]).await, ["Don't Stop Me Now.ogg"]);
    assert_eq!(
        search(&["\u{5343}\u{5c0b}"]).await,
        ["\u{5343}\u{3068}\u{5343}\u{5c0b}\u{306e}\u{795e}\u{96a0}\u{3057}.mkv"]
    );
    assert_eq!(search(&["queen", "-live"]).await, ["Queen Studio.mp3"]);
    assert!(search(&["onday"]).await.is_empty());
    // Nothing to look for: refused before anything is sent.
    assert!(
        peer::overlay::search(&via, vec!["!!".into()], 3, Duration::from_secs(1))
            .await
            .is_err()
    );
    b.stop().await;
    a.stop().await;
}

/// Bad input: a clear refusal or a bounded answer, and other clients go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queries_are_refused_or_bounded() {
    let index = start_index().await;
    let addr = index.addr_string();
    // More files start with `fi` than a search ranks.
    let count = common::limits::MAX_RANKED + 5_000;
    let files: Vec<SharedFile> = (0..count)
        .map(|i| file(&format!("file {i:05}.dat"), 1 + i as u64))
        .collect();
    let _a = share(&addr, 20_061, files).await;
    let mut c = IndexClient::connect(&addr).await.unwrap();

    // A prefix matching every file: a bounded answer with an exact total
    // (a short prefix's posting lists are exact: counted on the index).
    let found = find(&mut c, &["fi"], SearchFilter::default(), 1000).await;
    assert_eq!(found.hits.len(), 1000);
    assert!(found.truncated);
    assert_eq!((found.total, found.total_exact), (Some(count as u64), true));
    // Exact too with an exclusion: `-file` leaves nothing.
    let found = find(&mut c, &["fi", "-file"], SearchFilter::default(), 10).await;
    assert_eq!((found.total, found.total_exact), (Some(0), true));
    // With a filter, more candidates than are ranked: an estimated total.
    let filter = SearchFilter {
        max_size: Some(count as u64 / 2),
        ..SearchFilter::default()
    };
    let found = find(&mut c, &["fi"], filter, 1000).await;
    assert!(!found.total_exact, "more candidates than are ranked");
    assert_eq!(found.hits.len(), 1000);
    let total = found.total.unwrap();
    assert!((1000..=count as u64).contains(&total), "{total}");
    // Under the cap the total is exact.
    let found = find(&mut c, &["file", "0"], SearchFilter::default(), 10).await;
    assert_eq!(found.total, Some(0), "1-character words are whole words");
    let found = find(&mut c, &["file", "000"], SearchFilter::default(), 10).await;
    assert_eq!((found.total, found.total_exact), (Some(100), true));

    // 10,000 characters, 1,000 words, punctuation, combining marks: refused.
    let long = vec!["a".repeat(10_000)];
    let many: Vec<String> = (0..1_000).map(|i| format!("w{i}")).collect();
    let spread: Vec<String> = (0..16).map(|i| format!("{i}a b{i} c{i}d e{i}")).collect();
    for (words, says) in [
        (long, "bytes"),
        (many, "words"),
        (
            vec!["!!!".into(), "...".into(), "-".into()],
            "nothing to search",
        ),
        (vec!["\u{301}\u{302}\u{303}".into()], "nothing to search"),
        (spread, "terms"),
    ] {
        let (code, message) = refusal(&mut c, words.clone()).await;
        assert_eq!(code, ErrorCode::BadRequest, "{words:?}");
        assert!(message.contains(says), "{message}");
    }

    // Invalid UTF-8 from a hand-made client: the connection is closed, and
    // others are served.
    let raw = TcpStream::connect(&addr).await.unwrap();
    let (mut raw, _) = transfer::net::client(raw, Protocol::Index, None)
        .await
        .unwrap();
    // SearchFiltered { words: [<ff fe>], limit: 10, filter: default }
    let body = [15u8, 1, 2, 0xff, 0xfe, 10, 0, 0, 0];
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend(body);
    raw.write_all(&frame).await.unwrap();
    raw.flush().await.unwrap();
    let mut buf = Vec::new();
    let answer: Result<Option<IndexResponse>, _> =
        wire::read_message(&mut raw, &mut buf, Deadlines::default()).await;
    assert!(
        !matches!(answer, Ok(Some(IndexResponse::SearchAnswer { .. }))),
        "{answer:?}"
    );

    // Searches that hit the cap do not hold up lookups on another connection.
    let id = file("file 00007.dat", 8).id;
    let busy = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut c = IndexClient::connect(&addr).await.unwrap();
            for _ in 0..20 {
                find(&mut c, &["fi"], SearchFilter::default(), 1000).await;
            }
        })
    };
    let mut other = IndexClient::connect(&addr).await.unwrap();
    for _ in 0..50 {
        let found = tokio::time::timeout(Duration::from_secs(10), other.lookup(id))
            .await
            .expect("a lookup waited behind searches")
            .unwrap();
        assert!(found.is_some());
    }
    busy.await.unwrap();
    index.stop().await;
}
