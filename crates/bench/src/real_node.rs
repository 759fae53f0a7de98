//! Scenario 7: the seed walk-through on a real node (kubelet + containerd + runc, testenv's
//! `RealNode`), for the two figures the kubelet simulator cannot give:
//!
//! - **pod start**: Deployment create → its 3 pods Ready, with our chart installed, and with the
//!   upstream driver v1.6.0 + our provider on the same node in the same run (registered with the
//!   real kubelet through testenv's `Registrar`, the `node-driver-registrar` stand-in);
//! - **rotation latency**: `PutSecretValue` in moto → the file in every pod and `foosecret`
//!   changed, for our agent with `rotationSelfRefresh` on (the chart's default) and off, and for
//!   the upstream driver, at kubelet's default `syncFrequency` (60 s) and a 10 s poll.
//!
//! One real node per machine: the stacks take turns on it (the upstream driver first, then our
//! chart twice), never side by side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod, Secret, ServiceAccount};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use secrets_store_api::crd::SecretProviderClass;
use secrets_store_testenv::real_node::{AgentChart, RealNode, RealNodeConfig, mounts_under};
use secrets_store_testenv::upstream::{OurAwsProvider, UPSTREAM_DRIVER_TOOL};
use secrets_store_testenv::{AccountId, Cluster, Proc, free_port, require};

use crate::fixtures::DRIVER;
use crate::report::{Row, table};

/// The seed's names (`examples/seed/`).
const SEED_SECRET: &str = "CSI-driver-test-secret";
const SEED_DEPLOYMENT: &str = "csi-secret-driver-test-nginx-deployment";
const SEED_VOLUME: &str = "secrets-store-inline";
const SYNCED_SECRET: &str = "foosecret";
const SYNCED_KEY: &str = "SECRET_API_KEY";
const REPLICAS: usize = 3;
/// How often the runner looks at the pods, the node's files and `foosecret` while timing.
const POLL: Duration = Duration::from_millis(50);
/// Pod starts are split into this many blocks per stack, the stacks alternating.
const START_BLOCKS: usize = 2;
/// kubelet's PLEG relist period: container starts are seen on this tick.
const PLEG_PERIOD: Duration = Duration::from_secs(1);
/// Longest a pod start or an unmount may take before the run fails.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// What scenario 7 does.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Timed pod starts per stack (after one untimed warm-up start).
    pub starts: usize,
    /// Rotation samples per column.
    pub rotations: usize,
    /// `rotationPollInterval` of both drivers.
    pub poll: Duration,
    /// kubelet's `syncFrequency` (its republish period).
    pub sync_frequency: Duration,
    /// Also measure the upstream driver with our provider.
    pub upstream: bool,
}

/// One timed pod start: offsets from the Deployment's create call.
#[derive(Debug, Clone)]
pub struct PodStart {
    /// Every pod's secret file exists on the node (the volume was published).
    pub published: Duration,
    /// `foosecret` exists (the containers' `secretKeyRef` can resolve).
    pub synced: Duration,
    /// All 3 pods are Ready.
    pub ready: Duration,
    /// kubelet's `Failed` events (`CreateContainerConfigError`: `foosecret` not found yet).
    pub config_errors: u32,
    /// From kubelet's log, per pod: `SyncLoop ADD` → `MountVolume started` of the CSI volume.
    pub kubelet_queue: Vec<Duration>,
    /// From kubelet's log, per volume: `MountVolume started` → `MountVolume.SetUp succeeded`
    /// (the token requests and the `NodePublishVolume` call).
    pub kubelet_publish: Vec<Duration>,
}

/// One rotation: offsets from `PutSecretValue` returning.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// Every pod's file (read on the node) holds the new value.
    pub files: Duration,
    /// `foosecret` holds the new value.
    pub secret: Duration,
}

impl Rotation {
    fn both(&self) -> Duration {
        self.files.max(self.secret)
    }
}

/// A column's samples, or why it has none.
pub type Samples<T> = Result<Vec<T>, String>;

