//! One record from queue message to written payload: decode Terra's
//! pointer, obtain the payload, then write it as what was obtained requires.
//! [`Obtained`] says which way; one `match` in `deliver` takes it.
//!
//! | The payload comes from | archive alone | archive and table | table alone |
//! |---|---|---|---|
//! | the URL, up to 8 MiB ([`STREAM_ABOVE_BYTES`]) | `Held` | `Held` | `Held` |
//! | the URL, larger | `Streamed` | `Held` | `Held` |
//! | the URL, expired, archived by an earlier try | `AlreadyArchived` | `Held`, read back | fails, `expired` |
//! | Terra's bucket (own-bucket mode) | `LeftInSourceBucket` | `Held`, archived by a copy inside S3; over the limit `LeftInSourceBucket`, failing for the table | `Held` |
//! | Terra's bucket, an object stored gzip | `Held` | `Held` | `Held` |
//!
//! An archive that compresses cannot copy inside S3, nor one that is not S3:
//! own-bucket payloads are then `Held` too. How own-bucket reads fail over
//! to the URL is in [`own_bucket`].
//!
//! With `EraseOnDeauth`, a written `deauth` or `access_revoked` then erases
//! the rest of its user's data ([`crate::erasure`]); an expired URL with the
//! archive alone is then `Held`, read back, to learn whose.

mod own_bucket;
mod streaming;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument;

use crate::batch::RecordProcessor;
use crate::budget::Reservation;
use crate::erasure::{EraseUser, Kept, LEAVING_EVENT_TYPES};
use crate::fetch::own_bucket::{SourceBucket, SourceBuckets, SourceReadError, SourceVersion};
use crate::fetch::{FetchDeadlines, FetchError, Fetched, Fetcher, RedactedUrl, RetryDelays};
use crate::message::{self, PayloadPointer, TerraMessage};
use crate::outcome::{Classify, FailureClass, FetchTiming, Outcome, RecordFailure, Retry, Written};
use crate::payload::{self, PayloadSummary};
use crate::record::InboundRecord;
use crate::sink::{
    Archive, ArchiveName, ArchiveWrite, ArchivedCopy, ArchivedObject, Delivery, Sink, SinkError,
};
use crate::wall_clock::now_ms;
use own_bucket::FromSource;
use streaming::{ArchiveBound, ArchiveBoundBody};

pub use streaming::STREAM_ABOVE_BYTES;

pub struct Pipeline {
    fetcher: Fetcher,
    archive: Option<Arc<dyn Archive>>,
    sinks: Vec<Arc<dyn Sink>>,
    /// Large payloads go to the archive as they download.
    streams_to_archive: bool,
    /// Own-bucket mode: payloads in Terra's bucket are read with the role.
    source_buckets: Option<SourceBucketReads>,
    /// `EraseOnDeauth`: what erases a user who left.
    eraser: Option<Arc<dyn EraseUser>>,
}

/// Which URLs point into a source bucket, and how to read it.
struct SourceBucketReads {
    buckets: SourceBuckets,
    reader: Arc<dyn SourceBucket>,
}

/// What obtaining a record's payload came to, and so how it is written.
enum Obtained {
    /// In memory: validated, then written to every store.
    Held(HeldPayload),
    /// Validated and archived as it downloaded; the archive is the only store.
    Streamed(StreamedPayload),
    /// Unobtainable now, but an earlier delivery archived it, and the archive
    /// is the only store.
    AlreadyArchived,
    /// Left in Terra's bucket for the archive to copy in: the archive is the
    /// only store, or the payload is over the limit for the others.
    /// `summary` is from the payload's start.
    LeftInSourceBucket {
        version: SourceVersion,
        summary: PayloadSummary,
        fetch: FetchTiming,
    },
}

struct HeldPayload {
    bytes: Bytes,
    provenance: Provenance,
    attempts: u32,
    /// How the download or the role's read went; `None` from the archive.
    fetch: Option<FetchTiming>,
    /// The budget the payload holds while the record is in flight.
    _reservation: Reservation,
}

