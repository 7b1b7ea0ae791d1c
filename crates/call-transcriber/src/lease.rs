//! One transcriber per call at a time. Lambda retries a failed asynchronous invocation (with
//! the same request id), its event queue can deliver an event twice, and a contact flow can
//! invoke StartLCA twice; without a guard two invocations would read the same call and
//! publish everything twice.
//!
//! The guard is a lease on the ContactId in DynamoDB (`TRANSCRIBER_CALL_EVENT_TABLE_NAME`):
//! created with a conditional write by the first invocation, renewed while it runs together
//! with what Kinesis has acknowledged ([`Delivered`]), handed to the next invocation at a
//! hand-over, and closed when the call ends. [`decide`] is the pure rule for what an
//! invocation may do with the lease it finds; [`CallLease`] is the DynamoDB edge.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

use crate::call::CallData;
use crate::delivered::Delivered;

/// The lease as stored for one contact.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRecord {
    /// Request id of the invocation holding the call; empty while it is handed over or over.
    pub owner: String,
    /// Epoch milliseconds until which the owner's hold is valid without renewal.
    pub lease_until_ms: u64,
    /// The invocation (0 = first) that holds, or is to take, the call.
    pub lambda_count: u32,
    /// Where that invocation starts.
    pub call: CallData,
    /// What Kinesis has acknowledged for the call.
    pub delivered: Delivered,
    /// The call has ended (END and the recording are done).
    pub ended: bool,
    /// The call was given up after its invocation failed on every attempt Lambda makes.
    pub failed: bool,
    /// Failed attempts of the current invocation (reset at each hand-over).
    pub failures: u32,
    /// Request id of the invocation that last handed the call over.
    pub handed_over_by: Option<String>,
}

/// What an invocation may do, given the lease it found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// No lease: create it and start the call.
    Create,
    /// Take this lease over and continue the call from its call data: it was handed to this
    /// invocation, or its holder stopped (this invocation's own crashed attempt, or a lease
    /// that was not renewed in time).
    TakeOver(Box<LeaseRecord>),
    /// The lease is held, unexpired, by an invocation with this request id: Lambda's retry of
    /// a crashed attempt, or the same event delivered twice while the first delivery still
    /// runs. Which one cannot be told from the request id (Lambda's retries keep it), so wait
    /// until the hold expires (at most `CALL_LEASE_TIMEOUT`) and decide again: a live holder
    /// renews it meanwhile.
    WaitForExpiry(Box<LeaseRecord>),
    /// This invocation handed the call over (to this lease's call data), then failed before
    /// it could say so: start the next invocation again (the lease lets only one of them run).
    RepeatHandOver(Box<LeaseRecord>),
    /// Another invocation has the call, or it is over: leave it untouched.
    Leave(&'static str),
}

/// The rule for invocation `lambda_count` with `request_id` at `now_ms`.
pub fn decide(
    record: Option<LeaseRecord>,
    lambda_count: u32,
    request_id: &str,
    now_ms: u64,
) -> Claim {
    let Some(record) = record else {
        return Claim::Create;
    };
    if record.ended {
        return Claim::Leave("the call has already ended");
    }
    if record.failed {
        return Claim::Leave("the call was given up after failed attempts");
    }
    if record.lambda_count > lambda_count {
        let ours = record.handed_over_by.as_deref() == Some(request_id);
        return if ours && record.owner.is_empty() && record.lambda_count == lambda_count + 1 {
            Claim::RepeatHandOver(Box::new(record))
        } else {
            Claim::Leave("a later invocation has the call")
        };
    }
    if record.owner.is_empty() || record.lease_until_ms <= now_ms {
        Claim::TakeOver(Box::new(record))
    } else if record.owner == request_id {
        Claim::WaitForExpiry(Box::new(record))
    } else {
        Claim::Leave("another invocation holds the call")
    }
}

