//! The part of kubelet the test plays while the apiserver is down (the simulator needs the API
//! on every pod sync): tokens requested just before the outage, and kubelet's `NodePublishVolume`.

use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ObjectMeta, PostParams};
use secrets_store_api::csi::v1 as csi;
use secrets_store_testenv::kubelet::tokens::{TokenAudience, pod_tokens};
use secrets_store_testenv::kubelet::volume_handle;

use crate::e2e::{VOLUME, World, seed_file};
use crate::{CLASS, SERVICE_ACCOUNT};

/// A pod from the seed Deployment's template, already bound to the simulated node.
pub async fn bound_pod(world: &World, namespace: &str, name: &str) -> Pod {
    let deploy: Deployment = serde_yaml::from_str(&seed_file("test-nginx.yaml")).unwrap();
    let template = deploy.spec.unwrap().template;
    let mut spec = template.spec.unwrap();
    spec.node_name = Some(world.cluster.node_name().to_string());
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: template.metadata.and_then(|m| m.labels),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    };
    Api::<Pod>::namespaced(world.cluster.client(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
}

/// The tokens kubelet requests for the CSIDriver's `tokenRequests` (bound to the pod), in the
/// volume-context JSON format.
pub async fn kubelet_tokens(world: &World, pod: &Pod) -> String {
    let audiences = ["sts.amazonaws.com", "pods.eks.amazonaws.com"].map(TokenAudience::new);
    pod_tokens(&world.cluster.client(), pod, &audiences)
        .await
        .expect("TokenRequest")
}

/// The `NodePublishVolume` kubelet sends for `pod`'s seed volume (see KUBELET_SIM.md).
pub fn kubelet_publish_request(
    world: &World,
    pod: &Pod,
    tokens: &str,
) -> csi::NodePublishVolumeRequest {
    let uid = pod.metadata.uid.clone().unwrap();
    let volume_context: HashMap<String, String> = [
        ("secretProviderClass", CLASS),
        (
            "csi.storage.k8s.io/pod.name",
            pod.metadata.name.as_deref().unwrap(),
        ),
        (
            "csi.storage.k8s.io/pod.namespace",
            pod.metadata.namespace.as_deref().unwrap(),
        ),
        ("csi.storage.k8s.io/pod.uid", uid.as_str()),
        ("csi.storage.k8s.io/serviceAccount.name", SERVICE_ACCOUNT),
        ("csi.storage.k8s.io/ephemeral", "true"),
        ("csi.storage.k8s.io/serviceAccount.tokens", tokens),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    csi::NodePublishVolumeRequest {
        volume_id: volume_handle(&uid, VOLUME),
        target_path: world.target(pod).display().to_string(),
        volume_capability: Some(csi::VolumeCapability {
            access_mode: Some(csi::volume_capability::AccessMode {
                mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(csi::volume_capability::AccessType::Mount(
                csi::volume_capability::MountVolume::default(),
            )),
        }),
        readonly: true,
        volume_context,
        ..Default::default()
    }
}

/// kubelet creates the target's parent (mode 0750) before `NodePublishVolume`.
pub fn create_target_parent(target: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(target.parent().unwrap())
        .unwrap();
}
