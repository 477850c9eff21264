//! What became of one record, and how a failure is classified.
//!
//! Classification is kept apart from the calls that fail: each error type says
//! which [`FailureClass`] it belongs to and whether retrying could ever help, and
//! every failure reaching the batch response carries both.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Why a record was not written. The names are the metric and log vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The pre-signed URL's lifetime was over before (or while) it was fetched.
    Expired,
    /// Downloading the payload failed (network, timeouts, HTTP errors, size).
    Fetch,
    /// The URL policy refused the URL or the address it resolved to.
    Refused,
    /// The queue message or the payload is not what Terra sends.
    Invalid,
    /// Writing to a sink failed.
    Sink,
    /// Not attempted in this invocation: the deadline was near, or an earlier
    /// message of the same FIFO group failed.
    Deferred,
    /// A bug: processing the record panicked.
    Internal,
}

impl FailureClass {
    pub const ALL: [FailureClass; 7] = [
        FailureClass::Expired,
        FailureClass::Fetch,
        FailureClass::Refused,
        FailureClass::Invalid,
        FailureClass::Sink,
        FailureClass::Deferred,
        FailureClass::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Expired => "expired",
            FailureClass::Fetch => "fetch",
            FailureClass::Refused => "refused",
            FailureClass::Invalid => "invalid",
            FailureClass::Sink => "sink",
            FailureClass::Deferred => "deferred",
            FailureClass::Internal => "internal",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether delivering the same message again could succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Retry {
    Transient,
    Permanent,
}

impl fmt::Display for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Retry::Transient => "transient",
            Retry::Permanent => "permanent",
        })
    }
}

/// Implemented by every error a record can fail with.
pub trait Classify: fmt::Display {
    fn class(&self) -> FailureClass;
    fn retry(&self) -> Retry;
    /// Whether the record itself is the cause, rather than the deployment
    /// (a missing permission or table) or a passing fault. Every class but
    /// `sink` is about the record; a sink says so when a store refused the
    /// record's content.
    fn record_at_fault(&self) -> bool {
        self.class() != FailureClass::Sink
    }
}

/// A classified record failure. `message` never holds a URL query string or
/// payload content: the error types it is built from guarantee that.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class} ({retry}): {message}")]
pub struct RecordFailure {
    pub class: FailureClass,
    pub retry: Retry,
    pub message: String,
    /// See [`Classify::record_at_fault`].
    pub record_at_fault: bool,
    /// Terra's type, when the payload had been read before the failure.
    pub event_type: Option<String>,
}

impl RecordFailure {
    /// The `record failed` line, logged in the span of the record it is
    /// about.
    pub fn log(&self) {
        tracing::warn!(
            class = %self.class,
            retry = %self.retry,
            error = %self.message,
            "{}",
            crate::log_events::RECORD_FAILED
        );
    }

    pub fn new(class: FailureClass, retry: Retry, message: impl Into<String>) -> Self {
        Self {
            class,
            retry,
            message: message.into(),
            record_at_fault: class != FailureClass::Sink,
            event_type: None,
        }
    }

    /// The failure of a record whose payload is of `event_type`.
    pub fn of_type(self, event_type: &str) -> Self {
        Self {
            event_type: Some(event_type.to_owned()),
            ..self
        }
    }

    pub fn from_error<E: Classify + ?Sized>(error: &E) -> Self {
        Self {
            record_at_fault: error.record_at_fault(),
            ..Self::new(error.class(), error.retry(), error.to_string())
        }
    }

    /// The record itself can never succeed: expired, malformed, refused, too
    /// large, or refused by every configured store (too large for DynamoDB
    /// with no archive to point to). Any other permanent sink failure (access
    /// denied, missing table) is a fault of the deployment, not of the record,
    /// so it is not poison: it must block and alarm until fixed rather than
    /// set records aside.
    pub fn is_poison(&self) -> bool {
        self.retry == Retry::Permanent && self.record_at_fault
    }
}

/// The end state of one record in one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The payload is durably written to every configured sink.
    Written(Written),
    /// A Terra healthcheck: acknowledged, nothing to write.
    Healthcheck,
    /// Not written; the record must be retried, dead-lettered (SQS) or quarantined (Kafka).
    Failed(RecordFailure),
    /// Not written, and never could be: set aside on the quarantine queue
    /// with its reason, so it counts as handled.
    Quarantined(RecordFailure),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub event_type: String,
    pub payload_bytes: u64,
    /// Items a sink skipped because it already holds a newer version.
    pub stale_items: usize,
    /// The URL had expired and the payload came from the S3 archive.
    pub recovered_from_archive: bool,
    /// How the download went; `None` when the payload came from the archive.
    pub fetch: Option<FetchTiming>,
    /// From the start of the record's processing to its last write.
    pub duration_ms: u64,
}

