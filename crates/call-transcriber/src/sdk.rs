//! The AWS SDK configuration every client of the transcriber shares: time limits on each
//! request ([`with_timeouts`], written once for every function in `aws-edge`).

pub use aws_edge::with_timeouts;
