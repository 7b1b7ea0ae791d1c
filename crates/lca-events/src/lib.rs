//! The messages LCA reads from its Kinesis data stream (partition key = CallId), and the pure
//! mapping from Transcribe Streaming results to them. No I/O and no clock: callers pass the
//! creation time, so the mapping is deterministic and testable.

pub mod connect;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One LCA message: the event and the call it belongs to. Serializes to the flat JSON LCA
/// expects, e.g. `{"EventType":"START","CallId":...,"CreatedAt":...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LcaMessage {
    /// The call (Connect ContactId); also the Kinesis partition key.
    #[serde(rename = "CallId")]
    pub call_id: String,
    /// What happened.
    #[serde(flatten)]
    pub event: LcaEvent,
}

impl LcaMessage {
    /// For a final transcript segment: its channel (0 caller, 1 agent) and where it ends, in
    /// ms from the start of the call. `None` for partials and every other event.
    pub fn final_segment_end(&self) -> Option<(usize, u64)> {
        match &self.event {
            LcaEvent::AddTranscriptSegment(Segment::Standard(segment)) if !segment.is_partial => {
                let channel = match segment.channel {
                    Speaker::Caller => 0,
                    Speaker::Agent => 1,
                };
                Some((channel, (segment.end_time * 1000.0).round() as u64))
            }
            LcaEvent::AddTranscriptSegment(Segment::Analytics(segment)) => {
                let event = &segment.utterance_event;
                let channel = match event["ParticipantRole"].as_str() {
                    Some("CUSTOMER") => 0,
                    Some("AGENT") => 1,
                    _ => return None,
                };
                match (
                    event["IsPartial"].as_bool(),
                    event["EndOffsetMillis"].as_f64(),
                ) {
                    (Some(false), Some(end)) if end >= 0.0 => Some((channel, end.round() as u64)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Whether this is the call's END.
    pub fn is_end(&self) -> bool {
        matches!(self.event, LcaEvent::End(_))
    }

    /// Whether this is a partial transcript result (standard `IsPartial`, or a Call
    /// Analytics utterance's): one that a later version of its segment replaces.
    pub fn is_partial(&self) -> bool {
        match &self.event {
            LcaEvent::AddTranscriptSegment(Segment::Standard(s)) => s.is_partial,
            LcaEvent::AddTranscriptSegment(Segment::Analytics(a)) => {
                a.utterance_event["IsPartial"].as_bool() == Some(true)
            }
            _ => false,
        }
    }
}

/// The LCA event types this source produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "EventType")]
pub enum LcaEvent {
    /// The call started (published before any segment).
    #[serde(rename = "START")]
    Start(StartCall),
    /// A transcript segment, standard or Call Analytics shape.
    #[serde(rename = "ADD_TRANSCRIPT_SEGMENT")]
    AddTranscriptSegment(Segment),
    /// A Call Analytics category matched.
    #[serde(rename = "ADD_CALL_CATEGORY")]
    AddCallCategory(CallCategory),
    /// The call ended (published last, not at a Lambda hand-over).
    #[serde(rename = "END")]
    End(Stamped),
    /// Where the call's stereo recording is.
    #[serde(rename = "ADD_S3_RECORDING_URL")]
    AddS3RecordingUrl(RecordingUrl),
    /// The agent who took the call.
    #[serde(rename = "UPDATE_AGENT")]
    UpdateAgent(Agent),
}

/// Fields of START.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StartCall {
    /// Caller's number (Connect CustomerEndpoint.Address).
    pub customer_phone_number: String,
    /// Number the caller dialled (Connect SystemEndpoint.Address).
    pub system_phone_number: String,
    /// Agent, when known at the start.
    pub agent_id: Option<String>,
    /// Extra metadata from the lambda hook, as a JSON string.
    #[serde(rename = "Metadatajson", skip_serializing_if = "Option::is_none")]
    pub metadata_json: Option<String>,
    /// ISO-8601 creation time.
    pub created_at: String,
}

/// Fields of END.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Stamped {
    /// ISO-8601 creation time.
    pub created_at: String,
}

/// An ADD_TRANSCRIPT_SEGMENT in one of its two shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Segment {
    /// Standard Transcribe.
    Standard(StandardSegment),
    /// Call Analytics.
    Analytics(AnalyticsSegment),
}

/// Which side of the call spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Speaker {
    /// Channel 0 (`ch_0`).
    Caller,
    /// Channel 1 (`ch_1`).
    Agent,
}

/// A standard-mode segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StandardSegment {
    /// CALLER or AGENT.
    pub channel: Speaker,
    /// `<ChannelId>-<StartTime>`: stable across a segment's partial updates and its final.
    pub segment_id: String,
    /// Seconds from the start of the call.
    pub start_time: f64,
    /// Seconds from the start of the call.
    pub end_time: f64,
    /// The text.
    pub transcript: String,
    /// A partial result, to be replaced.
    pub is_partial: bool,
    /// ISO-8601 creation time.
    pub created_at: String,
}

