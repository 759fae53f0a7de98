//! `make demo`: the walk-through "Sync AWS Secrets Manager to Kubernetes Secrets"
//! (`examples/seed/`) end to end on a real node on this machine, then everything torn down.
//!
//! The node is testenv's `RealNode`: kubelet v1.35, containerd and runc with a CNI bridge,
//! registered with a local control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler). Our chart is installed with the real `helm`, the agent runs from its own
//! image as the chart's DaemonSet pod and registers with kubelet, the seed's manifests go in
//! with the real `kubectl`, and kubelet mounts the pods' volumes through the agent. AWS is moto.
//!
//! Every `$ ` line printed is a command that ran, followed by its real output. Lines starting
//! with `# aws`/`# eksctl` are the walk-through's AWS commands, done here with the AWS SDK
//! against moto. The demo prints the demo secret's value, as the walk-through does; the agent
//! never logs it.
//!
//! Needs root (kubelet, containerd, tmpfs mounts) and the tools `make demo` builds first. A
//! failure, a panic or Ctrl-C tears the node down and restores the host all the same.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use secrets_store_testenv::real_node::{
    AgentChart, AgentRelease, HostSnapshot, RealNode, RealNodeConfig, mounts_under,
};
use secrets_store_testenv::{AccountId, Cluster, seed};

const STEPS: u32 = 11;
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
         built (make demo builds them first: ~13 min on 2 cores the first time) this takes about 30-40 s.\n\
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
    let demo = Demo {
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

struct Demo<'a> {
    cluster: &'static Cluster,
    node: &'a RealNode,
}

/// One row of `kubectl get pods`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodRow {
    name: String,
    ready: String,
    status: String,
}