/// What scenario 7 measured.
#[derive(Debug)]
pub struct Results {
    /// The settings it ran with.
    pub settings: Settings,
    /// Pod starts: ours, then the upstream driver with our provider.
    pub starts: Vec<(&'static str, Samples<PodStart>)>,
    /// Rotation: ours self-refresh on, off, upstream driver with our provider.
    pub rotations: Vec<(&'static str, Samples<Rotation>)>,
}

const OURS: &str = "ours";
const UPSTREAM: &str = "upstream driver + our provider";
const OURS_ON: &str = "ours, rotationSelfRefresh=true (chart default)";
const OURS_OFF: &str = "ours, rotationSelfRefresh=false";

/// Runs scenario 7 on a fresh real node. `agent_binary` is the `secrets-store` binary packaged
/// as the chart's image and run as the upstream driver's provider.
pub async fn run(
    cluster: &'static Cluster,
    agent_binary: &Path,
    settings: &Settings,
) -> anyhow::Result<Results> {
    // The simulated scenarios create the CSIDriver without helm's ownership labels; helm install
    // would refuse to adopt it.
    delete_csi_driver(cluster).await?;
    let node = RealNode::start(
        cluster,
        RealNodeConfig {
            sync_frequency: settings.sync_frequency,
            agent_binary: Some(agent_binary.to_path_buf()),
            ..RealNodeConfig::default()
        },
    )
    .await?;
    let bench = Bench {
        cluster,
        node: &node,
        settings,
        rng: Rng::seeded(),
        runs: std::cell::Cell::new(0),
    };

    // Blocks of pod starts, the stacks alternating (upstream, ours, upstream, ours): the machine's
    // load drifts over the run, and each stack gets early and late slots. Rotation samples come
    // in each stack's last block.
    let blocks = block_sizes(settings.starts, START_BLOCKS);
    let mut up: Result<(Vec<PodStart>, Vec<Rotation>), String> = if settings.upstream {
        Ok((Vec::new(), Vec::new()))
    } else {
        Err("not requested (--stacks)".into())
    };
    let (mut starts, mut on) = (Vec::new(), Vec::new());
    for (b, &n) in blocks.iter().enumerate() {
        let last = b + 1 == blocks.len();
        if let Ok((up_starts, up_rotations)) = &mut up {
            eprintln!("scenario 7 (upstream driver + our provider), block {b}: {n} pod starts");
            match bench.upstream(agent_binary, n, last).await {
                Ok((s, r)) => {
                    up_starts.extend(s);
                    up_rotations.extend(r);
                }
                Err(e) => {
                    let reason = format!("did not run: {e:#}");
                    eprintln!("scenario 7 (upstream driver): {reason}");
                    up = Err(reason);
                }
            }
        }
        eprintln!("scenario 7 (ours, self-refresh on), block {b}: {n} pod starts");
        let (s, r) = bench.ours(true, n, last).await?;
        starts.extend(s);
        on.extend(r);
    }
    eprintln!("scenario 7 (ours, self-refresh off): one pod start, rotation");
    let (_, off) = bench.ours(false, 0, true).await?;
    let (up_starts, up_rotations) = match up {
        Ok((s, r)) => (Ok(s), Ok(r)),
        Err(reason) => (Err(reason.clone()), Err(reason)),
    };

    node.stop()?;
    Ok(Results {
        settings: settings.clone(),
        starts: vec![(OURS, Ok(starts)), (UPSTREAM, up_starts)],
        rotations: vec![
            (OURS_ON, Ok(on)),
            (OURS_OFF, Ok(off)),
            (UPSTREAM, up_rotations),
        ],
    })
}

/// One seed Deployment on the node: its namespace and AWS account, and the pods it started.
struct Seed {
    namespace: String,
    account: AccountId,
    pod_uids: Vec<String>,
}

struct Bench<'a> {
    cluster: &'static Cluster,
    node: &'a RealNode,
    settings: &'a Settings,
    rng: Rng,
    /// Timed runs so far (namespace names).
    runs: std::cell::Cell<usize>,
}

impl Bench<'_> {
    /// Our chart's values here: rotation polled every [`Settings::poll`].
    fn chart(&self, self_refresh: bool) -> AgentChart {
        AgentChart {
            rotation_poll_interval: format!("{}s", self.settings.poll.as_secs()),
            rotation_self_refresh: self_refresh,
            aws_endpoint: self.cluster.moto().endpoint(),
            extra_values: Vec::new(),
        }
    }

    /// The upstream driver on the node with our provider, its starts and rotations, then gone
    /// again (driver deregistered, CSIDriver deleted) so that our chart can be installed.
    /// The upstream driver on the node with our provider for `starts` pod starts (and the
    /// rotation samples if `rotate`), then gone again (driver deregistered, CSIDriver deleted)
    /// so that our chart can be installed.
    async fn upstream(
        &self,
        agent_binary: &Path,
        starts: usize,
        rotate: bool,
    ) -> anyhow::Result<(Vec<PodStart>, Vec<Rotation>)> {
        create_csi_driver(self.cluster).await?;
        let stack = UpstreamOnNode::start(self.cluster, self.node, agent_binary, self.settings)?;
        let registrar = self.node.register_csi_driver(&stack.socket)?;
        self.node.wait_registered(Duration::from_secs(60)).await?;
        let measured = self.measure("up", starts, rotate).await;
        if let Err(e) = stack.check_running() {
            eprintln!("{e}");
        }
        drop(registrar);
        self.node
            .wait_unregistered(Duration::from_secs(120))
            .await?;
        drop(stack);
        delete_csi_driver(self.cluster).await?;
        measured
    }

