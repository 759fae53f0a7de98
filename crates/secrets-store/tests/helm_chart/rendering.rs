//! What `helm lint` and `helm template` produce: the golden renderings, the static manifests
//! under `deploy/`, the chart's copy of the CRDs, and flags the agent accepts.

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use serde::Deserialize;

use crate::{chart_dir, helm, repo_root};

const REGENERATE: &str = "UPDATE_GOLDEN=1 cargo test -p secrets-store --test helm_chart";
/// Release name and namespace of the static manifests (what `kubectl apply` users get).
const STATIC_RELEASE: &str = "secrets-store-rs";
const STATIC_NAMESPACE: &str = "kube-system";

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| !v.is_empty() && v != "0")
}

/// `helm template` of the chart as the static release, with extra `--set` values.
fn render(sets: &[&str]) -> String {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        STATIC_RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        STATIC_NAMESPACE,
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    helm(&args)
}

/// Compares `actual` with the committed file `path` (or rewrites it under `UPDATE_GOLDEN`).
fn assert_current(path: &Path, actual: &str) {
    if updating() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} is out of date (first difference at line {}: expected {:?}, rendered {:?}).\n\
             Regenerate with: {REGENERATE}",
            path.display(),
            first + 1,
            expected.lines().nth(first).unwrap_or("<end of file>"),
            actual.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}

const HEADER: &str = "# Generated from charts/secrets-store-rs by `helm template`; do not edit.\n";

