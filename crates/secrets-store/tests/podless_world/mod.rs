//! What the pod-less sync tests share: the chart installed once per test binary, the sync running
//! as the controller's ServiceAccount, and readers of what it wrote.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::events::Reporter;
use kube::{Client, ResourceExt};
use prometheus_client::registry::Registry;
use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassSync};
use secrets_store_api::labels::{
    PODLESS_OPT_IN, PODLESS_REFRESH_INTERVAL, PODLESS_SERVICE_ACCOUNT,
};
use secrets_store_provider_aws::{AwsProvider, AwsProviderConfig};
use secrets_store_sync::podless::{
    self, PodlessConfig, PodlessContext, PodlessMetrics, RefreshBounds,
};
use secrets_store_testenv::{Cluster, seed};

use crate::chart;

pub const WAIT: Duration = Duration::from_secs(90);
/// The seed's ServiceAccount and class.
pub const SEED_SA: &str = "nginx-deployment-sa";
pub const SEED_CLASS: &str = "nginx-deployment-aws-secrets";

/// The chart, installed once per test binary with the controller's pod-less sync on, in its own
/// namespace: every policy that confines the controller applies (the workloads policies include
/// its Secret writes); the pod-status policy is off, nothing here is a node agent.
pub fn release() -> &'static str {
    static RELEASE: OnceLock<String> = OnceLock::new();
    RELEASE.get_or_init(|| {
        let cluster = Cluster::shared();
        let ns = format!("podless-ctl-{}", std::process::id());
        let chart = chart::chart_dir();
        let kubeconfig = cluster.kubeconfig_path().to_str().unwrap().to_string();
        chart::helm(&[
            "install",
            chart::NAME,
            chart.to_str().unwrap(),
            "--namespace",
            &ns,
            "--create-namespace",
            "--kubeconfig",
            &kubeconfig,
            "--set",
            "controller.enabled=true,controller.podlessSync.enabled=true,admissionPolicies.podStatuses=false",
        ]);
        ns
    })
}

/// A client acting as the controller's ServiceAccount of the release.
pub async fn as_controller(cluster: &Cluster) -> Client {
    let ns = release();
    chart::impersonating(
        cluster,
        &format!("system:serviceaccount:{ns}:{}-controller", chart::NAME),
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
    )
    .await
}

/// The pod-less sync, running as the controller, with the in-process AWS provider on moto.
pub struct Controller {
    pub ctx: Arc<PodlessContext>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Controller {
    /// Starts it against AWS at `endpoint` (moto, or a counting proxy in front of it).
    pub async fn start(cluster: &'static Cluster, endpoint: String) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let client = as_controller(cluster).await;
        let provider = AwsProvider::new(
            AwsProviderConfig {
                default_region: Some(seed::REGION.into()),
                endpoint_url: Some(endpoint),
                ..AwsProviderConfig::default()
            },
            client.clone(),
            secrets_store_provider_aws::Metrics::default(),
        )
        .await;
        let config = PodlessConfig {
            bounds: RefreshBounds {
                min: Duration::from_secs(1),
                ..RefreshBounds::default()
            },
            ..PodlessConfig::default()
        };
        let metrics = PodlessMetrics::default();
        metrics.register(&mut Registry::default());
        let ctx = PodlessContext::new(
            client,
            Arc::new(provider),
            config,
            metrics,
            Reporter {
                controller: "secrets-store-rs-controller".into(),
                instance: None,
            },
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(podless::run(ctx.clone(), async move {
            let _ = stopped.await;
        }));
        Self {
            ctx,
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap();
    }
}

/// The seed's ServiceAccount with the role ARN, opted in or not.
pub async fn service_account(client: &Client, ns: &str, role: &str, opted_in: bool) {
    let mut sa: ServiceAccount =
        serde_yaml::from_str(&seed::file("serviceaccount.yaml").replace("ROLE_ARN", role)).unwrap();
    if opted_in {
        sa.labels_mut().insert(PODLESS_OPT_IN.into(), "true".into());
    }
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
}

/// The seed's SecretProviderClass, verbatim but for the two opt-in annotations.
pub async fn podless_class(client: &Client, ns: &str, every: &str) -> SecretProviderClass {
    let mut class: SecretProviderClass =
        serde_yaml::from_str(&seed::file("secretproviderclass.yaml")).unwrap();
    let annotations = class.annotations_mut();
    annotations.insert(PODLESS_SERVICE_ACCOUNT.into(), SEED_SA.into());
    annotations.insert(PODLESS_REFRESH_INTERVAL.into(), every.into());
    Api::<SecretProviderClass>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &class)
        .await
        .unwrap()
}

pub async fn secret_value(client: &Client, ns: &str, name: &str, key: &str) -> Option<String> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()?;
    let bytes = secret.data?.get(key)?.0.clone();
    Some(String::from_utf8(bytes).unwrap())
}

/// The class's `SecretProviderClassSync` condition `type_`: (status, reason, message).
pub async fn condition(
    client: &Client,
    ns: &str,
    class: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let sync = Api::<SecretProviderClassSync>::namespaced(client.clone(), ns)
        .get_opt(class)
        .await
        .unwrap()?;
    let c = sync
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

/// TokenRequests for `ns/sa` in the apiserver's audit log (any outcome).
pub fn token_requests_in_audit_log(cluster: &Cluster, ns: &str, sa: &str) -> usize {
    let log = std::fs::read_to_string(cluster.audit_log()).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            let o = &e["objectRef"];
            o["resource"] == "serviceaccounts"
                && o["subresource"] == "token"
                && o["namespace"] == ns
                && o["name"] == sa
        })
        .count()
}
