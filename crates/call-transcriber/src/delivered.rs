//! [`Delivered`]: what of a call is known to be on the LCA Kinesis stream, kept from the
//! publisher's acknowledgements. It travels in the call's lease so that an invocation retried
//! after a crash publishes nothing twice: no second START or END, no final segment or category
//! that was already delivered. Pure.

use std::collections::BTreeSet;

use lca_events::{LcaEvent, LcaMessage, Segment, Speaker};
use serde::{Deserialize, Serialize};

/// What Kinesis has acknowledged for one call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivered {
    /// START is on the stream.
    #[serde(default)]
    pub started: bool,
    /// END is on the stream.
    #[serde(default)]
    pub ended: bool,
    /// ADD_S3_RECORDING_URL is on the stream.
    #[serde(default)]
    pub recording_url: bool,
    /// Per channel (0 = caller/CUSTOMER, 1 = agent/AGENT): call milliseconds where the last
    /// delivered final segment ended.
    #[serde(default)]
    pub final_end_ms: [Option<u64>; 2],
    /// Call Analytics categories delivered.
    #[serde(default)]
    pub categories: BTreeSet<String>,
}

impl Delivered {
    /// Takes note of a message Kinesis acknowledged.
    pub fn record(&mut self, message: &LcaMessage) {
        match &message.event {
            LcaEvent::Start(_) => self.started = true,
            LcaEvent::End(_) => self.ended = true,
            LcaEvent::AddS3RecordingUrl(_) => self.recording_url = true,
            LcaEvent::AddTranscriptSegment(Segment::Standard(segment)) => {
                if !segment.is_partial {
                    let channel = match segment.channel {
                        Speaker::Caller => 0,
                        Speaker::Agent => 1,
                    };
                    self.final_end(channel, (segment.end_time * 1000.0).round() as u64);
                }
            }
            LcaEvent::AddTranscriptSegment(Segment::Analytics(segment)) => {
                let event = &segment.utterance_event;
                let channel = match event["ParticipantRole"].as_str() {
                    Some("CUSTOMER") => Some(0),
                    Some("AGENT") => Some(1),
                    _ => None,
                };
                if let (Some(channel), Some(false), Some(end)) = (
                    channel,
                    event["IsPartial"].as_bool(),
                    event["EndOffsetMillis"].as_f64(),
                ) {
                    self.final_end(channel, end.round() as u64);
                }
            }
            LcaEvent::AddCallCategory(category) => {
                if let Some(names) = category.category_event["MatchedCategories"].as_array() {
                    self.categories
                        .extend(names.iter().filter_map(|n| n.as_str()).map(str::to_string));
                }
            }
            LcaEvent::UpdateAgent(_) => {}
        }
    }

    fn final_end(&mut self, channel: usize, end_ms: u64) {
        let slot = &mut self.final_end_ms[channel];
        *slot = Some(slot.map_or(end_ms, |e| e.max(end_ms)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(value: serde_json::Value) -> LcaMessage {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn keeps_the_furthest_final_per_channel_and_ignores_partials() {
        let mut delivered = Delivered::default();
        let segment = |channel: &str, end: f64, partial: bool| {
            message(json!({"EventType": "ADD_TRANSCRIPT_SEGMENT", "CallId": "c",
                "Channel": channel, "SegmentId": "x", "StartTime": 0.5, "EndTime": end,
                "Transcript": "t", "IsPartial": partial, "CreatedAt": "now"}))
        };
        delivered.record(&message(
            json!({"EventType": "START", "CallId": "c", "CustomerPhoneNumber": "",
                "SystemPhoneNumber": "", "AgentId": null, "CreatedAt": "now"}),
        ));
        delivered.record(&segment("CALLER", 7.25, false));
        delivered.record(&segment("CALLER", 9.0, true));
        delivered.record(&segment("AGENT", 3.0, false));
        delivered.record(&segment("CALLER", 5.0, false));
        assert!(delivered.started && !delivered.ended);
        assert_eq!(delivered.final_end_ms, [Some(7250), Some(3000)]);
        delivered.record(&message(
            json!({"EventType": "END", "CallId": "c", "CreatedAt": "now"}),
        ));
        assert!(delivered.ended);
    }

    #[test]
    fn reads_call_analytics_utterances_and_categories() {
        let mut delivered = Delivered::default();
        let utterance = |role: &str, end: u64, partial: bool| {
            message(json!({"EventType": "ADD_TRANSCRIPT_SEGMENT", "CallId": "c",
                "UtteranceEvent": {"ParticipantRole": role, "BeginOffsetMillis": 0,
                    "EndOffsetMillis": end, "IsPartial": partial, "UtteranceId": "u"},
                "CreatedAt": "now", "UpdatedAt": "now"}))
        };
        delivered.record(&utterance("AGENT", 4100, false));
        delivered.record(&utterance("CUSTOMER", 9000, true));
        delivered.record(&message(
            json!({"EventType": "ADD_CALL_CATEGORY", "CallId": "c",
            "CategoryEvent": {"MatchedCategories": ["angry", "refund"]}, "CreatedAt": "now"}),
        ));
        assert_eq!(delivered.final_end_ms, [None, Some(4100)]);
        assert_eq!(
            delivered.categories.iter().collect::<Vec<_>>(),
            ["angry", "refund"]
        );
        // It survives the lease's JSON.
        let json = serde_json::to_string(&delivered).unwrap();
        assert_eq!(serde_json::from_str::<Delivered>(&json).unwrap(), delivered);
        assert_eq!(
            serde_json::from_str::<Delivered>("{}").unwrap(),
            Delivered::default()
        );
    }
}
