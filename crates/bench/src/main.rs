//! `secrets-store-bench`: measures our node agent (and the upstream Go pair when its binaries
//! are installed) on the real test cluster, prints a markdown table and optionally writes
//! `BENCHMARKS.md` and `docs/bench/bench.png`. See `BENCHMARKS.md` for the method.

mod cold_node;
mod fixtures;
mod latency;
mod load;
mod plot;
mod podless;
mod procfs;
mod real_node;
mod report;
mod results;
mod stack;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use secrets_store_testenv::Cluster;

use crate::latency::SingleMount;
use crate::results::{Column, Setup, StackResults, Table};
use crate::stack::{RunningStack, StackConfig, StackKind};

/// Command-line options; the defaults are the published run.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Scenarios to run (3 needs 2's pods, so it runs 2 too; 4 and 6 ride along with 2 and 3).
    /// 8 is the cold node (the stack restarts under mounted volumes). 7 is the real node
    /// (kubelet + containerd): it runs last, on its own, and `--scenarios 7 --write .` replaces
    /// only its part of BENCHMARKS.md's generated block. 9 (sync without pods at scale, see
    /// `podless.rs`) runs only when asked for, and prints its table.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5,6,7,8")]
    scenarios: Vec<u8>,
    /// Timed publishes per stack in scenario 1 (and floor samples).
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Untimed pause between scenario 1's rounds (and the first-publish pod's warm publishes),
    /// milliseconds. Back to back, the upstream driver's client-go limiter (20 requests/s, burst
    /// 30) throttles its pod-status writes after ~15 cycles and its p50 becomes the limiter's
    /// ~80 ms. ASCP's limiter at its chart's limits (5/s, burst 10; 3 GETs per mount) still paces
    /// the pair at 150 ms; at 1000 ms its bucket refills between rounds, as for a single mount.
    #[arg(long, default_value_t = 1000)]
    pause_ms: u64,
    /// Pods in the burst.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Secrets in the burst's SecretProviderClass.
    #[arg(long, default_value_t = 5)]
    secrets: usize,
    /// Real seconds of steady rotation (poll 2 s, republish 1 s: 60× the charts' 2m / 60 s).
    #[arg(long, default_value_t = 60)]
    rotation_seconds: u64,
    /// Mounted volumes (one per pod) when scenario 8 restarts the stack.
    #[arg(long, default_value_t = 100)]
    cold_pods: usize,
    /// Unrelated Secrets created for scenario 5.
    #[arg(long, default_value_t = 10_000)]
    fill_secrets: usize,
    /// Unrelated SecretProviderClasses created for scenario 5.
    #[arg(long, default_value_t = 1_000)]
    fill_classes: usize,
    /// Stacks to measure, in column order (ours always comes first).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ours,upstream-driver,upstream-pair,upstream-pair-unlimited"
    )]
    stacks: Vec<StackKind>,
    /// Scenario 7: timed seed Deployment starts per stack (after one untimed warm-up start).
    #[arg(long, default_value_t = 10)]
    real_node_starts: usize,
    /// Scenario 7: rotation samples per column.
    #[arg(long, default_value_t = 5)]
    real_node_rotations: usize,
    /// Scenario 7: the drivers' rotation poll interval, seconds.
    #[arg(long, default_value_t = 10)]
    real_node_poll_seconds: u64,
    /// Scenario 7: kubelet's `syncFrequency` (its republish period), seconds; kubelet's default.
    #[arg(long, default_value_t = 60)]
    real_node_sync_seconds: u64,
    #[command(flatten)]
    podless: podless::PodlessArgs,
    /// Repository root: write `BENCHMARKS.md` and `docs/bench/bench.png` there.
    #[arg(long)]
    write: Option<PathBuf>,
}

/// Time scale of scenario 3: poll 2 s instead of 2 min, republish 1 s instead of 60 s.
const TIME_SCALE: f64 = 60.0;

/// The charts' AWS provider cache TTL, scaled by [`TIME_SCALE`] for the run.
const CHART_CACHE_TTL_SECONDS: f64 = 5.0;
/// Publishes before timing starts, so connections and caches are warm.
const WARMUP: usize = 3;

