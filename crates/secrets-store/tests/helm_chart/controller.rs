//! The controller binary running as the chart's controller ServiceAccount (impersonated), under
//! the chart's RBAC and admission policies: what it needs is enough to lead and roll.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use secrets_store_testenv::{Cluster, eventually};

use crate::NAME;
use crate::chart::controller_kubeconfig;
use crate::controller_proc::ControllerProc;

const WAIT: Duration = Duration::from_secs(90);
const RECORDED: &str = "secrets-store.csi.x-k8s.io/rolled-out-digest";
const DIGEST: &str = "secrets-store.csi.x-k8s.io/secret-digest-chart-synced";

/// With the chart installed (controller.enabled) in `ns`: the controller, as its own identity,
/// takes the Lease, records a managed Secret of `workload_ns` at first sight, and rolls an
/// opted-in Deployment when the Secret changes.
pub async fn controller_leads_and_rolls_as_its_chart_identity(
    cluster: &'static Cluster,
    ns: &str,
    workload_ns: &str,
) {
    let admin = cluster.client();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = controller_kubeconfig(cluster, ns, dir.path());
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "chart-roll", "annotations": {
            "secrets-store.csi.x-k8s.io/rollout-on-secret-change": "true"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "chart-roll"}},
            "template": {
                "metadata": {"labels": {"app": "chart-roll"}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.14.2", "envFrom": [
                    {"secretRef": {"name": "chart-synced"}}]}]},
            },
        },
    }))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), workload_ns);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "chart-synced", "labels": {"secrets-store.csi.k8s.io/managed": "true"}},
        "data": {"k": "djE="},
    }))
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), workload_ns);
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let controller = ControllerProc::start_as(cluster, &kubeconfig, ns, "chart-identity");
    let lease = format!("{NAME}-controller");
    eventually(WAIT, "the controller holding the chart's Lease", || async {
        let holder = Api::<Lease>::namespaced(admin.clone(), ns)
            .get_opt(&lease)
            .await
            .unwrap()?
            .spec?
            .holder_identity?;
        controller.is(&holder).then_some(())
    })
    .await;
    let recorded = || async {
        secrets
            .get("chart-synced")
            .await
            .unwrap()
            .metadata
            .annotations
            .unwrap_or_default()
            .get(RECORDED)
            .cloned()
    };
    let first = eventually(WAIT, "the first-sight record", || async {
        recorded().await
    })
    .await;
    secrets
        .patch(
            "chart-synced",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"k": "djI="}})),
        )
        .await
        .unwrap();
    let template_digest = || async {
        let template = deployments.get("chart-roll").await.unwrap().spec?.template;
        template.metadata?.annotations?.get(DIGEST).cloned()
    };
    eventually(WAIT, "the Deployment rolled by the controller", || async {
        let now = recorded().await?;
        (now != first && template_digest().await.as_deref() == Some(now.as_str())).then_some(())
    })
    .await;
    let log = controller.log_text();
    assert!(
        !log.contains("403") && !log.contains("Forbidden"),
        "the controller was refused something:\n{log}"
    );
}
