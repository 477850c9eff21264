//! The mixed batch: good payloads (plain, gzip, after a 503, with a
//! `payload_reference`) beside every kind of bad record, through a compiled
//! `sqs-handler` into moto's S3 and DynamoDB. The same scenario proves the
//! x86_64 binary and the arm64 artifact (under an emulator).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::bed::{Bed, assert_no_secrets, failed_ids, pointer, sqs_record};
use super::payload_server::Behaviour;
use super::runtime_api::{Executable, HandlerProcess};
use super::{fixture, logs, now_ms};

const TABLE: &str = "terra-mixed-records";

pub async fn run(executable: &Executable) {
    let bed = Bed::start("terra-mixed").await;
    bed.moto.create_table(TABLE).await;
    let p = &bed.payloads;
    let activity = fixture("openapi_activity.json");
    let sleep = fixture("openapi_sleep.json");
    let daily = fixture("openapi_daily.json");
    let auth = fixture("openapi_auth__authSuccess.json");
    let mut oversize = br#"{"type":"activity","data":[""#.to_vec();
    oversize.extend(std::iter::repeat_n(b'x', 300_000));
    oversize.extend(br#""]}"#);

    let now = now_ms();
    let auth_pointer = json!({
        "type": "s3_payload",
        "url": p.route("/payloads/auth.json", Behaviour::Ok(auth.clone())),
        "expires_in": 600,
        "payload_reference": "bb0a8574-ac33-42e5-ae33-49aa52600b1c"
    })
    .to_string();
    let event = json!({"Records": [
        sqs_record("m-activity", &pointer(&p.route("/payloads/activity.json", Behaviour::Ok(activity.clone()))), now),
        sqs_record("m-sleep-gzip", &pointer(&p.route("/payloads/sleep.json", Behaviour::Gzip(sleep.clone()))), now),
        sqs_record("m-daily-503-then-200", &pointer(&p.route("/payloads/daily.json", Behaviour::FailThenOk {
            failures: 1, status: 503, retry_after: None, body: daily.clone(),
        })), now),
        sqs_record("m-auth-with-reference", &auth_pointer, now),
        sqs_record("m-expired-by-timestamp", &pointer(&p.route("/payloads/late.json", Behaviour::Ok(activity.clone()))), now - 601_000),
        sqs_record("m-403-expired-url", &pointer(&p.route("/payloads/gone.json", Behaviour::Status(403))), now),
        sqs_record("m-body-not-json", "Terra says hello", now),
        sqs_record("m-healthcheck", r#"{"type":"healthcheck","status":"success","sent_webhooks_last_hour":42}"#, now),
        sqs_record("m-disallowed-host", &pointer("https://169.254.169.254/latest/meta-data/iam?X-Amz-Signature=5ec7e7516a7c0ffee"), now),
        sqs_record("m-payload-not-json", &pointer(&p.route("/payloads/html.json", Behaviour::Ok(b"<html>busy</html>".to_vec()))), now),
        sqs_record("m-oversize-payload", &pointer(&p.route("/payloads/huge.json", Behaviour::Chunked(oversize))), now),
    ]});

    let env = bed.env(&[
        ("TERRA_MAX_PAYLOAD_BYTES", "262144"),
        ("TERRA_DYNAMODB_TABLE", TABLE),
    ]);
    let handler = HandlerProcess::start(executable, &env);
    let expected_failures: BTreeSet<String> = [
        "m-expired-by-timestamp",
        "m-403-expired-url",
        "m-body-not-json",
        "m-disallowed-host",
        "m-payload-not-json",
        "m-oversize-payload",
    ]
    .map(str::to_owned)
    .into();

    let first = bed.runtime.invoke(&event, Duration::from_secs(60)).await;
    assert_eq!(
        failed_ids(&first),
        expected_failures,
        "output:\n{}",
        handler.output()
    );

    assert_eq!(
        p.hits("/payloads/late.json"),
        0,
        "an expired message must not be fetched"
    );
    assert_eq!(
        p.hits("/payloads/gone.json"),
        1,
        "403 is permanent: no retry"
    );
    assert_eq!(p.hits("/payloads/daily.json"), 2, "503 once, then 200");

    let date = time::OffsetDateTime::now_utc().date();
    let dt = format!("terra/dt={}", date);
    let objects = bed.moto.objects(&bed.bucket).await;
    let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(objects.len(), 4, "exactly the four good payloads: {keys:?}");
    assert!(
        keys.contains(&format!("{dt}/bb0a8574-ac33-42e5-ae33-49aa52600b1c.json").as_str()),
        "payload_reference names the object: {keys:?}"
    );
    for object in &objects {
        assert!(
            object.key.starts_with(&dt) && object.key.ends_with(".json"),
            "{}",
            object.key
        );
        assert_eq!(object.content_type.as_deref(), Some("application/json"));
        assert_eq!(object.content_encoding, None);
    }
    let mut archived: Vec<Vec<u8>> = objects.iter().map(|o| o.body.clone()).collect();
    let mut served = vec![activity, sleep, daily, auth];
    archived.sort();
    served.sort();
    assert!(
        archived == served,
        "archived bytes must equal the served payloads"
    );
    let activity_object = objects
        .iter()
        .find(|o| o.metadata.get("terra-type").map(String::as_str) == Some("activity"))
        .expect("activity archived with its type");
    assert_eq!(
        activity_object
            .metadata
            .get("terra-user-id")
            .map(String::as_str),
        Some("40f7b0e1-89e2-43ac-a5b8-1e29c8d47cad")
    );
    assert_eq!(
        activity_object
            .metadata
            .get("terra-provider")
            .map(String::as_str),
        Some("GARMIN")
    );

    // One current item per good record (the auth event also keeps the
    // user's profile), all under the one user of Terra's examples.
    let items = bed.moto.items(TABLE).await;
    let kinds: BTreeSet<(&str, &str)> = items
        .keys()
        .map(|(pk, sk)| (pk.as_str(), sk.split('#').next().unwrap_or_default()))
        .collect();
    let user = "USER#40f7b0e1-89e2-43ac-a5b8-1e29c8d47cad";
    assert_eq!(
        kinds,
        ["ACTIVITY", "DAILY", "EVENT", "PROFILE", "SLEEP"]
            .map(|kind| (user, kind))
            .into(),
        "items: {:?}\noutput:\n{}",
        items.keys(),
        handler.output()
    );
    assert_eq!(items.len(), 5, "{:?}", items.keys());

    // Redelivery: the same event again adds nothing and fails the same records.
    let second = bed.runtime.invoke(&event, Duration::from_secs(60)).await;
    assert_eq!(failed_ids(&second), expected_failures);
    let again = bed.moto.objects(&bed.bucket).await;
    let again_keys: Vec<&str> = again.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(again_keys, keys, "a replayed batch must not add objects");
    let items_again = bed.moto.items(TABLE).await;
    assert_eq!(
        items_again.keys().collect::<Vec<_>>(),
        items.keys().collect::<Vec<_>>(),
        "a replayed batch must not add items"
    );

    let output = handler.output();
    assert_no_secrets(&output);
    let summaries: Vec<Value> = output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["message"] == logs::BATCH_DONE)
        .collect();
    assert_eq!(summaries.len(), 2, "one summary line per batch:\n{output}");
    assert_eq!(summaries[0]["fields"]["received"], 11);
    assert_eq!(summaries[0]["fields"]["written"], 4);
    assert_eq!(summaries[0]["fields"]["failed"], 6);
    let metrics: Vec<Value> = output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line.get("_aws").is_some())
        .collect();
    let (by_type, metrics): (Vec<Value>, Vec<Value>) = metrics
        .into_iter()
        .partition(|doc| doc.get("Type").is_some());
    assert_eq!(metrics.len(), 2, "one EMF document per batch:\n{output}");
    let written_by_type: u64 = by_type
        .iter()
        .filter_map(|doc| doc["RecordsWritten"].as_u64())
        .sum();
    assert_eq!(
        written_by_type,
        4 + metrics[1]["RecordsWritten"].as_u64().unwrap_or(0)
    );
    let emf = &metrics[0];
    assert_eq!(
        emf["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "TerraSink"
    );
    assert_eq!(emf["FunctionName"], "terra-sink");
    assert_eq!(
        (
            &emf["RecordsReceived"],
            &emf["RecordsWritten"],
            &emf["RecordsSkipped"]
        ),
        (&json!(11), &json!(4), &json!(1))
    );
    assert_eq!(
        (
            &emf["RecordsFailedExpired"],
            &emf["RecordsFailedRefused"],
            &emf["RecordsFailedInvalid"],
            &emf["RecordsFailedFetch"]
        ),
        (&json!(2), &json!(1), &json!(2), &json!(1))
    );
    assert_eq!(emf["FetchLatency"].as_array().map(Vec::len), Some(4));
    assert!(
        emf["PayloadAgeAtFetch"].as_array().is_some_and(|ages| ages
            .iter()
            .all(|age| age.as_u64().is_some_and(|a| a < 60_000))),
        "{emf}"
    );
    let failure_lines = output
        .lines()
        .filter(|l| l.contains(logs::RECORD_FAILED))
        .count();
    assert_eq!(
        failure_lines, 12,
        "one line per failed record per batch:\n{output}"
    );
}
