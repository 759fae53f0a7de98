//! `secrets-store check`: validates a SecretProviderClass before it is applied, with exactly the
//! built-in AWS provider's rules (the same `validate` a mount runs) and the secret sync's
//! `secretObjects` rules, prints which object lands in which file and Secret key, and with
//! `--dry-run` fetches every object with the caller's AWS credentials, writing nothing.
//!
//! Exit codes, for CI pipelines: 0 valid, 1 invalid, 2 usage or I/O error, 3 dry-run access
//! failure.

mod class;
mod dry_run;
mod manifest;
mod secret_objects;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;

use class::check_class;
use manifest::{kind_of, read_docs};
use workload::read_workload;

/// Exit code: the class (and pod) are valid; with `--dry-run`, every object was fetched.
pub const EXIT_OK: u8 = 0;
/// Exit code: the class or the pod is invalid.
pub const EXIT_INVALID: u8 = 1;
/// Exit code: bad usage or a file that cannot be read.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: `--dry-run` could not fetch at least one object.
pub const EXIT_ACCESS: u8 = 3;

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
