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
use std::time::{Duration, Instant};

use call_transcriber::pipeline::Taps;
use lca_tests::paced::{Final, PacedStandIns, Published, lost_and_repeated};
use local_aws::transcribe::TranscribeOptions;

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

async fn run(args: Args) -> Result<(), String> {
    let mut stand_ins = PacedStandIns::start(
        args.speed,
        TranscribeOptions {
            record_audio: false,
            max_sessions: Some(args.limit),
            ..TranscribeOptions::default()
        },
    )
    .await?;
    let started = Instant::now();
    let mut runs = tokio::task::JoinSet::new();
    for call in 0..args.calls {
        let id = format!("capacity-call-{call:03}");
        let spec = stand_ins.play(&id, args.minutes).await?;
        let pipeline = stand_ins.pipeline.clone();
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
    let Published {
        finals: published,
        ended,
    } = stand_ins.published()?;
    let mut finals: BTreeMap<String, Vec<Final>> = BTreeMap::new();
    let mut lateness: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (id, list) in published {
        for (segment, late) in list {
            lateness.entry(id.clone()).or_default().push(late);
            finals.entry(id.clone()).or_default().push(segment);
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
    let (mut lost, mut duplicated) = (0usize, 0usize);
    for call in 0..args.calls {
        let id = format!("capacity-call-{call:03}");
        let list = finals.get(&id).cloned().unwrap_or_default();
        let (call_lost, call_duplicated) = lost_and_repeated(&list, &reference);
        lost += call_lost;
        duplicated += call_duplicated;
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
        stand_ins.transcribe.refused()
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
