//! The operational store: one current DynamoDB item per Terra record.
//!
//! Writes are conditional on the stored item being absent or no newer than the
//! incoming message, so redeliveries are harmless and a late, older message
//! never overwrites newer data. Items too large for DynamoDB's 400 KB limit are
//! stored gzip-compressed, and failing that as a pointer to the S3 archive.

mod items;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use futures::StreamExt;
use serde_json::Value;

use super::{Delivery, Sink, SinkError, SinkReport};
use crate::outcome::Retry;

use items::{PlannedItem, plan};

/// Records above this many bytes of JSON skip straight to the compressed form.
const MAP_FORM_MAX_JSON: usize = 350 * 1024;
/// Compressed records above this go to S3 pointers (leaves room for the keys).
const GZIP_FORM_MAX: usize = 390 * 1024;
/// Items of one payload written at once.
const WRITE_CONCURRENCY: usize = 16;

const STALE_GUARD: &str = "attribute_not_exists(pk) OR terra_sent_at <= :incoming";

pub struct DynamoDbSink {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

/// The ways a record can be held by its item, from the most to the least useful.
#[derive(Debug, Clone, Copy)]
enum RecordForm {
    /// `data`: a native map.
    Map,
    /// `data_gz`: the record's JSON, gzip-compressed.
    Gzip,
    /// `s3_bucket`, `s3_key`, `s3_record_index`: where the archive holds it.
    Pointer,
}

/// How one item was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Put {
    Written,
    /// A newer version is already stored.
    Stale,
}

enum PutFailure {
    /// DynamoDB rejected the item itself (size, number range): try a smaller form.
    Rejected(String),
    Failed(SinkError),
}

impl DynamoDbSink {
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self { client, table }
    }

    /// Tries the record as a map, then compressed, then as a pointer to the
    /// archive, moving on only when DynamoDB rejects the item itself.
    async fn write_item(
        &self,
        mut item: PlannedItem,
        delivery: &Delivery,
        received_at: u64,
    ) -> Result<Put, SinkError> {
        let record_json = serde_json::to_vec(&item.data)
            .map_err(|e| permanent(format!("re-encoding record: {e}")))?;
        let common = common_attributes(&item, delivery.sent_at_ms, received_at);
        let what = format!("{}/{}", item.pk, item.sk);
        let mut compressed_len = None;
        let mut rejection = None;
        for form in [RecordForm::Map, RecordForm::Gzip, RecordForm::Pointer] {
            let record = match form {
                RecordForm::Map if record_json.len() <= MAP_FORM_MAX_JSON => {
                    // Tried once, first: the record can move into it.
                    vec![("data", to_attribute(item.data.take()))]
                }
                RecordForm::Map => continue,
                RecordForm::Gzip => {
                    let compressed = super::gzip(&record_json)
                        .map_err(|e| permanent(format!("compressing {what}: {e}")))?;
                    compressed_len = Some(compressed.len());
                    if compressed.len() > GZIP_FORM_MAX {
                        continue;
                    }
                    vec![("data_gz", AttributeValue::B(Blob::new(compressed.to_vec())))]
                }
                RecordForm::Pointer => {
                    let Some(archived) = &delivery.archived else {
                        break;
                    };
                    let mut pointer = vec![
                        ("s3_bucket", AttributeValue::S(archived.bucket.clone())),
                        ("s3_key", AttributeValue::S(archived.key.clone())),
                    ];
                    if let Some(index) = item.data_index {
                        pointer.push(("s3_record_index", AttributeValue::N(index.to_string())));
                    }
                    pointer
                }
            };
            let mut attributes = common.clone();
            attributes.extend(
                record
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value)),
            );
            match self.put(attributes, delivery.sent_at_ms).await {
                Ok(put) => return Ok(put),
                Err(PutFailure::Failed(error)) => return Err(error),
                Err(PutFailure::Rejected(why)) => {
                    tracing::debug!(item = %what, ?form, reason = %why, "item form rejected");
                    rejection = Some(why);
                }
            }
        }
        match (&delivery.archived, rejection) {
            // The pointer is tiny: refusing it is the table's doing (its key
            // schema, say), not the record's.
            (Some(_), Some(why)) => Err(permanent(format!(
                "{what}: even the S3 pointer was rejected: {why}"
            ))),
            (None, Some(why)) if !is_item_limit(&why) => {
                Err(permanent(format!("{what}: rejected: {why}")))
            }
            _ => Err(refused_record(format!(
                "{what}: record is {} bytes ({} compressed), over DynamoDB's item limits; \
                 enable the S3 archive (TERRA_S3_BUCKET) to store such records as pointers",
                record_json.len(),
                compressed_len.unwrap_or_default()
            ))),
        }
    }

    async fn put(
        &self,
        attributes: HashMap<String, AttributeValue>,
        sent_at_ms: u64,
    ) -> Result<Put, PutFailure> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(attributes))
            .condition_expression(STALE_GUARD)
            .expression_attribute_values(":incoming", AttributeValue::N(sent_at_ms.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Put::Written),
            Err(error) => classify(error),
        }
    }
}

