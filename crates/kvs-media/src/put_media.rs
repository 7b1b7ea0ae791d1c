//! Kinesis Video Streams PutMedia, both sides, sans-IO: a producer's [`PutMediaEncoder`]
//! (GetMedia-shaped chunks in, the one-segment MKV body of a PutMedia request out), a
//! server's [`PutMediaParser`] (that body in, fragments and the chunks GetMedia returns for
//! them out), and the acknowledgement stream between them ([`Ack`], [`AckParser`]).
//!
//! Everything here follows the PutMedia API reference
//! (<https://docs.aws.amazon.com/kinesisvideostreams/latest/dg/API_dataplane_PutMedia.html>):
//! "a single MKV segment", "each MKV cluster maps to a Kinesis video stream fragment",
//! fragment timecodes in the body (ABSOLUTE here), and newline-separated JSON
//! acknowledgements carrying an event type, the fragment timecode, the fragment number and,
//! for errors, an error id. Where that page is silent or contradicts itself, the choice is
//! named where it is made.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use crate::chunks::element_header;
use crate::event::{TAG_CONTACT_ID, TAG_ERROR_CODE};
use crate::reader::DEFAULT_MAX_ELEMENT_SIZE;
use crate::writer::ConnectWriter;

const EBML: u64 = 0x1A45_DFA3;
const SEGMENT: u64 = 0x1853_8067;
const INFO: u64 = 0x1549_A966;
const TRACKS: u64 = 0x1654_AE6B;
const TAGS: u64 = 0x1254_C367;
const CLUSTER: u64 = 0x1F43_B675;
const TIMESTAMP: u64 = 0xE7;
const TIMESTAMP_SCALE: u64 = 0x2A_D7B1;
const TAG: u64 = 0x7373;
const SIMPLE_TAG: u64 = 0x67C8;
const TAG_NAME: u64 = 0x45A3;
const TAG_STRING: u64 = 0x4487;
/// Elements that belong inside a Cluster (Timestamp, Position, PrevSize, SimpleBlock,
/// BlockGroup, EncryptedBlock, Void, CRC-32).
const CLUSTER_CHILDREN: [u64; 8] = [0xE7, 0xA7, 0xAB, 0xA3, 0xA0, 0xAF, 0xEC, 0xBF];
/// Prefix of the tags Kinesis Video Streams itself adds (fragment number, timestamps, ...).
const KVS_TAG_PREFIX: &str = "AWS_KINESISVIDEO_";
/// Matroska's default TimestampScale: 1 ms.
const DEFAULT_SCALE_NS: u64 = 1_000_000;
/// An unknown-size Segment or Cluster header's size field (8 bytes, all ones).
const UNKNOWN_SIZE: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

/// Largest fragment PutMedia accepts (API reference: error 4001, 50 MB).
pub const PUT_MEDIA_MAX_FRAGMENT_BYTES: usize = 50_000_000;

/// What a PutMedia error acknowledgement's `ErrorId` means, from the PutMedia API reference's
/// list; `None` for an id it does not list.
pub fn put_media_error_meaning(error_id: u32) -> Option<&'static str> {
    Some(match error_id {
        4000 => "error reading the data stream",
        4001 => "fragment size is greater than the maximum allowed, 50 MB",
        4002 => "fragment duration is greater than the maximum allowed, 10 seconds",
        4003 => "connection duration is greater than the maximum allowed",
        4004 => "fragment timecode is less than the previous one (fragments out of order)",
        4005 => "more than one track found in the MKV (deprecated)",
        4006 => "failed to parse the input stream as valid MKV",
        4007 => "invalid producer timestamp",
        4008 => "the stream no longer exists (deleted)",
        4009 => "fragment metadata limit reached",
        4010 => "the track number in an MKV frame did not match the tracks in the MKV header",
        4011 => "the fragment has no frame for at least one of the tracks in the MKV header",
        4012 => "more than the allowed number of tracks in the MKV",
        4500 => "access to the stream's KMS key is denied",
        4501 => "the stream's KMS key is disabled",
        4502 => "the stream's KMS key failed validation",
        4503 => "the stream's KMS key is unavailable",
        4504 => "invalid usage of the stream's KMS key",
        4505 => "the stream's KMS key is in an invalid state",
        4506 => "the stream's KMS key is not found",
        5000 => "internal service error",
        5001 => "Kinesis Video Streams failed to persist fragments to the data store",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Producer side
// ---------------------------------------------------------------------------------------------

/// How a [`PutMediaEncoder`] changes the fragments it sends.
#[derive(Debug, Clone, Default)]
pub struct EncoderOptions {
    /// Move every fragment in time so the first starts at this producer time (ms since the
    /// epoch): a recorded call sent as a call happening now. `None` keeps the recorded times.
    pub start_at_ms: Option<u64>,
    /// Re-tag every fragment with this ContactId: a recorded call sent as a fresh contact.
    pub contact_id: Option<String>,
}

/// The time of one cluster (fragment) as sent: in TimestampScale ticks, as the body carries
/// it, and in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterTime {
    /// Cluster Timestamp in TimestampScale ticks.
    pub ticks: u64,
    /// The same instant in ms since the epoch (the fragment's producer timestamp).
    pub ms: u64,
}

/// The PutMedia bytes of one input chunk and the clusters (fragments) they carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFragment {
    /// Bytes to send (for the first chunk, preceded by the stream's EBML header, Segment,
    /// Info and Tracks).
    pub bytes: Vec<u8>,
    /// Each cluster's time, in order (one per chunk as GetMedia and Connect write them).
    pub clusters: Vec<ClusterTime>,
}

