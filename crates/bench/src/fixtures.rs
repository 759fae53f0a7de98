//! What the scenarios mount: one tenant = a namespace, an AWS account with N secrets, a
//! ServiceAccount annotated with a role, a SecretProviderClass listing the secrets, and pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use secrets_store_api::crd::SecretProviderClass;
use secrets_store_testenv::fixtures::{CsiDriverFixture, PodFixture};
use secrets_store_testenv::kubelet::tokens::{TokenAudience, pod_tokens};
use secrets_store_testenv::{AccountId, Cluster};

/// The driver name kubelet uses.
pub const DRIVER: &str = "secrets-store.csi.k8s.io";
/// The volume name in the benchmark pods.
pub const VOLUME: &str = "secrets";
/// The ServiceAccount the pods run as.
pub const SERVICE_ACCOUNT: &str = "bench-sa";
/// The SecretProviderClass the pods mount.
pub const CLASS: &str = "bench-class";

/// One namespace + AWS account worth of benchmark objects.
#[derive(Debug)]
pub struct Tenant {
    /// The namespace.
    pub namespace: String,
    /// The emulated AWS account holding the secrets.
    pub account: AccountId,
    /// Names of the Secrets Manager secrets the class lists.
    pub secrets: Vec<String>,
}

/// The CSIDriver both stacks are measured with: the chart's, with rotation on and one token
/// audience (sts.amazonaws.com) in the volume context, which upstream v1.6.0 reads too.
pub fn csi_driver() -> CsiDriverFixture {
    CsiDriverFixture::chart()
        .with_rotation(true)
        .with_token_audiences(&["sts.amazonaws.com"])
        .with_tokens_in_secrets(false)
}

/// Applies the cluster-wide CSIDriver object ([`csi_driver`]).
pub async fn ensure_csi_driver(cluster: &Cluster) -> anyhow::Result<()> {
    csi_driver().apply(&cluster.client()).await?;
    Ok(())
}

/// Creates a tenant whose class lists `n_secrets` Secrets Manager secrets.
pub async fn tenant(cluster: &Cluster, prefix: &str, n_secrets: usize) -> anyhow::Result<Tenant> {
    let namespace = cluster.new_namespace(prefix).await;
    let moto = cluster.moto();
    let account = moto.new_account();
    let sm = moto.sm_client(&account);
    let mut secrets = Vec::new();
    for i in 0..n_secrets {
        let name = format!("bench-secret-{i}");
        sm.create_secret()
            .name(&name)
            .secret_string(format!("benchmark-value-{i}"))
            .send()
            .await?;
        secrets.push(name);
    }
    let client = cluster.client();
    let pp = PostParams::default();
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(SERVICE_ACCOUNT.into()),
            annotations: Some(BTreeMap::from([(
                "eks.amazonaws.com/role-arn".to_string(),
                account.role_arn("bench-role"),
            )])),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .create(&pp, &sa)
        .await?;
    Api::<SecretProviderClass>::namespaced(client, &namespace)
        .create(&pp, &class(CLASS, &secrets)?)
        .await?;
    Ok(Tenant {
        namespace,
        account,
        secrets,
    })
}

/// A SecretProviderClass for the AWS provider listing `secrets`.
pub fn class(name: &str, secrets: &[String]) -> anyhow::Result<SecretProviderClass> {
    let objects: String = secrets
        .iter()
        .map(|s| format!("- objectName: \"{s}\"\n  objectType: \"secretsmanager\"\n"))
        .collect();
    let value = serde_json::json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": name},
        "spec": {"provider": "aws", "parameters": {"objects": objects}},
    });
    Ok(serde_json::from_value(value)?)
}

/// A pod on the test node mounting the tenant's class (already bound: the scheduler is not
/// part of what is measured).
pub fn pod(name: &str, node: &str) -> anyhow::Result<Pod> {
    Ok(PodFixture::new(name)
        .on_node(node)
        .service_account(SERVICE_ACCOUNT)
        .image("registry.invalid/app:1")
        .with_csi_volume(VOLUME, CLASS)
        .mounted_at(VOLUME, "/mnt/secrets-store")
        .build())
}

/// The `csi.storage.k8s.io/serviceAccount.tokens` value kubelet passes for `pod`: a token for
/// the `sts.amazonaws.com` audience bound to the pod.
pub async fn tokens_attribute(cluster: &Cluster, pod: &Pod) -> anyhow::Result<String> {
    Ok(pod_tokens(
        &cluster.client(),
        pod,
        &[TokenAudience {
            audience: "sts.amazonaws.com",
            expiration_seconds: Some(3600),
        }],
    )
    .await?)
}

/// Sum of `apiserver_request_total` over all label sets, read from the apiserver's `/metrics`
/// with the admin client: every request any client made so far.
pub async fn apiserver_requests(cluster: &Cluster) -> anyhow::Result<f64> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = cluster.client().request_text(request).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The audit log's current length: where a span's requests start.
pub fn audit_log_len(cluster: &Cluster) -> u64 {
    std::fs::metadata(cluster.audit_log())
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Requests in the audit log after byte `offset` whose user agent `owns`, per
/// "VERB resource[/subresource]".
pub fn audited_requests(
    cluster: &Cluster,
    offset: u64,
    owns: impl Fn(&str) -> bool,
) -> anyhow::Result<BTreeMap<String, u64>> {
    use std::io::{BufRead, Seek, SeekFrom};
    let mut file = std::fs::File::open(cluster.audit_log())?;
    file.seek(SeekFrom::Start(offset))?;
    let mut counts = BTreeMap::new();
    for line in std::io::BufReader::new(file).lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line?) else {
            continue; // a line still being written
        };
        let agent = event["userAgent"].as_str().unwrap_or("");
        if !owns(agent) {
            continue;
        }
        let verb = event["verb"].as_str().unwrap_or("?");
        let object = &event["objectRef"];
        let mut kind = format!("{verb} {}", object["resource"].as_str().unwrap_or("-"));
        if let Some(sub) = object["subresource"].as_str() {
            kind = format!("{kind}/{sub}");
        }
        *counts.entry(kind).or_insert(0) += 1;
    }
    Ok(counts)
}
