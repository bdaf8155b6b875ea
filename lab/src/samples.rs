//! Where the time went in a run of processes: each `peer serve` wrote its
//! uploads and holdings to a stats log (`--stats-log`, [`peer::stats_log`]),
//! and this replays the logs on one clock into the figures the in-process
//! swarms measure directly: the uploaders' bytes, when each peer had its
//! first chunk, when 95% of the bytes had arrived, and the uplink ledger
//! ([`crate::uplinks`]).
//!
//! The samples of different processes are taken at different instants: at
//! every step of a common grid ([`crate::uplinks::SAMPLE`]) each node
//! counts as it was at its last sample before the step (or its first one).

use std::path::Path;

use peer::stats_log::{Held, Sample};

use crate::uplinks::{Holdings, Ledger, SAMPLE};

/// One node's samples: seconds since the run's start, upload counter,
/// holdings of the file.
pub(crate) struct Trace {
    points: Vec<(f64, u64, Holdings)>,
}

/// What the logs of a run tell.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    pub seed_bytes: u64,
    pub peer_bytes: u64,
    /// When each peer first held a chunk (sorted), seconds from the start.
    pub first_chunks: Vec<f64>,
    /// When the peers together held 95% of their bytes.
    pub t95: Option<f64>,
    pub uplinks: Ledger,
}

/// Why a log could not be read.
#[derive(Debug, thiserror::Error)]
#[error("stats log {path}: {reason}")]
pub(crate) struct SampleError {
    path: String,
    reason: String,
}

