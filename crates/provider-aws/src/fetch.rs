//! Fetching objects for one identity in one region: node-level coalescing in front of batched
//! calls (BatchGetSecretValue for 2–20 secrets, GetSecretValue for one alone, GetParameters
//! ≤ 10), run concurrently, with jittered exponential backoff on throttling and 5xx, bounded by
//! the mount's deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use futures::future::join_all;
use rand::Rng;
use tokio::time::Instant;

use crate::arn::ObjectKind;
use crate::call_limit::CallLimit;
use crate::calls::{self, SsmRequest};
use crate::coalesce::{Claim, Coalescer, Lookup};
use crate::errors::{Class, Classified};
use crate::identity::IdentityKey;
use crate::metrics::Metrics;
use crate::params::VersionSelector;
use crate::render::FetchedValue;

/// Secrets Manager's BatchGetSecretValue limit.
pub const SM_BATCH: usize = 20;
/// SSM GetParameters limit.
pub const SSM_BATCH: usize = 10;

/// One object to fetch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectRequest {
    /// Service.
    pub kind: ObjectKind,
    /// Name or ARN.
    pub name: String,
    /// Version.
    pub selector: VersionSelector,
}

/// The coalescing key: never shared across identities (the identity includes the region).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    identity: IdentityKey,
    object: ObjectRequest,
}

/// One object's outcome; errors are cheap to clone and share with coalesced waiters.
pub type FetchResult = Result<FetchedValue, Classified>;

/// Retry and caching knobs.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// How long a fetched value serves other mounts of the same identity.
    pub cache_ttl: Duration,
    /// How long a denied BatchGetSecretValue is remembered per identity.
    pub batch_denied_ttl: Duration,
    /// Attempts per call (1 = no retry), further bounded by the deadline.
    pub max_attempts: u32,
    /// First backoff; doubled per attempt, with full jitter.
    pub backoff_base: Duration,
    /// Longest single backoff.
    pub backoff_cap: Duration,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(5),
            batch_denied_ttl: Duration::from_secs(15 * 60),
            max_attempts: 4,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(2),
        }
    }
}

/// Fetches objects; shared by every mount on the node.
pub struct Fetcher {
    base: SdkConfig,
    config: FetchConfig,
    limit: CallLimit,
    metrics: Metrics,
    coalescer: Arc<Coalescer<ObjectKey, FetchResult>>,
    batch_denied: Mutex<HashMap<IdentityKey, Instant>>,
}

enum Pending {
    Done(FetchResult),
    Wait(crate::coalesce::Waiter<FetchResult>),
    Claimed(usize),
}

/// Which call fetches which object (indices into the requested objects).
#[derive(Debug, Default, PartialEq, Eq)]
struct CallPlan {
    /// BatchGetSecretValue calls, 2 to [`SM_BATCH`] current secrets each.
    sm_batches: Vec<Vec<usize>>,
    /// GetSecretValue calls: pinned versions, a current secret alone, or every secret of an
    /// identity whose batch was denied.
    singles: Vec<usize>,
    /// GetParameters calls, up to [`SSM_BATCH`] distinct names each.
    ssm_batches: Vec<Vec<usize>>,
    /// GetParameter calls (parameters named by ARN).
    ssm_singles: Vec<usize>,
}

