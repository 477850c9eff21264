//! A local stand-in for Lambda's SQS event source mapping: it receives
//! batches from a queue (moto), waiting up to the batching window to fill
//! one, invokes the function through the Runtime API with the same event
//! Lambda builds, and acts on the answer as Lambda does. With
//! `ReportBatchItemFailures`, messages not reported failed are deleted and
//! reported ones stay on the queue; without it, a successful answer deletes
//! the whole batch. An error, a timeout or an unusable answer leaves the
//! whole batch on the queue, to come back after its visibility timeout.
//! The queue's redrive policy (moto implements it) dead-letters a message
//! once it was received `maxReceiveCount` times.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use serde_json::{Value, json};

use crate::runtime_api::{InvocationResult, RuntimeApi};

#[derive(Debug, Clone)]
pub struct MappingSettings {
    /// Messages per invocation at most.
    pub batch_size: i32,
    /// How long to keep receiving to fill a batch.
    pub batching_window: Duration,
    /// Whether the function's `batchItemFailures` count (the mapping's
    /// `FunctionResponseTypes`), or a successful answer deletes every message.
    pub report_batch_item_failures: bool,
    /// The function timeout handed to each invocation.
    pub function_timeout: Duration,
    /// Invocations in flight at once.
    pub concurrency: usize,
}

/// What the mapping saw, for the demo's and the tests' bookkeeping.
#[derive(Debug, Clone, Default)]
pub struct MappingStats {
    pub invocations: usize,
    /// Invocations that failed as a whole (error, timeout, unusable answer).
    pub failed_invocations: usize,
    /// Deliveries of a message to the function, redeliveries included.
    pub deliveries: usize,
    /// Messages deleted after the function reported them done.
    pub acknowledged: BTreeSet<String>,
    /// Deliveries the function reported as failed.
    pub reported_failures: usize,
}

pub struct SqsMapping {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    queue_arn: String,
    settings: MappingSettings,
}

