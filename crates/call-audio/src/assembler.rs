//! [`StereoAssembler`]: caller and agent blocks placed by timestamp into stereo chunks.

use std::collections::BTreeMap;

/// Bytes of one mono s16le sample.
const SAMPLE_BYTES: usize = 2;
/// Bytes of one interleaved stereo s16le frame.
const FRAME_BYTES: usize = 4;

/// Stereo channel of a track: caller left (0), agent right (1), as LCA expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Channel 0: `AUDIO_FROM_CUSTOMER`.
    Caller = 0,
    /// Channel 1: `AUDIO_TO_CUSTOMER`.
    Agent = 1,
}

/// How the assembler places and releases audio.
#[derive(Debug, Clone)]
pub struct AssemblerConfig {
    /// Sample rate of both tracks and of the output.
    pub sample_rate: u32,
    /// Samples per channel in each chunk (default 800 = 100 ms at 8 kHz).
    pub chunk_samples: usize,
    /// How far one channel may run ahead of the other before the lagging one is taken as
    /// silence for the oldest chunk (default 1 s, one Connect fragment).
    pub jitter_samples: u64,
    /// A block starting within this many samples of where its track left off continues it
    /// exactly, absorbing timestamp rounding (default 8 samples = 1 ms).
    pub snap_samples: u64,
    /// A forward jump larger than this is an error rather than hours of silence (default 10 min).
    pub max_gap_samples: u64,
    /// Timestamp (ns) of output sample 0; `None` takes the first block's timestamp. Set it when
    /// a call continues in a new process so offsets stay relative to the call's start.
    pub origin_ns: Option<i64>,
    /// Samples already emitted before this assembler started (continuing a call): output
    /// resumes at this offset and earlier audio is dropped as already delivered.
    pub start_sample: u64,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        Self {
            sample_rate: crate::CONNECT_SAMPLE_RATE,
            chunk_samples: 800,
            jitter_samples: 8000,
            snap_samples: 8,
            max_gap_samples: 10 * 60 * 8000,
            origin_ns: None,
            start_sample: 0,
        }
    }
}

/// A block that cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    /// The block starts further after the audio so far than `max_gap_samples` allows.
    #[error(
        "{channel:?} audio jumps from sample {from} to {to} ({} s of silence, above the {} s limit)",
        (to - from) / u64::from(*rate), max / u64::from(*rate)
    )]
    TimestampJump {
        /// Track of the block.
        channel: Channel,
        /// Where audio so far ends (samples since the origin).
        from: u64,
        /// Where the block starts.
        to: u64,
        /// The configured limit.
        max: u64,
        /// Sample rate, for the message.
        rate: u32,
    },
}

/// Counters of what the assembler did beyond placing audio.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Samples dropped because their time had already been emitted.
    pub late_samples: u64,
    /// Samples dropped because their track already had audio for that time (repeats).
    pub duplicate_samples: u64,
    /// Samples of silence emitted per channel where a track had no audio.
    pub silence_samples: [u64; 2],
    /// Trailing odd bytes dropped from blocks (not whole samples).
    pub odd_bytes: u64,
}

/// Interleaved stereo s16le audio: `pcm` holds `samples` frames of (caller, agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StereoChunk {
    /// Offset of the first frame, in samples since the origin.
    pub start_sample: u64,
    /// Number of stereo frames.
    pub samples: usize,
    /// Interleaved little-endian 16-bit PCM, 4 bytes per frame.
    pub pcm: Vec<u8>,
}

/// Contiguous unemitted s16le audio. Emission consumes from the front by moving `head`, and
/// the buffer is compacted once half of it is consumed, so a run that is appended to and
/// emitted from for a whole call neither copies per chunk nor grows.
#[derive(Debug, Default)]
struct Run {
    data: Vec<u8>,
    head: usize,
}

impl Run {
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
    }

    fn advance(&mut self, bytes: usize) {
        self.head += bytes;
        if self.head * 2 >= self.data.len() {
            self.data.drain(..self.head);
            self.head = 0;
        }
    }
}

