//! The one error type of calls to Microsoft Graph, with stable reason codes, sanitized messages
//! (status and Graph's error code; the client-request-id and request-id of a failed call are
//! logged where it failed; never tokens, secrets or bodies), and how each
//! maps onto a job outcome.
//!
//! Sources: https://learn.microsoft.com/graph/errors, .../graph/throttling (429 and Retry-After,
//! 503/504 transient).

use std::time::Duration;

use crate::vault::tokens::TokenServiceError;

/// Why a Graph call failed.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// 429 (or 503 with Retry-After) after the in-request retries: try again after the wait.
    #[error("throttled by Microsoft Graph ({code}); retry after {retry_after:?}")]
    Throttled {
        /// How long Graph asked to wait (backoff when it did not say).
        retry_after: Duration,
        /// Graph's error code.
        code: String,
    },
    /// 401: the token was refused.
    #[error("Microsoft Graph refused the token ({code})")]
    Unauthorized {
        /// Graph's error code.
        code: String,
    },
    /// 403.
    #[error("Microsoft Graph denied access ({code})")]
    Forbidden {
        /// Graph's error code, e.g. `ErrorAccessDenied`, `Authorization_RequestDenied`.
        code: String,
        /// An Exchange application access policy or RBAC for Applications denied the mailbox.
        access_policy: bool,
    },
    /// 404.
    #[error("not found in Microsoft Graph ({code})")]
    NotFound {
        /// Graph's error code.
        code: String,
    },
    /// 409.
    #[error("conflict in Microsoft Graph ({code})")]
    Conflict {
        /// Graph's error code.
        code: String,
    },
    /// 5xx, timeouts and connection errors after the in-request retries.
    #[error("Microsoft Graph is unavailable ({detail})")]
    Transient {
        /// Status or transport error kind.
        detail: String,
        /// How long to wait before trying again.
        retry_after: Duration,
    },
    /// Any other 4xx: retrying will not help.
    #[error("Microsoft Graph rejected the request: HTTP {status} {code}")]
    Permanent {
        /// HTTP status.
        status: u16,
        /// Graph's error code.
        code: String,
    },
    /// No token could be had (consent, sign-in, vault, identity platform).
    #[error(transparent)]
    Token(#[from] TokenServiceError),
}

impl GraphError {
    /// Stable reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            GraphError::Throttled { .. } => "throttled",
            GraphError::Unauthorized { .. } => "unauthorized",
            GraphError::Forbidden {
                access_policy: true,
                ..
            } => "access_policy_denied",
            GraphError::Forbidden { .. } => "forbidden",
            GraphError::NotFound { .. } => "not_found",
            GraphError::Conflict { .. } => "conflict",
            GraphError::Transient { .. } => "transient",
            GraphError::Permanent { .. } => "permanent",
            GraphError::Token(err) => err.reason_code(),
        }
    }
}

/// Parses `Retry-After`: seconds (Graph sends fractions such as `2.128`) or an HTTP date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(86_400.0)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn retry_after_accepts_seconds_fractions_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("2.128", now),
            Some(Duration::from_millis(2128))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        let _ = SystemTime::now();
    }
}
