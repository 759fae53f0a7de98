//! One real Kubernetes control plane per test binary: etcd, kube-apiserver (TLS, RBAC, token
//! issuing), kube-controller-manager, our CRDs, a Node, and moto.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use crate::apiserver::{ApiserverFlags, ApiserverStop, Restartable, apiserver_args};
use crate::moto::Moto;
use crate::process::{Proc, free_port, tail};
use crate::wait::{wait_for, wait_for_while_running};
use crate::{Error, apiserver, certs, tools};

/// Name of the simulated node; its region label is [`crate::moto::REGION`].
pub const NODE_NAME: &str = "testenv-node";
/// The ServiceAccount token issuer (and default API audience) of the test apiserver.
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Work sent to the cluster thread: spawning there ties a child's lifetime to that thread.
type SpawnJob = (String, Command, mpsc::Sender<Result<Proc, Error>>);

/// The shared test cluster. Obtain it with [`Cluster::shared`].
#[derive(Debug)]
pub struct Cluster {
    run_dir: PathBuf,
    log_dir: PathBuf,
    kubeconfig: PathBuf,
    server_url: String,
    ca_pem: String,
    /// The PKI files (a real node's certificates are issued from its CA).
    pki: certs::Pki,
    config: Config,
    moto: Moto,
    apiserver: Restartable,
    /// Restarted with the apiserver (see [`Cluster::start_apiserver`]).
    controller_manager: Restartable,
    /// etcd.
    procs: Vec<Proc>,
    spawner: std::sync::Mutex<mpsc::Sender<SpawnJob>>,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

impl Cluster {
    /// The cluster of this test binary, started on first use (blocking until it is ready).
    ///
    /// Panics with the component log tails when it cannot start (including a missing tool).
    pub fn shared() -> &'static Cluster {
        install_crypto_provider();
        let result = CLUSTER.get_or_init(|| start_on_own_thread().map_err(|e| e.to_string()));
        match result {
            Ok(cluster) => cluster,
            Err(e) => panic!("test cluster failed to start: {e}"),
        }
    }

    /// A fresh client; each `#[tokio::test]` runtime needs its own.
    pub fn client(&self) -> Client {
        Client::try_from(self.config.clone()).expect("building kube client from test kubeconfig")
    }

    /// A kubeconfig file with the admin identity (for kube-controller-manager, helm, kubectl,
    /// upstream Go peers).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The cluster CA certificate (PEM): verifies the apiserver.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The Node that the kubelet simulator plays.
    pub fn node_name(&self) -> &str {
        NODE_NAME
    }

    /// The PKI files of this cluster.
    pub(crate) fn pki(&self) -> &certs::Pki {
        &self.pki
    }

    /// The moto server.
    pub fn moto(&self) -> &Moto {
        &self.moto
    }

    /// The apiserver's audit log (JSON lines, metadata level, one per finished request).
    pub fn audit_log(&self) -> PathBuf {
        self.log_dir.join(crate::apiserver::AUDIT_LOG)
    }

