//! Running one invocation's batch: bounded concurrency, FIFO ordering, the
//! deadline, panic isolation, and one outcome per record, in input order.
//!
//! A FIFO group runs in order and stops at its first failure that may yet
//! succeed; the rest of the group is `deferred`. A permanent failure does
//! not stop it (see `run_lane`).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;
use tracing::Instrument;

use crate::outcome::{BatchReport, FailureClass, Outcome, RecordFailure, Retry};
use crate::record::{InboundRecord, SourceItem};

/// Does the work for one record. The pipeline implements it; tests use fakes.
#[async_trait]
pub trait RecordProcessor: Send + Sync + 'static {
    /// Processes one record, giving up by `give_up_at`.
    async fn process(&self, record: &InboundRecord, give_up_at: Instant) -> Outcome;
}

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Records in flight at once (`TERRA_FETCH_CONCURRENCY`).
    pub concurrency: usize,
    /// No record starts at or after this instant, and none runs past it.
    pub cutoff: Instant,
}

/// A run of records that must go in order: one FIFO group, or a single
/// unordered record.
struct Lane {
    indexes: Vec<usize>,
    items: Vec<SourceItem>,
}

pub async fn run<P: RecordProcessor>(
    processor: Arc<P>,
    items: Vec<SourceItem>,
    limits: BatchLimits,
) -> BatchReport {
    let total = items.len();
    let lanes = into_lanes(items);
    let mut outcomes: Vec<Option<Outcome>> = vec![None; total];
    // The invocation's span, parent of every record's: its request and trace
    // ids are on each line about a record.
    let invocation = tracing::Span::current();
    let mut finished = futures::stream::iter(lanes.into_iter().map(|lane| {
        let processor = Arc::clone(&processor);
        let indexes = lane.indexes.clone();
        // Spawned so that CPU work (JSON validation, compression) spreads over
        // all cores; panics are caught per record inside the lane.
        let task =
            tokio::spawn(run_lane(processor, lane, limits.cutoff).instrument(invocation.clone()));
        async move { (indexes, task.await) }
    }))
    .buffer_unordered(limits.concurrency.max(1));
    while let Some((indexes, joined)) = finished.next().await {
        match joined {
            Ok(lane_outcomes) => {
                for (index, outcome) in indexes.into_iter().zip(lane_outcomes) {
                    outcomes[index] = Some(outcome);
                }
            }
            Err(join_error) => {
                for index in indexes {
                    outcomes[index] = Some(internal_failure(&format!(
                        "record task failed: {join_error}"
                    )));
                }
            }
        }
    }
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| internal_failure("record was never scheduled")))
        .collect();
    BatchReport { outcomes }
}

fn into_lanes(items: Vec<SourceItem>) -> Vec<Lane> {
    let mut lanes: Vec<Lane> = Vec::with_capacity(items.len());
    let mut lane_of_group: HashMap<String, usize> = HashMap::new();
    for (index, item) in items.into_iter().enumerate() {
        let existing = item
            .ordering_group
            .as_ref()
            .and_then(|group| lane_of_group.get(group).copied());
        match existing {
            Some(lane) => {
                lanes[lane].indexes.push(index);
                lanes[lane].items.push(item);
            }
            None => {
                if let Some(group) = &item.ordering_group {
                    lane_of_group.insert(group.clone(), lanes.len());
                }
                lanes.push(Lane {
                    indexes: vec![index],
                    items: vec![item],
                });
            }
        }
    }
    lanes
}

