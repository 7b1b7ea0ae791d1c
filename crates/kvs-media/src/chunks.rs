//! Splitting a GetMedia capture into its chunks (one EBML document per KVS fragment).

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::block::read_vint;
use crate::reader::DEFAULT_MAX_ELEMENT_SIZE as MAX_ELEMENT_SIZE;

const EBML: u64 = 0x1A45_DFA3;
const SEGMENT: u64 = 0x1853_8067;
const CLUSTER: u64 = 0x1F43_B675;

/// A capture that cannot be split into EBML documents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {problem}")]
pub struct SplitError {
    /// Where the problem is.
    pub offset: u64,
    /// What it is.
    pub problem: &'static str,
}

/// Byte ranges of the EBML documents (KVS chunks) that make up `capture`, in order: a
/// [`ChunkSplitter`] over the whole capture, which must end with a complete chunk.
pub fn split_chunks(capture: &[u8]) -> Result<Vec<Range<usize>>, SplitError> {
    let mut splitter = ChunkSplitter::new();
    splitter.push(capture);
    let mut ranges = Vec::new();
    let mut at = 0usize;
    let mut add = |len: usize| {
        ranges.push(at..at + len);
        at += len;
    };
    while let Some(chunk) = splitter.next_chunk()? {
        add(chunk.len());
    }
    if let Some(chunk) = splitter.finish()? {
        add(chunk.len());
    }
    Ok(ranges)
}

/// Splits GetMedia bytes into their chunks (one EBML document per KVS fragment, or a KVS
/// error chunk) as they arrive, so that a tool can keep a fragment's exact bytes — a capture
/// of a live stream, for instance. Sans-IO: bytes in, chunks out.
///
/// Only the element structure is walked (Segments and Clusters are entered, every other
/// element skipped by its size), so audio bytes that happen to look like an EBML header are
/// never mistaken for one. A chunk is known to be whole when the next one begins, or at the
/// end of the input ([`Self::finish`]).
#[derive(Debug, Default)]
pub struct ChunkSplitter {
    /// Bytes from the start of the current chunk.
    buf: BytesMut,
    /// Offset in `buf` of the next element header to read.
    walked: usize,
    /// Where in `buf` the last known-size Segment or Cluster entered ends.
    container_end: usize,
    /// Offset of `buf[0]` in the whole input (for errors).
    consumed: u64,
    /// The input began with an EBML header.
    started: bool,
    /// The error that stopped splitting; reported again on every later call.
    failed: Option<SplitError>,
}

impl ChunkSplitter {
    /// A splitter at the start of an input.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes of the input.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes held for the chunk not yet complete.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete chunk (one that the start of the next has closed), `Ok(None)` when
    /// more input is needed.
    pub fn next_chunk(&mut self) -> Result<Option<Bytes>, SplitError> {
        loop {
            if let Some(error) = &self.failed {
                return Err(error.clone());
            }
            let pos = self.walked;
            let header = match element_header(&self.buf[pos..]) {
                Ok(Some(header)) => header,
                Ok(None) => return Ok(None),
                Err(problem) => return Err(self.fail(pos, problem)),
            };
            if header.id == EBML {
                if self.started && pos != 0 {
                    let chunk = self.buf.split_to(pos).freeze();
                    self.consumed += pos as u64;
                    self.walked = 0;
                    self.container_end = 0;
                    return Ok(Some(chunk));
                }
                self.started = true;
            } else if !self.started {
                return Err(self.fail(pos, "capture does not start with an EBML header"));
            }
            let body = pos + header.len;
            match header.size {
                None if header.id != SEGMENT && header.id != CLUSTER => {
                    return Err(self.fail(
                        pos,
                        "unknown size on an element other than Segment or Cluster",
                    ));
                }
                None => self.walked = body,
                Some(size) => {
                    let end = usize::try_from(size)
                        .ok()
                        .and_then(|size| body.checked_add(size));
                    if header.id == SEGMENT || header.id == CLUSTER {
                        let Some(end) = end else {
                            return Err(self.fail(pos, "element size out of range"));
                        };
                        self.container_end = self.container_end.max(end);
                        self.walked = body;
                        continue;
                    }
                    if size > MAX_ELEMENT_SIZE as u64 {
                        return Err(self.fail(
                            pos,
                            "element larger than the reader's limit (DEFAULT_MAX_ELEMENT_SIZE, 4 MiB)",
                        ));
                    }
                    let end = end.expect("a size within the limit fits");
                    if end > self.buf.len() {
                        return Ok(None);
                    }
                    self.walked = end;
                }
            }
        }
    }

