//! Rate limits: a token bucket shared by every connection of a node.
//!
//! One [`RateLimiter`] caps a node's total upload (or download) rate, however
//! many connections share it. It keeps the time at which every byte granted
//! so far is paid for at the cap (a "theoretical arrival time", as in the
//! GCRA of ATM and of most HTTP rate limiters). A caller asking for `n`
//! bytes moves that time on by `n / rate` and waits until it, less a small
//! [`TOLERANCE`]: so bytes are paid for *before* they go, and idle time
//! banks at most the tolerance. F bytes from an idle limiter therefore take
//! at least F / rate - 5 ms: a capped transfer can never beat its bound by
//! more than that. (The token bucket this replaces paid after sending and
//! banked 50 ms of idle time: a run beat the cap by up to one piece and 50
//! ms, 12% of the lab's 16 MiB at 40 MiB/s.) The tolerance also absorbs
//! timer lateness: a caller woken a few ms late does not lose rate. Waiters
//! queue on a fair (FIFO) async mutex, so connections take turns instead of
//! one starving the others.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::units::{parse_size, UnitError};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Largest piece a caller should take at once, so that connections sharing a
/// limiter interleave finely (a 256 KiB chunk goes out as four pieces).
pub const PIECE: usize = 64 * 1024;

/// How far ahead of the cap a caller may go: the most idle time banks, and
/// the timer lateness absorbed without losing rate.
pub const TOLERANCE: Duration = Duration::from_millis(5);

/// A rate cap in bytes per second; share it through an `Arc`.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    /// When every byte granted so far is paid for at the cap.
    paid_until: Mutex<Instant>,
    granted: AtomicU64,
}

impl RateLimiter {
    /// A limiter of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimiter {
            bytes_per_sec: bytes_per_sec.max(1),
            paid_until: Mutex::new(Instant::now()),
            granted: AtomicU64::new(0),
        }
    }

    /// The cap, bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Bytes handed out so far.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }

    /// Waits until `bytes` are paid for at the cap (less [`TOLERANCE`]).
    /// Cancel-safe: a call dropped while waiting takes nothing.
    pub async fn acquire(&self, bytes: u64) {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let mut paid_until = self.paid_until.lock().await;
        // Idle time banks nothing; a caller may only go TOLERANCE early.
        let start = (*paid_until).max(Instant::now());
        let due = start + cost;
        tokio::time::sleep_until(due - TOLERANCE).await;
        *paid_until = due;
        self.granted.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Parses a rate such as `10MB/s`, `500KiB/s` or plain `10MB` (per second);
/// zero is refused (leave the limit unset for no limit).
pub fn parse_rate(input: &str) -> Result<u64, RateError> {
    let trimmed = input.trim();
    let lower = trimmed.to_ascii_lowercase();
    let size = lower
        .strip_suffix("/s")
        .or_else(|| lower.strip_suffix("ps"))
        .unwrap_or(&lower);
    match parse_size(size)? {
        0 => Err(RateError::Zero(input.to_string())),
        bytes => Ok(bytes),
    }
}

/// Why a rate could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("{0} (a rate is a size per second, e.g. 10MB/s or 500KiB/s)")]
    Size(UnitError),
    #[error("rate {0:?} is zero; leave the limit unset for no limit")]
    Zero(String),
}

// The cause is in the message, so it is a plain field, not a `source`
// (an error chain would say it twice; see `common::report`).
impl From<UnitError> for RateError {
    fn from(e: UnitError) -> Self {
        RateError::Size(e)
    }
}

