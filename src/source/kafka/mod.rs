//! Kafka: the event an Amazon MSK or self-managed Kafka event source mapping
//! delivers, the partial batch response it accepts, and the quarantine message a
//! poison record becomes.
//!
//! The event is read leniently, one record at a time, rather than through
//! `aws_lambda_events::kafka::KafkaEvent`: there a single record with an
//! unexpected field type fails the whole invocation, and the partition would
//! then be retried forever. Here such a record fails on its own.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::outcome::{FailureClass, RecordFailure, Retry};
use crate::record::{InboundRecord, SourceItem};

mod quarantine;
mod response;

pub use response::{
    KafkaBatchItemFailure, KafkaBatchResponse, KafkaItemIdentifier, KafkaResponseError,
    ResponseMode, response, settled_once_set_aside,
};

/// A Kafka event as Lambda delivers it (MSK: `eventSource` `aws:kafka`;
/// self-managed: `SelfManagedKafka`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaEvent {
    #[serde(default)]
    pub event_source: Option<String>,
    #[serde(default)]
    pub event_source_arn: Option<String>,
    #[serde(default)]
    pub bootstrap_servers: Option<String>,
    /// `"<topic>-<partition>"` to that partition's records, in offset order.
    #[serde(default)]
    pub records: Option<BTreeMap<String, Vec<Value>>>,
}

/// One record's identity and its original content, kept beside the decoded
/// item for the response and for quarantine.
#[derive(Debug, Clone)]
pub struct KafkaRecord {
    /// The event's name for the partition, `"<topic>-<partition>"`.
    pub partition_key: String,
    pub topic: Option<String>,
    pub partition: Option<i64>,
    pub offset: Option<i64>,
    pub timestamp_ms: Option<i64>,
    pub timestamp_type: Option<String>,
    pub key: Option<String>,
    pub value: Option<String>,
    pub headers: Option<Value>,
}

impl KafkaRecord {
    fn from_json(partition_key: &str, json: &Value) -> Self {
        let text = |field: &str| json.get(field).and_then(Value::as_str).map(str::to_owned);
        let number = |field: &str| json.get(field).and_then(Value::as_i64);
        KafkaRecord {
            partition_key: partition_key.to_owned(),
            topic: text("topic"),
            partition: number("partition"),
            offset: number("offset"),
            timestamp_ms: number("timestamp"),
            timestamp_type: text("timestampType"),
            key: text("key"),
            value: text("value"),
            headers: json.get("headers").cloned(),
        }
    }

    /// `topic-partition@offset`, the record's name in logs.
    pub fn log_id(&self, index: usize) -> String {
        match self.offset {
            Some(offset) => format!("{}@{offset}", self.partition_key),
            None => format!("{}#record{index}", self.partition_key),
        }
    }

    /// `received_at_ms` bounds the record's timestamp (see
    /// [`TIMESTAMP_AHEAD_TOLERANCE_MS`]).
    fn decode(&self, log_id: &str, received_at_ms: u64) -> Result<InboundRecord, RecordFailure> {
        let invalid = |why: &str| RecordFailure::new(FailureClass::Invalid, Retry::Permanent, why);
        let value = self
            .value
            .as_deref()
            .ok_or_else(|| invalid("record has no value"))?;
        let body = BASE64
            .decode(value.trim())
            .map_err(|_| invalid("record value is not valid base64"))?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(invalid("record value is empty"));
        }
        let stamped_ms = self
            .timestamp_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .filter(|&ms| ms > 0)
            .ok_or_else(|| invalid("record has no valid timestamp"))?;
        let sent_at_ms = if stamped_ms > received_at_ms.saturating_add(TIMESTAMP_AHEAD_TOLERANCE_MS)
        {
            tracing::warn!(
                id = %log_id,
                timestamp = stamped_ms,
                received_at = received_at_ms,
                "record timestamp is ahead of its receipt; the receipt's time stands in"
            );
            received_at_ms
        } else {
            stamped_ms
        };
        Ok(InboundRecord {
            log_id: log_id.to_owned(),
            sent_at_ms,
            body: Bytes::from(body),
        })
    }
}

/// The event's records in a stable order (partitions by name, each in offset
/// order), kept for the response and for quarantine.
#[derive(Debug, Clone, Default)]
pub struct DecodedBatch {
    pub event_source: Option<String>,
    pub event_source_arn: Option<String>,
    pub records: Vec<KafkaRecord>,
}

/// A record timestamp more than this ahead of the record's receipt is taken
/// as the receipt's time. A Kafka timestamp is the producer's clock
/// (`CREATE_TIME`), and one far in the future would pin the record's
/// DynamoDB items and archive name: every later, real update would count as
/// older and be skipped. Within it, ordinary clock skew keeps the
/// timestamp, so a redelivery keeps its version.
pub const TIMESTAMP_AHEAD_TOLERANCE_MS: u64 = 5 * 60 * 1000;

/// The batch, and the items the batch runner works on: one per record, in
/// the same order.
pub fn decode(event: &KafkaEvent) -> (DecodedBatch, Vec<SourceItem>) {
    decode_received_at(event, crate::wall_clock::now_ms())
}

