//! Durations as the flags and annotations write them (`30s`, `2m`, `1h`, or plain seconds):
//! one parser for the node agent's flags and the pod-less sync's refresh annotation.

use std::time::Duration;

/// The longest text [`parse_duration`] looks at: anything longer is refused unread.
pub const MAX_DURATION_LEN: usize = 16;

/// Parses `<digits>[s|m|h]` (no unit: seconds). Refuses anything else, including signs, spaces,
/// fractions, an empty number, more than [`MAX_DURATION_LEN`] bytes and values that overflow.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.len() > MAX_DURATION_LEN {
        return Err(format!(
            "invalid duration: {} bytes long; the limit is {MAX_DURATION_LEN}",
            s.len()
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_strictly() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
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
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
