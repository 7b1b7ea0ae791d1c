//! The metrics lines (CloudWatch EMF, [`call_metrics`]) of a transcriber invocation: while its
//! call runs, one at least every `METRICS_INTERVAL` with what the run did since the last
//! ([`InvocationFigures::progress_records`]); at its end, one with how it ended and the rest
//! ([`InvocationFigures::records`]). So the counts add up to the invocation's, and one that
//! times out or crashes has lost at most an interval. Built from plain values, so it is tested
//! without a Lambda.

use std::collections::BTreeMap;
use std::time::Duration;

use call_metrics::{Dimension, EmfRecord, Metric};
use serde_json::Value;

use crate::error::HandlerError;

/// What one invocation did, gathered as it runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InvocationFigures {
    /// The call, once known.
    pub call_id: Option<String>,
    /// Its invocation count (0 for the first).
    pub lambda_count: Option<u32>,
    /// This invocation published the call's START.
    pub started: bool,
    /// This invocation gave the call up (its last attempt failed).
    pub gave_up: bool,
    /// This invocation was a rescue delivery of the sweep.
    pub rescued: bool,
    /// The calls this invocation's sweep delivered again, by reason.
    pub rescues: Vec<&'static str>,
    /// The run's figures, once it has run.
    pub run: Option<RunFigures>,
    /// What the progress lines written while the run went on have reported of them.
    pub reported: RunFigures,
    /// The recording's size, when this invocation ended the call with one.
    pub recording_bytes: Option<u64>,
    /// What became of the call's post-call analytics, when this invocation ended the call
    /// with analytics on.
    pub post_call: Option<PostCallFigure>,
}

/// What became of a call's post-call analytics job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostCallFigure {
    /// This invocation started the job.
    Started,
    /// An earlier attempt had started it (counted then).
    AlreadyStarted,
    /// The call is too short to analyse.
    NothingToAnalyse,
    /// The call is left without analytics (refused, or too long).
    Missed,
}

/// A pipeline run's figures, so far or in all ([`crate::progress::RunProgress`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFigures {
    /// Call audio assembled, in samples.
    pub samples: u64,
    /// Transcript lags (audio arrival to Kinesis acknowledgement), per final segment.
    pub transcript_lags: Vec<Duration>,
    /// How far behind the stream's newest data the reading was, at most.
    pub kvs_behind_ms: Option<u64>,
    /// How far the audio given to Transcribe was behind the call's live edge when the
    /// figures were taken.
    pub behind_live: Option<Duration>,
    /// Transcribe streams opened.
    pub sessions: u32,
    /// Time spent waiting for Transcribe capacity.
    pub capacity_wait: Duration,
    /// Records Kinesis acknowledged.
    pub events: u64,
    /// Kinesis requests retried.
    pub kinesis_retries: u64,
    /// KVS error chunks that reading resumed after, by id.
    pub transient_kvs_errors: BTreeMap<String, u32>,
}

impl InvocationFigures {
    /// Every metrics line of the invocation: [`Self::record`], then one per id of KVS error
    /// that reading resumed after (a line has one value per dimension: `KvsErrors` by
    /// `ErrorId` for the id).
    pub fn records(
        &self,
        result: &Result<Value, HandlerError>,
        timestamp_ms: u64,
    ) -> Vec<EmfRecord> {
        let mut records = vec![self.record(result, timestamp_ms)];
        // One line per reason: a line has one value per dimension.
        let mut rescues: BTreeMap<&str, u32> = BTreeMap::new();
        for reason in &self.rescues {
            *rescues.entry(reason).or_default() += 1;
        }
        for (reason, count) in rescues {
            let mut record = EmfRecord::new(timestamp_ms);
            record
                .dimension(Dimension::Reason, reason)
                .add(Metric::CallsRescued, f64::from(count));
            records.push(record);
        }
        if let Some(run) = &self.run {
            records.extend(self.resumed_records(run, &self.reported, timestamp_ms));
        }
        records
    }

    /// The metrics lines of a run still going on, `now` its figures so far: what it did
    /// since `reported` (what the last progress lines said), and how far behind the live
    /// call it is. A line of its own without `Invocations`, marked `"Progress": true`.
    pub fn progress_records(
        &self,
        now: &RunFigures,
        reported: &RunFigures,
        timestamp_ms: u64,
    ) -> Vec<EmfRecord> {
        let mut record = EmfRecord::new(timestamp_ms);
        self.identify(&mut record);
        record.member("Progress", true);
        add_run(&mut record, now, reported);
        let mut records = vec![record];
        records.extend(self.resumed_records(now, reported, timestamp_ms));
        records
    }

