//! The operational store: one current DynamoDB item per Terra record.
//!
//! Writes are conditional on the stored item being absent or no newer than the
//! incoming message, so redeliveries are harmless and a late, older message
//! never overwrites newer data. Items too large for DynamoDB's 400 KB limit are
//! stored gzip-compressed, and failing that as a pointer to the S3 archive.

mod items;

pub use items::user_partition_key;
mod projection;

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use futures::StreamExt;
use serde_json::Value;

use super::{Delivery, Sink, SinkError, SinkReport};
use crate::outcome::Retry;
use crate::sdk_error;

use crate::budget::HoldingCost;
use items::PlannedItem;
use projection::{ItemSink, ProjectionError, ReadyItem, RecordForm};

/// The `(pk, sk)` of each item `payload` becomes, sent at `sent_at_ms`:
/// the item model, for a tool that looks for what the sink wrote.
pub fn item_keys(payload: &Value, sent_at_ms: u64) -> Vec<(String, String)> {
    items::plan(payload.clone(), sent_at_ms)
        .into_iter()
        .map(|item| (item.pk, item.sk))
        .collect()
}

/// Items of one payload written at once.
const WRITE_CONCURRENCY: usize = 16;
/// Items planned ahead of the writers, besides those being written.
const PLANNED_AHEAD: usize = 4;
/// Most items one payload may make, by default (`TERRA_DYNAMODB_MAX_ITEMS`).
pub const DEFAULT_MAX_ITEMS: usize = 10_000;

const STALE_GUARD: &str = "attribute_not_exists(pk) OR terra_sent_at <= :incoming";

pub struct DynamoDbSink {
    client: aws_sdk_dynamodb::Client,
    table: String,
    max_items: usize,
    retention_days: Option<u32>,
}

