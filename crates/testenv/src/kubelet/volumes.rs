//! The pod worker: publishes a pod's inline CSI volumes like kubelet's volume manager and
//! `csiMountMgr.SetUpAt`, reports the pod Running, republishes, and tears down on deletion.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{CSIVolumeSource, Event, Pod, Secret};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use secrets_store_api::csi::v1::node_client::NodeClient;
use secrets_store_api::csi::v1::volume_capability::access_mode::Mode;
use secrets_store_api::csi::v1::volume_capability::{AccessMode, AccessType, MountVolume};
use secrets_store_api::csi::v1::{
    NodePublishVolumeRequest, NodeUnpublishVolumeRequest, VolumeCapability,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tonic::transport::Channel;

use super::tokens::{TokenAudience, TokenError, pod_tokens};
use super::{PublishedVolume, Shared, SimEvent, csi};

/// Pod-info keys kubelet adds when the CSIDriver has `podInfoOnMount`.
pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
/// See [`POD_NAME`].
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
/// See [`POD_NAME`].
pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
/// See [`POD_NAME`].
pub const SA_NAME: &str = "csi.storage.k8s.io/serviceAccount.name";
/// See [`POD_NAME`].
pub const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";
/// Key of the token JSON kubelet adds when the CSIDriver has `tokenRequests`.
pub const SA_TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";

/// kubelet's `makeVolumeHandle`: `csi-` + hex(sha256(podUID + volumeName)).
pub fn volume_handle(pod_uid: &str, volume: &str) -> String {
    let digest = Sha256::digest(format!("{pod_uid}{volume}").as_bytes());
    format!("csi-{}", hex::encode(digest))
}

/// `<root>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount`.
pub fn target_path(root: &Path, pod_uid: &str, volume: &str) -> PathBuf {
    root.join("pods")
        .join(pod_uid)
        .join("volumes")
        .join("kubernetes.io~csi")
        .join(volume)
        .join("mount")
}

/// What the worker remembers of a published volume.
#[derive(Debug, Clone)]
struct Mounted {
    driver: String,
    volume_id: String,
    target: PathBuf,
    requires_republish: bool,
}

pub(super) async fn pod_worker(
    shared: Arc<Shared>,
    namespace: String,
    name: String,
    uid: String,
    notify: Arc<Notify>,
) {
    let cfg = &shared.config;
    let pods: Api<Pod> = Api::namespaced(shared.client.clone(), &namespace);
    let mut mounted: BTreeMap<String, Mounted> = BTreeMap::new();
    let mut backoff = cfg.backoff_initial;
    let mut reported_running = false;
    let mut next_republish = Instant::now() + cfg.republish_period;

    loop {
        let pod = match pods.get_opt(&name).await {
            Ok(p) => p.filter(|p| p.metadata.uid.as_deref() == Some(uid.as_str())),
            Err(_) => {
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let Some(pod) = pod else {
            // Gone without us (force-deleted): clean up what we published, like kubelet's
            // orphaned-volume cleanup.
            // Best effort: the pod is gone, nothing is left to report a failure on.
            let _ = teardown(&shared, &mounted).await;
            shared.state().workers.remove(&uid);
            return;
        };

        if pod.metadata.deletion_timestamp.is_some() {
            if let Err(e) = teardown(&shared, &mounted).await {
                record_event(&shared, &pod, "Warning", "FailedUnmount", &e).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.backoff_max);
                continue;
            }
            mounted.clear();
            // kubelet's status manager deletes the pod with grace 0 once it is torn down.
            let _ = pods
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await;
            shared.state().workers.remove(&uid);
            return;
        }

        let mut failed = false;
        for (volume, source) in inline_csi_volumes(&pod) {
            if mounted.contains_key(&volume) {
                continue;
            }
            match publish(&shared, &pod, &volume, &source).await {
                Ok(m) => {
                    mounted.insert(volume, m);
                }
                Err(e) => {
                    failed = true;
                    let msg = format!("MountVolume.SetUp failed for volume \"{volume}\" : {e}");
                    record_event(&shared, &pod, "Warning", "FailedMount", &msg).await;
                }
            }
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = notify.notified() => {}
            }
            backoff = (backoff * 2).min(cfg.backoff_max);
            continue;
        }
        backoff = cfg.backoff_initial;
        if !reported_running {
            match mark_running(&pods, &pod, &cfg.node_name).await {
                Ok(()) => reported_running = true,
                Err(e) => {
                    tracing::debug!(pod = %name, error = %e, "kubelet sim status update failed")
                }
            }
        }

        if Instant::now() >= next_republish {
            next_republish = Instant::now() + cfg.republish_period;
            let sources: BTreeMap<String, CSIVolumeSource> =
                inline_csi_volumes(&pod).into_iter().collect();
            for (volume, m) in mounted.clone() {
                if !m.requires_republish {
                    continue;
                }
                let Some(source) = sources.get(&volume) else {
                    continue;
                };
                if let Err(e) = publish(&shared, &pod, &volume, source).await {
                    let msg = format!("MountVolume.SetUp failed for volume \"{volume}\" : {e}");
                    record_event(&shared, &pod, "Warning", "FailedMount", &msg).await;
                }
            }
        }

        // Woken by a change of the pod, or by the republish timer; the 1 s tick is a safety net.
        let until = next_republish.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(until.min(Duration::from_secs(1))) => {}
        }
    }
}

