//! The `lca-kvs` command line as scripts call it: output formats and exit codes (ARCHITECTURE.md).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kvs_media::{ConnectWriter, WriterOptions};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(rel)
}

fn lca_kvs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lca-kvs"))
        .args(args)
        .output()
        .expect("lca-kvs runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Channels (caller, agent) of a stereo WAV, with its format checked.
fn wav_channels(path: &Path) -> (Vec<u8>, Vec<u8>) {
    let mut reader = hound::WavReader::open(path).expect("valid WAV");
    let spec = reader.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, 8000, 16)
    );
    let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    let mut caller = Vec::new();
    let mut agent = Vec::new();
    for frame in samples.chunks_exact(2) {
        caller.extend_from_slice(&frame[0].to_le_bytes());
        agent.extend_from_slice(&frame[1].to_le_bytes());
    }
    (caller, agent)
}

#[test]
fn inspect_json_lists_every_fragment_in_the_contract_shape() {
    let output = lca_kvs(&[
        "inspect",
        "--json",
        fixture("connect/sample-call.mkv").to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 60);
    let first = &lines[0];
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "contact_id",
            "continuation_token",
            "error",
            "fragment_number",
            "millis_behind_now",
            "producer_timestamp_ms",
            "server_timestamp_ms",
            "tracks"
        ]
    );
    assert_eq!(
        first["fragment_number"],
        "91343852333181531502161607852955530730505354276"
    );
    assert_eq!(first["server_timestamp_ms"], 1_726_677_689_681u64);
    assert_eq!(first["contact_id"], "d111f871-5fe7-40b1-b5f7-6b67060de0c2");
    assert_eq!(first["tracks"]["AUDIO_FROM_CUSTOMER"]["blocks"], 16);
    assert_eq!(first["tracks"]["AUDIO_TO_CUSTOMER"]["bytes"], 16384);
    assert_eq!(first["millis_behind_now"], 339);
    assert!(first["error"].is_null());
}

