//! [`FragmentReader`]: bytes of a GetMedia stream in, [`MediaEvent`]s out. No I/O.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use ebml_iterable::error::{CorruptedFileError, TagIteratorError};
use ebml_iterable::iterator::AllowableErrors;
use ebml_iterable::{PositionedTag, TagDecoder};
use webm_iterable::matroska_spec::{EbmlTag, Master, MatroskaSpec};

use crate::block::{BlockError, BlockHeader, read_vint};
use crate::event::*;

/// Default limit on a single non-master element (a block, a tag value). Connect blocks are
/// about 1 KiB; the limit only stops a corrupt size field from making the reader buffer
/// the rest of the stream.
pub const DEFAULT_MAX_ELEMENT_SIZE: usize = 4 << 20;

/// Element IDs the cluster scanner knows.
const CLUSTER: u64 = 0x1F43_B675;
const CLUSTER_ID: [u8; 4] = [0x1F, 0x43, 0xB6, 0x75];
const TIMESTAMP: u64 = 0xE7;
const SIMPLE_BLOCK: u64 = 0xA3;
const BLOCK: u64 = 0xA1;

/// Children (at any depth) of a Cluster in the Matroska specification, plus the global Void
/// and CRC-32. Anything else ends an unknown-size cluster.
fn is_cluster_child(id: u64) -> bool {
    matches!(
        id,
        0xE7 | 0x5854
            | 0x58D7
            | 0xA7
            | 0xAB
            | 0xA3
            | 0xA0
            | 0xA1
            | 0xA2
            | 0x75A1
            | 0xA6
            | 0xEE
            | 0xA5
            | 0x9B
            | 0xFA
            | 0xFB
            | 0xFD
            | 0xA4
            | 0x75A2
            | 0xC8
            | 0xC9
            | 0xCA
            | 0x8E
            | 0xE8
            | 0xCB
            | 0xCC
            | 0xCD
            | 0xCE
            | 0xCF
            | 0xAF
            | 0xEC
            | 0xBF
    )
}

/// Cluster descendants that are masters (SilentTracks, BlockGroup, BlockAdditions, BlockMore,
/// ReferenceFrame, Slices, TimeSlice): entered, not skipped.
fn is_cluster_master(id: u64) -> bool {
    matches!(id, 0x5854 | 0xA0 | 0x75A1 | 0xA6 | 0xC8 | 0x8E | 0xE8)
}

/// A decoder for the parts of the stream outside clusters.
fn new_decoder() -> TagDecoder<MatroskaSpec> {
    let mut decoder = TagDecoder::new(&[]);
    // Void, CRC-32 and vendor elements are not in the spec: read them as raw and skip.
    decoder.allow_errors(&[AllowableErrors::InvalidTagIds]);
    // Known-size Segments and Clusters larger than any limit are legal (whole-file captures);
    // the data-element limit is enforced in `next_event` on what is actually buffered.
    decoder.set_max_allowable_tag_size(None);
    decoder
}

/// Where the cluster scanner is.
#[derive(Debug)]
struct ClusterScan {
    /// Stream offset of the next unread byte.
    position: u64,
    /// Stream offset where a known-size cluster ends.
    end: Option<u64>,
    /// Bytes of a skipped element still to drop as they arrive.
    skip: u64,
}

/// Every KVS chunk (and every Matroska file) starts with the EBML header's ID.
const EBML_MAGIC: [u8; 4] = [0x1A, 0x45, 0xDF, 0xA3];

/// A malformed or truncated stream, with the byte offset where reading stopped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("at byte {offset}: {kind}")]
pub struct ReadError {
    /// Offset in the input of the element that could not be read.
    pub offset: u64,
    /// What was wrong.
    pub kind: ReadErrorKind,
}

