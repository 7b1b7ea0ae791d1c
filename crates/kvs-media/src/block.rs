//! Matroska block headers and lacing (SimpleBlock and BlockGroup/Block share one layout).
//!
//! Parsed by hand rather than with `webm_iterable::SimpleBlock::try_from`, which panics on short
//! blocks and on lacing flags without frame data; here every malformed block is an error.

use std::ops::Range;

/// Why a block's bytes could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The block ends before its header (track number, timecode, flags) is complete.
    #[error("block of {len} bytes is shorter than its header")]
    ShortHeader {
        /// Length of the whole block payload.
        len: usize,
    },
    /// The track number is not a valid EBML variable-size integer.
    #[error("block track number is not a valid EBML integer")]
    BadTrackNumber,
    /// The lacing header (frame count and sizes) is cut off or inconsistent.
    #[error("block lacing is malformed: {0}")]
    BadLacing(&'static str),
}

/// The lacing mode named by a block's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lacing {
    /// One frame, no lacing header.
    None,
    /// Frame sizes coded as runs of 255-valued bytes.
    Xiph,
    /// All frames the same size.
    Fixed,
    /// First size an EBML integer, later sizes as signed differences.
    Ebml,
}

/// A parsed block: its track, relative timecode and the byte ranges of its frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    /// Track number the block belongs to.
    pub track: u64,
    /// Timecode relative to the enclosing cluster, in TimecodeScale units.
    pub relative_timecode: i16,
    /// Keyframe flag (SimpleBlock only; always false for BlockGroup blocks).
    pub keyframe: bool,
    /// Lacing mode.
    pub lacing: Lacing,
    /// Byte ranges of each frame inside the block payload, in order.
    pub frames: Vec<Range<usize>>,
}

impl BlockHeader {
    /// Parses a block payload (the bytes of a SimpleBlock or Block element).
    pub fn parse(block: &[u8]) -> Result<Self, BlockError> {
        let short = BlockError::ShortHeader { len: block.len() };
        let (track, track_len) = read_vint(block)
            .map_err(|_| BlockError::BadTrackNumber)?
            .ok_or(short.clone())?;
        let header_end = track_len + 3;
        if block.len() < header_end {
            return Err(short);
        }
        let relative_timecode = i16::from_be_bytes([block[track_len], block[track_len + 1]]);
        let flags = block[track_len + 2];
        let lacing = match (flags >> 1) & 0x03 {
            0 => Lacing::None,
            1 => Lacing::Xiph,
            2 => Lacing::Fixed,
            _ => Lacing::Ebml,
        };
        let frames = frame_ranges(block, header_end, lacing)?;
        Ok(Self {
            track,
            relative_timecode,
            keyframe: flags & 0x80 != 0,
            lacing,
            frames,
        })
    }
}