    /// Directory with one log file per component.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Per-run scratch directory (deleted by the next run once this process is gone).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Creates a namespace named `<prefix>-<random>` and waits until its `default`
    /// ServiceAccount exists (pods cannot be created before).
    pub async fn new_namespace(&self, prefix: &str) -> String {
        self.namespace_with_default_account(prefix, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tails(30)))
    }

    /// [`Cluster::new_namespace`] without panicking, waiting up to `timeout` for
    /// kube-controller-manager to create the `default` ServiceAccount.
    async fn namespace_with_default_account(
        &self,
        prefix: &str,
        timeout: Duration,
    ) -> Result<String, Error> {
        let client = self.client();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = namespaces
            .create(&PostParams::default(), &ns)
            .await
            .map_err(|e| Error::Http(format!("creating namespace {prefix}-*: {e}")))?;
        let name = created.metadata.name.unwrap_or_default();
        let sas: Api<ServiceAccount> = Api::namespaced(client, &name);
        let what = format!("ServiceAccount default in namespace {name}");
        wait_for(&what, timeout, || async {
            match sas.get_opt("default").await {
                Ok(Some(_)) => Ok(true),
                Ok(None) => Ok(false),
                Err(e) => Err(e.to_string()),
            }
        })
        .await?;
        Ok(name)
    }

    /// Starts `cmd` as a harness process (log in [`Cluster::log_dir`], killed when the test binary
    /// dies). The spawn happens on the long-lived cluster thread, because the kernel sends the
    /// parent-death signal when the spawning thread exits, and a test's thread exits early.
    /// Drop the returned [`Proc`] to stop it.
    pub fn spawn(&self, name: &str, cmd: Command) -> Result<Proc, Error> {
        let (tx, rx) = mpsc::channel();
        self.spawner
            .lock()
            .expect("spawner lock")
            .send((name.to_string(), cmd, tx))
            .map_err(|_| Error::Http("cluster thread is gone".into()))?;
        rx.recv()
            .map_err(|_| Error::Http("cluster thread is gone".into()))?
    }

    /// The last `lines` lines of every component log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.log_dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        paths.sort();
        for path in paths {
            out.push_str(&format!(
                "----- {} (last {lines} lines) -----\n{}\n",
                path.display(),
                tail(&path, lines)
            ));
        }
        out
    }

    /// A guard that prints the last 50 lines of each component log if the test panics while it
    /// is alive: `let _logs = cluster.dump_logs_on_panic();`.
    pub fn dump_logs_on_panic(&'static self) -> LogGuard {
        LogGuard { cluster: self }
    }

    /// Fails if any control-plane process has exited (or kube-apiserver is stopped).
    pub fn check_running(&self) -> Result<(), Error> {
        self.procs.iter().try_for_each(Proc::check_running)?;
        self.apiserver.check_running()?;
        self.controller_manager.check_running()?;
        self.moto.process().check_running()
    }

    /// Stops kube-apiserver (no-op if it is stopped); etcd, kube-controller-manager and moto keep
    /// running. Every client sees connection errors until [`Cluster::start_apiserver`].
    ///
    /// The cluster is shared by the whole test binary: use this only in a binary of its own, and
    /// keep its tests from overlapping (they would see the outage too).
    pub fn stop_apiserver(&self, how: ApiserverStop) {
        self.apiserver.stop(how);
        eprintln!("testenv: kube-apiserver stopped ({how:?})");
    }

    /// Starts kube-apiserver again with the same binary, port, certificates, flags and etcd (so
    /// kubeconfigs and clients stay valid), tied to the cluster thread like the first run, and
    /// waits until `/readyz` is ok. Then restarts kube-controller-manager, as a control-plane
    /// restart does: left alone, its informers come back on client-go's jittered backoff, which
    /// grows over repeated outages (seen: 25 s, 69 s, then 86 s for three restarts in one
    /// binary), and until then namespaces get no ServiceAccount and Deployments do not roll.
    /// Returns once a fresh namespace gets its ServiceAccount. Fails if the apiserver is running.
    pub async fn start_apiserver(&self) -> Result<(), Error> {
        if self.apiserver.process().is_some() {
            return Err(Error::Http(format!(
                "{} is already running",
                apiserver::NAME
            )));
        }
        let started = Instant::now();
        let proc = self.spawn(apiserver::NAME, self.apiserver.command())?;
        let proc = self.apiserver.set_started(proc)?;
        wait_readyz(&self.client(), &[&proc]).await?;
        self.controller_manager.stop(ApiserverStop::Graceful);
        let kcm = self.spawn(
            self.controller_manager.name(),
            self.controller_manager.command(),
        )?;
        self.controller_manager.set_started(kcm)?;
        let probe = self
            .namespace_with_default_account("testenv-restart-probe", Duration::from_secs(120))
            .await?;
        let _ = Api::<Namespace>::all(self.client())
            .delete(&probe, &Default::default())
            .await;
        eprintln!(
            "testenv: kube-apiserver and kube-controller-manager ready again in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// Selects rustls' process-wide crypto provider. The workspace links both `ring` (kube) and
/// `aws-lc-rs` (AWS SDK), and rustls refuses to guess between them.
pub fn install_crypto_provider() {
    // An error only means another caller installed one first, which is fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Prints component log tails when dropped during a panic. See [`Cluster::dump_logs_on_panic`].
#[derive(Debug)]
pub struct LogGuard {
    cluster: &'static Cluster,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.cluster.log_tails(50));
        }
    }
}

/// Starts the cluster from a dedicated thread that then lives as long as the test binary: it owns
/// the runtime of the moto proxy and is the parent thread of every child process.
fn start_on_own_thread() -> Result<Cluster, Error> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("testenv-cluster".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("testenv-rt")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(Error::io(Path::new("tokio runtime"), e)));
                    return;
                }
            };
            let (spawn_tx, spawn_rx) = mpsc::channel::<SpawnJob>();
            let result = start(&rt, spawn_tx);
            let ok = result.is_ok();
            let _ = tx.send(result);
            if !ok {
                return;
            }
            // Serve spawn requests for the rest of the process; `rt` stays alive with us.
            while let Ok((name, cmd, reply)) = spawn_rx.recv() {
                let log_dir = CLUSTER
                    .get()
                    .and_then(|c| c.as_ref().ok())
                    .map(|c| c.log_dir.clone())
                    .unwrap_or_else(std::env::temp_dir);
                let _ = reply.send(Proc::spawn(&name, cmd, &log_dir));
            }
            drop(rt);
        })
        .map_err(|e| Error::io(Path::new("testenv-cluster thread"), e))?;
    rx.recv()
        .map_err(|_| Error::Http("cluster thread died while starting".into()))?
}

