//! Every object form against moto, with IRSA through the test apiserver's real tokens.

mod common;

use std::time::Duration;

use aws_sdk_secretsmanager::primitives::Blob;
use aws_sdk_ssm::types::ParameterType;
use common::*;
use secrets_store_provider::{Provider, ProviderErrorKind};
use secrets_store_testenv::Cluster;

fn objects(yaml: &str) -> Vec<(&'static str, String)> {
    vec![("objects", yaml.to_string())]
}

fn params<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, s)| (*k, s.as_str())).collect()
}

#[tokio::test]
async fn secrets_manager_by_name_full_arn_and_partial_arn() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let account = cluster.moto().new_account();
    let pod = irsa_pod(cluster, "aws-sm-forms", &account, "app").await;
    let arn = sm_secret(cluster, &account, "db/creds", "s3cr3t-value").await;
    let partial = &arn[..arn.len() - 7];
    let (provider, _) = provider(cluster, false, Duration::from_secs(5)).await;

    let yaml = format!(
        "- objectName: db/creds\n  objectType: secretsmanager\n\
         - objectName: \"{arn}\"\n  objectAlias: byarn\n\
         - objectName: \"{partial}\"\n  objectAlias: bypartial\n  filePermission: \"0600\"\n"
    );
    let p = objects(&yaml);
    let resp = provider
        .mount(request(&pod, &params(&p)))
        .await
        .expect("mount");
    let f = files(&resp);
    assert_eq!(f["db_creds"], "s3cr3t-value", "slash translated to _");
    assert_eq!(f["byarn"], "s3cr3t-value");
    assert_eq!(f["bypartial"], "s3cr3t-value");
    let modes: Vec<_> = resp
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.mode))
        .collect();
    assert!(modes.contains(&("bypartial", 0o600)) && modes.contains(&("byarn", 0o644)));
    let v = versions(&resp);
    assert_eq!(v.len(), 3);
    assert!(
        v.values().all(|x| !x.is_empty() && x == &v["db_creds"]),
        "{v:?}"
    );
}

#[tokio::test]
async fn secrets_manager_version_id_and_stage_label() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let account = cluster.moto().new_account();
    let pod = irsa_pod(cluster, "aws-sm-versions", &account, "app").await;
    let sm = cluster.moto().sm_client(&account);
    let first = sm
        .create_secret()
        .name("rotating")
        .secret_string("one")
        .send()
        .await
        .unwrap();
    let v1 = first.version_id().unwrap().to_string();
    let second = sm
        .put_secret_value()
        .secret_id("rotating")
        .secret_string("two")
        .send()
        .await
        .unwrap();
    let v2 = second.version_id().unwrap().to_string();
    let (provider, _) = provider(cluster, false, Duration::from_secs(5)).await;

    let yaml = format!(
        "- objectName: rotating\n  objectType: secretsmanager\n  objectAlias: current\n\
         - objectName: rotating\n  objectType: secretsmanager\n  objectAlias: current-again\n\
         - objectName: rotating\n  objectType: secretsmanager\n  objectAlias: pinned\n  objectVersion: \"{v1}\"\n\
         - objectName: rotating\n  objectType: secretsmanager\n  objectAlias: previous\n  objectVersionLabel: AWSPREVIOUS\n"
    );
    let p = objects(&yaml);
    let resp = provider
        .mount(request(&pod, &params(&p)))
        .await
        .expect("mount");
    let f = files(&resp);
    assert_eq!(f["current"], "two");
    assert_eq!(
        f["current-again"], "two",
        "the same object twice in one mount"
    );
    assert_eq!(f["pinned"], "one");
    assert_eq!(f["previous"], "one");
    let v = versions(&resp);
    assert_eq!(v["current"], v2);
    assert_eq!(v["pinned"], v1);
    assert_eq!(v["previous"], v1);
}

#[tokio::test]
async fn jmes_path_strings_numbers_hyphenated_keys_and_binary() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let account = cluster.moto().new_account();
    let pod = irsa_pod(cluster, "aws-jmes", &account, "app").await;
    sm_secret(
        cluster,
        &account,
        "json",
        r#"{"username":"admin","port":5432,"tls":true,"my-key":"hyphen-value"}"#,
    )
    .await;
    cluster
        .moto()
        .sm_client(&account)
        .create_secret()
        .name("bin")
        .secret_binary(Blob::new(vec![0u8, 1, 2, 0xfe, 0xff]))
        .send()
        .await
        .unwrap();
    let (provider, _) = provider(cluster, false, Duration::from_secs(5)).await;
    let yaml = r#"
