//! Live calls for the benches: the stand-ins (local KVS, Transcribe, Kinesis) and a pipeline
//! whose timeouts are scaled to calls played at `speed` times real time, and the finals that
//! reached Kinesis with how far behind the live audio each one came.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use call_transcriber::TranscriberConfig;
use call_transcriber::pipeline::{CallPipeline, CallSpec, Clients, Taps};
use call_transcriber::source::{KvsClients, StartAt};
use local_aws::http::Server;
use local_aws::kinesis::KinesisRecorder;
use local_aws::kvs::{Kvs, KvsOptions};
use local_aws::transcribe::{Pace, Transcribe, TranscribeFault, TranscribeOptions};
use serde_json::Value;

/// A final segment as published: (channel, start ms, end ms).
pub type Final = (String, i64, i64);

/// The stand-ins and a pipeline for calls played at `speed` times real time: KVS's 3 s
/// payload timeout, the 15 s idle timeout, the start backoff and the pace catching up takes
/// Transcribe to keep scaled by it.
pub struct PacedStandIns {
    /// Playback speed (1: real time).
    pub speed: f64,
    /// The local KVS.
    pub kvs: Kvs,
    /// The local Transcribe.
    pub transcribe: Transcribe,
    /// The local Kinesis (stream `lca`).
    pub kinesis: KinesisRecorder,
    /// The pipeline, configured like the Lambda's with the scaled timeouts.
    pub pipeline: CallPipeline,
    /// When the first call began playing (set by [`Self::play`]).
    played_at: Option<SystemTime>,
    _servers: [Server; 3],
}

/// What reached Kinesis, per call (the partition key).
#[derive(Debug, Default)]
pub struct Published {
    /// Each call's finals, in stream order, with how far behind the live audio each came (in
    /// call seconds: wall time x speed).
    pub finals: BTreeMap<String, Vec<(Final, f64)>>,
    /// The calls whose END is on the stream.
    pub ended: BTreeSet<String>,
}

impl PacedStandIns {
    /// Starts the stand-ins, the Transcribe one with `transcribe`'s options.
    pub async fn start(speed: f64, transcribe: TranscribeOptions) -> Result<Self, String> {
        let scaled = |d: Duration| d.div_f64(speed);
        let kvs = Kvs::new(KvsOptions {
            payload_timeout: scaled(Duration::from_secs(3)),
            ..KvsOptions::default()
        });
        let kvs_server = kvs.serve(0).await.map_err(|e| e.to_string())?;
        let transcribe = Transcribe::new(transcribe);
        let transcribe_server = transcribe.serve(0).await.map_err(|e| e.to_string())?;
        let kinesis = KinesisRecorder::new();
        kinesis.create_stream("lca");
        let kinesis_server = kinesis.serve(0).await.map_err(|e| e.to_string())?;
        let millis = |d: Duration, floor: u128| d.as_millis().max(floor).to_string();
        let env = BTreeMap::from([
            ("KINESIS_STREAM_NAME", "lca".to_string()),
            (
                "KVS_IDLE_TIMEOUT",
                millis(scaled(Duration::from_secs(15)), 500),
            ),
            (
                "START_STREAM_RETRY_WAIT",
                millis(scaled(Duration::from_secs(1)), 20),
            ),
            // Catching up assumes Transcribe takes a second of audio per second: here, per
            // 1/speed of a second.
            (
                "TRANSCRIBE_AUDIO_SECOND_TAKES",
                millis(scaled(Duration::from_secs(1)), 1),
            ),
        ]);
        let config = TranscriberConfig::from_lookup(|name| env.get(name).cloned())
            .map_err(|e| e.to_string())?;
        let pipeline = CallPipeline {
            config,
            clients: Clients {
                kvs: KvsClients::new(&local_aws::sdk_config(&kvs_server.url())),
                transcribe: aws_sdk_transcribestreaming::Client::new(&local_aws::sdk_config(
                    &transcribe_server.url(),
                )),
                kinesis: aws_sdk_kinesis::Client::new(&local_aws::sdk_config(
                    &kinesis_server.url(),
                )),
            },
        };
        Ok(Self {
            speed,
            kvs,
            transcribe,
            kinesis,
            pipeline,
            played_at: None,
            _servers: [kvs_server, transcribe_server, kinesis_server],
        })
    }