    /// One line per id of KVS error that reading resumed after since `before` (a line has
    /// one value per dimension: `KvsErrors` by `ErrorId` for the id).
    fn resumed_records(
        &self,
        run: &RunFigures,
        before: &RunFigures,
        timestamp_ms: u64,
    ) -> Vec<EmfRecord> {
        let mut records = Vec::new();
        for (id, count) in &run.transient_kvs_errors {
            let earlier = before.transient_kvs_errors.get(id).copied().unwrap_or(0);
            let count = count.saturating_sub(earlier);
            if count == 0 {
                continue;
            }
            let mut record = EmfRecord::new(timestamp_ms);
            record
                .dimension(Dimension::ErrorId, id.as_str())
                .add(Metric::KvsErrors, f64::from(count))
                .member("Resumed", true);
            self.identify(&mut record);
            records.push(record);
        }
        records
    }

    /// The call's id and invocation count as plain members of `record`.
    fn identify(&self, record: &mut EmfRecord) {
        if let Some(call_id) = &self.call_id {
            record.member("CallId", call_id.as_str());
        }
        if let Some(count) = self.lambda_count {
            record.member("LambdaCount", count);
        }
    }

    /// The invocation's metrics line, given how it ended.
    pub fn record(&self, result: &Result<Value, HandlerError>, timestamp_ms: u64) -> EmfRecord {
        let mut record = EmfRecord::new(timestamp_ms);
        record.add(Metric::Invocations, 1.0);
        self.identify(&mut record);
        match result {
            Ok(answer) => {
                let status = answer["status"].as_str().unwrap_or("UNKNOWN");
                record.dimension(Dimension::Outcome, status);
                match status {
                    "ENDED" => {
                        record.add(Metric::CallsEnded, 1.0);
                    }
                    "CUT" => {
                        record.add(Metric::CallsCut, 1.0);
                    }
                    // What the service lacked (TranscribeCapacity, TranscribeStuck, Kinesis),
                    // for Logs Insights: a member, so the alarm's dimensions stay as they are.
                    "STALLED" => {
                        if let Some(reason) = answer["reason"].as_str() {
                            record.member("StallReason", reason);
                        }
                    }
                    _ => {}
                }
            }
            Err(error) => {
                let outcome = if self.gave_up { "GAVE_UP" } else { "FAILED" };
                record
                    .dimension(Dimension::Outcome, outcome)
                    .dimension(Dimension::Reason, error.reason().as_str())
                    .add(Metric::InvocationsFailed, 1.0);
                if self.gave_up {
                    record.add(Metric::CallsFailed, 1.0);
                    if self.rescued {
                        record.add(Metric::RescuedCallsGivenUp, 1.0);
                    }
                }
                if let Some(id) = error.kvs_error_id() {
                    record
                        .dimension(Dimension::ErrorId, id)
                        .add(Metric::KvsErrors, 1.0);
                }
            }
        }
        if self.started {
            record.add(Metric::CallsStarted, 1.0);
        }
        if let Some(run) = &self.run {
            add_run(&mut record, run, &self.reported);
        }
        if let Some(bytes) = self.recording_bytes {
            record.add(Metric::RecordingBytes, bytes as f64);
        }
        match self.post_call {
            Some(PostCallFigure::Started) => {
                record.add(Metric::PostCallAnalyticsJobs, 1.0);
            }
            Some(PostCallFigure::Missed) => {
                record.add(Metric::PostCallAnalyticsMissed, 1.0);
            }
            Some(PostCallFigure::AlreadyStarted | PostCallFigure::NothingToAnalyse) | None => {}
        }
        record
    }
}