async fn run_lane<P: RecordProcessor>(
    processor: Arc<P>,
    lane: Lane,
    cutoff: Instant,
) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(lane.items.len());
    let mut blocked_by: Option<String> = None;
    for item in lane.items {
        // The processor logs its own failures, with the record's context;
        // failures decided here are logged here.
        let outcome = match (&blocked_by, &item.record) {
            (Some(earlier), _) => log_failure(
                &item,
                deferred(format!(
                    "not started: earlier message {earlier} of its FIFO group failed"
                )),
            ),
            (None, _) if Instant::now() >= cutoff => log_failure(
                &item,
                deferred("not started: the invocation deadline is near".to_owned()),
            ),
            (None, Err(failure)) => log_failure(&item, Outcome::Failed(failure.clone())),
            (None, Ok(record)) => process_guarded(&*processor, &item, record, cutoff).await,
        };
        // Only a failure that may yet succeed holds its group: a permanent
        // one never will, so nothing behind it can be written out of order
        // with it, and holding the group would let their URLs die.
        let may_yet_succeed = outcome
            .failure()
            .is_some_and(|failure| failure.retry == Retry::Transient);
        if may_yet_succeed && item.ordering_group.is_some() {
            blocked_by.get_or_insert(item.log_id);
        }
        outcomes.push(outcome);
    }
    outcomes
}

async fn process_guarded<P: RecordProcessor>(
    processor: &P,
    item: &SourceItem,
    record: &InboundRecord,
    cutoff: Instant,
) -> Outcome {
    let work = AssertUnwindSafe(processor.process(record, cutoff)).catch_unwind();
    match tokio::time::timeout_at(cutoff, work).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_owned());
            log_failure(
                item,
                internal_failure(&format!("processing panicked: {what}")),
            )
        }
        Err(_elapsed) => log_failure(
            item,
            deferred("stopped: the invocation deadline is near".to_owned()),
        ),
    }
}

/// Logs a failure decided here, outside the processor, in a record span
/// of its own with the fields the processor's record span has: its id and,
/// when its message names one, Terra's `payload_reference`, so that the
/// line is found with the record's others, and traced.
fn log_failure(item: &SourceItem, outcome: Outcome) -> Outcome {
    if let Some(failure) = outcome.failure() {
        let payload_reference = item
            .record
            .as_ref()
            .ok()
            .and_then(|record| crate::message::payload_reference(&record.body));
        let span = tracing::info_span!(
            "record",
            id = %item.log_id,
            payload_reference,
            outcome = "failed",
            class = %failure.class,
            "otel.status_code" = "error",
        );
        span.in_scope(|| failure.log());
    }
    outcome
}

fn deferred(why: String) -> Outcome {
    Outcome::Failed(RecordFailure::new(
        FailureClass::Deferred,
        Retry::Transient,
        why,
    ))
}