impl std::ops::Deref for Run {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.data[self.head..]
    }
}

#[derive(Debug, Default)]
struct Track {
    /// Unemitted audio: start sample → contiguous s16le bytes. Runs never overlap or touch.
    runs: BTreeMap<u64, Run>,
    /// The track is known (audio or declared silence) up to this sample.
    known_until: u64,
    /// End of the latest audio ever placed on the track (emitted or not).
    audio_end: u64,
}

impl Track {
    fn end_of(start: u64, run: &[u8]) -> u64 {
        start + (run.len() / SAMPLE_BYTES) as u64
    }

    /// End of the run that starts at or before `sample`, if any.
    fn end_before(&self, sample: u64) -> Option<u64> {
        self.runs
            .range(..=sample)
            .next_back()
            .map(|(start, run)| Self::end_of(*start, run))
    }

    /// Inserts `pcm` at `start`, keeping only the parts no run covers; returns samples dropped.
    fn insert(&mut self, start: u64, pcm: &[u8]) -> u64 {
        let end = start + (pcm.len() / SAMPLE_BYTES) as u64;
        // Fast path: continues the last run exactly.
        if let Some((last_start, last)) = self.runs.iter_mut().next_back()
            && Self::end_of(*last_start, last) == start
        {
            last.extend_from_slice(pcm);
            self.known_until = self.known_until.max(end);
            self.audio_end = self.audio_end.max(end);
            return 0;
        }
        let mut cursor = start;
        let mut pieces = Vec::new();
        let covering: Vec<(u64, u64)> = self
            .runs
            .range(..end)
            .map(|(s, run)| (*s, Self::end_of(*s, run)))
            .filter(|(_, e)| *e > start)
            .collect();
        for (run_start, run_end) in covering {
            if run_start > cursor {
                pieces.push((cursor, run_start));
            }
            cursor = cursor.max(run_end);
        }
        if cursor < end {
            pieces.push((cursor, end));
        }
        let kept: u64 = pieces.iter().map(|(s, e)| e - s).sum();
        for (piece_start, piece_end) in pieces {
            let from = (piece_start - start) as usize * SAMPLE_BYTES;
            let to = (piece_end - start) as usize * SAMPLE_BYTES;
            self.insert_uncovered(piece_start, &pcm[from..to]);
        }
        self.known_until = self.known_until.max(end);
        self.audio_end = self.audio_end.max(end);
        (end - start) - kept
    }

    /// Inserts audio into a free interval, merging with runs it touches.
    fn insert_uncovered(&mut self, start: u64, pcm: &[u8]) {
        let end = start + (pcm.len() / SAMPLE_BYTES) as u64;
        let mut data = match self.runs.range_mut(..start).next_back() {
            Some((prev_start, prev)) if Self::end_of(*prev_start, prev) == start => {
                prev.extend_from_slice(pcm);
                None
            }
            _ => Some((
                start,
                Run {
                    data: pcm.to_vec(),
                    head: 0,
                },
            )),
        };
        let merged_into_prev = data.is_none();
        if let Some(next) = self.runs.remove(&end) {
            match &mut data {
                Some((_, own)) => own.extend_from_slice(&next),
                None => {
                    if let Some((_, prev)) = self.runs.range_mut(..start).next_back() {
                        prev.extend_from_slice(&next);
                    }
                }
            }
        }
        if !merged_into_prev && let Some((s, own)) = data {
            self.runs.insert(s, own);
        }
    }

    /// The track's audio for `[from, from + n)` when one run holds all of it.
    fn window(&self, from: u64, n: usize) -> Option<&[u8]> {
        let (&start, run) = self.runs.first_key_value()?;
        let skip = usize::try_from(from.checked_sub(start)?).ok()? * SAMPLE_BYTES;
        run.get(skip..skip + n * SAMPLE_BYTES)
    }

