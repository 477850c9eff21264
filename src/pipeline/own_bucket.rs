//! Own-bucket mode in the pipeline: a payload in Terra's bucket is read with
//! the function's role, and archived by a copy inside S3.
//!
//! When the role's read fails, the pre-signed URL is the other way in:
//!
//! | The role's read | URL still lives | URL has died |
//! |---|---|---|
//! | the object is missing | an earlier archived copy, else `fetch`/permanent | the same |
//! | refused (permission, key policy; a bucket whose region S3 would not name) | the URL is fetched, as any other | `fetch`/permanent: on Kafka the record is quarantined; on SQS it reaches the dead-letter queue, and `terra-sink replay dead-letters` completes it from the bucket later |
//! | unavailable, throttled, the object changed or its bytes do not match | the URL is fetched | retried until the invocation's deadline, then `fetch`/transient |
//!
//! A URL on the global endpoint, or naming the wrong region, is read in the
//! region S3 names for the bucket (see `fetch::own_bucket`).

use std::future::Future;

use tokio::time::Instant;

use super::{
    HeldPayload, Obtained, Pipeline, Provenance, archived_not_projected, inspect_off_the_workers,
    log_newer_held, until_stored,
};
use crate::fetch::own_bucket::{SourceBucket, SourceObject, SourceReadError, SourceVersion};
use crate::fetch::{FetchError, RetryDelays};
use crate::outcome::{Classify, FailureClass, FetchTiming, RecordFailure, Retry, Written};
use crate::payload::{IncrementalInspector, PayloadSummary};
use crate::sink::{ArchiveName, inflate};
use crate::wall_clock::now_ms;

/// Read of a payload that is copied, not held: enough for the envelope's
/// `type` and `user`, which Terra sends before `data`.
const ENVELOPE_START_BYTES: u64 = 64 * 1024;

/// What reading a source object came to.
pub(super) enum FromSource {
    Obtained(Box<Obtained>),
    /// The role could not read it, and the URL still lives: fetch that.
    UseTheUrl(SourceReadError),
}

/// One record's read of a source object: what it needs at every step.
struct RoleRead<'a> {
    reader: &'a dyn SourceBucket,
    give_up_at: Instant,
    /// Whether the message's pre-signed URL may still work.
    url_lives: bool,
    started: Instant,
    age_at_fetch_ms: u64,
}

impl RoleRead<'_> {
    /// `read`, retried as [`role_read`] says.
    async fn retried<T, Fut>(
        &self,
        read: impl FnMut() -> Fut,
    ) -> Result<Result<T, SourceReadError>, RecordFailure>
    where
        Fut: Future<Output = Result<T, SourceReadError>>,
    {
        role_read(self.give_up_at, self.url_lives, read).await
    }

    fn timing(&self) -> FetchTiming {
        FetchTiming {
            latency_ms: self.started.elapsed().as_millis() as u64,
            age_at_fetch_ms: self.age_at_fetch_ms,
        }
    }
}

impl Pipeline {
    /// The payload, held, when a store other than a copying archive needs
    /// its bytes; otherwise left in place with what its start says of it.
    /// `url_lives`: whether the message's pre-signed URL may still work.
    pub(super) async fn obtain_from_source(
        &self,
        reader: &dyn SourceBucket,
        object: SourceObject,
        sent_at_ms: u64,
        name: &ArchiveName,
        give_up_at: Instant,
        url_lives: bool,
    ) -> Result<FromSource, RecordFailure> {
        let read = RoleRead {
            reader,
            give_up_at,
            url_lives,
            started: Instant::now(),
            age_at_fetch_ms: now_ms().saturating_sub(sent_at_ms),
        };
        let version = match read.retried(|| reader.version(&object)).await? {
            Ok(version) => version,
            Err(gone) if gone.is_gone() => {
                return self
                    .recover_from_archive(
                        RecordFailure::from_error(&gone),
                        name,
                        sent_at_ms,
                        give_up_at,
                    )
                    .await
                    .map(|obtained| FromSource::Obtained(Box::new(obtained)));
            }
            Err(error) => return unreadable(error, url_lives),
        };
        if version.gzipped {
            return self.inflated_from_source(&read, version).await;
        }
        let archive_copies = self
            .archive
            .as_ref()
            .is_some_and(|archive| archive.server_side_copy().is_some());
        let fits = version.size <= self.fetcher.max_payload_bytes();
        if archive_copies && (self.sinks.is_empty() || !fits) {
            return self.left_for_a_copy(&read, version, fits).await;
        }
        self.held_from_source(&read, version).await
    }

