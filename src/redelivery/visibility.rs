//! An SQS invocation's batch: hidden for the invocation, then each failed
//! message's return timed by the [`plan`](super::plan).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use futures::future::join_all;

use super::sqs::queue_url_from_arn;
use super::{Clock, QueueControl, QueueOrder, VisibilityChange, hold_for_invocation, return_after};
use crate::message::{self, TerraMessage};
use crate::outcome::{Outcome, RecordFailure, Retry};
use crate::source::sqs::fifo_group;

/// Sets the visibility of the batch's messages on their queues.
pub struct Redelivery {
    control: Box<dyn QueueControl>,
}

impl Redelivery {
    pub fn new(control: Box<dyn QueueControl>) -> Self {
        Self { control }
    }

    /// Hides every message of the batch for the invocation's remaining time
    /// plus a margin, and learns each queue's settings for [`Self::schedule`].
    pub async fn hold(&self, event: &SqsEvent, time_left: Duration) {
        let timeout = hold_for_invocation(time_left);
        let by_queue = by_queue(event.records.iter().map(|m| (m, timeout)));
        let calls = by_queue.into_iter().map(|(queue_url, changes)| async move {
            let (settings, changed) = tokio::join!(
                self.control.settings(&queue_url),
                self.control.change_visibility(&queue_url, &changes)
            );
            if let Err(error) = settings {
                tracing::warn!(queue = %queue_url, %error, "queue settings unknown; failed messages keep this invocation's hold");
            }
            if let Err(error) = changed {
                tracing::warn!(queue = %queue_url, %error, "could not hold the batch; a crash would leave it to the queue's visibility timeout");
            }
        });
        join_all(calls).await;
    }

    /// Makes each failed message visible again when [`return_after`] says;
    /// `invocation` is the time this invocation had when it started.
    pub async fn schedule(&self, event: &SqsEvent, outcomes: &[Outcome], invocation: Duration) {
        let now_ms = crate::wall_clock::now_ms();
        let mut failed_by_queue: BTreeMap<String, Vec<(&SqsMessage, &RecordFailure)>> =
            BTreeMap::new();
        for (message, outcome) in event.records.iter().zip(outcomes) {
            let (Some(failure), Some(queue_url)) = (outcome.failure(), queue_of(message)) else {
                continue;
            };
            failed_by_queue
                .entry(queue_url)
                .or_default()
                .push((message, failure));
        }
        let calls = failed_by_queue.into_iter().map(|(queue_url, failed)| async move {
            let settings = self.control.settings(&queue_url).await.ok();
            let clocks = clocks(&failed, now_ms);
            let changes: Vec<VisibilityChange> = failed
                .iter()
                .zip(clocks)
                .filter_map(|((message, failure), (clock, ordering))| {
                    let timeout =
                        return_after(failure, clock, settings.as_ref(), ordering, invocation)?;
                    let change = visibility_change(message, timeout)?;
                    tracing::info!(id = %change.id, class = %failure.class, retry = %failure.retry, back_in_secs = timeout.as_secs(), "failed message returns");
                    Some(change)
                })
                .collect();
            if changes.is_empty() {
                return;
            }
            if let Err(error) = self.control.change_visibility(&queue_url, &changes).await {
                tracing::warn!(queue = %queue_url, %error, "could not time the return of failed messages; the queue's timeout applies");
            }
        });
        join_all(calls).await;
    }
}