/// What was wrong with the input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReadErrorKind {
    /// The input does not start with an EBML header.
    #[error("not a Matroska/KVS stream: expected an EBML header (1A 45 DF A3), found {found}")]
    NotEbml {
        /// What was found instead (hex bytes, or an element ID).
        found: String,
    },
    /// The EBML header names a document type other than Matroska or WebM.
    #[error("EBML document type {0:?} is not Matroska")]
    DocType(String),
    /// The input ended inside an element.
    #[error("input is truncated inside element {}", id.map_or("(unreadable ID)".to_string(), |id| format!("0x{id:X}")))]
    Truncated {
        /// ID of the unfinished element, when its header was complete enough to read.
        id: Option<u64>,
    },
    /// An element header or size is invalid.
    #[error("element 0x{id:X} has an invalid header or size")]
    BadElement {
        /// Element ID.
        id: u64,
    },
    /// An element is larger than its parent or than the reader's limit.
    #[error("element 0x{id:X} declares {size} bytes, more than {limit}")]
    TooLarge {
        /// Element ID.
        id: u64,
        /// Declared size.
        size: u64,
        /// What it had to fit in.
        limit: u64,
    },
    /// An element's declared size runs past the end of the element that contains it.
    #[error("element 0x{id:X} declares {size} bytes, more than its parent element holds")]
    ExceedsParent {
        /// Element ID.
        id: u64,
        /// Declared size.
        size: u64,
    },
    /// An element appears where the Matroska hierarchy does not allow it.
    #[error("element 0x{found:X} is not allowed inside {}", parent.map_or("the top level".to_string(), |p| format!("0x{p:X}")))]
    Misplaced {
        /// The misplaced element.
        found: u64,
        /// Its would-be parent.
        parent: Option<u64>,
    },
    /// An element's value cannot be decoded (bad UTF-8, bad number length).
    #[error("element 0x{id:X} holds an invalid value: {problem}")]
    BadValue {
        /// Element ID.
        id: u64,
        /// The decoder's description.
        problem: String,
    },
    /// A block's header or lacing is malformed.
    #[error("{0}")]
    Block(#[from] BlockError),
    /// A block came before its cluster's Timestamp element.
    #[error("block appears before its cluster's Timestamp")]
    BlockBeforeClusterTimestamp,
    /// A block's timestamp does not fit in 64-bit nanoseconds.
    #[error("block timestamp is out of range (cluster timecode x TimecodeScale overflows)")]
    TimestampOutOfRange,
    /// TimecodeScale is zero.
    #[error("TimecodeScale is 0")]
    ZeroTimecodeScale,
    /// A KVS tag has a value that cannot be parsed.
    #[error("tag {name} has an invalid value {value:?}")]
    BadKvsTag {
        /// Tag name.
        name: &'static str,
        /// The value found.
        value: String,
    },
}

/// Sans-IO reader of a Kinesis Video Streams GetMedia byte stream (concatenated MKV fragments,
/// as Amazon Connect writes them). Push bytes in any chunking, pull events as soon as each is
/// complete. After an error the reader stays failed and returns that error again.
pub struct FragmentReader {
    decoder: TagDecoder<MatroskaSpec>,
    /// Stream offset of the decoder's position 0 (a new decoder starts after each cluster).
    base: u64,
    /// Inside a Cluster, read by the zero-copy scanner rather than the decoder.
    cluster: Option<ClusterScan>,
    buf: BytesMut,
    events: VecDeque<MediaEvent>,
    input_ended: bool,
    finished: bool,
    failed: Option<ReadError>,
    max_element_size: usize,
    // Parse state.
    seen_first: bool,
    in_ebml_header: bool,
    in_segment: bool,
    timecode_scale: u64,
    cluster_timecode: Option<u64>,
    tracks: Vec<TrackInfo>,
    new_tracks: Option<Vec<TrackInfo>>,
    new_entry: Option<TrackInfo>,
    tag_name: Option<String>,
    pending_start: Option<FragmentStart>,
    pending_end: Option<FragmentEnd>,
    pending_error: Option<(Option<String>, Option<String>)>,
}

impl Default for FragmentReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FragmentReader {
    /// A reader with the default element size limit.
    pub fn new() -> Self {
        Self::with_max_element_size(DEFAULT_MAX_ELEMENT_SIZE)
    }

    /// A reader that rejects any non-master element larger than `limit` bytes.
    pub fn with_max_element_size(limit: usize) -> Self {
        Self {
            decoder: new_decoder(),
            base: 0,
            cluster: None,
            buf: BytesMut::new(),
            events: VecDeque::new(),
            input_ended: false,
            finished: false,
            failed: None,
            max_element_size: limit,
            seen_first: false,
            in_ebml_header: false,
            in_segment: false,
            timecode_scale: 1_000_000,
            cluster_timecode: None,
            tracks: Vec::new(),
            new_tracks: None,
            new_entry: None,
            tag_name: None,
            pending_start: None,
            pending_end: None,
            pending_error: None,
        }
    }

    /// Appends bytes of the stream. Bytes pushed after [`Self::end_of_input`] are ignored.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.input_ended {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Declares that the stream has ended: anything left unfinished is then an error.
    pub fn end_of_input(&mut self) {
        self.input_ended = true;
    }

    /// Offset of the first byte not yet consumed.
    pub fn position(&self) -> u64 {
        match &self.cluster {
            Some(scan) => scan.position,
            None => self.base + self.decoder.position() as u64,
        }
    }

    /// The current track table (empty until the first Tracks element is read).
    pub fn tracks(&self) -> &[TrackInfo] {
        &self.tracks
    }

