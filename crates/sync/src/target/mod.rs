//! Which directory a volume's files may be read back from.
//!
//! A SecretProviderClassPodStatus is a claim, not a fact: whoever may create one in a namespace
//! can write any path into `status.targetPath`, and the agent reads files as root. So a target is
//! accepted only if it is exactly where kubelet has our driver mount a volume of the pod the
//! status names, that pod runs on this node and owns the status, the volume is ours and uses the
//! status's class, and this driver has its tmpfs mounted there. [`VerifiedTarget`] is the only way
//! to read a volume from disk, and [`NodeVolumes::verify`] the only way to get one.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use secrets_store_api::crd::{SecretProviderClassPodStatus, SecretProviderClassPodStatusStatus};
use secrets_store_api::labels::DRIVER_NAME;
use secrets_store_driver::SECRET_PROVIDER_CLASS_KEY;
use secrets_store_driver::{KubeletTarget, MountTable};

/// This node as far as its volumes go: its name and kubelet's root directory.
#[derive(Clone, Debug)]
pub struct NodeVolumes {
    node_name: String,
    kubelet_dir: PathBuf,
    /// `kubelet_dir` with symlinks resolved: mount points appear that way in the mount table.
    kubelet_dir_resolved: PathBuf,
}

/// A volume directory that passed [`NodeVolumes::verify`].
#[derive(Debug)]
pub struct VerifiedTarget(PathBuf);

impl VerifiedTarget {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// Why a status's target path is not read. Names paths and objects, never file contents.
#[derive(Debug, thiserror::Error)]
pub enum UntrustedTarget {
    /// The path is not kubelet's layout for a CSI volume under this node's kubelet directory.
    #[error(
        "target path {target:?} is not {}/pods/<pod uid>/volumes/kubernetes.io~csi/<volume>/mount",
        kubelet_dir.display()
    )]
    NotAVolumePath {
        /// The claimed path.
        target: String,
        /// This node's kubelet directory.
        kubelet_dir: PathBuf,
    },
    /// The pod passed in is not the one the status names (a caller's mistake).
    #[error("the status names pod {named:?}, not {pod}")]
    NotTheNamedPod {
        /// `status.podName`.
        named: String,
        /// The pod given.
        pod: String,
    },
    /// The path is another pod's.
    #[error("target path is pod uid {path_uid}'s, but pod {pod} has uid {pod_uid}")]
    OtherPod {
        /// The pod.
        pod: String,
        /// Its UID.
        pod_uid: String,
        /// The UID in the path.
        path_uid: String,
    },
    /// The status was written for an earlier pod of the same name (a StatefulSet's pod was
    /// replaced and the status not yet rewritten or collected).
    #[error(
        "the status was written for an earlier pod {pod} (uid {path_uid}); it now has uid {pod_uid}"
    )]
    PodReplaced {
        /// The pod.
        pod: String,
        /// Its current UID.
        pod_uid: String,
        /// The earlier pod's UID, in the path and the owner reference.
        path_uid: String,
    },
    /// The pod runs on another node (or none yet).
    #[error("pod {pod} runs on node {pod_node:?}, not on this node {node:?}")]
    OtherNode {
        /// The pod.
        pod: String,
        /// Its `spec.nodeName`.
        pod_node: String,
        /// This node.
        node: String,
    },
    /// The status lacks the owner reference to its pod that the driver writes.
    #[error("the status is not owned by pod {pod} (uid {pod_uid}), as the driver writes it")]
    NotOwnedByPod {
        /// The pod.
        pod: String,
        /// Its UID.
        pod_uid: String,
    },
    /// The pod has no volume of that name.
    #[error("pod {pod} has no volume {volume:?}")]
    NoSuchVolume {
        /// The pod.
        pod: String,
        /// The volume named by the path.
        volume: String,
    },
    /// The volume is not a CSI volume of this driver.
    #[error("volume {volume:?} of pod {pod} is not a CSI volume of driver {DRIVER_NAME}")]
    NotOurDriver {
        /// The pod.
        pod: String,
        /// The volume.
        volume: String,
    },
    /// The volume uses another class than the status.
    #[error(
        "volume {volume:?} of pod {pod} uses SecretProviderClass {volume_class:?}, not the status's {status_class:?}"
    )]
    OtherClass {
        /// The pod.
        pod: String,
        /// The volume.
        volume: String,
        /// The volume's `secretProviderClass` attribute.
        volume_class: String,
        /// The status's class.
        status_class: String,
    },
    /// Nothing, or something other than this driver's tmpfs, is mounted at the path.
    #[error("{target:?} is not a tmpfs mounted by this driver")]
    NotOurMount {
        /// The path.
        target: PathBuf,
    },
}

