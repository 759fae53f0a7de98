//! `secrets-store check`: offline validation of SecretProviderClasses (the AWS provider's rules and
//! the sync's `secretObjects` rules), pod/workload checks, exit codes, and `--dry-run` against a
//! real moto with ambient (environment) credentials.
//!
//! Every case runs the real `secrets-store check` in a child process with a controlled
//! environment; the flag parsing is also checked in process through the library
//! (`secrets_store::check`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use secrets_store::check;
use secrets_store_testenv::Cluster;
use secrets_store_testenv::seed;

/// The seed walk-through's class, as shipped in `examples/seed/`.
fn seed_class() -> String {
    seed::file("secretproviderclass.yaml")
}

/// The seed walk-through's Deployment, as shipped in `examples/seed/`.
fn seed_deployment() -> String {
    seed::file("test-nginx.yaml")
}

/// `secrets-store check` as a CLI.
#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: check::CheckArgs,
}

/// Runs `check <args>` with only `env` as AWS environment; returns (exit code, stdout).
fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_secrets-store"));
    cmd.arg("check").args(args);
    for var in [
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ] {
        cmd.env_remove(var);
    }
    // No profile files and no instance metadata: only the credentials a case passes exist.
    cmd.env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials",
        )
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("running secrets-store check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = out.status.code().expect("exit code");
    (code, stdout)
}

/// The documented flags parse, and `-f` is required.
#[test]
fn documented_flags_parse() {
    let cli = Cli::try_parse_from([
        "check",
        "-f",
        "spc.yaml",
        "--pod",
        "pod.yaml",
        "--dry-run",
        "--region",
        "eu-west-1",
    ])
    .unwrap();
    assert_eq!(cli.args.file, PathBuf::from("spc.yaml"));
    assert_eq!(cli.args.pod, Some(PathBuf::from("pod.yaml")));
    assert!(cli.args.dry_run);
    assert_eq!(cli.args.region.as_deref(), Some("eu-west-1"));
    assert!(Cli::try_parse_from(["check"]).is_err(), "-f is required");
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// A class with `objects` (indented under the literal block) and optional secretObjects YAML.
fn class(objects: &str, extra_params: &str, secret_objects: &str) -> String {
    let objects: String = objects.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: c\n  namespace: apps\nspec:\n  provider: aws\n{secret_objects}  parameters:\n{extra_params}    objects: |\n{objects}"
    )
}

#[test]
fn seed_class_is_valid_and_prints_the_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let spc = write(dir.path(), "spc.yaml", &seed_class());
    let (code, out) = cli(&["-f", &spc], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "CSI-driver-test-secret (secretsmanager) -> file CSI-driver-test-secret -> Secret foosecret/SECRET_API_KEY"
        ),
        "{out}"
    );
    assert!(out.contains("checking as if it were us-east-1"), "{out}");
    assert!(out.contains("syncSecret.enabled=true"), "{out}");
    assert!(out.contains("result: valid"), "{out}");

    // AWS_REGION stands in for the node's region, as in the agent.
    let (code, out) = cli(&["-f", &spc], &[("AWS_REGION", "eu-west-1")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("region eu-west-1"), "{out}");
}

#[test]
fn seed_deployment_mounts_the_class_and_reads_a_synced_key() {
    let dir = tempfile::tempdir().unwrap();
    let spc = write(dir.path(), "spc.yaml", &seed_class());
    let pod = write(dir.path(), "deploy.yaml", &seed_deployment());
    let (code, out) = cli(&["-f", &spc, "--pod", &pod, "--region", "us-east-1"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "Deployment/csi-secret-driver-test-nginx-deployment mounts the class as volume secrets-store-inline"
        ),
        "{out}"
    );
    assert!(
        out.contains("env SECRET_API_KEY <- Secret foosecret/SECRET_API_KEY"),
        "{out}"
    );
}

