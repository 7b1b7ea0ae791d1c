//! [`CallPipeline`]: one call (or one Lambda invocation's share of it) from its KVS stream to
//! LCA events on Kinesis. The KVS source, the Transcribe session and the Kinesis publisher
//! each run in a task of their own, joined by bounded channels; the run's own loop assembles
//! the source's audio into stereo chunks, watches for a quiet fragment boundary to hand over
//! at, and decides when the run ends.

use std::collections::BTreeMap;
use std::time::Duration;

use call_audio::{AssemblerConfig, Channel, StereoAssembler, StereoChunk};
use lca_events::{LcaEvent, LcaMessage, Stamped, StartCall};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::config::{CallSettings, TranscriberConfig};
use crate::delivered::Delivered;
use crate::progress::RunProgress;
use crate::publisher::{self, PublishReport, PublisherOptions};
use crate::quiet::QuietWatch;
use crate::source::{
    self, EndReason, KvsClients, SourceError, SourceEvent, SourceOptions, StartAt,
};
use crate::transcribe::{
    self, AbortOnDrop, CallTranscription, TranscribeError, TranscriptionSummary,
};
use crate::usage::Latencies;

/// Silence on both channels before a fragment boundary that makes it a hand-over point:
/// longer than a pause within a sentence.
pub const HANDOVER_QUIET: Duration = Duration::from_millis(700);

/// The AWS clients a pipeline uses, built once per process from one SDK configuration.
#[derive(Clone, Debug)]
pub struct Clients {
    /// KVS control plane and media.
    pub kvs: KvsClients,
    /// Transcribe Streaming.
    pub transcribe: aws_sdk_transcribestreaming::Client,
    /// The LCA Kinesis data stream.
    pub kinesis: aws_sdk_kinesis::Client,
}

impl Clients {
    /// Clients from `sdk` (which honours `AWS_ENDPOINT_URL_*`) and the configuration's
    /// Transcribe endpoint override.
    pub fn new(sdk: &aws_config::SdkConfig, config: &TranscriberConfig) -> Self {
        Self {
            kvs: KvsClients::new(sdk),
            transcribe: transcribe::client(sdk, &config.transcribe),
            kinesis: aws_sdk_kinesis::Client::new(&aws_edge::with_timeouts(sdk)),
        }
    }
}

/// Loads the SDK configuration the way the Lambda does: the default chain, with `REGION`
/// (when set) as the region.
pub async fn load_sdk_config(config: &TranscriberConfig) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &config.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    loader.load().await
}

/// Where this run of a call starts and what it carries over from an earlier one.
#[derive(Debug, Clone, PartialEq)]
pub struct CallPosition {
    /// Where the stream is read from.
    pub start: StartAt,
    /// The Transcribe session id to reuse.
    pub session_id: Option<String>,
    /// Producer timestamp (ns) of the call's sample 0, once known.
    pub origin_ns: Option<i64>,
    /// Samples of the call already transcribed.
    pub start_sample: u64,
}

/// One call to transcribe.
#[derive(Debug, Clone)]
pub struct CallSpec {
    /// LCA CallId (the ContactId unless a hook changed it).
    pub call_id: String,
    /// Connect ContactId (the stream's ContactId tags).
    pub contact_id: String,
    /// The call's KVS stream.
    pub stream_arn: String,
    /// Where to start.
    pub position: CallPosition,
    /// START to publish first (a new call), or none (a continuation).
    pub start_event: Option<StartCall>,
    /// Stop at the first fragment boundary after this instant (Lambda hand-over).
    pub deadline: Option<Instant>,
    /// End the call at the first fragment boundary once it is this many samples long
    /// (`MAX_CALL_DURATION`); `None`: no limit.
    pub max_samples: Option<u64>,
    /// The stream's tracks are the other way round (a lambda hook's `isCaller: false`):
    /// AUDIO_FROM_CUSTOMER becomes channel 1 and AUDIO_TO_CUSTOMER channel 0.
    pub swap_channels: bool,
    /// What an earlier attempt at this run already put on Kinesis (a Lambda retry after a
    /// crash): not published again. Default for a normal run.
    pub already_delivered: Delivered,
    /// Messages an earlier run produced for the audio before `position` but could not put
    /// on Kinesis (a Kinesis stall): published first, those `already_delivered` has left
    /// out; their audio is not transcribed again.
    pub pending: Vec<LcaMessage>,
    /// The call's Transcribe settings (a contact's, chosen before the call started); `None`:
    /// the stack's (`config.transcribe.call`).
    pub settings: Option<CallSettings>,
}