impl SqsMapping {
    pub async fn new(
        sqs: aws_sdk_sqs::Client,
        queue_url: &str,
        settings: MappingSettings,
    ) -> SqsMapping {
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("attributes of {queue_url}: {e:?}"));
        let queue_arn = attributes
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .expect("queue ARN")
            .clone();
        SqsMapping {
            sqs,
            queue_url: queue_url.to_owned(),
            queue_arn,
            settings,
        }
    }

    /// Feeds the function until the queue holds no message, visible or in
    /// flight, or `give_up` has passed.
    pub async fn run_until_drained(&self, runtime: &RuntimeApi, give_up: Duration) -> MappingStats {
        self.feed(runtime, Some(give_up)).await
    }

    /// Feeds the function for as long as the returned future is polled, as
    /// a mapping that is enabled does, drained queue or not: for a caller
    /// that sends its own messages and stops the mapping by dropping it.
    pub async fn run_until_stopped(&self, runtime: &RuntimeApi) {
        self.feed(runtime, None).await;
    }

    /// `concurrency` pollers; with `give_up`, each stops once the queue is
    /// drained or that has passed.
    async fn feed(&self, runtime: &RuntimeApi, give_up: Option<Duration>) -> MappingStats {
        let stats = Arc::new(Mutex::new(MappingStats::default()));
        let started = Instant::now();
        let pollers = (0..self.settings.concurrency.max(1)).map(|_| {
            let stats = Arc::clone(&stats);
            async move {
                while give_up.is_none_or(|give_up| started.elapsed() < give_up) {
                    if !self.poll_once(runtime, &stats).await
                        && give_up.is_some()
                        && self.is_drained().await
                    {
                        return;
                    }
                }
            }
        });
        futures::future::join_all(pollers).await;
        stats.lock().expect("not poisoned").clone()
    }

    /// One receive of up to `wanted` messages, as the records Lambda would
    /// hand the function: for a test that invokes the function itself.
    pub async fn receive_records(&self, wanted: usize) -> Vec<Value> {
        self.receive(wanted, 1)
            .await
            .iter()
            .map(|message| self.record(message))
            .collect()
    }

    /// Whether the queue holds no message at all.
    pub async fn is_drained(&self) -> bool {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap_or_else(|e| panic!("attributes of {}: {e:?}", self.queue_url));
        let count = |name| {
            attributes
                .attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        count(QueueAttributeName::ApproximateNumberOfMessages) == 0
            && count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible) == 0
    }

    /// Receives one batch and invokes the function with it. False when the
    /// queue had nothing to receive.
    async fn poll_once(&self, runtime: &RuntimeApi, stats: &Mutex<MappingStats>) -> bool {
        let batch_size = self.settings.batch_size.max(1) as usize;
        let mut messages = self.receive(batch_size, 1).await;
        if messages.is_empty() {
            return false;
        }
        let window_ends = Instant::now() + self.settings.batching_window;
        while messages.len() < batch_size && Instant::now() < window_ends {
            let more = self.receive(batch_size - messages.len(), 0).await;
            if more.is_empty() {
                let left = window_ends.saturating_duration_since(Instant::now());
                tokio::time::sleep(left.min(Duration::from_millis(50))).await;
            }
            messages.extend(more);
        }
        let messages = messages.as_slice();
        let records: Vec<Value> = messages.iter().map(|m| self.record(m)).collect();
        let event = json!({ "Records": records });
        let result = runtime
            .try_invoke(&event, self.settings.function_timeout)
            .await;
        let failed = if self.settings.report_batch_item_failures {
            failed_ids(result.as_ref(), messages)
        } else {
            matches!(result, Some(InvocationResult::Response(_))).then(BTreeSet::new)
        };
        let done: Vec<_> = messages
            .iter()
            .filter(|m| match &failed {
                Some(failed) => !failed.contains(m.message_id().unwrap_or_default()),
                None => false,
            })
            .collect();
        for message in &done {
            self.sqs
                .delete_message()
                .queue_url(&self.queue_url)
                .receipt_handle(message.receipt_handle().expect("receipt handle"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("delete from {}: {e:?}", self.queue_url));
        }
        let mut stats = stats.lock().expect("not poisoned");
        stats.invocations += 1;
        stats.deliveries += messages.len();
        match &failed {
            None => stats.failed_invocations += 1,
            Some(failed) => stats.reported_failures += failed.len(),
        }
        stats.acknowledged.extend(
            done.iter()
                .filter_map(|m| m.message_id().map(str::to_owned)),
        );
        true
    }

    /// One ReceiveMessage call for up to `wanted` messages (10 at most).
    async fn receive(&self, wanted: usize, wait_secs: i32) -> Vec<aws_sdk_sqs::types::Message> {
        self.sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(wanted.clamp(1, 10) as i32)
            .wait_time_seconds(wait_secs)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap_or_else(|e| panic!("receive from {}: {e:?}", self.queue_url))
            .messages
            .unwrap_or_default()
    }

    /// The record Lambda builds for one message.
    fn record(&self, message: &aws_sdk_sqs::types::Message) -> Value {
        let attributes: serde_json::Map<String, Value> = message
            .attributes()
            .map(|attributes| {
                attributes
                    .iter()
                    .map(|(name, value)| (name.as_str().to_owned(), json!(value)))
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "messageId": message.message_id(),
            "receiptHandle": message.receipt_handle(),
            "body": message.body(),
            "attributes": attributes,
            "messageAttributes": {},
            "md5OfBody": message.md5_of_body(),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": "us-east-1"
        })
    }
}

/// The message ids the answer reports failed, or `None` when Lambda would
/// retry the whole batch: an error, a timeout, or an answer naming a message
/// that is not in the batch.
fn failed_ids(
    result: Option<&InvocationResult>,
    batch: &[aws_sdk_sqs::types::Message],
) -> Option<BTreeSet<String>> {
    let Some(InvocationResult::Response(response)) = result else {
        return None;
    };
    let in_batch: BTreeSet<&str> = batch.iter().filter_map(|m| m.message_id()).collect();
    let Some(failures) = response.get("batchItemFailures") else {
        return Some(BTreeSet::new());
    };
    let mut failed = BTreeSet::new();
    for failure in failures.as_array()? {
        let id = failure.get("itemIdentifier")?.as_str()?;
        if !in_batch.contains(id) {
            return None;
        }
        failed.insert(id.to_owned());
    }
    Some(failed)
}

/// The record Lambda delivers for a message with `body`, sent at `sent_at_ms`.
pub fn sqs_record(message_id: &str, body: &str, sent_at_ms: u64) -> Value {
    json!({
        "messageId": message_id,
        "receiptHandle": format!("rh-{message_id}"),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": sent_at_ms.to_string(),
            "SenderId": "AIDAEXAMPLE",
            "ApproximateFirstReceiveTimestamp": sent_at_ms.to_string()
        },
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:terra-events",
        "awsRegion": "us-east-1"
    })
}
