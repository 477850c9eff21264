//! Where payloads are written. Each sink sits behind [`Sink`], so the pipeline
//! neither knows nor cares which stores are configured.

mod s3;

use async_trait::async_trait;
use bytes::Bytes;

use crate::outcome::{Classify, FailureClass, Retry};
use crate::payload::{ArchiveName, PayloadSummary};

pub use s3::{S3Compression, S3Settings, S3Sink};

/// One fetched payload on its way to the sinks.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The object name derived from the queue message.
    pub name: ArchiveName,
    /// When Terra sent the message, in ms since the epoch.
    pub sent_at_ms: u64,
    /// The payload exactly as fetched (after transfer decoding).
    pub payload: Bytes,
    pub summary: PayloadSummary,
}

#[async_trait]
pub trait Sink: Send + Sync {
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Writes the delivery durably. Writing the same delivery twice must leave
    /// the store as writing it once.
    async fn write(&self, delivery: &Delivery) -> Result<(), SinkError>;
}

/// A failed write. Sink failures are transient: the record itself is fine, and
/// the store (or its permissions) needs to recover.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{sink} write failed: {message}")]
pub struct SinkError {
    pub sink: &'static str,
    pub message: String,
}

impl Classify for SinkError {
    fn class(&self) -> FailureClass {
        FailureClass::Sink
    }
    fn retry(&self) -> Retry {
        Retry::Transient
    }
}
