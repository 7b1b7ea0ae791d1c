//! What the demo and `try-stack` share: the call that plays (`DemoCall`: the sample call or a
//! capture), the contact-flow event that starts it, the terminal view of its LCA events
//! (`TranscriptView`) and `lca-kvs function NAME`, which serves a function under the Lambda
//! Runtime API. Nothing here needs the local stand-ins.

// Without the stand-ins (no `demo`), the demo's parts (a capture as the call, the summary)
// are unused.
#![cfg_attr(not(feature = "stand-ins"), allow(dead_code))]

use std::io::{IsTerminal, Write};

use anyhow::{Context, Result};
use aws_edge::now_ms;
use bytes::Bytes;
use kvs_media::{ConnectWriter, FragmentReader, WriterOptions};
use lca_kvs::inspect::Inspector;
use lca_kvs::sample_call::{self, SampleCall, Speaker};
use lca_kvs::wer::WordErrors;
use serde_json::{Value, json};

/// What plays into KVS.
pub(crate) struct DemoCall {
    pub(crate) fragments: Vec<Bytes>,
    pub(crate) contact_id: String,
    /// The script, when it is the sample call.
    pub(crate) sample: Option<SampleCall>,
}

/// Runs `lca-kvs function NAME`: one of the Lambda functions, served under the Runtime API.
pub fn serve_function(name: &str) -> Result<()> {
    aws_edge::json_logs();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        match name {
            "start-lca" => start_lca::serve().await,
            "call-transcriber" => call_transcriber::lambda::serve().await,
            other => Err(
                format!("no function {other:?} (expected start-lca or call-transcriber)").into(),
            ),
        }
    });
    served.map_err(|error| anyhow::anyhow!("function {name}: {error}"))
}

/// The sample call (spoken by espeak-ng) as Connect fragments of contact `contact_id`,
/// starting now.
pub(crate) fn sample(contact_id: String) -> Result<DemoCall> {
    let sample = sample_call::synthesize()?;
    let mut writer = ConnectWriter::new(WriterOptions {
        contact_id: contact_id.clone(),
        ..WriterOptions::default()
    });
    let fragments = writer
        .call(&sample.caller, &sample.agent, now_ms())
        .into_iter()
        .map(Bytes::from)
        .collect();
    Ok(DemoCall {
        fragments,
        contact_id,
        sample: Some(sample),
    })
}

/// A GetMedia capture as fragments, with its ContactId.
pub(crate) fn capture(path: &std::path::Path) -> Result<DemoCall> {
    let fragments = crate::read_capture(path)?;
    let mut reader = FragmentReader::new();
    let mut inspector = Inspector::new();
    let mut contact_id = None;
    for fragment in &fragments {
        reader.push(fragment);
    }
    reader.end_of_input();
    while contact_id.is_none() {
        let event = reader
            .next_event()
            .with_context(|| format!("{}: unreadable", path.display()))?;
        let Some(event) = event else { break };
        if let Some(summary) = inspector.handle(&event) {
            contact_id = summary.contact_id;
        }
    }
    if contact_id.is_none() {
        contact_id = inspector.finish().and_then(|summary| summary.contact_id);
    }
    let contact_id = contact_id.with_context(|| {
        format!(
            "{}: no ContactId tag in its fragments (not a Connect media stream capture)",
            path.display()
        )
    })?;
    Ok(DemoCall {
        fragments,
        contact_id,
        sample: None,
    })
}

/// The event the contact flow's "Invoke AWS Lambda function" block sends StartLCA for a
/// contact whose customer audio streams to `stream_arn` from `start_fragment`.
pub(crate) fn contact_flow_event(
    contact_id: &str,
    instance_arn: &str,
    stream_arn: &str,
    start_fragment: &str,
    start_ms: u64,
) -> Value {
    json!({
        "Name": "ContactFlowEvent",
        "Details": {
            "ContactData": {
                "ContactId": contact_id, "InitialContactId": contact_id,
                "Channel": "VOICE", "InstanceARN": instance_arn,
                "CustomerEndpoint": {"Address": "+15550100001", "Type": "TELEPHONE_NUMBER"},
                "SystemEndpoint": {"Address": "+15550100002", "Type": "TELEPHONE_NUMBER"},
                "MediaStreams": {"Customer": {"Audio": {
                    "StreamARN": stream_arn,
                    "StartFragmentNumber": start_fragment,
                    "StartTimestamp": start_ms.to_string(),
                }}}
            },
            "Parameters": {}
        }
    })
}

