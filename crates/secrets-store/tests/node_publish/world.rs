//! The world every scenario runs in: a namespace, a kubelet root on tmpfs mounts, the test
//! provider, the real `secrets-store node` process and the kubelet simulator; plus the direct
//! NodePublishVolume request and the mount table lookup the scenarios check against.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use secrets_store_api::crd::SecretProviderClass;
use secrets_store_api::csi::v1 as csi;
use secrets_store_testenv::Cluster;
use secrets_store_testenv::fixtures::{CsiDriverFixture, PodFixture};
use secrets_store_testenv::kubelet::{KubeletConfig, KubeletSim};
use serde_json::json;

use crate::common::Driver;
use crate::common::test_provider::TestProvider;

/// The test provider's name (its socket in the provider volume).
pub const PROVIDER: &str = "testprov";

/// One test's world: namespace, kubelet root, provider, driver process and kubelet simulator.
pub struct World {
    pub cluster: &'static Cluster,
    pub client: kube::Client,
    pub ns: String,
    pub root: tempfile::TempDir,
    pub provider: TestProvider,
    pub driver: Driver,
    pub sim: KubeletSim,
    pub metrics_port: u16,
    pub healthz_port: u16,
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `secrets-store node` on `root` with the providers in `providers`, metrics and
/// healthz on the given ports.
pub fn start_driver(
    root: &Path,
    providers: &Path,
    cluster: &Cluster,
    metrics: u16,
    healthz: u16,
) -> Driver {
    start_driver_with(root, providers, cluster, metrics, healthz, &[])
}

/// [`start_driver`] with `extra` flags.
pub fn start_driver_with(
    root: &Path,
    providers: &Path,
    cluster: &Cluster,
    metrics: u16,
    healthz: u16,
    extra: &[&str],
) -> Driver {
    // The built-in AWS provider talks to moto (aws-config reads AWS_ENDPOINT_URL).
    let moto = cluster.moto().endpoint();
    let env = [("AWS_ENDPOINT_URL", moto.as_str())];
    Driver::start_with_env(
        root,
        cluster.kubeconfig_path(),
        &[
            "--node-id",
            cluster.node_name(),
            "--kubelet-dir",
            root.to_str().unwrap(),
            "--provider-volume",
            providers.to_str().unwrap(),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics}"),
            "--healthz-addr",
            &format!("127.0.0.1:{healthz}"),
            "--tmpfs-size",
            "8Mi",
            // Every republish fetches, so tests can republish at once.
            "--enable-secret-rotation",
            "--rotation-poll-interval",
            "0s",
        ]
        .iter()
        .chain(extra)
        .copied()
        .collect::<Vec<_>>(),
        &env,
    )
}

impl World {
    /// Starts a fresh world in a new namespace named after `prefix`.
    pub async fn new(prefix: &str) -> Self {
        let cluster = Cluster::shared();
        let client = cluster.client();
        // The chart's CSIDriver with default values: tokens for both audiences, in the
        // secrets field (serviceAccountTokenInSecrets), no republish.
        CsiDriverFixture::chart()
            .apply(&client)
            .await
            .expect("applying the chart's CSIDriver");
        let ns = cluster.new_namespace(prefix).await;
        let root = tempfile::tempdir().unwrap();
        let providers = root.path().join("providers");
        let provider = TestProvider::start(&providers, PROVIDER);
        let (metrics_port, healthz_port) = (free_port(), free_port());
        let driver = start_driver(root.path(), &providers, cluster, metrics_port, healthz_port);
        // No pre-known socket: the simulator must find us through plugin registration.
        let sim = KubeletSim::start(
            client.clone(),
            KubeletConfig::new(cluster.node_name(), root.path(), &ns),
        );
        Self {
            cluster,
            client,
            ns,
            root,
            provider,
            driver,
            sim,
            metrics_port,
            healthz_port,
        }
    }

    /// The provider volume (where provider sockets live).
    pub fn providers_dir(&self) -> PathBuf {
        self.root.path().join("providers")
    }

    /// Creates a SecretProviderClass for `provider`, with the test provider's `mode`.
    pub async fn create_class(&self, name: &str, provider: &str, mode: &str) {
        let api: Api<SecretProviderClass> = Api::namespaced(self.client.clone(), &self.ns);
        let spc: SecretProviderClass = serde_json::from_value(json!({
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClass",
            "metadata": {"name": name},
            "spec": {"provider": provider, "parameters": {"mode": mode, "region": "class-region"}}
        }))
        .unwrap();
        api.create(&PostParams::default(), &spc).await.unwrap();
    }