/// A lease this invocation holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The contact.
    pub contact_id: String,
    /// This invocation's request id.
    pub owner: String,
    /// This invocation's number.
    pub lambda_count: u32,
}

/// Why the lease table could not be used.
#[derive(Debug, thiserror::Error)]
#[error("call lease table {table}, contact {contact_id}: {operation} failed: {message}")]
pub struct LeaseError {
    /// The table.
    pub table: String,
    /// The contact.
    pub contact_id: String,
    /// What was being done.
    pub operation: &'static str,
    /// The error.
    pub message: String,
}

/// The lease table.
#[derive(Debug, Clone)]
pub struct CallLease {
    /// DynamoDB.
    pub client: aws_sdk_dynamodb::Client,
    /// `TRANSCRIBER_CALL_EVENT_TABLE_NAME` (partition key `PK`, TTL attribute `ExpiresAfter`).
    pub table: String,
    /// A hold not renewed for this long is taken to be dead (`CALL_LEASE_TIMEOUT`).
    pub duration: Duration,
}

/// How long a lease item is kept after its last write (DynamoDB TTL).
const KEEP_ITEM: Duration = Duration::from_secs(24 * 3600);

/// Epoch milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn key(contact_id: &str) -> AttributeValue {
    AttributeValue::S(format!("contact#{contact_id}"))
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn json(value: &impl serde::Serialize) -> AttributeValue {
    // Serializing our own plain structs cannot fail.
    AttributeValue::S(serde_json::to_string(value).expect("lease JSON"))
}

/// Whether an error is DynamoDB refusing a conditional write (someone else got there first).
fn lost_race<E: aws_sdk_dynamodb::error::ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> bool {
    error
        .as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "ConditionalCheckFailedException")
}

impl CallLease {
    fn error(&self, contact_id: &str, operation: &'static str, message: String) -> LeaseError {
        LeaseError {
            table: self.table.clone(),
            contact_id: contact_id.to_string(),
            operation,
            message,
        }
    }

