//! The call transcriber as a Lambda function: a new call from a contact-flow event, or a call
//! continued from an earlier invocation (`{"action":"LAMBDA_CONTINUE","contactId",
//! "lambdaCount"}`, the call read from its lease; `"callData"` instead without a lease table,
//! and from earlier versions), or rescued by the sweep.
//! Before the invocation's time runs out it stops at a fragment boundary, flushes, and
//! invokes itself with where to continue, so a call of any length is transcribed exactly once.
//!
//! A new call can be adjusted by the customer's lambda hook (`LAMBDA_HOOK_FUNCTION_ARN`).
//! A lease in DynamoDB ([`crate::lease`]) lets one invocation at a time work on a call, and
//! lets a retry after a crash continue without publishing anything twice. Each invocation
//! records its audio to S3; the last one joins the recording ([`crate::recording`]) and
//! publishes ADD_S3_RECORDING_URL after END.

use std::time::Duration;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use call_metrics::EmfRecord;
use lca_events::{LcaEvent, LcaMessage, RecordingUrl, StartCall};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::TranscriberConfig;
use crate::call::CallData;
use crate::delivered::Delivered;
use crate::delivery::{
    CONTINUE_ACTION, EventError, NamedBy, NamedCall, call_of_event, hand_over_event,
    named_call_of_event,
};
use crate::delivery_record::{DeliveryRecord, LeaseSide, delivery_record};
pub use crate::error::HandlerError;
use crate::lease::{CallLease, Claim, Held, LeaseError, decide, now_ms};
use crate::metrics::{InvocationFigures, PostCallFigure, RunFigures};
use crate::pipeline::{CallPipeline, CallSpec, Clients, Ending, Taps};
use crate::post_call::{JobStarted, PostCallJobs};
use crate::progress::RunProgress;
use crate::recording::Recorder;
use crate::source::EndReason;
use call_lifecycle::NoCall;
use call_lifecycle::hook::{HookAnswer, hook_answer};
use call_lifecycle::{
    AfterFailure, AfterStall, MAX_PENDING_BYTES, Unpublished, after_failure, after_stall,
};

/// Time kept back from the Lambda's deadline for waiting for a quiet moment to hand over
/// (`HANDOVER_GRACE`, [`TranscriberConfig::handover_grace`], at most 30 s), flushing
/// Transcribe and Kinesis, joining the recording and invoking the next function.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(45);

/// What the handler needs.
#[derive(Debug, Clone)]
pub struct Transcriber {
    /// The pipeline (configuration and clients).
    pub pipeline: CallPipeline,
    /// Invokes the next invocation of this function and the lambda hook.
    pub lambda: aws_sdk_lambda::Client,
    /// One transcriber per call (absent without `TRANSCRIBER_CALL_EVENT_TABLE_NAME`).
    pub lease: Option<CallLease>,
    /// The S3 recording (absent without `OUTPUT_BUCKET`).
    pub recorder: Option<Recorder>,
    /// Region of the bucket, for the recording's URL.
    pub region: String,
    /// Starts the call's post-call analytics job (absent unless Call Analytics mode with
    /// post-call analytics on).
    pub post_call: Option<PostCallJobs>,
}

impl Transcriber {
    /// The handler with every AWS client built from `sdk` for `config`.
    pub fn new(config: TranscriberConfig, sdk: &aws_config::SdkConfig) -> Self {
        let bounded = aws_edge::with_timeouts(sdk);
        let region = config
            .region
            .clone()
            .or_else(|| sdk.region().map(|r| r.to_string()))
            .unwrap_or_else(|| "us-east-1".to_string());
        Self {
            lease: config.call_event_table.clone().map(|table| CallLease {
                sweep_grace: config.sweep_grace,
                ..CallLease::new(
                    aws_sdk_dynamodb::Client::new(&bounded),
                    table,
                    config.call_lease_timeout,
                )
            }),
            recorder: config.output_bucket.clone().map(|bucket| Recorder {
                s3: s3_client(&recording_retries(&bounded)),
                bucket,
                raw_prefix: config.raw_prefix.clone(),
                recording_prefix: config.recording_prefix.clone(),
            }),
            region,
            // Any call may have post-call analytics (a contact's attributes may choose Call
            // Analytics mode): each call's settings say whether it has.
            post_call: Some(PostCallJobs {
                client: aws_sdk_transcribe::Client::new(&bounded),
            }),
            lambda: aws_sdk_lambda::Client::new(&bounded),
            pipeline: CallPipeline {
                clients: Clients::new(sdk, &config),
                config,
            },
        }
    }
}

/// Attempts per S3 request of the recording: twice the SDK's default three (all within one
/// request's time limit, 60 s), since a part that cannot be written fails the run (and
/// a run retried by Lambda reads and records its share again). S3 answers 503 Slow Down
/// while it scales a busy prefix, which the SDK's standard retry mode backs off from
/// exponentially, with jitter, up to 20 s a wait.
const RECORDING_ATTEMPTS: u32 = 6;

/// `sdk` with [`RECORDING_ATTEMPTS`] attempts per request.
fn recording_retries(sdk: &aws_config::SdkConfig) -> aws_config::SdkConfig {
    sdk.to_builder()
        .retry_config(
            aws_config::retry::RetryConfig::standard().with_max_attempts(RECORDING_ATTEMPTS),
        )
        .build()
}

/// An S3 client; path-style addressing when the endpoint is overridden (local emulators),
/// virtual-hosted as AWS recommends otherwise.
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let local = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|u| !u.is_empty()))
        || sdk.endpoint_url().is_some();
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(local)
            .build(),
    )
}

/// This invocation as Lambda describes it.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    /// This function's ARN (the hand-over invokes it).
    pub function_arn: &'a str,
    /// Lambda's request id (the same on Lambda's retries of a failed event).
    pub request_id: &'a str,
    /// When Lambda stops this invocation.
    pub deadline: Instant,
}

/// Why a run could not advance its call, and when its invocation began (where a stall
/// starts being counted when it is the call's first); how far it got if only Kinesis held it
/// back.
struct Stall {
    error: HandlerError,
    began_ms: u64,
    reached: Option<Unpublished>,
}

