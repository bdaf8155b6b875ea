//! The `peer` binary's keys as a user meets them (issue 16): key files
//! others can read, or that are not keys, stop it with what to do; the
//! index's id is pinned on first use, and an index proving another id
//! (pinned, or given with `--index-key`) is refused, not talked to. The
//! index runs in-process, under this test process's key.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::identity::{Identity, PeerId};
use common::secure::Security;
use tokio::process::Command;

// Only `start_index` is used here.
#[allow(dead_code)]
mod support;
use support::start_index;

const PEER: &str = env!("CARGO_BIN_EXE_peer");

/// Longest a refused command may take to exit: it must stop at once, not
/// retry (a hang fails the test here instead of timing out the suite).
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// The index's id: the in-process index proves this process's key.
fn index_id() -> PeerId {
    Security::process().peer_id().expect("the tests encrypt")
}

/// Runs `peer ARGS` to its end, within [`EXIT_DEADLINE`].
async fn run(args: &[&str]) -> Output {
    let child = Command::new(PEER)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::timeout(EXIT_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`peer {}` did not exit", args.join(" ")))
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts `out` failed with status 1 and a message containing `needle`.
fn refused_with(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_files_others_can_read_or_that_are_not_keys_are_refused() {
    let (index, stop) = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(share.join(".p2pshare")).unwrap();
    let share_s = share.to_str().unwrap();
    let serve = |extra: Vec<String>| {
        let mut args: Vec<String> = ["serve", "--share", share_s, "--listen", "127.0.0.1:0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--index".into(), index.clone()]);
        args.extend(extra);
        args
    };

    // A key others may read: its default place and one given with --key,
    // for a sharing peer and for a one-shot command.
    let default_key = share.join(".p2pshare").join("node.key");
    std::fs::write(&default_key, Identity::generate().to_file_text()).unwrap();
    chmod(&default_key, 0o644);
    let args = serve(vec![]);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    refused_with(&out, "chmod 600");
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, Identity::generate().to_file_text()).unwrap();
    chmod(&other_key, 0o640);
    let key = other_key.to_str().unwrap();
    let out = run(&["search", "--index", &index, "--key", key, "anything"]).await;
    refused_with(&out, "chmod 600");

    // A private file that is not a key.
    std::fs::write(&other_key, "not a key\n").unwrap();
    chmod(&other_key, 0o600);
    let args = serve(vec!["--key".into(), key.into()]);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    refused_with(&out, "move it away");
    let out = run(&["search", "--index", &index, "--key", key, "anything"]).await;
    refused_with(&out, "move it away");

    // A network key file that is not one.
    let net_key = dir.path().join("net.key");
    std::fs::write(&net_key, "short").unwrap();
    chmod(&net_key, 0o600);
    let net = net_key.to_str().unwrap();
    let out = run(&["search", "--index", &index, "--network-key", net, "x"]).await;
    refused_with(&out, "is not a network key");

    // Fixed (mode 0600, a real key): the same command runs.
    chmod(&default_key, 0o600);
    let out = run(&[
        "search",
        "--index",
        &index,
        "--key",
        default_key.to_str().unwrap(),
        "x",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_id_is_pinned_on_first_use_and_another_one_is_refused() {
    let (index, stop) = start_index().await;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("a.txt"), b"pinned").unwrap();
    let share_s = share.to_str().unwrap();
    let args = [
        "serve",
        "--share",
        share_s,
        "--listen",
        "127.0.0.1:0",
        "--index",
        &index,
    ];

    // First use: the sharing peer records the index's id.
    let known = share.join(".p2pshare").join("known_index");
    let expected_line = format!("{index} {}", index_id());
    let mut serving = Command::new(PEER)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&known).unwrap_or_default();
        if text.lines().any(|l| l.trim() == expected_line) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pin {expected_line:?} in {known:?}: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    serving.kill().await.unwrap();

    // The same address later proves another id: refused at start, with
    // where it was pinned and what to do; nothing is registered.
    let impostor_id = Identity::generate().peer_id();
    std::fs::write(&known, format!("{index} {impostor_id}\n")).unwrap();
    let out = run(&args).await;
    refused_with(&out, "impersonating");
    refused_with(&out, "delete the line");

    // A one-shot command given the wrong --index-key refuses too; the
    // right one works.
    let wrong = impostor_id.to_string();
    let out = run(&["search", "--index", &index, "--index-key", &wrong, "x"]).await;
    refused_with(&out, "impersonating");
    let right = index_id().to_string();
    let out = run(&["search", "--index", &index, "--index-key", &right, "x"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    stop.cancel();
}
