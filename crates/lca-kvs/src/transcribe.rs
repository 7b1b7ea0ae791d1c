//! `lca-kvs transcribe`: the call transcriber pipeline for one call in the foreground,
//! configured by the same environment variables as the Lambda function.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use call_transcriber::TranscriberConfig;
use call_transcriber::pipeline::{
    self, CallPipeline, CallSpec, Clients, Ending, PipelineError, Taps,
};
use call_transcriber::source::{EndReason, SourceError, StartAt};
use call_transcriber::usage::{ProcessUsage, quantile_ms};
use clap::Args;
use lca_events::{LcaEvent, LcaMessage, Segment};

/// Arguments of `lca-kvs transcribe`.
#[derive(Args)]
pub struct TranscribeArgs {
    /// The call's Kinesis Video stream.
    #[arg(long)]
    stream_arn: String,
    /// The contact's first fragment (the contact-flow event's StartFragmentNumber). Without
    /// it, reading starts with the newest fragment on the stream (GetMedia NOW) and earlier
    /// audio is not read; on a stream idle since its last call, that is the last call's.
    #[arg(long)]
    start_fragment: Option<String>,
    /// The contact whose audio is read (the fragments' ContactId tags; default: the ContactId
    /// of the first fragment read).
    #[arg(long)]
    contact_id: Option<String>,
    /// The LCA CallId the events are published under (default: the ContactId, as LCA uses).
    #[arg(long)]
    call_id: Option<String>,
    /// Print the final transcript segments on stdout as they reach Kinesis.
    #[arg(long)]
    show_transcript: bool,
    /// Write measurements (CPU, peak RSS, latencies) as JSON to this file at the end.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<std::path::PathBuf>,
}

/// Runs the pipeline for one call; exit 0 when the call ended and every event is on Kinesis,
/// 1 when KVS sent an error that retrying does not fix (as `extract`), errors otherwise.
pub fn run(args: TranscribeArgs) -> Result<ExitCode> {
    crate::init_logging();
    let config = TranscriberConfig::from_env().context("configuration")?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(transcribe(args, config))
}

