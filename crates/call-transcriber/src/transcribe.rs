//! The Transcribe Streaming edge: one call's stereo audio in, LCA messages out, across as many
//! Transcribe sessions as failures require ([`TranscriptLedger`] keeps them lossless and
//! duplicate-free).

use std::time::Duration;

use aws_sdk_transcribestreaming::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_transcribestreaming::primitives::Blob;
use aws_sdk_transcribestreaming::types::error::AudioStreamError;
use aws_sdk_transcribestreaming::types::{
    AudioEvent, AudioStream, CallAnalyticsLanguageCode, CallAnalyticsTranscriptResultStream,
    CategoryEvent, ChannelDefinition, ConfigurationEvent, ContentRedactionType, ItemType,
    LanguageCode, MediaEncoding, ParticipantRole, TranscriptEvent, TranscriptResultStream,
    UtteranceEvent, VocabularyFilterMethod,
};
use call_audio::StereoChunk;
use lca_events::{LcaMessage, SegmentMapper, TranscriptItem, TranscriptResult};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument as _;
use transcript_ledger::{Mapped, SessionOutput, TranscriptLedger, map_output};

use crate::config::{ApiMode, Language, TranscribeSettings};
use crate::delivered::Delivered;
use crate::lanes::{CurrentLane, LaneGauge, LaneMerge, LaneRouter, Route};
use crate::progress::{RunProgress, SAMPLES_PER_MS};
use aws_edge::{Backoff, Jitter, error_text};

/// A Transcribe Streaming client from the shared SDK configuration; `TRANSCRIBE_ENDPOINT`
/// overrides the endpoint (otherwise `AWS_ENDPOINT_URL_TRANSCRIBE_STREAMING` applies).
pub fn client(
    sdk: &aws_config::SdkConfig,
    settings: &TranscribeSettings,
) -> aws_sdk_transcribestreaming::Client {
    let mut config = aws_sdk_transcribestreaming::config::Builder::from(sdk);
    if let Some(endpoint) = &settings.endpoint {
        config = config.endpoint_url(endpoint);
    }
    aws_sdk_transcribestreaming::Client::from_conf(config.build())
}

/// One call's transcription.
#[derive(Debug, Clone)]
pub struct CallTranscription {
    /// The call (LCA CallId).
    pub call_id: String,
    /// Transcribe options.
    pub settings: TranscribeSettings,
    /// `SAVE_PARTIAL_TRANSCRIPTS`.
    pub save_partials: bool,
    /// Silence is sent after this long without audio.
    pub keep_alive: Duration,
    /// The session id to reuse (a call continued by a new Lambda), if any.
    pub session_id: Option<String>,
    /// Call sample at which this invocation's audio starts (segment times stay relative to
    /// the call's start).
    pub start_sample: u64,
    /// What an earlier, crashed attempt already published (nothing for a normal run).
    pub delivered: Delivered,
    /// Until when a session may wait for Transcribe capacity (LimitExceededException):
    /// the invocation's time; `None`: as long as it takes.
    pub give_up_at: Option<Instant>,
    /// The run's figures as they grow: sessions, capacity waits, audio given to Transcribe.
    pub progress: Option<RunProgress>,
    /// When the run hands the call over (a Lambda's deadline): a lane holds no more audio
    /// than it can be taken to finish by then; `None`: no limit but the memory bound.
    pub hand_over_at: Option<Instant>,
}

/// What a transcription did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TranscriptionSummary {
    /// The Transcribe session id (for a continuation).
    pub session_id: Option<String>,
    /// Sessions started (1 + reconnects).
    pub sessions: u32,
    /// Call audio sent, in samples (excluding replays and keep-alives).
    pub audio_samples: u64,
    /// Samples sent again after reconnects.
    pub replayed_samples: u64,
    /// Keep-alive silences sent.
    pub keep_alives: u64,
    /// Messages handed to the publisher.
    pub messages: u64,
    /// Results dropped as repeats after a reconnect.
    pub duplicates_dropped: u64,
    /// Per Transcribe event that produced messages: from its arrival to the messages'
    /// hand-off towards the publisher (a lane after the first hands them to the queue where
    /// they wait for the earlier lanes).
    pub handoff_latencies: Vec<Duration>,
    /// Time spent waiting for Transcribe to accept a stream that it refused at first (its
    /// stream quota, or a transient failure): how far behind the live call this run began.
    pub start_wait: Duration,
    /// Lanes the call's audio went through (1, or more after catching up:
    /// [`crate::lanes`]).
    pub lanes: u32,
}

impl TranscriptionSummary {
    /// The summary of a run from its lanes' (`(lane index, summary)`, in any order): sums,
    /// and the last lane's session id (the one a continuation reuses).
    fn combine(mut lanes: Vec<(usize, TranscriptionSummary)>) -> Self {
        lanes.sort_by_key(|(index, _)| *index);
        let mut all = Self::default();
        for (_, lane) in lanes {
            all.session_id = lane.session_id.or(all.session_id);
            all.sessions += lane.sessions;
            all.audio_samples += lane.audio_samples;
            all.replayed_samples += lane.replayed_samples;
            all.keep_alives += lane.keep_alives;
            all.messages += lane.messages;
            all.duplicates_dropped += lane.duplicates_dropped;
            all.handoff_latencies.extend(lane.handoff_latencies);
            all.start_wait += lane.start_wait;
            all.lanes += lane.lanes;
        }
        all
    }
}

