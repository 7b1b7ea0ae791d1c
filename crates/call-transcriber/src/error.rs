//! [`HandlerError`]: why an invocation of the transcriber failed (Lambda retries a failed
//! Event invocation), and how the metrics break it down ([`HandlerError::reason`]). In a module
//! of its own, so that the handler ([`crate::lambda`]) and its metrics ([`crate::metrics`])
//! both use it without depending on each other.

use call_lifecycle::NoCall;
use call_lifecycle::delivery::EventError;
use call_metrics::FailureReason;
use lca_events::connect::Rejection;

use crate::lease::LeaseError;
use crate::pipeline::PipelineError;
use crate::recording::RecordingError;
use crate::source::SourceError;
use crate::transcribe::TranscribeError;

/// Why an invocation failed (Lambda retries a failed Event invocation).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event is neither a contact-flow event nor a continuation.
    #[error("unusable event: {0}")]
    Event(String),
    /// The contact cannot be transcribed.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A contact attribute is not allowed or not valid (StartLCA refuses these: the two
    /// functions' settings differ).
    #[error(transparent)]
    Attribute(#[from] call_settings::AttributeError),
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The lease table failed.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The recording failed (the retry records this invocation's audio again).
    #[error(transparent)]
    Recording(#[from] RecordingError),
    /// The lambda hook failed (the call is not processed, as in the reference).
    #[error("lambda hook {function}: {message}")]
    Hook {
        /// The hook function.
        function: String,
        /// What went wrong.
        message: String,
    },
    /// Every attempt Lambda makes of the call's invocation claimed it and stopped without
    /// giving it up (timeouts, out of memory, crashes): the call is given up.
    #[error(
        "call {call_id}: all {attempts} attempts of its invocation stopped (Lambda timeouts, out of memory or crashes; see their REPORT lines and errors in the log) without finishing it: the call is given up"
    )]
    AttemptsUsedUp {
        /// The call.
        call_id: String,
        /// The attempts that stopped.
        attempts: u32,
    },
    /// A given-up call's END or recording URL is still refused by Kinesis.
    #[error(
        "call {call_id}: given up, and Kinesis still refuses its END or its recording's URL; kept in the lease and delivered again by the sweep (check the LCA stream and the function's kinesis:PutRecord permission)"
    )]
    EndPending {
        /// The call.
        call_id: String,
    },
    /// The next invocation could not be started: the rest of the call is not transcribed.
    #[error("call {call_id}: invoking {function} to continue failed: {message}")]
    HandOver {
        /// The call.
        call_id: String,
        /// This function.
        function: String,
        /// The error.
        message: String,
    },
}

impl From<EventError> for HandlerError {
    fn from(error: EventError) -> Self {
        match error {
            EventError::Unusable(message) => Self::Event(message),
            EventError::NoCall(NoCall::Rejected(rejection)) => Self::Rejected(rejection),
            EventError::NoCall(NoCall::Attribute(error)) => Self::Attribute(error),
            // The handler answers before: not a failure.
            EventError::NoCall(no_call @ NoCall::NotTranscribed { .. }) => {
                Self::Event(no_call.to_string())
            }
        }
    }
}

impl HandlerError {
    /// Why the invocation failed, as the metrics break failures down.
    pub fn reason(&self) -> FailureReason {
        match self {
            Self::Event(_) | Self::Rejected(_) | Self::Attribute(_) => FailureReason::Event,
            Self::Pipeline(PipelineError::Source(SourceError::Stream(_))) => {
                FailureReason::KvsStream
            }
            Self::Pipeline(PipelineError::Source(_)) => FailureReason::KvsRead,
            Self::Pipeline(PipelineError::Transcribe(TranscribeError::Capacity { .. })) => {
                FailureReason::TranscribeCapacity
            }
            Self::Pipeline(PipelineError::Transcribe(TranscribeError::Stuck { .. })) => {
                FailureReason::TranscribeStuck
            }
            Self::Pipeline(PipelineError::Transcribe(_)) => FailureReason::Transcribe,
            Self::Pipeline(PipelineError::Undelivered { .. }) => FailureReason::Kinesis,
            Self::Lease(_) => FailureReason::Lease,
            Self::Recording(_) => FailureReason::Recording,
            Self::Hook { .. } => FailureReason::Hook,
            Self::HandOver { .. } => FailureReason::HandOver,
            Self::AttemptsUsedUp { .. } => FailureReason::Stopped,
            Self::EndPending { .. } => FailureReason::Kinesis,
        }
    }

    /// The id of the KVS error chunk that failed the run, if that is what failed it. Ids
    /// KVS does not document are reported as `unlisted` (a dimension's values stay few).
    pub fn kvs_error_id(&self) -> Option<&str> {
        match self {
            Self::Pipeline(PipelineError::Source(SourceError::Stream(error))) => {
                let id = error.id.trim();
                Some(if error.is_documented() {
                    id
                } else {
                    "unlisted"
                })
            }
            // Retried errors (5000, 4503) that kept coming until the attempts ran out.
            Self::Pipeline(PipelineError::Source(SourceError::GetMedia {
                kvs_error: Some(id),
                ..
            })) => Some(id.as_str()),
            _ => None,
        }
    }
}
