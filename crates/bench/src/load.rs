//! Scenarios 2, 3 and 5: a burst of publishes straight at a stack's socket, steady rotation of
//! the same pods through the kubelet simulator, and a cluster filled with unrelated objects.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use secrets_store_api::crd::SecretProviderClass;
use secrets_store_testenv::Cluster;
use secrets_store_testenv::kubelet::{KubeletConfig, KubeletSim};

use crate::fixtures::{self, DRIVER, Tenant};
use crate::latency::SingleMount;
use crate::procfs;
use crate::stack::RunningStack;

/// What the runner counts around a scenario: AWS calls per action, apiserver requests and the
/// stack's CPU time.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// AWS calls per action seen at the stack's counting proxy.
    pub aws: BTreeMap<String, u64>,
    /// `apiserver_request_total`, all clients.
    pub api_requests: f64,
    /// Requests the stack's own processes made, per "VERB resource[/subresource]", from the
    /// apiserver's audit log (told apart by user agent).
    pub stack_api: BTreeMap<String, u64>,
    /// CPU seconds of the stack's processes.
    pub cpu: Duration,
    /// Successful `NodePublishVolume` calls the kubelet simulator made (scenario 3: how many
    /// republishes the stack served; a slow stack is republished less often).
    pub publishes: u64,
}

/// The counters at the start of a span of a scenario; [`Span::finish`] gives the deltas.
pub struct Span<'a> {
    cluster: &'a Cluster,
    aws: BTreeMap<String, u64>,
    api_requests: f64,
    audit_offset: u64,
    cpu: Duration,
}

impl<'a> Span<'a> {
    /// Reads the counters now.
    pub async fn start(cluster: &'a Cluster, stack: &RunningStack) -> anyhow::Result<Self> {
        Ok(Self {
            cluster,
            aws: stack.aws.calls(),
            api_requests: fixtures::apiserver_requests(cluster).await?,
            audit_offset: fixtures::audit_log_len(cluster),
            cpu: procfs::cpu_time_sum(&stack.pids())?,
        })
    }

    /// The stack's processes were restarted: their CPU time counts from zero again.
    pub fn restarted(&mut self) {
        self.cpu = Duration::ZERO;
    }

    /// The counts of `stack` (the one the span was started for) since [`Span::start`].
    pub async fn finish(self, stack: &RunningStack) -> anyhow::Result<Counters> {
        let api_requests = fixtures::apiserver_requests(self.cluster).await?;
        let cpu = procfs::cpu_time_sum(&stack.pids())?;
        Ok(Counters {
            aws: calls_delta(&self.aws, &stack.aws.calls()),
            api_requests: api_requests - self.api_requests,
            stack_api: fixtures::audited_requests(self.cluster, self.audit_offset, |agent| {
                stack.kind.owns_user_agent(agent)
            })?,
            cpu: cpu.saturating_sub(self.cpu),
            publishes: 0,
        })
    }
}

/// Successful publishes the simulator made so far, over all its volumes.
fn publishes(sim: &KubeletSim) -> u64 {
    sim.published().iter().map(|v| v.publish_count).sum()
}

impl Counters {
    /// The stack's own Kubernetes API requests.
    pub fn stack_api_total(&self) -> u64 {
        self.stack_api.values().sum()
    }

    /// The stack's `n` most frequent request kinds, as "VERB resource: count, …".
    pub fn top_stack_requests(&self, n: usize) -> String {
        let mut kinds: Vec<(&String, &u64)> = self.stack_api.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1));
        let top: Vec<String> = kinds
            .iter()
            .take(n)
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        if top.is_empty() {
            "none".into()
        } else {
            top.join(", ")
        }
    }

    /// All AWS calls.
    pub fn aws_total(&self) -> u64 {
        self.aws.values().sum()
    }
}

/// AWS calls per action between two readings of the counting proxy.
pub fn calls_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Result of the burst.
#[derive(Debug, Clone)]
pub struct Burst {
    /// From the first `NodePublishVolume` sent until the last one answered.
    pub wall: Duration,
    /// Each publish's own latency, in the order they were sent.
    pub latencies: Vec<Duration>,
    /// Counters over the same span.
    pub counters: Counters,
    /// The first publish of one pod in another fresh namespace, alone.
    pub first_in_namespace: Duration,
    /// The median of that pod's next [`WARM_AFTER_FIRST`] publishes (same namespace, warm).
    pub warm_after_first: Duration,
}

/// Publishes of the fresh-namespace pod after its first, for the warm figure next to it.
pub const WARM_AFTER_FIRST: usize = 5;

/// A kubelet simulator for the tenant's namespace talking to `stack`'s socket directly.
pub fn kubelet(
    cluster: &Cluster,
    stack: &RunningStack,
    tenant: &Tenant,
    republish: Duration,
) -> KubeletSim {
    let mut config =
        KubeletConfig::new(cluster.node_name(), &stack.kubelet_root, &tenant.namespace)
            .with_csi_socket(DRIVER, &stack.socket);
    config.plugin_registration = false;
    config.bind_pending_pods = false;
    config.republish_period = republish;
    KubeletSim::start(cluster.client(), config)
}