/// Why a transcription failed.
#[derive(Debug, thiserror::Error)]
pub enum TranscribeError {
    /// Transcribe had no capacity for the call's stream (the account's concurrent stream
    /// quota) for as long as the invocation could wait.
    #[error(
        "call {call_id}: Transcribe had no capacity for a stream for {waited:?} ({attempts} attempts; the account's concurrent stream quota, 25 by default, is in use); last: {message}. The call's audio waits in KVS: a fresh invocation continues it at the same position, for up to CALL_STALL_TIMEOUT. If this recurs, ask for a higher quota (Amazon Transcribe, concurrent HTTP/2 streams) in Service Quotas"
    )]
    Capacity {
        /// The call.
        call_id: String,
        /// How long it waited.
        waited: Duration,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        message: String,
    },
    /// Starting a stream kept failing.
    #[error(
        "call {call_id}: Transcribe did not start a stream after {attempts} attempts; last: {message}"
    )]
    Start {
        /// The call.
        call_id: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        message: String,
    },
    /// The watchdog found the stream stuck (`TRANSCRIBE_STUCK_TIMEOUT`): Transcribe took no
    /// audio, or did not finish after the audio ended, and gave no error. What it has not
    /// answered may never have been heard, so the run ends as a stall: a fresh invocation
    /// reads the call again from the run's start, nothing lost or published twice.
    #[error(
        "call {call_id}: {what}. The stream is closed and a fresh invocation continues the call from this one's start (its audio waits in KVS), for up to CALL_STALL_TIMEOUT; if this recurs, check Transcribe's health in the AWS Health Dashboard"
    )]
    Stuck {
        /// The call.
        call_id: String,
        /// What the watchdog saw.
        what: String,
    },
    /// A stream failed in a way reconnecting does not fix.
    #[error("call {call_id}: Transcribe stream failed: {message}")]
    Stream {
        /// The call.
        call_id: String,
        /// The error.
        message: String,
    },
}

/// Exceptions after which a new session continues the call.
fn is_retryable(code: Option<&str>) -> bool {
    matches!(
        code,
        None | Some(
            "LimitExceededException" | "InternalFailureException" | "ServiceUnavailableException"
        )
    )
}

/// One result from either API, as the SDK gives it.
pub enum Output {
    /// Standard mode: a TranscriptEvent.
    Transcript(TranscriptEvent),
    /// Call Analytics: an UtteranceEvent.
    Utterance(UtteranceEvent),
    /// Call Analytics: a CategoryEvent.
    Category(CategoryEvent),
}

/// A session's failure: the exception code (None for a connection failure) and text.
struct Failure {
    code: Option<String>,
    message: String,
}

fn failure<E, R>(error: &SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    Failure {
        code: error.code().map(str::to_string),
        message: error_text(error),
    }
}

/// How long a request to start a stream may go unanswered: the attempt limit of every other
/// request (`aws_edge::REQUEST_ATTEMPT_TIMEOUT`). The SDK's own time limits are not set on
/// the streaming client, where an operation limit could be read as one on the whole stream;
/// this bounds only the wait for the answer, after which the session's watchdog takes over.
/// An unanswered start counts as a failure without an error code: retried as a connection
/// failure is.
const START_ANSWER_TIMEOUT: Duration = aws_edge::REQUEST_ATTEMPT_TIMEOUT;

/// `send`'s answer, or its [`Failure`]: the SDK's error, or none within
/// [`START_ANSWER_TIMEOUT`].
async fn answer_within<O, E, R>(
    send: impl std::future::Future<Output = Result<O, SdkError<E, R>>>,
) -> Result<O, Failure>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match tokio::time::timeout(START_ANSWER_TIMEOUT, send).await {
        Ok(answer) => answer.map_err(|e| failure(&e)),
        Err(_) => Err(Failure {
            code: None,
            message: format!(
                "no answer to the request to start the stream within {} s",
                START_ANSWER_TIMEOUT.as_secs()
            ),
        }),
    }
}

/// A running session: where its audio goes and where its results come from. Dropping it
/// stops its reader (and with it the SDK's response stream), so no task waits on a stuck
/// session's results for ever. (Whether the HTTP/2 stream is then reset is the SDK's affair:
/// against the local Transcribe it was not; see ARCHITECTURE.md.)
struct Session {
    audio: Option<mpsc::Sender<Result<AudioStream, AudioStreamError>>>,
    outputs: mpsc::Receiver<Result<(Output, Instant), Failure>>,
    reader: tokio::task::AbortHandle,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The watchdog of one session: when it is stuck. Transcribe documents no bound of its own
/// for taking audio or answering (only the other way round: a stream that gets no new audio
/// for 15 s is closed with a BadRequestException), so without one a session
/// that stops reading without an error would hold the call until Lambda's timeout. Pure: the
/// session loop tells it the time.
#[derive(Debug)]
struct Watchdog {
    /// `TRANSCRIBE_STUCK_TIMEOUT`.
    bound: Duration,
    /// When the session began taking audio.
    began: Instant,
    /// Audio queued for it so far (replay, call audio, keep-alives), in samples.
    queued_samples: u64,
    /// Since when audio has waited for room in its queue.
    full_since: Option<Instant>,
    /// When the session must have finished, once its audio has ended.
    finish_by: Option<Instant>,
}

impl Watchdog {
    fn new(bound: Duration, replayed_samples: u64, now: Instant) -> Self {
        Self {
            bound,
            began: now,
            queued_samples: replayed_samples,
            full_since: None,
            finish_by: None,
        }
    }

    /// Notes whether audio waits for room at `now`.
    fn waiting_for_room(&mut self, waiting: bool, now: Instant) {
        self.full_since = match (waiting, self.full_since) {
            (false, _) => None,
            (true, since) => Some(since.unwrap_or(now)),
        };
    }

    /// The session's audio has ended: it must finish within the bound, after however far
    /// its audio ran ahead of real time (a service that processes in real time needs that
    /// long; AWS's streaming guide does not say how fast it processes audio sent faster).
    fn audio_ended(&mut self, now: Instant) {
        let audio = Duration::from_secs_f64(
            self.queued_samples as f64 / f64::from(call_audio::CONNECT_SAMPLE_RATE),
        );
        let ahead = audio.saturating_sub(now.saturating_duration_since(self.began));
        self.finish_by = Some(now + ahead + self.bound);
    }