    /// The next event, `Ok(None)` when more input is needed (or, after
    /// [`Self::end_of_input`], when the stream is fully read).
    pub fn next_event(&mut self) -> Result<Option<MediaEvent>, ReadError> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            if let Some(error) = &self.failed {
                return Err(error.clone());
            }
            if self.finished {
                return Ok(None);
            }
            if !self.seen_first && !self.magic_ok() {
                if self.buf.len() < EBML_MAGIC.len() && !self.input_ended {
                    return Ok(None);
                }
                let found = if self.buf.is_empty() {
                    "no data".to_string()
                } else {
                    hex(&self.buf[..self.buf.len().min(EBML_MAGIC.len())])
                };
                self.fail(ReadError {
                    offset: 0,
                    kind: ReadErrorKind::NotEbml { found },
                });
                continue;
            }
            if self.cluster.is_some() {
                match self.scan_cluster() {
                    Ok(true) => continue,
                    Ok(false) if self.input_ended => {
                        if let Err(error) = self.end_in_cluster() {
                            self.fail(error);
                        } else {
                            self.flush_pending();
                            self.finished = true;
                        }
                        continue;
                    }
                    Ok(false) => return Ok(None),
                    Err(error) => {
                        self.fail(error);
                        continue;
                    }
                }
            }
            match self.enter_cluster() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => {
                    self.fail(error);
                    continue;
                }
            }
            let decoded = if self.input_ended {
                self.decoder.decode_eof(&mut self.buf)
            } else {
                self.decoder.decode(&mut self.buf)
            };
            match decoded {
                Ok(Some(tag)) => {
                    let offset = self.base + tag.offset as u64;
                    if let Err(kind) = self.handle(tag) {
                        self.fail(ReadError { offset, kind });
                    }
                }
                Ok(None) if self.input_ended => {
                    self.flush_pending();
                    self.finished = true;
                }
                Ok(None) => {
                    if self.buf.len() > self.max_element_size {
                        let error = self.oversized_element();
                        self.fail(error);
                        continue;
                    }
                    return Ok(None);
                }
                Err(error) => {
                    let error = self.decode_error(error);
                    self.fail(error);
                }
            }
        }
    }

    /// If a Cluster header is next, finishes what the decoder has pending (End events of
    /// elements that ended before it) and switches to the cluster scanner. `Ok(true)`: entered.
    fn enter_cluster(&mut self) -> Result<bool, ReadError> {
        if !self.buf.starts_with(&CLUSTER_ID) {
            return Ok(false);
        }
        let Some((size, size_len)) = read_size(&self.buf[CLUSTER_ID.len()..]) else {
            return Ok(false); // header incomplete: the decoder waits or reports truncation
        };
        // Elements that ended right before the cluster are closed by a decode with no input.
        let mut nothing = BytesMut::new();
        loop {
            match self.decoder.decode(&mut nothing) {
                Ok(Some(tag)) => {
                    let offset = self.base + tag.offset as u64;
                    self.handle(tag)
                        .map_err(|kind| ReadError { offset, kind })?;
                }
                Ok(None) => break,
                Err(error) => return Err(self.decode_error(error)),
            }
        }
        let offset = self.position();
        if !self.in_segment {
            return Err(ReadError {
                offset,
                kind: ReadErrorKind::Misplaced {
                    found: CLUSTER,
                    parent: None,
                },
            });
        }
        let header = CLUSTER_ID.len() + size_len;
        let _ = self.buf.split_to(header);
        let data_start = offset + header as u64;
        self.flush_pending();
        self.cluster_timecode = None;
        self.cluster = Some(ClusterScan {
            position: data_start,
            end: size.map(|size| data_start.saturating_add(size)),
            skip: 0,
        });
        Ok(true)
    }

    /// Reads cluster children without the decoder: blocks come out as zero-copy slices of the
    /// input. `Ok(true)`: progress was made; `Ok(false)`: more input is needed.
    fn scan_cluster(&mut self) -> Result<bool, ReadError> {
        let scan = self.cluster.as_mut().expect("scanning a cluster");
        if scan.skip > 0 {
            let n = scan.skip.min(self.buf.len() as u64);
            let _ = self.buf.split_to(n as usize);
            scan.skip -= n;
            scan.position += n;
            return Ok(n > 0);
        }
        if scan.end == Some(scan.position) {
            self.leave_cluster();
            return Ok(true);
        }
        let offset = scan.position;
        let Some(&first) = self.buf.first() else {
            return Ok(false);
        };
        if first == 0 || first.leading_zeros() >= 4 {
            return Err(ReadError {
                offset,
                kind: ReadErrorKind::BadElement {
                    id: u64::from(first),
                },
            });
        }
        let Some((id, id_len)) = read_id(&self.buf) else {
            return Ok(false);
        };
        if !is_cluster_child(id) {
            if scan.end.is_some() {
                return Err(ReadError {
                    offset,
                    kind: ReadErrorKind::Misplaced {
                        found: id,
                        parent: Some(CLUSTER),
                    },
                });
            }
            self.leave_cluster();
            return Ok(true);
        }
        let Some((size, size_len)) = read_size(&self.buf[id_len..]) else {
            if self.buf.len() >= id_len + 8 {
                return Err(ReadError {
                    offset,
                    kind: ReadErrorKind::BadElement { id },
                });
            }
            return Ok(false);
        };
        let header = id_len + size_len;
        let element_end =
            size.map(|size| offset.saturating_add(header as u64).saturating_add(size));
        if let (Some(end), Some(element_end)) = (scan.end, element_end)
            && element_end > end
        {
            return Err(ReadError {
                offset,
                kind: ReadErrorKind::TooLarge {
                    id,
                    size: size.unwrap_or(0),
                    limit: end - offset,
                },
            });
        }
        if is_cluster_master(id) {
            // Enter: its children are read in the same flat loop (their IDs are distinct).
            let _ = self.buf.split_to(header);
            scan.position += header as u64;
            return Ok(true);
        }
        let Some(size) = size else {
            return Err(ReadError {
                offset,
                kind: ReadErrorKind::BadElement { id },
            });
        };
        match id {
            SIMPLE_BLOCK | BLOCK | TIMESTAMP => {
                let total = header as u64 + size;
                if size > self.max_element_size as u64 || (id == TIMESTAMP && size > 8) {
                    return Err(ReadError {
                        offset,
                        kind: ReadErrorKind::TooLarge {
                            id,
                            size,
                            limit: if id == TIMESTAMP {
                                8
                            } else {
                                self.max_element_size as u64
                            },
                        },
                    });
                }
                if (self.buf.len() as u64) < total {
                    return Ok(false);
                }
                let element = self.buf.split_to(total as usize).freeze();
                scan.position += total;
                let data = element.slice(header..);
                if id == TIMESTAMP {
                    let timecode = data.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b));
                    self.cluster_timecode = Some(timecode);
                } else {
                    let block = self
                        .block(data, offset)
                        .map_err(|kind| ReadError { offset, kind })?;
                    self.emit(MediaEvent::Block(block));
                }
            }
            _ => {
                let header_and_size = header as u64 + size;
                scan.skip = header_and_size;
            }
        }
        Ok(true)
    }

    /// The cluster ended: later elements go to a new decoder starting at this offset (it infers
    /// its place in the document from the first element it sees).
    fn leave_cluster(&mut self) {
        if let Some(scan) = self.cluster.take() {
            self.base = scan.position;
            self.decoder = new_decoder();
        }
    }

    /// End of input inside a cluster: fine at an element boundary of an unknown-size cluster.
    fn end_in_cluster(&mut self) -> Result<(), ReadError> {
        let scan = self.cluster.as_ref().expect("scanning a cluster");
        let offset = scan.position;
        if !self.buf.is_empty() || scan.skip > 0 {
            return Err(ReadError {
                offset,
                kind: ReadErrorKind::Truncated {
                    id: read_id(&self.buf).map(|(id, _)| id),
                },
            });
        }
        if scan.end.is_some_and(|end| end > offset) {
            return Err(ReadError {
                offset,
                kind: ReadErrorKind::Truncated { id: Some(CLUSTER) },
            });
        }
        self.cluster = None;
        Ok(())
    }

    /// Whether the buffered start of the stream is (a prefix of) the EBML magic.
    fn magic_ok(&self) -> bool {
        let n = self.buf.len().min(EBML_MAGIC.len());
        n == EBML_MAGIC.len() && self.buf[..n] == EBML_MAGIC[..n]
    }

    fn fail(&mut self, error: ReadError) {
        self.flush_pending();
        self.failed = Some(error);
        self.buf = BytesMut::new();
    }

    fn oversized_element(&self) -> ReadError {
        let offset = self.position();
        let (id, size) = element_header(&self.buf).unwrap_or((0, self.buf.len() as u64));
        ReadError {
            offset,
            kind: ReadErrorKind::TooLarge {
                id,
                size,
                limit: self.max_element_size as u64,
            },
        }
    }

    fn decode_error(&self, error: TagIteratorError) -> ReadError {
        let here = self.position();
        let (offset, kind) = match error {
            TagIteratorError::UnexpectedEOF {
                tag_start, tag_id, ..
            } => (
                self.base + tag_start as u64,
                ReadErrorKind::Truncated { id: tag_id },
            ),
            TagIteratorError::CorruptedFileData(corrupt) => match corrupt {
                CorruptedFileError::InvalidTagId { position, tag_id }
                | CorruptedFileError::InvalidTagData { position, tag_id } => (
                    self.base + position as u64,
                    ReadErrorKind::BadElement { id: tag_id },
                ),
                CorruptedFileError::InvalidTagSize {
                    position,
                    tag_id,
                    size,
                }
                | CorruptedFileError::OversizedChildElement {
                    position,
                    tag_id,
                    size,
                } => (
                    self.base + position as u64,
                    ReadErrorKind::ExceedsParent {
                        id: tag_id,
                        size: size as u64,
                    },
                ),
                CorruptedFileError::HierarchyError {
                    found_tag_id,
                    current_parent_id,
                } => (
                    here,
                    ReadErrorKind::Misplaced {
                        found: found_tag_id,
                        parent: current_parent_id,
                    },
                ),
            },
            TagIteratorError::CorruptedTagData { tag_id, problem } => (
                here,
                ReadErrorKind::BadValue {
                    id: tag_id,
                    problem: problem.to_string(),
                },
            ),
            TagIteratorError::ReadError { source } => (
                here,
                ReadErrorKind::BadValue {
                    id: 0,
                    problem: source.to_string(),
                },
            ),
        };
        ReadError { offset, kind }
    }

    fn handle(&mut self, positioned: PositionedTag<MatroskaSpec>) -> Result<(), ReadErrorKind> {
        let offset = positioned.offset as u64;
        let tag = positioned.tag;
        if !self.seen_first {
            self.seen_first = true;
            if !matches!(tag, MatroskaSpec::Ebml(Master::Start)) {
                return Err(ReadErrorKind::NotEbml {
                    found: format!("element ID 0x{:X}", tag.get_id()),
                });
            }
        }
        match tag {
            MatroskaSpec::Ebml(Master::Start) => {
                self.flush_pending();
                self.in_ebml_header = true;
                self.in_segment = false;
            }
            MatroskaSpec::Ebml(Master::End) => self.in_ebml_header = false,
            MatroskaSpec::DocType(doc_type) => {
                let doc_type = trim_nul(doc_type);
                if doc_type != "matroska" && doc_type != "webm" {
                    return Err(ReadErrorKind::DocType(doc_type));
                }
            }
            MatroskaSpec::Segment(Master::Start) => {
                self.in_segment = true;
                self.timecode_scale = 1_000_000;
                self.cluster_timecode = None;
            }
            MatroskaSpec::Segment(Master::End) => {
                self.flush_pending();
                self.in_segment = false;
            }
            MatroskaSpec::TimestampScale(scale) => {
                if scale == 0 {
                    return Err(ReadErrorKind::ZeroTimecodeScale);
                }
                self.timecode_scale = scale;
            }
            MatroskaSpec::Tracks(Master::Start) => self.new_tracks = Some(Vec::new()),
            MatroskaSpec::TrackEntry(Master::Start) => self.new_entry = Some(TrackInfo::default()),
            MatroskaSpec::TrackNumber(number) => {
                if let Some(entry) = &mut self.new_entry {
                    entry.number = number;
                }
            }
            MatroskaSpec::Name(name) => {
                if let Some(entry) = &mut self.new_entry {
                    entry.role = TrackRole::from_track_name(trim_nul_str(&name));
                    entry.name = trim_nul(name);
                }
            }
            MatroskaSpec::CodecID(codec) => {
                if let Some(entry) = &mut self.new_entry {
                    entry.codec_id = trim_nul(codec);
                }
            }
            MatroskaSpec::SamplingFrequency(hz) => {
                if let Some(entry) = &mut self.new_entry {
                    entry.sampling_frequency = Some(hz);
                }
            }
            MatroskaSpec::Channels(channels) => {
                if let Some(entry) = &mut self.new_entry {
                    entry.channels = Some(channels);
                }
            }
            MatroskaSpec::TrackEntry(Master::End) => {
                if let (Some(entry), Some(tracks)) = (self.new_entry.take(), &mut self.new_tracks) {
                    tracks.push(entry);
                }
            }
            MatroskaSpec::Tracks(Master::End) => {
                if let Some(tracks) = self.new_tracks.take()
                    && tracks != self.tracks
                {
                    self.tracks = tracks.clone();
                    self.emit(MediaEvent::Tracks(tracks));
                }
            }
            MatroskaSpec::Cluster(Master::Start) => {
                self.flush_pending();
                self.cluster_timecode = None;
            }
            MatroskaSpec::Timestamp(timecode) => self.cluster_timecode = Some(timecode),
            MatroskaSpec::SimpleBlock(data) | MatroskaSpec::Block(data) => {
                let block = self.block(Bytes::from(data), offset)?;
                self.emit(MediaEvent::Block(block));
            }
            MatroskaSpec::TagName(name) => self.tag_name = Some(trim_nul(name)),
            MatroskaSpec::TagString(value) => {
                if let Some(name) = self.tag_name.take() {
                    self.simple_tag(name, TagValue::String(trim_nul(value)), offset)?;
                }
            }
            MatroskaSpec::TagBinary(value) => {
                if let Some(name) = self.tag_name.take() {
                    self.simple_tag(name, TagValue::Binary(value), offset)?;
                }
            }
            MatroskaSpec::RawTag(id, _) if !self.in_segment && !self.in_ebml_header => {
                return Err(ReadErrorKind::Misplaced {
                    found: id,
                    parent: None,
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn block(&mut self, data: Bytes, offset: u64) -> Result<MediaBlock, ReadErrorKind> {
        let header = BlockHeader::parse(&data)?;
        let cluster = self
            .cluster_timecode
            .ok_or(ReadErrorKind::BlockBeforeClusterTimestamp)?;
        let ticks = i128::from(cluster) + i128::from(header.relative_timecode);
        let timestamp_ns = i64::try_from(ticks * i128::from(self.timecode_scale))
            .map_err(|_| ReadErrorKind::TimestampOutOfRange)?;
        let payload = match header.frames.as_slice() {
            [only] => data.slice(only.clone()),
            frames => {
                let mut joined = Vec::with_capacity(data.len());
                for frame in frames {
                    joined.extend_from_slice(&data[frame.clone()]);
                }
                Bytes::from(joined)
            }
        };
        Ok(MediaBlock {
            track: header.track,
            timestamp_ns,
            payload,
            frames: header.frames.len(),
            offset,
        })
    }

    fn simple_tag(
        &mut self,
        name: String,
        value: TagValue,
        offset: u64,
    ) -> Result<(), ReadErrorKind> {
        let text = || value.as_str().unwrap_or_default().to_string();
        match name.as_str() {
            TAG_FRAGMENT_NUMBER => {
                let start = self.start_field(offset, |s| s.fragment_number.is_some());
                start.fragment_number = Some(text());
            }
            TAG_SERVER_TIMESTAMP => {
                let ms = parse_seconds(TAG_SERVER_TIMESTAMP, &text())?;
                self.start_field(offset, |s| s.server_timestamp_ms.is_some())
                    .server_timestamp_ms = Some(ms);
            }
            TAG_PRODUCER_TIMESTAMP => {
                let ms = parse_seconds(TAG_PRODUCER_TIMESTAMP, &text())?;
                self.start_field(offset, |s| s.producer_timestamp_ms.is_some())
                    .producer_timestamp_ms = Some(ms);
            }
            TAG_MILLIS_BEHIND_NOW => {
                let value = text();
                let ms = value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| ReadErrorKind::BadKvsTag {
                        name: TAG_MILLIS_BEHIND_NOW,
                        value,
                    })?;
                if self
                    .pending_end
                    .as_ref()
                    .is_some_and(|e| e.millis_behind_now.is_some())
                {
                    self.flush_pending();
                }
                self.pending_end.get_or_insert_default().millis_behind_now = Some(ms);
            }
            TAG_CONTINUATION_TOKEN => {
                self.pending_end.get_or_insert_default().continuation_token = Some(text());
                self.flush_pending();
            }
            TAG_ERROR_CODE | TAG_ERROR_ID => {
                let is_code = name == TAG_ERROR_CODE;
                let pending = self.pending_error.get_or_insert_default();
                let slot = if is_code {
                    &mut pending.0
                } else {
                    &mut pending.1
                };
                if slot.is_some() {
                    self.flush_pending();
                }
                let pending = self.pending_error.get_or_insert_default();
                let slot = if is_code {
                    &mut pending.0
                } else {
                    &mut pending.1
                };
                *slot = Some(text());
                if pending.0.is_some() && pending.1.is_some() {
                    self.flush_pending();
                }
            }
            _ => self.emit(MediaEvent::Tag(SimpleTag { name, value })),
        }
        if self.pending_start.as_ref().is_some_and(|s| {
            s.fragment_number.is_some()
                && s.server_timestamp_ms.is_some()
                && s.producer_timestamp_ms.is_some()
        }) {
            self.flush_pending();
        }
        Ok(())
    }

    /// The pending fragment start, flushing the previous one if `already_set` says this field
    /// was seen before (a new fragment began without a cluster in between).
    fn start_field(
        &mut self,
        offset: u64,
        already_set: impl Fn(&FragmentStart) -> bool,
    ) -> &mut FragmentStart {
        if self.pending_start.as_ref().is_some_and(already_set) {
            self.flush_pending();
        }
        self.pending_start.get_or_insert_with(|| FragmentStart {
            offset,
            ..FragmentStart::default()
        })
    }

    /// Emits a non-bookkeeping event, after any KVS bookkeeping that precedes it.
    fn emit(&mut self, event: MediaEvent) {
        self.flush_pending();
        self.events.push_back(event);
    }

    fn flush_pending(&mut self) {
        if let Some(start) = self.pending_start.take() {
            self.events.push_back(MediaEvent::FragmentStart(start));
        }
        if let Some((code, id)) = self.pending_error.take() {
            self.events.push_back(MediaEvent::Error(KvsError {
                code: code.unwrap_or_default(),
                id: id.unwrap_or_default(),
            }));
        }
        if let Some(end) = self.pending_end.take() {
            self.events.push_back(MediaEvent::FragmentEnd(end));
        }
    }
}

/// Parses KVS's decimal-seconds timestamps ("1726677689.681") into whole milliseconds
/// without going through floating point.
fn parse_seconds(name: &'static str, value: &str) -> Result<u64, ReadErrorKind> {
    let bad = || ReadErrorKind::BadKvsTag {
        name,
        value: value.to_string(),
    };
    let (whole, fraction) = value.trim().split_once('.').unwrap_or((value.trim(), ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let seconds: u64 = whole.parse().map_err(|_| bad())?;
    let mut millis = 0u64;
    for (i, digit) in fraction.bytes().take(3).enumerate() {
        millis += u64::from(digit - b'0') * 10u64.pow(2 - i as u32);
    }
    seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(millis))
        .ok_or_else(bad)
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn trim_nul_str(s: &str) -> &str {
    s.trim_end_matches('\0')
}

fn trim_nul(mut s: String) -> String {
    let len = trim_nul_str(&s).len();
    s.truncate(len);
    s
}

/// An element ID (marker bits kept) and its length, if complete and valid.
fn read_id(bytes: &[u8]) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    let len = first.leading_zeros() as usize + 1;
    if first == 0 || len > 4 || bytes.len() < len {
        return None;
    }
    Some((
        bytes[..len]
            .iter()
            .fold(0u64, |id, b| (id << 8) | u64::from(*b)),
        len,
    ))
}

/// An element size (`None` inside = unknown size) and its length, if complete and valid.
#[allow(clippy::type_complexity)]
fn read_size(bytes: &[u8]) -> Option<(Option<u64>, usize)> {
    let (value, len) = read_vint(bytes).ok()??;
    let unknown = value == (1u64 << (7 * len)) - 1;
    Some((if unknown { None } else { Some(value) }, len))
}

/// ID and declared size of the element at the front of `bytes`, if its header is complete.
fn element_header(bytes: &[u8]) -> Option<(u64, u64)> {
    let first = *bytes.first()?;
    let id_len = first.leading_zeros() as usize + 1;
    if first == 0 || bytes.len() < id_len {
        return None;
    }
    let id = bytes[..id_len]
        .iter()
        .fold(0u64, |id, b| (id << 8) | u64::from(*b));
    let (size, _) = read_vint(&bytes[id_len..]).ok()??;
    Some((id, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvs_seconds_parse_exactly_to_milliseconds() {
        assert_eq!(
            parse_seconds(TAG_SERVER_TIMESTAMP, "1726677689.681"),
            Ok(1_726_677_689_681)
        );
        assert_eq!(parse_seconds(TAG_SERVER_TIMESTAMP, "12.5"), Ok(12_500));
        assert_eq!(parse_seconds(TAG_SERVER_TIMESTAMP, "12"), Ok(12_000));
        assert_eq!(parse_seconds(TAG_SERVER_TIMESTAMP, "12.34567"), Ok(12_345));
        assert!(parse_seconds(TAG_SERVER_TIMESTAMP, "").is_err());
        assert!(parse_seconds(TAG_SERVER_TIMESTAMP, "-1.0").is_err());
        assert!(parse_seconds(TAG_SERVER_TIMESTAMP, "1e9").is_err());
        assert!(parse_seconds(TAG_SERVER_TIMESTAMP, "99999999999999999999").is_err());
    }

    /// Every event of `bytes` read at once; panics on a read error.
    fn events_of(bytes: &[u8]) -> Vec<MediaEvent> {
        let mut reader = FragmentReader::new();
        reader.push(bytes);
        reader.end_of_input();
        let mut events = Vec::new();
        while let Some(event) = reader.next_event().expect("reads") {
            events.push(event);
        }
        events
    }

    #[test]
    fn block_groups_void_and_laced_blocks_inside_a_known_size_cluster() {
        use crate::block::{Lacing, encode_block};
        use ebml_iterable::TagWriter;
        use webm_iterable::matroska_spec::MatroskaSpec as M;
        let mut w = TagWriter::new(Vec::new());
        let laced = encode_block(1, 5, false, Lacing::Xiph, &[&[1, 0, 2, 0], &[3, 0]]);
        let simple = encode_block(2, 9, true, Lacing::None, &[&[7, 0]]);
        w.write(&M::Ebml(Master::Full(vec![M::DocType("matroska".into())])))
            .unwrap();
        w.write(&M::Segment(Master::Full(vec![
            M::Info(Master::Full(vec![M::TimestampScale(1_000_000)])),
            M::Cluster(Master::Full(vec![
                M::Timestamp(1000),
                M::Void(vec![0; 3]),
                M::BlockGroup(Master::Full(vec![
                    M::Block(laced),
                    M::BlockDuration(4),
                    M::ReferenceBlock(-3),
                ])),
                M::SimpleBlock(simple),
            ])),
            M::Cluster(Master::Full(vec![
                M::Timestamp(2000),
                M::SimpleBlock(encode_block(1, 0, true, Lacing::None, &[&[9, 0]])),
            ])),
        ])))
        .unwrap();
        let bytes = w.into_inner().unwrap();
        let blocks: Vec<MediaBlock> = events_of(&bytes)
            .into_iter()
            .filter_map(|e| match e {
                MediaEvent::Block(b) => Some(b),
                _ => None,
            })
            .collect();
        assert_eq!(blocks.len(), 3);
        assert_eq!(
            (blocks[0].track, blocks[0].timestamp_ns),
            (1, 1_005_000_000)
        );
        assert_eq!(&blocks[0].payload[..], &[1, 0, 2, 0, 3, 0]);
        assert_eq!(blocks[0].frames, 2);
        assert_eq!(
            (blocks[1].track, blocks[1].timestamp_ns),
            (2, 1_009_000_000)
        );
        assert_eq!(
            (blocks[2].track, blocks[2].timestamp_ns),
            (1, 2_000_000_000)
        );
        // Every piece size gives the same events as the whole.
        let whole = events_of(&bytes);
        for size in 1..20 {
            let mut reader = FragmentReader::new();
            let mut events = Vec::new();
            for piece in bytes.chunks(size) {
                reader.push(piece);
                while let Some(event) = reader.next_event().unwrap() {
                    events.push(event);
                }
            }
            reader.end_of_input();
            while let Some(event) = reader.next_event().unwrap() {
                events.push(event);
            }
            assert_eq!(events, whole, "piece size {size}");
        }
    }

    #[test]
    fn a_child_overrunning_a_known_size_cluster_is_an_error() {
        let mut bytes = vec![0x1A, 0x45, 0xDF, 0xA3, 0x80, 0x18, 0x53, 0x80, 0x67, 0xFF];
        // Cluster of 6 bytes holding a Timestamp, then a SimpleBlock claiming 100 bytes.
        bytes.extend_from_slice(&[
            0x1F, 0x43, 0xB6, 0x75, 0x86, 0xE7, 0x81, 0x01, 0xA3, 0xE4, 0x81,
        ]);
        bytes.extend_from_slice(&[0; 100]);
        let mut reader = FragmentReader::new();
        reader.push(&bytes);
        reader.end_of_input();
        let error = loop {
            match reader.next_event() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("overrun accepted"),
                Err(error) => break error,
            }
        };
        assert_eq!(error.offset, 18, "{error}");
        assert!(
            matches!(error.kind, ReadErrorKind::TooLarge { id: 0xA3, .. }),
            "{error}"
        );
    }

    #[test]
    fn garbage_is_not_ebml() {
        let mut reader = FragmentReader::new();
        reader.push(b"hello, this is not matroska at all");
        reader.end_of_input();
        let error = loop {
            match reader.next_event() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("garbage read as a stream"),
                Err(error) => break error,
            }
        };
        assert_eq!(error.offset, 0);
        assert!(
            matches!(error.kind, ReadErrorKind::NotEbml { .. }),
            "{error}"
        );
        // The reader stays failed.
        assert_eq!(reader.next_event(), Err(error));
    }

    #[test]
    fn a_huge_declared_size_is_rejected_without_buffering_forever() {
        let mut reader = FragmentReader::with_max_element_size(1024);
        // EBML header, unknown-size Segment, then a Void claiming 4 GiB, fed slowly.
        reader.push(&[0x1A, 0x45, 0xDF, 0xA3, 0x80]);
        reader.push(&[
            0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        reader.push(&[0xEC, 0x01, 0, 0, 0x01, 0, 0, 0, 0]);
        let mut saw_error = None;
        for _ in 0..10 {
            reader.push(&[0u8; 512]);
            match reader.next_event() {
                Ok(_) => {}
                Err(error) => {
                    saw_error = Some(error);
                    break;
                }
            }
        }
        let error = saw_error.expect("oversized element reported");
        assert!(
            matches!(error.kind, ReadErrorKind::TooLarge { id: 0xEC, .. }),
            "{error}"
        );
    }
}
