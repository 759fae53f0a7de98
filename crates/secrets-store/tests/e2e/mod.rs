//! The seed walk-through's world for end-to-end tests: moto data, the CSIDriver object, the
//! node agent binary and a kubelet simulator, all against testenv's real cluster.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use secrets_store_api::crd::SecretProviderClass;
use secrets_store_testenv::fixtures::{CsiDriverFixture, PodFixture};
use secrets_store_testenv::kubelet::{KubeletConfig, KubeletSim};
use secrets_store_testenv::{AccountId, Cluster};

use crate::common::Driver;

/// The driver name kubelet uses.
pub const DRIVER: &str = "secrets-store.csi.k8s.io";
/// The seed's volume name.
pub const VOLUME: &str = "secrets-store-inline";

/// The seed's manifests, shipped under `examples/seed/`.
pub use secrets_store_testenv::seed::file as seed_file;

pub use secrets_store_testenv::eventually;

/// Applies the cluster-wide CSIDriver object as the chart renders it with rotation on and
/// `serviceAccountTokenInSecrets=false` (tokens in the volume context, which the upstream driver
/// v1.6.0 in `upstream_driver.rs` reads too).
pub async fn ensure_csi_driver(cluster: &Cluster) {
    CsiDriverFixture::chart()
        .with_rotation(true)
        .with_tokens_in_secrets(false)
        .apply(&cluster.client())
        .await
        .expect("applying the chart's CSIDriver");
}

/// Creates the seed's AWS side in `account` (testenv's [`secrets_store_testenv::seed::seed_aws`]).
pub use secrets_store_testenv::seed::seed_aws;

/// The seed's AWS secret name (also its file name in the volume).
pub const SEED_SECRET: &str = secrets_store_testenv::seed::SECRET;
/// The seed's Deployment.
pub const SEED_DEPLOYMENT: &str = secrets_store_testenv::seed::DEPLOYMENT;

/// Rotates the seed's secret in `account` (`PutSecretValue`: moto's stage moves are buggy).
pub use secrets_store_testenv::seed::rotate as rotate_seed_secret;

/// One test's world: a namespace, an AWS account, the node agent and a kubelet simulator.
pub struct World {
    pub cluster: &'static Cluster,
    pub namespace: String,
    pub account: AccountId,
    pub dir: tempfile::TempDir,
    pub agent: Driver,
    pub kubelet: KubeletSim,
}

impl World {
    /// Starts the agent (secret sync and rotation on, polling every `poll`) and a kubelet that
    /// republishes every `republish`.
    pub async fn start(prefix: &str, poll: &str, republish: Duration) -> Self {
        Self::start_with_args(prefix, poll, republish, &[]).await
    }

    /// [`World::start`] with further agent flags (e.g. `--rollout=off`).
    pub async fn start_with_args(
        prefix: &str,
        poll: &str,
        republish: Duration,
        extra: &[&str],
    ) -> Self {
        let cluster = Cluster::shared();
        ensure_csi_driver(cluster).await;
        let namespace = cluster.new_namespace(prefix).await;
        let account = cluster.moto().new_account();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("kubelet");
        std::fs::create_dir_all(&root).unwrap();
        let endpoint = cluster.moto().endpoint();
        let root_dir = root.to_str().unwrap();
        let mut args = vec![
            "--node-id",
            cluster.node_name(),
            "--kubelet-dir",
            root_dir,
            "--metrics-addr",
            "",
            "--healthz-addr",
            "",
            "--enable-secret-sync",
            "--enable-secret-rotation",
            "--rotation-poll-interval",
            poll,
            "--namespace",
            &namespace,
        ];
        args.extend_from_slice(extra);
        let agent = Driver::start_with_env(
            dir.path(),
            cluster.kubeconfig_path(),
            &args,
            &[("AWS_ENDPOINT_URL", endpoint.as_str())],
        );
        let mut config = KubeletConfig::new(cluster.node_name(), &root, &namespace);
        config.republish_period = republish;
        let kubelet = KubeletSim::start(cluster.client(), config);
        Self {
            cluster,
            namespace,
            account,
            dir,
            agent,
            kubelet,
        }
    }

    /// Creates the seed's AWS side in this world's account: the secret, the policy and a role
    /// for the ServiceAccount. Returns the role ARN.
    pub async fn seed_aws(&self, value: &str) -> String {
        seed_aws(self.cluster, &self.account, value).await
    }

    /// Rotates the seed's secret in this world's account.
    pub async fn rotate(&self, value: &str) {
        rotate_seed_secret(self.cluster, &self.account, value).await;
    }

