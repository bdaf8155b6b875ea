//! How the command line prints results: tables for people, JSON for scripts,
//! and a progress bar on a terminal.
//!
//! Every name, nickname or address that came from the network goes through
//! [`common::names::escape_for_terminal`] before it reaches a table: control
//! and invisible formatting characters are shown as `\u{XXXX}`, never sent
//! to the terminal raw.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::index_proto::{SearchHit, SharedFile, Source};
use common::names::escape_for_terminal as esc;
use peer::download::Progress;
use serde::Serialize;

/// `println!` for results: when stdout is a closed pipe (`peer browse X |
/// head -1`) the command ends quietly with status 0 instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli_output::write_out(format_args!($($arg)*)) };
}

/// `eprintln!` for notes and errors: a closed stderr is ignored.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::cli_output::write_err(format_args!($($arg)*)) };
}

/// Writes one line to stdout; see [`outln!`].
pub fn write_out(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        output_failed(&e);
    }
}

/// Ends the process after stdout failed: quietly (status 0) when the reader
/// went away, else with the reason (status 1).
pub fn output_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    write_err(format_args!("error: cannot write the output: {e}"));
    std::process::exit(1);
}

/// Writes one line to stderr, ignoring a closed stderr.
pub fn write_err(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

pub fn print_json<T: Serialize + ?Sized>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => outln!("{s}"),
        Err(e) => errln!("error: cannot encode JSON: {e}"),
    }
}

pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn hits_json(hits: &[SearchHit]) -> serde_json::Value {
    serde_json::Value::Array(
        hits.iter()
            .map(|h| serde_json::json!({"id": h.id.to_hex(), "name": h.name, "size": h.size, "sources": h.sources}))
            .collect(),
    )
}

pub fn files_json(files: &[SharedFile]) -> serde_json::Value {
    serde_json::Value::Array(
        files
            .iter()
            .map(|f| serde_json::json!({"id": f.id.to_hex(), "name": f.name, "size": f.size}))
            .collect(),
    )
}

/// A flooding search: the hits, then what it cost (on stderr, so stdout
/// stays the table).
/// With `show_sources`, each hit's source addresses on indented lines.
pub fn print_p2p_report(report: &peer::overlay::SearchReport, show_sources: bool) {
    if report.hits.is_empty() {
        errln!("no files found");
    } else {
        outln!("{:>7}  {:>10}  {:<64}  NAME", "SOURCES", "SIZE", "ID");
        for h in &report.hits {
            outln!(
                "{:>7}  {:>10}  {}  {}",
                h.sources.len(),
                human_size(h.size),
                h.id,
                esc(&h.name)
            );
            for addr in h.sources.iter().filter(|_| show_sources) {
                outln!("{:>7}  {}", "from", esc(addr));
            }
        }
    }
    errln!(
        "flooding with TTL {}: {}, {} ({}, {}), {} dropped, {} ms{}",
        report.ttl,
        counted(report.nodes_reached, "node reached", "nodes reached"),
        counted(report.messages, "message", "messages"),
        counted(report.query_messages, "query copy", "query copies"),
        counted(report.hit_messages, "hit hop", "hit hops"),
        counted(report.duplicates, "duplicate", "duplicates"),
        report.elapsed_ms,
        if report.complete {
            ""
        } else {
            " (wait ran out before every copy was accounted for)"
        }
    );
}

/// `n` with the noun in the singular for 1, else the plural.
pub fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The table of an index search; with `sources` (one list per hit, from
/// `--sources`), each hit's sources on indented lines under it:
/// nickname, address, short node id.
pub fn print_hits(hits: &[SearchHit], sources: Option<&[Vec<Source>]>) {
    if hits.is_empty() {
        errln!("no files found");
        return;
    }
    outln!("{:>7}  {:>10}  {:<64}  NAME", "SOURCES", "SIZE", "ID");
    for (i, h) in hits.iter().enumerate() {
        outln!(
            "{:>7}  {:>10}  {}  {}",
            h.sources,
            human_size(h.size),
            h.id,
            esc(&h.name)
        );
        for s in sources.and_then(|all| all.get(i)).into_iter().flatten() {
            outln!(
                "{:>7}  {:<24}  {:<24}  id {}",
                "from",
                esc(s.nick.as_deref().unwrap_or("-")),
                esc(&s.addr),
                s.peer_id.map(|id| id.short()).unwrap_or_else(|| "-".into())
            );
        }
    }
}

/// `[{nick, addr, peer_id}]` of index sources (`peer_id` in full, null
/// when the index runs `--insecure`).
pub fn sources_json(sources: &[Source]) -> serde_json::Value {
    serde_json::Value::Array(
        sources
            .iter()
            .map(|s| {
                serde_json::json!({
                    "nick": s.nick,
                    "addr": s.addr,
                    "peer_id": s.peer_id.map(|id| id.to_string()),
                })
            })
            .collect(),
    )
}

pub fn print_files(files: &[SharedFile]) {
    if files.is_empty() {
        errln!("this peer shares no files");
        return;
    }
    outln!("{:>10}  {:<64}  NAME", "SIZE", "ID");
    for f in files {
        outln!("{:>10}  {}  {}", human_size(f.size), f.id, esc(&f.name));
    }
}

/// Longest progress bar label, in bytes (the target, shortened keeping its extension).
const PROGRESS_LABEL_LEN: usize = 32;

/// A progress bar fed from the engine's counters; invisible when stderr is
/// not a terminal.
pub struct ProgressBar {
    bar: indicatif::ProgressBar,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ProgressBar {
    pub fn start(progress: Arc<Progress>, label: &str) -> Self {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr(),
        );
        // Speed and time left from this run's bytes only (indicatif's own
        // estimate would count chunks resumed from disk as received at once).
        let started = std::time::Instant::now();
        let (p_speed, p_left, p_queue) = (progress.clone(), progress.clone(), progress.clone());
        let style = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {speed} eta {left}{queue}",
        )
        .map(|s| {
            s.progress_chars("=> ")
                .with_key(
                    "speed",
                    move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let (speed, _) = p_speed.rate(started.elapsed());
                        let _ = write!(w, "{}/s", human_size(speed as u64));
                    },
                )
                .with_key(
                    "left",
                    move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = match p_left.rate(started.elapsed()).1 {
                            Some(left) => write!(w, "{:#}", indicatif::HumanDuration(left)),
                            None => write!(w, "-"),
                        };
                    },
                )
                .with_key(
                    "queue",
                    move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        // "queued at HOST, position 3" where a source's slots are all taken.
                        let queued = p_queue.sources.queued_summary();
                        if !queued.is_empty() {
                            let _ = write!(w, " ({})", esc(&queued));
                        }
                    },
                )
        })
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        let label = esc(label);
        let short = common::names::shorten_name(&label, PROGRESS_LABEL_LEN);
        bar.set_message(short.into_owned());
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let b = bar.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = &mut rx => return,
                    _ = tick.tick() => {
                        b.set_length(progress.total_bytes.load(Ordering::Relaxed));
                        b.set_position(progress.done_bytes.load(Ordering::Relaxed));
                    }
                }
            }
        });
        ProgressBar {
            bar,
            stop: Some(tx),
        }
    }

    pub fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.bar.finish_and_clear();
    }
}