/// Where held bytes came from, which decides how they are archived.
enum Provenance {
    /// Downloaded from the URL, or read from Terra's bucket and inflated:
    /// stored in the archive as they are.
    Downloaded,
    /// Read with the role from Terra's bucket, as stored there: an archive
    /// that can copies the object in instead of uploading the bytes.
    SourceBucket(SourceVersion),
    /// Read back from the archive, where an earlier delivery wrote them.
    Archive(ArchivedObject),
}

struct StreamedPayload {
    summary: PayloadSummary,
    bytes: u64,
    stored: ArchiveWrite,
    attempts: u32,
    fetch: FetchTiming,
}

impl Pipeline {
    /// The archive (when configured) is written first, then `sinks` in order;
    /// a record counts as written only when all are. With the archive alone,
    /// payloads above [`STREAM_ABOVE_BYTES`] are streamed into it, when it
    /// takes streamed uploads.
    pub fn new(
        fetcher: Fetcher,
        archive: Option<Arc<dyn Archive>>,
        sinks: Vec<Arc<dyn Sink>>,
    ) -> Self {
        let uploads = archive
            .as_deref()
            .and_then(|archive| archive.streamed_uploads());
        let (fetcher, streams_to_archive) = match uploads {
            Some(uploads) if sinks.is_empty() => (
                fetcher.streaming_above(
                    STREAM_ABOVE_BYTES,
                    streaming::streamed_holds_bytes(uploads),
                    streaming::STREAMS_AT_ONCE,
                ),
                true,
            ),
            _ => (fetcher, false),
        };
        Self {
            fetcher,
            archive,
            sinks,
            streams_to_archive,
            source_buckets: None,
            eraser: None,
        }
    }

    /// A written `deauth` or `access_revoked` erases the rest of its user's
    /// data with `eraser`; the record fails (transient) until that is done.
    pub fn erasing_on_deauth(self, eraser: Arc<dyn EraseUser>) -> Self {
        Self {
            eraser: Some(eraser),
            ..self
        }
    }

    /// Payload URLs into `buckets` are read with `reader` instead of fetched.
    pub fn reading_source_buckets(
        self,
        buckets: SourceBuckets,
        reader: Arc<dyn SourceBucket>,
    ) -> Self {
        Self {
            source_buckets: Some(SourceBucketReads { buckets, reader }),
            ..self
        }
    }

    /// The budget the largest payload accepted holds while in flight.
    pub fn largest_record_holds(&self, max_payload_bytes: u64) -> u64 {
        self.fetcher.holding_cost().of(max_payload_bytes)
    }

    async fn deliver(
        &self,
        record: &InboundRecord,
        give_up_at: Instant,
    ) -> Result<Outcome, RecordFailure> {
        let pointer = match message::decode(&record.body)? {
            TerraMessage::Healthcheck => {
                tracing::info!("healthcheck acknowledged");
                return Ok(Outcome::Healthcheck);
            }
            TerraMessage::Payload(pointer) => pointer,
        };
        let name = ArchiveName::for_message(&pointer, record.sent_at_ms);
        let span = tracing::Span::current();
        span.record("url", tracing::field::display(RedactedUrl(&pointer.url)));
        span.record("object", name.as_str());
        if let Some(reference) = &pointer.payload_reference {
            span.record("payload_reference", reference.as_str());
        }
        let sent_at_ms = record.sent_at_ms;
        let written = match self.obtain(&pointer, sent_at_ms, &name, give_up_at).await? {
            Obtained::Held(held) => self.write_held(held, name, sent_at_ms, give_up_at).await?,
            Obtained::Streamed(streamed) => {
                correlate(&streamed.summary);
                streamed.written()
            }
            Obtained::AlreadyArchived => {
                tracing::debug!("payload already archived by an earlier delivery");
                Written {
                    recovered_from_archive: true,
                    ..Written::default()
                }
            }
            Obtained::LeftInSourceBucket {
                version,
                summary,
                fetch,
            } => {
                correlate(&summary);
                let event_type = summary.event_type.clone();
                Written {
                    fetch: Some(fetch),
                    ..self
                        .copy_only(&name, sent_at_ms, version, summary, give_up_at)
                        .instrument(tracing::info_span!("archive write"))
                        .await
                        .map_err(|failure| failure.of_type(&event_type))?
                }
            }
        };
        Ok(Outcome::Written(written))
    }

