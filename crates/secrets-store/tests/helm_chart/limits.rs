//! What the agent's identity is refused for real, by RBAC or by the chart's admission policies:
//! the requests a compromised node would send, not only access reviews.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use secrets_store_api::crd::SecretProviderClassPodStatus;
use secrets_store_testenv::eventually;

/// The rollout's annotation on a pod template.
const DIGEST: &str = "secrets-store.csi.x-k8s.io/secret-digest-synced";

/// Asserts `result` is a 403 whose message contains `by` (the policy's name, or RBAC's wording).
fn assert_refused<T: std::fmt::Debug>(result: Result<T, kube::Error>, by: &str, what: &str) {
    match result {
        Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains(by) => {}
        other => panic!("{what}: expected a 403 naming {by:?}, got {other:?}"),
    }
}

/// RBAC's wording of a refusal.
const RBAC: &str = "cannot";

/// Without sync: the agent applies status objects (as the driver does) but can neither replace
/// nor delete one.
pub async fn agent_writes_statuses_only_by_apply(agent: &Client, ns: &str) {
    let api: Api<SecretProviderClassPodStatus> = Api::namespaced(agent.clone(), ns);
    let status: SecretProviderClassPodStatus = serde_json::from_value(serde_json::json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClassPodStatus",
        "metadata": {"name": "web-0-ns-spc"},
        "status": {"podName": "web-0", "secretProviderClassName": "spc", "mounted": true,
            "targetPath": "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount"},
    }))
    .unwrap();
    let stored = api
        .patch(
            "web-0-ns-spc",
            &PatchParams::apply("secrets-store-rs").force(),
            &Patch::Apply(&status),
        )
        .await
        .expect("the agent applies its status objects");
    assert_refused(
        api.replace("web-0-ns-spc", &PostParams::default(), &stored)
            .await,
        RBAC,
        "the agent replacing a status",
    );
    assert_refused(
        api.delete("web-0-ns-spc", &DeleteParams::default()).await,
        RBAC,
        "the agent deleting a status",
    );
}

/// With sync: the agent cannot delete or replace a Secret.
pub async fn agent_cannot_delete_or_replace_secrets(agent: &Client, admin: &Client, ns: &str) {
    let secrets: Api<Secret> = Api::namespaced(agent.clone(), ns);
    let secret = managed_secret(admin, ns, "synced").await;
    assert_refused(
        secrets.delete("synced", &DeleteParams::default()).await,
        RBAC,
        "the agent deleting a Secret",
    );
    assert_refused(
        secrets
            .replace("synced", &PostParams::default(), &secret)
            .await,
        RBAC,
        "the agent replacing a Secret",
    );
}

/// With sync: everything RBAC lets the agent write to Secrets (create and patch, cluster-wide)
/// is confined by the chart's `synced-secrets` policy to managed Secrets of a type sync allows.
/// A compromised node cannot mint a service-account-token Secret (the token controller would
/// fill it), write an unmanaged Secret, or adopt a user's by labelling it.
pub async fn agent_writes_only_managed_syncable_secrets(agent: &Client, admin: &Client, ns: &str) {
    const POLICY: &str = "synced-secrets";
    let secrets: Api<Secret> = Api::namespaced(agent.clone(), ns);
    let pp = PostParams::default();
    let secret = |name: &str, managed: bool, type_: &str| -> Secret {
        let labels = if managed {
            serde_json::json!({"secrets-store.csi.k8s.io/managed": "true"})
        } else {
            serde_json::json!({})
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels,
                "annotations": {"kubernetes.io/service-account.name": "default"}},
            "type": type_,
        }))
        .unwrap()
    };
    // Policies reach the admission chain asynchronously: wait for the first refusal.
    eventually(
        Duration::from_secs(30),
        "the synced-secrets policy in force",
        || async {
            match secrets.create(&pp, &secret("probe", false, "Opaque")).await {
                Ok(_) => {
                    let _ = Api::<Secret>::namespaced(admin.clone(), ns)
                        .delete("probe", &DeleteParams::default())
                        .await;
                    None
                }
                Err(_) => Some(()),
            }
        },
    )
    .await;
    assert_refused(
        secrets.create(&pp, &secret("plain", false, "Opaque")).await,
        POLICY,
        "the agent creating an unmanaged Secret",
    );
    assert_refused(
        secrets
            .create(
                &pp,
                &secret("token", true, "kubernetes.io/service-account-token"),
            )
            .await,
        POLICY,
        "the agent creating a service-account-token Secret",
    );
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&pp, &secret("users", false, "Opaque"))
        .await
        .unwrap();
    assert_refused(
        secrets
            .patch(
                "users",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"labels": {"secrets-store.csi.k8s.io/managed": "true"}}})),
            )
            .await,
        POLICY,
        "the agent adopting a user's Secret by labelling it",
    );
    secrets
        .create(&pp, &secret("synced-by-agent", true, "Opaque"))
        .await
        .expect("a managed Opaque Secret is what the agent writes");
}

