//! The quarantine queue for poison Kafka records: records that can never
//! succeed (expired, malformed, refused, too large) would otherwise block
//! their partition until the mapping's retry limit discards them silently.
//! SQS needs none of this: its redrive policy dead-quarantined by itself.

use async_trait::async_trait;
use futures::future::join_all;

use crate::outcome::{FailureClass, Outcome, RecordFailure};

mod sqs;

pub use sqs::SqsQuarantineQueue;

/// One record set aside, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedRecord {
    /// JSON: the record's origin, the failure, and its content with every URL
    /// query string removed.
    pub body: String,
    /// Where the record came from (`topic-partition`); the message group of a
    /// FIFO queue.
    pub group: String,
    /// Stable per record, so a FIFO queue drops the copy a redelivery sends.
    pub deduplication_id: String,
    pub class: FailureClass,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quarantine queue: {0}")]
pub struct QuarantineError(pub String);

/// Somewhere to put poison records. SQS in production; fakes in tests.
#[async_trait]
pub trait QuarantineQueue: Send + Sync {
    async fn send(&self, quarantined: &QuarantinedRecord) -> Result<(), QuarantineError>;
}

/// Sends every poison failure in `outcomes` to `queue` and marks it
/// [`Outcome::Quarantined`]. A record that could not be quarantined
/// stays failed, so the source retries it: it is never dropped.
pub async fn divert_poison(
    queue: &dyn QuarantineQueue,
    mut outcomes: Vec<Outcome>,
    quarantined_for: impl Fn(usize, &RecordFailure) -> Option<QuarantinedRecord>,
) -> Vec<Outcome> {
    let poison: Vec<(usize, QuarantinedRecord)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(index, outcome)| {
            let failure = outcome.failure().filter(|f| f.is_poison())?;
            Some((index, quarantined_for(index, failure)?))
        })
        .collect();
    let sent = join_all(
        poison
            .iter()
            .map(|(_, quarantined)| queue.send(quarantined)),
    )
    .await;
    for ((index, quarantined), result) in poison.iter().zip(sent) {
        match result {
            Ok(()) => {
                if let Outcome::Failed(failure) = &outcomes[*index] {
                    tracing::warn!(
                        id = %quarantined.deduplication_id,
                        class = %failure.class,
                        error = %failure.message,
                        "record quarantined"
                    );
                    outcomes[*index] = Outcome::Quarantined(failure.clone());
                }
            }
            Err(error) => tracing::error!(
                id = %quarantined.deduplication_id,
                %error,
                "quarantine message not sent; the record will be retried"
            ),
        }
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{Answer, MemoryQuarantine};
    use crate::outcome::Retry;

    fn failed(class: FailureClass, retry: Retry) -> Outcome {
        Outcome::Failed(RecordFailure::new(class, retry, "why"))
    }

    fn quarantined(index: usize, group: &str) -> QuarantinedRecord {
        QuarantinedRecord {
            body: format!("{{\"index\":{index}}}"),
            group: group.into(),
            deduplication_id: format!("{group}@{index}"),
            class: FailureClass::Invalid,
        }
    }

    #[tokio::test]
    async fn only_poison_is_diverted_and_a_record_not_quarantined_stays_failed() {
        let queue = MemoryQuarantine::answering(Answer::RefuseGroup("refuse"));
        let outcomes = vec![
            Outcome::Healthcheck,
            failed(FailureClass::Expired, Retry::Permanent),
            failed(FailureClass::Fetch, Retry::Transient),
            failed(FailureClass::Sink, Retry::Permanent),
            failed(FailureClass::Invalid, Retry::Permanent),
        ];
        let after = divert_poison(&queue, outcomes.clone(), |index, _| {
            Some(quarantined(
                index,
                if index == 4 { "refuse" } else { "t-0" },
            ))
        })
        .await;
        let sent = queue.sent();
        assert_eq!(sent, [quarantined(1, "t-0")]);
        assert_eq!(
            after[1],
            Outcome::Quarantined(RecordFailure::new(
                FailureClass::Expired,
                Retry::Permanent,
                "why"
            ))
        );
        for index in [0, 2, 3, 4] {
            assert_eq!(after[index], outcomes[index], "outcome {index}");
        }
    }
}
