//! The seed walk-through's ("Sync AWS Secrets Manager to Kubernetes Secrets") world outside
//! Kubernetes: its manifests under `examples/seed/` and its AWS side in moto, for the end-to-end
//! tests and `make demo`.

use std::path::Path;

use crate::{AccountId, Cluster};

pub use crate::moto::REGION;

/// The walk-through's Secrets Manager secret (also its file name in the pod's volume).
pub const SECRET: &str = "CSI-driver-test-secret";
/// The walk-through's Deployment.
pub const DEPLOYMENT: &str = "csi-secret-driver-test-nginx-deployment";
/// The walk-through's IAM policy.
pub const POLICY: &str = "deployment-policy";
/// The IAM role `eksctl create iamserviceaccount` creates for the walk-through's ServiceAccount.
pub const ROLE: &str = "nginx-deployment-role";

/// Where the walk-through's manifests live: the repository's `examples/seed/`.
pub fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed")
}

/// A file of `examples/seed/` (`serviceaccount.yaml`, `secretproviderclass.yaml`,
/// `test-nginx.yaml`, `policy.json`). Panics if it cannot be read.
pub fn file(name: &str) -> String {
    let path = dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Creates the walk-through's AWS side in `account`: the secret [`SECRET`] holding `value`
/// (`create-secret`), the policy of `examples/seed/policy.json` on its ARN (`create-policy`), and
/// a role for the ServiceAccount with the policy attached (what `eksctl create
/// iamserviceaccount` does). Returns the role ARN, the ServiceAccount's `ROLE_ARN`.
///
/// Panics if moto refuses a call.
pub async fn seed_aws(cluster: &Cluster, account: &AccountId, value: &str) -> String {
    let moto = cluster.moto();
    let created = moto
        .sm_client(account)
        .create_secret()
        .name(SECRET)
        .secret_string(value)
        .send()
        .await
        .expect("CreateSecret");
    let iam = moto.iam_client(account);
    let policy = file("policy.json").replace("SECRET_ARN", created.arn().expect("secret ARN"));
    let policy = iam
        .create_policy()
        .policy_name(POLICY)
        .policy_document(policy)
        .send()
        .await
        .expect("CreatePolicy");
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"oidc"},"Action":"sts:AssumeRoleWithWebIdentity"}]}"#;
    let role = iam
        .create_role()
        .role_name(ROLE)
        .assume_role_policy_document(trust)
        .send()
        .await
        .expect("CreateRole");
    iam.attach_role_policy()
        .role_name(ROLE)
        .policy_arn(policy.policy().and_then(|p| p.arn()).expect("policy ARN"))
        .send()
        .await
        .expect("AttachRolePolicy");
    role.role().expect("role").arn().to_string()
}

/// Rotates [`SECRET`] in `account` to `value` (`PutSecretValue`; moto's stage moves are buggy).
///
/// Panics if moto refuses the call.
pub async fn rotate(cluster: &Cluster, account: &AccountId, value: &str) {
    cluster
        .moto()
        .sm_client(account)
        .put_secret_value()
        .secret_id(SECRET)
        .secret_string(value)
        .send()
        .await
        .expect("PutSecretValue");
}
