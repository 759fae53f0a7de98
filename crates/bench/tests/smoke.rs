//! Smoke test of the benchmark runner: scenario 1 with a handful of iterations, and scenarios 2
//! and 8 with two pods, against our real node agent, the upstream driver with our provider, and
//! the upstream pair (driver + ASCP) at its chart's limits and with its limiter lifted, on the
//! real test cluster and moto, so the runner cannot rot. It checks that the table has numbers,
//! never how large they are (timings belong in the benchmark).

use std::path::PathBuf;
use std::process::Command;

/// The agent binary the runner looks for next to itself (cargo puts all workspace binaries of a
/// profile in one dir; `cargo test --workspace` builds it, `cargo test -p` alone does not).
fn agent_binary(runner: &str) -> PathBuf {
    if let Some(p) = std::env::var_os("SECRETS_STORE_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    PathBuf::from(runner)
        .parent()
        .expect("runner has a parent dir")
        .join("secrets-store")
}

/// The milliseconds in a table cell such as `3.21 ms` or `3.21 ms (detail)`.
fn cell_ms(cell: &str) -> Option<f64> {
    let figure = cell.split(" (").next()?;
    figure.trim().strip_suffix(" ms")?.parse().ok()
}

#[test]
fn scenarios_1_2_8_print_a_table_with_numbers_for_every_column() {
    let runner = env!("CARGO_BIN_EXE_secrets-store-bench");
    let agent = agent_binary(runner);
    assert!(
        agent.exists(),
        "{} is missing: build the agent first (`cargo build -p secrets-store`; \
         `cargo test --workspace` does it) or set SECRETS_STORE_BIN",
        agent.display()
    );
    let out = Command::new(runner)
        .args(["--scenarios", "1,2,8", "--iterations", "5"])
        .args(["--pods", "2", "--secrets", "1", "--cold-pods", "2"])
        // Shorter pauses than the published 1 s: the figures are not looked at here.
        .args(["--pause-ms", "150"])
        .output()
        .expect("running secrets-store-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "secrets-store-bench failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| 1 "))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    // Cells: "", scenario, metric, ours, upstream, target, "".
    let ours = |metric: &str| {
        rows.iter()
            .find(|r| r.get(2).is_some_and(|m| m.starts_with(metric)))
            .and_then(|r| r.get(3).copied())
            .unwrap_or_else(|| panic!("no row {metric:?} in:\n{stdout}"))
    };
    for metric in [
        "NodePublishVolume p50",
        "NodePublishVolume p99",
        "floor p50",
    ] {
        let cell = ours(metric);
        let value = cell_ms(cell).unwrap_or_else(|| panic!("{metric}: {cell:?} is not in ms"));
        assert!(value > 0.0, "{metric}: {value} ms");
    }
    let ratio = ours("p50 ÷ floor");
    let ratio: f64 = ratio
        .strip_suffix('×')
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("p50 ÷ floor: {ratio:?} is not a ratio"));
    assert!(ratio > 0.0);
    // The upstream stacks ran beside ours: their columns hold latencies too, and each
    // "ours ÷ …" cell is a ratio.
    let header: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("| scenario |"))
        .unwrap_or_else(|| panic!("no table header in:\n{stdout}"))
        .split('|')
        .map(str::trim)
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name:?} in {header:?}"))
    };
    let p50 = rows
        .iter()
        .find(|r| {
            r.get(2)
                .is_some_and(|m| m.starts_with("NodePublishVolume p50"))
        })
        .expect("p50 row");
    for other in [
        "upstream driver + our provider",
        "upstream pair (driver + ASCP)",
        "upstream pair, ASCP limiter lifted",
    ] {
        let theirs = column(other);
        let ratio_col = column(&format!("ours ÷ {other}"));
        let their_p50 = cell_ms(p50[theirs])
            .unwrap_or_else(|| panic!("{other} p50 {:?} is not in ms", p50[theirs]));
        assert!(their_p50 > 0.0);
        assert!(
            p50[ratio_col].ends_with('×'),
            "ratio cell {:?} in:\n{stdout}",
            p50[ratio_col]
        );
    }
    // Scenarios 2 and 8 have a figure in every stack's column.
    let stacks = [
        "ours",
        "upstream driver + our provider",
        "upstream pair (driver + ASCP)",
    ];
    for (scenario, metric) in [
        ("| 2 burst", "wall time"),
        ("| 2 burst", "AWS calls"),
        ("| 8 cold node", "kill → every volume republished once"),
        ("| 8 cold node", "AWS calls"),
    ] {
        let row: Vec<&str> = stdout
            .lines()
            .find(|l| l.starts_with(scenario) && l.contains(metric))
            .unwrap_or_else(|| panic!("no row {scenario} {metric:?} in:\n{stdout}"))
            .split('|')
            .map(str::trim)
            .collect();
        for stack in stacks {
            let cell = row[column(stack)];
            assert!(
                cell.starts_with(|c: char| c.is_ascii_digit()),
                "{scenario} {metric:?} for {stack}: {cell:?}"
            );
        }
    }
}

/// Scenario 9 at a handful of classes: the controller binary syncs them without pods, one
/// refresh round is counted, and the table has its figures (about 40 s: one 30 s refresh).
#[test]
fn scenario_9_prints_the_podless_figures() {
    let runner = env!("CARGO_BIN_EXE_secrets-store-bench");
    assert!(
        agent_binary(runner).exists(),
        "build the binary first (`cargo build -p secrets-store`) or set SECRETS_STORE_BIN"
    );
    let out = Command::new(runner)
        .args(["--scenarios", "9", "--podless-classes", "4"])
        .args(["--podless-namespaces", "2", "--podless-secrets", "2"])
        .output()
        .expect("running secrets-store-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "secrets-store-bench failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // Cells: "", metric, ours, External Secrets Operator, "".
    let ours = |metric: &str| -> String {
        stdout
            .lines()
            .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
            .find(|r| r.get(1).is_some_and(|m| m.starts_with(metric)))
            .and_then(|r| r.get(2).map(|c| c.to_string()))
            .unwrap_or_else(|| panic!("no row {metric:?} in:\n{stdout}"))
    };
    let per_refresh: f64 = ours("AWS calls per class refresh")
        .parse()
        .unwrap_or_else(|_| panic!("calls per refresh is not a number:\n{stdout}"));
    assert!(
        per_refresh > 0.0,
        "a refresh without an AWS call:\n{stdout}"
    );
    assert!(
        ours("one refresh of every class").contains("BatchGetSecretValue"),
        "{stdout}"
    );
    assert!(ours("controller VmRSS").contains("MiB"), "{stdout}");
}
