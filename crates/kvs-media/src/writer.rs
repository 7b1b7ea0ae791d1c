//! [`ConnectWriter`]: PCM in, GetMedia-shaped Connect fragments out (for tests, replay, demo).

use ebml_iterable::{TagWriter, WriteOptions};
use webm_iterable::matroska_spec::{Master, MatroskaSpec};

use crate::block::{Lacing, encode_block};
use crate::event::{
    TAG_CONTACT_ID, TAG_CONTINUATION_TOKEN, TAG_FRAGMENT_NUMBER, TAG_INSTANCE_ID,
    TAG_MILLIS_BEHIND_NOW, TAG_PRODUCER_TIMESTAMP, TAG_SERVER_TIMESTAMP, TRACK_FROM_CUSTOMER,
    TRACK_TO_CUSTOMER, TrackRole,
};

/// Bytes per PCM sample (signed 16-bit little-endian, mono).
const BYTES_PER_SAMPLE: usize = 2;

/// How the writer shapes its output. The defaults match Connect's live media streaming as seen
/// through GetMedia (and `fixtures/connect/sample-call.mkv`).
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// ContactId tag written after each cluster.
    pub contact_id: String,
    /// InstanceId tag written after each cluster.
    pub instance_id: String,
    /// Segment TimecodeScale in ns (Connect: 1 ms).
    pub timecode_scale_ns: u64,
    /// Write Clusters with a known size (Connect writes unknown-size Clusters).
    pub known_size_clusters: bool,
    /// Pad strings with NULs as the KVS producer SDK does (track names to 32 bytes).
    pub nul_padding: bool,
    /// Put the caller on track 2 and the agent on track 1 (readers must go by name).
    pub swap_track_numbers: bool,
    /// Lacing of blocks; with lacing, each block carries `frames_per_block` frames.
    pub lacing: Lacing,
    /// Frames per laced block (1 to 256).
    pub frames_per_block: usize,
    /// Samples per frame (Connect: 512 samples = 64 ms at 8 kHz).
    pub samples_per_frame: usize,
    /// Frames of each track per fragment (Connect: about 1 s).
    pub frames_per_fragment: usize,
    /// Sample rate of the PCM (Connect: 8000).
    pub sample_rate: u32,
    /// Write the AWS_KINESISVIDEO_* tags GetMedia adds (fragment number, timestamps, etc.).
    pub kvs_tags: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            contact_id: "00000000-0000-4000-8000-000000000000".to_string(),
            instance_id: "00000000-0000-4000-8000-000000000001".to_string(),
            timecode_scale_ns: 1_000_000,
            known_size_clusters: false,
            nul_padding: false,
            swap_track_numbers: false,
            lacing: Lacing::None,
            frames_per_block: 1,
            samples_per_frame: 512,
            frames_per_fragment: 16,
            sample_rate: 8000,
            kvs_tags: true,
        }
    }
}

/// One block to write: whose audio, when, and its frames of s16le PCM.
#[derive(Debug, Clone, Copy)]
pub struct FragmentAudio<'a> {
    /// Caller or agent.
    pub role: TrackRole,
    /// Absolute timestamp of the first sample, ns since the epoch.
    pub timestamp_ns: i64,
    /// PCM of the block (split into frames per the writer's lacing options).
    pub pcm: &'a [u8],
}

/// Writes Connect-shaped KVS fragments: per fragment an EBML header, an unknown-size Segment,
/// Info, Tracks, the KVS start tags, Cluster(s) of SimpleBlocks, Connect's tags and the KVS
/// end tags. Fragment numbers increase with each fragment written.
#[derive(Debug, Clone)]
pub struct ConnectWriter {
    options: WriterOptions,
    fragments_written: u64,
}

impl ConnectWriter {
    /// A writer with the given options.
    pub fn new(options: WriterOptions) -> Self {
        Self {
            options,
            fragments_written: 0,
        }
    }

    /// The writer's options.
    pub fn options(&self) -> &WriterOptions {
        &self.options
    }

    /// Tags the fragments written from now on with another ContactId, fragment numbers going
    /// on increasing: Connect reusing a stream for its next contact.
    pub fn set_contact_id(&mut self, contact_id: &str) {
        self.options.contact_id = contact_id.to_string();
    }

    /// The fragment number the `index`-th fragment gets (47 digits, increasing, like KVS's).
    pub fn fragment_number(index: u64) -> String {
        format!("91343852333181{index:033}")
    }