    /// Validates a payload in hand and writes it to every store: the archive
    /// first (unless it came from there), then each sink in order.
    async fn write_held(
        &self,
        held: HeldPayload,
        name: ArchiveName,
        sent_at_ms: u64,
        give_up_at: Instant,
    ) -> Result<Written, RecordFailure> {
        let summary = inspect_off_the_workers(&held.bytes).await?;
        correlate(&summary);
        let event_type = summary.event_type.clone();
        self.write_inspected(held, summary, name, sent_at_ms, give_up_at)
            .await
            .map_err(|failure| failure.of_type(&event_type))
    }

    /// [`Pipeline::write_held`] once the payload is validated.
    async fn write_inspected(
        &self,
        held: HeldPayload,
        summary: PayloadSummary,
        name: ArchiveName,
        sent_at_ms: u64,
        give_up_at: Instant,
    ) -> Result<Written, RecordFailure> {
        let (recovered, archived) = match held.provenance {
            Provenance::Archive(ref object) => (true, Some(object.clone())),
            _ => (false, None),
        };
        let mut delivery = Delivery {
            name,
            sent_at_ms,
            payload: held.bytes,
            summary,
            archived,
        };
        if let (Some(archive), false) = (&self.archive, recovered) {
            let stored = archive_held(archive.as_ref(), &delivery, &held.provenance, give_up_at)
                .instrument(tracing::info_span!("archive write"));
            delivery.archived = stored.await?.this_send();
        }
        let mut stale_items = 0;
        for sink in &self.sinks {
            stale_items += until_stored(give_up_at, || sink.write(&delivery))
                .instrument(tracing::info_span!("table write"))
                .await?
                .items_stale;
        }
        self.erase_if_leaving(&delivery.summary, &delivery.name, give_up_at, || {
            if self.sinks.is_empty() {
                return Vec::new();
            }
            serde_json::from_slice(&delivery.payload)
                .map(|payload| crate::sink::item_keys(&payload, sent_at_ms))
                .unwrap_or_default()
        })
        .await?;
        tracing::debug!(
            event_type = %delivery.summary.event_type,
            bytes = delivery.payload.len(),
            attempts = held.attempts,
            recovered_from_archive = recovered,
            stale_items,
            "payload written"
        );
        Ok(Written {
            event_type: delivery.summary.event_type,
            payload_bytes: delivery.payload.len() as u64,
            stale_items,
            recovered_from_archive: recovered,
            fetch: held.fetch,
            duration_ms: 0,
        })
    }

    /// With `EraseOnDeauth`, a written `deauth` or `access_revoked` erases
    /// the rest of its user's data, keeping this record (its archived object
    /// under `name`, its items from `kept_items`): the event that says when
    /// and why the data went. Until the erasure is whole the record fails
    /// as transient, so the retry finishes it.
    async fn erase_if_leaving(
        &self,
        summary: &PayloadSummary,
        name: &ArchiveName,
        give_up_at: Instant,
        kept_items: impl FnOnce() -> Vec<(String, String)>,
    ) -> Result<(), RecordFailure> {
        let (Some(eraser), Some(user_id)) = (&self.eraser, &summary.user_id) else {
            return Ok(());
        };
        if !LEAVING_EVENT_TYPES.contains(&summary.event_type.as_str()) {
            return Ok(());
        }
        let kept = Kept {
            archive_name: self.archive.as_ref().map(|_| name.clone()),
            items: kept_items(),
        };
        let erasing = eraser
            .erase_user(user_id, &kept)
            .instrument(tracing::info_span!("erasure"));
        let Ok(erased) = tokio::time::timeout_at(give_up_at, erasing).await else {
            return Err(RecordFailure::new(
                FailureClass::Sink,
                Retry::Transient,
                "written; the invocation deadline came before the user's data was all erased \
                 (the retry goes on from where this stopped)",
            ));
        };
        if let Some(first) = erased.failures.first() {
            return Err(RecordFailure::new(
                FailureClass::Sink,
                Retry::Transient,
                format!(
                    "written; erasing the user's data left {} undone (first: {}: {})",
                    erased.failures.len(),
                    first.what,
                    first.reason
                ),
            ));
        }
        tracing::info!(
            event_type = %summary.event_type,
            objects = erased.objects,
            versions = erased.versions,
            items = erased.items,
            "the user left; the rest of their data is erased"
        );
        Ok(())
    }

