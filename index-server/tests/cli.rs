//! The `index-server` binary's command line (this file also makes `cargo
//! test` build the binary, which `lab distribution --processes` and its
//! test start).

use std::process::Command;

fn index_server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_index-server"))
}

#[test]
fn help_names_the_listen_address() {
    let out = index_server().arg("--help").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--listen"), "{text}");
}

#[test]
fn an_unknown_flag_is_refused_with_a_usage_error() {
    let out = index_server().arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("--no-such-flag"), "{text}");
}
