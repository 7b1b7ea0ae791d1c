//! The call transcriber: configuration from the environment, the sans-IO cores
//! ([`ContactGate`]: one call's audio out of a GetMedia event stream and the fragment
//! bookkeeping for lossless resumes; from `transcript-ledger`, the lossless, duplicate-free
//! mapping of Transcribe's results across reconnects; from `call-lifecycle`, [`Delivered`] and [`lease::decide`]: one consumer per
//! call, crash retries without duplicates), the AWS edges around them ([`pipeline`], [`recording`], [`lease`],
//! [`post_call`]) and the Lambda handler ([`lambda`]).

pub mod call;
pub mod config;
pub mod delivery_record;
pub mod error;
mod gate;
pub mod lambda;
pub mod lanes;
pub mod metrics;
pub mod pipeline;
pub mod post_call;
pub mod progress;
pub mod publisher;
mod quiet;
pub mod recording;
pub mod source;
pub mod sweep;
pub mod transcribe;
pub mod usage;

pub use call_lease as lease;
pub use call_lifecycle::delivered;
pub use call_lifecycle::delivery;
pub use call_lifecycle::{Delivered, Limits};
pub use config::{ConfigError, TranscriberConfig};
pub use gate::{ContactGate, GateOutput, StopReason};