/// What scenarios 1–6 produced, for printing and writing.
struct ClusterRun {
    table: String,
    results: Vec<StackResults>,
    kinds: Vec<StackKind>,
    floor: latency::Floor,
    skipped: Vec<(StackKind, String)>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = Cluster::shared();
    let cluster_run = if args.scenarios.iter().any(|n| is_cluster_scenario(*n)) {
        let run = cluster_scenarios(&args, cluster).await?;
        println!("{}", run.table);
        Some(run)
    } else {
        None
    };
    // Last: the real node cordons the simulator's Node and needs the CSIDriver to itself.
    let real = if args.scenarios.contains(&7) {
        let settings = real_node::Settings {
            starts: args.real_node_starts,
            rotations: args.real_node_rotations,
            poll: Duration::from_secs(args.real_node_poll_seconds),
            sync_frequency: Duration::from_secs(args.real_node_sync_seconds),
            upstream: args.stacks.contains(&StackKind::UpstreamDriver),
        };
        let binary = stack::our_binary().map_err(anyhow::Error::msg)?;
        let results = real_node::run(cluster, &binary, &settings).await?;
        let tables = results.tables();
        println!("{tables}");
        Some(tables)
    } else {
        None
    };
    if args.scenarios.contains(&9) {
        let binary = stack::our_binary().map_err(anyhow::Error::msg)?;
        println!("{}", podless::run(cluster, &binary, &args.podless).await?);
    }
    if let Some(root) = &args.write {
        write_outputs(root, &args, cluster_run.as_ref(), real.as_deref())?;
    }
    Ok(())
}

/// Scenarios 1–6 and 8 run on the test cluster without a real kubelet.
fn is_cluster_scenario(n: u8) -> bool {
    (1..=6).contains(&n) || n == 8
}

