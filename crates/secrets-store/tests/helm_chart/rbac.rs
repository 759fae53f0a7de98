//! `helm install` into the test apiserver and the RBAC its ServiceAccount gets, checked by
//! impersonating it: what the node agent needs and nothing more, and what it is refused for real
//! (by RBAC and by the chart's admission policies).

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    SelfSubjectRulesReview, SelfSubjectRulesReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::api::storage::v1::CSIDriver;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use secrets_store_testenv::Cluster;

use crate::chart::{as_agent, as_controller, helm_release, helm_uninstall};
use crate::{INSTALL, NAME, limits};

/// Whether the impersonated identity may do `verb` on `resource` (`group/resource[/sub]`).
async fn can(client: &Client, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
    let (group, rest) = resource.split_once('/').unwrap_or(("", resource));
    let (resource, subresource) = match rest.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (rest, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.to_string()),
                resource: Some(resource.to_string()),
                subresource,
                verb: Some(verb.to_string()),
                namespace: namespace.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    api.create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectAccessReview")
        .status
        .expect("review status")
        .allowed
}

/// Every (group/resource, verb) the identity holds in `ns`, minus what every authenticated user
/// holds (the self-review APIs).
async fn rules_in(client: &Client, ns: &str) -> BTreeSet<String> {
    let api: Api<SelfSubjectRulesReview> = Api::all(client.clone());
    let review = SelfSubjectRulesReview {
        spec: SelfSubjectRulesReviewSpec {
            namespace: Some(ns.to_string()),
        },
        ..Default::default()
    };
    let status = api
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectRulesReview")
        .status
        .expect("rules status");
    let mut out = BTreeSet::new();
    for rule in status.resource_rules {
        let groups = rule.api_groups.unwrap_or_default();
        if groups
            .iter()
            .any(|g| g == "authorization.k8s.io" || g == "authentication.k8s.io")
        {
            continue;
        }
        let names = rule.resource_names.unwrap_or_default();
        for g in &groups {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    let suffix = if names.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", names.join(","))
                    };
                    out.insert(format!("{g}/{r} {v}{suffix}"));
                }
            }
        }
    }
    out
}

/// The rules the node agent needs without secret sync: exactly these, nothing else.
fn base_rules() -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    let mut add = |res: &str, verbs: &[&str]| {
        for v in verbs {
            want.insert(format!("{res} {v}"));
        }
    };
    let read = ["get", "list", "watch"];
    add("secrets-store.csi.x-k8s.io/secretproviderclasses", &read);
    add(
        "secrets-store.csi.x-k8s.io/secretproviderclasspodstatuses",
        &["get", "list", "watch", "create", "patch"],
    );
    add("/pods", &read);
    add("/events", &["create", "patch"]);
    add("events.k8s.io/events", &["create", "patch"]);
    add("/serviceaccounts", &read);
    add("/nodes", &["get"]);
    want
}

/// With secret sync and the controller rolling: Secrets, and no workload access at all.
fn sync_rules_without_rollout() -> BTreeSet<String> {
    let mut want = base_rules();
    for v in ["get", "list", "watch", "create", "patch"] {
        want.insert(format!("/secrets {v}"));
    }
    want
}

/// With secret sync and node rollout (no controller): Secrets, and the workload rollout verbs.
fn sync_rules() -> BTreeSet<String> {
    let mut want = sync_rules_without_rollout();
    for r in ["deployments", "statefulsets", "daemonsets"] {
        for v in ["get", "list", "patch"] {
            want.insert(format!("apps/{r} {v}"));
        }
    }
    want
}

/// The controller's rules in a workload namespace: exactly these.
fn controller_rules() -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    for v in ["get", "list", "watch", "patch"] {
        want.insert(format!("/secrets {v}"));
    }
    for r in ["deployments", "statefulsets", "daemonsets"] {
        for v in ["get", "list", "patch"] {
            want.insert(format!("apps/{r} {v}"));
        }
    }
    for v in ["create", "patch"] {
        want.insert(format!("events.k8s.io/events {v}"));
    }
    want
}

/// What the controller must never be able to do: write Secrets beyond a patch (which the
/// controller-secrets policy narrows to one annotation), create or delete workloads, reach pods,
/// nodes, tokens or RBAC.
async fn assert_controller_never(client: &Client, other_ns: &str) {
    for (verb, resource) in [
        ("create", "/secrets"),
        ("update", "/secrets"),
        ("delete", "/secrets"),
        ("deletecollection", "/secrets"),
        ("create", "apps/deployments"),
        ("update", "apps/deployments"),
        ("delete", "apps/deployments"),
        ("patch", "apps/deployments/scale"),
        ("patch", "apps/deployments/status"),
        ("create", "/pods"),
        ("create", "/pods/exec"),
        ("get", "/pods"),
        ("patch", "/nodes"),
        ("create", "/serviceaccounts/token"),
        ("impersonate", "/serviceaccounts"),
        ("list", "/configmaps"),
        (
            "create",
            "secrets-store.csi.x-k8s.io/secretproviderclasspodstatuses",
        ),
        ("patch", "secrets-store.csi.x-k8s.io/secretproviderclasses"),
        ("escalate", "rbac.authorization.k8s.io/clusterroles"),
        ("bind", "rbac.authorization.k8s.io/clusterroles"),
        ("create", "rbac.authorization.k8s.io/rolebindings"),
        ("update", "coordination.k8s.io/leases"),
        ("create", "coordination.k8s.io/leases"),
    ] {
        assert!(
            !can(client, verb, resource, Some(other_ns)).await,
            "the controller must not {verb} {resource} in a workload namespace"
        );
    }
}

