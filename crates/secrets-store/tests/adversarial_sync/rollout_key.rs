//! Item 7: a malformed rollout digest key Secret neither crashes the agent nor stops the sync.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use secrets_store_sync::rollout::{DIGEST_ANNOTATION_PREFIX, DIGEST_KEY_SECRET};

use super::WAIT;
use crate::e2e::{AgentOptions, SEED_DEPLOYMENT, World, eventually};

/// Item 7: a malformed rollout digest key Secret (wrong data key, empty, no data) does not crash
/// the agent, is reported clearly and never overwritten; sync keeps working without rollout, and
/// rollout resumes (a new key) once the Secret is deleted, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_rollout_key_neither_crashes_the_agent_nor_stops_sync() {
    let mut world = World::start("adv-sync-key", "1s", Duration::from_millis(500)).await;
    let _logs = world.cluster.dump_logs_on_panic();
    let secrets: Api<Secret> = Api::namespaced(world.cluster.client(), &world.namespace);
    let options = AgentOptions {
        poll: "1s",
        aws_endpoint: world.cluster.moto().endpoint().to_string(),
        metrics_addr: String::new(),
        env: vec![],
    };
    let malformed: [(&str, serde_json::Value); 3] = [
        (
            "data keys present: [hmac]",
            serde_json::json!({"hmac": "c2VjcmV0LWJ1dC13cm9uZy1uYW1l"}),
        ),
        ("holds 0 bytes", serde_json::json!({"key": ""})),
        ("data keys present: []", serde_json::json!(null)),
    ];
    for (problem, data) in &malformed {
        world.agent.stop();
        let _ = secrets
            .delete(DIGEST_KEY_SECRET, &DeleteParams::default())
            .await;
        eventually(WAIT, "the old key Secret gone", || async {
            secrets
                .get_opt(DIGEST_KEY_SECRET)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
        let key: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": DIGEST_KEY_SECRET}, "data": data}))
        .unwrap();
        secrets.create(&PostParams::default(), &key).await.unwrap();
        // The old agent panicked here, before serving.
        world.agent = world.start_agent(&options);
        let log = eventually(WAIT, "the malformed key reported", || async {
            let log = world.agent.log_text();
            log.contains("is malformed").then_some(log)
        })
        .await;
        assert!(
            log.contains(problem) && log.contains(DIGEST_KEY_SECRET),
            "the report names the Secret and {problem:?}:\n{log}"
        );
    }

    // Sync works; a rotation reaches the Secret but rolls nothing.
    let role = world.seed_aws("secretkey").await;
    world.apply_seed(&role).await;
    world.running_pods(3).await;
    world.opt_in_rollout().await;
    world.rotate("rotated").await;
    eventually(WAIT, "foosecret rotated", || async {
        (world
            .secret_value("foosecret", "SECRET_API_KEY")
            .await
            .as_deref()
            == Some("rotated"))
        .then_some(())
    })
    .await;
    eventually(WAIT, "the failed rollout logged", || async {
        world
            .agent
            .log_text()
            .contains("rollout after Secret change failed")
            .then_some(())
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(world.cluster.client(), &world.namespace);
    assert!(
        digest_of(&deployments.get(SEED_DEPLOYMENT).await.unwrap()).is_none(),
        "rolled out without a usable key"
    );
    let kept = secrets.get(DIGEST_KEY_SECRET).await.unwrap();
    assert!(
        kept.data.unwrap_or_default().is_empty(),
        "the agent rewrote the key Secret"
    );

    // Deleted, it is created anew on the next change and the workload rolls.
    secrets
        .delete(DIGEST_KEY_SECRET, &DeleteParams::default())
        .await
        .unwrap();
    world.rotate("rotated-again").await;
    eventually(WAIT, "the Deployment's template annotated", || async {
        digest_of(&deployments.get(SEED_DEPLOYMENT).await.unwrap())
    })
    .await;
    assert!(secrets.get_opt(DIGEST_KEY_SECRET).await.unwrap().is_some());
}

/// The rollout digest annotation on a Deployment's pod template, if any.
fn digest_of(deployment: &Deployment) -> Option<String> {
    deployment
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .iter()
        .find(|(k, _)| k.starts_with(DIGEST_ANNOTATION_PREFIX))
        .map(|(_, v)| v.clone())
}
