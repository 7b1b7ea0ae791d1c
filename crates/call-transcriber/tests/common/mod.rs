//! Shared by the end-to-end tests: local KVS and Transcribe (local-aws), moto server
//! (Kinesis) behind a fault-injecting proxy, the sample call and what it must produce.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use call_transcriber::TranscriberConfig;
use call_transcriber::pipeline::{CallOutcome, CallPipeline, CallSpec, Clients, Taps};
use call_transcriber::source::{KvsClients, StartAt};
use kvs_media::split_chunks;
use lca_events::StartCall;
use local_aws::call_analytics::CallAnalyticsJobs;
use local_aws::kinesis_faults::KinesisFaults;
use local_aws::kvs::{Fault, Kvs, KvsOptions};
use local_aws::moto::MotoServer;
use local_aws::transcribe::{Transcribe, TranscribeOptions};
use serde_json::Value;

pub const CONTACT: &str = "d111f871-5fe7-40b1-b5f7-6b67060de0c2";
/// Live playback speed: the 60 s call in about 6 s.
pub const SPEED: f64 = 10.0;

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(rel)
}

pub fn sample_call_chunks() -> Vec<Bytes> {
    let capture = std::fs::read(fixture("connect/sample-call.mkv")).expect("../shared/fixtures");
    split_chunks(&capture)
        .unwrap()
        .into_iter()
        .map(|r| Bytes::copy_from_slice(&capture[r]))
        .collect()
}

/// The sample call with `gap` of nothing on the stream after its first `fragments`
/// fragments (8192 samples each; 12 ends at 12.288 s, between two turns), as Connect's
/// writer produces it: the chunks, and the stereo PCM a reader must assemble from them (the
/// gap as silence, in place).
pub fn sample_call_with_gap(fragments: usize, gap: Duration) -> (Vec<Bytes>, Vec<u8>) {
    let (caller, agent) = sample_call_tracks();
    let cut = fragments * 8192 * 2;
    let mut writer = kvs_media::ConnectWriter::new(kvs_media::WriterOptions {
        contact_id: CONTACT.to_string(),
        ..kvs_media::WriterOptions::default()
    });
    let start_ms = 1_764_000_000_000u64;
    let mut chunks = writer.call(&caller[..cut], &agent[..cut], start_ms);
    chunks.extend(writer.call(
        &caller[cut..],
        &agent[cut..],
        start_ms + (cut as u64 / 2) * 1000 / 8000 + gap.as_millis() as u64,
    ));
    let mut expected = sample_call_stereo();
    let gap_bytes = (gap.as_millis() as usize) * 8 * 4;
    expected.splice(cut * 2..cut * 2, std::iter::repeat_n(0u8, gap_bytes));
    (chunks.into_iter().map(Bytes::from).collect(), expected)
}

/// Length of the sample call (61.44 s): a tiled call repeats its turns this often.
pub const SAMPLE_CALL_S: f64 = 61.44;

/// The sample call played `tiles` times in a row (a call of `tiles` x 61.44 s), as Connect's
/// writer produces it: the chunks, and the stereo PCM a reader must assemble from them.
pub fn tiled_sample_call(tiles: usize) -> (Vec<Bytes>, Vec<u8>) {
    let (caller, agent) = sample_call_tracks();
    let (caller, agent) = (caller.repeat(tiles), agent.repeat(tiles));
    let mut writer = kvs_media::ConnectWriter::new(kvs_media::WriterOptions {
        contact_id: CONTACT.to_string(),
        ..kvs_media::WriterOptions::default()
    });
    let chunks = writer.call(&caller, &agent, 1_764_000_000_000);
    (
        chunks.into_iter().map(Bytes::from).collect(),
        stereo(&caller, &agent),
    )
}

