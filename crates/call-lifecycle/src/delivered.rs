//! [`Delivered`]: what of a call is known to be on the LCA Kinesis stream, kept from the
//! publisher's acknowledgements. It travels in the call's lease so that an invocation retried
//! after a crash or a failure publishes nothing twice: no second START or END, no final
//! segment or category that was already delivered. Pure.
//!
//! A per-channel mark of the last delivered final is exact, not an approximation: the
//! publisher puts messages on the stream strictly in the order they were produced and stops
//! at the first one it cannot deliver (the transcriber's `publisher`), so what is on the stream is
//! always a prefix of what was produced, and a channel's finals are produced in time order.
//! Every final up to the mark is on the stream; none after it is.

use std::collections::BTreeSet;

use lca_events::{LcaEvent, LcaMessage};
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

/// Distinct Call Analytics categories a call remembers (the ledger and the lease item). The
/// account's own categories bound what Transcribe sends; this bound keeps the lease item (a
/// DynamoDB item is at most 400 KB) small whatever it sends. A category beyond it is not
/// published, and a warning names this limit.
pub const MAX_CALL_CATEGORIES: usize = 200;

impl Delivered {
    /// Takes note of a message Kinesis acknowledged; returns whether that changed anything
    /// (a partial, a repeated flag or an older final does not).
    pub fn record(&mut self, message: &LcaMessage) -> bool {
        let set = |flag: &mut bool| !std::mem::replace(flag, true);
        match &message.event {
            LcaEvent::Start(_) => set(&mut self.started),
            LcaEvent::End(_) => set(&mut self.ended),
            LcaEvent::AddS3RecordingUrl(_) => set(&mut self.recording_url),
            LcaEvent::AddTranscriptSegment(_) => message
                .final_segment_end()
                .is_some_and(|(channel, end_ms)| self.final_end(channel, end_ms)),
            LcaEvent::AddCallCategory(category) => {
                let mut new = false;
                for name in category.category_event["MatchedCategories"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str())
                {
                    if self.categories.len() < MAX_CALL_CATEGORIES {
                        new |= self.categories.insert(name.to_string());
                    }
                }
                new
            }
            LcaEvent::UpdateAgent(_) => false,
        }
    }

    /// Whether `message` is on the stream by this record (the stream holds a prefix of what
    /// was produced): a message carried over from a stalled run ([`crate::CallData::pending`])
    /// is published only when this says no. Exactly what [`Self::record`] would not change
    /// (a partial counts as had: it is never carried).
    pub fn has(&self, message: &LcaMessage) -> bool {
        !self.clone().record(message)
    }

    /// Moves a channel's last final end forward; whether it moved.
    fn final_end(&mut self, channel: usize, end_ms: u64) -> bool {
        let slot = &mut self.final_end_ms[channel];
        if slot.is_some_and(|e| e >= end_ms) {
            return false;
        }
        *slot = Some(end_ms);
        true
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
        assert!(delivered.record(&segment("CALLER", 7.25, false)));
        assert!(
            !delivered.record(&segment("CALLER", 9.0, true)),
            "a partial"
        );
        assert!(delivered.record(&segment("AGENT", 3.0, false)));
        assert!(
            !delivered.record(&segment("CALLER", 5.0, false)),
            "an older final"
        );
        assert!(delivered.started && !delivered.ended);
        assert_eq!(delivered.final_end_ms, [Some(7250), Some(3000)]);
        let end = message(json!({"EventType": "END", "CallId": "c", "CreatedAt": "now"}));
        assert!(delivered.record(&end));
        assert!(delivered.ended);
        assert!(!delivered.record(&end), "END again changes nothing");
        // What it has: what recording would not change.
        assert!(delivered.has(&end) && delivered.has(&segment("CALLER", 7.25, false)));
        assert!(!delivered.has(&segment("CALLER", 7.5, false)));
        assert!(!delivered.has(&segment("AGENT", 3.5, false)));
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
        assert!(delivered.record(&utterance("AGENT", 4100, false)));
        assert!(!delivered.record(&utterance("CUSTOMER", 9000, true)));
        let category = message(json!({"EventType": "ADD_CALL_CATEGORY", "CallId": "c",
            "CategoryEvent": {"MatchedCategories": ["angry", "refund"]}, "CreatedAt": "now"}));
        assert!(delivered.record(&category));
        assert!(!delivered.record(&category), "categories already known");
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