/// The call an invocation works on, with its hold on it.
#[derive(Clone, Copy)]
struct Holding<'a> {
    call: &'a CallData,
    held: &'a Held,
    lease: Option<&'a CallLease>,
}

/// The answer for an invocation that leaves the call to another one.
fn left(call: &CallData, reason: &str) -> Value {
    tracing::info!(call_id = %call.call_id, lambda_count = call.lambda_count, reason, "call left to another invocation");
    json!({"status": "DUPLICATE", "callId": call.call_id, "reason": reason})
}

impl Transcriber {
    /// Invokes the lambda hook (RequestResponse) with the contact-flow event.
    async fn call_hook(&self, hook: &str, event: &Value) -> Result<HookAnswer, HandlerError> {
        let output = self
            .lambda
            .invoke()
            .function_name(hook)
            .invocation_type(InvocationType::RequestResponse)
            .payload(Blob::new(event.to_string()))
            .send()
            .await
            .map_err(|e| HandlerError::Hook {
                function: hook.to_string(),
                message: aws_edge::error_text(&e),
            })?;
        let payload = output.payload.map(|p| p.into_inner()).unwrap_or_default();
        hook_answer(&payload, output.function_error.as_deref()).map_err(|e| HandlerError::Hook {
            function: hook.to_string(),
            message: e.0,
        })
    }

    /// Runs the lambda hook for a new call (when configured); `false`: not to be processed.
    async fn hook(&self, event: &Value, call: &mut CallData) -> Result<bool, HandlerError> {
        let Some(hook) = &self.pipeline.config.lambda_hook_function_arn else {
            return Ok(true);
        };
        let answer = self.call_hook(hook, event).await?;
        let process = answer.apply(call).map_err(|e| HandlerError::Hook {
            function: hook.to_string(),
            message: e.to_string(),
        })?;
        if !process {
            tracing::info!(call_id = %call.call_id, "the lambda hook said shouldProcessCall=false");
            return Ok(false);
        }
        Ok(true)
    }

    /// Handles one invocation.
    pub async fn handle(
        &self,
        event: Value,
        invocation: Invocation<'_>,
    ) -> Result<Value, HandlerError> {
        self.handle_measured(event, invocation).await.0
    }

    /// Handles one invocation; also returns its metrics lines (what `serve` writes to
    /// stdout, where CloudWatch Logs takes the metrics out of them).
    pub async fn handle_measured(
        &self,
        event: Value,
        invocation: Invocation<'_>,
    ) -> (Result<Value, HandlerError>, Vec<EmfRecord>) {
        let mut figures = InvocationFigures::default();
        let result = self.handle_call(event, invocation, &mut figures).await;
        let mut records = figures.records(&result, now_ms());
        for record in &mut records {
            record.in_namespace(&self.pipeline.config.metrics_namespace);
        }
        (result, records)
    }

