//! Load check of the local stand-ins: one server process serving N concurrent live calls at
//! real-time pace — a GetMedia reader and a Transcribe stream per call, driven by the real SDK
//! clients from this (separate) process. Prints the server process's CPU and peak memory.
//!
//! `cargo bench -p local-aws --bench load -- [--calls 100] [--seconds 30]`

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_kinesisvideomedia::types::{StartSelector, StartSelectorType};
use aws_sdk_transcribestreaming::primitives::Blob;
use aws_sdk_transcribestreaming::types::{
    AudioEvent, AudioStream, LanguageCode, MediaEncoding, TranscriptResultStream,
};
use bytes::Bytes;
use kvs_media::split_chunks;
use local_aws::kvs::{Kvs, KvsOptions};
use local_aws::transcribe::{Transcribe, TranscribeOptions};
use tokio::io::AsyncBufReadExt;

fn fixture(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(rel)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str, default: u64| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let calls = value("--calls", 100) as usize;
    let seconds = value("--seconds", 30);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if args.iter().any(|a| a == "--serve") {
        runtime.block_on(serve(calls));
    } else {
        runtime.block_on(drive(calls, seconds));
    }
}

/// The server process: KVS with `calls` streams playing the sample call live, and Transcribe.
async fn serve(calls: usize) {
    let capture = Bytes::from(std::fs::read(fixture("connect/sample-call.mkv")).expect("fixtures"));
    let chunks: Vec<Bytes> = split_chunks(&capture)
        .expect("capture")
        .into_iter()
        .map(|r| capture.slice(r))
        .collect();
    let kvs = Kvs::new(KvsOptions {
        get_media_per_second: 1000,
        ..KvsOptions::default()
    });
    let kvs_server = kvs.serve(0).await.expect("kvs");
    let transcribe = Transcribe::new(TranscribeOptions {
        record_audio: false,
        ..TranscribeOptions::default()
    });
    let transcribe_server = transcribe.serve(0).await.expect("transcribe");
    for i in 0..calls {
        let name = format!("call-{i}");
        kvs.create_stream(&name).expect("stream");
        kvs.play(&name, chunks.clone(), 1.0);
    }
    println!("{} {}", kvs_server.url(), transcribe_server.url());
    // Serve until the driver closes our stdin.
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = lines.next_line().await {}
}

/// The driver: starts the server process, runs the clients, measures the server.
async fn drive(calls: usize, seconds: u64) {
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--serve", "--calls", &calls.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("server process");
    let pid = child.id().expect("pid");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = stdout
        .next_line()
        .await
        .expect("server output")
        .expect("server urls");
    let (kvs_url, transcribe_url) = line.split_once(' ').expect("two urls");
    let (kvs_url, transcribe_url) = (kvs_url.to_string(), transcribe_url.to_string());

    let caller = std::fs::read(fixture("connect/sample-call.caller.raw")).unwrap();
    let agent = std::fs::read(fixture("connect/sample-call.agent.raw")).unwrap();
    let stereo: Bytes = caller
        .chunks_exact(2)
        .zip(agent.chunks_exact(2))
        .flat_map(|(c, a)| [c[0], c[1], a[0], a[1]])
        .collect::<Vec<u8>>()
        .into();

    let cpu_start = process_cpu_seconds(pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..calls {
        let kvs_url = kvs_url.clone();
        let transcribe_url = transcribe_url.clone();
        let stereo = stereo.clone();
        tasks.push(tokio::spawn(async move {
            let media = aws_sdk_kinesisvideomedia::Client::from_conf(
                aws_sdk_kinesisvideomedia::Config::builder()
                    .behavior_version_latest()
                    .region(aws_sdk_kinesisvideomedia::config::Region::new("us-east-1"))
                    .credentials_provider(aws_sdk_kinesisvideomedia::config::Credentials::new(
                        "a", "b", None, None, "load",
                    ))
                    .endpoint_url(&kvs_url)
                    .stalled_stream_protection(
                        aws_sdk_kinesisvideomedia::config::StalledStreamProtectionConfig::disabled(
                        ),
                    )
                    .build(),
            );
            let transcribe = aws_sdk_transcribestreaming::Client::from_conf(
                aws_sdk_transcribestreaming::Config::builder()
                    .behavior_version_latest()
                    .region(aws_sdk_transcribestreaming::config::Region::new(
                        "us-east-1",
                    ))
                    .credentials_provider(aws_sdk_transcribestreaming::config::Credentials::new(
                        "a", "b", None, None, "load",
                    ))
                    .endpoint_url(&transcribe_url)
                    .build(),
            );
            let reader = async {
                let output = media
                    .get_media()
                    .stream_name(format!("call-{i}"))
                    .start_selector(
                        StartSelector::builder()
                            .start_selector_type(StartSelectorType::Earliest)
                            .build()
                            .unwrap(),
                    )
                    .send()
                    .await
                    .expect("get media");
                let mut payload = output.payload;
                let mut bytes = 0usize;
                while let Ok(Ok(Some(chunk))) =
                    tokio::time::timeout_at(deadline.into(), payload.try_next()).await
                {
                    bytes += chunk.len();
                }
                bytes
            };
            let streamer = async {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                let feeder = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(100));
                    for chunk in stereo.chunks(3200).cycle() {
                        tick.tick().await;
                        if Instant::now() >= deadline {
                            break;
                        }
                        let event = AudioStream::AudioEvent(
                            AudioEvent::builder()
                                .audio_chunk(Blob::new(chunk.to_vec()))
                                .build(),
                        );
                        if tx.send(Ok(event)).await.is_err() {
                            break;
                        }
                    }
                });
                let mut output = transcribe
                    .start_stream_transcription()
                    .language_code(LanguageCode::EnUs)
                    .media_sample_rate_hertz(8000)
                    .media_encoding(MediaEncoding::Pcm)
                    .enable_channel_identification(true)
                    .number_of_channels(2)
                    .audio_stream(tokio_stream::wrappers::ReceiverStream::new(rx).into())
                    .send()
                    .await
                    .expect("transcribe");
                let mut finals = 0;
                while let Ok(Some(event)) = output.transcript_result_stream.recv().await {
                    if let TranscriptResultStream::TranscriptEvent(e) = event {
                        finals += e
                            .transcript
                            .and_then(|t| t.results)
                            .unwrap_or_default()
                            .iter()
                            .filter(|r| !r.is_partial)
                            .count();
                    }
                }
                let _ = feeder.await;
                finals
            };
            tokio::join!(reader, streamer)
        }));
    }
    let mut media_bytes = 0;
    let mut finals = 0;
    for task in tasks {
        let (bytes, f) = task.await.expect("client task");
        media_bytes += bytes;
        finals += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(pid) - cpu_start;
    let rss_mb = process_peak_rss_kb(pid) as f64 / 1024.0;
    drop(child.stdin.take());
    let _ = child.kill().await;
    println!(
        "| concurrent live calls | seconds | server CPU-s | server CPU (% of one core) | CPU ms per call-second | server peak RSS (MB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {calls} | {elapsed:.1} | {cpu:.2} | {:.1} | {:.3} | {rss_mb:.1} |",
        100.0 * cpu / elapsed,
        1000.0 * cpu / (calls as f64 * elapsed)
    );
    println!(
        "clients received {:.1} MB of media and {finals} final transcript segments",
        media_bytes as f64 / 1e6
    );
}

fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn process_peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
