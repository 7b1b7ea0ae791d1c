//! [`KvsSource`]: one call's audio read live from its Kinesis Video stream — the thin tokio/AWS
//! edge around [`FragmentReader`] and [`ContactGate`].
//!
//! It starts at the contact's StartFragmentNumber (or after the last fragment processed by an
//! earlier connection or Lambda), resumes dropped connections from the last fully processed
//! fragment, and ends at the next contact's first fragment, on a KVS error, when the stream
//! ends, or after an idle timeout.

use std::time::Duration;

use aws_sdk_kinesisvideo::types::ApiName;
use aws_sdk_kinesisvideomedia::config::StalledStreamProtectionConfig;
use aws_sdk_kinesisvideomedia::types::{StartSelector, StartSelectorType};
use bytes::Bytes;
use call_audio::Channel;
use kvs_media::{FragmentReader, KvsError, MediaEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::gate::{ContactGate, GateOutput, StopReason};

/// Where reading starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// The contact's StartFragmentNumber: this fragment is the call's first.
    Fragment(String),
    /// The last fragment already processed: continue after it.
    After(String),
    /// The newest data on the stream (live only; what came before is not read). For tools
    /// that join a call in progress without knowing its first fragment.
    Now,
}

/// How one call's stream is read.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// The call's KVS stream.
    pub stream_arn: String,
    /// The Connect contact whose audio this is.
    pub contact_id: String,
    /// Where to start.
    pub start: StartAt,
    /// The call is over after this long without data from KVS.
    pub idle_timeout: Duration,
    /// A producer-time gap between fragments beyond which audio is held until its ContactId
    /// is known (a reused stream's next call starts after a gap).
    pub max_gap: Duration,
    /// Connection attempts in a row without progress before giving up.
    pub max_attempts: u32,
}

impl SourceOptions {
    /// Options with the defaults: 2 s gap, 5 attempts.
    pub fn new(stream_arn: &str, contact_id: &str, start: StartAt, idle_timeout: Duration) -> Self {
        Self {
            stream_arn: stream_arn.to_string(),
            contact_id: contact_id.to_string(),
            start,
            idle_timeout,
            max_gap: Duration::from_secs(2),
            max_attempts: 5,
        }
    }
}

/// What the source delivers, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// Audio of this call.
    Audio {
        /// Caller or agent.
        channel: Channel,
        /// Absolute producer timestamp, ns.
        timestamp_ns: i64,
        /// s16le mono PCM.
        pcm: Bytes,
        /// When its bytes arrived from KVS.
        received: Instant,
    },
    /// A fragment is fully delivered: a safe point to resume after or hand over at.
    FragmentDone {
        /// Its number.
        fragment_number: String,
        /// Its continuation token, if KVS sent one.
        continuation_token: Option<String>,
    },
    /// The call's stream is over; nothing follows.
    End(EndReason),
}

/// Why the stream is over for this call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// GetMedia ended and a new request brought nothing new: the producer stopped.
    StreamEnded,
    /// No data for the idle timeout.
    Idle,
    /// The stream now carries another contact (Connect reused it).
    OtherContact(String),
    /// KVS sent an error chunk that retrying does not fix.
    KvsError(KvsError),
}

/// What keeps the source from reading the stream.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// GetDataEndpoint failed.
    #[error("GetDataEndpoint for {stream}: {message}")]
    DataEndpoint {
        /// The stream ARN.
        stream: String,
        /// The SDK's error, with its details.
        message: String,
    },
    /// GetMedia failed (or the connection kept failing) too many times in a row.
    #[error("GetMedia on {stream} failed {attempts} times in a row; last: {message}")]
    GetMedia {
        /// The stream ARN.
        stream: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        message: String,
    },
}

/// KVS error ids worth retrying: 5000 internal error, 4503 KMS key unavailable.
fn is_transient(error: &KvsError) -> bool {
    matches!(error.id.trim(), "5000" | "4503")
}

/// The two KVS clients a source needs, built once per process.
#[derive(Clone, Debug)]
pub struct KvsClients {
    video: aws_sdk_kinesisvideo::Client,
    media: aws_sdk_kinesisvideomedia::Config,
}