#[test]
fn extract_writes_the_sample_call_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("call.wav");
    let output = lca_kvs(&[
        "extract",
        fixture("connect/sample-call.mkv").to_str().unwrap(),
        "-o",
        wav.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let (caller, agent) = wav_channels(&wav);
    assert!(caller == std::fs::read(fixture("connect/sample-call.caller.raw")).unwrap());
    assert!(agent == std::fs::read(fixture("connect/sample-call.agent.raw")).unwrap());
}

#[test]
fn extract_of_video_captures_exits_2_naming_the_missing_tracks() {
    let dir = tempfile::tempdir().unwrap();
    for name in std::fs::read_dir(fixture("kvs-getmedia")).unwrap() {
        let path = name.unwrap().path();
        let output = lca_kvs(&[
            "extract",
            path.to_str().unwrap(),
            "-o",
            dir.path().join("x.wav").to_str().unwrap(),
        ]);
        assert_eq!(output.status.code(), Some(2), "{}", path.display());
        let message = stderr(&output);
        assert!(
            message.contains("AUDIO_FROM_CUSTOMER") && message.contains(path.to_str().unwrap()),
            "{message}"
        );
    }
}

#[test]
fn inspect_of_a_truncated_capture_lists_complete_fragments_then_exits_2() {
    let path = fixture("kvs-getmedia/output-get-media-non-increasing-timecode.mkv");
    let output = lca_kvs(&["inspect", "--json", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 11);
    let message = stderr(&output);
    assert!(
        message.contains("at byte 1912925") && message.contains("truncated"),
        "{message}"
    );
}

#[test]
fn inspect_of_garbage_exits_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "not a capture").unwrap();
    let output = lca_kvs(&["inspect", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("notes.txt") && message.contains("EBML header"),
        "{message}"
    );
    let output = lca_kvs(&["inspect", dir.path().join("missing.mkv").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("missing.mkv"));
}

/// The sample call followed by the next caller on the same (reused) stream.
fn reused_stream(dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(fixture("connect/sample-call.mkv")).unwrap();
    let mut next = ConnectWriter::new(WriterOptions {
        contact_id: "22222222-0000-4000-8000-000000000002".to_string(),
        ..WriterOptions::default()
    });
    let loud = vec![0x55u8; 16000];
    for fragment in next.call(&loud, &loud, 1_726_677_800_000) {
        bytes.extend_from_slice(&fragment);
    }
    let path = dir.join("reused.mkv");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn extract_stops_at_the_next_contact_on_a_reused_stream() {
    let dir = tempfile::tempdir().unwrap();
    let input = reused_stream(dir.path());
    let wav = dir.path().join("call.wav");
    let output = lca_kvs(&[
        "extract",
        input.to_str().unwrap(),
        "-o",
        wav.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("22222222-0000-4000-8000-000000000002"));
    let (caller, agent) = wav_channels(&wav);
    assert!(
        caller == std::fs::read(fixture("connect/sample-call.caller.raw")).unwrap(),
        "next caller's audio leaked"
    );
    assert!(agent == std::fs::read(fixture("connect/sample-call.agent.raw")).unwrap());

    // Asking for the second contact gives nothing of the first.
    let output = lca_kvs(&[
        "extract",
        input.to_str().unwrap(),
        "-o",
        wav.to_str().unwrap(),
        "--contact-id",
        "22222222-0000-4000-8000-000000000002",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let (caller, _) = wav_channels(&wav);
    assert!(
        caller.is_empty(),
        "reading stops at the first fragment of another contact"
    );
}

#[test]
fn extract_exits_1_on_a_kvs_error_chunk_keeping_the_audio_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ConnectWriter::new(WriterOptions::default());
    let caller: Vec<u8> = (0..32768u32)
        .flat_map(|i| ((i % 300) as i16).to_le_bytes())
        .collect();
    let fragments = writer.call(&caller, &caller, 1_000_000);
    assert_eq!(fragments.len(), 4);
    let mut bytes = fragments[..2].concat();
    bytes.extend_from_slice(&ConnectWriter::error_chunk("4000", "f-123"));
    bytes.extend_from_slice(&fragments[2..].concat());
    let input = dir.path().join("error.mkv");
    std::fs::write(&input, bytes).unwrap();
    let wav = dir.path().join("call.wav");
    let output = lca_kvs(&[
        "extract",
        input.to_str().unwrap(),
        "-o",
        wav.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("code 4000"), "{}", stderr(&output));
    let (got, _) = wav_channels(&wav);
    assert!(
        got == caller[..2 * 16 * 512 * 2],
        "the two fragments before the error"
    );

    let output = lca_kvs(&["inspect", "--json", input.to_str().unwrap()]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let error_line: serde_json::Value = serde_json::from_str(text.lines().nth(2).unwrap()).unwrap();
    assert_eq!(error_line["error"]["code"], "4000");
    assert_eq!(error_line["error"]["id"], "f-123");
}

#[test]
fn extract_of_a_truncated_call_keeps_complete_fragments_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(fixture("connect/sample-call.mkv")).unwrap();
    // Cut in the middle of the fourth fragment's cluster.
    let starts: Vec<usize> = full
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == [0x1A, 0x45, 0xDF, 0xA3])
        .map(|(i, _)| i)
        .collect();
    let cut = starts[3] + 20_000;
    let input = dir.path().join("cut.mkv");
    std::fs::write(&input, &full[..cut]).unwrap();
    let wav = dir.path().join("call.wav");
    let output = lca_kvs(&[
        "extract",
        input.to_str().unwrap(),
        "-o",
        wav.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("cut.mkv")
            && message.contains("truncated")
            && message.contains("3 complete fragments"),
        "{message}"
    );
    let (caller, agent) = wav_channels(&wav);
    let three = 3 * 16 * 512 * 2;
    assert!(caller == std::fs::read(fixture("connect/sample-call.caller.raw")).unwrap()[..three]);
    assert!(agent == std::fs::read(fixture("connect/sample-call.agent.raw")).unwrap()[..three]);
}

/// `lca-kvs local` as a child process with its exports; stopped with SIGTERM on drop (so it
/// stops moto too).
struct Local {
    child: std::process::Child,
    exports: Vec<(String, String)>,
}

impl Local {
    fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// `lca-kvs local ARGS` with these variables in its environment (its functions' too).
    fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_lca-kvs"))
            .arg("local")
            .args(args)
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("lca-kvs local runs");
        let stdout = child.stdout.take().unwrap();
        let mut exports = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if line == "ready" {
                break;
            }
            if let Some((name, value)) =
                line.strip_prefix("export ").and_then(|l| l.split_once('='))
            {
                exports.push((name.to_string(), value.to_string()));
            }
        }
        Self { child, exports }
    }

    /// Local stand-ins without moto, playing `capture` as stream `call` at `speed`.
    fn playing(capture: &Path, speed: &str) -> Self {
        Self::start(&[
            "--no-moto",
            "--stream",
            &format!("call={}", capture.display()),
            "--speed",
            speed,
        ])
    }

    fn get(&self, name: &str) -> &str {
        &self
            .exports
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} exported: {:?}", self.exports))
            .1
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn transcribe_runs_a_live_call_offline_with_local_exports() {
    let local = Local::start(&[
        "--stream",
        &format!("call={}", fixture("connect/sample-call.mkv").display()),
        "--speed",
        "20",
    ]);
    assert_eq!(local.get("KINESIS_STREAM_NAME"), "lca-kinesis-stream");
    let output = Command::new(env!("CARGO_BIN_EXE_lca-kvs"))
        .args([
            "transcribe",
            "--stream-arn",
            local.get("KVS_STREAM_ARN_CALL"),
            "--start-fragment",
            "91343852333181531502161607852955530730505354276",
            "--show-transcript",
        ])
        .envs(local.exports.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .env("KVS_IDLE_TIMEOUT", "3000")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 11, "{stdout}");
    assert!(lines[0].starts_with("AGENT 0.10-6.34 "), "{stdout}");
    assert!(lines[1].starts_with("CALLER 7.42-11.94 "), "{stdout}");
    let stderr = stderr(&output);
    assert!(
        stderr.contains("transcribing contact d111f871-5fe7-40b1-b5f7-6b67060de0c2 from ")
            && stderr.contains(" as call d111f871-5fe7-40b1-b5f7-6b67060de0c2"),
        "the contact is read from the stream when not given, and is the CallId: {stderr}"
    );
    assert!(
        stderr.contains("call ended (no new audio for 3000 ms)"),
        "{stderr}"
    );
}

#[test]
fn transcribe_publishes_the_given_call_id_and_fails_on_another_contacts_stream() {
    let local = Local::start(&[
        "--stream",
        &format!("call={}", fixture("connect/sample-call.mkv").display()),
        "--speed",
        "0",
    ]);
    let transcribe = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lca-kvs"))
            .args([
                "transcribe",
                "--stream-arn",
                local.get("KVS_STREAM_ARN_CALL"),
            ])
            .args([
                "--start-fragment",
                "91343852333181531502161607852955530730505354276",
            ])
            .args(extra)
            .envs(local.exports.iter().map(|(n, v)| (n.as_str(), v.as_str())))
            .env("KVS_IDLE_TIMEOUT", "1000")
            .output()
            .unwrap()
    };
    // A CallId of the operator's choosing, for the stream's own contact.
    let output = transcribe(&["--call-id", "replay-1"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let records = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let kinesis = aws_sdk_kinesis::Client::new(&local_aws::sdk_config(
            local.get("AWS_ENDPOINT_URL_KINESIS"),
        ));
        local_aws::moto::kinesis_records(&kinesis, local.get("KINESIS_STREAM_NAME"))
            .await
            .unwrap()
    });
    let calls: std::collections::BTreeSet<String> = records
        .iter()
        .map(|(_, data)| {
            let event: serde_json::Value = serde_json::from_slice(data).unwrap();
            event["CallId"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(calls.into_iter().collect::<Vec<_>>(), ["replay-1"]);
    assert!(records.len() > 11, "START, the segments, END");
    // A contact the stream does not carry there: nothing read is not a success.
    let output = transcribe(&["--contact-id", "someone-else"]);
    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("d111f871-5fe7-40b1-b5f7-6b67060de0c2") && stderr.contains("someone-else"),
        "{stderr}"
    );
}

#[test]
fn transcribe_rejects_a_bad_setting_naming_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_lca-kvs"))
        .args([
            "transcribe",
            "--stream-arn",
            "arn:aws:kinesisvideo:us-east-1:1:stream/x/1",
        ])
        .env("KINESIS_STREAM_NAME", "lca")
        .env("TRANSCRIBE_API_MODE", "fast")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = stderr(&output);
    assert!(
        stderr.contains("TRANSCRIBE_API_MODE=\"fast\": expected `standard` or `analytics`"),
        "{stderr}"
    );
}

/// `lca-kvs demo` replaying the fixture call at once, with no moto server to be found.
fn demo_without_moto(extra: &[&str], envs: &[(&str, &str)]) -> Output {
    let capture = fixture("connect/sample-call.mkv");
    Command::new(env!("CARGO_BIN_EXE_lca-kvs"))
        .args(["demo", "--mkv", capture.to_str().unwrap()])
        .args(["--speed", "0", "--engine", "energy"])
        .args(extra)
        .env("MOTO_SERVER", "/nonexistent/moto_server")
        .envs(envs.iter().copied())
        .output()
        .expect("lca-kvs runs")
}

#[test]
fn demo_without_moto_shows_the_call_from_the_embedded_kinesis() {
    let output = demo_without_moto(&[], &[]);
    let stderr = stderr(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("embedded Kinesis stand-in"), "{stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.starts_with("call started: CallId d111f871-5fe7-40b1-b5f7-6b67060de0c2\n"),
        "{stdout}"
    );
    let finals: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("] Caller: ") || l.contains("] Agent : "))
        .collect();
    // The same 11 voiced stretches `transcribe` finds in this call, agent first.
    assert_eq!(finals.len(), 11, "{stdout}");
    assert!(finals[0].contains("Agent"), "{stdout}");
    assert!(stdout.ends_with("call ended\n"), "{stdout}");
    assert!(
        stderr.contains("segments:   11 final (caller 5, agent 6)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("recording:  none (there is no local S3 without moto server"),
        "{stderr}"
    );
}

#[test]
fn demo_recording_out_without_moto_names_the_fix() {
    let output = demo_without_moto(&["--recording-out", "/tmp/never-written.wav"], &[]);
    assert!(!output.status.success());
    let stderr = stderr(&output);
    assert!(
        stderr.contains("--recording-out: there is no local S3 without moto server")
            && stderr.contains("bash scripts/demo.sh"),
        "{stderr}"
    );
}

#[test]
fn demo_stops_at_a_failing_transcriber_with_its_error() {
    // A setting only the transcriber reads (StartLCA reads the per-call ones too, and would
    // fail first).
    let output = demo_without_moto(&[], &[("KEEP_ALIVE", "ten")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = stderr(&output);
    assert!(
        stderr.contains("the call transcriber failed: ") && stderr.contains("KEEP_ALIVE"),
        "{stderr}"
    );
}

#[test]
fn demo_attributes_choose_the_calls_settings_and_a_refused_one_is_startlcas_answer() {
    let output = demo_without_moto(
        &[
            "--attribute",
            "TRANSCRIBE_LANGUAGE_CODE=en-GB",
            "--attribute",
            "CUSTOM_VOCABULARY_FILTER_NAME=profanity",
        ],
        &[],
    );
    let stderr = stderr(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "transcribe: mode standard; language en-GB; vocabulary none; filter profanity (mask); \
             redaction PII of ALL; from contact attributes: CUSTOM_VOCABULARY_FILTER_NAME, \
             TRANSCRIBE_LANGUAGE_CODE"
        ),
        "{stderr}"
    );
    // Refused: StartLCA's answer, exit 1, nothing transcribed.
    let output = demo_without_moto(&["--attribute", "TRANSCRIBE_API_MODE=fast"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let refused = self::stderr(&output);
    assert!(
        refused.contains(r#""error":"BAD_ATTRIBUTE""#)
            && refused.contains(r#""attribute":"TRANSCRIBE_API_MODE""#),
        "{refused}"
    );
    assert!(String::from_utf8(output.stdout).unwrap().is_empty());
    let output = demo_without_moto(&["--attribute", "LCA_TRANSCRIBE=false"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(self::stderr(&output).contains(r#""status":"NOT_TRANSCRIBED""#));
    // Not NAME=VALUE: clap's usage error.
    let output = demo_without_moto(&["--attribute", "TRANSCRIBE_API_MODE"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(self::stderr(&output).contains("expected NAME=VALUE"));
}

#[test]
fn demo_aws_uses_the_accounts_transcribe_and_lca_stream() {
    // `lca-kvs local` stands in for the user's account: its exports are what the AWS CLI's
    // environment would hold (credentials, region, endpoints), plus KINESIS_STREAM_NAME.
    let account = Local::start(&[]);
    let capture = fixture("connect/sample-call.mkv");
    let output = Command::new(env!("CARGO_BIN_EXE_lca-kvs"))
        .args(["demo", "--aws", "--mkv", capture.to_str().unwrap()])
        .args(["--speed", "0"])
        .envs(
            account
                .exports
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str())),
        )
        .env_remove("OUTPUT_BUCKET")
        .output()
        .expect("lca-kvs runs");
    let stderr = stderr(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("LCA events go to your Kinesis stream lca-kinesis-stream in us-east-1")
            && stderr.contains("recognizer: Amazon Transcribe (your account)")
            && stderr.contains("sent with PutMedia into your stream lca-kvs-demo"),
        "{stderr}"
    );
    // The capture went into the account's KVS with PutMedia, as a fresh contact.
    let stdout = String::from_utf8(output.stdout).unwrap();
    let call_id = stdout
        .strip_prefix("call started: CallId ")
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(call_id.len(), 36, "{stdout}");
    assert_ne!(call_id, "d111f871-5fe7-40b1-b5f7-6b67060de0c2");
    assert!(
        stdout.contains("] Caller: ") && stdout.contains("] Agent : "),
        "{stdout}"
    );
    assert!(stdout.ends_with("call ended\n"), "{stdout}");
    assert!(
        stderr.contains("recording:  none (set OUTPUT_BUCKET"),
        "{stderr}"
    );
}

#[test]
fn demo_aws_without_a_stream_names_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_lca-kvs"))
        .args(["demo", "--aws", "--speed", "0"])
        .env_remove("KINESIS_STREAM_NAME")
        .output()
        .expect("lca-kvs runs");
    assert!(!output.status.success());
    let stderr = stderr(&output);
    assert!(stderr.contains("set KINESIS_STREAM_NAME"), "{stderr}");
}

#[test]
fn transcribe_fails_naming_a_kvs_error_that_retrying_does_not_fix() {
    use local_aws::kvs::{Fault, Kvs, KvsOptions};
    // Local KVS (the stream's KMS key denies access after 5 fragments), local Transcribe and
    // the embedded Kinesis stand-in, served by this test's runtime while the command runs.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let kvs = Kvs::new(KvsOptions {
        include_named_fragment: true,
        ..KvsOptions::default()
    });
    let kinesis = local_aws::kinesis::KinesisRecorder::new();
    kinesis.create_stream("lca");
    let transcribe = local_aws::transcribe::Transcribe::new(Default::default());
    let servers = runtime.block_on(async {
        (
            kvs.serve(0).await.unwrap(),
            transcribe.serve(0).await.unwrap(),
            kinesis.serve(0).await.unwrap(),
        )
    });
    let arn = kvs.create_stream("call").unwrap();
    kvs.inject(
        "call",
        Fault::ErrorChunkAfter {
            fragments: 5,
            code: "Access denied for the stream's KMS key".into(),
            id: "4500".into(),
        },
    )
    .unwrap();
    let capture = std::fs::read(fixture("connect/sample-call.mkv")).unwrap();
    kvs.put_capture("call", &capture).unwrap();
    kvs.close_stream("call").unwrap();
    let first = kvs.fragment_numbers("call").unwrap()[0].clone();
    let output = Command::new(env!("CARGO_BIN_EXE_lca-kvs"))
        .args([
            "transcribe",
            "--stream-arn",
            &arn,
            "--start-fragment",
            &first,
            // The contact given: no first GetMedia to peek at it (the fault is for one).
            "--contact-id",
            "d111f871-5fe7-40b1-b5f7-6b67060de0c2",
        ])
        .env("AWS_ENDPOINT_URL_KINESIS_VIDEO", servers.0.url())
        .env("AWS_ENDPOINT_URL_TRANSCRIBE_STREAMING", servers.1.url())
        .env("AWS_ENDPOINT_URL_KINESIS", servers.2.url())
        .env("AWS_ACCESS_KEY_ID", "AKIDLOCAL")
        .env("AWS_SECRET_ACCESS_KEY", "local")
        .env("AWS_REGION", "us-east-1")
        .env("KINESIS_STREAM_NAME", "lca")
        .env("KVS_IDLE_TIMEOUT", "3000")
        .output()
        .unwrap();
    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("GetMedia error 4500") && stderr.contains("kms:Decrypt"),
        "{stderr}"
    );
    // LCA must not show the call live for ever: END is the last event.
    let events: Vec<String> = kinesis
        .records("lca", 0)
        .unwrap()
        .iter()
        .map(|r| {
            let value: serde_json::Value = serde_json::from_slice(&r.data).unwrap();
            value["EventType"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(events.first().map(String::as_str), Some("START"));
    assert_eq!(events.last().map(String::as_str), Some("END"));
    drop(servers);
}

#[test]
fn local_allows_recursion_only_for_a_function_it_serves() {
    let output = Command::new(env!("CARGO_BIN_EXE_lca-kvs"))
        .args([
            "local",
            "--no-moto",
            "--function",
            "CallTranscriber=/bin/true",
            "--allow-recursion",
            "Transcriber",
        ])
        .output()
        .unwrap();
    let stderr = stderr(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("--allow-recursion Transcriber") && stderr.contains("CallTranscriber"),
        "{stderr}"
    );
}

const CONTACT_A: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
const CONTACT_B: &str = "bbbbbbbb-0000-4000-8000-00000000000b";

/// A Connect-shaped stream written to `dir/name`: contact A for `seconds` s of distinct
/// audio, then, when `next` is set, contact B for 3 s after a 5 s pause (Connect reusing the
/// stream), fragment numbers increasing throughout. Returns the file and A's fragments.
fn generated_stream(dir: &Path, name: &str, seconds: usize, next: bool) -> (PathBuf, Vec<Vec<u8>>) {
    let noise = |seed: u32, len: usize| -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect()
    };
    let mut writer = ConnectWriter::new(WriterOptions {
        contact_id: CONTACT_A.to_string(),
        ..WriterOptions::default()
    });
    let start_ms = 1_764_000_000_000;
    let a = writer.call(
        &noise(1, seconds * 16_000),
        &noise(2, seconds * 16_000),
        start_ms,
    );
    let mut bytes = a.concat();
    if next {
        writer.set_contact_id(CONTACT_B);
        let b_start = start_ms + seconds as u64 * 1000 + 5_000;
        for fragment in writer.call(&noise(3, 48_000), &noise(4, 48_000), b_start) {
            bytes.extend_from_slice(&fragment);
        }
    }
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    (path, a)
}

/// `lca-kvs ARGS` against a `Local`'s endpoints.
fn lca_kvs_with(local: &Local, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lca-kvs"));
    command
        .args(args)
        .envs(local.exports.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    command
}

/// The WAV that `extract` writes for `input` (a file), as bytes.
fn extracted(input: &Path, wav: &Path) -> Vec<u8> {
    let output = lca_kvs(&[
        "extract",
        input.to_str().unwrap(),
        "-o",
        wav.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    std::fs::read(wav).unwrap()
}

#[test]
fn capture_of_a_live_call_saves_it_whole_and_ctrl_c_keeps_whole_fragments() {
    let dir = tempfile::tempdir().unwrap();
    let (source, fragments) = generated_stream(dir.path(), "live.mkv", 6, false);
    let local = Local::playing(&source, "1");
    let first = ConnectWriter::fragment_number(0);
    let capture = |output: &Path| {
        lca_kvs_with(
            &local,
            &[
                "capture",
                "--stream-arn",
                local.get("KVS_STREAM_ARN_CALL"),
                "--start-fragment",
                &first,
                "--idle-timeout",
                "2",
                "-o",
                output.to_str().unwrap(),
            ],
        )
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
    };
    let whole = dir.path().join("whole.mkv");
    let cut = dir.path().join("cut.mkv");
    let to_the_end = capture(&whole);
    let interrupted = capture(&cut);
    // Ctrl-C once two fragments are saved (each is written whole, at once).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::metadata(&cut).map_or(0, |m| m.len()) < (fragments[0].len() * 3 / 2) as u64 {
        assert!(std::time::Instant::now() < deadline, "no fragment captured");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let signalled = Command::new("kill")
        .args(["-INT", &interrupted.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let interrupted = interrupted.wait_with_output().unwrap();
    let message = stderr(&interrupted);
    assert!(interrupted.status.success(), "{message}");
    assert!(
        message.contains("stopped: interrupted (Ctrl-C)"),
        "{message}"
    );
    let to_the_end = to_the_end.wait_with_output().unwrap();
    let message = stderr(&to_the_end);
    assert!(to_the_end.status.success(), "{message}");
    assert!(
        message.contains("read 6 fragments (6.00 s of audio) of contact ")
            && message.contains(CONTACT_A)
            && message.contains("stopped: no new fragment for 2.0 s"),
        "{message}"
    );

    // The whole capture's audio is the call's, byte for byte.
    let source_wav = extracted(&source, &dir.path().join("source.wav"));
    assert!(extracted(&whole, &dir.path().join("whole.wav")) == source_wav);
    // And it replays: played into another stream, it reads back the same.
    drop(local);
    let replay = Local::playing(&whole, "0");
    let replayed = dir.path().join("replayed.wav");
    let output = lca_kvs_with(
        &replay,
        &[
            "extract",
            "--stream-arn",
            replay.get("KVS_STREAM_ARN_CALL"),
            "--start-fragment",
            &first,
            "--idle-timeout",
            "1",
            "-o",
            replayed.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(std::fs::read(&replayed).unwrap() == source_wav);
    // The interrupted one holds whole fragments, the call's audio up to where it stopped.
    let (caller, agent) = wav_channels(&dir.path().join("source.wav"));
    extracted(&cut, &dir.path().join("cut.wav"));
    let (cut_caller, cut_agent) = wav_channels(&dir.path().join("cut.wav"));
    // Per track per fragment: 16 frames of 512 samples (WriterOptions::default()).
    let fragment_bytes = 16 * 512 * 2;
    assert_eq!(caller.len().div_ceil(fragment_bytes), fragments.len());
    assert!(cut_caller.len() >= 2 * fragment_bytes && cut_caller.len() < caller.len());
    assert_eq!(cut_caller.len() % fragment_bytes, 0, "whole fragments only");
    assert!(cut_caller[..] == caller[..cut_caller.len()]);
    assert!(cut_agent[..] == agent[..cut_agent.len()]);
}

#[test]
fn stream_reads_stop_at_the_next_contact_and_equal_the_file_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (source, fragments) = generated_stream(dir.path(), "reused.mkv", 5, true);
    let local = Local::playing(&source, "0");
    let arn = local.get("KVS_STREAM_ARN_CALL");
    let first = ConnectWriter::fragment_number(0);
    let run = |args: &[&str]| {
        let output = lca_kvs_with(&local, args)
            .args(["--stream-arn", arn, "--idle-timeout", "1"])
            .output()
            .unwrap();
        (output.status.code(), stderr(&output), output.stdout)
    };
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();

    // Capture stops at the next contact; its audio is what extract reads from the file.
    let (code, message, _) = run(&["capture", "--start-fragment", &first, "-o", &path("a.mkv")]);
    assert_eq!(code, Some(0), "{message}");
    assert!(
        message.contains(&format!(
            "read 5 fragments (5.00 s of audio) of contact {CONTACT_A}"
        )) && message.contains(&format!(
            "stopped: the stream went on with contact {CONTACT_B}"
        )),
        "{message}"
    );
    let from_file = extracted(&source, &dir.path().join("file.wav"));
    assert!(extracted(Path::new(&path("a.mkv")), &dir.path().join("a.wav")) == from_file);

    // extract and inspect read the stream straight, with the same results as from the file.
    let (code, message, _) = run(&["extract", "--start-fragment", &first, "-o", &path("s.wav")]);
    assert_eq!(code, Some(0), "{message}");
    assert!(std::fs::read(path("s.wav")).unwrap() == from_file);
    let (code, message, listing) = run(&["inspect", "--json", "--start-fragment", &first]);
    assert_eq!(code, Some(0), "{message}");
    let file_listing = lca_kvs(&["inspect", "--json", source.to_str().unwrap()]).stdout;
    // KVS stamps MILLIS_BEHIND_NOW at delivery; everything else is the stream's.
    let comparable = |listing: &[u8]| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(listing)
            .lines()
            .map(|line| {
                let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
                value.as_object_mut().unwrap().remove("millis_behind_now");
                value
            })
            .collect()
    };
    assert_eq!(
        comparable(&listing),
        comparable(&file_listing)[..fragments.len()],
        "the contact's fragments, as the file lists them"
    );

    // A time within the first fragment starts there too.
    let (code, message, _) = run(&[
        "extract",
        "--start-time",
        "1764000000500",
        "-o",
        &path("t.wav"),
    ]);
    assert_eq!(code, Some(0), "{message}");
    assert!(std::fs::read(path("t.wav")).unwrap() == from_file);

    // A contact the stream does not carry there: nothing saved, and a failure naming both.
    let (code, message, _) = run(&[
        "capture",
        "--start-fragment",
        &first,
        "--contact-id",
        CONTACT_B,
        "-o",
        &path("b.mkv"),
    ]);
    assert_eq!(code, Some(1), "{message}");
    assert!(
        message.contains(&format!(
            "the first fragment read belongs to contact {CONTACT_A}, not {CONTACT_B}"
        )),
        "{message}"
    );
    assert!(!Path::new(&path("b.mkv")).exists(), "no empty capture left");
    // Without a start, the command says what to give.
    let (code, message, _) = run(&["capture", "-o", &path("c.mkv")]);
    assert_eq!(code, Some(2), "{message}");
    assert!(
        message.contains("--start-fragment or --start-time"),
        "{message}"
    );
}

#[test]
fn put_media_sends_a_fresh_contact_and_names_what_to_fix_when_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (source, fragments) = generated_stream(dir.path(), "call.mkv", 3, false);
    let local = Local::start(&["--no-moto"]);
    let output = lca_kvs_with(
        &local,
        &[
            "put-media",
            source.to_str().unwrap(),
            "--stream-name",
            "try-it",
            "--create",
            "--speed",
            "0",
            "--now",
            "--contact-id",
            CONTACT_B,
        ],
    )
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["fragments"], fragments.len());
    assert_eq!(summary["persisted"], fragments.len());
    // Read back from its start fragment: the same audio, as contact B.
    let wav = dir.path().join("sent.wav");
    let output = lca_kvs_with(
        &local,
        &[
            "extract",
            "--stream-arn",
            summary["stream"].as_str().unwrap(),
            "--start-fragment",
            summary["first_fragment_number"].as_str().unwrap(),
            "--idle-timeout",
            "1",
            "-o",
            wav.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    let message = stderr(&output);
    assert!(output.status.success(), "{message}");
    assert!(message.contains(CONTACT_B), "{message}");
    assert!(std::fs::read(&wav).unwrap() == extracted(&source, &dir.path().join("source.wav")));

    // No such stream: exit 1, the service's error and what to check.
    let output = lca_kvs_with(
        &local,
        &[
            "put-media",
            source.to_str().unwrap(),
            "--stream-name",
            "nope",
        ],
    )
    .output()
    .unwrap();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains("ResourceNotFoundException") && message.contains("check the stream"),
        "{message}"
    );
    // Not a call: exit 2 naming the file, nothing sent.
    let garbage = dir.path().join("garbage.mkv");
    std::fs::write(&garbage, b"not matroska").unwrap();
    let output = lca_kvs_with(
        &local,
        &[
            "put-media",
            garbage.to_str().unwrap(),
            "--stream-name",
            "try-it",
        ],
    )
    .output()
    .unwrap();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(message.contains("garbage.mkv"), "{message}");
}

#[test]
fn try_stack_checks_a_stand_in_account_and_names_each_broken_step() {
    const INSTANCE: &str = "arn:aws:connect:us-east-1:123456789012:instance/try-stack";
    let dir = tempfile::tempdir().unwrap();
    // The sample call's first 24 s: both speakers talk.
    let sample = std::fs::read(fixture("connect/sample-call.mkv")).unwrap();
    let ranges = kvs_media::split_chunks(&sample).unwrap();
    let call = dir.path().join("call.mkv");
    std::fs::write(&call, &sample[..ranges[23].end]).unwrap();
    // A stand-in account with the stack deployed: the functions under the local Lambda,
    // configured as the template configures them, their role limited to streams named
    // connect-lca-*. They are this build's (`lca-kvs function NAME`, the same handlers), or,
    // with LCA_TEST_ARM64_FUNCTIONS, the arm64 zips the stack ships, under qemu.
    let function = |name: &str, binary: &str| match local_aws::lambda::arm64_functions_dir() {
        Some(_) => {
            let (command, args) = local_aws::lambda::function_command(Path::new(binary)).unwrap();
            format!("{name}={} {}", command.display(), args.join(" "))
        }
        None => format!("{name}={} function {binary}", env!("CARGO_BIN_EXE_lca-kvs")),
    };
    let start_lca = function("StartLCA", "start-lca");
    let transcriber = function("CallTranscriber", "call-transcriber");
    let local = Local::start_with_env(
        &[
            "--bucket",
            "lca-recordings",
            "--lease-table",
            "lca-calls",
            "--function",
            &start_lca,
            "--function",
            &transcriber,
            "--allow-recursion",
            "CallTranscriber",
            "--functions-stream-prefix",
            "connect-lca-",
        ],
        &[
            ("CONNECT_INSTANCE_ARN", INSTANCE),
            (
                "TRANSCRIBER_FUNCTION_ARN",
                "arn:aws:lambda:us-east-1:123456789012:function:CallTranscriber",
            ),
            ("KVS_IDLE_TIMEOUT", "3000"),
            ("RUST_LOG", "warn"),
        ],
    );
    let try_stack = |start_lca: &str, instance: &str, prefix: &str, kinesis: &str| {
        let output = lca_kvs_with(
            &local,
            &[
                "try-stack",
                "--start-lca",
                start_lca,
                "--instance-arn",
                instance,
                "--stream-prefix",
                prefix,
                "--kinesis-stream",
                kinesis,
                "--mkv",
                call.to_str().unwrap(),
                "--speed",
                "4",
                "--timeout",
                "8",
            ],
        )
        .output()
        .unwrap();
        (
            output.status.code(),
            stderr(&output),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let kinesis = local.get("KINESIS_STREAM_NAME").to_string();

    // The whole stack works, its values read from the stack (moto's CloudFormation): every
    // step passes, the transcript shows both speakers.
    let moto = local.get("AWS_ENDPOINT_URL_S3").to_string();
    let template = serde_json::json!({
        "Parameters": {
            "ConnectInstanceArn": {"Type": "String"},
            "ConnectKvsStreamNamePrefix": {"Type": "String"},
            "KinesisDataStreamName": {"Type": "String"},
        },
        "Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"StartLCAFunctionName": {"Value": "StartLCA"}},
    });
    let parameter = |key: &str, value: &str| {
        aws_sdk_cloudformation::types::Parameter::builder()
            .parameter_key(key)
            .parameter_value(value)
            .build()
    };
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(
            aws_sdk_cloudformation::Client::new(&local_aws::sdk_config(&moto))
                .create_stack()
                .stack_name("lca-connect-kvs")
                .template_body(template.to_string())
                .parameters(parameter("ConnectInstanceArn", INSTANCE))
                .parameters(parameter("ConnectKvsStreamNamePrefix", "connect-lca-"))
                .parameters(parameter("KinesisDataStreamName", &kinesis))
                .send(),
        )
        .unwrap();
    let output = lca_kvs_with(
        &local,
        &[
            "try-stack",
            "--stack",
            "lca-connect-kvs",
            "--mkv",
            call.to_str().unwrap(),
            "--speed",
            "4",
            "--timeout",
            "8",
        ],
    )
    .env("AWS_ENDPOINT_URL_CLOUDFORMATION", &moto)
    .output()
    .unwrap();
    let (code, checklist, transcript) = (
        output.status.code(),
        stderr(&output),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    );
    assert_eq!(code, Some(0), "{checklist}\n{transcript}");
    assert!(
        checklist.contains("stack lca-connect-kvs: StartLCA StartLCA, instance ")
            && checklist.contains("stream prefix \"connect-lca-\""),
        "{checklist}"
    );
    assert_eq!(checklist.matches("[ok]").count(), 8, "{checklist}");
    assert!(
        transcript.contains("Caller:") && transcript.contains("Agent :"),
        "{transcript}"
    );
    assert!(checklist.contains("24 fragments stored"), "{checklist}");

    // Each broken step fails the run, named with its likely fix.
    let failed = |checklist: &str, step: &str, fix: &str| {
        let line = checklist
            .lines()
            .position(|l| l.contains("[FAILED]") && l.contains(step))
            .unwrap_or_else(|| panic!("no failed step {step:?}:\n{checklist}"));
        let next = checklist.lines().nth(line + 1).unwrap_or_default();
        assert!(
            next.contains("likely fix:") && next.contains(fix),
            "{checklist}"
        );
    };
    let (code, checklist, _) = try_stack("NoSuchFunction", INSTANCE, "connect-lca-", &kinesis);
    assert_eq!(code, Some(1), "{checklist}");
    failed(&checklist, "StartLCA answered", "StartLCAFunctionName");
    let (code, checklist, _) = try_stack(
        "StartLCA",
        &format!("{INSTANCE}-other"),
        "connect-lca-",
        &kinesis,
    );
    assert_eq!(code, Some(1), "{checklist}");
    failed(&checklist, "StartLCA answered", "ConnectInstanceArn");
    assert!(checklist.contains("WRONG_INSTANCE"), "{checklist}");
    // A prefix the stack's role does not allow: the transcriber cannot read the stream.
    let (code, checklist, _) = try_stack("StartLCA", INSTANCE, "other-", &kinesis);
    assert_eq!(code, Some(1), "{checklist}");
    failed(
        &checklist,
        "segments from both channels",
        "ConnectKvsStreamNamePrefix",
    );
    failed(
        &checklist,
        "END on the LCA stream",
        "ConnectKvsStreamNamePrefix",
    );
    // Events followed on another stream than the stack's: none within the time limit.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(local_aws::moto::create_kinesis_stream(
            local.get("AWS_ENDPOINT_URL_KINESIS"),
            "another",
        ))
        .unwrap();
    let (code, checklist, _) = try_stack("StartLCA", INSTANCE, "connect-lca-", "another");
    assert_eq!(code, Some(1), "{checklist}");
    failed(
        &checklist,
        "START on the LCA stream",
        "KinesisDataStreamName",
    );
    assert!(checklist.contains("within 8 s"), "{checklist}");
    // No such LCA stream: the first step.
    let (code, checklist, _) = try_stack("StartLCA", INSTANCE, "connect-lca-", "nope");
    assert_eq!(code, Some(1), "{checklist}");
    failed(
        &checklist,
        "LCA Kinesis stream readable",
        "KinesisDataStreamName",
    );
}