    async fn handle_call(
        &self,
        event: Value,
        invocation: Invocation<'_>,
        figures: &mut InvocationFigures,
    ) -> Result<Value, HandlerError> {
        if crate::sweep::is_scheduled(&event) {
            // Boxed: its future beside the call's would make the handler's too deep to lay out.
            return Box::pin(self.sweep(invocation, figures)).await;
        }
        // The lease as a named delivery read it, for the claim's first look.
        let mut read_already = None;
        let (mut call, is_new) = match named_call_of_event(&event).map_err(HandlerError::Event)? {
            Some(named) => {
                figures.rescued = named.by == NamedBy::Rescue;
                let Some(record) = self.named_call(&named).await? else {
                    tracing::warn!(
                        lambda_count = named.lambda_count,
                        "{:?}: the call's lease is gone",
                        named.by
                    );
                    return Ok(
                        json!({"status": "DUPLICATE", "reason": "the call's lease is gone"}),
                    );
                };
                let lambda_count = match named.by {
                    // The lease names the invocation the sweep found; claimed as it stands.
                    NamedBy::Rescue => record.lambda_count,
                    // The event's invocation: a stale one finds the lease moved on.
                    NamedBy::Start | NamedBy::HandOver => named.lambda_count,
                };
                let call = CallData {
                    lambda_count,
                    ..record.call.clone()
                };
                read_already = Some(Some(record));
                (call, false)
            }
            None => {
                let config = &self.pipeline.config;
                let (call, is_new) = match call_of_event(
                    &event,
                    config.connect_instance_arn.as_deref(),
                    &config.contacts,
                ) {
                    Err(EventError::NoCall(no_call @ NoCall::NotTranscribed { .. })) => {
                        // StartLCA answers so without invoking: an invocation with the event.
                        tracing::info!("{no_call}");
                        return Ok(json!({"status": "NOT_TRANSCRIBED"}));
                    }
                    other => other?,
                };
                if is_new {
                    // Where the call's audio is, for `lca-kvs capture` (README, "Investigate a call").
                    tracing::info!(call_id = %call.contact_id, stream_arn = %call.stream_arn, start_fragment = %call.start_fragment_number, start_timestamp_ms = ?call.started_at_ms, "new call");
                }
                (call, is_new)
            }
        };
        figures.call_id = Some(call.call_id.clone());
        figures.lambda_count = Some(call.lambda_count);
        let skipped = |call: &CallData| json!({"status": "SKIPPED", "callId": call.call_id});
        let mut held = Held {
            contact_id: call.contact_id.clone(),
            owner: invocation.request_id.to_string(),
            lambda_count: call.lambda_count,
            attempt: 1,
        };
        let mut delivered = Delivered::default();
        let lease = match &self.lease {
            None => {
                if is_new && !self.hook(&event, &mut call).await? {
                    return Ok(skipped(&call));
                }
                None
            }
            Some(lease) => {
                let limits = self.pipeline.config.limits();
                let mut waited = false;
                loop {
                    let record = match read_already.take() {
                        Some(record) => record,
                        None => lease.read(&call.contact_id).await?,
                    };
                    match decide(record, call.lambda_count, &held.owner, now_ms(), limits) {
                        Claim::Leave(reason) => return Ok(left(&call, reason)),
                        Claim::WaitForExpiry(record) if !waited => {
                            let wait = Duration::from_millis(
                                record.lease_until_ms.saturating_sub(now_ms()) + 100,
                            )
                            .min(lease.duration + Duration::from_secs(1));
                            tracing::info!(call_id = %call.call_id, wait_ms = wait.as_millis() as u64, "the lease is held under this request id: waiting to see whether its holder is alive");
                            tokio::time::sleep(wait).await;
                            waited = true;
                            continue;
                        }
                        Claim::WaitForExpiry(_) => {
                            return Ok(left(
                                &call,
                                "an invocation with this request id still holds the call",
                            ));
                        }
                        Claim::Create => {
                            if is_new && !self.hook(&event, &mut call).await? {
                                return Ok(skipped(&call));
                            }
                            if !lease.create(&held, &call).await? {
                                return Ok(left(
                                    &call,
                                    "another invocation created the lease first",
                                ));
                            }
                        }
                        Claim::TakeOver { record, attempt } => {
                            held.attempt = attempt;
                            if !lease.take_over(&held, &record).await? {
                                return Ok(left(&call, "another invocation took the lease first"));
                            }
                            let contact_event = record.contact_event.clone();
                            // A held lease was taken from an attempt that stopped (a crash, a
                            // failure or a timeout); an empty owner is an ordinary hand-over.
                            let after_failure = !record.owner.is_empty();
                            if record.lambda_count == call.lambda_count {
                                call = record.call;
                            }
                            delivered = record.delivered;
                            if after_failure {
                                tracing::warn!(call_id = %call.call_id, lambda_count = call.lambda_count, attempt, max_attempts = limits.max_attempts, "resuming a call after an attempt that stopped; what it published is not published again");
                            }
                            if let Some(text) = contact_event {
                                // The lease StartLCA wrote: the call's first attempt runs the
                                // lambda hook on the contact-flow event kept with it.
                                let flow_event: Value =
                                    serde_json::from_str(&text).map_err(|e| {
                                        HandlerError::Event(format!(
                                            "the lease's ContactEvent: {}",
                                            lca_events::json_problem(&e)
                                        ))
                                    })?;
                                if !self.hook(&flow_event, &mut call).await? {
                                    lease.skip(&held).await?;
                                    return Ok(skipped(&call));
                                }
                                if !lease.started(&held, &call).await? {
                                    return Ok(left(
                                        &call,
                                        "another invocation took the lease first",
                                    ));
                                }
                            }
                        }
                        Claim::GiveUp { record, attempt } => {
                            held.attempt = attempt;
                            if !lease.take_over(&held, &record).await? {
                                return Ok(left(&call, "another invocation took the lease first"));
                            }
                            let call = record.call;
                            let span = tracing::info_span!("call", call_id = %call.call_id, lambda_count = call.lambda_count);
                            figures.call_id = Some(call.call_id.clone());
                            figures.lambda_count = Some(call.lambda_count);
                            let holding = Holding {
                                call: &call,
                                held: &held,
                                lease: Some(lease),
                            };
                            if record.giving_up {
                                // Given up already; what that owes LCA was refused then.
                                let finishing =
                                    self.finish_giving_up(holding, record.delivered, figures);
                                return holding_while(lease, &held, finishing)
                                    .instrument(span)
                                    .await;
                            }
                            let error = HandlerError::AttemptsUsedUp {
                                call_id: call.call_id.clone(),
                                attempts: attempt - 1,
                            };
                            let giving_up = self.give_up(holding, record.delivered, error, figures);
                            return holding_while(lease, &held, giving_up)
                                .instrument(span)
                                .await;
                        }
                        Claim::RepeatHandOver(record) => {
                            return self
                                .invoke_next(&record.call, invocation.function_arn)
                                .await;
                        }
                    }
                    break;
                }
                Some(lease)
            }
        };
        // Everything this invocation logs about the call carries its CallId.
        let span =
            tracing::info_span!("call", call_id = %call.call_id, lambda_count = call.lambda_count);
        // The lease's copy of the call may have replaced the event's (a resumed attempt).
        figures.call_id = Some(call.call_id.clone());
        figures.lambda_count = Some(call.lambda_count);
        self.transcribe(call, held, lease, delivered, invocation, figures)
            .instrument(span)
            .await
    }