/// The per-run directory: `$SECRETS_STORE_TESTENV_DIR` or `$TMPDIR/secrets-store-testenv`, one
/// `run-<pid>` per test binary. Runs whose process is gone are removed first.
fn make_run_dir() -> Result<PathBuf, Error> {
    let base = std::env::var_os("SECRETS_STORE_TESTENV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("secrets-store-testenv"));
    std::fs::create_dir_all(&base).map_err(|e| Error::io(&base, e))?;
    if let Ok(entries) = std::fs::read_dir(&base) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("run-")
                && !Path::new("/proc").join(pid).exists()
                // A killed run's real node is cleaned up by the next `RealNode::start`, which
                // needs its dir.
                && !crate::real_node::holds_unrestored_node(&entry.path())
            {
                // A real node can leave mounts behind (kubelet's bind mount of its root,
                // container root filesystems); never delete through a mount point.
                if crate::real_node::unmount_all_under(&entry.path()).is_ok() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    let run = base.join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    for sub in ["logs", "pki", "etcd"] {
        let dir = run.join(sub);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    Ok(run)
}

fn start(rt: &tokio::runtime::Runtime, spawner: mpsc::Sender<SpawnJob>) -> Result<Cluster, Error> {
    let started = Instant::now();
    // Resolve every tool first so a missing one fails before anything is started.
    let etcd_bin = tools::require("etcd")?;
    let apiserver_bin = tools::require("kube-apiserver")?;
    let kcm_bin = tools::require("kube-controller-manager")?;
    tools::require("moto-python")?;

    let run_dir = make_run_dir()?;
    let log_dir = run_dir.join("logs");
    let pki = certs::generate(&run_dir.join("pki"))?;

    let etcd_port = free_port()?;
    let etcd_peer_port = free_port()?;
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
    let mut cmd = Command::new(etcd_bin);
    cmd.arg(format!("--data-dir={}", run_dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={etcd_url}"))
        .arg(format!("--advertise-client-urls={etcd_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=default={peer_url}"))
        // Throwaway data: durability only costs time.
        .arg("--unsafe-no-fsync")
        .arg("--log-level=warn");
    let etcd = Proc::spawn("etcd", cmd, &log_dir)?;

    // moto starts in parallel with the control plane; it is awaited at the end.
    let (moto_proc, moto_addr) = Moto::spawn(&run_dir, &log_dir)?;

    let api_port = free_port()?;
    let server_url = format!("https://127.0.0.1:{api_port}");
    let sa_key = pki.sa_key.display().to_string();
    let flags = ApiserverFlags {
        etcd_url: &etcd_url,
        port: api_port,
        run_dir: &run_dir,
        pki: &pki,
    };
    let apiserver = Restartable::start(
        apiserver::NAME,
        apiserver_bin,
        apiserver_args(&flags, &log_dir)?,
        &log_dir,
    )?;

    let kubeconfig = run_dir.join("kubeconfig");
    write_kubeconfig(&kubeconfig, &server_url, &pki)?;

    let procs = vec![etcd];
    let config = rt.block_on(load_config(&kubeconfig))?;
    let client = rt
        .block_on(async { Client::try_from(config.clone()) })
        .map_err(Error::Kube)?;
    let first_apiserver = apiserver.process().expect("kube-apiserver just started");
    rt.block_on(wait_readyz(&client, &[&procs[0], &first_apiserver]))?;

    let kcm_args = vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--leader-elect=false".into(),
        "--controllers=garbagecollector,deployment,replicaset,namespace,serviceaccount,serviceaccount-token".into(),
        format!("--root-ca-file={}", pki.ca_cert.display()),
        format!("--service-account-private-key-file={sa_key}"),
        "--secure-port=0".into(),
        "--cluster-name=testenv".into(),
        "--concurrent-gc-syncs=5".into(),
    ];
    let controller_manager =
        Restartable::start("kube-controller-manager", kcm_bin, kcm_args, &log_dir)?;
    let first_kcm = controller_manager
        .process()
        .expect("kube-controller-manager just started");

    let moto = rt.block_on(async {
        install_crds(&client).await?;
        create_node(&client).await?;
        let moto = Moto::ready(moto_proc, moto_addr).await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let running: Vec<&Proc> = procs
            .iter()
            .chain([&*first_apiserver, &*first_kcm])
            .collect();
        wait_for_while_running(
            "ServiceAccount default/default (kube-controller-manager)",
            Duration::from_secs(60),
            &running,
            || async {
                sas.get_opt("default")
                    .await
                    .map(|sa| sa.is_some())
                    .map_err(|e| e.to_string())
            },
        )
        .await?;
        Ok::<_, Error>(moto)
    });
    let moto = match moto {
        Ok(m) => m,
        Err(e) => {
            return Err(Error::Timeout {
                what: "test cluster".into(),
                detail: format!("{e}\n{}", all_tails(&log_dir)),
            });
        }
    };

    eprintln!(
        "testenv: cluster ready in {:.1}s (apiserver {server_url}, moto {}, logs {})",
        started.elapsed().as_secs_f64(),
        moto.endpoint(),
        log_dir.display()
    );
    Ok(Cluster {
        run_dir,
        log_dir,
        kubeconfig,
        server_url,
        ca_pem: pki.ca_pem.clone(),
        pki,
        config,
        moto,
        apiserver,
        controller_manager,
        procs,
        spawner: std::sync::Mutex::new(spawner),
    })
}

fn all_tails(log_dir: &Path) -> String {
    let mut out = String::new();
    for name in ["etcd", "kube-apiserver", "kube-controller-manager", "moto"] {
        let path = log_dir.join(format!("{name}.log"));
        out.push_str(&format!("----- {name} -----\n{}\n", tail(&path, 30)));
    }
    out
}

fn write_kubeconfig(path: &Path, server: &str, pki: &certs::Pki) -> Result<(), Error> {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": {
            "server": server,
            "certificate-authority": pki.ca_cert,
        }}],
        "users": [{"name": "testenv-admin", "user": {
            "client-certificate": pki.admin_cert,
            "client-key": pki.admin_key,
        }}],
        "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": "testenv-admin"}}],
        "current-context": "testenv",
    });
    let text = serde_yaml::to_string(&doc).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