/// Each failed message's clock and ordering. A FIFO group's transient
/// failures (the first, and the messages held behind it) come back together,
/// on the clock they share.
fn clocks(failed: &[(&SqsMessage, &RecordFailure)], now_ms: u64) -> Vec<(Clock, QueueOrder)> {
    let own: Vec<Clock> = failed
        .iter()
        .map(|(message, _)| Clock {
            receive_count: receive_count(message),
            url_life_left: url_life_left(message, now_ms),
        })
        .collect();
    let mut by_group: HashMap<&str, Clock> = HashMap::new();
    for ((message, failure), clock) in failed.iter().zip(&own) {
        if let Some(group) = held_back(message, failure) {
            by_group
                .entry(group)
                .and_modify(|shared| *shared = shared.shared_with(*clock))
                .or_insert(*clock);
        }
    }
    failed
        .iter()
        .zip(own)
        .map(|((message, failure), clock)| {
            match (fifo_group(message), held_back(message, failure)) {
                (_, Some(group)) => (
                    by_group.get(group).copied().unwrap_or(clock),
                    QueueOrder::FifoGroup,
                ),
                (Some(_), None) => (clock, QueueOrder::FifoGroup),
                (None, _) => (clock, QueueOrder::Unordered),
            }
        })
        .collect()
}

/// The FIFO group a transient failure holds back (with itself).
fn held_back<'a>(message: &'a SqsMessage, failure: &RecordFailure) -> Option<&'a str> {
    fifo_group(message).filter(|_| failure.retry == Retry::Transient)
}

fn by_queue<'a>(
    messages: impl Iterator<Item = (&'a SqsMessage, Duration)>,
) -> BTreeMap<String, Vec<VisibilityChange>> {
    let mut by_queue: BTreeMap<String, Vec<VisibilityChange>> = BTreeMap::new();
    for (message, timeout) in messages {
        if let (Some(queue_url), Some(change)) =
            (queue_of(message), visibility_change(message, timeout))
        {
            by_queue.entry(queue_url).or_default().push(change);
        }
    }
    by_queue
}

/// The URL of the queue the message came from.
fn queue_of(message: &SqsMessage) -> Option<String> {
    queue_url_from_arn(message.event_source_arn.as_deref()?)
}

fn visibility_change(message: &SqsMessage, timeout: Duration) -> Option<VisibilityChange> {
    Some(VisibilityChange {
        id: message.message_id.clone().unwrap_or_default(),
        receipt_handle: message.receipt_handle.clone().filter(|h| !h.is_empty())?,
        timeout,
    })
}

fn receive_count(message: &SqsMessage) -> u32 {
    message
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(1)
}