/// The attribute DynamoDB's time to live reads: when an item may go, in
/// epoch seconds.
pub const EXPIRES_AT: &str = "expires_at";

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
    pub fn new(client: aws_sdk_dynamodb::Client, table: String, max_items: usize) -> Self {
        Self {
            client,
            table,
            max_items,
            retention_days: None,
        }
    }

    /// Every item written carries `expires_at`, `days` after Terra sent the
    /// record's version it holds, for the table's time to live to remove.
    pub fn expiring_after(self, days: Option<u32>) -> Self {
        Self {
            retention_days: days,
            ..self
        }
    }

    /// `cost` plus what the projection holds: the window of records being
    /// converted and written, each taking about 20 times its JSON as
    /// attributes and request buffers (BENCHMARKS.md, "DynamoDB path": 32
    /// records of 100 KB in flight peak at about 2 MiB each).
    pub fn holding_cost(cost: HoldingCost) -> HoldingCost {
        const ATTRIBUTES_PER_JSON_BYTE: u64 = 20;
        HoldingCost {
            projection_percent: ATTRIBUTES_PER_JSON_BYTE * 100,
            projection_cap: ATTRIBUTES_PER_JSON_BYTE
                * (projection::WINDOW_BYTES + projection::MAP_FORM_MAX_JSON) as u64,
            ..cost
        }
    }

    /// Tries the record as a map, then compressed, then as a pointer to the
    /// archive, moving on only when DynamoDB rejects the item itself.
    async fn write_item(
        &self,
        ready: ReadyItem,
        delivery: &Delivery,
        received_at: u64,
    ) -> Result<Put, SinkError> {
        let ReadyItem {
            item,
            json_len,
            json,
            form,
            ..
        } = ready;
        let mut common = common_attributes(&item, delivery.sent_at_ms, received_at);
        if let Some(expires_at) = expires_at(delivery.sent_at_ms, self.retention_days) {
            common.insert(EXPIRES_AT.into(), AttributeValue::N(expires_at.to_string()));
        }
        let what = format!("{}/{}", item.pk, item.sk);
        let mut next = Some(form);
        let mut compressed_len = None;
        let mut rejection = None;
        while let Some(form) = next.take() {
            let record = match form {
                RecordForm::Map(attribute) => {
                    next = Some(RecordForm::Compress);
                    vec![("data", attribute)]
                }
                RecordForm::Compress => {
                    // A map DynamoDB refused (too deep, say) goes compressed.
                    let json = json.bytes(&delivery.payload);
                    next = Some(
                        tokio::task::spawn_blocking(move || projection::compressed_form(&json))
                            .await
                            .map_err(|e| transient(format!("compression task failed: {e}")))?,
                    );
                    continue;
                }
                RecordForm::Gzip(compressed) => {
                    compressed_len = Some(compressed.len());
                    next = Some(RecordForm::PointerOnly { compressed_over: 0 });
                    vec![("data_gz", AttributeValue::B(Blob::new(compressed)))]
                }
                RecordForm::PointerOnly { compressed_over } => {
                    if compressed_over > 0 {
                        compressed_len = Some(compressed_over);
                    }
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
            let merge = item.sk == items::PROFILE_SK;
            match self.put(attributes, delivery.sent_at_ms, merge).await {
                Ok(put) => return Ok(put),
                Err(PutFailure::Failed(error)) => return Err(error),
                Err(PutFailure::Rejected(why)) => {
                    tracing::debug!(item = %what, reason = %why, "item form rejected");
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
                "{what}: record is {json_len} bytes ({} compressed), over DynamoDB's item limits; \
                 enable the S3 archive (TERRA_S3_BUCKET) to store such records as pointers",
                compressed_len.unwrap_or_default()
            ))),
        }
    }

    /// Writes the item under the version guard: whole (PutItem), or with
    /// `merge` only the attributes given (UpdateItem), keeping those an
    /// event does not carry. A user's `PROFILE` merges: a later event whose
    /// user object lacks `reference_id` or `scopes` must not drop them (nor
    /// `gsi1pk`), and `replaced_by` stays once a reauth set it.
    async fn put(
        &self,
        attributes: HashMap<String, AttributeValue>,
        sent_at_ms: u64,
        merge: bool,
    ) -> Result<Put, PutFailure> {
        let incoming = AttributeValue::N(sent_at_ms.to_string());
        let result = if merge {
            self.update(attributes, incoming).await
        } else {
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(attributes))
                .condition_expression(STALE_GUARD)
                .expression_attribute_values(":incoming", incoming)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| failed_put("PutItem", e))
        };
        match result {
            Ok(()) => Ok(Put::Written),
            Err(failure) => failure,
        }
    }

    /// SET for every attribute given; REMOVE for the record's other forms,
    /// so a record stored compressed before leaves no stale `data_gz`.
    async fn update(
        &self,
        mut attributes: HashMap<String, AttributeValue>,
        incoming: AttributeValue,
    ) -> Result<(), Result<Put, PutFailure>> {
        let mut key = HashMap::new();
        for name in ["pk", "sk"] {
            if let Some(value) = attributes.remove(name) {
                key.insert(name.to_owned(), value);
            }
        }
        let mut names = HashMap::new();
        let mut removes = Vec::new();
        for (n, form) in RECORD_FORMS.iter().enumerate() {
            if !attributes.contains_key(*form) {
                names.insert(format!("#r{n}"), (*form).to_owned());
                removes.push(format!("#r{n}"));
            }
        }
        let mut values = HashMap::from([(":incoming".to_owned(), incoming)]);
        let mut sets = Vec::new();
        for (n, (name, value)) in attributes.into_iter().enumerate() {
            names.insert(format!("#s{n}"), name);
            values.insert(format!(":s{n}"), value);
            sets.push(format!("#s{n} = :s{n}"));
        }
        let mut expression = format!("SET {}", sets.join(", "));
        if !removes.is_empty() {
            expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .update_expression(expression)
            .condition_expression(STALE_GUARD)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| failed_put("UpdateItem", e))
    }
}

/// The attributes a record is held in, one form or another.
const RECORD_FORMS: [&str; 5] = ["data", "data_gz", "s3_bucket", "s3_key", "s3_record_index"];