    /// Runs this invocation's share of the call, then hands it over or ends it.
    async fn transcribe(
        &self,
        call: CallData,
        held: Held,
        lease: Option<&CallLease>,
        delivered: Delivered,
        invocation: Invocation<'_>,
        figures: &mut InvocationFigures,
    ) -> Result<Value, HandlerError> {
        let config = &self.pipeline.config;
        // START goes out with the call's first share (the one read from its first fragment:
        // also a share run again after a stall) unless the lease says it is on the stream.
        let start_event = (call.last_fragment.is_none() && !delivered.started).then(|| StartCall {
            customer_phone_number: call.from_number.clone(),
            system_phone_number: call.to_number.clone(),
            agent_id: call.agent_id.clone(),
            metadata_json: call.start_metadata(&config.transcribe.call),
            created_at: call
                .started_at_ms
                .map_or_else(crate::transcribe::now, crate::transcribe::timestamp),
        });
        let start_sent = start_event.is_some();
        let began_ms = now_ms();
        let now = Instant::now();
        let deadline = (now + config.lambda_invoke_timeout).min(
            invocation
                .deadline
                .checked_sub(DEADLINE_MARGIN)
                .unwrap_or(now),
        );
        let spec = CallSpec {
            call_id: call.call_id.clone(),
            contact_id: call.contact_id.clone(),
            stream_arn: call.stream_arn.clone(),
            position: crate::call::position(&call),
            start_event,
            deadline: Some(deadline),
            max_samples: Some(config.max_call_samples()),
            swap_channels: call.swap_channels,
            already_delivered: delivered.clone(),
            pending: call.pending.clone(),
            settings: call.settings.as_ref().map(|chosen| chosen.settings.clone()),
        };
        // What Kinesis acknowledges, for the lease; the publisher waits for the lease to
        // have recorded each change before it sends the next.
        let (record, lease_side) = match lease {
            Some(_) => {
                let (record, side) = delivery_record(delivered);
                (record, Some(side))
            }
            None => (DeliveryRecord::unleased(delivered), None),
        };
        let acknowledged = record.watch();
        let recorder = self.recorder_of(&call).cloned();
        let (recording_tx, piece) = match recorder.clone() {
            Some(recorder) => {
                let (tx, rx) = mpsc::channel(64);
                let call_id = call.call_id.clone();
                let piece = tokio::spawn(
                    async move { recorder.record_piece(&call_id, rx).await }.in_current_span(),
                );
                (Some(tx), Some(piece))
            }
            None => (None, None),
        };
        let progress = RunProgress::new(spec.position.start_sample);
        let taps = Taps {
            recording: recording_tx,
            delivered: None,
            lease_record: Some(record),
            progress: Some(progress.clone()),
        };
        // While the run goes on, a metrics line every METRICS_INTERVAL with what it did since
        // the last one (what those lines reported is left out of the invocation's last line).
        let mut reported = RunFigures::default();
        let run = {
            let run = self.pipeline.run(spec, taps);
            let lines = self.write_progress_lines(&progress, figures, &mut reported);
            async move {
                tokio::select! {
                    outcome = run => outcome,
                    never = lines => match never {},
                }
            }
        };
        let result = match lease {
            None => run.await,
            Some(lease) => {
                tokio::select! {
                    outcome = run => outcome,
                    ended = keep_renewing(lease, &held, lease_side) => {
                        // The run's tasks stop with it; the recording of this share stops too
                        // (the new holder records it again and aborts the upload left open).
                        if let Some(piece) = &piece {
                            piece.abort();
                        }
                        return match ended {
                            HoldEnded::Lost => {
                                tracing::error!(call_id = %call.call_id, "lease lost to another invocation: stopping");
                                Ok(json!({"status": "LEASE_LOST", "callId": call.call_id}))
                            }
                            HoldEnded::Lapsed(error) => {
                                // Lambda retries the attempt; the retry takes the call over
                                // once the hold has expired, as the next attempt.
                                tracing::error!(call_id = %call.call_id, %error, "the lease could not be renewed before its hold would lapse: stopping, for Lambda's retry to take the call over; check the lease table (DynamoDB) and the function's access to it");
                                Err(error.into())
                            }
                        };
                    }
                }
            }
        };
        let mut delivered = acknowledged.borrow().delivered.clone();
        figures.started = start_sent && delivered.started;
        // The run's figures whether it went well or not (what it transcribed and published
        // either way), less what the progress lines reported.
        figures.run = Some(progress.figures(Instant::now()));
        figures.reported = reported;
        let piece = match piece {
            Some(piece) => match piece.await {
                Ok(result) => Some(result),
                Err(join) => std::panic::resume_unwind(join.into_panic()),
            },
            None => None,
        };
        let holding = Holding {
            call: &call,
            held: &held,
            lease,
        };
        let finished = match (result, piece) {
            (Err(error), _) => Err(error.into()),
            (Ok(_), Some(Err(error))) => Err(error.into()),
            (Ok(outcome), piece) => {
                if let Some(Ok(piece)) = piece {
                    tracing::info!(call_id = %call.call_id, piece = ?piece, "recorded this invocation's audio");
                }
                let finish = self.finish(holding, &mut delivered, outcome, invocation, figures);
                match lease {
                    None => finish.await,
                    // The hold is kept while the call is finished (a long join, the URL, the
                    // post-call job), so no duplicate delivery takes it over meanwhile.
                    Some(lease) => holding_while(lease, &held, finish).await,
                }
            }
        };
        match finished {
            Err(HandlerError::Pipeline(mut error)) if error.is_stall() && lease.is_some() => {
                let reached = error.take_reached().and_then(|reached| {
                    Some(Unpublished {
                        at: crate::call::continuation(reached.position)?,
                        messages: reached.undelivered,
                    })
                });
                let stall = Stall {
                    error: error.into(),
                    began_ms,
                    reached,
                };
                self.stalled(holding, delivered, stall, invocation, figures)
                    .await
            }
            Err(error) => self.failed(holding, delivered, error, false, figures).await,
            answer => answer,
        }
    }

