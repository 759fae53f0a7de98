//! NodePublishVolume straight over the agent's socket, as kubelet sends it.

use std::path::Path;

use secrets_store_api::csi::v1 as csi;
use secrets_store_api::csi::v1::node_client::NodeClient;
use secrets_store_testenv::Cluster;
use secrets_store_testenv::fixtures::PodFixture;
use secrets_store_testenv::kubelet::tokens::{TokenAudience, pod_tokens};
use tonic::transport::Channel;

use crate::support::{Role, Side};

/// A pod without volumes whose NodePublishVolume calls the test makes itself, with the tokens
/// kubelet would pass (bound to the pod, both audiences of the chart's CSIDriver).
#[derive(Clone, Debug)]
pub struct DirectPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    pub role: Role,
    tokens: String,
}

impl DirectPod {
    /// Creates the pod and its tokens.
    pub async fn create(cluster: &Cluster, side: &Side, name: &str) -> Self {
        let pod = PodFixture::new(name)
            .service_account(&side.service_account)
            .create(&cluster.client(), &side.namespace)
            .await
            .unwrap();
        let audiences =
            ["sts.amazonaws.com", "pods.eks.amazonaws.com"].map(|audience| TokenAudience {
                audience,
                expiration_seconds: Some(3600),
            });
        let tokens = pod_tokens(&cluster.client(), &pod, &audiences)
            .await
            .expect("TokenRequest");
        let uid = pod.metadata.uid.unwrap();
        Self {
            namespace: side.namespace.clone(),
            name: name.into(),
            uid,
            service_account: side.service_account.clone(),
            role: side.role,
            tokens,
        }
    }

    /// This pod's volume context carrying `other`'s tokens: what a confused or hostile caller of
    /// the socket would send.
    pub fn with_tokens_of(&self, other: &DirectPod) -> DirectPod {
        DirectPod {
            tokens: other.tokens.clone(),
            ..self.clone()
        }
    }

    /// NodePublishVolume of a volume of class `class` at `target`, as kubelet sends it.
    pub async fn publish(
        &self,
        mut client: NodeClient<Channel>,
        class: &str,
        target: &Path,
    ) -> Result<tonic::Response<csi::NodePublishVolumeResponse>, tonic::Status> {
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let volume_context = [
            ("secretProviderClass", class),
            ("csi.storage.k8s.io/pod.name", &self.name),
            ("csi.storage.k8s.io/pod.namespace", &self.namespace),
            ("csi.storage.k8s.io/pod.uid", &self.uid),
            (
                "csi.storage.k8s.io/serviceAccount.name",
                &self.service_account,
            ),
            ("csi.storage.k8s.io/ephemeral", "true"),
            ("csi.storage.k8s.io/serviceAccount.tokens", &self.tokens),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let request = csi::NodePublishVolumeRequest {
            volume_id: format!("csi-{}", target.display()).replace('/', "-"),
            target_path: target.to_string_lossy().into_owned(),
            volume_capability: Some(csi::VolumeCapability {
                access_mode: Some(csi::volume_capability::AccessMode { mode: 1 }),
                access_type: Some(csi::volume_capability::AccessType::Mount(
                    csi::volume_capability::MountVolume::default(),
                )),
            }),
            readonly: true,
            volume_context,
            ..Default::default()
        };
        client.node_publish_volume(request).await
    }
}

/// NodeUnpublishVolume of `target` (idempotent: also for targets that were never published).
pub async fn unpublish(mut client: NodeClient<Channel>, target: &Path) {
    client
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: "race".into(),
            target_path: target.to_string_lossy().into_owned(),
        })
        .await
        .expect("unpublish");
    assert!(!target.exists(), "{} left behind", target.display());
}