impl Trace {
    /// Reads the log at `path` for file `id` (hex) of `chunks` chunks;
    /// `start` is the run's start in seconds since the Unix epoch. A node
    /// that never held the file partially is complete if `seed`, else holds
    /// nothing yet. A line cut short (the process was killed while writing)
    /// ends the log.
    pub fn read(
        path: &Path,
        id: &str,
        chunks: u32,
        start: f64,
        seed: bool,
    ) -> Result<Trace, SampleError> {
        let err = |reason: String| SampleError {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut points = Vec::new();
        for line in text.lines() {
            let Ok(s) = serde_json::from_str::<Sample>(line) else {
                break;
            };
            let held = holdings(&s, id, chunks, seed);
            points.push((s.t - start, s.granted.unwrap_or(s.sent), held));
        }
        if points.is_empty() {
            return Err(err("no samples".into()));
        }
        Ok(Trace { points })
    }

    /// The node at `t`: its last point at or before `t`, else its first.
    fn at(&self, t: f64) -> &(f64, u64, Holdings) {
        let i = self.points.partition_point(|p| p.0 <= t);
        &self.points[i.saturating_sub(1)]
    }

    /// When it first held a chunk of the file.
    fn first_chunk(&self) -> Option<f64> {
        self.points
            .iter()
            .find(|p| p.2.bits.iter().any(|w| *w != 0))
            .map(|p| p.0.max(0.0))
    }
}

/// The holdings of file `id` in one sample.
fn holdings(s: &Sample, id: &str, chunks: u32, seed: bool) -> Holdings {
    match s.files.iter().find(|f| f.id == id) {
        None if seed => Holdings::complete(chunks),
        None => Holdings::empty(chunks),
        Some(f) => match f.held {
            Held::Complete => Holdings::complete(chunks),
            Held::Partial => {
                let bytes = f.have.as_deref().map(unhex).unwrap_or_default();
                Holdings::from_bitfield(&bytes, chunks, true)
            }
            // Downloaded and not yet shared: nothing to serve, nothing wanted.
            Held::None => Holdings {
                downloading: false,
                ..Holdings::empty(chunks)
            },
        },
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// Bytes of the file a node holds: whole chunks (the last one may be short).
fn held_bytes(h: &Holdings, chunks: u32, file_size: u64, chunk_size: u64) -> u64 {
    if !h.downloading && h.bits.iter().all(|w| *w == 0) {
        // Finished (shared whole, or about to be).
        return file_size;
    }
    let mut bytes = 0;
    for i in 0..chunks {
        if h.bits[(i / 64) as usize] & (1 << (i % 64)) != 0 {
            bytes += chunk_size.min(file_size - u64::from(i) * chunk_size);
        }
    }
    bytes
}

/// Replays the traces (the seed first) from 0 to `seconds`: `caps` are the
/// nodes' upload caps in bytes per second, in the same order.
pub(crate) fn replay(
    traces: &[Trace],
    caps: &[f64],
    seconds: f64,
    file_size: u64,
    chunk_size: u64,
) -> Replayed {
    let chunks = file_size.div_ceil(chunk_size.max(1)) as u32;
    let step = SAMPLE.as_secs_f64();
    let mut ledger = Ledger::default();
    let mut t95 = None;
    let need = 0.95 * file_size as f64 * traces.len().saturating_sub(1) as f64;
    let mut t = 0.0;
    while t < seconds {
        let next = (t + step).min(seconds);
        let held: Vec<Holdings> = traces.iter().map(|tr| tr.at(t).2.clone()).collect();
        let sent: Vec<u64> = traces
            .iter()
            .map(|tr| tr.at(next).1.saturating_sub(tr.at(t).1))
            .collect();
        ledger.add(next - t, caps, &sent, &held);
        if t95.is_none() {
            let sum: u64 = held
                .iter()
                .skip(1)
                .map(|h| held_bytes(h, chunks, file_size, chunk_size))
                .sum();
            if sum as f64 >= need {
                t95 = Some(t);
            }
        }
        t = next;
    }
    // To the last sample: the logs run on past the end until the processes
    // are stopped, and once every peer is done nothing more is uploaded,
    // while the last chunks' bytes may be missing from the samples before
    // the end.
    let uploaded = |tr: &Trace| {
        let last = tr.points.last().map_or(0, |p| p.1);
        last.saturating_sub(tr.at(0.0).1)
    };
    let mut first_chunks: Vec<f64> = traces
        .iter()
        .skip(1)
        .filter_map(Trace::first_chunk)
        .collect();
    first_chunks.sort_by(f64::total_cmp);
    Replayed {
        seed_bytes: traces.first().map(uploaded).unwrap_or(0),
        peer_bytes: traces.iter().skip(1).map(uploaded).sum(),
        first_chunks,
        t95: t95.or(Some(seconds)),
        uplinks: ledger,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(t: f64, sent: u64, held: &str, have: Option<&str>) -> String {
        let files = if held.is_empty() {
            String::new()
        } else {
            format!(
                r#"{{"id":"aa","held":"{held}","have":{}}}"#,
                have.map(|h| format!("\"{h}\"")).unwrap_or("null".into())
            )
        };
        format!(r#"{{"t":{t},"sent":{sent},"granted":null,"files":[{files}]}}"#)
    }

    #[test]
    fn logs_replay_into_bytes_first_chunks_and_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        // Two chunks of 100 bytes; the run starts at t = 1000. Samples
        // fall between the grid's steps (every 50 ms), as they do.
        let seed = [line(1000.0, 0, "", None), line(1000.09, 100, "", None)].join("\n");
        let peer = [
            line(1000.0, 0, "", None),
            line(1000.04, 0, "partial", Some("01")),
            line(1000.09, 0, "none", None),
            // Cut short: a killed process.
            "{\"t\":1000.2,\"se".to_string(),
        ]
        .join("\n");
        std::fs::write(dir.path().join("seed"), seed).unwrap();
        std::fs::write(dir.path().join("peer"), peer).unwrap();
        let read = |name: &str, seed: bool| {
            Trace::read(&dir.path().join(name), "aa", 2, 1000.0, seed).unwrap()
        };
        let traces = [read("seed", true), read("peer", false)];
        assert_eq!(traces[1].points.len(), 3, "the cut line ends the log");
        let r = replay(&traces, &[1000.0, 100.0], 0.2, 200, 100);
        assert_eq!((r.seed_bytes, r.peer_bytes), (100, 0));
        assert_eq!(r.first_chunks.len(), 1);
        assert!(
            (r.first_chunks[0] - 0.04).abs() < 1e-6,
            "{:?}",
            r.first_chunks
        );
        // 95% of 200 bytes at the peer: once it finished (0.1 s).
        assert!((r.t95.unwrap() - 0.1).abs() < 1e-6, "{:?}", r.t95);
        let l = &r.uplinks;
        // Capacity (1000 + 100) B/s over 0.2 s; the seed sent its 100 bytes
        // in one lump, counted over two steps of 50 bytes each.
        assert!((l.capacity - 220.0).abs() < 1e-6, "{l:?}");
        assert!((l.used - 100.0).abs() < 1e-6, "{l:?}");
        // The seed idled 50 in the first step while the peer lacked both
        // chunks, and 50 in the last, with the peer done; the peer held
        // nothing anybody lacked all along (20).
        assert!((l.idle_wanted - 50.0).abs() < 1e-6, "{l:?}");
        assert!((l.idle_nothing - 70.0).abs() < 1e-6, "{l:?}");
    }

    #[test]
    fn a_log_without_samples_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x"), "").unwrap();
        let e = Trace::read(&dir.path().join("x"), "aa", 1, 0.0, false)
            .err()
            .unwrap();
        assert!(e.to_string().contains("no samples"), "{e}");
    }
}