/// The Transcribe settings a call used, from START's metadata: mode, language (or the
/// options identified among), vocabulary, filter, redaction, post-call analytics, and which
/// came from contact attributes.
fn settings_line(metadata: &Value) -> Option<String> {
    let used = metadata.get("TranscribeSettings")?;
    let get = |name: &str| used.get(name).and_then(Value::as_str);
    let mut parts = vec![format!("mode {}", get("TRANSCRIBE_API_MODE")?)];
    let language = get("TRANSCRIBE_LANGUAGE_CODE")?;
    parts.push(match get("TRANSCRIBE_LANGUAGE_OPTIONS") {
        Some(options) => format!("language {language} among {options}"),
        None => format!("language {language}"),
    });
    parts.push(format!(
        "vocabulary {}",
        get("CUSTOM_VOCABULARY_NAME").unwrap_or("none")
    ));
    parts.push(match get("CUSTOM_VOCABULARY_FILTER_NAME") {
        Some(filter) => format!(
            "filter {filter} ({})",
            get("CUSTOM_VOCABULARY_FILTER_METHOD").unwrap_or("mask")
        ),
        None => "filter none".to_string(),
    });
    parts.push(match get("IS_CONTENT_REDACTION_ENABLED") {
        Some("true") => format!(
            "redaction {} of {}",
            get("CONTENT_REDACTION_TYPE").unwrap_or("PII"),
            get("PII_ENTITY_TYPES").unwrap_or("ALL")
        ),
        _ => "redaction off".to_string(),
    });
    if let Some(post_call) = get("IS_TCA_POST_CALL_ANALYTICS_ENABLED") {
        parts.push(format!(
            "post-call analytics {}",
            if post_call == "true" { "on" } else { "off" }
        ));
    }
    let chosen: Vec<&str> = metadata
        .get("TranscribeSettingsFromContactAttributes")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    parts.push(if chosen.is_empty() {
        "all from the stack".to_string()
    } else {
        format!("from contact attributes: {}", chosen.join(", "))
    });
    Some(parts.join("; "))
}

/// A ContactId no earlier run used (a random version 4 UUID, as Connect's are).
pub(crate) fn fresh_contact_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The object key of a recording URL (`https://HOST/KEY`).
pub(crate) fn recording_key(url: &str) -> Option<&str> {
    url.strip_prefix("https://")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, key)| key)
        .filter(|key| !key.is_empty())
}

/// A final segment as shown.
pub(crate) struct FinalSegment {
    pub(crate) speaker: Speaker,
    start_s: f64,
    text: String,
    /// Seconds from the end of its speech (as played) to its arrival on Kinesis.
    latency_s: Option<f64>,
}

/// The terminal view of the LCA events: the transcript (partials updated in place on a
/// terminal) or the raw events.
pub(crate) struct TranscriptView {
    json: bool,
    live: bool,
    speed: f64,
    partial_shown: bool,
    partials: usize,
    pub(crate) finals: Vec<FinalSegment>,
    categories: Vec<String>,
    pub(crate) started: bool,
    pub(crate) ended: bool,
    call_id: String,
    pub(crate) recording_url: Option<String>,
    /// START's metadata: the Transcribe settings the call used, and which of them its
    /// contact attributes chose.
    settings: Option<Value>,
}

impl TranscriptView {
    pub(crate) fn new(json: bool, speed: f64) -> Self {
        Self {
            json,
            live: std::io::stdout().is_terminal(),
            speed,
            partial_shown: false,
            partials: 0,
            finals: Vec::new(),
            categories: Vec::new(),
            started: false,
            ended: false,
            call_id: String::new(),
            recording_url: None,
            settings: None,
        }
    }

