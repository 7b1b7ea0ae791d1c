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
