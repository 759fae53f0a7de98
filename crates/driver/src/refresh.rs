//! Self-driven rotation. kubelet republishes `requiresRepublish` volumes only once per sync
//! period (about a minute by default, 61–68 s measured), so a rotated secret used to reach a pod
//! after the poll interval *plus* that period. The node service therefore remembers each mounted
//! volume's last successful publish request — with the pod's tokens, in memory only, replaced by
//! every kubelet republish and dropped on unpublish — and republishes it itself once the volume's
//! poll interval has elapsed, as long as those tokens stay valid for a while. kubelet's own
//! republishes keep coming and keep the tokens fresh; a volume whose tokens are about to expire
//! simply waits for kubelet.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::node::PublishRequest;
use crate::volume_context::TOKENS_KEY;

/// A remembered request is republished only if its tokens are valid at least this much longer
/// (the provider's identity check and STS refuse a token about to expire).
pub const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// The last successful publish request per mounted volume.
#[derive(Default)]
pub struct Remembered {
    requests: Mutex<HashMap<PathBuf, PublishRequest>>,
}

impl std::fmt::Debug for Remembered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remembered")
            .field("volumes", &self.lock().len())
            .finish()
    }
}

impl Remembered {
    /// Keeps `request` (the latest one kubelet sent for its target).
    pub fn remember(&self, target: &Path, request: &PublishRequest) {
        self.lock().insert(target.to_path_buf(), request.clone());
    }

    /// Whether a request is kept for `target`.
    pub fn contains(&self, target: &Path) -> bool {
        self.lock().contains_key(target)
    }

    /// Drops what is kept for `target` (unpublished).
    pub fn forget(&self, target: &Path) {
        self.lock().remove(target);
    }

    /// The kept requests whose tokens stay valid past `now + TOKEN_MARGIN`, and that `due` says
    /// are due for a fetch.
    pub fn refreshable(
        &self,
        now: DateTime<Utc>,
        due: impl Fn(&Path) -> bool,
    ) -> Vec<PublishRequest> {
        let margin = chrono::Duration::from_std(TOKEN_MARGIN).expect("small duration");
        self.lock()
            .iter()
            .filter(|(target, _)| due(target))
            .filter(|(_, req)| tokens_expire(req).is_none_or(|at| at > now + margin))
            .map(|(_, req)| req.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, PublishRequest>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// When the first of the request's ServiceAccount tokens expires; `None` when it carries none.
/// Unreadable token JSON counts as already expired: only kubelet can fix it.
pub fn tokens_expire(req: &PublishRequest) -> Option<DateTime<Utc>> {
    #[derive(serde::Deserialize)]
    struct Token {
        #[serde(rename = "expirationTimestamp")]
        expiration: DateTime<Utc>,
    }
    let raw = req
        .secrets
        .get(TOKENS_KEY)
        .or_else(|| req.volume_context.get(TOKENS_KEY))?;
    match serde_json::from_str::<HashMap<String, Token>>(raw) {
        Ok(tokens) => tokens.values().map(|t| t.expiration).min(),
        Err(_) => Some(DateTime::<Utc>::MIN_UTC),
    }
}

/// How often the refresh loop looks for due volumes: a tenth of the poll interval, within
/// 1–30 s, so a rotation lands at most that much after the interval.
pub fn tick(poll_interval: Duration) -> Duration {
    (poll_interval / 10).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, tokens: Option<&str>, in_secrets: bool) -> PublishRequest {
        let mut req = PublishRequest {
            target_path: target.into(),
            ..PublishRequest::default()
        };
        if let Some(t) = tokens {
            let map = if in_secrets {
                &mut req.secrets
            } else {
                &mut req.volume_context
            };
            map.insert(TOKENS_KEY.into(), t.into());
        }
        req
    }

    fn tokens(expiry: &str) -> String {
        format!(
            r#"{{"sts.amazonaws.com":{{"token":"t","expirationTimestamp":"{expiry}"}},"pods.eks.amazonaws.com":{{"token":"u","expirationTimestamp":"2030-01-01T00:00:00Z"}}}}"#
        )
    }

    #[test]
    fn token_expiry_is_the_earliest_of_either_field() {
        let t = tokens("2026-12-01T16:00:00Z");
        let want = Some("2026-12-01T16:00:00Z".parse().unwrap());
        assert_eq!(tokens_expire(&request("/t", Some(&t), true)), want);
        assert_eq!(tokens_expire(&request("/t", Some(&t), false)), want);
        assert_eq!(tokens_expire(&request("/t", None, false)), None);
        assert_eq!(
            tokens_expire(&request("/t", Some("not json"), true)),
            Some(DateTime::<Utc>::MIN_UTC)
        );
    }

    #[test]
    fn only_due_volumes_with_lasting_tokens_are_refreshed() {
        let now: DateTime<Utc> = "2026-12-01T15:00:00Z".parse().unwrap();
        let kept = Remembered::default();
        let cases = [
            ("/fresh", Some(tokens("2026-12-01T15:59:00Z"))),
            ("/expiring", Some(tokens("2026-12-01T15:00:30Z"))),
            ("/expired", Some(tokens("2026-12-01T14:00:00Z"))),
            ("/no-tokens", None),
            ("/not-due", Some(tokens("2026-12-01T15:59:00Z"))),
            ("/bad-json", Some("{".to_string())),
        ];
        for (target, t) in &cases {
            kept.remember(Path::new(target), &request(target, t.as_deref(), true));
        }
        let mut got: Vec<String> = kept
            .refreshable(now, |p| p != Path::new("/not-due"))
            .into_iter()
            .map(|r| r.target_path)
            .collect();
        got.sort();
        assert_eq!(got, ["/fresh", "/no-tokens"]);

        kept.forget(Path::new("/fresh"));
        let got = kept.refreshable(now, |_| true);
        assert!(got.iter().all(|r| r.target_path != "/fresh"));
    }

    #[test]
    fn a_newer_request_replaces_the_kept_one() {
        let kept = Remembered::default();
        let now: DateTime<Utc> = "2026-12-01T15:00:00Z".parse().unwrap();
        let old = tokens("2026-12-01T15:00:10Z");
        let new = tokens("2026-12-01T16:00:00Z");
        kept.remember(Path::new("/v"), &request("/v", Some(&old), true));
        assert!(kept.refreshable(now, |_| true).is_empty());
        kept.remember(Path::new("/v"), &request("/v", Some(&new), true));
        assert_eq!(kept.refreshable(now, |_| true).len(), 1);
    }

    #[test]
    fn tick_is_a_tenth_of_the_interval_within_bounds() {
        assert_eq!(tick(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(tick(Duration::from_secs(120)), Duration::from_secs(12));
        assert_eq!(tick(Duration::from_secs(3600)), Duration::from_secs(30));
    }
}
