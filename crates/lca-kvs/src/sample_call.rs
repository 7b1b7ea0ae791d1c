//! The demo's own sample call: a short support call, written here as a script and spoken by
//! espeak-ng (two voices) at the first run, laid out as Connect would stream it — caller on one
//! track, agent on the other, each silent while the other speaks.

use std::io::Cursor;
use std::process::Command;

use rubato::{FftFixedIn, Resampler};

/// Who says a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// The customer (`AUDIO_FROM_CUSTOMER`, channel 0).
    Caller,
    /// The agent (`AUDIO_TO_CUSTOMER`, channel 1).
    Agent,
}

impl Speaker {
    /// The stereo channel of this speaker.
    pub fn channel(self) -> usize {
        match self {
            Speaker::Caller => 0,
            Speaker::Agent => 1,
        }
    }
}

/// The demo call's script.
pub const SCRIPT: &[(Speaker, &str)] = &[
    (
        Speaker::Agent,
        "Thank you for calling Example Internet. This is Sam. How can I help you today?",
    ),
    (
        Speaker::Caller,
        "Hi Sam. My internet has been very slow since yesterday evening.",
    ),
    (
        Speaker::Agent,
        "I am sorry about that. Can I have your account number please?",
    ),
    (Speaker::Caller, "Yes. It is four five six seven eight."),
    (
        Speaker::Agent,
        "Thank you. I can see a problem with the line in your area. A technician is working on it.",
    ),
    (Speaker::Caller, "When will it be fixed?"),
    (
        Speaker::Agent,
        "It should be working again by five o'clock this afternoon.",
    ),
    (
        Speaker::Caller,
        "Okay. Will I get a credit for the time it was down?",
    ),
    (
        Speaker::Agent,
        "Yes. I have added a credit of ten dollars to your next bill.",
    ),
    (Speaker::Caller, "That is great. Thank you for your help."),
    (
        Speaker::Agent,
        "You are welcome. Thank you for calling and have a nice day.",
    ),
];

/// Sample rate of Connect call audio.
pub const RATE: u32 = 8000;
/// Silence before the first line.
const LEAD_IN_MS: usize = 500;
/// Silence between one speaker's line and the next line.
const GAP_MS: usize = 700;
/// Silence after the last line.
const TAIL_MS: usize = 1000;

/// One line as placed in the call.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// Who says it.
    pub speaker: Speaker,
    /// What is said.
    pub text: String,
    /// Start, seconds from the start of the call.
    pub start_s: f64,
    /// End of the speech, seconds from the start of the call.
    pub end_s: f64,
}

/// A two-track call with its script and timing.
#[derive(Debug, Clone)]
pub struct SampleCall {
    /// Caller track: s16le mono PCM at 8 kHz.
    pub caller: Vec<u8>,
    /// Agent track: s16le mono PCM at 8 kHz, as long as the caller track.
    pub agent: Vec<u8>,
    /// The lines in order, with where they are in the call.
    pub turns: Vec<Turn>,
}

impl SampleCall {
    /// Lays spoken lines (8 kHz samples each) out one after another with pauses between them,
    /// each on its speaker's track.
    pub fn lay_out(lines: Vec<(Speaker, String, Vec<i16>)>) -> Self {
        let ms = |ms: usize| ms * RATE as usize / 1000;
        let mut tracks: [Vec<i16>; 2] = [vec![0; ms(LEAD_IN_MS)], vec![0; ms(LEAD_IN_MS)]];
        let mut turns = Vec::with_capacity(lines.len());
        for (index, (speaker, text, samples)) in lines.into_iter().enumerate() {
            if index > 0 {
                for track in &mut tracks {
                    track.resize(track.len() + ms(GAP_MS), 0);
                }
            }
            let start = tracks[0].len();
            let (speaking, silent) = match speaker {
                Speaker::Caller => (0, 1),
                Speaker::Agent => (1, 0),
            };
            tracks[speaking].extend_from_slice(&samples);
            tracks[silent].resize(start + samples.len(), 0);
            turns.push(Turn {
                speaker,
                text,
                start_s: start as f64 / f64::from(RATE),
                end_s: (start + samples.len()) as f64 / f64::from(RATE),
            });
        }
        for track in &mut tracks {
            track.resize(track.len() + ms(TAIL_MS), 0);
        }
        let bytes = |track: &[i16]| track.iter().flat_map(|s| s.to_le_bytes()).collect();
        Self {
            caller: bytes(&tracks[0]),
            agent: bytes(&tracks[1]),
            turns,
        }
    }