    /// Writes the run's progress metrics lines (stdout, as [`serve`] writes the last one)
    /// every `METRICS_INTERVAL`, noting in `reported` what they said; runs until dropped.
    async fn write_progress_lines(
        &self,
        progress: &RunProgress,
        figures: &InvocationFigures,
        reported: &mut RunFigures,
    ) -> std::convert::Infallible {
        let config = &self.pipeline.config;
        let interval = config.metrics_interval;
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = progress.figures(Instant::now());
            for mut record in figures.progress_records(&now, reported, now_ms()) {
                record.in_namespace(&config.metrics_namespace);
                println!("{}", record.to_line());
            }
            *reported = now;
        }
    }

    /// A run that could not advance the call for want of room at a service (Transcribe's
    /// stream quota in use, Kinesis throttling or out) for as long as it had: not a failure.
    /// The call goes to a fresh invocation at the same position (what was delivered is in the
    /// lease, so nothing is published twice, and the audio waits in KVS), without using up
    /// Lambda's retries, which are kept for real failures. A call stalled for longer than
    /// `CALL_STALL_TIMEOUT` is given up as after its last failed attempt. Needs the lease:
    /// without it, nothing records what was delivered.
    async fn stalled(
        &self,
        holding: Holding<'_>,
        delivered: Delivered,
        stall: Stall,
        invocation: Invocation<'_>,
        figures: &mut InvocationFigures,
    ) -> Result<Value, HandlerError> {
        let Holding { call, held, lease } = holding;
        let Some(lease) = lease else {
            return self
                .failed(holding, delivered, stall.error, false, figures)
                .await;
        };
        let timeout = self.pipeline.config.call_stall_timeout;
        let carried = stall.reached.as_ref().map(Unpublished::carried_bytes);
        // The call moves on with what it carries (whether or not its position changes: a run
        // that only published what it carried, or carried END, may end where it began).
        let carried_on = stall.reached.as_ref().is_some_and(Unpublished::fits);
        let carries_end = stall
            .reached
            .as_ref()
            .is_some_and(|reached| reached.messages.iter().any(LcaMessage::is_end));
        let next = match after_stall(
            call,
            stall.began_ms,
            now_ms(),
            self.pipeline.config.limits(),
            stall.reached,
        ) {
            AfterStall::GiveUp { stalled_ms } => {
                tracing::error!(call_id = %call.call_id, error = %stall.error, stalled_ms, call_stall_timeout_ms = timeout.as_millis() as u64, "the call could not advance for CALL_STALL_TIMEOUT: giving it up");
                return self
                    .failed(holding, delivered, stall.error, true, figures)
                    .await;
            }
            AfterStall::HandOn(next) => *next,
        };
        let stalled_ms = next
            .stalled_since_ms
            .map_or(0, |since| now_ms().saturating_sub(since));
        if !lease.hand_over(held, &next, &delivered).await? {
            tracing::error!(call_id = %next.call_id, "lease lost to another invocation: not handing over");
            return Ok(json!({"status": "LEASE_LOST", "callId": next.call_id}));
        }
        if carried_on {
            tracing::warn!(call_id = %call.call_id, error = %stall.error, stalled_ms, call_stall_timeout_ms = timeout.as_millis() as u64, carried_events = next.pending.len(), carried_bytes = carried, carries_end, start_sample = next.start_sample, "Kinesis did not take this invocation's events in its time: a fresh invocation publishes them first (they are kept in the lease) and continues the call where this one got to (or ends it, when END is among them), without transcribing its audio again");
        } else {
            if let Some(bytes) = carried {
                tracing::warn!(call_id = %call.call_id, carried_bytes = bytes, max_carried_bytes = MAX_PENDING_BYTES, "the events Kinesis did not take are more than the lease keeps: the fresh invocation transcribes this share again");
            }
            tracing::warn!(call_id = %call.call_id, error = %stall.error, stalled_ms, call_stall_timeout_ms = timeout.as_millis() as u64, "no room at a service for this whole invocation: the call waits, its audio in KVS, and a fresh invocation continues it at the same position");
        }
        self.invoke_next(&next, invocation.function_arn).await?;
        Ok(json!({
            "status": "STALLED",
            "callId": next.call_id,
            "lambdaCount": next.lambda_count,
            "reason": stall.error.reason().as_str(),
        }))
    }

    /// After a run that went well: ends the call (recording, ADD_S3_RECORDING_URL, lease) or
    /// hands it over.
    async fn finish(
        &self,
        holding: Holding<'_>,
        delivered: &mut Delivered,
        outcome: crate::pipeline::CallOutcome,
        invocation: Invocation<'_>,
        figures: &mut InvocationFigures,
    ) -> Result<Value, HandlerError> {
        let Holding { call, held, lease } = holding;
        let recorder = self.recorder_of(call);
        match outcome.ending {
            Ending::CallEnded(reason) => {
                if let Some(recorder) = recorder {
                    self.record(recorder, holding, delivered, figures).await?;
                }
                if let Some(lease) = lease
                    && !lease.end(held, delivered).await?
                {
                    tracing::warn!(call_id = %call.call_id, "the lease changed hands before the call's end was recorded");
                }
                if reason == EndReason::MaxCallDuration {
                    // Not a normal end: the caller may still be talking. Said as an error, and
                    // counted apart (CallsCut) so the operator's alarm fires.
                    tracing::error!(call_id = %call.call_id, max_call_duration_ms = self.pipeline.config.max_call_duration.as_millis() as u64, events = outcome.published.delivered, "call cut at MAX_CALL_DURATION: END published and the recording written, the rest of the call is not transcribed; raise MAX_CALL_DURATION if calls this long are expected");
                    return Ok(
                        json!({"status": "CUT", "reason": "MAX_CALL_DURATION", "callId": call.call_id}),
                    );
                }
                tracing::info!(call_id = %call.call_id, ?reason, events = outcome.published.delivered, "call ended");
                Ok(json!({"status": "ENDED", "callId": call.call_id}))
            }
            Ending::HandOver(position) => {
                let next = call.continued(
                    crate::call::continuation(position)
                        .expect("a hand-over happens after a processed fragment"),
                );
                if let Some(lease) = lease
                    && !lease.hand_over(held, &next, delivered).await?
                {
                    tracing::error!(call_id = %next.call_id, "lease lost to another invocation: not handing over");
                    return Ok(json!({"status": "LEASE_LOST", "callId": next.call_id}));
                }
                self.invoke_next(&next, invocation.function_arn).await
            }
        }
    }

    /// What records `call`'s audio: none without `OUTPUT_BUCKET`, or when the lambda hook
    /// said not to record the call.
    fn recorder_of(&self, call: &CallData) -> Option<&Recorder> {
        self.recorder.as_ref().filter(|_| call.should_record_call)
    }

    /// Joins the call's recording and publishes its URL (once), after END; then starts the
    /// call's post-call analytics on it.
    async fn record(
        &self,
        recorder: &Recorder,
        holding: Holding<'_>,
        delivered: &mut Delivered,
        figures: &mut InvocationFigures,
    ) -> Result<(), HandlerError> {
        let call = holding.call;
        let joining = Instant::now();
        let recording = recorder.assemble(&call.call_id).await?;
        tracing::info!(call_id = %call.call_id, key = %recording.key, bytes = recording.bytes, pieces = recording.pieces, uploaded_bytes = recording.uploaded_bytes, already_joined = recording.already_joined, join_ms = joining.elapsed().as_millis() as u64, "recording written");
        figures.recording_bytes = Some(recording.bytes);
        if !delivered.recording_url {
            let url = lca_events::recording_url(
                &recorder.bucket,
                &self.region,
                &recorder.recording_prefix,
                &call.call_id,
            );
            self.pipeline
                .publish(LcaMessage {
                    call_id: call.call_id.clone(),
                    event: LcaEvent::AddS3RecordingUrl(RecordingUrl {
                        recording_url: url,
                        created_at: crate::transcribe::now(),
                    }),
                })
                .await?;
            delivered.recording_url = true;
            // Said in the lease at once, so that a crash from here on (the analytics job,
            // the lease's end) does not publish the URL again on Lambda's retry.
            if let Some(lease) = holding.lease
                && let Err(error) = lease.renew(holding.held, Some(delivered), None).await
            {
                tracing::warn!(call_id = %call.call_id, %error, "the recording's URL could not be recorded in the lease: a retry may publish it again");
            }
        }
        figures.post_call = self.analyse(recorder, call, &recording).await;
        Ok(())
    }

    /// Starts the call's post-call analytics job on its recording. A job that cannot be
    /// started does not fail the invocation (the transcript and the recording are complete,
    /// and a retry would not change Transcribe's answer; the SDK has retried throttling and
    /// service errors): it is logged as an error and counted (PostCallAnalyticsMissed).
    async fn analyse(
        &self,
        recorder: &Recorder,
        call: &CallData,
        recording: &crate::recording::Recording,
    ) -> Option<PostCallFigure> {
        let jobs = self.post_call.as_ref()?;
        let settings = self
            .pipeline
            .config
            .transcribe
            .for_call(call.settings.as_ref().map(|chosen| &chosen.settings));
        let planned = crate::post_call::plan_job(
            &settings,
            &call.call_id,
            &recorder.bucket,
            &recording.key,
            recording.bytes,
        )?;
        let job = match planned {
            Ok(job) => job,
            Err(no_job) if no_job.is_missed() => {
                tracing::error!(call_id = %call.call_id, reason = %no_job, "post-call analytics not started: the call is not analysed (its transcript and recording are complete)");
                return Some(PostCallFigure::Missed);
            }
            Err(no_job) => {
                tracing::info!(call_id = %call.call_id, reason = %no_job, "post-call analytics not started: nothing to analyse");
                return Some(PostCallFigure::NothingToAnalyse);
            }
        };
        match jobs.start(&job).await {
            Ok(JobStarted::Started) => {
                tracing::info!(call_id = %call.call_id, job = %job.name, output = %job.output_location, "post-call analytics job started");
                Some(PostCallFigure::Started)
            }
            Ok(JobStarted::AlreadyStarted) => {
                tracing::info!(call_id = %call.call_id, job = %job.name, "post-call analytics job already started by an earlier attempt");
                Some(PostCallFigure::AlreadyStarted)
            }
            Err(error) => {
                tracing::error!(call_id = %call.call_id, %error, "post-call analytics not started: the call is not analysed (its transcript and recording are complete); check TCA_DATA_ACCESS_ROLE_ARN and the function's transcribe:StartCallAnalyticsJob and iam:PassRole permissions, then start the job by hand if the analysis is needed");
                Some(PostCallFigure::Missed)
            }
        }
    }

    /// Runs the scheduled sweep ([`crate::sweep`]): calls nobody looks after are delivered
    /// to this function again.
    async fn sweep(
        &self,
        invocation: Invocation<'_>,
        figures: &mut InvocationFigures,
    ) -> Result<Value, HandlerError> {
        let Some(lease) = &self.lease else {
            // Without the lease table nothing records open calls: nothing to sweep.
            tracing::info!(
                "scheduled sweep: no call lease table (TRANSCRIBER_CALL_EVENT_TABLE_NAME), nothing to sweep"
            );
            return Ok(json!({"status": "SWEPT", "due": 0, "rescued": 0}));
        };
        let report = crate::sweep::sweep(lease, &self.lambda, invocation.function_arn).await?;
        figures.rescues = report.rescued.iter().map(|r| r.as_str()).collect();
        tracing::info!(
            due = report.due,
            rescued = report.rescued.len(),
            closed = report.closed,
            failed = report.failed,
            "swept the open calls"
        );
        Ok(json!({
            "status": "SWEPT",
            "due": report.due,
            "rescued": report.rescued.len(),
            "closed": report.closed,
            "failed": report.failed,
        }))
    }

    /// The call a rescue event takes up, as its lease keeps it (`None`: no lease).
    /// The lease of the call a named delivery names (`None`: gone, its TTL passed).
    async fn named_call(
        &self,
        named: &NamedCall,
    ) -> Result<Option<call_lifecycle::LeaseRecord>, HandlerError> {
        let Some(lease) = &self.lease else {
            return Err(HandlerError::Event(format!(
                "{:?} of contact {}: a delivery naming its call needs the call lease table (TRANSCRIBER_CALL_EVENT_TABLE_NAME), where the call is kept",
                named.by, named.contact_id
            )));
        };
        Ok(lease.read(&named.contact_id).await?)
    }

    /// Handles a failed attempt: ends its hold in the lease (so Lambda's retry takes over at
    /// once) and returns the error, so Lambda retries the event and, after its last retry,
    /// sends it to the function's on-failure destination. When this was the invocation's last
    /// attempt (attempts are counted when they claim the lease, so the ones Lambda stopped
    /// count too; without a lease every failure is the last), or `last_anyway`, the call is
    /// given up ([`Self::give_up`]).
    async fn failed(
        &self,
        holding: Holding<'_>,
        delivered: Delivered,
        error: HandlerError,
        last_anyway: bool,
        figures: &mut InvocationFigures,
    ) -> Result<Value, HandlerError> {
        let Holding { call, held, lease } = holding;
        let limits = self.pipeline.config.limits();
        let attempt = lease.map(|_| held.attempt);
        let last = last_anyway || after_failure(attempt, limits) == AfterFailure::GiveUp;
        tracing::error!(call_id = %call.call_id, error = %error, attempt, max_attempts = limits.max_attempts, last_attempt = last, "the call's invocation failed");
        let Some(lease) = lease else {
            return self.give_up(holding, delivered, error, figures).await;
        };
        if last {
            // Given up while holding the call (renewed throughout), so that nothing (a
            // duplicate, the sweep) takes it over meanwhile.
            return match lease.renew(held, Some(&delivered), None).await {
                Ok(true) => {
                    let giving_up = self.give_up(holding, delivered, error, figures);
                    holding_while(lease, held, giving_up).await
                }
                Ok(false) => {
                    tracing::error!(call_id = %call.call_id, error = %error, "the call's lease has moved on, so giving it up is left to its holder");
                    Err(error)
                }
                Err(lease_error) => {
                    tracing::error!(call_id = %call.call_id, error = %error, %lease_error, "the call could not be given up: its lease could not be written (Lambda's retry or the sweep gives it up)");
                    Err(error)
                }
            };
        }
        // Released at once, so that Lambda's retry (same request id) or any other delivery
        // takes the call over without waiting (the attempt was counted when it claimed).
        match lease
            .release_after_failure(held, &delivered, &error.to_string())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(call_id = %call.call_id, error = %error, "invocation failed; the call's lease has moved on, so the failure is left to its holder");
            }
            Err(lease_error) => {
                tracing::error!(call_id = %call.call_id, error = %error, %lease_error, "invocation failed and the failure could not be recorded in the lease");
            }
        }
        Err(error)
    }

    /// Gives the call up: END is published, so LCA does not show the call as live for ever,
    /// what was recorded is joined as the call's recording (its URL follows END), and the
    /// lease says FAILED. The transcript then stops where reading stopped; the error log says
    /// why and what to do, and the error is returned (for Lambda's on-failure destination).
    async fn give_up(
        &self,
        holding: Holding<'_>,
        delivered: Delivered,
        error: HandlerError,
        figures: &mut InvocationFigures,
    ) -> Result<Value, HandlerError> {
        figures.gave_up = true;
        let settled = self.settle_give_up(holding, delivered, figures).await;
        tracing::error!(call_id = %holding.call.call_id, error = %error, settled, "call given up: its transcript stops at the failure");
        Err(error)
    }

    /// Delivers what giving the call up owes LCA: END (when START is out and END is not),
    /// then what was recorded joined as the call's recording with its URL, so the raw pieces
    /// (call audio) do not stay behind; then the lease says FAILED. When Kinesis refuses END
    /// or the URL, the lease says GIVING_UP instead and keeps the call among the open ones:
    /// the next claim (Lambda's retry, the sweep's rescue) finishes giving it up, so END is
    /// never lost and goes out once. Returns whether everything was delivered.
    async fn settle_give_up(
        &self,
        holding: Holding<'_>,
        mut delivered: Delivered,
        figures: &mut InvocationFigures,
    ) -> bool {
        let Holding { call, held, lease } = holding;
        let mut owed = false;
        if delivered.started && !delivered.ended {
            let end = LcaMessage {
                call_id: call.call_id.clone(),
                event: LcaEvent::End(lca_events::Stamped {
                    created_at: crate::transcribe::now(),
                }),
            };
            match self.pipeline.publish(end).await {
                Ok(()) => delivered.ended = true,
                Err(end_error) => {
                    owed = true;
                    tracing::error!(call_id = %call.call_id, error = %end_error, "END of the given-up call could not be published: kept in the lease, delivered again by the next claim or the sweep");
                }
            }
        }
        // The recording's URL follows END. Without the lease: its hold may have ended with
        // the failure recorded (a renewal would take it again); the lease's last write
        // below records what was delivered.
        let unleased = Holding {
            lease: None,
            ..holding
        };
        if !owed
            && let Some(recorder) = self.recorder_of(call)
            && delivered.started
        {
            match self
                .record(recorder, unleased, &mut delivered, figures)
                .await
            {
                Ok(()) => {}
                Err(HandlerError::Pipeline(url_error)) => {
                    owed = true;
                    tracing::error!(call_id = %call.call_id, error = %url_error, "the given-up call's recording URL could not be published: kept in the lease, delivered again by the next claim or the sweep");
                }
                Err(record_error) => {
                    tracing::error!(call_id = %call.call_id, error = %record_error, "the given-up call's recording could not be joined: its pieces stay under the raw prefix");
                }
            }
        }
        if let Some(lease) = lease {
            let written = if owed {
                lease.give_up_pending(held, &delivered).await
            } else {
                lease.give_up(held, &delivered).await
            };
            if let Err(lease_error) = written {
                tracing::error!(call_id = %call.call_id, %lease_error, "the given-up call could not be marked in the lease");
            }
        }
        !owed
    }

    /// Finishes giving up a call whose END or URL Kinesis refused when it was given up.
    async fn finish_giving_up(
        &self,
        holding: Holding<'_>,
        delivered: Delivered,
        figures: &mut InvocationFigures,
    ) -> Result<Value, HandlerError> {
        let call_id = holding.call.call_id.clone();
        if self.settle_give_up(holding, delivered, figures).await {
            tracing::warn!(call_id = %call_id, "the given-up call's END and recording are delivered now");
            return Ok(json!({"status": "GIVEN_UP", "callId": call_id}));
        }
        Err(HandlerError::EndPending { call_id })
    }

    /// Starts the invocation that continues the call at `next`. With the lease table, the
    /// event names the call, which the lease holds ([`crate::delivery`]); without one it
    /// carries the call, there being nowhere else to keep it.
    async fn invoke_next(
        &self,
        next: &CallData,
        function_arn: &str,
    ) -> Result<Value, HandlerError> {
        let payload = match &self.lease {
            Some(_) => hand_over_event(&next.contact_id, next.lambda_count),
            None => json!({"action": CONTINUE_ACTION, "callData": next}),
        };
        let invoked = self
            .lambda
            .invoke()
            .function_name(function_arn)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(payload.to_string()))
            .send()
            .await;
        if let Err(error) = invoked {
            return Err(HandlerError::HandOver {
                call_id: next.call_id.clone(),
                function: function_arn.to_string(),
                message: aws_edge::error_text(&error),
            });
        }
        tracing::info!(call_id = %next.call_id, lambda_count = next.lambda_count, "handed over");
        Ok(json!({"status": "CONTINUED", "callId": next.call_id, "lambdaCount": next.lambda_count}))
    }
}