fn inline_csi_volumes(pod: &Pod) -> Vec<(String, CSIVolumeSource)> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.csi.clone().map(|c| (v.name.clone(), c)))
        .collect()
}

/// One `SetUpAt`: CSIDriver lookup, tokens, publish secrets, `NodePublishVolume`.
async fn publish(
    shared: &Arc<Shared>,
    pod: &Pod,
    volume: &str,
    source: &CSIVolumeSource,
) -> Result<Mounted, String> {
    let cfg = &shared.config;
    let client = &shared.client;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let driver = source.driver.clone();

    let csi_driver = Api::<CSIDriver>::all(client.clone())
        .get_opt(&driver)
        .await
        .map_err(|e| format!("kubernetes.io/csi: failed to get CSIDriver {driver}: {e}"))?;
    let spec = csi_driver
        .as_ref()
        .map(|d| d.spec.clone())
        .unwrap_or_default();
    let modes = spec
        .volume_lifecycle_modes
        .clone()
        .unwrap_or_else(|| vec!["Persistent".to_string()]);
    if !modes.iter().any(|m| m == "Ephemeral") {
        return Err(format!(
            "kubernetes.io/csi: mounter.NewMounter failed: volume mode \"Ephemeral\" not supported by driver {driver} (only supports {modes:?})"
        ));
    }

    let channel = channel_for(shared, &driver).ok_or_else(|| {
        format!(
            "kubernetes.io/csi: mounter.SetUpAt failed to get CSI client: driver name {driver} not found in the list of registered CSI drivers"
        )
    })?;
    let mode = match csi::supports_single_node_multi_writer(channel.clone()).await {
        Ok(true) => Mode::SingleNodeMultiWriter,
        Ok(false) => Mode::SingleNodeWriter,
        Err(e) => return Err(rpc_error(&e)),
    };

    let target = target_path(&cfg.root_dir, &uid, volume);
    let volume_id = volume_handle(&uid, volume);
    let parent = target.parent().expect("target path has a parent");
    create_parent(parent)?;
    let vol_data = json!({
        "driverName": driver,
        "volumeHandle": volume_id,
        "specVolID": volume,
        "volumeLifecycleMode": "Ephemeral",
    });
    let _ = std::fs::write(parent.join("vol_data.json"), vol_data.to_string());

    let mut secrets = HashMap::new();
    if let Some(r) = &source.node_publish_secret_ref {
        let name = r.name.clone();
        let secret = Api::<Secret>::namespaced(client.clone(), &ns)
            .get(&name)
            .await
            .map_err(|e| {
                format!(
                    "fetching NodePublishSecretRef {ns}/{name} failed: {}",
                    api_message(&e)
                )
            })?;
        for (k, v) in secret.data.unwrap_or_default() {
            secrets.insert(k, String::from_utf8_lossy(&v.0).into_owned());
        }
    }

    let mut context: HashMap<String, String> = source
        .volume_attributes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".to_string());
    if spec.pod_info_on_mount == Some(true) {
        context.insert(POD_NAME.into(), pod_name.clone());
        context.insert(POD_NAMESPACE.into(), ns.clone());
        context.insert(POD_UID.into(), uid.clone());
        context.insert(SA_NAME.into(), sa.clone());
        context.insert(EPHEMERAL.into(), "true".into());
    }
    if let Some(requests) = spec.token_requests.as_ref().filter(|r| !r.is_empty()) {
        let audiences: Vec<TokenAudience<'_>> = requests
            .iter()
            .map(|r| TokenAudience {
                audience: &r.audience,
                expiration_seconds: r.expiration_seconds,
            })
            .collect();
        let tokens = pod_tokens(client, pod, &audiences)
            .await
            .map_err(|e| match e {
                TokenError::Api(e) => format!(
                    "kubernetes.io/csi: mounter.SetUpAt failed to get service accoount token attributes: {}",
                    api_message(&e)
                ),
                TokenError::NoStatus => {
                    "kubernetes.io/csi: TokenRequest returned no status".to_string()
                }
            })?;
        // Kubernetes 1.35 `serviceAccountTokenInSecrets`: same key, moved to the secrets field.
        if spec.service_account_token_in_secrets == Some(true) {
            secrets.insert(SA_TOKENS.into(), tokens);
        } else {
            context.insert(SA_TOKENS.into(), tokens);
        }
    }

    let request = NodePublishVolumeRequest {
        volume_id: volume_id.clone(),
        publish_context: HashMap::new(),
        staging_target_path: String::new(),
        target_path: target.display().to_string(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: source.fs_type.clone().unwrap_or_default(),
                mount_flags: vec![],
                volume_mount_group: String::new(),
            })),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }),
        readonly: source.read_only.unwrap_or(false),
        secrets,
        volume_context: context,
    };
    NodeClient::new(channel)
        .node_publish_volume(request)
        .await
        .map_err(|e| rpc_error(&e))?;

    let mut st = shared.state();
    let entry = st
        .published
        .entry(target.clone())
        .or_insert_with(|| PublishedVolume {
            namespace: ns.clone(),
            pod: pod_name.clone(),
            pod_uid: uid.clone(),
            volume: volume.to_string(),
            driver: driver.clone(),
            volume_id: volume_id.clone(),
            target_path: target.clone(),
            publish_count: 0,
        });
    entry.publish_count += 1;
    Ok(Mounted {
        driver,
        volume_id,
        target,
        requires_republish: spec.requires_republish == Some(true),
    })
}