    /// Opts the seed's Deployment in to a rollout when its synced Secret changes.
    pub async fn opt_in_rollout(&self) {
        Api::<Deployment>::namespaced(self.cluster.client(), &self.namespace)
            .patch(
                SEED_DEPLOYMENT,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({"metadata": {"annotations": {
                    "secrets-store.csi.x-k8s.io/rollout-on-secret-change": "true"
                }}})),
            )
            .await
            .expect("annotating the seed Deployment");
    }

    /// Waits for `n` running pods none of which is in `old`: the Deployment rolled.
    pub async fn rolled_pods(&self, old: &[Pod], n: usize) -> Vec<Pod> {
        let old: Vec<_> = old.iter().map(|p| p.metadata.uid.clone()).collect();
        eventually(
            Duration::from_secs(90),
            "pods of the rolled Deployment",
            || async {
                let pods = self.running_pods(n).await;
                pods.iter()
                    .all(|p| !old.contains(&p.metadata.uid))
                    .then_some(pods)
            },
        )
        .await
    }

    /// Applies the seed's ServiceAccount (with `role_arn`), SecretProviderClass and Deployment.
    pub async fn apply_seed(&self, role_arn: &str) {
        self.apply_seed_with_lifetime(role_arn, None).await;
    }

    /// Like [`World::apply_seed`], with the class annotated with a synced Secret lifetime.
    pub async fn apply_seed_with_lifetime(&self, role_arn: &str, lifetime: Option<&str>) {
        self.apply_service_account(role_arn).await;
        let client = self.cluster.client();
        let pp = PostParams::default();
        let mut spc: SecretProviderClass =
            serde_yaml::from_str(&seed_file("secretproviderclass.yaml")).unwrap();
        if let Some(lifetime) = lifetime {
            spc.metadata.annotations = Some(BTreeMap::from([(
                "secrets-store.csi.x-k8s.io/secret-lifetime".to_string(),
                lifetime.to_string(),
            )]));
        }
        Api::<SecretProviderClass>::namespaced(client.clone(), &self.namespace)
            .create(&pp, &spc)
            .await
            .unwrap();
        let deploy: Deployment = serde_yaml::from_str(&seed_file("test-nginx.yaml")).unwrap();
        Api::<Deployment>::namespaced(client, &self.namespace)
            .create(&pp, &deploy)
            .await
            .unwrap();
    }

    /// Creates a bare pod (no controller) from the seed Deployment's pod template.
    pub async fn bare_pod(&self, name: &str) {
        let deploy: Deployment = serde_yaml::from_str(&seed_file("test-nginx.yaml")).unwrap();
        let template = deploy.spec.unwrap().template;
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..template.metadata.unwrap_or_default()
            },
            spec: template.spec,
            ..Pod::default()
        };
        Api::<Pod>::namespaced(self.cluster.client(), &self.namespace)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
    }

    /// The namespace's pods.
    pub async fn pods(&self) -> Vec<Pod> {
        Api::<Pod>::namespaced(self.cluster.client(), &self.namespace)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    /// Waits until exactly `n` pods are Running (their volumes published), and returns them.
    pub async fn running_pods(&self, n: usize) -> Vec<Pod> {
        eventually(
            Duration::from_secs(90),
            &format!("{n} running pods"),
            || async {
                let pods = self.pods().await;
                let running: Vec<Pod> = pods
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
                    .cloned()
                    .collect();
                (running.len() == n && pods.len() == n).then_some(running)
            },
        )
        .await
    }

    /// The Secret `name`, if it exists.
    pub async fn secret(&self, name: &str) -> Option<Secret> {
        Api::<Secret>::namespaced(self.cluster.client(), &self.namespace)
            .get_opt(name)
            .await
            .unwrap()
    }

    /// One data value of Secret `name` as text.
    pub async fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        let secret = self.secret(name).await?;
        let bytes = secret.data?.get(key)?.0.clone();
        Some(String::from_utf8(bytes).unwrap())
    }

    /// The target path of `pod`'s seed volume.
    pub fn target(&self, pod: &Pod) -> PathBuf {
        self.kubelet
            .target_path(pod.metadata.uid.as_deref().unwrap(), VOLUME)
    }

    /// A file of `pod`'s seed volume, as a container would read it.
    pub fn file(&self, pod: &Pod, name: &str) -> Option<String> {
        std::fs::read_to_string(self.target(pod).join(name)).ok()
    }

    /// What `kubectl exec <pod> -- env` would show for the seed's container.
    pub async fn env(&self, pod: &Pod) -> BTreeMap<String, String> {
        self.kubelet
            .resolved_env(pod, "nginx")
            .await
            .expect("resolving the container's env")
    }

    /// Warning Events about `pod` with `reason`, from the API (events.k8s.io and core share storage).
    pub async fn pod_events(&self, pod: &str, reason: &str) -> Vec<String> {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.cluster.client(), &self.namespace);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.involved_object.name.as_deref() == Some(pod)
                    && e.reason.as_deref() == Some(reason)
            })
            .filter_map(|e| e.message)
            .collect()
    }
}

