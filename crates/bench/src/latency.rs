//! Scenario 1: warm single-mount latency of `NodePublishVolume` as kubelet sends it, and the
//! floor of a publish (tmpfs mount + unmount, one GetSecretValue round trip, one pod-status
//! create in the API server) measured alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use secrets_store_api::crd::{SecretProviderClassPodStatus, SecretProviderClassPodStatusStatus};
use secrets_store_api::csi::v1::node_client::NodeClient;
use secrets_store_api::csi::v1::volume_capability::access_mode::Mode;
use secrets_store_api::csi::v1::volume_capability::{AccessMode, AccessType, MountVolume};
use secrets_store_api::csi::v1::{
    NodePublishVolumeRequest, NodeUnpublishVolumeRequest, VolumeCapability,
};
use secrets_store_testenv::Cluster;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::fixtures::{self, CLASS, SERVICE_ACCOUNT, Tenant, VOLUME};
use crate::stack::RunningStack;

/// A lazily connected CSI channel over the unix socket at `path`.
pub fn unix_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    // tonic wants a URI; the connector ignores it and always dials the socket.
    Endpoint::from_static("http://[::]:50051").connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        },
    ))
}

/// One pod's volume, ready to be published over and over through one stack.
pub struct SingleMount {
    client: NodeClient<Channel>,
    request: NodePublishVolumeRequest,
}

impl SingleMount {
    /// Creates a pod for `tenant` (bound to the node, never run by a kubelet) and builds the
    /// request kubelet would send for its volume to `stack`.
    pub async fn new(
        cluster: &Cluster,
        tenant: &Tenant,
        stack: &RunningStack,
        pod_name: &str,
    ) -> anyhow::Result<Self> {
        let pods: Api<Pod> = Api::namespaced(cluster.client(), &tenant.namespace);
        let pod = pods
            .create(
                &PostParams::default(),
                &fixtures::pod(pod_name, cluster.node_name())?,
            )
            .await?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let target = stack
            .kubelet_root
            .join("pods")
            .join(&uid)
            .join("volumes/kubernetes.io~csi")
            .join(VOLUME)
            .join("mount");
        // kubelet creates the parent; the driver creates and mounts the target itself.
        std::fs::create_dir_all(target.parent().expect("target has a parent"))?;
        // One token for the whole run, as kubelet reuses a token until 80% of its lifetime.
        let tokens = fixtures::tokens_attribute(cluster, &pod).await?;
        let context = HashMap::from([
            ("secretProviderClass".to_string(), CLASS.to_string()),
            ("csi.storage.k8s.io/pod.name".into(), pod_name.to_string()),
            (
                "csi.storage.k8s.io/pod.namespace".into(),
                tenant.namespace.clone(),
            ),
            ("csi.storage.k8s.io/pod.uid".into(), uid.clone()),
            (
                "csi.storage.k8s.io/serviceAccount.name".into(),
                SERVICE_ACCOUNT.into(),
            ),
            ("csi.storage.k8s.io/ephemeral".into(), "true".into()),
            ("csi.storage.k8s.io/serviceAccount.tokens".into(), tokens),
        ]);
        let request = NodePublishVolumeRequest {
            // kubelet's volume handle is a hash of uid + volume; any unique id does here.
            volume_id: format!("csi-bench-{uid}"),
            publish_context: HashMap::new(),
            staging_target_path: String::new(),
            target_path: target.display().to_string(),
            volume_capability: Some(VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume::default())),
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter as i32,
                }),
            }),
            readonly: true,
            secrets: HashMap::new(),
            volume_context: context,
        };
        Ok(Self {
            client: NodeClient::new(unix_channel(&stack.socket)),
            request,
        })
    }

    /// Publishes (timed) and unpublishes (not timed) once.
    pub async fn cycle(&mut self) -> anyhow::Result<Duration> {
        let took = self.publish().await?;
        self.unpublish().await?;
        Ok(took)
    }

    /// Sends the `NodePublishVolume` and returns how long the stack took to answer it.
    pub async fn publish(&mut self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.client
            .node_publish_volume(self.request.clone())
            .await
            .map_err(|s| anyhow::anyhow!("NodePublishVolume: {} {}", s.code(), s.message()))?;
        Ok(start.elapsed())
    }

    /// Sends the `NodeUnpublishVolume` for the volume.
    pub async fn unpublish(&mut self) -> anyhow::Result<()> {
        self.client
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: self.request.volume_id.clone(),
                target_path: self.request.target_path.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("NodeUnpublishVolume: {} {}", s.code(), s.message()))?;
        Ok(())
    }
}

/// The floor's samples: each publish-equivalent in total and by part.
#[derive(Debug, Clone, Default)]
pub struct Floor {
    /// mount + umount + GetSecretValue + pod-status create, one per iteration.
    pub total: Vec<Duration>,
    /// tmpfs mount + umount.
    pub mount: Vec<Duration>,
    /// One GetSecretValue.
    pub aws: Vec<Duration>,
    /// One `SecretProviderClassPodStatus` create.
    pub api_write: Vec<Duration>,
}

/// The floor of one publish, what any driver must do for it: mount + unmount a tmpfs on a fresh
/// dir, one GetSecretValue through the same endpoint the stacks use, and one API-server write
/// (the create of a `SecretProviderClassPodStatus`, as a publish records the pod's status), one
/// after the other. Each status object is deleted again untimed.
pub async fn floor(
    cluster: &Cluster,
    tenant: &Tenant,
    endpoint: &str,
    iterations: usize,
) -> anyhow::Result<Floor> {
    let sm = cluster.moto().sm_client_at(endpoint, &tenant.account);
    let statuses: Api<SecretProviderClassPodStatus> =
        Api::namespaced(cluster.client(), &tenant.namespace);
    let scratch = tempfile::tempdir()?;
    let secret = tenant.secrets[0].clone();
    let get = || async {
        sm.get_secret_value()
            .secret_id(&secret)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("GetSecretValue: {e}"))
    };
    let status = |i: usize| {
        SecretProviderClassPodStatus::for_pod(
            &tenant.namespace,
            SecretProviderClassPodStatusStatus {
                pod_name: format!("floor-{i}"),
                secret_provider_class_name: CLASS.into(),
                mounted: true,
                target_path: format!("/floor/{i}"),
                objects: Vec::new(),
            },
        )
    };
    // Warm-up: the SDK resolves its config and endpoint on the first call; the API client
    // opens its connection.
    get().await?;
    let warm = statuses
        .create(&PostParams::default(), &status(usize::MAX))
        .await?;
    statuses
        .delete(
            &warm.metadata.name.unwrap_or_default(),
            &DeleteParams::default(),
        )
        .await?;
    let mut floor = Floor::default();
    for i in 0..iterations {
        let dir: PathBuf = scratch.path().join(format!("m{i}"));
        std::fs::create_dir(&dir)?;
        let start = Instant::now();
        mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("size=16m"),
        )?;
        umount2(&dir, MntFlags::empty())?;
        let mounted = Instant::now();
        get().await?;
        let fetched = Instant::now();
        let created = statuses.create(&PostParams::default(), &status(i)).await?;
        let written = Instant::now();
        floor.mount.push(mounted - start);
        floor.aws.push(fetched - mounted);
        floor.api_write.push(written - fetched);
        floor.total.push(written - start);
        statuses
            .delete(
                &created.metadata.name.unwrap_or_default(),
                &DeleteParams::default(),
            )
            .await?;
    }
    Ok(floor)
}