/// A chunk that cannot be sent with PutMedia.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk {chunk} (0-based), byte {offset}: {problem}")]
pub struct EncodeError {
    /// Which input chunk.
    pub chunk: usize,
    /// Where in it.
    pub offset: usize,
    /// What is wrong.
    pub problem: String,
}

/// Turns GetMedia-shaped chunks (a capture, or [`ConnectWriter`] fragments) into the body of
/// one PutMedia request: one EBML header and one unknown-size Segment with the first chunk's
/// Info and Tracks, then per fragment its Cluster and the producer's own Tags after it (where
/// GetMedia shows Connect's ContactId), without the tags KVS adds (`AWS_KINESISVIDEO_*`),
/// which the service writes itself. Clusters are sent with unknown size, as Connect's are.
#[derive(Debug, Clone, Default)]
pub struct PutMediaEncoder {
    options: EncoderOptions,
    chunks: usize,
    tracks: Option<Vec<u8>>,
    scale_ns: u64,
    shift_ticks: Option<i128>,
    last_ticks: Option<u64>,
}

impl PutMediaEncoder {
    /// An encoder at the start of a PutMedia body.
    pub fn new(options: EncoderOptions) -> Self {
        Self {
            options,
            ..Self::default()
        }
    }

    /// The PutMedia bytes of the next chunk (which must be one whole EBML document).
    pub fn encode(&mut self, chunk: &[u8]) -> Result<EncodedFragment, EncodeError> {
        let index = self.chunks;
        self.chunks += 1;
        let fail = |offset: usize, problem: String| EncodeError {
            chunk: index,
            offset,
            problem,
        };
        let first = index == 0;
        let mut header = Vec::new();
        let mut body = Vec::with_capacity(chunk.len());
        let mut clusters = Vec::new();
        let mut info = None;
        let mut tracks = None;
        let mut error_chunk = false;
        let mut pos = 0usize;
        while pos < chunk.len() {
            let h = match element_header(&chunk[pos..]) {
                Ok(Some(h)) => h,
                Ok(None) => return Err(fail(pos, "cut off within an element header".into())),
                Err(problem) => return Err(fail(pos, problem.to_string())),
            };
            let start = pos + h.len;
            if h.id == SEGMENT || (h.id == CLUSTER && h.size.is_none()) {
                if h.id == CLUSTER {
                    body.extend_from_slice(&chunk[pos..start]);
                }
                pos = start;
                continue;
            }
            let Some(size) = h.size else {
                return Err(fail(
                    pos,
                    format!("element {:#X} has an unknown size", h.id),
                ));
            };
            let end = usize::try_from(size)
                .ok()
                .and_then(|size| start.checked_add(size))
                .filter(|end| *end <= chunk.len())
                .ok_or_else(|| fail(pos, format!("element {:#X} runs past the chunk", h.id)))?;
            let element = &chunk[pos..end];
            let content = &chunk[start..end];
            match h.id {
                EBML => {
                    if first {
                        header.extend_from_slice(element);
                    }
                }
                INFO => info = Some(element),
                TRACKS => tracks = Some(element),
                CLUSTER => {
                    // A known-size Cluster: sent with unknown size; its children follow.
                    body.extend_from_slice(&CLUSTER.to_be_bytes()[4..]);
                    body.extend_from_slice(&UNKNOWN_SIZE);
                    pos = start;
                    continue;
                }
                TIMESTAMP => {
                    let ticks = read_uint(content)
                        .ok_or_else(|| fail(pos, "cluster Timestamp longer than 8 bytes".into()))?;
                    let time = self.retime(ticks).map_err(|problem| fail(pos, problem))?;
                    if self.last_ticks.is_some_and(|last| time.ticks <= last) {
                        return Err(fail(
                            pos,
                            format!(
                                "cluster time {} ms is not after the previous cluster's: \
                                 PutMedia refuses fragments out of order (error 4004)",
                                time.ms
                            ),
                        ));
                    }
                    self.last_ticks = Some(time.ticks);
                    clusters.push(time);
                    write_uint_element(TIMESTAMP, time.ticks, &mut body);
                }
                TAGS => {
                    let pairs = simple_tags(content);
                    if pairs
                        .iter()
                        .any(|(name, _)| trim_nul(name).starts_with(TAG_ERROR_CODE))
                    {
                        error_chunk = true;
                    }
                    let kept: Vec<(String, String)> = pairs
                        .iter()
                        .filter(|(name, _)| !trim_nul(name).starts_with(KVS_TAG_PREFIX))
                        .map(|(name, value)| {
                            match (&self.options.contact_id, trim_nul(name) == TAG_CONTACT_ID) {
                                (Some(contact), true) => (name.clone(), contact.clone()),
                                _ => (name.clone(), value.clone()),
                            }
                        })
                        .collect();
                    if kept == pairs {
                        body.extend_from_slice(element);
                    } else if !kept.is_empty() {
                        body.extend_from_slice(&tags_element(&kept));
                    }
                }
                _ => body.extend_from_slice(element),
            }
            pos = end;
        }
        if error_chunk {
            return Err(fail(
                0,
                "a KVS error chunk (AWS_KINESISVIDEO_ERROR_CODE), not media".into(),
            ));
        }
        if clusters.is_empty() {
            return Err(fail(
                0,
                "no Cluster with a Timestamp: not a media fragment".into(),
            ));
        }
        let tracks = tracks.ok_or_else(|| fail(0, "no Tracks element".into()))?;
        match &self.tracks {
            None => {
                let info = info.ok_or_else(|| fail(0, "no Info element".into()))?;
                header.extend_from_slice(&SEGMENT.to_be_bytes()[4..]);
                header.extend_from_slice(&UNKNOWN_SIZE);
                header.extend_from_slice(info);
                header.extend_from_slice(tracks);
                self.tracks = Some(tracks.to_vec());
            }
            Some(known) if known[..] != tracks[..] => {
                return Err(fail(
                    0,
                    "its Tracks differ from the first chunk's: one PutMedia body has one \
                     MKV header (send it in a separate request)"
                        .into(),
                ));
            }
            Some(_) => {}
        }
        header.extend_from_slice(&body);
        Ok(EncodedFragment {
            bytes: header,
            clusters,
        })
    }

