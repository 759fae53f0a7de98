//! Who opted in, and when to refresh: the class's annotations and the ServiceAccount's label,
//! parsed strictly and bounded before parsing. Pure, so every rule is table-tested.

use std::collections::BTreeMap;
use std::time::Duration;

use secrets_store_api::duration::parse_duration;
use secrets_store_api::labels::{
    PODLESS_OPT_IN, PODLESS_OPT_IN_VALUE, PODLESS_REFRESH_INTERVAL, PODLESS_SERVICE_ACCOUNT,
};

/// The longest ServiceAccount name (a DNS-1123 subdomain).
const MAX_NAME_LEN: usize = 253;
/// Bytes of a refused annotation value shown in a message.
const SHOWN: usize = 64;

/// The refresh intervals a class may ask for, and the one it gets when it asks for none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshBounds {
    /// The shortest interval accepted (protects AWS quotas and the API server).
    pub min: Duration,
    /// The longest interval accepted (a Secret must not go unchecked for days).
    pub max: Duration,
    /// The interval of a class without [`PODLESS_REFRESH_INTERVAL`].
    pub default: Duration,
}

impl Default for RefreshBounds {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(30),
            max: Duration::from_secs(24 * 3600),
            default: Duration::from_secs(5 * 60),
        }
    }
}

/// A class that opted in to the pod-less sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptIn {
    /// The ServiceAccount, in the class's namespace, whose identity fetches the objects.
    pub service_account: String,
    /// How often to refresh (before jitter).
    pub interval: Duration,
}

/// Why a class's opt-in annotations are refused. Echoes at most [`SHOWN`] bytes of a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOptIn {
    /// The ServiceAccount annotation is not a ServiceAccount name.
    #[error(
        "annotation {PODLESS_SERVICE_ACCOUNT}: {shown:?} is not a ServiceAccount name of this namespace (lowercase letters, digits, '-' and '.', at most 253 bytes)"
    )]
    ServiceAccount {
        /// The value, cut to a few bytes.
        shown: String,
    },
    /// The interval annotation does not parse.
    #[error("annotation {PODLESS_REFRESH_INTERVAL}: {reason}")]
    Interval {
        /// The parser's message.
        reason: String,
    },
    /// The interval is outside the controller's bounds.
    #[error(
        "annotation {PODLESS_REFRESH_INTERVAL}: {}s is outside the allowed {}s to {}s",
        asked.as_secs(), min.as_secs(), max.as_secs()
    )]
    IntervalOutOfBounds {
        /// What the class asked for.
        asked: Duration,
        /// The bound's lower end.
        min: Duration,
        /// The bound's upper end.
        max: Duration,
    },
}

fn shown(value: &str) -> String {
    let mut end = value.len().min(SHOWN);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_string()
}

/// Whether `name` is a DNS-1123 subdomain, the shape of every ServiceAccount name.
fn is_service_account_name(name: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && alnum(b[0])
                && alnum(b[b.len() - 1])
                && b.iter().all(|&c| alnum(c) || c == b'-')
        })
}

/// Reads a class's opt-in from its annotations: `None` without [`PODLESS_SERVICE_ACCOUNT`].
pub fn opt_in(
    annotations: Option<&BTreeMap<String, String>>,
    bounds: &RefreshBounds,
) -> Result<Option<OptIn>, InvalidOptIn> {
    let Some(annotations) = annotations else {
        return Ok(None);
    };
    let Some(account) = annotations.get(PODLESS_SERVICE_ACCOUNT) else {
        return Ok(None);
    };
    // Bounded before anything else looks at it: annotation values may be 256 KiB.
    if account.len() > MAX_NAME_LEN || !is_service_account_name(account) {
        return Err(InvalidOptIn::ServiceAccount {
            shown: shown(account),
        });
    }
    let interval = match annotations.get(PODLESS_REFRESH_INTERVAL) {
        None => bounds.default,
        Some(raw) => {
            let asked = parse_duration(raw).map_err(|reason| InvalidOptIn::Interval { reason })?;
            if asked < bounds.min || asked > bounds.max {
                return Err(InvalidOptIn::IntervalOutOfBounds {
                    asked,
                    min: bounds.min,
                    max: bounds.max,
                });
            }
            asked
        }
    };
    Ok(Some(OptIn {
        service_account: account.clone(),
        interval,
    }))
}

/// Whether a ServiceAccount's labels opt it in ([`PODLESS_OPT_IN`] = [`PODLESS_OPT_IN_VALUE`]).
pub fn service_account_opted_in(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(PODLESS_OPT_IN))
        .is_some_and(|v| v == PODLESS_OPT_IN_VALUE)
}

/// How far a refresh may move from its interval either way, as a fraction of it: classes created
/// together (a Helm release) must not all refresh in the same second forever.
pub const JITTER: f64 = 0.1;