fn classify(error: SdkError<PutItemError>) -> Result<Put, PutFailure> {
    let failed = |retry| {
        PutFailure::Failed(SinkError {
            sink: "dynamodb",
            retry,
            message: format!("PutItem: {}", DisplayErrorContext(&error)),
            record_at_fault: false,
        })
    };
    let SdkError::ServiceError(service) = &error else {
        // Timeouts, dispatch and response errors: the request may not have landed.
        return Err(failed(Retry::Transient));
    };
    if service.err().is_conditional_check_failed_exception() {
        return Ok(Put::Stale);
    }
    let code = service.err().code().unwrap_or_default();
    let throttled = matches!(
        code,
        "ThrottlingException"
            | "ProvisionedThroughputExceededException"
            | "RequestLimitExceeded"
            | "LimitExceededException"
    );
    if code == "ValidationException" {
        let why = service.err().message().unwrap_or(code).to_owned();
        Err(PutFailure::Rejected(why))
    } else if throttled || service.raw().status().is_server_error() {
        Err(failed(Retry::Transient))
    } else {
        Err(failed(Retry::Permanent))
    }
}

/// DynamoDB's words for an item over its limits (size, nesting, number
/// range), as opposed to a request the table cannot take at all.
fn is_item_limit(why: &str) -> bool {
    let why = why.to_ascii_lowercase();
    [
        "item size",
        "nesting levels",
        "number overflow",
        "exceeded the maximum",
    ]
    .iter()
    .any(|limit| why.contains(limit))
}

fn transient(message: String) -> SinkError {
    SinkError {
        sink: "dynamodb",
        retry: Retry::Transient,
        message,
        record_at_fault: false,
    }
}

fn permanent(message: String) -> SinkError {
    SinkError {
        sink: "dynamodb",
        retry: Retry::Permanent,
        message,
        record_at_fault: false,
    }
}

/// DynamoDB refused every form of the record itself (its size or content),
/// and no archive copy is there to point to: a Kafka dead letter, not a
/// blocked partition.
fn refused_record(message: String) -> SinkError {
    SinkError {
        record_at_fault: true,
        ..permanent(message)
    }
}

fn common_attributes(
    item: &PlannedItem,
    sent_at_ms: u64,
    received_at: u64,
) -> HashMap<String, AttributeValue> {
    let mut attributes = HashMap::new();
    let mut text = |name: &str, value: &Option<String>| {
        if let Some(value) = value {
            attributes.insert(name.to_owned(), AttributeValue::S(value.clone()));
        }
    };
    text("user_id", &item.user_id);
    text("provider", &item.provider);
    text("reference_id", &item.reference_id);
    attributes.insert("pk".into(), AttributeValue::S(item.pk.clone()));
    attributes.insert("sk".into(), AttributeValue::S(item.sk.clone()));
    attributes.insert("type".into(), AttributeValue::S(item.event_type.clone()));
    attributes.insert(
        "terra_sent_at".into(),
        AttributeValue::N(sent_at_ms.to_string()),
    );
    attributes.insert(
        "received_at".into(),
        AttributeValue::N(received_at.to_string()),
    );
    for (name, value) in &item.extra {
        attributes.insert(name.clone(), to_attribute(value.clone()));
    }
    attributes
}

/// JSON to DynamoDB's native types: objects become maps, arrays lists.
pub fn to_attribute(value: Value) -> AttributeValue {
    match value {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s),
        Value::Array(items) => AttributeValue::L(items.into_iter().map(to_attribute).collect()),
        Value::Object(fields) => AttributeValue::M(
            fields
                .into_iter()
                .map(|(k, v)| (k, to_attribute(v)))
                .collect(),
        ),
    }
}

/// DynamoDB's native types back to JSON, for readers and tests.
pub fn from_attribute(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::N(n) => {
            serde_json::from_str(n).unwrap_or_else(|_| Value::String(n.clone()))
        }
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::L(items) => Value::Array(items.iter().map(from_attribute).collect()),
        AttributeValue::M(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), from_attribute(v)))
                .collect(),
        ),
        _ => Value::Null,
    }
}

#[async_trait]
impl Sink for DynamoDbSink {
    async fn write(&self, delivery: &Delivery) -> Result<SinkReport, SinkError> {
        let payload = delivery.payload.clone();
        let sent_at_ms = delivery.sent_at_ms;
        // Building the full tree of a large payload is CPU work: keep it off the
        // threads that drive I/O.
        let planned = tokio::task::spawn_blocking(move || {
            serde_json::from_slice::<Value>(&payload).map(|payload| plan(payload, sent_at_ms))
        })
        .await
        .map_err(|e| transient(format!("planning task failed: {e}")))?
        .map_err(|e| {
            refused_record(format!(
                "payload cannot be projected ({})",
                crate::message::json_error_position(&e)
            ))
        })?;

        let received_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let results: Vec<Result<Put, SinkError>> = futures::stream::iter(planned)
            .map(|item| self.write_item(item, delivery, received_at))
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        let mut report = SinkReport::default();
        let mut first_error: Option<SinkError> = None;
        for result in results {
            match result {
                Ok(Put::Written) => report.items_written += 1,
                Ok(Put::Stale) => report.items_stale += 1,
                // A transient error wins: the whole payload is retried anyway.
                Err(error) => match &first_error {
                    Some(existing) if existing.retry == Retry::Transient => {}
                    _ => first_error = Some(error),
                },
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_item_limits_put_the_record_at_fault() {
        assert!(is_item_limit(
            "Item size has exceeded the maximum allowed size"
        ));
        assert!(is_item_limit(
            "Nesting Levels have exceeded supported limits"
        ));
        assert!(!is_item_limit(
            "One or more parameter values were invalid: Missing the key pk in the item"
        ));
    }

    #[test]
    fn attributes_round_trip_json() {
        let value = json!({"a": [1, 2.5, "x", null, true, {"b": []}], "c": {}, "d": "", "e": -3});
        assert_eq!(from_attribute(&to_attribute(value.clone())), value);
    }
}