impl CallPlan {
    /// Groups `objects` into calls; `batch_ok` is false while the identity's batch is denied.
    fn new(objects: &[ObjectRequest], batch_ok: bool) -> Self {
        let mut plan = Self::default();
        for (i, o) in objects.iter().enumerate() {
            match o.kind {
                ObjectKind::SecretsManager if batch_ok && o.selector.is_latest() => {
                    match plan.sm_batches.last_mut() {
                        Some(b) if b.len() < SM_BATCH => b.push(i),
                        _ => plan.sm_batches.push(vec![i]),
                    }
                }
                ObjectKind::SecretsManager => plan.singles.push(i),
                ObjectKind::SsmParameter if o.name.starts_with("arn:") => plan.ssm_singles.push(i),
                ObjectKind::SsmParameter => {
                    // A batch never holds one name twice: answers are matched by name.
                    let slot = plan.ssm_batches.iter_mut().find(|b| {
                        b.len() < SSM_BATCH && b.iter().all(|&j| objects[j].name != o.name)
                    });
                    match slot {
                        Some(b) => b.push(i),
                        None => plan.ssm_batches.push(vec![i]),
                    }
                }
            }
        }
        // A batch of one is one call either way, and GetSecretValue is the cheaper one for
        // Secrets Manager to serve. It needs only secretsmanager:GetSecretValue, which
        // BatchGetSecretValue needs for each secret anyway, so it is never less permitted.
        let (batches, lone): (Vec<_>, Vec<_>) = std::mem::take(&mut plan.sm_batches)
            .into_iter()
            .partition(|b| b.len() > 1);
        plan.sm_batches = batches;
        plan.singles.extend(lone.into_iter().flatten());
        plan
    }
}

impl Fetcher {
    /// A fetcher using `base` (endpoints, HTTP client; no credentials); its calls take permits
    /// from `limit`.
    pub fn new(base: SdkConfig, config: FetchConfig, limit: CallLimit, metrics: Metrics) -> Self {
        Self {
            base,
            config,
            limit,
            metrics,
            coalescer: Arc::default(),
            batch_denied: Mutex::new(HashMap::new()),
        }
    }

    /// Drops expired values every `period` until the fetcher is dropped (see
    /// [`Coalescer::spawn_sweeper`]).
    pub fn spawn_sweeper(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        self.coalescer.spawn_sweeper(period)
    }

    /// Fetches `objects` as `identity` (in `identity.region`), one result per object, in order.
    pub async fn fetch(
        &self,
        identity: &IdentityKey,
        creds: &Credentials,
        objects: &[ObjectRequest],
        deadline: Instant,
    ) -> Vec<FetchResult> {
        let mut claims: Vec<Claim<ObjectKey, FetchResult>> = Vec::new();
        let mut pending = Vec::with_capacity(objects.len());
        for object in objects {
            let key = ObjectKey {
                identity: identity.clone(),
                object: object.clone(),
            };
            pending.push(match self.coalescer.lookup(&key) {
                Lookup::Hit(v) => {
                    self.metrics.coalesced("hit");
                    Pending::Done(v)
                }
                Lookup::Wait(w) => {
                    self.metrics.coalesced("wait");
                    Pending::Wait(w)
                }
                Lookup::Claimed(c) => {
                    self.metrics.coalesced("fetch");
                    claims.push(c);
                    Pending::Claimed(claims.len() - 1)
                }
            });
        }

        let claimed: Vec<ObjectRequest> = claims.iter().map(|c| c.key().object.clone()).collect();
        let fetched = self
            .fetch_uncached(identity, creds, &claimed, deadline)
            .await;
        let mut fetched: Vec<Option<FetchResult>> = fetched.into_iter().map(Some).collect();
        for (claim, result) in claims.into_iter().zip(fetched.iter()) {
            let result = result.clone().expect("one result per claim");
            let ttl = if result.is_ok() {
                self.config.cache_ttl
            } else {
                Duration::ZERO
            };
            claim.complete(result, ttl);
        }

        let mut out = Vec::with_capacity(objects.len());
        for (object, p) in objects.iter().zip(pending) {
            out.push(match p {
                Pending::Done(v) => v,
                Pending::Claimed(i) => fetched[i].take().expect("taken once"),
                Pending::Wait(w) => match w.wait().await {
                    Some(v) => v,
                    // The fetching mount gave up (cancelled); fetch this one ourselves.
                    None => {
                        let key = ObjectKey {
                            identity: identity.clone(),
                            object: object.clone(),
                        };
                        let ttl = self.config.cache_ttl;
                        self.coalescer
                            .get_or_fetch(
                                &key,
                                |r| if r.is_ok() { ttl } else { Duration::ZERO },
                                || async {
                                    let one = std::slice::from_ref(object);
                                    self.fetch_uncached(identity, creds, one, deadline)
                                        .await
                                        .pop()
                                        .expect("one result")
                                },
                            )
                            .await
                    }
                },
            });
        }
        out
    }