impl Demo<'_> {
    /// Runs kubectl; fails on a non-zero exit. Returns stdout and stderr.
    async fn run_kubectl(&self, args: &[&str]) -> Result<(String, String)> {
        let out = self.node.kubectl(args).await.context("running kubectl")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(
            out.status.success(),
            "kubectl {}: {stdout}{stderr}",
            args.join(" ")
        );
        Ok((stdout, stderr))
    }

    /// Runs kubectl without printing anything; fails on a non-zero exit. Returns stdout.
    async fn kubectl_quiet(&self, args: &[&str]) -> Result<String> {
        Ok(self.run_kubectl(args).await?.0)
    }

    /// Prints `$ kubectl <shown>`, runs kubectl with `args` and prints its output (stderr too,
    /// where kubectl says "No resources found"). Returns stdout.
    async fn kubectl_as(&self, shown: &str, args: &[&str]) -> Result<String> {
        show(&format!("kubectl {shown}"));
        let (stdout, stderr) = self.run_kubectl(args).await?;
        echo(&stdout);
        echo(&stderr);
        Ok(stdout)
    }

    /// Prints `$ kubectl <args>`, runs it and prints its output.
    async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let shown: Vec<Cow<'_, str>> = args.iter().map(|a| quote(a)).collect();
        self.kubectl_as(&shown.join(" "), args).await
    }

    /// `kubectl exec <pod> -- cat <secret file>`, printed.
    async fn cat_secret_file(&self, pod: &str) -> Result<String> {
        self.kubectl(&["exec", pod, "--", "cat", SECRET_FILE]).await
    }

    /// `kubectl exec <pod> -- env | grep SECRET_API_KEY` (the grep done here), printed.
    async fn env_secret(&self, pod: &str) -> Result<String> {
        show(&format!("kubectl exec {pod} -- env | grep SECRET_API_KEY"));
        let env = self.kubectl_quiet(&["exec", pod, "--", "env"]).await?;
        let line = env
            .lines()
            .find(|l| l.starts_with("SECRET_API_KEY="))
            .with_context(|| format!("no SECRET_API_KEY in the environment of {pod}"))?
            .to_string();
        println!("{line}");
        Ok(line)
    }

    /// `foosecret`'s `SECRET_API_KEY`, decoded, through kubectl's go-template.
    async fn synced_value(&self, print: bool) -> Result<String> {
        let template = "{{.data.SECRET_API_KEY | base64decode}}";
        let args = [
            "get",
            "secret",
            "foosecret",
            "-o",
            &format!("go-template={template}"),
        ];
        if print {
            self.kubectl(&args).await
        } else {
            self.kubectl_quiet(&args).await
        }
    }

    /// `kubectl get pods <args>`: what it printed, and its rows.
    async fn pod_rows(&self, args: &[&str]) -> Result<(String, Vec<PodRow>)> {
        let mut full = vec!["get", "pods"];
        full.extend_from_slice(args);
        let out = self.node.kubectl(&full).await?;
        ensure!(
            out.status.success(),
            "kubectl get pods: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let rows = stdout
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some(PodRow {
                    name: f.next()?.to_string(),
                    ready: f.next()?.to_string(),
                    status: f.next()?.to_string(),
                })
            })
            .collect();
        let shown = if stdout.is_empty() {
            String::from_utf8_lossy(&out.stderr).into_owned()
        } else {
            stdout
        };
        Ok((shown, rows))
    }

    /// `kubectl get pods <args>`, printed each time a pod's READY or STATUS changes, until
    /// exactly `n` pods are listed, all `1/1 Running` and none of them in `old`. Returns their
    /// names.
    async fn wait_for_pods(
        &self,
        args: &[&str],
        n: usize,
        old: &BTreeSet<String>,
    ) -> Result<Vec<String>> {
        show(
            &["kubectl", "get", "pods"]
                .iter()
                .chain(args)
                .copied()
                .collect::<Vec<_>>()
                .join(" "),
        );
        note("run every second; shown again whenever a pod's READY or STATUS changes");
        let deadline = Instant::now() + WAIT;
        let mut last: Option<Vec<PodRow>> = None;
        loop {
            let (shown, rows) = self.pod_rows(args).await?;
            if last.as_ref() != Some(&rows) {
                echo(&shown);
                last = Some(rows.clone());
            }
            let done = rows.len() == n
                && rows
                    .iter()
                    .all(|r| r.ready == "1/1" && r.status == "Running" && !old.contains(&r.name));
            if done {
                return Ok(rows.into_iter().map(|r| r.name).collect());
            }
            if Instant::now() > deadline {
                bail!("timed out after {WAIT:?} waiting for {n} new Running pods");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Polls `check` every 500 ms until it returns `Some`, for at most [`WAIT`].
    async fn wait<T, F, Fut>(&self, what: &str, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = check().await {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("timed out after {WAIT:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until every pod's file and `foosecret` hold `value`.
    async fn wait_for_value(&self, pods: &[String], value: &str) -> Result<()> {
        for pod in pods {
            self.wait(
                &format!("{SECRET_FILE} in {pod} to hold the new value"),
                || async {
                    let got = self
                        .kubectl_quiet(&["exec", pod, "--", "cat", SECRET_FILE])
                        .await
                        .ok()?;
                    (got == value).then_some(())
                },
            )
            .await?;
        }
        self.wait("foosecret to hold the new value", || async {
            (self.synced_value(false).await.ok()? == value).then_some(())
        })
        .await
    }

    /// The agent's whole log (`kubectl logs`), or why it could not be read.
    async fn agent_log(&self, agent: &AgentRelease) -> String {
        let pod = match agent.pod(self.node).await {
            Ok(Some(pod)) => pod.metadata.name.unwrap_or_default(),
            Ok(None) => return "(no agent pod on the node)".into(),
            Err(e) => return format!("(listing the agent pod: {e})"),
        };
        self.kubectl_quiet(&["logs", "--namespace", agent.namespace(), &pod])
            .await
            .unwrap_or_else(|e| format!("(kubectl logs: {e:#})"))
    }

    /// The uids of the default namespace's pods.
    async fn pod_uids(&self) -> Result<Vec<String>> {
        let pods: Api<Pod> = Api::namespaced(self.cluster.client(), "default");
        Ok(pods
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|p| p.metadata.uid)
            .collect())
    }

    /// Mount points under the kubelet dirs of the pods with `uids` (their CSI and token volumes).
    fn pod_mounts(&self, uids: &[String]) -> Vec<PathBuf> {
        uids.iter()
            .flat_map(|uid| mounts_under(&self.node.kubelet_dir().join("pods").join(uid)))
            .collect()
    }

    async fn walkthrough(&self, steps: &mut Steps) -> Result<()> {
        let node = self.node;
        show(&format!("kubectl get node {} -o wide", node.name()));
        echo(
            &self
                .kubectl_quiet(&["get", "node", node.name(), "-o", "wide"])
                .await?,
        );

        steps.start(
            "helm install secrets-store charts/secrets-store-rs: one chart instead of the walk-through's two",
        );
        let agent = node
            .install_agent(&AgentChart {
                rotation_poll_interval: ROTATION_POLL.into(),
                rotation_self_refresh: true,
                aws_endpoint: self.cluster.moto().endpoint(),
                extra_values: Vec::new(),
            })
            .await
            .context("helm install of charts/secrets-store-rs on the node")?;
        show_helm_install(&agent);
        echo(agent.install_output());
        let result = self.with_agent(steps, &agent).await;
        if result.is_err() {
            eprintln!(
                "\n----- the agent's log (kubectl logs; its INFO, WARN and ERROR lines and its own DEBUG lines) -----"
            );
            eprintln!("{}", agent_log_tail(&self.agent_log(&agent).await, 100));
            return result;
        }

        steps.start("helm uninstall: the DaemonSet pod goes, kubelet unregisters the driver");
        let namespace = agent.namespace().to_string();
        show(&format!(
            "helm uninstall secrets-store --namespace {namespace} --wait --timeout 120s"
        ));
        echo(&agent.uninstall(node).context("helm uninstall")?);
        self.wait_for_pods(&["--namespace", &namespace], 0, &BTreeSet::new())
            .await?;
        self.wait("kubelet to unregister the driver", || async {
            let drivers = self
                .kubectl_quiet(&[
                    "get",
                    "csinode",
                    node.name(),
                    "-o",
                    "jsonpath={.spec.drivers}",
                ])
                .await
                .ok()?;
            (!drivers.contains("secrets-store.csi.k8s.io")).then_some(())
        })
        .await?;
        self.kubectl(&["get", "csinode", node.name()]).await?;
        Ok(())
    }

    async fn with_agent(&self, steps: &mut Steps, agent: &AgentRelease) -> Result<()> {
        let node = self.node;
        note("the DaemonSet's pod runs on the node; kubelet registered the driver through it:");
        self.kubectl(&["get", "pods", "-A", "-o", "wide"]).await?;
        let csinode = self
            .kubectl(&["get", "csinode", node.name(), "-o", "yaml"])
            .await?;
        ensure!(
            csinode.contains("name: secrets-store.csi.k8s.io"),
            "the driver is not on CSINode {}",
            node.name()
        );
        let (_, restarts) = agent
            .container(node)
            .await?
            .context("the agent container is not running")?;
        ensure!(
            restarts == 0,
            "the agent container restarted {restarts} times"
        );

        steps.start("AWS: the secret CSI-driver-test-secret = secretkey, the IAM policy and role");
        let account = self.cluster.moto().new_account();
        note(&format!(
            "aws --region {} secretsmanager create-secret --name {} --secret-string secretkey",
            seed::REGION,
            seed::SECRET
        ));
        note(&format!(
            "aws --region {} iam create-policy --policy-name {} --policy-document file://examples/seed/policy.json",
            seed::REGION,
            seed::POLICY
        ));
        note(&format!(
            "eksctl create iamserviceaccount --name nginx-deployment-sa --attach-policy-arn <policy ARN> ...  (here: the role {}, the ServiceAccount comes next)",
            seed::ROLE
        ));
        let role_arn = seed::seed_aws(self.cluster, &account, "secretkey").await;
        self.show_aws(&account, &role_arn).await?;

        steps.start("kubectl apply -f examples/seed/: the ServiceAccount, SecretProviderClass and Deployment, verbatim");
        let sa = node.node_dir().join("serviceaccount.yaml");
        std::fs::write(
            &sa,
            seed::file("serviceaccount.yaml").replace("ROLE_ARN", &role_arn),
        )
        .with_context(|| format!("writing {}", sa.display()))?;
        note(&format!(
            "examples/seed/serviceaccount.yaml with ROLE_ARN = {role_arn}:"
        ));
        self.kubectl(&["apply", "-f", &sa.display().to_string()])
            .await?;
        show("kubectl get sa -n default nginx-deployment-sa -o yaml | grep role-arn");
        let yaml = self
            .kubectl_quiet(&[
                "get",
                "sa",
                "-n",
                "default",
                "nginx-deployment-sa",
                "-o",
                "yaml",
            ])
            .await?;
        for line in yaml.lines().filter(|l| l.contains("role-arn")) {
            println!("{line}");
        }
        for file in ["secretproviderclass.yaml", "test-nginx.yaml"] {
            let path = seed::dir().join(file);
            self.kubectl_as(
                &format!("apply -f {}", shown_path(&path)),
                &["apply", "-f", &path.display().to_string()],
            )
            .await?;
        }

        steps.start(
            "3 pods Running: the file in each, SECRET_API_KEY in each container's env, foosecret",
        );
        let pods = self.wait_for_pods(&[], 3, &BTreeSet::new()).await?;
        for pod in &pods {
            let file = self.cat_secret_file(pod).await?;
            ensure!(file == "secretkey", "{pod}: the file holds something else");
            let env = self.env_secret(pod).await?;
            ensure!(
                env == "SECRET_API_KEY=secretkey",
                "{pod}: wrong SECRET_API_KEY"
            );
        }
        self.kubectl(&["get", "secret", "foosecret"]).await?;
        self.kubectl(&[
            "get",
            "secret",
            "foosecret",
            "-o",
            "custom-columns=NAME:.metadata.name,LABELS:.metadata.labels,OWNER:.metadata.ownerReferences[*].kind,OWNER-NAME:.metadata.ownerReferences[*].name",
        ])
        .await?;
        let errors = self
            .kubectl_quiet(&[
                "get",
                "events",
                "--field-selector=reason=Failed",
                "-o",
                "name",
            ])
            .await?;
        ensure!(
            errors.trim().is_empty(),
            "kubelet reported failed containers: {errors}"
        );
        note(
            "foosecret existed before any container needed it (no Failed event, no CreateContainerConfigError); \
             owned by the pods' ReplicaSet, it goes with the Deployment, not with its last pod",
        );

        steps.start("Rotation: PutSecretValue in AWS; the file and foosecret follow on the rotation poll interval");
        note(&format!(
            "aws --region {} secretsmanager put-secret-value --secret-id {} --secret-string rotated-value",
            seed::REGION,
            seed::SECRET
        ));
        let rotated = Instant::now();
        seed::rotate(self.cluster, &account, "rotated-value").await;
        self.wait_for_value(&pods, "rotated-value").await?;
        note(&format!(
            "all 3 files and foosecret changed {:.1} s after PutSecretValue (rotationPollInterval {ROTATION_POLL}, kubelet republish every {} s)",
            rotated.elapsed().as_secs_f64(),
            KUBELET_SYNC.as_secs()
        ));
        for pod in &pods {
            self.cat_secret_file(pod).await?;
        }
        self.synced_value(true).await?;
        note("env vars never change in a running container:");
        self.env_secret(&pods[0]).await?;

        steps.start(
            "Rollout on change: the Deployment opts in; the next rotation rolls its pods once",
        );
        self.kubectl(&[
            "annotate",
            "deployment",
            seed::DEPLOYMENT,
            &format!("{ROLLOUT_ANNOTATION}=true"),
        ])
        .await?;
        note(&format!(
            "aws --region {} secretsmanager put-secret-value --secret-id {} --secret-string rotated-again",
            seed::REGION,
            seed::SECRET
        ));
        seed::rotate(self.cluster, &account, "rotated-again").await;
        let old: BTreeSet<String> = pods.iter().cloned().collect();
        let pods = self.wait_for_pods(&[], 3, &old).await?;
        for pod in &pods {
            let env = self.env_secret(pod).await?;
            ensure!(
                env == "SECRET_API_KEY=rotated-again",
                "{pod}: the rolled pod has a stale SECRET_API_KEY"
            );
        }
        self.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "reason=SecretChangedRollout",
        ])
        .await?;

        steps.start(
            "kubectl delete deployment: pods gone, volumes unmounted, foosecret garbage-collected",
        );
        let uids = self.pod_uids().await?;
        let mounted = self.pod_mounts(&uids);
        ensure!(
            !mounted.is_empty(),
            "no volume of the seed pods is mounted under {}",
            node.kubelet_dir().display()
        );
        note(&format!(
            "the pods' volumes mounted under kubelet's root dir {} now:",
            node.kubelet_dir().display()
        ));
        for m in &mounted {
            println!(
                "{}",
                m.strip_prefix(node.kubelet_dir()).unwrap_or(m).display()
            );
        }
        self.kubectl(&["delete", "deployment", seed::DEPLOYMENT])
            .await?;
        self.wait_for_pods(&[], 0, &BTreeSet::new()).await?;
        self.wait("the pods' volumes to be unmounted", || async {
            self.pod_mounts(&uids).is_empty().then_some(())
        })
        .await?;
        note(&format!(
            "mounts under the pods' kubelet dirs: {}",
            self.pod_mounts(&uids).len()
        ));
        self.wait("foosecret to be garbage-collected", || async {
            let out = self
                .node
                .kubectl(&["get", "secret", "foosecret"])
                .await
                .ok()?;
            (!out.status.success()).then_some(())
        })
        .await?;
        show("kubectl get secret foosecret");
        let out = node.kubectl(&["get", "secret", "foosecret"]).await?;
        echo(&String::from_utf8_lossy(&out.stderr));
        ensure!(!out.status.success(), "foosecret still exists");
        Ok(())
    }

    /// The AWS side as moto has it: the secret's ARN, the policy attached to the role.
    async fn show_aws(&self, account: &AccountId, role_arn: &str) -> Result<()> {
        let moto = self.cluster.moto();
        let secret = moto
            .sm_client(account)
            .describe_secret()
            .secret_id(seed::SECRET)
            .send()
            .await
            .context("DescribeSecret")?;
        let attached = moto
            .iam_client(account)
            .list_attached_role_policies()
            .role_name(seed::ROLE)
            .send()
            .await
            .context("ListAttachedRolePolicies")?;
        let policies: Vec<&str> = attached
            .attached_policies()
            .iter()
            .filter_map(|p| p.policy_arn())
            .collect();
        println!("secret  {}", secret.arn().unwrap_or_default());
        println!(
            "policy  {}  (secretsmanager:GetSecretValue, DescribeSecret on that ARN)",
            policies.join(", ")
        );
        println!("role    {role_arn}  (trusts the cluster's ServiceAccount tokens, IRSA)");
        Ok(())
    }
}

/// The last `lines` lines of the agent's log without the DEBUG/TRACE lines of its dependencies
/// (the chart maps `logVerbosity` >= 1 to `RUST_LOG=debug` for every crate: h2, hpack, hyper).
fn agent_log_tail(log: &str, lines: usize) -> String {
    let plain = |line: &str| {
        let mut out = String::with_capacity(line.len());
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                // Skip a CSI sequence: ESC [ ... final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) && c != '[' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    let kept: Vec<String> = log
        .lines()
        .map(plain)
        .filter(|l| {
            !(l.contains(" DEBUG ") || l.contains(" TRACE ")) || l.contains("secrets_store")
        })
        .collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

/// Prints the `helm install` that ran, one `--set` per line.
fn show_helm_install(agent: &AgentRelease) {
    let mut line = String::from("helm");
    let mut args = agent.install_args().iter().peekable();
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
    note(
        "beyond syncSecret.enabled (the walk-through's values.yaml), the values are what this node needs: \
         the image imported without a registry, kubelet's root dir under the run dir, host networking \
         (no kube-proxy here) with the API server and moto on 127.0.0.1, free ports, rotation every 5 s",
    );
    show(&line);
}
