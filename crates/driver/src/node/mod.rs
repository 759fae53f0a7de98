//! The publish/unpublish logic, independent of the gRPC types (see [`crate::csi`] for those):
//! the service and its settings here, filling a volume in [`fill`], taking it down in
//! [`unpublish`].

mod fill;
mod report;
mod unpublish;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kube::runtime::events::EventType;
use secrets_store_api::crd::{SecretProviderClass, SecretProviderClassPodStatus};

use crate::budget::NodeBudget;
use crate::classes::ClassCache;
use crate::error::PublishError;
use crate::hooks::AfterMount;
use crate::locks::VolumeLocks;
use crate::metrics::Metrics;
use crate::mounter::{KubeletTarget, MountError, Mounter};
use crate::providers::ProviderRegistry;
use crate::refresh::Remembered;
use crate::rotation::{
    PublishPlan, ROTATION_COMPLETE_REASON, RotationSchedule, Trigger, keeps_request,
};
use crate::status::{PodEffects, pod_reference};
use crate::volume_context::VolumeContext;
use report::PublishReport;

/// The parts of a `NodePublishVolumeRequest` the service uses.
#[derive(Clone, Default)]
pub struct PublishRequest {
    /// CSI volume id.
    pub volume_id: String,
    /// kubelet's target path.
    pub target_path: String,
    /// Whether a volume capability was sent.
    pub has_capability: bool,
    /// Whether the capability asks for a block device.
    pub block: bool,
    /// The volume's `readOnly`.
    pub readonly: bool,
    /// `volume_context`.
    pub volume_context: HashMap<String, String>,
    /// `secrets` (nodePublishSecretRef contents, maybe the tokens).
    pub secrets: HashMap<String, String>,
}

impl std::fmt::Debug for PublishRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishRequest")
            .field("volume_id", &self.volume_id)
            .field("target_path", &self.target_path)
            .field("readonly", &self.readonly)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// How long a publish may take by default: under kubelet's 2-minute CSI deadline, so kubelet gets
/// our error (naming the cause) rather than its own.
pub const DEFAULT_PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// Static settings of the node service.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's name (`NodeGetInfo`, the status label).
    pub node_id: String,
    /// kubelet's root directory: every target path must be a pod volume's `mount` directory
    /// under its `pods/` (see [`KubeletTarget`]), so a request can never mount on, or unmount and
    /// remove, any other directory of the host.
    pub kubelet_dir: PathBuf,
}

/// The node service: shared by the gRPC handlers.
#[derive(Clone)]
pub struct NodeService {
    inner: Arc<Inner>,
}

struct Inner {
    config: NodeConfig,
    mounter: Mounter,
    locks: VolumeLocks,
    metrics: Metrics,
    providers: ProviderRegistry,
    classes: ClassCache,
    effects: PodEffects,
    hooks: Vec<Arc<dyn AfterMount>>,
    rotation: RotationSchedule,
    /// Each mounted volume's last request, republished by [`NodeService::refresh_mounted`].
    remembered: Remembered,
    /// How long one publish may take to fetch, write and record a volume.
    publish_timeout: std::time::Duration,
    /// Bytes all mounted volumes may hold together.
    budget: NodeBudget,
    /// The pod status last written per target path, so a republish neither reads it back nor
    /// rewrites it when nothing changed (rebuilt from the API after a restart).
    statuses: std::sync::Mutex<HashMap<PathBuf, Arc<SecretProviderClassPodStatus>>>,
}