    /// Shows one LCA event, which arrived on Kinesis `arrived_s` seconds after the call
    /// began to play.
    pub(crate) fn show(&mut self, record: &Value, arrived_s: f64) -> Result<()> {
        let mut out = std::io::stdout().lock();
        if self.json {
            writeln!(out, "{record}")?;
        }
        let line = match record["EventType"].as_str().unwrap_or("") {
            "START" => {
                self.started = true;
                self.settings = record["Metadatajson"]
                    .as_str()
                    .and_then(|m| serde_json::from_str(m).ok());
                self.call_id = record["CallId"].as_str().unwrap_or("").to_string();
                Some(format!("call started: CallId {}", self.call_id))
            }
            "ADD_TRANSCRIPT_SEGMENT" => self.segment(record, arrived_s),
            "ADD_CALL_CATEGORY" => {
                let names = record["CategoryEvent"]["MatchedCategories"].to_string();
                self.categories.push(names.clone());
                Some(format!("category matched: {names}"))
            }
            "END" => {
                self.ended = true;
                Some("call ended".to_string())
            }
            "ADD_S3_RECORDING_URL" => {
                let url = record["RecordingUrl"].as_str().unwrap_or("").to_string();
                self.recording_url = Some(url.clone());
                Some(format!("recording: {url}"))
            }
            _ => None,
        };
        if self.json {
            return Ok(());
        }
        match line {
            Some(line) if line.starts_with('\r') => {
                // A partial: rewrite the current line.
                write!(out, "{line}\x1b[K")?;
                self.partial_shown = true;
            }
            Some(line) => {
                if self.partial_shown {
                    write!(out, "\r\x1b[K")?;
                    self.partial_shown = false;
                }
                writeln!(out, "{line}")?;
            }
            None => {}
        }
        out.flush()?;
        Ok(())
    }

    /// A segment's line: `\r...` for a partial (only on a terminal), the final line otherwise.
    fn segment(&mut self, record: &Value, arrived_s: f64) -> Option<String> {
        // Standard segments carry the fields; Call Analytics ones the UtteranceEvent.
        let (speaker, start_s, end_s, text, partial) = match record.get("UtteranceEvent") {
            Some(utterance) => (
                utterance["ParticipantRole"].as_str() == Some("AGENT"),
                utterance["BeginOffsetMillis"].as_f64().unwrap_or(0.0) / 1000.0,
                utterance["EndOffsetMillis"].as_f64().unwrap_or(0.0) / 1000.0,
                utterance["Transcript"].as_str().unwrap_or(""),
                utterance["IsPartial"].as_bool().unwrap_or(false),
            ),
            None => (
                record["Channel"].as_str() == Some("AGENT"),
                record["StartTime"].as_f64().unwrap_or(0.0),
                record["EndTime"].as_f64().unwrap_or(0.0),
                record["Transcript"].as_str().unwrap_or(""),
                record["IsPartial"].as_bool().unwrap_or(false),
            ),
        };
        let speaker = if speaker {
            Speaker::Agent
        } else {
            Speaker::Caller
        };
        let label = match speaker {
            Speaker::Caller => "Caller",
            Speaker::Agent => "Agent ",
        };
        if partial {
            self.partials += 1;
            return self
                .live
                .then(|| format!("\r[{start_s:6.1} s] {label} … {text}"));
        }
        let latency_s = (self.speed > 0.0).then(|| arrived_s - end_s / self.speed);
        self.finals.push(FinalSegment {
            speaker,
            start_s,
            text: text.to_string(),
            latency_s,
        });
        Some(format!("[{start_s:6.1} s] {label}: {text}"))
    }

    pub(crate) fn finish_line(&mut self) -> Result<()> {
        if self.partial_shown && !self.json {
            let mut out = std::io::stdout().lock();
            write!(out, "\r\x1b[K")?;
            out.flush()?;
        }
        Ok(())
    }

