//! ASCP, the upstream AWS provider (`aws/secrets-store-csi-driver-provider-aws` 3.1.1, built
//! unmodified by `bash hack/tools.sh ascp`), run as its chart runs it: a test and benchmark peer
//! only, nothing of it is part of the product.
//!
//! ASCP cannot be pointed at moto and the test apiserver by flags: it reads the API server only
//! through in-cluster config, and its IRSA STS client always dials
//! `https://sts.<region>.amazonaws.com`. So it runs, unmodified, in a mount namespace of its own
//! (`unshare --mount --propagation slave`) in which
//! - `/etc/hosts` is a bind-mounted file mapping `sts.us-east-1.amazonaws.com` to a loopback
//!   address where an STS relay ([`relay`]) listens on port 443 with a certificate from a
//!   throwaway CA that ASCP trusts through `SSL_CERT_FILE`; the relay hands the requests to the
//!   caller's AWS endpoint (moto's counting proxy), so STS calls are counted with the others;
//! - `/var/run/secrets/kubernetes.io/serviceaccount` holds `token`, `ca.crt` and `namespace` of a
//!   ServiceAccount bound to the ClusterRole of ASCP's chart (get serviceaccounts, pods, nodes);
//!   the directory lives on a tmpfs over `/run` of that namespace only, whose other entries
//!   link back to the host's `/run`;
//! - the kubelet dir is seen with `HostToContainer` propagation, as the chart mounts it:
//!   [`Ascp::start`] bind-mounts it onto itself as a *shared* mount in the host namespace,
//!   which the namespace receives as a slave. ASCP writes the files itself into the tmpfs the
//!   driver mounted after ASCP started. (With `private` propagation it would write into the
//!   directory under the tmpfs, and unpublish then fails with "directory not empty".)
//!
//! Its environment is `KUBERNETES_SERVICE_HOST`/`PORT` of the test apiserver,
//! `AWS_ENDPOINT_URL` (its Secrets Manager and SSM clients honour it), `SSL_CERT_FILE`, and
//! nothing inherited from the test (no `AWS_REGION`, proxies or `~/.aws`). Its flags are its
//! chart's: `--provider-volume=<dir>`, `--qps=5`, `--burst=10` ([`AscpOptions`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), secrets_store_testenv::Error> {
//! use secrets_store_testenv::Cluster;
//! use secrets_store_testenv::ascp::{Ascp, AscpOptions};
//! let cluster = Cluster::shared();
//! let aws = cluster.moto().new_call_counter().await?;
//! // Under the run dir, so that a killed run's mounts are removed by the next run.
//! let node = tempfile::tempdir_in(cluster.run_dir()).unwrap();
//! let (kubelet_dir, providers) = (node.path().join("kubelet"), node.path().join("providers"));
//! std::fs::create_dir_all(&kubelet_dir).unwrap();
//! std::fs::create_dir_all(&providers).unwrap();
//! let ascp = Ascp::start(cluster, &providers, &kubelet_dir, aws.endpoint(), &AscpOptions::default()).await?;
//! // A driver with `--provider-volume <providers>` now finds ASCP at `ascp.socket()`.
//! # Ok(()) }
//! ```
//!
//! The process is spawned through [`Cluster::spawn`] (it dies with the test binary, and its
//! namespace's mounts with it) and stops when the handle is dropped, which also removes the
//! shared bind mount and stops the relay.

mod relay;

use std::collections::BTreeMap;
use std::io::{BufRead, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::moto::REGION;
use crate::{Cluster, Error, Proc, tools};

/// The tool name of the ASCP binary in the tools bin dir.
pub const ASCP_TOOL: &str = "secrets-store-csi-driver-provider-aws";
/// The ServiceAccount ASCP's chart creates (one per [`Ascp`], each in a namespace of its own).
pub const SERVICE_ACCOUNT: &str = "csi-secrets-store-provider-aws";
/// The ClusterRole of ASCP's chart.
pub const CLUSTER_ROLE: &str = "csi-secrets-store-provider-aws-cluster-role";
/// How ASCP's Kubernetes requests start their `User-Agent` (client-go's default: the binary
/// name), to tell them apart in the audit log.
pub const USER_AGENT_PREFIX: &str = "secrets-store-csi-driver-provider-aws/";
/// The STS host ASCP's IRSA client dials (the Node's region label is [`REGION`]).
pub fn sts_host() -> String {
    format!("sts.{REGION}.amazonaws.com")
}

/// How long ASCP may take to open its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(60);
/// The ServiceAccount token ASCP reads (client-go re-reads the file; it never expires in a test).
const TOKEN_SECONDS: i64 = 24 * 3600;

/// The namespace set-up before ASCP starts: `$1` hosts file, `$2` ServiceAccount dir, `$3` an
/// empty dir that keeps the host's `/run` reachable, then ASCP's argv. `/run/secrets` must not
/// be created on the host, so a tmpfs covers `/run` in this namespace only and every entry of
/// the host's `/run` is linked back into it.
const NAMESPACE_SETUP: &str = r#"set -eu
mount --bind "$1" /etc/hosts
run=$(readlink -f /var/run)
mount --rbind "$run" "$3"
mount -t tmpfs -o mode=0755,size=1m testenv-ascp-run "$run"
for entry in "$3"/* "$3"/.[!.]* "$3"/..?*; do
  if [ -e "$entry" ] || [ -L "$entry" ]; then
    name=${entry##*/}
    [ "$name" = secrets ] || ln -s "$entry" "$run/$name"
  fi
