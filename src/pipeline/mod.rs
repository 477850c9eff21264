//! One record from queue message to written payload.

mod source_bucket;
mod streaming;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument;

use crate::batch::RecordProcessor;
use crate::budget::Reservation;
use crate::fetch::source_bucket::{SourceBucket, SourceBuckets, SourceVersion};
use crate::fetch::{FetchDeadlines, FetchError, Fetched, Fetcher, RedactedUrl, RetryDelays};
use crate::message::{self, PayloadPointer, TerraMessage};
use crate::outcome::{Classify, FailureClass, FetchTiming, Outcome, RecordFailure, Retry, Written};
use crate::payload::{self, PayloadSummary};
use crate::record::InboundRecord;
use crate::sink::{
    Archive, ArchiveName, ArchiveWrite, ArchivedCopy, ArchivedObject, Delivery, Sink, SinkError,
};
use source_bucket::FromSource;
use streaming::{ArchiveBoundBody, ReceivedPayload};

pub use streaming::STREAM_ABOVE_BYTES;

pub struct Pipeline {
    fetcher: Fetcher,
    archive: Option<Arc<dyn Archive>>,
    sinks: Vec<Arc<dyn Sink>>,
    /// Large payloads go to the archive as they download.
    streams_to_archive: bool,
    /// Own-bucket mode: payloads in Terra's bucket are read with the role.
    source_buckets: Option<SourceBucketReads>,
}

/// Which URLs point into a source bucket, and how to read it.
struct SourceBucketReads {
    buckets: SourceBuckets,
    reader: Arc<dyn SourceBucket>,
}

/// A payload ready for the stores, and where it came from.
struct Obtained {
    payload: ReceivedPayload,
    attempts: u32,
    /// Set when the payload was downloaded.
    fetch: Option<FetchTiming>,
    /// Set when the payload was read back from the archive.
    archived: Option<ArchivedObject>,
    /// Set when the payload was read whole from a source bucket.
    source: Option<SourceVersion>,
    /// The budget the payload holds while the record is in flight.
    _reservation: Option<Reservation>,
}