impl UntrustedTarget {
    /// Whether the status claims something the driver never wrote (a Warning Event), rather than
    /// having outlived its pod (normal until it is rewritten or garbage collected).
    pub fn is_suspicious(&self) -> bool {
        !matches!(self, Self::PodReplaced { .. })
    }
}

impl NodeVolumes {
    /// The volumes of node `node_name`, whose kubelet keeps them under `kubelet_dir`.
    pub fn new(node_name: &str, kubelet_dir: &Path) -> Self {
        Self {
            node_name: node_name.to_string(),
            kubelet_dir: kubelet_dir.to_path_buf(),
            kubelet_dir_resolved: std::fs::canonicalize(kubelet_dir)
                .unwrap_or_else(|_| kubelet_dir.to_path_buf()),
        }
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Accepts `status.targetPath` only if every rule in the module docs holds, checked in that
    /// order; `pod` is the pod `status.podName` names in the status's namespace, and `mounts` a
    /// recent mount table of this process.
    pub fn verify(
        &self,
        status: &SecretProviderClassPodStatus,
        pod: &Pod,
        mounts: &MountTable,
    ) -> Result<VerifiedTarget, UntrustedTarget> {
        let unset = SecretProviderClassPodStatusStatus::default();
        let fields = status.status.as_ref().unwrap_or(&unset);
        let target =
            KubeletTarget::parse(&self.kubelet_dir, &fields.target_path).ok_or_else(|| {
                UntrustedTarget::NotAVolumePath {
                    target: fields.target_path.clone(),
                    kubelet_dir: self.kubelet_dir.clone(),
                }
            })?;
        let pod_name = pod.name_any();
        if fields.pod_name != pod_name || status.namespace() != pod.namespace() {
            return Err(UntrustedTarget::NotTheNamedPod {
                named: fields.pod_name.clone(),
                pod: pod_name,
            });
        }
        let pod_uid = pod.uid().unwrap_or_default();
        let owned_by = |uid: &str| {
            status.owner_references().iter().any(|o| {
                o.api_version == "v1" && o.kind == "Pod" && o.name == pod_name && o.uid == uid
            })
        };
        if target.pod_uid != pod_uid {
            let (pod, path_uid) = (pod_name.clone(), target.pod_uid.clone());
            return Err(if owned_by(&target.pod_uid) {
                UntrustedTarget::PodReplaced {
                    pod,
                    pod_uid,
                    path_uid,
                }
            } else {
                UntrustedTarget::OtherPod {
                    pod,
                    pod_uid,
                    path_uid,
                }
            });
        }
        let spec = pod.spec.as_ref();
        let pod_node = spec
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default();
        if pod_node != self.node_name {
            return Err(UntrustedTarget::OtherNode {
                pod: pod_name,
                pod_node: pod_node.to_string(),
                node: self.node_name.clone(),
            });
        }
        if !owned_by(&pod_uid) {
            return Err(UntrustedTarget::NotOwnedByPod {
                pod: pod_name,
                pod_uid,
            });
        }
        let volume = spec
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .find(|v| v.name == target.volume)
            .ok_or_else(|| UntrustedTarget::NoSuchVolume {
                pod: pod_name.clone(),
                volume: target.volume.clone(),
            })?;
        let csi = volume
            .csi
            .as_ref()
            .filter(|c| c.driver == DRIVER_NAME)
            .ok_or_else(|| UntrustedTarget::NotOurDriver {
                pod: pod_name.clone(),
                volume: target.volume.clone(),
            })?;
        let volume_class = csi
            .volume_attributes
            .as_ref()
            .and_then(|a| a.get(SECRET_PROVIDER_CLASS_KEY))
            .map(String::as_str)
            .unwrap_or_default();
        if volume_class != fields.secret_provider_class_name {
            return Err(UntrustedTarget::OtherClass {
                pod: pod_name,
                volume: target.volume,
                volume_class: volume_class.to_string(),
                status_class: fields.secret_provider_class_name.clone(),
            });
        }
        if !mounts.is_ours(&target.path(&self.kubelet_dir_resolved)) {
            return Err(UntrustedTarget::NotOurMount {
                target: target.path(&self.kubelet_dir),
            });
        }
        Ok(VerifiedTarget(target.path(&self.kubelet_dir)))
    }
}

#[cfg(test)]
mod tests;
