//! [`QueueControl`] on SQS: a queue's settings, read once, and visibility
//! changes in batches. A visibility change that fails is logged and changes
//! no outcome: the queue's own timeout still returns the message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, QueueAttributeName};
use futures::StreamExt;

use super::{QueueControl, QueueError, QueueSettings, VisibilityChange};
use crate::sdk_error::describe;

/// SQS's limit of entries per batch call.
const BATCH_ENTRIES: usize = 10;
/// ChangeMessageVisibilityBatch calls in flight at once.
const CONCURRENT_CALLS: usize = 16;

/// [`QueueControl`] on SQS. Queue settings are read once per queue and
/// instance: they change only with a deployment.
pub struct SqsQueueControl {
    client: aws_sdk_sqs::Client,
    settings: Mutex<HashMap<String, QueueSettings>>,
}

impl SqsQueueControl {
    pub fn new(client: aws_sdk_sqs::Client) -> Self {
        Self {
            client,
            settings: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, queue_url: &str) -> Option<QueueSettings> {
        self.settings.lock().ok()?.get(queue_url).copied()
    }

    /// One ChangeMessageVisibilityBatch call, for at most ten messages.
    async fn change_chunk(
        &self,
        queue_url: &str,
        chunk: &[VisibilityChange],
    ) -> Result<(), QueueError> {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(n, change)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(format!("m{n}"))
                    .receipt_handle(&change.receipt_handle)
                    .visibility_timeout(change.timeout.as_secs().min(i32::MAX as u64) as i32)
                    .build()
                    .map_err(|e| QueueError(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output = self
            .client
            .change_message_visibility_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| QueueError(format!("ChangeMessageVisibilityBatch: {}", describe(&e))))?;
        let failed: Vec<String> = output
            .failed()
            .iter()
            .map(|f| {
                let id = f.id().trim_start_matches('m').parse::<usize>().ok();
                let name = id.and_then(|n| chunk.get(n)).map_or("?", |c| c.id.as_str());
                format!("{name}: {}", f.code())
            })
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(QueueError(format!(
                "ChangeMessageVisibilityBatch refused {}",
                failed.join(", ")
            )))
        }
    }
}

#[async_trait]
impl QueueControl for SqsQueueControl {
    async fn settings(&self, queue_url: &str) -> Result<QueueSettings, QueueError> {
        if let Some(known) = self.cached(queue_url) {
            return Ok(known);
        }
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| QueueError(format!("GetQueueAttributes: {}", describe(&e))))?;
        let attributes = output.attributes();
        let attribute = |name| attributes.and_then(|a| a.get(&name)).map(String::as_str);
        let visibility_timeout = attribute(QueueAttributeName::VisibilityTimeout)
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs)
            .ok_or_else(|| QueueError("GetQueueAttributes: no VisibilityTimeout".into()))?;
        let settings = QueueSettings {
            visibility_timeout,
            max_receive_count: attribute(QueueAttributeName::RedrivePolicy)
                .and_then(max_receive_count),
        };
        if let Ok(mut cache) = self.settings.lock() {
            cache.insert(queue_url.to_owned(), settings);
        }
        Ok(settings)
    }

    async fn change_visibility(
        &self,
        queue_url: &str,
        changes: &[VisibilityChange],
    ) -> Result<(), QueueError> {
        // A batch of thousands of messages makes hundreds of calls: a few at
        // a time, so their requests do not all hold memory at once.
        let calls: Vec<_> = changes
            .chunks(BATCH_ENTRIES)
            .map(|chunk| self.change_chunk(queue_url, chunk))
            .collect();
        let errors: Vec<String> = futures::stream::iter(calls)
            .buffer_unordered(CONCURRENT_CALLS)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .filter_map(|r| r.err().map(|e| e.0))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(QueueError(errors.join("; ")))
        }
    }
}

/// `maxReceiveCount` from a redrive policy, a number or a numeric string.
fn max_receive_count(policy: &str) -> Option<u32> {
    let policy: serde_json::Value = serde_json::from_str(policy).ok()?;
    match &policy["maxReceiveCount"] {
        serde_json::Value::Number(n) => n.as_u64()?.try_into().ok(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The queue URL an SQS ARN names (`arn:aws:sqs:us-east-1:123456789012:q` to
/// `https://sqs.us-east-1.amazonaws.com/123456789012/q`). The SDK sends the
/// request to its own endpoint; the URL names the queue.
pub fn queue_url_from_arn(arn: &str) -> Option<String> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("sqs"), Some(region), Some(account), Some(name)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let domain = match partition {
        "aws-cn" => "amazonaws.com.cn",
        _ => "amazonaws.com",
    };
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    (plain(region) && plain(account) && plain(name))
        .then(|| format!("https://sqs.{region}.{domain}/{account}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls_follow_from_arns() {
        assert_eq!(
            queue_url_from_arn("arn:aws:sqs:eu-west-1:123456789012:terra-events.fifo").as_deref(),
            Some("https://sqs.eu-west-1.amazonaws.com/123456789012/terra-events.fifo")
        );
        assert_eq!(
            queue_url_from_arn("arn:aws-cn:sqs:cn-north-1:123456789012:q").as_deref(),
            Some("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q")
        );
        for bad in [
            "",
            "arn:aws:sns:us-east-1:1:t",
            "arn:aws:sqs:us-east-1:1:a/b",
            "arn:aws:sqs:us-east-1::q",
        ] {
            assert_eq!(queue_url_from_arn(bad), None, "{bad}");
        }
    }

    #[test]
    fn redrive_policies_give_their_max_receive_count() {
        assert_eq!(
            max_receive_count(r#"{"deadLetterTargetArn":"x","maxReceiveCount":5}"#),
            Some(5)
        );
        assert_eq!(max_receive_count(r#"{"maxReceiveCount":"7"}"#), Some(7));
        assert_eq!(max_receive_count("{}"), None);
    }
}
