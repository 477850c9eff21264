//! Kafka: the event an Amazon MSK or self-managed Kafka event source mapping
//! delivers, the partial batch response it accepts, and the dead letter a
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
use serde_json::{Value, json};

use super::{InboundRecord, SourceItem};
use crate::dead_letter::DeadLetter;
use crate::fetch::{strip_query_strings, strip_query_strings_in_json};
use crate::outcome::{FailureClass, Outcome, RecordFailure, Retry};

/// How much of a record's value a dead letter keeps. Terra's pointers are a
/// few hundred bytes; anything far larger is not Terra's and the queue's
/// message limit must not turn the dead letter into a transient failure.
const DEAD_LETTER_VALUE_LIMIT: usize = 64 * 1024;

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

/// The response a Kafka event source mapping with `ReportBatchItemFailures`
/// understands: it resumes each listed partition from the listed offset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaBatchResponse {
    pub batch_item_failures: Vec<KafkaBatchItemFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaBatchItemFailure {
    pub item_identifier: KafkaItemIdentifier,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaItemIdentifier {
    /// `"<topic>-<partition>"`, as the event names the partition.
    pub partition: String,
    pub offset: i64,
}

/// Which response the function gives (`TERRA_KAFKA_PARTIAL_BATCH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    /// Report the lowest failed offset of each partition; needs
    /// `ReportBatchItemFailures` on the mapping.
    PartialBatch,
    /// Fail the invocation when any record failed, so the whole batch is
    /// retried (the mapping ignores a partial response without
    /// `ReportBatchItemFailures`, which would lose the failed records).
    WholeBatch,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaResponseError {
    /// The batch must be retried as a whole: some records were not written.
    #[error("{failed} of {received} records failed ({by_class}); retrying the whole batch")]
    BatchFailed {
        failed: usize,
        received: usize,
        by_class: String,
    },
    /// A failed record without a partition and offset cannot be reported on
    /// its own, so the whole batch has to be retried instead.
    #[error("record {log_id} failed but has no offset to report")]
    MissingOffset { log_id: String },
    #[error("{outcomes} outcomes for {records} records")]
    Mismatch { records: usize, outcomes: usize },
}

/// One record's identity and its original content, kept beside the decoded
/// item for the response and for a dead letter.
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

    fn decode(&self, log_id: &str) -> Result<InboundRecord, RecordFailure> {
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
        let sent_at_ms = self
            .timestamp_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .filter(|&ms| ms > 0)
            .ok_or_else(|| invalid("record has no valid timestamp"))?;
        Ok(InboundRecord {
            log_id: log_id.to_owned(),
            sent_at_ms,
            body: Bytes::from(body),
        })
    }
}

/// The event's records in a stable order (partitions by name, each in offset
/// order), with the items the batch runner works on.
#[derive(Debug, Clone, Default)]
pub struct DecodedBatch {
    pub event_source: Option<String>,
    pub event_source_arn: Option<String>,
    pub records: Vec<KafkaRecord>,
    /// One per record, in the same order; the batch runner takes them, the
    /// records stay for the response and dead letters.
    pub items: Vec<SourceItem>,
}

pub fn decode(event: &KafkaEvent) -> DecodedBatch {
    let mut batch = DecodedBatch {
        event_source: event.event_source.clone(),
        event_source_arn: event.event_source_arn.clone(),
        ..DecodedBatch::default()
    };
    let partitions = event.records.iter().flatten();
    for (partition_key, records) in partitions {
        for json in records {
            let index = batch.records.len();
            let record = KafkaRecord::from_json(partition_key, json);
            let log_id = record.log_id(index);
            // No ordering group: records of one partition may run concurrently,
            // since replaying later offsets is harmless (idempotent keys and the
            // DynamoDB version guard).
            batch.items.push(SourceItem {
                record: record.decode(&log_id),
                log_id,
                ordering_group: None,
            });
            batch.records.push(record);
        }
    }
    batch
}

/// SQS refuses messages over 256 KiB; the letter stays under this, leaving
/// room for its message attribute.
const DEAD_LETTER_MAX_BYTES: usize = 250 * 1024;
/// Budgets for the record's own content, as escaped JSON.
const DEAD_LETTER_KEY_LIMIT: usize = 16 * 1024;
const DEAD_LETTER_HEADERS_LIMIT: usize = 64 * 1024;
const DEAD_LETTER_MESSAGE_LIMIT: usize = 4 * 1024;

