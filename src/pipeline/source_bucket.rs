//! Own-bucket mode in the pipeline: a payload in Terra's bucket is read with
//! the function's role, and archived by a copy inside S3.

use tokio::time::Instant;

use super::{
    Obtained, Pipeline, ReceivedPayload, inspect_off_the_workers, log_newer_held, now_ms,
    until_stored,
};
use crate::fetch::FetchError;
use crate::fetch::source_bucket::{SourceBucket, SourceObject, SourceReadError, SourceVersion};
use crate::outcome::{FailureClass, FetchTiming, RecordFailure, Retry, Written};
use crate::payload::{IncrementalInspector, PayloadSummary};
use crate::sink::ArchiveName;

/// Read of a payload that is copied, not held: enough for the envelope's
/// `type` and `user`, which Terra sends before `data`.
const ENVELOPE_START_BYTES: u64 = 64 * 1024;

impl Pipeline {
    /// The payload, held, when a store other than a copying archive needs
    /// its bytes; otherwise left in place with what its start says of it.
    pub(super) async fn obtain_from_source(
        &self,
        reader: &dyn SourceBucket,
        object: SourceObject,
        sent_at_ms: u64,
        name: &ArchiveName,
        give_up_at: Instant,
    ) -> Result<Obtained, RecordFailure> {
        let started = Instant::now();
        let age_at_fetch_ms = now_ms().saturating_sub(sent_at_ms);
        let version = match by_deadline(give_up_at, reader.version(&object)).await? {
            Ok(version) => version,
            Err(gone) if gone.is_gone() => {
                return self
                    .recover_from_archive(
                        RecordFailure::from_error(&gone),
                        name,
                        sent_at_ms,
                        give_up_at,
                    )
                    .await;
            }
            Err(error) => return Err(RecordFailure::from_error(&error)),
        };
        let timing = |started: Instant| {
            Some(FetchTiming {
                latency_ms: started.elapsed().as_millis() as u64,
                age_at_fetch_ms,
            })
        };
        let archive_copies = self
            .archive
            .as_ref()
            .is_some_and(|archive| archive.copies_in());
        let max_payload_bytes = self.fetcher.max_payload_bytes();
        let fits = version.size <= max_payload_bytes;
        if archive_copies && (self.sinks.is_empty() || !fits) {
            let start = by_deadline(
                give_up_at,
                reader.read(&version, Some(ENVELOPE_START_BYTES)),
            )
            .await?
            .map_err(|e| RecordFailure::from_error(&e))?;
            let summary = summary_of_start(&start, version.size).await?;
            return Ok(Obtained {
                payload: ReceivedPayload::InSourceBucket {
                    summary,
                    bytes: version.size,
                },
                attempts: 1,
                fetch: timing(started),
                archived: None,
                source: Some(version),
                _reservation: None,
            });
        }
        if !fits {
            return Err(RecordFailure::from_error(&FetchError::TooLarge {
                limit: max_payload_bytes,
                url: version.object.to_string(),
            }));
        }
        let Ok(reservation) = tokio::time::timeout_at(
            give_up_at,
            self.fetcher.reserve_for_payload_of(version.size),
        )
        .await
        else {
            return Err(deadline_came());
        };
        let body = by_deadline(give_up_at, reader.read(&version, None))
            .await?
            .map_err(|e| RecordFailure::from_error(&e))?;
        Ok(Obtained {
            payload: ReceivedPayload::Held(body),
            attempts: 1,
            fetch: timing(started),
            archived: None,
            source: Some(version),
            _reservation: Some(reservation),
        })
    }

    /// Archives a payload left in its source bucket by a copy inside S3. When
    /// other stores are configured it was too large for them: archived, the
    /// record still fails for them.
    pub(super) async fn copy_only(
        &self,
        name: &ArchiveName,
        sent_at_ms: u64,
        source: Option<SourceVersion>,
        summary: PayloadSummary,
        bytes: u64,
        give_up_at: Instant,
    ) -> Result<Written, RecordFailure> {
        let (Some(archive), Some(version)) = (&self.archive, source) else {
            return Err(RecordFailure::new(
                FailureClass::Internal,
                Retry::Transient,
                "a payload left in its source bucket without an archive to copy it in",
            ));
        };
        let stored = until_stored(give_up_at, || {
            archive.copy_in(name, sent_at_ms, &version, &summary)
        })
        .await?;
        log_newer_held(&stored);
        if !self.sinks.is_empty() {
            let mut too_large = RecordFailure::from_error(&FetchError::TooLarge {
                limit: self.fetcher.max_payload_bytes(),
                url: version.object.to_string(),
            });
            too_large.message.push_str("; archived, not projected");
            return Err(too_large);
        }
        tracing::debug!(
            event_type = %summary.event_type,
            bytes,
            "payload copied into the archive"
        );
        Ok(Written {
            event_type: summary.event_type,
            payload_bytes: bytes,
            stale_items: 0,
            recovered_from_archive: false,
            fetch: None,
        })
    }
}

/// `work`, unless the invocation's deadline comes first.
async fn by_deadline<T>(
    give_up_at: Instant,
    work: impl Future<Output = Result<T, SourceReadError>>,
) -> Result<Result<T, SourceReadError>, RecordFailure> {
    tokio::time::timeout_at(give_up_at, work)
        .await
        .map_err(|_| deadline_came())
}

fn deadline_came() -> RecordFailure {
    RecordFailure::new(
        FailureClass::Deferred,
        Retry::Transient,
        "gave up reading the source bucket: the invocation deadline is near",
    )
}

/// What the payload's first bytes say of it. A payload read whole is
/// validated whole; a start only as far as it goes.
async fn summary_of_start(
    start: &bytes::Bytes,
    size: u64,
) -> Result<PayloadSummary, RecordFailure> {
    if start.len() as u64 == size {
        return inspect_off_the_workers(start).await;
    }
    let mut inspector = IncrementalInspector::new();
    inspector.feed(start)?;
    Ok(inspector.summary_so_far())
}