/// Each channel's finals of [`tiled_sample_call`] are its turns, tile after tile, each once
/// and in call order, to within `tolerance_s` (see [`assert_whole_call_within`]). A turn may
/// come in two pieces: a hand-over with no pause in its grace period cuts it at a fragment
/// boundary, and the local recognizer, its new session starting mid-utterance where the
/// voice may be soft, puts the first piece's end and the second's start up to a few hundred
/// ms from the cut. Pieces less than a second apart are one turn (the sample call's turns on
/// one channel are seconds apart).
pub fn assert_tiled_turns(records: &[Value], tiles: usize, tolerance_s: f64) {
    let finals = finals(records);
    for (channel, turns) in [("CALLER", &CALLER_TURNS[..]), ("AGENT", &AGENT_TURNS[..])] {
        let expected: Vec<(f64, f64)> = (0..tiles)
            .flat_map(|tile| {
                let by = tile as f64 * SAMPLE_CALL_S;
                turns.iter().map(move |&(a, b)| (a + by, b + by))
            })
            .collect();
        let mut found: Vec<(f64, f64)> = Vec::new();
        for piece in on(&finals, channel) {
            match found.last_mut() {
                // Not a repeat nor out of order: the next piece starts after this one.
                Some(last) if (-0.001..1.0).contains(&(piece.0 - last.1)) => last.1 = piece.1,
                _ => found.push(piece),
            }
        }
        assert_turns(channel, &found, &expected, tolerance_s);
    }
}

/// `channel`'s finals (start, end) are the `expected` turns, one for one and in order, each
/// edge within `tolerance_s`.
pub fn assert_turns(
    channel: &str,
    found: &[(f64, f64)],
    expected: &[(f64, f64)],
    tolerance_s: f64,
) {
    let near = found.len() == expected.len()
        && found
            .iter()
            .zip(expected)
            .all(|(f, t)| (f.0 - t.0).abs() <= tolerance_s && (f.1 - t.1).abs() <= tolerance_s);
    assert!(
        near,
        "{channel}: {} finals {found:?}, expected {} {expected:?} (± {tolerance_s} s)",
        found.len(),
        expected.len()
    );
}

/// The producer stall of the stall tests: 10 s after the 12th fragment (12.288 s, between two
/// turns).
pub const STALL_FRAGMENTS: usize = 12;
pub const STALL: Duration = Duration::from_secs(10);

/// The sample call with [`STALL`] after [`STALL_FRAGMENTS`] ([`sample_call_with_gap`]).
pub fn sample_call_with_stall() -> (Vec<Bytes>, Vec<u8>) {
    sample_call_with_gap(STALL_FRAGMENTS, STALL)
}

/// KVS as in the stall tests: the 3 s payload timeout of GetMedia (API reference) scaled to
/// 0.2 s, as the call plays 10x faster (and less, so two empty responses fit in the stall).
pub fn stall_kvs() -> KvsOptions {
    KvsOptions {
        payload_timeout: Duration::from_millis(200),
        ..KvsOptions::default()
    }
}

/// Every turn of [`sample_call_with_stall`] is a final once, the ones after the stall
/// [`STALL`] later, as they happened, to within `tolerance_s` (see
/// [`assert_whole_call_within`] for why a hand-over may move them).
pub fn assert_turns_with_stall(records: &[Value], tolerance_s: f64) {
    let at = (STALL_FRAGMENTS * 8192) as f64 / 8000.0;
    let by = STALL.as_secs_f64();
    let finals = finals(records);
    for (channel, turns) in [("CALLER", &CALLER_TURNS[..]), ("AGENT", &AGENT_TURNS[..])] {
        let expected: Vec<(f64, f64)> = turns
            .iter()
            .map(|&(a, b)| if a > at { (a + by, b + by) } else { (a, b) })
            .collect();
        assert_turns(channel, &on(&finals, channel), &expected, tolerance_s);
    }
}

/// The local Transcribe with an account's concurrent stream quota of `streams`.
pub fn stream_quota(streams: usize) -> TranscribeOptions {
    TranscribeOptions {
        max_sessions: Some(streams),
        ..TranscribeOptions::default()
    }
}

/// The sample call as interleaved stereo s16le: caller left, agent right.
pub fn sample_call_stereo() -> Vec<u8> {
    let (caller, agent) = sample_call_tracks();
    stereo(&caller, &agent)
}

/// The sample call's tracks as mono s16le: (caller, agent).
pub fn sample_call_tracks() -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(fixture("connect/sample-call.caller.raw")).unwrap(),
        std::fs::read(fixture("connect/sample-call.agent.raw")).unwrap(),
    )
}

