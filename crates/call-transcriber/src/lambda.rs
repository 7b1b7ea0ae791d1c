//! The call transcriber as a Lambda function: a new call from a contact-flow event, or a call
//! continued from an earlier invocation (`{"action":"LAMBDA_CONTINUE","callData":{...}}`).
//! Before the invocation's time runs out it stops at a fragment boundary, flushes, and
//! invokes itself with where to continue, so a call of any length is transcribed exactly once.
//!
//! Not yet here (issue #5): the lambda hook, the one-consumer-per-call lease, the S3 recording.

use std::time::Duration;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use lca_events::StartCall;
use lca_events::connect::{ContactFlowEvent, Rejection};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::pipeline::{CallPipeline, CallPosition, CallSpec, Ending, PipelineError, Taps};
use crate::source::StartAt;

/// A call as it is handed from one invocation to the next (the continuation's `callData`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallData {
    /// LCA CallId.
    pub call_id: String,
    /// Connect ContactId (the stream's ContactId tags).
    pub contact_id: String,
    /// Caller's number.
    pub from_number: String,
    /// Number dialled.
    pub to_number: String,
    /// The agent, when known.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The call's KVS stream.
    pub stream_arn: String,
    /// The contact's first fragment.
    pub start_fragment_number: String,
    /// The last fragment fully processed (absent before the first hand-over).
    #[serde(default)]
    pub last_fragment: Option<String>,
    /// The Transcribe session id to reuse.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Producer timestamp (ns) of the call's first sample.
    #[serde(default)]
    pub origin_ns: Option<i64>,
    /// Samples of the call already transcribed.
    #[serde(default)]
    pub start_sample: u64,
    /// Invocations so far minus one (0 for the first).
    #[serde(default)]
    pub lambda_count: u32,
}

impl CallData {
    /// Where this invocation starts reading.
    pub fn position(&self) -> CallPosition {
        CallPosition {
            start: match &self.last_fragment {
                Some(last) => StartAt::After(last.clone()),
                None => StartAt::Fragment(self.start_fragment_number.clone()),
            },
            session_id: self.session_id.clone(),
            origin_ns: self.origin_ns,
            start_sample: self.start_sample,
        }
    }
}

/// Invocations of one call after which it is given up as a runaway (the reference's limit).
pub const MAX_LAMBDA_COUNT: u32 = 30;

/// Time kept back from the Lambda's deadline for flushing Transcribe and Kinesis and
/// invoking the next function.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(30);

/// What the handler needs.
#[derive(Debug, Clone)]
pub struct Transcriber {
    /// The pipeline (configuration and clients).
    pub pipeline: CallPipeline,
    /// Invokes the next invocation of this function.
    pub lambda: aws_sdk_lambda::Client,
}

/// Why an invocation failed (Lambda retries a failed Event invocation).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event is neither a contact-flow event nor a continuation.
    #[error("unusable event: {0}")]
    Event(String),
    /// The contact cannot be transcribed.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
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

impl Transcriber {
    /// Handles one invocation. `function_arn` is this function (for the hand-over);
    /// `lambda_deadline` is when Lambda stops it.
    pub async fn handle(
        &self,
        event: Value,
        function_arn: &str,
        lambda_deadline: Instant,
    ) -> Result<Value, HandlerError> {
        let config = &self.pipeline.config;
        let (call, start_event) = if event.get("action").and_then(Value::as_str)
            == Some("LAMBDA_CONTINUE")
        {
            let call: CallData = serde_json::from_value(event["callData"].clone())
                .map_err(|e| HandlerError::Event(format!("LAMBDA_CONTINUE callData: {e}")))?;
            if call.lambda_count > MAX_LAMBDA_COUNT {
                tracing::error!(call_id = %call.call_id, lambda_count = call.lambda_count, "runaway call: not continued");
                return Ok(
                    json!({"status": "STOPPED", "reason": "runaway", "callId": call.call_id}),
                );
            }
            (call, None)
        } else {
            let instance = config.connect_instance_arn.as_deref().unwrap_or_else(|| {
                event["Details"]["ContactData"]["InstanceARN"]
                    .as_str()
                    .unwrap_or_default()
            });
            let contact = ContactFlowEvent::streaming_contact(&event, instance)?;
            let parsed: ContactFlowEvent =
                serde_json::from_value(event).map_err(|e| HandlerError::Event(e.to_string()))?;
            let data = parsed.details.contact_data;
            let address = |e: Option<lca_events::connect::Endpoint>| {
                e.and_then(|e| e.address).unwrap_or_default()
            };
            let call = CallData {
                call_id: contact.contact_id.clone(),
                contact_id: contact.contact_id,
                from_number: address(data.customer_endpoint),
                to_number: address(data.system_endpoint),
                agent_id: data.attributes.get("AgentId").cloned(),
                stream_arn: contact.stream_arn,
                start_fragment_number: contact.start_fragment_number,
                last_fragment: None,
                session_id: None,
                origin_ns: None,
                start_sample: 0,
                lambda_count: 0,
            };
            let start = StartCall {
                customer_phone_number: call.from_number.clone(),
                system_phone_number: call.to_number.clone(),
                agent_id: call.agent_id.clone(),
                metadata_json: None,
                created_at: crate::transcribe::now(),
            };
            (call, Some(start))
        };
        let now = Instant::now();
        let deadline = (now + config.lambda_invoke_timeout)
            .min(lambda_deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(now));
        let spec = CallSpec {
            call_id: call.call_id.clone(),
            contact_id: call.contact_id.clone(),
            stream_arn: call.stream_arn.clone(),
            position: call.position(),
            start_event,
            deadline: Some(deadline),
        };
        let outcome = self.pipeline.run(spec, Taps::default()).await?;
        match outcome.ending {
            Ending::CallEnded(reason) => {
                tracing::info!(call_id = %call.call_id, ?reason, events = outcome.published.delivered, "call ended");
                Ok(json!({"status": "ENDED", "callId": call.call_id}))
            }
            Ending::HandOver(position) => {
                let StartAt::After(last) = position.start else {
                    unreachable!("a hand-over happens after a processed fragment")
                };
                let next = CallData {
                    last_fragment: Some(last),
                    session_id: position.session_id,
                    origin_ns: position.origin_ns,
                    start_sample: position.start_sample,
                    lambda_count: call.lambda_count + 1,
                    ..call
                };
                let payload = json!({"action": "LAMBDA_CONTINUE", "callData": next});
                let invoked = self
                    .lambda
                    .invoke()
                    .function_name(function_arn)
                    .invocation_type(InvocationType::Event)
                    .payload(Blob::new(payload.to_string()))
                    .send()
                    .await;
                if let Err(error) = invoked {
                    return Err(HandlerError::HandOver {
                        call_id: next.call_id,
                        function: function_arn.to_string(),
                        message: crate::source::error_text(&error),
                    });
                }
                tracing::info!(call_id = %next.call_id, lambda_count = next.lambda_count, "handed over");
                Ok(
                    json!({"status": "CONTINUED", "callId": next.call_id, "lambdaCount": next.lambda_count}),
                )
            }
        }
    }
}
