//! A real offline speech recognizer for the local Transcribe: CMU PocketSphinx (Debian's
//! `libpocketsphinx`, US English model from `pocketsphinx-en-us`).
//!
//! Speech is cut into segments per channel by the same voice activity as the
//! [`EnergyRecognizer`](super::EnergyRecognizer) (so segment boundaries behave alike); each
//! voiced region, with 300 ms before it, is one PocketSphinx utterance. The model is 16 kHz,
//! so call audio is resampled (rubato) before decoding. Partials come from the decoder's
//! current hypothesis every 300 ms of speech; finals carry per-word timings.

use std::collections::VecDeque;
use std::ffi::{CStr, CString, c_char, c_int};
use std::path::{Path, PathBuf};

use rubato::{FftFixedIn, Resampler};

use super::{
    FrameSplitter, Recognizer, Segment, VoiceActivity, VoiceRegion, VoiceStep, Word, mean_abs,
};

/// The rate of the US English acoustic model.
const MODEL_RATE: usize = 16_000;
/// Audio before a region's first voiced frame that is decoded with it (word onsets are quiet).
const PREROLL_MS: usize = 300;
/// PocketSphinx's frame rate (`-frate`, frames per second).
const DECODER_FRAMES_PER_SECOND: f64 = 100.0;

#[allow(non_camel_case_types)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};

    pub type ps_decoder_t = c_void;
    pub type cmd_ln_t = c_void;
    pub type arg_t = c_void;
    pub type ps_seg_t = c_void;

    #[link(name = "pocketsphinx")]
    #[link(name = "sphinxbase")]
    unsafe extern "C" {
        pub fn ps_args() -> *const arg_t;
        pub fn cmd_ln_parse_r(
            inout: *mut cmd_ln_t,
            defn: *const arg_t,
            argc: i32,
            argv: *mut *mut c_char,
            strict: i32,
        ) -> *mut cmd_ln_t;
        pub fn cmd_ln_free_r(config: *mut cmd_ln_t) -> c_int;
        pub fn ps_init(config: *mut cmd_ln_t) -> *mut ps_decoder_t;
        pub fn ps_free(ps: *mut ps_decoder_t) -> c_int;
        pub fn ps_start_utt(ps: *mut ps_decoder_t) -> c_int;
        pub fn ps_end_utt(ps: *mut ps_decoder_t) -> c_int;
        pub fn ps_get_n_frames(ps: *mut ps_decoder_t) -> c_int;
        pub fn ps_process_raw(
            ps: *mut ps_decoder_t,
            data: *const i16,
            n_samples: usize,
            no_search: c_int,
            full_utt: c_int,
        ) -> c_int;
        pub fn ps_seg_iter(ps: *mut ps_decoder_t) -> *mut ps_seg_t;
        pub fn ps_seg_next(seg: *mut ps_seg_t) -> *mut ps_seg_t;
        pub fn ps_seg_word(seg: *mut ps_seg_t) -> *const c_char;
        pub fn ps_seg_frames(seg: *mut ps_seg_t, sf: *mut c_int, ef: *mut c_int);
    }
}

/// Why the PocketSphinx recognizer cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SphinxError {
    /// The model files are not where they were looked for.
    #[error(
        "pocketsphinx's US English model is not at {0}: install it with `sudo apt-get install -y pocketsphinx-en-us`, or point POCKETSPHINX_MODEL_DIR at a folder holding en-us/, en-us.lm.bin and cmudict-en-us.dict"
    )]
    ModelMissing(PathBuf),
    /// The decoder refused its configuration or model.
    #[error("pocketsphinx could not load the model in {0} (ps_init failed)")]
    DecoderInit(PathBuf),
    /// The session's audio cannot be resampled for the model.
    #[error("cannot resample {rate} Hz audio to the model's 16 kHz: {problem}")]
    Resample { rate: u32, problem: String },
}

/// Where the US English model lives: `POCKETSPHINX_MODEL_DIR`, else the folder pkg-config
/// named at build time.
#[derive(Debug, Clone)]
pub struct SphinxModel {
    dir: PathBuf,
}

