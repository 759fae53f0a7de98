//! `make demo`: the walk-through "Sync AWS Secrets Manager to Kubernetes Secrets"
//! (`examples/seed/`) end to end on a real node on this machine, then everything torn down.
//!
//! The node is testenv's `RealNode`: kubelet v1.35, containerd and runc with a CNI bridge,
//! registered with a local control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler). Our chart is installed with the real `helm`, the agent runs from its own
//! image as the chart's DaemonSet pod and registers with kubelet, the seed's manifests go in
//! with the real `kubectl`, and kubelet mounts the pods' volumes through the agent. AWS is moto.
//! After the walk-through, `helm upgrade` adds the cluster controller (a Deployment from the same
//! image) and the same class is kept in sync with no pod at all (`podless.rs`).
//!
//! Steps by file: `walkthrough.rs` (the seed's), `podless.rs` (sync without pods), `commands.rs`
//! (the kubectl and wait helpers they share).
//!
//! Every `$ ` line printed is a command that ran, followed by its real output. Lines starting
//! with `# aws`/`# eksctl` are the walk-through's AWS commands, done here with the AWS SDK
//! against moto. The demo prints the demo secret's value, as the walk-through does; the agent
//! never logs it.
//!
//! Needs root (kubelet, containerd, tmpfs mounts) and the tools `make demo` builds first. A
//! failure, a panic or Ctrl-C tears the node down and restores the host all the same.

mod commands;
mod podless;
mod walkthrough;

use std::borrow::Cow;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use secrets_store_testenv::Cluster;
use secrets_store_testenv::real_node::{HostSnapshot, RealNode, RealNodeConfig, mounts_under};

const STEPS: u32 = 14;
/// How long one thing may take to converge before the demo gives up.
const WAIT: Duration = Duration::from_secs(120);
/// kubelet's `syncFrequency`: how often it republishes CSI volumes (`requiresRepublish`).
const KUBELET_SYNC: Duration = Duration::from_secs(10);
/// The chart's `rotationPollInterval`: how often the agent re-reads AWS for a mounted volume.
const ROTATION_POLL: &str = "5s";
const SECRET_FILE: &str = "/mnt/secrets-store/CSI-driver-test-secret";
const ROLLOUT_ANNOTATION: &str = "secrets-store.csi.x-k8s.io/rollout-on-secret-change";

fn color() -> bool {
    static COLOR: OnceLock<bool> = OnceLock::new();
    *COLOR.get_or_init(|| std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none())
}

fn paint(code: &str, text: &str) -> String {
    if color() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// A command line as it was run.
fn show(cmd: &str) {
    println!("{}", paint("1;36", &format!("$ {cmd}")));
}

/// A remark between commands.
fn note(text: &str) {
    println!("{}", paint("2", &format!("# {text}")));
}

/// Prints a command's output as a terminal would.
fn echo(out: &str) {
    if !out.is_empty() {
        print!("{out}");
        if !out.ends_with('\n') {
            println!();
        }
    }
}

/// Shell-quotes `arg` where a shell needs it, so printed command lines can be pasted.
fn quote(arg: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        Cow::Borrowed(arg)
    } else {
        Cow::Owned(format!("'{}'", arg.replace('\'', r"'\''")))
    }
}

fn repo() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    dir.canonicalize().unwrap_or(dir)
}

/// `path` relative to the repository (where `make demo` runs), for printing.
fn shown_path(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    path.strip_prefix(repo())
        .unwrap_or(&path)
        .display()
        .to_string()
}

/// Numbered steps with their durations.
struct Steps {
    n: u32,
    current: Option<Instant>,
}

impl Steps {
    fn start(&mut self, text: &str) {
        self.end();
        self.n += 1;
        println!("\n{}", paint("1", &format!("[{}/{STEPS}] {text}", self.n)));
        self.current = Some(Instant::now());
    }

    fn end(&mut self) {
        if let Some(started) = self.current.take() {
            println!(
                "{}",
                paint(
                    "2",
                    &format!(
                        "    step {}/{STEPS} took {:.1} s",
                        self.n,
                        started.elapsed().as_secs_f64()
                    )
                )
            );
        }
    }
}

/// The agent binary `make demo` built: `target/<profile>/secrets-store`, next to `examples/`.
fn agent_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the demo binary")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the demo binary is not in target/<profile>/examples")?;
    let binary = profile_dir.join("secrets-store");
    ensure!(
        binary.is_file(),
        "{} is missing: run `cargo build -p secrets-store` first (make demo does)",
        binary.display()
    );
    Ok(binary)
}