- objectName: json
  objectType: secretsmanager
  jmesPath:
    - path: username
      objectAlias: user
    - path: port
      objectAlias: port
      filePermission: "0400"
    - path: tls
      objectAlias: tls
    - path: '"my-key"'
      objectAlias: hyphen
- objectName: bin
  objectType: secretsmanager
"#;
    let p = objects(yaml);
    let resp = provider
        .mount(request(&pod, &params(&p)))
        .await
        .expect("mount");
    let f = files(&resp);
    assert_eq!(f["user"], "admin");
    assert_eq!(f["port"], "5432");
    assert_eq!(f["tls"], "true");
    assert_eq!(f["hyphen"], "hyphen-value");
    let bin = resp.files.iter().find(|f| f.path == "bin").unwrap();
    assert_eq!(bin.contents.expose(), &[0u8, 1, 2, 0xfe, 0xff]);
    assert_eq!(resp.object_versions.len(), 6, "one version per file");

    // An unquoted hyphenated key is refused before any fetch, with the fix in the message.
    let bad = objects(
        "- objectName: json\n  objectType: secretsmanager\n  jmesPath:\n    - path: my-key\n      objectAlias: h\n",
    );
    let err = provider
        .mount(request(&pod, &params(&bad)))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::InvalidParameters);
    assert_error(
        &err,
        &["object \"json\"", "must be quoted", "\"my-key\""],
        "hyphen-value",
    );

    // jmesPath on a value that is not JSON names the object, never the value.
    sm_secret(cluster, &account, "plain", "not-json-s3cr3t").await;
    let bad = objects(
        "- objectName: plain\n  objectType: secretsmanager\n  jmesPath:\n    - path: a\n      objectAlias: a\n",
    );
    let err = provider
        .mount(request(&pod, &params(&bad)))
        .await
        .unwrap_err();
    assert_error(&err, &["object \"plain\"", "not valid JSON"], "s3cr3t");
}

#[tokio::test]
async fn ssm_string_stringlist_securestring_version_label_and_arn() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let account = cluster.moto().new_account();
    let pod = irsa_pod(cluster, "aws-ssm", &account, "app").await;
    ssm_param(
        cluster,
        &account,
        "/app/plain",
        "v-one",
        ParameterType::String,
    )
    .await;
    ssm_param(
        cluster,
        &account,
        "/app/plain",
        "v-two",
        ParameterType::String,
    )
    .await;
    ssm_param(
        cluster,
        &account,
        "list",
        "a,b,c",
        ParameterType::StringList,
    )
    .await;
    ssm_param(
        cluster,
        &account,
        "/app/secure",
        "enc-s3cr3t",
        ParameterType::SecureString,
    )
    .await;
    let ssm = cluster.moto().ssm_client(&account);
    ssm.label_parameter_version()
        .name("/app/plain")
        .parameter_version(1)
        .labels("stable")
        .send()
        .await
        .unwrap();
    let arn = format!("arn:aws:ssm:{REGION}:{account}:parameter/app/secure");
    let (provider, _) = provider(cluster, false, Duration::from_secs(5)).await;
    let yaml = format!(
        "- objectName: /app/plain\n  objectType: ssmparameter\n\
         - objectName: /app/plain\n  objectType: ssmparameter\n  objectAlias: v1\n  objectVersion: \"1\"\n\
         - objectName: /app/plain\n  objectType: ssmparameter\n  objectAlias: stable\n  objectVersionLabel: stable\n\
         - objectName: list\n  objectType: ssmparameter\n\
         - objectName: /app/secure\n  objectType: ssmparameter\n  objectAlias: secure\n\
         - objectName: \"{arn}\"\n  objectAlias: byarn\n"
    );
    let p = objects(&yaml);
    let resp = provider
        .mount(request(&pod, &params(&p)))
        .await
        .expect("mount");
    let f = files(&resp);
    assert_eq!(f["_app_plain"], "v-two");
    assert_eq!(f["v1"], "v-one");
    assert_eq!(f["stable"], "v-one");
    assert_eq!(f["list"], "a,b,c");
    assert_eq!(f["secure"], "enc-s3cr3t", "SecureString decrypted");
    assert_eq!(f["byarn"], "enc-s3cr3t");
    let v = versions(&resp);
    assert_eq!(v["_app_plain"], "2");
    assert_eq!(v["v1"], "1");
    assert_eq!(v["stable"], "1");
}

