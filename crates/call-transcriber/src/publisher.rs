//! The ordered Kinesis publisher: LCA messages of one call onto the LCA data stream in the
//! order they were produced, none dropped silently.
//!
//! Every message goes out with PutRecord, one request in flight, each carrying the previous
//! record's sequence number as SequenceNumberForOrdering, so the shard keeps them in order.
//! PutRecords is not used: "A single record failure does not stop the processing of
//! subsequent records. As a result, PutRecords doesn't guarantee the ordering of records. If
//! you need to read records in the same order they are written to the stream, use PutRecord
//! instead of PutRecords, and write to the same shard" (Kinesis API reference, PutRecords).
//! A burst costs fewer round trips another way: a partial result whose segment has a newer
//! version queued is skipped (LCA would overwrite it at once); finals are never skipped.
//!
//! Throttling (ProvisionedThroughputExceeded, KMSThrottling), service and connection errors
//! are retried with exponential backoff until the run's time is up. The errors PutRecord
//! documents for a request that cannot succeed as it stands (a missing stream, denied access,
//! the stream's KMS key unusable, an invalid argument) are not retried: they need the
//! operator, and the report says so ([`PublishReport::refused`]). A message that cannot be
//! delivered stops the
//! publisher: it and everything after it are reported undelivered, so what reached the
//! stream is always a prefix of what was produced (which is what [`crate::Delivered`]
//! records, exactly).
//!
//! Kinesis itself is at-least-once: a request whose response is lost is retried and may
//! store its record twice. LCA's consumer keys segments by SegmentId, so such a repeat
//! overwrites rather than duplicates.

use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use lca_events::{LcaEvent, LcaMessage, Segment};
use tokio::sync::mpsc;
use tokio::time::Instant;

use aws_edge::{Backoff, Jitter, error_text};

use crate::delivery_record::{DeliveryRecord, changes_delivered};
use crate::progress::RunProgress;

/// How the publisher retries.
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// The LCA Kinesis data stream.
    pub stream_name: String,
    /// Attempts per record before it is reported undelivered (at least one is made).
    pub max_attempts: u32,
    /// No retry starts after this instant (the run's time is up): the record is reported
    /// undelivered instead. `None`: only `max_attempts` limits.
    pub give_up_at: Option<Instant>,
    /// The pause between attempts.
    pub backoff: Backoff,
    /// The run's figures as they grow: acknowledgements and retries.
    pub progress: Option<RunProgress>,
}

impl PublisherOptions {
    /// Defaults: 10 attempts, 50 ms doubling to 2 s (about 9 s of pauses in all), no
    /// jitter (the records are one call's, in order: no other caller waits on the same
    /// pause), no deadline.
    pub fn new(stream_name: &str) -> Self {
        Self {
            stream_name: stream_name.to_string(),
            max_attempts: 10,
            give_up_at: None,
            backoff: Backoff {
                first: Duration::from_millis(50),
                max: Duration::from_secs(2),
                jitter: Jitter::None,
            },
            progress: None,
        }
    }

    /// Retrying until `deadline` (a Lambda run's time), however many attempts that takes.
    pub fn until(stream_name: &str, deadline: Instant) -> Self {
        Self {
            max_attempts: u32::MAX,
            give_up_at: Some(deadline),
            ..Self::new(stream_name)
        }
    }

    /// Whether another attempt may follow attempt `attempt` after `delay`.
    fn may_retry(&self, attempt: u32, delay: Duration) -> bool {
        attempt < self.max_attempts
            && self
                .give_up_at
                .is_none_or(|deadline| Instant::now() + delay < deadline)
    }
}

/// What the publisher did.
#[derive(Debug, Clone, Default)]
pub struct PublishReport {
    /// Records acknowledged by Kinesis.
    pub delivered: u64,
    /// Messages that could not be delivered, with the last error.
    pub undelivered: Vec<(LcaMessage, String)>,
    /// Kinesis refused the first undeliverable message for good (an error that retrying
    /// does not fix, [`is_refusal`]); `false` when time or attempts ran out first.
    pub refused: bool,
    /// Requests made (PutRecord and PutRecords).
    pub requests: u64,
    /// Requests retried.
    pub retries: u64,
    /// Partial results not sent because a newer version of their segment was queued.
    pub superseded: u64,
    /// Per delivered record: from its arrival at the publisher to Kinesis's acknowledgement.
    pub latencies: Vec<Duration>,
    /// Per record: from its arrival at the publisher to the start of its first request
    /// (the latency the publisher adds; the rest is Kinesis's).
    pub queue_latencies: Vec<Duration>,
    delivered_tap: Option<mpsc::UnboundedSender<LcaMessage>>,
    progress: Option<RunProgress>,
}

impl PublishReport {
    fn acknowledged(&mut self, item: Pending) {
        self.delivered += 1;
        self.latencies.push(item.arrived.elapsed());
        let now = Instant::now();
        let final_end = item.message.final_segment_end().map(|(_, end_ms)| end_ms);
        if let Some(progress) = &self.progress {
            progress.acknowledged(final_end, now);
        }
        if let Some(tap) = &self.delivered_tap {
            let _ = tap.send(item.message);
        }
    }
}