impl std::fmt::Debug for NodeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeService")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl NodeService {
    /// Wires a node service.
    pub fn new(
        config: NodeConfig,
        client: kube::Client,
        mounter: Mounter,
        providers: ProviderRegistry,
        metrics: Metrics,
        hooks: Vec<Arc<dyn AfterMount>>,
    ) -> Self {
        let effects = PodEffects::new(client.clone(), &config.node_id);
        Self {
            inner: Arc::new(Inner {
                config,
                mounter,
                locks: VolumeLocks::default(),
                metrics,
                providers,
                classes: ClassCache::new(client),
                effects,
                hooks,
                rotation: RotationSchedule::new(None),
                remembered: Remembered::default(),
                publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
                budget: NodeBudget::new(crate::budget::DEFAULT_NODE_BYTES),
                statuses: std::sync::Mutex::default(),
            }),
        }
    }

    /// Enables rotation: a republish of a mounted volume re-fetches at most once per
    /// `poll_interval`. Without it every republish fetches. Call before serving.
    pub fn with_rotation(mut self, poll_interval: std::time::Duration) -> Self {
        self.inner_mut().rotation = RotationSchedule::new(Some(poll_interval));
        self
    }

    /// Bounds each publish's fetch, write and status (default [`DEFAULT_PUBLISH_TIMEOUT`]).
    /// Call before serving.
    pub fn with_publish_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.inner_mut().publish_timeout = timeout;
        self
    }

    /// Caps the bytes all mounted volumes hold together (default
    /// [`crate::budget::DEFAULT_NODE_BYTES`]). Call before serving.
    pub fn with_node_budget(mut self, bytes: u64) -> Self {
        self.inner_mut().budget = NodeBudget::new(bytes);
        self
    }

    /// Adds a step that runs after files are written (secret sync). Call before serving.
    pub fn with_hook(mut self, hook: Arc<dyn AfterMount>) -> Self {
        self.inner_mut().hooks.push(hook);
        self
    }

    /// The SecretProviderClass cache, for components that look classes up too (secret sync).
    pub fn classes(&self) -> ClassCache {
        self.inner.classes.clone()
    }

    fn cached_status(&self, target: &Path) -> Option<Arc<SecretProviderClassPodStatus>> {
        self.lock_statuses().get(target).cloned()
    }

    fn lock_statuses(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<SecretProviderClassPodStatus>>> {
        self.inner
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The pod volume `path` names, if it is exactly a `mount` directory under kubelet's `pods/`
    /// (kubelet never sends anything else; `.`, `..` and doubled slashes are refused, not
    /// resolved).
    fn kubelet_target(&self, path: &str) -> Option<KubeletTarget> {
        KubeletTarget::parse(&self.inner.config.kubelet_dir, path)
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("NodeService is configured before it is shared")
    }

    /// The static settings.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Handles `NodePublishVolume`: records metrics and, once the pod is known, a Warning Event
    /// on failure.
    pub async fn publish(&self, req: PublishRequest) -> Result<(), PublishError> {
        self.publish_for(req, Trigger::Kubelet).await
    }

    async fn publish_for(&self, req: PublishRequest, trigger: Trigger) -> Result<(), PublishError> {
        let mut report = PublishReport::new(&req.target_path);
        let result = self.publish_steps(&req, trigger, &mut report).await;
        if result.is_ok() && keeps_request(trigger, self.inner.rotation.interval().is_some()) {
            // Only kubelet's requests are kept: they carry the freshest tokens.
            self.inner
                .remembered
                .remember(Path::new(&req.target_path), &req);
        }
        report.finish(self, &result).await;
        result
    }

    /// Republishes mounted volumes on their own rotation schedule, without waiting for kubelet
    /// (see [`crate::refresh`]); runs until the process ends. Does nothing without rotation.
    pub async fn refresh_mounted(self) {
        let Some(interval) = self.inner.rotation.interval() else {
            return;
        };
        let mut ticks = tokio::time::interval(crate::refresh::tick(interval));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = Instant::now();
            let due = self
                .inner
                .remembered
                .refreshable(chrono::Utc::now(), |target| {
                    self.inner.rotation.due(target, now)
                });
            if !due.is_empty() {
                tracing::debug!(
                    volumes = due.len(),
                    "refreshing mounted volumes due for rotation"
                );
            }
            for req in due {
                // Errors are reported (Event, metrics, log) by publish itself.
                let _ = self.publish_for(req, Trigger::Refresh).await;
            }
        }
    }

    /// A publish, step by step: accept the request, take the volume's lock, decide whether there
    /// is anything to do, resolve class and provider, mount, then fill the volume (bounded, and
    /// abandoned when kubelet unpublishes). `report` learns the pod, provider and kind of publish
    /// as they become known, for the metrics and Event of either outcome.
    async fn publish_steps(
        &self,
        req: &PublishRequest,
        trigger: Trigger,
        report: &mut PublishReport,
    ) -> Result<(), PublishError> {
        let (target, ctx) = self.accept(req, report)?;
        let guard = self.inner.locks.lock(&target).await;
        let was_mounted = on_blocking_pool({
            let (mounter, target) = (self.inner.mounter.clone(), target.clone());
            move || mounter.is_mount_point(&target)
        })
        .await?;
        let started = Instant::now();
        let plan = PublishPlan::decide(
            trigger,
            was_mounted,
            self.inner.remembered.contains(&target),
            self.inner.rotation.due(&target, started),
        );
        match plan {
            PublishPlan::Unpublished => return Ok(()),
            PublishPlan::NotDue => {
                tracing::debug!(target_path = %target.display(), "republish within the rotation poll interval; nothing to fetch");
                return Ok(());
            }
            PublishPlan::FirstMount | PublishPlan::Refetch => {}
        }
        report.republish = was_mounted;
        let class = self.class(&ctx).await?;
        // A class's provider name is tenant input: it becomes a metric label only once it names
        // a provider that exists, so classes cannot mint unbounded metric series.
        let provider = self.inner.providers.resolve(&class.spec.provider)?;
        report.provider = class.spec.provider.clone();
        if !was_mounted {
            on_blocking_pool({
                let (mounter, target) = (self.inner.mounter.clone(), target.clone());
                move || mounter.mount(&target)
            })
            .await?;
        }
        // Bounded, and abandoned as soon as kubelet unpublishes the volume: a provider that
        // never answers must not hold the volume (and the pod's teardown) hostage.
        let fill = self.fill_volume(req, &ctx, &class, provider.as_ref(), &target, was_mounted);
        let deadline = self.inner.publish_timeout;
        let result = tokio::select! {
            result = tokio::time::timeout(deadline, fill) => {
                result.unwrap_or(Err(PublishError::TimedOut { after: deadline }))
            }
            () = guard.preempted() => Err(PublishError::Unpublished),
        };
        if plan.starts_interval(result.is_ok()) {
            self.inner.rotation.attempted(&target, started);
        }
        match result {
            Ok(changed) if was_mounted => {
                self.rotated(&ctx, &report.provider, changed, started).await;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => {
                if !was_mounted {
                    // First mount failed: leave nothing behind so kubelet's retry starts clean.
                    let (mounter, t) = (self.inner.mounter.clone(), target.clone());
                    if let Err(e) = on_blocking_pool(move || mounter.unmount_and_remove(&t)).await {
                        tracing::warn!(target_path = %target.display(), error = %e, "cleanup after failed publish");
                    }
                }
                Err(e)
            }
        }
    }

    /// Checks what kubelet sent, before anything on the host is touched: a mount capability, a
    /// read-only filesystem volume, and a target that is exactly the `mount` directory of a CSI
    /// volume of the pod the volume context names.
    fn accept(
        &self,
        req: &PublishRequest,
        report: &mut PublishReport,
    ) -> Result<(PathBuf, VolumeContext), PublishError> {
        if !req.has_capability {
            return Err(PublishError::MissingCapability);
        }
        if req.volume_id.is_empty() {
            return Err(PublishError::MissingVolumeId);
        }
        if req.target_path.is_empty() {
            return Err(PublishError::MissingTargetPath);
        }
        let Some(kubelet_target) = self.kubelet_target(&req.target_path) else {
            return Err(PublishError::InvalidTargetPath(req.target_path.clone()));
        };
        if req.block {
            return Err(PublishError::BlockUnsupported);
        }
        let ctx = VolumeContext::parse(&req.volume_context, &req.secrets)?;
        report.pod = Some(ctx.clone());
        // kubelet names the target after the pod it mounts for; a request whose context names
        // another pod would mount (and record a status) in a directory that is not that pod's.
        if kubelet_target.pod_uid != ctx.pod_uid {
            return Err(PublishError::TargetOfAnotherPod {
                path: req.target_path.clone(),
                path_uid: kubelet_target.pod_uid,
                pod_uid: ctx.pod_uid.clone(),
            });
        }
        if !req.readonly {
            return Err(PublishError::NotReadOnly);
        }
        Ok((PathBuf::from(&req.target_path), ctx))
    }

    /// Counts a rotation that went through and, when the content changed, says so on the pod.
    async fn rotated(&self, ctx: &VolumeContext, provider: &str, changed: bool, started: Instant) {
        let seconds = started.elapsed().as_secs_f64();
        self.inner
            .metrics
            .rotation()
            .succeeded(provider, changed, seconds);
        if changed {
            let note = format!(
                "successfully rotated mounted contents for SecretProviderClass {}/{}",
                ctx.pod_namespace, ctx.secret_provider_class
            );
            self.inner
                .effects
                .event(
                    &pod_reference(ctx),
                    EventType::Normal,
                    ROTATION_COMPLETE_REASON,
                    "MountSecrets",
                    &note,
                )
                .await;
        }
    }

    async fn class(&self, ctx: &VolumeContext) -> Result<Arc<SecretProviderClass>, PublishError> {
        let (ns, name) = (&ctx.pod_namespace, &ctx.secret_provider_class);
        let class = self
            .inner
            .classes
            .get(ns, name)
            .await
            .map_err(|source| PublishError::ClassLookup {
                namespace: ns.clone(),
                name: name.clone(),
                source,
            })?
            .ok_or_else(|| PublishError::ClassNotFound {
                namespace: ns.clone(),
                name: name.clone(),
            })?;
        let invalid = |reason: &str| PublishError::ClassInvalid {
            namespace: ns.clone(),
            name: name.clone(),
            reason: reason.to_string(),
        };
        if class.spec.provider.is_empty() {
            return Err(invalid("spec.provider is empty"));
        }
        if class.spec.parameters.is_empty() {
            return Err(invalid("spec.parameters is empty"));
        }
        Ok(class)
    }
}

/// Runs a mount-table syscall (mount(2), umount(2), reading mountinfo) on the blocking pool: they
/// can stall on a busy host, and must not stall the runtime's workers (and every other volume's
/// publish) with them.
async fn on_blocking_pool<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, MountError> + Send + 'static,
) -> Result<T, MountError> {
    // A panicking syscall wrapper is a bug; its message is all that is known of the path.
    tokio::task::spawn_blocking(call).await.unwrap_or_else(|e| {
        Err(MountError::Io {
            op: "mount-table task",
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}
