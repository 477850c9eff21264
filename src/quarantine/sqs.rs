//! The quarantine queue on SQS: a standard queue, or a FIFO queue grouped
//! by partition that drops the copy a redelivery sends.

use async_trait::async_trait;

use super::{QuarantineError, QuarantineQueue, QuarantinedRecord};
use crate::sdk_error::describe;

pub struct SqsQuarantineQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    fifo: bool,
}

impl SqsQuarantineQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: String) -> Self {
        let fifo = queue_url.ends_with(".fifo");
        Self {
            client,
            queue_url,
            fifo,
        }
    }
}

#[async_trait]
impl QuarantineQueue for SqsQuarantineQueue {
    async fn send(&self, quarantined: &QuarantinedRecord) -> Result<(), QuarantineError> {
        let class = aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(quarantined.class.as_str())
            .build()
            .map_err(|e| QuarantineError(e.to_string()))?;
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(&quarantined.body)
            .message_attributes("terra_failure_class", class);
        if self.fifo {
            request = request
                .message_group_id(&quarantined.group)
                .message_deduplication_id(dedup_token(&quarantined.deduplication_id));
        }
        request
            .send()
            .await
            .map(drop)
            .map_err(|e| QuarantineError(format!("SendMessage: {}", describe(&e))))
    }
}

/// FIFO deduplication ids allow at most 128 characters of a limited set.
fn dedup_token(id: &str) -> String {
    crate::digest::sha256_hex(id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_deduplication_ids_fit_sqs_rules() {
        let token = dedup_token(&format!("{}-0@123", "t".repeat(300)));
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
