//! SQS: the `SqsEvent` a Lambda event source mapping delivers, and the
//! `SQSBatchResponse` that reports which messages to retry.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use bytes::Bytes;

use crate::outcome::{FailureClass, Outcome, RecordFailure, Retry};
use crate::record::{InboundRecord, SourceItem};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqsResponseError {
    /// A failed message without a messageId cannot be reported on its own, so
    /// the whole batch has to be retried instead.
    #[error("record {index} failed but has no messageId to report")]
    MissingMessageId { index: usize },
    #[error("{outcomes} outcomes for {records} records")]
    Mismatch { records: usize, outcomes: usize },
}

pub fn decode(event: &SqsEvent) -> Vec<SourceItem> {
    event
        .records
        .iter()
        .enumerate()
        .map(|(index, message)| decode_message(index, message))
        .collect()
}

fn decode_message(index: usize, message: &SqsMessage) -> SourceItem {
    let log_id = match message.message_id.as_deref() {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => format!("record#{index}"),
    };
    let ordering_group = fifo_group(message).map(str::to_owned);
    let invalid = |why: &str| RecordFailure::new(FailureClass::Invalid, Retry::Permanent, why);
    let record = match (message.body.as_deref(), sent_timestamp(message)) {
        (None, _) => Err(invalid("message has no body")),
        (Some(body), _) if body.trim().is_empty() => Err(invalid("message body is empty")),
        (_, None) => Err(invalid("message has no valid SentTimestamp attribute")),
        (Some(body), Some(sent_at_ms)) => Ok(InboundRecord {
            log_id: log_id.clone(),
            sent_at_ms,
            body: Bytes::copy_from_slice(body.as_bytes()),
        }),
    };
    SourceItem {
        log_id,
        ordering_group,
        record,
    }
}

/// The message group a message of a FIFO queue belongs to. Standard queues
/// with fair-queue message groups carry `MessageGroupId` too; only a FIFO
/// queue promises (and needs) order within a group.
pub(crate) fn fifo_group(message: &SqsMessage) -> Option<&str> {
    let from_fifo_queue = message
        .event_source_arn
        .as_deref()
        .is_some_and(|arn| arn.ends_with(".fifo"));
    message
        .attributes
        .get("MessageGroupId")
        .filter(|_| from_fifo_queue)
        .map(String::as_str)
}

pub(crate) fn sent_timestamp(message: &SqsMessage) -> Option<u64> {
    message.attributes.get("SentTimestamp")?.trim().parse().ok()
}

/// Lists every message that was not durably written, so the queue redelivers
/// it (and its redrive policy dead-letters it after maxReceiveCount).
pub fn response(
    event: &SqsEvent,
    outcomes: &[Outcome],
) -> Result<SqsBatchResponse, SqsResponseError> {
    if event.records.len() != outcomes.len() {
        return Err(SqsResponseError::Mismatch {
            records: event.records.len(),
            outcomes: outcomes.len(),
        });
    }
    let mut response = SqsBatchResponse::default();
    for (index, (message, outcome)) in event.records.iter().zip(outcomes).enumerate() {
        if !outcome.is_failure() {
            continue;
        }
        let id = message
            .message_id
            .as_deref()
            .filter(|id| !id.is_empty())
            .ok_or(SqsResponseError::MissingMessageId { index })?;
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = id.to_owned();
        response.batch_item_failures.push(failure);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::examples::{failed, written};

    fn event(json: serde_json::Value) -> SqsEvent {
        serde_json::from_value(json).expect("valid SqsEvent")
    }

    #[test]
    fn decodes_each_record_on_its_own() {
        let items = decode(&event(serde_json::json!({"Records": [
            {"messageId": "a", "body": "{}", "attributes": {"SentTimestamp": "1700000000000"}},
            {"messageId": "b", "attributes": {"SentTimestamp": "1700000000000"}},
            {"messageId": "c", "body": "  ", "attributes": {"SentTimestamp": "1700000000000"}},
            {"messageId": "d", "body": "{}", "attributes": {}},
            {"messageId": "e", "body": "{}", "attributes": {"SentTimestamp": "soon", "MessageGroupId": "g"},
             "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:terra.fifo"},
            {"body": "{}", "attributes": {"SentTimestamp": "1"}},
            {"messageId": "f", "body": "{}", "attributes": {"SentTimestamp": "1", "MessageGroupId": "fair"},
             "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:terra"}
        ]})));
        assert_eq!(items.len(), 7);
        let ok = items[0].record.as_ref().expect("a decodes");
        assert_eq!(
            (ok.sent_at_ms, &ok.body[..]),
            (1_700_000_000_000, &b"{}"[..])
        );
        for item in &items[1..5] {
            let failure = item.record.as_ref().expect_err("must fail");
            assert_eq!(failure.class, FailureClass::Invalid, "{}", item.log_id);
        }
        assert_eq!(items[4].ordering_group.as_deref(), Some("g"));
        assert_eq!(items[5].log_id, "record#5");
        assert_eq!(
            items[6].ordering_group, None,
            "a standard queue's fair-queue group imposes no order"
        );
    }

    #[test]
    fn sample_events_decode_cleanly() {
        for (json, records) in [
            (include_str!("../../events/sqs-batch.json"), 3),
            (include_str!("../../events/sqs-healthcheck.json"), 1),
        ] {
            let items = decode(&serde_json::from_str(json).expect("valid SqsEvent"));
            assert_eq!(items.len(), records);
            for item in &items {
                let record = item.record.as_ref().expect("decodes");
                crate::message::decode(&record.body).expect("a Terra message");
            }
        }
    }

    #[test]
    fn reports_exactly_the_failed_message_ids() {
        let ev = event(serde_json::json!({"Records": [
            {"messageId": "a"}, {"messageId": "b"}, {"messageId": "c"}
        ]}));
        let response =
            response(&ev, &[written(), failed(), Outcome::Healthcheck]).expect("reportable");
        let ids: Vec<_> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        assert_eq!(ids, ["b"]);
    }

    #[test]
    fn a_failure_without_message_id_fails_the_whole_batch() {
        let ev = event(serde_json::json!({"Records": [{"messageId": "a"}, {"body": "x"}]}));
        assert_eq!(
            response(&ev, &[written(), failed()]),
            Err(SqsResponseError::MissingMessageId { index: 1 })
        );
        assert!(response(&ev, &[written(), written()]).is_ok());
    }
}
