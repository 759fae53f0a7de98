//! Prometheus metrics of the AWS provider.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of `api_calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiCallLabels {
    /// `secretsmanager`, `ssm` or `sts`.
    pub service: &'static str,
    /// The API operation, e.g. `BatchGetSecretValue`.
    pub operation: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// Labels of `credential_fetches_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    /// `sts` or `pod-identity`.
    pub source: &'static str,
}

/// Labels of `coalesced_lookups_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    /// `hit`, `wait` or `fetch`.
    pub result: &'static str,
}

#[derive(Default)]
struct Inner {
    api_calls: Family<ApiCallLabels, Counter>,
    credential_fetches: Family<CredentialLabels, Counter>,
    batch_denied: Counter,
    coalesced: Family<LookupLabels, Counter>,
    failovers: Counter,
}

/// Counters shared by every part of the provider (cheap to clone).
#[derive(Clone, Default)]
pub struct Metrics(Arc<Inner>);

impl Metrics {
    /// Registers the counters in `registry`, the sub-registry the binary hands the provider (its
    /// prefix, `aws_provider`, is the binary's choice).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "api_calls",
            "AWS API calls by service, operation and outcome",
            self.0.api_calls.clone(),
        );
        registry.register(
            "credential_fetches",
            "Credential fetches by source (sts, pod-identity); cache hits are not counted",
            self.0.credential_fetches.clone(),
        );
        registry.register(
            "batch_denied",
            "Identities for which BatchGetSecretValue was denied and GetSecretValue is used instead",
            self.0.batch_denied.clone(),
        );
        registry.register(
            "coalesced_lookups",
            "Object lookups by result: hit (cached), wait (joined an in-flight fetch), fetch",
            self.0.coalesced.clone(),
        );
        registry.register(
            "failovers",
            "Objects served from the failover region",
            self.0.failovers.clone(),
        );
    }

    /// Counts one AWS API call.
    pub fn api_call(&self, service: &'static str, operation: &'static str, outcome: &'static str) {
        self.0
            .api_calls
            .get_or_create(&ApiCallLabels {
                service,
                operation,
                outcome,
            })
            .inc();
    }

    /// Counts one credential fetch.
    pub fn credential_fetch(&self, source: &'static str) {
        self.0
            .credential_fetches
            .get_or_create(&CredentialLabels { source })
            .inc();
    }

    /// Counts an identity switching to per-secret calls.
    pub fn batch_denied(&self) {
        self.0.batch_denied.inc();
    }

    /// Counts a coalescer result.
    pub fn coalesced(&self, result: &'static str) {
        self.0
            .coalesced
            .get_or_create(&LookupLabels { result })
            .inc();
    }

    /// Counts an object served by the failover region.
    pub fn failover(&self) {
        self.0.failovers.inc();
    }

    /// Total API calls of one operation so far (for tests and the `check` command).
    pub fn api_calls_of(&self, operation: &'static str) -> u64 {
        let mut total = 0;
        for outcome in ["ok", "error"] {
            for service in ["secretsmanager", "ssm", "sts"] {
                // `get` (not `get_or_create`) so reading never adds empty series.
                total += self
                    .0
                    .api_calls
                    .get(&ApiCallLabels {
                        service,
                        operation,
                        outcome,
                    })
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
        m.coalesced("hit");
        let mut reg = Registry::default();
        m.register(reg.sub_registry_with_prefix("aws_provider"));
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        for needle in [
            r#"aws_provider_api_calls_total{service="secretsmanager",operation="BatchGetSecretValue",outcome="ok"} 1"#,
            "aws_provider_batch_denied_total 1",
            r#"aws_provider_credential_fetches_total{source="sts"} 1"#,
            r#"aws_provider_coalesced_lookups_total{result="hit"} 1"#,
        ] {
            assert!(out.contains(needle), "missing {needle} in\n{out}");
        }
        assert_eq!(m.api_calls_of("BatchGetSecretValue"), 1);
    }
}