    /// Track number of a role under these options.
    pub fn track_number(&self, role: TrackRole) -> u64 {
        match (role, self.options.swap_track_numbers) {
            (TrackRole::Caller, false) | (TrackRole::Agent, true) => 1,
            _ => 2,
        }
    }

    /// Writes one fragment holding `blocks` (in the given order), stamped with the producer
    /// time `producer_ms`. The server time is set 500 ms later.
    pub fn fragment(&mut self, producer_ms: u64, blocks: &[FragmentAudio<'_>]) -> Vec<u8> {
        let index = self.fragments_written;
        self.fragments_written += 1;
        let number = Self::fragment_number(index);
        let mut w = TagWriter::new(Vec::with_capacity(
            blocks.iter().map(|b| b.pcm.len() + 16).sum::<usize>() + 1024,
        ));
        self.write_fragment(&mut w, &number, producer_ms, blocks)
            .expect("writing to a Vec with a consistent spec cannot fail");
        w.into_inner().expect("flushing to a Vec cannot fail")
    }

    /// Splits a whole call (caller and agent PCM, both starting at `start_ms`) into fragments
    /// as Connect would stream it: per fragment `frames_per_fragment` frames of each track,
    /// blocks of the two tracks interleaved by time. A shorter track simply ends earlier.
    pub fn call(&mut self, caller: &[u8], agent: &[u8], start_ms: u64) -> Vec<Vec<u8>> {
        let frame_bytes = self.options.samples_per_frame * BYTES_PER_SAMPLE;
        let block_bytes = frame_bytes * self.options.frames_per_block.max(1);
        let fragment_bytes = frame_bytes * self.options.frames_per_fragment.max(1);
        let longest = caller.len().max(agent.len());
        let mut fragments = Vec::new();
        let mut fragment_start = 0;
        while fragment_start < longest {
            let fragment_end = (fragment_start + fragment_bytes).min(longest);
            let mut blocks = Vec::new();
            let mut at = fragment_start;
            while at < fragment_end {
                let end = (at + block_bytes).min(fragment_end);
                let timestamp_ns = self.bytes_to_ns(start_ms, at);
                for (role, pcm) in [(TrackRole::Caller, caller), (TrackRole::Agent, agent)] {
                    if at < pcm.len() {
                        blocks.push(FragmentAudio {
                            role,
                            timestamp_ns,
                            pcm: &pcm[at..end.min(pcm.len())],
                        });
                    }
                }
                at = end;
            }
            let producer_ms = start_ms + self.bytes_to_ns(0, fragment_start) as u64 / 1_000_000;
            fragments.push(self.fragment(producer_ms, &blocks));
            fragment_start = fragment_end;
        }
        fragments
    }

    /// The Tags element KVS appends after a fragment's cluster: MILLIS_BEHIND_NOW and
    /// CONTINUATION_TOKEN (servers re-stamp it at delivery).
    pub fn kvs_end_tags(millis_behind_now: u64, continuation_token: &str) -> Vec<u8> {
        Self::segment_tags(&[
            (TAG_MILLIS_BEHIND_NOW, millis_behind_now.to_string()),
            (TAG_CONTINUATION_TOKEN, continuation_token.to_string()),
        ])
    }

    /// The Tags element KVS puts before a fragment's cluster: its number, and when KVS
    /// received it and the producer made it (a server storing PutMedia fragments writes it).
    pub fn kvs_start_tags(number: &str, server_ms: u64, producer_ms: u64) -> Vec<u8> {
        Self::segment_tags(&[
            (TAG_FRAGMENT_NUMBER, number.to_string()),
            (TAG_SERVER_TIMESTAMP, seconds(server_ms)),
            (TAG_PRODUCER_TIMESTAMP, seconds(producer_ms)),
        ])
    }

    /// One Tags element with `tags`, as bytes to place inside a Segment.
    pub(crate) fn segment_tags(tags: &[(&str, String)]) -> Vec<u8> {
        let plain = Self::new(WriterOptions::default());
        let mut w = TagWriter::new(Vec::new());
        // Tags are only valid inside a Segment: open an unknown-size one (ID + 8-byte size)
        // and keep what follows its header.
        const SEGMENT_HEADER: usize = 4 + 8;
        w.write_advanced(
            &MatroskaSpec::Segment(Master::Start),
            WriteOptions::is_unknown_sized_element(),
        )
        .and_then(|()| plain.write_tags(&mut w, tags))
        .and_then(|()| w.flush())
        .expect("writing to a Vec with a consistent spec cannot fail");
        let mut bytes = w.into_inner().expect("flushing to a Vec cannot fail");
        bytes.drain(..SEGMENT_HEADER);
        bytes
    }

    /// A KVS error chunk as GetMedia sends it in place of media (e.g. code `4000`: the
    /// requested fragment was not found).
    pub fn error_chunk(code: &str, id: &str) -> Vec<u8> {
        use MatroskaSpec as M;
        let mut w = TagWriter::new(Vec::new());
        let write =
            |w: &mut TagWriter<Vec<u8>>| -> Result<(), ebml_iterable::error::TagWriterError> {
                w.write(&M::Ebml(Master::Full(vec![
                    M::EbmlVersion(1),
                    M::EbmlReadVersion(1),
                    M::EbmlMaxIdLength(4),
                    M::EbmlMaxSizeLength(8),
                    M::DocType("matroska".to_string()),
                    M::DocTypeVersion(2),
                    M::DocTypeReadVersion(2),
                ])))?;
                w.write_advanced(
                    &M::Segment(Master::Start),
                    WriteOptions::is_unknown_sized_element(),
                )?;
                w.write(&M::Tags(Master::Full(vec![M::Tag(Master::Full(vec![
                    M::SimpleTag(Master::Full(vec![
                        M::TagName(crate::event::TAG_ERROR_CODE.to_string()),
                        M::TagString(code.to_string()),
                    ])),
                    M::SimpleTag(Master::Full(vec![
                        M::TagName(crate::event::TAG_ERROR_ID.to_string()),
                        M::TagString(id.to_string()),
                    ])),
                ]))])))?;
                w.write(&M::Segment(Master::End))?;
                w.flush()
            };
        write(&mut w).expect("writing to a Vec with a consistent spec cannot fail");
        w.into_inner().expect("flushing to a Vec cannot fail")
    }

    fn bytes_to_ns(&self, start_ms: u64, byte_offset: usize) -> i64 {
        let samples = (byte_offset / BYTES_PER_SAMPLE) as i128;
        (i128::from(start_ms) * 1_000_000
            + samples * 1_000_000_000 / i128::from(self.options.sample_rate)) as i64
    }

    fn text(&self, s: &str) -> String {
        if self.options.nul_padding {
            format!("{s}\0")
        } else {
            s.to_string()
        }
    }

    fn write_fragment(
        &self,
        w: &mut TagWriter<Vec<u8>>,
        number: &str,
        producer_ms: u64,
        blocks: &[FragmentAudio<'_>],
    ) -> Result<(), ebml_iterable::error::TagWriterError> {
        use MatroskaSpec as M;
        let o = &self.options;
        w.write(&M::Ebml(Master::Full(vec![
            M::EbmlVersion(1),
            M::EbmlReadVersion(1),
            M::EbmlMaxIdLength(4),
            M::EbmlMaxSizeLength(8),
            M::DocType(self.text("matroska")),
            M::DocTypeVersion(2),
            M::DocTypeReadVersion(2),
        ])))?;
        w.write_advanced(
            &M::Segment(Master::Start),
            WriteOptions::is_unknown_sized_element(),
        )?;
        let mut uid = [0u8; 16];
        uid[..8].copy_from_slice(&producer_ms.to_be_bytes());
        uid[8..].copy_from_slice(&(number.len() as u64 ^ 0x4dca_1825).to_be_bytes());
        w.write(&M::Info(Master::Full(vec![
            M::SegmentUID(uid.to_vec()),
            M::TimestampScale(o.timecode_scale_ns),
            M::Title(self.text("Kinesis Video SDK")),
            M::MuxingApp(self.text("Kinesis Video SDK 1.1.0 JNI 2.0")),
            M::WritingApp(self.text("Kinesis Video SDK 1.1.0 JNI 2.0")),
        ])))?;
        let mut entries = [
            (self.track_number(TrackRole::Caller), TRACK_FROM_CUSTOMER),
            (self.track_number(TrackRole::Agent), TRACK_TO_CUSTOMER),
        ];
        entries.sort();
        w.write(&M::Tracks(Master::Full(
            entries
                .iter()
                .map(|(number, name)| {
                    let name = if o.nul_padding {
                        format!("{name:\0<32}")
                    } else {
                        name.to_string()
                    };
                    M::TrackEntry(Master::Full(vec![
                        M::TrackNumber(*number),
                        M::TrackUID(*number),
                        M::TrackType(2),
                        M::Name(name),
                        M::CodecID(self.text("A_AAC")),
                        M::CodecPrivate(vec![0x15, 0x88]),
                    ]))
                })
                .collect(),
        )))?;
        if o.kvs_tags {
            self.write_tags(
                w,
                &[
                    (TAG_FRAGMENT_NUMBER, number.to_string()),
                    (TAG_SERVER_TIMESTAMP, seconds(producer_ms + 500)),
                    (TAG_PRODUCER_TIMESTAMP, seconds(producer_ms)),
                ],
            )?;
        }
        self.write_clusters(w, blocks)?;
        let track_tags = [
            (TRACK_FROM_CUSTOMER, self.track_number(TrackRole::Caller)),
            (TRACK_TO_CUSTOMER, self.track_number(TrackRole::Agent)),
        ];
        for (name, value) in [
            (TAG_CONTACT_ID, o.contact_id.clone()),
            (TAG_INSTANCE_ID, o.instance_id.clone()),
            ("MimeType", "audio/L16;rate=8000;channels=1;".to_string()),
            (track_tags[0].0, track_tags[0].1.to_string()),
            (track_tags[1].0, track_tags[1].1.to_string()),
            ("Events", "[]".to_string()),
        ] {
            self.write_tags(w, &[(name, value)])?;
        }
        if o.kvs_tags {
            self.write_tags(
                w,
                &[
                    (TAG_MILLIS_BEHIND_NOW, "0".to_string()),
                    (TAG_CONTINUATION_TOKEN, number.to_string()),
                ],
            )?;
        }
        w.write(&M::Segment(Master::End))?;
        w.flush()
    }

    fn write_tags(
        &self,
        w: &mut TagWriter<Vec<u8>>,
        tags: &[(&str, String)],
    ) -> Result<(), ebml_iterable::error::TagWriterError> {
        use MatroskaSpec as M;
        w.write(&M::Tags(Master::Full(vec![M::Tag(Master::Full(
            tags.iter()
                .map(|(name, value)| {
                    M::SimpleTag(Master::Full(vec![
                        M::TagName(self.text(name)),
                        M::TagString(self.text(value)),
                    ]))
                })
                .collect(),
        ))])))
    }

    fn write_clusters(
        &self,
        w: &mut TagWriter<Vec<u8>>,
        blocks: &[FragmentAudio<'_>],
    ) -> Result<(), ebml_iterable::error::TagWriterError> {
        use MatroskaSpec as M;
        let scale = i128::from(self.options.timecode_scale_ns.max(1));
        let frame_bytes = self.options.samples_per_frame.max(1) * BYTES_PER_SAMPLE;
        let mut cluster: Option<(i128, Vec<MatroskaSpec>)> = None;
        let close = |w: &mut TagWriter<Vec<u8>>, cluster: Option<(i128, Vec<MatroskaSpec>)>| {
            let Some((timecode, children)) = cluster else {
                return Ok(());
            };
            let mut all = vec![M::Timestamp(timecode as u64), M::Position(0)];
            all.extend(children);
            if self.options.known_size_clusters {
                w.write(&M::Cluster(Master::Full(all)))
            } else {
                w.write_advanced(
                    &M::Cluster(Master::Start),
                    WriteOptions::is_unknown_sized_element(),
                )?;
                for child in &all {
                    w.write(child)?;
                }
                w.write(&M::Cluster(Master::End))
            }
        };
        for block in blocks {
            // Nearest tick; readers place blocks by timestamp within a sample or so.
            let ticks = (i128::from(block.timestamp_ns) + scale / 2).div_euclid(scale);
            let relative = match &cluster {
                Some((timecode, _)) => i16::try_from(ticks - timecode).ok(),
                None => None,
            };
            let relative = match relative {
                Some(relative) => relative,
                None => {
                    close(w, cluster.take())?;
                    cluster = Some((ticks.max(0), Vec::new()));
                    i16::try_from(ticks - ticks.max(0)).unwrap_or(0)
                }
            };
            let frames: Vec<&[u8]> = if self.options.lacing == Lacing::None {
                vec![block.pcm]
            } else {
                block.pcm.chunks(frame_bytes).take(256).collect()
            };
            // Fixed lacing needs equal frames: fall back to no lacing for a ragged tail.
            let lacing = match self.options.lacing {
                Lacing::Fixed if frames.iter().any(|f| f.len() != frames[0].len()) => Lacing::None,
                lacing => lacing,
            };
            let frames = if lacing == Lacing::None {
                vec![block.pcm]
            } else {
                frames
            };
            let payload = encode_block(
                self.track_number(block.role),
                relative,
                true,
                lacing,
                &frames,
            );
            if let Some((_, children)) = &mut cluster {
                children.push(M::SimpleBlock(payload));
            }
        }
        close(w, cluster.take())
    }
}

/// KVS's decimal-seconds form of a millisecond timestamp.
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}
