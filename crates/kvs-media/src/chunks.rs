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
        assert!(split_chunks(b"garbage").is_err());
        assert_eq!(split_chunks(&[]), Ok(vec![]));
    }
}
