//! The scheduled sweep's edge: an EventBridge schedule invokes the transcriber with a
//! Scheduled Event; it asks the lease table's sparse index for the open calls that are due
//! ([`CallLease::due_calls`]), reads each, and carries out [`call_lifecycle::sweep::verdict`]:
//! a call nobody looks after gets a rescue event (`{"action":"LAMBDA_RESCUE","contactId",
//! "lambdaCount","reason"}`: no customer data), which the transcriber takes as any other
//! delivery, claiming the lease by the lifecycle's rules.

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use call_lifecycle::sweep::{RescueReason, SweepVerdict, verdict};
use serde_json::{Value, json};

use crate::delivery::RESCUE_ACTION;
use crate::lease::{CallLease, LeaseError, now_ms};

/// Whether `event` is EventBridge's scheduled event (`"source": "aws.events"`,
/// `"detail-type": "Scheduled Event"`; EventBridge user guide, "Creating a rule that runs on
/// a schedule").
pub fn is_scheduled(event: &Value) -> bool {
    event.get("source").and_then(Value::as_str) == Some("aws.events")
        && event.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Open calls found due.
    pub due: usize,
    /// Calls delivered again, by reason.
    pub rescued: Vec<RescueReason>,
    /// Calls over, taken out of the index.
    pub closed: usize,
    /// Calls that could not be read or delivered (the next sweep tries again).
    pub failed: usize,
}

/// Sweeps the lease table once: every due call nobody looks after is delivered again to
/// `function_arn` (asynchronously). A call that cannot be read or delivered is logged and
/// left to the next sweep; only the index query failing fails the sweep.
pub async fn sweep(
    lease: &CallLease,
    lambda: &aws_sdk_lambda::Client,
    function_arn: &str,
) -> Result<SweepReport, LeaseError> {
    let due = lease.due_calls(now_ms()).await?;
    let mut report = SweepReport {
        due: due.len(),
        ..SweepReport::default()
    };
    for contact_id in due {
        let record = match lease.read(&contact_id).await {
            Ok(Some(record)) => record,
            Ok(None) => continue,
            Err(error) => {
                tracing::error!(%error, "sweep: the call's lease could not be read; the next sweep tries again");
                report.failed += 1;
                continue;
            }
        };
        match verdict(&record, now_ms()) {
            SweepVerdict::Held => {}
            SweepVerdict::Closed => match lease.close_index(&contact_id).await {
                Ok(_) => report.closed += 1,
                Err(error) => tracing::warn!(%error, "sweep: a closed call stays in the index"),
            },
            SweepVerdict::Rescue {
                reason,
                lambda_count,
            } => {
                let event = json!({
                    "action": RESCUE_ACTION,
                    "contactId": contact_id,
                    "lambdaCount": lambda_count,
                    "reason": reason.as_str(),
                });
                let invoked = lambda
                    .invoke()
                    .function_name(function_arn)
                    .invocation_type(InvocationType::Event)
                    .payload(Blob::new(event.to_string()))
                    .send()
                    .await;
                match invoked {
                    Ok(_) => {
                        tracing::warn!(call_id = %record.call.call_id, lambda_count, attempts = record.attempts, reason = reason.as_str(), "sweep: nobody was looking after the call; delivered again");
                        report.rescued.push(reason);
                    }
                    Err(error) => {
                        tracing::error!(call_id = %record.call.call_id, error = %aws_edge::error_text(&error), "sweep: the call could not be delivered again; the next sweep tries again");
                        report.failed += 1;
                    }
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_events_are_told_apart() {
        assert!(is_scheduled(
            &json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}})
        ));
        assert!(!is_scheduled(&json!({"source": "aws.connect"})));
    }
}
