//! Each rule of [`NodeVolumes::verify`], one constructed object at a time.

use super::*;

use secrets_store_api::crd::SecretProviderClassPodStatusStatus;
use secrets_store_api::labels;
use secrets_store_driver::MOUNT_SOURCE;

const KUBELET: &str = "/var/lib/kubelet";
const NODE: &str = "node-1";
const UID: &str = "3f1c-uid";
const VOLUME: &str = "secrets";
const CLASS: &str = "app-secrets";

fn target_of(uid: &str, volume: &str) -> String {
    format!("{KUBELET}/pods/{uid}/volumes/kubernetes.io~csi/{volume}/mount")
}

/// The pod `web` in `team` on [`NODE`] with one volume of ours using [`CLASS`].
fn pod() -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "team", "uid": UID},
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "app", "image": "app"}],
            "volumes": [
                {"name": VOLUME, "csi": {"driver": labels::DRIVER_NAME,
                    "volumeAttributes": {"secretProviderClass": CLASS}}},
                {"name": "other-driver", "csi": {"driver": "other.csi.example.com",
                    "volumeAttributes": {"secretProviderClass": CLASS}}},
                {"name": "other-class", "csi": {"driver": labels::DRIVER_NAME,
                    "volumeAttributes": {"secretProviderClass": "someone-elses"}}},
                {"name": "scratch", "emptyDir": {}},
            ],
        }
    }))
    .unwrap()
}

/// The status the driver writes for [`pod`]'s volume.
fn status() -> SecretProviderClassPodStatus {
    let mut status = SecretProviderClassPodStatus::for_pod(
        "team",
        SecretProviderClassPodStatusStatus {
            pod_name: "web".into(),
            secret_provider_class_name: CLASS.into(),
            mounted: true,
            target_path: target_of(UID, VOLUME),
            objects: Vec::new(),
        },
    );
    status.metadata.owner_references = Some(vec![owner(UID)]);
    status
}

fn owner(uid: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: "web".into(),
        uid: uid.into(),
        ..Default::default()
    }
}

fn with_target(target: &str) -> SecretProviderClassPodStatus {
    let mut s = status();
    s.status.as_mut().unwrap().target_path = target.into();
    s
}

/// A mount table with our tmpfs at each of `paths`.
fn mounted(paths: &[String]) -> MountTable {
    let info: String = paths
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{i} 1 0:{i} / {p} rw - tmpfs {MOUNT_SOURCE} rw\n"))
        .collect();
    MountTable::parse(&info)
}

fn node() -> NodeVolumes {
    NodeVolumes::new(NODE, Path::new(KUBELET))
}

fn verify(status: &SecretProviderClassPodStatus, pod: &Pod) -> Result<PathBuf, UntrustedTarget> {
    let every_volume = ["secrets", "other-driver", "other-class", "scratch", "gone"]
        .iter()
        .flat_map(|v| [target_of(UID, v), target_of("earlier-uid", v)])
        .collect::<Vec<_>>();
    node()
        .verify(status, pod, &mounted(&every_volume))
        .map(|t| t.path().to_path_buf())
}

#[test]
fn the_status_the_driver_writes_is_accepted() {
    assert_eq!(
        verify(&status(), &pod()).unwrap(),
        Path::new(&target_of(UID, VOLUME))
    );
}

#[test]
fn paths_outside_kubelets_volume_layout_are_refused() {
    for target in [
        "/var/run/secrets/kubernetes.io/serviceaccount",
        "/",
        "",
        &format!("{KUBELET}/pods/{UID}/volumes/kubernetes.io~projected/{VOLUME}/mount"),
        &format!("{KUBELET}/pods/{UID}/volumes/kubernetes.io~csi/{VOLUME}/mount/.."),
        &format!("{KUBELET}/pods/{UID}/volumes/kubernetes.io~csi/../../../../etc/mount"),
        &format!("/other-kubelet/pods/{UID}/volumes/kubernetes.io~csi/{VOLUME}/mount"),
    ] {
        let err = verify(&with_target(target), &pod()).unwrap_err();
        assert!(
            matches!(err, UntrustedTarget::NotAVolumePath { .. }),
            "{target}: {err}"
        );
        assert!(err.is_suspicious());
    }
    // A status without a status block claims nothing readable either.
    let mut empty = status();
    empty.status = None;
    assert!(matches!(
        verify(&empty, &pod()),
        Err(UntrustedTarget::NotAVolumePath { .. })
    ));
}

