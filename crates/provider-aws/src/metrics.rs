//! Prometheus metrics of the AWS provider.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

#[derive(Default)]
struct Inner {
    api_calls: Family<Labels, Counter>,
    credential_fetches: Family<Labels, Counter>,
    batch_denied: Counter,
    coalesced: Family<Labels, Counter>,
    failovers: Counter,
}

/// Counters shared by every part of the provider (cheap to clone).
#[derive(Clone, Default)]
pub struct Metrics(Arc<Inner>);

impl Metrics {
    /// Registers the counters under `registry` (the binary adds its prefix).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("aws_provider");
        r.register(
            "api_calls",
            "AWS API calls by service, operation and outcome",
            self.0.api_calls.clone(),
        );
        r.register(
            "credential_fetches",
            "Credential fetches by source (sts, pod-identity); cache hits are not counted",
            self.0.credential_fetches.clone(),
        );
        r.register(
            "batch_denied",
            "Identities for which BatchGetSecretValue was denied and GetSecretValue is used instead",
            self.0.batch_denied.clone(),
        );
        r.register(
            "coalesced_lookups",
            "Object lookups by result: hit (cached), wait (joined an in-flight fetch), fetch",
            self.0.coalesced.clone(),
        );
        r.register(
            "failovers",
            "Objects served from the failover region",
            self.0.failovers.clone(),
        );
    }

    /// Counts one AWS API call.
    pub fn api_call(&self, service: &str, operation: &str, outcome: &str) {
        self.0
            .api_calls
            .get_or_create(&vec![
                ("service".into(), service.into()),
                ("operation".into(), operation.into()),
                ("outcome".into(), outcome.into()),
            ])
            .inc();
    }

    /// Counts one credential fetch.
    pub fn credential_fetch(&self, source: &str) {
        self.0
            .credential_fetches
            .get_or_create(&vec![("source".into(), source.into())])
            .inc();
    }

    /// Counts an identity switching to per-secret calls.
    pub fn batch_denied(&self) {
        self.0.batch_denied.inc();
    }

    /// Counts a coalescer result.
    pub fn coalesced(&self, result: &str) {
        self.0
            .coalesced
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
    }

    /// Counts an object served by the failover region.
    pub fn failover(&self) {
        self.0.failovers.inc();
    }

    /// Total API calls of one operation so far (for tests and the `check` command).
    pub fn api_calls_of(&self, operation: &str) -> u64 {
        let mut total = 0;
        for outcome in ["ok", "error"] {
            for service in ["secretsmanager", "ssm", "sts"] {
                // `get` (not `get_or_create`) so reading never adds empty series.
                total += self
                    .0
                    .api_calls
                    .get(&vec![
                        ("service".into(), service.into()),
                        ("operation".into(), operation.into()),
                        ("outcome".into(), outcome.into()),
                    ])
                    .map(|c| c.get())
                    .unwrap_or(0);
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn registered_counters_are_exported() {
        let m = Metrics::default();
        m.api_call("secretsmanager", "BatchGetSecretValue", "ok");
        m.batch_denied();
        m.credential_fetch("sts");
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        assert!(
            out.contains(
                r#"aws_provider_api_calls_total{service="secretsmanager",operation="BatchGetSecretValue",outcome="ok"} 1"#
            ),
            "{out}"
        );
        assert!(out.contains("aws_provider_batch_denied_total 1"), "{out}");
        assert_eq!(m.api_calls_of("BatchGetSecretValue"), 1);
    }
}