    /// Our chart installed (`rotationSelfRefresh` = `self_refresh`) for `starts` pod starts (and
    /// the rotation samples if `rotate`), then uninstalled.
    async fn ours(
        &self,
        self_refresh: bool,
        starts: usize,
        rotate: bool,
    ) -> anyhow::Result<(Vec<PodStart>, Vec<Rotation>)> {
        let agent = self.node.install_agent(&self.chart(self_refresh)).await?;
        let slug = if self_refresh { "ours" } else { "ours-off" };
        let measured = self.measure(slug, starts, rotate).await;
        agent.uninstall(self.node)?;
        self.node
            .wait_unregistered(Duration::from_secs(120))
            .await?;
        measured
    }

    /// One untimed warm-up start, `starts` timed ones, then (if `rotate`) the rotation samples on
    /// the last one's pods. Every Deployment is deleted again.
    async fn measure(
        &self,
        slug: &str,
        starts: usize,
        rotate: bool,
    ) -> anyhow::Result<(Vec<PodStart>, Vec<Rotation>)> {
        let (mut seed, _) = self.start_seed(&format!("{slug}-warm")).await?;
        let mut timed = Vec::new();
        for _ in 0..starts {
            self.delete(&seed).await?;
            let i = self.runs.get();
            self.runs.set(i + 1);
            let (next, start) = self.start_seed(&format!("{slug}-{i}")).await?;
            eprintln!(
                "  start {slug}-{i}: published {:.2} s, foosecret {:.2} s, Ready {:.2} s, \
                 {} config errors",
                start.published.as_secs_f64(),
                start.synced.as_secs_f64(),
                start.ready.as_secs_f64(),
                start.config_errors
            );
            timed.push(start);
            seed = next;
        }
        let rotations = if rotate {
            self.rotations(&seed, slug).await?
        } else {
            Vec::new()
        };
        self.delete(&seed).await?;
        Ok((timed, rotations))
    }

    /// The seed in a fresh namespace and AWS account: AWS side, ServiceAccount and class first
    /// (untimed), then the Deployment, timed until its pods are Ready.
    async fn start_seed(&self, slug: &str) -> anyhow::Result<(Seed, PodStart)> {
        let namespace = self.node.new_namespace(&format!("rn-{slug}")).await;
        let account = self.cluster.moto().new_account();
        let role = seed_aws(self.cluster, &account, "initial-value").await?;
        let client = self.cluster.client();
        let pp = PostParams::default();
        let sa: ServiceAccount =
            serde_yaml::from_str(&seed_file("serviceaccount.yaml")?.replace("ROLE_ARN", &role))?;
        Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
            .create(&pp, &sa)
            .await?;
        let spc: SecretProviderClass =
            serde_yaml::from_str(&seed_file("secretproviderclass.yaml")?)?;
        Api::<SecretProviderClass>::namespaced(client.clone(), &namespace)
            .create(&pp, &spc)
            .await?;
        let deployment: Deployment = serde_yaml::from_str(&seed_file("test-nginx.yaml")?)?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);