/// A Call Analytics segment: the UtteranceEvent as Transcribe sends it (offsets moved to the
/// start of the call).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AnalyticsSegment {
    /// The UtteranceEvent JSON.
    pub utterance_event: Value,
    /// ISO-8601 creation time.
    pub created_at: String,
    /// ISO-8601 update time.
    pub updated_at: String,
}

/// Fields of ADD_CALL_CATEGORY.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CallCategory {
    /// The CategoryEvent JSON.
    pub category_event: Value,
    /// ISO-8601 creation time.
    pub created_at: String,
}

/// Fields of ADD_S3_RECORDING_URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RecordingUrl {
    /// `https://<bucket>.s3.<region>.amazonaws.com/<prefix><CallId>.wav`.
    pub recording_url: String,
    /// ISO-8601 creation time.
    pub created_at: String,
}

/// Fields of UPDATE_AGENT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Agent {
    /// The agent.
    pub agent_id: String,
}

/// A standard-mode result as Transcribe reports it (the fields the mapping needs).
#[derive(Debug, Clone, PartialEq)]
pub struct TranscriptResult {
    /// `ch_0` or `ch_1` (absent without channel identification: caller).
    pub channel_id: Option<String>,
    /// Seconds from the start of this Transcribe session.
    pub start_time: f64,
    /// Seconds from the start of this Transcribe session.
    pub end_time: f64,
    /// Partial or final.
    pub is_partial: bool,
    /// First alternative's text.
    pub transcript: String,
    /// First alternative's items (words and punctuation) with their times: what lets a
    /// result be cut after a word (a replay that re-segments the call,
    /// `transcript_ledger`). Empty when Transcribe gave none.
    pub items: Vec<TranscriptItem>,
}

/// One item of a standard-mode result: a word or a punctuation mark, with its times.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TranscriptItem {
    /// Seconds from the start of this Transcribe session.
    pub start_time: f64,
    /// Seconds from the start of this Transcribe session.
    pub end_time: f64,
    /// The word or mark.
    pub content: String,
    /// A punctuation mark (Transcribe's item type `punctuation`): written without a space
    /// before it.
    pub is_punctuation: bool,
}

/// The text of `items` as Transcribe writes a transcript: words separated by spaces,
/// punctuation against the word before it.
pub fn items_text<'a>(items: impl IntoIterator<Item = (&'a str, bool)>) -> String {
    let mut text = String::new();
    for (content, is_punctuation) in items {
        if content.is_empty() {
            continue;
        }
        if !text.is_empty() && !is_punctuation {
            text.push(' ');
        }
        text.push_str(content);
    }
    text
}

/// How results become messages for one call.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentMapper {
    /// The call.
    pub call_id: String,
    /// Seconds of call audio before this Transcribe session started (after a reconnect or a
    /// Lambda hand-over), added to every time so segments stay relative to the call start.
    pub time_offset_s: f64,
    /// `SAVE_PARTIAL_TRANSCRIPTS`: when false, partial results are not published.
    pub save_partials: bool,
}

impl SegmentMapper {
    fn message(&self, event: LcaEvent) -> LcaMessage {
        LcaMessage {
            call_id: self.call_id.clone(),
            event,
        }
    }

