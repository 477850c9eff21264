//! What a poison Kafka record becomes on the quarantine queue: where it came from, why it
//! failed, and its content as text with every URL query string cut, sized to
//! fit one SQS message.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::DecodedBatch;
use crate::outcome::RecordFailure;
use crate::quarantine::QuarantinedRecord;
use crate::redact::{strip_query_strings, strip_query_strings_in_json};

/// How much of a record's value its quarantine message keeps. Terra's pointers are a
/// few hundred bytes; anything far larger is not Terra's and the queue's
/// message limit must not turn quarantining it into a transient failure.
const QUARANTINED_VALUE_LIMIT: usize = 64 * 1024;

/// SQS refuses messages over 256 KiB; the message stays under this, leaving
/// room for its message attribute.
const QUARANTINED_MAX_BYTES: usize = 250 * 1024;
/// Budgets for the record's own content, as escaped JSON.
const QUARANTINED_KEY_LIMIT: usize = 16 * 1024;
const QUARANTINED_HEADERS_LIMIT: usize = 64 * 1024;
const QUARANTINED_MESSAGE_LIMIT: usize = 4 * 1024;

impl DecodedBatch {
    /// The quarantine message for record `index`: where it came from, why it failed,
    /// and its original key, value and headers, decoded to text, with every
    /// URL query string cut off (a pre-signed URL is a credential, expired or
    /// not) and cut to fit one SQS message.
    pub fn quarantined(&self, index: usize, failure: &RecordFailure) -> Option<QuarantinedRecord> {
        let record = self.records.get(index)?;
        let (value, value_note) = quarantined_value(record.value.as_deref());
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
                "message": fit_escaped(&strip_query_strings(&failure.message), QUARANTINED_MESSAGE_LIMIT).0,
            },
            "key": record.key.as_deref().map(|key| {
                fit_escaped(&strip_query_strings(&decoded_text(key)), QUARANTINED_KEY_LIMIT).0
            }),
            "value": value,
            "valueNote": value_note,
            "headers": record.headers.as_ref().map(quarantined_headers),
        });
        let mut text = sqs_safe(body.to_string());
        if text.len() > QUARANTINED_MAX_BYTES {
            // Only the record's own fields can be large; the rest is bounded.
            body["key"] = Value::Null;
            body["headers"] = Value::Null;
            body["value"] = Value::Null;
            body["valueNote"] = json!("key, value and headers dropped: too large for SQS");
            text = sqs_safe(body.to_string());
        }
        Some(QuarantinedRecord {
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
fn quarantined_headers(headers: &Value) -> Value {
    let mut budget = QUARANTINED_HEADERS_LIMIT;
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
fn quarantined_value(value: Option<&str>) -> (Option<String>, &'static str) {
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
    match fit_escaped(&text, QUARANTINED_VALUE_LIMIT) {
        (cut, true) => (Some(cut), "truncated to 64 KiB, URL query strings removed"),
        (whole, false) => (Some(whole), note),
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode;
    use super::super::tests::{event, record, value};
    use super::*;
    use crate::outcome::{FailureClass, Retry};

    #[test]
    fn quarantined_records_keep_their_content_but_no_query_string() {
        let pointer = r#"{"type":"s3_payload","url":"https://b.s3.amazonaws.com/u/p.json?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=abc","expires_in":600}"#;
        let (batch, _) = decode(&event(json!({
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
        let quarantined: Vec<QuarantinedRecord> = (0..3)
            .map(|i| batch.quarantined(i, &failure).expect("record exists"))
            .collect();
        for quarantined in &quarantined {
            assert!(!quarantined.body.contains("X-Amz"), "{}", quarantined.body);
            assert_eq!(quarantined.group, "terra-2");
            assert_eq!(quarantined.class, FailureClass::Expired);
        }
        let first: Value = serde_json::from_str(&quarantined[0].body).expect("json");
        assert_eq!(quarantined[0].deduplication_id, "terra-2@41");
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
        let second: Value = serde_json::from_str(&quarantined[1].body).expect("json");
        assert_eq!(second["value"], "see https://h/p");
        assert!(batch.quarantined(3, &failure).is_none());
    }

    #[test]
    fn quarantined_records_always_fit_one_sqs_message() {
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
        let (batch, _) = decode(&event(json!({"t-0": [{
            "topic": "t", "partition": 0, "offset": 1, "timestamp": 1,
            "key": value(&format!("{url} {nasty}")),
            "value": value(&format!("{url} {nasty}")),
            "headers": headers
        }]})));
        let failure = RecordFailure::new(FailureClass::Invalid, Retry::Permanent, nasty.clone());
        let quarantined = batch.quarantined(0, &failure).expect("record exists");
        assert!(
            quarantined.body.len() <= QUARANTINED_MAX_BYTES,
            "{}",
            quarantined.body.len()
        );
        assert!(
            quarantined.body.chars().all(|c| matches!(
                c as u32,
                0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF
            )),
            "only characters SQS accepts"
        );
        assert!(
            !quarantined.body.contains("X-Amz"),
            "no query string anywhere"
        );
        let body: Value = serde_json::from_str(&quarantined.body).expect("valid JSON");
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
    fn quarantined_values_are_bounded() {
        let huge = "x".repeat(200_000);
        let (batch, _) = decode(&event(json!({"t-0": [record("t", 0, 1, &value(&huge))]})));
        let failure = RecordFailure::new(FailureClass::Invalid, Retry::Permanent, "not JSON");
        let quarantined = batch.quarantined(0, &failure).expect("record exists");
        assert!(quarantined.body.len() < QUARANTINED_VALUE_LIMIT + 2048);
        let body: Value = serde_json::from_str(&quarantined.body).expect("json");
        assert_eq!(
            body["valueNote"],
            "truncated to 64 KiB, URL query strings removed"
        );
    }
}