/// What the agent must never be able to do, whatever the values. Server-side apply (`patch`,
/// and `create` for a new object) is how it writes statuses and Secrets; nothing it runs
/// updates or deletes either.
async fn assert_never(client: &Client, other_ns: &str) {
    for (verb, resource) in [
        (
            "update",
            "secrets-store.csi.x-k8s.io/secretproviderclasspodstatuses",
        ),
        (
            "delete",
            "secrets-store.csi.x-k8s.io/secretproviderclasspodstatuses",
        ),
        ("update", "/secrets"),
        ("delete", "/secrets"),
        ("deletecollection", "/secrets"),
        ("update", "apps/deployments"),
        ("patch", "apps/deployments/scale"),
        ("patch", "apps/deployments/status"),
        ("create", "/serviceaccounts/token"),
        ("create", "/pods"),
        ("delete", "/pods"),
        ("create", "/pods/exec"),
        ("update", "/nodes"),
        ("patch", "/nodes"),
        ("list", "/configmaps"),
        ("create", "secrets-store.csi.x-k8s.io/secretproviderclasses"),
        ("update", "secrets-store.csi.x-k8s.io/secretproviderclasses"),
        ("delete", "secrets-store.csi.x-k8s.io/secretproviderclasses"),
        ("escalate", "rbac.authorization.k8s.io/clusterroles"),
        ("bind", "rbac.authorization.k8s.io/clusterroles"),
        ("create", "rbac.authorization.k8s.io/rolebindings"),
        ("impersonate", "/serviceaccounts"),
        ("create", "apps/deployments"),
        ("delete", "apps/deployments"),
    ] {
        assert!(
            !can(client, verb, resource, Some(other_ns)).await,
            "the agent must not {verb} {resource}"
        );
    }
}

