//! Local stand-ins for the AWS services no emulator covers, speaking their real wire
//! protocols so that the unmodified AWS SDK clients are what tests and the demo exercise.
//! Only the endpoint differs. Everything binds to loopback.
//!
//! So far: Kinesis Video Streams ([`kvs`]): the control plane (GetDataEndpoint,
//! DescribeStream, CreateStream, ListStreams) and the media plane (GetMedia) with every start
//! selector, live delivery from an in-process producer, and KVS's errors.

pub mod http;
pub mod kinesis_faults;
pub mod kvs;
pub mod lambda;
pub mod moto;
pub mod recognizer;
pub mod transcribe;

/// Locks a mutex, carrying on past poisoning: a panic elsewhere while it was held cannot leave
/// the services' bookkeeping in a state worse than serving on with it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
