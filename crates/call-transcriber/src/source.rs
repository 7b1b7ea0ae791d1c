//! [`KvsSource`]: one call's audio read live from its Kinesis Video stream: the tokio/AWS edge
//! around [`FragmentReader`] and [`ContactGate`]. Besides the requests it keeps the reading's
//! own state: where to resume, the search for the contact's first fragment (by number, then
//! by producer time where KVS reads AfterFragmentNumber as "after"), the idle clock and the
//! retry budget.
//!
//! It starts at the contact's StartFragmentNumber (or after the last fragment processed by an
//! earlier connection or Lambda), resumes dropped connections from the last fully processed
//! fragment, and ends at the next contact's first fragment, on a KVS error, when the stream
//! ends, or after an idle timeout.

use std::collections::VecDeque;
use std::time::Duration;

use aws_sdk_kinesisvideo::types::ApiName;
use aws_sdk_kinesisvideomedia::config::StalledStreamProtectionConfig;
use aws_sdk_kinesisvideomedia::types::{StartSelector, StartSelectorType};
use bytes::Bytes;
use call_audio::Channel;
use kvs_media::{ChunkSplitter, FragmentReader, KvsError, MediaEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument as _;

use aws_edge::{Backoff, Jitter, error_text};

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
    /// The fragment holding this producer time, ms since the epoch (GetMedia's
    /// PRODUCER_TIMESTAMP selector): for tools given a contact's StartTimestamp rather than
    /// its StartFragmentNumber.
    ProducerTime(u64),
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
    /// Also deliver each fragment's GetMedia bytes ([`SourceEvent::Chunk`]), for tools that
    /// save a call as the stream carried it.
    pub keep_chunks: bool,
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
            keep_chunks: false,
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
    /// The GetMedia bytes of the fragment whose [`SourceEvent::FragmentDone`] follows (one
    /// EBML document, as KVS sent it), when [`SourceOptions::keep_chunks`] asks for them.
    Chunk {
        /// The fragment's number.
        fragment_number: String,
        /// Its bytes.
        bytes: Bytes,
    },
    /// A fragment is fully delivered: a safe point to resume after or hand over at.
    FragmentDone {
        /// Its number.
        fragment_number: String,
        /// Its continuation token, if KVS sent one.
        continuation_token: Option<String>,
        /// How far it was behind the stream's newest data when read, in ms (KVS's
        /// AWS_KINESISVIDEO_MILLIS_BEHIND_NOW tag).
        millis_behind_now: Option<u64>,
    },
    /// A GetMedia request failed and reading resumes after the last fragment (a cut
    /// connection, throttling, or an error chunk that is retried: 5000, 4503). Reported so
    /// that reconnects are counted, and such errors by id.
    Resumed {
        /// The id of the KVS error chunk, when that was the failure.
        kvs_error: Option<String>,
    },
    /// The call's stream is over; nothing follows.
    End(EndReason),
}

/// Why the stream is over for this call.
///
/// An empty or ended GetMedia response is none of these: KVS ends a response body after
/// 3 s when no new fragment is available (GetMedia API reference: "the reading of the HTTP
/// response payload will timeout after 3 seconds if there are no ingested fragments
/// available for playback"), which is what a producer stall in a live call looks like too.
/// The source asks again until the idle timeout has passed without data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The stream is gone (GetMedia answers ResourceNotFoundException after the call was read).
    StreamEnded,
    /// No data for the idle timeout (`KVS_IDLE_TIMEOUT`): the producer stopped.
    Idle,
    /// The stream now carries another contact (Connect reused it).
    OtherContact(String),
    /// The call reached its maximum length (`MAX_CALL_DURATION`): the pipeline stopped
    /// reading, and the rest of the call is not transcribed.
    MaxCallDuration,
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
    /// KVS sent an error chunk that retrying does not fix: the call cannot be read.
    #[error(transparent)]
    Stream(#[from] KvsStreamError),
    /// GetMedia failed (or the connection kept failing) too many times in a row.
    #[error("GetMedia on {stream} failed {attempts} times in a row; last: {message}")]
    GetMedia {
        /// The stream ARN.
        stream: String,
        /// Attempts made.
        attempts: u32,
        /// The id of the KVS error chunk of the last failure, when it was one (5000, 4503).
        kvs_error: Option<String>,
        /// The last failure.
        message: String,
    },
}

