//! [`ContactGate`]: one call's audio out of a (possibly reused, possibly resumed) KVS stream.

use std::collections::HashMap;

use bytes::Bytes;
use call_audio::Channel;
use kvs_media::{KvsError, MediaEvent, TAG_CONTACT_ID, TrackRole};

/// What the gate lets through, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateOutput {
    /// Audio of this call: place it with the stereo assembler.
    Audio {
        /// Caller or agent.
        channel: Channel,
        /// Absolute timestamp, ns.
        timestamp_ns: i64,
        /// s16le PCM.
        pcm: Bytes,
    },
    /// A fragment of this call is fully processed: resume after it if the connection drops.
    FragmentDone {
        /// Its fragment number.
        fragment_number: String,
        /// Its continuation token, if KVS sent one.
        continuation_token: Option<String>,
        /// How far it was behind the stream's newest data (AWS_KINESISVIDEO_MILLIS_BEHIND_NOW).
        millis_behind_now: Option<u64>,
    },
    /// Stop reading this stream.
    Stop(StopReason),
}

/// Why a call's stream is finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A fragment belongs to another contact: Connect reused the stream for the next call.
    OtherContact(String),
    /// KVS sent an error chunk.
    KvsError(KvsError),
}

/// Filters one contact's audio out of GetMedia events, without delaying it needlessly:
///
/// - Connect tags the ContactId *after* each fragment's cluster, and a reused stream carries
///   the next call after an idle gap. Audio of a fragment that follows the previous one
///   without a gap flows at once; audio after a gap in producer time is held until the
///   fragment's ContactId is known, then released or (another contact) dropped.
/// - Fragments already processed (a resumed GetMedia redelivers, whichever way KVS reads the
///   start selector) are skipped by fragment number, so resuming never repeats audio.
#[derive(Debug)]
pub struct ContactGate {
    contact_id: String,
    max_gap_ms: u64,
    roles: HashMap<u64, TrackRole>,
    last_done: Option<String>,
    last_end_ms: Option<u64>,
    current: Option<Fragment>,
    stopped: bool,
}

#[derive(Debug, Default)]
struct Fragment {
    number: Option<String>,
    skip: bool,
    holding: bool,
    held: Vec<GateOutput>,
    contact_seen: bool,
}

impl ContactGate {
    /// A gate for `contact_id`. `resume_after` is the last fragment already processed (from a
    /// previous connection or a Lambda hand-over); `max_gap_ms` is the producer-time gap
    /// between fragments beyond which audio is held until its ContactId is known. The first
    /// fragment after `resume_after` is held too, since the gap before it is unknown here.
    pub fn new(
        contact_id: impl Into<String>,
        resume_after: Option<String>,
        max_gap_ms: u64,
    ) -> Self {
        Self {
            contact_id: contact_id.into(),
            max_gap_ms,
            roles: HashMap::new(),
            last_done: resume_after,
            last_end_ms: None,
            current: None,
            stopped: false,
        }
    }

    /// The last fragment fully processed: where to resume.
    pub fn last_fragment(&self) -> Option<&str> {
        self.last_done.as_deref()
    }

    /// Prepares for a new GetMedia connection after the last one was cut (or ended with a
    /// transient error): a fragment cut midway is forgotten (KVS sends it again; its audio
    /// already let through is dropped as a repeat by the assembler, by timestamp).
    pub fn reconnect(&mut self) {
        if self.current.take().is_some_and(|f| f.holding) {
            // The cut fragment was held for its ContactId: hold it again when it comes back.
            self.last_end_ms = None;
        }
        self.stopped = false;
    }

