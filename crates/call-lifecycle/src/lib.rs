//! The call's lifecycle decisions, pure and synchronous: no AWS SDK, no tokio, no clock of
//! its own. The transcriber Lambda (crate `call-transcriber`) reads the lease, asks these
//! rules what to do, and carries out what they say (the quinn-proto / quinn split).
//!
//! - [`lease`]: who may work on a call ([`lease::decide`]), the lease as stored
//!   ([`lease::LeaseRecord`]) and the attempts it counts. An attempt is counted when it claims
//!   the lease, so one that Lambda stopped (timeout, out of memory, crash) counts as much as
//!   one that failed cleanly.
//! - [`verdict`]: what becomes of a call after a failed attempt or a stalled run.
//! - [`sweep`]: calls nobody holds (an event Lambda lost, a last attempt that was stopped),
//!   found through their sweep time and rescued.
//! - [`call`] and [`delivered`]: what the lease keeps of a call (where the next invocation
//!   starts; what Kinesis has acknowledged).
//! - [`delivery`]: the events that start, hand over and rescue a call by naming it (its data
//!   stays in the lease: no customer data between functions), and the call a contact-flow
//!   event starts.
//! - [`hook`]: what the customer's lambda hook may change in a new call.
//!
//! `tests/simulation.rs` tries these rules against random schedules of the faults Lambda
//! documents (retries after errors, timeouts and crashes; duplicate, delayed and dropped
//! deliveries; clock jumps; the sweep) with invariants checked after every step.

pub mod call;
pub mod delivered;
pub mod delivery;
pub mod hook;
pub mod lease;
pub mod sweep;
pub mod verdict;

pub use call::{CallData, ContactLinks, NoCall};
pub use delivered::Delivered;
pub use lease::{Claim, Held, LeaseRecord, Limits, decide};
pub use verdict::{
    AfterFailure, AfterStall, MAX_PENDING_BYTES, Unpublished, after_failure, after_stall,
};