    /// Creates a pod of the default ServiceAccount with one CSI volume using `class`.
    pub async fn create_pod(&self, name: &str, class: &str) -> Pod {
        // A volume attribute overrides the class parameter of the same name.
        let attrs = [("secretProviderClass", class), ("region", "pod-region")];
        self.create_pod_as(name, "default", attrs).await
    }

    /// Creates a pod of `service_account` with one CSI volume `secrets` of `attrs`.
    pub async fn create_pod_as<'a>(
        &self,
        name: &str,
        service_account: &str,
        attrs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Pod {
        PodFixture::new(name)
            .service_account(service_account)
            .with_csi_volume_attributes("secrets", attrs)
            .mounted_at("secrets", "/mnt/secrets")
            .create(&self.client, &self.ns)
            .await
            .unwrap()
    }

    /// The uid of pod `name`.
    pub async fn pod_uid(&self, name: &str) -> String {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        api.get(name).await.unwrap().metadata.uid.unwrap()
    }

    /// The target path kubelet uses for the pod's `secrets` volume.
    pub fn target(&self, uid: &str) -> PathBuf {
        self.sim.target_path(uid, "secrets")
    }

    fn diagnostics(&self) -> String {
        format!(
            "sim events: {:#?}\nregistration errors: {:?}\ndriver log:\n{}",
            self.sim.events(),
            self.sim.registration_errors(),
            self.driver.log_text()
        )
    }

    /// Waits until the simulator has published a volume of `pod`.
    pub async fn wait_published(&self, pod: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.sim.published().iter().any(|v| v.pod == pod) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "pod {pod} never got its volume published\n{}",
            self.diagnostics()
        );
    }

    /// Waits for a Warning Event from our driver on `pod` with `reason`; returns its message.
    pub async fn wait_driver_event(&self, pod: &str, reason: &str) -> String {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let events = api.list(&ListParams::default()).await.unwrap();
            if let Some(e) = events.items.iter().find(|e| {
                e.reporting_component.as_deref() == Some("secrets-store-rs")
                    && e.involved_object.name.as_deref() == Some(pod)
                    && e.reason.as_deref() == Some(reason)
            }) {
                assert_eq!(e.type_.as_deref(), Some("Warning"));
                return e.message.clone().unwrap_or_default();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let events = api.list(&ListParams::default()).await.unwrap();
        let seen: Vec<_> = events
            .items
            .iter()
            .map(|e| {
                (
                    e.involved_object.name.clone(),
                    e.reason.clone(),
                    e.message.clone(),
                )
            })
            .collect();
        panic!(
            "no {reason} Event from the driver on {pod}; seen {seen:#?}\n{}",
            self.diagnostics()
        );
    }

    /// Deletes pod `name` and waits until it is gone (so its volume was unpublished).
    pub async fn delete_pod(&self, name: &str) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        api.delete(name, &DeleteParams::default()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if api.get_opt(name).await.unwrap().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("pod {name} was never torn down\n{}", self.diagnostics());
    }

    /// A plain HTTP GET on 127.0.0.1:`port`: status code and the whole response.
    pub async fn http_get(&self, port: u16, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, out)
    }
}

/// The mount id of `path` in /proc/self/mountinfo, if it is a mount point.
pub fn mount_id(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = path.to_str().unwrap();
    info.lines()
        .find(|l| l.split(' ').nth(4) == Some(want))
        .map(|l| l.split(' ').next().unwrap().to_string())
}

/// The NodePublishVolumeRequest kubelet would send for `pod`'s volume of `class`.
pub fn publish_request(
    w: &World,
    pod: &str,
    uid: &str,
    class: &str,
) -> csi::NodePublishVolumeRequest {
    let volume_context: std::collections::HashMap<String, String> = [
        ("secretProviderClass", class),
        ("csi.storage.k8s.io/pod.name", pod),
        ("csi.storage.k8s.io/pod.namespace", w.ns.as_str()),
        ("csi.storage.k8s.io/pod.uid", uid),
        ("csi.storage.k8s.io/serviceAccount.name", "default"),
        ("csi.storage.k8s.io/ephemeral", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    csi::NodePublishVolumeRequest {
        volume_id: format!("csi-{uid}"),
        target_path: w.target(uid).to_string_lossy().into_owned(),
        volume_capability: Some(csi::VolumeCapability {
            access_mode: Some(csi::volume_capability::AccessMode { mode: 1 }),
            access_type: Some(csi::volume_capability::AccessType::Mount(
                csi::volume_capability::MountVolume::default(),
            )),
        }),
        readonly: true,
        volume_context,
        ..Default::default()
    }
}
