//! The call's lease in DynamoDB (`TRANSCRIBER_CALL_EVENT_TABLE_NAME`): the edge that stores
//! what `call-lifecycle`'s rules decide ([`decide`], [`LeaseRecord`], [`Held`]). Every write
//! but the first is conditional, so that of two attempts only one holds the call: a claim on
//! the lease as it was read (owner, hold, invocation and attempts), every later write on
//! holding it (owner, invocation and attempt number, since a duplicate delivery can carry the
//! request id of the attempt it duplicates).
//!
//! An open call also carries `OpenCall` and `SweepAt` ([`call_lifecycle::sweep`]): the keys of
//! the sparse index [`OPEN_CALLS_INDEX`] in which the scheduled sweep finds calls nobody
//! looks after, without reading the others. Both are removed when the call ends or is given
//! up.

use std::time::Duration;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

pub use call_lifecycle::lease::{Claim, Held, LeaseRecord, Limits, decide};
use call_lifecycle::sweep;

use call_lifecycle::{CallData, Delivered};

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
    /// How long an open call may go unlooked-after before the sweep takes it up
    /// (`SWEEP_GRACE`).
    pub sweep_grace: Duration,
}

/// The sparse global secondary index of open calls: partition key `OpenCall` (one value,
/// [`OPEN`]), sort key `SweepAt`, keys only. An item is in it only while it has `OpenCall`.
pub const OPEN_CALLS_INDEX: &str = "OpenCalls";

/// The value of `OpenCall` on an open call (`Open` is a DynamoDB reserved word).
const OPEN: &str = "open";

/// Calls the sweep takes up in one run, at most (the next run takes the rest).
pub const SWEEP_BATCH: i32 = 100;

/// How long a lease item is kept after its last write (DynamoDB TTL).
const KEEP_ITEM: Duration = Duration::from_secs(24 * 3600);

pub use aws_edge::now_ms;