    /// From Terra's bucket with the role when own-bucket mode covers the
    /// URL, falling back to the URL as [`own_bucket`] describes; otherwise
    /// by the URL.
    async fn obtain(
        &self,
        pointer: &PayloadPointer,
        sent_at_ms: u64,
        name: &ArchiveName,
        give_up_at: Instant,
    ) -> Result<Obtained, RecordFailure> {
        let in_source_bucket = self.source_buckets.as_ref().and_then(|reads| {
            let object = reads.buckets.locate(&pointer.url)?;
            Some((reads.reader.as_ref(), object))
        });
        let Some((reader, object)) = in_source_bucket else {
            return self
                .obtain_by_url(pointer, sent_at_ms, name, give_up_at)
                .await;
        };
        tracing::Span::current().record("source", tracing::field::display(&object));
        let url_lives = url_may_work(pointer, sent_at_ms);
        let role_read_failed = match self
            .obtain_from_source(reader, object, sent_at_ms, name, give_up_at, url_lives)
            .instrument(tracing::info_span!("source read"))
            .await?
        {
            FromSource::Obtained(obtained) => return Ok(*obtained),
            FromSource::UseTheUrl(error) => error,
        };
        tracing::warn!(error = %role_read_failed, "the role cannot read the source bucket; fetching the URL instead");
        self.obtain_by_url(pointer, sent_at_ms, name, give_up_at)
            .await
            .map_err(|url_failed| prefer_a_retry(url_failed, role_read_failed))
    }

    /// Fetches the payload; when the URL has expired, falls back to the copy an
    /// earlier attempt archived (the archive name derives from the message
    /// alone), so a sink outage longer than the URL lifetime loses nothing.
    async fn obtain_by_url(
        &self,
        pointer: &PayloadPointer,
        sent_at_ms: u64,
        name: &ArchiveName,
        give_up_at: Instant,
    ) -> Result<Obtained, RecordFailure> {
        let started = Instant::now();
        let age_at_fetch_ms = now_ms().saturating_sub(sent_at_ms);
        let fetched = match pointer
            .expires_in
            .map(|lifetime| url_expiry(sent_at_ms, lifetime))
        {
            Some(None) => Err(FetchError::ExpiredBeforeFetch),
            url_expires_at => {
                let deadlines = FetchDeadlines {
                    url_expires_at: url_expires_at.flatten(),
                    give_up_at,
                };
                let span = tracing::info_span!(
                    "fetch",
                    attempts = tracing::field::Empty,
                    bytes = tracing::field::Empty,
                    class = tracing::field::Empty,
                    "otel.status_code" = tracing::field::Empty,
                );
                let fetched = self
                    .download(pointer, deadlines, name, sent_at_ms)
                    .instrument(span.clone())
                    .await;
                match &fetched {
                    Ok(fetched) => span
                        .record("attempts", fetched.attempts)
                        .record("bytes", fetched.body.payload_bytes()),
                    Err(error) => span
                        .record("class", tracing::field::display(error.class()))
                        .record("otel.status_code", "error"),
                };
                fetched
            }
        };
        let Fetched {
            body,
            attempts,
            reservation,
        } = match fetched {
            Ok(fetched) => fetched,
            Err(error) if error.class() == FailureClass::Expired => {
                return self
                    .recover_from_archive(error.into(), name, sent_at_ms, give_up_at)
                    .await;
            }
            Err(error) => return Err(error.into()),
        };
        let fetch = FetchTiming {
            latency_ms: started.elapsed().as_millis() as u64,
            age_at_fetch_ms,
        };
        Ok(match body {
            ArchiveBound::Held(bytes) => Obtained::Held(HeldPayload {
                bytes,
                provenance: Provenance::Downloaded,
                attempts,
                fetch: Some(fetch),
                _reservation: reservation,
            }),
            ArchiveBound::Streamed {
                summary,
                bytes,
                stored,
            } => Obtained::Streamed(StreamedPayload {
                summary,
                bytes,
                stored,
                attempts,
                fetch,
            }),
        })
    }

