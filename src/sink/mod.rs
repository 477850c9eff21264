//! Where payloads are written. The S3 archive sits behind [`Archive`] (it can
//! also give a payload back), every other store behind [`Sink`], so the
//! pipeline neither knows nor cares which stores are configured. What only
//! S3 can do, multipart uploads and copies inside S3, are capabilities an
//! archive may offer ([`StreamedUploads`], [`ServerSideCopy`]): a fake
//! implements the three calls every archive answers, and those a test needs.

mod archive_name;
mod dynamodb;
mod s3;

use std::io::Write;

use async_trait::async_trait;
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;

use crate::fetch::own_bucket::SourceVersion;
use crate::outcome::{Classify, FailureClass, Retry};
use crate::payload::PayloadSummary;

pub use archive_name::{ArchiveName, KeyPrefix, KeyPrefixError};
pub use dynamodb::{
    DEFAULT_MAX_ITEMS, DynamoDbSink, from_attribute, item_keys, to_attribute, user_partition_key,
};
pub(crate) use s3::inflate;
pub use s3::{ArchiveRead, ArchivedAbout, ArchivedPayload, S3Archive, S3Compression, S3Settings};

/// One fetched payload on its way to the stores.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The object name derived from the queue message.
    pub name: ArchiveName,
    /// When Terra sent the message, in ms since the epoch.
    pub sent_at_ms: u64,
    /// The payload exactly as fetched (after transfer decoding).
    pub payload: Bytes,
    pub summary: PayloadSummary,
    /// Where the archive holds this payload, once it does.
    pub archived: Option<ArchivedObject>,
}

/// The location of an archived payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedObject {
    pub bucket: String,
    pub key: String,
}

/// What the archive holds under a delivery's name once `store` is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveWrite {
    /// This send's payload, written now.
    Written(ArchivedObject),
    /// This send's payload, written by an earlier delivery of the message.
    AlreadyHeld(ArchivedObject),
    /// A later send under the same name (a late redelivery of an older
    /// send): kept, and this payload is not archived.
    NewerHeld(ArchivedObject),
}

impl ArchiveWrite {
    /// Where this send's payload is archived, if it is.
    pub fn this_send(self) -> Option<ArchivedObject> {
        match self {
            ArchiveWrite::Written(object) | ArchiveWrite::AlreadyHeld(object) => Some(object),
            ArchiveWrite::NewerHeld(_) => None,
        }
    }
}

/// What a sink did with a delivery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkReport {
    pub items_written: usize,
    /// Items not written because a newer version is already stored.
    pub items_stale: usize,
}

/// This send's payload, read back from the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchivedCopy {
    Payload(Bytes, ArchivedObject),
    /// Larger than the reader may hold (an own-bucket payload copied in
    /// past the limit, or a limit lowered since): not read.
    TooLarge(ArchivedObject),
}

/// The raw archive: written first, and read back when a retried message's URL
/// has expired. Each object remembers the send it holds (`sent_at_ms`), so a
/// name reused by another send of the same payload is never mistaken for it.
#[async_trait]
pub trait Archive: Send + Sync {
    /// Stores the payload under the delivery's name unless the archive
    /// already holds this send or a later one there; storing it twice leaves
    /// one object.
    async fn store(&self, delivery: &Delivery) -> Result<ArchiveWrite, SinkError>;

    /// The payload stored under `name`, as it was fetched, if it is the one
    /// sent at `sent_at_ms`; left unread when it is larger than `max_bytes`
    /// (stored, or once inflated), as a download over the limit would be.
    async fn retrieve(
        &self,
        name: &ArchiveName,
        sent_at_ms: u64,
        max_bytes: u64,
    ) -> Result<Option<ArchivedCopy>, SinkError>;

    /// Where the archive holds the payload sent at `sent_at_ms` under `name`,
    /// if it does: `retrieve` without reading it back.
    async fn holds(
        &self,
        name: &ArchiveName,
        sent_at_ms: u64,
    ) -> Result<Option<ArchivedObject>, SinkError>;

    /// How this archive takes a payload too large to hold, piece by piece;
    /// `None` when it cannot, and such payloads are held whole.
    fn streamed_uploads(&self) -> Option<&dyn StreamedUploads> {
        None
    }

    /// How this archive copies an own-bucket object in without its bytes
    /// passing through the function; `None` when it cannot (not in S3, or
    /// it compresses what it stores), and such payloads are read and stored.
    fn server_side_copy(&self) -> Option<&dyn ServerSideCopy> {
        None
    }
}

/// An archive's uploads of payloads that arrive in pieces (S3 multipart).
pub trait StreamedUploads: Send + Sync {
    /// Starts storing a payload that arrives in pieces, too large to hold
    /// whole; nothing is visible under the name until it is finished.
    fn begin_upload(&self, name: &ArchiveName, sent_at_ms: u64) -> Box<dyn ArchiveUpload>;

    /// The most an upload holds in memory at once, besides the piece being
    /// appended.
    fn upload_holds_bytes(&self) -> u64;
}

/// An archive's copy of an object from Terra's bucket (own-bucket mode)
/// inside S3.
#[async_trait]
pub trait ServerSideCopy: Send + Sync {
    /// Stores the payload `source` holds under `name` by a copy inside S3, no
    /// bytes passing through the function, under the conditions of
    /// [`Archive::store`]. `summary` gives the metadata, as far as known.
    async fn copy_in(
        &self,
        name: &ArchiveName,
        sent_at_ms: u64,
        source: &SourceVersion,
        summary: &PayloadSummary,
    ) -> Result<ArchiveWrite, SinkError>;
}

/// A payload on its way into the archive piece by piece.
#[async_trait]
pub trait ArchiveUpload: Send {
    /// Appends the next bytes of the payload. `known_so_far` is the summary
    /// as far as the payload has been read, for the object's metadata.
    async fn append(
        &mut self,
        bytes: Bytes,
        known_so_far: &PayloadSummary,
    ) -> Result<(), SinkError>;

    /// The payload is complete and valid: stores it under the conditions of
    /// [`Archive::store`], with metadata from `summary`. On failure nothing
    /// is stored and the upload is discarded.
    async fn finish(self: Box<Self>, summary: &PayloadSummary) -> Result<ArchiveWrite, SinkError>;

    /// Discards what was uploaded.
    async fn abort(self: Box<Self>);
}

/// A store that projects payloads (DynamoDB).
#[async_trait]
pub trait Sink: Send + Sync {
    /// Writes the delivery durably. Writing the same delivery twice must leave
    /// the store as writing it once.
    async fn write(&self, delivery: &Delivery) -> Result<SinkReport, SinkError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{sink} write failed: {message}")]
pub struct SinkError {
    pub sink: &'static str,
    pub retry: Retry,
    pub message: String,
    /// The store refused the record's content (too large, over its limits):
    /// no retry and no fix of the deployment can help.
    pub record_at_fault: bool,
}

impl Classify for SinkError {
    fn class(&self) -> FailureClass {
        FailureClass::Sink
    }
    fn retry(&self) -> Retry {
        self.retry
    }
    fn record_at_fault(&self) -> bool {
        self.record_at_fault
    }
}

pub(crate) fn gzip(bytes: &[u8]) -> std::io::Result<Bytes> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 4), Compression::default());
    encoder.write_all(bytes)?;
    Ok(Bytes::from(encoder.finish()?))
}
