//! `secrets-store check`: validates a SecretProviderClass before it is applied, with exactly the
//! built-in AWS provider's rules (the same `validate` a mount runs) and the secret sync's
//! `secretObjects` rules, prints which object lands in which file and Secret key, and with
//! `--dry-run` fetches every object with the caller's AWS credentials, writing nothing.
//!
//! Exit codes, for CI pipelines: 0 valid, 1 invalid, 2 usage or I/O error, 3 dry-run access
//! failure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use k8s_openapi::api::core::v1::PodSpec;
use secrets_store_api::crd::SecretProviderClass;
use secrets_store_api::labels::DRIVER_NAME;
use secrets_store_provider::SecretBytes;
use secrets_store_provider_aws::params::MountParameters;
use secrets_store_sync::desired::{DesiredSecretError, desired_secret};
use serde_json::Value;

/// Exit code: the class (and pod) are valid; with `--dry-run`, every object was fetched.
pub const EXIT_OK: u8 = 0;
/// Exit code: the class or the pod is invalid.
pub const EXIT_INVALID: u8 = 1;
/// Exit code: bad usage or a file that cannot be read.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: `--dry-run` could not fetch at least one object.
pub const EXIT_ACCESS: u8 = 3;

/// Region assumed when neither the class, `--region` nor `AWS_REGION` names one (in a cluster the
/// node's `topology.kubernetes.io/region` label would).
const STAND_IN_REGION: &str = "us-east-1";
const DRY_RUN_TIMEOUT: Duration = Duration::from_secs(30);
const POD_KINDS: &[&str] = &[
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
];

/// Flags of `secrets-store check`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// SecretProviderClass manifest (YAML, may hold several documents; `-` reads stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Pod or workload (Deployment, StatefulSet, ...) manifest that mounts the class: checks its
    /// volume and Secret references, and uses its namespace and ServiceAccount.
    #[arg(long, value_name = "FILE")]
    pub pod: Option<PathBuf>,
    /// Fetch every object with the ambient AWS credentials (nothing is written) and report access.
    #[arg(long)]
    pub dry_run: bool,
    /// Region for classes that set none (in a cluster: the agent's AWS_REGION or the node label).
    #[arg(long, env = "AWS_REGION", value_name = "REGION")]
    pub region: Option<String>,
}

/// Why the check could not run at all (exit code 2). Never contains file contents.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The pod manifest is not YAML.
    #[error("{path}: invalid YAML: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The file holds no object of the expected kind.
    #[error("{path}: no {what} found")]
    Missing {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: String,
    },
}

/// The result of a check: the report to print and the exit code.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Human-readable report (one finding per line; problems start with `error:`).
    pub report: String,
    /// One of the `EXIT_*` codes.
    pub code: u8,
}

impl Outcome {
    fn line(&mut self, s: impl AsRef<str>) {
        self.report.push_str(s.as_ref());
        self.report.push('\n');
    }

    fn problem(&mut self, s: impl AsRef<str>) {
        self.line(format!("error: {}", s.as_ref()));
        self.code = self.code.max(EXIT_INVALID);
    }
}

/// Runs the check, prints its report on stdout, and returns the exit code.
pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let outcome = check(&args).await;
    print!("{}", outcome.report);
    Ok(ExitCode::from(outcome.code))
}

/// Runs the check and returns the report and exit code without printing.
pub async fn check(args: &CheckArgs) -> Outcome {
    match check_inner(args).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome {
            report: format!("error: {e}\n"),
            code: EXIT_USAGE,
        },
    }
}

async fn check_inner(args: &CheckArgs) -> Result<Outcome, UsageError> {
    let mut out = Outcome::default();
    let docs = match read_docs(&args.file)? {
        Ok(docs) => docs,
        Err(e) => {
            out.problem(format!("{}: invalid YAML: {e}", args.file.display()));
            return Ok(out);
        }
    };
    let classes: Vec<&Value> = docs
        .iter()
        .filter(|d| kind_of(d) == Some("SecretProviderClass"))
        .collect();
    if classes.is_empty() {
        return Err(UsageError::Missing {
            path: args.file.clone(),
            what: "SecretProviderClass".into(),
        });
    }
    let workload = match &args.pod {
        None => None,
        Some(path) => Some(read_workload(path, &mut out)?),
    };
    for doc in classes {
        check_class(args, doc, workload.as_ref(), &mut out).await;
    }
    out.line(match out.code {
        EXIT_OK => "result: valid",
        EXIT_INVALID => "result: invalid",
        _ => "result: valid, but some objects could not be fetched",
    });
    Ok(out)
}

