//! What the edges of every function (the transcriber, StartLCA, the contact-event processor)
//! and the CLI share, written once: the SDK configuration with time limits on each request
//! ([`with_timeouts`]), an SDK error's text with its causes ([`error_text`]), the functions'
//! JSON logs ([`json_logs`]), the clock ([`now_ms`]), the reading of settings from the
//! environment ([`Settings`]) and the pause between retries ([`Backoff`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod backoff;

pub use backoff::{Backoff, Jitter};
/// A function's settings from its environment (the reads live with the call's settings).
pub use call_settings::{ConfigError, Settings};

/// `sdk` with time limits on every request: a hung connection to Kinesis, S3, DynamoDB,
/// Lambda or the KVS control plane fails that request (and its retry logic takes over)
/// instead of holding the call until the Lambda times out. The streaming calls (GetMedia,
/// Transcribe) are not under these limits: the source's idle timeout and the session's
/// own timers bound them (and the transcriber's own limit on the answer to a stream start).
pub fn with_timeouts(sdk: &aws_config::SdkConfig) -> aws_config::SdkConfig {
    with_limits(sdk, REQUEST_LIMITS)
}

/// Time limits on a request: connecting, one attempt, and all attempts with their pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Connecting to the endpoint.
    pub connect: Duration,
    /// One attempt.
    pub attempt: Duration,
    /// The request with the SDK's retries.
    pub total: Duration,
}

/// The limits of [`with_timeouts`].
pub const REQUEST_LIMITS: RequestLimits = RequestLimits {
    connect: REQUEST_CONNECT_TIMEOUT,
    attempt: REQUEST_ATTEMPT_TIMEOUT,
    total: REQUEST_TIMEOUT,
};

/// `sdk` with `limits` on every request (a function that must answer sooner than
/// [`with_timeouts`] allows, as StartLCA must answer Connect).
pub fn with_limits(sdk: &aws_config::SdkConfig, limits: RequestLimits) -> aws_config::SdkConfig {
    sdk.to_builder()
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(limits.connect)
                .operation_attempt_timeout(limits.attempt)
                .operation_timeout(limits.total)
                .build(),
        )
        .build()
}

/// Connecting to an AWS endpoint.
pub const REQUEST_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One attempt of a request (a 5 MiB S3 part, a 500-record PutRecords, the lambda hook).
pub const REQUEST_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// A request with the SDK's retries.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An error with its source chain, for messages (the Display of an SdkError alone says
/// little: "service error").
pub fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Sets up a function's logs: JSON lines on stderr (CloudWatch takes them as they are; a
/// local run keeps them apart from its output, and from the metrics lines on stdout), level
/// from `RUST_LOG` (default info) but never finer than [`call_metrics::FINEST_LOG_LEVEL`]
/// (no event payload, transcript or number in the log), no timestamps (Lambda adds its own).
pub fn json_logs() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .without_time()
        .with_writer(std::io::stderr)
        .finish()
        .with(call_metrics::FINEST_LOG_LEVEL)
        .init();
}

/// Epoch milliseconds now (0 before 1970: a clock that wrong fails no request by itself).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(Inner);
    #[derive(Debug)]
    struct Inner;
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("service error")
        }
    }
    impl std::fmt::Display for Inner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("AccessDeniedException: not allowed")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    impl std::error::Error for Inner {}

    #[test]
    fn an_error_text_carries_its_causes() {
        assert_eq!(
            error_text(&Outer(Inner)),
            "service error: AccessDeniedException: not allowed"
        );
    }

    #[test]
    fn every_request_has_time_limits() {
        let sdk = aws_config::SdkConfig::builder().build();
        let limits = with_timeouts(&sdk);
        let config = limits.timeout_config().expect("time limits");
        assert_eq!(config.connect_timeout(), Some(REQUEST_CONNECT_TIMEOUT));
        assert_eq!(
            config.operation_attempt_timeout(),
            Some(REQUEST_ATTEMPT_TIMEOUT)
        );
        assert_eq!(config.operation_timeout(), Some(REQUEST_TIMEOUT));
        assert!(now_ms() > 1_700_000_000_000);
    }
}
