//! `replay dead-letters`: Terra's messages on the SQS dead-letter queue run
//! once more through the handlers' pipeline. A message whose URL has
//! expired completes from the archived copy, as a retry would have; it is
//! then deleted. The rest stay on the queue, listed with why, so the
//! operator knows what to ask Terra's API to send again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use terra_sink::batch::RecordProcessor;
use terra_sink::message::{self, TerraMessage};
use terra_sink::outcome::Outcome;
use terra_sink::pipeline::Pipeline;
use terra_sink::record::InboundRecord;
use terra_sink::sdk_error::describe;

/// How long a received message stays hidden from other consumers while it
/// is replayed; those left are made visible again at the end.
const HOLD: Duration = Duration::from_secs(300);
/// Longest one message may take, URL retries and archive reads included.
const PER_MESSAGE: Duration = Duration::from_secs(60);

/// A message left on the queue, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeftMessage {
    pub message_id: String,
    /// Terra's `payload_reference`, when the message has one.
    pub payload_reference: Option<String>,
    /// When Terra sent it (SQS `SentTimestamp`), ms since the epoch.
    pub sent_at_ms: u64,
    /// Failure class and retry, as in the handlers' logs (`expired/permanent`).
    pub failure: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeadLetterSummary {
    pub received: u64,
    /// Written (or acknowledged, for a healthcheck) and deleted.
    pub completed: u64,
    pub left: Vec<LeftMessage>,
}

#[derive(Debug, thiserror::Error)]
#[error("{call} on the dead-letter queue: {message}")]
pub struct DeadLetterQueueError {
    call: &'static str,
    message: String,
}

pub struct DeadLetterReplay {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    pipeline: Arc<Pipeline>,
}

impl DeadLetterReplay {
    pub fn new(sqs: aws_sdk_sqs::Client, queue_url: String, pipeline: Pipeline) -> Self {
        Self {
            sqs,
            queue_url,
            pipeline: Arc::new(pipeline),
        }
    }

    /// Every message on the queue, once.
    pub async fn run(&self) -> Result<DeadLetterSummary, DeadLetterQueueError> {
        let mut summary = DeadLetterSummary::default();
        let mut left_receipts = Vec::new();
        // A message left early can come round again once its hold ends.
        let mut seen = HashSet::new();
        loop {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .visibility_timeout(HOLD.as_secs() as i32)
                .wait_time_seconds(1)
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .send()
                .await
                .map_err(|e| DeadLetterQueueError {
                    call: "ReceiveMessage",
                    message: describe(&e),
                })?;
            let messages = received.messages.unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            // Received again, it is hidden for another hold: the loop ends.
            let unseen = messages
                .into_iter()
                .filter(|m| seen.insert(m.message_id().unwrap_or_default().to_owned()));
            for message in unseen {
                summary.received += 1;
                let receipt = message.receipt_handle().unwrap_or_default().to_owned();
                match self.replay_one(&message).await {
                    None => {
                        self.sqs
                            .delete_message()
                            .queue_url(&self.queue_url)
                            .receipt_handle(&receipt)
                            .send()
                            .await
                            .map_err(|e| DeadLetterQueueError {
                                call: "DeleteMessage",
                                message: describe(&e),
                            })?;
                        summary.completed += 1;
                    }
                    Some(left) => {
                        summary.left.push(left);
                        left_receipts.push(receipt);
                    }
                }
            }
        }
        for receipt in left_receipts {
            // Visible again now, not when the hold runs out: the queue is the
            // operator's list of what Terra must send again.
            let shown = self
                .sqs
                .change_message_visibility()
                .queue_url(&self.queue_url)
                .receipt_handle(receipt)
                .visibility_timeout(0)
                .send()
                .await;
            if let Err(e) = shown {
                tracing::warn!(error = %describe(&e), "a message left on the queue stays hidden until its hold ends");
            }
        }
        Ok(summary)
    }

    /// `None` once the message is done with; otherwise why it stays.
    async fn replay_one(&self, message: &Message) -> Option<LeftMessage> {
        let message_id = message.message_id().unwrap_or_default().to_owned();
        let sent_at_ms = message
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let body = Bytes::from(message.body().unwrap_or_default().to_owned());
        let payload_reference = match message::decode(&body) {
            Ok(TerraMessage::Payload(pointer)) => pointer.payload_reference,
            _ => None,
        };
        let record = InboundRecord {
            log_id: message_id.clone(),
            sent_at_ms,
            body,
        };
        let left = |failure: &terra_sink::outcome::RecordFailure| LeftMessage {
            message_id: message_id.clone(),
            payload_reference: payload_reference.clone(),
            sent_at_ms,
            failure: format!("{}/{}", failure.class, failure.retry),
            reason: failure.message.clone(),
        };
        match self
            .pipeline
            .process(&record, Instant::now() + PER_MESSAGE)
            .await
        {
            Outcome::Written(_) | Outcome::Healthcheck => None,
            Outcome::Failed(failure) | Outcome::Quarantined(failure) => Some(left(&failure)),
        }
    }
}