    /// What `speaker` says in the whole call, for word error rates.
    pub fn said_by(&self, speaker: Speaker) -> String {
        self.turns
            .iter()
            .filter(|turn| turn.speaker == speaker)
            .map(|turn| turn.text.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Seconds of audio.
    pub fn seconds(&self) -> f64 {
        self.caller.len() as f64 / 2.0 / f64::from(RATE)
    }
}

/// Why the sample call could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SampleCallError {
    /// espeak-ng is not installed.
    #[error(
        "espeak-ng is not installed (the demo speaks its sample call with it): install it with `sudo apt-get install -y espeak-ng`, or replay a capture with --mkv FILE"
    )]
    EspeakMissing,
    /// espeak-ng ran but failed or gave no usable audio.
    #[error("espeak-ng could not speak {text:?}: {problem}")]
    Espeak { text: String, problem: String },
}

/// Speaks `SCRIPT` with espeak-ng (caller and agent in different voices) and lays it out.
pub fn synthesize() -> Result<SampleCall, SampleCallError> {
    let mut lines = Vec::with_capacity(SCRIPT.len());
    for (speaker, text) in SCRIPT {
        lines.push((*speaker, text.to_string(), speak(*speaker, text)?));
    }
    Ok(SampleCall::lay_out(lines))
}