fn internal_failure(why: &str) -> Outcome {
    Outcome::Failed(RecordFailure::new(
        FailureClass::Internal,
        Retry::Transient,
        why,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Written;
    use bytes::Bytes;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Behaviour is chosen by the record body: "ok", "fail" (transient),
    /// "invalid" (permanent), "panic", "slow".
    #[derive(Default)]
    struct Scripted {
        started: Mutex<Vec<String>>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
    }

    #[async_trait]
    impl RecordProcessor for Scripted {
        async fn process(&self, record: &InboundRecord, _give_up_at: Instant) -> Outcome {
            self.started
                .lock()
                .expect("not poisoned")
                .push(record.log_id.clone());
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let outcome = match &record.body[..] {
                b"ok" => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Outcome::Written(Written {
                        event_type: "daily".into(),
                        payload_bytes: 2,
                        ..Written::default()
                    })
                }
                b"fail" => Outcome::Failed(RecordFailure::new(
                    FailureClass::Fetch,
                    Retry::Transient,
                    "boom",
                )),
                b"invalid" => Outcome::Failed(RecordFailure::new(
                    FailureClass::Invalid,
                    Retry::Permanent,
                    "not Terra's",
                )),
                b"panic" => panic!("scripted panic"),
                b"slow" => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Outcome::Healthcheck
                }
                other => panic!("unknown script {other:?}"),
            };
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            outcome
        }
    }

    fn item(id: &str, body: &'static str, group: Option<&str>) -> SourceItem {
        SourceItem {
            log_id: id.into(),
            ordering_group: group.map(str::to_owned),
            record: Ok(InboundRecord {
                log_id: id.into(),
                sent_at_ms: 0,
                body: Bytes::from_static(body.as_bytes()),
            }),
        }
    }

    fn limits(concurrency: usize, within: Duration) -> BatchLimits {
        BatchLimits {
            concurrency,
            cutoff: Instant::now() + within,
        }
    }

    fn classes(report: &BatchReport) -> Vec<Option<FailureClass>> {
        report
            .outcomes
            .iter()
            .map(|o| o.failure().map(|f| f.class))
            .collect()
    }

    #[tokio::test]
    async fn one_bad_record_never_fails_the_others() {
        let processor = Arc::new(Scripted::default());
        let decode_failure = SourceItem {
            log_id: "bad".into(),
            ordering_group: None,
            record: Err(RecordFailure::new(
                FailureClass::Invalid,
                Retry::Permanent,
                "no body",
            )),
        };
        let report = run(
            processor,
            vec![
                item("a", "ok", None),
                item("b", "panic", None),
                decode_failure,
                item("c", "fail", None),
            ],
            limits(4, Duration::from_secs(10)),
        )
        .await;
        assert_eq!(
            classes(&report),
            [
                None,
                Some(FailureClass::Internal),
                Some(FailureClass::Invalid),
                Some(FailureClass::Fetch)
            ]
        );
        let summary = report.summary();
        assert_eq!(
            (summary.written, summary.failed, summary.failed_permanent),
            (1, 3, 1)
        );
    }

    #[tokio::test]
    async fn concurrency_is_bounded_and_used() {
        let processor = Arc::new(Scripted::default());
        let items = (0..40)
            .map(|i| item(&format!("r{i}"), "ok", None))
            .collect();
        let report = run(
            Arc::clone(&processor),
            items,
            limits(8, Duration::from_secs(10)),
        )
        .await;
        assert!(report.outcomes.iter().all(|o| !o.is_failure()));
        assert_eq!(processor.max_in_flight.load(Ordering::SeqCst), 8);
    }

    #[tokio::test]
    async fn fifo_group_stops_at_its_first_failure() {
        let processor = Arc::new(Scripted::default());
        let report = run(
            Arc::clone(&processor),
            vec![
                item("g1-a", "ok", Some("g1")),
                item("g2-a", "ok", Some("g2")),
                item("g1-b", "fail", Some("g1")),
                item("g1-c", "ok", Some("g1")),
                item("g2-b", "ok", Some("g2")),
            ],
            limits(4, Duration::from_secs(10)),
        )
        .await;
        assert_eq!(
            classes(&report),
            [
                None,
                None,
                Some(FailureClass::Fetch),
                Some(FailureClass::Deferred),
                None
            ]
        );
        let started = processor.started.lock().expect("not poisoned").clone();
        assert!(!started.contains(&"g1-c".to_owned()), "{started:?}");
    }

    #[tokio::test]
    async fn a_permanent_failure_does_not_hold_its_fifo_group() {
        let processor = Arc::new(Scripted::default());
        let report = run(
            Arc::clone(&processor),
            vec![
                item("g1-a", "invalid", Some("g1")),
                item("g1-b", "ok", Some("g1")),
                item("g1-c", "fail", Some("g1")),
                item("g1-d", "ok", Some("g1")),
            ],
            limits(4, Duration::from_secs(10)),
        )
        .await;
        assert_eq!(
            classes(&report),
            [
                Some(FailureClass::Invalid),
                None,
                Some(FailureClass::Fetch),
                Some(FailureClass::Deferred)
            ]
        );
        let started = processor.started.lock().expect("not poisoned").clone();
        assert_eq!(started, ["g1-a", "g1-b", "g1-c"], "in order");
    }

    #[tokio::test]
    async fn near_the_deadline_records_are_deferred_not_lost() {
        let processor = Arc::new(Scripted::default());
        let report = run(
            Arc::clone(&processor),
            vec![item("slow", "slow", None), item("late", "ok", None)],
            limits(1, Duration::from_millis(200)),
        )
        .await;
        assert_eq!(
            classes(&report),
            [Some(FailureClass::Deferred), Some(FailureClass::Deferred)]
        );
        assert!(
            report
                .outcomes
                .iter()
                .all(|o| o.failure().is_some_and(|f| f.retry == Retry::Transient))
        );
        assert_eq!(
            processor.started.lock().expect("not poisoned").as_slice(),
            ["slow"]
        );
    }
}
