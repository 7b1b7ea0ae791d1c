//! Amazon Connect media streams as Kinesis Video Streams GetMedia delivers them: a sans-IO
//! [`FragmentReader`] (bytes in, [`MediaEvent`]s out) and a [`ConnectWriter`] that produces
//! Connect-shaped fragments from PCM for tests, replay and the demo; and both sides of
//! PutMedia (the body a producer sends, what a server stores, the acknowledgements).

mod block;
mod chunks;
mod event;
mod put_media;
mod reader;
mod writer;

pub use block::{BlockError, BlockHeader, Lacing, encode_block};
pub use chunks::{ChunkSplitter, SplitError, kvs_end_tags_offset, split_chunks};
pub use event::*;
pub use put_media::{
    Ack, AckEventType, AckParser, ClusterTime, EncodeError, EncodedFragment, EncoderOptions,
    IngestError, IngestEvent, IngestedFragment, PUT_MEDIA_MAX_FRAGMENT_BYTES, PutMediaEncoder,
    PutMediaParser, put_media_error_meaning,
};
pub use reader::{DEFAULT_MAX_ELEMENT_SIZE, FragmentReader, ReadError, ReadErrorKind};
pub use writer::{ConnectWriter, FragmentAudio, WriterOptions};