/// One line spoken by espeak-ng, as 8 kHz samples.
fn speak(speaker: Speaker, text: &str) -> Result<Vec<i16>, SampleCallError> {
    let voice = match speaker {
        Speaker::Caller => "en-us+m3",
        Speaker::Agent => "en-us+f3",
    };
    let failed = |problem: String| SampleCallError::Espeak {
        text: text.to_string(),
        problem,
    };
    let output = Command::new("espeak-ng")
        .args(["-v", voice, "-s", "150", "--stdout", text])
        .output()
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => SampleCallError::EspeakMissing,
            _ => failed(error.to_string()),
        })?;
    if !output.status.success() {
        return Err(failed(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let mut wav = hound::WavReader::new(Cursor::new(output.stdout))
        .map_err(|e| failed(format!("its output is not a WAV file: {e}")))?;
    let spec = wav.spec();
    if spec.channels != 1 || spec.bits_per_sample != 16 {
        return Err(failed(format!(
            "expected 16-bit mono, got {} bits x {} channels",
            spec.bits_per_sample, spec.channels
        )));
    }
    // espeak-ng streams its WAV with an unknown length; read samples until they end.
    let samples: Vec<i16> = wav.samples::<i16>().map_while(Result::ok).collect();
    if samples.is_empty() {
        return Err(failed("it produced no audio".to_string()));
    }
    resample(&samples, spec.sample_rate, RATE).map_err(failed)
}

/// Resamples a whole mono signal from `from` Hz to `to` Hz.
pub fn resample(samples: &[i16], from: u32, to: u32) -> Result<Vec<i16>, String> {
    if from == to {
        return Ok(samples.to_vec());
    }
    let chunk = 1024;
    let mut resampler = FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 2, 1)
        .map_err(|e| format!("cannot resample {from} Hz to {to} Hz: {e}"))?;
    let delay = resampler.output_delay();
    let wanted = (samples.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let mut input: Vec<f32> = samples.iter().map(|s| f32::from(*s) / 32768.0).collect();
    // Zero padding flushes the resampler's delay and fills the last chunk.
    let padded = (input.len() / chunk + 2 + delay / chunk + 1) * chunk;
    input.resize(padded, 0.0);
    let mut output = Vec::with_capacity(wanted + delay + chunk);
    for piece in input.chunks_exact(chunk) {
        let wave = resampler
            .process(&[piece], None)
            .map_err(|e| format!("resampling failed: {e}"))?;
        output.extend_from_slice(&wave[0]);
    }
    Ok(output
        .iter()
        .skip(delay)
        .take(wanted)
        .map(|s| (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_alternate_on_their_own_tracks_with_pauses_between() {
        let call = SampleCall::lay_out(vec![
            (Speaker::Agent, "hello".into(), vec![1000; 800]),
            (Speaker::Caller, "hi".into(), vec![-1000; 1600]),
        ]);
        assert_eq!(call.caller.len(), call.agent.len());
        let sample = |track: &[u8], n: usize| i16::from_le_bytes([track[2 * n], track[2 * n + 1]]);
        // agent 0.5-0.6 s, then 0.7 s pause, caller 1.3-1.5 s, then 1 s of silence
        assert_eq!(call.turns[0].start_s, 0.5);
        assert_eq!(call.turns[0].end_s, 0.6);
        assert_eq!(call.turns[1].start_s, 1.3);
        assert_eq!(call.turns[1].end_s, 1.5);
        assert!((call.seconds() - 2.5).abs() < 1e-9);
        assert_eq!(sample(&call.agent, 4000), 1000);
        assert_eq!(sample(&call.caller, 4000), 0);
        assert_eq!(sample(&call.caller, 10400), -1000);
        assert_eq!(sample(&call.agent, 10400), 0);
        assert_eq!(call.said_by(Speaker::Caller), "hi");
    }

    #[test]
    fn resampling_keeps_a_tone_and_the_length() {
        let tone: Vec<i16> = (0..22050)
            .map(|n| {
                ((n as f64 * 2.0 * std::f64::consts::PI * 440.0 / 22050.0).sin() * 10000.0) as i16
            })
            .collect();
        let out = resample(&tone, 22050, 8000).unwrap();
        assert_eq!(out.len(), 8000);
        // the tone keeps its level (RMS of a 10000-peak sine is about 7071) and its timing
        let rms = (out[1000..7000]
            .iter()
            .map(|s| f64::from(*s).powi(2))
            .sum::<f64>()
            / 6000.0)
            .sqrt();
        assert!((rms - 7071.0).abs() < 150.0, "rms {rms}");
        let expected = (2000.0 * 2.0 * std::f64::consts::PI * 440.0 / 8000.0).sin() * 10000.0;
        assert!(
            (f64::from(out[2000]) - expected).abs() < 300.0,
            "{} vs {expected}",
            out[2000]
        );
    }

    #[test]
    fn espeak_speaks_the_script_into_a_call_of_about_a_minute() {
        let call = synthesize().expect("espeak-ng installed (scripts/test.sh installs it)");
        assert_eq!(call.turns.len(), SCRIPT.len());
        assert!(
            (40.0..90.0).contains(&call.seconds()),
            "{} s",
            call.seconds()
        );
        for pair in call.turns.windows(2) {
            assert!(pair[1].start_s >= pair[0].end_s + 0.69, "{pair:?}");
        }
        // every line is audible on its speaker's track
        for turn in &call.turns {
            let track = match turn.speaker {
                Speaker::Caller => &call.caller,
                Speaker::Agent => &call.agent,
            };
            let (start, end) = (
                (turn.start_s * 8000.0) as usize,
                (turn.end_s * 8000.0) as usize,
            );
            let loudest = track[2 * start..2 * end]
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]).unsigned_abs())
                .max()
                .unwrap_or(0);
            assert!(loudest > 3000, "{turn:?}: peak {loudest}");
        }
    }
}
