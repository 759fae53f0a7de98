//! The demo's cluster handle and the commands it runs and prints: kubectl, waits, mounts.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use secrets_store_testenv::Cluster;
use secrets_store_testenv::real_node::{AgentRelease, RealNode, mounts_under};

use crate::{SECRET_FILE, WAIT, echo, note, quote, show};

pub(crate) struct Demo<'a> {
    pub(crate) cluster: &'static Cluster,
    pub(crate) node: &'a RealNode,
}

/// One row of `kubectl get pods`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodRow {
    name: String,
    ready: String,
    status: String,
}

impl Demo<'_> {
    /// Runs kubectl; fails on a non-zero exit. Returns stdout and stderr.
    pub(crate) async fn run_kubectl(&self, args: &[&str]) -> Result<(String, String)> {
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
    pub(crate) async fn kubectl_quiet(&self, args: &[&str]) -> Result<String> {
        Ok(self.run_kubectl(args).await?.0)
    }

    /// Prints `$ kubectl <shown>`, runs kubectl with `args` and prints its output (stderr too,
    /// where kubectl says "No resources found"). Returns stdout.
    pub(crate) async fn kubectl_as(&self, shown: &str, args: &[&str]) -> Result<String> {
        show(&format!("kubectl {shown}"));
        let (stdout, stderr) = self.run_kubectl(args).await?;
        echo(&stdout);
        echo(&stderr);
        Ok(stdout)
    }

    /// Prints `$ kubectl <args>`, runs it and prints its output.
    pub(crate) async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let shown: Vec<Cow<'_, str>> = args.iter().map(|a| quote(a)).collect();
        self.kubectl_as(&shown.join(" "), args).await
    }

    /// `kubectl exec <pod> -- cat <secret file>`, printed.
    pub(crate) async fn cat_secret_file(&self, pod: &str) -> Result<String> {
        self.kubectl(&["exec", pod, "--", "cat", SECRET_FILE]).await
    }

    /// `kubectl exec <pod> -- env | grep SECRET_API_KEY` (the grep done here), printed.
    pub(crate) async fn env_secret(&self, pod: &str) -> Result<String> {
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
    pub(crate) async fn synced_value(&self, print: bool) -> Result<String> {
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
    pub(crate) async fn pod_rows(&self, args: &[&str]) -> Result<(String, Vec<PodRow>)> {
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
    pub(crate) async fn wait_for_pods(
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
    pub(crate) async fn wait<T, F, Fut>(&self, what: &str, mut check: F) -> Result<T>
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
    pub(crate) async fn wait_for_value(&self, pods: &[String], value: &str) -> Result<()> {
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
    pub(crate) async fn agent_log(&self, agent: &AgentRelease) -> String {
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
    pub(crate) async fn pod_uids(&self) -> Result<Vec<String>> {
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
    pub(crate) fn pod_mounts(&self, uids: &[String]) -> Vec<PathBuf> {
        uids.iter()
            .flat_map(|uid| mounts_under(&self.node.kubelet_dir().join("pods").join(uid)))
            .collect()
    }

    /// Waits until the garbage collector deleted `foosecret`, and shows it.
    pub(crate) async fn foosecret_collected(&self) -> Result<()> {
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
        let out = self.node.kubectl(&["get", "secret", "foosecret"]).await?;
        echo(&String::from_utf8_lossy(&out.stderr));
        ensure!(!out.status.success(), "foosecret still exists");
        Ok(())
    }
}