    /// Fetches without the coalescer: groups into batches and runs them concurrently.
    async fn fetch_uncached(
        &self,
        identity: &IdentityKey,
        creds: &Credentials,
        objects: &[ObjectRequest],
        deadline: Instant,
    ) -> Vec<FetchResult> {
        if objects.is_empty() {
            return Vec::new();
        }
        let region = identity.region.as_str();
        let sm = calls::secretsmanager(&self.base, creds, region);
        let ssm = calls::ssm(&self.base, creds, region);
        let batch_ok = !self.batch_is_denied(identity);

        let CallPlan {
            sm_batches,
            singles,
            ssm_batches,
            ssm_singles,
        } = CallPlan::new(objects, batch_ok);

        let mut jobs: Vec<futures::future::BoxFuture<'_, Vec<(usize, FetchResult)>>> = Vec::new();
        for batch in sm_batches {
            let (sm, objects) = (&sm, objects);
            jobs.push(Box::pin(async move {
                let ids: Vec<String> = batch.iter().map(|&i| objects[i].name.clone()).collect();
                let r = self
                    .retrying(deadline, "secretsmanager", "BatchGetSecretValue", || {
                        calls::batch_get_secret_value(sm, region, &ids)
                    })
                    .await;
                match r {
                    Ok(results) => batch.into_iter().zip(results).collect(),
                    Err(e) if e.kind == Class::AccessDenied => {
                        self.remember_batch_denied(identity, &e);
                        join_all(batch.into_iter().map(|i| async move {
                            (i, self.get_one(sm, region, &objects[i], deadline).await)
                        }))
                        .await
                    }
                    Err(e) => batch.into_iter().map(|i| (i, Err(e.clone()))).collect(),
                }
            }));
        }
        for i in singles {
            let sm = &sm;
            jobs.push(Box::pin(async move {
                vec![(i, self.get_one(sm, region, &objects[i], deadline).await)]
            }));
        }
        for batch in ssm_batches {
            let ssm = &ssm;
            jobs.push(Box::pin(async move {
                let reqs: Vec<SsmRequest> = batch
                    .iter()
                    .map(|&i| SsmRequest {
                        name: objects[i].name.clone(),
                        selector: objects[i].selector.clone(),
                    })
                    .collect();
                let r = self
                    .retrying(deadline, "ssm", "GetParameters", || {
                        calls::get_parameters(ssm, region, &reqs)
                    })
                    .await;
                match r {
                    Ok(results) => batch.into_iter().zip(results).collect(),
                    Err(e) => batch.into_iter().map(|i| (i, Err(e.clone()))).collect(),
                }
            }));
        }

        for i in ssm_singles {
            let ssm = &ssm;
            jobs.push(Box::pin(async move {
                let req = SsmRequest {
                    name: objects[i].name.clone(),
                    selector: objects[i].selector.clone(),
                };
                let r = self
                    .retrying(deadline, "ssm", "GetParameter", || {
                        calls::get_parameter(ssm, region, &req)
                    })
                    .await;
                vec![(i, r)]
            }));
        }

        let mut out: Vec<Option<FetchResult>> = vec![None; objects.len()];
        for (i, r) in join_all(jobs).await.into_iter().flatten() {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.expect("every object is in exactly one job"))
            .collect()
    }

    async fn get_one(
        &self,
        sm: &aws_sdk_secretsmanager::Client,
        region: &str,
        o: &ObjectRequest,
        deadline: Instant,
    ) -> FetchResult {
        self.retrying(deadline, "secretsmanager", "GetSecretValue", || {
            calls::get_secret_value(sm, region, &o.name, &o.selector)
        })
        .await
    }

