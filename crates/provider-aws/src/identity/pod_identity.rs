//! EKS Pod Identity: the node-local agent exchanges the pod's `pods.eks.amazonaws.com` token for
//! credentials of the role associated with the pod's ServiceAccount.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::IdentityError;
use crate::params::AddressType;

/// The agent's IPv4 endpoint on EKS nodes.
pub const DEFAULT_IPV4_URL: &str = "http://169.254.170.23/v1/credentials";
/// The agent's IPv6 endpoint on EKS nodes.
pub const DEFAULT_IPV6_URL: &str = "http://[fd00:ec2::23]/v1/credentials";

/// Where the agent listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentityAgentConfig {
    /// IPv4 URL of the credentials endpoint.
    pub ipv4_url: String,
    /// IPv6 URL of the credentials endpoint.
    pub ipv6_url: String,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

impl Default for PodIdentityAgentConfig {
    fn default() -> Self {
        Self {
            ipv4_url: DEFAULT_IPV4_URL.into(),
            ipv6_url: DEFAULT_IPV6_URL.into(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The agent's JSON answer (the container credentials format).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentCredentials {
    access_key_id: String,
    secret_access_key: String,
    token: String,
    expiration: Option<String>,
}

/// A client for the Pod Identity Agent.
pub struct PodIdentityAgent {
    config: PodIdentityAgentConfig,
    client: Client<HttpConnector, Empty<&'static [u8]>>,
}

impl PodIdentityAgent {
    /// A client for the agent at `config`.
    pub fn new(config: PodIdentityAgentConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        Self {
            config,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Exchanges the pod's token for credentials, trying the address families `preference` allows.
    pub async fn credentials(
        &self,
        token: &str,
        preference: AddressType,
    ) -> Result<Credentials, IdentityError> {
        let urls: &[&str] = match preference {
            AddressType::Ipv4 => &[&self.config.ipv4_url],
            AddressType::Ipv6 => &[&self.config.ipv6_url],
            AddressType::Auto => &[&self.config.ipv4_url, &self.config.ipv6_url],
        };
        let mut errors = Vec::new();
        for url in urls {
            match self.fetch(url, token).await {
                Ok(c) => return Ok(c),
                // A refusal is the agent's answer; another address would say the same.
                Err(Attempt::Refused(e)) => return Err(IdentityError::PodIdentity(e)),
                Err(Attempt::Unreachable(e)) => errors.push(format!("{url}: {e}")),
            }
        }
        Err(IdentityError::PodIdentity(format!(
            "agent unreachable: {}",
            errors.join("; ")
        )))
    }

    async fn fetch(&self, url: &str, token: &str) -> Result<Credentials, Attempt> {
        let req = http::Request::get(url)
            .header(http::header::AUTHORIZATION, token)
            .body(Empty::new())
            .map_err(|e| Attempt::Refused(format!("bad agent URL {url}: {e}")))?;
        let resp = tokio::time::timeout(self.config.timeout, self.client.request(req))
            .await
            .map_err(|_| Attempt::Unreachable("timed out".into()))?
            .map_err(|e| Attempt::Unreachable(e.to_string()))?;
        let status = resp.status();
        let body = tokio::time::timeout(self.config.timeout, resp.into_body().collect())
            .await
            .map_err(|_| Attempt::Unreachable("timed out reading the answer".into()))?
            .map_err(|e| Attempt::Unreachable(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            // The agent's error bodies are short JSON messages, never credentials.
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(Attempt::Refused(format!("{url} answered {status}: {text}")));
        }
        let c: AgentCredentials = serde_json::from_slice(&body)
            .map_err(|_| Attempt::Refused(format!("{url} answered with unexpected JSON")))?;
        let expiry = c.expiration.as_deref().and_then(parse_rfc3339);
        Ok(Credentials::new(
            c.access_key_id,
            c.secret_access_key,
            Some(c.token),
            expiry,
            "eks-pod-identity",
        ))
    }
}

enum Attempt {
    Refused(String),
    Unreachable(String),
}

fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    aws_smithy_types::DateTime::from_str(s, aws_smithy_types::date_time::Format::DateTime)
        .ok()
        .and_then(|d| SystemTime::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_parses() {
        assert!(parse_rfc3339("2030-01-01T00:00:00Z").is_some());
        assert!(parse_rfc3339("soon").is_none());
    }

    #[tokio::test]
    async fn unreachable_agent_is_a_clear_error_on_both_families() {
        // Port 9 on loopback: nothing listens (connection refused, no network needed).
        let agent = PodIdentityAgent::new(PodIdentityAgentConfig {
            ipv4_url: "http://127.0.0.1:9/v1/credentials".into(),
            ipv6_url: "http://[::1]:9/v1/credentials".into(),
            timeout: Duration::from_secs(2),
        });
        let err = agent
            .credentials("tok-secret", AddressType::Auto)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("agent unreachable"), "{err}");
        assert!(
            err.contains("127.0.0.1:9") && err.contains("[::1]:9"),
            "{err}"
        );
        assert!(!err.contains("tok-secret"), "{err}");
    }
}