/// The download of one payload, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchTiming {
    /// From the first request to the last byte, retries included.
    pub latency_ms: u64,
    /// How old the message was when the download started: the margin left
    /// before its URL expires is `expires_in` minus this.
    pub age_at_fetch_ms: u64,
}

impl Outcome {
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed(_))
    }

    pub fn failure(&self) -> Option<&RecordFailure> {
        match self {
            Outcome::Failed(failure) => Some(failure),
            _ => None,
        }
    }
}

impl<E: Classify> From<E> for RecordFailure {
    fn from(error: E) -> Self {
        RecordFailure::from_error(&error)
    }
}

/// Outcomes for the tests of the modules that turn outcomes into responses.
/// The outcome of every record, in the order the records arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchReport {
    pub outcomes: Vec<Outcome>,
}

/// Counts by outcome, for the per-batch summary line and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchSummary {
    pub received: usize,
    pub written: usize,
    pub healthchecks: usize,
    pub failed: usize,
    pub failed_permanent: usize,
    pub failed_by_class: BTreeMap<FailureClass, usize>,
    /// Poison records set aside on the quarantine queue (Kafka only).
    pub quarantined: usize,
    pub bytes_written: u64,
    /// Items a sink skipped because a newer version was already stored.
    pub stale_items: usize,
    /// Records completed from the archive because their URL had expired.
    pub recovered_from_archive: usize,
}

impl BatchReport {
    pub fn summary(&self) -> BatchSummary {
        let mut summary = BatchSummary {
            received: self.outcomes.len(),
            ..BatchSummary::default()
        };
        for outcome in &self.outcomes {
            match outcome {
                Outcome::Written(written) => {
                    summary.written += 1;
                    summary.bytes_written += written.payload_bytes;
                    summary.stale_items += written.stale_items;
                    summary.recovered_from_archive += usize::from(written.recovered_from_archive);
                }
                Outcome::Healthcheck => summary.healthchecks += 1,
                Outcome::Failed(failure) => {
                    summary.failed += 1;
                    if failure.retry == Retry::Permanent {
                        summary.failed_permanent += 1;
                    }
                    *summary.failed_by_class.entry(failure.class).or_default() += 1;
                }
                Outcome::Quarantined(_) => summary.quarantined += 1,
            }
        }
        summary
    }

    /// The one summary line per invocation, once the source has settled every
    /// outcome (quarantine included).
    pub fn log_summary(&self) {
        let summary = self.summary();
        let failed_by_class = serde_json::to_string(&summary.failed_by_class).unwrap_or_default();
        tracing::info!(
            received = summary.received,
            written = summary.written,
            healthchecks = summary.healthchecks,
            failed = summary.failed,
            failed_permanent = summary.failed_permanent,
            failed_by_class = %failed_by_class,
            bytes_written = summary.bytes_written,
            stale_items = summary.stale_items,
            recovered_from_archive = summary.recovered_from_archive,
            quarantined = summary.quarantined,
            "{}",
            crate::log_events::BATCH_DONE
        );
    }
}

#[cfg(test)]
pub(crate) mod examples {
    use super::*;

    pub(crate) fn written() -> Outcome {
        Outcome::Written(Written {
            event_type: "activity".into(),
            payload_bytes: 1,
            ..Written::default()
        })
    }

    /// A transient fetch failure.
    pub(crate) fn failed() -> Outcome {
        Outcome::Failed(RecordFailure::new(
            FailureClass::Fetch,
            Retry::Transient,
            "503 Service Unavailable",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_permanent_faults_of_the_record_are_poison() {
        let failure = |class, retry| RecordFailure::new(class, retry, "x");
        for class in [
            FailureClass::Expired,
            FailureClass::Fetch,
            FailureClass::Refused,
            FailureClass::Invalid,
        ] {
            assert!(failure(class, Retry::Permanent).is_poison(), "{class}");
            assert!(!failure(class, Retry::Transient).is_poison(), "{class}");
        }
        assert!(!failure(FailureClass::Sink, Retry::Permanent).is_poison());
        assert!(!failure(FailureClass::Deferred, Retry::Transient).is_poison());
        let refused_by_store = crate::sink::SinkError {
            sink: "dynamodb",
            retry: Retry::Permanent,
            message: "record over 400 KB even compressed".into(),
            record_at_fault: true,
        };
        assert!(RecordFailure::from_error(&refused_by_store).is_poison());
        let denied = crate::sink::SinkError {
            record_at_fault: false,
            ..refused_by_store
        };
        assert!(!RecordFailure::from_error(&denied).is_poison());
    }
}