fn read_text(path: &Path) -> Result<String, UsageError> {
    let read = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    };
    read.map_err(|source| UsageError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The YAML documents of `path`; the inner error is a syntax error (an invalid file, exit 1).
///
/// The parser is budgeted: anchors and aliases are allowed (kubectl accepts them), but replaying
/// them may produce at most [`MAX_ALIAS_REPLAY`] events in all, so an alias bomb is an error
/// rather than gigabytes (the `objects` parameter inside is stricter still: see the AWS
/// provider's `limits`).
fn read_docs(path: &Path) -> Result<Result<Vec<Value>, String>, UsageError> {
    let text = read_text(path)?;
    let options = serde_saphyr::options! {
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_ALIAS_REPLAY,
        },
        with_snippet: false,
    };
    match serde_saphyr::from_multiple_with_options::<Value>(&text, options) {
        Ok(docs) => Ok(Ok(docs.into_iter().filter(|d| !d.is_null()).collect())),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Events that alias replay may add to a manifest: far more than any manifest needs.
const MAX_ALIAS_REPLAY: usize = 100_000;

fn kind_of(doc: &Value) -> Option<&str> {
    doc.get("kind").and_then(Value::as_str)
}

fn str_at<'a>(doc: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(doc, |v, k| v.get(*k))
        .and_then(Value::as_str)
}

/// A pod, or the pod template of a workload.
struct Workload {
    /// `Kind/name` for messages.
    label: String,
    namespace: Option<String>,
    name: String,
    spec: PodSpec,
}

fn read_workload(path: &Path, out: &mut Outcome) -> Result<Workload, UsageError> {
    let missing = || UsageError::Missing {
        path: path.to_path_buf(),
        what: format!("object of kind {}", POD_KINDS.join(", ")),
    };
    let docs = match read_docs(path)? {
        Ok(docs) => docs,
        Err(message) => {
            return Err(UsageError::Yaml {
                path: path.to_path_buf(),
                message,
            });
        }
    };
    let doc = docs
        .iter()
        .find(|d| kind_of(d).is_some_and(|k| POD_KINDS.contains(&k)))
        .ok_or_else(missing)?;
    let kind = kind_of(doc).unwrap_or_default();
    let spec_path: &[&str] = match kind {
        "Pod" => &["spec"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        _ => &["spec", "template", "spec"],
    };
    let raw = spec_path
        .iter()
        .try_fold(doc, |v, k| v.get(*k))
        .cloned()
        .ok_or_else(missing)?;
    let name = str_at(doc, &["metadata", "name"])
        .unwrap_or("unnamed")
        .to_string();
    let spec = serde_json::from_value::<PodSpec>(raw).unwrap_or_else(|e| {
        out.problem(format!("{kind}/{name}: invalid pod spec: {e}"));
        PodSpec::default()
    });
    Ok(Workload {
        label: format!("{kind}/{name}"),
        namespace: str_at(doc, &["metadata", "namespace"]).map(str::to_string),
        name,
        spec,
    })
}

async fn check_class(
    args: &CheckArgs,
    doc: &Value,
    workload: Option<&Workload>,
    out: &mut Outcome,
) {
    let api_version = str_at(doc, &["apiVersion"]).unwrap_or_default();
    let spc: SecretProviderClass = match serde_json::from_value(doc.clone()) {
        Ok(spc) => spc,
        Err(e) => {
            out.problem(format!(
                "SecretProviderClass: does not match the schema: {e}"
            ));
            return;
        }
    };
    let name = spc.metadata.name.clone().unwrap_or_default();
    let class_ns = spc.metadata.namespace.clone();
    out.line(format!(
        "SecretProviderClass {}{name} (provider {:?})",
        class_ns
            .as_deref()
            .map(|n| format!("{n}/"))
            .unwrap_or_default(),
        spc.spec.provider
    ));
    if !matches!(
        api_version,
        "secrets-store.csi.x-k8s.io/v1" | "secrets-store.csi.x-k8s.io/v1alpha1"
    ) {
        out.problem(format!(
            "apiVersion {api_version:?}: expected secrets-store.csi.x-k8s.io/v1"
        ));
    }
    if name.is_empty() {
        out.problem("metadata.name is empty");
    }
    if spc.spec.provider != secrets_store_provider_aws::PROVIDER_NAME {
        out.problem(format!(
            "spec.provider {:?}: only the built-in \"aws\" provider can be checked",
            spc.spec.provider
        ));
        return;
    }

    // The attributes a mount would pass: the parameters plus what kubelet adds about the pod.
    let namespace = workload
        .and_then(|w| w.namespace.clone())
        .or(class_ns.clone())
        .unwrap_or_else(|| "default".into());
    let mut attrs = spc.spec.parameters.clone();
    attrs.insert("csi.storage.k8s.io/pod.namespace".into(), namespace.clone());
    attrs.insert(
        "csi.storage.k8s.io/pod.name".into(),
        workload.map_or_else(|| "check".into(), |w| w.name.clone()),
    );
    attrs.insert(
        "csi.storage.k8s.io/serviceAccount.name".into(),
        workload
            .and_then(|w| w.spec.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
    );
    let class_region = attrs.get("region").is_some_and(|r| !r.is_empty());
    let default_region = match (&args.region, class_region) {
        (Some(r), _) if !r.is_empty() => Some(r.clone()),
        (_, true) => None,
        _ => {
            out.line(format!(
                "note: no region in the class, --region or AWS_REGION; checking as if it were \
                 {STAND_IN_REGION} (in a cluster the node's topology.kubernetes.io/region label decides)"
            ));
            Some(STAND_IN_REGION.to_string())
        }
    };
    let params = match secrets_store_provider_aws::validate(&attrs, default_region.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            out.problem(e.message);
            return;
        }
    };
    print_mapping(&spc, &params, out);
    let file_names: Vec<String> = params
        .objects
        .iter()
        .flat_map(|o| {
            std::iter::once(o.file_name.clone()).chain(o.jmes.iter().map(|j| j.file_name.clone()))
        })
        .collect();
    check_secret_objects(&spc, &file_names, None, out);
    if let Some(w) = workload {
        check_workload(&spc, &name, class_ns.as_deref(), w, out);
    }
    if args.dry_run && out.code == EXIT_OK {
        dry_run(&spc, &params, out).await;
    }
}

/// `objectName → file → Secret/key` lines, the mapping users most often get wrong.
fn print_mapping(spc: &SecretProviderClass, params: &MountParameters, out: &mut Outcome) {
    // file name → the Secret keys filled from it.
    let mut targets: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for so in &spc.spec.secret_objects {
        for d in &so.data {
            targets
                .entry(d.object_name.as_str())
                .or_default()
                .push(format!("Secret {}/{}", so.secret_name, d.key));
        }
    }
    let arrow = |file: &str| match targets.get(file) {
        Some(t) => format!(" -> {}", t.join(", ")),
        None => String::new(),
    };
    out.line(format!("region {}", params.region));
    if let Some(f) = &params.failover_region {
        out.line(format!("failover region {f}"));
    }
    for o in &params.objects {
        let mut version = String::new();
        if let Some(v) = &o.selector.version {
            let _ = write!(version, " version {v}");
        }
        if let Some(l) = &o.selector.label {
            let _ = write!(version, " label {l}");
        }
        out.line(format!(
            "  {} ({}{version}) -> file {}{}",
            o.name,
            o.kind,
            o.file_name,
            arrow(&o.file_name)
        ));
        for j in &o.jmes {
            out.line(format!(
                "    jmesPath {} -> file {}{}",
                j.path,
                j.file_name,
                arrow(&j.file_name)
            ));
        }
        if let Some(f) = &o.failover {
            out.line(format!("    failover object {}", f.name));
        }
    }
    if !spc.spec.secret_objects.is_empty() {
        out.line(
            "note: secretObjects are synced only with the chart value syncSecret.enabled=true",
        );
    }
}

/// The sync's own rules over the files the provider will write. Offline (`contents` None) the
/// files are empty stand-ins, so splitting a `kubernetes.io/tls` bundle is left to `--dry-run`.
fn check_secret_objects(
    spc: &SecretProviderClass,
    file_names: &[String],
    contents: Option<&BTreeMap<String, SecretBytes>>,
    out: &mut Outcome,
) {
    let stand_ins: BTreeMap<String, SecretBytes>;
    let files = match contents {
        Some(c) => c,
        None => {
            stand_ins = file_names
                .iter()
                .map(|f| (f.clone(), SecretBytes::new(Vec::new())))
                .collect();
            &stand_ins
        }
    };
    for (index, so) in spc.spec.secret_objects.iter().enumerate() {
        match desired_secret(index, so, files) {
            Ok(_) => {}
            Err(DesiredSecretError::Tls { .. }) if contents.is_none() => {}
            Err(e) => out.problem(e.to_string()),
        }
        for d in &so.data {
            if !d.key.is_empty() && !is_secret_key(&d.key) {
                out.problem(format!(
                    "secret {:?}: key {:?} is not a valid Secret data key (letters, digits, '-', '_', '.')",
                    so.secret_name, d.key
                ));
            }
        }
    }
}

/// Kubernetes' rule for Secret data keys (`IsConfigMapKey`).
fn is_secret_key(key: &str) -> bool {
    key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_workload(
    spc: &SecretProviderClass,
    class: &str,
    class_ns: Option<&str>,
    w: &Workload,
    out: &mut Outcome,
) {
    if let (Some(pns), Some(cns)) = (w.namespace.as_deref(), class_ns)
        && pns != cns
    {
        out.problem(format!(
            "{} is in namespace {pns} but the class is in {cns}: a pod only uses classes of its own namespace",
            w.label
        ));
    }
    let volumes: Vec<_> = w
        .spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.csi.as_ref().map(|c| (v.name.as_str(), c)))
        .filter(|(_, c)| c.driver == DRIVER_NAME)
        .collect();
    let ours: Vec<_> = volumes
        .iter()
        .filter(|(_, c)| {
            c.volume_attributes
                .as_ref()
                .and_then(|a| a.get("secretProviderClass"))
                .is_some_and(|n| n == class)
        })
        .collect();
    if ours.is_empty() {
        out.problem(format!(
            "{} has no {DRIVER_NAME} volume with volumeAttributes.secretProviderClass: {class} ({} other {DRIVER_NAME} volume(s))",
            w.label,
            volumes.len()
        ));
    }
    for (vname, csi) in &ours {
        if csi.read_only != Some(true) {
            out.problem(format!(
                "{} volume {vname}: csi.readOnly must be true (the driver refuses writable mounts)",
                w.label
            ));
        } else {
            out.line(format!("{} mounts the class as volume {vname}", w.label));
        }
    }
    // Containers reading synced Secrets must ask for keys the class creates.
    let synced: BTreeMap<&str, Vec<&str>> = spc
        .spec
        .secret_objects
        .iter()
        .map(|so| {
            (
                so.secret_name.as_str(),
                so.data.iter().map(|d| d.key.as_str()).collect(),
            )
        })
        .collect();
    let containers = w
        .spec
        .containers
        .iter()
        .chain(w.spec.init_containers.iter().flatten());
    for c in containers {
        for env in c.env.iter().flatten() {
            let Some(r) = env
                .value_from
                .as_ref()
                .and_then(|f| f.secret_key_ref.as_ref())
            else {
                continue;
            };
            let Some(keys) = synced.get(r.name.as_str()) else {
                continue;
            };
            if keys.contains(&r.key.as_str()) {
                out.line(format!(
                    "container {} env {} <- Secret {}/{}",
                    c.name, env.name, r.name, r.key
                ));
            } else {
                out.problem(format!(
                    "container {} env {}: Secret {} gets keys [{}] from secretObjects, not {:?}",
                    c.name,
                    env.name,
                    r.name,
                    keys.join(", "),
                    r.key
                ));
            }
        }
    }
}

async fn dry_run(spc: &SecretProviderClass, params: &MountParameters, out: &mut Outcome) {
    out.line(format!(
        "dry run: fetching {} object(s) in {} with the ambient AWS credentials (nothing is written)",
        params.objects.len(),
        params.region
    ));
    let results = match secrets_store_provider_aws::dry_run::dry_run(params, DRY_RUN_TIMEOUT).await
    {
        Ok(r) => r,
        Err(e) => {
            out.line(format!("error: {e}"));
            out.code = out.code.max(EXIT_ACCESS);
            return;
        }
    };
    // Values stay in memory only long enough to check the secretObjects against them.
    let mut contents: BTreeMap<String, SecretBytes> = BTreeMap::new();
    let mut all_fetched = true;
    for access in results {
        match access.result {
            Ok(files) => {
                let sizes: Vec<String> = files
                    .iter()
                    .map(|f| format!("{} ({} bytes)", f.path, f.contents.len()))
                    .collect();
                out.line(format!(
                    "  ok      {} ({}): {}",
                    access.object,
                    access.kind,
                    sizes.join(", ")
                ));
                contents.extend(files.into_iter().map(|f| (f.path, f.contents)));
            }
            Err(message) => {
                all_fetched = false;
                out.line(format!(
                    "  FAILED  {} ({}): {message}",
                    access.object, access.kind
                ));
                out.code = out.code.max(EXIT_ACCESS);
            }
        }
    }
    if all_fetched {
        let names: Vec<String> = contents.keys().cloned().collect();
        check_secret_objects(spc, &names, Some(&contents), out);
    }
}