/// A managed Secret `name` in `ns`, created by the admin.
async fn managed_secret(admin: &Client, ns: &str, name: &str) -> Secret {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"secrets-store.csi.k8s.io/managed": "true"},
            "annotations": {"team": "a"}},
        "data": {"k": "dg=="},
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap()
}

/// Whoever rolls (`roller`: the node agent, or the controller) may change nothing in a
/// Deployment, StatefulSet or DaemonSet but the secret-digest annotations of its pod template.
pub async fn can_only_roll_workloads(roller: &Client, admin: &Client, ns: &str) {
    let pod_template = serde_json::json!({
        "metadata": {"labels": {"app": "app"}},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.14.2"}]},
    });
    let selector = serde_json::json!({"matchLabels": {"app": "app"}});
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "app"},
        "spec": {"replicas": 1, "selector": selector, "template": pod_template},
    }))
    .unwrap();
    let stateful_set: StatefulSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "app"},
        "spec": {"replicas": 1, "serviceName": "app", "selector": selector, "template": pod_template},
    }))
    .unwrap();
    let daemon_set: DaemonSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "app"},
        "spec": {"selector": selector, "template": pod_template},
    }))
    .unwrap();
    let pp = PostParams::default();
    Api::<Deployment>::namespaced(admin.clone(), ns)
        .create(&pp, &deployment)
        .await
        .unwrap();
    Api::<StatefulSet>::namespaced(admin.clone(), ns)
        .create(&pp, &stateful_set)
        .await
        .unwrap();
    Api::<DaemonSet>::namespaced(admin.clone(), ns)
        .create(&pp, &daemon_set)
        .await
        .unwrap();
    confined::<Deployment>(roller, admin, ns).await;
    confined::<StatefulSet>(roller, admin, ns).await;
    confined::<DaemonSet>(roller, admin, ns).await;
}

/// Without workload RBAC (the node agent while the controller rolls): refused by RBAC before any
/// admission policy, for each kind and even for the digest annotation alone.
pub async fn cannot_patch_workloads(agent: &Client, ns: &str) {
    let digest =
        serde_json::json!({"spec": {"template": {"metadata": {"annotations": {DIGEST: "x"}}}}});
    let pp = PatchParams::default();
    assert_refused(
        Api::<Deployment>::namespaced(agent.clone(), ns)
            .patch("app", &pp, &Patch::Merge(&digest))
            .await,
        RBAC,
        "the agent patching a Deployment",
    );
    assert_refused(
        Api::<StatefulSet>::namespaced(agent.clone(), ns)
            .patch("app", &pp, &Patch::Merge(&digest))
            .await,
        RBAC,
        "the agent patching a StatefulSet",
    );
    assert_refused(
        Api::<DaemonSet>::namespaced(agent.clone(), ns)
            .patch("app", &pp, &Patch::Merge(&digest))
            .await,
        RBAC,
        "the agent patching a DaemonSet",
    );
}