    /// Ends the current chunk after its last whole element, when the caller knows from its
    /// content that it is complete (a fragment's KVS end tags, which GetMedia writes last):
    /// the chunk comes out without waiting for the next. What follows begins the next chunk.
    /// Call after [`Self::next_chunk`] has returned `Ok(None)`.
    pub fn end_chunk(&mut self) -> Option<Bytes> {
        if self.failed.is_some() || self.walked == 0 {
            return None;
        }
        let chunk = self.buf.split_to(self.walked).freeze();
        self.consumed += chunk.len() as u64;
        self.walked = 0;
        self.container_end = 0;
        Some(chunk)
    }

    /// At the end of the input (after [`Self::next_chunk`] has returned `Ok(None)`): the last
    /// chunk when its elements are all complete, or an error naming where it was cut off.
    pub fn finish(&mut self) -> Result<Option<Bytes>, SplitError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let pos = self.walked;
        if pos < self.buf.len() {
            let problem = match element_header(&self.buf[pos..]) {
                Ok(Some(_)) => "element extends past the end of the capture",
                _ => "invalid or cut-off element ID or size",
            };
            return Err(self.fail(pos, problem));
        }
        if self.buf.len() < self.container_end {
            return Err(self.fail(pos, "element extends past the end of the capture"));
        }
        let chunk = self.buf.split().freeze();
        self.consumed += chunk.len() as u64;
        self.walked = 0;
        self.container_end = 0;
        Ok(Some(chunk))
    }

    fn fail(&mut self, pos: usize, problem: &'static str) -> SplitError {
        let error = SplitError {
            offset: self.consumed + pos as u64,
            problem,
        };
        self.failed = Some(error.clone());
        self.buf = BytesMut::new();
        error
    }
}

/// An element's ID, header length and size (`None`: unknown size).
pub(crate) struct ElementHeader {
    pub(crate) id: u64,
    pub(crate) len: usize,
    pub(crate) size: Option<u64>,
}

/// The header of the element at the start of `data`; `Ok(None)` when `data` ends within it.
pub(crate) fn element_header(data: &[u8]) -> Result<Option<ElementHeader>, &'static str> {
    let Some(&first) = data.first() else {
        return Ok(None);
    };
    let id_len = first.leading_zeros() as usize + 1;
    if first == 0 || id_len > 4 {
        return Err("invalid element ID");
    }
    if data.len() < id_len {
        return Ok(None);
    }
    let id = data[..id_len]
        .iter()
        .fold(0u64, |id, b| (id << 8) | u64::from(*b));
    let (size, size_len) = match read_vint(&data[id_len..]) {
        Ok(Some(size)) => size,
        Ok(None) => return Ok(None),
        Err(_) => return Err("invalid element size"),
    };
    let unknown = size == (1u64 << (7 * size_len)) - 1;
    Ok(Some(ElementHeader {
        id,
        len: id_len + size_len,
        size: (!unknown).then_some(size),
    }))
}