/// Writes `data` through `writer`, taking it from `limit` piece by piece.
pub async fn write_limited<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    data: &[u8],
    limit: Option<&RateLimiter>,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    match limit {
        None => writer.write_all(data).await,
        Some(limit) => {
            for piece in data.chunks(PIECE) {
                limit.acquire(piece.len() as u64).await;
                writer.write_all(piece).await?;
                // Paid-for bytes go out now: left in a buffered writer they
                // would wait for the next piece's tokens, and a chunk would
                // reach its downloader (who can only pass it on once it is
                // whole) up to a chunk's time late.
                writer.flush().await?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn rates_parse_with_and_without_per_second() {
        assert_eq!(parse_rate("10MB/s").unwrap(), 10_000_000);
        assert_eq!(parse_rate("500KiB/s").unwrap(), 512_000);
        assert_eq!(parse_rate("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_rate(" 2MiB/s ").unwrap(), 2 * 1024 * 1024);
        assert!(parse_rate("0").is_err());
        assert_eq!(parse_rate("10mb/s").unwrap(), 10_000_000);
        assert_eq!(parse_rate("10MB/S").unwrap(), 10_000_000);
        assert_eq!(parse_rate("1mibps").unwrap(), 1 << 20);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10MB/h").is_err());
    }

    /// A 10 s capped stream, in paused time: at every moment the bytes
    /// granted stay within the tolerance and one piece of the cap, and the
    /// whole transfer lands within 5% of the time the cap implies.
    #[tokio::test(start_paused = true)]
    async fn capped_stream_lands_within_five_percent() {
        let rate = 1_000_000u64;
        let limiter = RateLimiter::new(rate);
        let slack = rate as f64 * TOLERANCE.as_secs_f64() + PIECE as f64;
        let start = Instant::now();
        let total = 10 * rate;
        let mut sent = 0u64;
        while sent < total {
            limiter.acquire(PIECE as u64).await;
            sent += PIECE as u64;
            let allowed = rate as f64 * start.elapsed().as_secs_f64();
            assert!(
                (sent as f64) <= allowed + slack && sent as f64 >= allowed - slack,
                "at {:?}: {sent} bytes granted, cap allows {allowed}",
                start.elapsed()
            );
        }
        let secs = start.elapsed().as_secs_f64();
        let expected = sent as f64 / rate as f64;
        assert!(
            (secs - expected).abs() / expected < 0.05,
            "{sent} bytes took {secs:.3} s, the cap implies {expected:.3} s"
        );
        assert_eq!(limiter.granted(), sent);
    }

    /// Several connections share one cap fairly: together they get the cap,
    /// and none gets much more than its share.
    #[tokio::test(start_paused = true)]
    async fn connections_share_the_cap_fairly() {
        let rate = 4_000_000u64;
        let limiter = Arc::new(RateLimiter::new(rate));
        let start = Instant::now();
        let deadline = start + Duration::from_secs(5);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let limiter = limiter.clone();
            tasks.spawn(async move {
                let mut sent = 0u64;
                while Instant::now() < deadline {
                    limiter.acquire(PIECE as u64).await;
                    sent += PIECE as u64;
                }
                sent
            });
        }
        let mut per_task = Vec::new();
        while let Some(sent) = tasks.join_next().await {
            per_task.push(sent.unwrap());
        }
        let total: u64 = per_task.iter().sum();
        let expected = rate as f64 * 5.0;
        assert!(
            (total as f64 / expected - 1.0).abs() < 0.05,
            "4 connections together sent {total}, cap allows {expected}"
        );
        let (min, max) = (
            *per_task.iter().min().unwrap(),
            *per_task.iter().max().unwrap(),
        );
        assert!(max - min <= 2 * PIECE as u64, "unfair shares: {per_task:?}");
    }

    /// Idle time banks no more than the tolerance: after a long idle, F
    /// bytes take at least F / rate - 5 ms (the lab's ratio of measured to
    /// bound time can only fall below 1 by that much).
    #[tokio::test(start_paused = true)]
    async fn idle_time_banks_at_most_the_tolerance() {
        for (rate, total) in [
            (1_000_000u64, 1u64 << 20),
            (10_000_000, 2 << 20),
            (41_943_040, 1 << 20),
        ] {
            let limiter = RateLimiter::new(rate);
            tokio::time::sleep(Duration::from_secs(10)).await;
            let start = Instant::now();
            let mut sent = 0;
            while sent < total {
                limiter.acquire(PIECE as u64).await;
                sent += PIECE as u64;
            }
            let took = start.elapsed().as_secs_f64();
            let bound = total as f64 / rate as f64;
            assert!(
                took >= bound - TOLERANCE.as_secs_f64() - 1e-6,
                "{total} bytes at {rate} B/s went in {took:.4} s, the cap implies {bound:.4} s"
            );
            assert!(
                took <= bound + 0.01,
                "{took:.4} s for a bound of {bound:.4} s"
            );
        }
    }

    /// A caller woken late (a busy machine) does not lose rate: the lateness
    /// is within the tolerance and the next caller goes at once.
    #[tokio::test(start_paused = true)]
    async fn late_wakeups_do_not_lower_the_rate() {
        let rate = 10_000_000u64;
        let limiter = RateLimiter::new(rate);
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < rate {
            limiter.acquire(PIECE as u64).await;
            sent += PIECE as u64;
            // Every piece's work takes 3 ms of its own (less than the tolerance).
            tokio::time::advance(Duration::from_millis(3)).await;
        }
        let took = start.elapsed().as_secs_f64();
        let bound = sent as f64 / rate as f64;
        assert!(took < bound * 1.05, "{took:.3} s for {bound:.3} s of data");
    }
}