/// The controller may record its digest on a managed Secret and change nothing else in it: not
/// the data, the labels, other annotations; and it may neither delete nor replace one.
pub async fn controller_can_only_record_digests(controller: &Client, admin: &Client, ns: &str) {
    const POLICY: &str = "secrets-store-rs-controller-secrets";
    const RECORDED: &str = "secrets-store.csi.x-k8s.io/rolled-out-digest";
    let secret = managed_secret(admin, ns, "recorded").await;
    let api: Api<Secret> = Api::namespaced(controller.clone(), ns);
    let merge = |patch: serde_json::Value| {
        let api = api.clone();
        async move {
            api.patch("recorded", &PatchParams::default(), &Patch::Merge(patch))
                .await
        }
    };
    let data = serde_json::json!({"data": {"k": "ZXZpbA=="}});
    let refused = eventually(
        Duration::from_secs(60),
        "the controller-secrets policy in force",
        || async {
            match merge(data.clone()).await {
                Ok(_) => {
                    Api::<Secret>::namespaced(admin.clone(), ns)
                        .patch(
                            "recorded",
                            &PatchParams::default(),
                            &Patch::Merge(serde_json::json!({"data": {"k": "dg=="}})),
                        )
                        .await
                        .unwrap();
                    None
                }
                Err(e) => Some(e),
            }
        },
    )
    .await;
    assert_refused(
        Err::<(), _>(refused),
        POLICY,
        "the controller changing a Secret's data",
    );
    for (what, patch) in [
        (
            "its labels",
            serde_json::json!({"metadata": {"labels": {"secrets-store.csi.k8s.io/managed": null}}}),
        ),
        (
            "its other annotations",
            serde_json::json!({"metadata": {"annotations": {"team": "b"}}}),
        ),
        (
            "its owners",
            serde_json::json!({"metadata": {"ownerReferences": [{"apiVersion": "v1",
                "kind": "ConfigMap", "name": "x", "uid": "00000000-0000-0000-0000-000000000000"}]}}),
        ),
        // (Its type the apiserver keeps immutable by itself.)
        ("its mutability", serde_json::json!({"immutable": true})),
        (
            "the digest together with the data",
            serde_json::json!({"metadata": {"annotations": {RECORDED: "d"}}, "data": {"k": "eA=="}}),
        ),
    ] {
        assert_refused(
            merge(patch).await,
            POLICY,
            &format!("the controller changing a Secret's {what}"),
        );
    }
    assert_refused(
        api.delete("recorded", &DeleteParams::default()).await,
        RBAC,
        "the controller deleting a Secret",
    );
    assert_refused(
        api.replace("recorded", &PostParams::default(), &secret)
            .await,
        RBAC,
        "the controller replacing a Secret",
    );
    merge(serde_json::json!({"metadata": {"annotations": {RECORDED: "d1"}}}))
        .await
        .expect("the controller records its digest");
    merge(serde_json::json!({"metadata": {"annotations": {RECORDED: "d2"}}}))
        .await
        .expect("the controller changes its digest");
}

