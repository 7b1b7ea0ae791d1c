//! Splitting a GetMedia capture into its chunks (one EBML document per KVS fragment).

use std::ops::Range;

use crate::block::read_vint;

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

/// Byte ranges of the EBML documents (KVS chunks) that make up `capture`, in order. Only
/// the element structure is walked (unknown-size Segments and Clusters are entered, every
/// other element skipped by its size), so audio bytes that happen to look like an EBML
/// header are never mistaken for one.
pub fn split_chunks(capture: &[u8]) -> Result<Vec<Range<usize>>, SplitError> {
    let mut chunks = Vec::new();
    let mut start = None;
    let mut pos = 0usize;
    while pos < capture.len() {
        let error = |problem| SplitError {
            offset: pos as u64,
            problem,
        };
        let first = capture[pos];
        let id_len = first.leading_zeros() as usize + 1;
        if first == 0 || id_len > 4 || pos + id_len > capture.len() {
            return Err(error("invalid or cut-off element ID"));
        }
        let id = capture[pos..pos + id_len]
            .iter()
            .fold(0u64, |id, b| (id << 8) | u64::from(*b));
        let (size, size_len) = match read_vint(&capture[pos + id_len..]) {
            Ok(Some(size)) => size,
            _ => return Err(error("invalid or cut-off element size")),
        };
        let unknown = size == (1u64 << (7 * size_len)) - 1;
        if id == EBML {
            if start.is_none() && pos != 0 {
                return Err(error("capture does not start with an EBML header"));
            }
            if let Some(begin) = start.replace(pos)
                && begin != pos
            {
                chunks.push(begin..pos);
            }
        } else if start.is_none() {
            return Err(error("capture does not start with an EBML header"));
        }
        let body = pos + id_len + size_len;
        if unknown {
            if id != SEGMENT && id != CLUSTER {
                return Err(error(
                    "unknown size on an element other than Segment or Cluster",
                ));
            }
            pos = body;
        } else {
            let end = usize::try_from(size)
                .ok()
                .and_then(|size| body.checked_add(size))
                .filter(|end| *end <= capture.len())
                .ok_or_else(|| error("element extends past the end of the capture"))?;
            pos = end;
        }
    }
    if let Some(begin) = start {
        chunks.push(begin..capture.len());
    }
    Ok(chunks)
}

/// Where the Tags element with the KVS end tags (MILLIS_BEHIND_NOW, CONTINUATION_TOKEN)
/// starts, when it is the last element of `chunk` (as GetMedia and [`crate::ConnectWriter`]
/// write it). A server can then re-stamp those tags at delivery.
pub fn kvs_end_tags_offset(chunk: &[u8]) -> Option<usize> {
    const TAGS: u64 = 0x1254_C367;
    let mut pos = 0usize;
    let mut last_tags = None;
    while pos < chunk.len() {
        let first = chunk[pos];
        let id_len = first.leading_zeros() as usize + 1;
        if first == 0 || id_len > 4 || pos + id_len > chunk.len() {
            return None;
        }
        let id = chunk[pos..pos + id_len]
            .iter()
            .fold(0u64, |id, b| (id << 8) | u64::from(*b));
        let (size, size_len) = read_vint(&chunk[pos + id_len..]).ok()??;
        let unknown = size == (1u64 << (7 * size_len)) - 1;
        let body = pos + id_len + size_len;
        if id == SEGMENT || (id == CLUSTER && unknown) {
            pos = body;
            continue;
        }
        if unknown {
            return None;
        }
        let end = body.checked_add(usize::try_from(size).ok()?)?;
        if id == TAGS {
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
}