fn decode_received_at(event: &KafkaEvent, received_at_ms: u64) -> (DecodedBatch, Vec<SourceItem>) {
    let mut batch = DecodedBatch {
        event_source: event.event_source.clone(),
        event_source_arn: event.event_source_arn.clone(),
        ..DecodedBatch::default()
    };
    let mut items = Vec::new();
    let partitions = event.records.iter().flatten();
    for (partition_key, records) in partitions {
        for json in records {
            let index = batch.records.len();
            let record = KafkaRecord::from_json(partition_key, json);
            let log_id = record.log_id(index);
            // No ordering group: records of one partition may run concurrently,
            // since replaying later offsets is harmless (idempotent keys and the
            // DynamoDB version guard).
            items.push(SourceItem {
                record: record.decode(&log_id, received_at_ms),
                log_id,
                ordering_group: None,
            });
            batch.records.push(record);
        }
    }
    (batch, items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(super) fn value(text: &str) -> String {
        BASE64.encode(text)
    }

    pub(super) fn record(topic: &str, partition: i64, offset: i64, value: &str) -> Value {
        json!({
            "topic": topic, "partition": partition, "offset": offset,
            "timestamp": 1_700_000_000_000_i64, "timestampType": "CREATE_TIME",
            "value": value, "headers": []
        })
    }

    pub(super) fn event(records: Value) -> KafkaEvent {
        serde_json::from_value(json!({
            "eventSource": "aws:kafka",
            "eventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/terra/abc",
            "bootstrapServers": "b-1.terra:9098",
            "records": records
        }))
        .expect("valid event")
    }

    #[test]
    fn a_timestamp_far_ahead_of_receipt_gives_way_to_the_receipt() {
        let received = 1_800_000_000_000_u64;
        let stamped = |ms: u64| {
            let mut record = record("terra", 0, 1, &value("{}"));
            record["timestamp"] = json!(ms);
            record
        };
        let year = 365 * 24 * 60 * 60 * 1000;
        let (_, items) = decode_received_at(
            &event(json!({"terra-0": [
                stamped(received + year),
                stamped(received + 60_000),
                stamped(received - 60_000)
            ]})),
            received,
        );
        let sent: Vec<u64> = items
            .iter()
            .map(|item| item.record.as_ref().expect("decoded").sent_at_ms)
            .collect();
        assert_eq!(
            sent,
            [received, received + 60_000, received - 60_000],
            "a year ahead is bounded; a minute's skew is kept"
        );
    }

    #[test]
    fn decodes_records_of_every_partition_each_on_its_own() {
        let pointer = value(r#"{"type":"s3_payload","url":"https://h/p"}"#);
        let (_, items) = decode(&event(json!({
            "terra-1": [record("terra", 1, 7, &pointer)],
            "terra-0": [
                record("terra", 0, 3, &pointer),
                record("terra", 0, 4, "not base64!"),
                {"topic": "terra", "partition": 0, "offset": 5, "timestamp": 0, "value": pointer},
                {"topic": "terra", "partition": 0, "offset": "6", "value": pointer},
                {"topic": "terra", "partition": 0, "offset": 8, "timestamp": 1, "value": null}
            ]
        })));
        let ids: Vec<&str> = items.iter().map(|i| i.log_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "terra-0@3",
                "terra-0@4",
                "terra-0@5",
                "terra-0#record3",
                "terra-0@8",
                "terra-1@7"
            ]
        );
        let first = items[0].record.as_ref().expect("decodes");
        assert_eq!(first.sent_at_ms, 1_700_000_000_000);
        assert_eq!(
            &first.body[..],
            br#"{"type":"s3_payload","url":"https://h/p"}"#
        );
        for item in &items[1..5] {
            let failure = item.record.as_ref().expect_err("must fail");
            assert_eq!(
                (failure.class, failure.retry),
                (FailureClass::Invalid, Retry::Permanent),
                "{}",
                item.log_id
            );
        }
        assert!(items[5].record.is_ok());
        assert!(items.iter().all(|i| i.ordering_group.is_none()));
    }

    #[test]
    fn decodes_the_aws_lambda_events_example() {
        let json = include_str!("../../../tests/fixtures/events/aws-lambda-events-kafka.json");
        let (_, items) = decode(&serde_json::from_str(json).expect("valid event"));
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].log_id, "AWSKafkaTopic-0@0");
        let record = items[0].record.as_ref().expect("decodes");
        assert_eq!(record.sent_at_ms, 1_595_035_749_700);
        assert_eq!(&record.body[..], b"8d5596b4-1813-4238-b24b-6dad8e3d1c0c");
    }

    #[test]
    fn sample_events_decode_cleanly() {
        for (json, source) in [
            (include_str!("../../../events/msk.json"), "aws:kafka"),
            (
                include_str!("../../../events/self-managed-kafka.json"),
                "SelfManagedKafka",
            ),
        ] {
            let (batch, items) = decode(&serde_json::from_str(json).expect("valid event"));
            assert_eq!(batch.event_source.as_deref(), Some(source));
            assert_eq!(items.len(), 3);
            for item in &items {
                let record = item.record.as_ref().expect("decodes");
                crate::message::decode(&record.body).expect("a Terra message");
            }
        }
    }

    #[test]
    fn null_or_missing_records_are_an_empty_batch() {
        for event in [
            json!({"eventSource": "SelfManagedKafka"}),
            json!({"records": null}),
        ] {
            let (batch, items) = decode(&serde_json::from_value(event).expect("valid"));
            assert!(items.is_empty());
            assert_eq!(
                response(&batch, &[], ResponseMode::WholeBatch),
                Ok(KafkaBatchResponse::default())
            );
        }
    }
}