    /// Creates the table as the stack defines it (partition key `PK`, on-demand), for local
    /// emulators; in AWS the CloudFormation stack creates it.
    pub async fn create_table(&self) -> Result<(), LeaseError> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        let failed = |message: String| self.error("-", "CreateTable", message);
        let attribute = AttributeDefinition::builder()
            .attribute_name("PK")
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let key = KeySchemaElement::builder()
            .attribute_name("PK")
            .key_type(KeyType::Hash)
            .build()
            .map_err(|e| failed(e.to_string()))?;
        self.client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute)
            .key_schema(key)
            .send()
            .await
            .map_err(|e| failed(crate::source::error_text(&e)))?;
        Ok(())
    }

    /// Reads the contact's lease (strongly consistent).
    pub async fn read(&self, contact_id: &str) -> Result<Option<LeaseRecord>, LeaseError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("PK", key(contact_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error(contact_id, "GetItem", crate::source::error_text(&e)))?;
        let Some(item) = output.item else {
            return Ok(None);
        };
        parse(&item)
            .map(Some)
            .map_err(|problem| self.error(contact_id, "reading the lease", problem))
    }

    /// Creates the lease for a new call; `false` when another invocation created it first.
    pub async fn create(&self, held: &Held, call: &CallData) -> Result<bool, LeaseError> {
        let now = now_ms();
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("PK", key(&held.contact_id))
            .item("Owner", s(&held.owner))
            .item("LeaseUntil", n(now + self.duration.as_millis() as u64))
            .item("LambdaCount", n(held.lambda_count))
            .item("CallData", json(call))
            .item("CallId", s(&call.call_id))
            .item("Delivered", json(&Delivered::default()))
            .item("Status", s("RUNNING"))
            .item(
                "ExpiresAfter",
                n((now + KEEP_ITEM.as_millis() as u64) / 1000),
            )
            .condition_expression("attribute_not_exists(PK)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if lost_race(&e) => Ok(false),
            Err(e) => Err(self.error(&held.contact_id, "PutItem", crate::source::error_text(&e))),
        }
    }

    /// Takes over the lease as it was `seen`; `false` when it changed meanwhile.
    pub async fn take_over(&self, held: &Held, seen: &LeaseRecord) -> Result<bool, LeaseError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("PK", key(&held.contact_id))
            .update_expression("SET #o = :me, LeaseUntil = :until, LambdaCount = :count")
            .condition_expression(
                "#o = :seen_owner AND LeaseUntil = :seen_until AND LambdaCount = :seen_count",
            )
            .expression_attribute_names("#o", "Owner")
            .expression_attribute_values(":me", s(&held.owner))
            .expression_attribute_values(":until", n(now_ms() + self.duration.as_millis() as u64))
            .expression_attribute_values(":count", n(held.lambda_count))
            .expression_attribute_values(":seen_owner", s(&seen.owner))
            .expression_attribute_values(":seen_until", n(seen.lease_until_ms))
            .expression_attribute_values(":seen_count", n(seen.lambda_count))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if lost_race(&e) => Ok(false),
            Err(e) => Err(self.error(
                &held.contact_id,
                "UpdateItem (take over)",
                crate::source::error_text(&e),
            )),
        }
    }

    /// Extends the hold and records what has been delivered; `false` when the lease is no
    /// longer this invocation's.
    pub async fn renew(&self, held: &Held, delivered: &Delivered) -> Result<bool, LeaseError> {
        self.held_update(
            held,
            "renew",
            "SET LeaseUntil = :until, Delivered = :delivered",
            vec![
                (":until", n(now_ms() + self.duration.as_millis() as u64)),
                (":delivered", json(delivered)),
            ],
        )
        .await
    }

    /// Hands the call to the next invocation, which will start at `next`.
    pub async fn hand_over(
        &self,
        held: &Held,
        next: &CallData,
        delivered: &Delivered,
    ) -> Result<bool, LeaseError> {
        self.held_update(
            held,
            "hand over",
            "SET #o = :none, HandedOverBy = :me, LambdaCount = :next_count, CallData = :call, \
             Delivered = :delivered, LeaseUntil = :until, ExpiresAfter = :expires, \
             Failures = :zero",
            vec![
                (":none", s("")),
                (":zero", n(0)),
                (":next_count", n(next.lambda_count)),
                (":call", json(next)),
                (":delivered", json(delivered)),
                (":until", n(now_ms() + self.duration.as_millis() as u64)),
                (
                    ":expires",
                    n((now_ms() + KEEP_ITEM.as_millis() as u64) / 1000),
                ),
            ],
        )
        .await
    }

    /// Closes the lease of a call that has ended.
    pub async fn end(&self, held: &Held, delivered: &Delivered) -> Result<bool, LeaseError> {
        self.held_update(
            held,
            "end",
            "SET #o = :none, #s = :ended, Delivered = :delivered",
            vec![
                (":none", s("")),
                (":ended", s("ENDED")),
                (":delivered", json(delivered)),
            ],
        )
        .await
    }

    /// Records a failed attempt of this invocation and ends its hold at once, so that
    /// Lambda's retry (same request id) or any other delivery takes the call over without
    /// waiting; returns the invocation's failed attempts so far, or `None` when the lease is
    /// no longer this invocation's.
    pub async fn record_failure(
        &self,
        held: &Held,
        delivered: &Delivered,
        message: &str,
    ) -> Result<Option<u32>, LeaseError> {
        let updated = self
            .update_held(
                held,
                "record failure",
                "SET LeaseUntil = :zero, Delivered = :delivered, LastFailure = :message \
                 ADD Failures :one",
                vec![
                    (":zero", n(0)),
                    (":one", n(1)),
                    (":delivered", json(delivered)),
                    (":message", s(message)),
                ],
                true,
            )
            .await?;
        let Some(attributes) = updated else {
            return Ok(None);
        };
        attributes
            .get("Failures")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                self.error(
                    &held.contact_id,
                    "record failure",
                    "the answer has no Failures count".to_string(),
                )
            })
    }

    /// Gives the call up after its last failed attempt: no invocation takes it again.
    pub async fn give_up(&self, held: &Held, delivered: &Delivered) -> Result<bool, LeaseError> {
        self.held_update(
            held,
            "give up",
            "SET #o = :none, #s = :failed, Delivered = :delivered",
            vec![
                (":none", s("")),
                (":failed", s("FAILED")),
                (":delivered", json(delivered)),
            ],
        )
        .await
    }

    /// An update made only while this invocation holds the lease; `false` when it no
    /// longer does.
    async fn held_update(
        &self,
        held: &Held,
        operation: &'static str,
        expression: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<bool, LeaseError> {
        let updated = self
            .update_held(held, operation, expression, values, false)
            .await?;
        Ok(updated.is_some())
    }

    /// [`Self::held_update`] giving back the updated attributes (when `return_updated`), or
    /// `None` when the lease is no longer this invocation's.
    async fn update_held(
        &self,
        held: &Held,
        operation: &'static str,
        expression: &str,
        values: Vec<(&str, AttributeValue)>,
        return_updated: bool,
    ) -> Result<Option<HashMap<String, AttributeValue>>, LeaseError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("PK", key(&held.contact_id))
            .update_expression(expression)
            .condition_expression("#o = :me AND LambdaCount = :count")
            .expression_attribute_names("#o", "Owner")
            .expression_attribute_values(":me", s(&held.owner))
            .expression_attribute_values(":count", n(held.lambda_count));
        if expression.contains("#s") {
            request = request.expression_attribute_names("#s", "Status");
        }
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        if return_updated {
            request = request.return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew);
        }
        match request.send().await {
            Ok(output) => Ok(Some(output.attributes.unwrap_or_default())),
            Err(e) if lost_race(&e) => Ok(None),
            Err(e) => Err(self.error(&held.contact_id, operation, crate::source::error_text(&e))),
        }
    }
}

