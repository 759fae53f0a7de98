//! `secrets-store`: the node agent of the Secrets Store CSI driver, with one subcommand per mode.
//!
//! `main` stays thin: it parses flags, sets up logging and hands over to `cmd::<name>::run`.

mod cmd;

use clap::{Parser, Subcommand};

/// Kubernetes Secrets Store CSI driver (`secrets-store.csi.k8s.io`) with a built-in AWS provider.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "LOG_FORMAT_JSON")]
    log_format_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the CSI node agent (CSI Identity + Node, kubelet registration, health, metrics).
    Node(cmd::node::NodeArgs),
    /// Run the cluster controller (leader-elected): rollout of opted-in workloads on Secret change.
    Controller(cmd::controller::ControllerArgs),
    /// Serve only the AWS provider over upstream's v1alpha1 API (for the upstream Go driver).
    ProviderAws(cmd::provider_aws::ProviderAwsArgs),
    /// Validate a SecretProviderClass offline (and with --dry-run, fetch without writing).
    Check(secrets_store::check::CheckArgs),
    /// Print the CustomResourceDefinitions.
    Crds(cmd::crds::CrdsArgs),
}

/// Third-party crates whose debug and trace events carry whole requests: the AWS SDK logs each
/// request it transmits with its headers (the session token, the signature) and body (the web
/// identity token of `AssumeRoleWithWebIdentity`), the HTTP, HPACK and TLS stacks their frames. They stay
/// at `info` whatever `RUST_LOG` asks, so the chart's highest verbosity cannot leak credentials.
const CAPPED_AT_INFO: &[&str] = &[
    "aws_config",
    "aws_runtime",
    "aws_sigv4",
    "aws_smithy_http_client",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "h2",
    "hyper",
    "hyper_util",
    "loona_hpack",
    "rustls",
    "tonic",
    "tower",
];

fn init_logging(json: bool) {
    // RUST_LOG overrides for our own code; secrets never reach any level (they are wrapped in
    // redacting types), and the crates that would print credentials are capped.
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for target in CAPPED_AT_INFO {
        filter = filter.add_directive(format!("{target}=info").parse().expect("valid directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    init_logging(cli.log_format_json);
    // One TLS stack process-wide (kube and the AWS SDK both use rustls with aws-lc-rs). An error
    // only means one was installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ok = std::process::ExitCode::SUCCESS;
    match cli.command {
        Command::Node(args) => cmd::node::run(args).await.map(|()| ok),
        Command::Controller(args) => cmd::controller::run(args).await.map(|()| ok),
        Command::ProviderAws(args) => cmd::provider_aws::run(args).await.map(|()| ok),
        Command::Check(args) => secrets_store::check::run(args).await,
        Command::Crds(args) => cmd::crds::run(args).map(|()| ok),
    }
}