#[test]
fn helm_lint_passes_for_default_and_full_values() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    let out = helm(&["lint", "--strict", chart]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let out = helm(&[
        "lint",
        "--strict",
        chart,
        "--set",
        "syncSecret.enabled=true,enableSecretRotation=true,providerHealthCheck=true,aws.enabled=false,metrics.enabled=false,logFormatJSON=true,logVerbosity=5,aws.region=eu-west-1",
    ]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    // What a node without kube-proxy (the real test node) needs.
    let out = helm(&[
        "lint",
        "--strict",
        chart,
        "--set",
        "controller.enabled=true,controller.podlessSync.enabled=true",
    ]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let node_values = "hostNetwork=true,apiServer.host=127.0.0.1,apiServer.port=6443,serviceAccountTokenInSecrets=false,extraEnv[0].name=AWS_ENDPOINT_URL,extraEnv[0].value=http://127.0.0.1:5000";
    let out = helm(&["lint", "--strict", chart, "--set", node_values]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let out = render(&[node_values]);
    for want in [
        "hostNetwork: true",
        "dnsPolicy: ClusterFirstWithHostNet",
        "- name: KUBERNETES_SERVICE_HOST\n              value: \"127.0.0.1\"",
        "- name: KUBERNETES_SERVICE_PORT\n              value: \"6443\"",
        "- name: AWS_ENDPOINT_URL\n              value: http://127.0.0.1:5000",
        "serviceAccountTokenInSecrets: false",
    ] {
        assert!(out.contains(want), "{want} not in:\n{out}");
    }
}

#[test]
fn template_default_values_matches_golden() {
    let out = render(&[]);
    // The defaults are the secure ones: no Secret access, no rotation, one container.
    assert!(
        !out.contains("\"secrets\""),
        "Secret RBAC without syncSecret"
    );
    assert!(out.contains("requiresRepublish: false"));
    assert_eq!(out.matches("- name: secrets-store\n").count(), 1);
    assert_current(
        &chart_dir().join("tests/golden/default.yaml"),
        &format!("{HEADER}{out}"),
    );
}

#[test]
fn template_sync_and_rotation_matches_golden() {
    let out = render(&[
        "syncSecret.enabled=true",
        "enableSecretRotation=true",
        "rotationPollInterval=30s",
    ]);
    assert!(out.contains("requiresRepublish: true"));
    assert!(out.contains("- --enable-secret-sync"));
    assert!(out.contains("- --enable-secret-rotation"));
    assert!(out.contains("- --rotation-poll-interval=30s"));
    assert_current(
        &chart_dir().join("tests/golden/sync-rotation.yaml"),
        &format!("{HEADER}{out}"),
    );
}

/// The admission policies: the status-writers one by default, the rollout-only one with secret
/// sync (the only case the agent may patch workloads), each removable by its value.
#[test]
fn admission_policies_render_as_configured() {
    let policies = |sets: &[&str]| -> Vec<String> {
        serde_yaml::Deserializer::from_str(&render(sets))
            .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
            .filter(|d| {
                d.get("kind").and_then(|k| k.as_str()) == Some("ValidatingAdmissionPolicyBinding")
            })
            .filter_map(|d| Some(d.get("spec")?.get("policyName")?.as_str()?.to_string()))
            .collect()
    };
    let statuses = "secrets-store-rs-pod-status-writers";
    let rollout = "secrets-store-rs-rollout-only";
    let secrets = "secrets-store-rs-synced-secrets";
    assert_eq!(policies(&[]), [statuses]);
    assert_eq!(
        policies(&["syncSecret.enabled=true"]),
        [statuses, rollout, secrets]
    );
    assert_eq!(
        policies(&[
            "syncSecret.enabled=true",
            "admissionPolicies.podStatuses=false"
        ]),
        [rollout, secrets]
    );
    assert!(
        policies(&[
            "syncSecret.enabled=true",
            "admissionPolicies.podStatuses=false",
            "admissionPolicies.workloads=false",
            "admissionPolicies.secrets=false"
        ])
        .is_empty()
    );
    // With the controller it rolls (the node agents get no workload write), confined by the same
    // policy, and its Secret patches by its own; without secret sync too (managed Secrets may come
    // from elsewhere). nodeRollout=false leaves nobody to confine.
    let controller = "secrets-store-rs-controller-secrets";
    assert_eq!(
        policies(&["syncSecret.enabled=true", "controller.enabled=true"]),
        [statuses, rollout, controller, secrets]
    );
    assert_eq!(
        policies(&["controller.enabled=true"]),
        [statuses, rollout, controller]
    );
    assert_eq!(
        policies(&["syncSecret.enabled=true", "nodeRollout=false"]),
        [statuses, secrets]
    );
    assert_eq!(
        policies(&[
            "controller.enabled=true",
            "admissionPolicies.workloads=false"
        ]),
        [statuses]
    );
    // Pod-less sync: its token policies only with the controller and the feature both on, and
    // then the synced-secrets policy confines the controller's Secret writes (the
    // controller-secrets one, which allows no data change, does not apply: it writes data).
    let podless = [
        "secrets-store-rs-podless-token-subjects",
        "secrets-store-rs-podless-token-audience",
        secrets,
    ];
    for sets in [
        &["controller.podlessSync.enabled=true"][..],
        &["controller.enabled=true"][..],
    ] {
        let rendered = policies(sets);
        assert!(
            podless.iter().all(|p| !rendered.contains(&p.to_string())),
            "{sets:?}"
        );
    }
    let both = [
        "controller.enabled=true",
        "controller.podlessSync.enabled=true",
    ];
    let rendered = policies(&both);
    assert!(
        podless.iter().all(|p| rendered.contains(&p.to_string())),
        "{rendered:?}"
    );
    // They confine the controller's ServiceAccount, never the node agent's.
    let out = render(&both);
    assert_eq!(
        out.matches(r#""system:serviceaccount:kube-system:secrets-store-rs-controller""#)
            .count(),
        // The two token policies, synced-secrets and rollout-only.
        4,
        "{out}"
    );
    // Each names the release's ServiceAccount as the agent (status writers, rollout-only,
    // synced-secrets).
    let out = render(&["syncSecret.enabled=true"]);
    assert_eq!(
        out.matches(r#""system:serviceaccount:kube-system:secrets-store-rs""#)
            .count(),
        3,
        "{out}"
    );
}

/// With the controller: its Deployment, ServiceAccount, RBAC and policies; the node agents do not
/// roll (`--rollout=off`) and their ClusterRoles name no workload.
#[test]
fn template_controller_matches_golden() {
    let out = render(&["syncSecret.enabled=true", "controller.enabled=true"]);
    assert!(out.contains("- --rollout=off"));
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&out)
        .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
        .collect();
    let named = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| {
                d.get("kind").and_then(|k| k.as_str()) == Some(kind)
                    && d.get("metadata")
                        .and_then(|m| m.get("name"))
                        .and_then(|n| n.as_str())
                        == Some(name)
            })
            .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
            .clone()
    };
    for role in ["secrets-store-rs", "secrets-store-rs-sync"] {
        let rules = serde_yaml::to_string(&named("ClusterRole", role)).unwrap();
        for workload in ["deployments", "statefulsets", "daemonsets"] {
            assert!(
                !rules.contains(workload),
                "{role} names {workload}:\n{rules}"
            );
        }
    }
    let daemon_set: DaemonSet =
        serde_yaml::from_value(named("DaemonSet", "secrets-store-rs")).unwrap();
    let agent_args = daemon_set
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers
        .remove(0)
        .args
        .unwrap();
    assert!(
        agent_args.iter().any(|a| a == "--rollout=off"),
        "{agent_args:?}"
    );
    let run_agent = Command::new(env!("CARGO_BIN_EXE_secrets-store"))
        .args(&agent_args)
        .arg("--help")
        .env("KUBE_NODE_NAME", "n")
        .env("POD_NAMESPACE", "ns")
        .output()
        .unwrap();
    assert!(
        run_agent.status.success(),
        "secrets-store rejected the agent args {agent_args:?}:\n{}",
        String::from_utf8_lossy(&run_agent.stderr)
    );
    let deployment = named("Deployment", "secrets-store-rs-controller");
    let deployment: k8s_openapi::api::apps::v1::Deployment =
        serde_yaml::from_value(deployment).unwrap();
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let args = spec
        .template
        .spec
        .unwrap()
        .containers
        .remove(0)
        .args
        .unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_secrets-store"))
        .args(&args)
        .arg("--help")
        .env("POD_NAMESPACE", "ns")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "secrets-store rejected the controller args {args:?}:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_current(
        &chart_dir().join("tests/golden/controller.yaml"),
        &format!("{HEADER}{out}"),
    );
}

/// `deploy/secrets-store-rs.yaml` is the chart with default values, for `kubectl apply` users
/// (after `kubectl apply -f deploy/crds/`).
#[test]
fn static_manifests_are_current() {
    let out = render(&[]);
    assert_current(
        &repo_root().join("deploy/secrets-store-rs.yaml"),
        &format!("{HEADER}{out}"),
    );
}

/// The chart ships the CRDs the api crate generates (`make crds` writes `deploy/crds/`).
#[test]
fn chart_crds_are_the_generated_ones() {
    let generated = repo_root().join("deploy/crds");
    let copied = chart_dir().join("crds");
    let mut names: Vec<String> = std::fs::read_dir(&generated)
        .expect("deploy/crds")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    // Upstream's two and our own SecretProviderClassSync.
    assert_eq!(names.len(), 3, "expected three generated CRDs: {names:?}");
    for name in &names {
        let want = std::fs::read_to_string(generated.join(name)).unwrap();
        assert_current(&copied.join(name), &want);
    }
    let mut shipped: Vec<String> = std::fs::read_dir(&copied)
        .expect("chart crds/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    shipped.sort();
    assert_eq!(
        shipped, names,
        "the chart's crds/ must hold exactly deploy/crds/*.yaml; regenerate with: {REGENERATE}"
    );
}
/// Every flag the chart can render (all options on) is one `secrets-store node` accepts, with a
/// value its parser takes: clap stops at the first bad argument, before the trailing `--help`.
#[test]
fn every_rendered_flag_is_accepted_by_the_agent() {
    let out = render(&[
        "syncSecret.enabled=true",
        "enableSecretRotation=true",
        "rotationPollInterval=45s",
        "rotationSelfRefresh=false",
        "providerHealthCheck=true",
        "aws.enabled=false",
        "aws.region=eu-west-1",
        "logFormatJSON=true",
        "logVerbosity=5",
        "metrics.enabled=false",
        "maxCallRecvMsgSize=8388608",
    ]);
    let ds: DaemonSet = first_of_kind(&out, "DaemonSet");
    let args = first_container_args(ds.spec.unwrap().template);
    for flag in [
        "--enable-secret-sync",
        "--enable-secret-rotation",
        "--provider-health-check",
        "--no-aws-provider",
        "--log-format-json",
        "--metrics-addr=",
        "--rotation-self-refresh=false",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} rendered: {args:?}");
    }
    let run = |args: &[String]| {
        Command::new(env!("CARGO_BIN_EXE_secrets-store"))
            .args(args)
            .arg("--help")
            .env("KUBE_NODE_NAME", "n")
            .env("POD_NAMESPACE", "ns")
            .output()
            .unwrap()
    };
    let out = run(&args);
    assert!(
        out.status.success(),
        "secrets-store rejected the chart's args {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The check has teeth: an unknown flag fails the same way.
    let mut bad = args.clone();
    bad.push("--no-such-flag".into());
    assert!(!run(&bad).status.success());

    // The controller's Deployment, with every feature on.
    let out = render(&[
        "controller.enabled=true",
        "controller.podlessSync.enabled=true",
        "aws.region=eu-west-1",
        "logFormatJSON=true",
    ]);
    let deployment: k8s_openapi::api::apps::v1::Deployment = first_of_kind(&out, "Deployment");
    let args = first_container_args(deployment.spec.unwrap().template);
    assert!(args.iter().any(|a| a == "--podless-sync"), "{args:?}");
    let out = run(&args);
    assert!(
        out.status.success(),
        "secrets-store rejected the controller's args {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first object of `kind` in a rendering.
fn first_of_kind<T: serde::de::DeserializeOwned>(rendered: &str, kind: &str) -> T {
    let object = serde_yaml::Deserializer::from_str(rendered)
        .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
        .find(|d| d.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} rendered"));
    serde_yaml::from_value(object).unwrap()
}

/// The args of a pod template's first container.
fn first_container_args(template: k8s_openapi::api::core::v1::PodTemplateSpec) -> Vec<String> {
    template
        .spec
        .unwrap()
        .containers
        .remove(0)
        .args
        .unwrap_or_default()
}