    pub(crate) fn summary(&mut self, sample: Option<&SampleCall>, engine: &str, recording: &str) {
        let count = |speaker: Speaker| self.finals.iter().filter(|f| f.speaker == speaker).count();
        eprintln!();
        eprintln!("Summary");
        eprintln!("  call:       CallId {}", self.call_id);
        if let Some(line) = self.settings.as_ref().and_then(settings_line) {
            eprintln!("  transcribe: {line}");
        }
        eprintln!(
            "  segments:   {} final (caller {}, agent {}), {} partial updates{}",
            self.finals.len(),
            count(Speaker::Caller),
            count(Speaker::Agent),
            self.partials,
            if self.categories.is_empty() {
                String::new()
            } else {
                format!(", categories {}", self.categories.join(" "))
            }
        );
        let mut latencies: Vec<f64> = self.finals.iter().filter_map(|f| f.latency_s).collect();
        latencies.sort_by(f64::total_cmp);
        match latencies.len() {
            0 => eprintln!(
                "  latency:    not measured at --speed 0 (the whole call is in KVS at once)"
            ),
            n => eprintln!(
                "  latency:    end of speech to final segment on Kinesis: median {:.2} s, max {:.2} s over {n} segments (includes the recognizer's wait for the end of speech: 0.6 s in the local ones)",
                latencies[n / 2],
                latencies[n - 1]
            ),
        }
        if let Some(sample) = sample {
            self.finals.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
            for speaker in [Speaker::Caller, Speaker::Agent] {
                let heard: Vec<&str> = self
                    .finals
                    .iter()
                    .filter(|f| f.speaker == speaker)
                    .map(|f| f.text.as_str())
                    .collect();
                let errors = WordErrors::between(&sample.said_by(speaker), &heard.join(" "));
                eprintln!(
                    "  WER {}: {:.1}% ({} errors in {} words of the script; {engine})",
                    match speaker {
                        Speaker::Caller => "caller",
                        Speaker::Agent => "agent ",
                    },
                    errors.rate() * 100.0,
                    errors.errors,
                    errors.reference_words
                );
            }
        }
        eprintln!("  recording:  {recording}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_contact_ids_are_distinct_version_4_uuids() {
        let (a, b) = (fresh_contact_id(), fresh_contact_id());
        assert_ne!(a, b);
        for id in [a, b] {
            let groups: Vec<&str> = id.split('-').collect();
            let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
            assert_eq!(lengths, [8, 4, 4, 4, 12], "{id}");
            assert!(groups[2].starts_with('4'), "version 4: {id}");
            assert!(
                matches!(&groups[3][..1], "8" | "9" | "a" | "b"),
                "variant: {id}"
            );
            assert!(
                id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
                "{id}"
            );
        }
    }

    #[test]
    fn the_recording_key_is_the_path_of_its_url() {
        assert_eq!(
            recording_key("https://b.s3.us-east-1.amazonaws.com/lca-audio-recordings/c.wav"),
            Some("lca-audio-recordings/c.wav")
        );
        assert_eq!(recording_key("https://b.s3.amazonaws.com/"), None);
        assert_eq!(recording_key("s3://b/k.wav"), None);
    }

    #[test]
    fn segments_of_both_modes_become_lines_finals_and_latencies() {
        let mut view = TranscriptView::new(false, 2.0);
        view.live = true;
        let standard = |partial: bool| {
            json!({"EventType": "ADD_TRANSCRIPT_SEGMENT", "Channel": "CALLER",
                   "StartTime": 1.5, "EndTime": 3.0, "Transcript": "hello there",
                   "IsPartial": partial})
        };
        assert_eq!(
            view.segment(&standard(true), 1.0).as_deref(),
            Some("\r[   1.5 s] Caller … hello there")
        );
        assert_eq!(
            view.segment(&standard(false), 2.25).as_deref(),
            Some("[   1.5 s] Caller: hello there")
        );
        let analytics = json!({"EventType": "ADD_TRANSCRIPT_SEGMENT", "UtteranceEvent": {
            "ParticipantRole": "AGENT", "BeginOffsetMillis": 4000, "EndOffsetMillis": 5000,
            "Transcript": "how can I help", "IsPartial": false}});
        assert_eq!(
            view.segment(&analytics, 3.0).as_deref(),
            Some("[   4.0 s] Agent : how can I help")
        );
        assert_eq!(view.partials, 1);
        let finals: Vec<(Speaker, Option<f64>)> = view
            .finals
            .iter()
            .map(|f| (f.speaker, f.latency_s))
            .collect();
        // At speed 2 the caller's speech ended 1.5 s into the play, the agent's 2.5 s.
        assert_eq!(
            finals,
            [(Speaker::Caller, Some(0.75)), (Speaker::Agent, Some(0.5))]
        );
        // Piped (not a terminal), partials are not shown.
        view.live = false;
        assert_eq!(view.segment(&standard(true), 1.0), None);
    }
}
