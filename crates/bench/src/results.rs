//! Per-stack results and the rows of the table built from them: one value column per measured
//! stack, one "ours ÷ X" column per other measured stack, and the target, stated against
//! the upstream pair (driver + ASCP) at its chart's limits and with its limiter lifted, or as a
//! bound on our own figure.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cold_node::ColdNode;
use crate::latency::Floor;
use crate::load::{Burst, Counters};
use crate::procfs::Memory;
use crate::report::{Row, mib, ms, percentile};
use crate::stack::StackKind;

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
    /// Scenario 8.
    pub cold: Option<ColdNode>,
    /// Memory the stack's sidecars are documented to take ([`UPSTREAM_SIDECARS_KIB`] for the
    /// upstream driver's columns, 0 for ours), for the sidecar line of scenario 4.
    pub sidecars_kib: u64,
}

/// Memory the upstream chart requests for the two sidecars of its node pod
/// (node-driver-registrar and livenessprobe, `resources.requests.memory` 20Mi each in the v1.6.0
/// chart's values): documented, not measured here (the sidecars do not run in this bench).
pub const UPSTREAM_SIDECARS_KIB: u64 = 2 * 20 * 1024;

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
    pub floor: &'a Floor,
}

/// A stack's figure for a metric, as a number (for ratios).
type Value<'f> = Box<dyn Fn(&StackResults) -> Option<f64> + 'f>;
/// How a stack's figure is printed (given the number the [`Value`] gave).
type Show<'f> = Box<dyn Fn(&StackResults, f64) -> String + 'f>;

/// What the issue asks of a metric.
enum Target {
    /// Nothing.
    None,
    /// Ours ÷ each listed column at most this ratio.
    Ratio(Vec<(StackKind, f64)>),
    /// Our own figure at most this (a ratio to something in the same column).
    OursAtMost(f64),
}

/// Both pair columns held to `pair` (chart limits) and `lifted` (limiter lifted).
fn vs_pair(pair: f64, lifted: f64) -> Target {
    Target::Ratio(vec![
        (StackKind::UpstreamPair, pair),
        (StackKind::UpstreamPairUnlimited, lifted),
    ])
}

/// A metric: its value per stack (as a number, for ratios), how to print it, and the issue's
/// target for it.
struct Metric<'f> {
    scenario: String,
    metric: String,
    value: Value<'f>,
    show: Show<'f>,
    target: Target,
}

