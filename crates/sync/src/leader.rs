//! Leader election over a `coordination.k8s.io/v1` Lease, for the controllers that must run once
//! per cluster (`secrets-store controller`).
//!
//! Why not a crate: `kube-leader-election` needs kube 4, and `kube-lease-manager` (kube 5) takes an
//! expired lease by clearing it and then applying, with no resourceVersion precondition between
//! the read and the two writes, so two candidates can both believe they hold it until the next
//! renewal; it also compares the holder's `renewTime` with the local wall clock. This module
//! follows client-go's algorithm instead, which needs neither synchronised clocks nor luck:
//!
//! - Every write is a `replace` carrying the resourceVersion just read: of two candidates that
//!   read the same Lease, one write wins and the other gets 409 Conflict.
//! - A candidate takes a lease held by someone else only after seeing its record unchanged for
//!   the lease's duration, measured on its own monotonic clock from when it first saw that record.
//! - The leader renews every retry period and stops leading as soon as no renewal succeeded for
//!   the renew deadline (shorter than the lease duration), measured from the start of its last
//!   successful renewal: it steps down before any other candidate can have taken over.
//! - On shutdown the leader releases the lease (no holder, duration 1 s) so a standby takes over
//!   at its next try instead of waiting out the lease.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

/// Which Lease, who we are, and the timing of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the release namespace).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This process's identity, unique per process ([`unique_identity`]).
    pub identity: String,
    /// How long a standby waits, after last seeing the lease change, before taking it over.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal (< `lease_duration`).
    pub renew_deadline: Duration,
    /// How often candidates try to acquire and the leader renews (< `renew_deadline`).
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Refuses timings under which two leaders could overlap or the leader could not renew.
    pub fn validate(&self) -> Result<(), String> {
        if self.retry_period.is_zero() {
            return Err("the retry period must be positive".into());
        }
        if self.renew_deadline <= self.retry_period {
            return Err(format!(
                "the renew deadline ({:?}) must be longer than the retry period ({:?})",
                self.renew_deadline, self.retry_period
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(format!(
                "the lease duration ({:?}) must be longer than the renew deadline ({:?}), or a standby could take over while the leader still acts",
                self.lease_duration, self.renew_deadline
            ));
        }
        if self.lease_duration.as_secs() < 1 || self.lease_duration.as_secs() > i32::MAX as u64 {
            return Err(
                "the lease duration must be at least 1 s (the Lease stores whole seconds)".into(),
            );
        }
        if self.identity.is_empty() {
            return Err("the leader identity is empty".into());
        }
        Ok(())
    }
}

/// `<prefix>_<8 random hex digits>`: two processes never share an identity, even with one pod name.
pub fn unique_identity(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand::random::<u32>())
}

/// What a candidate may do with the Lease it just read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseStep {
    /// It holds the lease: renew it.
    Renew,
    /// Nobody holds it, or the holder's record has not changed for the lease duration: take it.
    Take,
    /// Someone else holds it and renewed it recently enough: wait.
    Wait,
}

/// The step for `me`, given the Lease's spec and how long this process has seen that exact spec
/// unchanged. `default_duration` applies when the Lease states none.
pub fn lease_step(
    spec: &LeaseSpec,
    me: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> LeaseStep {
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => LeaseStep::Renew,
        None | Some("") => LeaseStep::Take,
        Some(_) => {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(default_duration);
            if unchanged_for >= duration {
                LeaseStep::Take
            } else {
                LeaseStep::Wait
            }
        }
    }
}

/// Whether this process may act as leader right now, by its own clock: until the renew deadline
/// after the start of its last successful renewal. Leader-only work checks it before each write,
/// so a process that was paused (or cut off) past its deadline does not act on resuming, even
/// before its elector has noticed.
#[derive(Clone, Debug, Default)]
pub struct Leadership {
    valid_until: Arc<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// Whether the lease is held and its renew deadline has not passed.
    pub fn is_valid(&self) -> bool {
        self.valid_until
            .lock()
            .expect("leadership lock poisoned")
            .is_some_and(|until| Instant::now() < until)
    }

    fn extend_to(&self, until: Instant) {
        *self.valid_until.lock().expect("leadership lock poisoned") = Some(until);
    }

    fn revoke(&self) {
        *self.valid_until.lock().expect("leadership lock poisoned") = None;
    }
}

/// The result of one try.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// We hold the lease now.
    Held,
    /// Someone else holds it.
    Other,
    /// Our write lost a race (resourceVersion changed since the read): try again.
    Conflict,
}

/// Acquires, renews and releases one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The Lease spec last seen and when (this process's clock) it was first seen as such.
    observed: Option<(LeaseSpec, Instant)>,
    /// Start of the last successful acquire or renew.
    renewed_at: Option<Instant>,
    leadership: Leadership,
}