    /// The message for a standard result, or `None` for a partial when partials are off.
    pub fn transcript(&self, result: &TranscriptResult, created_at: &str) -> Option<LcaMessage> {
        if result.is_partial && !self.save_partials {
            return None;
        }
        let channel_id = result.channel_id.as_deref().unwrap_or("ch_0");
        let channel = if channel_id == "ch_1" {
            Speaker::Agent
        } else {
            Speaker::Caller
        };
        // LCA's call event processor reads the times with `if message.get("StartTime",
        // None):`, so a segment starting at exactly 0 s would lose its StartTime and be
        // refused (`Float!`); such a segment is published as starting 1 ms in.
        let start_time = round_ms(result.start_time + self.time_offset_s).max(0.001);
        Some(
            self.message(LcaEvent::AddTranscriptSegment(Segment::Standard(
                StandardSegment {
                    channel,
                    segment_id: format!("{channel_id}-{start_time}"),
                    start_time,
                    end_time: round_ms(result.end_time + self.time_offset_s),
                    transcript: result.transcript.clone(),
                    is_partial: result.is_partial,
                    created_at: created_at.to_string(),
                },
            ))),
        )
    }

    /// The message for a Call Analytics UtteranceEvent (JSON as Transcribe sends it), or `None`
    /// for a partial when partials are off.
    pub fn utterance(&self, utterance: &Value, created_at: &str) -> Option<LcaMessage> {
        let partial = utterance
            .get("IsPartial")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if partial && !self.save_partials {
            return None;
        }
        let mut utterance = utterance.clone();
        let offset_ms = (self.time_offset_s * 1000.0).round() as i64;
        for key in ["BeginOffsetMillis", "EndOffsetMillis"] {
            if let Some(value) = utterance.get(key).and_then(Value::as_i64) {
                utterance[key] = Value::from(value + offset_ms);
            }
        }
        Some(
            self.message(LcaEvent::AddTranscriptSegment(Segment::Analytics(
                AnalyticsSegment {
                    utterance_event: utterance,
                    created_at: created_at.to_string(),
                    updated_at: created_at.to_string(),
                },
            ))),
        )
    }

    /// The message for a Call Analytics CategoryEvent (JSON as Transcribe sends it).
    pub fn category(&self, category: &Value, created_at: &str) -> LcaMessage {
        let mut category = category.clone();
        let offset_ms = (self.time_offset_s * 1000.0).round() as i64;
        if let Some(details) = category
            .get_mut("MatchedDetails")
            .and_then(Value::as_object_mut)
        {
            for detail in details.values_mut() {
                if let Some(ranges) = detail
                    .get_mut("TimestampRanges")
                    .and_then(Value::as_array_mut)
                {
                    for range in ranges {
                        for key in ["BeginOffsetMillis", "EndOffsetMillis"] {
                            if let Some(value) = range.get(key).and_then(Value::as_i64) {
                                range[key] = Value::from(value + offset_ms);
                            }
                        }
                    }
                }
            }
        }
        self.message(LcaEvent::AddCallCategory(CallCategory {
            category_event: category,
            created_at: created_at.to_string(),
        }))
    }
}

/// Longest CallId: LCA keys its Kinesis records by CallId, and a partition key is 1 to 256
/// Unicode characters (Kinesis API reference, PutRecord, PartitionKey). A longer one would
/// have every event of the call refused.
pub const MAX_CALL_ID_CHARS: usize = 256;

/// Whether `id` can be a CallId: 1 to [`MAX_CALL_ID_CHARS`] characters. The error says how
/// long it is and the rule, never the id (for "ContactId is ...", "callId is ...").
pub fn check_call_id(id: &str) -> Result<(), String> {
    let length = id.chars().count();
    if id.is_empty() || length > MAX_CALL_ID_CHARS {
        return Err(format!(
            "{length} characters long; it must be 1 to {MAX_CALL_ID_CHARS} (MAX_CALL_ID_CHARS: \
             a CallId is LCA's Kinesis partition key)"
        ));
    }
    Ok(())
}

/// Characters of an input's value an error message quotes at most ([`excerpt`]).
pub const MAX_QUOTED_CHARS: usize = 64;

/// `value` as an error may quote it: at most [`MAX_QUOTED_CHARS`] characters, the rest
/// counted, so that a huge input cannot make a huge log line. (Only for values that are not
/// customer data: those are never quoted.)
pub fn excerpt(value: &str) -> String {
    let total = value.chars().count();
    if total <= MAX_QUOTED_CHARS {
        return value.to_string();
    }
    let head: String = value.chars().take(MAX_QUOTED_CHARS).collect();
    format!("{head}... ({total} characters)")
}