/// Runs `work` while keeping this attempt's hold on the call ([`keep_renewing`] without
/// `Delivered`: the call's own last writes give the lease up). When no renewal succeeds for
/// two thirds of the lease's duration, `work` is stopped and the lease error returned, for
/// Lambda's retry (or the sweep) to take the call over.
async fn holding_while(
    lease: &CallLease,
    held: &Held,
    work: impl std::future::Future<Output = Result<Value, HandlerError>>,
) -> Result<Value, HandlerError> {
    tokio::select! {
        done = work => done,
        ended = keep_renewing(lease, held, None) => match ended {
            HoldEnded::Lost => Ok(json!({"status": "LEASE_LOST", "contactId": held.contact_id})),
            HoldEnded::Lapsed(error) => {
                tracing::error!(%error, "the lease could not be renewed: stopping, for Lambda's retry or the sweep to take the call over");
                Err(error.into())
            }
        },
    }
}

/// Why an attempt's hold on the call ended while it ran.
#[derive(Debug)]
enum HoldEnded {
    /// Another attempt holds the lease now.
    Lost,
    /// No renewal succeeded for two thirds of the lease's duration: before the hold can
    /// expire and another attempt take the call over, this one stops publishing (the rule
    /// `call-lifecycle`'s simulation checks: an attempt publishes only under a hold it knows
    /// to be valid).
    Lapsed(LeaseError),
}

