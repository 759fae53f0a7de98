//! Issue 13, item 1, played by a hostile tenant against a real apiserver and the real agent: a
//! `SecretProviderClassPodStatus` is not a file-path oracle.
//!
//! The drift reconciler reads a volume's files back from the `status.targetPath` of this node's
//! status objects. A tenant who may create such objects in their namespace (a wildcard
//! namespace-admin Role is enough) writes one pointing wherever they like and names the file in
//! their class's `secretObjects`. The agent must read nothing, write no Secret and say why in a
//! Warning Event on the status object; and with the chart's ValidatingAdmissionPolicy the
//! apiserver refuses such objects from anyone but the agent's ServiceAccount.

#[path = "helm_chart/chart.rs"]
mod chart;
mod common;
mod e2e;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassPodStatus};
use secrets_store_api::labels;
use secrets_store_testenv::Cluster;
use secrets_store_testenv::fixtures::PodFixture;

use e2e::{DRIVER, SEED_SECRET, VOLUME, World, eventually, seed_file};

const WAIT: Duration = Duration::from_secs(90);

/// The chart's admission policy is cluster-wide and refuses status writes from anyone but the
/// chart's ServiceAccount, the test agent's admin identity included: the tests never overlap.
static CLUSTER_POLICY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A tenant: a namespace and a client acting as its namespace admin.
struct Tenant {
    ns: String,
    client: Client,
}

impl Tenant {
    /// A fresh namespace whose admin is bound to the `admin` ClusterRole and, as many platforms
    /// grant namespace owners, a wildcard Role (`admin` alone does not cover our CRDs).
    async fn new(cluster: &Cluster, prefix: &str) -> Self {
        let ns = cluster.new_namespace(prefix).await;
        let user = format!("tenant-admin@{ns}");
        let admin = cluster.client();
        let role: Role = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "namespace-admin"},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
        }))
        .unwrap();
        Api::<Role>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &role)
            .await
            .unwrap();
        bind(&admin, &ns, "tenant-admin", "ClusterRole", "admin", &user).await;
        bind(
            &admin,
            &ns,
            "tenant-namespace-admin",
            "Role",
            "namespace-admin",
            &user,
        )
        .await;
        let client =
            chart::impersonating(cluster, &user, vec!["system:authenticated".into()]).await;
        Self { ns, client }
    }

    /// Creates a class syncing Secret `secret` with the single key `token` from object `object`.
    async fn class(&self, name: &str, secret: &str, object: &str) {
        let class: SecretProviderClass = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "provider": "aws",
                "parameters": {"objects": format!("- objectName: {object}\n  objectType: secretsmanager\n")},
                "secretObjects": [{"secretName": secret, "type": "Opaque",
                    "data": [{"objectName": object, "key": "token"}]}],
            }
        }))
        .unwrap();
        Api::<SecretProviderClass>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
    }

    /// A pod of the tenant's, placed on the test node directly (`spec.nodeName`; no kubelet
    /// serves this namespace, so it stays Pending), with a volume of our driver using `class`.
    async fn pod_on_node(&self, name: &str, node: &str, class: &str) -> Pod {
        PodFixture::new(name)
            .on_node(node)
            .with_csi_volume(VOLUME, class)
            .create(&self.client, &self.ns)
            .await
            .unwrap()
    }

    /// Changes a Secret carrying the managed label, as the tenant may at will. The drift
    /// reconciler maps such a change to the statuses whose class syncs that Secret (none of the
    /// forged ones here), so it must not make the agent look at, or warn about, anything again.
    async fn wake_reconciler(&self, round: u32) {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        let secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "wake", "labels": {labels::MANAGED: labels::MANAGED_VALUE},
                "annotations": {"round": round.to_string()}},
        });
        api.patch(
            "wake",
            &PatchParams::apply("tenant").force(),
            &Patch::Apply(secret),
        )
        .await
        .unwrap();
    }

    /// The tenant's Secret `name`, if any.
    async fn secret(&self, name: &str) -> Option<Secret> {
        Api::<Secret>::namespaced(self.client.clone(), &self.ns)
            .get_opt(name)
            .await
            .unwrap()
    }

    /// Warning Events from the agent about status object `name`: (reason, message).
    async fn status_warnings(&self, name: &str) -> Vec<(String, String)> {
        Api::<Event>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.involved_object.kind.as_deref() == Some("SecretProviderClassPodStatus")
                    && e.involved_object.name.as_deref() == Some(name)
                    && e.type_.as_deref() == Some("Warning")
            })
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect()
    }
}