        // kubelet notices started containers on its 1 s PLEG relist: a random phase, so that the
        // end of the previous run (itself on a relist) does not fix where the next one lands.
        tokio::time::sleep(self.rng.below(PLEG_PERIOD)).await;
        let started = Instant::now();
        Api::<Deployment>::namespaced(client.clone(), &namespace)
            .create(&pp, &deployment)
            .await?;
        let (mut published, mut synced) = (None, None);
        let (ready, uids) = loop {
            anyhow::ensure!(
                started.elapsed() < START_TIMEOUT,
                "{namespace}: {REPLICAS} pods not Ready after {START_TIMEOUT:?} \
                 (published {published:?}, foosecret {synced:?})"
            );
            let live: Vec<Pod> = pods
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let now = started.elapsed();
            let uids: Vec<String> = live.iter().filter_map(|p| p.metadata.uid.clone()).collect();
            if published.is_none()
                && uids.len() == REPLICAS
                && uids.iter().all(|u| self.secret_file(u).exists())
            {
                published = Some(now);
            }
            if synced.is_none() && secrets.get_opt(SYNCED_SECRET).await?.is_some() {
                synced = Some(now);
            }
            if live.len() == REPLICAS && live.iter().all(is_ready) {
                break (now, uids);
            }
            tokio::time::sleep(POLL).await;
        };
        let config_errors = Api::<Event>::namespaced(client, &namespace)
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("Failed"))
            .map(|e| e.count.unwrap_or(1).max(1) as u32)
            .sum();
        let (kubelet_queue, kubelet_publish) =
            kubelet_mount_times(&self.cluster.log_dir().join("kubelet.log"), &namespace)?;
        let start = PodStart {
            // Ready implies both; a poll may have missed the moment in between.
            published: published.unwrap_or(ready),
            synced: synced.unwrap_or(ready),
            ready,
            config_errors,
            kubelet_queue,
            kubelet_publish,
        };
        Ok((
            Seed {
                namespace,
                account,
                pod_uids: uids,
            },
            start,
        ))
    }

    /// The secret's file in the pod's volume, as seen on the node.
    fn secret_file(&self, uid: &str) -> PathBuf {
        self.node
            .kubelet_dir()
            .join("pods")
            .join(uid)
            .join("volumes/kubernetes.io~csi")
            .join(SEED_VOLUME)
            .join("mount")
            .join(SEED_SECRET)
    }

    /// [`Settings::rotations`] rotations of the seed's secret, each at a random moment 0–60 s
    /// (kubelet's `syncFrequency`) after the previous one landed, so that no sample is in phase
    /// with kubelet's republishes or the agent's poll.
    async fn rotations(&self, seed: &Seed, slug: &str) -> anyhow::Result<Vec<Rotation>> {
        let secrets: Api<Secret> = Api::namespaced(self.cluster.client(), &seed.namespace);
        let timeout = self.settings.sync_frequency * 3 + Duration::from_secs(60);
        let mut samples = Vec::new();
        for i in 0..self.settings.rotations {
            tokio::time::sleep(self.rng.below(self.settings.sync_frequency)).await;
            let value = format!("rotated-{slug}-{i}");
            rotate(self.cluster, &seed.account, &value).await?;
            let started = Instant::now();
            let (mut files, mut secret) = (None, None);
            let sample = loop {
                let now = started.elapsed();
                anyhow::ensure!(
                    now < timeout,
                    "{}: rotation to {value:?} not seen after {timeout:?} (files {files:?}, \
                     foosecret {secret:?})",
                    seed.namespace
                );
                if files.is_none()
                    && seed.pod_uids.iter().all(|u| {
                        std::fs::read_to_string(self.secret_file(u)).is_ok_and(|v| v == value)
                    })
                {
                    files = Some(now);
                }
                if secret.is_none() && synced_value(&secrets).await?.as_deref() == Some(&value) {
                    secret = Some(now);
                }
                if let (Some(files), Some(secret)) = (files, secret) {
                    break Rotation { files, secret };
                }
                tokio::time::sleep(POLL).await;
            };
            eprintln!(
                "  rotation {slug} {i}: files {:.1} s, foosecret {:.1} s",
                sample.files.as_secs_f64(),
                sample.secret.as_secs_f64()
            );
            samples.push(sample);
        }
        Ok(samples)
    }

    /// Deletes the seed's Deployment and waits until its pods are gone and their volumes
    /// unmounted on the node.
    async fn delete(&self, seed: &Seed) -> anyhow::Result<()> {
        let client = self.cluster.client();
        Api::<Deployment>::namespaced(client.clone(), &seed.namespace)
            .delete(SEED_DEPLOYMENT, &DeleteParams::background())
            .await?;
        let pods: Api<Pod> = Api::namespaced(client, &seed.namespace);
        let started = Instant::now();
        loop {
            let left = pods.list(&ListParams::default()).await?.items.len();
            let mounted = seed
                .pod_uids
                .iter()
                .any(|u| !mounts_under(&self.node.kubelet_dir().join("pods").join(u)).is_empty());
            if left == 0 && !mounted {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < START_TIMEOUT,
                "{}: {left} pods left, mounted {mounted} after {START_TIMEOUT:?}",
                seed.namespace
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The upstream driver as a host process on the real node, with its chart's flags adapted: CSI
/// socket under the kubelet's plugins dir (as the chart's hostPath), the Node's name as node id,
/// rotation on; and our `secrets-store provider-aws` on its provider dir.
struct UpstreamOnNode {
    socket: PathBuf,
    // Dropped in this order: the provider, then the driver.
    provider: OurAwsProvider,
    driver: Proc,
}

impl UpstreamOnNode {
    fn start(
        cluster: &Cluster,
        node: &RealNode,
        agent_binary: &Path,
        settings: &Settings,
    ) -> anyhow::Result<Self> {
        let socket = node
            .kubelet_dir()
            .join("plugins/csi-secrets-store/csi.sock");
        let providers = node.node_dir().join("upstream-providers");
        std::fs::create_dir_all(socket.parent().expect("socket has a parent"))?;
        std::fs::create_dir_all(&providers)?;
        let mut cmd = Command::new(require(UPSTREAM_DRIVER_TOOL)?);
        cmd.arg(format!("--endpoint=unix://{}", socket.display()))
            .arg(format!("--nodeid={}", node.name()))
            .arg(format!("--provider-volume={}", providers.display()))
            // Its default, /etc/kubernetes/secrets-store-csi-providers, is looked at first.
            .arg(format!(
                "--additional-provider-volume-paths={}",
                providers.display()
            ))
            .arg("--enable-secret-rotation=true")
            .arg(format!(
                "--rotation-poll-interval={}ms",
                settings.poll.as_millis()
            ))
            .arg(format!("--metrics-addr=127.0.0.1:{}", free_port()?))
            .arg("-v=0")
            .env("KUBECONFIG", cluster.kubeconfig_path());
        let driver = cluster.spawn("real-node-upstream-driver", cmd)?;
        driver.wait_for_socket(&socket, Duration::from_secs(60))?;
        let provider = OurAwsProvider::start_with(
            cluster,
            agent_binary,
            &providers,
            &cluster.moto().endpoint(),
            &[],
            // `BENCH_PROVIDER_LOG=debug` to see where a publish waits.
            &std::env::var("BENCH_PROVIDER_LOG").unwrap_or_else(|_| "warn".into()),
        )?;
        Ok(Self {
            socket,
            provider,
            driver,
        })
    }

    fn check_running(&self) -> anyhow::Result<()> {
        self.driver.check_running()?;
        self.provider.check_running()?;
        Ok(())
    }
}

/// The CSIDriver object our chart creates with `tokenRequests` sts.amazonaws.com only and tokens
/// in the volume context (what upstream v1.6.0 reads), for the upstream driver's turn.
async fn create_csi_driver(cluster: &Cluster) -> anyhow::Result<()> {
    crate::fixtures::csi_driver()
        .apply(&cluster.client())
        .await?;
    Ok(())
}

/// Deletes the CSIDriver object if there is one and waits until it is gone.
async fn delete_csi_driver(cluster: &Cluster) -> anyhow::Result<()> {
    let api: Api<CSIDriver> = Api::all(cluster.client());
    match api.delete(DRIVER, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let started = Instant::now();
    while api.get_opt(DRIVER).await?.is_some() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "CSIDriver not deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

fn seed_file(name: &str) -> anyhow::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/seed")
        .join(name);
    std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The walk-through's AWS side in `account` (`tests/e2e`'s `seed_aws`): the secret, the policy
/// on its ARN, a role with the policy attached. Returns the role ARN.
async fn seed_aws(cluster: &Cluster, account: &AccountId, value: &str) -> anyhow::Result<String> {
    let moto = cluster.moto();
    let created = moto
        .sm_client(account)
        .create_secret()
        .name(SEED_SECRET)
        .secret_string(value)
        .send()
        .await?;
    let iam = moto.iam_client(account);
    let policy = seed_file("policy.json")?.replace("SECRET_ARN", created.arn().unwrap_or(""));
    let policy = iam
        .create_policy()
        .policy_name("deployment-policy")
        .policy_document(policy)
        .send()
        .await?;
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"oidc"},"Action":"sts:AssumeRoleWithWebIdentity"}]}"#;
    let role = iam
        .create_role()
        .role_name("nginx-deployment-role")
        .assume_role_policy_document(trust)
        .send()
        .await?;
    iam.attach_role_policy()
        .role_name("nginx-deployment-role")
        .policy_arn(
            policy
                .policy()
                .and_then(|p| p.arn())
                .ok_or_else(|| anyhow::anyhow!("CreatePolicy returned no ARN"))?,
        )
        .send()
        .await?;
    let role = role
        .role()
        .ok_or_else(|| anyhow::anyhow!("CreateRole returned no role"))?;
    Ok(role.arn().to_string())
}

