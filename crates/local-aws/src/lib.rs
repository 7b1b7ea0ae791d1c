//! Local stand-ins for the AWS services no emulator covers, speaking their real wire
//! protocols so that the unmodified AWS SDK clients are what tests and the demo exercise.
//! Only the endpoint differs. Everything binds to loopback.
//!
//! So far: Kinesis Video Streams ([`kvs`]): the control plane (GetDataEndpoint,
//! DescribeStream, CreateStream, ListStreams) and the media plane: GetMedia with every start
//! selector and live delivery, PutMedia with its acknowledgements and documented errors, an
//! in-process producer, KVS's errors and injected faults (with a record of those applied);
//! Transcribe Streaming ([`transcribe`]) with pluggable recognizers; Lambda ([`lambda`]) over
//! the Runtime API, with Event retries and faults on demand;
//! Connect's DescribeUser ([`connect`]); Transcribe's StartCallAnalyticsJob
//! ([`call_analytics`]); and, for Kinesis, a fault proxy in front of moto
//! ([`kinesis_faults`]) and an embedded producer-side stand-in ([`kinesis`]).

pub mod call_analytics;
pub mod connect;
pub mod http;
pub mod kinesis;
pub mod kinesis_faults;
pub mod kvs;
pub mod lambda;
pub mod moto;
pub mod recognizer;
pub mod transcribe;

/// An SDK configuration for clients of a local endpoint: region us-east-1, dummy static
/// credentials (the local services accept any), `url` as the endpoint of every service.
pub fn sdk_config(url: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::Credentials::new(
                    "AKIDLOCAL",
                    "local",
                    None,
                    None,
                    "local-aws",
                ),
            ),
        )
        .endpoint_url(url)
        .build()
}

/// Locks a mutex, carrying on past poisoning: a panic elsewhere while it was held cannot leave
/// the services' bookkeeping in a state worse than serving on with it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
