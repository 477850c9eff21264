//! Lambda events as the event source mappings build them, and Terra's
//! pointer message, for tests and the local mappings alike.

use base64::Engine;
use serde_json::{Value, json};

/// One record of a Kafka event: topic, partition, offset, the value already
/// base64-encoded (as Lambda delivers it), and the record timestamp.
#[derive(Debug, Clone)]
pub struct KafkaRecord {
    pub topic: String,
    pub partition: i64,
    pub offset: i64,
    pub value: String,
    pub timestamp_ms: u64,
}

/// Where a Kafka event comes from: the two mappings name themselves
/// differently, and only MSK gives an ARN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaSource {
    Msk,
    SelfManaged,
}

/// A Kafka record value as Lambda delivers it.
pub fn base64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A Kafka event holding `records`, grouped by partition in the order given.
pub fn kafka_event(source: KafkaSource, records: &[KafkaRecord]) -> Value {
    let mut partitions = serde_json::Map::new();
    for record in records {
        let key = format!("{}-{}", record.topic, record.partition);
        let entry = partitions.entry(key).or_insert_with(|| json!([]));
        if let Value::Array(list) = entry {
            list.push(json!({
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "timestamp": record.timestamp_ms,
                "timestampType": "CREATE_TIME",
                "value": record.value,
                // Header values are byte arrays of signed numbers.
                "headers": [{"content-type": b"application/json".map(|b| b as i8)}]
            }));
        }
    }
    let bootstrap = "b-1.terra.abc123.c2.kafka.us-east-1.amazonaws.com:9096";
    match source {
        KafkaSource::SelfManaged => json!({
            "eventSource": "SelfManagedKafka",
            "bootstrapServers": bootstrap,
            "records": partitions
        }),
        KafkaSource::Msk => json!({
            "eventSource": "aws:kafka",
            "eventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/terra/abc123-4",
            "bootstrapServers": bootstrap,
            "records": partitions
        }),
    }
}

/// Terra's pointer message for a payload at `url`.
pub fn pointer(url: &str) -> String {
    json!({"status": "success", "type": "s3_payload", "url": url, "expires_in": 600}).to_string()
}