fn frame_ranges(
    block: &[u8],
    mut pos: usize,
    lacing: Lacing,
) -> Result<Vec<Range<usize>>, BlockError> {
    if lacing == Lacing::None {
        #[allow(clippy::single_range_in_vec_init)] // one frame: its byte range
        return Ok(vec![pos..block.len()]);
    }
    let count = usize::from(
        *block
            .get(pos)
            .ok_or(BlockError::BadLacing("frame count missing"))?,
    ) + 1;
    pos += 1;
    let mut sizes = Vec::with_capacity(count);
    match lacing {
        Lacing::None => unreachable!("handled above"),
        Lacing::Fixed => {
            let data = block.len() - pos;
            if !data.is_multiple_of(count) {
                return Err(BlockError::BadLacing(
                    "fixed-size lacing does not divide the data evenly",
                ));
            }
            sizes.resize(count - 1, data / count);
        }
        Lacing::Xiph => {
            for _ in 0..count - 1 {
                let mut size = 0usize;
                loop {
                    let byte = *block
                        .get(pos)
                        .ok_or(BlockError::BadLacing("Xiph frame size cut off"))?;
                    pos += 1;
                    size += usize::from(byte);
                    if byte != 255 {
                        break;
                    }
                }
                sizes.push(size);
            }
        }
        Lacing::Ebml => {
            if count > 1 {
                let (first, len) = read_vint(&block[pos..])
                    .map_err(|_| BlockError::BadLacing("EBML frame size invalid"))?
                    .ok_or(BlockError::BadLacing("EBML frame size cut off"))?;
                pos += len;
                let mut size = i64::try_from(first)
                    .map_err(|_| BlockError::BadLacing("EBML frame size too large"))?;
                sizes.push(to_size(size)?);
                for _ in 0..count - 2 {
                    let (raw, len) = read_vint(&block[pos..])
                        .map_err(|_| BlockError::BadLacing("EBML size difference invalid"))?
                        .ok_or(BlockError::BadLacing("EBML size difference cut off"))?;
                    pos += len;
                    // Signed difference: subtract the bias 2^(7*len - 1) - 1.
                    let bias = (1i64 << (7 * len - 1)) - 1;
                    let diff = raw as i64 - bias;
                    size = size
                        .checked_add(diff)
                        .ok_or(BlockError::BadLacing("EBML frame size overflows"))?;
                    sizes.push(to_size(size)?);
                }
            }
        }
    }
    let mut frames = Vec::with_capacity(count);
    for size in sizes {
        let end = pos
            .checked_add(size)
            .filter(|end| *end <= block.len())
            .ok_or(BlockError::BadLacing("frame sizes exceed the block"))?;
        frames.push(pos..end);
        pos = end;
    }
    frames.push(pos..block.len());
    Ok(frames)
}

fn to_size(size: i64) -> Result<usize, BlockError> {
    usize::try_from(size).map_err(|_| BlockError::BadLacing("negative EBML frame size"))
}

/// Reads an EBML variable-size integer (marker bit removed). `Ok(None)`: not enough bytes.
pub(crate) fn read_vint(bytes: &[u8]) -> Result<Option<(u64, usize)>, ()> {
    let Some(&first) = bytes.first() else {
        return Ok(None);
    };
    if first == 0 {
        return Err(());
    }
    let len = first.leading_zeros() as usize + 1;
    if bytes.len() < len {
        return Ok(None);
    }
    let mut value = u64::from(first) & ((1u64 << (8 - len)) - 1);
    for byte in &bytes[1..len] {
        value = (value << 8) | u64::from(*byte);
    }
    Ok(Some((value, len)))
}

/// Writes `value` as an EBML variable-size integer of the smallest length.
pub(crate) fn write_vint(value: u64, out: &mut Vec<u8>) {
    let mut len = 1;
    // Lengths 1..=8 hold 7*len bits; the all-ones value is reserved.
    while len < 8 && value >= (1u64 << (7 * len)) - 1 {
        len += 1;
    }
    let marked = value | (1u64 << (7 * len));
    out.extend_from_slice(&marked.to_be_bytes()[8 - len..]);
}