    /// A payload the archive copies in, left where it is once its start has
    /// given its `type`. Terra sends `type` first; a payload that does not is
    /// read whole and checked when it fits the limit, and past it copied
    /// without its `terra-type` (archived all the same, see docs/own-bucket.md).
    async fn left_for_a_copy(
        &self,
        read: &RoleRead<'_>,
        version: SourceVersion,
        fits: bool,
    ) -> Result<FromSource, RecordFailure> {
        // A small object is read whole: S3 refuses a range of an empty one
        // (416), which would fail as transient for ever.
        let first_bytes = (version.size > ENVELOPE_START_BYTES).then_some(ENVELOPE_START_BYTES);
        let start = match read
            .retried(|| read.reader.read(&version, first_bytes))
            .await?
        {
            Ok(start) => start,
            Err(error) => return unreadable(error, read.url_lives),
        };
        let summary = summary_of_start(&start, version.size).await?;
        let type_unseen = summary.event_type.is_empty();
        if type_unseen && fits {
            tracing::debug!("no type in the payload's first bytes; reading it whole");
            return self.held_from_source(read, version).await;
        }
        if type_unseen {
            tracing::warn!(
                "no type in the first bytes of a payload over the limit; archived without terra-type"
            );
        }
        Ok(FromSource::Obtained(Box::new(
            Obtained::LeftInSourceBucket {
                version,
                summary,
                fetch: read.timing(),
            },
        )))
    }

    /// The whole object, held, within the payload limit and the budget.
    async fn held_from_source(
        &self,
        read: &RoleRead<'_>,
        version: SourceVersion,
    ) -> Result<FromSource, RecordFailure> {
        let max_payload_bytes = self.fetcher.max_payload_bytes();
        if version.size > max_payload_bytes {
            return Err(RecordFailure::from_error(&FetchError::TooLarge {
                limit: max_payload_bytes,
                url: version.object.to_string(),
            }));
        }
        let Ok(reservation) = tokio::time::timeout_at(
            read.give_up_at,
            self.fetcher.reserve_for_payload_of(version.size),
        )
        .await
        else {
            return Err(deadline_came());
        };
        let bytes = match read.retried(|| read.reader.read(&version, None)).await? {
            Ok(bytes) => bytes,
            Err(error) => return unreadable(error, read.url_lives),
        };
        Ok(FromSource::Obtained(Box::new(Obtained::Held(
            HeldPayload {
                bytes,
                provenance: Provenance::SourceBucket(version),
                attempts: 1,
                fetch: Some(read.timing()),
                _reservation: reservation,
            },
        ))))
    }

    /// An object stored with `Content-Encoding: gzip`: read whole and
    /// inflated, as an HTTP download of it would be, within the same limit
    /// (on what it inflates to), then stored like a download: a copy would
    /// archive the compressed bytes as if they were the payload.
    async fn inflated_from_source(
        &self,
        read: &RoleRead<'_>,
        version: SourceVersion,
    ) -> Result<FromSource, RecordFailure> {
        let max_payload_bytes = self.fetcher.max_payload_bytes();
        let too_large = || {
            RecordFailure::from_error(&FetchError::TooLarge {
                limit: max_payload_bytes,
                url: version.object.to_string(),
            })
        };
        if version.size > max_payload_bytes {
            return Err(too_large());
        }
        // What it inflates to is known only once inflated: room for the
        // largest payload accepted until then.
        let Ok(mut reservation) =
            tokio::time::timeout_at(read.give_up_at, self.fetcher.reserve_for_any_payload()).await
        else {
            return Err(deadline_came());
        };
        let stored = match read.retried(|| read.reader.read(&version, None)).await? {
            Ok(stored) => stored,
            Err(error) => return unreadable(error, read.url_lives),
        };
        let bytes = match inflate(stored, max_payload_bytes).await {
            Ok(Some(payload)) => payload,
            Ok(None) => return Err(too_large()),
            Err(problem) => {
                return Err(RecordFailure::new(
                    FailureClass::Invalid,
                    Retry::Permanent,
                    format!("{}: Content-Encoding gzip, but {problem}", version.object),
                ));
            }
        };
        reservation.shrink_to(self.fetcher.holding_cost().held_whole(bytes.len() as u64));
        Ok(FromSource::Obtained(Box::new(Obtained::Held(
            HeldPayload {
                bytes,
                provenance: Provenance::Downloaded,
                attempts: 1,
                fetch: Some(read.timing()),
                _reservation: reservation,
            },
        ))))
    }

