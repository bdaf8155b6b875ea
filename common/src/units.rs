//! Parsing of human-friendly durations and sizes from the command line.
//!
//! Units are case-insensitive (`10mb`, `10MB` and `10Mb` are the same ten
//! megabytes; `2M` and `2MiB` are mebibytes). The `*_in` forms also check a
//! range, so that a zero or absurd value is refused when the command line is
//! parsed, with the allowed range in the message, rather than failing later.

use std::time::Duration;

/// Why a duration or size could not be parsed, or is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {input:?} {problem}: {hint}")]
pub struct UnitError {
    what: &'static str,
    input: String,
    problem: &'static str,
    hint: String,
}

/// Splits `1.5MiB` into 1.5 and `mib` (the unit, lower-cased, may be empty).
fn number_and_unit(input: &str) -> Option<(f64, String)> {
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    Some((num.parse().ok()?, unit.trim().to_ascii_lowercase()))
}

/// Parses `250ms`, `10s`, `2m`, `1h`, `1d`, or a bare number of seconds (any case).
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let err = || UnitError {
        what: "duration",
        input: input.to_string(),
        problem: "not understood",
        hint: "use e.g. 500ms, 10s, 2m, 1h or 1d".into(),
    };
    let (value, unit) = number_and_unit(input).ok_or_else(err)?;
    let secs = match unit.as_str() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => return Err(err()),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// [`parse_duration`], refusing values outside `min..=max`.
pub fn parse_duration_in(input: &str, min: Duration, max: Duration) -> Result<Duration, UnitError> {
    let d = parse_duration(input)?;
    if d < min || d > max {
        return Err(UnitError {
            what: "duration",
            input: input.to_string(),
            problem: "is out of range",
            hint: format!("use {} to {}", human_duration(min), human_duration(max)),
        });
    }
    Ok(d)
}

/// A duration as it would be typed: `250ms`, `10s`, `5m`, `2h`, `1d`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms / size * size == ms {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Parses a byte size: `4096`, `10KB`, `1.5MiB`, `2G`, in any case (K/M/G/T
/// = powers of 1000 when followed by `B` alone, powers of 1024 with `iB` or
/// no `B`).
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    let err = || UnitError {
        what: "size",
        input: input.to_string(),
        problem: "not understood",
        hint: "use e.g. 4096, 500KiB, 10MB or 1GiB".into(),
    };
    let (value, unit) = number_and_unit(input).ok_or_else(err)?;
    let mult: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0f64.powi(4),
        _ => return Err(err()),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || !(0.0..=1.8e19).contains(&bytes) {
        return Err(err());
    }
    Ok(bytes.round() as u64)
}

/// [`parse_size`], refusing values outside `min..=max` bytes.
pub fn parse_size_in(input: &str, min: u64, max: u64) -> Result<u64, UnitError> {
    let bytes = parse_size(input)?;
    if bytes < min || bytes > max {
        return Err(UnitError {
            what: "size",
            input: input.to_string(),
            problem: "is out of range",
            hint: format!("use {} to {}", human_bytes(min), human_bytes(max)),
        });
    }
    Ok(bytes)
}

/// A byte count as it would be typed: `1B`, `4KiB`, `1TiB`, `1500B`.
pub fn human_bytes(bytes: u64) -> String {
    for (unit, size) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes >= size && bytes / size * size == bytes {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn units_are_case_insensitive() {
        assert_eq!(parse_duration("500MS").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10S").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_size("10mb").unwrap(), 10_000_000);
        assert_eq!(parse_size("10Mb").unwrap(), 10_000_000);
        assert_eq!(parse_size("2mib").unwrap(), 2 << 20);
        assert_eq!(parse_size("2 m").unwrap(), 2 << 20);
        assert_eq!(parse_size("1gib").unwrap(), 1 << 30);
    }

    #[test]
    fn ranges_are_checked_and_stated() {
        let e = parse_duration_in("0", Duration::from_millis(1), Duration::from_secs(3600))
            .unwrap_err()
            .to_string();
        assert!(e.contains("out of range") && e.contains("1ms to 1h"), "{e}");
        assert!(
            parse_duration_in("2h", Duration::from_millis(1), Duration::from_secs(3600)).is_err()
        );
        assert_eq!(
            parse_duration_in("1h", Duration::from_millis(1), Duration::from_secs(3600)).unwrap(),
            Duration::from_secs(3600)
        );
        let e = parse_size_in("0", 1, 1 << 40).unwrap_err().to_string();
        assert!(e.contains("1B to 1TiB"), "{e}");
        assert_eq!(parse_size_in("1k", 1, 1 << 40).unwrap(), 1024);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("500KiB").unwrap(), 512_000);
        assert_eq!(parse_size("1.5M").unwrap(), 1_572_864);
        assert!(parse_size("-1").is_err());
        assert!(parse_size("3 bananas").is_err());
    }
}