/// The rollout-only policy on workload `app` of kind `K`.
async fn confined<K>(roller: &Client, admin: &Client, ns: &str)
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    const POLICY: &str = "secrets-store-rs-rollout-only";
    let kind = K::kind(&());
    let as_roller: Api<K> = Api::namespaced(roller.clone(), ns);
    let as_admin: Api<K> = Api::namespaced(admin.clone(), ns);
    let merge = |patch: serde_json::Value| {
        let api = as_roller.clone();
        async move {
            api.patch("app", &PatchParams::default(), &Patch::Merge(patch))
                .await
        }
    };
    let image = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "registry.example/evil:latest"}]}}}});
    // Policies reach admission asynchronously after the upgrade created them.
    let refused = eventually(
        Duration::from_secs(60),
        "the rollout-only policy in force",
        || async {
            match merge(image.clone()).await {
                Ok(_) => {
                    let undo = serde_json::json!({"spec": {"template": {"spec": {"containers": [
                        {"name": "app", "image": "nginx:1.14.2"}]}}}});
                    as_admin
                        .patch("app", &PatchParams::default(), &Patch::Merge(undo))
                        .await
                        .unwrap();
                    None
                }
                Err(e) => Some(e),
            }
        },
    )
    .await;
    assert_refused(
        Err::<(), _>(refused),
        POLICY,
        &format!("the roller changing a {kind}'s image"),
    );
    let digest = |value: &str| serde_json::json!({"spec": {"template": {"metadata": {"annotations": {DIGEST: value}}}}});
    for (what, patch) in [
        (
            "a pod template's other annotations",
            serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
                "container.apparmor.security.beta.kubernetes.io/app": "unconfined"}}}}}),
        ),
        (
            "a pod template's labels",
            serde_json::json!({"spec": {"template": {"metadata": {"labels": {"tier": "x"}}}}}),
        ),
        (
            "a pod template's service account",
            serde_json::json!({"spec": {"template": {"spec": {"serviceAccountName": "admin"}}}}),
        ),
        (
            "the workload's owners",
            serde_json::json!({"metadata": {"ownerReferences": [{"apiVersion": "v1",
                "kind": "ConfigMap", "name": "x", "uid": "00000000-0000-0000-0000-000000000000"}]}}),
        ),
        (
            "the workload's finalizers",
            serde_json::json!({"metadata": {"finalizers": ["example.com/block"]}}),
        ),
        (
            "the workload's other spec fields",
            serde_json::json!({"spec": {"minReadySeconds": 5}}),
        ),
        (
            "the workload's labels",
            serde_json::json!({"metadata": {"labels": {"tier": "x"}}}),
        ),
        (
            "a digest together with anything else",
            serde_json::json!({"spec": {"template": {"metadata": {"annotations": {DIGEST: "a"}},
                "spec": {"hostNetwork": true}}}}),
        ),
    ] {
        assert_refused(
            merge(patch).await,
            POLICY,
            &format!("the roller changing {what} of a {kind}"),
        );
    }
    if kind != "DaemonSet" {
        assert_refused(
            merge(serde_json::json!({"spec": {"replicas": 0}})).await,
            POLICY,
            &format!("the roller scaling a {kind}"),
        );
    }
    // What rollout writes passes, a changed digest included, and the policy binds no one else.
    merge(digest("first"))
        .await
        .unwrap_or_else(|e| panic!("the roller setting a {kind}'s digest annotation: {e}"));
    merge(digest("second"))
        .await
        .unwrap_or_else(|e| panic!("the roller changing a {kind}'s digest annotation: {e}"));
    as_admin
        .patch("app", &PatchParams::default(), &Patch::Merge(image))
        .await
        .unwrap_or_else(|e| panic!("the admin changing a {kind}'s image: {e}"));
}

/// The controller's `create` on Secrets in the release namespace (for the rollout key; RBAC
/// cannot limit create by name) creates nothing else: not another Secret, and never a
/// service-account-token Secret that the token controller would fill with a token.
pub async fn controller_creates_only_the_rollout_key(controller: &Client, release_ns: &str) {
    const POLICY: &str = "secrets-store-rs-controller-secrets";
    let api: Api<Secret> = Api::namespaced(controller.clone(), release_ns);
    let secret = |name: &str, type_: &str| -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name,
                "annotations": {"kubernetes.io/service-account.name": "default"}},
            "type": type_,
        }))
        .unwrap()
    };
    for (what, name, type_) in [
        (
            "a token Secret",
            "token",
            "kubernetes.io/service-account-token",
        ),
        ("another Secret", "other", "Opaque"),
        (
            "a token Secret under the key's name",
            "secrets-store-rs-rollout-key",
            "kubernetes.io/service-account-token",
        ),
    ] {
        assert_refused(
            api.create(&PostParams::default(), &secret(name, type_))
                .await,
            POLICY,
            &format!("the controller creating {what}"),
        );
    }
}