impl DecodedBatch {
    /// The dead letter for record `index`: where it came from, why it failed,
    /// and its original key, value and headers, decoded to text, with every
    /// URL query string cut off (a pre-signed URL is a credential, expired or
    /// not) and cut to fit one SQS message.
    pub fn dead_letter(&self, index: usize, failure: &RecordFailure) -> Option<DeadLetter> {
        let record = self.records.get(index)?;
        let (value, value_note) = dead_letter_value(record.value.as_deref());
        let mut body = json!({
            "source": "terra-sink/kafka-handler",
            "eventSource": self.event_source,
            "eventSourceArn": self.event_source_arn,
            "topic": record.topic,
            "partition": record.partition,
            "partitionKey": record.partition_key,
            "offset": record.offset,
            "timestamp": record.timestamp_ms,
            "timestampType": record.timestamp_type,
            "failure": {
                "class": failure.class,
                "retry": failure.retry,
                "message": fit_escaped(&strip_query_strings(&failure.message), DEAD_LETTER_MESSAGE_LIMIT).0,
            },
            "key": record.key.as_deref().map(|key| {
                fit_escaped(&strip_query_strings(&decoded_text(key)), DEAD_LETTER_KEY_LIMIT).0
            }),
            "value": value,
            "valueNote": value_note,
            "headers": record.headers.as_ref().map(dead_letter_headers),
        });
        let mut text = sqs_safe(body.to_string());
        if text.len() > DEAD_LETTER_MAX_BYTES {
            // Only the record's own fields can be large; the rest is bounded.
            body["key"] = Value::Null;
            body["headers"] = Value::Null;
            body["value"] = Value::Null;
            body["valueNote"] = json!("key, value and headers dropped: too large for SQS");
            text = sqs_safe(body.to_string());
        }
        Some(DeadLetter {
            body: text,
            group: record.partition_key.clone(),
            deduplication_id: format!(
                "{}@{}",
                record.partition_key,
                record
                    .offset
                    .map_or_else(|| format!("#{index}"), |o| o.to_string())
            ),
            class: failure.class,
        })
    }
}

/// A Kafka key as Lambda delivers it (base64) decoded to text, so a URL in
/// it can be found and cut; the raw text when it is not base64.
fn decoded_text(encoded: &str) -> String {
    match BASE64.decode(encoded.trim()) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => encoded.to_owned(),
    }
}

/// Kafka headers as Lambda delivers them (`[{"name": [byte, ...]}]`), as
/// text with query strings cut, within the headers' budget; headers past it
/// are left out and counted.
fn dead_letter_headers(headers: &Value) -> Value {
    let mut budget = DEAD_LETTER_HEADERS_LIMIT;
    let mut out = Vec::new();
    let mut left_out = 0;
    let entries = headers.as_array().map(Vec::as_slice).unwrap_or_default();
    for (name, value) in entries
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|header| header.iter())
    {
        let text = match value {
            Value::Array(bytes) => {
                let bytes: Vec<u8> = bytes
                    .iter()
                    .filter_map(Value::as_i64)
                    .map(|b| b as u8)
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let name = strip_query_strings(name);
        let overhead = escaped_len(&name) + 8;
        if overhead >= budget {
            left_out += 1;
            continue;
        }
        let (text, _) = fit_escaped(&strip_query_strings(&text), budget - overhead);
        budget -= overhead + escaped_len(&text);
        out.push(json!({ name.as_ref(): text }));
    }
    if left_out > 0 {
        out.push(json!({ "terra-sink-note": format!("{left_out} header(s) left out: too large") }));
    }
    Value::Array(out)
}

/// The bytes `text` takes inside a JSON string, as [`sqs_safe`] writes it.
fn escaped_len(text: &str) -> usize {
    text.chars().map(escaped_char_len).sum()
}

fn escaped_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => 6,
        c => c.len_utf8(),
    }
}

/// `text` cut so that its escaped JSON takes at most `budget` bytes, and
/// whether it was cut.
fn fit_escaped(text: &str, budget: usize) -> (String, bool) {
    let mut used = 0;
    for (at, c) in text.char_indices() {
        used += escaped_char_len(c);
        if used > budget {
            return (text[..at].to_owned(), true);
        }
    }
    (text.to_owned(), false)
}

/// SQS accepts only #x9, #xA, #xD, #x20-#xD7FF, #xE000-#xFFFD and
/// #x10000-#x10FFFF. serde_json escapes the control characters; the two
/// non-characters it leaves can only stand inside JSON strings, where their
/// escapes mean the same.
fn sqs_safe(json: String) -> String {
    if !json.contains(['\u{FFFE}', '\u{FFFF}']) {
        return json;
    }
    json.replace('\u{FFFE}', "\\ufffe")
        .replace('\u{FFFF}', "\\uffff")
}

