//! The call's lease in DynamoDB (`TRANSCRIBER_CALL_EVENT_TABLE_NAME`): the edge that stores
//! what `call-lifecycle`'s rules decide ([`decide`], [`LeaseRecord`], [`Held`]). Every write
//! but the first is conditional, so that of two attempts only one holds the call: a claim on
//! the lease as it was read (owner, hold, invocation and attempts), every later write on
//! holding it (owner, invocation and attempt number, since a duplicate delivery can carry the
//! request id of the attempt it duplicates).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

pub use call_lifecycle::lease::{Claim, Held, LeaseRecord, Limits, decide};

use crate::call::CallData;
use crate::delivered::Delivered;

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
            .item("Attempts", n(held.attempt))
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

    /// Takes over the lease as it was `seen`, as attempt `held.attempt` of its invocation;
    /// `false` when it changed meanwhile.
    pub async fn take_over(&self, held: &Held, seen: &LeaseRecord) -> Result<bool, LeaseError> {
        // Items written before attempts were counted have no Attempts: read as 0.
        let seen_attempts = if seen.attempts == 0 {
            "(attribute_not_exists(Attempts) OR Attempts = :seen_attempts)"
        } else {
            "Attempts = :seen_attempts"
        };
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("PK", key(&held.contact_id))
            .update_expression(
                "SET #o = :me, LeaseUntil = :until, LambdaCount = :count, Attempts = :attempt",
            )
            .condition_expression(format!(
                "#o = :seen_owner AND LeaseUntil = :seen_until AND LambdaCount = :seen_count \
                 AND {seen_attempts}"
            ))
            .expression_attribute_names("#o", "Owner")
            .expression_attribute_values(":me", s(&held.owner))
            .expression_attribute_values(":until", n(now_ms() + self.duration.as_millis() as u64))
            .expression_attribute_values(":count", n(held.lambda_count))
            .expression_attribute_values(":attempt", n(held.attempt))
            .expression_attribute_values(":seen_owner", s(&seen.owner))
            .expression_attribute_values(":seen_until", n(seen.lease_until_ms))
            .expression_attribute_values(":seen_count", n(seen.lambda_count))
            .expression_attribute_values(":seen_attempts", n(seen.attempts))
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
             Attempts = :zero",
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

    /// Records a failed attempt and ends its hold at once, so that Lambda's retry (same
    /// request id) or any other delivery takes the call over without waiting (the attempt
    /// was counted when it claimed the lease); `false` when the lease is no longer this
    /// attempt's.
    pub async fn release_after_failure(
        &self,
        held: &Held,
        delivered: &Delivered,
        message: &str,
    ) -> Result<bool, LeaseError> {
        self.held_update(
            held,
            "record failure",
            "SET LeaseUntil = :zero, Delivered = :delivered, LastFailure = :message",
            vec![
                (":zero", n(0)),
                (":delivered", json(delivered)),
                (":message", s(message)),
            ],
        )
        .await
    }

    /// Gives the call up (its last attempt failed, every attempt was used, or it stalled past
    /// its limit): no invocation takes it again.
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

    /// An update made only while this attempt holds the lease (its owner, invocation and
    /// attempt number); `false` when it no longer does.
    async fn held_update(
        &self,
        held: &Held,
        operation: &'static str,
        expression: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<bool, LeaseError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("PK", key(&held.contact_id))
            .update_expression(expression)
            .condition_expression("#o = :me AND LambdaCount = :count AND Attempts = :attempt")
            .expression_attribute_names("#o", "Owner")
            .expression_attribute_values(":me", s(&held.owner))
            .expression_attribute_values(":count", n(held.lambda_count))
            .expression_attribute_values(":attempt", n(held.attempt));
        if expression.contains("#s") {
            request = request.expression_attribute_names("#s", "Status");
        }
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if lost_race(&e) => Ok(false),
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
        attempts: item
            .get("Attempts")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        handed_over_by: text("HandedOverBy").ok().map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
