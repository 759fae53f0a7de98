//! Item 7: Secret types whose data the API server fills in, or that are credentials themselves,
//! are never synced.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use super::WAIT;
use crate::e2e::{World, eventually};

/// Item 7: a class cannot have the agent write a `kubernetes.io/service-account-token` Secret
/// (the API server would mint the named ServiceAccount's token into it, for whoever may read
/// Secrets) or a bootstrap token; the mount fails with an `InvalidSecretObject` Event naming the
/// type, and no such Secret is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secret_types_that_carry_credentials_are_never_synced() {
    let world = World::start("adv-sync-types", "1m", Duration::from_secs(1)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let role = world.seed_aws("type-test-value").await;
    world.apply_service_account(&role).await;
    world
        .apply_class(
            r#"
metadata:
  name: minter
spec:
  provider: aws
  parameters:
    objects: |
      - objectName: "CSI-driver-test-secret"
        objectType: "secretsmanager"
  secretObjects:
  - secretName: minted-token
    type: kubernetes.io/service-account-token
    annotations:
      kubernetes.io/service-account.name: nginx-deployment-sa
    data:
    - objectName: CSI-driver-test-secret
      key: note
  - secretName: bootstrap-token-abcdef
    type: bootstrap.kubernetes.io/token
    data:
    - objectName: CSI-driver-test-secret
      key: token-secret
"#,
        )
        .await;
    world.class_pod("minter", "minter").await;

    let verdict = eventually(WAIT, "the agent's verdict on the class", || async {
        for name in ["minted-token", "bootstrap-token-abcdef"] {
            if let Some(secret) = world.secret(name).await {
                return Some(Err((name, secret.type_)));
            }
        }
        let m = world.pod_events("minter", "InvalidSecretObject").await;
        (!m.is_empty()).then_some(Ok(m))
    })
    .await;
    let messages = match verdict {
        Ok(messages) => messages,
        Err((name, type_)) => panic!("the agent wrote Secret {name} of type {type_:?}"),
    };
    assert!(
        messages[0].contains("kubernetes.io/service-account-token")
            && messages[0].contains("allowed types"),
        "{messages:?}"
    );
    // Several of kubelet's retries later, still nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in ["minted-token", "bootstrap-token-abcdef"] {
        assert!(
            world.secret(name).await.is_none(),
            "the agent wrote Secret {name}"
        );
    }
    let pod = Api::<Pod>::namespaced(world.cluster.client(), &world.namespace)
        .get("minter")
        .await
        .unwrap();
    assert_ne!(
        pod.status.and_then(|s| s.phase).as_deref(),
        Some("Running"),
        "the volume must not be published"
    );
}
