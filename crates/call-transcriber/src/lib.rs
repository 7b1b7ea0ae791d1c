//! The call transcriber pipeline (in progress): configuration from the environment, the
//! sans-IO [`ContactGate`] (one call's audio out of a GetMedia event stream, fragment
//! bookkeeping for lossless resumes, the reason to stop) and [`TranscriptLedger`] (lossless,
//! duplicate-free Transcribe reconnects).

pub mod config;
mod gate;
pub mod lambda;
mod ledger;
pub mod pipeline;
pub mod publisher;
pub mod source;
pub mod transcribe;
pub mod usage;

pub use config::{ConfigError, TranscriberConfig};
pub use gate::{ContactGate, GateOutput, StopReason};
pub use ledger::{Placement, TranscriptLedger};