impl CallSpec {
    /// A call from its beginning at `start`, as a tool runs it: START (without phone numbers
    /// or agent, stamped now) first, no deadline, tracks as Connect names them.
    pub fn new(call_id: &str, contact_id: &str, stream_arn: &str, start: StartAt) -> Self {
        Self {
            call_id: call_id.to_string(),
            contact_id: contact_id.to_string(),
            stream_arn: stream_arn.to_string(),
            position: CallPosition {
                start,
                session_id: None,
                origin_ns: None,
                start_sample: 0,
            },
            start_event: Some(StartCall {
                customer_phone_number: String::new(),
                system_phone_number: String::new(),
                agent_id: None,
                metadata_json: None,
                created_at: transcribe::now(),
            }),
            deadline: None,
            max_samples: None,
            swap_channels: false,
            already_delivered: Delivered::default(),
            pending: Vec::new(),
            settings: None,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// The call is over (END was published).
    CallEnded(EndReason),
    /// The deadline passed: continue from `position` in a new invocation (no END).
    HandOver(CallPosition),
}

/// What a run did.
#[derive(Debug)]
pub struct CallOutcome {
    /// How it ended.
    pub ending: Ending,
    /// Transcribe's side.
    pub transcription: TranscriptionSummary,
    /// Kinesis's side.
    pub published: PublishReport,
    /// Samples of call audio assembled in this run.
    pub samples: u64,
    /// Per 100 ms chunk: from the arrival of the KVS bytes that completed it to its hand-off
    /// to the Transcribe session.
    pub chunk_latencies: Latencies,
    /// Per final segment published: from the arrival (from KVS) of the audio where it ends
    /// to Kinesis's acknowledgement of it. With `kvs_behind_ms`, how late a user sees it.
    pub transcript_lags: Vec<Duration>,
    /// How far behind the stream's newest data the reading was, at most (KVS's
    /// MILLIS_BEHIND_NOW per fragment); `None` when KVS sent none.
    pub kvs_behind_ms: Option<u64>,
    /// KVS error chunks that reading resumed after (5000, 4503), counted by id.
    pub transient_kvs_errors: BTreeMap<String, u32>,
    /// GetMedia requests that failed and were resumed after the last fragment (cut
    /// connections, throttling, the error chunks above).
    pub get_media_resumes: u32,
}

/// How far a run got whose messages Kinesis did not take in its time: it reached a hand-over
/// point, or the call's end, its share transcribed, and `undelivered` is what is not on the
/// stream (in the order produced; END among it when the call ended). The call can go on from
/// `position`, carrying them ([`call_lifecycle::after_stall`]), instead of transcribing the
/// share again.
#[derive(Debug, Clone, PartialEq)]
pub struct Reached {
    /// Where the next run starts (as a hand-over's).
    pub position: CallPosition,
    /// What Kinesis did not take.
    pub undelivered: Vec<LcaMessage>,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Reading KVS failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Transcribe failed.
    #[error(transparent)]
    Transcribe(#[from] TranscribeError),
    /// Some events could not be put on Kinesis.
    #[error(
        "call {call_id}: {count} LCA events could not be put on Kinesis; first: {first}. {}",
        if *refused {
            "Kinesis refused them: check that the stream exists and that the function's role may kinesis:PutRecord to it (and use its KMS key, if encrypted)"
        } else {
            "Kinesis did not take them in the time there was (throttling or an outage): they are published, in order, when it does"
        }
    )]
    Undelivered {
        /// The call.
        call_id: String,
        /// How many.
        count: usize,
        /// The first failure.
        first: String,
        /// Kinesis refused them for good (see [`publisher::is_refusal`]); `false`: time or
        /// attempts ran out.
        refused: bool,
        /// The hand-over point (or the call's end) the run reached before it gave up on
        /// them, if it did.
        reached: Option<Box<Reached>>,
    },
}

impl PipelineError {
    /// The error for what `report` could not put on Kinesis, if anything.
    fn undelivered(call_id: &str, report: &PublishReport) -> Option<Self> {
        let (_, first) = report.undelivered.first()?;
        Some(Self::Undelivered {
            call_id: call_id.to_string(),
            count: report.undelivered.len(),
            first: first.clone(),
            refused: report.refused,
            reached: None,
        })
    }

