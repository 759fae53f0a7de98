//! One node-wide cap on AWS calls in flight (Secrets Manager, SSM, STS), so that a tenant with
//! many volumes cannot make the agent open hundreds of connections at once.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Default for [`crate::AwsProviderConfig::max_concurrent_aws_calls`].
pub const DEFAULT_MAX_CONCURRENT_AWS_CALLS: usize = 16;

/// A shared permit pool; clones share it. A permit is held only while a request is on the
/// network, never across a backoff sleep or a wait for another mount's fetch.
#[derive(Clone, Debug)]
pub struct CallLimit(Arc<Semaphore>);

impl CallLimit {
    /// At most `max` calls at once (at least one).
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max.max(1))))
    }

    /// Runs `call` once a permit is free.
    pub async fn run<F: Future>(&self, call: F) -> F::Output {
        // The semaphore is never closed, so acquiring cannot fail.
        let _permit = self
            .0
            .acquire()
            .await
            .expect("the call limit is never closed");
        call.await
    }
}

impl Default for CallLimit {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CONCURRENT_AWS_CALLS)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_cap() {
        let limit = CallLimit::new(3);
        let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let (limit, now, max) = (limit.clone(), now.clone(), max.clone());
                tokio::spawn(async move {
                    limit
                        .run(async {
                            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                            max.fetch_max(n, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            now.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 3);
        assert_eq!(CallLimit::new(0).0.available_permits(), 1);
    }
}