#[tokio::main]
async fn main() -> ExitCode {
    let started = Instant::now();
    println!(
        "{}",
        paint(
            "1",
            "make demo: the walk-through \"Sync AWS Secrets Manager to Kubernetes Secrets\" on a real node"
        )
    );
    println!(
        "kubelet + containerd + runc on this machine, our chart installed with helm, the seed's manifests\n\
         applied with kubectl, AWS played by moto; everything is torn down at the end. With the tools\n\
         built (make demo builds them first: ~13 min on 2 cores the first time) this takes about 70-80 s.\n\
         `$ ` lines ran as shown (kubectl and helm use the cluster's admin kubeconfig, see step 1);\n\
         `# aws ...` lines are done with the AWS SDK against moto."
    );
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "make demo needs root: it runs kubelet and containerd and mounts tmpfs volumes (try `sudo make demo`)"
        );
        return ExitCode::FAILURE;
    }
    let binary = match agent_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut steps = Steps {
        n: 0,
        current: None,
    };
    // Ctrl-C drops the demo future: the node's Drop tears it down and restores the host.
    let result = tokio::select! {
        result = run(&mut steps, binary) => result,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted: the node was torn down");
            return ExitCode::from(130);
        }
    };
    match result {
        Ok(()) => {
            steps.end();
            println!(
                "\n{}",
                paint(
                    "1;32",
                    &format!(
                        "make demo passed in {:.0} s: the walk-through ran on a real kubelet and the host was left as found.",
                        started.elapsed().as_secs_f64()
                    )
                )
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "\n{}\n",
                paint(
                    "1;31",
                    &format!(
                        "make demo FAILED in step {}/{STEPS} after {:.0} s: {e:#}",
                        steps.n,
                        started.elapsed().as_secs_f64()
                    )
                )
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(steps: &mut Steps, binary: PathBuf) -> Result<()> {
    steps.start(
        "A local control plane: etcd, kube-apiserver, kube-controller-manager, moto (AWS emulator)",
    );
    let cluster = Cluster::shared();
    // A panic anywhere below prints every component's log tail (the node tears down first).
    let _logs = cluster.dump_logs_on_panic();
    note(&format!(
        "apiserver {}, moto {}, component logs in {}",
        cluster.server_url(),
        cluster.moto().endpoint(),
        cluster.log_dir().display()
    ));
    show(&format!(
        "export KUBECONFIG={}",
        quote(&cluster.kubeconfig_path().display().to_string())
    ));

    steps.start(
        "A real node: containerd + runc + CNI bridge, kubelet, kube-scheduler; images imported without a registry",
    );
    let config = RealNodeConfig {
        agent_binary: Some(binary),
        sync_frequency: KUBELET_SYNC,
        ..RealNodeConfig::default()
    };
    note(
        "images (hack/images.sh): the pause image, a busybox-httpd stand-in tagged nginx:1.14.2 (no registry here), \
         and localhost/secrets-store-rs:dev packaging target/<profile>/secrets-store",
    );
    let node = match RealNode::start(cluster, config).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("{}", cluster.log_tails(30));
            bail!("starting the real node: {e}");
        }
    };
    let demo = commands::Demo {
        cluster,
        node: &node,
    };
    let result = demo.walkthrough(steps).await;
    if result.is_err() {
        eprintln!(
            "\n----- component log tails (full logs in {}) -----\n{}",
            cluster.log_dir().display(),
            cluster.log_tails(30)
        );
        eprintln!("tearing the node down");
        drop(node);
        return result;
    }

    steps.start("Stopping the node and checking the host");
    let before = node.host_before().clone();
    let run_dir = cluster.run_dir().to_path_buf();
    let after = node.stop().context("stopping the real node")?;
    report_host(&before, &after)?;
    let left = mounts_under(&run_dir);
    ensure!(left.is_empty(), "mounts left under the run dir: {left:?}");
    Ok(())
}

/// Prints a `helm` command line that ran (`args` as `AgentRelease::install_args`), one `--set`
/// per line, the chart as a path relative to the repository.
fn show_helm(args: &[String]) {
    let mut line = String::from("helm");
    let mut args = args.iter().peekable();
    while let Some(arg) = args.next() {
        let arg = if arg.ends_with("charts/secrets-store-rs") {
            shown_path(Path::new(arg))
        } else {
            arg.clone()
        };
        if arg.starts_with("--set") {
            line.push_str(" \\\n    ");
        } else {
            line.push(' ');
        }
        line.push_str(&quote(&arg));
        if arg.starts_with("--") && args.peek().is_some_and(|v| !v.starts_with("--")) {
            line.push(' ');
            line.push_str(&quote(args.next().expect("peeked")));
        }
    }
    show(&line);
}

/// Compares the host with what it was before the node started, and says so.
fn report_host(before: &HostSnapshot, after: &HostSnapshot) -> Result<()> {
    if before != after {
        bail!(
            "the host differs from before the node started:\nbefore: {before:#?}\nafter: {after:#?}"
        );
    }
    println!(
        "host left as found: {} sysctls, {} network links, {} iptables tables, {} host paths, {} mounts, \
         kubepods cgroups ({}) and node processes ({}) as before the node started",
        before.sysctls.len(),
        before.links.len(),
        before.iptables.len(),
        before.paths.len(),
        before.mounts.len(),
        before.kubepods_cgroups.len(),
        before.node_processes.len(),
    );
    Ok(())
}
