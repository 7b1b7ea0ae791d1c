//! Speech recognizers behind the local Transcribe: the [`Recognizer`] trait, the
//! deterministic [`EnergyRecognizer`] used by tests, and (feature `pocketsphinx`) a real
//! offline recognizer, [`pocketsphinx::SphinxRecognizer`].

#[cfg(feature = "pocketsphinx")]
pub mod pocketsphinx;

/// A recognized word and when it was said, as Transcribe's result Items carry them.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// Start, seconds from the start of the session's audio.
    pub start_s: f64,
    /// End, seconds from the start of the session's audio.
    pub end_s: f64,
    /// The word.
    pub text: String,
}
/// A recognized (or still growing) stretch of speech on one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Channel index (0 = caller, 1 = agent in this project's stereo).
    pub channel: usize,
    /// Stable across the partial updates of one segment and its final result.
    pub result_id: String,
    /// Start, seconds from the start of the session's audio.
    pub start_s: f64,
    /// End, seconds from the start of the session's audio.
    pub end_s: f64,
    /// What was heard.
    pub text: String,
    /// A partial result (will be updated) or the final one.
    pub is_partial: bool,
    /// The words of `text` with their timings (empty when the recognizer has none).
    pub words: Vec<Word>,
}

/// Turns a session's audio into segments. Implementations see interleaved s16le PCM with the
/// session's channel count, in the pieces the client sent.
pub trait Recognizer: Send {
    /// Takes more audio; returns the segments it completes or updates.
    fn accept(&mut self, pcm: &[u8]) -> Vec<Segment>;
    /// The audio has ended; returns the remaining final segments.
    fn finish(&mut self) -> Vec<Segment>;
}

/// Per-channel voice activity on 10 ms frames: a frame whose mean absolute amplitude exceeds
/// the threshold is voiced; a voiced region ends after `hangover` unvoiced frames. Shared by
/// the recognizers so that they cut speech into segments the same way.
#[derive(Debug)]
pub(crate) struct VoiceActivity {
    threshold: f64,
    hangover_frames: u64,
    partial_every_frames: u64,
    frame: u64,
    regions: u64,
    region: Option<Region>,
}

#[derive(Debug)]
struct Region {
    start_frame: u64,
    last_voiced: u64,
    last_partial: u64,
}

/// A stretch of voice, in frames: `[start_frame, end_frame)`; `index` counts the channel's
/// regions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct VoiceRegion {
    pub start_frame: u64,
    pub end_frame: u64,
    pub index: u64,
}

/// What one frame did to the channel's voice activity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum VoiceStep {
    /// Silence, or voice that changes nothing reportable.
    Nothing,
    /// This frame starts a voiced region.
    Began,
    /// Still voiced, and a partial result is due for the region so far.
    PartialDue(VoiceRegion),
    /// The region ended (this frame completed the hangover).
    Ended(VoiceRegion),
}

impl VoiceActivity {
    /// Voice activity with a threshold (mean absolute amplitude), hangover and partial interval
    /// in milliseconds.
    pub(crate) fn new(threshold: f64, hangover_ms: u64, partial_every_ms: u64) -> Self {
        Self {
            threshold,
            hangover_frames: hangover_ms / 10,
            partial_every_frames: (partial_every_ms / 10).max(1),
            frame: 0,
            regions: 0,
            region: None,
        }
    }

    /// Whether a voiced region is open.
    #[cfg_attr(not(feature = "pocketsphinx"), allow(dead_code))]
    pub(crate) fn in_voice(&self) -> bool {
        self.region.is_some()
    }

    /// Closes the next frame, whose mean absolute amplitude is `mean`.
    pub(crate) fn frame(&mut self, mean: f64) -> VoiceStep {
        let frame = self.frame;
        self.frame += 1;
        let voiced = mean > self.threshold;
        match (&mut self.region, voiced) {
            (None, true) => {
                self.region = Some(Region {
                    start_frame: frame,
                    last_voiced: frame,
                    last_partial: frame,
                });
                VoiceStep::Began
            }
            (Some(region), true) => {
                region.last_voiced = frame;
                if frame - region.last_partial >= self.partial_every_frames {
                    region.last_partial = frame;
                    VoiceStep::PartialDue(VoiceRegion {
                        start_frame: region.start_frame,
                        end_frame: frame + 1,
                        index: self.regions,
                    })
                } else {
                    VoiceStep::Nothing
                }
            }
            (Some(region), false) if frame - region.last_voiced > self.hangover_frames => {
                let done = VoiceRegion {
                    start_frame: region.start_frame,
                    end_frame: region.last_voiced + 1,
                    index: self.regions,
                };
                self.region = None;
                self.regions += 1;
                VoiceStep::Ended(done)
            }
            _ => VoiceStep::Nothing,
        }
    }

    /// The audio ended: the open region, if any, ends at its last voiced frame.
    pub(crate) fn finish(&mut self) -> Option<VoiceRegion> {
        let region = self.region.take()?;
        let index = self.regions;
        self.regions += 1;
        Some(VoiceRegion {
            start_frame: region.start_frame,
            end_frame: region.last_voiced + 1,
            index,
        })
    }
}

/// Splits interleaved s16le PCM into per-channel 10 ms frames: `on_frame(channel, samples)`
/// for each completed frame, in time order; keeps what does not fill a frame yet.
#[derive(Debug)]
pub(crate) struct FrameSplitter {
    channels: usize,
    frame_samples: usize,
    carry: Vec<u8>,
    frames: Vec<Vec<i16>>,
}

impl FrameSplitter {
    pub(crate) fn new(sample_rate: u32, channels: usize) -> Self {
        let frame_samples = (sample_rate as usize / 100).max(1);
        Self {
            channels,
            frame_samples,
            carry: Vec::new(),
            frames: (0..channels)
                .map(|_| Vec::with_capacity(frame_samples))
                .collect(),
        }
    }

