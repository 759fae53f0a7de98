//! Durations as the flags and annotations write them (`30s`, `2m`, `1h`, or plain seconds, with a
//! fraction for the `*-seconds` flags): one parser for the node agent's and the AWS provider's
//! flags and the pod-less sync's refresh annotation.

use std::time::Duration;

/// The longest text [`parse_duration`] looks at: anything longer is refused unread.
pub const MAX_DURATION_LEN: usize = 16;

/// Parses `<digits>[s|m|h]` (no unit: seconds), or `<digits>.<digits>` seconds (`0.25`: the AWS
/// cache TTL is set in seconds, and a benchmark that scales every interval down needs
/// fractions). Refuses anything else, including signs, spaces, a fraction with a unit, an empty
/// number, more than [`MAX_DURATION_LEN`] bytes and values that overflow.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.len() > MAX_DURATION_LEN {
        return Err(format!(
            "invalid duration: {} bytes long; the limit is {MAX_DURATION_LEN}",
            s.len()
        ));
    }
    if let Some((whole, fraction)) = s.split_once('.') {
        return fractional_seconds(whole, fraction).ok_or_else(|| {
            format!("invalid duration {s:?}: a fraction only as seconds, e.g. 0.25")
        });
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 2m, 1h"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m or h")),
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("invalid duration {s:?}: too large"))
}

/// `<whole>.<fraction>` seconds, both all digits and non-empty, at most nanosecond precision.
fn fractional_seconds(whole: &str, fraction: &str) -> Option<Duration> {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) || fraction.len() > 9 {
        return None;
    }
    let secs: u64 = whole.parse().ok()?;
    let nanos: u32 = format!("{fraction:0<9}").parse().ok()?;
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_strictly() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        // Seconds with a fraction: the `*-seconds` flags (a benchmark scales 5 s by 1/60).
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0.0833"), Ok(Duration::from_micros(83_300)));
        assert_eq!(parse_duration("5.000000001"), Ok(Duration::new(5, 1)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in [
            "",
            "2d",
            "m",
            "-1s",
            "+1s",
            " 1s",
            "1s ",
            "1.5m",
            "1m30s",
            "1H",
            "99999999999999999",
            "18446744073709551615h",
            "00000000000000001s",
            ".5",
            "5.",
            "0.1234567891",
            "1.2.3",
            "-0.5",
            "NaN",
            "inf",
            "1e3",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