/// Adds what a run did since `before` (its figures when last reported; default: nothing
/// yet) to `record`, with the gauges (how far behind) as they are in `run`.
fn add_run(record: &mut EmfRecord, run: &RunFigures, before: &RunFigures) {
    let ms = |d: &Duration| d.as_micros() as f64 / 1000.0;
    let reconnects = |figures: &RunFigures| figures.sessions.saturating_sub(1);
    let new_lags = run
        .transcript_lags
        .get(before.transcript_lags.len()..)
        .unwrap_or_default();
    record
        .add(
            Metric::AudioSeconds,
            run.samples.saturating_sub(before.samples) as f64
                / f64::from(call_audio::CONNECT_SAMPLE_RATE),
        )
        .add_all(Metric::TranscriptLag, new_lags.iter().map(ms))
        .add(
            Metric::TranscribeReconnects,
            f64::from(reconnects(run).saturating_sub(reconnects(before))),
        )
        .add(
            Metric::TranscribeCapacityWait,
            ms(&run.capacity_wait.saturating_sub(before.capacity_wait)),
        )
        .add(
            Metric::EventsPublished,
            run.events.saturating_sub(before.events) as f64,
        )
        .add(
            Metric::KinesisRetries,
            run.kinesis_retries.saturating_sub(before.kinesis_retries) as f64,
        );
    if let Some(behind) = run.kvs_behind_ms {
        record.add(Metric::KvsBehindLive, behind as f64);
    }
    if let Some(behind) = run.behind_live {
        record.add(Metric::TranscriptBehindLive, ms(&behind));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::PipelineError;
    use crate::source::KvsStreamError;
    use crate::source::SourceError;
    use serde_json::json;

    fn kvs_error(id: &str) -> kvs_media::KvsError {
        kvs_media::KvsError {
            id: id.to_string(),
            code: "described".to_string(),
        }
    }

    fn extracted(record: &EmfRecord) -> Vec<call_metrics::Extracted> {
        call_metrics::validate(&record.to_line()).unwrap()
    }

    fn value(record: &EmfRecord, name: &str, dimensions: &[(&str, &str)]) -> Option<Vec<f64>> {
        let dimensions: Vec<(String, String)> = dimensions
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        extracted(record)
            .into_iter()
            .find(|e| e.name == name && e.dimensions == dimensions)
            .map(|e| e.values)
    }

    #[test]
    fn an_invocation_that_ends_the_call_reports_its_audio_lag_and_recording() {
        let figures = InvocationFigures {
            call_id: Some("c-1".into()),
            lambda_count: Some(2),
            run: Some(RunFigures {
                samples: 8000 * 90,
                transcript_lags: vec![Duration::from_millis(900), Duration::from_millis(1500)],
                kvs_behind_ms: Some(120),
                behind_live: Some(Duration::from_millis(4_000)),
                sessions: 2,
                capacity_wait: Duration::from_millis(2500),
                events: 40,
                kinesis_retries: 3,
                transient_kvs_errors: BTreeMap::new(),
            }),
            recording_bytes: Some(1_440_044),
            post_call: Some(PostCallFigure::Started),
            ..InvocationFigures::default()
        };
        let record = figures.record(&Ok(json!({"status": "ENDED"})), 1);
        assert_eq!(
            value(&record, "PostCallAnalyticsJobs", &[]),
            Some(vec![1.0])
        );
        assert_eq!(value(&record, "PostCallAnalyticsMissed", &[]), None);
        let missed = InvocationFigures {
            post_call: Some(PostCallFigure::Missed),
            ..figures.clone()
        }
        .record(&Ok(json!({"status": "ENDED"})), 1);
        assert_eq!(
            value(&missed, "PostCallAnalyticsMissed", &[]),
            Some(vec![1.0])
        );
        assert_eq!(value(&missed, "PostCallAnalyticsJobs", &[]), None);
        let again = InvocationFigures {
            post_call: Some(PostCallFigure::AlreadyStarted),
            ..figures.clone()
        }
        .record(&Ok(json!({"status": "ENDED"})), 1);
        assert_eq!(
            value(&again, "PostCallAnalyticsJobs", &[]),
            None,
            "counted once"
        );
        assert_eq!(
            value(&record, "Invocations", &[("Outcome", "ENDED")]),
            Some(vec![1.0])
        );
        assert_eq!(value(&record, "CallsEnded", &[]), Some(vec![1.0]));
        assert_eq!(value(&record, "CallsStarted", &[]), None);
        assert_eq!(value(&record, "AudioSeconds", &[]), Some(vec![90.0]));
        assert_eq!(
            value(&record, "TranscriptLag", &[]),
            Some(vec![900.0, 1500.0])
        );
        assert_eq!(value(&record, "KvsBehindLive", &[]), Some(vec![120.0]));
        assert_eq!(
            value(&record, "TranscriptBehindLive", &[]),
            Some(vec![4000.0])
        );
        assert_eq!(value(&record, "TranscribeReconnects", &[]), Some(vec![1.0]));
        assert_eq!(
            value(&record, "TranscribeCapacityWait", &[]),
            Some(vec![2500.0])
        );
        assert_eq!(value(&record, "EventsPublished", &[]), Some(vec![40.0]));
        assert_eq!(value(&record, "KinesisRetries", &[]), Some(vec![3.0]));
        assert_eq!(
            value(&record, "RecordingBytes", &[]),
            Some(vec![1_440_044.0])
        );
        let line: Value = serde_json::from_str(&record.to_line()).unwrap();
        assert_eq!(
            (line["CallId"].as_str(), line["LambdaCount"].as_u64()),
            (Some("c-1"), Some(2))
        );
    }

    #[test]
    fn a_kvs_error_on_the_last_attempt_is_a_failed_call_by_reason_and_id() {
        let error = HandlerError::Pipeline(PipelineError::Source(SourceError::Stream(
            KvsStreamError::new("arn:s", &kvs_error("4500")),
        )));
        let figures = InvocationFigures {
            gave_up: true,
            ..InvocationFigures::default()
        };
        let record = figures.record(&Err(error), 1);
        assert_eq!(
            value(&record, "CallsFailed", &[("Reason", "KvsStream")]),
            Some(vec![1.0])
        );
        assert_eq!(value(&record, "CallsFailed", &[]), Some(vec![1.0]));
        assert_eq!(
            value(&record, "InvocationsFailed", &[("Reason", "KvsStream")]),
            Some(vec![1.0])
        );
        assert_eq!(
            value(&record, "KvsErrors", &[("ErrorId", "4500")]),
            Some(vec![1.0])
        );
        assert_eq!(
            value(&record, "Invocations", &[("Outcome", "GAVE_UP")]),
            Some(vec![1.0])
        );
        // An attempt that Lambda will retry is a failed invocation, not a failed call.
        let error = HandlerError::Pipeline(PipelineError::Source(SourceError::Stream(
            KvsStreamError::new("arn:s", &kvs_error("9999")),
        )));
        let record = InvocationFigures::default().record(&Err(error), 1);
        assert_eq!(value(&record, "CallsFailed", &[]), None);
        assert_eq!(
            value(&record, "Invocations", &[("Outcome", "FAILED")]),
            Some(vec![1.0])
        );
        assert_eq!(
            value(&record, "KvsErrors", &[("ErrorId", "unlisted")]),
            Some(vec![1.0])
        );
    }

    #[test]
    fn kvs_errors_that_reading_resumed_after_are_counted_by_id_on_lines_of_their_own() {
        let figures = InvocationFigures {
            call_id: Some("c-1".into()),
            lambda_count: Some(1),
            run: Some(RunFigures {
                transient_kvs_errors: BTreeMap::from([("4503".into(), 1), ("5000".into(), 2)]),
                ..RunFigures::default()
            }),
            ..InvocationFigures::default()
        };
        let records = figures.records(&Ok(json!({"status": "CONTINUED"})), 1);
        assert_eq!(records.len(), 3);
        assert_eq!(
            value(&records[0], "Invocations", &[("Outcome", "CONTINUED")]),
            Some(vec![1.0])
        );
        assert_eq!(value(&records[0], "KvsErrors", &[]), None);
        assert_eq!(
            value(&records[1], "KvsErrors", &[("ErrorId", "4503")]),
            Some(vec![1.0])
        );
        assert_eq!(
            value(&records[2], "KvsErrors", &[("ErrorId", "5000")]),
            Some(vec![2.0])
        );
        for record in &records[1..] {
            let line: Value = serde_json::from_str(&record.to_line()).unwrap();
            assert_eq!(
                (line["CallId"].as_str(), line["Resumed"].as_bool()),
                (Some("c-1"), Some(true))
            );
        }
        // Retried errors that kept coming until the attempts ran out fail the invocation
        // under their id.
        let error = HandlerError::Pipeline(PipelineError::Source(SourceError::GetMedia {
            stream: "arn:s".into(),
            attempts: 5,
            kvs_error: Some("5000".into()),
            message: "KVS error 5000 (internal)".into(),
        }));
        assert_eq!(error.kvs_error_id(), Some("5000"));
        assert_eq!(error.reason().as_str(), "KvsRead");
        let records = InvocationFigures::default().records(&Err(error), 1);
        assert_eq!(records.len(), 1);
        assert_eq!(
            value(&records[0], "KvsErrors", &[("ErrorId", "5000")]),
            Some(vec![1.0])
        );
    }

    #[test]
    fn progress_lines_and_the_last_line_add_up_to_the_invocation() {
        // Two progress lines while the run goes on, then the invocation's end: every count
        // is reported once, the gauges as they were at each line.
        let figures_at = |seconds: u64, lags: usize, sessions: u32, resumed: u32| RunFigures {
            samples: seconds * 8000,
            transcript_lags: (0..lags as u64).map(Duration::from_millis).collect(),
            kvs_behind_ms: Some(seconds * 10),
            behind_live: Some(Duration::from_secs(seconds)),
            sessions,
            capacity_wait: Duration::from_millis(u64::from(sessions) * 100),
            events: seconds * 2,
            kinesis_retries: seconds / 10,
            transient_kvs_errors: BTreeMap::from([("4503".to_string(), resumed)]),
        };
        let mut invocation = InvocationFigures {
            call_id: Some("c-1".into()),
            lambda_count: Some(3),
            ..InvocationFigures::default()
        };
        let steps = [
            figures_at(60, 4, 1, 0),
            figures_at(120, 9, 2, 1),
            figures_at(150, 11, 2, 1),
        ];
        let mut lines = Vec::new();
        for now in &steps[..2] {
            lines.extend(invocation.progress_records(now, &invocation.reported, 1));
            invocation.reported = now.clone();
        }
        invocation.run = Some(steps[2].clone());
        lines.extend(invocation.records(&Ok(json!({"status": "CONTINUED"})), 1));
        let sum = |name: &str, dimensions: &[(&str, &str)]| -> f64 {
            lines
                .iter()
                .filter_map(|record| value(record, name, dimensions))
                .flatten()
                .sum()
        };
        assert_eq!(sum("AudioSeconds", &[]), 150.0);
        assert_eq!(sum("EventsPublished", &[]), 300.0);
        assert_eq!(sum("KinesisRetries", &[]), 15.0);
        assert_eq!(sum("TranscribeReconnects", &[]), 1.0);
        assert_eq!(sum("TranscribeCapacityWait", &[]), 200.0);
        assert_eq!(sum("KvsErrors", &[("ErrorId", "4503")]), 1.0);
        let lags: Vec<f64> = lines
            .iter()
            .filter_map(|record| value(record, "TranscriptLag", &[]))
            .flatten()
            .collect();
        assert_eq!(lags, (0..11).map(f64::from).collect::<Vec<_>>());
        let behind: Vec<f64> = lines
            .iter()
            .filter_map(|record| value(record, "TranscriptBehindLive", &[]))
            .flatten()
            .collect();
        assert_eq!(behind, vec![60_000.0, 120_000.0, 150_000.0]);
        // Only the last line counts the invocation; each progress line names the call.
        assert_eq!(sum("Invocations", &[("Outcome", "CONTINUED")]), 1.0);
        let first: Value = serde_json::from_str(&lines[0].to_line()).unwrap();
        assert_eq!(
            (
                first["CallId"].as_str(),
                first["LambdaCount"].as_u64(),
                first["Progress"].as_bool()
            ),
            (Some("c-1"), Some(3), Some(true))
        );
        assert_eq!(value(&lines[0], "Invocations", &[]), None);
    }

    #[test]
    fn each_failure_has_its_reason() {
        let cases = [
            (HandlerError::Event("x".into()), "Event"),
            (
                HandlerError::Pipeline(PipelineError::Undelivered {
                    call_id: "c".into(),
                    count: 1,
                    first: "throttled".into(),
                    refused: false,
                    reached: None,
                }),
                "Kinesis",
            ),
            (
                HandlerError::Hook {
                    function: "f".into(),
                    message: "m".into(),
                },
                "Hook",
            ),
            (
                HandlerError::HandOver {
                    call_id: "c".into(),
                    function: "f".into(),
                    message: "m".into(),
                },
                "HandOver",
            ),
        ];
        for (error, reason) in cases {
            assert_eq!(error.reason().as_str(), reason);
            assert_eq!(error.kvs_error_id(), None);
        }
    }
}