    /// Copies the track's audio for `[from, from + n)` into channel `channel` of `out`
    /// (interleaved, already zeroed), removes it, and returns how many samples it covered.
    fn take(&mut self, from: u64, n: usize, channel: usize, out: &mut [u8]) -> u64 {
        let to = from + n as u64;
        let mut covered = 0;
        for (&start, run) in self.runs.range(..to) {
            let copy_from = start.max(from);
            let copy_to = Self::end_of(start, run).min(to);
            if copy_to <= copy_from {
                continue;
            }
            let src = &run[(copy_from - start) as usize * SAMPLE_BYTES
                ..(copy_to - start) as usize * SAMPLE_BYTES];
            let dst_start = (copy_from - from) as usize * FRAME_BYTES;
            let dst = &mut out[dst_start..dst_start + src.len() * 2];
            if channel == 0 {
                copy_lane::<0>(dst, src);
            } else {
                copy_lane::<SAMPLE_BYTES>(dst, src);
            }
            covered += copy_to - copy_from;
        }
        self.discard_before(to);
        covered
    }

    /// Removes all audio before sample `to`.
    fn discard_before(&mut self, to: u64) {
        while let Some((&start, _)) = self.runs.range(..to).next() {
            let mut run = self.runs.remove(&start).expect("key just seen");
            if Self::end_of(start, &run) > to {
                run.advance((to - start) as usize * SAMPLE_BYTES);
                self.runs.insert(to, run);
                break;
            }
        }
    }
}

/// Interleaves two equally long mono s16le buffers into stereo frames.
fn interleave(left: &[u8], right: &[u8]) -> Vec<u8> {
    let mut frames = vec![0u8; left.len() * 2];
    for ((frame, l), r) in frames
        .chunks_exact_mut(FRAME_BYTES)
        .zip(left.chunks_exact(SAMPLE_BYTES))
        .zip(right.chunks_exact(SAMPLE_BYTES))
    {
        frame[..SAMPLE_BYTES].copy_from_slice(l);
        frame[SAMPLE_BYTES..].copy_from_slice(r);
    }
    frames
}

/// Copies mono samples into one lane (byte offset `LANE`) of interleaved stereo frames.
fn copy_lane<const LANE: usize>(frames: &mut [u8], samples: &[u8]) {
    for (frame, sample) in frames
        .chunks_exact_mut(FRAME_BYTES)
        .zip(samples.chunks_exact(SAMPLE_BYTES))
    {
        frame[LANE..LANE + SAMPLE_BYTES].copy_from_slice(sample);
    }
}

/// Builds stereo (caller = channel 0, agent = channel 1) from two mono s16le tracks whose
/// blocks carry absolute timestamps. Samples are placed by timestamp, gaps become silence,
/// audio for a time already emitted or already held is dropped (never repeated), and chunks
/// are released as soon as both tracks are known up to their end, or when one track lags
/// more than the jitter window. Integer sample arithmetic: no drift over hours.
#[derive(Debug)]
pub struct StereoAssembler {
    config: AssemblerConfig,
    origin_ns: Option<i64>,
    emitted: u64,
    tracks: [Track; 2],
    finished: bool,
    stats: AssemblerStats,
}

impl StereoAssembler {
    /// An assembler with the given configuration.
    pub fn new(config: AssemblerConfig) -> Self {
        let emitted = config.start_sample;
        Self {
            origin_ns: config.origin_ns,
            emitted,
            tracks: [
                Track {
                    known_until: emitted,
                    audio_end: emitted,
                    ..Track::default()
                },
                Track {
                    known_until: emitted,
                    audio_end: emitted,
                    ..Track::default()
                },
            ],
            finished: false,
            stats: AssemblerStats::default(),
            config,
        }
    }

    /// Timestamp (ns) of output sample 0, once known.
    pub fn origin_ns(&self) -> Option<i64> {
        self.origin_ns
    }

