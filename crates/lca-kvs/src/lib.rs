//! The `lca-kvs` command-line tool's logic, as a library so tests can drive it directly.

pub mod inspect;
pub mod kinesis_tail;
pub mod sample_call;
pub mod wer;
