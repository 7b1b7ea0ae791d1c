//! A call's two mono tracks in, timestamp-aligned stereo out. Sans-IO: the [`StereoAssembler`]
//! takes PCM blocks with timestamps and hands back fixed-size interleaved chunks; [`WavWriter`]
//! writes them as a stereo WAV through `hound`; [`extract::CallExtractor`] takes a contact's
//! audio out of KVS media events (crate `kvs-media`) offline.

mod assembler;
pub mod extract;
mod wav;

pub use assembler::{
    AssembleError, AssemblerConfig, AssemblerStats, Channel, StereoAssembler, StereoChunk,
};
pub use wav::{WAV_HEADER_BYTES, WavWriter, wav_header, wav_spec};

/// Sample rate of Amazon Connect audio.
pub const CONNECT_SAMPLE_RATE: u32 = 8000;