/// KVS error ids worth retrying: 5000 internal error, 4503 KMS key unavailable.
fn is_transient(error: &KvsError) -> bool {
    matches!(error.id.trim(), "5000" | "4503")
}

/// The meaning given to an error id the GetMedia API reference does not list.
const UNLISTED_MEANING: &str = "an error id the GetMedia API reference does not list";

/// A GetMedia error chunk that retrying does not fix: the call's audio cannot be read. This
/// is a failure of the invocation, never the end of the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("KVS stream {stream}: GetMedia error {id} ({code}): {meaning}. To fix: {action}")]
pub struct KvsStreamError {
    /// The stream ARN.
    pub stream: String,
    /// AWS_KINESISVIDEO_ERROR_ID as sent (e.g. `4500`).
    pub id: String,
    /// AWS_KINESISVIDEO_ERROR_CODE as sent (KVS puts a description there).
    pub code: String,
    /// What the id means.
    pub meaning: &'static str,
    /// What the operator can do about it.
    pub action: &'static str,
}

impl KvsStreamError {
    /// The error for `error` on `stream`, with the meaning of its id as the GetMedia API
    /// reference lists them (Kinesis Video Streams API reference, GetMedia, "Errors" in the
    /// response: 3002, 4000, 4500-4506, 5000) and what to do about each.
    pub fn new(stream: &str, error: &KvsError) -> Self {
        let id = error.id.trim();
        let (meaning, action) = match id {
            "3002" => (
                "error writing to the stream (the API reference says no more)",
                "retry later; if it persists, check the stream in the Kinesis Video Streams console and contact AWS Support with the stream ARN",
            ),
            "4000" => (
                "the requested fragment was not found",
                "the contact's StartFragmentNumber is not (or no longer) on the stream: check the stream's data retention period (Connect instance, Data storage, Live media streaming) and that the event names the contact's own stream",
            ),
            "4500" => (
                "access denied for the stream's KMS key",
                "grant this function's role kms:Decrypt on the KMS key of the Connect instance's live media streaming (Connect console: the instance, Data storage, Live media streaming, encryption key), or use the AWS managed key",
            ),
            "4501" => (
                "the stream's KMS key is disabled",
                "enable the KMS key of the Connect instance's live media streaming",
            ),
            "4502" => (
                "validation error on the stream's KMS key",
                "check the KMS key configured for the Connect instance's live media streaming",
            ),
            "4503" => (
                "the stream's KMS key is unavailable",
                "KMS did not answer; retry later, and check the key's state in the KMS console",
            ),
            "4504" => (
                "invalid usage of the stream's KMS key",
                "the Connect instance's live media streaming key must be a symmetric encryption key",
            ),
            "4505" => (
                "invalid state of the stream's KMS key",
                "the key is pending deletion or import; restore the KMS key of the Connect instance's live media streaming",
            ),
            "4506" => (
                "the stream's KMS key was not found",
                "the KMS key of the Connect instance's live media streaming was deleted or is in another account or region",
            ),
            "5000" => (
                "internal error in Kinesis Video Streams",
                "retry later; if it persists, contact AWS Support with the stream ARN",
            ),
            _ => (
                UNLISTED_MEANING,
                "see the error code text and the GetMedia API reference",
            ),
        };
        Self {
            stream: stream.to_string(),
            id: id.to_string(),
            code: error.code.trim().to_string(),
            meaning,
            action,
        }
    }

    /// Whether the GetMedia API reference lists this error id.
    pub fn is_documented(&self) -> bool {
        self.meaning != UNLISTED_MEANING
    }
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
            video: aws_sdk_kinesisvideo::Client::new(&aws_edge::with_timeouts(sdk)),
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
    let options = SourceOptions::new(stream_arn, "", start, timeout);
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
    /// When KVS last delivered something new for the call (or reading started, or a request
    /// failed): the idle timeout counts from here, across GetMedia requests.
    last_data: Instant,
}