/// Scenarios 1–6 and 8 against the stacks' sockets and the kubelet simulator.
async fn cluster_scenarios(args: &Args, cluster: &'static Cluster) -> anyhow::Result<ClusterRun> {
    let wants = |n: u8| args.scenarios.contains(&n);
    fixtures::ensure_csi_driver(cluster).await?;
    let cfg = StackConfig {
        rotation_poll: Duration::from_secs(2),
        namespace: cluster.new_namespace("bench-system").await,
        aws_cache_ttl_seconds: format!("{:.4}", CHART_CACHE_TTL_SECONDS / TIME_SCALE),
    };

    let mut stacks: Vec<RunningStack> = Vec::new();
    let mut skipped: Vec<(StackKind, String)> = Vec::new();
    let mut kinds = vec![StackKind::Ours];
    kinds.extend(args.stacks.iter().filter(|k| **k != StackKind::Ours));
    for kind in kinds {
        match stack::start(kind, cluster, &cfg).await {
            Ok(s) => stacks.push(s),
            Err(reason) if kind.is_pair() => {
                eprintln!("{reason}");
                skipped.push((kind, reason));
            }
            Err(reason) => anyhow::bail!(reason),
        }
    }
    let mut results: Vec<StackResults> = stacks
        .iter()
        .map(|s| StackResults {
            sidecars_kib: if s.kind == StackKind::Ours {
                0
            } else {
                results::UPSTREAM_SIDECARS_KIB
            },
            ..StackResults::default()
        })
        .collect();

    // Scenario 4, idle: settled after start, before any mount.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (s, r) in stacks.iter().zip(results.iter_mut()) {
        r.mem_idle = Some(procfs::memory_sum(&s.pids())?);
    }

    let s1_tenant = fixtures::tenant(cluster, "bench-single", 1).await?;
    let mut floor = latency::Floor::default();
    if wants(1) {
        eprintln!(
            "scenario 1: {} publishes per stack, alternating stacks",
            args.iterations
        );
        let mut mounts = Vec::new();
        for s in &stacks {
            let mut m =
                SingleMount::new(cluster, &s1_tenant, s, &format!("single-{}", s.kind.slug()))
                    .await?;
            for _ in 0..WARMUP {
                m.cycle().await?;
            }
            mounts.push(m);
        }
        let calls_before: Vec<_> = stacks.iter().map(|s| s.aws.calls()).collect();
        // A B A B …: machine noise lands on every column alike.
        for _ in 0..args.iterations {
            for (m, r) in mounts.iter_mut().zip(results.iter_mut()) {
                r.latencies.push(m.cycle().await?);
            }
            tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
        }
        for ((s, before), r) in stacks.iter().zip(&calls_before).zip(results.iter_mut()) {
            r.single_calls = Some(load::calls_delta(before, &s.aws.calls()));
        }
        let counter = cluster.moto().new_call_counter().await?;
        floor = latency::floor(cluster, &s1_tenant, counter.endpoint(), args.iterations).await?;
        eprintln!(
            "  floor p50: total {:?} = mount {:?} + GetSecretValue {:?} + status create {:?}",
            report::percentile(&floor.total, 50.0),
            report::percentile(&floor.mount, 50.0),
            report::percentile(&floor.aws, 50.0),
            report::percentile(&floor.api_write, 50.0),
        );
    }

    if wants(2) || wants(3) {
        for (s, r) in stacks.iter().zip(results.iter_mut()) {
            eprintln!(
                "scenario 2 ({}): burst of {} pods",
                s.kind.label(),
                args.pods
            );
            let tenant = fixtures::tenant(
                cluster,
                &format!("bench-burst-{}", s.kind.slug()),
                args.secrets,
            )
            .await?;
            let first_tenant = fixtures::tenant(
                cluster,
                &format!("bench-first-{}", s.kind.slug()),
                args.secrets,
            )
            .await?;
            let (burst, mounts) = load::burst(
                cluster,
                s,
                &tenant,
                &first_tenant,
                args.pods,
                Duration::from_millis(args.pause_ms),
            )
            .await?;
            eprintln!(
                "  {:?} to all mounted; the stack's own Kubernetes API requests during 2 ({}): {}",
                burst.wall,
                s.kind.label(),
                burst.counters.top_stack_requests(8)
            );
            r.burst = Some(burst);
            r.mem_after_burst = Some(procfs::memory_sum(&s.pids())?);
            load::unpublish_all(mounts).await?;
            load::delete_pods(cluster, &first_tenant).await?;
            if !wants(3) {
                load::delete_pods(cluster, &tenant).await?;
            }
            // Scenario 3 starts a simulator (republishing every second) on the same pods.
            if wants(3) {
                eprintln!(
                    "scenario 3 ({}): rotation for {} s",
                    s.kind.label(),
                    args.rotation_seconds
                );
                let counters = load::rotation(
                    cluster,
                    s,
                    &tenant,
                    args.pods,
                    Duration::from_secs(1),
                    Duration::from_secs(args.rotation_seconds),
                )
                .await?;
                eprintln!(
                    "  the stack's own Kubernetes API requests during 3 ({}): {}",
                    s.kind.label(),
                    counters.top_stack_requests(8)
                );
                r.rotation = Some(counters);
                r.mem_after_rotation = Some(procfs::memory_sum(&s.pids())?);
            }
        }
    }
    if wants(8) {
        for (s, r) in stacks.iter_mut().zip(results.iter_mut()) {
            eprintln!(
                "scenario 8 ({}): restart with {} mounted volumes",
                s.kind.label(),
                args.cold_pods
            );
            let tenant = fixtures::tenant(
                cluster,
                &format!("bench-cold-{}", s.kind.slug()),
                args.secrets,
            )
            .await?;
            let cold =
                cold_node::run(cluster, s, &tenant, args.cold_pods, Duration::from_secs(1)).await?;
            eprintln!(
                "  restart {:?}, all republished {:?}, AWS {:?}, API {}",
                cold.restart,
                cold.all_republished,
                cold.counters.aws,
                cold.counters.top_stack_requests(8)
            );
            r.cold = Some(cold);
        }
    }
    let kinds: Vec<StackKind> = stacks.iter().map(|s| s.kind).collect();
    drop(stacks);

    if wants(5) {
        eprintln!(
            "scenario 5: fresh stacks, then {} Secrets and {} classes in other namespaces",
            args.fill_secrets, args.fill_classes
        );
        let mut fresh = Vec::new();
        for kind in &kinds {
            let s = stack::start(*kind, cluster, &cfg)
                .await
                .map_err(anyhow::Error::msg)?;
            let mut m =
                SingleMount::new(cluster, &s1_tenant, &s, &format!("scale-{}", kind.slug()))
                    .await?;
            for _ in 0..5 {
                m.cycle().await?;
            }
            fresh.push((s, m));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let empty: Vec<_> = fresh
            .iter()
            .map(|(s, _)| procfs::memory_sum(&s.pids()))
            .collect::<Result<_, _>>()?;
        let filled = load::fill(cluster, 10, args.fill_secrets, args.fill_classes).await?;
        for (_, m) in fresh.iter_mut() {
            for _ in 0..5 {
                m.cycle().await?;
            }
        }
        // Time for any watch or cache to take in the new objects.
        tokio::time::sleep(Duration::from_secs(10)).await;
        for (((s, _), e), r) in fresh.iter().zip(empty).zip(results.iter_mut()) {
            r.scale = Some((e, procfs::memory_sum(&s.pids())?));
        }
        load::unfill(cluster, &filled).await?;
    }

    let setup = Setup {
        pods: args.pods,
        secrets: args.secrets,
        rotation_run: Duration::from_secs(args.rotation_seconds),
        time_scale: TIME_SCALE,
        fill: (args.fill_secrets, args.fill_classes),
    };
    let table = Table {
        setup: &setup,
        columns: kinds
            .iter()
            .zip(&results)
            .map(|(&kind, results)| Column { kind, results })
            .collect(),
        floor: &floor,
    };
    let text = report::table(&table.header(), &table.rows());
    Ok(ClusterRun {
        table: text,
        results,
        kinds,
        floor,
        skipped,
    })
}