#[test]
fn pod_mistakes_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let spc = write(dir.path(), "spc.yaml", &seed_class());
    for (case, from, to, expect) in [
        (
            "wrong class",
            "secretProviderClass: nginx-deployment-aws-secrets",
            "secretProviderClass: other",
            "has no secrets-store.csi.k8s.io volume with volumeAttributes.secretProviderClass: nginx-deployment-aws-secrets",
        ),
        (
            "writable",
            "          readOnly: true\n          volumeAttributes",
            "          volumeAttributes",
            "csi.readOnly must be true",
        ),
        (
            "wrong key",
            "key: SECRET_API_KEY\n",
            "key: API_KEY\n",
            "gets keys [SECRET_API_KEY] from secretObjects, not \"API_KEY\"",
        ),
    ] {
        let deployment = seed_deployment();
        let text = deployment.replacen(from, to, 1);
        assert_ne!(text, deployment, "{case}: fixture edit applied");
        let pod = write(dir.path(), "deploy.yaml", &text);
        let (code, out) = cli(&["-f", &spc, "--pod", &pod, "--region", "us-east-1"], &[]);
        assert_eq!(code, 1, "{case}: {out}");
        assert!(out.contains(expect), "{case}: {out}");
        assert!(out.contains("result: invalid"), "{case}: {out}");
    }

    // A class in another namespace is never used by the pod.
    let spc_ns = write(
        dir.path(),
        "spc-ns.yaml",
        &seed_class().replace(
            "  name: nginx-deployment-aws-secrets\n",
            "  name: nginx-deployment-aws-secrets\n  namespace: team-a\n",
        ),
    );
    let pod = write(
        dir.path(),
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: team-b\nspec:\n  containers:\n  - name: c\n    image: x\n  volumes:\n  - name: s\n    csi:\n      driver: secrets-store.csi.k8s.io\n      readOnly: true\n      volumeAttributes:\n        secretProviderClass: nginx-deployment-aws-secrets\n",
    );
    let (code, out) = cli(
        &["-f", &spc_ns, "--pod", &pod, "--region", "us-east-1"],
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("a pod only uses classes of its own namespace"),
        "{out}"
    );
}

#[test]
fn provider_rules_reject_bad_classes_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (case, text, expect) in [
        (
            "no objectType",
            class("- objectName: plain-name\n", "", ""),
            "must use objectType when a full ARN is not specified",
        ),
        (
            "traversal alias",
            class(
                "- objectName: a\n  objectType: secretsmanager\n  objectAlias: ../escape\n",
                "    pathTranslation: \"False\"\n",
                "",
            ),
            "path \"../escape\" can not contain ..",
        ),
        (
            "ARN in another region",
            class(
                "- objectName: arn:aws:secretsmanager:eu-west-1:123456789012:secret:x-AbCdEf\n",
                "    region: us-east-1\n",
                "",
            ),
            "ARN region must match region us-east-1",
        ),
        (
            "unquoted jmesPath key",
            class(
                "- objectName: db\n  objectType: secretsmanager\n  jmesPath:\n    - path: my-key\n      objectAlias: k\n",
                "",
                "",
            ),
            "must be quoted",
        ),
        (
            "secretObjects name no file",
            class(
                "- objectName: db\n  objectType: secretsmanager\n  objectAlias: db-file\n",
                "",
                "  secretObjects:\n  - secretName: s\n    type: Opaque\n    data:\n    - objectName: db\n      key: k\n",
            ),
            "refers to objectName \"db\", but the volume has no such file (mounted: db-file)",
        ),
        (
            "bad Secret key",
            class(
                "- objectName: db\n  objectType: secretsmanager\n",
                "",
                "  secretObjects:\n  - secretName: s\n    type: Opaque\n    data:\n    - objectName: db\n      key: not a key\n",
            ),
            "is not a valid Secret data key",
        ),
        (
            "other provider",
            class("- objectName: a\n", "", "").replace("provider: aws", "provider: vault"),
            "only the built-in \"aws\" provider can be checked",
        ),
        ("YAML syntax", "kind: [unclosed".to_string(), "invalid YAML"),
    ] {
        let spc = write(dir.path(), "spc.yaml", &text);
        let (code, out) = cli(&["-f", &spc, "--region", "us-east-1"], &[]);
        assert_eq!(code, 1, "{case}: {out}");
        assert!(
            out.contains(expect),
            "{case}: expected {expect:?} in:\n{out}"
        );
    }
}

