//! After the seed walk-through, with its Deployment gone: the same class kept in sync with no
//! pod at all, by the cluster controller (`controller.enabled`, `controller.podlessSync.enabled`)
//! running as a Deployment on the node from the same image as the agent.

use std::time::Instant;

use anyhow::{Context, Result};
use secrets_store_api::labels::{
    PODLESS_OPT_IN, PODLESS_OPT_IN_VALUE, PODLESS_REFRESH_INTERVAL, PODLESS_SERVICE_ACCOUNT,
};
use secrets_store_testenv::real_node::AgentRelease;
use secrets_store_testenv::{AccountId, free_port, seed};

use crate::commands::Demo;
use crate::{Steps, echo, note, show_helm};

/// The class's refresh interval: the shortest the controller accepts.
const REFRESH: &str = "30s";
const SERVICE_ACCOUNT: &str = "nginx-deployment-sa";
const CLASS: &str = "nginx-deployment-aws-secrets";
/// The controller pods' label (the chart's controller selector).
const CONTROLLER_PODS: &str = "app.kubernetes.io/name=secrets-store-rs-controller";

impl Demo<'_> {
    /// The pod-less steps; `account` holds the seed's secret (its value now `rotated-again`).
    pub(crate) async fn podless(
        &self,
        steps: &mut Steps,
        agent: &AgentRelease,
        account: &AccountId,
    ) -> Result<()> {
        let result = self.podless_steps(steps, agent, account).await;
        if result.is_err() {
            eprintln!("\n----- the controller's log (kubectl logs) -----");
            let log = self
                .kubectl_quiet(&[
                    "logs",
                    "--namespace",
                    agent.namespace(),
                    "-l",
                    CONTROLLER_PODS,
                    "--tail=60",
                ])
                .await
                .unwrap_or_else(|e| format!("(kubectl logs: {e:#})"));
            eprintln!("{log}");
        }
        result
    }

    async fn podless_steps(
        &self,
        steps: &mut Steps,
        agent: &AgentRelease,
        account: &AccountId,
    ) -> Result<()> {
        steps.start(
            "helm upgrade: the cluster controller, with sync without pods, as a Deployment on the node",
        );
        let sets = vec![
            "controller.enabled=true".to_string(),
            "controller.podlessSync.enabled=true".into(),
            "controller.replicas=1".into(),
            format!("controller.metricsPort={}", free_port()?),
            format!("controller.healthzPort={}", free_port()?),
            format!("aws.region={}", seed::REGION),
        ];
        note(
            "one replica with its own free ports: with hostNetwork (no kube-proxy here) a second replica on \
             this one node, or the agent, would bind the same host ports; the classes name no region, so \
             aws.region is the controller's default (a node agent reads the node's label instead)",
        );
        let (args, out) = agent
            .upgrade(self.node, &sets)
            .context("helm upgrade with the controller")?;
        show_helm(&args);
        echo(&out);
        self.kubectl(&[
            "get",
            "pods",
            "--namespace",
            agent.namespace(),
            "-o",
            "wide",
        ])
        .await?;

        steps.start(
            "Sync without a pod: the ServiceAccount lends its identity, the class opts in, foosecret comes back",
        );
        self.kubectl(&["get", "pods"]).await?;
        self.kubectl(&[
            "label",
            "serviceaccount",
            SERVICE_ACCOUNT,
            &format!("{PODLESS_OPT_IN}={PODLESS_OPT_IN_VALUE}"),
        ])
        .await?;
        self.kubectl(&[
            "annotate",
            "secretproviderclass",
            CLASS,
            &format!("{PODLESS_SERVICE_ACCOUNT}={SERVICE_ACCOUNT}"),
            &format!("{PODLESS_REFRESH_INTERVAL}={REFRESH}"),
        ])
        .await?;
        let started = Instant::now();
        self.wait("foosecret synced without a pod", || async {
            (self.synced_value(false).await.ok()? == "rotated-again").then_some(())
        })
        .await?;
        note(&format!(
            "foosecret written {:.1} s after the annotation, by the controller, with no pod in the namespace:",
            started.elapsed().as_secs_f64()
        ));
        self.kubectl(&[
            "get",
            "secret",
            "foosecret",
            "-o",
            "custom-columns=NAME:.metadata.name,TYPE:.type,OWNER:.metadata.ownerReferences[*].kind,OWNER-NAME:.metadata.ownerReferences[*].name",
        ])
        .await?;
        self.synced_value(true).await?;
        self.wait("the class's sync status Ready", || async {
            let ready = self
                .kubectl_quiet(&[
                    "get",
                    "spcsync",
                    CLASS,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])
                .await
                .ok()?;
            (ready == "True").then_some(())
        })
        .await?;
        self.kubectl(&["get", "spcsync"]).await?;

        steps.start(&format!(
            "Rotation without a pod: PutSecretValue; foosecret follows on the class's next refresh ({REFRESH}, jittered)"
        ));
        note(&format!(
            "aws --region {} secretsmanager put-secret-value --secret-id {} --secret-string rotated-podless",
            seed::REGION,
            seed::SECRET
        ));
        let rotated = Instant::now();
        seed::rotate(self.cluster, account, "rotated-podless").await;
        self.wait("foosecret to hold the rotated value", || async {
            (self.synced_value(false).await.ok()? == "rotated-podless").then_some(())
        })
        .await?;
        note(&format!(
            "foosecret changed {:.1} s after PutSecretValue",
            rotated.elapsed().as_secs_f64()
        ));
        self.synced_value(true).await?;
        self.kubectl(&[
            "get",
            "spcsync",
            CLASS,
            "-o",
            "custom-columns=NAME:.metadata.name,OBJECT:.status.objects[*].id,VERSION:.status.objects[*].version,LAST-SYNC:.status.lastSyncTime",
        ])
        .await?;
        note("the class owns the Secret: deleting it deletes foosecret (garbage collector)");
        self.kubectl(&["delete", "secretproviderclass", CLASS])
            .await?;
        self.foosecret_collected().await
    }
}
