//! `secrets-store-bench`: measures our node agent (and the upstream Go pair when its binaries
//! are installed) on the real test cluster, prints a markdown table and optionally writes
//! `BENCHMARKS.md` and `docs/bench/bench.png`. See `BENCHMARKS.md` for the method.

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
    /// 7 is the real node (kubelet + containerd): it runs last, on its own, and `--scenarios 7
    /// --write .` replaces only its part of BENCHMARKS.md's generated block. 8 (sync without pods
    /// at scale, see `podless.rs`) runs only when asked for, and prints its table.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5,6,7")]
    scenarios: Vec<u8>,
    /// Timed publishes per stack in scenario 1 (and floor samples).
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Pods in the burst.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Secrets in the burst's SecretProviderClass.
    #[arg(long, default_value_t = 5)]
    secrets: usize,
    /// Real seconds of steady rotation (poll 2 s, republish 1 s: 60× the charts' 2m / 60 s).
    #[arg(long, default_value_t = 60)]
    rotation_seconds: u64,
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
        default_value = "ours,upstream-driver,upstream-pair"
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
/// Untimed pause between scenario 1's rounds. Back to back, the upstream driver's client-go
/// rate limiter (20 requests/s, burst 30) throttles its pod-status writes after ~15 cycles and
/// its p50 becomes the limiter's ~80 ms: that measures a loop no kubelet runs, not one mount.
const SINGLE_MOUNT_PAUSE: Duration = Duration::from_millis(150);
/// The charts' AWS provider cache TTL, scaled by [`TIME_SCALE`] for the run.
const CHART_CACHE_TTL_SECONDS: f64 = 5.0;
/// Publishes before timing starts, so connections and caches are warm.
const WARMUP: usize = 3;

/// What scenarios 1–6 produced, for printing and writing.
struct ClusterRun {
    table: String,
    results: Vec<StackResults>,
    kinds: Vec<StackKind>,
    floor: Vec<Duration>,
    skipped: Vec<(StackKind, String)>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = Cluster::shared();
    let cluster_run = if args.scenarios.iter().any(|n| (1..=6).contains(n)) {
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
    if args.scenarios.contains(&8) {
        let binary = stack::our_binary().map_err(anyhow::Error::msg)?;
        println!("{}", podless::run(cluster, &binary, &args.podless).await?);
    }
    if let Some(root) = &args.write {
        write_outputs(root, &args, cluster_run.as_ref(), real.as_deref())?;
    }
    Ok(())
}

/// Scenarios 1–6 against the kubelet simulator.
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
            Err(reason) if kind == StackKind::UpstreamPair => {
                eprintln!("{reason}");
                skipped.push((kind, reason));
            }
            Err(reason) => anyhow::bail!(reason),
        }
    }
    let mut results: Vec<StackResults> = stacks.iter().map(|_| StackResults::default()).collect();

    // Scenario 4, idle: settled after start, before any mount.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (s, r) in stacks.iter().zip(results.iter_mut()) {
        r.mem_idle = Some(procfs::memory_sum(&s.pids())?);
    }

    let s1_tenant = fixtures::tenant(cluster, "bench-single", 1).await?;
    let mut floor = Vec::new();
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
            tokio::time::sleep(SINGLE_MOUNT_PAUSE).await;
        }
        for ((s, before), r) in stacks.iter().zip(&calls_before).zip(results.iter_mut()) {
            r.single_calls = Some(load::calls_delta(before, &s.aws.calls()));
        }
        let counter = cluster.moto().new_call_counter().await?;
        floor = latency::floor(cluster, &s1_tenant, counter.endpoint(), args.iterations).await?;
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
            let (burst, sim) = load::burst(cluster, s, &tenant, args.pods).await?;
            eprintln!(
                "  the stack's own Kubernetes API requests during 2 ({}): {}",
                s.kind.label(),
                burst.counters.top_stack_requests(8)
            );
            r.burst = Some(burst);
            r.mem_after_burst = Some(procfs::memory_sum(&s.pids())?);
            if !wants(3) {
                load::clear(cluster, &sim, &tenant).await?;
            }
            // Scenario 3 starts its own simulator (republishing every second) on the same pods.
            drop(sim);
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
    let mut calls: Vec<(String, f64)> = Vec::new();
    for (k, r) in run.kinds.iter().zip(&run.results) {
        if let Some(b) = &r.burst {
            calls.push((
                format!("2 burst, {}", k.slug()),
                b.counters.aws_total() as f64,
            ));
        }
        if let Some(c) = &r.rotation {
            calls.push((format!("3 rotation, {}", k.slug()), c.aws_total() as f64));
        }
    }
    let calls: Vec<(&str, f64)> = calls.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    plot::draw(
        &dir.join("bench.png"),
        &latencies,
        report::percentile(&run.floor, 50.0),
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
    if args.scenarios.iter().any(|n| (1..=6).contains(n)) {
        line.push_str(&format!(
            " --iterations {} --pods {} --secrets {} --rotation-seconds {} --fill-secrets {} \
             --fill-classes {}",
            args.iterations,
            args.pods,
            args.secrets,
            args.rotation_seconds,
            args.fill_secrets,
            args.fill_classes,
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
