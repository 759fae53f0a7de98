//! Scenario 9: sync without pods at scale. The controller binary (`secrets-store controller
//! --podless-sync`, the build the runner sits next to) keeps `classes` SecretProviderClasses of
//! `secrets` Secrets Manager secrets each, spread over `namespaces` namespaces (one opted-in
//! ServiceAccount, hence one identity, per namespace), with no pod anywhere. Counted: AWS calls
//! (through a counting proxy in front of moto) of the first sync and of one refresh of every
//! class, and the controller's resident memory (`/proc/<pid>/status`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassSync};
use secrets_store_api::labels::{
    PODLESS_OPT_IN, PODLESS_OPT_IN_VALUE, PODLESS_REFRESH_INTERVAL, PODLESS_SERVICE_ACCOUNT,
};
use secrets_store_testenv::{Cluster, free_port};

use crate::procfs::{self, Memory};
use crate::report::mib;

/// The class's refresh interval: the shortest the controller accepts, so a round fits a run.
const REFRESH: &str = "30s";
/// Requests in flight while the fixtures are created.
const SETUP_CONCURRENCY: usize = 16;
/// How long the first sync of every class and one refresh round may take.
const WAIT: Duration = Duration::from_secs(600);
/// Successful reconciles as the controller's `/metrics` shows them.
const OK_RECONCILES: &str = "podless_sync_reconciles_total{result=\"ok\"}";

/// Options of scenario 9 (flattened into the runner's).
#[derive(Debug, clap::Args)]
pub struct PodlessArgs {
    /// Scenario 9: pod-less SecretProviderClasses in all.
    #[arg(long, default_value_t = 1_000)]
    pub podless_classes: usize,
    /// Scenario 9: namespaces they are spread over (one opted-in ServiceAccount each).
    #[arg(long, default_value_t = 50)]
    pub podless_namespaces: usize,
    /// Scenario 9: Secrets Manager secrets per class (one synced Secret with that many keys).
    #[arg(long, default_value_t = 5)]
    pub podless_secrets: usize,
}

/// What scenario 9 measured.
#[derive(Debug)]
struct Figures {
    first_sync: Duration,
    first_calls: BTreeMap<String, u64>,
    round: Duration,
    refreshes: u64,
    round_calls: BTreeMap<String, u64>,
    idle: Memory,
    synced: Memory,
    after_round: Memory,
}

/// A class of namespace `ns_index` listing its `secrets` secrets, synced to one Secret.
fn class(
    ns_index: usize,
    class_index: usize,
    secrets: usize,
) -> anyhow::Result<SecretProviderClass> {
    let names: Vec<String> = (0..secrets)
        .map(|k| secret_name(ns_index, class_index, k))
        .collect();
    let objects: String = names
        .iter()
        .map(|n| format!("- objectName: \"{n}\"\n  objectType: \"secretsmanager\"\n"))
        .collect();
    let data: Vec<serde_json::Value> = names
        .iter()
        .map(|n| serde_json::json!({"objectName": n, "key": n}))
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("podless-{class_index}"),
            "annotations": {
                PODLESS_SERVICE_ACCOUNT: "podless-sa",
                PODLESS_REFRESH_INTERVAL: REFRESH,
            },
        },
        "spec": {
            "provider": "aws",
            "parameters": {"objects": objects},
            "secretObjects": [{
                "secretName": format!("synced-{class_index}"),
                "type": "Opaque",
                "data": data,
            }],
        },
    }))?)
}

fn secret_name(ns_index: usize, class_index: usize, k: usize) -> String {
    format!("podless-{ns_index}-{class_index}-{k}")
}