    /// One download, streamed into the archive once large when that is how
    /// this pipeline stores payloads.
    async fn download(
        &self,
        pointer: &PayloadPointer,
        deadlines: FetchDeadlines,
        name: &ArchiveName,
        sent_at_ms: u64,
    ) -> Result<Fetched<ArchiveBound>, FetchError> {
        let uploads = self
            .archive
            .as_deref()
            .and_then(|archive| archive.streamed_uploads())
            .filter(|_| self.streams_to_archive);
        let Some(uploads) = uploads else {
            let fetched = self.fetcher.fetch(&pointer.url, deadlines).await?;
            return Ok(Fetched {
                body: ArchiveBound::Held(fetched.body),
                attempts: fetched.attempts,
                reservation: fetched.reservation,
            });
        };
        self.fetcher
            .fetch_into(&pointer.url, deadlines, || {
                ArchiveBoundBody::new(uploads, name, sent_at_ms)
            })
            .await
    }

    /// The payload can no longer be had where the message points (the URL
    /// expired, the source object is gone): the copy an earlier attempt
    /// archived stands in, or the record fails with `error`.
    async fn recover_from_archive(
        &self,
        error: RecordFailure,
        name: &ArchiveName,
        sent_at_ms: u64,
        give_up_at: Instant,
    ) -> Result<Obtained, RecordFailure> {
        let Some(archive) = &self.archive else {
            return Err(error);
        };
        if self.sinks.is_empty() && self.eraser.is_none() {
            // Nothing to project or erase for: that the archive holds this
            // send is all the record needs, and asking costs no payload in
            // memory.
            if archive.holds(name, sent_at_ms).await?.is_none() {
                return Err(error);
            }
            tracing::info!(reason = %error.message, "payload unobtainable; the archive already holds it");
            return Ok(Obtained::AlreadyArchived);
        }
        // The archived copy's size is known only once it is read: hold room
        // for the largest payload accepted until then.
        let Ok(mut reservation) =
            tokio::time::timeout_at(give_up_at, self.fetcher.reserve_for_any_payload()).await
        else {
            return Err(RecordFailure::new(
                FailureClass::Deferred,
                Retry::Transient,
                "URL expired, and the invocation deadline came before memory was free to \
                 read the archived copy",
            ));
        };
        let max_payload_bytes = self.fetcher.max_payload_bytes();
        let (bytes, archived) = match archive
            .retrieve(name, sent_at_ms, max_payload_bytes)
            .await?
        {
            None => return Err(error),
            Some(ArchivedCopy::Payload(payload, archived)) => (payload, archived),
            Some(ArchivedCopy::TooLarge(archived)) => {
                return Err(archived_not_projected(max_payload_bytes, archived.key));
            }
        };
        reservation.shrink_to(self.fetcher.holding_cost().held_whole(bytes.len() as u64));
        tracing::info!(reason = %error.message, "payload unobtainable; continuing from the archived copy");
        Ok(Obtained::Held(HeldPayload {
            bytes,
            provenance: Provenance::Archive(archived),
            attempts: 0,
            fetch: None,
            _reservation: reservation,
        }))
    }
}

impl StreamedPayload {
    fn written(self) -> Written {
        log_newer_held(&self.stored);
        tracing::debug!(
            event_type = %self.summary.event_type,
            bytes = self.bytes,
            attempts = self.attempts,
            "payload streamed to the archive"
        );
        Written {
            event_type: self.summary.event_type,
            payload_bytes: self.bytes,
            stale_items: 0,
            recovered_from_archive: false,
            fetch: Some(self.fetch),
            duration_ms: 0,
        }
    }
}

/// Puts the payload's type and user on the record's span, so that every
/// later line about the record carries them.
fn correlate(summary: &PayloadSummary) {
    let span = tracing::Span::current();
    span.record("event_type", summary.event_type.as_str());
    if let Some(user_id) = &summary.user_id {
        span.record("user_id", user_id.as_str());
    }
}