/// A failed put: the version guard holding a newer item, the item refused
/// for its content, or what [`sdk_error::classify`] makes of the rest (a
/// refusal is the deployment's: a missing table or permission).
fn failed_put<E>(call: &str, error: SdkError<E, HttpResponse>) -> Result<Put, PutFailure>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let SdkError::ServiceError(service) = &error {
        if service.err().code() == Some("ConditionalCheckFailedException") {
            return Ok(Put::Stale);
        }
        if service.err().code() == Some("ValidationException") {
            let why = service.err().message().unwrap_or("ValidationException");
            return Err(PutFailure::Rejected(why.to_owned()));
        }
    }
    Err(PutFailure::Failed(SinkError {
        sink: "dynamodb",
        retry: sdk_error::classify(&error).retry(),
        message: format!("{call}: {}", sdk_error::describe(&error)),
        record_at_fault: false,
    }))
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
/// and no archive copy is there to point to: quarantined on Kafka, not a
/// blocked partition.
fn refused_record(message: String) -> SinkError {
    SinkError {
        record_at_fault: true,
        ..permanent(message)
    }
}

/// When an item of a record sent at `sent_at_ms` may expire, in epoch
/// seconds (DynamoDB's time to live reads seconds).
fn expires_at(sent_at_ms: u64, retention_days: Option<u32>) -> Option<u64> {
    retention_days.map(|days| sent_at_ms / 1000 + u64::from(days) * 86_400)
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

/// Items of one payload are written concurrently, but two records with the
/// same key (a daily record sent twice in one payload, say) carry the same
/// version, so the guard lets both through: they are written in payload
/// order, and the later one stays, as it would in a tree of the payload.
#[derive(Default)]
struct KeyOrder {
    /// Per key, the end of the last write planned, for the next to wait on.
    last: HashMap<(String, String), tokio::sync::oneshot::Receiver<()>>,
}

/// An item's place behind the earlier write of its key.
struct Turn {
    after: Option<tokio::sync::oneshot::Receiver<()>>,
    done: tokio::sync::oneshot::Sender<()>,
}

impl KeyOrder {
    fn take_turn(&mut self, item: &PlannedItem) -> Turn {
        let (done, finished) = tokio::sync::oneshot::channel();
        let after = self
            .last
            .insert((item.pk.clone(), item.sk.clone()), finished);
        Turn { after, done }
    }
}

impl Turn {
    /// Waits for the earlier write of the key; the returned sender tells the
    /// next when dropped, once this write is done (or given up).
    async fn wait(self) -> tokio::sync::oneshot::Sender<()> {
        if let Some(earlier) = self.after {
            // A dropped sender (its write gave up) lets this one go too.
            let _ = earlier.await;
        }
        self.done
    }
}

/// Hands planned items from the planner's thread to the async writers.
struct ToWriters(tokio::sync::mpsc::Sender<ReadyItem>);

impl ItemSink for ToWriters {
    fn send(&mut self, item: ReadyItem) -> bool {
        self.0.blocking_send(item).is_ok()
    }
}

#[async_trait]
impl Sink for DynamoDbSink {
    /// Items are planned on a blocking thread, one record at a time, while
    /// earlier ones are written: neither the payload's tree nor all its items
    /// are ever held at once.
    async fn write(&self, delivery: &Delivery) -> Result<SinkReport, SinkError> {
        let payload = delivery.payload.clone();
        let sent_at_ms = delivery.sent_at_ms;
        let max_items = self.max_items;
        let (sender, receiver) = tokio::sync::mpsc::channel(PLANNED_AHEAD);
        let planner = tokio::task::spawn_blocking(move || {
            projection::project(
                &payload,
                sent_at_ms,
                max_items,
                &projection::window(),
                &mut ToWriters(sender),
            )
        });

        let received_at = crate::wall_clock::now_ms();
        let mut report = SinkReport::default();
        let mut first_error: Option<SinkError> = None;
        let mut receiver = receiver;
        let mut in_key_order = KeyOrder::default();
        let mut written = futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
            .map(|item| {
                let turn = in_key_order.take_turn(&item.item);
                async move {
                    let _done_when_dropped = turn.wait().await;
                    self.write_item(item, delivery, received_at).await
                }
            })
            .buffer_unordered(WRITE_CONCURRENCY);
        while let Some(result) = written.next().await {
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
        planner
            .await
            .map_err(|e| transient(format!("planning task failed: {e}")))?
            .map_err(|e: ProjectionError| refused_record(e.to_string()))?;
        match first_error {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn items_expire_whole_days_after_the_send_in_seconds() {
        assert_eq!(super::expires_at(1_700_000_000_123, None), None);
        assert_eq!(
            super::expires_at(1_700_000_000_123, Some(30)),
            Some(1_700_000_000 + 30 * 86_400)
        );
    }

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