    /// The time a recorded cluster is sent with (shifted per [`EncoderOptions::start_at_ms`]).
    fn retime(&mut self, ticks: u64) -> Result<ClusterTime, String> {
        if self.scale_ns == 0 {
            self.scale_ns = DEFAULT_SCALE_NS;
        }
        let scale = i128::from(self.scale_ns);
        let shift = *self.shift_ticks.get_or_insert_with(|| {
            self.options.start_at_ms.map_or(0, |start_ms| {
                i128::from(start_ms) * 1_000_000 / scale - i128::from(ticks)
            })
        });
        let shifted = u64::try_from(i128::from(ticks) + shift)
            .map_err(|_| format!("cluster timestamp {ticks} moves before the epoch"))?;
        let ms = u64::try_from(i128::from(shifted) * scale / 1_000_000)
            .map_err(|_| format!("cluster timestamp {ticks} is out of range"))?;
        Ok(ClusterTime { ticks: shifted, ms })
    }
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

/// A PutMedia body that the service refuses, with the error id its ERROR acknowledgement
/// carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {problem} (PutMedia error {error_id})")]
pub struct IngestError {
    /// The acknowledgement's ErrorId (4006: not valid MKV; 4001: fragment too large).
    pub error_id: u32,
    /// Where in the body.
    pub offset: u64,
    /// What is wrong.
    pub problem: &'static str,
}

/// What a [`PutMediaParser`] has read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestEvent {
    /// A fragment's first bytes and its timecode have arrived (the BUFFERING acknowledgement).
    FragmentBegins {
        /// Cluster Timestamp in ticks, as sent.
        timecode: u64,
    },
    /// A fragment is complete (the next began, or the body ended).
    Fragment(IngestedFragment),
}

/// One whole fragment as received: its Cluster and the Tags that followed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestedFragment {
    /// Cluster Timestamp in ticks, as sent (the acknowledgements' FragmentTimecode).
    pub timecode: u64,
    /// The same in ms: the fragment's producer timestamp under ABSOLUTE timecodes.
    pub timecode_ms: u64,
    /// The fragment's bytes (Cluster and the following elements up to the next Cluster).
    pub bytes: Bytes,
}

/// Reads a PutMedia body as it arrives (sans-IO): the stream header (EBML header, one
/// Segment, Info, Tracks), then fragments, one per Cluster, each with the producer Tags that
/// follow it. A fragment is complete when the next Cluster begins or the body ends: with
/// unknown-size clusters (Connect's) nothing earlier says so.
#[derive(Debug, Default)]
pub struct PutMediaParser {
    buf: BytesMut,
    consumed: u64,
    ebml: Option<Bytes>,
    segment: bool,
    header: Vec<u8>,
    scale_ns: Option<u64>,
    /// Tags read before the first cluster: they go with the first fragment.
    early: Vec<u8>,
    current: Option<(Vec<u8>, Option<u64>)>,
    failed: Option<IngestError>,
}

impl PutMediaParser {
    /// A parser at the start of a PutMedia body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes of the body.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The TimestampScale of the stream in ns (1 ms until the Info says otherwise).
    pub fn scale_ns(&self) -> u64 {
        self.scale_ns.unwrap_or(DEFAULT_SCALE_NS)
    }