    pub(crate) fn push(&mut self, pcm: &[u8], mut on_frame: impl FnMut(usize, &[i16])) {
        let frame_bytes = 2 * self.channels;
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(pcm);
        let whole = data.len() / frame_bytes * frame_bytes;
        for frame in data[..whole].chunks_exact(frame_bytes) {
            for channel in 0..self.channels {
                let sample = i16::from_le_bytes([frame[2 * channel], frame[2 * channel + 1]]);
                let samples = &mut self.frames[channel];
                samples.push(sample);
                if samples.len() == self.frame_samples {
                    on_frame(channel, samples);
                    samples.clear();
                }
            }
        }
        self.carry = data[whole..].to_vec();
    }
}

/// Mean absolute amplitude of a frame.
pub(crate) fn mean_abs(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.iter().map(|s| f64::from(*s).abs()).sum::<f64>() / samples.len() as f64
}

/// Deterministic voice-activity "recognizer": per channel, 10 ms frames whose mean absolute
/// amplitude exceeds a threshold are voiced; a voiced region ends after `hangover_ms` of
/// unvoiced frames. While voiced it reports a growing partial every `partial_every_ms`; at the
/// end, a final. The text states the channel, start and duration, so tests can check timing
/// and channel mapping exactly.
#[derive(Debug)]
pub struct EnergyRecognizer {
    sample_rate: u32,
    frame_samples: usize,
    splitter: FrameSplitter,
    voices: Vec<VoiceActivity>,
}

impl EnergyRecognizer {
    /// A recognizer with the defaults used by the tests and the demo: threshold 300, 600 ms
    /// hangover, partials every 300 ms.
    pub fn new(sample_rate: u32, channels: usize) -> Self {
        Self::with_settings(sample_rate, channels, 300.0, 600, 300)
    }

    /// A recognizer with explicit settings.
    pub fn with_settings(
        sample_rate: u32,
        channels: usize,
        threshold: f64,
        hangover_ms: u64,
        partial_every_ms: u64,
    ) -> Self {
        let channels = channels.max(1);
        Self {
            sample_rate,
            frame_samples: (sample_rate as usize / 100).max(1),
            splitter: FrameSplitter::new(sample_rate, channels),
            voices: (0..channels)
                .map(|_| VoiceActivity::new(threshold, hangover_ms, partial_every_ms))
                .collect(),
        }
    }

    fn segment(&self, channel: usize, region: VoiceRegion, is_partial: bool) -> Segment {
        let seconds =
            |frame: u64| frame as f64 * self.frame_samples as f64 / f64::from(self.sample_rate);
        let start_s = seconds(region.start_frame);
        let end_s = seconds(region.end_frame);
        Segment {
            channel,
            result_id: format!("ch{channel}-{}", region.index),
            start_s,
            end_s,
            text: format!(
                "channel {channel} voice from {start_s:.2} s for {:.2} s",
                end_s - start_s
            ),
            is_partial,
            words: Vec::new(),
        }
    }
}

impl Recognizer for EnergyRecognizer {
    fn accept(&mut self, pcm: &[u8]) -> Vec<Segment> {
        let mut steps = Vec::new();
        let voices = &mut self.voices;
        self.splitter.push(pcm, |channel, samples| {
            steps.push((channel, voices[channel].frame(mean_abs(samples))));
        });
        steps
            .into_iter()
            .filter_map(|(channel, step)| match step {
                VoiceStep::PartialDue(region) => Some(self.segment(channel, region, true)),
                VoiceStep::Ended(region) => Some(self.segment(channel, region, false)),
                VoiceStep::Nothing | VoiceStep::Began => None,
            })
            .collect()
    }

    fn finish(&mut self) -> Vec<Segment> {
        let regions: Vec<(usize, VoiceRegion)> = self
            .voices
            .iter_mut()
            .enumerate()
            .filter_map(|(channel, voice)| voice.finish().map(|region| (channel, region)))
            .collect();
        regions
            .into_iter()
            .map(|(channel, region)| self.segment(channel, region, false))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voiced_regions_become_timed_partials_then_finals_per_channel() {
        let mut recognizer = EnergyRecognizer::new(8000, 2);
        // 2 s: channel 1 speaks 0.50-1.20 s; channel 0 is silent.
        let mut pcm = Vec::new();
        for n in 0..16000 {
            let t = n as f64 / 8000.0;
            let agent: i16 = if (0.5..1.2).contains(&t) {
                if n % 2 == 0 { 2000 } else { -2000 }
            } else {
                0
            };
            pcm.extend_from_slice(&0i16.to_le_bytes());
            pcm.extend_from_slice(&agent.to_le_bytes());
        }
        let mut segments = Vec::new();
        for piece in pcm.chunks(1234) {
            segments.extend(recognizer.accept(piece));
        }
        segments.extend(recognizer.finish());
        let finals: Vec<&Segment> = segments.iter().filter(|s| !s.is_partial).collect();
        assert_eq!(finals.len(), 1);
        assert_eq!(finals[0].channel, 1);
        assert!(
            (finals[0].start_s - 0.5).abs() < 1e-9 && (finals[0].end_s - 1.2).abs() < 1e-9,
            "{:?}",
            finals[0]
        );
        let partials: Vec<&Segment> = segments.iter().filter(|s| s.is_partial).collect();
        assert_eq!(partials.len(), 2, "every 300 ms while voiced");
        assert!(partials.iter().all(|p| p.result_id == finals[0].result_id));
        assert!(partials[0].end_s < partials[1].end_s);
    }
}