    /// Whether the stream is finished for this call.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Takes one event; returns what it lets through.
    pub fn handle(&mut self, event: MediaEvent) -> Vec<GateOutput> {
        if self.stopped {
            return Vec::new();
        }
        let mut out = Vec::new();
        match event {
            MediaEvent::Tracks(tracks) => {
                self.roles = tracks
                    .iter()
                    .filter_map(|t| Some((t.number, t.role?)))
                    .collect();
            }
            MediaEvent::FragmentStart(start) => {
                self.finish_fragment(&mut out);
                let skip = match (&start.fragment_number, &self.last_done) {
                    (Some(number), Some(done)) => !is_after(number, done),
                    _ => false,
                };
                let holding = match (start.producer_timestamp_ms, self.last_end_ms) {
                    (Some(at), Some(end)) => at > end + self.max_gap_ms,
                    // After a resume the audio before is not known here: hold the first
                    // fragment until its ContactId is read, to be safe (it costs about 1 s once).
                    (_, None) => self.last_done.is_some() && !skip,
                    (None, Some(_)) => false,
                };
                self.current = Some(Fragment {
                    number: start.fragment_number,
                    skip,
                    holding,
                    ..Fragment::default()
                });
            }
            MediaEvent::Block(block) => {
                let channel = match self.roles.get(&block.track) {
                    Some(TrackRole::Caller) => Channel::Caller,
                    Some(TrackRole::Agent) => Channel::Agent,
                    None => return out,
                };
                // Producer-time end of the audio so far, for gap detection (2 bytes/sample, 8 kHz).
                let end_ms = (block.timestamp_ns / 1_000_000).max(0) as u64
                    + block.payload.len() as u64 / 16;
                let fragment = self.current.get_or_insert_with(Fragment::default);
                if fragment.skip {
                    return out;
                }
                self.last_end_ms = Some(self.last_end_ms.map_or(end_ms, |e| e.max(end_ms)));
                let audio = GateOutput::Audio {
                    channel,
                    timestamp_ns: block.timestamp_ns,
                    pcm: block.payload,
                };
                if fragment.holding {
                    fragment.held.push(audio);
                } else {
                    out.push(audio);
                }
            }
            MediaEvent::Tag(tag) if tag.name == TAG_CONTACT_ID => {
                let value = tag.value.as_str().unwrap_or_default().to_string();
                let fragment = self.current.get_or_insert_with(Fragment::default);
                if fragment.skip {
                    return out;
                }
                fragment.contact_seen = true;
                if value == self.contact_id {
                    out.append(&mut fragment.held);
                    fragment.holding = false;
                } else {
                    self.current = None;
                    self.stopped = true;
                    out.push(GateOutput::Stop(StopReason::OtherContact(value)));
                }
            }
            MediaEvent::Tag(_) => {}
            MediaEvent::FragmentEnd(end) => {
                if let Some(fragment) = &mut self.current
                    && !fragment.skip
                    && let Some(number) = fragment.number.clone()
                {
                    out.append(&mut fragment.held);
                    out.push(GateOutput::FragmentDone {
                        fragment_number: number.clone(),
                        continuation_token: end.continuation_token,
                        millis_behind_now: end.millis_behind_now,
                    });
                    self.last_done = Some(number);
                }
                self.current = None;
            }
            MediaEvent::Error(error) => {
                self.stopped = true;
                out.push(GateOutput::Stop(StopReason::KvsError(error)));
            }
        }
        out
    }

    /// A fragment that ended without KVS end tags: its audio is released (no ContactId said
    /// otherwise).
    fn finish_fragment(&mut self, out: &mut Vec<GateOutput>) {
        if let Some(mut fragment) = self.current.take()
            && !fragment.skip
        {
            out.append(&mut fragment.held);
        }
    }
}