#[test]
fn another_pods_volume_is_refused() {
    // The right shape, really mounted, but the uid of another pod.
    let err = verify(&with_target(&target_of("victim-uid", VOLUME)), &pod()).unwrap_err();
    assert!(matches!(err, UntrustedTarget::OtherPod { .. }), "{err}");
    assert!(err.to_string().contains("has uid"), "{err}");
    // Claiming the victim as owner too does not help: the pod named is not the victim.
    let mut s = with_target(&target_of("victim-uid", VOLUME));
    s.metadata.owner_references = Some(vec![owner(UID), owner("other")]);
    assert!(matches!(
        verify(&s, &pod()),
        Err(UntrustedTarget::OtherPod { .. })
    ));
}

#[test]
fn a_status_of_an_earlier_pod_of_that_name_is_stale_not_suspicious() {
    let mut s = with_target(&target_of("earlier-uid", VOLUME));
    s.metadata.owner_references = Some(vec![owner("earlier-uid")]);
    let err = verify(&s, &pod()).unwrap_err();
    assert!(matches!(err, UntrustedTarget::PodReplaced { .. }), "{err}");
    assert!(!err.is_suspicious());
}

#[test]
fn the_pod_must_be_the_named_one_on_this_node() {
    let mut s = status();
    s.status.as_mut().unwrap().pod_name = "other".into();
    assert!(matches!(
        verify(&s, &pod()),
        Err(UntrustedTarget::NotTheNamedPod { .. })
    ));
    let mut s = status();
    s.metadata.namespace = Some("elsewhere".into());
    assert!(matches!(
        verify(&s, &pod()),
        Err(UntrustedTarget::NotTheNamedPod { .. })
    ));
    for node_name in [Some("node-2"), None] {
        let mut p = pod();
        p.spec.as_mut().unwrap().node_name = node_name.map(String::from);
        assert!(matches!(
            verify(&status(), &p),
            Err(UntrustedTarget::OtherNode { .. })
        ));
    }
}

#[test]
fn the_status_must_be_owned_by_the_pod() {
    for owners in [
        None,
        Some(vec![]),
        Some(vec![owner("someone-else")]),
        Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                kind: "ReplicaSet".into(),
                ..owner(UID)
            },
        ]),
        Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                name: "not-web".into(),
                ..owner(UID)
            },
        ]),
    ] {
        let mut s = status();
        s.metadata.owner_references = owners.clone();
        let err = verify(&s, &pod()).unwrap_err();
        assert!(
            matches!(err, UntrustedTarget::NotOwnedByPod { .. }),
            "{owners:?}: {err}"
        );
    }
}

#[test]
fn the_volume_must_be_ours_with_the_statuss_class() {
    for (volume, variant) in [
        ("gone", "NoSuchVolume"),
        ("scratch", "NotOurDriver"),
        ("other-driver", "NotOurDriver"),
        ("other-class", "OtherClass"),
    ] {
        let err = verify(&with_target(&target_of(UID, volume)), &pod()).unwrap_err();
        assert!(format!("{err:?}").starts_with(variant), "{volume}: {err:?}");
        assert!(err.is_suspicious());
    }
}

#[test]
fn only_a_tmpfs_this_driver_mounted_is_read() {
    let ours = target_of(UID, VOLUME);
    let check = |info: &str| node().verify(&status(), &pod(), &MountTable::parse(info));
    for info in [
        String::new(),
        format!("1 1 0:1 / {ours} rw - tmpfs shm rw\n"),
        format!("1 1 0:1 / {ours} rw - ext4 /dev/sda1 rw\n"),
        format!("1 1 0:1 / {ours}/x rw - tmpfs {MOUNT_SOURCE} rw\n"),
    ] {
        let err = check(&info).unwrap_err();
        assert!(
            matches!(err, UntrustedTarget::NotOurMount { .. }),
            "{info}: {err}"
        );
        assert!(
            err.to_string()
                .contains("not a tmpfs mounted by this driver")
        );
    }
    assert!(check(&format!("1 1 0:1 / {ours} rw - tmpfs {MOUNT_SOURCE} rw\n")).is_ok());
    // Volumes mounted before an upgrade keep syncing until their pods are recreated.
    assert!(check(&format!("1 1 0:1 / {ours} rw - tmpfs tmpfs rw\n")).is_ok());
}