    /// The next event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<IngestEvent>, IngestError> {
        loop {
            if let Some(error) = &self.failed {
                return Err(error.clone());
            }
            let h = match element_header(&self.buf) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(None),
                Err(problem) => return Err(self.fail(4006, problem)),
            };
            if self.ebml.is_none() && h.id != EBML {
                return Err(self.fail(4006, "the body does not start with an EBML header"));
            }
            match h.id {
                SEGMENT => {
                    if self.segment {
                        return Err(self.fail(4006, "more than one MKV segment"));
                    }
                    self.segment = true;
                    self.take(h.len);
                    continue;
                }
                CLUSTER => {
                    if !self.segment {
                        return Err(self.fail(4006, "a Cluster outside the Segment"));
                    }
                    if let Some(fragment) = self.complete() {
                        return Ok(Some(IngestEvent::Fragment(fragment)));
                    }
                    // Stored with unknown size: its children are copied as they come.
                    self.take(h.len);
                    let mut bytes = std::mem::take(&mut self.early);
                    bytes.extend_from_slice(&CLUSTER.to_be_bytes()[4..]);
                    bytes.extend_from_slice(&UNKNOWN_SIZE);
                    self.current = Some((bytes, None));
                    continue;
                }
                _ => {}
            }
            let Some(size) = h.size else {
                return Err(self.fail(
                    4006,
                    "unknown size on an element other than Segment or Cluster",
                ));
            };
            if size > DEFAULT_MAX_ELEMENT_SIZE as u64 {
                return Err(self.fail(4001, "an element larger than 4 MiB"));
            }
            let len = h.len + size as usize;
            if self.buf.len() < len {
                return Ok(None);
            }
            let element = self.take(len);
            let content = &element[h.len..];
            match (h.id, &mut self.current) {
                (EBML, _) if self.ebml.is_some() => {
                    return Err(self.fail(4006, "more than one EBML header (one segment only)"));
                }
                (EBML, _) => self.ebml = Some(element),
                (INFO | TRACKS, Some(_)) => {
                    return Err(self.fail(4006, "Info or Tracks after the first Cluster"));
                }
                (INFO, None) => {
                    self.scale_ns = Some(info_scale(content).unwrap_or(DEFAULT_SCALE_NS));
                    self.header.extend_from_slice(&element);
                }
                (TIMESTAMP, Some((bytes, timecode @ None))) => {
                    let Some(ticks) = read_uint(content) else {
                        return Err(self.fail(4006, "a cluster Timestamp longer than 8 bytes"));
                    };
                    *timecode = Some(ticks);
                    bytes.extend_from_slice(&element);
                    return Ok(Some(IngestEvent::FragmentBegins { timecode: ticks }));
                }
                (id, Some((bytes, _))) => {
                    if id != TAGS && !CLUSTER_CHILDREN.contains(&id) {
                        // Other top-level elements (SeekHead, Cues, ...) are not stored.
                        continue;
                    }
                    bytes.extend_from_slice(&element);
                    if bytes.len() > PUT_MEDIA_MAX_FRAGMENT_BYTES {
                        return Err(self.fail(4001, "a fragment larger than 50 MB"));
                    }
                }
                (TAGS, None) => self.early.extend_from_slice(&element),
                (id, None) if CLUSTER_CHILDREN.contains(&id) && id != 0xEC => {
                    return Err(self.fail(4006, "a block or timestamp outside any Cluster"));
                }
                (_, None) => self.header.extend_from_slice(&element),
            }
        }
    }

    /// At the end of the body (after [`Self::next_event`] returned `Ok(None)`): the last
    /// fragment, or an error when the body ends within an element.
    pub fn finish(&mut self) -> Result<Option<IngestedFragment>, IngestError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if !self.buf.is_empty() {
            return Err(self.fail(4006, "the body ends within an element"));
        }
        Ok(self.complete())
    }

    /// The chunk GetMedia returns for `fragment`: the stream's EBML header, an unknown-size
    /// Segment, Info, Tracks, KVS's start tags, the fragment, and KVS's end tags.
    pub fn chunk(
        &self,
        fragment: &IngestedFragment,
        number: &str,
        server_ms: u64,
        producer_ms: u64,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(fragment.bytes.len() + self.header.len() + 512);
        out.extend_from_slice(self.ebml.as_deref().unwrap_or_default());
        out.extend_from_slice(&SEGMENT.to_be_bytes()[4..]);
        out.extend_from_slice(&UNKNOWN_SIZE);
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&ConnectWriter::kvs_start_tags(
            number,
            server_ms,
            producer_ms,
        ));
        out.extend_from_slice(&fragment.bytes);
        out.extend_from_slice(&ConnectWriter::kvs_end_tags(0, number));
        out
    }

    /// The fragment being read, as complete (when it has a timecode).
    fn complete(&mut self) -> Option<IngestedFragment> {
        let (bytes, timecode) = self.current.take()?;
        let timecode = timecode?;
        let timecode_ms =
            u64::try_from(i128::from(timecode) * i128::from(self.scale_ns()) / 1_000_000)
                .unwrap_or(u64::MAX);
        Some(IngestedFragment {
            timecode,
            timecode_ms,
            bytes: Bytes::from(bytes),
        })
    }

    fn take(&mut self, len: usize) -> Bytes {
        self.consumed += len as u64;
        self.buf.split_to(len).freeze()
    }

    fn fail(&mut self, error_id: u32, problem: &'static str) -> IngestError {
        let error = IngestError {
            error_id,
            offset: self.consumed,
            problem,
        };
        self.failed = Some(error.clone());
        self.buf = BytesMut::new();
        error
    }
}

// ---------------------------------------------------------------------------------------------
// Acknowledgements
// ---------------------------------------------------------------------------------------------

/// What an acknowledgement reports (PutMedia API reference, "AckEventType").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckEventType {
    /// The first byte of the fragment was received.
    Buffering,
    /// The whole fragment was received.
    Received,
    /// The fragment was persisted (streams with data retention).
    Persisted,
    /// Processing the fragment failed; see the error id.
    Error,
    /// The session is alive but receives no data (sent for up to 30 s).
    Idle,
}

impl AckEventType {
    /// The name on the wire (upper case, as the producer SDKs compare it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buffering => "BUFFERING",
            Self::Received => "RECEIVED",
            Self::Persisted => "PERSISTED",
            Self::Error => "ERROR",
            Self::Idle => "IDLE",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text.to_ascii_uppercase().as_str() {
            "BUFFERING" => Self::Buffering,
            "RECEIVED" => Self::Received,
            "PERSISTED" => Self::Persisted,
            "ERROR" => Self::Error,
            "IDLE" => Self::Idle,
            _ => return None,
        })
    }
}

