//! One record from queue message to written payload.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::time::Instant;
use tracing::Instrument;

use crate::batch::RecordProcessor;
use crate::fetch::{FetchDeadlines, FetchError, Fetcher, RedactedUrl};
use crate::message::{self, TerraMessage};
use crate::outcome::{Outcome, RecordFailure, Written};
use crate::payload::{self, ArchiveName};
use crate::sink::{Delivery, Sink};
use crate::source::InboundRecord;

pub struct Pipeline {
    fetcher: Fetcher,
    sinks: Vec<Arc<dyn Sink>>,
}

impl Pipeline {
    /// `sinks` are written in order; a record counts as written only when all are.
    pub fn new(fetcher: Fetcher, sinks: Vec<Arc<dyn Sink>>) -> Self {
        Self { fetcher, sinks }
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
        tracing::Span::current().record("url", tracing::field::display(RedactedUrl(&pointer.url)));
        tracing::Span::current().record("object", name.as_str());
        if let Some(reference) = &pointer.payload_reference {
            tracing::Span::current().record("payload_reference", reference.as_str());
        }

        let url_expires_at = match pointer.expires_in {
            Some(lifetime) => Some(
                url_expiry(record.sent_at_ms, lifetime).ok_or(FetchError::ExpiredBeforeFetch)?,
            ),
            None => None,
        };
        let fetched = self
            .fetcher
            .fetch(
                &pointer.url,
                FetchDeadlines {
                    url_expires_at,
                    give_up_at,
                },
            )
            .await?;
        let summary = payload::inspect(&fetched.body)?;
        let delivery = Delivery {
            name,
            sent_at_ms: record.sent_at_ms,
            payload: fetched.body,
            summary,
        };
        for sink in &self.sinks {
            sink.write(&delivery).await?;
        }
        tracing::debug!(
            event_type = %delivery.summary.event_type,
            bytes = delivery.payload.len(),
            attempts = fetched.attempts,
            "payload written"
        );
        Ok(Outcome::Written(Written {
            event_type: delivery.summary.event_type,
            payload_bytes: delivery.payload.len() as u64,
        }))
    }
}

/// The instant a URL sent at `sent_at_ms` with `lifetime` stops working, or
/// `None` when that has already happened.
fn url_expiry(sent_at_ms: u64, lifetime: Duration) -> Option<Instant> {
    let expires_at = UNIX_EPOCH + Duration::from_millis(sent_at_ms) + lifetime;
    let remaining = expires_at.duration_since(SystemTime::now()).ok()?;
    (!remaining.is_zero()).then(|| Instant::now() + remaining)
}

#[async_trait]
impl RecordProcessor for Pipeline {
    async fn process(&self, record: &InboundRecord, give_up_at: Instant) -> Outcome {
        let span = tracing::info_span!(
            "record",
            id = %record.log_id,
            url = tracing::field::Empty,
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
                        "record failed"
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
    fn url_expiry_counts_from_the_send_time() {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64;
        assert!(url_expiry(now_ms - 601_000, Duration::from_secs(600)).is_none());
        let remaining = url_expiry(now_ms - 300_000, Duration::from_secs(600))
            .expect("still valid")
            .duration_since(Instant::now());
        assert!(remaining > Duration::from_secs(290) && remaining <= Duration::from_secs(300));
    }
}