/// What every new lease item of `call` holds: its key, the call, nothing delivered yet, open
/// in the index until `sweep_at`, kept a day after `now` (DynamoDB TTL).
fn new_item(call: &CallData, now: u64, sweep_at: u64) -> Vec<(&'static str, AttributeValue)> {
    vec![
        ("PK", key(&call.contact_id)),
        ("LambdaCount", n(call.lambda_count)),
        ("CallData", json(call)),
        ("CallId", s(&call.call_id)),
        ("Delivered", json(&Delivered::default())),
        ("OpenCall", s(OPEN)),
        ("SweepAt", n(sweep_at)),
        (
            "ExpiresAfter",
            n((now + KEEP_ITEM.as_millis() as u64) / 1000),
        ),
    ]
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
    /// The lease table `table`, holds of `duration`, the default sweep grace.
    pub fn new(client: aws_sdk_dynamodb::Client, table: String, duration: Duration) -> Self {
        Self {
            client,
            table,
            duration,
            sweep_grace: Duration::from_millis(call_lifecycle::lease::DEFAULT_SWEEP_GRACE_MS),
        }
    }

    /// The lifecycle's sweep limits of this table (only the grace is read).
    fn sweep_limits(&self) -> Limits {
        Limits {
            sweep_grace_ms: self.sweep_grace.as_millis() as u64,
            ..Limits::new(0, 0)
        }
    }

    /// `SweepAt` for a hold taken now.
    pub fn sweep_at(&self, now_ms: u64) -> u64 {
        sweep::sweep_at(now_ms, self.sweep_limits())
    }

    /// A new `SweepAt` for a renewal now, when the one written last needs pushing forward.
    pub fn refresh_sweep_at(&self, written_ms: u64, now_ms: u64) -> Option<u64> {
        sweep::refresh_sweep_at(written_ms, now_ms, self.sweep_limits())
    }

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
            AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
            Projection, ProjectionType, ScalarAttributeType,
        };
        let failed = |message: String| self.error("-", "CreateTable", message);
        let attribute = |name: &str, kind: ScalarAttributeType| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(kind)
                .build()
                .map_err(|e| failed(e.to_string()))
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(|e| failed(e.to_string()))
        };
        let open_calls = GlobalSecondaryIndex::builder()
            .index_name(OPEN_CALLS_INDEX)
            .key_schema(key("OpenCall", KeyType::Hash)?)
            .key_schema(key("SweepAt", KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::KeysOnly)
                    .build(),
            )
            .build()
            .map_err(|e| failed(e.to_string()))?;
        self.client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute("PK", ScalarAttributeType::S)?)
            .attribute_definitions(attribute("OpenCall", ScalarAttributeType::S)?)
            .attribute_definitions(attribute("SweepAt", ScalarAttributeType::N)?)
            .key_schema(key("PK", KeyType::Hash)?)
            .global_secondary_indexes(open_calls)
            .send()
            .await
            .map_err(|e| failed(aws_edge::error_text(&e)))?;
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
            .map_err(|e| self.error(contact_id, "GetItem", aws_edge::error_text(&e)))?;
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
        let mut item = new_item(call, now, self.sweep_at(now));
        item.extend([
            ("Owner", s(&held.owner)),
            ("LeaseUntil", n(now + self.duration.as_millis() as u64)),
            ("Status", s("RUNNING")),
            ("Attempts", n(held.attempt)),
        ]);
        self.put_new(&held.contact_id, "PutItem", item).await
    }

    /// Writes the lease of a new call before the transcriber is invoked (StartLCA): nobody
    /// holds it, no attempt counted, open and due for the sweep after `SWEEP_GRACE`, with the
    /// contact-flow event for the lambda hook ([`LeaseRecord::pending`]). `false` when the
    /// contact has a lease already (StartLCA invoked twice for it). The first delivery
    /// claims it as any other; if that delivery is lost, the sweep delivers it again.
    pub async fn create_pending(
        &self,
        call: &CallData,
        contact_event: &str,
    ) -> Result<bool, LeaseError> {
        let now = now_ms();
        let sweep_at = sweep::sweep_at_unheld(now, self.sweep_limits());
        let mut item = new_item(call, now, sweep_at);
        item.extend([
            ("Owner", s("")),
            ("LeaseUntil", n(0)),
            ("Status", s("PENDING")),
            ("Attempts", n(0)),
            ("ContactEvent", s(contact_event)),
        ]);
        self.put_new(&call.contact_id, "PutItem (pending)", item)
            .await
    }

    /// Puts a new lease `item` unless the contact has one; `false` when it has.
    async fn put_new(
        &self,
        contact_id: &str,
        operation: &'static str,
        item: Vec<(&'static str, AttributeValue)>,
    ) -> Result<bool, LeaseError> {
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .condition_expression("attribute_not_exists(PK)");
        for (name, value) in item {
            request = request.item(name, value);
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if lost_race(&e) => Ok(false),
            Err(e) => Err(self.error(contact_id, operation, aws_edge::error_text(&e))),
        }
    }

    /// The call's first attempt has run the lambda hook on the lease StartLCA wrote: the
    /// call as the hook left it replaces the lease's, and the contact-flow event is dropped.
    /// `false` when the lease is no longer this attempt's.
    pub async fn started(&self, held: &Held, call: &CallData) -> Result<bool, LeaseError> {
        self.held_update(
            held,
            "start",
            "SET CallData = :call, CallId = :call_id, #s = :running REMOVE ContactEvent",
            vec![
                (":call", json(call)),
                (":call_id", s(&call.call_id)),
                (":running", s("RUNNING")),
            ],
        )
        .await
    }

    /// Closes the lease StartLCA wrote for a call the lambda hook said not to process
    /// (`shouldProcessCall: false`): over, out of the index, no contact-flow event kept.
    pub async fn skip(&self, held: &Held) -> Result<bool, LeaseError> {
        self.close(held, "skip", "SKIPPED", &Delivered::default())
            .await
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
            // `OpenCall` too: a call whose lease an earlier version wrote, without it, joins
            // the index of open calls at its next claim.
            .update_expression(
                "SET #o = :me, LeaseUntil = :until, LambdaCount = :count, Attempts = :attempt, \
                 SweepAt = :sweep, OpenCall = :open",
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
            .expression_attribute_values(":sweep", n(self.sweep_at(now_ms())))
            .expression_attribute_values(":open", s(OPEN))
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
                aws_edge::error_text(&e),
            )),
        }
    }

    /// Extends the hold, records what has been delivered when given, and a new `SweepAt`
    /// when given; `false` when the lease is no longer this attempt's.
    pub async fn renew(
        &self,
        held: &Held,
        delivered: Option<&Delivered>,
        sweep_at: Option<u64>,
    ) -> Result<bool, LeaseError> {
        let mut values = vec![(":until", n(now_ms() + self.duration.as_millis() as u64))];
        let mut expression = "SET LeaseUntil = :until".to_string();
        if let Some(delivered) = delivered {
            values.push((":delivered", json(delivered)));
            expression.push_str(", Delivered = :delivered");
        }
        if let Some(at) = sweep_at {
            values.push((":sweep", n(at)));
            expression.push_str(", SweepAt = :sweep");
        }
        self.held_update(held, "renew", &expression, values).await
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
             Attempts = :zero, SweepAt = :sweep",
            vec![
                (":none", s("")),
                (":zero", n(0)),
                (":next_count", n(next.lambda_count)),
                (":call", json(next)),
                (
                    ":sweep",
                    n(sweep::sweep_at_unheld(now_ms(), self.sweep_limits())),
                ),
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
        self.close(held, "end", "ENDED", delivered).await
    }

    /// Closes the lease as `status` (ENDED, FAILED, SKIPPED): nobody holds it, it leaves the
    /// index of open calls, and no contact-flow event is kept.
    async fn close(
        &self,
        held: &Held,
        operation: &'static str,
        status: &str,
        delivered: &Delivered,
    ) -> Result<bool, LeaseError> {
        self.held_update(
            held,
            operation,
            "SET #o = :none, #s = :status, Delivered = :delivered \
             REMOVE OpenCall, SweepAt, ContactEvent",
            vec![
                (":none", s("")),
                (":status", s(status)),
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
            "SET LeaseUntil = :zero, Delivered = :delivered, LastFailure = :message, \
             SweepAt = :sweep",
            vec![
                (":zero", n(0)),
                (
                    ":sweep",
                    n(sweep::sweep_at_unheld(now_ms(), self.sweep_limits())),
                ),
                (":delivered", json(delivered)),
                (":message", s(message)),
            ],
        )
        .await
    }

    /// Gives the call up (its last attempt failed, every attempt was used, or it stalled past
    /// its limit): no invocation takes it again.
    pub async fn give_up(&self, held: &Held, delivered: &Delivered) -> Result<bool, LeaseError> {
        self.close(held, "give up", "FAILED", delivered).await
    }

    /// Contact ids of open calls whose `SweepAt` has passed at `now_ms` (at most
    /// [`SWEEP_BATCH`], the most overdue first): one Query of the sparse index, which reads
    /// only the calls that are due.
    pub async fn due_calls(&self, now_ms: u64) -> Result<Vec<String>, LeaseError> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(OPEN_CALLS_INDEX)
            .key_condition_expression("#open = :open AND SweepAt <= :now")
            .expression_attribute_names("#open", "OpenCall")
            .expression_attribute_values(":open", s(OPEN))
            .expression_attribute_values(":now", n(now_ms))
            .limit(SWEEP_BATCH)
            .send()
            .await
            .map_err(|e| self.error("-", "Query (open calls)", aws_edge::error_text(&e)))?;
        Ok(output
            .items()
            .iter()
            .filter_map(|item| item.get("PK")?.as_s().ok()?.strip_prefix("contact#"))
            .map(str::to_string)
            .collect())
    }

    /// Takes a call that is over out of the index of open calls (an index entry left by a
    /// write that ended the call some other way); `false` when the call is open.
    pub async fn close_index(&self, contact_id: &str) -> Result<bool, LeaseError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("PK", key(contact_id))
            .update_expression("REMOVE OpenCall, SweepAt")
            .condition_expression("#s <> :running")
            .expression_attribute_names("#s", "Status")
            .expression_attribute_values(":running", s("RUNNING"))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if lost_race(&e) => Ok(false),
            Err(e) => Err(self.error(
                contact_id,
                "UpdateItem (close index)",
                aws_edge::error_text(&e),
            )),
        }
    }

    /// Marks the call as being given up with END or the URL still owed: released at once, kept
    /// among the open calls (due for the sweep after `SWEEP_GRACE`), so that the next claim
    /// finishes giving it up.
    pub async fn give_up_pending(
        &self,
        held: &Held,
        delivered: &Delivered,
    ) -> Result<bool, LeaseError> {
        self.held_update(
            held,
            "give up (END owed)",
            "SET #o = :none, #s = :giving_up, Delivered = :delivered, LeaseUntil = :zero, \
             SweepAt = :sweep",
            vec![
                (":none", s("")),
                (":giving_up", s("GIVING_UP")),
                (":delivered", json(delivered)),
                (":zero", n(0)),
                (
                    ":sweep",
                    n(sweep::sweep_at_unheld(now_ms(), self.sweep_limits())),
                ),
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
            Err(e) => Err(self.error(&held.contact_id, operation, aws_edge::error_text(&e))),
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
        // A call the hook said not to process is over as an ended one is.
        ended: matches!(text("Status")?, "ENDED" | "SKIPPED"),
        failed: text("Status")? == "FAILED",
        giving_up: text("Status")? == "GIVING_UP",
        attempts: item
            .get("Attempts")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        handed_over_by: text("HandedOverBy").ok().map(str::to_string),
        contact_event: text("ContactEvent").ok().map(str::to_string),
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