/// Where the Tags element with the KVS end tags (MILLIS_BEHIND_NOW, CONTINUATION_TOKEN)
/// starts, when it is the last element of `chunk` (as GetMedia and [`crate::ConnectWriter`]
/// write it). A server can then re-stamp those tags at delivery.
pub fn kvs_end_tags_offset(chunk: &[u8]) -> Option<usize> {
    const TAGS: u64 = 0x1254_C367;
    let mut pos = 0usize;
    let mut last_tags = None;
    while pos < chunk.len() {
        let header = element_header(&chunk[pos..]).ok()??;
        let body = pos + header.len;
        if header.id == SEGMENT || (header.id == CLUSTER && header.size.is_none()) {
            pos = body;
            continue;
        }
        let end = body.checked_add(usize::try_from(header.size?).ok()?)?;
        if header.id == TAGS {
            last_tags = Some((pos, end));
        }
        pos = end;
    }
    let (start, end) = last_tags?;
    let holds_end_tags = chunk[start..end]
        .windows(crate::event::TAG_MILLIS_BEHIND_NOW.len())
        .any(|w| w == crate::event::TAG_MILLIS_BEHIND_NOW.as_bytes());
    (end == chunk.len() && holds_end_tags).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConnectWriter, WriterOptions};

    #[test]
    fn writer_fragments_split_back_exactly() {
        let mut writer = ConnectWriter::new(WriterOptions::default());
        // PCM full of EBML-header look-alikes.
        let pcm: Vec<u8> = [0x1A, 0x45, 0xDF, 0xA3].repeat(20_000);
        let fragments = writer.call(&pcm, &pcm, 1_000);
        let capture = fragments.concat();
        let chunks = split_chunks(&capture).unwrap();
        assert_eq!(chunks.len(), fragments.len());
        for (range, fragment) in chunks.iter().zip(&fragments) {
            assert_eq!(&capture[range.clone()], &fragment[..]);
        }
        assert!(split_chunks(&capture[..capture.len() - 3]).is_err());
        // The end tags can be cut off and re-stamped.
        let fragment = &fragments[0];
        let at = kvs_end_tags_offset(fragment).expect("writer fragments end with KVS end tags");
        let number = ConnectWriter::fragment_number(0);
        let mut restamped = fragment[..at].to_vec();
        restamped.extend_from_slice(&ConnectWriter::kvs_end_tags(0, &number));
        assert_eq!(&restamped, fragment);
        assert!(split_chunks(b"garbage").is_err());
        assert_eq!(split_chunks(&[]), Ok(vec![]));
    }

    proptest::proptest! {
        /// However the bytes arrive, a live splitter gives back exactly the fragments written,
        /// each as soon as the next one begins, and the last at the end of the input.
        #[test]
        fn chunks_come_out_whole_however_the_bytes_arrive(
            cuts in proptest::collection::vec(1usize..5_000, 1..200),
            known_size_clusters: bool,
        ) {
            let mut writer = ConnectWriter::new(WriterOptions {
                known_size_clusters,
                ..WriterOptions::default()
            });
            let pcm: Vec<u8> = [0x1A, 0x45, 0xDF, 0xA3].repeat(8_000);
            let fragments = writer.call(&pcm, &pcm, 1_000);
            let capture = fragments.concat();
            let mut splitter = ChunkSplitter::new();
            let mut chunks = Vec::new();
            let mut at = 0;
            for cut in cuts.iter().cycle() {
                if at == capture.len() {
                    break;
                }
                let end = (at + cut).min(capture.len());
                splitter.push(&capture[at..end]);
                at = end;
                while let Some(chunk) = splitter.next_chunk().unwrap() {
                    chunks.push(chunk);
                }
                // Every fragment but the one being received is out as soon as the next begins.
                let received_whole = fragments
                    .iter()
                    .scan(0, |sum, f| {
                        *sum += f.len();
                        Some(*sum)
                    })
                    .filter(|sum| *sum <= at)
                    .count();
                proptest::prop_assert!(chunks.len() + 1 >= received_whole);
            }
            chunks.extend(splitter.finish().unwrap());
            proptest::prop_assert_eq!(chunks.len(), fragments.len());
            for (chunk, fragment) in chunks.iter().zip(&fragments) {
                proptest::prop_assert_eq!(&chunk[..], &fragment[..]);
            }
        }
    }

    #[test]
    fn a_cut_off_input_keeps_its_whole_chunks_and_names_where_it_was_cut() {
        let mut writer = ConnectWriter::new(WriterOptions::default());
        let fragments = writer.call(&[1u8; 48_000], &[2u8; 48_000], 1_000);
        let capture = fragments.concat();
        let cut = capture.len() - 100;
        let mut splitter = ChunkSplitter::new();
        splitter.push(&capture[..cut]);
        let mut chunks = Vec::new();
        while let Some(chunk) = splitter.next_chunk().unwrap() {
            chunks.push(chunk);
        }
        assert_eq!(chunks.len(), fragments.len() - 1);
        let error = splitter.finish().unwrap_err();
        assert!(error.offset > (cut - fragments.last().unwrap().len()) as u64);
        assert!(error.offset <= cut as u64, "{error}");
        // A chunk known to be whole comes out at once; the next starts after it.
        let mut splitter = ChunkSplitter::new();
        splitter.push(&capture[..fragments[0].len() + 3]);
        assert_eq!(splitter.next_chunk().unwrap(), None);
        assert_eq!(splitter.end_chunk().as_deref(), Some(&fragments[0][..]));
        splitter.push(&capture[fragments[0].len() + 3..]);
        let mut rest = Vec::new();
        while let Some(chunk) = splitter.next_chunk().unwrap() {
            rest.push(chunk);
        }
        rest.extend(splitter.finish().unwrap());
        assert_eq!(rest.len(), fragments.len() - 1);
        assert_eq!(&rest[0][..], &fragments[1][..]);
        // An element claiming more than the reader's limit is refused, not awaited.
        let mut splitter = ChunkSplitter::new();
        splitter.push(&capture[..fragments[0].len()]);
        splitter.push(&[0xA3, 0x08, 0x10, 0x00, 0x00, 0x00]);
        let error = splitter.next_chunk().unwrap_err();
        assert!(error.problem.contains("limit"), "{error}");
    }
}