#[test]
fn jmes_aliases_and_translated_paths_map_to_secret_keys() {
    let dir = tempfile::tempdir().unwrap();
    let text = class(
        "- objectName: app/db\n  objectType: secretsmanager\n  jmesPath:\n    - path: username\n      objectAlias: db-user\n    - path: '\"pass-word\"'\n      objectAlias: db-pass\n- objectName: /app/flag\n  objectType: ssmparameter\n  objectVersion: \"3\"\n",
        "    region: eu-west-1\n",
        "  secretObjects:\n  - secretName: db\n    type: Opaque\n    data:\n    - objectName: db-user\n      key: user\n    - objectName: _app_flag\n      key: flag\n",
    );
    let spc = write(dir.path(), "spc.yaml", &text);
    let (code, out) = cli(&["-f", &spc], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("app/db (secretsmanager) -> file app_db\n"),
        "{out}"
    );
    assert!(
        out.contains("jmesPath username -> file db-user -> Secret db/user"),
        "{out}"
    );
    assert!(
        out.contains("/app/flag (ssmparameter version 3) -> file _app_flag -> Secret db/flag"),
        "{out}"
    );
    assert!(
        !out.contains("checking as if"),
        "the class sets its region: {out}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = cli(&["-f", "/nonexistent/spc.yaml"], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("reading /nonexistent/spc.yaml"), "{out}");
    let cm = write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
    );
    let (code, out) = cli(&["-f", &cm], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no SecretProviderClass found"), "{out}");
    let spc = write(dir.path(), "spc.yaml", &seed_class());
    let (code, out) = cli(&["-f", &spc, "--pod", &cm], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no object of kind Pod"), "{out}");
}

/// Creates a Secrets Manager secret in moto's default account (the one unknown static keys act
/// in) with a bare JSON-protocol request; the test crate keeps no AWS SDK of its own.
fn create_secret(endpoint: &str, name: &str, value: &str) {
    let addr = endpoint.trim_start_matches("http://");
    let body = serde_json::json!({"Name": name, "SecretString": value}).to_string();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nX-Amz-Target: secretsmanager.CreateSecret\r\n\
         Content-Type: application/x-amz-json-1.1\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=AKIACHECKDRYRUN00000/20260101/us-east-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=00\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting to moto");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "CreateSecret: {response}"
    );
}

#[test]
fn dry_run_reports_per_object_access_against_moto() {
    let cluster = Cluster::shared();
    let endpoint = cluster.moto().endpoint();
    let suffix = std::process::id();
    let present = format!("check-dry-run-present-{suffix}");
    let missing = format!("check-dry-run-missing-{suffix}");
    let value = format!("dry-run-value-{suffix}-do-not-print");
    create_secret(&endpoint, &present, &value);
    let creds = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "AKIACHECKDRYRUN00000"),
        ("AWS_SECRET_ACCESS_KEY", "dummy-secret-key"),
    ];
    let dir = tempfile::tempdir().unwrap();

    let ok = write(
        dir.path(),
        "ok.yaml",
        &class(
            &format!("- objectName: {present}\n  objectType: secretsmanager\n"),
            "    region: us-east-1\n",
            &format!(
                "  secretObjects:\n  - secretName: s\n    type: Opaque\n    data:\n    - objectName: {present}\n      key: k\n"
            ),
        ),
    );
    let (code, out) = cli(&["-f", &ok, "--dry-run"], &creds);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "ok      {present} (secretsmanager): {present} ({} bytes)",
            value.len()
        )),
        "{out}"
    );
    assert!(
        !out.contains(&value),
        "the value must never be printed: {out}"
    );

    let partly = write(
        dir.path(),
        "partly.yaml",
        &class(
            &format!(
                "- objectName: {present}\n  objectType: secretsmanager\n- objectName: {missing}\n  objectType: secretsmanager\n"
            ),
            "    region: us-east-1\n",
            "",
        ),
    );
    let (code, out) = cli(&["-f", &partly, "--dry-run"], &creds);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains(&format!("ok      {present}")), "{out}");
    assert!(
        out.contains(&format!("FAILED  {missing} (secretsmanager)")),
        "{out}"
    );
    assert!(out.contains("not found"), "{out}");
    assert!(!out.contains(&value), "{out}");

    // No ambient credentials at all: an access failure, not a crash.
    let (code, out) = cli(
        &["-f", &ok, "--dry-run"],
        &[("AWS_ENDPOINT_URL", endpoint.as_str())],
    );
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("no AWS credentials"), "{out}");
}
