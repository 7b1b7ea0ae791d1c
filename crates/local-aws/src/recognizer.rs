//! Speech recognizers behind the local Transcribe: the [`Recognizer`] trait and the
//! deterministic [`EnergyRecognizer`] used by tests.

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
}

/// Turns a session's audio into segments. Implementations see interleaved s16le PCM with the
/// session's channel count, in the pieces the client sent.
pub trait Recognizer: Send {
    /// Takes more audio; returns the segments it completes or updates.
    fn accept(&mut self, pcm: &[u8]) -> Vec<Segment>;
    /// The audio has ended; returns the remaining final segments.
    fn finish(&mut self) -> Vec<Segment>;
}

/// Deterministic voice-activity "recognizer": per channel, 10 ms frames whose mean absolute
/// amplitude exceeds a threshold are voiced; a voiced region ends after `hangover_ms` of
/// unvoiced frames. While voiced it reports a growing partial every `partial_every_ms`; at the
/// end, a final. The text states the channel, start and duration, so tests can check timing
/// and channel mapping exactly.
#[derive(Debug)]
pub struct EnergyRecognizer {
    sample_rate: u32,
    channels: usize,
    threshold: f64,
    frame_samples: usize,
    hangover_frames: u64,
    partial_every_frames: u64,
    carry: Vec<u8>,
    vads: Vec<ChannelVad>,
}

#[derive(Debug, Default)]
struct ChannelVad {
    frame: u64,
    sum: f64,
    samples: usize,
    regions: u64,
    region: Option<Region>,
}

#[derive(Debug)]
struct Region {
    start_frame: u64,
    last_voiced: u64,
    last_partial: u64,
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
            channels,
            threshold,
            frame_samples: (sample_rate as usize / 100).max(1),
            hangover_frames: hangover_ms / 10,
            partial_every_frames: (partial_every_ms / 10).max(1),
            carry: Vec::new(),
            vads: (0..channels).map(|_| ChannelVad::default()).collect(),
        }
    }

    fn seconds(&self, frame: u64) -> f64 {
        frame as f64 * self.frame_samples as f64 / f64::from(self.sample_rate)
    }

    fn segment(
        &self,
        channel: usize,
        start_frame: u64,
        index: u64,
        end_frame: u64,
        is_partial: bool,
    ) -> Segment {
        let start_s = self.seconds(start_frame);
        let end_s = self.seconds(end_frame);
        Segment {
            channel,
            result_id: format!("ch{channel}-{index}"),
            start_s,
            end_s,
            text: format!(
                "channel {channel} voice from {start_s:.2} s for {:.2} s",
                end_s - start_s
            ),
            is_partial,
        }
    }

    /// Closes frame `frame` of `channel` with mean amplitude `mean`.
    fn frame_done(&mut self, channel: usize, mean: f64, out: &mut Vec<Segment>) {
        let (hangover, partial_every) = (self.hangover_frames, self.partial_every_frames);
        let vad = &mut self.vads[channel];
        let frame = vad.frame;
        vad.frame += 1;
        let voiced = mean > self.threshold;
        // (region start, end frame, index, partial) of a segment to report, if any.
        let report = match (&mut vad.region, voiced) {
            (None, true) => {
                vad.region = Some(Region {
                    start_frame: frame,
                    last_voiced: frame,
                    last_partial: frame,
                });
                None
            }
            (Some(region), true) => {
                region.last_voiced = frame;
                if frame - region.last_partial >= partial_every {
                    region.last_partial = frame;
                    Some((region.start_frame, frame + 1, vad.regions, true))
                } else {
                    None
                }
            }
            (Some(region), false) if frame - region.last_voiced > hangover => {
                let done = (
                    region.start_frame,
                    region.last_voiced + 1,
                    vad.regions,
                    false,
                );
                vad.region = None;
                vad.regions += 1;
                Some(done)
            }
            _ => None,
        };
        if let Some((start, end, index, partial)) = report {
            out.push(self.segment(channel, start, index, end, partial));
        }
    }
}

impl Recognizer for EnergyRecognizer {
    fn accept(&mut self, pcm: &[u8]) -> Vec<Segment> {
        let mut out = Vec::new();
        let frame_bytes = 2 * self.channels;
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(pcm);
        let whole = data.len() / frame_bytes * frame_bytes;
        for frame in data[..whole].chunks_exact(frame_bytes) {
            for channel in 0..self.channels {
                let sample = i16::from_le_bytes([frame[2 * channel], frame[2 * channel + 1]]);
                let vad = &mut self.vads[channel];
                vad.sum += f64::from(sample).abs();
                vad.samples += 1;
                if vad.samples == self.frame_samples {
                    let mean = vad.sum / vad.samples as f64;
                    vad.sum = 0.0;
                    vad.samples = 0;
                    self.frame_done(channel, mean, &mut out);
                }
            }
        }
        self.carry = data[whole..].to_vec();
        out
    }

    fn finish(&mut self) -> Vec<Segment> {
        let mut out = Vec::new();
        for channel in 0..self.channels {
            let vad = &mut self.vads[channel];
            if let Some(region) = vad.region.take() {
                let index = vad.regions;
                vad.regions += 1;
                out.push(self.segment(
                    channel,
                    region.start_frame,
                    index,
                    region.last_voiced + 1,
                    false,
                ));
            }
        }
        out
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
