//! Issue 18 case 2: names, nicknames, addresses and error messages from a
//! hostile index reach the terminal escaped (`\u{XXXX}`), never raw: no
//! escape sequence, no direction override, no line break of their own.

use std::process::{Command, Output};

use common::hello::Protocol;
use common::id::FileId;
use common::index_proto::{
    ErrorCode, IndexRequest, IndexResponse, PeerSummary, SearchHit, SharedFile,
};
use common::wire::{self, Deadlines};
use tokio::net::TcpListener;

const PEER: &str = env!("CARGO_BIN_EXE_peer");

/// A name that would clear the screen, reverse the text and start a line.
const HOSTILE: &str = "song\u{202E}3pm.exe\x1b[2J\nfake line\u{200B}";

/// An index that answers every request with hostile text; returns its address.
async fn hostile_index() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok((_, mut s)) =
                    transfer::net::accept(s, &[Protocol::Index], |_| false, |_| 0).await
                else {
                    return;
                };
                let mut buf = Vec::new();
                while let Ok(Some(req)) =
                    wire::read_message::<_, IndexRequest>(&mut s, &mut buf, Deadlines::default())
                        .await
                {
                    let id = FileId([7; 32]);
                    let answer = match req {
                        IndexRequest::Search { .. } => IndexResponse::SearchResults {
                            hits: vec![SearchHit {
                                id,
                                name: HOSTILE.into(),
                                size: 1,
                                sources: 1,
                            }],
                        },
                        IndexRequest::Browse { .. } => IndexResponse::PeerFiles {
                            files: vec![SharedFile {
                                id,
                                name: HOSTILE.into(),
                                size: 1,
                            }],
                            next: None,
                        },
                        IndexRequest::ListPeers { .. } | IndexRequest::WhoIs { .. } => {
                            IndexResponse::Peers {
                                peers: vec![PeerSummary {
                                    addr: HOSTILE.into(),
                                    nick: Some(HOSTILE.into()),
                                    peer_id: None,
                                    files: 1,
                                    bytes: 1,
                                }],
                                next: None,
                            }
                        }
                        _ => IndexResponse::Error {
                            code: ErrorCode::BadRequest,
                            message: HOSTILE.into(),
                        },
                    };
                    if wire::send_message(&mut s, &answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(PEER)
            .args(&args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run peer")
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn text_from_the_network_is_printed_escaped() {
    let index = hostile_index().await;
    let out_dir = tempfile::tempdir().unwrap();
    let id = "07".repeat(32);
    let commands: Vec<Vec<&str>> = vec![
        vec!["search", "song"],
        vec!["browse", "someone"],
        vec!["who"],
        vec!["whois", "someone"],
        vec!["get", &id, "-o", out_dir.path().to_str().unwrap()],
        vec!["stats"],
    ];
    for command in commands {
        let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        args.extend(["--index".into(), index.clone()]);
        let out = run(args).await;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let all = format!("{stdout}{stderr}");
        assert!(
            all.contains("song\\u{202E}3pm.exe\\u{001B}[2J\\u{000A}fake line\\u{200B}"),
            "{command:?} shows the text escaped: {all}"
        );
        for raw in ['\u{202E}', '\x1b', '\u{200B}'] {
            assert!(!all.contains(raw), "{command:?} printed {raw:?} raw: {all}");
        }
        assert!(
            !all.lines().any(|l| l.starts_with("fake line")),
            "{command:?} let the name start a line: {all}"
        );
    }
}

#[tokio::test]
async fn the_inbox_is_printed_escaped() {
    // Messages are checked on arrival; an inbox written by another build
    // (or by hand) still cannot steer the terminal.
    let share = tempfile::tempdir().unwrap();
    let path = transfer::inbox::inbox_file_in(share.path());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let line = serde_json::json!({
        "from": "ana\u{202E}", "source": "127.0.0.1", "received_unix_ms": 0,
        "text": "hola\tqué tal\n\u{1b}[2Jsecond line\u{200B}",
    });
    std::fs::write(&path, format!("{line}\n")).unwrap();
    let out = run(vec![
        "inbox".into(),
        "--share".into(),
        share.path().to_str().unwrap().into(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // "(127.0.0.1, not checked)" since senders are verified (issue 16).
    assert!(stdout.contains("ana\\u{202E} (127.0.0.1"), "{stdout}");
    assert!(stdout.contains("    hola\tqué tal\n"), "{stdout}");
    assert!(
        stdout.contains("    \\u{001B}[2Jsecond line\\u{200B}"),
        "{stdout}"
    );
    for raw in ['\u{202E}', '\x1b', '\u{200B}'] {
        assert!(!stdout.contains(raw), "printed {raw:?} raw: {stdout}");
    }
}
