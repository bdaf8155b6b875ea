//! `peer serve --stats-log FILE`: what the daemon uploaded and which chunks
//! it held, sampled at a fixed period into a file of JSON lines, for
//! experiments that run many daemons as processes (`lab distribution
//! --processes` reads them to tell where the upload capacity went).
//!
//! One line per sample:
//! `{"t": UNIX_SECONDS, "sent": BYTES, "granted": BYTES|null, "files":
//! [{"id": HEX, "held": "partial"|"complete"|"none", "have": HEX|null}],
//! "overlay": {"in": COUNT, "out": COUNT}|null}`.
//! - `t`: wall-clock time of the sample, seconds since the Unix epoch (f64),
//!   so samples of several processes line up.
//! - `sent`: chunk bytes the chunk server sent so far (counted once a chunk
//!   is written whole).
//! - `granted`: bytes the upload cap handed out so far (64 KiB pieces, as
//!   the bytes leave), where `--max-upload-rate` caps uploads; else null.
//! - `files`: every file held partially now, and every file held partially
//!   at an earlier sample (`complete` once it is shared whole, `none` in
//!   between: downloaded, not yet shared; up to [`MAX_TRACKED`] files).
//!   `have` is the `Have` bitfield of
//!   a partial file (bit `i` of byte `i / 8`, least significant first) in
//!   hex. Complete files never held partially are not listed (a share may
//!   hold thousands).
//! - `overlay`: overlay messages received and sent so far (p2p mode: the
//!   cost of flooding searches and pings); null without an overlay.
//!
//! Each line goes out in one `write` to the unbuffered file, so a killed
//! daemon leaves whole lines behind (a reader stops at a cut one anyway).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::id::FileId;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use transfer::chunk_server::UploadStats;
use transfer::library::{Holding, Library};
use transfer::rate::RateLimiter;

/// Most files a sample lists; past it, files no longer partial are left
/// out (a daemon that ran through thousands of downloads).
pub const MAX_TRACKED: usize = 256;

/// Default sampling period of `--stats-log`.
pub const DEFAULT_EVERY: Duration = Duration::from_millis(50);

/// Where and how often to sample.
#[derive(Debug, Clone)]
pub struct StatsLogConfig {
    pub path: PathBuf,
    pub every: Duration,
}

/// One sample (one line of the file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Seconds since the Unix epoch.
    pub t: f64,
    /// Chunk bytes sent so far.
    pub sent: u64,
    /// Bytes the upload cap granted so far; `None` without a cap.
    pub granted: Option<u64>,
    pub files: Vec<FileSample>,
    /// Overlay messages so far; `None` without an overlay (and in logs
    /// written before it was recorded).
    #[serde(default)]
    pub overlay: Option<OverlaySample>,
}

/// Overlay message counts in a [`Sample`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct OverlaySample {
    /// Messages received on any overlay link.
    #[serde(rename = "in")]
    pub received: u64,
    /// Messages sent on any overlay link.
    #[serde(rename = "out")]
    pub sent: u64,
}

/// One file in a [`Sample`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileSample {
    /// File id, hex.
    pub id: String,
    pub held: Held,
    /// The `Have` bitfield in hex (partial files only).
    pub have: Option<String>,
}

/// How a file in a [`Sample`] is held.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Held {
    Partial,
    Complete,
    /// Neither: finished and not yet shared whole (or given up).
    None,
}

/// Why the stats log could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the stats log {path}: {source}")]
pub struct StatsLogError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// What a sample reads.
pub struct Sources {
    pub library: Library,
    pub uploads: Arc<UploadStats>,
    pub upload_limit: Option<Arc<RateLimiter>>,
    pub overlay: Option<Arc<crate::overlay::OverlayCounters>>,
}

impl Sources {
    /// A sample now; `seen` collects the ids held partially so far.
    pub fn sample(&self, seen: &mut BTreeSet<FileId>) -> Sample {
        let partial = self.library.partial_ids();
        if seen.len() + partial.len() > MAX_TRACKED {
            // A long-lived daemon: forget the finished ones.
            seen.retain(|id| partial.contains(id));
        }
        seen.extend(partial);
        let files = seen
            .iter()
            .map(|id| {
                let (held, have) = match self.library.get(id) {
                    Some(Holding::Partial(p)) => (Held::Partial, Some(hex(&p.bitfield()))),
                    Some(Holding::Complete(_)) => (Held::Complete, None),
                    None => (Held::None, None),
                };
                FileSample {
                    id: id.to_hex(),
                    held,
                    have,
                }
            })
            .collect();
        Sample {
            t: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
            sent: self
                .uploads
                .bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            granted: self.upload_limit.as_ref().map(|l| l.granted()),
            files,
            overlay: self.overlay.as_ref().map(|c| OverlaySample {
                received: crate::overlay::OverlayCounters::get(&c.messages_in),
                sent: crate::overlay::OverlayCounters::get(&c.messages_out),
            }),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens (truncates) the log file; a missing folder or no permission is
/// an error at start, not a silent gap in the samples.
pub fn open(config: &StatsLogConfig) -> Result<std::fs::File, StatsLogError> {
    std::fs::File::create(&config.path).map_err(|source| StatsLogError {
        path: config.path.clone(),
        source,
    })
}

/// Samples every `config.every` into `file` until `shutdown`. A failed
/// write is logged once and ends the sampling (the daemon goes on).
pub async fn run(
    config: StatsLogConfig,
    mut file: std::fs::File,
    sources: Sources,
    shutdown: CancellationToken,
) {
    let mut seen = BTreeSet::new();
    let mut tick = tokio::time::interval(config.every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let sample = sources.sample(&mut seen);
        let mut line = match serde_json::to_vec(&sample) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "stats log: cannot encode a sample; sampling stops");
                return;
            }
        };
        line.push(b'\n');
        // A few hundred bytes to a local file: not worth a blocking thread.
        if let Err(e) = file.write_all(&line) {
            tracing::warn!(path = %config.path.display(), error = %e, "stats log: write failed; sampling stops");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_one_json_line_that_reads_back() {
        let s = Sample {
            t: 1.5,
            sent: 262_144,
            granted: None,
            files: vec![FileSample {
                id: "ab".into(),
                held: Held::Partial,
                have: Some(hex(&[0x05, 0x80])),
            }],
            overlay: Some(OverlaySample {
                received: 7,
                sent: 9,
            }),
        };
        let line = serde_json::to_string(&s).unwrap();
        assert!(!line.contains('\n'));
        assert!(line.contains("\"overlay\":{\"in\":7,\"out\":9}"), "{line}");
        assert!(line.contains("\"held\":\"partial\""), "{line}");
        assert!(line.contains("\"have\":\"0580\""), "{line}");
        assert_eq!(serde_json::from_str::<Sample>(&line).unwrap(), s);
    }

    #[test]
    fn a_line_without_overlay_counts_still_reads() {
        let old = r#"{"t":1.0,"sent":0,"granted":null,"files":[]}"#;
        assert_eq!(serde_json::from_str::<Sample>(old).unwrap().overlay, None);
    }
}