impl Table<'_> {
    /// The header cells after "scenario | metric".
    pub fn header(&self) -> Vec<String> {
        let mut h: Vec<String> = self.columns.iter().map(|c| c.kind.label().into()).collect();
        for c in self.others() {
            h.push(format!("ours ÷ {}", c.kind.label()));
        }
        h.push("target (issue 15)".into());
        h
    }

    fn ours(&self) -> &StackResults {
        self.columns[0].results
    }

    fn others(&self) -> impl Iterator<Item = &Column<'_>> {
        self.columns.iter().skip(1)
    }

    fn column(&self, kind: StackKind) -> Option<&StackResults> {
        self.columns
            .iter()
            .find(|c| c.kind == kind)
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
        let verdict = |r: f64, limit: f64| if r <= limit { "met" } else { "MISSED" };
        cells.push(match &m.target {
            Target::None => "-".into(),
            Target::OursAtMost(limit) => {
                format!("ours ≤ {limit}×: {}", verdict(ours, *limit))
            }
            Target::Ratio(limits) => limits
                .iter()
                .map(|(kind, limit)| {
                    let name = short_name(*kind);
                    match self.column(*kind).and_then(|r| (m.value)(r)) {
                        Some(t) if t > 0.0 => {
                            let r = ours / t;
                            format!("≤ {limit}× {name}: {r:.3}× {}", verdict(r, *limit))
                        }
                        _ => format!("≤ {limit}× {name}: not measured"),
                    }
                })
                .collect::<Vec<_>>()
                .join("; "),
        });
        Some(Row {
            scenario: m.scenario.clone(),
            metric: m.metric.clone(),
            cells,
        })
    }

    /// Builds the table rows.
    pub fn rows(&self) -> Vec<Row> {
        let mut metrics = self.single_mount_metrics();
        metrics.extend(self.burst_metrics());
        metrics.extend(self.rotation_metrics());
        metrics.extend(self.memory_metrics());
        metrics.extend(self.cpu_and_cold_metrics());
        metrics.iter().filter_map(|m| self.row(m)).collect()
    }

    fn single_mount_metrics(&self) -> Vec<Metric<'_>> {
        let floor = self.floor;
        let floor_p50 = percentile(&floor.total, 50.0);
        let has_floor = move |r: &StackResults| !r.latencies.is_empty() && !floor.total.is_empty();
        let s1 = "1 single mount (warm)";
        let mut metrics = Vec::new();
        for (p, limits) in [(50.0, vs_pair(0.1, 0.2)), (99.0, vs_pair(0.1, 0.2))] {
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
                target: limits,
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
            target: Target::None,
        });
        let parts = format!(
            "mount {} + AWS {} + API write {}",
            ms(percentile(&floor.mount, 50.0)),
            ms(percentile(&floor.aws, 50.0)),
            ms(percentile(&floor.api_write, 50.0)),
        );
        metrics.push(Metric {
            scenario: s1.into(),
            metric: "floor p50: tmpfs mount+umount, 1 GetSecretValue, 1 pod-status create (same \
                     for all)"
                .into(),
            value: Box::new(move |r| has_floor(r).then_some(floor_p50.as_secs_f64())),
            show: Box::new(move |_, v| format!("{} ({parts})", ms(Duration::from_secs_f64(v)))),
            target: Target::None,
        });
        metrics.push(Metric {
            scenario: s1.into(),
            metric: "p50 ÷ floor p50".into(),
            value: Box::new(move |r| {
                has_floor(r).then(|| {
                    percentile(&r.latencies, 50.0).as_secs_f64() / floor_p50.as_secs_f64().max(1e-9)
                })
            }),
            show: Box::new(|_, v| format!("{v:.2}×")),
            target: Target::OursAtMost(1.25),
        });
        metrics
    }

    fn burst_metrics(&self) -> Vec<Metric<'_>> {
        let setup = self.setup;
        let s2 = format!(
            "2 burst ({} pods × {} secrets, in parallel at the socket)",
            setup.pods, setup.secrets
        );
        let burst = |r: &StackResults| r.burst.clone();
        let mut metrics = vec![
            Metric {
                scenario: s2.clone(),
                metric: "wall time: all publishes sent at once → last answered".into(),
                value: Box::new(move |r| burst(r).map(|b| b.wall.as_secs_f64())),
                show: Box::new(|_, v| secs(v)),
                target: vs_pair(0.1, 0.5),
            },
            Metric {
                scenario: s2.clone(),
                metric: "one publish's latency in the burst, p50 (max)".into(),
                value: Box::new(move |r| {
                    burst(r).map(|b| percentile(&b.latencies, 50.0).as_secs_f64())
                }),
                show: Box::new(|r, v| {
                    let b = r.burst.as_ref().expect("value implies burst");
                    let max = b.latencies.iter().max().copied().unwrap_or_default();
                    format!("{} ({})", secs(v), secs(max.as_secs_f64()))
                }),
                target: Target::None,
            },
            Metric {
                scenario: s2.clone(),
                metric: "AWS calls (STS included)".into(),
                value: Box::new(move |r| burst(r).map(|b| b.counters.aws_total() as f64)),
                show: Box::new(|r, v| {
                    let b = r.burst.as_ref().expect("value implies burst");
                    format!("{v:.0} ({})", per_action(&b.counters.aws))
                }),
                target: vs_pair(0.02, 0.02),
            },
            Metric {
                scenario: s2.clone(),
                metric: "Kubernetes API requests by the stack's processes (audit log)".into(),
                value: Box::new(move |r| burst(r).map(|b| b.counters.stack_api_total() as f64)),
                show: Box::new(|r, v| {
                    let b = r.burst.as_ref().expect("value implies burst");
                    format!("{v:.0} ({})", b.counters.top_stack_requests(4))
                }),
                target: Target::None,
            },
            Metric {
                scenario: s2.clone(),
                metric: "first publish in a fresh namespace (one pod, alone)".into(),
                value: Box::new(move |r| burst(r).map(|b| b.first_in_namespace.as_secs_f64())),
                show: Box::new(|_, v| ms(Duration::from_secs_f64(v))),
                target: Target::None,
            },
            Metric {
                scenario: s2,
                metric: format!(
                    "first ÷ warm (median of the same pod's next {} publishes)",
                    crate::load::WARM_AFTER_FIRST
                ),
                value: Box::new(move |r| {
                    burst(r).map(|b| {
                        b.first_in_namespace.as_secs_f64()
                            / b.warm_after_first.as_secs_f64().max(1e-9)
                    })
                }),
                show: Box::new(|r, v| {
                    let b = r.burst.as_ref().expect("value implies burst");
                    format!("{v:.2}× (warm {})", ms(b.warm_after_first))
                }),
                target: Target::OursAtMost(1.5),
            },
        ];
        metrics.push(Metric {
            scenario: format!("2 burst ({} pods)", setup.pods),
            metric: "CPU seconds of the stack's processes during the burst".into(),
            value: Box::new(move |r| burst(r).map(|b| b.counters.cpu.as_secs_f64())),
            show: Box::new(|_, v| format!("{v:.2} s")),
            target: Target::None,
        });
        metrics
    }

    fn rotation_metrics(&self) -> Vec<Metric<'_>> {
        let setup = self.setup;
        let s3 = "3 steady rotation";
        vec![
            Metric {
                scenario: s3.into(),
                metric: "AWS calls per simulated hour (STS included)".into(),
                value: Box::new(move |r| {
                    r.rotation
                        .as_ref()
                        .map(|c| setup.per_simulated_hour(c.aws_total() as f64))
                }),
                show: Box::new(|r, v| {
                    let c = r.rotation.as_ref().expect("value implies rotation");
                    format!("{v:.0} ({})", per_action(&c.aws))
                }),
                target: vs_pair(0.02, 0.02),
            },
            Metric {
                scenario: s3.into(),
                metric: "Kubernetes API requests per simulated hour by the stack's processes"
                    .into(),
                value: Box::new(move |r| {
                    r.rotation
                        .as_ref()
                        .map(|c| setup.per_simulated_hour(c.stack_api_total() as f64))
                }),
                show: Box::new(|r, v| {
                    let c = r.rotation.as_ref().expect("value implies rotation");
                    format!("{v:.0} ({})", c.top_stack_requests(3))
                }),
                target: vs_pair(0.02, 0.02),
            },
            Metric {
                scenario: s3.into(),
                metric: "Kubernetes API requests per simulated hour (all clients)".into(),
                value: Box::new(move |r| {
                    r.rotation
                        .as_ref()
                        .map(|c| setup.per_simulated_hour(c.api_requests))
                }),
                show: Box::new(|_, v| format!("{v:.0}")),
                target: Target::None,
            },
            Metric {
                scenario: s3.into(),
                metric: "republishes served in the run (kubelet sim: 1 s period per pod)".into(),
                value: Box::new(|r| r.rotation.as_ref().map(|c| c.publishes as f64)),
                show: Box::new(|_, v| format!("{v:.0}")),
                target: Target::None,
            },
        ]
    }

    fn memory_metrics(&self) -> Vec<Metric<'_>> {
        let setup = self.setup;
        let mut metrics = Vec::new();
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
                target: vs_pair(0.25, 0.25),
            });
        }
        metrics.push(Metric {
            scenario: "4 memory".into(),
            metric: "RSS idle + the upstream sidecars' chart memory requests (registrar 20 MiB + \
                     livenessprobe 20 MiB; documented, not measured; ours has no sidecar)"
                .into(),
            value: Box::new(|r| r.mem_idle.map(|m| (m.rss_kib + r.sidecars_kib) as f64)),
            show: Box::new(|_, v| mib(v as u64)),
            target: vs_pair(0.25, 0.25),
        });
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
            target: Target::None,
        });
        metrics
    }

    fn cpu_and_cold_metrics(&self) -> Vec<Metric<'_>> {
        let mut metrics = Vec::new();
        metrics.push(Metric {
            scenario: "6 CPU".into(),
            metric: "CPU seconds during 3 (the run)".into(),
            value: Box::new(|r| r.rotation.as_ref().map(|c| c.cpu.as_secs_f64())),
            show: Box::new(|_, v| format!("{v:.2} s")),
            target: Target::None,
        });
        metrics.push(Metric {
            scenario: "6 CPU".into(),
            metric: "CPU milliseconds per republish served during 3".into(),
            value: Box::new(|r| {
                let c = r.rotation.as_ref()?;
                (c.publishes > 0).then(|| c.cpu.as_secs_f64() * 1000.0 / c.publishes as f64)
            }),
            show: Box::new(|_, v| format!("{v:.2} ms")),
            target: Target::None,
        });
        let s8 = |r: &StackResults| r.cold.clone();
        let scenario = self
            .columns
            .iter()
            .find_map(|c| c.results.cold.as_ref())
            .map(|c| format!("8 cold node ({} mounted volumes)", c.volumes))
            .unwrap_or_else(|| "8 cold node".into());
        metrics.push(Metric {
            scenario: scenario.clone(),
            metric: "kill → restarted processes answer on the CSI socket".into(),
            value: Box::new(move |r| s8(r).map(|c| c.restart.as_secs_f64())),
            show: Box::new(|_, v| secs(v)),
            target: Target::None,
        });
        metrics.push(Metric {
            scenario: scenario.clone(),
            metric: "kill → every volume republished once (kubelet sim: 1 s period per pod)".into(),
            value: Box::new(move |r| s8(r).map(|c| c.all_republished.as_secs_f64())),
            show: Box::new(|_, v| secs(v)),
            target: Target::None,
        });
        metrics.push(Metric {
            scenario: scenario.clone(),
            metric: "AWS calls over that span (STS included)".into(),
            value: Box::new(move |r| s8(r).map(|c| c.counters.aws_total() as f64)),
            show: Box::new(|r, v| {
                let c = r.cold.as_ref().expect("value implies cold");
                format!("{v:.0} ({})", per_action(&c.counters.aws))
            }),
            target: Target::None,
        });
        metrics.push(Metric {
            scenario,
            metric: "Kubernetes API requests by the stack's processes over that span".into(),
            value: Box::new(move |r| s8(r).map(|c| c.counters.stack_api_total() as f64)),
            show: Box::new(|r, v| {
                let c = r.cold.as_ref().expect("value implies cold");
                format!("{v:.0} ({})", c.counters.top_stack_requests(3))
            }),
            target: Target::None,
        });
        metrics
    }
}

/// The target cell's name for a column.
fn short_name(kind: StackKind) -> &'static str {
    match kind {
        StackKind::UpstreamPair => "pair",
        StackKind::UpstreamPairUnlimited => "pair (limiter lifted)",
        StackKind::UpstreamDriver => "upstream driver",
        StackKind::Ours => "ours",
    }
}

fn secs(v: f64) -> String {
    if v < 1.0 {
        format!("{:.0} ms", v * 1000.0)
    } else {
        format!("{v:.2} s")
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