/// Held bytes into the archive: by a copy inside S3 when they came from
/// Terra's bucket as stored there and the archive can copy, else uploaded.
async fn archive_held(
    archive: &dyn Archive,
    delivery: &Delivery,
    provenance: &Provenance,
    give_up_at: Instant,
) -> Result<ArchiveWrite, SinkError> {
    let stored = match (provenance, archive.server_side_copy()) {
        (Provenance::SourceBucket(version), Some(copier)) => {
            let Delivery {
                name,
                sent_at_ms,
                summary,
                ..
            } = delivery;
            until_stored(give_up_at, || {
                copier.copy_in(name, *sent_at_ms, version, summary)
            })
            .await?
        }
        _ => until_stored(give_up_at, || archive.store(delivery)).await?,
    };
    log_newer_held(&stored);
    Ok(stored)
}

/// A payload over the limit the archive holds all the same (copied in, or
/// archived before the limit was lowered): the other stores cannot take it.
fn archived_not_projected(limit: u64, object: String) -> RecordFailure {
    let mut too_large = RecordFailure::from_error(&FetchError::TooLarge { limit, url: object });
    too_large.message.push_str("; archived, not projected");
    too_large
}

fn log_newer_held(stored: &ArchiveWrite) {
    if let ArchiveWrite::NewerHeld(object) = stored {
        tracing::info!(
            object = %object.key,
            "a later send is archived under this name; it stays"
        );
    }
}

/// Payloads above this are validated on a blocking thread: a 64 MiB payload
/// takes tens of milliseconds, which would hold up every other record's I/O
/// (and the deadline timer) on that worker.
const INSPECT_INLINE_MAX: usize = 256 * 1024;

/// The payload's summary, validated; a large one on a blocking thread.
pub async fn inspect_off_the_workers(payload: &Bytes) -> Result<PayloadSummary, RecordFailure> {
    if payload.len() <= INSPECT_INLINE_MAX {
        return Ok(payload::inspect(payload)?);
    }
    let payload = payload.clone();
    match tokio::task::spawn_blocking(move || payload::inspect(&payload)).await {
        Ok(inspected) => Ok(inspected?),
        Err(join_error) => Err(RecordFailure::new(
            FailureClass::Internal,
            Retry::Transient,
            format!("payload validation task failed: {join_error}"),
        )),
    }
}

/// Retries a store's transient failures with backoff while the invocation
/// has time, so a short outage costs no redelivery, and a Kafka partition
/// (retried by its mapping at once) spends its retry attempts over time
/// rather than in a burst.
async fn until_stored<T, F, Fut>(give_up_at: Instant, mut write: F) -> Result<T, SinkError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SinkError>>,
{
    let mut delays = RetryDelays::new();
    loop {
        match write().await {
            Err(error) if error.retry == Retry::Transient => {
                let delay = delays.next_delay();
                if Instant::now() + delay >= give_up_at {
                    return Err(error);
                }
                tracing::debug!(%error, delay_ms = delay.as_millis() as u64, "retrying store write");
                tokio::time::sleep(delay).await;
            }
            done => return done,
        }
    }
}

/// The URL was fetched because the role's read failed. When that read may
/// succeed later (S3 was down) but the URL failed for good (its host not
/// allowed, say), the record fails as the read did: the bucket is still the
/// way in, so it is retried, not given up.
fn prefer_a_retry(url_failed: RecordFailure, role_read_failed: SourceReadError) -> RecordFailure {
    if role_read_failed.retry() == Retry::Transient && url_failed.retry == Retry::Permanent {
        let mut failure = RecordFailure::from_error(&role_read_failed);
        failure.message = format!(
            "{}; the URL failed too: {}",
            failure.message, url_failed.message
        );
        failure
    } else {
        url_failed
    }
}

/// Whether the message's pre-signed URL may still work: its lifetime has not
/// run out, or is not known.
fn url_may_work(pointer: &PayloadPointer, sent_at_ms: u64) -> bool {
    pointer
        .expires_in
        .is_none_or(|lifetime| url_expiry(sent_at_ms, lifetime).is_some())
}

