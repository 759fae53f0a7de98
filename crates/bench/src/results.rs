//! Per-stack results and the rows of the table built from them.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::load::{Burst, Counters};
use crate::procfs::Memory;
use crate::report::{Row, mib, ms, percentile};

/// The figures the issue compares against where no upstream run exists: its own estimate of
/// upstream's AWS traffic (one STS call + one read per secret, per pod, per mount or rotation).
pub fn upstream_estimate(pods: usize, secrets: usize) -> f64 {
    (pods * (1 + secrets)) as f64
}

/// What one stack measured.
#[derive(Debug, Default)]
pub struct StackResults {
    /// Scenario 1 publish latencies.
    pub latencies: Vec<Duration>,
    /// AWS calls per action during scenario 1's timed publishes (only when one stack ran).
    pub single_calls: Option<BTreeMap<String, u64>>,
    /// Scenario 2.
    pub burst: Option<Burst>,
    /// Scenario 3, counters over the run.
    pub rotation: Option<Counters>,
    /// Memory idle, after 2, after 3.
    pub mem_idle: Option<Memory>,
    /// Memory after scenario 2.
    pub mem_after_burst: Option<Memory>,
    /// Memory after scenario 3.
    pub mem_after_rotation: Option<Memory>,
    /// Scenario 5: a fresh stack's memory before and after the cluster is filled.
    pub scale: Option<(Memory, Memory)>,
}

/// The setup the rows describe.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Pods in the burst.
    pub pods: usize,
    /// Secrets in the burst's class.
    pub secrets: usize,
    /// Length of the rotation run.
    pub rotation_run: Duration,
    /// Real time is this many times faster than the charts' intervals (2m poll, 60 s republish).
    pub time_scale: f64,
    /// Unrelated Secrets and classes of scenario 5.
    pub fill: (usize, usize),
}

impl Setup {
    /// Converts a count over the rotation run into a count per simulated hour.
    pub fn per_simulated_hour(&self, n: f64) -> f64 {
        n * 3600.0 / (self.rotation_run.as_secs_f64() * self.time_scale)
    }
}

/// Picks one figure out of a stack's results.
type Pick<T> = fn(&StackResults) -> Option<T>;

/// An upstream cell: its figure, or the reason there is none.
pub type Upstream<'a> = Result<&'a StackResults, &'a str>;