/// Options for [`World::start_agent`]: what differs between fault/security tests and the seed.
pub struct AgentOptions<'a> {
    /// `--rotation-poll-interval`.
    pub poll: &'a str,
    /// `AWS_ENDPOINT_URL` (moto itself, or a test's fault-injecting proxy in front of it).
    pub aws_endpoint: String,
    /// `--metrics-addr` (empty: off).
    pub metrics_addr: String,
    /// Extra environment (e.g. `RUST_LOG`).
    pub env: Vec<(&'a str, String)>,
}

impl World {
    /// Starts another `secrets-store node` for this world: same socket dir, same kubelet root,
    /// same namespace, with `opts`. Callers stop or kill the previous agent first.
    pub fn start_agent(&self, opts: &AgentOptions<'_>) -> Driver {
        let root = self.dir.path().join("kubelet");
        let mut env: Vec<(&str, &str)> = vec![("AWS_ENDPOINT_URL", opts.aws_endpoint.as_str())];
        env.extend(opts.env.iter().map(|(k, v)| (*k, v.as_str())));
        Driver::start_with_env(
            self.dir.path(),
            self.cluster.kubeconfig_path(),
            &[
                "--node-id",
                self.cluster.node_name(),
                "--kubelet-dir",
                root.to_str().unwrap(),
                "--metrics-addr",
                &opts.metrics_addr,
                "--healthz-addr",
                "",
                "--enable-secret-sync",
                "--enable-secret-rotation",
                "--rotation-poll-interval",
                opts.poll,
                "--namespace",
                &self.namespace,
            ],
            &env,
        )
    }

    /// Creates the seed's ServiceAccount (with `role_arn`) only.
    pub async fn apply_service_account(&self, role_arn: &str) {
        let sa: ServiceAccount =
            serde_yaml::from_str(&seed_file("serviceaccount.yaml").replace("ROLE_ARN", role_arn))
                .unwrap();
        Api::<ServiceAccount>::namespaced(self.cluster.client(), &self.namespace)
            .create(&PostParams::default(), &sa)
            .await
            .unwrap();
    }

    /// Creates a SecretProviderClass from YAML (name and spec) in this world's namespace.
    pub async fn apply_class(&self, yaml: &str) {
        let spc: SecretProviderClass = serde_yaml::from_str(yaml).unwrap();
        Api::<SecretProviderClass>::namespaced(self.cluster.client(), &self.namespace)
            .create(&PostParams::default(), &spc)
            .await
            .unwrap();
    }

    /// Creates a bare pod `name` (the seed's ServiceAccount) with one CSI volume [`VOLUME`]
    /// using class `class`.
    pub async fn class_pod(&self, name: &str, class: &str) {
        PodFixture::new(name)
            .service_account("nginx-deployment-sa")
            .with_csi_volume(VOLUME, class)
            .create(&self.cluster.client(), &self.namespace)
            .await
            .unwrap();
    }

    /// Deletes pod `name` and waits until the kubelet has unpublished it and it is gone.
    pub async fn delete_pod(&self, name: &str) {
        Api::<Pod>::namespaced(self.cluster.client(), &self.namespace)
            .delete(name, &kube::api::DeleteParams::default())
            .await
            .unwrap();
        eventually(Duration::from_secs(90), "pod deleted", || async {
            self.pods()
                .await
                .iter()
                .all(|p| p.metadata.name.as_deref() != Some(name))
                .then_some(())
        })
        .await;
    }

    /// Mount points under this world's kubelet root, from `/proc/self/mountinfo`.
    pub fn mounts_under_root(&self) -> Vec<String> {
        let root = self.dir.path().join("kubelet");
        let root = root.to_string_lossy();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(root.as_ref()))
            .collect()
    }
}

impl Drop for World {
    /// A test that ends with pods still mounted must not leave tmpfs mounts behind on the
    /// machine: stop the kubelet, then detach whatever is still mounted under this world's dir.
    fn drop(&mut self) {
        self.kubelet.stop();
        for mount in self.mounts_under_root() {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
