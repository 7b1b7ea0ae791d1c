//! The call transcriber pipeline (in progress): so far the sans-IO [`ContactGate`], which turns
//! a GetMedia event stream into one call's audio, fragment bookkeeping for lossless resumes,
//! and the reason to stop.

mod gate;

pub use gate::{ContactGate, GateOutput, StopReason};