async fn load_config(path: &Path) -> Result<Config, Error> {
    let kc = Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))
}

async fn wait_readyz(client: &Client, procs: &[&Proc]) -> Result<(), Error> {
    let what = "kube-apiserver /readyz";
    wait_for_while_running(what, Duration::from_secs(90), procs, || async {
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        Ok(client
            .request_text(req)
            .await
            .is_ok_and(|t| t.trim() == "ok"))
    })
    .await
}

async fn install_crds(client: &Client) -> Result<(), Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply("secrets-store-testenv").force();
    let mut names = Vec::new();
    for crd in secrets_store_api::crd::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &pp, &Patch::Apply(&crd)).await?;
        names.push(name);
    }
    for name in names {
        let what = format!("CRD {name} Established");
        wait_for(&what, Duration::from_secs(30), || async {
            let crd = crds.get(&name).await.map_err(|e| e.to_string())?;
            Ok(crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"))
        })
        .await?;
    }
    Ok(())
}

async fn create_node(client: &Client) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "topology.kubernetes.io/region": crate::moto::REGION,
            },
        },
    }))
    .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    nodes
        .patch(
            NODE_NAME,
            &PatchParams::apply("secrets-store-testenv").force(),
            &Patch::Apply(&node),
        )
        .await?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let status = json!({"status": {
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet simulator is posting ready status",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
    }});
    nodes
        .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}