/// How one GetMedia connection ended.
enum Connection {
    /// KVS sent an error chunk that retrying does not fix.
    Unreadable(KvsError),
    /// The response ended cleanly (KVS had nothing more for now).
    Ended { progressed: bool },
    /// The stream no longer exists.
    Gone,
    /// The connection failed (cut, unreadable, transient KVS error: its id).
    Failed {
        progressed: bool,
        message: String,
        kvs_error: Option<String>,
    },
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
            StartAt::Now | StartAt::ProducerTime(_) => (None, None),
        };
        let from_producer_ms = match options.start {
            StartAt::ProducerTime(ms) => Some(ms),
            _ => None,
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
            from_producer_ms,
            peek: false,
            last_data: Instant::now(),
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
            // The consumer going away (a dropped run) stops reading at once, also while a
            // request waits at the tip of a quiet stream.
            let outcome = tokio::select! {
                outcome = self.connect(&media, tx) => outcome,
                () = tx.closed() => Connection::Closed,
            };
            let reason = match outcome {
                Connection::Closed => return Ok(()),
                Connection::Unreadable(error) => {
                    return Err(KvsStreamError::new(&stream, &error).into());
                }
                Connection::Stop(reason) => reason,
                Connection::Gone => EndReason::StreamEnded,
                Connection::Refetch => continue,
                // KVS ended the response: nothing new for 3 s (the producer paused or
                // stopped), or a long connection ended. Ask again from the last fragment
                // until the idle timeout says the producer has stopped.
                Connection::Ended { progressed } => {
                    if progressed {
                        failures = 0;
                    }
                    if self.idle_left().is_zero() {
                        EndReason::Idle
                    } else {
                        tokio::time::sleep(POLL_PAUSE.min(self.idle_left())).await;
                        continue;
                    }
                }
                Connection::Failed {
                    progressed,
                    message,
                    kvs_error,
                } => {
                    failures = if progressed { 1 } else { failures + 1 };
                    if failures >= self.options.max_attempts {
                        return Err(SourceError::GetMedia {
                            stream,
                            attempts: failures,
                            kvs_error,
                            message,
                        });
                    }
                    tracing::warn!(stream = %stream, attempt = failures, %message, "GetMedia failed; resuming from the last fragment");
                    if tx
                        .send(Ok(SourceEvent::Resumed { kvs_error }))
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                    tokio::time::sleep(RECONNECT_BACKOFF.pause(failures)).await;
                    self.gate.reconnect();
                    // A failed request (throttled, cut, a KVS internal error) says nothing of
                    // whether the producer is idle: the idle clock starts again, and
                    // `max_attempts` bounds a stream that keeps failing.
                    self.last_data = Instant::now();
                    continue;
                }
            };
            let _ = tx.send(Ok(SourceEvent::End(reason))).await;
            return Ok(());
        }
    }

    /// What is left of the idle timeout since KVS last sent data.
    fn idle_left(&self) -> Duration {
        self.options
            .idle_timeout
            .saturating_sub(self.last_data.elapsed())
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
        let output = match tokio::time::timeout(GET_MEDIA_SILENCE_LIMIT, request).await {
            Err(_) => {
                return Connection::Failed {
                    progressed: false,
                    message: format!(
                        "no answer within {} s (KVS answers at once)",
                        GET_MEDIA_SILENCE_LIMIT.as_secs()
                    ),
                    kvs_error: None,
                };
            }
            Ok(Err(error)) => {
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception())
                    && self.gate.last_fragment().is_some()
                {
                    return Connection::Gone;
                }
                return Connection::Failed {
                    progressed: false,
                    message: error_text(&error),
                    kvs_error: None,
                };
            }
            Ok(Ok(output)) => output,
        };
        let mut payload = output.payload;
        let mut reader = FragmentReader::new();
        // Each fragment's bytes, kept until the gate lets the fragment through or passes it.
        let mut splitter = self.options.keep_chunks.then(ChunkSplitter::new);
        let mut chunks = VecDeque::new();
        let mut progressed = false;
        let mut received_bytes = 0usize;
        loop {
            let bytes = match tokio::time::timeout(GET_MEDIA_SILENCE_LIMIT, payload.next()).await {
                Err(_) => {
                    return Connection::Failed {
                        progressed,
                        message: format!(
                            "the response sent nothing for {} s and did not end (KVS ends one \
                             with no fragments to send after 3 s)",
                            GET_MEDIA_SILENCE_LIMIT.as_secs()
                        ),
                        kvs_error: None,
                    };
                }
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
                        kvs_error: None,
                    };
                }
                Ok(Some(Ok(bytes))) => Some(bytes),
            };
            let received = Instant::now();
            if let Some(bytes) = &bytes {
                received_bytes += bytes.len();
                reader.push(bytes);
            }
            if let Some(splitter) = &mut splitter {
                if let Some(bytes) = &bytes {
                    splitter.push(bytes);
                }
                let mut split = || -> Result<(), kvs_media::SplitError> {
                    while let Some(chunk) = splitter.next_chunk()? {
                        chunks.push_back(chunk);
                    }
                    if bytes.is_none() {
                        chunks.extend(splitter.finish()?);
                    }
                    Ok(())
                };
                if let Err(error) = split() {
                    return Connection::Failed {
                        progressed,
                        message: format!("unreadable media: {error}"),
                        kvs_error: None,
                    };
                }
            }
            loop {
                let event = match reader.next_event() {
                    Ok(Some(event)) => event,
                    Ok(None) => break,
                    Err(error) => {
                        return Connection::Failed {
                            progressed,
                            message: format!("unreadable media: {error}"),
                            kvs_error: None,
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
                            millis_behind_now,
                        } => {
                            progressed = true;
                            // Found (or passed) the first fragment: resume by number from now.
                            self.from_producer_ms = None;
                            if let Some(splitter) = &mut splitter {
                                let kept = take_chunk(&mut chunks, splitter, &fragment_number);
                                if let Some(bytes) = kept {
                                    let chunk = SourceEvent::Chunk {
                                        fragment_number: fragment_number.clone(),
                                        bytes,
                                    };
                                    if tx.send(Ok(chunk)).await.is_err() {
                                        return Connection::Closed;
                                    }
                                }
                            }
                            SourceEvent::FragmentDone {
                                fragment_number,
                                continuation_token,
                                millis_behind_now,
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
                                    kvs_error: Some(error.id.trim().to_string()),
                                };
                            }
                            return Connection::Unreadable(error);
                        }
                    };
                    if self.peek && matches!(event, SourceEvent::Audio { .. }) {
                        continue;
                    }
                    if tx.send(Ok(event)).await.is_err() {
                        return Connection::Closed;
                    }
                    // New data for the call. (Bytes alone are not: a request from the last
                    // fragment gets that fragment again when KVS reads the selector as
                    // "including".) Time spent waiting for the consumer (a Transcribe
                    // session waiting for capacity holds reading back) is not KVS being idle
                    // either, so the clock starts after the hand-off.
                    self.last_data = Instant::now();
                }
            }
            if bytes.is_none() {
                return Connection::Ended { progressed };
            }
        }
    }
}

