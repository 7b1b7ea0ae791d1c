//! Load check of Transcribe's concurrent stream quota: `--calls` live calls at once against
//! a local Transcribe that allows `--limit` streams (as an account's quota does, answering
//! LimitExceededException beyond it). The calls turned away wait, their audio held in KVS,
//! and catch up once a stream is free. Prints how many calls completed, final segments lost
//! and duplicated (both must be 0), the streams refused, and how far behind the live audio
//! the last final segment reached Kinesis, for the calls that got a stream at once and for
//! those that waited (with how long they waited). Exits non-zero when a call is incomplete
//! or a segment is lost or repeated.
//!
//! `cargo run --release -p lca-tests --bin capacity-bench [-- --calls 10 --limit 5
//! --speed 10 --minutes 1]` (the calls are the shared sample call tiled to `--minutes`,
//! played live at `--speed` times real time; KVS's 3 s payload timeout, the 15 s idle
//! timeout and the start backoff are scaled by the same factor).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use call_transcriber::TranscriberConfig;
use call_transcriber::pipeline::{CallPipeline, CallSpec, Clients, Taps};
use call_transcriber::source::{KvsClients, StartAt};
use local_aws::kinesis::KinesisRecorder;
use local_aws::kvs::{Kvs, KvsOptions};
use local_aws::transcribe::{Transcribe, TranscribeOptions};
use serde_json::Value;

struct Args {
    calls: usize,
    limit: usize,
    speed: f64,
    minutes: u64,
}

fn args() -> Result<Args, String> {
    let mut parsed = Args {
        calls: 10,
        limit: 5,
        speed: 10.0,
        minutes: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} takes a value"))?;
        let positive = |v: &str| -> Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|n| *n > 0.0 && n.is_finite())
                .ok_or_else(|| format!("{arg} {v}: expected a positive number"))
        };
        match arg.as_str() {
            "--calls" => parsed.calls = positive(&value)? as usize,
            "--limit" => parsed.limit = positive(&value)? as usize,
            "--speed" => parsed.speed = positive(&value)?,
            "--minutes" => parsed.minutes = positive(&value)? as u64,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if parsed.calls == 0 || parsed.limit == 0 || parsed.minutes == 0 {
        return Err("--calls, --limit and --minutes must be at least 1".to_string());
    }
    Ok(parsed)
}

fn main() -> Result<(), String> {
    let args = args()?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(run(args))
}

/// A final segment as published: (channel, start ms, end ms).
type Final = (String, i64, i64);

