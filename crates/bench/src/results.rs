//! Per-stack results and the rows of the table built from them: one value column per measured
//! stack, one "ours ÷ X" column per other measured stack, and the target, which is
//! always stated against the upstream pair (driver + ASCP).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::load::{Burst, Counters};
use crate::procfs::Memory;
use crate::report::{Row, mib, ms, percentile};
use crate::stack::StackKind;

/// The figures the issue compares against where no upstream pair ran: its own estimate of
/// upstream's AWS traffic (one STS call + one read per secret, per pod, per mount or rotation).
pub fn upstream_estimate(pods: usize, secrets: usize) -> f64 {
    (pods * (1 + secrets)) as f64
}

/// What one stack measured.
#[derive(Debug, Default)]
pub struct StackResults {
    /// Scenario 1 publish latencies.
    pub latencies: Vec<Duration>,
    /// AWS calls per action during scenario 1's timed publishes.
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

/// One measured stack's column.
#[derive(Debug, Clone, Copy)]
pub struct Column<'a> {
    /// Which stack.
    pub kind: StackKind,
    /// What it measured.
    pub results: &'a StackResults,
}

/// What the table says in the upstream pair's place when it did not run.
#[derive(Debug, Clone)]
pub struct Table<'a> {
    /// The setup.
    pub setup: &'a Setup,
    /// Measured stacks; the first is ours.
    pub columns: Vec<Column<'a>>,
    /// Scenario 1's floor samples.
    pub floor: &'a [Duration],
}

/// A stack's figure for a metric, as a number (for ratios).
type Value<'f> = Box<dyn Fn(&StackResults) -> Option<f64> + 'f>;
/// How a stack's figure is printed (given the number the [`Value`] gave).
type Show<'f> = Box<dyn Fn(&StackResults, f64) -> String + 'f>;

/// A metric: its value per stack (as a number, for ratios), how to print it, and the issue's
/// target ratio against the upstream pair, if it sets one.
struct Metric<'f> {
    scenario: String,
    metric: String,
    value: Value<'f>,
    show: Show<'f>,
    target: Option<f64>,
    /// The estimate of the upstream pair's figure, used when the pair did not run.
    estimate: Option<f64>,
}