async fn rotate(cluster: &Cluster, account: &AccountId, value: &str) -> anyhow::Result<()> {
    cluster
        .moto()
        .sm_client(account)
        .put_secret_value()
        .secret_id(SEED_SECRET)
        .secret_string(value)
        .send()
        .await?;
    Ok(())
}

async fn synced_value(secrets: &Api<Secret>) -> anyhow::Result<Option<String>> {
    let Some(secret) = secrets.get_opt(SYNCED_SECRET).await? else {
        return Ok(None);
    };
    Ok(secret.data.and_then(|d| {
        d.get(SYNCED_KEY)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
    }))
}

/// `total` split into at most `blocks` near-equal non-empty parts (one empty part for 0).
fn block_sizes(total: usize, blocks: usize) -> Vec<usize> {
    let blocks = blocks.clamp(1, total.max(1));
    (0..blocks)
        .map(|b| total / blocks + usize::from(b < total % blocks))
        .collect()
}

/// From kubelet's log (klog, `-v=2`), for the pods of `namespace`: per pod, `SyncLoop ADD` →
/// `MountVolume started` of the seed's CSI volume, and per volume, that → `MountVolume.SetUp
/// succeeded`.
fn kubelet_mount_times(
    log: &Path,
    namespace: &str,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    use std::io::BufRead;
    let file = std::fs::File::open(log).map_err(|e| anyhow::anyhow!("{}: {e}", log.display()))?;
    let pod_marker = format!("pod=\"{namespace}/");
    let add_marker = format!("\"SyncLoop ADD\" source=\"api\" pods=[\"{namespace}/");
    let volume = format!("volume \\\"{SEED_VOLUME}\\\"");
    let (mut added, mut started) = (BTreeMap::new(), BTreeMap::new());
    let (mut queue, mut publish) = (Vec::new(), Vec::new());
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        // `I1201 17:34:17.631253 …`: seconds of the day are enough for differences.
        let Some(at) = line.get(6..21).and_then(klog_seconds) else {
            continue;
        };
        if let Some(i) = line.find(&add_marker) {
            let pod = &line[i + add_marker.len()..];
            added.insert(pod.split('"').next().unwrap_or("").to_string(), at);
            continue;
        }
        let Some(i) = line.rfind(&pod_marker) else {
            continue;
        };
        if !line.contains(&volume) {
            continue;
        }
        let pod = line[i + pod_marker.len()..]
            .split('"')
            .next()
            .unwrap_or("")
            .to_string();
        if line.contains("operationExecutor.MountVolume started for") {
            if let Some(a) = added.get(&pod) {
                queue.push(Duration::from_secs_f64((at - a).max(0.0)));
            }
            started.insert(pod, at);
        } else if line.contains("MountVolume.SetUp succeeded for")
            && let Some(s) = started.remove(&pod)
        {
            publish.push(Duration::from_secs_f64((at - s).max(0.0)));
        }
    }
    Ok((queue, publish))
}