done
mkdir -p "$run/secrets/kubernetes.io/serviceaccount"
mount --bind "$2" "$run/secrets/kubernetes.io/serviceaccount"
shift 3
exec "$@"
"#;

/// ASCP's settings that tests and benchmarks vary; everything else is its chart's.
#[derive(Debug, Clone)]
pub struct AscpOptions {
    /// `--qps`: its client-side limit on Kubernetes requests per second (chart default 5).
    pub qps: u32,
    /// `--burst` (chart default 10).
    pub burst: u32,
}

impl Default for AscpOptions {
    /// The chart's defaults.
    fn default() -> Self {
        Self { qps: 5, burst: 10 }
    }
}

impl AscpOptions {
    /// The chart's `k8sThrottlingParams` set so high that its client-side limiter never waits.
    pub fn limiter_lifted() -> Self {
        Self {
            qps: 100_000,
            burst: 100_000,
        }
    }
}

/// A running ASCP serving upstream's provider API on `<provider dir>/aws.sock`.
#[derive(Debug)]
pub struct Ascp {
    // Dropped in declaration order: the process (and with it its namespace) first, then the
    // relay, then the host's shared bind mount, then the files.
    proc: Proc,
    relay: relay::StsRelay,
    _shared: SharedMount,
    socket: PathBuf,
    namespace: String,
    launch: Launch,
    dir: tempfile::TempDir,
}

/// How ASCP's process is launched; kept so that [`Ascp::restart`] launches it the same way.
#[derive(Debug)]
struct Launch {
    binary: PathBuf,
    provider_dir: PathBuf,
    aws_endpoint: String,
    opts: AscpOptions,
    server_host: String,
    server_port: u16,
}

impl Launch {
    /// Spawns ASCP in a mount namespace of its own set up by [`NAMESPACE_SETUP`] from the files
    /// in `dir` (`hosts`, `serviceaccount/`, `host-run/`, `sts-ca.pem`), and waits for its
    /// socket.
    fn spawn(&self, cluster: &Cluster, dir: &Path) -> Result<Proc, Error> {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "slave", "--"])
            .args(["sh", "-c", NAMESPACE_SETUP, "testenv-ascp-setup"])
            .arg(dir.join("hosts"))
            .arg(dir.join("serviceaccount"))
            .arg(dir.join("host-run"))
            .arg(&self.binary)
            .arg(format!("--provider-volume={}", self.provider_dir.display()))
            .arg(format!("--qps={}", self.opts.qps))
            .arg(format!("--burst={}", self.opts.burst))
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env("HOME", dir)
            .env("KUBERNETES_SERVICE_HOST", &self.server_host)
            .env("KUBERNETES_SERVICE_PORT", self.server_port.to_string())
            .env("AWS_ENDPOINT_URL", &self.aws_endpoint)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("SSL_CERT_FILE", dir.join("sts-ca.pem"));
        let proc = cluster.spawn(&process_name(), cmd)?;
        proc.wait_for_socket(&self.provider_dir.join("aws.sock"), SOCKET_TIMEOUT)?;
        Ok(proc)
    }
}