impl SphinxModel {
    /// Finds the model and checks that its files are there.
    pub fn locate() -> Result<Self, SphinxError> {
        let dir = std::env::var_os("POCKETSPHINX_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("POCKETSPHINX_MODELDIR")).join("en-us"));
        Self::at(dir)
    }

    /// The model in `dir` (holding `en-us/`, `en-us.lm.bin`, `cmudict-en-us.dict`).
    pub fn at(dir: PathBuf) -> Result<Self, SphinxError> {
        let model = Self { dir };
        if [
            model.dir.join("en-us").join("mdef"),
            model.dir.join("en-us.lm.bin"),
            model.dir.join("cmudict-en-us.dict"),
        ]
        .iter()
        .all(|file| file.is_file())
        {
            Ok(model)
        } else {
            Err(SphinxError::ModelMissing(model.dir))
        }
    }

    /// The model folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// One PocketSphinx decoder (owns its C object; used from one thread at a time).
struct Decoder {
    ps: *mut ffi::ps_decoder_t,
    in_utterance: bool,
    /// Frames decoded before the current utterance: word frames count from the first
    /// utterance, not from each one.
    frame_base: c_int,
    /// Frames decoded in utterances that ended.
    frames_done: c_int,
}

// SAFETY: a decoder is only ever used through `&mut self`, one call at a time; PocketSphinx
// decoders keep no thread-local state.
unsafe impl Send for Decoder {}

impl Decoder {
    fn new(model: &SphinxModel) -> Result<Self, SphinxError> {
        let dir = &model.dir;
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        let args = [
            "pocketsphinx".to_string(),
            "-hmm".to_string(),
            path(dir.join("en-us")),
            "-lm".to_string(),
            path(dir.join("en-us.lm.bin")),
            "-dict".to_string(),
            path(dir.join("cmudict-en-us.dict")),
            "-samprate".to_string(),
            MODEL_RATE.to_string(),
            // Our voice activity already cut the audio; decode all of it.
            "-remove_silence".to_string(),
            "no".to_string(),
            "-logfn".to_string(),
            "/dev/null".to_string(),
        ];
        let init_failed = || SphinxError::DecoderInit(dir.clone());
        let args: Vec<CString> = args
            .into_iter()
            .map(CString::new)
            .collect::<Result<_, _>>()
            .map_err(|_| init_failed())?;
        let mut argv: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr().cast_mut()).collect();
        // SAFETY: argv points at NUL-terminated strings that outlive the call; cmd_ln_parse_r
        // copies what it keeps. ps_init takes its own reference to the configuration.
        unsafe {
            let config = ffi::cmd_ln_parse_r(
                std::ptr::null_mut(),
                ffi::ps_args(),
                argv.len() as i32,
                argv.as_mut_ptr(),
                1,
            );
            if config.is_null() {
                return Err(init_failed());
            }
            let ps = ffi::ps_init(config);
            ffi::cmd_ln_free_r(config);
            if ps.is_null() {
                return Err(init_failed());
            }
            Ok(Self {
                ps,
                in_utterance: false,
                frame_base: 0,
                frames_done: 0,
            })
        }
    }

    fn start(&mut self) {
        if !self.in_utterance {
            // SAFETY: self.ps is a live decoder.
            unsafe { ffi::ps_start_utt(self.ps) };
            self.in_utterance = true;
            self.frame_base = self.frames_done;
        }
    }

    fn process(&mut self, samples: &[i16]) {
        if self.in_utterance && !samples.is_empty() {
            // SAFETY: the slice is valid for samples.len() samples during the call.
            unsafe { ffi::ps_process_raw(self.ps, samples.as_ptr(), samples.len(), 0, 0) };
        }
    }

    fn end(&mut self) {
        if self.in_utterance {
            // SAFETY: self.ps is a live decoder in an utterance.
            // SAFETY: as above.
            unsafe {
                ffi::ps_end_utt(self.ps);
                self.frames_done += ffi::ps_get_n_frames(self.ps);
            }
            self.in_utterance = false;
        }
    }

    /// The current best hypothesis as words with their frames `[start, end]` from the start of
    /// the utterance, without
    /// silences, fillers and noise; alternative pronunciations (`word(2)`) named as the word.
    fn words(&mut self) -> Vec<(String, i32, i32)> {
        let mut words = Vec::new();
        // SAFETY: the iterator belongs to the decoder until freed or exhausted; each word
        // pointer is valid until the iterator moves on, and is copied before that.
        unsafe {
            let mut seg = ffi::ps_seg_iter(self.ps);
            while !seg.is_null() {
                let word = ffi::ps_seg_word(seg);
                if !word.is_null() {
                    let word = CStr::from_ptr(word).to_string_lossy();
                    if let Some(word) = spoken_word(&word) {
                        let (mut start, mut end): (c_int, c_int) = (0, 0);
                        ffi::ps_seg_frames(seg, &mut start, &mut end);
                        words.push((word, start - self.frame_base, end - self.frame_base));
                    }
                }
                seg = ffi::ps_seg_next(seg);
            }
        }
        words
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: self.ps came from ps_init and is freed once.
        unsafe { ffi::ps_free(self.ps) };
    }
}

/// A decoder's word as said, or `None` for silence, fillers and noise markers.
fn spoken_word(word: &str) -> Option<String> {
    if word.starts_with('<') || word.starts_with('[') || word.starts_with("++") {
        return None;
    }
    let word = match word.find('(') {
        Some(alternative) => &word[..alternative],
        None => word,
    };
    (!word.is_empty()).then(|| word.to_string())
}

/// One channel: voice activity, the audio kept for pre-roll, the resampler and the decoder.
struct Lane {
    channel: usize,
    voice: VoiceActivity,
    preroll: VecDeque<i16>,
    preroll_max: usize,
    /// Samples of this channel seen so far.
    seen: u64,
    /// Sample at which the current utterance's audio starts.
    utterance_start: u64,
    /// A partial went out for the current utterance (so its final must follow).
    partial_sent: bool,
    resampler: FftFixedIn<f32>,
    pending: Vec<f32>,
    decoder: Decoder,
}

impl Lane {
    /// Resamples `samples` and gives them to the decoder.
    fn decode(&mut self, samples: &[i16]) {
        self.pending
            .extend(samples.iter().map(|s| f32::from(*s) / 32768.0));
        let need = self.resampler.input_frames_next();
        let mut used = 0;
        let mut out = Vec::new();
        while self.pending.len() - used >= need {
            if let Ok(wave) = self
                .resampler
                .process(&[&self.pending[used..used + need]], None)
            {
                out.extend(
                    wave[0]
                        .iter()
                        .map(|s| (s * 32768.0).clamp(-32768.0, 32767.0) as i16),
                );
            }
            used += need;
        }
        self.pending.drain(..used);
        self.decoder.process(&out);
    }
}

/// PocketSphinx behind the local Transcribe's [`Recognizer`] trait.
pub struct SphinxRecognizer {
    sample_rate: u32,
    splitter: FrameSplitter,
    lanes: Vec<Lane>,
}

impl SphinxRecognizer {
    /// A recognizer for `channels` of `sample_rate` Hz audio (one decoder per channel; each
    /// loads the model, about 0.2 s and 50 MB).
    pub fn new(
        model: &SphinxModel,
        sample_rate: u32,
        channels: usize,
    ) -> Result<Self, SphinxError> {
        let channels = channels.max(1);
        let frame = (sample_rate as usize / 100).max(1);
        let mut lanes = Vec::with_capacity(channels);
        for channel in 0..channels {
            let resampler = FftFixedIn::<f32>::new(sample_rate as usize, MODEL_RATE, frame, 1, 1)
                .map_err(|e| SphinxError::Resample {
                rate: sample_rate,
                problem: e.to_string(),
            })?;
            lanes.push(Lane {
                channel,
                voice: VoiceActivity::new(300.0, 600, 300),
                preroll: VecDeque::new(),
                preroll_max: sample_rate as usize * PREROLL_MS / 1000,
                seen: 0,
                utterance_start: 0,
                partial_sent: false,
                resampler,
                pending: Vec::new(),
                decoder: Decoder::new(model)?,
            });
        }
        Ok(Self {
            sample_rate,
            splitter: FrameSplitter::new(sample_rate, channels),
            lanes,
        })
    }