/// Two mono s16le tracks as interleaved stereo: caller left, agent right.
pub fn stereo(caller: &[u8], agent: &[u8]) -> Vec<u8> {
    caller
        .chunks_exact(2)
        .zip(agent.chunks_exact(2))
        .flat_map(|(c, a)| [c[0], c[1], a[0], a[1]])
        .collect()
}

/// Local KVS + Transcribe + moto, and a Kinesis stream named `lca`.
pub struct Harness {
    pub kvs: Kvs,
    pub transcribe: Transcribe,
    pub kinesis: aws_sdk_kinesis::Client,
    pub clients: Clients,
    /// Between the pipeline and moto: injects Kinesis throttling.
    pub faults: KinesisFaults,
    /// Endpoints for a function's environment: (KVS, Transcribe, Kinesis through the proxy).
    pub urls: (String, String, String),
    /// moto itself (S3, DynamoDB).
    pub moto_url: String,
    /// S3 on moto, with the bucket [`BUCKET`].
    pub s3: aws_sdk_s3::Client,
    /// DynamoDB on moto, with the lease table [`TABLE`].
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// Transcribe's StartCallAnalyticsJob (post-call analytics jobs), and its endpoint.
    pub jobs: CallAnalyticsJobs,
    pub jobs_url: String,
    _servers: (
        local_aws::http::Server,
        local_aws::http::Server,
        local_aws::http::Server,
        local_aws::http::Server,
        MotoServer,
    ),
}

