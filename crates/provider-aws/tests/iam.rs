//! Under moto IAM enforcement: the coalescing cache never crosses identities, an identity whose
//! policy lacks secretsmanager:BatchGetSecretValue is served through GetSecretValue, and a secret
//! fetched alone never needs it.
//! (Its own test binary: enforcement is global to the moto server.)

mod common;

use std::time::Duration;

use common::*;
use secrets_store_provider::{Provider, ProviderErrorKind};
use secrets_store_testenv::Cluster;

const TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"oidc"},"Action":"sts:AssumeRoleWithWebIdentity"}]}"#;
/// The policy of the seed walk-through: no BatchGetSecretValue.
const SEED_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["secretsmanager:GetSecretValue","secretsmanager:DescribeSecret"],"Resource":"*"}]}"#;

#[tokio::test]
async fn identities_never_share_values_and_denied_batch_falls_back() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let moto = cluster.moto();
    let account = moto.new_account();
    let iam = moto.iam_client(&account);
    for role in ["role-a", "role-b"] {
        iam.create_role()
            .role_name(role)
            .assume_role_policy_document(TRUST)
            .send()
            .await
            .expect("create_role");
    }
    iam.put_role_policy()
        .role_name("role-a")
        .policy_name("seed")
        .policy_document(SEED_POLICY)
        .send()
        .await
        .expect("put_role_policy");
    sm_secret(cluster, &account, "shared", "only-for-a").await;
    sm_secret(cluster, &account, "shared-2", "also-for-a").await;

    let ns = cluster.new_namespace("aws-iam").await;
    service_account(cluster, &ns, "sa-a", Some(&account.role_arn("role-a"))).await;
    service_account(cluster, &ns, "sa-b", Some(&account.role_arn("role-b"))).await;
    let pod = |sa: &str, tokens: String| Pod {
        namespace: ns.clone(),
        service_account: sa.into(),
        name: format!("pod-{sa}"),
        tokens,
    };
    let pod_a = pod(
        "sa-a",
        tokens(cluster, &ns, "sa-a", &["sts.amazonaws.com"]).await,
    );
    let pod_b = pod(
        "sa-b",
        tokens(cluster, &ns, "sa-b", &["sts.amazonaws.com"]).await,
    );
    // Two secrets: one alone is fetched with GetSecretValue and would never try the batch.
    let objects = [(
        "objects",
        "- objectName: shared\n  objectType: secretsmanager\n\
         - objectName: shared-2\n  objectType: secretsmanager\n",
    )];
    let alone = [(
        "objects",
        "- objectName: shared\n  objectType: secretsmanager\n",
    )];

    moto.set_iam_enforcement(true).await.expect("enforce IAM");
    let result = async {
        // A long coalescing window: B mounts while A's value is cached.
        let (provider, metrics) = provider(cluster, false, Duration::from_secs(120)).await;
        let resp = provider
            .mount(request(&pod_a, &objects))
            .await
            .expect("A mounts");
        assert_eq!(files(&resp)["shared"], "only-for-a");
        assert_eq!(files(&resp)["shared-2"], "also-for-a");
        assert_eq!(
            metrics.api_calls_of("BatchGetSecretValue"),
            1,
            "tried once, denied"
        );
        assert_eq!(metrics.api_calls_of("GetSecretValue"), 2, "fell back");

        let err = provider.mount(request(&pod_b, &objects)).await.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::PermissionDenied, "{err}");
        assert_error(
            &err,
            &["object \"shared\"", "access denied", "role-b", "sa-b"],
            "only-for-a",
        );

        // No coalescing window: every mount fetches, yet the denied batch is not retried.
        let (uncached, metrics) = provider_no_cache(cluster).await;
        for _ in 0..3 {
            let resp = uncached
                .mount(request(&pod_a, &objects))
                .await
                .expect("A mounts");
            assert_eq!(files(&resp)["shared"], "only-for-a");
        }
        assert_eq!(
            metrics.api_calls_of("BatchGetSecretValue"),
            1,
            "remembered per identity"
        );
        assert_eq!(metrics.api_calls_of("GetSecretValue"), 6);

        // The seed's policy and one secret: a single GetSecretValue, the batch never tried.
        let (fresh, metrics) = provider_no_cache(cluster).await;
        let resp = fresh
            .mount(request(&pod_a, &alone))
            .await
            .expect("A mounts one secret");
        assert_eq!(files(&resp)["shared"], "only-for-a");
        assert_eq!(metrics.api_calls_of("BatchGetSecretValue"), 0);
        assert_eq!(metrics.api_calls_of("GetSecretValue"), 1);
        let err = fresh.mount(request(&pod_b, &alone)).await.unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::PermissionDenied, "{err}");
        assert_error(
            &err,
            &["object \"shared\"", "access denied", "role-b", "sa-b"],
            "only-for-a",
        );
    }
    .await;
    moto.set_iam_enforcement(false)
        .await
        .expect("IAM enforcement off");
    result
}

async fn provider_no_cache(
    cluster: &Cluster,
) -> (
    secrets_store_provider_aws::AwsProvider,
    secrets_store_provider_aws::Metrics,
) {
    provider(cluster, false, Duration::ZERO).await
}