/// Renews the lease every third of its duration, and, while the run goes on (`record`),
/// records in it at once whatever Kinesis newly acknowledged and tells the publisher, which
/// sends the next change only then (so a stop repeats at most one acknowledged record); while
/// the call is being finished (`None`:
/// the join, the URL, the post-call job, the lease's last write) it only extends the hold.
/// Returns only when the hold ends: lost to another attempt, or lapsing because no renewal
/// succeeded in time (a failed renewal is retried at the next turn until then).
async fn keep_renewing(lease: &CallLease, held: &Held, mut record: Option<LeaseSide>) -> HoldEnded {
    let lapse = lease.duration * 2 / 3;
    let mut renewed = Instant::now();
    // What the claim wrote (within milliseconds): pushed forward only now and then.
    let mut sweep_at = lease.sweep_at(now_ms());
    let mut open = record.is_some();
    loop {
        tokio::select! {
            () = tokio::time::sleep(lease.duration / 3) => {}
            changed = async { record.as_mut().expect("open").delivered.changed().await }, if open => {
                open = changed.is_ok();
            }
        }
        let snapshot = record
            .as_mut()
            .map(|r| r.delivered.borrow_and_update().clone());
        let left = (renewed + lapse).saturating_duration_since(Instant::now());
        let refresh = lease.refresh_sweep_at(sweep_at, now_ms());
        let renewal = lease.renew(held, snapshot.as_ref().map(|s| &s.delivered), refresh);
        let error = match tokio::time::timeout(left, renewal).await {
            Ok(Ok(true)) => {
                renewed = Instant::now();
                sweep_at = refresh.unwrap_or(sweep_at);
                if let (Some(record), Some(snapshot)) = (&record, &snapshot) {
                    // The publisher may send the next change.
                    record.recorded.send_replace(snapshot.version);
                }
                continue;
            }
            // While finishing, the call's own last writes (the hand-over, the end) give the
            // lease up; those writes themselves tell a lease lost to another attempt.
            Ok(Ok(false)) if record.is_none() => return std::future::pending().await,
            Ok(Ok(false)) => return HoldEnded::Lost,
            Ok(Err(error)) => error,
            Err(_) => LeaseError {
                table: lease.table.clone(),
                contact_id: held.contact_id.clone(),
                operation: "renew",
                message: format!("no answer within {} ms", left.as_millis()),
            },
        };
        if renewed.elapsed() >= lapse {
            return HoldEnded::Lapsed(error);
        }
        tracing::warn!(%error, "lease renewal failed; retrying");
    }
}