    /// When the session counts as stuck, if it is being watched now.
    fn stuck_at(&self) -> Option<Instant> {
        self.full_since
            .map(|since| since + self.bound)
            .or(self.finish_by)
    }

    /// What was stuck, for the log and the failure.
    fn what(&self) -> String {
        if self.full_since.is_some() {
            format!(
                "Transcribe took no audio for {} ms (TRANSCRIBE_STUCK_TIMEOUT) without an error",
                self.bound.as_millis()
            )
        } else {
            "Transcribe did not finish the stream after its audio ended (TRANSCRIBE_STUCK_TIMEOUT past the audio's real time) without an error".to_string()
        }
    }
}

/// 10 ms of stereo silence (80 samples): enough to keep a stream open, short enough not to
/// matter, accounted for in segment times, and a whole 10 ms frame, so a recognizer's frame
/// grid stays aligned with the call's (times stay exact to the millisecond).
const KEEP_ALIVE_SAMPLES: u64 = 80;

/// Audio events queued for a session (100 ms each): how far reading may run ahead of
/// Transcribe before it waits.
const AUDIO_QUEUE: usize = 32;

/// Reconnects in a row that produced no result before the call's transcription fails.
const MAX_FRUITLESS_RESTARTS: u32 = 5;

/// Transcribes `chunks` (the call's stereo audio, in order) until the channel closes and
/// Transcribe has answered everything; sends the LCA messages to `out` in order. The audio
/// goes through lanes ([`crate::lanes`]): one session loop while Transcribe keeps up, a second
/// one at the live call while the first works through a backlog; each lane's messages are
/// published after the earlier lanes' ([`LaneMerge`]).
pub async fn run(
    client: &aws_sdk_transcribestreaming::Client,
    call: CallTranscription,
    mut chunks: mpsc::Receiver<StereoChunk>,
    out: mpsc::Sender<LcaMessage>,
) -> Result<TranscriptionSummary, TranscribeError> {
    let policy = call.settings.lanes.clone();
    let mut router = LaneRouter::new(policy.clone());
    let (lanes_tx, lanes_rx) = mpsc::unbounded_channel();
    let merger = tokio::spawn(merge(lanes_rx, out, call.progress.clone()).in_current_span());
    let _merger = AbortOnDrop(vec![merger.abort_handle()]);
    // Dropping the set (an error returned) stops every lane.
    let mut lanes = LaneTasks::new();
    let mut summaries = Vec::new();
    // A lane's queue holds what the router allows it (`max_backlog`), in chunks of 100 ms
    // (the last of a call may be shorter); the router, not the queue, bounds it.
    let queue = (policy.max_backlog.max(policy.min_backlog).as_millis() / 50) as usize + 64;
    let open = |index: usize, start_sample: u64, lanes: &mut LaneTasks| {
        let (tx, rx) = mpsc::channel::<StereoChunk>(queue);
        let (messages_tx, messages_rx) = mpsc::unbounded_channel();
        let _ = lanes_tx.send(messages_rx);
        let gauge = LaneGauge::new(start_sample);
        let lane = LaneInput {
            index,
            start_sample,
            // The call's session id (a continuation) is its first lane's; Transcribe names
            // the others (two streams under one id at once is not documented).
            session_id: if index == 0 {
                call.session_id.clone()
            } else {
                None
            },
            gauge: gauge.clone(),
        };
        let (client, call) = (client.clone(), call.clone());
        lanes.spawn(
            async move { (index, run_lane(&client, &call, lane, rx, messages_tx).await) }
                .in_current_span(),
        );
        OpenLane {
            index,
            input: tx,
            assigned_to: start_sample,
            gauge,
        }
    };
    // The first lane starts at once: its stream is ready (or its capacity wait under way)
    // when the audio comes.
    let mut current = open(0, call.start_sample, &mut lanes);
    let mut pending: Option<StereoChunk> = None;
    let mut input_open = true;
    loop {
        if let Some(chunk) = pending.take() {
            let now = Instant::now();
            let lane = CurrentLane {
                assigned_to: current.assigned_to,
                gauge: current.gauge.state(),
            };
            let time_left = call
                .hand_over_at
                .map(|at| at.saturating_duration_since(now));
            match router.route(&chunk, lane, lanes.len(), time_left, now) {
                Route::Wait => pending = Some(chunk),
                route => {
                    if route == Route::NewLane {
                        let behind = lane
                            .assigned_to
                            .saturating_sub(lane.gauge.processed(&policy, now));
                        tracing::info!(
                            call_id = %call.call_id,
                            lane = current.index + 1,
                            start_ms = chunk.start_sample / SAMPLES_PER_MS,
                            behind_ms = behind / SAMPLES_PER_MS,
                            "Transcribe is behind the call: a new stream takes the call from here while the current one finishes its audio"
                        );
                        current = open(current.index + 1, chunk.start_sample, &mut lanes);
                    }
                    router.routed(&chunk);
                    current.assigned_to = chunk.start_sample + chunk.samples as u64;
                    if current.input.send(chunk).await.is_err() {
                        // The lane stopped early: its messages had nowhere to go (the run is
                        // ending); so does the reading.
                        break;
                    }
                }
            }
        }
        if !input_open && pending.is_none() {
            break;
        }
        tokio::select! {
            chunk = chunks.recv(), if input_open && pending.is_none() => match chunk {
                Some(chunk) => pending = Some(chunk),
                None => input_open = false,
            },
            // The current lane holds all it may: look again when Transcribe has had time to
            // take some (the reading waits meanwhile).
            _ = tokio::time::sleep(LANE_WAIT), if pending.is_some() => {}
            Some(joined) = lanes.join_next() => summaries.push(lane_result(&call.call_id, joined)?),
        }
    }
    drop(current);
    drop(lanes_tx);
    while let Some(joined) = lanes.join_next().await {
        summaries.push(lane_result(&call.call_id, joined)?);
    }
    let _ = merger.await;
    Ok(TranscriptionSummary::combine(summaries))
}

/// The running lanes: each ends with its index and its summary or error.
type LaneTasks = tokio::task::JoinSet<(usize, Result<TranscriptionSummary, TranscribeError>)>;

/// How often a reading held back by a full lane looks again.
const LANE_WAIT: Duration = Duration::from_millis(20);

/// A lane's summary, its error, or its panic passed on.
fn lane_result(
    call_id: &str,
    joined: Result<(usize, Result<TranscriptionSummary, TranscribeError>), tokio::task::JoinError>,
) -> Result<(usize, TranscriptionSummary), TranscribeError> {
    match joined {
        Ok((index, result)) => result.map(|summary| (index, summary)),
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => Err(TranscribeError::Stream {
            call_id: call_id.to_string(),
            message: format!("a Transcribe lane was cancelled: {join}"),
        }),
    }
}

/// The lane taking the call's audio.
struct OpenLane {
    index: usize,
    input: mpsc::Sender<StereoChunk>,
    assigned_to: u64,
    gauge: LaneGauge,
}

/// What one lane is.
struct LaneInput {
    /// Its place among the call's lanes (0 first).
    index: usize,
    /// Call sample its audio starts at.
    start_sample: u64,
    /// The Transcribe session id to reuse, if any.
    session_id: Option<String>,
    /// Where it reports its progress.
    gauge: LaneGauge,
}

/// Aborts the tasks it holds when dropped (a run dropped or failing takes its tasks with it).
pub(crate) struct AbortOnDrop(pub(crate) Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Publishes the lanes' messages to `out` lane by lane ([`LaneMerge`]): a lane's are taken
/// once every earlier lane has ended; what it produced while it waited is taken without its
/// stale partials.
async fn merge(
    mut lanes: mpsc::UnboundedReceiver<mpsc::UnboundedReceiver<LcaMessage>>,
    out: mpsc::Sender<LcaMessage>,
    progress: Option<RunProgress>,
) {
    let mut merge = LaneMerge::default();
    let mut index = 0;
    while let Some(mut lane) = lanes.recv().await {
        let mut waited = index > 0;
        loop {
            let message = if waited {
                match lane.try_recv() {
                    Ok(message) => Some(message),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        waited = false;
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            } else {
                lane.recv().await
            };
            let Some(message) = message else { break };
            if merge.keep(&message, waited) && out.send(message).await.is_err() {
                return;
            }
        }
        if let Some(progress) = &progress {
            progress.lane_finished(index);
        }
        index += 1;
    }
}

/// One lane: a Transcribe session loop over `chunks` (a contiguous range of the call's
/// audio), across as many sessions as failures require; its messages go to `out` in order.
async fn run_lane(
    client: &aws_sdk_transcribestreaming::Client,
    call: &CallTranscription,
    lane: LaneInput,
    mut chunks: mpsc::Receiver<StereoChunk>,
    out: mpsc::UnboundedSender<LcaMessage>,
) -> Result<TranscriptionSummary, TranscribeError> {
    let mut ledger = TranscriptLedger::new(lane.start_sample, 5_000, 120_000);
    ledger.restore(call.delivered.final_end_ms, &call.delivered.categories);
    let mut summary = TranscriptionSummary {
        session_id: lane.session_id.clone(),
        lanes: 1,
        ..TranscriptionSummary::default()
    };
    let mut mapper = SegmentMapper {
        call_id: call.call_id.clone(),
        time_offset_s: 0.0,
        save_partials: call.save_partials,
    };
    let mut input_open = true;
    let mut replay: Vec<StereoChunk> = Vec::new();
    let mut fruitless = 0u32;
    loop {
        let replayed: u64 = replay.iter().map(|c| c.samples as u64).sum();
        let waited_before = summary.start_wait;
        let mut session = start(client, call, &mut summary, std::mem::take(&mut replay)).await?;
        lane.gauge
            .session_started(ledger.session_origin(), Instant::now());
        summary.sessions += 1;
        if let Some(progress) = &call.progress {
            progress.session_started(summary.start_wait.saturating_sub(waited_before));
        }
        let mut answered = false;
        let mut watchdog = Watchdog::new(call.settings.stuck_timeout, replayed, Instant::now());
        if !input_open {
            session.audio = None;
            watchdog.audio_ended(Instant::now());
        }
        let mut last_audio = Instant::now();
        let failure: Failure = loop {
            // Backpressure: take the next chunk only when the session's queue has room, so a
            // slow Transcribe slows the reading of KVS instead of filling memory.
            let has_room = session.audio.as_ref().is_none_or(|a| a.capacity() > 0);
            let room = session.audio.clone();
            watchdog.waiting_for_room(input_open && !has_room, Instant::now());
            let stuck_at = watchdog.stuck_at();
            tokio::select! {
                _ = async { if let Some(audio) = &room { let _ = audio.reserve().await; } }, if input_open && !has_room => {}
                chunk = chunks.recv(), if input_open && has_room => match chunk {
                    Some(chunk) => {
                        let end = chunk.start_sample + chunk.samples as u64;
                        if let Some(progress) = &call.progress {
                            progress.transcribed(lane.index, end);
                        }
                        lane.gauge.handed(end);
                        ledger.sent(&chunk);
                        summary.audio_samples += chunk.samples as u64;
                        watchdog.queued_samples += chunk.samples as u64;
                        send_audio(&session, chunk.pcm);
                        last_audio = Instant::now();
                    }
                    None => {
                        input_open = false;
                        // Dropping the sender ends the audio stream (an empty event).
                        session.audio = None;
                        watchdog.audio_ended(Instant::now());
                    }
                },
                _ = tokio::time::sleep_until(last_audio + call.keep_alive), if input_open => {
                    send_audio(&session, vec![0; KEEP_ALIVE_SAMPLES as usize * 4]);
                    ledger.keep_alive(KEEP_ALIVE_SAMPLES);
                    summary.keep_alives += 1;
                    watchdog.queued_samples += KEEP_ALIVE_SAMPLES;
                    last_audio = Instant::now();
                }
                // The watchdog: a session that neither takes audio nor finishes, without an
                // error, is closed (dropping it stops its reader). A new session here could
                // only replay what the ledger kept, and a stuck one may not have heard far
                // more than that (the SDK takes audio ahead of the service), so the run
                // ends as a stall instead and a fresh one reads the call again from KVS.
                _ = tokio::time::sleep_until(stuck_at.unwrap_or_else(Instant::now)), if stuck_at.is_some() => {
                    let what = watchdog.what();
                    tracing::warn!(call_id = %call.call_id, stuck_timeout_ms = watchdog.bound.as_millis() as u64, "{what}: closing the stream; a fresh invocation continues the call");
                    return Err(TranscribeError::Stuck {
                        call_id: call.call_id.clone(),
                        what,
                    });
                }
                output = session.outputs.recv() => match output {
                    Some(Ok((output, received))) => {
                        answered = true;
                        let output = session_output(output);
                        if let Some(end) = answered_end(&output, &ledger) {
                            lane.gauge.answered(end);
                        }
                        let Mapped { messages, repeats_dropped } = map_output(output, &mut ledger, &mut mapper, &now());
                        summary.duplicates_dropped += repeats_dropped;
                        let mapped = !messages.is_empty();
                        for message in messages {
                            summary.messages += 1;
                            if out.send(message).is_err() {
                                return Ok(summary);
                            }
                        }
                        if mapped {
                            summary.handoff_latencies.push(received.elapsed());
                        }
                    }
                    Some(Err(failure)) => break failure,
                    None if !input_open => return Ok(summary),
                    None => break Failure {
                        code: None,
                        message: "the stream ended before the call's audio did".to_string(),
                    },
                },
            }
        };
        if !is_retryable(failure.code.as_deref()) {
            return Err(TranscribeError::Stream {
                call_id: call.call_id.clone(),
                message: failure.message,
            });
        }
        fruitless = if answered { 0 } else { fruitless + 1 };
        if fruitless > MAX_FRUITLESS_RESTARTS {
            return Err(TranscribeError::Stream {
                call_id: call.call_id.clone(),
                message: format!(
                    "{} reconnects in a row without a result; last: {}",
                    fruitless, failure.message
                ),
            });
        }
        tracing::warn!(call_id = %call.call_id, code = ?failure.code, message = %failure.message, "Transcribe stream failed; resuming in a new session");
        replay = ledger.restart();
        lane.gauge.session_lost(ledger.session_origin());
        summary.replayed_samples += replay.iter().map(|c| c.samples as u64).sum::<u64>();
    }
}

/// The call sample where a result ends (how far Transcribe has got), if it is one: a
/// standard result's or an utterance's end, placed on the call by `ledger`.
fn answered_end(output: &SessionOutput, ledger: &TranscriptLedger) -> Option<u64> {
    let session_s = match output {
        SessionOutput::Transcript(results) => results
            .iter()
            .map(|result| result.end_time)
            .reduce(f64::max)?,
        SessionOutput::Utterance(utterance) => utterance.get("EndOffsetMillis")?.as_f64()? / 1000.0,
        SessionOutput::Category(_) => return None,
    };
    let call_s = session_s + ledger.offset_s(session_s);
    (call_s.is_finite() && call_s >= 0.0).then_some((call_s * 8000.0) as u64)
}

/// Queues audio for the session (callers check for room first; a keep-alive may be skipped
/// when the queue is full, since queued audio keeps the stream alive anyway).
fn send_audio(session: &Session, pcm: Vec<u8>) {
    if let Some(audio) = &session.audio {
        // A closed receiver means the session is failing; its failure arrives on `outputs`.
        let _ = audio.try_send(Ok(AudioStream::AudioEvent(
            AudioEvent::builder().audio_chunk(Blob::new(pcm)).build(),
        )));
    }
}

/// Starts a session (with retries), queueing `replay` as its first audio.
async fn start(
    client: &aws_sdk_transcribestreaming::Client,
    call: &CallTranscription,
    summary: &mut TranscriptionSummary,
    replay: Vec<StereoChunk>,
) -> Result<Session, TranscribeError> {
    let settings = &call.settings;
    let mut attempt = 0;
    let waiting_since = Instant::now();
    loop {
        attempt += 1;
        let (audio_tx, audio_rx) = mpsc::channel(AUDIO_QUEUE + 1 + replay.len());
        if settings.call.mode == ApiMode::Analytics {
            let _ = audio_tx.try_send(Ok(AudioStream::ConfigurationEvent(configuration())));
        }
        for chunk in &replay {
            let _ = audio_tx.try_send(Ok(AudioStream::AudioEvent(
                AudioEvent::builder()
                    .audio_chunk(Blob::new(chunk.pcm.clone()))
                    .build(),
            )));
        }
        let stream = ReceiverStream::new(audio_rx);
        let (out_tx, outputs) = mpsc::channel(64);
        let started = match settings.call.mode {
            ApiMode::Standard => answer_within(
                standard_request(client, settings, summary.session_id.as_deref())
                    .audio_stream(stream.into())
                    .send(),
            )
            .await
            .map(|response| {
                summary.session_id = response.session_id.clone().or(summary.session_id.take());
                spawn_reader(
                    response.transcript_result_stream,
                    out_tx,
                    |event| match event {
                        TranscriptResultStream::TranscriptEvent(e) => Some(Output::Transcript(e)),
                        _ => None,
                    },
                )
            }),
            ApiMode::Analytics => answer_within(
                analytics_request(client, settings, summary.session_id.as_deref())
                    .audio_stream(stream.into())
                    .send(),
            )
            .await
            .map(|response| {
                summary.session_id = response.session_id.clone().or(summary.session_id.take());
                spawn_reader(
                    response.call_analytics_transcript_result_stream,
                    out_tx,
                    |event| match event {
                        CallAnalyticsTranscriptResultStream::UtteranceEvent(e) => {
                            Some(Output::Utterance(e))
                        }
                        CallAnalyticsTranscriptResultStream::CategoryEvent(e) => {
                            Some(Output::Category(e))
                        }
                        _ => None,
                    },
                )
            }),
        };
        let failure = match started {
            Ok(reader) => {
                if attempt > 1 {
                    let waited = waiting_since.elapsed();
                    summary.start_wait += waited;
                    tracing::info!(call_id = %call.call_id, attempt, waited_ms = waited.as_millis() as u64, "Transcribe started the stream");
                }
                return Ok(Session {
                    audio: Some(audio_tx),
                    outputs,
                    reader,
                });
            }
            Err(failure) => failure,
        };
        let code = failure.code.as_deref();
        let delay = start_backoff(settings.start_retry_wait).pause(attempt);
        let retry = match code {
            // The concurrent stream quota: wait for capacity as long as the invocation may
            // (the exception's documentation: "Reduce your number of concurrent streams and
            // try your request again using an exponential backoff strategy").
            Some("LimitExceededException") => {
                let before_limit = call
                    .give_up_at
                    .is_none_or(|limit| Instant::now() + delay < limit);
                if !before_limit {
                    return Err(TranscribeError::Capacity {
                        call_id: call.call_id.clone(),
                        waited: waiting_since.elapsed(),
                        attempts: attempt,
                        message: failure.message,
                    });
                }
                true
            }
            // Server-side and connection failures: retried a few times.
            None | Some("InternalFailureException" | "ServiceUnavailableException") => {
                attempt < settings.start_retries
            }
            // BadRequest and the like: the request itself is wrong; retrying repeats it.
            Some(_) => false,
        };
        if !retry {
            return Err(TranscribeError::Start {
                call_id: call.call_id.clone(),
                attempts: attempt,
                message: failure.message,
            });
        }
        tracing::warn!(call_id = %call.call_id, attempt, code = ?failure.code, delay_ms = delay.as_millis() as u64, message = %failure.message, "Transcribe did not start the stream; retrying");
        tokio::time::sleep(delay).await;
    }
}

/// The pause between two attempts to start a stream: from `START_STREAM_RETRY_WAIT`
/// (`first`), doubling up to 20 times it (20 s at the default 1 s), with equal jitter, so
/// that calls turned away by the same quota do not all come back at once. The bound scales
/// with `first`, so a stand-in run at N times real time (its `first` scaled down) waits in
/// its clock as a call would.
fn start_backoff(first: Duration) -> Backoff {
    Backoff {
        first,
        max: first * 20,
        jitter: Jitter::Equal,
    }
}

/// Reads a session's results into `out` (with their arrival time) until the stream ends or
/// fails; a failure is the last item. Runs as its own task so the session loop can wait on
/// a channel (cancel-safe) instead of on the SDK's receiver.
fn spawn_reader<T, E>(
    mut receiver: aws_sdk_transcribestreaming::primitives::event_stream::EventReceiver<T, E>,
    out: mpsc::Sender<Result<(Output, Instant), Failure>>,
    select: fn(T) -> Option<Output>,
) -> tokio::task::AbortHandle
where
    T: Send + 'static,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    tokio::spawn(
        async move {
            loop {
                let item = match receiver.recv().await {
                    Ok(Some(event)) => match select(event) {
                        Some(output) => Ok((output, Instant::now())),
                        None => continue,
                    },
                    Ok(None) => break,
                    Err(error) => Err(failure(&error)),
                };
                let stop = item.is_err();
                if out.send(item).await.is_err() || stop {
                    break;
                }
            }
        }
        .in_current_span(),
    )
    .abort_handle()
}

type StandardRequest = aws_sdk_transcribestreaming::operation::start_stream_transcription::builders::StartStreamTranscriptionFluentBuilder;
type AnalyticsRequest = aws_sdk_transcribestreaming::operation::start_call_analytics_stream_transcription::builders::StartCallAnalyticsStreamTranscriptionFluentBuilder;

/// StartStreamTranscription for the call's stereo audio with every configured option.
fn standard_request(
    client: &aws_sdk_transcribestreaming::Client,
    settings: &TranscribeSettings,
    session_id: Option<&str>,
) -> StandardRequest {
    let mut request = client
        .start_stream_transcription()
        .media_sample_rate_hertz(8000)
        .media_encoding(MediaEncoding::Pcm)
        .number_of_channels(2)
        .enable_channel_identification(true)
        .set_session_id(session_id.map(str::to_string));
    // StartStreamTranscription API reference: VocabularyName is "not intended for use with
    // the IdentifyLanguage parameter ... use the VocabularyNames parameter instead" (the same
    // for IdentifyMultipleLanguages); a custom language model cannot be combined with
    // language identification (the configuration refuses that).
    request = match &settings.call.language {
        Language::Code(code) => request
            .language_code(LanguageCode::from(code.as_str()))
            .set_vocabulary_name(settings.call.vocabulary_name.clone())
            .set_language_model_name(settings.call.language_model_name.clone()),
        Language::Identify(id) => request
            .identify_language(true)
            .set_vocabulary_names(settings.call.vocabulary_name.clone())
            .set_language_options(id.options.clone())
            .set_preferred_language(id.preferred.as_deref().map(LanguageCode::from)),
        // PreferredLanguage: "You can only use this parameter if you've included
        // IdentifyLanguage and LanguageOptions" (API reference), while the developer guide's
        // multi-language example sends it; it is optional, so it is left out here, which
        // both readings accept.
        Language::IdentifyMultiple(id) => request
            .identify_multiple_languages(true)
            .set_vocabulary_names(settings.call.vocabulary_name.clone())
            .set_language_options(id.options.clone()),
    };
    if let Some(redaction) = &settings.call.redaction {
        request = request
            .content_redaction_type(ContentRedactionType::from(redaction.kind.as_str()))
            .set_pii_entity_types(redaction.entity_types.clone());
    }
    // VocabularyFilterName with a language code, VocabularyFilterNames (one per language)
    // with identification, as for vocabularies (API references, VocabularyFilterNames: "only
    // intended for use with the IdentifyLanguage parameter"); VocabularyFilterMethod either way.
    if let Some(filter) = &settings.call.vocabulary_filter {
        request = match settings.call.language {
            Language::Code(_) => request.vocabulary_filter_name(&filter.name),
            _ => request.vocabulary_filter_names(&filter.name),
        }
        .vocabulary_filter_method(VocabularyFilterMethod::from(filter.method.as_str()));
    }
    request
}

/// StartCallAnalyticsStreamTranscription with every configured option.
fn analytics_request(
    client: &aws_sdk_transcribestreaming::Client,
    settings: &TranscribeSettings,
    session_id: Option<&str>,
) -> AnalyticsRequest {
    let mut request = client
        .start_call_analytics_stream_transcription()
        .media_sample_rate_hertz(8000)
        .media_encoding(MediaEncoding::Pcm)
        .set_session_id(session_id.map(str::to_string));
    // As in standard mode: VocabularyNames with IdentifyLanguage ("only intended for use
    // with the IdentifyLanguage parameter"), VocabularyName and the language model with a
    // language code. The configuration refuses identify-multiple-languages here (Call
    // Analytics has IdentifyLanguage only).
    request = match &settings.call.language {
        Language::Code(code) => request
            .language_code(CallAnalyticsLanguageCode::from(code.as_str()))
            .set_vocabulary_name(settings.call.vocabulary_name.clone())
            .set_language_model_name(settings.call.language_model_name.clone()),
        Language::Identify(id) | Language::IdentifyMultiple(id) => request
            .identify_language(true)
            .set_vocabulary_names(settings.call.vocabulary_name.clone())
            .set_language_options(id.options.clone())
            .set_preferred_language(id.preferred.as_deref().map(CallAnalyticsLanguageCode::from)),
    };
    if let Some(redaction) = &settings.call.redaction {
        request = request
            .content_redaction_type(ContentRedactionType::from(redaction.kind.as_str()))
            .set_pii_entity_types(redaction.entity_types.clone());
    }
    // VocabularyFilterName with a language code, VocabularyFilterNames (one per language)
    // with identification, as for vocabularies (API references, VocabularyFilterNames: "only
    // intended for use with the IdentifyLanguage parameter"); VocabularyFilterMethod either way.
    if let Some(filter) = &settings.call.vocabulary_filter {
        request = match settings.call.language {
            Language::Code(_) => request.vocabulary_filter_name(&filter.name),
            _ => request.vocabulary_filter_names(&filter.name),
        }
        .vocabulary_filter_method(VocabularyFilterMethod::from(filter.method.as_str()));
    }
    request
}

/// The Call Analytics ConfigurationEvent: channel 0 is the customer, 1 the agent. Without
/// PostCallAnalyticsSettings: each stream would write an analysis of its own share of the
/// call; the whole call's is one job on the recording ([`crate::post_call`]).
fn configuration() -> ConfigurationEvent {
    let channel = |id, role| {
        ChannelDefinition::builder()
            .channel_id(id)
            .participant_role(role)
            .build()
            .expect("channel id and role are set")
    };
    ConfigurationEvent::builder()
        .channel_definitions(channel(0, ParticipantRole::Customer))
        .channel_definitions(channel(1, ParticipantRole::Agent))
        .build()
}

/// An answer of the SDK as the pure mapping takes it: a standard result's fields, or Call
/// Analytics' events as Transcribe's JSON.
fn session_output(output: Output) -> SessionOutput {
    match output {
        Output::Transcript(event) => SessionOutput::Transcript(
            event
                .transcript
                .and_then(|t| t.results)
                .unwrap_or_default()
                .into_iter()
                .map(|result| TranscriptResult {
                    transcript: result
                        .alternatives
                        .as_ref()
                        .and_then(|a| a.first())
                        .and_then(|a| a.transcript.clone())
                        .unwrap_or_default(),
                    items: result
                        .alternatives
                        .as_ref()
                        .and_then(|a| a.first())
                        .and_then(|a| a.items.as_ref())
                        .map(|items| {
                            items
                                .iter()
                                .map(|item| TranscriptItem {
                                    start_time: item.start_time,
                                    end_time: item.end_time,
                                    content: item.content.clone().unwrap_or_default(),
                                    is_punctuation: item.r#type == Some(ItemType::Punctuation),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    channel_id: result.channel_id,
                    start_time: result.start_time,
                    end_time: result.end_time,
                    is_partial: result.is_partial,
                })
                .collect(),
        ),
        Output::Utterance(event) => SessionOutput::Utterance(utterance_json(&event)),
        Output::Category(event) => SessionOutput::Category(category_json(&event)),
    }
}

/// An UtteranceEvent as Transcribe's JSON (the shape LCA stores).
pub fn utterance_json(event: &UtteranceEvent) -> Value {
    let mut map = Map::new();
    let mut put = |key: &str, value: Value| {
        if !value.is_null() {
            map.insert(key.to_string(), value);
        }
    };
    put("UtteranceId", json!(event.utterance_id));
    put("IsPartial", json!(event.is_partial));
    put(
        "ParticipantRole",
        json!(event.participant_role.as_ref().map(|r| r.as_str())),
    );
    put("BeginOffsetMillis", json!(event.begin_offset_millis));
    put("EndOffsetMillis", json!(event.end_offset_millis));
    put("Transcript", json!(event.transcript));
    put(
        "Items",
        json!(event.items.as_ref().map(|items| {
            items
                .iter()
                .map(|i| {
                    json!({
                        "BeginOffsetMillis": i.begin_offset_millis,
                        "EndOffsetMillis": i.end_offset_millis,
                        "Type": i.r#type.as_ref().map(|t| t.as_str()),
                        "Content": i.content,
                        "Confidence": i.confidence,
                        "VocabularyFilterMatch": i.vocabulary_filter_match,
                        "Stable": i.stable,
                    })
                })
                .collect::<Vec<_>>()
        })),
    );
    put(
        "Entities",
        json!(event.entities.as_ref().map(|entities| {
            entities
                .iter()
                .map(|e| {
                    json!({
                        "BeginOffsetMillis": e.begin_offset_millis,
                        "EndOffsetMillis": e.end_offset_millis,
                        "Category": e.category,
                        "Type": e.r#type,
                        "Content": e.content,
                        "Confidence": e.confidence,
                    })
                })
                .collect::<Vec<_>>()
        })),
    );
    put(
        "Sentiment",
        json!(event.sentiment.as_ref().map(|s| s.as_str())),
    );
    put(
        "IssuesDetected",
        json!(event.issues_detected.as_ref().map(|issues| {
            issues
                .iter()
                .map(|i| {
                    json!({
                        "CharacterOffsets": {
                            "Begin": i.character_offsets.as_ref().and_then(|o| o.begin),
                            "End": i.character_offsets.as_ref().and_then(|o| o.end),
                        }
                    })
                })
                .collect::<Vec<_>>()
        })),
    );
    put(
        "LanguageCode",
        json!(event.language_code.as_ref().map(|l| l.as_str())),
    );
    put(
        "LanguageIdentification",
        json!(event.language_identification.as_ref().map(|scores| {
            scores
                .iter()
                .map(|s| {
                    json!({
                        "LanguageCode": s.language_code.as_ref().map(|l| l.as_str()),
                        "Score": s.score,
                    })
                })
                .collect::<Vec<_>>()
        })),
    );
    Value::Object(map)
}

/// A CategoryEvent as Transcribe's JSON.
pub fn category_json(event: &CategoryEvent) -> Value {
    let details: Map<String, Value> = event
        .matched_details
        .iter()
        .flatten()
        .map(|(name, points)| {
            let ranges: Vec<Value> = points
                .timestamp_ranges()
                .iter()
                .map(|r| {
                    json!({
                        "BeginOffsetMillis": r.begin_offset_millis,
                        "EndOffsetMillis": r.end_offset_millis,
                    })
                })
                .collect();
            (name.clone(), json!({ "TimestampRanges": ranges }))
        })
        .collect();
    json!({
        "MatchedCategories": event.matched_categories.clone().unwrap_or_default(),
        "MatchedDetails": details,
    })
}

/// The current time as LCA's CreatedAt (ISO-8601, UTC, milliseconds).
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Epoch milliseconds as LCA's CreatedAt (ISO 8601, milliseconds, UTC).
pub fn timestamp(epoch_ms: u64) -> String {
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(epoch_ms),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_counts_a_full_queue_from_when_it_filled_and_forgets_it_when_room_comes() {
        let bound = Duration::from_secs(30);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut watchdog = Watchdog::new(bound, 0, t0);
        assert_eq!(
            watchdog.stuck_at(),
            None,
            "nothing is watched while audio flows"
        );
        watchdog.waiting_for_room(true, at(5));
        watchdog.waiting_for_room(true, at(20));
        assert_eq!(
            watchdog.stuck_at(),
            Some(at(35)),
            "counted from the first wait"
        );
        assert!(watchdog.what().contains("took no audio for 30000 ms"));
        // Transcribe takes audio again (a real-time pace takes a chunk every 100 ms).
        watchdog.waiting_for_room(false, at(21));
        assert_eq!(watchdog.stuck_at(), None);
        watchdog.waiting_for_room(true, at(22));
        assert_eq!(watchdog.stuck_at(), Some(at(52)));
    }

    #[test]
    fn after_the_audio_ends_the_watchdog_allows_for_audio_sent_ahead_of_real_time() {
        let bound = Duration::from_secs(30);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // 10 s replayed and 50 s of call audio queued in the session's first 20 s: a service
        // that processes in real time needs until 60 s; stuck only after 60 s + the bound.
        let mut watchdog = Watchdog::new(bound, 10 * 8000, t0);
        watchdog.queued_samples += 50 * 8000;
        watchdog.audio_ended(at(20));
        assert_eq!(watchdog.stuck_at(), Some(at(90)));
        assert!(watchdog.what().contains("did not finish"));
        // Audio sent at real time (or slower): only the bound.
        let mut live = Watchdog::new(bound, 0, t0);
        live.queued_samples += 60 * 8000;
        live.audio_ended(at(61));
        assert_eq!(live.stuck_at(), Some(at(91)));
    }
}