async fn run(args: Args) -> Result<(), String> {
    let scaled = |d: Duration| d.div_f64(args.speed);
    let kvs = Kvs::new(KvsOptions {
        payload_timeout: scaled(Duration::from_secs(3)),
        ..KvsOptions::default()
    });
    let kvs_server = kvs.serve(0).await.map_err(|e| e.to_string())?;
    let transcribe = Transcribe::new(TranscribeOptions {
        record_audio: false,
        max_sessions: Some(args.limit),
        ..TranscribeOptions::default()
    });
    let transcribe_server = transcribe.serve(0).await.map_err(|e| e.to_string())?;
    let kinesis = KinesisRecorder::new();
    kinesis.create_stream("lca");
    let kinesis_server = kinesis.serve(0).await.map_err(|e| e.to_string())?;
    let idle_ms = scaled(Duration::from_secs(15))
        .as_millis()
        .max(500)
        .to_string();
    let retry_ms = scaled(Duration::from_secs(1))
        .as_millis()
        .max(20)
        .to_string();
    let env = BTreeMap::from([
        ("KINESIS_STREAM_NAME", "lca".to_string()),
        ("KVS_IDLE_TIMEOUT", idle_ms),
        ("START_STREAM_RETRY_WAIT", retry_ms),
    ]);
    let config =
        TranscriberConfig::from_lookup(|name| env.get(name).cloned()).map_err(|e| e.to_string())?;
    let pipeline = CallPipeline {
        config,
        clients: Clients {
            kvs: KvsClients::new(&local_aws::sdk_config(&kvs_server.url())),
            transcribe: aws_sdk_transcribestreaming::Client::new(&local_aws::sdk_config(
                &transcribe_server.url(),
            )),
            kinesis: aws_sdk_kinesis::Client::new(&local_aws::sdk_config(&kinesis_server.url())),
        },
    };
    let played_at = SystemTime::now();
    let started = Instant::now();
    let mut runs = tokio::task::JoinSet::new();
    for call in 0..args.calls {
        let id = format!("capacity-call-{call:03}");
        let fragments = lca_tests::tiled_call(&id, args.minutes)?;
        let arn = kvs.create_stream(&id).map_err(|e| e.to_string())?;
        kvs.play(&id, fragments, args.speed);
        // The contact-flow event names the contact's first fragment once it is on the stream.
        let mut first = None;
        for _ in 0..500 {
            first = kvs
                .fragment_numbers(&id)
                .map_err(|e| e.to_string())?
                .first()
                .cloned();
            if first.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let first = first.ok_or_else(|| format!("{id}: no fragment on the stream within 5 s"))?;
        let spec = CallSpec::new(&id, &id, &arn, StartAt::Fragment(first));
        let pipeline = pipeline.clone();
        runs.spawn(async move { (id, pipeline.run(spec, Taps::default()).await) });
    }
    let mut failed = Vec::new();
    // How long each call waited for Transcribe to accept its stream (0: it got one at once).
    let mut waited: BTreeMap<String, Duration> = BTreeMap::new();
    while let Some(joined) = runs.join_next().await {
        let (id, result) = joined.map_err(|e| e.to_string())?;
        match result {
            Ok(outcome) => {
                waited.insert(id, outcome.transcription.start_wait);
            }
            Err(error) => failed.push(format!("{id}: {error}")),
        }
    }
    let wall = started.elapsed();
    // Each call's finals and their lateness: arrival on Kinesis minus when the segment's
    // audio ended in the live playback (wall time), in call seconds (x speed).
    let mut finals: BTreeMap<String, Vec<Final>> = BTreeMap::new();
    let mut lateness: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut ended = BTreeSet::new();
    for record in kinesis.records("lca", 0).unwrap_or_default() {
        let value: Value = serde_json::from_slice(&record.data).map_err(|e| e.to_string())?;
        let id = record.partition_key.clone();
        match value["EventType"].as_str() {
            Some("END") => {
                ended.insert(id);
            }
            Some("ADD_TRANSCRIPT_SEGMENT") if value["IsPartial"] == false => {
                let ms = |key: &str| (value[key].as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
                let (start, end) = (ms("StartTime"), ms("EndTime"));
                let channel = value["Channel"].as_str().unwrap_or("?").to_string();
                let spoken = played_at + Duration::from_millis(end as u64).div_f64(args.speed);
                let late = record
                    .arrived
                    .duration_since(spoken)
                    .unwrap_or_default()
                    .as_secs_f64()
                    * args.speed;
                lateness.entry(id.clone()).or_default().push(late);
                finals.entry(id).or_default().push((channel, start, end));
            }
            _ => {}
        }
    }
    // The reference: the finals most calls agree on (every call carries the same audio).
    let mut votes: BTreeMap<BTreeSet<Final>, usize> = BTreeMap::new();
    for list in finals.values() {
        *votes.entry(list.iter().cloned().collect()).or_default() += 1;
    }
    let reference = votes
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(set, _)| set)
        .unwrap_or_default();
    let near =
        |a: &Final, b: &Final| a.0 == b.0 && (a.1 - b.1).abs() <= 20 && (a.2 - b.2).abs() <= 20;
    let (mut lost, mut duplicated) = (0usize, 0usize);
    for call in 0..args.calls {
        let id = format!("capacity-call-{call:03}");
        let list = finals.get(&id).cloned().unwrap_or_default();
        lost += reference
            .iter()
            .filter(|r| !list.iter().any(|f| near(f, r)))
            .count();
        duplicated += list.len() - list.iter().collect::<BTreeSet<_>>().len();
    }
    let complete = (0..args.calls)
        .filter(|call| ended.contains(&format!("capacity-call-{call:03}")))
        .count();
    // Each call's latest final, behind the live audio: the calls that got a stream at once
    // apart from those that waited for one.
    let (mut on_time, mut late_calls, mut waits) = (Vec::new(), Vec::new(), Vec::new());
    for (id, l) in &lateness {
        let worst = l.iter().copied().fold(0.0, f64::max);
        match waited.get(id).filter(|w| !w.is_zero()) {
            Some(wait) => {
                late_calls.push(worst);
                waits.push(wait.as_secs_f64() * args.speed);
            }
            None => on_time.push(worst),
        }
    }
    let spread = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        let at = |q: f64| {
            values
                .get(((values.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        format!("p50 {:.1}, max {:.1}", at(0.5), at(1.0))
    };
    println!(
        "{} calls of {} min at {}x against a Transcribe quota of {} streams ({:.1} s wall):",
        args.calls,
        args.minutes,
        args.speed,
        args.limit,
        wall.as_secs_f64()
    );
    println!(
        "  calls complete (END on Kinesis): {complete}/{}",
        args.calls
    );
    println!(
        "  final segments per call: {}; lost: {lost}; duplicated: {duplicated}",
        reference.len()
    );
    println!(
        "  streams refused (LimitExceededException): {}",
        transcribe.refused()
    );
    println!(
        "  calls that got a stream at once: {}; latest final behind the live audio (call s): {}",
        on_time.len(),
        spread(&mut on_time)
    );
    println!(
        "  calls that waited for a stream: {}; waited (call s): {}; latest final behind: {}",
        late_calls.len(),
        spread(&mut waits),
        spread(&mut late_calls)
    );
    for message in &failed {
        println!("  failed: {message}");
    }
    if complete < args.calls
        || lost > 0
        || duplicated > 0
        || !failed.is_empty()
        || reference.is_empty()
    {
        return Err("calls were lost, incomplete or repeated".to_string());
    }
    Ok(())
}
