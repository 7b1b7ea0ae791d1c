//! Stereo WAV output of assembled chunks, through `hound`.

use std::io::{Seek, Write};

use crate::StereoChunk;

/// The WAV format of a call recording: 2 channels (caller, agent), 16-bit integer PCM.
pub fn wav_spec(sample_rate: u32) -> hound::WavSpec {
    hound::WavSpec {
        channels: 2,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

/// Bytes of a stereo 16-bit WAV header ([`wav_spec`]).
pub const WAV_HEADER_BYTES: usize = 44;

/// The header of a stereo 16-bit PCM WAV ([`wav_spec`]) whose data is `data_bytes` long:
/// for a recording assembled piece by piece elsewhere (in S3), where hound's seeking writer
/// cannot go. Byte for byte what hound writes for the same audio. `None` when the data is
/// too long for a WAV (4 GiB).
pub fn wav_header(sample_rate: u32, data_bytes: u64) -> Option<[u8; WAV_HEADER_BYTES]> {
    let data = u32::try_from(data_bytes).ok()?;
    let riff = data.checked_add(WAV_HEADER_BYTES as u32 - 8)?;
    let spec = wav_spec(sample_rate);
    let block_align = spec.channels * spec.bits_per_sample / 8;
    let mut header = [0u8; WAV_HEADER_BYTES];
    let fields: [&[u8]; 13] = [
        b"RIFF",
        &riff.to_le_bytes(),
        b"WAVEfmt ",
        &16u32.to_le_bytes(),
        &1u16.to_le_bytes(), // PCM
        &spec.channels.to_le_bytes(),
        &sample_rate.to_le_bytes(),
        &(sample_rate * u32::from(block_align)).to_le_bytes(),
        &block_align.to_le_bytes(),
        &spec.bits_per_sample.to_le_bytes(),
        b"data",
        &data.to_le_bytes(),
        &[],
    ];
    let mut at = 0;
    for field in fields {
        header[at..at + field.len()].copy_from_slice(field);
        at += field.len();
    }
    Some(header)
}

/// Writes [`StereoChunk`]s to a stereo WAV; call [`WavWriter::finalize`] to fix the header.
pub struct WavWriter<W: Write + Seek> {
    inner: hound::WavWriter<W>,
}

impl<W: Write + Seek> WavWriter<W> {
    /// Starts a WAV at `sample_rate` on `sink`.
    pub fn new(sink: W, sample_rate: u32) -> Result<Self, hound::Error> {
        Ok(Self {
            inner: hound::WavWriter::new(sink, wav_spec(sample_rate))?,
        })
    }

    /// Appends one chunk.
    pub fn write_chunk(&mut self, chunk: &StereoChunk) -> Result<(), hound::Error> {
        let mut writer = self.inner.get_i16_writer((chunk.samples * 2) as u32);
        for sample in chunk.pcm.chunks_exact(2) {
            writer.write_sample(i16::from_le_bytes([sample[0], sample[1]]));
        }
        writer.flush()
    }

    /// Writes the final header sizes.
    pub fn finalize(self) -> Result<(), hound::Error> {
        self.inner.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standalone_header_is_the_one_hound_writes() {
        let pcm: Vec<u8> = (0..4000i16).flat_map(|s| s.to_le_bytes()).collect();
        let mut file = std::io::Cursor::new(Vec::new());
        let mut wav = WavWriter::new(&mut file, 8000).unwrap();
        wav.write_chunk(&StereoChunk {
            start_sample: 0,
            samples: pcm.len() / 4,
            pcm: pcm.clone(),
        })
        .unwrap();
        wav.finalize().unwrap();
        let written = file.into_inner();
        let header = wav_header(8000, pcm.len() as u64).unwrap();
        assert_eq!(&written[..WAV_HEADER_BYTES], &header);
        assert_eq!(&written[WAV_HEADER_BYTES..], &pcm[..]);
        assert!(wav_header(8000, 1 << 32).is_none());
    }

    #[test]
    fn chunks_round_trip_through_hound() {
        let mut file = std::io::Cursor::new(Vec::new());
        let mut wav = WavWriter::new(&mut file, 8000).unwrap();
        let pcm: Vec<u8> = [1i16, -2, 3, -4]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        wav.write_chunk(&StereoChunk {
            start_sample: 0,
            samples: 2,
            pcm,
        })
        .unwrap();
        wav.finalize().unwrap();
        file.set_position(0);
        let mut reader = hound::WavReader::new(file).unwrap();
        assert_eq!(reader.spec(), wav_spec(8000));
        let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(samples, [1, -2, 3, -4]);
    }
}