/// Serves the call transcriber under the Lambda Runtime API (configuration from the
/// environment): what the function's `bootstrap` runs, and `lca-kvs demo`'s functions too.
pub async fn serve() -> Result<(), lambda_runtime::Error> {
    use lambda_runtime::{Error, LambdaEvent, run, service_fn};
    let config = TranscriberConfig::from_env()?;
    let sdk = crate::pipeline::load_sdk_config(&config).await;
    let transcriber = &Transcriber::new(config, &sdk);
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        // The context's deadline is epoch milliseconds; the pipeline works in Instants.
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(event.context.deadline.saturating_sub(now_ms()));
        let invocation = Invocation {
            function_arn: &event.context.invoked_function_arn,
            request_id: &event.context.request_id,
            deadline,
        };
        let (result, metrics) = transcriber.handle_measured(event.payload, invocation).await;
        // The metrics lines go to stdout, the logs to stderr: Lambda sends both to
        // CloudWatch Logs, which extracts the metrics from the EMF lines.
        for record in metrics {
            println!("{}", record.to_line());
        }
        result.map_err(Error::from)
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hold_that_cannot_be_renewed_lapses_before_it_expires() {
        // DynamoDB unreachable (nothing listens on the port): every renewal fails, and the
        // run is stopped before its hold can expire and another attempt take the call.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
                aws_sdk_dynamodb::config::Credentials::for_tests(),
            ))
            .build();
        let lease = CallLease::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            "calls".to_string(),
            Duration::from_secs(3),
        );
        let held = Held {
            contact_id: "c-1".to_string(),
            owner: "r1".to_string(),
            lambda_count: 0,
            attempt: 1,
        };
        let (_record, side) = delivery_record(Delivered::default());
        let began = Instant::now();
        let ended = keep_renewing(&lease, &held, Some(side)).await;
        let took = began.elapsed();
        let HoldEnded::Lapsed(error) = ended else {
            panic!("{ended:?}");
        };
        // Stopped at two thirds of the hold, well before it expires.
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert!(
            error.to_string().contains("contact c-1: renew failed"),
            "{error}"
        );
    }
}