/// Whether fragment number `a` comes after `b` (decimal strings of any length).
fn is_after(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    (a.len(), a) > (b.len(), b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvs_media::{ConnectWriter, FragmentReader, WriterOptions};

    /// Events of a stream made of `(contact, start_ms, samples)` fragments.
    fn stream(parts: &[(&str, u64, usize)]) -> Vec<MediaEvent> {
        let mut bytes = Vec::new();
        let mut index = 0u64;
        for &(contact, start_ms, samples) in parts {
            let mut writer = ConnectWriter::new(WriterOptions {
                contact_id: contact.to_string(),
                ..WriterOptions::default()
            });
            // Keep fragment numbers increasing across writers.
            for _ in 0..index {
                writer.fragment(0, &[]);
            }
            let pcm = vec![1u8; samples * 2];
            for fragment in writer.call(&pcm, &pcm, start_ms) {
                bytes.extend_from_slice(&fragment);
                index += 1;
            }
        }
        let mut reader = FragmentReader::new();
        reader.push(&bytes);
        reader.end_of_input();
        std::iter::from_fn(|| reader.next_event().unwrap()).collect()
    }

    fn run(gate: &mut ContactGate, events: Vec<MediaEvent>) -> Vec<GateOutput> {
        events.into_iter().flat_map(|e| gate.handle(e)).collect()
    }

    fn audio_samples(out: &[GateOutput]) -> usize {
        out.iter()
            .map(|o| match o {
                GateOutput::Audio { pcm, .. } => pcm.len() / 2,
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn contiguous_audio_flows_before_its_contact_id_arrives() {
        let events = stream(&[("a", 1_000_000, 3 * 8192)]);
        let mut gate = ContactGate::new("a", None, 1000);
        let first_block = events
            .iter()
            .position(|e| matches!(e, MediaEvent::Block(_)))
            .unwrap();
        let out: Vec<GateOutput> = events[..=first_block]
            .iter()
            .cloned()
            .flat_map(|e| gate.handle(e))
            .collect();
        assert_eq!(
            audio_samples(&out),
            512,
            "the first block is out before the ContactId tag"
        );
    }

    #[test]
    fn the_next_callers_audio_after_an_idle_gap_never_gets_through() {
        // Call a for 3 fragments, 30 s idle, then call b on the same stream.
        let events = stream(&[("a", 1_000_000, 3 * 8192), ("b", 1_040_000, 3 * 8192)]);
        let mut gate = ContactGate::new("a", None, 1000);
        let out = run(&mut gate, events);
        assert_eq!(
            audio_samples(&out),
            2 * 3 * 8192,
            "all of a, both channels, none of b"
        );
        assert_eq!(
            out.last(),
            Some(&GateOutput::Stop(StopReason::OtherContact("b".into())))
        );
        assert!(gate.is_stopped());
        assert_eq!(
            gate.last_fragment(),
            Some(ConnectWriter::fragment_number(2).as_str())
        );
    }

    #[test]
    fn audio_after_a_gap_of_the_same_contact_is_released_when_its_contact_id_arrives() {
        let events = stream(&[("a", 1_000_000, 8192), ("a", 1_010_000, 8192)]);
        let mut gate = ContactGate::new("a", None, 1000);
        let mut released_at_contact = false;
        let mut total = 0;
        for event in events {
            let is_contact = matches!(&event, MediaEvent::Tag(t) if t.name == TAG_CONTACT_ID);
            let out = gate.handle(event);
            let samples = audio_samples(&out);
            if is_contact && samples > 0 {
                released_at_contact = true;
            }
            total += samples;
        }
        assert!(released_at_contact);
        assert_eq!(total, 2 * 2 * 8192);
    }

    #[test]
    fn redelivered_fragments_are_skipped_by_number() {
        let events = stream(&[("a", 1_000_000, 4 * 8192)]);
        let mut gate = ContactGate::new("a", Some(ConnectWriter::fragment_number(1)), 1000);
        let out = run(&mut gate, events);
        assert_eq!(
            audio_samples(&out),
            2 * 2 * 8192,
            "fragments 0 and 1 were processed before"
        );
        let done: Vec<&str> = out
            .iter()
            .filter_map(|o| match o {
                GateOutput::FragmentDone {
                    fragment_number, ..
                } => Some(fragment_number.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            done,
            [
                ConnectWriter::fragment_number(2),
                ConnectWriter::fragment_number(3)
            ]
        );
    }

    #[test]
    fn after_a_hand_over_the_first_new_fragment_waits_for_its_contact_id() {
        // The previous invocation processed fragment 0 of call a; next on the stream is call b.
        let events = stream(&[("a", 1_000_000, 8192), ("b", 1_060_000, 8192)]);
        let mut gate = ContactGate::new("a", Some(ConnectWriter::fragment_number(0)), 1000);
        let out = run(&mut gate, events);
        assert_eq!(audio_samples(&out), 0, "nothing of b");
        assert_eq!(
            out.last(),
            Some(&GateOutput::Stop(StopReason::OtherContact("b".into())))
        );
    }

    #[test]
    fn a_kvs_error_chunk_stops_the_call() {
        let mut bytes = ConnectWriter::error_chunk("Requested fragment is not found", "4000");
        bytes.extend_from_slice(
            &ConnectWriter::new(WriterOptions::default())
                .call(&[1; 16384], &[1; 16384], 0)
                .concat(),
        );
        let mut reader = FragmentReader::new();
        reader.push(&bytes);
        reader.end_of_input();
        let events: Vec<MediaEvent> = std::iter::from_fn(|| reader.next_event().unwrap()).collect();
        let mut gate = ContactGate::new("a", None, 1000);
        let out = run(&mut gate, events);
        assert!(
            matches!(out.as_slice(), [GateOutput::Stop(StopReason::KvsError(e))] if e.id == "4000"),
            "{out:?}"
        );
    }

    #[test]
    fn fragment_numbers_compare_as_numbers() {
        assert!(is_after("10", "9"));
        assert!(!is_after("9", "10"));
        assert!(!is_after("913", "913"));
        assert!(is_after(
            "91343852333181531502161607852955530730509129085",
            "91343852333181531502161607852955530730505354276"
        ));
    }
}
