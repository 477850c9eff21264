//! terra-sink's operator tool: commands run from a workstation against a
//! deployment, with ordinary AWS credentials and the handlers' variables.
//! Its own crate, so the Lambda functions link none of what it needs (an
//! argument parser, a progress bar).
//!
//! [`replay`] projects the archive into the table again, and completes the
//! SQS dead-letter queue's messages from it; [`smoke`] checks a deployed
//! stack end to end; [`cli`] is the command line.

pub mod cli;
pub mod replay;
pub mod smoke;