/// `17:34:17.631253` → seconds since midnight.
fn klog_seconds(hms: &str) -> Option<f64> {
    let mut parts = hms.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// xorshift64*, seeded from the clock: random delays need no crate.
struct Rng(std::cell::Cell<u64>);

impl Rng {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        Self(std::cell::Cell::new(nanos | 1))
    }

    /// A duration uniformly in `[0, max)`.
    fn below(&self, max: Duration) -> Duration {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        let x = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        max.mul_f64((x >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// Milliseconds below a second, seconds above.
fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// p50 (nearest rank), min and max.
fn spread(samples: &[Duration]) -> Option<(Duration, Duration, Duration)> {
    let mut s = samples.to_vec();
    s.sort();
    let (min, max) = (*s.first()?, *s.last()?);
    Some((crate::report::percentile(&s, 50.0), min, max))
}

fn cell(samples: &[Duration]) -> String {
    match spread(samples) {
        Some((p50, min, max)) => format!("{} ({}–{})", secs(p50), secs(min), secs(max)),
        None => "-".into(),
    }
}

fn ratio(ours: &[Duration], theirs: &[Duration]) -> String {
    match (spread(ours), spread(theirs)) {
        (Some((a, ..)), Some((b, ..))) if !b.is_zero() => {
            format!("{:.3}×", a.as_secs_f64() / b.as_secs_f64())
        }
        _ => "-".into(),
    }
}

impl Results {
    /// The two markdown tables (pod start, rotation) and what did not run.
    pub fn tables(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let ok = |c: &Samples<PodStart>| c.as_ref().ok().cloned().unwrap_or_default();
        let header: Vec<String> = self
            .starts
            .iter()
            .map(|(l, _)| (*l).to_string())
            .chain(
                self.starts
                    .iter()
                    .skip(1)
                    .map(|(l, _)| format!("ours ÷ {l}")),
            )
            .collect();
        let scenario = "7 real node: seed pod start";
        let mut rows = Vec::new();
        type Pick = Box<dyn Fn(&PodStart) -> Vec<Duration>>;
        let metrics: [(&str, &str, Pick); 5] = [
            (
                "Deployment create → 3 pods Ready",
                "runs",
                Box::new(|p| vec![p.ready]),
            ),
            (
                "create → all 3 volumes published (file on the node)",
                "runs",
                Box::new(|p| vec![p.published]),
            ),
            (
                "create → foosecret exists",
                "runs",
                Box::new(|p| vec![p.synced]),
            ),
            (
                "kubelet's log: pod ADD → MountVolume started",
                "pods",
                Box::new(|p| p.kubelet_queue.clone()),
            ),
            (
                "kubelet's log: MountVolume started → SetUp succeeded (token requests + \
                 NodePublishVolume)",
                "volumes",
                Box::new(|p| p.kubelet_publish.clone()),
            ),
        ];
        for (metric, unit, get) in &metrics {
            let all = |c: &Samples<PodStart>| ok(c).iter().flat_map(get).collect::<Vec<_>>();
            let ours = all(&self.starts[0].1);
            let mut cells: Vec<String> = self.starts.iter().map(|(_, c)| cell(&all(c))).collect();
            for (_, c) in self.starts.iter().skip(1) {
                cells.push(ratio(&ours, &all(c)));
            }
            rows.push(Row {
                scenario: scenario.into(),
                metric: format!("{metric}, p50 (min–max) of {} {unit}", ours.len()),
                cells,
            });
        }
        let mut cells: Vec<String> = self
            .starts
            .iter()
            .map(|(_, c)| match c {
                Ok(v) if !v.is_empty() => {
                    let total: u32 = v.iter().map(|p| p.config_errors).sum();
                    format!("{total} in {} runs", v.len())
                }
                _ => "-".into(),
            })
            .collect();
        cells.extend(self.starts.iter().skip(1).map(|_| "-".to_string()));
        rows.push(Row {
            scenario: scenario.into(),
            metric: "kubelet `Failed` events (CreateContainerConfigError: foosecret not there yet)"
                .into(),
            cells,
        });
        let mut cells: Vec<String> = self
            .starts
            .iter()
            .map(|(_, c)| {
                let v: Vec<String> = ok(c)
                    .iter()
                    .map(|p| format!("{:.1}", p.ready.as_secs_f64()))
                    .collect();
                if v.is_empty() {
                    "-".into()
                } else {
                    format!("{} s", v.join(", "))
                }
            })
            .collect();
        cells.extend(self.starts.iter().skip(1).map(|_| "-".to_string()));
        rows.push(Row {
            scenario: scenario.into(),
            metric: "create → Ready, every run".into(),
            cells,
        });
        out.push_str(&table(&header, &rows));
        out.push_str(&not_run(
            self.starts.iter().map(|(l, c)| (*l, c.as_ref().err())),
        ));
        out.push_str(
            "\nThe upstream pair (driver + ASCP) is not run in this scenario; the stacks take turns \
             on the node.\n",
        );

        let header: Vec<String> = self
            .rotations
            .iter()
            .map(|(l, _)| (*l).to_string())
            .collect();
        let scenario = format!(
            "7 real node: rotation (poll {} s, kubelet syncFrequency {} s)",
            s.poll.as_secs(),
            s.sync_frequency.as_secs()
        );
        let okr = |c: &Samples<Rotation>| c.as_ref().ok().cloned().unwrap_or_default();
        type PickR = fn(&Rotation) -> Duration;
        let metrics: [(&str, PickR); 3] = [
            (
                "PutSecretValue → 3 files and foosecret changed",
                Rotation::both,
            ),
            (
                "PutSecretValue → 3 files changed (read on the node)",
                |r| r.files,
            ),
            ("PutSecretValue → foosecret changed", |r| r.secret),
        ];
        let m = s.rotations;
        let mut rows: Vec<Row> = metrics
            .iter()
            .map(|(metric, get)| Row {
                scenario: scenario.clone(),
                metric: format!("{metric}, p50 (min–max), {m} samples"),
                cells: self
                    .rotations
                    .iter()
                    .map(|(_, c)| cell(&okr(c).iter().map(get).collect::<Vec<_>>()))
                    .collect(),
            })
            .collect();
        rows.push(Row {
            scenario: scenario.clone(),
            metric: "→ 3 files and foosecret, every sample".into(),
            cells: self
                .rotations
                .iter()
                .map(|(_, c)| {
                    let v: Vec<String> = okr(c)
                        .iter()
                        .map(|r| format!("{:.1}", r.both().as_secs_f64()))
                        .collect();
                    if v.is_empty() {
                        "-".into()
                    } else {
                        format!("{} s", v.join(", "))
                    }
                })
                .collect(),
        });
        out.push('\n');
        out.push_str(&table(&header, &rows));
        out.push_str(&not_run(
            self.rotations.iter().map(|(l, c)| (*l, c.as_ref().err())),
        ));
        out
    }
}

/// "**X** was not measured: why." lines for the columns without samples.
fn not_run<'a>(columns: impl Iterator<Item = (&'a str, Option<&'a String>)>) -> String {
    let lines: BTreeMap<&str, &String> =
        columns.filter_map(|(l, why)| why.map(|w| (l, w))).collect();
    lines
        .iter()
        .map(|(l, w)| format!("\n**{l}** was not measured: {w}.\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of a real kubelet v1.35 log (`-v=2`), one pod of the seed.
    const KUBELET_LOG: &str = r#"I1201 17:34:17.421395   17560 kubelet.go:2588] "SyncLoop ADD" source="api" pods=["rn-ours-3-dzxmx/csi-secret-driver-test-nginx-deployment-78f56b6865-vvsbp"]
I1201 17:34:17.631268   17560 reconciler_common.go:225] "operationExecutor.MountVolume started for volume \"secrets-store-inline\" (UniqueName: \"kubernetes.io/csi/e7f803d3-29d6-4352-af06-3212f432d29c-secrets-store-inline\") pod \"csi-secret-driver-test-nginx-deployment-78f56b6865-vvsbp\" (UID: \"e7f803d3-29d6-4352-af06-3212f432d29c\") " pod="rn-ours-3-dzxmx/csi-secret-driver-test-nginx-deployment-78f56b6865-vvsbp"
I1201 17:34:17.631280   17560 reconciler_common.go:225] "operationExecutor.MountVolume started for volume \"kube-api-access-th8f5\" (UniqueName: \"kubernetes.io/projected/e7f803d3-29d6-4352-af06-3212f432d29c-kube-api-access-th8f5\") pod \"csi-secret-driver-test-nginx-deployment-78f56b6865-vvsbp\" (UID: \"e7f803d3-29d6-4352-af06-3212f432d29c\") " pod="rn-ours-3-dzxmx/csi-secret-driver-test-nginx-deployment-78f56b6865-vvsbp"
I1201 17:34:17.706418   17560 operation_generator.go:614] "MountVolume.SetUp succeeded for volume \"secrets-store-inline\" (UniqueName: \"kubernetes.io/csi/e7f803d3-29d6-4352-af06-3212f432d29c-secrets-store-inline\") pod \"csi-secret-driver-test-nginx-deployment-78f56b6865-vvsbp\" (UID: \"e7f803d3-29d6-4352-af06-3212f432d29c\") " pod="rn-ours-3-dzxmx/csi-secret-driver-test-nginx-deployment-78f56b6865-vvsbp"
"#;

    #[test]
    fn kubelet_log_gives_queue_and_publish_times() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("kubelet.log");
        // Another namespace's lines are ignored.
        let other = KUBELET_LOG.replace("rn-ours-3-dzxmx", "rn-ours-4-aaaaa");
        std::fs::write(&log, format!("{KUBELET_LOG}{other}")).unwrap();
        let (queue, publish) = kubelet_mount_times(&log, "rn-ours-3-dzxmx").unwrap();
        let ms = |v: &[Duration]| -> Vec<f64> {
            v.iter().map(|d| (d.as_secs_f64() * 1e3).round()).collect()
        };
        assert_eq!(ms(&queue), [210.0]);
        assert_eq!(ms(&publish), [75.0]);
    }

    #[test]
    fn blocks_split_the_runs() {
        assert_eq!(block_sizes(10, 2), [5, 5]);
        assert_eq!(block_sizes(5, 2), [3, 2]);
        assert_eq!(block_sizes(1, 2), [1]);
        assert_eq!(block_sizes(0, 2), [0]);
    }

    #[test]
    fn random_delays_stay_below_the_bound() {
        let rng = Rng::seeded();
        for _ in 0..1000 {
            assert!(rng.below(Duration::from_secs(1)) < Duration::from_secs(1));
        }
    }
}
