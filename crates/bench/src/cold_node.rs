//! Scenario 8, the cold node: a stack's node-side processes restart while `pods` volumes stay
//! mounted, and the kubelet simulator's republishes (one worker per pod, each on its own period,
//! as kubelet's pod workers) bring every volume back through the restarted processes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use secrets_store_testenv::Cluster;

use crate::fixtures::{self, Tenant};
use crate::load::{self, Counters, Span};
use crate::stack::RunningStack;

/// What scenario 8 measured for one stack.
#[derive(Debug, Clone)]
pub struct ColdNode {
    /// Volumes mounted when the processes were killed.
    pub volumes: usize,
    /// From the kill until the new processes' socket answered.
    pub restart: Duration,
    /// From the kill until every volume had been republished once by the new processes.
    pub all_republished: Duration,
    /// Counters from the kill until then (CPU: the new processes only).
    pub counters: Counters,
}

/// Creates `pods` pods for `tenant`, lets a simulator republishing every `republish` mount them
/// all, then restarts the stack's processes and times until each volume has been republished
/// successfully once more. The pods are deleted and unpublished at the end.
pub async fn run(
    cluster: &Cluster,
    stack: &mut RunningStack,
    tenant: &Tenant,
    pods: usize,
    republish: Duration,
) -> anyhow::Result<ColdNode> {
    let api: Api<Pod> = Api::namespaced(cluster.client(), &tenant.namespace);
    stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            async move {
                let pod = fixtures::pod(&format!("cold-{i}"), cluster.node_name())?;
                api.create(&PostParams::default(), &pod).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let sim = load::kubelet(cluster, stack, tenant, republish);
    load::wait_published(&sim, pods, stack).await?;
    // One full period of republishes first, so that the restart meets a warm, steady node.
    tokio::time::sleep(republish * 2).await;

    let mut span = Span::start(cluster, stack).await?;
    let before: BTreeMap<PathBuf, u64> = sim
        .published()
        .into_iter()
        .map(|v| (v.target_path, v.publish_count))
        .collect();
    let start = Instant::now();
    // The restart waits for sockets with blocking sleeps; the simulator runs on this runtime.
    tokio::task::block_in_place(|| stack.restart(cluster))?;
    let restart = start.elapsed();
    span.restarted();
    let deadline = start + Duration::from_secs(600);
    loop {
        let now = sim.published();
        let done = before.iter().all(|(target, count)| {
            now.iter()
                .any(|v| &v.target_path == target && v.publish_count > *count)
        });
        if done {
            break;
        }
        stack.check_running()?;
        if Instant::now() > deadline {
            anyhow::bail!("not every volume was republished within 10 min of the restart");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_republished = start.elapsed();
    let counters = span.finish(stack).await?;
    load::clear(cluster, &sim, tenant).await?;
    Ok(ColdNode {
        volumes: before.len(),
        restart,
        all_republished,
        counters,
    })
}