/// Pause before asking KVS again after a failure: 250 ms doubling to 2 s (GetMedia allows
/// 5 calls per second per stream), no jitter (the stream is this call's alone).
const RECONNECT_BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(250),
    max: Duration::from_secs(2),
    jitter: Jitter::None,
};

/// How long a GetMedia request may go unanswered, or its response send nothing without
/// ending, before it counts as a failed request (resumed from the last fragment, up to the
/// source's attempts) rather than as a quiet producer: KVS answers at once and ends a
/// response after 3 s without fragments to send ("the reading of the HTTP response payload
/// will timeout after 3 seconds if there are no ingested fragments available for playback",
/// GetMedia API reference), so only KVS's empty answers count towards `KVS_IDLE_TIMEOUT`; a
/// connection that black-holes must not end the call as if the caller had hung up. The
/// attempt limit of every other request (`aws_edge::REQUEST_ATTEMPT_TIMEOUT`).
const GET_MEDIA_SILENCE_LIMIT: Duration = aws_edge::REQUEST_ATTEMPT_TIMEOUT;

/// Pause before asking again after a response that ended with nothing more: at most 2 calls
/// per second (the KVS quotas page: "A unique consuming client shouldn't need more than 2 or
/// 3 TPS"); against AWS each such response itself lasts 3 s.
const POLL_PAUSE: Duration = Duration::from_millis(500);

