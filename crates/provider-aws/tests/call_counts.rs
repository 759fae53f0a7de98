//! Batching and coalescing, counted by testenv's proxy in front of moto: 20 pods × 5 secrets
//! with one ServiceAccount on one node cost one STS call and one BatchGetSecretValue call; a
//! secret fetched alone costs one GetSecretValue.
//! (Its own test binary: the proxy's counters are global to a binary.)

mod common;

use std::time::Duration;

use aws_sdk_ssm::types::ParameterType;
use common::*;
use secrets_store_provider::Provider;
use secrets_store_testenv::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_pods_five_secrets_one_identity_cost_one_sts_and_one_batch_call() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let account = cluster.moto().new_account();
    let ns = cluster.new_namespace("aws-counts").await;
    service_account(cluster, &ns, "app", Some(&account.role_arn("app"))).await;
    let mut yaml = String::new();
    for i in 0..5 {
        sm_secret(cluster, &account, &format!("s{i}"), &format!("value-{i}")).await;
        yaml.push_str(&format!(
            "- objectName: s{i}\n  objectType: secretsmanager\n"
        ));
    }
    let mut pods = Vec::new();
    for i in 0..20 {
        pods.push(Pod {
            namespace: ns.clone(),
            service_account: "app".into(),
            name: format!("pod-{i}"),
            tokens: tokens(cluster, &ns, "app", &["sts.amazonaws.com"]).await,
        });
    }
    // The coalescing window is generous so the test does not depend on timing.
    let (provider, _metrics) = provider(cluster, true, Duration::from_secs(120)).await;
    let provider = std::sync::Arc::new(provider);
    cluster.moto().reset_calls();

    let mounts = pods.iter().map(|pod| {
        let provider = provider.clone();
        let req = request(pod, &[("objects", yaml.as_str())]);
        tokio::spawn(async move { provider.mount(req).await })
    });
    for result in futures::future::join_all(mounts).await {
        let resp = result.expect("task").expect("mount");
        let f = files(&resp);
        assert_eq!(f.len(), 5);
        assert_eq!(f["s3"], "value-3");
    }

    let calls = cluster.moto().calls();
    let count = |k: &str| calls.get(k).copied().unwrap_or(0);
    assert_eq!(count("AssumeRoleWithWebIdentity"), 1, "{calls:?}");
    assert_eq!(count("secretsmanager.BatchGetSecretValue"), 1, "{calls:?}");
    assert_eq!(count("secretsmanager.GetSecretValue"), 0, "{calls:?}");

    // Batch limits: 25 unpinned secrets take two BatchGetSecretValue calls (20 + 5), 12 SSM
    // parameters two GetParameters calls (10 + 2), one pinned version one GetSecretValue.
    let ns2 = cluster.new_namespace("aws-counts-limits").await;
    service_account(cluster, &ns2, "app", Some(&account.role_arn("limits"))).await;
    let mut yaml = String::new();
    for i in 0..25 {
        sm_secret(cluster, &account, &format!("many-{i}"), &format!("m{i}")).await;
        yaml.push_str(&format!(
            "- objectName: many-{i}\n  objectType: secretsmanager\n"
        ));
    }
    for i in 0..12 {
        ssm_param(
            cluster,
            &account,
            &format!("/p/{i}"),
            &format!("p{i}"),
            ParameterType::String,
        )
        .await;
        yaml.push_str(&format!(
            "- objectName: /p/{i}\n  objectType: ssmparameter\n"
        ));
    }
    yaml.push_str("- objectName: many-0\n  objectType: secretsmanager\n  objectAlias: pinned\n  objectVersionLabel: AWSCURRENT\n");
    let pod = Pod {
        namespace: ns2.clone(),
        service_account: "app".into(),
        name: "pod-limits".into(),
        tokens: tokens(cluster, &ns2, "app", &["sts.amazonaws.com"]).await,
    };
    cluster.moto().reset_calls();
    let resp = provider
        .mount(request(&pod, &[("objects", yaml.as_str())]))
        .await
        .expect("mount");
    let f = files(&resp);
    assert_eq!(f.len(), 25 + 12 + 1);
    assert_eq!(f["many-24"], "m24");
    assert_eq!(f["_p_11"], "p11");
    assert_eq!(f["pinned"], "m0");
    let calls = cluster.moto().calls();
    let count = |k: &str| calls.get(k).copied().unwrap_or(0);
    assert_eq!(count("secretsmanager.BatchGetSecretValue"), 2, "{calls:?}");
    assert_eq!(count("AmazonSSM.GetParameters"), 2, "{calls:?}");
    assert_eq!(count("secretsmanager.GetSecretValue"), 1, "{calls:?}");
    assert_eq!(count("AssumeRoleWithWebIdentity"), 1, "{calls:?}");

    // One secret alone (a class listing one, or 21 = 20 + 1): one GetSecretValue, no batch.
    sm_secret(cluster, &account, "alone", "a1").await;
    cluster.moto().reset_calls();
    let resp = provider
        .mount(request(
            &pod,
            &[(
                "objects",
                "- objectName: alone\n  objectType: secretsmanager\n",
            )],
        ))
        .await
        .expect("mount");
    assert_eq!(files(&resp)["alone"], "a1");
    let calls = cluster.moto().calls();
    let count = |k: &str| calls.get(k).copied().unwrap_or(0);
    assert_eq!(count("secretsmanager.GetSecretValue"), 1, "{calls:?}");
    assert_eq!(count("secretsmanager.BatchGetSecretValue"), 0, "{calls:?}");
    assert_eq!(count("AssumeRoleWithWebIdentity"), 0, "{calls:?}");
}