    /// Plays the sample call tiled to `minutes` live into stream `id` (contact `id`); returns
    /// the call to run, from its first fragment (as a contact-flow event names it).
    pub async fn play(&mut self, id: &str, minutes: u64) -> Result<CallSpec, String> {
        let fragments = crate::tiled_call(id, minutes)?;
        let arn = self.kvs.create_stream(id).map_err(|e| e.to_string())?;
        self.played_at.get_or_insert_with(SystemTime::now);
        self.kvs.play(id, fragments, self.speed);
        for _ in 0..500 {
            let numbers = self.kvs.fragment_numbers(id).map_err(|e| e.to_string())?;
            if let Some(first) = numbers.first() {
                return Ok(CallSpec::new(
                    id,
                    id,
                    &arn,
                    StartAt::Fragment(first.clone()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!("{id}: no fragment on the stream within 5 s"))
    }

    /// The finals and ENDs on the Kinesis stream so far.
    pub fn published(&self) -> Result<Published, String> {
        let played_at = self.played_at.unwrap_or_else(SystemTime::now);
        let mut published = Published::default();
        for record in self.kinesis.records("lca", 0).unwrap_or_default() {
            let value: Value = serde_json::from_slice(&record.data).map_err(|e| e.to_string())?;
            let id = record.partition_key.clone();
            match value["EventType"].as_str() {
                Some("END") => {
                    published.ended.insert(id);
                }
                Some("ADD_TRANSCRIPT_SEGMENT") if value["IsPartial"] == false => {
                    let ms =
                        |key: &str| (value[key].as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
                    let (start, end) = (ms("StartTime"), ms("EndTime"));
                    let channel = value["Channel"].as_str().unwrap_or("?").to_string();
                    // When the segment's audio ended in the live playback (wall time).
                    let spoken =
                        played_at + Duration::from_millis(end.max(0) as u64).div_f64(self.speed);
                    let late = record
                        .arrived
                        .duration_since(spoken)
                        .unwrap_or_default()
                        .as_secs_f64()
                        * self.speed;
                    published
                        .finals
                        .entry(id)
                        .or_default()
                        .push(((channel, start, end), late));
                }
                _ => {}
            }
        }
        Ok(published)
    }
}

/// Of `expected`, how many are not in `got` ([`same_final`]), and how many finals `got`
/// holds more than once.
pub fn lost_and_repeated<'a>(
    got: &[Final],
    expected: impl IntoIterator<Item = &'a Final>,
) -> (usize, usize) {
    let lost = expected
        .into_iter()
        .filter(|e| !got.iter().any(|f| same_final(f, e)))
        .count();
    let unique: BTreeSet<&Final> = got.iter().collect();
    (lost, got.len() - unique.len())
}

/// Two finals are the same segment: same channel, times within 20 ms.
pub fn same_final(a: &Final, b: &Final) -> bool {
    a.0 == b.0 && (a.1 - b.1).abs() <= 20 && (a.2 - b.2).abs() <= 20
}

/// What one live call put on Kinesis.
#[derive(Debug)]
pub struct CallRun {
    /// Its finals in stream order, each with how far behind the live call it reached Kinesis
    /// (call seconds).
    pub finals: Vec<(Final, f64)>,
    /// Its END is on the stream.
    pub ended: bool,
    /// Transcribe streams opened.
    pub sessions: u32,
    /// Lanes its audio went through (more than one: it caught up after falling behind).
    pub lanes: u32,
}

/// Plays the sample call tiled to `minutes` live at `speed` times real time against a
/// Transcribe that processes at the same speed (real time, in the call's clock), its streams
/// refused over the call's first `stall` (call time) and `faults` injected into its sessions
/// in order; runs the call through the pipeline and returns what reached Kinesis.
pub async fn live_call(
    id: &str,
    minutes: u64,
    speed: f64,
    stall: Duration,
    faults: &[TranscribeFault],
) -> Result<CallRun, String> {
    let mut stand_ins = PacedStandIns::start(
        speed,
        TranscribeOptions {
            record_audio: false,
            pace: Pace {
                speed: Some(speed),
                unavailable_for: stall.div_f64(speed),
            },
            ..TranscribeOptions::default()
        },
    )
    .await?;
    for fault in faults {
        stand_ins.transcribe.inject(fault.clone());
    }
    let spec = stand_ins.play(id, minutes).await?;
    let outcome = stand_ins
        .pipeline
        .run(spec, Taps::default())
        .await
        .map_err(|e| format!("{id}: {e}"))?;
    let mut published = stand_ins.published()?;
    Ok(CallRun {
        finals: published.finals.remove(id).unwrap_or_default(),
        ended: published.ended.contains(id),
        sessions: outcome.transcription.sessions,
        lanes: outcome.transcription.lanes,
    })
}

/// A run's finals against a reference run's.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Finals of the reference not published.
    pub lost: usize,
    /// Finals published more than once.
    pub repeated: usize,
    /// Finals that start before one of the same channel published ahead of them.
    pub out_of_order: usize,
    /// How long after the call's end (`call_end_ms`) the last final reached Kinesis (call
    /// seconds; 0 when before).
    pub after_end: f64,
}

impl CallRun {
    /// This run's finals against `reference`'s, for a call of `call_end_ms`.
    pub fn compare(&self, reference: &CallRun, call_end_ms: i64) -> Comparison {
        let got: Vec<Final> = self.finals.iter().map(|(f, _)| f.clone()).collect();
        let (lost, repeated) = lost_and_repeated(&got, reference.finals.iter().map(|(f, _)| f));
        let mut latest_start: BTreeMap<&str, i64> = BTreeMap::new();
        let mut out_of_order = 0;
        for (channel, start, _) in &got {
            let latest = latest_start.entry(channel.as_str()).or_insert(*start);
            if *start < *latest {
                out_of_order += 1;
            }
            *latest = (*latest).max(*start);
        }
        let after_end = self
            .finals
            .iter()
            .map(|((_, _, end), late)| *late - (call_end_ms - end) as f64 / 1000.0)
            .fold(0.0, f64::max);
        Comparison {
            lost,
            repeated,
            out_of_order,
            after_end,
        }
    }
}
