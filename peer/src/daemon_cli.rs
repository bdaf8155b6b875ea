//! The commands that steer a running daemon through its API: `peer get`
//! handed to it, `peer downloads`, `peer cancel`, `peer pause`, `peer resume`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use peer::daemon::client::ApiClient;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::cli_output;

/// Which daemon: the one recorded in SHARE (or a folder above), or PEER_API.
#[derive(Args, Debug, Clone)]
pub struct DaemonArg {
    /// The shared folder of the daemon to steer (it records its API address
    /// in SHARE/.p2pshare/api.json); default: the current folder or one
    /// above it. PEER_API=http://IP:PORT (and PEER_API_TOKEN) override it.
    #[arg(long, value_name = "SHARE", env = "PEER_SHARE", default_value = ".")]
    share: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum DaemonCommand {
    /// List the running daemon's downloads (queued, waiting, active,
    /// paused, done, failed) with their progress.
    Downloads {
        #[command(flatten)]
        daemon: DaemonArg,
        /// Print the API's JSON ({"downloads": [...]}) instead of a table.
        #[arg(long, env = "PEER_JSON", value_parser = crate::boolish())]
        json: bool,
    },
    /// Cancel a download of the running daemon (its verified part stays, so
    /// asking again resumes), or clear a finished or failed one from the list.
    Cancel {
        #[command(flatten)]
        daemon: DaemonArg,
        /// The download's number (`peer downloads` shows it).
        id: u64,
    },
    /// Pause a download of the running daemon (it keeps its verified chunks).
    Pause {
        #[command(flatten)]
        daemon: DaemonArg,
        /// The download's number (`peer downloads` shows it).
        id: u64,
    },
    /// Queue a paused or failed download of the running daemon again.
    Resume {
        #[command(flatten)]
        daemon: DaemonArg,
        /// The download's number (`peer downloads` shows it).
        id: u64,
    },
}

async fn find(share: &Path) -> anyhow::Result<ApiClient> {
    match ApiClient::discover(share).await? {
        Some(client) => Ok(client),
        None => anyhow::bail!(
            "no running daemon found for {} (start `peer serve --share DIR`, pass --share DIR, or set PEER_API=http://IP:PORT)",
            share.display()
        ),
    }
}

pub async fn run(command: DaemonCommand) -> anyhow::Result<i32> {
    match command {
        DaemonCommand::Downloads { daemon, json } => {
            let client = find(&daemon.share).await?;
            let list = client.get("/api/downloads?limit=100000").await?;
            if json {
                cli_output::print_json(&list);
            } else {
                print_table(
                    list["downloads"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or(&[]),
                );
            }
            Ok(0)
        }
        DaemonCommand::Cancel { daemon, id } => {
            let client = find(&daemon.share).await?;
            let d = client.delete(&format!("/api/downloads/{id}")).await?;
            outln!(
                "{id}: removed ({} was {})",
                name(&d),
                d["state"].as_str().unwrap_or("?")
            );
            Ok(0)
        }
        DaemonCommand::Pause { daemon, id } => {
            let client = find(&daemon.share).await?;
            let d = client
                .post(&format!("/api/downloads/{id}/pause"), json!({}))
                .await?;
            outln!("{id}: {} {}", name(&d), d["state"].as_str().unwrap_or("?"));
            Ok(0)
        }
        DaemonCommand::Resume { daemon, id } => {
            let client = find(&daemon.share).await?;
            let d = client
                .post(&format!("/api/downloads/{id}/resume"), json!({}))
                .await?;
            outln!("{id}: {} {}", name(&d), d["state"].as_str().unwrap_or("?"));
            Ok(0)
        }
    }
}

fn name(d: &Value) -> String {
    common::names::escape_for_terminal(d["name"].as_str().unwrap_or("?")).into_owned()
}

fn print_table(list: &[Value]) {
    if list.is_empty() {
        outln!("no downloads");
        return;
    }
    outln!(
        "{:>4}  {:<12}  {:>7}  {:>10}  {:>11}  NAME",
        "ID",
        "STATE",
        "DONE",
        "SIZE",
        "RATE"
    );
    for d in list {
        let size = d["size"].as_u64();
        let done = d["bytes_done"].as_u64().unwrap_or(0);
        let pct = match size {
            Some(0) => "100%".to_string(),
            Some(s) => format!("{:.0}%", done as f64 * 100.0 / s as f64),
            None => "-".to_string(),
        };
        let mut state = d["state"].as_str().unwrap_or("?").to_string();
        if let Some(p) = d["queue_position"].as_u64() {
            state = format!("{state} #{p}");
        }
        outln!(
            "{:>4}  {:<12}  {:>7}  {:>10}  {:>9}/s  {}{}",
            // A number, not a JSON value: `Value`'s Display ignores widths.
            d["id"].as_u64().unwrap_or(0),
            state,
            pct,
            size.map(cli_output::human_size)
                .unwrap_or_else(|| "?".into()),
            cli_output::human_size(d["rate_bps"].as_u64().unwrap_or(0)),
            name(d),
            match (d["path"].as_str(), d["error"].as_str()) {
                (Some(p), _) => format!("  -> {p}"),
                (_, Some(e)) => format!("  ({})", common::names::escape_for_terminal(e)),
                _ => String::new(),
            }
        );
    }
}

/// `peer get` handed to a running daemon: creates the download, then (unless
/// `detach`) shows its progress until it is done or failed.
pub async fn get_through(
    client: &ApiClient,
    target: &str,
    out: &Path,
    store: Option<&str>,
    json: bool,
    detach: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<i32> {
    let out = std::path::absolute(out)?;
    let mut body = json!({"target": target, "out": out});
    // Client-server mode: the daemon fetches from that server's store only.
    if let Some(server) = store {
        body["mode"] = "client-server".into();
        body["server"] = server.into();
    }
    let created = client.post("/api/downloads", body).await?;
    let id = created["id"].as_u64().unwrap_or(0);
    if detach {
        if json {
            cli_output::print_json(&created);
        } else {
            errln!(
                "download {id} handed to the daemon at {} (`peer downloads` shows it)",
                client.addr
            );
        }
        return Ok(0);
    }
    errln!("download {id} handed to the daemon at {}", client.addr);
    let mut last_line = String::new();
    loop {
        let d = client.get(&format!("/api/downloads/{id}")).await;
        let d = match d {
            Ok(d) => d,
            Err(peer::daemon::client::ClientError::Api { status: 404, .. }) => {
                anyhow::bail!("download {id} was cancelled in the daemon")
            }
            Err(e) => return Err(e.into()),
        };
        match d["state"].as_str() {
            Some("done") => {
                if json {
                    // The object a standalone `peer get --json` prints, and
                    // the daemon's number for the download.
                    let mut out = match &d["outcome"] {
                        o @ Value::Object(_) => o.clone(),
                        _ => json!({"path": d["path"], "id": d["file_id"], "size": d["size"]}),
                    };
                    out["download"] = id.into();
                    cli_output::print_json(&out);
                } else {
                    outln!("{}", d["path"].as_str().unwrap_or(""));
                }
                return Ok(0);
            }
            Some("failed") => {
                anyhow::bail!(
                "download {id} failed: {} (the daemon tries again{}; `peer cancel {id}` stops it)",
                d["error"].as_str().unwrap_or("?"),
                d["retry_at"].as_u64().map(|_| " later").unwrap_or(" when resumed")
            )
            }
            Some(state) => {
                let line = format!(
                    "{state}: {} of {} at {}/s",
                    cli_output::human_size(d["bytes_done"].as_u64().unwrap_or(0)),
                    d["size"]
                        .as_u64()
                        .map(cli_output::human_size)
                        .unwrap_or_else(|| "?".into()),
                    cli_output::human_size(d["rate_bps"].as_u64().unwrap_or(0)),
                );
                // "queued at HOST, position 3" where a source's upload slots are all taken.
                let queued: Vec<String> = d["sources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| {
                        let p = s["queue_position"].as_u64()?;
                        let host = common::names::escape_for_terminal(s["addr"].as_str()?);
                        Some(format!("queued at {host}, position {p}"))
                    })
                    .collect();
                let line = if queued.is_empty() {
                    line
                } else {
                    format!("{line} ({})", queued.join("; "))
                };
                if line != last_line {
                    errln!("{line}");
                    last_line = line;
                }
            }
            None => anyhow::bail!("the daemon sent no state for download {id}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                errln!("interrupted; download {id} goes on in the daemon (`peer cancel {id}` stops it)");
                return Ok(130);
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}