/// Binds `user` to `role` (a `kind`) in `ns`, as RoleBinding `name`.
async fn bind(admin: &Client, ns: &str, name: &str, kind: &str, role: &str, user: &str) {
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// A status object as the driver would write it for `pod`'s volume, but pointing at `target`.
fn forged_status(
    name: &str,
    node: &str,
    pod: &Pod,
    class: &str,
    target: &Path,
) -> SecretProviderClassPodStatus {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClassPodStatus",
        "metadata": {
            "name": name,
            "labels": {labels::NODE_NAME: node},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod",
                "name": pod.name_any(), "uid": pod.uid().unwrap()}],
        },
        "status": {
            "podName": pod.name_any(),
            "secretProviderClassName": class,
            "mounted": true,
            "targetPath": target.to_str().unwrap(),
        }
    }))
    .unwrap()
}

/// One hostile status: where it points, what it would steal, and the rule that must stop it.
struct Forgery<'a> {
    status: &'a str,
    class: &'a str,
    secret: &'a str,
    object: &'a str,
    target: std::path::PathBuf,
    /// What the file there holds (must never reach a Secret, an Event or the log).
    content: &'a str,
    /// A phrase of the rule the Warning Event must name.
    rule: &'a str,
}

/// The agent reads no file a forged status points at: a token file outside any volume, another
/// pod's live volume (really mounted by the agent, the right shape, the wrong pod), and a plain
/// directory at the exact path of the tenant's own pod's volume (the right shape, the right pod,
/// but not a mount the agent made). Each gets a Warning Event on the status and no Secret, and a
/// legitimate volume still has its Secret restored by the same reconciler.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_pod_statuses_copy_no_file_into_a_secret() {
    let _policy = CLUSTER_POLICY.lock().await;
    let world = World::start("adv-status", "1s", Duration::from_millis(500)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let node = world.cluster.node_name();

    // The victim: another namespace's pod whose volume the agent really mounted.
    let victim_value = "victim-secret-5c0ffee";
    let role = world.seed_aws(victim_value).await;
    world.apply_service_account(&role).await;
    world
        .apply_class(&seed_file("secretproviderclass.yaml"))
        .await;
    world.bare_pod("victim").await;
    let victim = world.running_pods(1).await.remove(0);
    assert_eq!(
        world.file(&victim, SEED_SECRET).as_deref(),
        Some(victim_value)
    );
    eventually(WAIT, "the victim's synced Secret", || async {
        world.secret("foosecret").await
    })
    .await;

    let tenant = Tenant::new(world.cluster, "adv-tenant").await;
    let decoy = tenant.pod_on_node("decoy", node, "forged-plain").await;

    // A token file outside any volume (the agent's own ServiceAccount token lives in such a dir).
    let token_dir = world.dir.path().join("serviceaccount");
    std::fs::create_dir_all(&token_dir).unwrap();
    let token = "eyJhbGciOiJSUzI1NiJ9.forged-token-3f9a";
    std::fs::write(token_dir.join("token"), token).unwrap();
    // A plain directory where the decoy's volume would be mounted (only root can make one; it
    // stands for any directory of the right shape that is not our mount).
    let plain_dir = world.target(&decoy);
    std::fs::create_dir_all(&plain_dir).unwrap();
    let plain = "plain-directory-contents-77d2";
    std::fs::write(plain_dir.join("token"), plain).unwrap();

    let forgeries = [
        Forgery {
            status: "forged-token",
            class: "forged-token",
            secret: "stolen-token",
            object: "token",
            target: token_dir.clone(),
            content: token,
            rule: "kubernetes.io~csi/<volume>/mount",
        },
        Forgery {
            status: "forged-victim",
            class: "forged-victim",
            secret: "stolen-victim",
            object: SEED_SECRET,
            target: world.target(&victim),
            content: victim_value,
            rule: "has uid",
        },
        Forgery {
            status: "forged-plain",
            class: "forged-plain",
            secret: "stolen-plain",
            object: "token",
            target: plain_dir.clone(),
            content: plain,
            rule: "not a tmpfs mounted by this driver",
        },
    ];
    let statuses: Api<SecretProviderClassPodStatus> =
        Api::namespaced(tenant.client.clone(), &tenant.ns);
    for f in &forgeries {
        tenant.class(f.class, f.secret, f.object).await;
        let status = forged_status(f.status, node, &decoy, f.class, &f.target);
        statuses
            .create(&PostParams::default(), &status)
            .await
            .expect("the tenant's RBAC lets it create status objects");
    }

    let mut round = 0;
    for f in &forgeries {
        let outcome = eventually(
            WAIT,
            &format!("the agent's verdict on {}", f.status),
            || {
                round += 1;
                let round = round;
                let tenant = &tenant;
                async move {
                    tenant.wake_reconciler(round).await;
                    if let Some(secret) = tenant.secret(f.secret).await {
                        return Some(Err(secret));
                    }
                    let warnings = tenant.status_warnings(f.status).await;
                    (!warnings.is_empty()).then_some(Ok(warnings))
                }
            },
        )
        .await;
        let warnings = match outcome {
            Ok(w) => w,
            Err(secret) => {
                let copied = secret
                    .data
                    .unwrap_or_default()
                    .values()
                    .any(|v| v.0 == f.content.as_bytes());
                panic!(
                    "forged status {} made the agent write Secret {} (the file at {} copied: {copied})",
                    f.status,
                    f.secret,
                    f.target.display()
                );
            }
        };
        let (reason, message) = &warnings[0];
        assert_eq!(reason, "UntrustedPodStatus", "{warnings:?}");
        assert!(
            message.contains(f.rule),
            "{}: the Event names the rule {:?}: {message}",
            f.status,
            f.rule
        );
        assert!(!message.contains(f.content), "file contents in an Event");
    }

    // More reconciler passes change nothing: no Secret, and one Event per forged object.
    for _ in 0..5 {
        round += 1;
        tenant.wake_reconciler(round).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    for f in &forgeries {
        assert!(
            tenant.secret(f.secret).await.is_none(),
            "Secret {} appeared",
            f.secret
        );
        let warnings = tenant.status_warnings(f.status).await;
        let count: i32 = Api::<Event>::namespaced(tenant.client.clone(), &tenant.ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(f.status))
            // A repeated Event is a series on the first one (events.k8s.io); the core view
            // shows its length in `series.count`, not in `count`.
            .map(|e| {
                e.series
                    .as_ref()
                    .and_then(|s| s.count)
                    .unwrap_or(e.count.unwrap_or(1))
            })
            .sum();
        assert_eq!(
            count, 1,
            "{}: one Warning per forged object version, not one per reconciler pass: {warnings:?}",
            f.status
        );
    }

    // The same reconciler still restores a real volume's Secret.
    Api::<Secret>::namespaced(world.cluster.client(), &world.namespace)
        .delete("foosecret", &DeleteParams::default())
        .await
        .unwrap();
    let restored = eventually(
        WAIT,
        "foosecret restored from the victim's volume",
        || async { world.secret_value("foosecret", "SECRET_API_KEY").await },
    )
    .await;
    assert_eq!(restored, victim_value);

    let log = world.agent.log_text();
    for f in &forgeries[..] {
        if f.content != victim_value {
            assert!(!log.contains(f.content), "{} in the agent's log", f.status);
        }
    }
    assert!(
        !log.contains(victim_value),
        "a secret value in the agent's log"
    );
    Api::<Namespace>::all(world.cluster.client())
        .delete(&tenant.ns, &DeleteParams::default())
        .await
        .unwrap();
}

/// Whether `client` may create status objects in `ns`, by RBAC alone.
async fn rbac_allows_status_create(client: &Client, ns: &str) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(labels::API_GROUP.into()),
                resource: Some("secretproviderclasspodstatuses".into()),
                verb: Some("create".into()),
                namespace: Some(ns.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap()
        .allowed
}

/// Asserts `result` is the apiserver refusing on behalf of the chart's admission policy.
fn assert_refused_by_policy<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{what}: {e:?}");
            assert!(
                e.message.contains("ValidatingAdmissionPolicy")
                    && e.message.contains("secrets-store-rs-pod-status-writers"),
                "{what}: refused, but not by the chart's policy: {}",
                e.message
            );
        }
        other => panic!("{what}: expected the admission policy to refuse, got {other:?}"),
    }
}