/// How far before a fragment's producer time to read when fetching the one before it.
const FIRST_FRAGMENT_MARGIN_MS: u64 = 3_000;

/// The bytes of fragment `number`, which the gate has just let through, from the chunks split
/// off so far; earlier ones (passed over by the gate) are dropped.
fn take_chunk(
    chunks: &mut VecDeque<Bytes>,
    splitter: &mut ChunkSplitter,
    number: &str,
) -> Option<Bytes> {
    loop {
        let chunk = match chunks.pop_front() {
            Some(chunk) => chunk,
            // Its end tags are read, so its bytes are whole even before the next fragment
            // begins.
            None => splitter.end_chunk()?,
        };
        if fragment_number_of(&chunk).as_deref() == Some(number) {
            return Some(chunk);
        }
    }
}

/// The fragment number a GetMedia chunk carries in its AWS_KINESISVIDEO_FRAGMENT_NUMBER tag.
fn fragment_number_of(chunk: &[u8]) -> Option<String> {
    let mut reader = FragmentReader::new();
    reader.push(chunk);
    reader.end_of_input();
    while let Ok(Some(event)) = reader.next_event() {
        if let MediaEvent::FragmentStart(start) = event {
            return start.fragment_number;
        }
    }
    None
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

    /// The error ids of GetMedia's payload as the Kinesis Video Streams API reference lists
    /// them (GetMedia, Response Elements, Payload: "The error codes are as follows"), with a
    /// word of each description.
    const GET_MEDIA_REFERENCE: [(&str, &str); 10] = [
        ("3002", "writing to the stream"),
        ("4000", "fragment was not found"),
        ("4500", "access denied"),
        ("4501", "disabled"),
        ("4502", "validation error"),
        ("4503", "unavailable"),
        ("4504", "invalid usage"),
        ("4505", "invalid state"),
        ("4506", "not found"),
        ("5000", "internal error"),
    ];

    fn chunk(id: &str) -> KvsError {
        KvsError {
            code: "from KVS".to_string(),
            id: id.to_string(),
        }
    }

    #[test]
    fn every_error_id_the_get_media_reference_lists_has_its_meaning_and_no_other_does() {
        for (id, words) in GET_MEDIA_REFERENCE {
            let error = KvsStreamError::new("arn:s", &chunk(id));
            assert!(error.is_documented(), "{id}");
            assert!(
                error.meaning.to_lowercase().contains(words),
                "{id}: {}",
                error.meaning
            );
            assert!(!error.action.is_empty());
        }
        for id in ["4507", "3000", "0", "", "abc"] {
            let error = KvsStreamError::new("arn:s", &chunk(id));
            assert!(!error.is_documented(), "{id}");
            // An unknown id is named as sent, so the operator can look it up.
            assert!(
                error
                    .to_string()
                    .contains(&format!("GetMedia error {id} (from KVS)")),
                "{error}"
            );
        }
        // Retried: the two the reference words as passing (an internal error; a key that is
        // unavailable). The reference does not say which are retryable; the others need the
        // operator (a key, a grant, a missing fragment).
        let retried: Vec<&str> = GET_MEDIA_REFERENCE
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| is_transient(&chunk(id)))
            .collect();
        assert_eq!(retried, ["4503", "5000"]);
        assert!(is_transient(&chunk(" 5000 ")), "ids are read trimmed");
    }

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
