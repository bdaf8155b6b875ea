//! Rate limits: a token bucket shared by every connection of a node.
//!
//! One [`RateLimiter`] caps a node's total upload (or download) rate, however
//! many connections share it. Tokens are bytes; they accrue at `rate` per
//! second up to a small burst (50 ms worth, at least 16 KiB). A caller takes
//! what it is about to send: when the bucket is in debt it first sleeps until
//! the debt is paid, then takes its bytes (possibly going into debt again),
//! so any request size works and the long-run rate is exact. Waiters queue on
//! a fair (FIFO) async mutex, so connections take turns instead of one
//! starving the others.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::units::{parse_size, UnitError};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Largest piece a caller should take at once, so that connections sharing a
/// limiter interleave finely (a 256 KiB chunk goes out as four pieces).
pub const PIECE: usize = 64 * 1024;

#[derive(Debug)]
struct Bucket {
    /// Bytes that may go now; negative while in debt.
    tokens: f64,
    last: Instant,
}

/// A token bucket capping a byte rate; share it through an `Arc`.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    burst: f64,
    bucket: Mutex<Bucket>,
    granted: AtomicU64,
}

impl RateLimiter {
    /// A limiter of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1);
        RateLimiter {
            bytes_per_sec: rate,
            burst: (rate as f64 / 20.0).max(16.0 * 1024.0),
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            }),
            granted: AtomicU64::new(0),
        }
    }

    /// Bytes handed out so far.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }

    /// Waits until `bytes` may go. Cancel-safe: a dropped call takes nothing.
    pub async fn acquire(&self, bytes: u64) {
        let rate = self.bytes_per_sec as f64;
        let mut bucket = self.bucket.lock().await;
        refill(&mut bucket, rate, self.burst);
        if bucket.tokens < 0.0 {
            let wait = Duration::from_secs_f64(-bucket.tokens / rate);
            tokio::time::sleep(wait).await;
            refill(&mut bucket, rate, self.burst);
        }
        bucket.tokens -= bytes as f64;
        self.granted.fetch_add(bytes, Ordering::Relaxed);
    }
}

fn refill(bucket: &mut Bucket, rate: f64, burst: f64) {
    let now = Instant::now();
    let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
    bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
    bucket.last = now;
}

/// Parses a rate such as `10MB/s`, `500KiB/s` or plain `10MB` (per second);
/// zero is refused (leave the limit unset for no limit).
pub fn parse_rate(input: &str) -> Result<u64, RateError> {
    let trimmed = input.trim();
    let size = trimmed
        .strip_suffix("/s")
        .or_else(|| trimmed.strip_suffix("ps"))
        .unwrap_or(trimmed);
    match parse_size(size)? {
        0 => Err(RateError::Zero(input.to_string())),
        bytes => Ok(bytes),
    }
}

/// Why a rate could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("{0} (a rate is a size per second, e.g. 10MB/s or 500KiB/s)")]
    Size(#[from] UnitError),
    #[error("rate {0:?} is zero; leave the limit unset for no limit")]
    Zero(String),
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
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10MB/h").is_err());
    }

    /// A 10 s capped stream, in paused time: at every moment the bytes
    /// granted stay within one burst and one piece of the cap, and the whole
    /// transfer lands within 5% of the time the cap implies.
    #[tokio::test(start_paused = true)]
    async fn capped_stream_lands_within_five_percent() {
        let rate = 1_000_000u64;
        let limiter = RateLimiter::new(rate);
        let slack = limiter.burst + PIECE as f64;
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

    /// Idle time does not bank more than the burst.
    #[tokio::test(start_paused = true)]
    async fn idle_time_banks_only_a_small_burst() {
        let limiter = RateLimiter::new(1_000_000);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        for _ in 0..16 {
            limiter.acquire(PIECE as u64).await;
        }
        // 1 MiB at 1 MB/s, less a 50 KB burst and the first free piece.
        let took = start.elapsed().as_secs_f64();
        assert!(took > 0.9, "1 MiB went out in {took:.3} s after idling");
    }
}