impl KvsClients {
    /// Clients from the shared SDK configuration (so `AWS_ENDPOINT_URL_KINESIS_VIDEO`
    /// redirects the control plane; the media endpoint comes from GetDataEndpoint).
    ///
    /// Stalled-stream protection is off for GetMedia, deliberately: a live call can be quiet
    /// on KVS for longer than its 5 s grace, and the end of a call is an idle stream. The
    /// source's own idle timeout decides when a quiet stream is over.
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        let media = aws_sdk_kinesisvideomedia::config::Builder::from(sdk)
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .build();
        Self {
            video: aws_sdk_kinesisvideo::Client::new(sdk),
            media,
        }
    }
}

/// Starts reading in a task; events arrive on the returned channel, ending with
/// [`SourceEvent::End`] or an error. Dropping the receiver stops the task.
pub fn spawn(
    clients: KvsClients,
    options: SourceOptions,
) -> mpsc::Receiver<Result<SourceEvent, SourceError>> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(
        async move {
            let mut source = KvsSource::new(clients, options);
            let result = source.run(&tx).await;
            if let Err(error) = result {
                let _ = tx.send(Err(error)).await;
            }
        }
        .in_current_span(),
    );
    rx
}

/// The ContactId of the first fragment read from `start` (waiting at most `timeout`), for
/// tools that are given a stream but not the call on it.
pub async fn first_contact_id(
    clients: &KvsClients,
    stream_arn: &str,
    start: StartAt,
    timeout: Duration,
) -> Result<Option<String>, SourceError> {
    let mut options = SourceOptions::new(stream_arn, "", start, timeout);
    options.max_attempts = 1;
    let mut source = KvsSource::new(clients.clone(), options);
    source.peek = true;
    let (tx, mut rx) = mpsc::channel(16);
    let result = {
        let run = source.run(&tx);
        tokio::pin!(run);
        loop {
            tokio::select! {
                result = &mut run => break result,
                Some(event) = rx.recv() => {
                    if let Ok(SourceEvent::End(EndReason::OtherContact(contact))) = event {
                        return Ok(Some(contact));
                    }
                }
            }
        }
    };
    result?;
    while let Ok(event) = rx.try_recv() {
        if let Ok(SourceEvent::End(EndReason::OtherContact(contact))) = event {
            return Ok(Some(contact));
        }
    }
    Ok(None)
}

/// The reading loop (one per call).
struct KvsSource {
    clients: KvsClients,
    options: SourceOptions,
    gate: ContactGate,
    /// The contact's first fragment when the call starts there (not yet seen).
    first_fragment: Option<String>,
    /// Producer timestamp to read from, when the first fragment must be fetched by time.
    from_producer_ms: Option<u64>,
    /// Only looking for the first ContactId: audio is not delivered.
    peek: bool,
}

/// How one GetMedia connection ended.
enum Connection {
    /// The response ended cleanly.
    Ended { progressed: bool },
    /// The connection failed (cut, unreadable, transient KVS error).
    Failed { progressed: bool, message: String },
    /// Nothing arrived for the idle timeout.
    Idle,
    /// The call's stream is over.
    Stop(EndReason),
    /// KVS started after the contact's first fragment: read again by time.
    Refetch,
    /// The consumer went away.
    Closed,
}

impl KvsSource {
    fn new(clients: KvsClients, options: SourceOptions) -> Self {
        let (resume_after, first_fragment) = match &options.start {
            // Skip anything before the contact's first fragment (a reused stream's previous
            // call), whichever way KVS reads the selector.
            StartAt::Fragment(number) => (Some(predecessor(number)), Some(number.clone())),
            StartAt::After(number) => (Some(number.clone()), None),
            StartAt::Now => (None, None),
        };
        let gate = ContactGate::new(
            options.contact_id.clone(),
            resume_after,
            options.max_gap.as_millis() as u64,
        );
        Self {
            clients,
            options,
            gate,
            first_fragment,
            from_producer_ms: None,
            peek: false,
        }
    }