impl LeaderElector {
    /// An elector for `config` (call [`LeaseConfig::validate`] first) that keeps `leadership`
    /// up to date.
    pub fn new(client: Client, config: LeaseConfig, leadership: Leadership) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            renewed_at: None,
            leadership,
        }
    }

    /// Records a successful acquire or renew that started at `started`.
    fn renewed(&mut self, started: Instant) {
        self.renewed_at = Some(started);
        self.leadership
            .extend_to(started + self.config.renew_deadline);
    }

    /// Returns once this process holds the lease.
    pub async fn acquire(&mut self) {
        loop {
            let started = Instant::now();
            // Bounded, but not by the retry period: a slow API server must not starve acquisition.
            match tokio::time::timeout(self.config.renew_deadline, self.try_once()).await {
                Ok(Ok(Attempt::Held)) => {
                    self.renewed(started);
                    return;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, lease = %self.config.name, "reading or writing the leader Lease failed")
                }
                Err(_) => {
                    tracing::warn!(lease = %self.config.name, "the leader Lease request timed out")
                }
            }
            // Jitter keeps standbys from retrying in lockstep.
            let jitter = self
                .config
                .retry_period
                .mul_f64(rand::random_range(0.0..0.2));
            tokio::time::sleep_until(started + self.config.retry_period + jitter).await;
        }
    }

    /// Renews the lease every retry period; returns as soon as leadership is lost or can no longer
    /// be vouched for (no successful renewal within the renew deadline).
    pub async fn hold(&mut self) {
        let mut deadline =
            self.renewed_at.unwrap_or_else(Instant::now) + self.config.renew_deadline;
        loop {
            tokio::time::sleep_until((Instant::now() + self.config.retry_period).min(deadline))
                .await;
            let started = Instant::now();
            match tokio::time::timeout_at(deadline, self.try_once()).await {
                Ok(Ok(Attempt::Held)) => {
                    self.renewed(started);
                    deadline = started + self.config.renew_deadline;
                }
                Ok(Ok(Attempt::Other)) => {
                    tracing::warn!(lease = %self.config.name, "the leader Lease has another holder");
                    return;
                }
                Ok(Ok(Attempt::Conflict)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, lease = %self.config.name, "renewing the leader Lease failed")
                }
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                tracing::warn!(lease = %self.config.name, deadline = ?self.config.renew_deadline, "no renewal of the leader Lease within the renew deadline");
                return;
            }
        }
    }

    /// Gives the lease up (best effort, bounded by the renew deadline) so a standby need not wait
    /// for it to expire.
    pub async fn release(&mut self) {
        self.leadership.revoke();
        let release = async {
            let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.acquire_time = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(self.config.renew_deadline, release).await {
            Ok(Ok(())) => tracing::info!(lease = %self.config.name, "released the leader Lease"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "releasing the leader Lease failed; it expires by itself")
            }
            Err(_) => tracing::warn!("releasing the leader Lease timed out; it expires by itself"),
        }
    }

    /// One read, decision and (if allowed) write.
    async fn try_once(&mut self) -> Result<Attempt, kube::Error> {
        let me = self.config.identity.clone();
        let now = MicroTime(Timestamp::now());
        let duration = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_duration_seconds: Some(duration),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.spec.unwrap_or_default());
                    Ok(Attempt::Held)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let unchanged_for = self.observe(spec.clone());
        let mut next = spec.clone();
        match lease_step(&spec, &me, unchanged_for, self.config.lease_duration) {
            LeaseStep::Wait => return Ok(Attempt::Other),
            LeaseStep::Renew => {}
            LeaseStep::Take => {
                tracing::info!(lease = %self.config.name, previous = ?spec.holder_identity, "taking the leader Lease");
                next.holder_identity = Some(me);
                next.acquire_time = Some(now.clone());
                next.lease_transitions =
                    Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            }
        }
        next.renew_time = Some(now);
        next.lease_duration_seconds = Some(duration);
        lease.spec = Some(next);
        // `lease` carries the resourceVersion read above: a concurrent write makes this a 409.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(stored) => {
                self.observe(stored.spec.unwrap_or_default());
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Records `spec` as seen now; returns how long this exact spec has been seen unchanged.
    fn observe(&mut self, spec: LeaseSpec) -> Duration {
        let since = match &self.observed {
            Some((seen, since)) if *seen == spec => *since,
            _ => Instant::now(),
        };
        self.observed = Some((spec, since));
        since.elapsed()
    }
}

/// Why [`run_while_leader`] stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// A leader-only controller returned while leading; the lease was released so a standby
    /// takes over, and the process should exit (and be restarted).
    #[error("a leader-only controller stopped while leading; lease released")]
    WorkEnded,
}