    /// Takes how far the run got before Kinesis held it back, if it reached a hand-over
    /// point or the call's end ([`Reached`]).
    pub fn take_reached(&mut self) -> Option<Reached> {
        match self {
            Self::Undelivered { reached, .. } => reached.take().map(|reached| *reached),
            _ => None,
        }
    }

    /// Whether the run failed only for want of room at a service: Transcribe's stream quota
    /// stayed in use, a Transcribe stream got stuck, or Kinesis kept throttling (or was out)
    /// until the run's time was up. Nothing is wrong with the call or the configuration, and
    /// the audio waits in KVS: a later run at the same position can do what this one could not.
    pub fn is_stall(&self) -> bool {
        matches!(
            self,
            Self::Transcribe(TranscribeError::Capacity { .. } | TranscribeError::Stuck { .. })
                | Self::Undelivered { refused: false, .. }
        )
    }
}

/// Optional outlets of a run.
#[derive(Debug, Default)]
pub struct Taps {
    /// Receives every stereo chunk, in order (the S3 recorder).
    pub recording: Option<mpsc::Sender<StereoChunk>>,
    /// Receives every LCA message once Kinesis has acknowledged it (progress displays).
    pub delivered: Option<mpsc::UnboundedSender<LcaMessage>>,
    /// What Kinesis acknowledged, for the call's lease, which the publisher waits for
    /// ([`crate::delivery_record`]): a run under a lease.
    pub lease_record: Option<crate::delivery_record::DeliveryRecord>,
    /// The run's figures as they grow (the invocation's metrics lines read them while it
    /// runs); a fresh one when `None`.
    pub progress: Option<RunProgress>,
}

/// Runs calls with one configuration and one set of clients.
#[derive(Clone, Debug)]
pub struct CallPipeline {
    /// The configuration.
    pub config: TranscriberConfig,
    /// The clients.
    pub clients: Clients,
}

impl CallPipeline {
    /// Runs `call` until it ends or its deadline passes. Flushes Transcribe and Kinesis
    /// before returning. Everything it logs is in a `call` span carrying the CallId.
    pub async fn run(&self, call: CallSpec, taps: Taps) -> Result<CallOutcome, PipelineError> {
        let span = tracing::info_span!("call", call_id = %call.call_id);
        self.run_in_span(call, taps).instrument(span).await
    }