async fn transcribe(args: TranscribeArgs, config: TranscriberConfig) -> Result<ExitCode> {
    let sdk = pipeline::load_sdk_config(&config).await;
    let clients = Clients::new(&sdk, &config);
    let start = match &args.start_fragment {
        Some(number) => StartAt::Fragment(number.clone()),
        None => StartAt::Now,
    };
    let contact_id = match &args.contact_id {
        Some(id) => id.clone(),
        None => {
            crate::capture::first_contact(
                &clients.kvs,
                &args.stream_arn,
                &start,
                config.kvs_idle_timeout,
                "pass --contact-id",
            )
            .await?
        }
    };
    let call_id = args.call_id.clone().unwrap_or_else(|| contact_id.clone());
    eprintln!(
        "transcribing contact {contact_id} from {} as call {call_id}",
        args.stream_arn
    );
    let pipeline = CallPipeline { config, clients };
    // The function's limit on a call's length holds here too.
    let call = CallSpec {
        max_samples: Some(pipeline.config.max_call_samples()),
        ..CallSpec::new(&call_id, &contact_id, &args.stream_arn, start)
    };
    let (tap, mut delivered) = tokio::sync::mpsc::unbounded_channel::<LcaMessage>();
    let show = args.show_transcript;
    let progress = tokio::spawn(async move {
        let mut segments = 0u64;
        let mut finals = 0u64;
        let interactive = std::io::stderr().is_terminal();
        while let Some(message) = delivered.recv().await {
            if let LcaEvent::AddTranscriptSegment(_) = &message.event {
                segments += 1;
                if let Some(line) = final_line(&message) {
                    finals += 1;
                    if show {
                        println!("{line}");
                    }
                }
            }
            if interactive {
                eprint!("\r{segments} segments on Kinesis ({finals} final)");
                let _ = std::io::stderr().flush();
            }
        }
        if interactive {
            eprintln!();
        }
    });
    let outcome = pipeline
        .run(
            call,
            Taps {
                delivered: Some(tap),
                ..Taps::default()
            },
        )
        .await;
    let _ = progress.await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(PipelineError::Source(SourceError::Stream(error))) => {
            // The call cannot be read: this run was its only attempt, so END goes out (LCA
            // must not show the call live for ever) and the command fails naming the error.
            let end = LcaMessage {
                call_id: call_id.clone(),
                event: LcaEvent::End(lca_events::Stamped {
                    created_at: call_transcriber::transcribe::now(),
                }),
            };
            if let Err(end_error) = pipeline.publish(end).await {
                eprintln!("END could not be published: {end_error}");
            }
            eprintln!("lca-kvs: the call could not be read: {error}");
            return Ok(ExitCode::from(1));
        }
        Err(error) => return Err(error.into()),
    };
    // A run that read nothing of the contact is not a success: the stream carries another.
    if let Ending::CallEnded(EndReason::OtherContact(other)) = &outcome.ending
        && outcome.samples == 0
    {
        eprintln!(
            "lca-kvs: nothing transcribed: the first fragment read belongs to contact {other}, not {contact_id} (check --contact-id and --start-fragment)"
        );
        return Ok(ExitCode::from(1));
    }
    let reason = match &outcome.ending {
        Ending::CallEnded(EndReason::StreamEnded) => "the stream no longer exists".to_string(),
        Ending::CallEnded(EndReason::Idle) => format!(
            "no new audio for {} ms",
            pipeline.config.kvs_idle_timeout.as_millis()
        ),
        Ending::CallEnded(EndReason::OtherContact(next)) => {
            format!("the stream now carries contact {next}")
        }
        Ending::CallEnded(EndReason::MaxCallDuration) => format!(
            "cut at MAX_CALL_DURATION, {} ms: the rest of the stream is not transcribed",
            pipeline.config.max_call_duration.as_millis()
        ),
        Ending::HandOver(_) => bail!("unexpected hand-over without a deadline"),
    };
    eprintln!(
        "call ended ({reason}): {:.1} s of audio, {} Transcribe session(s), {} events on Kinesis stream {}",
        outcome.samples as f64 / 8000.0,
        outcome.transcription.sessions,
        outcome.published.delivered,
        pipeline.config.kinesis_stream_name,
    );
    if let Some(path) = &args.stats_json {
        let usage = ProcessUsage::current();
        let ms = |values: &[std::time::Duration]| {
            serde_json::json!({
                "count": values.len(),
                "p50": quantile_ms(values, 0.5),
                "p99": quantile_ms(values, 0.99),
                "max": quantile_ms(values, 1.0),
            })
        };
        let stats = serde_json::json!({
            "audio_seconds": outcome.samples as f64 / 8000.0,
            "cpu_seconds": usage.cpu_seconds,
            "peak_rss_kb": usage.peak_rss_kb,
            "events": outcome.published.delivered,
            "kinesis_requests": outcome.published.requests,
            "transcribe_sessions": outcome.transcription.sessions,
            "kvs_to_transcribe_ms": {
                "count": outcome.chunk_latencies.count(),
                "p50": outcome.chunk_latencies.quantile_ms(0.5),
                "p99": outcome.chunk_latencies.quantile_ms(0.99),
                "max": outcome.chunk_latencies.quantile_ms(1.0),
            },
            "transcribe_to_publisher_ms": ms(&outcome.transcription.handoff_latencies),
            "publisher_queue_ms": ms(&outcome.published.queue_latencies),
            "publisher_to_ack_ms": ms(&outcome.published.latencies),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&stats)?)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `CALLER 7.42-11.94 text` for a final standard segment (analytics: the utterance's role).
fn final_line(message: &LcaMessage) -> Option<String> {
    let LcaEvent::AddTranscriptSegment(segment) = &message.event else {
        return None;
    };
    match segment {
        Segment::Standard(s) if !s.is_partial => Some(format!(
            "{} {:.2}-{:.2} {}",
            serde_json::to_value(s.channel)
                .ok()?
                .as_str()
                .unwrap_or("?"),
            s.start_time,
            s.end_time,
            s.transcript
        )),
        Segment::Analytics(a) if a.utterance_event["IsPartial"] == false => Some(format!(
            "{} {:.2}-{:.2} {}",
            a.utterance_event["ParticipantRole"].as_str().unwrap_or("?"),
            a.utterance_event["BeginOffsetMillis"]
                .as_f64()
                .unwrap_or(0.0)
                / 1000.0,
            a.utterance_event["EndOffsetMillis"].as_f64().unwrap_or(0.0) / 1000.0,
            a.utterance_event["Transcript"].as_str().unwrap_or("")
        )),
        _ => None,
    }
}