/// Runs the futures `leading()` builds while this process holds the lease, until `shutdown`.
///
/// On losing the lease (or failing to renew it within the renew deadline) the futures are dropped
/// at once (every controller stops at its next await point) and the process becomes a candidate
/// again; a new leadership builds fresh futures. `leadership` tells the futures, at each write,
/// whether they may still act. `on_change` is told each change (for a metric).
pub async fn run_while_leader<F>(
    client: Client,
    config: LeaseConfig,
    leadership: Leadership,
    mut leading: F,
    shutdown: impl Future<Output = ()>,
    on_change: impl Fn(bool),
) -> Result<(), LeaderError>
where
    F: FnMut() -> Vec<BoxFuture<'static, ()>>,
{
    enum Ended {
        Shutdown,
        Lost,
        Work,
    }
    let identity = config.identity.clone();
    let mut elector = LeaderElector::new(client, config, leadership.clone());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = elector.acquire() => {}
        }
        tracing::info!(%identity, "leading: starting the leader-only controllers");
        on_change(true);
        let work = join_all(leading());
        let ended = tokio::select! {
            // Losing the lease wins over anything the controllers would do in the same wakeup.
            biased;
            () = &mut shutdown => Ended::Shutdown,
            () = elector.hold() => Ended::Lost,
            _ = work => Ended::Work,
        };
        // The leader-only futures were dropped with the select above (their spawned reconciles
        // are aborted, and check `leadership` before each write until they are).
        leadership.revoke();
        on_change(false);
        match ended {
            Ended::Shutdown => {
                elector.release().await;
                return Ok(());
            }
            Ended::Lost => {
                tracing::warn!(%identity, "no longer leading: leader-only controllers stopped");
            }
            Ended::Work => {
                elector.release().await;
                return Err(LeaderError::WorkEnded);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, seconds: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: seconds,
            ..Default::default()
        }
    }

    #[test]
    fn candidates_take_only_free_or_silent_leases() {
        let s = Duration::from_secs;
        let default = s(15);
        for (what, lease, unchanged_for, want) in [
            ("ours", spec(Some("me"), Some(15)), s(100), LeaseStep::Renew),
            (
                "ours, just renewed",
                spec(Some("me"), Some(15)),
                s(0),
                LeaseStep::Renew,
            ),
            ("free", spec(None, None), s(0), LeaseStep::Take),
            ("released", spec(Some(""), Some(1)), s(0), LeaseStep::Take),
            (
                "other, fresh",
                spec(Some("b"), Some(15)),
                s(3),
                LeaseStep::Wait,
            ),
            (
                "other, just under",
                spec(Some("b"), Some(15)),
                s(15) - Duration::from_millis(1),
                LeaseStep::Wait,
            ),
            (
                "other, silent for the duration",
                spec(Some("b"), Some(15)),
                s(15),
                LeaseStep::Take,
            ),
            (
                "other, its own shorter duration",
                spec(Some("b"), Some(5)),
                s(6),
                LeaseStep::Take,
            ),
            (
                "other, no duration: ours applies",
                spec(Some("b"), None),
                s(10),
                LeaseStep::Wait,
            ),
            (
                "other, no duration, silent",
                spec(Some("b"), None),
                s(16),
                LeaseStep::Take,
            ),
            (
                "other, negative duration: ours applies",
                spec(Some("b"), Some(-1)),
                s(10),
                LeaseStep::Wait,
            ),
        ] {
            assert_eq!(
                lease_step(&lease, "me", unchanged_for, default),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn timings_that_could_overlap_are_refused() {
        let config = |lease, renew, retry| LeaseConfig {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs_f64(lease),
            renew_deadline: Duration::from_secs_f64(renew),
            retry_period: Duration::from_secs_f64(retry),
        };
        assert!(config(15.0, 10.0, 2.0).validate().is_ok());
        assert!(config(4.0, 3.0, 0.5).validate().is_ok());
        assert!(config(10.0, 10.0, 2.0).validate().is_err());
        assert!(config(15.0, 2.0, 2.0).validate().is_err());
        assert!(config(15.0, 10.0, 0.0).validate().is_err());
        assert!(config(0.9, 0.5, 0.1).validate().is_err());
    }

    #[test]
    fn leadership_expires_at_its_deadline_and_on_revoke() {
        let leadership = Leadership::default();
        assert!(
            !leadership.is_valid(),
            "nobody leads before the first acquire"
        );
        leadership.extend_to(Instant::now() + Duration::from_secs(60));
        assert!(leadership.is_valid());
        leadership.extend_to(Instant::now() - Duration::from_millis(1));
        assert!(!leadership.is_valid(), "past the renew deadline");
        leadership.extend_to(Instant::now() + Duration::from_secs(60));
        leadership.revoke();
        assert!(!leadership.is_valid());
    }

    #[test]
    fn identities_are_unique_per_process() {
        let a = unique_identity("pod-a");
        assert!(
            a.starts_with("pod-a_") && a.len() == "pod-a_".len() + 8,
            "{a}"
        );
        assert_ne!(unique_identity("pod-a"), unique_identity("pod-a"));
    }
}