#[tokio::test]
async fn failover_region_is_not_used_when_the_primary_answers() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let account = cluster.moto().new_account();
    let pod = irsa_pod(cluster, "aws-failover-unused", &account, "app").await;
    sm_secret(cluster, &account, "regional", "from-primary").await;
    let west = aws_sdk_secretsmanager::Client::from_conf(
        cluster
            .moto()
            .sm_client(&account)
            .config()
            .to_builder()
            .region(aws_sdk_secretsmanager::config::Region::new("us-west-2"))
            .build(),
    );
    west.create_secret()
        .name("regional")
        .secret_string("from-failover")
        .send()
        .await
        .unwrap();
    let (provider, _) = provider(cluster, false, Duration::from_secs(5)).await;
    let p = vec![
        (
            "objects",
            "- objectName: regional\n  objectType: secretsmanager\n  objectAlias: r\n  failoverObject:\n    objectName: regional\n".to_string(),
        ),
        ("failoverRegion", "us-west-2".to_string()),
    ];
    let resp = provider
        .mount(request(&pod, &params(&p)))
        .await
        .expect("mount");
    assert_eq!(files(&resp)["r"], "from-primary");

    // A missing secret is a plain NotFound from the primary, not a reason to fail over.
    let p = vec![
        (
            "objects",
            "- objectName: nowhere\n  objectType: secretsmanager\n".to_string(),
        ),
        ("failoverRegion", "us-west-2".to_string()),
    ];
    let err = provider
        .mount(request(&pod, &params(&p)))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::NotFound, "{err}");
    assert_error(
        &err,
        &["object \"nowhere\"", "in us-east-1", "not found"],
        "from-",
    );
}

#[tokio::test]
async fn identity_errors_are_clear() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let account = cluster.moto().new_account();
    let pod = irsa_pod(cluster, "aws-identity-errors", &account, "app").await;
    let (provider, _) = provider(cluster, false, Duration::from_secs(5)).await;
    let p = objects("- objectName: x\n  objectType: secretsmanager\n");

    // No annotation on the ServiceAccount.
    service_account(cluster, &pod.namespace, "plain", None).await;
    let mut req = request(&pod, &params(&p));
    req.attributes.0.insert(
        "csi.storage.k8s.io/serviceAccount.name".into(),
        "plain".into(),
    );
    let err = provider.mount(req).await.unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::Unauthenticated);
    assert_error(&err, &["plain", "eks.amazonaws.com/role-arn"], "\"token\"");

    // No token from kubelet.
    let mut req = request(&pod, &params(&p));
    req.attributes
        .0
        .remove("csi.storage.k8s.io/serviceAccount.tokens");
    let err = provider.mount(req).await.unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::Unauthenticated);
    assert_error(&err, &["sts.amazonaws.com", "tokenRequests"], "\"token\"");

    // Missing ServiceAccount.
    let mut req = request(&pod, &params(&p));
    req.attributes.0.insert(
        "csi.storage.k8s.io/serviceAccount.name".into(),
        "ghost".into(),
    );
    let err = provider.mount(req).await.unwrap_err();
    assert_error(&err, &["ServiceAccount", "ghost", "not found"], "\"token\"");

    // Invalid parameters are refused before any identity or AWS work.
    let bad = objects("- objectName: x\n  objectType: s3\n");
    let err = provider
        .mount(request(&pod, &params(&bad)))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::InvalidParameters);
    assert_error(
        &err,
        &["object \"x\"", "invalid objectType: s3"],
        "\"token\"",
    );
}

/// `…:secret:a-XXXXXX` is both the full ARN of secret `a` and a partial ARN of secret
/// `a-XXXXXX`; mounted together in one batch, each object gets its own secret.
#[tokio::test]
async fn a_full_arn_that_is_also_a_partial_arn_gets_its_exact_secret() {
    let cluster = Cluster::shared();
    let _logs = cluster.dump_logs_on_panic();
    let account = cluster.moto().new_account();
    let pod = irsa_pod(cluster, "aws-sm-exact", &account, "app").await;
    let a_arn = sm_secret(cluster, &account, "a", "value-of-a").await;
    let suffixed = a_arn.rsplit(':').next().expect("a name").to_string();
    sm_secret(cluster, &account, &suffixed, "value-of-the-other").await;
    let (provider, _) = provider(cluster, false, Duration::from_secs(5)).await;

    let yaml = format!(
        "- objectName: \"{suffixed}\"\n  objectType: secretsmanager\n  objectAlias: other\n\
         - objectName: \"{a_arn}\"\n  objectAlias: byarn\n\
         - objectName: a\n  objectType: secretsmanager\n"
    );
    let p = objects(&yaml);
    let resp = provider
        .mount(request(&pod, &params(&p)))
        .await
        .expect("mount");
    let f = files(&resp);
    assert_eq!(f["other"], "value-of-the-other");
    assert_eq!(f["byarn"], "value-of-a");
    assert_eq!(f["a"], "value-of-a");
}