impl Harness {
    pub async fn new(kvs: KvsOptions, transcribe: TranscribeOptions) -> Self {
        let moto = MotoServer::start().expect("moto server");
        let kvs = Kvs::new(kvs);
        let kvs_server = kvs.serve(0).await.unwrap();
        let transcribe = Transcribe::new(transcribe);
        let transcribe_server = transcribe.serve(0).await.unwrap();
        let kinesis = local_aws::moto::create_kinesis_stream(moto.url(), "lca")
            .await
            .unwrap();
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&local_aws::sdk_config(moto.url()))
                .force_path_style(true)
                .build(),
        );
        s3.create_bucket().bucket(BUCKET).send().await.unwrap();
        // Versioned, as LCA's recordings bucket is.
        s3.put_bucket_versioning()
            .bucket(BUCKET)
            .versioning_configuration(
                aws_sdk_s3::types::VersioningConfiguration::builder()
                    .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let dynamodb = aws_sdk_dynamodb::Client::new(&local_aws::sdk_config(moto.url()));
        call_transcriber::lease::CallLease::new(
            dynamodb.clone(),
            TABLE.to_string(),
            Duration::from_secs(30),
        )
        .create_table()
        .await
        .unwrap();
        let faults = KinesisFaults::new(moto.url());
        let faults_server = faults.serve(0).await.unwrap();
        let jobs = CallAnalyticsJobs::new();
        let jobs_server = jobs.serve(0).await.unwrap();
        let clients = Clients {
            kvs: KvsClients::new(&local_aws::sdk_config(&kvs_server.url())),
            transcribe: aws_sdk_transcribestreaming::Client::new(&local_aws::sdk_config(
                &transcribe_server.url(),
            )),
            kinesis: aws_sdk_kinesis::Client::new(&local_aws::sdk_config(&faults_server.url())),
        };
        Self {
            kvs,
            transcribe,
            kinesis,
            clients,
            faults,
            urls: (
                kvs_server.url(),
                transcribe_server.url(),
                faults_server.url(),
            ),
            moto_url: moto.url().to_string(),
            s3,
            dynamodb,
            jobs,
            jobs_url: jobs_server.url(),
            _servers: (
                kvs_server,
                transcribe_server,
                faults_server,
                jobs_server,
                moto,
            ),
        }
    }

    pub fn pipeline(&self, vars: &[(&str, &str)]) -> CallPipeline {
        let mut env: HashMap<&str, &str> =
            HashMap::from([("KINESIS_STREAM_NAME", "lca"), ("KVS_IDLE_TIMEOUT", "3000")]);
        env.extend(vars.iter().copied());
        let config =
            TranscriberConfig::from_lookup(|name| env.get(name).map(|v| v.to_string())).unwrap();
        CallPipeline {
            config,
            clients: self.clients.clone(),
        }
    }

    /// Creates `name` and plays `chunks` into it live; returns its ARN and the first
    /// fragment's number once it is on the stream.
    pub async fn play(&self, name: &str, chunks: Vec<Bytes>) -> (String, String) {
        self.play_with_faults(name, chunks, &[]).await
    }

    /// [`Self::play`] with `faults` queued for the stream's GetMedia sessions.
    pub async fn play_with_faults(
        &self,
        name: &str,
        chunks: Vec<Bytes>,
        faults: &[Fault],
    ) -> (String, String) {
        self.play_at(name, chunks, faults, SPEED).await
    }

    /// [`Self::play_with_faults`] at `speed` times real time.
    pub async fn play_at(
        &self,
        name: &str,
        chunks: Vec<Bytes>,
        faults: &[Fault],
        speed: f64,
    ) -> (String, String) {
        let arn = self.kvs.create_stream(name).unwrap();
        for fault in faults {
            self.kvs.inject(name, fault.clone()).unwrap();
        }
        self.kvs.play(name, chunks, speed);
        for _ in 0..200 {
            if let Some(first) = self.kvs.fragment_numbers(name).unwrap().first() {
                return (arn, first.clone());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no fragment on {name}");
    }

    /// Creates `name` with `faults` queued, stores `chunks` at once, closes it (a call that has
    /// ended); returns its ARN and first fragment.
    pub fn stored(&self, name: &str, chunks: &[Bytes], faults: &[Fault]) -> (String, String) {
        let arn = self.kvs.create_stream(name).unwrap();
        for fault in faults {
            self.kvs.inject(name, fault.clone()).unwrap();
        }
        self.kvs.put_capture(name, &chunks.concat()).unwrap();
        self.kvs.close_stream(name).unwrap();
        (arn, self.kvs.fragment_numbers(name).unwrap()[0].clone())
    }

    /// Every record on the `lca` stream, in stream order.
    pub async fn records(&self) -> Vec<Value> {
        let records = local_aws::moto::kinesis_records(&self.kinesis, "lca")
            .await
            .unwrap();
        records
            .into_iter()
            .map(|(key, data)| {
                let value: Value = serde_json::from_slice(&data).unwrap();
                assert_eq!(
                    Some(key.as_str()),
                    value["CallId"].as_str(),
                    "partition key = CallId"
                );
                value
            })
            .collect()
    }
}

/// The recordings bucket in moto.
pub const BUCKET: &str = "lca-recordings";
/// The lease table in moto.
pub const TABLE: &str = "call-events";

impl Harness {
    /// Every audio byte Transcribe received, across its sessions, in the order they started.
    pub fn transcribed_audio(&self) -> Vec<u8> {
        self.transcribe
            .sessions()
            .iter()
            .flat_map(|s| s.audio.clone())
            .collect()
    }
}

impl Harness {
    /// An object in the bucket; `None` only when S3 answers that there is no such key. Any
    /// other failure fails the test, so an `is_none()` cannot pass on an S3 error.
    pub async fn object(&self, key: &str) -> Option<Vec<u8>> {
        let result = self.s3.get_object().bucket(BUCKET).key(key).send().await;
        match result {
            Ok(output) => Some(
                output
                    .body
                    .collect()
                    .await
                    .unwrap_or_else(|e| panic!("GetObject {key}: reading the body: {e}"))
                    .into_bytes()
                    .to_vec(),
            ),
            Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => None,
            Err(error) => panic!("GetObject {key}: {}", aws_edge::error_text(&error)),
        }
    }

    /// Keys in the bucket under `prefix`.
    /// Object versions and delete markers under `prefix` in [`BUCKET`] (one page).
    pub async fn versions(&self, prefix: &str) -> (usize, usize) {
        let page = self
            .s3
            .list_object_versions()
            .bucket(BUCKET)
            .prefix(prefix)
            .send()
            .await
            .unwrap();
        (page.versions().len(), page.delete_markers().len())
    }

    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let output = self
            .s3
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix(prefix)
            .send()
            .await
            .unwrap();
        output
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    }
}