/// How long the message's URL still works, when its lifetime is known.
fn url_life_left(message: &SqsMessage, now_ms: u64) -> Option<Duration> {
    let sent_at_ms = crate::source::sqs::sent_timestamp(message)?;
    let TerraMessage::Payload(pointer) =
        message::decode(message.body.as_deref()?.as_bytes()).ok()?
    else {
        return None;
    };
    let expires_at_ms = sent_at_ms.checked_add(pointer.expires_in?.as_millis() as u64)?;
    Some(Duration::from_millis(expires_at_ms.saturating_sub(now_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::MemoryQueue;
    use crate::outcome::examples::written;
    use crate::outcome::{FailureClass, RecordFailure, Retry};
    use crate::wall_clock::now_ms;
    use serde_json::json;

    const QUEUE_URL: &str = "https://sqs.eu-west-1.amazonaws.com/123456789012/terra-events";

    /// A message pointing to a 600 s URL, sent at `sent_ms` and received
    /// `count` times from `queue`, in message group `group` when given.
    fn record(
        queue: &str,
        id: &str,
        group: Option<&str>,
        sent_ms: u64,
        count: u32,
    ) -> serde_json::Value {
        let pointer =
            json!({"type": "s3_payload", "url": "https://h/p", "expires_in": 600}).to_string();
        let mut record = json!({
            "messageId": id, "receiptHandle": format!("rh-{id}"), "body": pointer,
            "attributes": {"SentTimestamp": sent_ms.to_string(), "ApproximateReceiveCount": count.to_string()},
            "eventSourceARN": format!("arn:aws:sqs:eu-west-1:123456789012:{queue}")
        });
        if let Some(group) = group {
            record["attributes"]["MessageGroupId"] = json!(group);
        }
        record
    }

    fn event(now_ms: u64) -> SqsEvent {
        let record = |id, sent_ms, count| record("terra-events", id, None, sent_ms, count);
        serde_json::from_value(json!({"Records": [
            record("ok", now_ms, 1),
            record("outage", now_ms - 119_000, 1),
            record("expired", now_ms - 700_000, 2),
            record("last", now_ms - 300_000, 5),
        ]}))
        .expect("valid event")
    }

    /// On a FIFO queue: group `a`'s head was archived before its URL died
    /// and its table write failed; the message held behind it still has
    /// 250 s of URL. Group `b`'s head is not Terra's.
    #[tokio::test]
    async fn a_fifo_group_returns_on_its_shared_clock_and_permanent_failures_at_once() {
        let queue = MemoryQueue::default();
        let redelivery = Redelivery::new(Box::new(queue.clone()));
        let now_ms = now_ms();
        let record = |id, group, sent_ms, count| {
            record("terra-events.fifo", id, Some(group), sent_ms, count)
        };
        let event: SqsEvent = serde_json::from_value(json!({"Records": [
            record("a-head", "a", now_ms - 700_000, 3),
            record("a-held", "a", now_ms - 349_500, 3),
            record("b-head", "b", now_ms, 1),
            record("b-next", "b", now_ms, 1),
        ]}))
        .expect("valid event");
        let failed = |class, retry| Outcome::Failed(RecordFailure::new(class, retry, "x"));
        redelivery
            .schedule(
                &event,
                &[
                    failed(FailureClass::Sink, Retry::Transient),
                    failed(FailureClass::Deferred, Retry::Transient),
                    failed(FailureClass::Invalid, Retry::Permanent),
                    written(),
                ],
                Duration::from_secs(120),
            )
            .await;
        let timed: BTreeMap<String, u64> = queue
            .changes()
            .into_iter()
            .map(|(_, c)| (c.id, c.timeout.as_secs()))
            .collect();
        // (250 s - 60 s) over the 2 receipts left; alone, the archived head
        // would keep the queue's 1020 s and hold `a-held` past its URL.
        assert_eq!(
            timed,
            BTreeMap::from([
                ("a-head".into(), 95),
                ("a-held".into(), 95),
                ("b-head".into(), 0)
            ])
        );
    }

    #[tokio::test]
    async fn the_batch_is_held_and_each_failure_timed_by_its_url() {
        let queue = MemoryQueue::default();
        let redelivery = Redelivery::new(Box::new(queue.clone()));
        let event = event(now_ms());
        redelivery.hold(&event, Duration::from_secs(119)).await;
        let held = queue.changes();
        assert_eq!(held.len(), 4);
        assert!(
            held.iter()
                .all(|(url, c)| url == QUEUE_URL && c.timeout == Duration::from_secs(149))
        );

        let transient = Outcome::Failed(RecordFailure::new(
            FailureClass::Fetch,
            Retry::Transient,
            "500",
        ));
        let expired = Outcome::Failed(RecordFailure::new(
            FailureClass::Expired,
            Retry::Permanent,
            "gone",
        ));
        redelivery
            .schedule(
                &event,
                &[written(), transient.clone(), expired, transient],
                Duration::from_secs(120),
            )
            .await;
        let timed: BTreeMap<String, u64> = queue.changes()[held.len()..]
            .iter()
            .inspect(|(url, _)| assert_eq!(url, QUEUE_URL))
            .map(|(_, c)| (c.id.clone(), c.timeout.as_secs()))
            .collect();
        // 480 s of URL left, less half a 120 s invocation, over 4 receipts
        // left; the permanent failure keeps the queue's 1020 s; the fifth
        // receipt goes straight on.
        assert_eq!(
            timed,
            BTreeMap::from([
                ("outage".into(), 105),
                ("expired".into(), 1020),
                ("last".into(), 0)
            ])
        );
    }
}