/// The S3 URL LCA shows for a recording.
pub fn recording_url(bucket: &str, region: &str, prefix: &str, call_id: &str) -> String {
    format!("https://{bucket}.s3.{region}.amazonaws.com/{prefix}{call_id}.wav")
}

/// What is wrong with a JSON input, from serde_json's error but without the offending value
/// it quotes ("invalid type: string \"+15551230001\", expected a boolean"): the inputs are
/// contact-flow events, hook answers and call data, whose values may be customer data (phone
/// numbers), and this text goes to logs, the lease and Lambda's failure queue. Field names
/// and what was expected come from our own types and are kept.
pub fn json_problem(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let at = if error.line() > 0 {
        format!(" at line {}, column {}", error.line(), error.column())
    } else {
        String::new()
    };
    if text.starts_with("missing field") {
        text
    } else if let Some(i) = text.find(", expected ") {
        let expected = text[i + 2..].split(" at line ").next().unwrap_or_default();
        format!("a value of the wrong type or form ({expected}){at}")
    } else {
        format!("{:?} error{at}", error.classify())
    }
}

/// Times to the millisecond, as Transcribe reports them (no float noise from offsets).
fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_problems_name_the_field_or_the_expectation_never_the_value() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Answer {
            #[serde(rename = "isCaller")]
            is_caller: Option<bool>,
            #[serde(rename = "callId")]
            call_id: String,
        }
        let problem = |text: &str| json_problem(&serde_json::from_str::<Answer>(text).unwrap_err());
        let wrong = problem(r#"{"isCaller": "+15551230001", "callId": "c"}"#);
        assert_eq!(
            wrong,
            "a value of the wrong type or form (expected a boolean) at line 1, column 27"
        );
        assert_eq!(
            problem(r#"{"isCaller": true}"#),
            "missing field `callId` at line 1 column 18"
        );
        assert_eq!(
            problem(r#"{"callId": "+1555"#),
            "Eof error at line 1, column 17"
        );
        let from_value = serde_json::from_value::<Answer>(json!({"callId": 15551230001u64}));
        assert_eq!(
            json_problem(&from_value.unwrap_err()),
            "a value of the wrong type or form (expected a string)"
        );
    }

    const AT: &str = "2026-11-23T22:00:00.000Z";

    fn mapper(offset: f64, partials: bool) -> SegmentMapper {
        SegmentMapper {
            call_id: "call-1".into(),
            time_offset_s: offset,
            save_partials: partials,
        }
    }

    #[test]
    fn messages_have_the_shapes_lca_reads() {
        let start = LcaMessage {
            call_id: "call-1".into(),
            event: LcaEvent::Start(StartCall {
                customer_phone_number: "+15551230001".into(),
                system_phone_number: "+15559990000".into(),
                agent_id: None,
                metadata_json: None,
                created_at: AT.into(),
            }),
        };
        assert_eq!(
            serde_json::to_value(&start).unwrap(),
            json!({"EventType": "START", "CallId": "call-1", "CustomerPhoneNumber": "+15551230001",
                   "SystemPhoneNumber": "+15559990000", "AgentId": null, "CreatedAt": AT})
        );
        let end = LcaMessage {
            call_id: "call-1".into(),
            event: LcaEvent::End(Stamped {
                created_at: AT.into(),
            }),
        };
        assert_eq!(
            serde_json::to_value(&end).unwrap(),
            json!({"EventType": "END", "CallId": "call-1", "CreatedAt": AT})
        );
        let url = LcaMessage {
            call_id: "call-1".into(),
            event: LcaEvent::AddS3RecordingUrl(RecordingUrl {
                recording_url: recording_url(
                    "bucket",
                    "us-east-1",
                    "lca-audio-recordings/",
                    "call-1",
                ),
                created_at: AT.into(),
            }),
        };
        assert_eq!(
            serde_json::to_value(&url).unwrap(),
            json!({"EventType": "ADD_S3_RECORDING_URL", "CallId": "call-1", "CreatedAt": AT,
                   "RecordingUrl": "https://bucket.s3.us-east-1.amazonaws.com/lca-audio-recordings/call-1.wav"})
        );
        let agent = LcaMessage {
            call_id: "call-1".into(),
            event: LcaEvent::UpdateAgent(Agent {
                agent_id: "alex".into(),
            }),
        };
        assert_eq!(
            serde_json::to_value(&agent).unwrap(),
            json!({"EventType": "UPDATE_AGENT", "CallId": "call-1", "AgentId": "alex"})
        );
        for message in [start, end, url, agent] {
            let text = serde_json::to_string(&message).unwrap();
            assert_eq!(
                serde_json::from_str::<LcaMessage>(&text).unwrap(),
                message,
                "round trip {text}"
            );
        }
    }

    #[test]
    fn standard_results_map_channels_times_and_partials() {
        let result = TranscriptResult {
            channel_id: Some("ch_1".into()),
            start_time: 0.1,
            end_time: 6.34,
            is_partial: false,
            transcript: "Thank you for calling".into(),
            items: Vec::new(),
        };
        let message = mapper(120.0, true).transcript(&result, AT).unwrap();
        assert_eq!(
            serde_json::to_value(&message).unwrap(),
            json!({"EventType": "ADD_TRANSCRIPT_SEGMENT", "CallId": "call-1", "Channel": "AGENT",
                   "SegmentId": "ch_1-120.1", "StartTime": 120.1, "EndTime": 126.34,
                   "Transcript": "Thank you for calling", "IsPartial": false, "CreatedAt": AT})
        );
        let partial = TranscriptResult {
            channel_id: Some("ch_0".into()),
            is_partial: true,
            ..result
        };
        assert!(
            mapper(0.0, false).transcript(&partial, AT).is_none(),
            "partials off"
        );
        let kept = mapper(0.0, true).transcript(&partial, AT).unwrap();
        assert!(
            matches!(kept.event, LcaEvent::AddTranscriptSegment(Segment::Standard(ref s)) if s.channel == Speaker::Caller && s.is_partial)
        );
        // Speech from the call's first sample: LCA takes a StartTime of 0 as missing.
        let at_zero = TranscriptResult {
            start_time: 0.0,
            ..partial
        };
        let words = [
            ("Thank", false),
            ("you", false),
            (",", true),
            ("Sam", false),
            (".", true),
        ];
        assert_eq!(items_text(words), "Thank you, Sam.");
        assert_eq!(
            items_text([(".", true), ("", false), ("Hi", false)]),
            ". Hi"
        );
        let value = serde_json::to_value(mapper(0.0, true).transcript(&at_zero, AT)).unwrap();
        assert_eq!(
            (&value["StartTime"], &value["SegmentId"]),
            (&json!(0.001), &json!("ch_0-0.001"))
        );
    }

    #[test]
    fn analytics_utterances_and_categories_move_to_call_time() {
        let utterance = json!({"UtteranceId": "u1", "IsPartial": false, "ParticipantRole": "AGENT",
                               "BeginOffsetMillis": 100, "EndOffsetMillis": 6340, "Transcript": "hi", "Sentiment": "NEUTRAL"});
        let message = mapper(60.0, true).utterance(&utterance, AT).unwrap();
        let value = serde_json::to_value(&message).unwrap();
        assert_eq!(value["EventType"], "ADD_TRANSCRIPT_SEGMENT");
        assert_eq!(value["UtteranceEvent"]["BeginOffsetMillis"], 60_100);
        assert_eq!(value["UtteranceEvent"]["EndOffsetMillis"], 66_340);
        assert_eq!(value["UtteranceEvent"]["Sentiment"], "NEUTRAL");
        assert_eq!(value["UpdatedAt"], AT);
        let partial = json!({"UtteranceId": "u2", "IsPartial": true});
        assert!(mapper(0.0, false).utterance(&partial, AT).is_none());
        let category = json!({"MatchedCategories": ["refund"],
                              "MatchedDetails": {"refund": {"TimestampRanges": [{"BeginOffsetMillis": 5, "EndOffsetMillis": 9}]}}});
        let value = serde_json::to_value(mapper(1.0, true).category(&category, AT)).unwrap();
        assert_eq!(value["EventType"], "ADD_CALL_CATEGORY");
        assert_eq!(
            value["CategoryEvent"]["MatchedDetails"]["refund"]["TimestampRanges"][0]["BeginOffsetMillis"],
            1005
        );
        let round: LcaMessage = serde_json::from_value(value).unwrap();
        assert!(matches!(round.event, LcaEvent::AddCallCategory(_)));
    }
}
