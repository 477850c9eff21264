//! Payloads too large to hold go to the archive as they download. A body is
//! held until it passes [`STREAM_ABOVE_BYTES`]; from there it is validated
//! piece by piece and appended to an archive upload, which is finished only
//! once the whole payload proved valid, and aborted otherwise.
//!
//! Only when the archive is the sole store: a projecting sink needs the
//! whole payload anyway.

use bytes::{Bytes, BytesMut};
use tokio::task::JoinError;

use crate::fetch::{BodyReceiver, HeldBody};
use crate::outcome::{FailureClass, RecordFailure, Retry};
use crate::payload::{IncrementalInspector, PayloadSummary};
use crate::sink::{ArchiveName, ArchiveUpload, ArchiveWrite, StreamedUploads};

/// Bodies up to this size are held and stored whole, as with every other
/// store; larger ones are streamed.
pub const STREAM_ABOVE_BYTES: u64 = 8 * 1024 * 1024;

/// Streams under way at once in one process. They share the function's
/// bandwidth and CPU, so n at once each take n times as long, and one stopped
/// at the invocation's deadline has wasted everything it sent: its upload is
/// aborted and the retry starts over. A few at a time finish one after
/// another; two keep the network busy while one validates.
pub const STREAMS_AT_ONCE: usize = 2;

/// Validation runs on a blocking thread a piece at a time: large enough to
/// make the hand-off cheap, small enough to add little to what a record holds.
const PIECE_BYTES: usize = 1024 * 1024;

/// What a streamed record holds at most: the body until it passes the
/// threshold, then a piece being validated, one arriving, and the upload's
/// buffers.
pub fn streamed_holds_bytes(uploads: &dyn StreamedUploads) -> u64 {
    let before_streaming = STREAM_ABOVE_BYTES + PIECE_BYTES as u64;
    let streaming = 2 * PIECE_BYTES as u64 + uploads.upload_holds_bytes();
    before_streaming.max(streaming)
}

/// One download's body: held, or validated and archived on the way.
pub enum ArchiveBound {
    Held(Bytes),
    Streamed {
        summary: PayloadSummary,
        bytes: u64,
        stored: ArchiveWrite,
    },
}

impl ArchiveBound {
    /// The payload's size, however it went.
    pub fn payload_bytes(&self) -> u64 {
        match self {
            ArchiveBound::Held(bytes) => bytes.len() as u64,
            ArchiveBound::Streamed { bytes, .. } => *bytes,
        }
    }
}

/// The body of one download attempt: held, or streamed once it is large.
pub struct ArchiveBoundBody<'a> {
    uploads: &'a dyn StreamedUploads,
    name: &'a ArchiveName,
    sent_at_ms: u64,
    held: HeldBody,
    streaming: Option<Streaming>,
}

struct Streaming {
    inspector: IncrementalInspector,
    upload: Box<dyn ArchiveUpload>,
    piece: BytesMut,
}

impl<'a> ArchiveBoundBody<'a> {
    pub fn new(uploads: &'a dyn StreamedUploads, name: &'a ArchiveName, sent_at_ms: u64) -> Self {
        Self {
            uploads,
            name,
            sent_at_ms,
            // Sized for what is held before streaming starts, at most.
            held: HeldBody::new(STREAM_ABOVE_BYTES + PIECE_BYTES as u64),
            streaming: None,
        }
    }
}

impl Streaming {
    /// Validates the piece, then appends it to the upload.
    async fn send_piece(&mut self) -> Result<(), RecordFailure> {
        // A fresh buffer for the next piece: splitting would keep this one's
        // allocation alive through the rest of the download.
        let piece =
            std::mem::replace(&mut self.piece, BytesMut::with_capacity(PIECE_BYTES)).freeze();
        let mut inspector = std::mem::take(&mut self.inspector);
        let checked = piece.clone();
        let (inspector, checked) = tokio::task::spawn_blocking(move || {
            let checked = inspector.feed(&checked);
            (inspector, checked)
        })
        .await
        .map_err(validation_task_failed)?;
        self.inspector = inspector;
        checked?;
        let known = self.inspector.summary_so_far();
        self.upload.append(piece, &known).await?;
        Ok(())
    }

    async fn abort_with(self, failure: RecordFailure) -> RecordFailure {
        self.upload.abort().await;
        failure
    }
}

fn validation_task_failed(error: JoinError) -> RecordFailure {
    RecordFailure::new(
        FailureClass::Internal,
        Retry::Transient,
        format!("payload validation task failed: {error}"),
    )
}

#[async_trait::async_trait]
impl BodyReceiver for ArchiveBoundBody<'_> {
    type Body = ArchiveBound;

    fn announced(&mut self, length: Option<u64>) {
        self.held.announced(length);
    }

    async fn receive(&mut self, chunk: Bytes) -> Result<(), RecordFailure> {
        if let Some(streaming) = &mut self.streaming {
            streaming.piece.extend_from_slice(&chunk);
            if streaming.piece.len() >= PIECE_BYTES {
                streaming.send_piece().await?;
            }
            return Ok(());
        }
        self.held.receive(chunk).await?;
        if self.held.len() as u64 > STREAM_ABOVE_BYTES {
            tracing::debug!(
                threshold = STREAM_ABOVE_BYTES,
                "payload is large: streaming it to the archive"
            );
            // What arrived so far is the first piece, not copied.
            let mut streaming = Streaming {
                inspector: IncrementalInspector::new(),
                upload: self.uploads.begin_upload(self.name, self.sent_at_ms),
                piece: self.held.take_buffer(),
            };
            let sent = streaming.send_piece().await;
            self.streaming = Some(streaming);
            sent?;
        }
        Ok(())
    }

    async fn complete(self) -> Result<(ArchiveBound, u64), RecordFailure> {
        let Some(mut streaming) = self.streaming else {
            let (payload, held) = self.held.complete().await?;
            return Ok((ArchiveBound::Held(payload), held));
        };
        if !streaming.piece.is_empty()
            && let Err(failure) = streaming.send_piece().await
        {
            return Err(streaming.abort_with(failure).await);
        }
        let bytes = streaming.inspector.consumed();
        let summary = match std::mem::take(&mut streaming.inspector).finish() {
            Ok(summary) => summary,
            Err(invalid) => return Err(streaming.abort_with(invalid.into()).await),
        };
        let stored = streaming.upload.finish(&summary).await?;
        Ok((
            ArchiveBound::Streamed {
                summary,
                bytes,
                stored,
            },
            0,
        ))
    }

    async fn abandon(self) {
        if let Some(streaming) = self.streaming {
            streaming.upload.abort().await;
        }
    }
}
