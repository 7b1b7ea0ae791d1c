//! What a [`crate::FragmentReader`] reports: the events of a GetMedia stream.

use bytes::Bytes;

/// Tag name of the KVS fragment number (before the cluster).
pub const TAG_FRAGMENT_NUMBER: &str = "AWS_KINESISVIDEO_FRAGMENT_NUMBER";
/// Tag name of the KVS server timestamp, decimal seconds (before the cluster).
pub const TAG_SERVER_TIMESTAMP: &str = "AWS_KINESISVIDEO_SERVER_TIMESTAMP";
/// Tag name of the KVS producer timestamp, decimal seconds (before the cluster).
pub const TAG_PRODUCER_TIMESTAMP: &str = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP";
/// Tag name of how far behind real time the fragment is, in ms (after the cluster).
pub const TAG_MILLIS_BEHIND_NOW: &str = "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW";
/// Tag name of the token that resumes GetMedia after this fragment (after the cluster).
pub const TAG_CONTINUATION_TOKEN: &str = "AWS_KINESISVIDEO_CONTINUATION_TOKEN";
/// Tag name of a KVS error chunk's error code.
pub const TAG_ERROR_CODE: &str = "AWS_KINESISVIDEO_ERROR_CODE";
/// Tag name of a KVS error chunk's error id.
pub const TAG_ERROR_ID: &str = "AWS_KINESISVIDEO_ERROR_ID";
/// Connect's tag naming the contact whose audio the fragment carries (after the cluster).
pub const TAG_CONTACT_ID: &str = "ContactId";
/// Connect's tag naming the Connect instance.
pub const TAG_INSTANCE_ID: &str = "InstanceId";
/// Track name of the caller's audio in Connect streams.
pub const TRACK_FROM_CUSTOMER: &str = "AUDIO_FROM_CUSTOMER";
/// Track name of the agent's audio in Connect streams.
pub const TRACK_TO_CUSTOMER: &str = "AUDIO_TO_CUSTOMER";
/// Customer track name of an older Connect layout.
pub const TRACK_LEGACY_CUSTOMER: &str = "Track_audio/L16";

/// One thing read from the stream, reported as soon as its last byte has arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    /// A KVS fragment begins (its AWS_KINESISVIDEO_* tags before the cluster).
    FragmentStart(FragmentStart),
    /// The track table, reported when first seen and whenever it changes.
    Tracks(Vec<TrackInfo>),
    /// A block of media (audio for Connect) with its absolute timestamp.
    Block(MediaBlock),
    /// A SimpleTag other than the AWS_KINESISVIDEO_* ones (Connect's ContactId, etc.).
    Tag(SimpleTag),
    /// A KVS fragment is complete (MILLIS_BEHIND_NOW / CONTINUATION_TOKEN after the cluster).
    FragmentEnd(FragmentEnd),
    /// KVS sent an error chunk instead of media.
    Error(KvsError),
}

/// The KVS bookkeeping at the start of a fragment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FragmentStart {
    /// KVS fragment number (a long decimal string).
    pub fragment_number: Option<String>,
    /// When KVS received the fragment, ms since the epoch.
    pub server_timestamp_ms: Option<u64>,
    /// When the producer (Connect) created the fragment, ms since the epoch.
    pub producer_timestamp_ms: Option<u64>,
    /// Byte offset of the fragment's first tag in the input.
    pub offset: u64,
}

/// The KVS bookkeeping at the end of a fragment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FragmentEnd {
    /// How far the fragment is behind the stream's newest data, in ms.
    pub millis_behind_now: Option<u64>,
    /// Token to resume GetMedia after this fragment.
    pub continuation_token: Option<String>,
}

/// A KVS error chunk (e.g. code 4000: fragment not found; 4500-4504: KMS errors).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvsError {
    /// AWS_KINESISVIDEO_ERROR_CODE.
    pub code: String,
    /// AWS_KINESISVIDEO_ERROR_ID.
    pub id: String,
}

/// Who speaks on a Connect audio track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackRole {
    /// `AUDIO_FROM_CUSTOMER` (or legacy `Track_audio/L16`): the caller, stereo channel 0.
    Caller,
    /// `AUDIO_TO_CUSTOMER`: the agent, stereo channel 1.
    Agent,
}

impl TrackRole {
    /// The role Connect gives a track of this (NUL-trimmed) name, if any.
    pub fn from_track_name(name: &str) -> Option<Self> {
        match name {
            TRACK_FROM_CUSTOMER | TRACK_LEGACY_CUSTOMER => Some(Self::Caller),
            TRACK_TO_CUSTOMER => Some(Self::Agent),
            _ => None,
        }
    }
}

/// One entry of a segment's track table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackInfo {
    /// Track number used by blocks.
    pub number: u64,
    /// Track name, trailing NULs trimmed.
    pub name: String,
    /// CodecID, trailing NULs trimmed (Connect says `A_AAC` for raw L16 PCM).
    pub codec_id: String,
    /// Audio sampling frequency, when the track declares one.
    pub sampling_frequency: Option<f64>,
    /// Audio channel count, when the track declares one.
    pub channels: Option<u64>,
    /// Connect role derived from the name.
    pub role: Option<TrackRole>,
}

/// A block of one track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaBlock {
    /// Track number.
    pub track: u64,
    /// Absolute timestamp: (cluster Timecode + block timecode) x TimecodeScale, in ns.
    pub timestamp_ns: i64,
    /// The frame data. Laced frames are concatenated in order (for raw PCM they are
    /// consecutive samples); `frames` says how many there were.
    pub payload: Bytes,
    /// Number of frames the block held (1 unless laced).
    pub frames: usize,
    /// Byte offset of the block element in the input.
    pub offset: u64,
}

/// A SimpleTag's name and value, trailing NULs trimmed from strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleTag {
    /// TagName.
    pub name: String,
    /// TagString or TagBinary.
    pub value: TagValue,
}

/// The value of a SimpleTag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagValue {
    /// TagString.
    String(String),
    /// TagBinary.
    Binary(Vec<u8>),
}

impl TagValue {
    /// The string value, if the tag is a TagString.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            Self::Binary(_) => None,
        }
    }
}