/// One sentence per stack: measured in this run, or why not.
fn stacks_line(kinds: &[StackKind], skipped: &[(StackKind, String)]) -> String {
    let measured: Vec<&str> = kinds.iter().map(|k| k.label()).collect();
    let mut out = format!(
        "Measured in this run, side by side (scenario 1 alternates the stacks): {}.",
        measured.join(", ")
    );
    for (kind, reason) in skipped {
        out.push_str(&format!(
            " **{}** was not measured: {reason}.",
            kind.label()
        ));
    }
    out
}

fn write_outputs(
    root: &std::path::Path,
    args: &Args,
    cluster_run: Option<&ClusterRun>,
    real_node: Option<&str>,
) -> anyhow::Result<()> {
    let mut parts = Vec::new();
    if let Some(run) = cluster_run {
        draw_plot(root, run)?;
        parts.push((
            "cluster",
            report::cluster_part(
                &args_line(args),
                &run.table,
                &stacks_line(&run.kinds, &run.skipped),
            ),
        ));
    }
    if let Some(tables) = real_node {
        parts.push((
            "real-node",
            report::real_node_part(&args_line(args), tables),
        ));
    }
    let path = root.join("BENCHMARKS.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, report::splice_parts(&existing, &parts))?;
    Ok(())
}

fn draw_plot(root: &std::path::Path, run: &ClusterRun) -> anyhow::Result<()> {
    let dir = root.join("docs/bench");
    std::fs::create_dir_all(&dir)?;
    let latencies: Vec<(&str, Vec<Duration>)> = run
        .kinds
        .iter()
        .zip(&run.results)
        .map(|(k, r)| (k.label(), r.latencies.clone()))
        .collect();
    // Bars grouped by scenario, one per stack in column order (colour = column).
    let mut calls: Vec<plot::Bar> = Vec::new();
    type Pick = fn(&StackResults) -> Option<u64>;
    let scenarios: [(&str, Pick); 3] = [
        ("2 burst", |r| {
            r.burst.as_ref().map(|b| b.counters.aws_total())
        }),
        ("3 rotation", |r| r.rotation.as_ref().map(|c| c.aws_total())),
        ("8 cold node", |r| {
            r.cold.as_ref().map(|c| c.counters.aws_total())
        }),
    ];
    for (name, pick) in scenarios {
        for (column, r) in run.results.iter().enumerate() {
            if let Some(n) = pick(r) {
                calls.push(plot::Bar {
                    group: name,
                    column,
                    value: n as f64,
                });
            }
        }
    }
    plot::draw(
        &dir.join("bench.png"),
        &latencies,
        report::percentile(&run.floor.total, 50.0),
        &calls,
    )
}

/// The command line of this run, with every option that shapes the figures.
fn args_line(args: &Args) -> String {
    let mut line = format!(
        "secrets-store-bench --scenarios {}",
        args.scenarios
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    if args.scenarios.iter().any(|n| is_cluster_scenario(*n)) {
        line.push_str(&format!(
            " --iterations {} --pause-ms {} --pods {} --secrets {} --rotation-seconds {} --fill-secrets {} \
             --fill-classes {} --cold-pods {}",
            args.iterations,
            args.pause_ms,
            args.pods,
            args.secrets,
            args.rotation_seconds,
            args.fill_secrets,
            args.fill_classes,
            args.cold_pods,
        ));
    }
    if args.scenarios.contains(&7) {
        line.push_str(&format!(
            " --real-node-starts {} --real-node-rotations {} --real-node-poll-seconds {} \
             --real-node-sync-seconds {}",
            args.real_node_starts,
            args.real_node_rotations,
            args.real_node_poll_seconds,
            args.real_node_sync_seconds,
        ));
    }
    line.push_str(&format!(
        " --stacks {}",
        args.stacks
            .iter()
            .filter_map(|k| k.to_possible_value())
            .map(|v| v.get_name().to_string())
            .collect::<Vec<_>>()
            .join(",")
    ));
    line
}
