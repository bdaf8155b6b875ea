//! Waiting before trying again: exponential backoff with jitter.
//!
//! Used for sources that answered `Busy` (every upload slot taken), sources
//! that left and come back, and a daemon's downloads that failed on an I/O
//! error (a full disk): each is tried again, later and later, instead of
//! being given up on at the first refusal.

use std::time::Duration;

/// First wait before a busy or departed source is tried again.
pub const RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest wait between two tries of one source.
pub const RETRY_MAX: Duration = Duration::from_secs(8);

/// The wait after `failures` consecutive failures (1 after the first):
/// `min · 2^(failures - 1)`, at most `max`, scaled by a random factor in
/// [0.5, 1) so that the many downloads a busy uploader refused at once do
/// not all come back at once.
pub fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let base = min.saturating_mul(1 << doublings).min(max);
    base.mul_f64(0.5 + 0.5 * unit_random())
}

/// A random number in [0, 1) (no generator crate needed for jitter).
fn unit_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..50 {
            let first = backoff(1, min, max);
            assert!(first >= min / 2 && first < min, "{first:?}");
            let third = backoff(3, min, max);
            assert!(third >= min * 2 && third < min * 4, "{third:?}");
            let late = backoff(1000, min, max);
            assert!(late >= max / 2 && late < max, "{late:?}");
        }
    }
}
