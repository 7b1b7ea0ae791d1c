//! The ordered Kinesis publisher: LCA messages of one call onto the LCA data stream in the
//! order they were produced, none dropped silently.
//!
//! One request is in flight at a time. A message arriving while the stream is idle goes out
//! at once (PutRecord); messages that queued up meanwhile go together in one PutRecords, so
//! a burst costs one round trip instead of many. START goes alone and first, END alone and
//! after everything before it is acknowledged. Single records carry
//! SequenceNumberForOrdering, so Kinesis keeps their order strictly. Throttling
//! (ProvisionedThroughputExceeded), service errors and failed records of a batch are retried
//! with exponential backoff; what still fails after the last attempt is reported.
//!
//! Kinesis itself is at-least-once: a request whose response is lost is retried and may
//! store its records twice. LCA's consumer keys segments by SegmentId, so such a repeat
//! overwrites rather than duplicates.

use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use lca_events::{LcaEvent, LcaMessage};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::source::error_text;

/// How the publisher retries.
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// The LCA Kinesis data stream.
    pub stream_name: String,
    /// Attempts per record before it is reported undelivered.
    pub max_attempts: u32,
    /// First backoff; doubles per attempt.
    pub base_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
}

impl PublisherOptions {
    /// Defaults: 10 attempts, 50 ms doubling to 2 s (about 10 s of retrying in all).
    pub fn new(stream_name: &str) -> Self {
        Self {
            stream_name: stream_name.to_string(),
            max_attempts: 10,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// What the publisher did.
#[derive(Debug, Clone, Default)]
pub struct PublishReport {
    /// Records acknowledged by Kinesis.
    pub delivered: u64,
    /// Messages that could not be delivered, with the last error.
    pub undelivered: Vec<(LcaMessage, String)>,
    /// Requests made (PutRecord and PutRecords).
    pub requests: u64,
    /// Requests or records retried.
    pub retries: u64,
    /// Per delivered record: from its arrival at the publisher to Kinesis's acknowledgement.
    pub latencies: Vec<Duration>,
    /// Per record: from its arrival at the publisher to the start of its first request
    /// (the latency the publisher adds; the rest is Kinesis's).
    pub queue_latencies: Vec<Duration>,
    delivered_tap: Option<mpsc::UnboundedSender<LcaMessage>>,
}

impl PublishReport {
    fn acknowledged(&mut self, item: Pending) {
        self.delivered += 1;
        self.latencies.push(item.arrived.elapsed());
        if let Some(tap) = &self.delivered_tap {
            let _ = tap.send(item.message);
        }
    }
}

/// Largest PutRecords request: 500 records, 5 MiB (records are far smaller than 1 MiB).
const MAX_BATCH_RECORDS: usize = 500;
const MAX_BATCH_BYTES: usize = 5 << 20;

struct Pending {
    message: LcaMessage,
    data: Vec<u8>,
    arrived: Instant,
}

/// Publishes everything `messages` delivers until it closes; returns what was done. Each
/// message Kinesis acknowledged is also sent to `delivered`, when given (progress displays).
pub async fn run(
    client: &aws_sdk_kinesis::Client,
    options: &PublisherOptions,
    mut messages: mpsc::Receiver<LcaMessage>,
    delivered: Option<mpsc::UnboundedSender<LcaMessage>>,
) -> PublishReport {
    let mut report = PublishReport {
        delivered_tap: delivered,
        ..PublishReport::default()
    };
    let mut queue: std::collections::VecDeque<Pending> = std::collections::VecDeque::new();
    let mut last_sequence: Option<String> = None;
    let mut open = true;
    loop {
        if queue.is_empty() {
            if !open {
                report.delivered_tap = None;
                return report;
            }
            match messages.recv().await {
                Some(message) => queue.push_back(pending(message)),
                None => {
                    report.delivered_tap = None;
                    return report;
                }
            }
        }
        while let Ok(message) = messages.try_recv() {
            queue.push_back(pending(message));
        }
        if messages.is_closed() && messages.is_empty() {
            open = false;
        }
        let batch = take_batch(&mut queue);
        report
            .queue_latencies
            .extend(batch.iter().map(|p| p.arrived.elapsed()));
        if batch.len() == 1 {
            let item = batch.into_iter().next().expect("one item");
            put_one(client, options, item, &mut last_sequence, &mut report).await;
        } else {
            put_batch(client, options, batch, &mut report).await;
            // A batch's order within the shard is not tied to earlier single records'.
            last_sequence = None;
        }
    }
}

fn pending(message: LcaMessage) -> Pending {
    let data = serde_json::to_vec(&message).expect("LCA messages serialize");
    Pending {
        message,
        data,
        arrived: Instant::now(),
    }
}

/// START and END go alone; otherwise as many queued messages as one request takes.
fn take_batch(queue: &mut std::collections::VecDeque<Pending>) -> Vec<Pending> {
    let alone = |p: &Pending| matches!(p.message.event, LcaEvent::Start(_) | LcaEvent::End(_));
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(next) = queue.front() {
        if !batch.is_empty()
            && (alone(next)
                || batch.len() == MAX_BATCH_RECORDS
                || bytes + next.data.len() > MAX_BATCH_BYTES)
        {
            break;
        }
        let next = queue.pop_front().expect("front exists");
        bytes += next.data.len();
        let single = alone(&next);
        batch.push(next);
        if single {
            break;
        }
    }
    batch
}

/// The SDK's own retries are off for puts: the publisher retries (with its backoff, its
/// attempt limit and its report), and a batch's failed records are retried alone.
fn own_retries() -> aws_sdk_kinesis::config::Builder {
    aws_sdk_kinesis::config::Builder::default()
        .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
}

fn backoff(options: &PublisherOptions, attempt: u32) -> Duration {
    options
        .base_backoff
        .saturating_mul(1 << attempt.min(16))
        .min(options.max_backoff)
}

async fn put_one(
    client: &aws_sdk_kinesis::Client,
    options: &PublisherOptions,
    item: Pending,
    last_sequence: &mut Option<String>,
    report: &mut PublishReport,
) {
    let mut attempt = 0;
    loop {
        report.requests += 1;
        let result = client
            .put_record()
            .stream_name(&options.stream_name)
            .partition_key(&item.message.call_id)
            .data(Blob::new(item.data.clone()))
            .set_sequence_number_for_ordering(last_sequence.clone())
            .customize()
            .config_override(own_retries())
            .send()
            .await;
        match result {
            Ok(output) => {
                *last_sequence = Some(output.sequence_number);
                report.acknowledged(item);
                return;
            }
            Err(error) => {
                attempt += 1;
                let message = format!(
                    "PutRecord to {}: {}",
                    options.stream_name,
                    error
                        .code()
                        .map_or_else(|| error_text(&error), str::to_string)
                );
                if attempt >= options.max_attempts {
                    tracing::error!(call_id = %item.message.call_id, %message, "giving up on an LCA message");
                    report.undelivered.push((item.message, message));
                    return;
                }
                report.retries += 1;
                tracing::warn!(call_id = %item.message.call_id, attempt, %message, "retrying PutRecord");
                tokio::time::sleep(backoff(options, attempt)).await;
            }
        }
    }
}

async fn put_batch(
    client: &aws_sdk_kinesis::Client,
    options: &PublisherOptions,
    mut batch: Vec<Pending>,
    report: &mut PublishReport,
) {
    let mut attempt = 0;
    while !batch.is_empty() {
        report.requests += 1;
        let entries: Vec<PutRecordsRequestEntry> = batch
            .iter()
            .map(|p| {
                PutRecordsRequestEntry::builder()
                    .partition_key(&p.message.call_id)
                    .data(Blob::new(p.data.clone()))
                    .build()
                    .expect("partition key and data are set")
            })
            .collect();
        let result = client
            .put_records()
            .stream_name(&options.stream_name)
            .set_records(Some(entries))
            .customize()
            .config_override(own_retries())
            .send()
            .await;
        let failed: Vec<(Pending, String)> = match result {
            Ok(output) => {
                let mut failed = Vec::new();
                for (item, record) in batch.drain(..).zip(output.records) {
                    match record.error_code {
                        None => report.acknowledged(item),
                        Some(code) => {
                            let message = format!(
                                "PutRecords to {}: {code}: {}",
                                options.stream_name,
                                record.error_message.unwrap_or_default()
                            );
                            failed.push((item, message));
                        }
                    }
                }
                failed
            }
            Err(error) => {
                let message = format!(
                    "PutRecords to {}: {}",
                    options.stream_name,
                    error
                        .code()
                        .map_or_else(|| error_text(&error), str::to_string)
                );
                batch
                    .drain(..)
                    .map(|item| (item, message.clone()))
                    .collect()
            }
        };
        if failed.is_empty() {
            return;
        }
        attempt += 1;
        if attempt >= options.max_attempts {
            for (item, message) in failed {
                tracing::error!(call_id = %item.message.call_id, %message, "giving up on an LCA message");
                report.undelivered.push((item.message, message));
            }
            return;
        }
        report.retries += failed.len() as u64;
        tracing::warn!(records = failed.len(), attempt, message = %failed[0].1, "retrying failed records");
        batch = failed.into_iter().map(|(item, _)| item).collect();
        tokio::time::sleep(backoff(options, attempt)).await;
    }
}