    /// Runs `call` with jittered exponential backoff on retryable failures, within `deadline`.
    async fn retrying<T, F, Fut>(
        &self,
        deadline: Instant,
        service: &'static str,
        operation: &'static str,
        mut call: F,
    ) -> Result<T, Classified>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Classified>>,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            // Waiting for a permit counts against the deadline; the permit is released before
            // any backoff sleep.
            let r = match tokio::time::timeout(remaining, self.limit.run(call())).await {
                Ok(r) => r,
                Err(_) => Err(Classified {
                    kind: Class::Unavailable,
                    message: format!("{operation} did not finish before the mount deadline"),
                }),
            };
            let outcome = if r.is_ok() { "ok" } else { "error" };
            self.metrics.api_call(service, operation, outcome);
            let err = match r {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !err.retryable() || attempt >= self.config.max_attempts {
                return Err(err);
            }
            let cap = self
                .config
                .backoff_base
                .saturating_mul(1 << attempt.min(16))
                .min(self.config.backoff_cap);
            let sleep = cap.mul_f64(rand::rng().random_range(0.0..=1.0));
            if Instant::now() + sleep >= deadline {
                return Err(err);
            }
            tracing::debug!(operation, attempt, error = %err.message, "retrying AWS call");
            tokio::time::sleep(sleep).await;
        }
    }

    fn batch_is_denied(&self, identity: &IdentityKey) -> bool {
        let map = self.batch_denied.lock().unwrap_or_else(|p| p.into_inner());
        map.get(identity)
            .is_some_and(|until| *until > Instant::now())
    }

    fn remember_batch_denied(&self, identity: &IdentityKey, e: &Classified) {
        let mut map = self.batch_denied.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let fresh = map.get(identity).is_none_or(|until| *until <= now);
        map.insert(identity.clone(), now + self.config.batch_denied_ttl);
        if fresh {
            self.metrics.batch_denied();
            tracing::warn!(
                identity = %identity,
                error = %e.message,
                "BatchGetSecretValue is denied for this identity; using GetSecretValue per secret \
                 (grant secretsmanager:BatchGetSecretValue to save API calls)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn fetcher() -> Fetcher {
        Fetcher::new(
            SdkConfig::builder().build(),
            FetchConfig::default(),
            CallLimit::default(),
            Metrics::default(),
        )
    }

    fn err(kind: Class) -> Classified {
        Classified {
            kind,
            message: format!("{kind:?}"),
        }
    }

    #[test]
    fn calls_are_planned_by_kind_version_and_count() {
        let sm = |name: &str| ObjectRequest {
            kind: ObjectKind::SecretsManager,
            name: name.into(),
            selector: VersionSelector::default(),
        };
        let pinned = |name: &str| ObjectRequest {
            selector: VersionSelector {
                version: None,
                label: Some("AWSPREVIOUS".into()),
            },
            ..sm(name)
        };
        let ssm = |name: &str| ObjectRequest {
            kind: ObjectKind::SsmParameter,
            ..sm(name)
        };
        let plan =
            |sm_batches: Vec<Vec<usize>>, singles: Vec<usize>, ssm_batches: Vec<Vec<usize>>| {
                CallPlan {
                    sm_batches,
                    singles,
                    ssm_batches,
                    ssm_singles: Vec::new(),
                }
            };
        let many: Vec<ObjectRequest> = (0..21).map(|i| sm(&format!("s{i}"))).collect();
        let cases = [
            // One current secret alone: GetSecretValue, never a batch of one.
            ("one", vec![sm("a")], true, plan(vec![], vec![0], vec![])),
            (
                "two",
                vec![sm("a"), sm("b")],
                true,
                plan(vec![vec![0, 1]], vec![], vec![]),
            ),
            // A pinned version beside one current secret: two GetSecretValue.
            (
                "one current, one pinned",
                vec![sm("a"), pinned("b")],
                true,
                plan(vec![], vec![1, 0], vec![]),
            ),
            // 21 current secrets: a full batch, and the 21st alone.
            (
                "21",
                many.clone(),
                true,
                plan(vec![(0..20).collect()], vec![20], vec![]),
            ),
            // While the batch is denied: GetSecretValue each.
            (
                "denied",
                vec![sm("a"), sm("b")],
                false,
                plan(vec![], vec![0, 1], vec![]),
            ),
            // SSM keeps its batch of one (GetParameters costs what GetParameter costs).
            (
                "ssm one",
                vec![ssm("/p")],
                true,
                plan(vec![], vec![], vec![vec![0]]),
            ),
        ];
        for (name, objects, batch_ok, want) in cases {
            assert_eq!(CallPlan::new(&objects, batch_ok), want, "{name}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_and_5xx_are_retried_denials_and_not_found_are_not() {
        let f = fetcher();
        let far = Instant::now() + Duration::from_secs(60);
        let cases = [
            // (failures before success, failure class, expected attempts, expect success)
            (2, Class::Throttled, 3, true),
            (3, Class::Unavailable, 4, true),
            (10, Class::Throttled, 4, false),
            (1, Class::AccessDenied, 1, false),
            (1, Class::NotFound, 1, false),
            (1, Class::BadCredentials, 1, false),
        ];
        for (failures, class, want_attempts, want_ok) in cases {
            let calls = AtomicU32::new(0);
            let r = f
                .retrying(far, "secretsmanager", "GetSecretValue", || async {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    if n <= failures {
                        Err(err(class))
                    } else {
                        Ok(n)
                    }
                })
                .await;
            assert_eq!(calls.load(Ordering::SeqCst), want_attempts, "{class:?}");
            assert_eq!(r.is_ok(), want_ok, "{class:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_retries_and_hung_calls() {
        let f = fetcher();
        // A call that never answers is cut at the deadline and reported as unavailable.
        let r: Result<(), _> = f
            .retrying(
                Instant::now() + Duration::from_secs(2),
                "ssm",
                "GetParameters",
                std::future::pending,
            )
            .await;
        let e = r.unwrap_err();
        assert_eq!(e.kind, Class::Unavailable);
        assert!(e.message.contains("deadline"), "{}", e.message);
        // With the deadline already passed, a throttled call is not retried.
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = f
            .retrying(Instant::now(), "ssm", "GetParameters", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(err(Class::Throttled))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_mounts_never_exceed_the_node_wide_call_limit() {
        let limit = CallLimit::new(4);
        // Two fetchers sharing one limit, as every mount and the identity resolver share it.
        let fetchers = [0, 1].map(|_| {
            Fetcher::new(
                SdkConfig::builder().build(),
                FetchConfig::default(),
                limit.clone(),
                Metrics::default(),
            )
        });
        let far = Instant::now() + Duration::from_secs(60);
        let (in_flight, max, calls) = (AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0));
        let mounts = (0..64).map(|i| {
            let (in_flight, max, calls) = (&in_flight, &max, &calls);
            let attempts = AtomicU32::new(0);
            let f = &fetchers[i % 2];
            async move {
                f.retrying(far, "secretsmanager", "GetSecretValue", || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    // Every other mount is throttled once: its backoff holds no permit.
                    if i % 2 == 1 && attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                        Err(err(Class::Throttled))
                    } else {
                        Ok(())
                    }
                })
                .await
            }
        });
        let results = join_all(mounts).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(calls.load(Ordering::SeqCst), 96);
        assert_eq!(max.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_denied_batch_is_remembered_per_identity_only() {
        let f = fetcher();
        let key = |role: &str| IdentityKey {
            role: role.into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
            region: "us-east-1".into(),
        };
        assert!(!f.batch_is_denied(&key("a")));
        f.remember_batch_denied(&key("a"), &err(Class::AccessDenied));
        f.remember_batch_denied(&key("a"), &err(Class::AccessDenied));
        assert!(f.batch_is_denied(&key("a")));
        assert!(!f.batch_is_denied(&key("b")));
    }
}
