//! Adapters between the [`Provider`](crate::Provider) trait and upstream's
//! `v1alpha1.CSIDriverProvider` gRPC API on a unix socket.
//!
//! - [`client::ExternalProvider`]: a `Provider` that forwards mounts to an external provider
//!   process (any upstream-compatible provider, e.g. Vault, Azure, GCP, or upstream AWS).
//! - [`server::serve`]: serves any `Provider` over that API, so the upstream Go driver can use
//!   our providers.
//!
//! The wire contract matches upstream v1.6: `attributes` and `secrets` are JSON objects of
//! strings, `permission` is the decimal file mode as a JSON number (`"420"`), and a response
//! with an `error.code`, or without object versions, is a failed mount.

pub mod client;
pub mod server;

use tonic::Code;

use crate::{ProviderError, ProviderErrorKind};

/// The `version` both sides put in `VersionRequest`/`VersionResponse`.
pub const API_VERSION: &str = "v1alpha1";

/// Default limit on a provider's `MountResponse` (upstream's `--max-call-recv-msg-size` default).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// The gRPC status code of a provider error: what our provider server sends, and what the node
/// service answers kubelet with.
pub fn kind_to_code(kind: ProviderErrorKind) -> Code {
    match kind {
        ProviderErrorKind::InvalidParameters => Code::InvalidArgument,
        ProviderErrorKind::Unauthenticated => Code::Unauthenticated,
        ProviderErrorKind::PermissionDenied => Code::PermissionDenied,
        ProviderErrorKind::NotFound => Code::NotFound,
        ProviderErrorKind::Throttled => Code::ResourceExhausted,
        ProviderErrorKind::Unavailable => Code::Unavailable,
        ProviderErrorKind::InvalidResponse | ProviderErrorKind::Internal => Code::Internal,
    }
}

/// The error kind of a gRPC status received from a provider.
///
/// Transport failures (socket missing, connection refused or reset) surface as `Unavailable`.
fn code_to_kind(code: Code) -> ProviderErrorKind {
    match code {
        Code::InvalidArgument | Code::FailedPrecondition => ProviderErrorKind::InvalidParameters,
        Code::Unauthenticated => ProviderErrorKind::Unauthenticated,
        Code::PermissionDenied => ProviderErrorKind::PermissionDenied,
        Code::NotFound => ProviderErrorKind::NotFound,
        Code::ResourceExhausted => ProviderErrorKind::Throttled,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
            ProviderErrorKind::Unavailable
        }
        _ => ProviderErrorKind::Internal,
    }
}

/// The error kind of an `error.code` string. Our own server never sends one (it sends a gRPC
/// status with the message instead), but other providers do, with free-form codes; codes that
/// spell one of our kinds keep their meaning, anything else is `Internal`.
fn error_code_to_kind(code: &str) -> ProviderErrorKind {
    use ProviderErrorKind::*;
    [
        InvalidParameters,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        Throttled,
        Unavailable,
        InvalidResponse,
        Internal,
    ]
    .into_iter()
    .find(|k| k.as_str() == code)
    .unwrap_or(Internal)
}

/// Longest provider-supplied text we pass on (error codes and messages end up in Events).
const MAX_FOREIGN_TEXT: usize = 1024;

/// Makes text that came from another process safe to put in an error: removes every occurrence
/// of the request's sensitive strings (in case a provider echoes a token or secret back), drops
/// control characters and caps the length.
fn scrub(text: &str, sensitive: &[String]) -> String {
    let mut out = text.to_owned();
    for s in sensitive {
        if !s.is_empty() {
            out = out.replace(s.as_str(), "<redacted>");
        }
    }
    let mut out: String = out
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_FOREIGN_TEXT {
        let mut cut = MAX_FOREIGN_TEXT;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

impl ProviderError {
    /// The gRPC status our server sends for this error. The message is already safe by
    /// [`ProviderError`]'s contract.
    fn to_status(&self) -> tonic::Status {
        tonic::Status::new(kind_to_code(self.kind), self.message.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_survive_a_status_round_trip() {
        use ProviderErrorKind::*;
        for kind in [
            InvalidParameters,
            Unauthenticated,
            PermissionDenied,
            NotFound,
            Throttled,
            Unavailable,
            Internal,
        ] {
            assert_eq!(code_to_kind(kind_to_code(kind)), kind);
        }
        // Upstream Go providers return plain errors, which arrive as Unknown.
        assert_eq!(code_to_kind(Code::Unknown), Internal);
    }

    #[test]
    fn error_codes_map_to_kinds() {
        assert_eq!(error_code_to_kind("NotFound"), ProviderErrorKind::NotFound);
        assert_eq!(
            error_code_to_kind("SecretNotFoundError"),
            ProviderErrorKind::Internal
        );
    }

    #[test]
    fn scrub_removes_sensitive_strings_and_caps_length() {
        let sensitive = vec!["eyJtoken".to_string(), "hunter2".to_string()];
        let out = scrub("bad token eyJtoken for\nhunter2", &sensitive);
        assert_eq!(out, "bad token <redacted> for <redacted>");
        let long = "é".repeat(2000);
        let out = scrub(&long, &[]);
        assert!(out.len() <= MAX_FOREIGN_TEXT + '…'.len_utf8());
        assert!(out.ends_with('…'));
    }
}