/// With the chart installed, the apiserver refuses status objects (and changes to their
/// `status` or labels) from every identity but the agent's ServiceAccount: the tenant, whose RBAC
/// allows it, and the cluster admin. Metadata-only changes (the garbage collector's) pass, and
/// `admissionPolicies.podStatuses=false` removes the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_policy_lets_only_the_agent_write_pod_statuses() {
    let _policy = CLUSTER_POLICY.lock().await;
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let admin = cluster.client();
    // The chart owns the CSIDriver; the other test's stand-in must go first.
    let drivers: Api<CSIDriver> = Api::all(admin.clone());
    if drivers.get_opt(DRIVER).await.unwrap().is_some() {
        drivers
            .delete(DRIVER, &DeleteParams::default())
            .await
            .unwrap();
    }
    let agent_ns = cluster.new_namespace("adv-vap-agent").await;
    chart::helm_release(cluster, "install", &agent_ns, "");

    let tenant = Tenant::new(cluster, "adv-vap-tenant").await;
    assert!(
        rbac_allows_status_create(&tenant.client, &tenant.ns).await,
        "the tenant's RBAC must allow it, so that the refusal is the policy's"
    );
    // The built-in `admin` role alone does not reach our CRDs (the chart aggregates nothing
    // into it): the hole needs a wildcard Role, which is why the tenant holds one.
    let admin_only = format!("admin-only@{}", tenant.ns);
    bind(
        &admin,
        &tenant.ns,
        "admin-only",
        "ClusterRole",
        "admin",
        &admin_only,
    )
    .await;
    let admin_only =
        chart::impersonating(cluster, &admin_only, vec!["system:authenticated".into()]).await;
    assert!(!rbac_allows_status_create(&admin_only, &tenant.ns).await);
    let node = cluster.node_name();
    let decoy = tenant.pod_on_node("decoy", node, "any").await;
    let token_dir = Path::new("/var/run/secrets/kubernetes.io/serviceaccount");
    let forged = forged_status("forged", node, &decoy, "any", token_dir);
    let as_tenant: Api<SecretProviderClassPodStatus> =
        Api::namespaced(tenant.client.clone(), &tenant.ns);

    // Policies reach the apiserver's admission chain asynchronously: wait until it refuses.
    let refused = eventually(WAIT, "the policy in force", || async {
        match as_tenant.create(&PostParams::default(), &forged).await {
            Ok(_) => {
                as_tenant
                    .delete("forged", &DeleteParams::default())
                    .await
                    .unwrap();
                None
            }
            Err(e) => Some(e),
        }
    })
    .await;
    assert_refused_by_policy(Err::<(), _>(refused), "the tenant's forged status");
    assert_refused_by_policy(
        Api::<SecretProviderClassPodStatus>::namespaced(admin.clone(), &tenant.ns)
            .create(&PostParams::default(), &forged)
            .await,
        "the cluster admin's status",
    );

    // The agent writes statuses as before (server-side apply, as the driver does).
    let agent = chart::as_agent(cluster, &agent_ns).await;
    let as_agent: Api<SecretProviderClassPodStatus> = Api::namespaced(agent, &tenant.ns);
    let mut real = forged_status("real", node, &decoy, "any", Path::new("/x"));
    real.status.as_mut().unwrap().target_path = format!(
        "/var/lib/kubelet/pods/{}/volumes/kubernetes.io~csi/{VOLUME}/mount",
        decoy.uid().unwrap()
    );
    as_agent
        .patch(
            "real",
            &PatchParams::apply("secrets-store-rs").force(),
            &Patch::Apply(&real),
        )
        .await
        .expect("the agent's ServiceAccount writes status objects");

    // The tenant cannot re-point it, nor move it to another node's agent...
    assert_refused_by_policy(
        as_tenant
            .patch(
                "real",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"status": {"targetPath": token_dir}})),
            )
            .await,
        "the tenant re-pointing a status",
    );
    assert_refused_by_policy(
        as_tenant
            .patch(
                "real",
                &PatchParams::default(),
                &Patch::Merge(
                    serde_json::json!({"metadata": {"labels": {labels::NODE_NAME: "other-node"}}}),
                ),
            )
            .await,
        "the tenant relabelling a status",
    );
    // ...but metadata the agent does not trust may change (the garbage collector removes owner
    // references when a pod is deleted with orphaning), and deleting is not restricted.
    as_tenant
        .patch(
            "real",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"ownerReferences": null}})),
        )
        .await
        .expect("metadata-only changes pass");
    as_tenant
        .delete("real", &DeleteParams::default())
        .await
        .expect("deleting is not restricted");

    // The value turns the policy off.
    chart::helm_release(
        cluster,
        "upgrade",
        &agent_ns,
        "admissionPolicies.podStatuses=false",
    );
    eventually(WAIT, "the policy gone", || async {
        match as_tenant.create(&PostParams::default(), &forged).await {
            Ok(_) => Some(()),
            Err(_) => None,
        }
    })
    .await;
    as_tenant
        .delete("forged", &DeleteParams::default())
        .await
        .unwrap();

    chart::helm_uninstall(cluster, &agent_ns);
    let namespaces: Api<Namespace> = Api::all(admin);
    for ns in [&tenant.ns, &agent_ns] {
        namespaces
            .delete(ns, &DeleteParams::default())
            .await
            .unwrap();
    }
}
