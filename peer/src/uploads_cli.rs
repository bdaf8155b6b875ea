//! `peer uploads [--json]`: who the running daemon serves (its upload
//! slots: peer, file, rate, bytes) and who waits for a slot (its upload
//! queue: position, waiting since), from `GET /api/uploads`.

use std::path::PathBuf;

use clap::Args;
use peer::daemon::client::ApiClient;
use serde_json::Value;

use crate::cli_output::{self, human_size};

#[derive(Args, Debug)]
pub struct UploadsArgs {
    /// The shared folder of the daemon to ask (it records its API address
    /// in SHARE/.p2pshare/api.json); default: the current folder or one
    /// above it. PEER_API=http://IP:PORT (and PEER_API_TOKEN) override it.
    #[arg(long, value_name = "SHARE", default_value = ".")]
    share: PathBuf,
    /// Print the API's JSON ({slots, slots_in_use, active, queue}) instead of tables.
    #[arg(long, env = "PEER_JSON", value_parser = crate::boolish())]
    json: bool,
}

pub async fn run(args: UploadsArgs) -> anyhow::Result<i32> {
    let Some(client) = ApiClient::discover(&args.share).await? else {
        anyhow::bail!(
            "no running daemon found for {} (start `peer serve --share DIR`, pass --share DIR, or set PEER_API=http://IP:PORT)",
            args.share.display()
        );
    };
    let listing = client.get("/api/uploads").await?;
    if args.json {
        cli_output::print_json(&listing);
    } else {
        print_listing(&listing, now_unix());
    }
    Ok(0)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn esc(s: &str) -> String {
    common::names::escape_for_terminal(s).into_owned()
}

/// "3m 20s" for a number of seconds.
fn ago(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn print_listing(v: &Value, now: u64) {
    let slots = v["slots"].as_u64().unwrap_or(0);
    let used = v["slots_in_use"].as_u64().unwrap_or(0);
    let active = v["active"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let queue = v["queue"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    outln!(
        "upload slots: {used} of {slots} in use, {} waiting",
        queue.len()
    );
    if !active.is_empty() {
        outln!("");
        outln!("{:<24}  {:>11}  {:>10}  FILE", "SERVING", "RATE", "SENT");
        for a in active {
            let file = a["name"]
                .as_str()
                .map(esc)
                .or_else(|| a["file_id"].as_str().map(|f| f.chars().take(16).collect()))
                .unwrap_or_else(|| "-".into());
            outln!(
                "{:<24}  {:>9}/s  {:>10}  {}",
                esc(a["peer"].as_str().unwrap_or("?")),
                human_size(a["rate_bps"].as_u64().unwrap_or(0)),
                human_size(a["bytes"].as_u64().unwrap_or(0)),
                file
            );
        }
    }
    if !queue.is_empty() {
        outln!("");
        outln!("{:>4}  {:<24}  WAITING", "POS", "QUEUED");
        for w in queue {
            let since = w["waiting_since"].as_u64().unwrap_or(now);
            let away = if w["connected"].as_bool() == Some(false) {
                " (disconnected, place kept for a while)"
            } else {
                ""
            };
            outln!(
                "{:>4}  {:<24}  {}{}",
                w["position"].as_u64().unwrap_or(0),
                esc(w["peer"].as_str().unwrap_or("?")),
                ago(now.saturating_sub(since)),
                away
            );
        }
    }
}