    /// The segment of `lane`'s current utterance from the decoder's words; `None` when it
    /// heard no words.
    fn segment(
        sample_rate: u32,
        lane: &mut Lane,
        region: VoiceRegion,
        is_partial: bool,
    ) -> Option<Segment> {
        let origin = lane.utterance_start as f64 / f64::from(sample_rate);
        let words: Vec<Word> = lane
            .decoder
            .words()
            .into_iter()
            .map(|(text, start, end)| Word {
                start_s: origin + f64::from(start) / DECODER_FRAMES_PER_SECOND,
                end_s: origin + f64::from(end + 1) / DECODER_FRAMES_PER_SECOND,
                text,
            })
            .collect();
        let frame_s = 0.01;
        let region_start = region.start_frame as f64 * frame_s;
        let region_end = region.end_frame as f64 * frame_s;
        // Nothing heard: no segment, unless a partial went out, which its final must close.
        let must_close = lane.partial_sent && !is_partial;
        if words.is_empty() && !must_close {
            return None;
        }
        Some(Segment {
            channel: lane.channel,
            result_id: format!("ch{}-{}", lane.channel, region.index),
            start_s: words.first().map_or(region_start, |w| w.start_s),
            end_s: words.last().map_or(region_end, |w| w.end_s),
            text: words
                .iter()
                .map(|w| w.text.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            is_partial,
            words,
        })
    }

    fn step(&mut self, channel: usize, samples: &[i16], out: &mut Vec<Segment>) {
        let rate = self.sample_rate;
        let lane = &mut self.lanes[channel];
        let step = lane.voice.frame(mean_abs(samples));
        match step {
            VoiceStep::Began => {
                lane.utterance_start = lane.seen - lane.preroll.len() as u64;
                lane.partial_sent = false;
                lane.resampler.reset();
                lane.pending.clear();
                lane.decoder.start();
                let preroll: Vec<i16> = lane.preroll.drain(..).collect();
                lane.decode(&preroll);
                lane.decode(samples);
            }
            VoiceStep::PartialDue(region) => {
                lane.decode(samples);
                if let Some(segment) = Self::segment(rate, lane, region, true) {
                    lane.partial_sent = true;
                    out.push(segment);
                }
            }
            VoiceStep::Ended(region) => {
                lane.decode(samples);
                lane.decoder.end();
                out.extend(Self::segment(rate, lane, region, false));
            }
            VoiceStep::Nothing if lane.voice.in_voice() => lane.decode(samples),
            VoiceStep::Nothing => {}
        }
        lane.seen += samples.len() as u64;
        if !lane.voice.in_voice() {
            lane.preroll.extend(samples.iter().copied());
            let excess = lane.preroll.len().saturating_sub(lane.preroll_max);
            lane.preroll.drain(..excess);
        }
    }
}

impl Recognizer for SphinxRecognizer {
    fn accept(&mut self, pcm: &[u8]) -> Vec<Segment> {
        // The splitter is set aside while its frames go to the decoders, which `step` borrows
        // mutably: no frame is copied.
        let placeholder = FrameSplitter::new(self.sample_rate, 0);
        let mut splitter = std::mem::replace(&mut self.splitter, placeholder);
        let mut out = Vec::new();
        splitter.push(pcm, |channel, samples| {
            self.step(channel, samples, &mut out)
        });
        self.splitter = splitter;
        out
    }