    /// Archives a payload left in its source bucket by a copy inside S3. When
    /// other stores are configured it was too large for them: archived, the
    /// record still fails for them.
    pub(super) async fn copy_only(
        &self,
        name: &ArchiveName,
        sent_at_ms: u64,
        version: SourceVersion,
        summary: PayloadSummary,
        give_up_at: Instant,
    ) -> Result<Written, RecordFailure> {
        let Some(copier) = self
            .archive
            .as_deref()
            .and_then(|archive| archive.server_side_copy())
        else {
            return Err(RecordFailure::new(
                FailureClass::Internal,
                Retry::Transient,
                "a payload left in its source bucket without an archive to copy it in",
            ));
        };
        let stored = until_stored(give_up_at, || {
            copier.copy_in(name, sent_at_ms, &version, &summary)
        })
        .await?;
        log_newer_held(&stored);
        if !self.sinks.is_empty() {
            return Err(archived_not_projected(
                self.fetcher.max_payload_bytes(),
                version.object.to_string(),
            ));
        }
        self.erase_if_leaving(&summary, name, give_up_at, Vec::new)
            .await?;
        tracing::debug!(
            event_type = %summary.event_type,
            bytes = version.size,
            "payload copied into the archive"
        );
        Ok(Written {
            event_type: summary.event_type,
            payload_bytes: version.size,
            stale_items: 0,
            recovered_from_archive: false,
            fetch: None,
            duration_ms: 0,
        })
    }
}

/// A role read, retried while it fails transiently, the URL is dead and the
/// invocation has time. While the URL lives the first failure is returned at
/// once: the URL is tried instead. `Err` only when the deadline came first.
async fn role_read<T, Fut>(
    give_up_at: Instant,
    url_lives: bool,
    mut read: impl FnMut() -> Fut,
) -> Result<Result<T, SourceReadError>, RecordFailure>
where
    Fut: Future<Output = Result<T, SourceReadError>>,
{
    let mut delays = RetryDelays::new();
    loop {
        let error = match tokio::time::timeout_at(give_up_at, read()).await {
            Err(_elapsed) => return Err(deadline_came()),
            Ok(Ok(read)) => return Ok(Ok(read)),
            Ok(Err(error)) => error,
        };
        let delay = delays.next_delay();
        if url_lives || error.retry() == Retry::Permanent || Instant::now() + delay >= give_up_at {
            return Ok(Err(error));
        }
        tracing::debug!(%error, delay_ms = delay.as_millis() as u64, "retrying the source bucket read");
        tokio::time::sleep(delay).await;
    }
}