impl Ascp {
    /// Starts ASCP as its chart would on this node: its socket in `provider_dir`, pods' volumes
    /// under `kubelet_dir/pods`, AWS at `aws_endpoint` (moto or a counting proxy in front of it,
    /// `http://127.0.0.1:PORT`; STS too, through the relay). Creates its ServiceAccount,
    /// ClusterRole and binding, and waits until its socket accepts connections.
    ///
    /// `kubelet_dir` must lie under [`Cluster::run_dir`]: it becomes a shared bind mount, which
    /// the next run removes if this one is killed. Needs root (mounts, port 443). Call it on a
    /// Tokio runtime (for the API calls); nothing keeps running on that runtime afterwards.
    pub async fn start(
        cluster: &Cluster,
        provider_dir: &Path,
        kubelet_dir: &Path,
        aws_endpoint: &str,
        opts: &AscpOptions,
    ) -> Result<Self, Error> {
        let binary = tools::find_tool(ASCP_TOOL).ok_or_else(|| {
            spawn_error(&format!(
                "{ASCP_TOOL} not found in {}: run `bash hack/tools.sh ascp`",
                tools::tools_bin_dir().display()
            ))
        })?;
        if !nix::unistd::geteuid().is_root() {
            return Err(spawn_error("ASCP needs root (mount namespace, port 443)"));
        }
        let run_dir = canonical(cluster.run_dir())?;
        let kubelet_dir = canonical(kubelet_dir)?;
        if !kubelet_dir.starts_with(&run_dir) {
            return Err(spawn_error(&format!(
                "the kubelet dir {} must be under the run dir {} (it becomes a shared mount that \
                 only the run dir's clean-up removes after a crash)",
                kubelet_dir.display(),
                run_dir.display()
            )));
        }
        if canonical(Path::new("/var/run")).is_ok_and(|r| run_dir.starts_with(r)) {
            return Err(spawn_error(
                "the run dir must not be under /run: ASCP's namespace covers /run",
            ));
        }
        let upstream = loopback_addr(aws_endpoint)?;
        let dir = tempfile::Builder::new()
            .prefix("ascp-")
            .tempdir_in(&run_dir)
            .map_err(|e| Error::io(&run_dir, e))?;

        let namespace = create_identity(cluster, &dir.path().join("serviceaccount")).await?;
        let ca_file = dir.path().join("sts-ca.pem");
        let relay = relay::StsRelay::start(&sts_host(), upstream, &ca_file)?;
        let hosts = dir.path().join("hosts");
        write(
            &hosts,
            &format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
                relay.addr().ip(),
                sts_host()
            ),
        )?;
        let host_run = dir.path().join("host-run");
        std::fs::create_dir(&host_run).map_err(|e| Error::io(&host_run, e))?;
        let shared = SharedMount::new(&kubelet_dir)?;

        let server = cluster
            .server_url()
            .parse::<http::Uri>()
            .map_err(|e| Error::Kubeconfig(format!("apiserver URL: {e}")))?;
        let launch = Launch {
            binary,
            provider_dir: provider_dir.to_path_buf(),
            aws_endpoint: aws_endpoint.to_string(),
            opts: opts.clone(),
            server_host: server.host().unwrap_or("127.0.0.1").to_string(),
            server_port: server.port_u16().unwrap_or(443),
        };
        let proc = launch.spawn(cluster, dir.path())?;
        Ok(Self {
            proc,
            relay,
            _shared: shared,
            socket: provider_dir.join("aws.sock"),
            namespace,
            launch,
            dir,
        })
    }

    /// Kills ASCP and starts it again in a new namespace set up the same way (same socket,
    /// identity, STS relay and kubelet dir: what a restarted ASCP pod sees on its node), and
    /// waits for its socket. The volumes it filled stay mounted.
    pub fn restart(&mut self, cluster: &Cluster) -> Result<(), Error> {
        self.proc.stop();
        // A dead server's socket file would satisfy the wait at once.
        let _ = std::fs::remove_file(&self.socket);
        self.proc = self.launch.spawn(cluster, self.dir.path())?;
        Ok(())
    }

    /// The provider socket (`<provider dir>/aws.sock`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// ASCP's process id (`unshare` and the set-up shell exec into it).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// ASCP's log file (klog on stderr, the set-up's errors before it).
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// Fails with the log tail if ASCP has exited.
    pub fn check_running(&self) -> Result<(), Error> {
        self.proc.check_running()
    }

    /// The namespace of ASCP's ServiceAccount.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes user ASCP acts as: `system:serviceaccount:<namespace>:<name>`.
    pub fn user(&self) -> String {
        format!("system:serviceaccount:{}:{SERVICE_ACCOUNT}", self.namespace)
    }

    /// The loopback address where the STS relay listens (port 443).
    pub fn sts_relay_addr(&self) -> std::net::SocketAddr {
        self.relay.addr()
    }

    /// ASCP's Kubernetes requests from the audit log after byte `offset` (see
    /// [`audit_log_len`]), per `"VERB resource[/subresource]"` (e.g. `"get pods"`).
    pub fn kube_requests(
        &self,
        cluster: &Cluster,
        offset: u64,
    ) -> Result<BTreeMap<String, u64>, Error> {
        let user = self.user();
        let path = cluster.audit_log();
        let mut file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io(&path, e))?;
        let mut counts = BTreeMap::new();
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(|e| Error::io(&path, e))?;
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue; // a line still being written
            };
            if event["user"]["username"].as_str() != Some(user.as_str())
                || event["stage"].as_str() != Some("ResponseComplete")
            {
                continue;
            }
            let object = &event["objectRef"];
            let mut key = format!(
                "{} {}",
                event["verb"].as_str().unwrap_or("?"),
                object["resource"].as_str().unwrap_or("-")
            );
            if let Some(sub) = object["subresource"].as_str() {
                key = format!("{key}/{sub}");
            }
            *counts.entry(key).or_insert(0) += 1;
        }
        Ok(counts)
    }
}

