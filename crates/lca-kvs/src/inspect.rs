//! Per-fragment summaries of a GetMedia stream (`lca-kvs inspect`).

use std::collections::BTreeMap;

use kvs_media::{MediaEvent, TAG_CONTACT_ID};
use serde::Serialize;

/// Blocks and bytes one track contributed to a fragment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrackCount {
    /// Number of blocks.
    pub blocks: u64,
    /// Payload bytes.
    pub bytes: u64,
}

/// A KVS error chunk as reported by inspect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorSummary {
    /// AWS_KINESISVIDEO_ERROR_CODE.
    pub code: String,
    /// AWS_KINESISVIDEO_ERROR_ID.
    pub id: String,
}

/// One line of `inspect --json` (the contract in ARCHITECTURE.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FragmentSummary {
    /// KVS fragment number.
    pub fragment_number: Option<String>,
    /// KVS server timestamp, ms since the epoch.
    pub server_timestamp_ms: Option<u64>,
    /// Producer timestamp, ms since the epoch.
    pub producer_timestamp_ms: Option<u64>,
    /// Connect's ContactId tag.
    pub contact_id: Option<String>,
    /// Per track name: blocks and bytes.
    pub tracks: BTreeMap<String, TrackCount>,
    /// AWS_KINESISVIDEO_MILLIS_BEHIND_NOW.
    pub millis_behind_now: Option<u64>,
    /// AWS_KINESISVIDEO_CONTINUATION_TOKEN.
    pub continuation_token: Option<String>,
    /// A KVS error chunk.
    pub error: Option<ErrorSummary>,
}

/// Groups events into [`FragmentSummary`]s: a fragment runs from one FragmentStart (or KVS
/// error chunk) to the next; blocks before any FragmentStart form an unnamed fragment.
#[derive(Debug, Default)]
pub struct Inspector {
    track_names: BTreeMap<u64, String>,
    current: Option<FragmentSummary>,
}

impl Inspector {
    /// A new, empty inspector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one event; returns the fragment it completed, if any.
    pub fn handle(&mut self, event: &MediaEvent) -> Option<FragmentSummary> {
        match event {
            MediaEvent::FragmentStart(start) => {
                let done = self.current.take();
                self.current = Some(FragmentSummary {
                    fragment_number: start.fragment_number.clone(),
                    server_timestamp_ms: start.server_timestamp_ms,
                    producer_timestamp_ms: start.producer_timestamp_ms,
                    ..FragmentSummary::default()
                });
                done
            }
            MediaEvent::Error(error) => {
                let done = self.current.take();
                self.current = Some(FragmentSummary {
                    error: Some(ErrorSummary {
                        code: error.code.clone(),
                        id: error.id.clone(),
                    }),
                    ..FragmentSummary::default()
                });
                done
            }
            MediaEvent::Tracks(tracks) => {
                self.track_names = tracks.iter().map(|t| (t.number, t.name.clone())).collect();
                None
            }
            MediaEvent::Block(block) => {
                let name = self
                    .track_names
                    .get(&block.track)
                    .cloned()
                    .unwrap_or_else(|| format!("track {}", block.track));
                let count = self
                    .current
                    .get_or_insert_with(FragmentSummary::default)
                    .tracks
                    .entry(name)
                    .or_default();
                count.blocks += 1;
                count.bytes += block.payload.len() as u64;
                None
            }
            MediaEvent::Tag(tag) if tag.name == TAG_CONTACT_ID => {
                if let Some(current) = &mut self.current {
                    current.contact_id = tag.value.as_str().map(str::to_string);
                }
                None
            }
            MediaEvent::Tag(_) => None,
            MediaEvent::FragmentEnd(end) => {
                let current = self.current.get_or_insert_with(FragmentSummary::default);
                current.millis_behind_now = end.millis_behind_now;
                current.continuation_token = end.continuation_token.clone();
                None
            }
        }
    }

    /// The fragment still open at the end of the input, if any.
    pub fn finish(&mut self) -> Option<FragmentSummary> {
        self.current.take()
    }
}

impl FragmentSummary {
    /// One human-readable line.
    pub fn to_line(&self) -> String {
        let mut parts = Vec::new();
        if let Some(error) = &self.error {
            parts.push(format!("KVS ERROR code={} id={}", error.code, error.id));
        }
        parts.push(format!(
            "fragment {}",
            self.fragment_number.as_deref().unwrap_or("-")
        ));
        if let Some(ms) = self.producer_timestamp_ms {
            parts.push(format!("producer {}.{:03}", ms / 1000, ms % 1000));
        }
        if let Some(ms) = self.server_timestamp_ms {
            parts.push(format!("server {}.{:03}", ms / 1000, ms % 1000));
        }
        if let Some(contact) = &self.contact_id {
            parts.push(format!("contact {contact}"));
        }
        for (name, count) in &self.tracks {
            parts.push(format!("{name}: {} blocks {} B", count.blocks, count.bytes));
        }
        if let Some(ms) = self.millis_behind_now {
            parts.push(format!("behind {ms} ms"));
        }
        parts.join("  ")
    }
}
