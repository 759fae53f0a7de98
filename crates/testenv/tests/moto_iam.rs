//! moto under IAM enforcement (its own test binary: enforcement is global to the moto server).
//! Proves the launcher lets unsigned AssumeRoleWithWebIdentity through, that assumed-role
//! credentials land in the role's account, and that policies are enforced.

use aws_credential_types::Credentials;
use secrets_store_testenv::Cluster;

const TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::123456789012:oidc-provider/testenv"},"Action":"sts:AssumeRoleWithWebIdentity"}]}"#;
const READ: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["secretsmanager:GetSecretValue"],"Resource":"*"}]}"#;

#[tokio::test]
async fn web_identity_credentials_are_scoped_to_the_role_account_and_enforced() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let moto = cluster.moto();
    let account = moto.new_account();

    moto.set_iam_enforcement(false).await.unwrap();
    let iam = moto.iam_client(&account);
    for role in ["reader", "nobody"] {
        iam.create_role()
            .role_name(role)
            .assume_role_policy_document(TRUST)
            .send()
            .await
            .unwrap();
    }
    iam.put_role_policy()
        .role_name("reader")
        .policy_name("read")
        .policy_document(READ)
        .send()
        .await
        .unwrap();
    moto.sm_client(&account)
        .create_secret()
        .name("app/key")
        .secret_string("value-1")
        .send()
        .await
        .unwrap();

    moto.set_iam_enforcement(true).await.unwrap();
    let result = async {
        let sts = moto.sts_client(&account);
        let mut creds = Vec::new();
        for role in ["reader", "nobody"] {
            let out = sts
                .assume_role_with_web_identity()
                .role_arn(account.role_arn(role))
                .role_session_name("testenv")
                .web_identity_token("a-service-account-token")
                .send()
                .await
                .map_err(|e| format!("AssumeRoleWithWebIdentity({role}): {e:?}"))?;
            let c = out.credentials().ok_or("no credentials")?;
            creds.push(Credentials::new(
                c.access_key_id(),
                c.secret_access_key(),
                Some(c.session_token().to_string()),
                None,
                "assumed",
            ));
        }
        let reader = moto.sm_client_with(&moto.endpoint(), creds[0].clone());
        let got = reader
            .get_secret_value()
            .secret_id("app/key")
            .send()
            .await
            .map_err(|e| format!("reader GetSecretValue: {e:?}"))?;
        if got.secret_string() != Some("value-1") {
            return Err("reader got the wrong value".to_string());
        }
        let nobody = moto.sm_client_with(&moto.endpoint(), creds[1].clone());
        let denied = nobody
            .get_secret_value()
            .secret_id("app/key")
            .send()
            .await
            .expect_err("a role without a policy must be denied");
        let status = denied.raw_response().map(|r| r.status().as_u16());
        if status != Some(403) {
            return Err(format!(
                "expected HTTP 403 for the denied role, got {status:?}"
            ));
        }
        Ok(())
    }
    .await;
    moto.set_iam_enforcement(false).await.unwrap();
    result.unwrap();
}
