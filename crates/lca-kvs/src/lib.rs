//! The library part of the `lca-kvs` command line: reading a capture (`inspect`), the demo's
//! sample call (`sample_call`), word error rate (`wer`; the benches and the recognizer's tests
//! use it too) and the reader of a call's events on a Kinesis stream from its end
//! (`kinesis_tail`, for `demo` and `try-stack`). The commands themselves are the binary's
//! modules (`main.rs`), which the CLI tests run as a process.

pub mod inspect;
pub mod kinesis_tail;
pub mod sample_call;
pub mod wer;