/// The record's value as readable text: decoded from base64, URL query strings
/// cut, and bounded. The note says what was done to it.
fn dead_letter_value(value: Option<&str>) -> (Option<String>, &'static str) {
    let Some(encoded) = value else {
        return (None, "record had no value");
    };
    let (text, note) = match BASE64.decode(encoded.trim()) {
        Err(_) => (
            strip_query_strings(encoded).into_owned(),
            "the raw value, which is not valid base64",
        ),
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(mut doc) => {
                strip_query_strings_in_json(&mut doc);
                (doc.to_string(), "decoded JSON, URL query strings removed")
            }
            Err(_) => (
                strip_query_strings(&String::from_utf8_lossy(&bytes)).into_owned(),
                "decoded text (not JSON), URL query strings removed",
            ),
        },
    };
    match fit_escaped(&text, DEAD_LETTER_VALUE_LIMIT) {
        (cut, true) => (Some(cut), "truncated to 64 KiB, URL query strings removed"),
        (whole, false) => (Some(whole), note),
    }
}

/// The answer to Lambda. In [`ResponseMode::PartialBatch`] each partition with
/// a failure resumes from its lowest failed offset, so nothing after it is
/// skipped; in [`ResponseMode::WholeBatch`] any failure is an error.
pub fn response(
    batch: &DecodedBatch,
    outcomes: &[Outcome],
    mode: ResponseMode,
) -> Result<KafkaBatchResponse, KafkaResponseError> {
    if batch.records.len() != outcomes.len() {
        return Err(KafkaResponseError::Mismatch {
            records: batch.records.len(),
            outcomes: outcomes.len(),
        });
    }
    let failed: Vec<(&KafkaRecord, &RecordFailure)> = batch
        .records
        .iter()
        .zip(outcomes)
        .filter_map(|(record, outcome)| Some((record, outcome.failure()?)))
        .collect();
    if failed.is_empty() {
        return Ok(KafkaBatchResponse::default());
    }
    if mode == ResponseMode::WholeBatch {
        let mut by_class: BTreeMap<FailureClass, usize> = BTreeMap::new();
        for (_, failure) in &failed {
            *by_class.entry(failure.class).or_default() += 1;
        }
        return Err(KafkaResponseError::BatchFailed {
            failed: failed.len(),
            received: outcomes.len(),
            by_class: by_class
                .iter()
                .map(|(class, n)| format!("{class}: {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut lowest: BTreeMap<&str, i64> = BTreeMap::new();
    for (index, (record, _)) in failed.iter().enumerate() {
        let offset = record
            .offset
            .ok_or_else(|| KafkaResponseError::MissingOffset {
                log_id: record.log_id(index),
            })?;
        lowest
            .entry(&record.partition_key)
            .and_modify(|known| *known = (*known).min(offset))
            .or_insert(offset);
    }
    Ok(KafkaBatchResponse {
        batch_item_failures: lowest
            .into_iter()
            .map(|(partition, offset)| KafkaBatchItemFailure {
                item_identifier: KafkaItemIdentifier {
                    partition: partition.to_owned(),
                    offset,
                },
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::examples::{failed, written};

    fn value(text: &str) -> String {
        BASE64.encode(text)
    }

    fn record(topic: &str, partition: i64, offset: i64, value: &str) -> Value {
        json!({
            "topic": topic, "partition": partition, "offset": offset,
            "timestamp": 1_700_000_000_000_i64, "timestampType": "CREATE_TIME",
            "value": value, "headers": []
        })
    }

    fn event(records: Value) -> KafkaEvent {
        serde_json::from_value(json!({
            "eventSource": "aws:kafka",
            "eventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/terra/abc",
            "bootstrapServers": "b-1.terra:9098",
            "records": records
        }))
        .expect("valid event")
    }

    #[test]
    fn decodes_records_of_every_partition_each_on_its_own() {
        let pointer = value(r#"{"type":"s3_payload","url":"https://h/p"}"#);
        let batch = decode(&event(json!({
            "terra-1": [record("terra", 1, 7, &pointer)],
            "terra-0": [
                record("terra", 0, 3, &pointer),
                record("terra", 0, 4, "not base64!"),
                {"topic": "terra", "partition": 0, "offset": 5, "timestamp": 0, "value": pointer},
                {"topic": "terra", "partition": 0, "offset": "6", "value": pointer},
                {"topic": "terra", "partition": 0, "offset": 8, "timestamp": 1, "value": null}
            ]
        })));
        let ids: Vec<&str> = batch.items.iter().map(|i| i.log_id.as_str()).collect();
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
        let first = batch.items[0].record.as_ref().expect("decodes");
        assert_eq!(first.sent_at_ms, 1_700_000_000_000);
        assert_eq!(
            &first.body[..],
            br#"{"type":"s3_payload","url":"https://h/p"}"#
        );
        for item in &batch.items[1..5] {
            let failure = item.record.as_ref().expect_err("must fail");
            assert_eq!(
                (failure.class, failure.retry),
                (FailureClass::Invalid, Retry::Permanent),
                "{}",
                item.log_id
            );
        }
        assert!(batch.items[5].record.is_ok());
        assert!(batch.items.iter().all(|i| i.ordering_group.is_none()));
    }

    #[test]
    fn decodes_the_aws_lambda_events_example() {
        let json = include_str!("../../tests/fixtures/events/aws-lambda-events-kafka.json");
        let batch = decode(&serde_json::from_str(json).expect("valid event"));
        assert_eq!(batch.items.len(), 1);
        assert_eq!(batch.items[0].log_id, "AWSKafkaTopic-0@0");
        let record = batch.items[0].record.as_ref().expect("decodes");
        assert_eq!(record.sent_at_ms, 1_595_035_749_700);
        assert_eq!(&record.body[..], b"8d5596b4-1813-4238-b24b-6dad8e3d1c0c");
    }

    #[test]
    fn sample_events_decode_cleanly() {
        for (json, source) in [
            (include_str!("../../events/msk.json"), "aws:kafka"),
            (
                include_str!("../../events/self-managed-kafka.json"),
                "SelfManagedKafka",
            ),
        ] {
            let batch = decode(&serde_json::from_str(json).expect("valid event"));
            assert_eq!(batch.event_source.as_deref(), Some(source));
            assert_eq!(batch.items.len(), 3);
            for item in &batch.items {
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
            let batch = decode(&serde_json::from_value(event).expect("valid"));
            assert!(batch.items.is_empty());
            assert_eq!(
                response(&batch, &[], ResponseMode::WholeBatch),
                Ok(KafkaBatchResponse::default())
            );
        }
    }

    #[test]
    fn partial_response_names_the_lowest_failed_offset_per_partition() {
        let batch = decode(&event(json!({
            "a-0": [record("a", 0, 10, "e30="), record("a", 0, 11, "e30="), record("a", 0, 12, "e30=")],
            "a-1": [record("a", 1, 20, "e30="), record("a", 1, 21, "e30=")],
            "b-0": [record("b", 0, 5, "e30=")]
        })));
        let outcomes = [
            written(),
            failed(),
            failed(),
            written(),
            written(),
            Outcome::Failed(RecordFailure::new(
                FailureClass::Sink,
                Retry::Transient,
                "x",
            )),
        ];
        let response = response(&batch, &outcomes, ResponseMode::PartialBatch).expect("ok");
        assert_eq!(
            serde_json::to_value(&response).expect("serializes"),
            json!({"batchItemFailures": [
                {"itemIdentifier": {"partition": "a-0", "offset": 11}},
                {"itemIdentifier": {"partition": "b-0", "offset": 5}}
            ]})
        );
    }

    #[test]
    fn whole_batch_mode_fails_the_invocation_on_any_failure() {
        let batch = decode(&event(json!({
            "a-0": [record("a", 0, 1, "e30="), record("a", 0, 2, "e30=")]
        })));
        let error = response(&batch, &[written(), failed()], ResponseMode::WholeBatch)
            .expect_err("a failure fails the batch");
        assert_eq!(
            error.to_string(),
            "1 of 2 records failed (fetch: 1); retrying the whole batch"
        );
        let dead_lettered = Outcome::DeadLettered(RecordFailure::new(
            FailureClass::Expired,
            Retry::Permanent,
            "late",
        ));
        assert_eq!(
            response(
                &batch,
                &[written(), dead_lettered],
                ResponseMode::WholeBatch
            ),
            Ok(KafkaBatchResponse::default())
        );
    }

    #[test]
    fn a_failure_without_offset_fails_the_whole_batch() {
        let batch = decode(&event(json!({
            "a-0": [{"topic": "a", "partition": 0, "value": "e30=", "timestamp": 1}]
        })));
        assert!(matches!(
            response(&batch, &[failed()], ResponseMode::PartialBatch),
            Err(KafkaResponseError::MissingOffset { .. })
        ));
    }

    #[test]
    fn dead_letters_keep_the_record_but_no_query_string() {
        let pointer = r#"{"type":"s3_payload","url":"https://b.s3.amazonaws.com/u/p.json?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=abc","expires_in":600}"#;
        let batch = decode(&event(json!({
            "terra-2": [
                record("terra", 2, 41, &value(pointer)),
                record("terra", 2, 42, &value("see https://h/p?X-Amz-Signature=abc")),
                record("terra", 2, 43, "%%https://h/?X-Amz-Signature=abc"),
            ]
        })));
        let failure = RecordFailure::new(
            FailureClass::Expired,
            Retry::Permanent,
            "URL expired at 2026-11-28T00:10:00Z",
        );
        let letters: Vec<DeadLetter> = (0..3)
            .map(|i| batch.dead_letter(i, &failure).expect("record exists"))
            .collect();
        for letter in &letters {
            assert!(!letter.body.contains("X-Amz"), "{}", letter.body);
            assert_eq!(letter.group, "terra-2");
            assert_eq!(letter.class, FailureClass::Expired);
        }
        let first: Value = serde_json::from_str(&letters[0].body).expect("json");
        assert_eq!(letters[0].deduplication_id, "terra-2@41");
        assert_eq!(
            (&first["topic"], &first["partition"], &first["offset"]),
            (&json!("terra"), &json!(2), &json!(41))
        );
        assert_eq!(first["failure"]["class"], "expired");
        assert_eq!(first["failure"]["retry"], "permanent");
        let value: Value =
            serde_json::from_str(first["value"].as_str().expect("text")).expect("json value");
        assert_eq!(
            value,
            json!({"type": "s3_payload", "url": "https://b.s3.amazonaws.com/u/p.json", "expires_in": 600})
        );
        let second: Value = serde_json::from_str(&letters[1].body).expect("json");
        assert_eq!(second["value"], "see https://h/p");
        assert!(batch.dead_letter(3, &failure).is_none());
    }

    #[test]
    fn dead_letters_always_fit_one_sqs_message() {
        let url = "https://b.s3.amazonaws.com/u/p.json?X-Amz-Signature=abc";
        // Each of these escapes to 6 or 2 bytes of JSON, and U+FFFF is a
        // character SQS refuses outright.
        let nasty = "\u{1}\u{FFFF}\"".repeat(20_000);
        let as_bytes = |text: String| -> Value {
            text.bytes()
                .map(|b| json!(b as i8))
                .collect::<Vec<_>>()
                .into()
        };
        let headers: Vec<Value> = (0..5)
            .map(|i| json!({ format!("h{i}"): as_bytes(format!("{url} {nasty}")) }))
            .collect();
        let batch = decode(&event(json!({"t-0": [{
            "topic": "t", "partition": 0, "offset": 1, "timestamp": 1,
            "key": value(&format!("{url} {nasty}")),
            "value": value(&format!("{url} {nasty}")),
            "headers": headers
        }]})));
        let failure = RecordFailure::new(FailureClass::Invalid, Retry::Permanent, nasty.clone());
        let letter = batch.dead_letter(0, &failure).expect("record exists");
        assert!(
            letter.body.len() <= DEAD_LETTER_MAX_BYTES,
            "{}",
            letter.body.len()
        );
        assert!(
            letter.body.chars().all(|c| matches!(
                c as u32,
                0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF
            )),
            "only characters SQS accepts"
        );
        assert!(!letter.body.contains("X-Amz"), "no query string anywhere");
        let body: Value = serde_json::from_str(&letter.body).expect("valid JSON");
        let key = body["key"].as_str().expect("key decoded to text");
        assert!(key.starts_with("https://b.s3.amazonaws.com/u/p.json \u{1}\u{FFFF}"));
        let first_header = body["headers"][0]["h0"].as_str().expect("header as text");
        assert!(first_header.starts_with("https://b.s3.amazonaws.com/u/p.json "));
        assert!(
            body["value"]
                .as_str()
                .expect("value")
                .starts_with("https://b.s3")
        );
    }

    #[test]
    fn dead_letter_values_are_bounded() {
        let huge = "x".repeat(200_000);
        let batch = decode(&event(json!({"t-0": [record("t", 0, 1, &value(&huge))]})));
        let failure = RecordFailure::new(FailureClass::Invalid, Retry::Permanent, "not JSON");
        let letter = batch.dead_letter(0, &failure).expect("record exists");
        assert!(letter.body.len() < DEAD_LETTER_VALUE_LIMIT + 2048);
        let body: Value = serde_json::from_str(&letter.body).expect("json");
        assert_eq!(
            body["valueNote"],
            "truncated to 64 KiB, URL query strings removed"
        );
    }
}
