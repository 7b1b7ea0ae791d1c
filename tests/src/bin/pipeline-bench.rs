//! Benchmark of the call transcriber pipeline through the local servers: the sample call's
//! audio tiled to a long call, written as Connect fragments into local KVS, transcribed by
//! `lca-kvs transcribe` in its own process (so its CPU and peak RSS are its own) against local
//! Transcribe and moto's Kinesis.
//!
//! Two runs: the whole call at maximum speed (all fragments on the stream at once) for CPU
//! and memory; then a shorter call played live at 10x for the latencies (at maximum speed,
//! latency is only queueing behind the backlog).
//!
//! `cargo build --release -p lca-kvs && cargo run --release -p lca-tests --bin pipeline-bench
//! [-- --minutes 60 --latency-minutes 5]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kvs_media::ConnectWriter;
use local_aws::kvs::{Kvs, KvsOptions};
use local_aws::moto::MotoServer;
use local_aws::transcribe::{Transcribe, TranscribeOptions};
use serde_json::Value;

const CONTACT: &str = "bench-contact-0001";

fn main() -> Result<(), String> {
    let mut minutes = 60u64;
    let mut latency_minutes = 5u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| {
            args.next()
                .and_then(|m| m.parse::<u64>().ok())
                .filter(|m| *m > 0)
                .ok_or(format!("{name} takes a positive whole number"))
        };
        match arg.as_str() {
            "--minutes" => minutes = number("--minutes")?,
            "--latency-minutes" => latency_minutes = number("--latency-minutes")?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let binary = transcriber_binary()?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let throughput = runtime.block_on(run(&binary, minutes, 0.0))?;
    let latency = runtime.block_on(run(&binary, latency_minutes, 10.0))?;
    let ms = |stats: &Value, key: &str| {
        format!(
            "{:>7.2} {:>7.2} {:>7.2}",
            stats[key]["p50"].as_f64().unwrap_or(0.0),
            stats[key]["p99"].as_f64().unwrap_or(0.0),
            stats[key]["max"].as_f64().unwrap_or(0.0)
        )
    };
    let hours = throughput["audio_seconds"].as_f64().unwrap_or(0.0) / 3600.0;
    let cpu = throughput["cpu_seconds"].as_f64().unwrap_or(0.0);
    println!();
    println!(
        "transcriber process, {minutes}-minute call at maximum speed ({} events, {} Kinesis requests):",
        throughput["events"], throughput["kinesis_requests"]
    );
    println!(
        "  CPU {cpu:.2} s = {:.2} CPU-s per call-hour (target <= 1), peak RSS {:.1} MB (target <= 40)",
        cpu / hours.max(1e-9),
        throughput["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0
    );
    println!(
        "\nlatencies, {latency_minutes}-minute call played live at 10x ({} events), ms:",
        latency["events"]
    );
    println!("  {:<44} {:>7} {:>7} {:>7}", "", "p50", "p99", "max");
    for (label, key) in [
        (
            "KVS bytes in -> chunk to Transcribe session",
            "kvs_to_transcribe_ms",
        ),
        (
            "Transcribe event -> to publisher",
            "transcribe_to_publisher_ms",
        ),
        ("publisher in -> PutRecord(s) request", "publisher_queue_ms"),
        ("publisher in -> Kinesis (moto) ack", "publisher_to_ack_ms"),
    ] {
        println!("  {label:<44} {}", ms(&latency, key));
    }
    Ok(())
}

/// `lca-kvs` built next to this binary (same profile).
fn transcriber_binary() -> Result<PathBuf, String> {
    let here = std::env::current_exe().map_err(|e| e.to_string())?;
    let binary = here.with_file_name("lca-kvs");
    if binary.exists() {
        Ok(binary)
    } else {
        Err(format!(
            "{} not found: build it first with `cargo build --release -p lca-kvs`",
            binary.display()
        ))
    }
}

/// One transcription of a `minutes` call played at `speed` (0: all at once); the
/// transcriber's stats.
async fn run(binary: &Path, minutes: u64, speed: f64) -> Result<Value, String> {
    let fragments = lca_tests::tiled_call(CONTACT, minutes)?;
    let first = ConnectWriter::fragment_number(0);
    let moto = MotoServer::start().map_err(|e| e.to_string())?;
    let kvs = Kvs::new(KvsOptions::default());
    let kvs_server = kvs.serve(0).await.map_err(|e| e.to_string())?;
    let transcribe = Transcribe::new(TranscribeOptions {
        record_audio: false,
        ..TranscribeOptions::default()
    });
    let transcribe_server = transcribe.serve(0).await.map_err(|e| e.to_string())?;
    local_aws::moto::create_kinesis_stream(moto.url(), "lca").await?;
    let arn = kvs.create_stream("call").map_err(|e| e.to_string())?;
    let player = kvs.play("call", fragments, speed);
    let stats_file =
        std::env::temp_dir().join(format!("pipeline-bench-{}.json", std::process::id()));
    let started = Instant::now();
    let binary = binary.to_path_buf();
    let envs = [
        ("AWS_ENDPOINT_URL_KINESIS_VIDEO", kvs_server.url()),
        (
            "AWS_ENDPOINT_URL_TRANSCRIBE_STREAMING",
            transcribe_server.url(),
        ),
        ("AWS_ENDPOINT_URL_KINESIS", moto.url().to_string()),
        ("AWS_ACCESS_KEY_ID", "AKIDLOCAL".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "local".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("KINESIS_STREAM_NAME", "lca".to_string()),
        ("KVS_IDLE_TIMEOUT", "5000".to_string()),
    ];
    let args = [
        "transcribe".to_string(),
        "--stream-arn".to_string(),
        arn,
        "--start-fragment".to_string(),
        first,
        "--contact-id".to_string(),
        CONTACT.to_string(),
        "--stats-json".to_string(),
        stats_file.display().to_string(),
    ];
    let status =
        tokio::task::spawn_blocking(move || Command::new(binary).args(args).envs(envs).status())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot run lca-kvs transcribe: {e}"))?;
    if !status.success() {
        return Err(format!("lca-kvs transcribe failed: {status}"));
    }
    player
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let stats: Value = serde_json::from_slice(
        &std::fs::read(&stats_file).map_err(|e| format!("{}: {e}", stats_file.display()))?,
    )
    .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&stats_file);
    eprintln!(
        "{minutes}-minute call at speed {speed}: {:.1} s wall",
        started.elapsed().as_secs_f64()
    );
    Ok(stats)
}
