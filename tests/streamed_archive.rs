//! Payloads too large to hold, streamed into the archive as multipart
//! uploads while they download: the compiled `sqs-handler` through the Lambda
//! Runtime API, against moto's S3 and a real payload server.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use support::bed::{Bed, assert_all_succeeded, big_activity, failed_ids, sqs_record};
use support::now_ms;
use support::payload_server::Behaviour;
use support::runtime_api::HandlerProcess;
use terra_sink::pipeline::STREAM_ABOVE_BYTES;

const SQS_HANDLER: &str = env!("CARGO_BIN_EXE_sqs-handler");

/// An activity of about `mib` MiB, its samples incompressible, its envelope
/// first, as Terra sends it.
fn payload_of(mib: usize) -> Vec<u8> {
    let samples = mib * 1024 * 1024 / 75;
    let activity = big_activity("streamed", samples, true);
    let body = format!(
        r#"{{"type":"activity","version":"2022-03-16","user":{},"data":{}}}"#,
        activity["user"], activity["data"]
    )
    .into_bytes();
    assert!(
        body.len() as u64 > STREAM_ABOVE_BYTES,
        "{} bytes is not above the streaming threshold",
        body.len()
    );
    body
}

/// A payload of about `mib` MiB of random hex strings: half of it survives
/// gzip, so compressed it still takes several parts.
fn random_text_payload(mib: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let notes: Vec<String> = (0..mib * 1024 * 1024 / 67)
        .map(|_| {
            (0..4)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    format!("{state:016x}")
                })
                .collect()
        })
        .collect();
    format!(
        r#"{{"type":"body","user":{{"user_id":"u-noisy"}},"data":[{{"notes":{}}}]}}"#,
        json!(notes)
    )
    .into_bytes()
}

fn pointer_with_reference(url: &str, reference: &str) -> String {
    json!({"type": "s3_payload", "url": url, "expires_in": 600, "payload_reference": reference})
        .to_string()
}

