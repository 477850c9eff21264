#![allow(dead_code)] // Each fuzz target uses one of the checks.

//! What must hold for any input to the decoders. The fuzz targets (`fuzz/`)
//! and the regression test (`tests/fuzz_regressions.rs`) share these checks,
//! so a crash the fuzzer finds stays a test once its input is kept.

use serde_json::Value;
use terra_sink::fetch::UrlPolicy;
use terra_sink::message::{self, TerraMessage};
use terra_sink::outcome::{FailureClass, Outcome, RecordFailure, Retry};
use terra_sink::payload;
use terra_sink::sink::{ArchiveName, KeyPrefix};
use terra_sink::source::kafka::{self, KafkaEvent, ResponseMode};

/// An SQS body (Terra's pointer message): decoding never panics, errors never
/// echo the input, and a pointer always names a safe key under the prefix.
pub fn sqs_body(data: &[u8]) {
    match message::decode(data) {
        Ok(TerraMessage::Payload(pointer)) => {
            let prefix = KeyPrefix::parse("terra/").expect("valid prefix");
            let key = ArchiveName::for_message(&pointer, 1_700_000_000_000).key(&prefix, ".gz");
            assert!(key.starts_with("terra/dt=") && key.len() <= 1024, "{key}");
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=".contains(&b)),
                "{key}"
            );
            let _ = UrlPolicy::default().check_url(&pointer.url);
        }
        Ok(TerraMessage::Healthcheck) => {}
        // Errors quote at most a bounded, escaped part of the input.
        Err(error) => assert!(error.to_string().len() < 1024, "{error}"),
    }
}

/// A Kafka event: every record becomes an item, both answers can be built,
/// and every quarantine message is bounded JSON.
pub fn kafka_event(data: &[u8]) {
    let Ok(event) = serde_json::from_slice::<KafkaEvent>(data) else {
        return;
    };
    let (batch, items) = kafka::decode(&event);
    assert_eq!(items.len(), batch.records.len());
    let failure = RecordFailure::new(FailureClass::Invalid, Retry::Permanent, "fuzz");
    let outcomes: Vec<Outcome> = (0..batch.records.len())
        .map(|_| Outcome::Failed(failure.clone()))
        .collect();
    let _ = kafka::response(&batch, &outcomes, ResponseMode::WholeBatch);
    if let Ok(response) = kafka::response(&batch, &outcomes, ResponseMode::PartialBatch) {
        for failure in &response.batch_item_failures {
            let id = &failure.item_identifier;
            assert!(
                batch
                    .records
                    .iter()
                    .any(|r| r.partition_key == id.partition && r.offset == Some(id.offset)),
                "{id:?} is not a record of the batch"
            );
        }
    }
    for index in 0..batch.records.len() {
        let letter = batch.quarantined(index, &failure).expect("record exists");
        assert!(letter.body.len() < 512 * 1024);
        serde_json::from_str::<Value>(&letter.body).expect("a quarantine message is JSON");
    }
}

/// A payload: what `inspect` accepts (and so the archive stores), every sink
/// can parse.
/// Also: a payload streamed into the archive, checked piece by piece, is
/// judged as it would be whole, wherever the pieces break.
pub fn payload(data: &[u8]) {
    let whole = payload::inspect(data);
    if let Ok(summary) = &whole {
        assert!(!summary.event_type.is_empty());
        serde_json::from_slice::<Value>(data).expect("an accepted payload parses as JSON");
    }
    let cut = data
        .first()
        .map_or(0, |&b| usize::from(b) % (data.len() + 1));
    let mut inspector = payload::IncrementalInspector::new();
    let in_pieces = inspector
        .feed(&data[..cut])
        .and_then(|()| inspector.feed(&data[cut..]))
        .and_then(|()| inspector.finish());
    assert_eq!(whole.ok(), in_pieces.ok(), "whole and in pieces disagree");
}