    async fn run_in_span(&self, call: CallSpec, taps: Taps) -> Result<CallOutcome, PipelineError> {
        let Taps {
            recording,
            delivered,
            lease_record,
            progress,
        } = taps;
        let progress = progress.unwrap_or_else(|| RunProgress::new(call.position.start_sample));
        let config = &self.config;
        let (message_tx, message_rx) = mpsc::channel::<LcaMessage>(1024);
        let kinesis = self.clients.kinesis.clone();
        // Kinesis writes are retried for as long as the run may take (a Lambda run's time,
        // then its grace period); after that the run fails as a stall
        // ([`PipelineError::is_stall`]) and a fresh run at the same position delivers the rest.
        let mut publisher_options = match call.deadline {
            Some(deadline) => PublisherOptions::until(
                &config.kinesis_stream_name,
                deadline + config.handover_grace,
            ),
            None => PublisherOptions::new(&config.kinesis_stream_name),
        };
        publisher_options.progress = Some(progress.clone());
        let publisher = tokio::spawn(
            async move {
                publisher::run(
                    &kinesis,
                    &publisher_options,
                    message_rx,
                    delivered,
                    lease_record,
                )
                .await
            }
            .in_current_span(),
        );
        // A run that is dropped (its lease lost, its invocation ending) takes its tasks with
        // it: no orphan keeps a Transcribe stream, a GetMedia connection or publishing.
        let mut tasks = AbortOnDrop(vec![publisher.abort_handle()]);
        // What an earlier run could not deliver goes first (it is earlier in the call), less
        // what an earlier attempt at this run delivered of it; the transcription continues
        // after it.
        let mut transcribed = call.already_delivered.clone();
        for message in &call.pending {
            transcribed.record(message);
            if !call.already_delivered.has(message) {
                let _ = message_tx.send(message.clone()).await;
            }
        }
        if let Some(start) = call.start_event.clone() {
            let _ = message_tx
                .send(LcaMessage {
                    call_id: call.call_id.clone(),
                    event: LcaEvent::Start(start),
                })
                .await;
        }
        let (chunk_tx, chunk_rx) = mpsc::channel::<StereoChunk>(64);
        let transcription = CallTranscription {
            call_id: call.call_id.clone(),
            settings: config.transcribe.for_call(call.settings.as_ref()),
            save_partials: config.save_partials,
            keep_alive: config.keep_alive,
            session_id: call.position.session_id.clone(),
            start_sample: call.position.start_sample,
            delivered: transcribed,
            // Waiting for Transcribe capacity may use the hand-over's grace period too; then
            // the run fails as a stall and a fresh run continues the call at the same position.
            give_up_at: call
                .deadline
                .map(|deadline| deadline + config.handover_grace),
            progress: Some(progress.clone()),
            hand_over_at: call.deadline,
        };
        let transcribe_client = self.clients.transcribe.clone();
        let transcribe_messages = message_tx.clone();
        // The call's end was transcribed already: END is on the stream (a retry after a crash
        // at the very end), or among what this run carries (the run that ended the call
        // stalled on Kinesis). Nothing is transcribed, and END is not sent again.
        let ended_before =
            call.already_delivered.ended || call.pending.iter().any(LcaMessage::is_end);
        let transcribe = !ended_before;
        let transcriber = tokio::spawn(
            async move {
                if !transcribe {
                    // The audio (what KVS still has after the run's position) is only
                    // recorded again.
                    let mut chunk_rx = chunk_rx;
                    while chunk_rx.recv().await.is_some() {}
                    return Ok(TranscriptionSummary::default());
                }
                transcribe::run(
                    &transcribe_client,
                    transcription,
                    chunk_rx,
                    transcribe_messages,
                )
                .await
            }
            .in_current_span(),
        );
        tasks.0.push(transcriber.abort_handle());

        let mut events = source::spawn(
            self.clients.kvs.clone(),
            SourceOptions::new(
                &call.stream_arn,
                &call.contact_id,
                call.position.start.clone(),
                config.kvs_idle_timeout,
            ),
        );
        let mut assembler = StereoAssembler::new(AssemblerConfig {
            origin_ns: call.position.origin_ns,
            start_sample: call.position.start_sample,
            ..AssemblerConfig::default()
        });
        let mut last_fragment = match &call.position.start {
            StartAt::After(number) => Some(StartAt::After(number.clone())),
            StartAt::Fragment(_) | StartAt::Now | StartAt::ProducerTime(_) => None,
        };
        let mut outlet = ChunkOutlet {
            transcribe: chunk_tx,
            recording,
            latencies: Latencies::default(),
            progress: progress.clone(),
        };
        let mut get_media_resumes = 0;
        let mut quiet = QuietWatch::default();
        let mut last_received = Instant::now();
        let mut source_error = None;
        let ending = loop {
            let mut at_boundary = false;
            let Some(event) = events.recv().await else {
                break Ending::CallEnded(EndReason::StreamEnded);
            };
            match event {
                Ok(SourceEvent::Audio {
                    channel,
                    timestamp_ns,
                    pcm,
                    received,
                }) => {
                    last_received = received;
                    let channel = match (call.swap_channels, channel) {
                        (false, channel) => channel,
                        (true, Channel::Caller) => Channel::Agent,
                        (true, Channel::Agent) => Channel::Caller,
                    };
                    quiet.push(channel as usize, timestamp_ns, &pcm);
                    if let Err(error) = assembler.push(channel, timestamp_ns, &pcm) {
                        tracing::warn!(call_id = %call.call_id, %error, "audio block dropped");
                    }
                }
                Ok(SourceEvent::FragmentDone {
                    fragment_number,
                    millis_behind_now,
                    ..
                }) => {
                    assembler.sync();
                    progress.fragment_read(
                        assembler.known_samples(),
                        millis_behind_now,
                        Instant::now(),
                    );
                    at_boundary = true;
                    last_fragment = Some(StartAt::After(fragment_number));
                }
                // Only tools that save the stream's bytes ask for them.
                Ok(SourceEvent::Chunk { .. }) => {}
                Ok(SourceEvent::Resumed { kvs_error }) => {
                    get_media_resumes += 1;
                    progress.resumed(kvs_error.as_deref());
                }
                Ok(SourceEvent::End(reason)) => break Ending::CallEnded(reason),
                Err(error) => {
                    source_error = Some(error);
                    break Ending::CallEnded(EndReason::StreamEnded);
                }
            }
            if !outlet.forward(&mut assembler, last_received).await {
                // The transcription failed (its error is the run's): reading on is in vain.
                break Ending::CallEnded(EndReason::StreamEnded);
            }
            // A call that reached its maximum length ends here, as a call does.
            if at_boundary
                && call
                    .max_samples
                    .is_some_and(|max| assembler.emitted_samples() >= max)
            {
                break Ending::CallEnded(EndReason::MaxCallDuration);
            }
            // Past the deadline, hand over at the first fragment boundary between utterances
            // (a new Transcribe session must not cut one in two), or at any boundary once the
            // grace period is over.
            if at_boundary
                && let (Some(deadline), Some(after)) = (call.deadline, &last_fragment)
                && Instant::now() >= deadline
                && (quiet.is_quiet(HANDOVER_QUIET.as_nanos() as i64)
                    || Instant::now() >= deadline + config.handover_grace)
            {
                assembler.finish();
                outlet.forward(&mut assembler, last_received).await;
                break Ending::HandOver(CallPosition {
                    start: after.clone(),
                    session_id: None,
                    origin_ns: assembler.origin_ns(),
                    start_sample: assembler.emitted_samples(),
                });
            }
        };
        drop(events);
        if matches!(ending, Ending::CallEnded(_)) {
            assembler.finish();
            outlet.forward(&mut assembler, last_received).await;
            progress.stream_ended(Instant::now());
        }
        let chunk_latencies = std::mem::take(&mut outlet.latencies);
        drop(outlet);
        let transcription = match transcriber.await {
            Ok(result) => result,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        };
        let transcription = match transcription {
            Ok(summary) => summary,
            Err(error) => {
                drop(message_tx);
                let _ = publisher.await;
                return Err(error.into());
            }
        };
        if let Some(error) = source_error {
            drop(message_tx);
            let _ = publisher.await;
            return Err(error.into());
        }
        if matches!(ending, Ending::CallEnded(_)) && !ended_before {
            let _ = message_tx
                .send(LcaMessage {
                    call_id: call.call_id.clone(),
                    event: LcaEvent::End(Stamped {
                        created_at: transcribe::now(),
                    }),
                })
                .await;
        }
        drop(message_tx);
        let published = match publisher.await {
            Ok(report) => report,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        };
        let ending = match ending {
            Ending::HandOver(mut position) => {
                position.session_id = transcription.session_id.clone();
                Ending::HandOver(position)
            }
            other => other,
        };
        if let Some(mut error) = PipelineError::undelivered(&call.call_id, &published) {
            // Transcribed up to the last fragment read: a hand-over point (the hand-over's own
            // position), or the call's end (END is then among the undelivered: the next run
            // publishes what it carries and ends the call). The call can go on from there.
            let reached_at = match &last_fragment {
                Some(start @ StartAt::After(_)) => Some(CallPosition {
                    start: start.clone(),
                    session_id: transcription.session_id.clone(),
                    origin_ns: assembler.origin_ns(),
                    start_sample: assembler.emitted_samples(),
                }),
                _ => None,
            };
            if let (PipelineError::Undelivered { reached, .. }, Some(position)) =
                (&mut error, reached_at)
            {
                *reached = Some(Box::new(Reached {
                    position,
                    undelivered: published.undelivered.into_iter().map(|(m, _)| m).collect(),
                }));
            }
            return Err(error);
        }
        let figures = progress.figures(Instant::now());
        Ok(CallOutcome {
            ending,
            samples: assembler.emitted_samples() - call.position.start_sample,
            transcript_lags: figures.transcript_lags,
            transcription,
            published,
            chunk_latencies,
            kvs_behind_ms: figures.kvs_behind_ms,
            transient_kvs_errors: figures.transient_kvs_errors,
            get_media_resumes,
        })
    }
}

impl CallPipeline {
    /// Puts one message on the LCA stream with the pipeline's publisher (ordering, retries):
    /// for what is published outside a run (END of a call given up, the recording's URL).
    pub async fn publish(&self, message: LcaMessage) -> Result<(), PipelineError> {
        let call_id = message.call_id.clone();
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.send(message).await;
        drop(tx);
        let options = PublisherOptions::new(&self.config.kinesis_stream_name);
        let report = publisher::run(&self.clients.kinesis, &options, rx, None, None).await;
        match PipelineError::undelivered(&call_id, &report) {
            None => Ok(()),
            Some(error) => Err(error),
        }
    }
}

/// Where assembled chunks go: the Transcribe session and the recorder; measures latency.
struct ChunkOutlet {
    transcribe: mpsc::Sender<StereoChunk>,
    recording: Option<mpsc::Sender<StereoChunk>>,
    latencies: Latencies,
    /// Notes when the call's audio arrived (transcript lags are measured from it).
    progress: RunProgress,
}

impl ChunkOutlet {
    /// Sends every ready chunk; `received` is when the KVS bytes that completed them arrived.
    /// `false`: the transcription has stopped (failed).
    async fn forward(&mut self, assembler: &mut StereoAssembler, received: Instant) -> bool {
        while let Some(chunk) = assembler.pop_chunk() {
            if let Some(recording) = &self.recording {
                let _ = recording.send(chunk.clone()).await;
            }
            self.latencies.record(received.elapsed());
            self.progress
                .assembled(chunk.start_sample + chunk.samples as u64, received);
            // A closed channel means the transcription failed; its error is reported at the end.
            // A full one holds the reading back (a slow or refusing Transcribe): the call goes
            // on meanwhile, which the live edge's estimate counts.
            let chunk = match self.transcribe.try_send(chunk) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
                Err(mpsc::error::TrySendError::Full(chunk)) => chunk,
            };
            self.progress.held_back(Some(Instant::now()));
            let sent = self.transcribe.send(chunk).await;
            self.progress.held_back(None);
            if sent.is_err() {
                return false;
            }
        }
        !self.transcribe.is_closed()
    }
}
