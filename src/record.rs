//! A record as the core sees it, whatever trigger it came from: the sources
//! decode into these, the batch runner and the pipeline work on them.

use bytes::Bytes;

use crate::outcome::RecordFailure;

/// One record of a batch, as the batch runner sees it.
#[derive(Debug, Clone)]
pub struct SourceItem {
    /// How the record is named in logs (SQS messageId, Kafka topic-partition@offset).
    pub log_id: String,
    /// Records sharing a group must be processed in order, and stop at the
    /// first failure (SQS FIFO `MessageGroupId`).
    pub ordering_group: Option<String>,
    /// The decoded record, or why it could not be decoded.
    pub record: Result<InboundRecord, RecordFailure>,
}

/// A record whose envelope decoded: Terra's message and when it was sent.
#[derive(Debug, Clone)]
pub struct InboundRecord {
    pub log_id: String,
    /// When Terra sent the message, ms since the epoch. The URL lifetime and the
    /// archive date count from here.
    pub sent_at_ms: u64,
    /// Terra's pointer message, still undecoded.
    pub body: Bytes,
}