/// The role could not read the object (it is there, or was): the URL is
/// tried while it lives, and the record fails with the read's error once
/// it has died.
fn unreadable(error: SourceReadError, url_lives: bool) -> Result<FromSource, RecordFailure> {
    if url_lives {
        Ok(FromSource::UseTheUrl(error))
    } else {
        Err(RecordFailure::from_error(&error))
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use serde_json::json;
    use url::Url;

    use super::ENVELOPE_START_BYTES;
    use crate::batch::RecordProcessor;
    use crate::fakes::{Journal, MemoryArchive, MemorySink, MemorySourceBucket, SourceFailure};
    use crate::fetch::own_bucket::SourceBuckets;
    use crate::fetch::{FetchSettings, Fetcher, UrlPolicy};
    use crate::message::{self, TerraMessage};
    use crate::outcome::{FailureClass, Outcome, Retry};
    use crate::pipeline::Pipeline;
    use crate::record::InboundRecord;
    use crate::sink::{Archive, ArchiveName, Sink};

    const KEY: &str = "payloads/u-1/activity.json";
    /// Terra's URL shape, its signature long expired.
    const URL: &str = "https://terra-drop.s3.eu-west-2.amazonaws.com/payloads/u-1/activity.json\
                       ?X-Amz-Date=20261130T060000Z&X-Amz-Expires=600&X-Amz-Signature=0ff1ce";

    struct Bed {
        journal: Journal,
        source: MemorySourceBucket,
        archive: Arc<MemoryArchive>,
        sink: Arc<MemorySink>,
        pipeline: Pipeline,
    }

    /// A source bucket and an archive that copies from it or not, with or
    /// without a table, payloads up to `max_payload_bytes`.
    fn bed(copying: bool, table: bool, max_payload_bytes: u64) -> Bed {
        let journal = Journal::default();
        let source = MemorySourceBucket::new(&journal);
        let archive = Arc::new(if copying {
            MemoryArchive::copying_from(&journal, &source)
        } else {
            MemoryArchive::new(&journal)
        });
        let sink = Arc::new(MemorySink::new(&journal));
        let fetcher = Fetcher::new(
            UrlPolicy::default(),
            FetchSettings {
                max_payload_bytes,
                ..FetchSettings::default()
            },
        )
        .expect("client builds");
        let sinks = if table {
            vec![Arc::clone(&sink) as Arc<dyn Sink>]
        } else {
            Vec::new()
        };
        let buckets = SourceBuckets::new(vec!["terra-drop".into()], None).expect("named");
        let pipeline = Pipeline::new(
            fetcher,
            Some(Arc::clone(&archive) as Arc<dyn Archive>),
            sinks,
        )
        .reading_source_buckets(buckets, Arc::new(source.clone()));
        Bed {
            journal,
            source,
            archive,
            sink,
            pipeline,
        }
    }

    /// An activity of `samples` heart-rate samples, in Terra's field order.
    fn activity(samples: usize) -> Vec<u8> {
        let samples: Vec<_> = (0..samples)
            .map(|i| json!({"timestamp": format!("2026-11-30T07:{:02}:00Z", i % 60), "bpm": 120}))
            .collect();
        format!(
            r#"{{"type":"activity","user":{{"user_id":"u-1","provider":"GARMIN"}},"data":[{{"metadata":{{"summary_id":"run-1","start_time":"2026-11-30T07:00:00Z"}},"heart_rate_data":{{"detailed":{{"hr_samples":{}}}}}}}]}}"#,
            serde_json::to_string(&samples).expect("json")
        )
        .into_bytes()
    }

    /// Sent twenty minutes ago: the URL itself has been dead ten minutes.
    fn record() -> (InboundRecord, ArchiveName) {
        let sent_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64
            - 20 * 60 * 1000;
        let body = json!({"type": "s3_payload", "url": URL, "expires_in": 600}).to_string();
        let TerraMessage::Payload(pointer) = message::decode(body.as_bytes()).expect("pointer")
        else {
            panic!("not a payload");
        };
        let name = ArchiveName::for_message(&pointer, sent_at_ms);
        let record = InboundRecord {
            log_id: "m-1".into(),
            sent_at_ms,
            body: Bytes::from(body),
        };
        (record, name)
    }

    async fn process(bed: &Bed, record: &InboundRecord) -> Outcome {
        let give_up_at = tokio::time::Instant::now() + Duration::from_secs(5);
        bed.pipeline.process(record, give_up_at).await
    }

    fn journal(bed: &Bed) -> Vec<String> {
        bed.journal.lock().expect("not poisoned").clone()
    }

    #[test]
    fn the_url_is_terras_shape_and_points_into_the_bucket() {
        let buckets = SourceBuckets::new(vec!["terra-drop".into()], None).expect("named");
        let located = buckets
            .locate(&Url::parse(URL).expect("url"))
            .expect("in the source bucket");
        assert_eq!(located.key, KEY);
    }

    /// Once the URL has died there is no other way in: a read the role is
    /// refused fails for good (a Kafka record is quarantined, not left to
    /// stall its partition), while an outage is retried within the
    /// invocation.
    #[tokio::test]
    async fn once_the_url_has_died_a_refusal_is_for_good_and_an_outage_is_waited_out() {
        let bed = bed(true, true, 1024 * 1024);
        bed.source.put(KEY, &activity(3));
        let (record, name) = record();

        bed.source.fail_next(&[SourceFailure::Refused]);
        let outcome = process(&bed, &record).await;
        let failure = outcome.failure().expect("refused");
        assert_eq!(
            (failure.class, failure.retry, failure.is_poison()),
            (FailureClass::Fetch, Retry::Permanent, true),
            "{failure:?}"
        );
        assert_eq!(journal(&bed), [format!("source version {KEY}")], "one look");

        bed.journal.lock().expect("not poisoned").clear();
        bed.source
            .fail_next(&[SourceFailure::Unavailable, SourceFailure::Unavailable]);
        let outcome = process(&bed, &record).await;
        assert!(matches!(outcome, Outcome::Written(_)), "{outcome:?}");
        assert!(bed.archive.object(&name).is_some());
        assert_eq!(
            journal(&bed)
                .iter()
                .filter(|call| call.starts_with("source version"))
                .count(),
            3
        );
    }

    /// With a table the payload is read whole; the archive stores what was
    /// read, or copies it in where it can.
    #[tokio::test]
    async fn an_expired_url_into_the_source_bucket_is_read_for_both_stores() {
        for (copying, archived_by) in [(false, "archive"), (true, "copy")] {
            let bed = bed(copying, true, 1024 * 1024);
            let payload = activity(10);
            bed.source.put(KEY, &payload);
            let (record, name) = record();

            let outcome = process(&bed, &record).await;

            assert!(matches!(outcome, Outcome::Written(_)), "{outcome:?}");
            assert_eq!(bed.archive.object(&name).as_deref(), Some(&payload[..]));
            let written = bed.sink.written(&name).expect("projected");
            assert_eq!(&written.payload[..], &payload[..]);
            assert_eq!(
                journal(&bed),
                [
                    format!("source version {KEY}"),
                    format!("source read {KEY}"),
                    format!("{archived_by} {}", name.as_str()),
                    format!("sink {}", name.as_str()),
                ]
            );
        }
    }

    #[tokio::test]
    async fn a_copying_archive_alone_reads_only_the_envelopes_start() {
        let bed = bed(true, false, 64 * 1024);
        let payload = activity(20_000);
        assert!(payload.len() as u64 > 4 * ENVELOPE_START_BYTES);
        bed.source.put(KEY, &payload);
        let (record, name) = record();

        let outcome = process(&bed, &record).await;

        let Outcome::Written(written) = outcome else {
            panic!("not written: {outcome:?}");
        };
        assert_eq!(written.event_type, "activity");
        assert_eq!(written.payload_bytes, payload.len() as u64);
        assert_eq!(bed.archive.object(&name).as_deref(), Some(&payload[..]));
        assert_eq!(
            journal(&bed),
            [
                format!("source version {KEY}"),
                format!("source read {KEY} first {ENVELOPE_START_BYTES}"),
                format!("copy {}", name.as_str()),
            ]
        );
    }

    #[tokio::test]
    async fn too_large_for_the_table_is_archived_by_copy_and_fails_for_good() {
        let bed = bed(true, true, 64 * 1024);
        let payload = activity(20_000);
        bed.source.put(KEY, &payload);
        let (record, name) = record();

        let Outcome::Failed(failure) = process(&bed, &record).await else {
            panic!("a payload over the limit cannot be projected");
        };
        assert_eq!(
            (failure.class, failure.retry),
            (FailureClass::Fetch, Retry::Permanent)
        );
        assert!(failure.message.contains("archived"), "{}", failure.message);
        assert_eq!(bed.archive.object(&name).as_deref(), Some(&payload[..]));
        assert_eq!(bed.sink.len(), 0);
    }

    #[tokio::test]
    async fn a_source_object_gone_is_completed_from_an_earlier_archived_copy() {
        let bed = bed(false, true, 1024 * 1024);
        let payload = activity(10);
        let (record, name) = record();

        let Outcome::Failed(failure) = process(&bed, &record).await else {
            panic!("nothing to read and nothing archived");
        };
        assert_eq!(
            (failure.class, failure.retry, failure.is_poison()),
            (FailureClass::Fetch, Retry::Permanent, true)
        );

        bed.archive.hold(&name, record.sent_at_ms, &payload);
        let Outcome::Written(written) = process(&bed, &record).await else {
            panic!("the archived copy stands in");
        };
        assert!(written.recovered_from_archive);
        assert_eq!(
            &bed.sink.written(&name).expect("projected").payload[..],
            &payload[..]
        );
    }

    /// An object copied in past the limit whose source is gone since (by
    /// lifecycle, or replayed a week later): read back, it would hold the
    /// whole object in memory and put a payload over the limit in the table.
    /// It is not read; the record fails for good, archived.
    #[tokio::test]
    async fn an_archived_copy_over_the_limit_is_not_read_back() {
        let bed = bed(true, true, 1024);
        let payload = activity(100);
        assert!(payload.len() > 1024);
        let (record, name) = record();
        bed.archive.hold(&name, record.sent_at_ms, &payload);

        let Outcome::Failed(failure) = process(&bed, &record).await else {
            panic!("too large to read back");
        };
        assert_eq!(
            (failure.class, failure.retry),
            (FailureClass::Fetch, Retry::Permanent),
            "{failure:?}"
        );
        assert!(
            failure.message.contains("archived, not projected"),
            "{}",
            failure.message
        );
        assert!(bed.sink.written(&name).is_none());
    }

    /// An object stored with `Content-Encoding: gzip` is the payload
    /// compressed: inflated as an HTTP download would be, and stored, not
    /// copied (the copy would archive the compressed bytes as the payload).
    #[tokio::test]
    async fn a_gzip_encoded_object_is_inflated_not_copied() {
        for table in [false, true] {
            let bed = bed(true, table, 1024 * 1024);
            let payload = activity(50);
            bed.source.put_gzipped(KEY, &payload);
            let (record, name) = record();

            let outcome = process(&bed, &record).await;

            assert!(matches!(outcome, Outcome::Written(_)), "{outcome:?}");
            assert_eq!(bed.archive.object(&name).as_deref(), Some(&payload[..]));
            assert!(
                journal(&bed).iter().all(|call| !call.starts_with("copy ")),
                "{:?}",
                journal(&bed)
            );
            if table {
                assert_eq!(
                    &bed.sink.written(&name).expect("projected").payload[..],
                    &payload[..]
                );
            }
        }
    }

    #[tokio::test]
    async fn a_gzip_encoded_object_over_the_limit_once_inflated_fails_for_good() {
        let bed = bed(true, false, 2048);
        let payload = activity(200);
        assert!(payload.len() > 2048);
        bed.source.put_gzipped(KEY, &payload);
        let (record, name) = record();
        let failure = process(&bed, &record).await;
        let failure = failure.failure().expect("too large");
        assert_eq!(
            (failure.class, failure.retry),
            (FailureClass::Fetch, Retry::Permanent)
        );
        assert!(bed.archive.object(&name).is_none());
    }

    /// Terra sends `type` first; a payload that puts it after the first
    /// 64 KiB (and fits the limit) is read whole and checked, and copied
    /// with its type, not archived with an empty `terra-type`.
    #[tokio::test]
    async fn a_payload_whose_type_comes_late_is_read_whole_before_its_copy() {
        let bed = bed(true, false, 1024 * 1024);
        let in_terra_order: serde_json::Value =
            serde_json::from_slice(&activity(20_000)).expect("JSON");
        let payload = format!(
            r#"{{"data":{},"type":"activity","user":{}}}"#,
            in_terra_order["data"], in_terra_order["user"]
        )
        .into_bytes();
        assert!(payload.len() as u64 > 4 * ENVELOPE_START_BYTES);
        bed.source.put(KEY, &payload);
        let (record, name) = record();

        let Outcome::Written(written) = process(&bed, &record).await else {
            panic!("written");
        };
        assert_eq!(written.event_type, "activity");
        assert_eq!(bed.archive.object(&name).as_deref(), Some(&payload[..]));
        assert_eq!(
            journal(&bed),
            [
                format!("source version {KEY}"),
                format!("source read {KEY} first {ENVELOPE_START_BYTES}"),
                format!("source read {KEY}"),
                format!("copy {}", name.as_str()),
            ]
        );
    }
}