    /// Samples per channel emitted so far (the offset of the next chunk).
    pub fn emitted_samples(&self) -> u64 {
        self.emitted
    }

    /// The sample up to which either track has audio (released or not): where the reading
    /// of the call is.
    pub fn known_samples(&self) -> u64 {
        self.tracks[0].known_until.max(self.tracks[1].known_until)
    }

    /// What the assembler dropped or filled so far.
    pub fn stats(&self) -> &AssemblerStats {
        &self.stats
    }

    /// Converts an absolute timestamp to a sample offset from the origin (rounded to nearest).
    pub fn sample_at(&self, timestamp_ns: i64) -> Option<i128> {
        let origin = self.origin_ns?;
        let delta = i128::from(timestamp_ns) - i128::from(origin);
        Some((delta * i128::from(self.config.sample_rate) + 500_000_000).div_euclid(1_000_000_000))
    }

    /// Adds a block of mono s16le PCM for `channel` starting at `timestamp_ns`.
    pub fn push(
        &mut self,
        channel: Channel,
        timestamp_ns: i64,
        pcm: &[u8],
    ) -> Result<(), AssembleError> {
        let odd = pcm.len() % SAMPLE_BYTES;
        self.stats.odd_bytes += odd as u64;
        let pcm = &pcm[..pcm.len() - odd];
        if pcm.is_empty() {
            return Ok(());
        }
        if self.origin_ns.is_none() {
            self.origin_ns = Some(timestamp_ns);
        }
        let mut start = self.sample_at(timestamp_ns).expect("origin set above");
        let track = &self.tracks[channel as usize];
        // Continue the preceding audio exactly when the timestamp is within rounding distance.
        let snap = i128::from(self.config.snap_samples);
        let probe = (start + snap).clamp(0, i128::from(u64::MAX)) as u64;
        let nearest = [Some(track.audio_end), track.end_before(probe)]
            .into_iter()
            .flatten()
            .map(i128::from)
            .min_by_key(|end| (start - end).abs());
        if let Some(end) = nearest
            && (start - end).abs() <= snap
        {
            start = end;
        }
        let furthest = self.tracks[0]
            .known_until
            .max(self.tracks[1].known_until)
            .max(self.emitted);
        if start > i128::from(furthest) + i128::from(self.config.max_gap_samples) {
            return Err(AssembleError::TimestampJump {
                channel,
                from: furthest,
                to: u64::try_from(start).unwrap_or(u64::MAX),
                max: self.config.max_gap_samples,
                rate: self.config.sample_rate,
            });
        }
        // Drop what lies before the emitted position.
        let samples = (pcm.len() / SAMPLE_BYTES) as i128;
        let late = (i128::from(self.emitted) - start).clamp(0, samples);
        self.stats.late_samples += late as u64;
        if late == samples {
            return Ok(());
        }
        let start = (start + late) as u64;
        let pcm = &pcm[late as usize * SAMPLE_BYTES..];
        self.stats.duplicate_samples += self.tracks[channel as usize].insert(start, pcm);
        Ok(())
    }

    /// Declares both tracks complete up to the latest audio either has (call at a fragment
    /// boundary: whatever a track lacks up to there is silence), releasing those chunks now.
    pub fn sync(&mut self) {
        let latest = self.tracks[0].known_until.max(self.tracks[1].known_until);
        for track in &mut self.tracks {
            track.known_until = latest;
        }
    }

    /// Declares the input complete: the remaining audio is released, the last chunk short.
    pub fn finish(&mut self) {
        self.sync();
        self.finished = true;
    }