/// One PutMedia acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// What it reports.
    pub event_type: AckEventType,
    /// The fragment's timecode as sent (absent on IDLE).
    pub fragment_timecode: Option<u64>,
    /// The fragment number KVS gave it.
    pub fragment_number: Option<String>,
    /// On ERROR: the error id (4000-5001, see [`put_media_error_meaning`]).
    pub error_id: Option<u32>,
    /// On ERROR: the error's name, when KVS sends one.
    pub error_code: Option<String>,
}

impl Ack {
    /// The acknowledgement as one JSON line, in the form the producer SDKs parse
    /// (`{"EventType":"PERSISTED","FragmentTimecode":1234,"FragmentNumber":"9134..."}`:
    /// the key names the C and C++ producer SDKs and the embedded SDK read).
    pub fn to_json_line(&self) -> String {
        let mut object = serde_json::Map::new();
        object.insert("EventType".into(), self.event_type.as_str().into());
        if let Some(timecode) = self.fragment_timecode {
            object.insert("FragmentTimecode".into(), timecode.into());
        }
        if let Some(number) = &self.fragment_number {
            object.insert("FragmentNumber".into(), number.clone().into());
        }
        if let Some(id) = self.error_id {
            object.insert("ErrorId".into(), id.into());
        }
        if let Some(code) = &self.error_code {
            object.insert("ErrorCode".into(), code.clone().into());
        }
        let mut line = Value::Object(object).to_string();
        line.push('\n');
        line
    }

    /// Reads one acknowledgement object. The API reference names the event key
    /// `AckEventType` in its text and `EventType` in its example, writes event types as
    /// "Buffering" and the fragment number as a Long, and wraps its example in an
    /// `Acknowledgement` object; the producer SDKs read `EventType`, upper-case types and a
    /// string number, and one comments on lower-camel-case keys. Every one of those readings
    /// is accepted: keys and types in any case, numbers as numbers or strings, wrapped or not.
    pub fn from_value(value: &Value) -> Result<Self, String> {
        let object = value
            .as_object()
            .ok_or_else(|| format!("not a JSON object: {}", excerpt(&value.to_string())))?;
        let object = match object.iter().next() {
            Some((key, Value::Object(inner)))
                if object.len() == 1 && key.eq_ignore_ascii_case("Acknowledgement") =>
            {
                inner
            }
            _ => object,
        };
        let field = |names: &[&str]| {
            object.iter().find_map(|(key, value)| {
                names
                    .iter()
                    .any(|name| key.eq_ignore_ascii_case(name))
                    .then_some(value)
            })
        };
        let number = |value: &Value| match value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        let text = |value: &Value| match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let event = field(&["EventType", "AckEventType"])
            .and_then(Value::as_str)
            .ok_or_else(|| {
                format!(
                    "acknowledgement without an EventType: {}",
                    excerpt(&value.to_string())
                )
            })?;
        let event_type = AckEventType::parse(event)
            .ok_or_else(|| format!("unknown acknowledgement EventType {}", excerpt(event)))?;
        Ok(Self {
            event_type,
            fragment_timecode: field(&["FragmentTimecode"]).and_then(number),
            fragment_number: field(&["FragmentNumber"]).and_then(text),
            error_id: field(&["ErrorId"])
                .and_then(number)
                .and_then(|id| u32::try_from(id).ok()),
            error_code: field(&["ErrorCode"]).and_then(text),
        })
    }
}

/// Reads the acknowledgement stream of a PutMedia response as it arrives (sans-IO): JSON
/// objects separated by newlines, in chunks of any size ("a producer might receive chunks of
/// acknowledgements at the same time").
#[derive(Debug, Default)]
pub struct AckParser {
    buf: Vec<u8>,
}

impl AckParser {
    /// A parser at the start of a response.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends response bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole acknowledgement; `Ok(None)` when more bytes are needed; an error naming
    /// what is not an acknowledgement (the rest of the response is still read).
    pub fn next_ack(&mut self) -> Result<Option<Ack>, String> {
        let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        let result = match values.next() {
            None => {
                self.buf.clear();
                return Ok(None);
            }
            Some(Err(error)) if error.is_eof() => return Ok(None),
            Some(Err(error)) => {
                // Skip to the next line and report what was there.
                let end = self
                    .buf
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(self.buf.len(), |at| at + 1);
                let bad = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end);
                return Err(format!(
                    "unreadable acknowledgement ({error}): {}",
                    excerpt(&bad)
                ));
            }
            Some(Ok(value)) => {
                let used = values.byte_offset();
                (value, used)
            }
        };
        let (value, used) = result;
        self.buf.drain(..used);
        Ack::from_value(&value).map(Some)
    }
}

fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    if text.chars().count() <= MAX {
        text.trim_end().to_string()
    } else {
        format!("{}...", text.chars().take(MAX).collect::<String>())
    }
}

// ---------------------------------------------------------------------------------------------
// EBML helpers
// ---------------------------------------------------------------------------------------------

