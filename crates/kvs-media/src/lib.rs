//! Amazon Connect media streams as Kinesis Video Streams GetMedia delivers them: a sans-IO
//! [`FragmentReader`] (bytes in, [`MediaEvent`]s out) and a [`ConnectWriter`] that produces
//! Connect-shaped fragments from PCM for tests, replay and the demo.

mod block;
mod chunks;
mod event;
mod reader;
mod writer;

pub use block::{BlockError, BlockHeader, Lacing, encode_block};
pub use chunks::{ChunkSplitter, SplitError, kvs_end_tags_offset, split_chunks};
pub use event::*;
pub use reader::{DEFAULT_MAX_ELEMENT_SIZE, FragmentReader, ReadError, ReadErrorKind};
pub use writer::{ConnectWriter, FragmentAudio, WriterOptions};
