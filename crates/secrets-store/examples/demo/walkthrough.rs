//! The seed walk-through's steps on the node: install, AWS, the manifests, pods, rotation,
//! rollout, deletion, uninstall.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use secrets_store_testenv::real_node::{AgentChart, AgentRelease};
use secrets_store_testenv::{AccountId, seed};

use crate::commands::Demo;
use crate::{
    KUBELET_SYNC, ROLLOUT_ANNOTATION, ROTATION_POLL, Steps, echo, note, show, show_helm, shown_path,
};

impl Demo<'_> {
    pub(crate) async fn walkthrough(&self, steps: &mut Steps) -> Result<()> {
        let node = self.node;
        show(&format!("kubectl get node {} -o wide", node.name()));
        echo(
            &self
                .kubectl_quiet(&["get", "node", node.name(), "-o", "wide"])
                .await?,
        );

        steps.start(
            "helm install secrets-store charts/secrets-store-rs: one chart instead of the walk-through's two",
        );
        let agent = node
            .install_agent(&AgentChart {
                rotation_poll_interval: ROTATION_POLL.into(),
                rotation_self_refresh: true,
                aws_endpoint: self.cluster.moto().endpoint(),
                extra_values: Vec::new(),
            })
            .await
            .context("helm install of charts/secrets-store-rs on the node")?;
        show_helm_install(&agent);
        echo(agent.install_output());
        let result = async {
            let account = self.with_agent(steps, &agent).await?;
            self.podless(steps, &agent, &account).await
        }
        .await;
        if result.is_err() {
            eprintln!(
                "\n----- the agent's log (kubectl logs; its INFO, WARN and ERROR lines and its own DEBUG lines) -----"
            );
            eprintln!("{}", agent_log_tail(&self.agent_log(&agent).await, 100));
            return result;
        }

        steps.start("helm uninstall: the DaemonSet pod goes, kubelet unregisters the driver");
        let namespace = agent.namespace().to_string();
        show(&format!(
            "helm uninstall secrets-store --namespace {namespace} --wait --timeout 120s"
        ));
        echo(&agent.uninstall(node).context("helm uninstall")?);
        self.wait_for_pods(&["--namespace", &namespace], 0, &BTreeSet::new())
            .await?;
        self.wait("kubelet to unregister the driver", || async {
            let drivers = self
                .kubectl_quiet(&[
                    "get",
                    "csinode",
                    node.name(),
                    "-o",
                    "jsonpath={.spec.drivers}",
                ])
                .await
                .ok()?;
            (!drivers.contains("secrets-store.csi.k8s.io")).then_some(())
        })
        .await?;
        self.kubectl(&["get", "csinode", node.name()]).await?;
        Ok(())
    }

    pub(crate) async fn with_agent(
        &self,
        steps: &mut Steps,
        agent: &AgentRelease,
    ) -> Result<AccountId> {
        let node = self.node;
        note("the DaemonSet's pod runs on the node; kubelet registered the driver through it:");
        self.kubectl(&["get", "pods", "-A", "-o", "wide"]).await?;
        let csinode = self
            .kubectl(&["get", "csinode", node.name(), "-o", "yaml"])
            .await?;
        ensure!(
            csinode.contains("name: secrets-store.csi.k8s.io"),
            "the driver is not on CSINode {}",
            node.name()
        );
        let (_, restarts) = agent
            .container(node)
            .await?
            .context("the agent container is not running")?;
        ensure!(
            restarts == 0,
            "the agent container restarted {restarts} times"
        );

        steps.start("AWS: the secret CSI-driver-test-secret = secretkey, the IAM policy and role");
        let account = self.cluster.moto().new_account();
        note(&format!(
            "aws --region {} secretsmanager create-secret --name {} --secret-string secretkey",
            seed::REGION,
            seed::SECRET
        ));
        note(&format!(
            "aws --region {} iam create-policy --policy-name {} --policy-document file://examples/seed/policy.json",
            seed::REGION,
            seed::POLICY
        ));
        note(&format!(
            "eksctl create iamserviceaccount --name nginx-deployment-sa --attach-policy-arn <policy ARN> ...  (here: the role {}, the ServiceAccount comes next)",
            seed::ROLE
        ));
        let role_arn = seed::seed_aws(self.cluster, &account, "secretkey").await;
        self.show_aws(&account, &role_arn).await?;

        steps.start("kubectl apply -f examples/seed/: the ServiceAccount, SecretProviderClass and Deployment, verbatim");
        let sa = node.node_dir().join("serviceaccount.yaml");
        std::fs::write(
            &sa,
            seed::file("serviceaccount.yaml").replace("ROLE_ARN", &role_arn),
        )
        .with_context(|| format!("writing {}", sa.display()))?;
        note(&format!(
            "examples/seed/serviceaccount.yaml with ROLE_ARN = {role_arn}:"
        ));
        self.kubectl(&["apply", "-f", &sa.display().to_string()])
            .await?;
        show("kubectl get sa -n default nginx-deployment-sa -o yaml | grep role-arn");
        let yaml = self
            .kubectl_quiet(&[
                "get",
                "sa",
                "-n",
                "default",
                "nginx-deployment-sa",
                "-o",
                "yaml",
            ])
            .await?;
        for line in yaml.lines().filter(|l| l.contains("role-arn")) {
            println!("{line}");
        }
        for file in ["secretproviderclass.yaml", "test-nginx.yaml"] {
            let path = seed::dir().join(file);
            self.kubectl_as(
                &format!("apply -f {}", shown_path(&path)),
                &["apply", "-f", &path.display().to_string()],
            )
            .await?;
        }

        steps.start(
            "3 pods Running: the file in each, SECRET_API_KEY in each container's env, foosecret",
        );
        let pods = self.wait_for_pods(&[], 3, &BTreeSet::new()).await?;
        for pod in &pods {
            let file = self.cat_secret_file(pod).await?;
            ensure!(file == "secretkey", "{pod}: the file holds something else");
            let env = self.env_secret(pod).await?;
            ensure!(
                env == "SECRET_API_KEY=secretkey",
                "{pod}: wrong SECRET_API_KEY"
            );
        }
        self.kubectl(&["get", "secret", "foosecret"]).await?;
        self.kubectl(&[
            "get",
            "secret",
            "foosecret",
            "-o",
            "custom-columns=NAME:.metadata.name,LABELS:.metadata.labels,OWNER:.metadata.ownerReferences[*].kind,OWNER-NAME:.metadata.ownerReferences[*].name",
        ])
        .await?;
        let errors = self
            .kubectl_quiet(&[
                "get",
                "events",
                "--field-selector=reason=Failed",
                "-o",
                "name",
            ])
            .await?;
        ensure!(
            errors.trim().is_empty(),
            "kubelet reported failed containers: {errors}"
        );
        note(
            "foosecret existed before any container needed it (no Failed event, no CreateContainerConfigError); \
             owned by the pods' ReplicaSet, it goes with the Deployment, not with its last pod",
        );

        steps.start("Rotation: PutSecretValue in AWS; the file and foosecret follow on the rotation poll interval");
        note(&format!(
            "aws --region {} secretsmanager put-secret-value --secret-id {} --secret-string rotated-value",
            seed::REGION,
            seed::SECRET
        ));
        let rotated = Instant::now();
        seed::rotate(self.cluster, &account, "rotated-value").await;
        self.wait_for_value(&pods, "rotated-value").await?;
        note(&format!(
            "all 3 files and foosecret changed {:.1} s after PutSecretValue (rotationPollInterval {ROTATION_POLL}, kubelet republish every {} s)",
            rotated.elapsed().as_secs_f64(),
            KUBELET_SYNC.as_secs()
        ));
        for pod in &pods {
            self.cat_secret_file(pod).await?;
        }
        self.synced_value(true).await?;
        note("env vars never change in a running container:");
        self.env_secret(&pods[0]).await?;

        steps.start(
            "Rollout on change: the Deployment opts in; the next rotation rolls its pods once",
        );
        self.kubectl(&[
            "annotate",
            "deployment",
            seed::DEPLOYMENT,
            &format!("{ROLLOUT_ANNOTATION}=true"),
        ])
        .await?;
        note(&format!(
            "aws --region {} secretsmanager put-secret-value --secret-id {} --secret-string rotated-again",
            seed::REGION,
            seed::SECRET
        ));
        seed::rotate(self.cluster, &account, "rotated-again").await;
        let old: BTreeSet<String> = pods.iter().cloned().collect();
        let pods = self.wait_for_pods(&[], 3, &old).await?;
        for pod in &pods {
            let env = self.env_secret(pod).await?;
            ensure!(
                env == "SECRET_API_KEY=rotated-again",
                "{pod}: the rolled pod has a stale SECRET_API_KEY"
            );
        }
        self.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "reason=SecretChangedRollout",
        ])
        .await?;

        steps.start(
            "kubectl delete deployment: pods gone, volumes unmounted, foosecret garbage-collected",
        );
        let uids = self.pod_uids().await?;
        let mounted = self.pod_mounts(&uids);
        ensure!(
            !mounted.is_empty(),
            "no volume of the seed pods is mounted under {}",
            node.kubelet_dir().display()
        );
        note(&format!(
            "the pods' volumes mounted under kubelet's root dir {} now:",
            node.kubelet_dir().display()
        ));
        for m in &mounted {
            println!(
                "{}",
                m.strip_prefix(node.kubelet_dir()).unwrap_or(m).display()
            );
        }
        self.kubectl(&["delete", "deployment", seed::DEPLOYMENT])
            .await?;
        self.wait_for_pods(&[], 0, &BTreeSet::new()).await?;
        self.wait("the pods' volumes to be unmounted", || async {
            self.pod_mounts(&uids).is_empty().then_some(())
        })
        .await?;
        note(&format!(
            "mounts under the pods' kubelet dirs: {}",
            self.pod_mounts(&uids).len()
        ));
        self.foosecret_collected().await?;
        Ok(account)
    }

    /// The AWS side as moto has it: the secret's ARN, the policy attached to the role.
    pub(crate) async fn show_aws(&self, account: &AccountId, role_arn: &str) -> Result<()> {
        let moto = self.cluster.moto();
        let secret = moto
            .sm_client(account)
            .describe_secret()
            .secret_id(seed::SECRET)
            .send()
            .await
            .context("DescribeSecret")?;
        let attached = moto
            .iam_client(account)
            .list_attached_role_policies()
            .role_name(seed::ROLE)
            .send()
            .await
            .context("ListAttachedRolePolicies")?;
        let policies: Vec<&str> = attached
            .attached_policies()
            .iter()
            .filter_map(|p| p.policy_arn())
            .collect();
        println!("secret  {}", secret.arn().unwrap_or_default());
        println!(
            "policy  {}  (secretsmanager:GetSecretValue, DescribeSecret on that ARN)",
            policies.join(", ")
        );
        println!("role    {role_arn}  (trusts the cluster's ServiceAccount tokens, IRSA)");
        Ok(())
    }
}

/// The last `lines` lines of the agent's log without the DEBUG/TRACE lines of its dependencies
/// (the chart maps `logVerbosity` >= 1 to `RUST_LOG=debug` for every crate: h2, hpack, hyper).
pub(crate) fn agent_log_tail(log: &str, lines: usize) -> String {
    let plain = |line: &str| {
        let mut out = String::with_capacity(line.len());
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                // Skip a CSI sequence: ESC [ ... final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) && c != '[' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    let kept: Vec<String> = log
        .lines()
        .map(plain)
        .filter(|l| {
            !(l.contains(" DEBUG ") || l.contains(" TRACE ")) || l.contains("secrets_store")
        })
        .collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

/// Prints the `helm install` that ran, one `--set` per line.
fn show_helm_install(agent: &AgentRelease) {
    note(
        "beyond syncSecret.enabled (the walk-through's values.yaml), the values are what this node needs: \
         the image imported without a registry, kubelet's root dir under the run dir, host networking \
         (no kube-proxy here) with the API server and moto on 127.0.0.1, free ports, rotation every 5 s",
    );
    show_helm(agent.install_args());
}