/// A big-endian unsigned integer of at most 8 bytes.
fn read_uint(content: &[u8]) -> Option<u64> {
    (content.len() <= 8).then(|| content.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
}

/// An unsigned-integer element with an 8-byte value (size field 0x88).
fn write_uint_element(id: u64, value: u64, out: &mut Vec<u8>) {
    let id_bytes = id.to_be_bytes();
    let skip = id_bytes.iter().take_while(|b| **b == 0).count().min(7);
    out.extend_from_slice(&id_bytes[skip..]);
    out.push(0x88);
    out.extend_from_slice(&value.to_be_bytes());
}

/// The TimestampScale inside an Info element's content.
fn info_scale(content: &[u8]) -> Option<u64> {
    children(content)
        .find(|(id, _)| *id == TIMESTAMP_SCALE)
        .and_then(|(_, value)| read_uint(value))
        .filter(|scale| *scale > 0)
}

/// The (id, content) of each child element in `content`, stopping at anything malformed.
fn children(content: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let h = element_header(&content[pos..]).ok()??;
        let start = pos + h.len;
        let end = start.checked_add(usize::try_from(h.size?).ok()?)?;
        let body = content.get(start..end)?;
        pos = end;
        Some((h.id, body))
    })
}

/// The (TagName, TagString) pairs of a Tags element's content.
fn simple_tags(content: &[u8]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (_, tag) in children(content).filter(|(id, _)| *id == TAG) {
        for (_, simple) in children(tag).filter(|(id, _)| *id == SIMPLE_TAG) {
            let mut name = None;
            let mut value = None;
            for (id, field) in children(simple) {
                match id {
                    TAG_NAME => name = Some(String::from_utf8_lossy(field).into_owned()),
                    TAG_STRING => value = Some(String::from_utf8_lossy(field).into_owned()),
                    _ => {}
                }
            }
            if let Some(name) = name {
                pairs.push((name, value.unwrap_or_default()));
            }
        }
    }
    pairs
}

/// A Tags element holding one Tag with these SimpleTags.
fn tags_element(pairs: &[(String, String)]) -> Vec<u8> {
    let pairs: Vec<(&str, String)> = pairs
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect();
    ConnectWriter::segment_tags(&pairs)
}