/// The controller's metric `name` (a sample line's name with its labels), if served.
fn metric(port: u16, name: &str) -> Option<f64> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `check` every second until it holds, for at most [`WAIT`].
async fn until<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await? {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// Runs scenario 9 and returns its table (markdown).
pub async fn run(
    cluster: &'static Cluster,
    binary: &Path,
    args: &PodlessArgs,
) -> anyhow::Result<String> {
    let per_namespace = args
        .podless_classes
        .div_ceil(args.podless_namespaces.max(1));
    let classes = per_namespace * args.podless_namespaces;
    eprintln!(
        "scenario 9: {classes} pod-less classes x {} secrets in {} namespaces",
        args.podless_secrets, args.podless_namespaces
    );
    let moto = cluster.moto();
    let account = moto.new_account();
    let sm = moto.sm_client(&account);
    let names: Vec<String> = (0..args.podless_namespaces)
        .flat_map(|n| {
            (0..per_namespace)
                .flat_map(move |c| (0..args.podless_secrets).map(move |k| secret_name(n, c, k)))
        })
        .collect();
    stream::iter(names)
        .map(|name| {
            let sm = sm.clone();
            async move {
                sm.create_secret()
                    .secret_string(format!("value-of-{name}"))
                    .name(name)
                    .send()
                    .await
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;

    // The controller, started before any class exists: its idle memory first.
    let counter = moto.new_call_counter().await?;
    let metrics_port = free_port()?;
    let release_ns = cluster.new_namespace("bench-podless-ctl").await;
    let mut cmd = Command::new(binary);
    cmd.arg("controller")
        .args(["--namespace", &release_ns, "--podless-sync"])
        .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
        .arg(format!("--healthz-addr=127.0.0.1:{}", free_port()?))
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .env("AWS_ENDPOINT_URL", counter.endpoint())
        .env("AWS_REGION", secrets_store_testenv::seed::REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn");
    let controller = cluster.spawn("bench-podless-controller", cmd)?;
    until("the controller leading", || async {
        Ok(metric(metrics_port, "controller_leader") == Some(1.0))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = procfs::memory(controller.pid())?;

    let client = cluster.client();
    let mut namespaces = Vec::new();
    for _ in 0..args.podless_namespaces {
        let ns = cluster.new_namespace("bench-podless").await;
        let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "podless-sa",
                "labels": {PODLESS_OPT_IN: PODLESS_OPT_IN_VALUE},
                "annotations": {"eks.amazonaws.com/role-arn": account.role_arn("bench-podless")},
            },
        }))?;
        Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &sa)
            .await?;
        namespaces.push(ns);
    }
    let started = Instant::now();
    let objects: Vec<(usize, usize)> = (0..args.podless_namespaces)
        .flat_map(|n| (0..per_namespace).map(move |c| (n, c)))
        .collect();
    stream::iter(objects)
        .map(|(n, c)| {
            let api = Api::<SecretProviderClass>::namespaced(client.clone(), &namespaces[n]);
            async move {
                api.create(&PostParams::default(), &class(n, c, args.podless_secrets)?)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let syncs: Api<SecretProviderClassSync> = Api::all(client.clone());
    until("every class Ready", || async {
        let ready = syncs
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|s| {
                s.status.as_ref().is_some_and(|st| {
                    st.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        Ok(ready >= classes)
    })
    .await?;
    let first_sync = started.elapsed();
    let first_calls = counter.calls();
    let synced = procfs::memory(controller.pid())?;

    // One refresh round: as many successful reconciles as there are classes.
    let ok_before = metric(metrics_port, OK_RECONCILES).unwrap_or(0.0);
    let round_started = Instant::now();
    until("a refresh of every class", || async {
        Ok(metric(metrics_port, OK_RECONCILES).unwrap_or(0.0) >= ok_before + classes as f64)
    })
    .await?;
    let round = round_started.elapsed();
    let refreshes = (metric(metrics_port, OK_RECONCILES).unwrap_or(0.0) - ok_before) as u64;
    let after = counter.calls();
    let after_round = procfs::memory(controller.pid())?;
    controller.stop();
    let round_calls: BTreeMap<String, u64> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - first_calls.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();

    let all: Api<Namespace> = Api::all(client);
    for ns in namespaces.iter().chain([&release_ns]) {
        all.delete(ns, &DeleteParams::default()).await?;
    }
    let figures = Figures {
        first_sync,
        first_calls,
        round,
        refreshes,
        round_calls,
        idle,
        synced,
        after_round,
    };
    Ok(table(args, classes, &figures))
}

fn calls_line(calls: &BTreeMap<String, u64>) -> String {
    calls
        .iter()
        .map(|(k, v)| format!("{v} {}", k.rsplit('.').next().unwrap_or(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// External Secrets Operator's documented cost, for the same classes as ExternalSecrets (one
/// ExternalSecret per class, one `spec.data` entry per secret). Not measured here: from its API
/// reference ("the amount of time before the values are read again from the SecretStore
/// provider", per ExternalSecret), a maintainer's answer in external-secrets#1769 (a 1m interval
/// makes one call per minute per ExternalSecret) and external-secrets#114 (CloudTrail shows one
/// Secrets Manager request per `spec.data` entry).
fn eso_documented(classes: usize, secrets: usize) -> String {
    format!(
        "at least {classes} provider fetches per refresh interval (one per ExternalSecret); \
         {} GetSecretValue if each of the {secrets} secrets is a `spec.data` entry (external-secrets#114)",
        classes * secrets
    )
}

fn table(args: &PodlessArgs, classes: usize, f: &Figures) -> String {
    let total = |calls: &BTreeMap<String, u64>| calls.values().sum::<u64>();
    let round_total = total(&f.round_calls);
    let per_refresh = round_total as f64 / f.refreshes.max(1) as f64;
    let secrets = classes * args.podless_secrets;
    let mut out = format!(
        "Scenario 9: {classes} pod-less classes x {} secrets ({secrets} secrets) in {} namespaces, refresh {REFRESH}\n\n\
         | | ours, measured (`secrets-store controller --podless-sync`) | External Secrets Operator, from its docs and issues (not measured) |\n|---|---|---|\n",
        args.podless_secrets, args.podless_namespaces
    );
    let mut row =
        |k: &str, ours: String, eso: &str| out.push_str(&format!("| {k} | {ours} | {eso} |\n"));
    row(
        "first sync of every class",
        format!(
            "{:.1} s; {} AWS calls ({})",
            f.first_sync.as_secs_f64(),
            total(&f.first_calls),
            calls_line(&f.first_calls)
        ),
        "-",
    );
    row(
        "one refresh of every class",
        format!(
            "{} refreshes in {:.1} s; {round_total} AWS calls ({})",
            f.refreshes,
            f.round.as_secs_f64(),
            calls_line(&f.round_calls)
        ),
        &eso_documented(classes, args.podless_secrets),
    );
    row(
        "AWS calls per class refresh",
        format!("{per_refresh:.2}"),
        &format!("1 to {}", args.podless_secrets),
    );
    row(
        "controller VmRSS: idle / all synced / after the round (VmHWM)",
        format!(
            "{} / {} / {} ({})",
            mib(f.idle.rss_kib),
            mib(f.synced.rss_kib),
            mib(f.after_round.rss_kib),
            mib(f.after_round.hwm_kib)
        ),
        "-",
    );
    out
}