/// Builds the table rows.
pub fn rows(
    setup: &Setup,
    ours: &StackResults,
    upstream: Upstream<'_>,
    floor: &[Duration],
) -> Vec<Row> {
    let mut rows = Vec::new();
    let na = |u: Upstream<'_>| match u {
        Ok(_) => "-".to_string(),
        Err(_) => "not available (Go proxy 403)".to_string(),
    };
    // "ratio / target" cell: the measured ratio when upstream ran, else the target only.
    let ratio = |ours: f64, theirs: Option<f64>, target: f64, what: &str| match theirs {
        Some(t) if t > 0.0 => {
            let r = ours / t;
            let verdict = if r <= target { "met" } else { "MISSED" };
            format!("{r:.3}× (target ≤ {target}× {what}: {verdict})")
        }
        _ => format!("target ≤ {target}× {what}: not measurable without upstream"),
    };
    let up = upstream.ok();

    if !ours.latencies.is_empty() {
        for (p, name) in [(50.0, "p50"), (99.0, "p99")] {
            let o = percentile(&ours.latencies, p);
            let t = up
                .filter(|u| !u.latencies.is_empty())
                .map(|u| percentile(&u.latencies, p));
            rows.push(Row {
                scenario: "1 single mount (warm)".into(),
                metric: format!(
                    "NodePublishVolume {name} ({} samples)",
                    ours.latencies.len()
                ),
                ours: ms(o),
                upstream: t.map(ms).unwrap_or_else(|| na(upstream)),
                target: ratio(
                    o.as_secs_f64(),
                    t.map(|t| t.as_secs_f64()),
                    0.25,
                    "upstream",
                ),
            });
        }
        if let Some(calls) = &ours.single_calls {
            let total: u64 = calls.values().sum();
            let detail = if calls.is_empty() {
                "none".to_string()
            } else {
                calls
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            rows.push(Row {
                scenario: "1 single mount (warm)".into(),
                metric: format!("AWS calls per timed publish ({detail})"),
                ours: format!("{:.2}", total as f64 / ours.latencies.len() as f64),
                upstream: na(upstream),
                target: "-".into(),
            });
        }
        let f = percentile(floor, 50.0);
        rows.push(Row {
            scenario: "1 single mount (warm)".into(),
            metric: "physical floor p50 (tmpfs mount+umount + 1 GetSecretValue)".into(),
            ours: ms(f),
            upstream: "same floor".into(),
            target: "-".into(),
        });
        let r = percentile(&ours.latencies, 50.0).as_secs_f64() / f.as_secs_f64().max(1e-9);
        rows.push(Row {
            scenario: "1 single mount (warm)".into(),
            metric: "p50 ÷ floor".into(),
            ours: format!("{r:.2}×"),
            upstream: na(upstream),
            target: format!("target ≤ 1.5×: {}", if r <= 1.5 { "met" } else { "MISSED" }),
        });
    }
    if let Some(b) = &ours.burst {
        let tb = up.and_then(|u| u.burst.as_ref());
        rows.push(Row {
            scenario: format!("2 burst ({} pods, {} secrets)", setup.pods, setup.secrets),
            metric: "wall time until all mounted".into(),
            ours: format!("{:.2} s", b.wall.as_secs_f64()),
            upstream: tb
                .map(|t| format!("{:.2} s", t.wall.as_secs_f64()))
                .unwrap_or_else(|| na(upstream)),
            target: ratio(
                b.wall.as_secs_f64(),
                tb.map(|t| t.wall.as_secs_f64()),
                0.2,
                "upstream",
            ),
        });
        let estimate = upstream_estimate(setup.pods, setup.secrets);
        let calls = b.counters.aws_total() as f64;
        rows.push(Row {
            scenario: format!("2 burst ({} pods, {} secrets)", setup.pods, setup.secrets),
            metric: format!("AWS calls ({})", per_action(&b.counters)),
            ours: format!("{calls:.0}"),
            upstream: tb
                .map(|t| format!("{}", t.counters.aws_total()))
                .unwrap_or_else(|| format!("{} (issue's estimate {estimate:.0})", na(upstream))),
            target: match tb {
                Some(t) => ratio(calls, Some(t.counters.aws_total() as f64), 0.02, "upstream"),
                None => format!(
                    "{:.4}× of the estimate (target ≤ 0.02×: {})",
                    calls / estimate,
                    if calls / estimate <= 0.02 {
                        "met vs estimate"
                    } else {
                        "MISSED vs estimate"
                    }
                ),
            },
        });
        rows.push(Row {
            scenario: format!("2 burst ({} pods, {} secrets)", setup.pods, setup.secrets),
            metric: "Kubernetes API requests (all clients incl. kubelet sim)".into(),
            ours: format!("{:.0}", b.counters.api_requests),
            upstream: tb
                .map(|t| format!("{:.0}", t.counters.api_requests))
                .unwrap_or_else(|| na(upstream)),
            target: "-".into(),
        });
    }
    if let Some(c) = &ours.rotation {
        let per_hour = setup.per_simulated_hour(c.aws_total() as f64);
        // Upstream with rotation every 2 min re-reads everything for every pod: 30 rotations/h.
        let estimate = upstream_estimate(setup.pods, setup.secrets) * 30.0;
        let tr = up.and_then(|u| u.rotation.as_ref());
        let theirs = tr.map(|t| setup.per_simulated_hour(t.aws_total() as f64));
        rows.push(Row {
            scenario: "3 steady rotation".into(),
            metric: format!("AWS calls per simulated hour ({})", per_action(c)),
            ours: format!("{per_hour:.0}"),
            upstream: theirs
                .map(|t| format!("{t:.0}"))
                .unwrap_or_else(|| format!("{} (issue's estimate {estimate:.0})", na(upstream))),
            target: match theirs {
                Some(t) => ratio(per_hour, Some(t), 0.02, "upstream"),
                None => format!(
                    "{:.4}× of the estimate (target ≤ 0.02×: {})",
                    per_hour / estimate,
                    if per_hour / estimate <= 0.02 {
                        "met vs estimate"
                    } else {
                        "MISSED vs estimate"
                    }
                ),
            },
        });
        rows.push(Row {
            scenario: "3 steady rotation".into(),
            metric: "Kubernetes API requests per simulated hour (all clients)".into(),
            ours: format!("{:.0}", setup.per_simulated_hour(c.api_requests)),
            upstream: tr
                .map(|t| format!("{:.0}", setup.per_simulated_hour(t.api_requests)))
                .unwrap_or_else(|| na(upstream)),
            target: "-".into(),
        });
    }
    let mem_rows: [(&str, Pick<Memory>); 3] = [
        ("idle", |r| r.mem_idle),
        ("after 2", |r| r.mem_after_burst),
        ("after 3", |r| r.mem_after_rotation),
    ];
    for (when, get) in mem_rows {
        if let Some(m) = get(ours) {
            let t = up.and_then(get);
            rows.push(Row {
                scenario: "4 memory".into(),
                metric: format!("RSS {when} (peak VmHWM)"),
                ours: format!("{} ({})", mib(m.rss_kib), mib(m.hwm_kib)),
                upstream: t
                    .map(|t| format!("{} ({})", mib(t.rss_kib), mib(t.hwm_kib)))
                    .unwrap_or_else(|| na(upstream)),
                target: ratio(
                    m.rss_kib as f64,
                    t.map(|t| t.rss_kib as f64),
                    0.25,
                    "upstream",
                ),
            });
        }
    }
    if let Some((empty, loaded)) = ours.scale {
        let change = (loaded.rss_kib as f64 / empty.rss_kib.max(1) as f64 - 1.0) * 100.0;
        rows.push(Row {
            scenario: format!(
                "5 cluster size ({} Secrets, {} classes)",
                setup.fill.0, setup.fill.1
            ),
            metric: "RSS before → after filling the cluster".into(),
            ours: format!(
                "{} → {} ({change:+.1}%)",
                mib(empty.rss_kib),
                mib(loaded.rss_kib)
            ),
            upstream: up
                .and_then(|u| u.scale)
                .map(|(e, l)| format!("{} → {}", mib(e.rss_kib), mib(l.rss_kib)))
                .unwrap_or_else(|| na(upstream)),
            target: format!(
                "flat within 10%: {}",
                if change.abs() <= 10.0 {
                    "met"
                } else {
                    "MISSED"
                }
            ),
        });
    }
    let cpu_rows: [(&str, Pick<Duration>); 2] = [
        ("during 2", |r| r.burst.as_ref().map(|b| b.counters.cpu)),
        ("during 3 (the run)", |r| r.rotation.as_ref().map(|c| c.cpu)),
    ];
    for (when, get) in cpu_rows {
        if let Some(c) = get(ours) {
            let t = up.and_then(get);
            rows.push(Row {
                scenario: "6 CPU".into(),
                metric: format!("CPU seconds {when}"),
                ours: format!("{:.2} s", c.as_secs_f64()),
                upstream: t
                    .map(|t| format!("{:.2} s", t.as_secs_f64()))
                    .unwrap_or_else(|| na(upstream)),
                target: match t {
                    Some(t) => format!("{:.3}×", c.as_secs_f64() / t.as_secs_f64().max(1e-9)),
                    None => "-".into(),
                },
            });
        }
    }
    rows
}

fn per_action(c: &Counters) -> String {
    if c.aws.is_empty() {
        return "none".into();
    }
    c.aws
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