/// A multipart upload's ETag ends in `-<parts>`; a single PutObject's does not.
fn parts_of(e_tag: Option<&str>) -> Option<usize> {
    e_tag?.trim_matches('"').rsplit_once('-')?.1.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_payload_is_streamed_into_the_archive_in_parts_unchanged() {
    let bed = Bed::start("terra-streamed").await;
    let body = payload_of(20);
    let url = bed
        .payloads
        .route("/large.json", Behaviour::Ok(body.clone()));
    let sent_at = now_ms();
    let event = json!({"Records": [sqs_record("m-large", &pointer_with_reference(&url, "large-1"), sent_at)]});
    let handler = HandlerProcess::spawn(SQS_HANDLER, &bed.env(&[]));

    let result = bed.runtime.invoke(&event, Duration::from_secs(60)).await;
    assert_all_succeeded(&result, &handler);
    let objects = bed.moto.objects(&bed.bucket).await;
    assert_eq!(objects.len(), 1);
    let object = &objects[0];
    assert!(
        object.body == body,
        "the archived object equals the payload"
    );
    assert_eq!(
        parts_of(object.e_tag.as_deref()),
        Some(3),
        "20 MiB in 8 MiB parts: {:?}",
        object.e_tag
    );
    assert_eq!(object.metadata["terra-type"], "activity");
    assert_eq!(object.metadata["terra-provider"], "GARMIN");
    assert_eq!(
        object.metadata["terra-user-id"],
        "40f7b0e1-89e2-43ac-a5b8-1e29c8d47cad"
    );
    assert_eq!(object.metadata["terra-sent-at"], sent_at.to_string());
    assert_eq!(object.content_type.as_deref(), Some("application/json"));
    assert!(object.key.ends_with(".json"), "{}", object.key);
    assert!(bed.moto.uploads_in_progress(&bed.bucket).await.is_empty());

    // A redelivery of the same send finds it archived: one object, untouched.
    let again = bed.runtime.invoke(&event, Duration::from_secs(60)).await;
    assert_all_succeeded(&again, &handler);
    let after = bed.moto.objects(&bed.bucket).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].e_tag, object.e_tag, "the archived object stays");
    assert!(
        bed.moto.uploads_in_progress(&bed.bucket).await.is_empty(),
        "the redelivery's upload was aborted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_payload_is_compressed_on_the_way_when_the_archive_is_gzipped() {
    let bed = Bed::start("terra-streamed-gzip").await;
    // Repetitive samples: 12 MiB of JSON compresses into a single request.
    let samples = 12 * 1024 * 1024 / 70;
    let compressible = serde_json::to_vec(&big_activity("gz", samples, false)).expect("serialises");
    let noisy = random_text_payload(24);
    let p = &bed.payloads;
    let event = json!({"Records": [
        sqs_record("m-compressible", &pointer_with_reference(&p.route("/c.json", Behaviour::Ok(compressible.clone())), "c"), now_ms()),
        sqs_record("m-noisy", &pointer_with_reference(&p.route("/n.json", Behaviour::Ok(noisy.clone())), "n"), now_ms()),
    ]});
    let handler = HandlerProcess::spawn(SQS_HANDLER, &bed.env(&[("TERRA_S3_COMPRESSION", "gzip")]));

    let result = bed.runtime.invoke(&event, Duration::from_secs(120)).await;
    assert_all_succeeded(&result, &handler);
    let objects = bed.moto.objects(&bed.bucket).await;
    assert_eq!(objects.len(), 2);
    let mut seen = BTreeSet::new();
    for object in &objects {
        assert_eq!(object.content_encoding.as_deref(), Some("gzip"));
        assert!(object.key.ends_with(".json.gz"), "{}", object.key);
        let decoded = support::gunzip(&object.body);
        if decoded == compressible {
            assert_eq!(parts_of(object.e_tag.as_deref()), None, "one request");
            seen.insert("compressible");
        } else {
            assert!(decoded == noisy, "decompressed object equals a payload");
            assert!(
                parts_of(object.e_tag.as_deref()) >= Some(2),
                "{:?}",
                object.e_tag
            );
            seen.insert("noisy");
        }
    }
    assert_eq!(seen.len(), 2);
    assert!(bed.moto.uploads_in_progress(&bed.bucket).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_payload_found_invalid_part_way_leaves_no_object_and_no_upload() {
    let bed = Bed::start("terra-streamed-invalid").await;
    let valid = payload_of(20);
    // Broken at the very end, after two parts were uploaded.
    let mut trailing_comma = valid.clone();
    let closing = trailing_comma.pop();
    trailing_comma.extend(b",}");
    assert_eq!(closing, Some(b'}'));
    // Broken in the middle, after the first part.
    let mut bad_utf8 = valid.clone();
    let middle = bad_utf8.len() / 2;
    let quote = middle
        + bad_utf8[middle..]
            .iter()
            .position(|&b| b == b'"')
            .expect("a string")
        + 1;
    bad_utf8[quote] = 0xff;
    let p = &bed.payloads;
    let event = json!({"Records": [
        sqs_record("m-trailing-comma", &pointer_with_reference(&p.route("/comma.json", Behaviour::Ok(trailing_comma)), "comma"), now_ms()),
        sqs_record("m-bad-utf8", &pointer_with_reference(&p.route("/utf8.json", Behaviour::Ok(bad_utf8)), "utf8"), now_ms()),
    ]});
    let handler = HandlerProcess::spawn(SQS_HANDLER, &bed.env(&[]));

    let result = bed.runtime.invoke(&event, Duration::from_secs(60)).await;
    assert_eq!(
        failed_ids(&result),
        BTreeSet::from(["m-bad-utf8".to_owned(), "m-trailing-comma".to_owned()]),
        "{}",
        handler.output()
    );
    let logged = support::logs::record_failures(&handler.output());
    for id in ["m-trailing-comma", "m-bad-utf8"] {
        assert_eq!(logged[id].class, "invalid", "{id}");
        assert_eq!(logged[id].retry, "permanent", "{id}");
    }
    assert!(bed.moto.objects(&bed.bucket).await.is_empty());
    assert_eq!(
        bed.moto.uploads_in_progress(&bed.bucket).await,
        Vec::<String>::new(),
        "every upload begun was aborted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_part_way_is_retried_into_a_new_upload() {
    let bed = Bed::start("terra-streamed-cut").await;
    let body = payload_of(20);
    // The cut comes at 10 MiB, past the threshold: an upload had begun.
    let url = bed.payloads.route(
        "/cut.json",
        Behaviour::Sequence(vec![
            Behaviour::ResetMidBody(body.clone()),
            Behaviour::Ok(body.clone()),
        ]),
    );
    let event =
        json!({"Records": [sqs_record("m-cut", &pointer_with_reference(&url, "cut"), now_ms())]});
    let handler = HandlerProcess::spawn(SQS_HANDLER, &bed.env(&[]));

    let result = bed.runtime.invoke(&event, Duration::from_secs(60)).await;
    assert_all_succeeded(&result, &handler);
    assert_eq!(bed.payloads.hits("/cut.json"), 2);
    let objects = bed.moto.objects(&bed.bucket).await;
    assert_eq!(objects.len(), 1);
    assert!(objects[0].body == body);
    assert!(
        bed.moto.uploads_in_progress(&bed.bucket).await.is_empty(),
        "the cut attempt's upload was aborted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_found_after_the_first_part_still_reaches_the_object() {
    let bed = Bed::start("terra-streamed-late-envelope").await;
    // Terra sends the envelope first; a payload that does not still gets
    // its metadata.
    let data = serde_json::to_string(&big_activity("late", 20 * 1024 * 1024 / 75, true)["data"])
        .expect("serialises");
    let body = format!(
        r#"{{"data":{data},"type":"sleep","user":{{"user_id":"late-user","provider":"OURA"}}}}"#
    )
    .into_bytes();
    let url = bed
        .payloads
        .route("/late.json", Behaviour::Ok(body.clone()));
    let event =
        json!({"Records": [sqs_record("m-late", &pointer_with_reference(&url, "late"), now_ms())]});
    let handler = HandlerProcess::spawn(SQS_HANDLER, &bed.env(&[]));

    let result = bed.runtime.invoke(&event, Duration::from_secs(60)).await;
    assert_all_succeeded(&result, &handler);
    let objects = bed.moto.objects(&bed.bucket).await;
    assert_eq!(objects.len(), 1);
    assert!(objects[0].body == body);
    assert_eq!(objects[0].metadata["terra-type"], "sleep");
    assert_eq!(objects[0].metadata["terra-user-id"], "late-user");
    assert_eq!(objects[0].metadata["terra-provider"], "OURA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_stopped_at_the_deadline_mid_stream_has_its_upload_aborted() {
    let bed = Bed::start("terra-streamed-deadline").await;
    // Past the threshold at once, then a body that never ends.
    let mut head = br#"{"type":"activity","user":{"user_id":"u"},"data":[""#.to_vec();
    head.resize(head.len() + 10 * 1024 * 1024, b'x');
    let url = bed.payloads.route(
        "/endless.json",
        Behaviour::TrickleAfter {
            head,
            interval: Duration::from_millis(200),
        },
    );
    let event = json!({"Records": [sqs_record("m-endless", &pointer_with_reference(&url, "endless"), now_ms())]});
    let handler = HandlerProcess::spawn(SQS_HANDLER, &bed.env(&[]));

    let invocation = bed.runtime.invoke(&event, Duration::from_secs(6));
    let while_streaming = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        bed.moto.uploads_in_progress(&bed.bucket).await
    };
    let (result, begun) = tokio::join!(invocation, while_streaming);
    assert_eq!(begun.len(), 1, "an upload was under way: {begun:?}");
    assert_eq!(
        failed_ids(&result),
        BTreeSet::from(["m-endless".to_owned()]),
        "{}",
        handler.output()
    );
    let logged = support::logs::record_failures(&handler.output());
    assert_eq!(logged["m-endless"].class, "deferred");
    let mut left = begun;
    for _ in 0..50 {
        left = bed.moto.uploads_in_progress(&bed.bucket).await;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        left,
        Vec::<String>::new(),
        "the stopped record's upload was aborted"
    );
    assert!(bed.moto.objects(&bed.bucket).await.is_empty());
}
