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

use crate::lease::{CallLease, LeaseError, now_ms};

/// The `action` of a rescue event.
pub const RESCUE_ACTION: &str = "LAMBDA_RESCUE";

/// Whether `event` is EventBridge's scheduled event (`"source": "aws.events"`,
/// `"detail-type": "Scheduled Event"`; EventBridge user guide, "Creating a rule that runs on
/// a schedule").
pub fn is_scheduled(event: &Value) -> bool {
    event.get("source").and_then(Value::as_str) == Some("aws.events")
        && event.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
}

/// A rescue event: the call to take up again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescue {
    /// The contact (the lease's key).
    pub contact_id: String,
    /// The invocation the lease named when the sweep found it.
    pub lambda_count: u32,
}

/// The rescue `event` carries, `None` when it is not one; an error names what is wrong.
pub fn rescue_of_event(event: &Value) -> Result<Option<Rescue>, String> {
    if event.get("action").and_then(Value::as_str) != Some(RESCUE_ACTION) {
        return Ok(None);
    }
    let contact_id = event["contactId"].as_str().unwrap_or_default();
    let length = contact_id.chars().count();
    if contact_id.is_empty() || length > lca_events::MAX_CALL_ID_CHARS {
        return Err(format!(
            "{RESCUE_ACTION}: contactId is {length} characters long; it must be 1 to {}",
            lca_events::MAX_CALL_ID_CHARS
        ));
    }
    let lambda_count = event["lambdaCount"]
        .as_u64()
        .and_then(|c| u32::try_from(c).ok())
        .ok_or_else(|| format!("{RESCUE_ACTION}: lambdaCount is not a whole number"))?;
    Ok(Some(Rescue {
        contact_id: contact_id.to_string(),
        lambda_count,
    }))
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
                        tracing::error!(call_id = %record.call.call_id, error = %crate::source::error_text(&error), "sweep: the call could not be delivered again; the next sweep tries again");
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
    fn rescue_events_are_read_and_bad_ones_named() {
        let event = json!({"action": "LAMBDA_RESCUE", "contactId": "c-1", "lambdaCount": 3});
        assert_eq!(
            rescue_of_event(&event),
            Ok(Some(Rescue {
                contact_id: "c-1".into(),
                lambda_count: 3
            }))
        );
        assert_eq!(
            rescue_of_event(&json!({"action": "LAMBDA_CONTINUE"})),
            Ok(None)
        );
        let error = rescue_of_event(&json!({"action": "LAMBDA_RESCUE", "lambdaCount": 1}));
        assert!(error.unwrap_err().contains("contactId is 0 characters"));
        let error = rescue_of_event(
            &json!({"action": "LAMBDA_RESCUE", "contactId": "c", "lambdaCount": -1}),
        );
        assert!(error.unwrap_err().contains("lambdaCount"));
        assert!(is_scheduled(
            &json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}})
        ));
        assert!(!is_scheduled(&json!({"source": "aws.connect"})));
    }
}
