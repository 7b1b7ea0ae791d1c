//! Transcribe's results mapped onto the call exactly once, pure and synchronous: no AWS SDK,
//! no tokio, no clock of its own. The transcriber's session loop (crate `call-transcriber`)
//! tells the ledger what it sent, hands each answer to [`map_output`], and publishes what
//! comes out.
//!
//! - [`TranscriptLedger`]: what a session was sent and has answered, so that a session cut
//!   mid-call is resumed without losing audio, resending audio already transcribed, or
//!   publishing a segment twice.
//! - [`map_output`]: one answer ([`SessionOutput`], Transcribe's results without the SDK's
//!   types) placed on the call and mapped to LCA messages.

mod ledger;
mod results;

pub use ledger::{Placement, TranscriptLedger};
pub use results::{Mapped, SessionOutput, map_output};