pub fn new_call(arn: &str, first: &str) -> CallSpec {
    CallSpec {
        start_event: Some(StartCall {
            customer_phone_number: "+15551230001".into(),
            system_phone_number: "+15559870002".into(),
            agent_id: None,
            metadata_json: None,
            created_at: "2026-11-23T00:00:00.000Z".into(),
        }),
        ..CallSpec::new(CONTACT, CONTACT, arn, StartAt::Fragment(first.to_string()))
    }
}

/// Final segments as (channel, start, end), in stream order.
pub fn finals(records: &[Value]) -> Vec<(String, f64, f64)> {
    records
        .iter()
        .filter(|r| r["EventType"] == "ADD_TRANSCRIPT_SEGMENT" && r["IsPartial"] == false)
        .map(|r| {
            (
                r["Channel"].as_str().unwrap().to_string(),
                r["StartTime"].as_f64().unwrap(),
                r["EndTime"].as_f64().unwrap(),
            )
        })
        .collect()
}

pub fn on(finals: &[(String, f64, f64)], channel: &str) -> Vec<(f64, f64)> {
    finals
        .iter()
        .filter(|f| f.0 == channel)
        .map(|f| (f.1, f.2))
        .collect()
}

/// The sample call's turns as the local recognizer finds them (see local-aws's tests).
pub const CALLER_TURNS: [(f64, f64); 5] = [
    (7.42, 11.94),
    (18.84, 24.25),
    (31.24, 33.55),
    (40.29, 44.16),
    (51.48, 55.08),
];
pub const AGENT_TURNS: [(f64, f64); 6] = [
    (0.1, 6.34),
    (13.05, 17.81),
    (25.34, 30.21),
    (34.59, 39.29),
    (45.15, 50.44),
    (56.07, 60.41),
];

pub fn assert_whole_call(records: &[Value]) {
    assert_whole_call_within(records, 0.0);
}

/// [`assert_whole_call`] with segment times allowed `tolerance_s` off the turns: a session
/// that starts at a hand-over starts mid-way through one of the recognizer's 10 ms frames, so
/// the edges it finds can move by up to two frames.
pub fn assert_whole_call_within(records: &[Value], tolerance_s: f64) {
    assert_eq!(records.first().unwrap()["EventType"], "START");
    assert_eq!(records.last().unwrap()["EventType"], "END");
    let types: Vec<&str> = records
        .iter()
        .map(|r| r["EventType"].as_str().unwrap())
        .collect();
    assert_eq!(types.iter().filter(|t| **t == "START").count(), 1);
    assert_eq!(types.iter().filter(|t| **t == "END").count(), 1);
    let finals = finals(records);
    for (channel, turns) in [("CALLER", &CALLER_TURNS[..]), ("AGENT", &AGENT_TURNS[..])] {
        assert_turns(channel, &on(&finals, channel), turns, tolerance_s);
    }
    assert_no_final_twice(records);
}

/// No segment twice: final segment ids are unique.
pub fn assert_no_final_twice(records: &[Value]) {
    let mut ids: Vec<&str> = records
        .iter()
        .filter(|r| r["IsPartial"] == false)
        .filter_map(|r| r["SegmentId"].as_str())
        .collect();
    let all = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all, "duplicate final segments");
}

pub async fn run(pipeline: &CallPipeline, call: CallSpec) -> CallOutcome {
    tokio::time::timeout(Duration::from_secs(60), pipeline.run(call, Taps::default()))
        .await
        .expect("the pipeline finishes")
        .expect("the pipeline succeeds")
}

/// KVS reading FRAGMENT_NUMBER as "starting with": one GetMedia session per connection, so
/// an injected fault hits the first one (with the other reading, the pipeline's first request
/// is answered from the second fragment and re-asked by time).
pub fn named_first() -> KvsOptions {
    KvsOptions {
        include_named_fragment: true,
        ..KvsOptions::default()
    }
}