struct Pending {
    message: LcaMessage,
    data: Vec<u8>,
    arrived: Instant,
}

/// Publishes everything `messages` delivers until it closes; returns what was done. Each
/// message Kinesis acknowledged is also sent to `delivered`, when given (progress displays),
/// and noted in `record`, when given (a run under the call's lease): then a message that
/// could change what the lease records waits until the lease has recorded every earlier
/// change ([`DeliveryRecord`]).
pub async fn run(
    client: &aws_sdk_kinesis::Client,
    options: &PublisherOptions,
    mut messages: mpsc::Receiver<LcaMessage>,
    delivered: Option<mpsc::UnboundedSender<LcaMessage>>,
    mut record: Option<DeliveryRecord>,
) -> PublishReport {
    let mut report = PublishReport {
        delivered_tap: delivered,
        progress: options.progress.clone(),
        ..PublishReport::default()
    };
    let mut queue: std::collections::VecDeque<Pending> = std::collections::VecDeque::new();
    let mut last_sequence: Option<String> = None;
    let mut open = true;
    loop {
        if queue.is_empty() {
            if !open {
                break;
            }
            match messages.recv().await {
                Some(message) => queue.push_back(pending(message)),
                None => break,
            }
        }
        while let Ok(message) = messages.try_recv() {
            queue.push_back(pending(message));
        }
        if messages.is_closed() && messages.is_empty() {
            open = false;
        }
        let item = queue.pop_front().expect("the queue is not empty");
        if let Some(key) = partial_key(&item.message)
            && queue
                .iter()
                .any(|later| segment_key(&later.message) == Some(key))
        {
            report.superseded += 1;
            continue;
        }
        // A change to what the lease records waits for the lease to have the ones before.
        let change = match &mut record {
            Some(record) if changes_delivered(&item.message) => {
                record.until_recorded().await;
                Some(item.message.clone())
            }
            _ => None,
        };
        report.queue_latencies.push(item.arrived.elapsed());
        let acknowledged = put_one(client, options, item, &mut last_sequence, &mut report).await;
        if let (Ok(()), Some(record), Some(change)) = (&acknowledged, &record, &change) {
            record.acknowledged(change);
        }
        if let Err((item, error, refused)) = acknowledged {
            report.refused = refused;
            // Nothing after an undeliverable message is sent: the stream keeps a prefix.
            tracing::error!(call_id = %item.message.call_id, message = %error, "giving up on LCA messages: Kinesis did not take them");
            report.undelivered.push((item.message, error.clone()));
            while let Some(rest) = queue.pop_front() {
                report.undelivered.push((rest.message, error.clone()));
            }
            while let Some(rest) = messages.recv().await {
                report.undelivered.push((rest, error.clone()));
            }
            break;
        }
    }
    report.delivered_tap = None;
    report
}

/// The segment a transcript message updates (standard: SegmentId; Call Analytics: the
/// utterance id), if it is one.
fn segment_key(message: &LcaMessage) -> Option<&str> {
    match &message.event {
        LcaEvent::AddTranscriptSegment(Segment::Standard(s)) => Some(&s.segment_id),
        LcaEvent::AddTranscriptSegment(Segment::Analytics(a)) => {
            a.utterance_event["UtteranceId"].as_str()
        }
        _ => None,
    }
}

/// The segment key of a partial result (which a newer version of the segment replaces).
fn partial_key(message: &LcaMessage) -> Option<&str> {
    if message.is_partial() {
        segment_key(message)
    } else {
        None
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

/// The SDK's own retries are off for puts: the publisher retries (with its backoff, its
/// limits and its report).
fn own_retries() -> aws_sdk_kinesis::config::Builder {
    aws_sdk_kinesis::config::Builder::default()
        .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
}

/// Whether a PutRecord error code says the request cannot succeed as it stands, so retrying
/// is pointless: of the errors the Kinesis API reference lists for PutRecord, all but
/// ProvisionedThroughputExceededException and KMSThrottlingException. Anything else (an
/// internal failure, an unavailable service, a lost connection) is retried.
pub fn is_refusal(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "AccessDeniedException"
                | "InvalidArgumentException"
                | "KMSAccessDeniedException"
                | "KMSDisabledException"
                | "KMSInvalidStateException"
                | "KMSNotFoundException"
                | "KMSOptInRequired"
                | "ResourceNotFoundException"
                | "ValidationException"
        )
    )
}

/// Puts one record, retrying; gives it back with the last error, and whether that error was
/// a refusal ([`is_refusal`]), when it cannot be delivered.
async fn put_one(
    client: &aws_sdk_kinesis::Client,
    options: &PublisherOptions,
    item: Pending,
    last_sequence: &mut Option<String>,
    report: &mut PublishReport,
) -> Result<(), (Pending, String, bool)> {
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
                return Ok(());
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
                let refused = is_refusal(error.code());
                let delay = options.backoff.pause(attempt);
                if refused || !options.may_retry(attempt, delay) {
                    return Err((item, message, refused));
                }
                report.retries += 1;
                if let Some(progress) = &report.progress {
                    progress.kinesis_retried();
                }
                tracing::warn!(call_id = %item.message.call_id, attempt, %message, "retrying PutRecord");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
