//! Where a value could leak, and the scans that prove it did not: pod dirs, the agent's log,
//! `/metrics`, Events, kubelet's errors and every file the test leaves on disk.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};

use crate::e2e::World;

/// Every regular file under `dir` (symlinks not followed; the payload dirs are walked).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

/// No file under `dir` contains any of `values` (as raw bytes).
pub fn assert_no_value_under(dir: &Path, values: &[&str]) {
    for path in files_under(dir) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        for v in values {
            assert!(
                !bytes.windows(v.len()).any(|w| w == v.as_bytes()),
                "{} holds a value",
                path.display()
            );
        }
    }
}

/// A value no log line, Event or metric could contain by chance.
pub fn unique_value(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mix = nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(23);
    format!("{tag}-{nanos:016x}{mix:016x}")
}

/// `GET /metrics` over plain HTTP/1.0.
pub async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1."), "{body}");
    body
}

/// Sum of the samples whose line starts with `prefix` and contains every one of `with`.
fn sum_samples(metrics: &str, prefix: &str, with: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix) && with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The race went through the coalescer (A's value was shared from it while B's were asking)
/// and B's calls reached AWS and were refused there.
pub fn assert_coalescing_served_a(metrics: &str) {
    let shared = sum_samples(
        metrics,
        "aws_provider_coalesced_lookups_total",
        &["result=\"hit\""],
    ) + sum_samples(
        metrics,
        "aws_provider_coalesced_lookups_total",
        &["result=\"wait\""],
    );
    assert!(
        shared > 0.0,
        "no lookup was served by the coalescer:\n{metrics}"
    );
    let refused = sum_samples(
        metrics,
        "aws_provider_api_calls_total",
        &["service=\"secretsmanager\"", "outcome=\"error\""],
    );
    assert!(
        refused > 0.0,
        "no Secrets Manager call was refused:\n{metrics}"
    );
}

/// The forms a value could leak in: as is, and base64 (as Secret data travels).
fn leak_forms(value: &str) -> Vec<String> {
    let b64 = serde_json::to_value(k8s_openapi::ByteString(value.as_bytes().to_vec())).unwrap();
    vec![
        value.to_string(),
        b64.as_str().unwrap().trim_end_matches('=').to_string(),
    ]
}

/// After the pods are gone and the agent stopped: no value in the agent's log, `/metrics`, any
/// Event of `namespaces`, kubelet's errors, or any file left under the world's dir.
pub async fn assert_nothing_leaked(
    world: &World,
    namespaces: &[String],
    metrics: &str,
    values: &[&str],
) {
    let log = world.agent.log_text();
    assert!(
        log.contains("TRACE"),
        "the agent did not log at trace level"
    );
    let mut places = vec![
        ("agent log".to_string(), log),
        ("/metrics".to_string(), metrics.to_string()),
    ];
    for ns in namespaces {
        for e in Api::<Event>::namespaced(world.cluster.client(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
        {
            let what = format!(
                "Event {} on {:?}",
                e.reason.unwrap_or_default(),
                e.involved_object.name
            );
            places.push((what, e.message.unwrap_or_default()));
        }
    }
    for e in world.kubelet.events() {
        places.push((format!("kubelet {} {}", e.reason, e.pod), e.message));
    }
    for path in files_under(world.dir.path()) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        places.push((
            path.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    let scanned: usize = places.iter().map(|(_, t)| t.len()).sum();
    eprintln!("leak scan: {} places, {scanned} bytes", places.len());
    let mut leaks = Vec::new();
    for (place, text) in &places {
        for v in values {
            if leak_forms(v).iter().any(|f| text.contains(f.as_str())) {
                leaks.push(format!("{place} contains {v}"));
            }
        }
    }
    assert!(leaks.is_empty(), "leaks: {leaks:#?}");
}
