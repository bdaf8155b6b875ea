//! The instant-messaging commands: `who`, `whois`, `msg`, `inbox`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use common::index_proto::PeerSummary;
use common::names::escape_for_terminal as esc;
use peer::inbox::{self, InboxMessage};
use peer::index_client::IndexClient;

use crate::cli_output::{human_size, print_json};
use crate::IndexArg;

#[derive(Subcommand, Debug)]
pub enum ImCommand {
    /// List the peers online at the index: nickname, address, files and bytes shared.
    Who {
        #[command(flatten)]
        index: IndexArg,
        /// Print one JSON array ({nick, addr, files, bytes}) instead of a table.
        #[arg(long, env = "PEER_JSON", value_parser = crate::boolish())]
        json: bool,
    },
    /// Show where the online peer called NICK is (its address, files and bytes).
    Whois {
        #[command(flatten)]
        index: IndexArg,
        /// Print a JSON object ({nick, addr, files, bytes}) instead of the address.
        #[arg(long, env = "PEER_JSON", value_parser = crate::boolish())]
        json: bool,
        /// The peer's nickname, as `peer who` shows it.
        nick: String,
    },
    /// Send a direct message to NICK, straight to that peer.
    ///
    /// The index is only asked where NICK is; the text goes directly to that
    /// peer and never through the index. Fails when NICK is offline: messages
    /// are not stored for later.
    Msg {
        #[command(flatten)]
        index: IndexArg,
        /// Your nickname, shown to the receiver [default: this machine's host name].
        #[arg(long, env = "PEER_NICK")]
        from: Option<String>,
        /// Print a JSON object ({to, addr}) when delivered.
        #[arg(long, env = "PEER_JSON", value_parser = crate::boolish())]
        json: bool,
        /// The recipient's nickname.
        nick: String,
        /// The message (the words are joined with spaces; at most 4096 bytes).
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Show the direct messages this machine's peer has received.
    ///
    /// Reads SHARE/.p2pshare/inbox.jsonl, which `peer serve --share SHARE`
    /// writes, oldest message first; works whether the daemon runs or not.
    Inbox {
        /// The folder `peer serve --share` shares.
        #[arg(long, env = "PEER_SHARE")]
        share: PathBuf,
        /// Print one JSON array ({from, source, received_unix_ms, text,
        /// sender_id, verified, signature, sent_unix_ms}): `verified` is
        /// true when the sender's nickname belongs to the key its
        /// connection proved (the index lists the nickname under that key),
        /// false when not, absent when it could not be checked;
        /// `signature` (hex) is the sender's ed25519 signature, checked on
        /// arrival (absent from older peers).
        #[arg(long, env = "PEER_JSON", value_parser = crate::boolish())]
        json: bool,
    },
}

pub async fn run(command: ImCommand) -> anyhow::Result<i32> {
    match command {
        ImCommand::Who { index, json } => {
            let mut client = IndexClient::connect(&index.index).await?;
            let peers = client.peers_reach().await?;
            if json {
                let all: Vec<_> = peers
                    .iter()
                    .map(|p| {
                        let mut v = peer_json(&p.summary);
                        v["reach"] = p.reach.label().into();
                        v
                    })
                    .collect();
                print_json(&all);
            } else if peers.is_empty() {
                errln!("nobody is online");
            } else {
                outln!(
                    "{:<32}  {:<12}  {:<24}  {:<10}  {:>7}  {:>10}",
                    "NICK",
                    "ID",
                    "ADDRESS",
                    "REACH",
                    "FILES",
                    "SIZE"
                );
                for p in &peers {
                    let s = &p.summary;
                    outln!(
                        "{:<32}  {:<12}  {:<24}  {:<10}  {:>7}  {:>10}",
                        esc(s.nick.as_deref().unwrap_or("-")),
                        s.peer_id.map(|id| id.short()).unwrap_or_else(|| "-".into()),
                        esc(&s.addr),
                        p.reach.label(),
                        s.files,
                        human_size(s.bytes)
                    );
                }
            }
            Ok(0)
        }
        ImCommand::Whois { index, json, nick } => {
            common::im::validate_nick(&nick)?;
            let mut client = IndexClient::connect(&index.index).await?;
            let Some(p) = client.whois(&nick).await? else {
                anyhow::bail!("{nick} is not online (`peer who` lists who is)");
            };
            if json {
                print_json(&peer_json(&p));
            } else {
                outln!("{}", esc(&p.addr));
                if let Some(id) = p.peer_id {
                    outln!("id {id}");
                }
            }
            Ok(0)
        }
        ImCommand::Msg {
            index,
            from,
            json,
            nick,
            text,
        } => {
            let from = from.unwrap_or_else(peer::im::default_nick);
            let text = text.join(" ");
            let delivery = peer::im::send_message(&index.index, &nick, &from, &text).await?;
            if json {
                print_json(&delivery);
            } else {
                outln!(
                    "delivered to {} at {}",
                    esc(&delivery.to),
                    esc(&delivery.addr)
                );
            }
            Ok(0)
        }
        ImCommand::Inbox { share, json } => {
            let path = inbox::inbox_file_in(&share);
            let messages = match inbox::read_file(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !share.is_dir() {
                        anyhow::bail!(
                            "{} is not a folder (give the folder `peer serve --share` shares)",
                            share.display()
                        );
                    }
                    Vec::new()
                }
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            };
            if json {
                print_json(&messages);
            } else if messages.is_empty() {
                errln!("no messages");
            } else {
                for m in &messages {
                    print_message(m);
                }
            }
            Ok(0)
        }
    }
}

fn peer_json(p: &PeerSummary) -> serde_json::Value {
    serde_json::json!({
        "nick": p.nick,
        "addr": p.addr,
        "peer_id": p.peer_id.map(|id| id.to_string()),
        "files": p.files,
        "bytes": p.bytes,
    })
}

fn print_message(m: &InboxMessage) {
    // Whether the nickname is its sender key's (see `InboxMessage::verified`).
    let check = match m.verified {
        Some(true) => "verified",
        Some(false) => "unverified",
        None => "not checked",
    };
    // Signed by the key that sent it (older peers send unsigned).
    let signed = if m.signature.is_some() {
        ", signed"
    } else {
        ""
    };
    outln!(
        "{}  {} ({}, {check}{signed})",
        utc_time(m.received_unix_ms),
        esc(&m.from),
        esc(&m.source)
    );
    // The text was checked on arrival; escaping again keeps an inbox file
    // written by an older or altered build harmless too. Tabs stay tabs.
    for line in m.text.lines() {
        let shown: Vec<_> = line.split('\t').map(esc).collect();
        outln!("    {}", shown.join("\t"));
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` from milliseconds since the epoch.
fn utc_time(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc_time;

    #[test]
    fn utc_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_709_251_199_000), "2024-02-29 23:59:59 UTC");
    }
}
