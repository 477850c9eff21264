//! When a failed message comes back, planned against the two clocks that
//! decide whether it can still succeed: the pre-signed URL dies `expires_in`
//! after Terra sent the message, while a queue left to itself returns a
//! failed message only after its visibility timeout (1020 s with the
//! template's defaults), long after the URL is gone.
//!
//! SQS lets the function choose: a batch is hidden only for the
//! time its invocation has left plus a margin, so a crashed or killed
//! invocation's messages come back soon after its deadline, and each
//! transient failure comes back while its URL still lives, spread over the
//! receipts the redrive policy leaves. Kafka's mapping retries at once; there
//! the pipeline's own retries within each invocation do the pacing.
//!
//! [`plan`] decides each message's return, [`Redelivery`] applies it to an
//! invocation's batch through the [`QueueControl`] port, and [`sqs`] is the
//! port's adapter on SQS.

mod plan;
pub mod sqs;
mod visibility;

use std::time::Duration;

use async_trait::async_trait;

pub use plan::{Clock, QueueOrder, hold_for_invocation, return_after};
pub use sqs::SqsQueueControl;
pub use visibility::Redelivery;

/// What the plan needs to know of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// The queue's own visibility timeout: what a permanent failure keeps.
    pub visibility_timeout: Duration,
    /// The redrive policy's `maxReceiveCount`, if the queue has one.
    pub max_receive_count: Option<u32>,
}

/// One message's new visibility timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibilityChange {
    /// The message's name in logs (its messageId).
    pub id: String,
    pub receipt_handle: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueueError(pub String);

/// The two queue calls the SQS handler makes itself.
#[async_trait]
pub trait QueueControl: Send + Sync {
    /// The queue's visibility timeout and redrive policy.
    async fn settings(&self, queue_url: &str) -> Result<QueueSettings, QueueError>;
    /// Applies `changes`; the error lists the ones that failed.
    async fn change_visibility(
        &self,
        queue_url: &str,
        changes: &[VisibilityChange],
    ) -> Result<(), QueueError>;
}