    /// The next chunk that is ready, if any.
    pub fn pop_chunk(&mut self) -> Option<StereoChunk> {
        let chunk = self.config.chunk_samples.max(1) as u64;
        let lagging = self.tracks[0].known_until.min(self.tracks[1].known_until);
        let leading = self.tracks[0].known_until.max(self.tracks[1].known_until);
        let end = self.emitted + chunk;
        let samples = if lagging >= end || leading >= end + self.config.jitter_samples {
            chunk
        } else if self.finished && leading > self.emitted {
            leading - self.emitted
        } else {
            return None;
        };
        let n = samples as usize;
        let pcm = match (
            self.tracks[0].window(self.emitted, n),
            self.tracks[1].window(self.emitted, n),
        ) {
            // The common case: both tracks hold the whole chunk contiguously.
            (Some(caller), Some(agent)) => {
                let pcm = interleave(caller, agent);
                for track in &mut self.tracks {
                    track.discard_before(self.emitted + samples);
                }
                pcm
            }
            _ => {
                let mut pcm = vec![0u8; n * FRAME_BYTES];
                for (index, track) in self.tracks.iter_mut().enumerate() {
                    let covered = track.take(self.emitted, n, index, &mut pcm);
                    self.stats.silence_samples[index] += samples - covered;
                }
                pcm
            }
        };
        for track in &mut self.tracks {
            track.known_until = track.known_until.max(self.emitted + samples);
        }
        let start_sample = self.emitted;
        self.emitted += samples;
        Some(StereoChunk {
            start_sample,
            samples: n,
            pcm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(values: impl IntoIterator<Item = i16>) -> Vec<u8> {
        values.into_iter().flat_map(i16::to_le_bytes).collect()
    }

    fn drain(assembler: &mut StereoAssembler) -> Vec<(i16, i16)> {
        let mut out = Vec::new();
        let first = assembler.emitted_samples() as usize;
        while let Some(chunk) = assembler.pop_chunk() {
            assert_eq!(
                chunk.start_sample as usize,
                first + out.len(),
                "chunks are contiguous"
            );
            for frame in chunk.pcm.chunks_exact(4) {
                out.push((
                    i16::from_le_bytes([frame[0], frame[1]]),
                    i16::from_le_bytes([frame[2], frame[3]]),
                ));
            }
        }
        out
    }

    fn config(chunk: usize) -> AssemblerConfig {
        AssemblerConfig {
            chunk_samples: chunk,
            jitter_samples: 100,
            snap_samples: 0,
            ..AssemblerConfig::default()
        }
    }

    const MS: i64 = 1_000_000;

    #[test]
    fn both_channels_interleave_by_timestamp_not_arrival() {
        let mut a = StereoAssembler::new(config(4));
        // Agent block for t=1 ms (8 samples later) arrives first; caller at t=0.
        a.push(Channel::Caller, 0, &pcm(1..=16)).unwrap();
        a.push(Channel::Agent, MS, &pcm(101..=108)).unwrap();
        a.finish();
        let out = drain(&mut a);
        assert_eq!(out.len(), 16);
        assert_eq!(out[0], (1, 0));
        assert_eq!(out[7], (8, 0));
        assert_eq!(out[8], (9, 101));
        assert_eq!(out[15], (16, 108));
    }

    #[test]
    fn chunks_wait_for_the_lagging_channel_until_the_jitter_window() {
        let mut a = StereoAssembler::new(config(10));
        a.push(Channel::Caller, 0, &pcm(vec![1; 50])).unwrap();
        assert_eq!(a.pop_chunk(), None, "agent unknown yet");
        a.push(Channel::Agent, 0, &pcm(vec![2; 20])).unwrap();
        assert_eq!(drain(&mut a).len(), 20, "both known up to 20");
        // Caller runs 100+ samples ahead: the agent is taken as silent for the oldest chunks.
        a.push(Channel::Caller, 50 * MS / 8, &pcm(vec![1; 100]))
            .unwrap();
        let out = drain(&mut a);
        assert_eq!(
            out.len(),
            30,
            "released while the caller leads by 100+ samples"
        );
        assert!(out.iter().all(|f| *f == (1, 0)));
        // Agent audio for 20..60 now arrives: 20..50 is already out and is dropped, never
        // repeated; 50..60 is still in time.
        a.push(Channel::Agent, 20 * MS / 8, &pcm(vec![2; 40]))
            .unwrap();
        assert_eq!(a.stats().late_samples, 30);
        a.finish();
        let rest = drain(&mut a);
        assert_eq!(rest.len(), 100);
        assert!(rest[..10].iter().all(|f| *f == (1, 2)));
        assert!(rest[10..].iter().all(|f| *f == (1, 0)));
    }

    #[test]
    fn repeated_audio_is_written_once_and_gaps_are_silence() {
        let mut a = StereoAssembler::new(config(8));
        a.push(Channel::Caller, 0, &pcm(1..=8)).unwrap();
        a.push(Channel::Caller, 0, &pcm(1..=8)).unwrap(); // repeat
        a.push(Channel::Caller, 2 * MS, &pcm(17..=24)).unwrap(); // gap of 8 samples
        a.push(Channel::Caller, MS / 2, &pcm(5..=12)).unwrap(); // half overlaps, half fills gap
        a.push(Channel::Agent, 0, &pcm(vec![7; 24])).unwrap();
        a.finish();
        let out = drain(&mut a);
        let caller: Vec<i16> = out.iter().map(|f| f.0).collect();
        let mut expected: Vec<i16> = (1..=12).collect();
        expected.extend([0, 0, 0, 0]);
        expected.extend(17..=24);
        assert_eq!(caller, expected);
        assert_eq!(a.stats().duplicate_samples, 12);
    }

    #[test]
    fn snapping_absorbs_timestamp_rounding() {
        let mut a = StereoAssembler::new(AssemblerConfig {
            chunk_samples: 4,
            ..AssemblerConfig::default()
        });
        a.push(Channel::Caller, 0, &pcm(1..=10)).unwrap();
        // 10 samples = 1.25 ms; a 1 ms timestamp grid says 1 ms (2 samples early).
        a.push(Channel::Caller, MS, &pcm(11..=20)).unwrap();
        a.push(Channel::Caller, 3 * MS, &pcm(21..=30)).unwrap(); // 2.5 ms true: 4 samples late
        a.finish();
        let caller: Vec<i16> = drain(&mut a).iter().map(|f| f.0).collect();
        assert_eq!(caller, (1..=30).collect::<Vec<_>>());
        assert_eq!(a.stats().duplicate_samples, 0);
    }

    #[test]
    fn a_huge_forward_jump_is_an_error_not_endless_silence() {
        let mut a = StereoAssembler::new(AssemblerConfig::default());
        a.push(Channel::Caller, 0, &pcm(1..=10)).unwrap();
        let error = a
            .push(Channel::Agent, 3600 * 1000 * MS, &pcm(1..=10))
            .unwrap_err();
        assert!(
            error.to_string().contains("above the 600 s limit"),
            "{error}"
        );
    }

    #[test]
    fn continuing_a_call_keeps_offsets_and_drops_delivered_audio() {
        let mut a = StereoAssembler::new(AssemblerConfig {
            chunk_samples: 4,
            origin_ns: Some(0),
            start_sample: 8,
            snap_samples: 0,
            ..AssemblerConfig::default()
        });
        a.push(Channel::Caller, 0, &pcm(1..=16)).unwrap();
        a.push(Channel::Agent, 0, &pcm(1..=16)).unwrap();
        a.finish();
        let first = a.pop_chunk().unwrap();
        assert_eq!(first.start_sample, 8);
        assert_eq!(&first.pcm[..4], &[9, 0, 9, 0]);
        assert_eq!(a.stats().late_samples, 16);
    }

    #[test]
    fn odd_bytes_are_dropped_not_misaligned() {
        let mut a = StereoAssembler::new(config(2));
        a.push(Channel::Caller, 0, &[1, 0, 2]).unwrap();
        a.push(Channel::Agent, 0, &[3, 0]).unwrap();
        a.finish();
        assert_eq!(drain(&mut a), vec![(1, 3)]);
        assert_eq!(a.stats().odd_bytes, 1);
    }
}