impl Table<'_> {
    /// The header cells after "scenario | metric".
    pub fn header(&self) -> Vec<String> {
        let mut h: Vec<String> = self.columns.iter().map(|c| c.kind.label().into()).collect();
        for c in self.others() {
            h.push(format!("ours ÷ {}", c.kind.label()));
        }
        h.push("target (ours ÷ upstream pair)".into());
        h
    }

    fn ours(&self) -> &StackResults {
        self.columns[0].results
    }

    fn others(&self) -> impl Iterator<Item = &Column<'_>> {
        self.columns.iter().skip(1)
    }

    fn pair(&self) -> Option<&StackResults> {
        self.columns
            .iter()
            .find(|c| c.kind == StackKind::UpstreamPair)
            .map(|c| c.results)
    }

    fn row(&self, m: &Metric<'_>) -> Option<Row> {
        let ours = (m.value)(self.ours())?;
        let mut cells: Vec<String> = self
            .columns
            .iter()
            .map(|c| match (m.value)(c.results) {
                Some(v) => (m.show)(c.results, v),
                None => "-".into(),
            })
            .collect();
        for c in self.others() {
            cells.push(match (m.value)(c.results) {
                Some(t) if t > 0.0 => format!("{:.3}×", ours / t),
                _ => "-".into(),
            });
        }
        cells.push(match m.target {
            None => "-".into(),
            Some(target) => {
                let verdict = |r: f64| if r <= target { "met" } else { "MISSED" };
                match (self.pair().and_then(|p| (m.value)(p)), m.estimate) {
                    (Some(t), _) if t > 0.0 => {
                        let r = ours / t;
                        format!("≤ {target}×: {r:.3}× {}", verdict(r))
                    }
                    (_, Some(e)) => {
                        let r = ours / e;
                        format!(
                            "≤ {target}×: pair not measured; {r:.4}× the issue's estimate of it \
                             ({e:.0}), {} vs that estimate",
                            verdict(r)
                        )
                    }
                    _ => format!("≤ {target}×: pair not measured"),
                }
            }
        });
        Some(Row {
            scenario: m.scenario.clone(),
            metric: m.metric.clone(),
            cells,
        })
    }

    /// Builds the table rows.
    pub fn rows(&self) -> Vec<Row> {
        let setup = self.setup;
        let floor_p50 = percentile(self.floor, 50.0);
        let mut metrics: Vec<Metric<'_>> = Vec::new();
        let s1 = "1 single mount (warm)";
        for p in [50.0, 99.0] {
            metrics.push(Metric {
                scenario: s1.into(),
                metric: format!(
                    "NodePublishVolume p{p:.0} ({} samples)",
                    self.ours().latencies.len()
                ),
                value: Box::new(move |r| {
                    (!r.latencies.is_empty()).then(|| percentile(&r.latencies, p).as_secs_f64())
                }),
                show: Box::new(|_, v| ms(Duration::from_secs_f64(v))),
                target: Some(0.25),
                estimate: None,
            });
        }
        metrics.push(Metric {
            scenario: s1.into(),
            metric: "AWS calls per timed publish".into(),
            value: Box::new(|r| {
                let calls = r.single_calls.as_ref()?;
                Some(calls.values().sum::<u64>() as f64 / r.latencies.len().max(1) as f64)
            }),
            show: Box::new(|r, v| {
                let detail = per_action(r.single_calls.as_ref().expect("value implies calls"));
                format!("{v:.2} ({detail})")
            }),
            target: None,
            estimate: None,
        });
        metrics.push(Metric {
            scenario: s1.into(),
            metric: "physical floor p50 (tmpfs mount+umount + 1 GetSecretValue), same for all"
                .into(),
            value: Box::new(move |r| {
                (!r.latencies.is_empty() && !self.floor.is_empty())
                    .then_some(floor_p50.as_secs_f64())
            }),
            show: Box::new(|_, v| ms(Duration::from_secs_f64(v))),
            target: None,
            estimate: None,
        });
        metrics.push(Metric {
            scenario: s1.into(),
            metric: "p50 ÷ floor (target for ours ≤ 1.5×)".into(),
            value: Box::new(move |r| {
                (!r.latencies.is_empty() && !self.floor.is_empty()).then(|| {
                    percentile(&r.latencies, 50.0).as_secs_f64() / floor_p50.as_secs_f64().max(1e-9)
                })
            }),
            show: Box::new(|_, v| format!("{v:.2}×")),
            target: None,
            estimate: None,
        });
        let s2 = format!("2 burst ({} pods, {} secrets)", setup.pods, setup.secrets);
        metrics.push(Metric {
            scenario: s2.clone(),
            metric: "wall time until all mounted".into(),
            value: Box::new(|r| r.burst.as_ref().map(|b| b.wall.as_secs_f64())),
            show: Box::new(|_, v| format!("{v:.2} s")),
            target: Some(0.2),
            estimate: None,
        });
        metrics.push(Metric {
            scenario: s2.clone(),
            metric: "AWS calls".into(),
            value: Box::new(|r| r.burst.as_ref().map(|b| b.counters.aws_total() as f64)),
            show: Box::new(|r, v| {
                let b = r.burst.as_ref().expect("value implies burst");
                format!("{v:.0} ({})", per_action(&b.counters.aws))
            }),
            target: Some(0.02),
            estimate: Some(upstream_estimate(setup.pods, setup.secrets)),
        });
        metrics.push(Metric {
            scenario: s2.clone(),
            metric: "Kubernetes API requests by the stack's processes (audit log)".into(),
            value: Box::new(|r| {
                r.burst
                    .as_ref()
                    .map(|b| b.counters.stack_api_total() as f64)
            }),
            show: Box::new(|r, v| {
                let b = r.burst.as_ref().expect("value implies burst");
                format!("{v:.0} ({})", b.counters.top_stack_requests(3))
            }),
            target: None,
            estimate: None,
        });
        metrics.push(Metric {
            scenario: s2,
            metric: "Kubernetes API requests (all clients incl. kubelet sim)".into(),
            value: Box::new(|r| r.burst.as_ref().map(|b| b.counters.api_requests)),
            show: Box::new(|_, v| format!("{v:.0}")),
            target: None,
            estimate: None,
        });
        metrics.push(Metric {
            scenario: "3 steady rotation".into(),
            metric: "AWS calls per simulated hour".into(),
            value: Box::new(move |r| {
                r.rotation
                    .as_ref()
                    .map(|c| setup.per_simulated_hour(c.aws_total() as f64))
            }),
            show: Box::new(|r, v| {
                let c = r.rotation.as_ref().expect("value implies rotation");
                format!("{v:.0} ({})", per_action(&c.aws))
            }),
            target: Some(0.02),
            // Upstream re-reads everything for every pod on each 2-min rotation: 30 per hour.
            estimate: Some(upstream_estimate(setup.pods, setup.secrets) * 30.0),
        });
        metrics.push(Metric {
            scenario: "3 steady rotation".into(),
            metric: "Kubernetes API requests per simulated hour by the stack's processes".into(),
            value: Box::new(move |r| {
                r.rotation
                    .as_ref()
                    .map(|c| setup.per_simulated_hour(c.stack_api_total() as f64))
            }),
            show: Box::new(|r, v| {
                let c = r.rotation.as_ref().expect("value implies rotation");
                format!("{v:.0} ({})", c.top_stack_requests(3))
            }),
            target: None,
            estimate: None,
        });
        metrics.push(Metric {
            scenario: "3 steady rotation".into(),
            metric: "Kubernetes API requests per simulated hour (all clients)".into(),
            value: Box::new(move |r| {
                r.rotation
                    .as_ref()
                    .map(|c| setup.per_simulated_hour(c.api_requests))
            }),
            show: Box::new(|_, v| format!("{v:.0}")),
            target: None,
            estimate: None,
        });
        metrics.push(Metric {
            scenario: "3 steady rotation".into(),
            metric: "republishes served in the run (kubelet sim: 1 s period, serial)".into(),
            value: Box::new(|r| r.rotation.as_ref().map(|c| c.publishes as f64)),
            show: Box::new(|_, v| format!("{v:.0}")),
            target: None,
            estimate: None,
        });
        type Pick = fn(&StackResults) -> Option<Memory>;
        let mem: [(&str, Pick); 3] = [
            ("idle", |r| r.mem_idle),
            ("after 2", |r| r.mem_after_burst),
            ("after 3", |r| r.mem_after_rotation),
        ];
        for (when, get) in mem {
            metrics.push(Metric {
                scenario: "4 memory".into(),
                metric: format!("RSS {when}, all node-side processes (peak VmHWM)"),
                value: Box::new(move |r| get(r).map(|m| m.rss_kib as f64)),
                show: Box::new(move |r, _| {
                    let m = get(r).expect("value implies memory");
                    format!("{} ({})", mib(m.rss_kib), mib(m.hwm_kib))
                }),
                target: Some(0.25),
                estimate: None,
            });
        }
        metrics.push(Metric {
            scenario: format!(
                "5 cluster size ({} Secrets, {} classes)",
                setup.fill.0, setup.fill.1
            ),
            metric: "RSS change after filling the cluster (target: flat within 10%)".into(),
            value: Box::new(|r| {
                r.scale
                    .map(|(e, l)| (l.rss_kib as f64 / e.rss_kib.max(1) as f64 - 1.0) * 100.0)
            }),
            show: Box::new(|r, v| {
                let (e, l) = r.scale.expect("value implies scale");
                let verdict = if v.abs() <= 10.0 { "flat" } else { "NOT flat" };
                format!(
                    "{} → {} ({v:+.1}%, {verdict})",
                    mib(e.rss_kib),
                    mib(l.rss_kib)
                )
            }),
            target: None,
            estimate: None,
        });
        type Cpu = fn(&StackResults) -> Option<Duration>;
        let cpu: [(&str, Cpu); 2] = [
            ("during 2", |r| r.burst.as_ref().map(|b| b.counters.cpu)),
            ("during 3 (the run)", |r| r.rotation.as_ref().map(|c| c.cpu)),
        ];
        for (when, get) in cpu {
            metrics.push(Metric {
                scenario: "6 CPU".into(),
                metric: format!("CPU seconds {when}"),
                value: Box::new(move |r| get(r).map(|d| d.as_secs_f64())),
                show: Box::new(|_, v| format!("{v:.2} s")),
                target: None,
                estimate: None,
            });
        }
        metrics.push(Metric {
            scenario: "6 CPU".into(),
            metric: "CPU milliseconds per republish served during 3".into(),
            value: Box::new(|r| {
                let c = r.rotation.as_ref()?;
                (c.publishes > 0).then(|| c.cpu.as_secs_f64() * 1000.0 / c.publishes as f64)
            }),
            show: Box::new(|_, v| format!("{v:.2} ms")),
            target: None,
            estimate: None,
        });
        metrics.iter().filter_map(|m| self.row(m)).collect()
    }
}

fn per_action(calls: &BTreeMap<String, u64>) -> String {
    if calls.is_empty() {
        return "none".into();
    }
    calls
        .iter()
        .map(|(k, v)| format!("{}: {v}", k.rsplit('.').next().unwrap_or(k)))
        .collect::<Vec<_>>()
        .join(", ")
}