pub(crate) async fn wait_published(
    sim: &KubeletSim,
    n: usize,
    stack: &RunningStack,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while sim.published().len() < n {
        stack.check_running()?;
        if Instant::now() > deadline {
            let events: Vec<String> = sim
                .events()
                .iter()
                .rev()
                .take(5)
                .map(|e| e.message.clone())
                .collect();
            anyhow::bail!(
                "only {} of {n} volumes published after 10 min; last events: {events:?}",
                sim.published().len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Scenario 2: `pods` pods of `tenant` (a fresh namespace) are created and kubelet's requests
/// for their volumes built (pod info, a bound token each) before the clock starts; then every
/// `NodePublishVolume` goes to the stack's socket at once, each on its own connection, as
/// kubelet's volume manager sends them when pods land together. The clock stops at the last
/// answer. Before that, `first_tenant` (another fresh namespace) gets one pod whose first publish
/// is timed alone, then [`WARM_AFTER_FIRST`] more, `pause` apart. Returns the mounts still
/// published.
pub async fn burst(
    cluster: &Cluster,
    stack: &RunningStack,
    tenant: &Tenant,
    first_tenant: &Tenant,
    pods: usize,
    pause: Duration,
) -> anyhow::Result<(Burst, Vec<SingleMount>)> {
    let mut first = SingleMount::new(cluster, first_tenant, stack, "first-0").await?;
    let first_in_namespace = first.publish().await?;
    first.unpublish().await?;
    let mut warm = Vec::new();
    for _ in 0..WARM_AFTER_FIRST {
        // Paced like scenario 1, so that the warm publishes fetch too (the cache TTL is short).
        tokio::time::sleep(pause).await;
        warm.push(first.cycle().await?);
    }
    let warm_after_first = crate::report::percentile(&warm, 50.0);

    let mut mounts: Vec<SingleMount> =
        stream::iter(0..pods)
            .map(|i| async move {
                SingleMount::new(cluster, tenant, stack, &format!("burst-{i}")).await
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
    let span = Span::start(cluster, stack).await?;
    let start = Instant::now();
    let latencies = futures::future::try_join_all(mounts.iter_mut().map(|m| m.publish())).await?;
    let wall = start.elapsed();
    Ok((
        Burst {
            wall,
            latencies,
            counters: span.finish(stack).await?,
            first_in_namespace,
            warm_after_first,
        },
        mounts,
    ))
}

/// Unpublishes the burst's volumes (16 at a time), so that no mount outlives the scenario.
pub async fn unpublish_all(mounts: Vec<SingleMount>) -> anyhow::Result<()> {
    stream::iter(mounts)
        .map(|mut m| async move { m.unpublish().await })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Deletes every pod of the tenant (no simulator is publishing them).
pub async fn delete_pods(cluster: &Cluster, tenant: &Tenant) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(cluster.client(), &tenant.namespace);
    api.delete_collection(&DeleteParams::default(), &Default::default())
        .await?;
    Ok(())
}

/// Scenario 3: the burst's pods republished every `republish` for `run`, after the new
/// simulator has re-published each once. Returns the counters over `run`.
pub async fn rotation(
    cluster: &Cluster,
    stack: &RunningStack,
    tenant: &Tenant,
    pods: usize,
    republish: Duration,
    run: Duration,
) -> anyhow::Result<Counters> {
    let sim = kubelet(cluster, stack, tenant, republish);
    wait_published(&sim, pods, stack).await?;
    let span = Span::start(cluster, stack).await?;
    let published_before = publishes(&sim);
    tokio::time::sleep(run).await;
    stack.check_running()?;
    let mut counters = span.finish(stack).await?;
    counters.publishes = publishes(&sim) - published_before;
    clear(cluster, &sim, tenant).await?;
    Ok(counters)
}

/// Deletes the tenant's pods and waits until `sim` has unpublished their volumes, so no tmpfs
/// mount outlives the run (dropping a simulator unpublishes nothing).
pub async fn clear(cluster: &Cluster, sim: &KubeletSim, tenant: &Tenant) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(cluster.client(), &tenant.namespace);
    api.delete_collection(&DeleteParams::default(), &Default::default())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !sim.published().is_empty() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "{} volumes still published 2 min after their pods were deleted",
                sim.published().len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Scenario 5's load: `namespaces` namespaces holding `secrets` Secrets and `classes`
/// SecretProviderClasses in total, created in parallel batches. Returns the namespace names.
pub async fn fill(
    cluster: &Cluster,
    namespaces: usize,
    secrets: usize,
    classes: usize,
) -> anyhow::Result<Vec<String>> {
    let client = cluster.client();
    let mut names = Vec::new();
    for _ in 0..namespaces {
        names.push(cluster.new_namespace("bench-fill").await);
    }
    let payload = "x".repeat(256);
    let secret_jobs = (0..secrets).map(|i| {
        let api: Api<Secret> = Api::namespaced(client.clone(), &names[i % namespaces]);
        let payload = payload.clone();
        async move {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(format!("unrelated-{i}")),
                    ..Default::default()
                },
                string_data: Some(BTreeMap::from([("data".to_string(), payload)])),
                ..Default::default()
            };
            api.create(&PostParams::default(), &secret).await?;
            anyhow::Ok(())
        }
        .boxed()
    });
    let class_jobs = (0..classes).map(|i| {
        let api: Api<SecretProviderClass> = Api::namespaced(client.clone(), &names[i % namespaces]);
        async move {
            let spc = fixtures::class(&format!("unrelated-{i}"), &[format!("unrelated-{i}")])?;
            api.create(&PostParams::default(), &spc).await?;
            anyhow::Ok(())
        }
        .boxed()
    });
    stream::iter(secret_jobs.chain(class_jobs))
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(names)
}

/// Deletes the fill namespaces (kube-controller-manager removes their contents afterwards).
pub async fn unfill(cluster: &Cluster, names: &[String]) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(cluster.client());
    for n in names {
        api.delete(n, &DeleteParams::default()).await?;
    }
    Ok(())
}