/// `interval` moved by up to [`JITTER`] of itself, `unit` in `[0, 1)` choosing where (0 → the
/// earliest, 0.5 → the interval itself). Never zero: at least one second.
pub fn jittered(interval: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let factor = 1.0 - JITTER + 2.0 * JITTER * unit;
    interval.mul_f64(factor).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn opt_in_table() {
        let bounds = RefreshBounds::default();
        let sa = PODLESS_SERVICE_ACCOUNT;
        let every = PODLESS_REFRESH_INTERVAL;
        let ok = |name: &str, secs: u64| -> Result<Option<OptIn>, &str> {
            Ok(Some(OptIn {
                service_account: name.into(),
                interval: Duration::from_secs(secs),
            }))
        };
        let long = "a".repeat(254);
        let huge = "x".repeat(300_000);
        type Case<'a> = (Vec<(&'a str, &'a str)>, Result<Option<OptIn>, &'a str>);
        let cases: Vec<Case<'_>> = vec![
            (vec![], Ok(None)),
            (vec![(every, "1m")], Ok(None)),
            (vec![(sa, "app")], ok("app", 300)),
            (vec![(sa, "app"), (every, "2m")], ok("app", 120)),
            (vec![(sa, "a.b-c"), (every, "30s")], ok("a.b-c", 30)),
            (vec![(sa, "app"), (every, "24h")], ok("app", 86400)),
            (vec![(sa, "")], Err("is not a ServiceAccount name")),
            (
                vec![(sa, "ns/app")],
                Err("\"ns/app\" is not a ServiceAccount name"),
            ),
            (vec![(sa, "App")], Err("is not a ServiceAccount name")),
            (vec![(sa, "-app")], Err("is not a ServiceAccount name")),
            (vec![(sa, "app.")], Err("is not a ServiceAccount name")),
            (vec![(sa, " app")], Err("is not a ServiceAccount name")),
            (vec![(sa, &long)], Err("is not a ServiceAccount name")),
            (vec![(sa, &huge)], Err("is not a ServiceAccount name")),
            (
                vec![(sa, "app"), (every, "29s")],
                Err("29s is outside the allowed 30s to 86400s"),
            ),
            (
                vec![(sa, "app"), (every, "25h")],
                Err("is outside the allowed"),
            ),
            (
                vec![(sa, "app"), (every, "0")],
                Err("is outside the allowed"),
            ),
            (
                vec![(sa, "app"), (every, "5 m")],
                Err("invalid duration unit"),
            ),
            (
                vec![(sa, "app"), (every, "1d")],
                Err("invalid duration unit"),
            ),
            (vec![(sa, "app"), (every, "-1m")], Err("invalid duration")),
            (vec![(sa, "app"), (every, "")], Err("invalid duration")),
            (vec![(sa, "app"), (every, &huge)], Err("the limit is 16")),
        ];
        for (pairs, want) in cases {
            let got = opt_in(Some(&ann(&pairs)), &bounds);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{pairs:?}"),
                (Err(e), Err(want)) => {
                    let text = e.to_string();
                    assert!(text.contains(want), "{text} (wanted {want})");
                    assert!(
                        text.len() < 300,
                        "message echoes the value: {} bytes",
                        text.len()
                    );
                }
                (got, want) => panic!("{:?}: got {got:?}, wanted {want:?}", &pairs.first()),
            }
        }
        assert_eq!(opt_in(None, &bounds), Ok(None));
    }

    #[test]
    fn only_the_exact_label_value_opts_a_service_account_in() {
        let cases = [
            (Some(vec![(PODLESS_OPT_IN, "true")]), true),
            (Some(vec![(PODLESS_OPT_IN, "True")]), false),
            (Some(vec![(PODLESS_OPT_IN, "")]), false),
            (Some(vec![(PODLESS_OPT_IN, "yes")]), false),
            (Some(vec![("other", "true")]), false),
            (None, false),
        ];
        for (labels, want) in cases {
            let labels = labels.map(|l| ann(&l));
            assert_eq!(
                service_account_opted_in(labels.as_ref()),
                want,
                "{labels:?}"
            );
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_above_a_second() {
        let m = Duration::from_secs(600);
        let cases = [
            (m, 0.0, Duration::from_secs(540)),
            (m, 0.5, Duration::from_secs(600)),
            (m, 0.999_999, Duration::from_millis(659_999)),
            (m, 1.0, Duration::from_secs(660)),
            (m, -3.0, Duration::from_secs(540)),
            (m, 7.0, Duration::from_secs(660)),
            (m, f64::NAN, Duration::from_secs(600)),
            (Duration::from_millis(100), 0.0, Duration::from_secs(1)),
        ];
        for (interval, unit, want) in cases {
            let got = jittered(interval, unit);
            let diff = got.abs_diff(want);
            assert!(
                diff < Duration::from_millis(1),
                "{interval:?} {unit}: {got:?} vs {want:?}"
            );
        }
    }
}