/// `helm install` into the test apiserver, then the RBAC check (issue 8): impersonating the
/// chart's ServiceAccount, with and without `syncSecret.enabled` (a `helm upgrade`).
#[tokio::test]
async fn helm_install_creates_driver_and_least_privilege_rbac() {
    let _one_release = INSTALL.lock().await;
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let ns = cluster.new_namespace("chart").await;
    let workload_ns = cluster.new_namespace("chart-workload").await;
    let admin = cluster.client();
    helm_release(cluster, "install", &ns, "");

    // CSIDriver exactly as kubelet needs it.
    let driver = Api::<CSIDriver>::all(admin.clone())
        .get("secrets-store.csi.k8s.io")
        .await
        .expect("CSIDriver installed");
    let spec = driver.spec;
    assert_eq!(spec.pod_info_on_mount, Some(true));
    assert_eq!(spec.attach_required, Some(false));
    assert_eq!(spec.volume_lifecycle_modes, Some(vec!["Ephemeral".into()]));
    assert_eq!(spec.requires_republish, Some(false));
    let audiences: Vec<String> = spec
        .token_requests
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.audience)
        .collect();
    assert_eq!(audiences, ["sts.amazonaws.com", "pods.eks.amazonaws.com"]);

    // One container, privileged only for mounting, read-only root filesystem.
    let ds = Api::<DaemonSet>::namespaced(admin.clone(), &ns)
        .get(NAME)
        .await
        .expect("DaemonSet installed");
    let pod_spec = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod_spec.containers.len(),
        1,
        "the DaemonSet has ONE container"
    );
    assert_eq!(pod_spec.service_account_name.as_deref(), Some(NAME));
    let container = &pod_spec.containers[0];
    let sc = container.security_context.clone().unwrap();
    assert_eq!(sc.privileged, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let bidirectional: Vec<String> = container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.mount_propagation.as_deref() == Some("Bidirectional"))
        .map(|m| m.mount_path.clone())
        .collect();
    assert_eq!(bidirectional, ["/var/lib/kubelet/pods"]);
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .get(NAME)
        .await
        .expect("ServiceAccount installed");

    // CRDs present (the chart's crds/ are the generated files; see chart_crds_are_the_generated_ones).
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for name in [
        "secretproviderclasses.secrets-store.csi.x-k8s.io",
        "secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io",
    ] {
        crds.get(name).await.expect("CRD present");
    }
    let role = Api::<ClusterRole>::all(admin.clone())
        .get(NAME)
        .await
        .expect("ClusterRole installed");
    assert!(
        role.rules
            .iter()
            .flatten()
            .all(|r| !r.resources.iter().flatten().any(|x| x == "secrets")),
        "no Secret rule in the base ClusterRole: {:?}",
        role.rules
    );

    // RBAC as the agent, without sync: exactly the base rules, in any namespace.
    let agent = as_agent(cluster, &ns).await;
    assert_eq!(rules_in(&agent, &workload_ns).await, base_rules());
    assert_never(&agent, &workload_ns).await;
    for verb in [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ] {
        assert!(
            !can(&agent, verb, "/secrets", None).await,
            "without syncSecret the agent must not {verb} Secrets"
        );
    }
    // And for real against the apiserver: what it needs works, the rest is refused.
    limits::agent_writes_statuses_only_by_apply(&agent, &workload_ns).await;
    Api::<Pod>::all(agent.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={}", cluster.node_name())))
        .await
        .expect("the agent lists its node's pods");
    let forbidden = Api::<Secret>::all(agent.clone())
        .list(&ListParams::default())
        .await
        .expect_err("cluster-wide Secret list must be refused");
    assert!(
        matches!(forbidden, kube::Error::Api(ref e) if e.code == 403),
        "{forbidden}"
    );

    // With secret sync: Secret and rollout verbs are added, nothing else.
    helm_release(
        cluster,
        "upgrade",
        &ns,
        "syncSecret.enabled=true,enableSecretRotation=true",
    );
    let driver = Api::<CSIDriver>::all(admin.clone())
        .get("secrets-store.csi.k8s.io")
        .await
        .unwrap();
    assert_eq!(driver.spec.requires_republish, Some(true));
    assert_eq!(rules_in(&agent, &workload_ns).await, sync_rules());
    assert_never(&agent, &workload_ns).await;
    limits::agent_cannot_delete_or_replace_secrets(&agent, &admin, &workload_ns).await;
    limits::agent_writes_only_managed_syncable_secrets(&agent, &admin, &workload_ns).await;
    limits::can_only_roll_workloads(&agent, &admin, &workload_ns).await;
    // The rollout key: get by name and create in the agent's own namespace.
    let own = rules_in(&agent, &ns).await;
    assert!(
        own.contains("/secrets get (secrets-store-rs-rollout-key)")
            && own.contains("/secrets create"),
        "{own:?}"
    );
    Api::<Secret>::all(agent.clone())
        .list(&ListParams::default().labels("secrets-store.csi.k8s.io/managed=true"))
        .await
        .expect("with syncSecret the agent lists managed Secrets");

    // With the controller: the node agents lose every workload verb (and the rollout key), the
    // controller rolls, confined like the agent was, and may touch a Secret's digest annotation only.
    let controller_ns = cluster.new_namespace("chart-controller").await;
    helm_release(
        cluster,
        "upgrade",
        &ns,
        "syncSecret.enabled=true,enableSecretRotation=true,controller.enabled=true",
    );
    assert_eq!(
        rules_in(&agent, &workload_ns).await,
        sync_rules_without_rollout()
    );
    assert_never(&agent, &workload_ns).await;
    limits::cannot_patch_workloads(&agent, &workload_ns).await;
    let own = rules_in(&agent, &ns).await;
    assert!(
        !own.iter().any(|r| r.contains("rollout-key")),
        "the agent keeps no rollout key access: {own:?}"
    );
    let deployment = Api::<Deployment>::namespaced(admin.clone(), &ns)
        .get(&format!("{NAME}-controller"))
        .await
        .expect("controller Deployment installed");
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    let controller_account = format!("{NAME}-controller");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some(controller_account.as_str())
    );
    let controller = as_controller(cluster, &ns).await;
    assert_eq!(
        rules_in(&controller, &controller_ns).await,
        controller_rules()
    );
    assert_controller_never(&controller, &controller_ns).await;
    let own = rules_in(&controller, &ns).await;
    for rule in [
        "coordination.k8s.io/leases get (secrets-store-rs-controller)",
        "coordination.k8s.io/leases update (secrets-store-rs-controller)",
        "coordination.k8s.io/leases create",
        "/secrets get (secrets-store-rs-rollout-key)",
        "/secrets create",
    ] {
        assert!(own.contains(rule), "{rule} missing from {own:?}");
    }
    limits::can_only_roll_workloads(&controller, &admin, &controller_ns).await;
    limits::controller_can_only_record_digests(&controller, &admin, &controller_ns).await;
    limits::controller_creates_only_the_rollout_key(&controller, &ns).await;
    crate::controller::controller_leads_and_rolls_as_its_chart_identity(
        cluster,
        &ns,
        &controller_ns,
    )
    .await;

    helm_uninstall(cluster, &ns);
    assert!(
        Api::<CSIDriver>::all(admin.clone())
            .get_opt("secrets-store.csi.k8s.io")
            .await
            .unwrap()
            .is_none(),
        "uninstall removes the CSIDriver"
    );
    let namespaces: Api<Namespace> = Api::all(admin);
    for n in [&ns, &workload_ns, &controller_ns] {
        namespaces
            .delete(n, &DeleteParams::default())
            .await
            .unwrap();
    }
}