    fn finish(&mut self) -> Vec<Segment> {
        let rate = self.sample_rate;
        let mut out = Vec::new();
        for lane in &mut self.lanes {
            if let Some(region) = lane.voice.finish() {
                lane.decoder.end();
                out.extend(Self::segment(rate, lane, region, false));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_words_are_spoken_words_only() {
        assert_eq!(spoken_word("<s>"), None);
        assert_eq!(spoken_word("<sil>"), None);
        assert_eq!(spoken_word("[NOISE]"), None);
        assert_eq!(spoken_word("++BREATH++"), None);
        assert_eq!(spoken_word("hello(2)").as_deref(), Some("hello"));
        assert_eq!(spoken_word("o'clock").as_deref(), Some("o'clock"));
    }

    #[test]
    fn a_missing_model_is_named_with_the_package_that_installs_it() {
        let error = SphinxModel::at(PathBuf::from("/nonexistent/model")).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("/nonexistent/model"), "{text}");
        assert!(
            text.contains("apt-get install -y pocketsphinx-en-us"),
            "{text}"
        );
    }

    #[test]
    fn silence_gives_no_segments() {
        let model = SphinxModel::locate().expect("pocketsphinx-en-us installed");
        let mut recognizer = SphinxRecognizer::new(&model, 8000, 2).unwrap();
        let mut segments = recognizer.accept(&vec![0u8; 8000 * 4 * 2]);
        segments.extend(recognizer.finish());
        assert!(segments.is_empty(), "{segments:?}");
    }
}