/// The instant a URL sent at `sent_at_ms` with `lifetime` stops working, or
/// `None` when that has already happened. A send time in the future (clock
/// skew, or a hostile Kafka timestamp) leaves at most `lifetime`.
fn url_expiry(sent_at_ms: u64, lifetime: Duration) -> Option<Instant> {
    let sent_at = UNIX_EPOCH
        .checked_add(Duration::from_millis(sent_at_ms))
        .unwrap_or(SystemTime::now());
    let expires_at = sent_at.checked_add(lifetime)?;
    let remaining = expires_at
        .duration_since(SystemTime::now())
        .ok()?
        .min(lifetime);
    if remaining.is_zero() {
        return None;
    }
    Instant::now().checked_add(remaining)
}

#[async_trait]
impl RecordProcessor for Pipeline {
    async fn process(&self, record: &InboundRecord, give_up_at: Instant) -> Outcome {
        let span = tracing::info_span!(
            "record",
            id = %record.log_id,
            url = tracing::field::Empty,
            source = tracing::field::Empty,
            object = tracing::field::Empty,
            payload_reference = tracing::field::Empty,
            event_type = tracing::field::Empty,
            user_id = tracing::field::Empty,
            outcome = tracing::field::Empty,
            class = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty,
        );
        let started = Instant::now();
        let outcome = async {
            match self.deliver(record, give_up_at).await {
                Ok(Outcome::Written(written)) => {
                    let written = Written {
                        duration_ms: started.elapsed().as_millis() as u64,
                        ..written
                    };
                    tracing::info!(
                        bytes = written.payload_bytes,
                        duration_ms = written.duration_ms,
                        age_at_fetch_ms = written.fetch.map(|f| f.age_at_fetch_ms),
                        fetch_latency_ms = written.fetch.map(|f| f.latency_ms),
                        recovered_from_archive = written.recovered_from_archive,
                        "{}",
                        crate::log_events::RECORD_WRITTEN
                    );
                    Outcome::Written(written)
                }
                Ok(outcome) => outcome,
                Err(failure) => {
                    failure.log();
                    Outcome::Failed(failure)
                }
            }
        }
        .instrument(span.clone())
        .await;
        match &outcome {
            Outcome::Written(_) => span.record("outcome", "written"),
            Outcome::Healthcheck => span.record("outcome", "healthcheck"),
            Outcome::Quarantined(_) => span.record("outcome", "quarantined"),
            Outcome::Failed(failure) => span
                .record("outcome", "failed")
                .record("class", tracing::field::display(failure.class))
                .record("otel.status_code", "error"),
        };
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_read_that_may_succeed_later_outweighs_a_url_that_never_will() {
        use crate::fetch::own_bucket::{SourceObject, SourceReadError};
        let object = SourceObject {
            bucket: "terra-drop".into(),
            key: "a.json".into(),
            region: None,
            expected_owner: None,
        };
        let refused_url = RecordFailure::new(FailureClass::Refused, Retry::Permanent, "host");
        let s3_down = SourceReadError::Unavailable {
            object: object.clone(),
            detail: "503".into(),
        };
        let kept = prefer_a_retry(refused_url.clone(), s3_down);
        assert_eq!(
            (kept.class, kept.retry),
            (FailureClass::Fetch, Retry::Transient)
        );
        assert!(
            kept.message.contains("the URL failed too"),
            "{}",
            kept.message
        );
        let denied = SourceReadError::Refused {
            object,
            detail: "403".into(),
        };
        assert_eq!(prefer_a_retry(refused_url.clone(), denied), refused_url);
    }

    #[test]
    fn url_expiry_counts_from_the_send_time() {
        let now_ms = now_ms();
        assert!(url_expiry(now_ms - 601_000, Duration::from_secs(600)).is_none());
        for future in [now_ms + 3_600_000, u64::MAX] {
            let remaining = url_expiry(future, Duration::from_secs(600))
                .expect("not expired")
                .duration_since(Instant::now());
            assert!(remaining <= Duration::from_secs(600), "{future}");
        }
        let remaining = url_expiry(now_ms - 300_000, Duration::from_secs(600))
            .expect("still valid")
            .duration_since(Instant::now());
        assert!(remaining > Duration::from_secs(290) && remaining <= Duration::from_secs(300));
    }
}