fn trim_nul(text: &str) -> &str {
    text.trim_end_matches('\0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FragmentReader, MediaEvent, WriterOptions, split_chunks};

    /// (contact, producer ms, per-track bytes) of every fragment a reader sees.
    fn summary(capture: &[u8]) -> Vec<(Option<String>, Option<u64>, Vec<u8>)> {
        let mut reader = FragmentReader::new();
        reader.push(capture);
        reader.end_of_input();
        let mut out: Vec<(Option<String>, Option<u64>, Vec<u8>)> = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            match event {
                MediaEvent::FragmentStart(start) => {
                    out.push((None, start.producer_timestamp_ms, Vec::new()));
                }
                MediaEvent::Tag(tag) if tag.name == TAG_CONTACT_ID => {
                    out.last_mut().unwrap().0 = tag.value.as_str().map(str::to_string);
                }
                MediaEvent::Block(block) => {
                    out.last_mut().unwrap().2.extend_from_slice(&block.payload);
                }
                _ => {}
            }
        }
        out
    }

    fn call(options: WriterOptions) -> Vec<Vec<u8>> {
        let pcm: Vec<u8> = (0..48_000u32).map(|i| (i * 7 % 251) as u8).collect();
        ConnectWriter::new(options).call(&pcm, &pcm[..40_000], 1_764_000_000_000)
    }

    /// Encodes `chunks`, feeds the body to a server parser in `cut`-byte pieces and returns the
    /// chunks it would store, with the events it reported.
    fn round_trip(
        chunks: &[Vec<u8>],
        options: EncoderOptions,
        cut: usize,
    ) -> (Vec<u8>, Vec<IngestEvent>, Vec<EncodedFragment>) {
        let mut encoder = PutMediaEncoder::new(options);
        let encoded: Vec<EncodedFragment> =
            chunks.iter().map(|c| encoder.encode(c).unwrap()).collect();
        let body: Vec<u8> = encoded.iter().flat_map(|e| e.bytes.clone()).collect();
        let mut parser = PutMediaParser::new();
        let mut events = Vec::new();
        let mut stored = Vec::new();
        for (n, piece) in body.chunks(cut.max(1)).enumerate() {
            parser.push(piece);
            while let Some(event) = parser.next_event().unwrap() {
                if let IngestEvent::Fragment(f) = &event {
                    let number = ConnectWriter::fragment_number(n as u64 + 1000);
                    stored.extend(parser.chunk(f, &number, f.timecode_ms + 200, f.timecode_ms));
                }
                events.push(event);
            }
        }
        if let Some(f) = parser.finish().unwrap() {
            stored.extend(parser.chunk(&f, "1", f.timecode_ms, f.timecode_ms));
            events.push(IngestEvent::Fragment(f));
        }
        (stored, events, encoded)
    }

    #[test]
    fn a_call_sent_with_put_media_reads_back_the_same_through_get_media() {
        for options in [
            WriterOptions::default(),
            WriterOptions {
                known_size_clusters: true,
                nul_padding: true,
                swap_track_numbers: true,
                ..WriterOptions::default()
            },
        ] {
            let chunks = call(options);
            let (stored, events, encoded) = round_trip(&chunks, EncoderOptions::default(), 777);
            assert_eq!(summary(&stored), summary(&chunks.concat()));
            // One BUFFERING-worthy start and one fragment per chunk, in order.
            let begins: Vec<u64> = events
                .iter()
                .filter_map(|e| match e {
                    IngestEvent::FragmentBegins { timecode } => Some(*timecode),
                    _ => None,
                })
                .collect();
            let sent: Vec<u64> = encoded.iter().map(|e| e.clusters[0].ticks).collect();
            assert_eq!(begins, sent);
            assert_eq!(split_chunks(&stored).unwrap().len(), chunks.len());
            // The body has one EBML header and carries none of KVS's own tags.
            let body: Vec<u8> = encoded.iter().flat_map(|e| e.bytes.clone()).collect();
            let count = |needle: &[u8]| body.windows(needle.len()).filter(|w| *w == needle).count();
            assert_eq!(count(&[0x1A, 0x45, 0xDF, 0xA3]), 1);
            assert_eq!(count(KVS_TAG_PREFIX.as_bytes()), 0);
        }
    }

    #[test]
    fn a_recording_is_moved_to_now_and_re_tagged_as_a_fresh_contact() {
        let chunks = call(WriterOptions::default());
        let now = 1_800_000_000_123;
        let (stored, _, encoded) = round_trip(
            &chunks,
            EncoderOptions {
                start_at_ms: Some(now),
                contact_id: Some("fresh-contact".into()),
            },
            4096,
        );
        let original = summary(&chunks.concat());
        let moved = summary(&stored);
        assert_eq!(moved.len(), original.len());
        for (a, b) in original.iter().zip(&moved) {
            assert_eq!(b.0.as_deref(), Some("fresh-contact"));
            assert_eq!(b.1.unwrap() - a.1.unwrap(), now - original[0].1.unwrap());
            assert_eq!(a.2, b.2, "same audio");
        }
        assert_eq!(encoded[0].clusters[0].ms, now);
    }

    #[test]
    fn chunks_that_put_media_cannot_carry_are_refused_naming_the_chunk() {
        let chunks = call(WriterOptions::default());
        let mut encoder = PutMediaEncoder::new(EncoderOptions::default());
        encoder.encode(&chunks[1]).unwrap();
        let error = encoder.encode(&chunks[0]).unwrap_err();
        assert_eq!(error.chunk, 1);
        assert!(error.problem.contains("4004"), "{error}");
        let error = PutMediaEncoder::new(EncoderOptions::default())
            .encode(&ConnectWriter::error_chunk("Access denied", "4500"))
            .unwrap_err();
        assert!(error.problem.contains("error chunk"), "{error}");
        let mut other = ConnectWriter::new(WriterOptions {
            swap_track_numbers: true,
            ..WriterOptions::default()
        });
        let mut encoder = PutMediaEncoder::new(EncoderOptions::default());
        encoder.encode(&chunks[0]).unwrap();
        let later = other.fragment(
            1_764_000_009_000,
            &[crate::FragmentAudio {
                role: crate::TrackRole::Caller,
                timestamp_ns: 1_764_000_009_000_000_000,
                pcm: &[0; 1024],
            }],
        );
        let error = encoder.encode(&later).unwrap_err();
        assert!(error.problem.contains("Tracks differ"), "{error}");
        assert!(encoder.encode(&chunks[0][..100]).is_err());
    }

    #[test]
    fn a_body_that_is_not_one_mkv_segment_is_refused_with_4006() {
        let chunks = call(WriterOptions::default());
        // Two GetMedia chunks back to back: two EBML headers.
        let mut parser = PutMediaParser::new();
        parser.push(&chunks[..2].concat());
        let error = loop {
            match parser.next_event() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("two segments accepted"),
                Err(error) => break error,
            }
        };
        assert_eq!(error.error_id, 4006);
        let mut parser = PutMediaParser::new();
        parser.push(b"not matroska at all");
        assert_eq!(parser.next_event().unwrap_err().error_id, 4006);
        // A body cut within an element.
        let body = PutMediaEncoder::new(EncoderOptions::default())
            .encode(&chunks[0])
            .unwrap()
            .bytes;
        let mut parser = PutMediaParser::new();
        parser.push(&body[..body.len() - 5]);
        while parser.next_event().unwrap().is_some() {}
        assert_eq!(parser.finish().unwrap_err().error_id, 4006);
    }

    /// What a [`PutMediaParser`] reads from `body` pushed in pieces of `piece` bytes: the
    /// fragments (each also made into its GetMedia chunk), or the first error.
    fn read_body(body: &[u8], piece: usize) -> Result<Vec<IngestedFragment>, IngestError> {
        let mut parser = PutMediaParser::new();
        let mut fragments = Vec::new();
        for bytes in body.chunks(piece) {
            parser.push(bytes);
            while let Some(event) = parser.next_event()? {
                if let IngestEvent::Fragment(f) = event {
                    parser.chunk(&f, "1", 0, 0);
                    fragments.push(f);
                }
            }
        }
        fragments.extend(parser.finish()?);
        Ok(fragments)
    }

    /// Every result of an [`AckParser`] fed `bytes` in pieces of `piece`, until it has
    /// nothing more.
    fn read_acks(bytes: &[u8], piece: usize) -> Vec<Result<Ack, String>> {
        let mut parser = AckParser::new();
        let mut results = Vec::new();
        for part in bytes.chunks(piece) {
            parser.push(part);
            for _ in 0..=part.len() {
                match parser.next_ack() {
                    Ok(None) => break,
                    Ok(Some(ack)) => results.push(Ok(ack)),
                    Err(e) => results.push(Err(e)),
                }
            }
        }
        results
    }

    proptest::proptest! {
        /// Damaged input is an error the service would send, never a panic, and the same
        /// whichever way the bytes arrive: a PutMedia body (bytes flipped, cut anywhere),
        /// a chunk to encode, and an acknowledgement stream.
        #[test]
        fn damaged_input_is_a_documented_error_however_it_arrives(
            flips in proptest::collection::vec((0usize..40_000, 1u8..=255), 0..8),
            cut in 1usize..3_000,
            acks in proptest::collection::vec(0u8..=255, 0..300),
        ) {
            let chunks = call(WriterOptions::default());
            let mut body: Vec<u8> = Vec::new();
            let mut encoder = PutMediaEncoder::new(EncoderOptions::default());
            for chunk in &chunks[..3] {
                body.extend(encoder.encode(chunk).unwrap().bytes);
            }
            // Whole, in any pieces: its three fragments.
            let whole = read_body(&body, body.len()).unwrap();
            proptest::prop_assert_eq!(whole.len(), 3);
            proptest::prop_assert_eq!(&read_body(&body, cut).unwrap(), &whole);
            let mut chunk = chunks[0].clone();
            let mut damaged = body.clone();
            for (at, byte) in &flips {
                if let Some(b) = damaged.get_mut(*at) {
                    *b ^= byte;
                }
                if let Some(b) = chunk.get_mut(*at) {
                    *b ^= byte;
                }
            }
            // Damaged: what is read does not depend on the pieces, and an error is one of
            // PutMedia's documented ids, at a byte of the body.
            let read = read_body(&damaged, cut);
            proptest::prop_assert_eq!(&read, &read_body(&damaged, damaged.len()));
            if let Err(error) = &read {
                proptest::prop_assert!(put_media_error_meaning(error.error_id).is_some(), "{}", error);
                proptest::prop_assert!(error.offset <= damaged.len() as u64, "{}", error);
            }
            // A cut body: 4006 when it ends within an element, as the service answers;
            // cut between elements, the fragments before the cut.
            let cut_body = &body[..body.len() - cut.min(body.len() - 1)];
            match read_body(cut_body, cut) {
                Err(error) => proptest::prop_assert_eq!(error.error_id, 4006),
                Ok(fragments) => {
                    proptest::prop_assert!(fragments.len() <= 3);
                    let complete = fragments.len().saturating_sub(1);
                    proptest::prop_assert_eq!(&fragments[..complete], &whole[..complete]);
                }
            }
            // A damaged chunk is encoded or refused with a reason.
            if let Err(error) = (PutMediaEncoder::new(EncoderOptions {
                start_at_ms: Some(1),
                contact_id: Some("x".into()),
            }))
            .encode(&chunk)
            {
                proptest::prop_assert!(!error.problem.is_empty());
            }
            // Acknowledgements: the same ones byte by byte as in one piece, up to the same
            // first error (a client stops there; its text quotes what had arrived).
            let until_error = |results: Vec<Result<Ack, String>>| {
                let failed = results.iter().any(Result::is_err);
                let acks: Vec<Ack> = results.into_iter().map_while(Result::ok).collect();
                (acks, failed)
            };
            proptest::prop_assert_eq!(
                until_error(read_acks(&acks, 1)),
                until_error(read_acks(&acks, acks.len().max(1)))
            );
        }
    }

    #[test]
    fn acknowledgements_are_read_in_every_documented_form_and_any_chunking() {
        let sent = [
            Ack {
                event_type: AckEventType::Buffering,
                fragment_timecode: Some(1_764_000_000_000),
                fragment_number: Some("91343852333181432392682062607743920146264183458".into()),
                error_id: None,
                error_code: None,
            },
            Ack {
                event_type: AckEventType::Error,
                fragment_timecode: Some(5),
                fragment_number: None,
                error_id: Some(4004),
                error_code: Some("FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS".into()),
            },
            Ack {
                event_type: AckEventType::Idle,
                fragment_timecode: None,
                fragment_number: None,
                error_id: None,
                error_code: None,
            },
        ];
        let wire: String = sent.iter().map(Ack::to_json_line).collect();
        for cut in [1, 7, wire.len()] {
            let mut parser = AckParser::new();
            let mut got = Vec::new();
            for piece in wire.as_bytes().chunks(cut) {
                parser.push(piece);
                while let Some(ack) = parser.next_ack().unwrap() {
                    got.push(ack);
                }
            }
            assert_eq!(got, sent);
        }
        // The API reference's own spellings.
        let mut parser = AckParser::new();
        parser.push(
            br#"{"Acknowledgement":{"AckEventType":"Persisted","FragmentTimecode":"12","FragmentNumber":913,"ErrorId":"5000"}}
{"ackEventType":"RECEIVED","fragmentTimecode":3400,"fragmentNumber":"9134"}"#,
        );
        let ack = parser.next_ack().unwrap().unwrap();
        assert_eq!(ack.event_type, AckEventType::Persisted);
        assert_eq!(ack.fragment_timecode, Some(12));
        assert_eq!(ack.fragment_number.as_deref(), Some("913"));
        assert_eq!(ack.error_id, Some(5000));
        let ack = parser.next_ack().unwrap().unwrap();
        assert_eq!(ack.event_type, AckEventType::Received);
        assert_eq!(ack.fragment_timecode, Some(3400));
        // Garbage is reported and skipped.
        parser.push(b"<html>502 Bad Gateway</html>\n{\"EventType\":\"IDLE\"}\n");
        assert!(parser.next_ack().unwrap_err().contains("502 Bad Gateway"));
        assert_eq!(
            parser.next_ack().unwrap().unwrap().event_type,
            AckEventType::Idle
        );
        assert_eq!(parser.next_ack().unwrap(), None);
        assert_eq!(
            put_media_error_meaning(4004).unwrap(),
            "fragment timecode is less than the previous one (fragments out of order)"
        );
    }
}