/// Encodes a block payload with the given track, timecode, flags and lacing.
/// Used by the writer; exposed for tests that need odd blocks.
pub fn encode_block(
    track: u64,
    relative_timecode: i16,
    keyframe: bool,
    lacing: Lacing,
    frames: &[&[u8]],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames.iter().map(|f| f.len()).sum::<usize>() + 16);
    write_vint(track, &mut out);
    out.extend_from_slice(&relative_timecode.to_be_bytes());
    let lacing_bits = match lacing {
        Lacing::None => 0,
        Lacing::Xiph => 1,
        Lacing::Fixed => 2,
        Lacing::Ebml => 3,
    };
    out.push(if keyframe { 0x80 } else { 0 } | (lacing_bits << 1));
    if lacing != Lacing::None {
        assert!(
            !frames.is_empty() && frames.len() <= 256,
            "a laced block holds 1 to 256 frames"
        );
        out.push((frames.len() - 1) as u8);
        let sizes: Vec<usize> = frames[..frames.len() - 1].iter().map(|f| f.len()).collect();
        match lacing {
            Lacing::Xiph => {
                for mut size in sizes {
                    while size >= 255 {
                        out.push(255);
                        size -= 255;
                    }
                    out.push(size as u8);
                }
            }
            Lacing::Ebml => {
                if let Some((&first, rest)) = sizes.split_first() {
                    write_vint(first as u64, &mut out);
                    let mut prev = first as i64;
                    for &size in rest {
                        let diff = size as i64 - prev;
                        // Smallest length whose signed range holds the difference.
                        let len = (1..=8)
                            .find(|len| {
                                let bias = (1i64 << (7 * len - 1)) - 1;
                                diff >= -bias && diff <= bias
                            })
                            .expect("frame size differences fit in 8 bytes");
                        let bias = (1i64 << (7 * len - 1)) - 1;
                        let marked = ((diff + bias) as u64) | (1u64 << (7 * len));
                        out.extend_from_slice(&marked.to_be_bytes()[8 - len..]);
                        prev = size as i64;
                    }
                }
            }
            Lacing::Fixed => {
                assert!(
                    frames.iter().all(|f| f.len() == frames[0].len()),
                    "fixed-size lacing needs equal frames"
                );
            }
            Lacing::None => unreachable!("checked above"),
        }
    }
    for frame in frames {
        out.extend_from_slice(frame);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(lacing: Lacing, frames: &[&[u8]]) {
        let bytes = encode_block(3, -7, true, lacing, frames);
        let header = BlockHeader::parse(&bytes).expect("parses");
        assert_eq!(header.track, 3);
        assert_eq!(header.relative_timecode, -7);
        assert!(header.keyframe);
        let got: Vec<&[u8]> = header.frames.iter().map(|r| &bytes[r.clone()]).collect();
        assert_eq!(got, frames);
    }

    #[test]
    fn every_lacing_mode_round_trips() {
        let a = vec![1u8; 300];
        let b = vec![2u8; 17];
        let c = vec![3u8; 1000];
        roundtrip(Lacing::None, &[&a]);
        roundtrip(Lacing::Xiph, &[&a, &b, &c]);
        roundtrip(Lacing::Ebml, &[&a, &b, &c, &b]);
        roundtrip(Lacing::Fixed, &[&b, &b, &b]);
        roundtrip(Lacing::Xiph, &[&a]);
    }

    #[test]
    fn vint_lengths_follow_the_spec() {
        let mut out = Vec::new();
        write_vint(1, &mut out);
        assert_eq!(out, [0x81]);
        out.clear();
        write_vint(127, &mut out); // 127 is reserved in one byte
        assert_eq!(out, [0x40, 0x7F]);
        assert_eq!(read_vint(&[0x40, 0x7F]), Ok(Some((127, 2))));
        assert_eq!(read_vint(&[0x40]), Ok(None));
        assert_eq!(read_vint(&[0x00]), Err(()));
    }

    #[test]
    fn malformed_blocks_are_errors_not_panics() {
        assert!(matches!(
            BlockHeader::parse(&[]),
            Err(BlockError::ShortHeader { .. })
        ));
        assert!(matches!(
            BlockHeader::parse(&[0x81, 0]),
            Err(BlockError::ShortHeader { .. })
        ));
        assert_eq!(
            BlockHeader::parse(&[0x00, 0, 0, 0]),
            Err(BlockError::BadTrackNumber)
        );
        // Xiph lacing flag, no frame count.
        assert!(matches!(
            BlockHeader::parse(&[0x81, 0, 0, 0x02]),
            Err(BlockError::BadLacing(_))
        ));
        // Xiph: two frames, first claims 255+255+10 bytes but block is short.
        assert!(matches!(
            BlockHeader::parse(&[0x81, 0, 0, 0x02, 1, 255, 255, 10, 1, 2]),
            Err(BlockError::BadLacing(_))
        ));
        // Fixed: 3 frames over 4 bytes.
        assert!(matches!(
            BlockHeader::parse(&[0x81, 0, 0, 0x04, 2, 1, 2, 3, 4]),
            Err(BlockError::BadLacing(_))
        ));
        // EBML: negative second size.
        assert!(matches!(
            BlockHeader::parse(&[0x81, 0, 0, 0x06, 2, 0x82, 0x80, 0, 0, 0, 0]),
            Err(BlockError::BadLacing(_))
        ));
    }
}
