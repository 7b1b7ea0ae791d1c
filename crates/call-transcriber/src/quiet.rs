//! [`QuietWatch`]: where speech last was on each channel, so that a Lambda hand-over (which
//! ends one Transcribe session and starts another) falls between utterances instead of
//! cutting one in two. Pure: fed the blocks the pipeline assembles.

/// Samples per analysis window (20 ms at 8 kHz).
const WINDOW: usize = 160;
/// Nanoseconds per sample at 8 kHz.
const NS_PER_SAMPLE: i64 = 125_000;
/// RMS above which a window counts as voice (about -40 dBFS): speech on a phone line is
/// well above it; line noise and comfort noise are below.
const VOICE_RMS: f64 = 328.0;

/// Per channel: the end of the latest audio seen and of the latest voice in it.
#[derive(Debug, Default, Clone)]
pub struct QuietWatch {
    audio_end_ns: [Option<i64>; 2],
    voice_end_ns: [Option<i64>; 2],
}

impl QuietWatch {
    /// Takes note of a block of s16le mono PCM on `channel` (0 or 1) starting at
    /// `timestamp_ns`.
    pub fn push(&mut self, channel: usize, timestamp_ns: i64, pcm: &[u8]) {
        let channel = channel.min(1);
        let samples = pcm.len() / 2;
        for (i, window) in pcm.chunks(WINDOW * 2).enumerate() {
            let count = window.len() / 2;
            if count == 0 {
                continue;
            }
            let energy: f64 = window
                .chunks_exact(2)
                .map(|s| f64::from(i16::from_le_bytes([s[0], s[1]])).powi(2))
                .sum();
            if (energy / count as f64).sqrt() > VOICE_RMS {
                let end = timestamp_ns + ((i * WINDOW + count) as i64) * NS_PER_SAMPLE;
                let slot = &mut self.voice_end_ns[channel];
                *slot = Some(slot.map_or(end, |e| e.max(end)));
            }
        }
        let end = timestamp_ns + samples as i64 * NS_PER_SAMPLE;
        let slot = &mut self.audio_end_ns[channel];
        *slot = Some(slot.map_or(end, |e| e.max(end)));
    }

    /// Whether the latest `span_ns` of audio on both channels held no voice.
    pub fn is_quiet(&self, span_ns: i64) -> bool {
        (0..2).all(|c| match (self.audio_end_ns[c], self.voice_end_ns[c]) {
            (Some(audio), Some(voice)) => audio - voice >= span_ns,
            _ => true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(samples: usize, amplitude: i16) -> Vec<u8> {
        (0..samples)
            .flat_map(|i| (if i % 2 == 0 { amplitude } else { -amplitude }).to_le_bytes())
            .collect()
    }

    #[test]
    fn quiet_only_when_both_channels_have_been_silent_long_enough() {
        let ms = 1_000_000;
        let mut watch = QuietWatch::default();
        assert!(watch.is_quiet(300 * ms), "no audio yet");
        // Caller speaks 0..500 ms then is silent to 1000 ms; the agent hums under the threshold.
        watch.push(0, 0, &tone(4000, 3000));
        watch.push(0, 500 * ms, &tone(4000, 0));
        watch.push(1, 0, &tone(8000, 100));
        assert!(watch.is_quiet(300 * ms));
        assert!(watch.is_quiet(500 * ms));
        assert!(!watch.is_quiet(520 * ms));
        // The agent starts talking at 900 ms.
        watch.push(1, 900 * ms, &tone(800, 3000));
        assert!(!watch.is_quiet(300 * ms));
        watch.push(1, 1000 * ms, &tone(2400, 0));
        watch.push(0, 1000 * ms, &tone(2400, 0));
        assert!(watch.is_quiet(300 * ms));
    }

    #[test]
    fn odd_block_sizes_are_fine() {
        let mut watch = QuietWatch::default();
        watch.push(0, 0, &[0x10]);
        watch.push(5, 0, &tone(161, 5000));
        assert!(!watch.is_quiet(1));
    }
}
