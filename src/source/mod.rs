//! Decoding the records of each trigger into source-neutral
//! [`SourceItem`](crate::record::SourceItem)s,
//! and turning outcomes back into the trigger's response.

pub mod kafka;
pub mod sqs;