/// The apiserver audit log's current length: where the requests of a span start.
pub fn audit_log_len(cluster: &Cluster) -> u64 {
    std::fs::metadata(cluster.audit_log())
        .map(|m| m.len())
        .unwrap_or(0)
}

/// A bind mount of a directory onto itself, made shared, so that mounts made below it later
/// propagate into ASCP's namespace; unmounted on drop.
#[derive(Debug)]
struct SharedMount {
    path: PathBuf,
}

impl SharedMount {
    fn new(path: &Path) -> Result<Self, Error> {
        let err = |e: nix::Error| Error::io(path, std::io::Error::from(e));
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(err)?;
        let bound = Self {
            path: path.to_path_buf(),
        };
        mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(err)?;
        Ok(bound)
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        if umount2(&self.path, MntFlags::empty()).is_err() {
            let _ = umount2(&self.path, MntFlags::MNT_DETACH);
        }
    }
}

/// Creates a namespace with ASCP's ServiceAccount, binds it to the chart's ClusterRole, and
/// writes the in-cluster files (`token`, `ca.crt`, `namespace`) to `dir`. Returns the namespace.
async fn create_identity(cluster: &Cluster, dir: &Path) -> Result<String, Error> {
    let client = cluster.client();
    let ns = Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    generate_name: Some("ascp-system-".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    let namespace = ns.metadata.name.unwrap_or_default();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(SERVICE_ACCOUNT.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    sas.create(&PostParams::default(), &sa).await?;

    // The rules of the chart's rbac.yaml (no `awsRegion`: pods and nodes for the region lookup).
    let get = |resource: &str| PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![resource.into()]),
        verbs: vec!["get".into()],
        ..Default::default()
    };
    let role = ClusterRole {
        metadata: ObjectMeta {
            name: Some(CLUSTER_ROLE.into()),
            ..Default::default()
        },
        rules: Some(vec![get("serviceaccounts"), get("pods"), get("nodes")]),
        ..Default::default()
    };
    let apply = PatchParams::apply("secrets-store-testenv").force();
    Api::<ClusterRole>::all(client.clone())
        .patch(CLUSTER_ROLE, &apply, &Patch::Apply(&role))
        .await?;
    let binding_name = format!("{CLUSTER_ROLE}-binding-{namespace}");
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(binding_name.clone()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: CLUSTER_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: SERVICE_ACCOUNT.into(),
            namespace: Some(namespace.clone()),
            ..Default::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(&binding_name, &apply, &Patch::Apply(&binding))
        .await?;

    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(TOKEN_SECONDS),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let token = sas
        .create_token_request(SERVICE_ACCOUNT, &PostParams::default(), &request)
        .await?
        .status
        .ok_or_else(|| Error::Http("TokenRequest returned no status".into()))?
        .token;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write(&dir.join("token"), &token)?;
    write(&dir.join("ca.crt"), cluster.ca_pem())?;
    write(&dir.join("namespace"), &namespace)?;
    Ok(namespace)
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|e| Error::io(path, e))
}

fn canonical(path: &Path) -> Result<PathBuf, Error> {
    path.canonicalize().map_err(|e| Error::io(path, e))
}

fn spawn_error(message: &str) -> Error {
    Error::Spawn {
        name: "ascp".into(),
        source: std::io::Error::other(message.to_string()),
    }
}

/// `http://127.0.0.1:PORT[/]` → its socket address (the relay dials it in plain HTTP).
fn loopback_addr(endpoint: &str) -> Result<std::net::SocketAddr, Error> {
    let uri = endpoint
        .parse::<http::Uri>()
        .map_err(|e| Error::Http(format!("AWS endpoint {endpoint:?}: {e}")))?;
    let (Some("http"), Some(host), Some(port)) = (uri.scheme_str(), uri.host(), uri.port_u16())
    else {
        return Err(Error::Http(format!(
            "AWS endpoint {endpoint:?}: expected http://HOST:PORT"
        )));
    };
    format!("{host}:{port}")
        .parse()
        .map_err(|e| Error::Http(format!("AWS endpoint {endpoint:?}: {e}")))
}

/// A log name unique within this test binary: `ascp-<n>`.
fn process_name() -> String {
    static STARTED: AtomicU64 = AtomicU64::new(0);
    format!("ascp-{}", STARTED.fetch_add(1, Ordering::Relaxed))
}
