//! Classifying AWS SDK errors: what happened, whether retrying or failing over can help.
//!
//! moto (and some proxies) answer 403 with an XML body under `text/html`, which the SDK cannot
//! parse into an error code, so the HTTP status decides before the code does.

use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;

/// What kind of failure an AWS call had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// 403 / AccessDenied: the identity may not do this.
    AccessDenied,
    /// The credentials are expired or unknown (refresh them once).
    BadCredentials,
    /// The object (or version) does not exist.
    NotFound,
    /// Throttled (retry with backoff).
    Throttled,
    /// 5xx, connection or timeout failure (retry; then failover).
    Unavailable,
    /// Anything else (bad request, decryption failure...).
    Other,
}

/// A classified error with a message safe for Events and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    /// The class.
    pub kind: Class,
    /// AWS's code and message, or the transport failure.
    pub message: String,
}

impl Classified {
    /// Whether the same call may succeed later (retry) or elsewhere (failover region).
    pub fn retryable(&self) -> bool {
        matches!(self.kind, Class::Throttled | Class::Unavailable)
    }
}

/// Classifies an SDK error.
pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> Classified
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = |e: &SdkError<E, HttpResponse>| match e {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("");
            let msg = s.err().message().unwrap_or("");
            let status = s.raw().status().as_u16();
            match (code, msg) {
                ("", "") => format!("HTTP {status}"),
                ("", m) => format!("HTTP {status}: {m}"),
                (c, "") => c.to_string(),
                (c, m) => format!("{c}: {m}"),
            }
        }
        other => DisplayErrorContext(other).to_string(),
    };
    let kind = match err {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            classify_code(s.err().code().unwrap_or(""), status)
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Class::Unavailable,
        SdkError::ResponseError(r) => {
            if r.raw().status().as_u16() == 403 {
                Class::AccessDenied
            } else {
                Class::Unavailable
            }
        }
        _ => Class::Other,
    };
    Classified {
        kind,
        message: message(err),
    }
}

/// Classifies by AWS error code and HTTP status.
pub fn classify_code(code: &str, status: u16) -> Class {
    match code {
        "ExpiredToken"
        | "ExpiredTokenException"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException"
        | "InvalidSignatureException" => Class::BadCredentials,
        c if c.starts_with("AccessDenied") || c == "InvalidIdentityToken" => Class::AccessDenied,
        "ResourceNotFoundException"
        | "ParameterNotFound"
        | "ParameterVersionNotFound"
        | "ParameterVersionLabelNotFound" => Class::NotFound,
        "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "ThrottledException" => Class::Throttled,
        "InternalServiceError"
        | "InternalServerError"
        | "InternalFailure"
        | "ServiceUnavailable" => Class::Unavailable,
        _ => match status {
            403 => Class::AccessDenied,
            429 => Class::Throttled,
            500..=599 => Class::Unavailable,
            _ => Class::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let cases = [
            ("AccessDeniedException", 400, Class::AccessDenied),
            ("AccessDenied", 403, Class::AccessDenied),
            ("", 403, Class::AccessDenied),
            ("ResourceNotFoundException", 400, Class::NotFound),
            ("ParameterNotFound", 400, Class::NotFound),
            ("ParameterVersionNotFound", 400, Class::NotFound),
            ("ThrottlingException", 400, Class::Throttled),
            ("", 429, Class::Throttled),
            ("InternalServiceError", 500, Class::Unavailable),
            ("", 503, Class::Unavailable),
            ("ExpiredTokenException", 400, Class::BadCredentials),
            ("UnrecognizedClientException", 400, Class::BadCredentials),
            ("ValidationException", 400, Class::Other),
            ("DecryptionFailure", 400, Class::Other),
        ];
        for (code, status, want) in cases {
            assert_eq!(classify_code(code, status), want, "{code} {status}");
        }
        let c = Classified {
            kind: Class::Throttled,
            message: String::new(),
        };
        assert!(c.retryable());
        let c = Classified {
            kind: Class::NotFound,
            message: String::new(),
        };
        assert!(!c.retryable());
    }
}