/// `NodeUnpublishVolume` for every mounted volume, then kubelet's `removeMountDir`.
async fn teardown(shared: &Arc<Shared>, mounted: &BTreeMap<String, Mounted>) -> Result<(), String> {
    for (volume, m) in mounted {
        let channel = channel_for(shared, &m.driver).ok_or_else(|| {
            format!("UnmountVolume.TearDown failed for volume \"{volume}\" : driver name {} not found in the list of registered CSI drivers", m.driver)
        })?;
        NodeClient::new(channel)
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: m.volume_id.clone(),
                target_path: m.target.display().to_string(),
            })
            .await
            .map_err(|e| {
                format!(
                    "UnmountVolume.TearDown failed for volume \"{volume}\" : {}",
                    rpc_error(&e)
                )
            })?;
        shared.state().published.remove(&m.target);
        // Only empty, unmounted dirs are removed, as kubelet does.
        let _ = std::fs::remove_dir(&m.target);
        if let Some(parent) = m.target.parent() {
            let _ = std::fs::remove_file(parent.join("vol_data.json"));
            let _ = std::fs::remove_dir(parent);
        }
    }
    Ok(())
}

fn channel_for(shared: &Arc<Shared>, driver: &str) -> Option<Channel> {
    if let Some(path) = shared.config.csi_sockets.get(driver) {
        return Some(csi::unix_channel(path));
    }
    let st = shared.state();
    st.drivers
        .get(driver)
        .map(|d| csi::unix_channel(&d.endpoint))
}

fn create_parent(parent: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(parent)
        .map_err(|e| {
            format!(
                "kubernetes.io/csi: mounter.SetUpAt failed to create dir \"{}\": {e}",
                parent.display()
            )
        })
}

/// Go's `status.Error` text: `rpc error: code = <Code> desc = <message>`.
fn rpc_error(status: &tonic::Status) -> String {
    format!(
        "rpc error: code = {:?} desc = {}",
        status.code(),
        status.message()
    )
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

async fn mark_running(pods: &Api<Pod>, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let containers: Vec<serde_json::Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "containerID": format!("testenv://{}/{}", pod.metadata.uid.clone().unwrap_or_default(), c.name),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    let condition = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    let status = json!({"status": {
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": now,
        "conditions": [
            condition("PodReadyToStartContainers"),
            condition("Initialized"),
            condition("Ready"),
            condition("ContainersReady"),
            condition("PodScheduled"),
        ],
        "containerStatuses": containers,
    }});
    let name = pod.metadata.name.clone().unwrap_or_default();
    tracing::debug!(pod = %name, node, "kubelet sim marks pod running");
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map(|_| ())
}

/// Records a core/v1 Event like kubelet's recorder (source `kubelet`, host = node).
async fn record_event(shared: &Arc<Shared>, pod: &Pod, type_: &str, reason: &str, message: &str) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    shared.state().events.push(SimEvent {
        namespace: ns.clone(),
        pod: name.clone(),
        type_: type_.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
    });
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let node = &shared.config.node_name;
    let event: Result<Event, _> = serde_json::from_value(json!({
        "metadata": {"generateName": format!("{name}."), "namespace": ns},
        "involvedObject": {
            "apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name,
            "uid": pod.metadata.uid,
        },
        "type": type_,
        "reason": reason,
        "message": message,
        "source": {"component": "kubelet", "host": node},
        "reportingComponent": "kubelet",
        "reportingInstance": node,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }));
    if let Ok(event) = event {
        let events: Api<Event> = Api::namespaced(shared.client.clone(), &ns);
        let _ = events.create(&PostParams::default(), &event).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_handle_is_kubelets() {
        // sha256("uid-1" + "vol") computed independently with sha256sum.
        let h = volume_handle("uid-1", "vol");
        assert!(h.starts_with("csi-"));
        assert_eq!(h.len(), 4 + 64);
        assert_eq!(
            h,
            format!("csi-{}", hex::encode(Sha256::digest(b"uid-1vol")))
        );
    }

    #[test]
    fn target_path_layout() {
        assert_eq!(
            target_path(Path::new("/var/lib/kubelet"), "u", "v"),
            PathBuf::from("/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount")
        );
    }
}