/// Reads a stored item; the problem names the attribute.
fn parse(item: &HashMap<String, AttributeValue>) -> Result<LeaseRecord, String> {
    let text = |name: &str| -> Result<&str, String> {
        item.get(name)
            .and_then(|v| v.as_s().ok())
            .map(String::as_str)
            .ok_or_else(|| format!("attribute {name} is missing or not a string"))
    };
    let number = |name: &str| -> Result<u64, String> {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("attribute {name} is missing or not a whole number"))
    };
    Ok(LeaseRecord {
        owner: text("Owner")?.to_string(),
        lease_until_ms: number("LeaseUntil")?,
        lambda_count: u32::try_from(number("LambdaCount")?)
            .map_err(|_| "attribute LambdaCount is out of range".to_string())?,
        call: serde_json::from_str(text("CallData")?)
            .map_err(|e| format!("attribute CallData: {e}"))?,
        delivered: serde_json::from_str(text("Delivered")?)
            .map_err(|e| format!("attribute Delivered: {e}"))?,
        ended: text("Status")? == "ENDED",
        failed: text("Status")? == "FAILED",
        failures: item
            .get("Failures")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        handed_over_by: text("HandedOverBy").ok().map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(owner: &str, until: u64, count: u32) -> LeaseRecord {
        LeaseRecord {
            owner: owner.to_string(),
            lease_until_ms: until,
            lambda_count: count,
            call: CallData::new("c", "arn", "1"),
            delivered: Delivered::default(),
            ended: false,
            failed: false,
            failures: 0,
            handed_over_by: None,
        }
    }

    #[test]
    fn a_new_call_creates_the_lease() {
        assert_eq!(decide(None, 0, "r1", 1000), Claim::Create);
    }

    #[test]
    fn a_duplicate_leaves_a_live_lease_alone() {
        let held = record("r1", 5000, 0);
        assert_eq!(
            decide(Some(held.clone()), 0, "r2", 1000),
            Claim::Leave("another invocation holds the call")
        );
    }

    #[test]
    fn the_same_request_id_waits_for_a_live_hold_to_expire() {
        // A retry after a crash and a second delivery while the first runs look alike: the
        // hold must expire (a live holder renews it) before the call is taken over.
        let held = record("r1", 5000, 2);
        assert_eq!(
            decide(Some(held.clone()), 2, "r1", 1000),
            Claim::WaitForExpiry(Box::new(held.clone()))
        );
        assert_eq!(
            decide(Some(held.clone()), 2, "r1", 5000),
            Claim::TakeOver(Box::new(held))
        );
        // A failed attempt ends its hold at once: the retry need not wait.
        let failed = LeaseRecord {
            failures: 1,
            ..record("r1", 0, 2)
        };
        assert_eq!(
            decide(Some(failed.clone()), 2, "r1", 1000),
            Claim::TakeOver(Box::new(failed))
        );
    }

    #[test]
    fn an_expired_hold_is_taken_over() {
        let expired = record("r1", 999, 0);
        assert_eq!(
            decide(Some(expired.clone()), 0, "r2", 1000),
            Claim::TakeOver(Box::new(expired))
        );
    }

    #[test]
    fn a_handed_over_call_goes_to_the_next_invocation_only() {
        let mut handed = record("", 5000, 3);
        handed.handed_over_by = Some("r2".to_string());
        assert_eq!(
            decide(Some(handed.clone()), 3, "r3", 1000),
            Claim::TakeOver(Box::new(handed.clone()))
        );
        // The invocation that handed over is retried: start the next one again.
        assert_eq!(
            decide(Some(handed.clone()), 2, "r2", 1000),
            Claim::RepeatHandOver(Box::new(handed.clone()))
        );
        // Any older event is stale.
        assert_eq!(
            decide(Some(handed.clone()), 2, "rX", 1000),
            Claim::Leave("a later invocation has the call")
        );
        assert_eq!(
            decide(Some(handed.clone()), 0, "r0", 1000),
            Claim::Leave("a later invocation has the call")
        );
        // Once the next one holds it, a repeated hand-over is left alone.
        let taken = LeaseRecord {
            owner: "r3".to_string(),
            ..handed
        };
        assert_eq!(
            decide(Some(taken.clone()), 2, "r2", 1000),
            Claim::Leave("a later invocation has the call")
        );
    }

    #[test]
    fn a_call_given_up_is_left_alone() {
        let given_up = LeaseRecord {
            failed: true,
            ..record("", 0, 1)
        };
        assert_eq!(
            decide(Some(given_up), 1, "r1", 1000),
            Claim::Leave("the call was given up after failed attempts")
        );
    }

    #[test]
    fn an_ended_call_is_left_alone() {
        let ended = LeaseRecord {
            ended: true,
            ..record("", 0, 4)
        };
        assert_eq!(
            decide(Some(ended.clone()), 4, "r1", 1000),
            Claim::Leave("the call has already ended")
        );
    }

    #[test]
    fn stored_items_read_back_and_name_what_is_wrong() {
        let call = CallData::new("c", "arn", "1");
        let mut item = HashMap::from([
            ("Owner".to_string(), s("r1")),
            ("LeaseUntil".to_string(), n(42)),
            ("LambdaCount".to_string(), n(1)),
            ("CallData".to_string(), json(&call)),
            ("Delivered".to_string(), s("{}")),
            ("Status".to_string(), s("RUNNING")),
        ]);
        let read = parse(&item).unwrap();
        assert_eq!(
            (read.owner.as_str(), read.lease_until_ms, read.lambda_count),
            ("r1", 42, 1)
        );
        assert_eq!(read.call, call);
        item.insert("LeaseUntil".to_string(), s("soon"));
        assert_eq!(
            parse(&item).unwrap_err(),
            "attribute LeaseUntil is missing or not a whole number"
        );
    }
}
