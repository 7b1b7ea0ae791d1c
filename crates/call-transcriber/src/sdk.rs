//! The AWS SDK configuration every client of the transcriber shares: time limits on each
//! request ([`with_timeouts`]).

use std::time::Duration;

/// `sdk` with time limits on every request: a hung connection to Kinesis, S3, DynamoDB,
/// Lambda or the KVS control plane fails that request (and its retry logic takes over)
/// instead of holding the call until the Lambda times out. The streaming calls (GetMedia,
/// Transcribe) are not under these limits: the source's idle timeout and the session's
/// own timers bound them.
pub fn with_timeouts(sdk: &aws_config::SdkConfig) -> aws_config::SdkConfig {
    sdk.to_builder()
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(REQUEST_CONNECT_TIMEOUT)
                .operation_attempt_timeout(REQUEST_ATTEMPT_TIMEOUT)
                .operation_timeout(REQUEST_TIMEOUT)
                .build(),
        )
        .build()
}

/// Connecting to an AWS endpoint.
const REQUEST_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One attempt of a request (a 5 MiB S3 part, a 500-record PutRecords, the lambda hook).
const REQUEST_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// A request with the SDK's retries.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