impl Pipeline {
    /// The archive (when configured) is written first, then `sinks` in order;
    /// a record counts as written only when all are. With the archive alone,
    /// payloads above [`STREAM_ABOVE_BYTES`] are streamed into it.
    pub fn new(
        fetcher: Fetcher,
        archive: Option<Arc<dyn Archive>>,
        sinks: Vec<Arc<dyn Sink>>,
    ) -> Self {
        let (fetcher, streams_to_archive) = match &archive {
            Some(archive) if sinks.is_empty() => (
                fetcher.streaming_above(
                    STREAM_ABOVE_BYTES,
                    streaming::streamed_holds_bytes(archive.as_ref()),
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

        let in_source_bucket = self.source_buckets.as_ref().and_then(|reads| {
            let object = reads.buckets.locate(&pointer.url)?;
            Some((reads.reader.as_ref(), object))
        });
        let mut role_read_failed = None;
        let from_source = match in_source_bucket {
            Some((reader, object)) => {
                span.record("source", tracing::field::display(&object));
                let url_lives = url_may_work(&pointer, record.sent_at_ms);
                match self
                    .obtain_from_source(
                        reader,
                        object,
                        record.sent_at_ms,
                        &name,
                        give_up_at,
                        url_lives,
                    )
                    .await?
                {
                    FromSource::Obtained(obtained) => Some(*obtained),
                    FromSource::UseTheUrl(error) => {
                        tracing::warn!(%error, "the role cannot read the source bucket; fetching the URL instead");
                        role_read_failed = Some(error);
                        None
                    }
                }
            }
            None => None,
        };
        let obtained = match from_source {
            Some(obtained) => obtained,
            None => self
                .obtain(&pointer, record.sent_at_ms, &name, give_up_at)
                .await
                .map_err(|url_failed| prefer_a_retry(url_failed, role_read_failed))?,
        };
        let source = obtained.source;
        let payload = match obtained.payload {
            ReceivedPayload::Held(payload) => payload,
            ReceivedPayload::AlreadyArchived => {
                tracing::debug!("payload already archived by an earlier delivery");
                return Ok(Outcome::Written(Written {
                    recovered_from_archive: true,
                    ..Written::default()
                }));
            }
            ReceivedPayload::Streamed {
                summary,
                bytes,
                stored,
            } => {
                log_newer_held(&stored);
                tracing::debug!(
                    event_type = %summary.event_type,
                    bytes,
                    attempts = obtained.attempts,
                    "payload streamed to the archive"
                );
                return Ok(Outcome::Written(Written {
                    event_type: summary.event_type,
                    payload_bytes: bytes,
                    stale_items: 0,
                    recovered_from_archive: false,
                    fetch: obtained.fetch,
                }));
            }
            ReceivedPayload::InSourceBucket { version, summary } => {
                return self
                    .copy_only(&name, record.sent_at_ms, version, summary, give_up_at)
                    .await
                    .map(|written| {
                        Outcome::Written(Written {
                            fetch: obtained.fetch,
                            ..written
                        })
                    });
            }
        };
        let summary = inspect_off_the_workers(&payload).await?;
        let recovered = obtained.archived.is_some();
        let mut delivery = Delivery {
            name,
            sent_at_ms: record.sent_at_ms,
            payload,
            summary,
            archived: obtained.archived,
        };
        if let (Some(archive), false) = (&self.archive, recovered) {
            let stored = match &source {
                Some(version) if archive.copies_in() => {
                    until_stored(give_up_at, || {
                        archive.copy_in(
                            &delivery.name,
                            delivery.sent_at_ms,
                            version,
                            &delivery.summary,
                        )
                    })
                    .await?
                }
                _ => until_stored(give_up_at, || archive.store(&delivery)).await?,
            };
            log_newer_held(&stored);
            delivery.archived = stored.this_send();
        }
        let mut stale_items = 0;
        for sink in &self.sinks {
            stale_items += until_stored(give_up_at, || sink.write(&delivery))
                .await?
                .items_stale;
        }
        tracing::debug!(
            event_type = %delivery.summary.event_type,
            bytes = delivery.payload.len(),
            attempts = obtained.attempts,
            recovered_from_archive = recovered,
            stale_items,
            "payload written"
        );
        Ok(Outcome::Written(Written {
            event_type: delivery.summary.event_type,
            payload_bytes: delivery.payload.len() as u64,
            stale_items,
            recovered_from_archive: recovered,
            fetch: obtained.fetch,
        }))
    }

    /// Fetches the payload; when the URL has expired, falls back to the copy an
    /// earlier attempt archived (the archive name derives from the message
    /// alone), so a sink outage longer than the URL lifetime loses nothing.
    async fn obtain(
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
                match (&self.archive, self.streams_to_archive) {
                    (Some(archive), true) => {
                        self.fetcher
                            .fetch_into(&pointer.url, deadlines, || {
                                ArchiveBoundBody::new(archive.as_ref(), name, sent_at_ms)
                            })
                            .await
                    }
                    _ => self.fetcher.fetch(&pointer.url, deadlines).await.map(
                        |Fetched {
                             body,
                             attempts,
                             reservation,
                         }| Fetched {
                            body: ReceivedPayload::Held(body),
                            attempts,
                            reservation,
                        },
                    ),
                }
            }
        };
        let error = match fetched {
            Ok(fetched) => {
                return Ok(Obtained {
                    payload: fetched.body,
                    attempts: fetched.attempts,
                    fetch: Some(FetchTiming {
                        latency_ms: started.elapsed().as_millis() as u64,
                        age_at_fetch_ms,
                    }),
                    archived: None,
                    source: None,
                    _reservation: Some(fetched.reservation),
                });
            }
            Err(error) => error,
        };
        if error.class() != FailureClass::Expired {
            return Err(error.into());
        }
        self.recover_from_archive(error.into(), name, sent_at_ms, give_up_at)
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
        if self.sinks.is_empty() {
            // Nothing to project: that the archive holds this send is all
            // the record needs, and asking costs no payload in memory.
            let Some(archived) = archive.holds(name, sent_at_ms).await? else {
                return Err(error);
            };
            tracing::info!(reason = %error.message, "payload unobtainable; the archive already holds it");
            return Ok(Obtained {
                payload: ReceivedPayload::AlreadyArchived,
                attempts: 0,
                fetch: None,
                archived: Some(archived),
                source: None,
                _reservation: None,
            });
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
        let (payload, archived) = match archive
            .retrieve(name, sent_at_ms, max_payload_bytes)
            .await?
        {
            None => return Err(error),
            Some(ArchivedCopy::Payload(payload, archived)) => (payload, archived),
            Some(ArchivedCopy::TooLarge(archived)) => {
                let mut too_large = RecordFailure::from_error(&FetchError::TooLarge {
                    limit: max_payload_bytes,
                    url: archived.key,
                });
                too_large.message.push_str("; archived, not projected");
                return Err(too_large);
            }
        };
        reservation.shrink_to(self.fetcher.holding_cost().held_whole(payload.len() as u64));
        tracing::info!(reason = %error.message, "payload unobtainable; continuing from the archived copy");
        Ok(Obtained {
            payload: ReceivedPayload::Held(payload),
            attempts: 0,
            fetch: None,
            archived: Some(archived),
            source: None,
            _reservation: Some(reservation),
        })
    }
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

pub(crate) async fn inspect_off_the_workers(
    payload: &Bytes,
) -> Result<PayloadSummary, RecordFailure> {
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The URL was fetched because the role's read failed. When that read may
/// succeed later (S3 was down) but the URL failed for good (its host not
/// allowed, say), the record fails as the read did: the bucket is still the
/// way in, so it is retried, not given up.
fn prefer_a_retry(
    url_failed: RecordFailure,
    role_read_failed: Option<crate::fetch::source_bucket::SourceReadError>,
) -> RecordFailure {
    match role_read_failed {
        Some(read) if read.retry() == Retry::Transient && url_failed.retry == Retry::Permanent => {
            let mut failure = RecordFailure::from_error(&read);
            failure.message = format!(
                "{}; the URL failed too: {}",
                failure.message, url_failed.message
            );
            failure
        }
        _ => url_failed,
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
        );
        async {
            match self.deliver(record, give_up_at).await {
                Ok(outcome) => outcome,
                Err(failure) => {
                    tracing::warn!(
                        class = %failure.class,
                        retry = %failure.retry,
                        error = %failure.message,
                        "{}",
                        crate::log_events::RECORD_FAILED
                    );
                    Outcome::Failed(failure)
                }
            }
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_read_that_may_succeed_later_outweighs_a_url_that_never_will() {
        use crate::fetch::source_bucket::{SourceObject, SourceReadError};
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
        let kept = prefer_a_retry(refused_url.clone(), Some(s3_down));
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
        assert_eq!(
            prefer_a_retry(refused_url.clone(), Some(denied)),
            refused_url
        );
        assert_eq!(prefer_a_retry(refused_url.clone(), None), refused_url);
    }

    #[test]
    fn url_expiry_counts_from_the_send_time() {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64;
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