    async fn run(
        &mut self,
        tx: &mpsc::Sender<Result<SourceEvent, SourceError>>,
    ) -> Result<(), SourceError> {
        let stream = self.options.stream_arn.clone();
        let endpoint = self
            .clients
            .video
            .get_data_endpoint()
            .stream_arn(&stream)
            .api_name(ApiName::GetMedia)
            .send()
            .await
            .map_err(|e| SourceError::DataEndpoint {
                stream: stream.clone(),
                message: error_text(&e),
            })?
            .data_endpoint
            .ok_or_else(|| SourceError::DataEndpoint {
                stream: stream.clone(),
                message: "the response has no DataEndpoint".to_string(),
            })?;
        let media = aws_sdk_kinesisvideomedia::Client::from_conf(
            self.clients
                .media
                .to_builder()
                .endpoint_url(endpoint)
                .build(),
        );
        let mut failures = 0u32;
        loop {
            let outcome = self.connect(&media, tx).await;
            let reason = match outcome {
                Connection::Closed => return Ok(()),
                Connection::Stop(reason) => reason,
                Connection::Idle => EndReason::Idle,
                Connection::Refetch => continue,
                // KVS ended the response (the producer stopped). Ask again from the last
                // fragment in case more followed; a response with nothing new ends the call.
                Connection::Ended { progressed: true } => {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
                Connection::Ended { progressed: false } => EndReason::StreamEnded,
                Connection::Failed {
                    progressed,
                    message,
                } => {
                    failures = if progressed { 1 } else { failures + 1 };
                    if failures >= self.options.max_attempts {
                        return Err(SourceError::GetMedia {
                            stream,
                            attempts: failures,
                            message,
                        });
                    }
                    tracing::warn!(stream = %stream, attempt = failures, %message, "GetMedia failed; resuming from the last fragment");
                    tokio::time::sleep(RECONNECT_PAUSE * failures).await;
                    self.gate.reconnect();
                    continue;
                }
            };
            let _ = tx.send(Ok(SourceEvent::End(reason))).await;
            return Ok(());
        }
    }

    fn selector(&self) -> StartSelector {
        let builder = StartSelector::builder();
        let builder = if let Some(ms) = self.from_producer_ms {
            builder
                .start_selector_type(StartSelectorType::ProducerTimestamp)
                .start_timestamp(
                    aws_sdk_kinesisvideomedia::primitives::DateTime::from_millis(ms as i64),
                )
        } else if let Some(number) = self.first_fragment.as_deref().or(self.gate.last_fragment()) {
            builder
                .start_selector_type(StartSelectorType::FragmentNumber)
                .after_fragment_number(number)
        } else {
            builder.start_selector_type(StartSelectorType::Now)
        };
        builder.build().expect("start selector type is set")
    }

    /// One GetMedia request, read until it ends or the call's stream is over.
    async fn connect(
        &mut self,
        media: &aws_sdk_kinesisvideomedia::Client,
        tx: &mpsc::Sender<Result<SourceEvent, SourceError>>,
    ) -> Connection {
        let request = media
            .get_media()
            .stream_arn(&self.options.stream_arn)
            .start_selector(self.selector())
            .send();
        let output = match tokio::time::timeout(self.options.idle_timeout, request).await {
            Err(_) => return Connection::Idle,
            Ok(Err(error)) => {
                return Connection::Failed {
                    progressed: false,
                    message: error_text(&error),
                };
            }
            Ok(Ok(output)) => output,
        };
        let mut payload = output.payload;
        let mut reader = FragmentReader::new();
        let mut progressed = false;
        let mut received_bytes = 0usize;
        loop {
            let bytes = match tokio::time::timeout(self.options.idle_timeout, payload.next()).await
            {
                Err(_) => return Connection::Idle,
                // An empty response: nothing (new) on the stream.
                Ok(None) if received_bytes == 0 => {
                    return Connection::Ended { progressed };
                }
                Ok(None) => {
                    reader.end_of_input();
                    None
                }
                Ok(Some(Err(error))) => {
                    return Connection::Failed {
                        progressed,
                        message: format!("the response was cut: {}", error_text(&error)),
                    };
                }
                Ok(Some(Ok(bytes))) => Some(bytes),
            };
            let received = Instant::now();
            if let Some(bytes) = &bytes {
                received_bytes += bytes.len();
                reader.push(bytes);
            }
            loop {
                let event = match reader.next_event() {
                    Ok(Some(event)) => event,
                    Ok(None) => break,
                    Err(error) => {
                        return Connection::Failed {
                            progressed,
                            message: format!("unreadable media: {error}"),
                        };
                    }
                };
                if let MediaEvent::FragmentStart(start) = &event
                    && let Some(first) = self.first_fragment.clone()
                    && let Some(number) = &start.fragment_number
                {
                    match compare(number, &first) {
                        std::cmp::Ordering::Less => {}
                        std::cmp::Ordering::Equal => {
                            self.first_fragment = None;
                            self.from_producer_ms = None;
                        }
                        std::cmp::Ordering::Greater => {
                            // KVS read AfterFragmentNumber as "after": the contact's first
                            // fragment was skipped. Read again from a little before this one's
                            // producer time; earlier fragments are skipped by number.
                            match (self.from_producer_ms, start.producer_timestamp_ms) {
                                (None, Some(ms)) => {
                                    self.from_producer_ms =
                                        Some(ms.saturating_sub(FIRST_FRAGMENT_MARGIN_MS));
                                    return Connection::Refetch;
                                }
                                _ => {
                                    tracing::warn!(first = %first, got = %number, "the contact's first fragment is not on the stream; starting with the next");
                                    self.first_fragment = None;
                                    self.from_producer_ms = None;
                                }
                            }
                        }
                    }
                }
                for output in self.gate.handle(event) {
                    let event = match output {
                        GateOutput::Audio {
                            channel,
                            timestamp_ns,
                            pcm,
                        } => SourceEvent::Audio {
                            channel,
                            timestamp_ns,
                            pcm,
                            received,
                        },
                        GateOutput::FragmentDone {
                            fragment_number,
                            continuation_token,
                        } => {
                            progressed = true;
                            SourceEvent::FragmentDone {
                                fragment_number,
                                continuation_token,
                            }
                        }
                        GateOutput::Stop(StopReason::OtherContact(contact)) => {
                            return Connection::Stop(EndReason::OtherContact(contact));
                        }
                        GateOutput::Stop(StopReason::KvsError(error)) => {
                            if is_transient(&error) {
                                return Connection::Failed {
                                    progressed,
                                    message: format!(
                                        "KVS error {} ({})",
                                        error.id.trim(),
                                        error.code.trim()
                                    ),
                                };
                            }
                            return Connection::Stop(EndReason::KvsError(error));
                        }
                    };
                    if self.peek && matches!(event, SourceEvent::Audio { .. }) {
                        continue;
                    }
                    if tx.send(Ok(event)).await.is_err() {
                        return Connection::Closed;
                    }
                }
            }
            if bytes.is_none() {
                return Connection::Ended { progressed };
            }
        }
    }
}

/// Pause before asking KVS again (GetMedia allows 5 calls per second per stream).
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

/// How far before a fragment's producer time to read when fetching the one before it.
const FIRST_FRAGMENT_MARGIN_MS: u64 = 3_000;

/// An error with its source chain, for messages (the Display of an SdkError alone says
/// little: "service error").
pub fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Orders decimal fragment numbers of any length.
fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    (a.len(), a).cmp(&(b.len(), b))
}

/// The decimal number one below `number` (fragment numbers exceed u128).
fn predecessor(number: &str) -> String {
    let mut digits: Vec<u8> = number.trim().bytes().collect();
    if digits.is_empty()
        || !digits.iter().all(u8::is_ascii_digit)
        || digits.iter().all(|&d| d == b'0')
    {
        return "0".to_string();
    }
    for d in digits.iter_mut().rev() {
        if *d == b'0' {
            *d = b'9';
        } else {
            *d -= 1;
            break;
        }
    }
    let text = String::from_utf8(digits).expect("ASCII digits");
    let trimmed = text.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_string()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_number_arithmetic() {
        assert_eq!(
            predecessor("91343852333181432392682062607743920146264772733"),
            "91343852333181432392682062607743920146264772732"
        );
        assert_eq!(predecessor("1000"), "999");
        assert_eq!(predecessor("1"), "0");
        assert_eq!(predecessor("0"), "0");
        assert_eq!(predecessor("x"), "0");
        assert_eq!(compare("999", "1000"), std::cmp::Ordering::Less);
        assert_eq!(compare("0100", "100"), std::cmp::Ordering::Equal);
    }
}
