//! The DynamoDB sink through the compiled `sqs-handler`, against moto's
//! DynamoDB (which enforces the 400 KB item limit) and S3.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};
use support::bed::{Bed, assert_all_succeeded, big_activity, failed_ids, pointer, sqs_record};
use support::payload_server::Behaviour;
use support::runtime_api::HandlerProcess;
use support::{fixture, now_ms};
use terra_sink::sink::from_attribute;
use terra_sink_dev::fault_proxy::{Fault, FaultProxy, FaultSchedule};

const SQS_HANDLER: &str = env!("CARGO_BIN_EXE_sqs-handler");
const TABLE: &str = "terra-records";
const USER: &str = "USER#40f7b0e1-89e2-43ac-a5b8-1e29c8d47cad";

type Item = HashMap<String, AttributeValue>;

fn key(pk: &str, sk: &str) -> (String, String) {
    (pk.to_owned(), sk.to_owned())
}

fn rfc3339(ms: u64) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .expect("valid time");
    time.format(&time::format_description::well_known::Rfc3339)
        .expect("formattable")
}

fn json_of(item: &Item, attribute: &str) -> Value {
    from_attribute(
        item.get(attribute)
            .unwrap_or_else(|| panic!("no {attribute} in {item:?}")),
    )
}

fn whole_second_now() -> u64 {
    now_ms() / 1000 * 1000
}

async fn bed_with_table(bucket: &str) -> Bed {
    let bed = Bed::start(bucket).await;
    bed.moto.create_table(TABLE).await;
    bed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_terra_example_lands_under_its_documented_keys() {
    let bed = bed_with_table("terra-examples").await;
    // Lifecycle events last, reauth the very last: their PROFILE upserts are
    // ordered by send time, so the old user's profile ends retired.
    let examples = [
        "openapi_activity.json",
        "openapi_athlete.json",
        "openapi_body.json",
        "openapi_daily.json",
        "openapi_menstruation.json",
        "openapi_nutrition.json",
        "openapi_sleep.json",
        "openapi_auth__authCancelled.json",
        "openapi_lab_report__completed.json",
        "openapi_lab_report__failed.json",
        "docs_auth_success__handling-authentication-events.json",
        "openapi_auth__authSuccess.json",
        "openapi_connection_error.json",
        "openapi_large_request_processing.json",
        "openapi_large_request_sending.json",
        "openapi_permission_change.json",
        "illustrative_rate_limit_hit.CONSTRUCTED.json",
        "openapi_deauth.json",
        "openapi_access_revoked.json",
        "openapi_user_reauth.json",
        // Not Terra's own concrete examples (placeholder user, invented
        // values), but payloads all the same: they must land too.
        "docs_legacy_permission_change.json",
        "illustrative_healthcheck.CONSTRUCTED.json",
    ];
    let base = whole_second_now() - 60_000;
    let sent = |i: usize| base + i as u64 * 1000;
    let records: Vec<Value> = examples
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let url = bed
                .payloads
                .route(&format!("/p/{name}"), Behaviour::Ok(fixture(name)));
            sqs_record(&format!("m-{i}"), &pointer(&url), sent(i))
        })
        .collect();
    bed.run_to_success(
        SQS_HANDLER,
        &[("TERRA_DYNAMODB_TABLE", TABLE)],
        records,
        Duration::from_secs(60),
    )
    .await;

    let items = bed.moto.items(TABLE).await;
    let event = |i: usize, tag: &str| format!("EVENT#{}#{tag}", rfc3339(sent(i)));
    let new_user = "USER#9c8b7a65-4321-4fed-a0b9-87c6d5e4f321";
    let docs_user = "USER#4735eac4-31a2-47ef-8b11-51e98d84c680";
    let legacy_user = "USER#<TerraUser object in source>";
    let mut expected: BTreeSet<(String, String)> = [
        key(USER, "ACTIVITY#123e4567-e89b-12d3-a456-426614174000"),
        key(USER, "ATHLETE"),
        key(USER, "BODY#2026-07-01"),
        key(USER, "DAILY#2026-07-01"),
        key(USER, "MENSTRUATION#2026-07-01"),
        key(USER, "NUTRITION#2026-07-01"),
        key(
            USER,
            "SLEEP#2026-06-30T23:12:00.000000+01:00#2026-07-01T07:02:00.000000+01:00",
        ),
        key(docs_user, &event(10, "AUTH")),
        key(docs_user, "PROFILE"),
        key(USER, &event(11, "AUTH")),
        key(USER, &event(12, "CONNECTION_ERROR")),
        key(USER, &event(13, "LARGE_REQUEST_PROCESSING")),
        key(USER, &event(14, "LARGE_REQUEST_SENDING")),
        key(USER, &event(15, "PERMISSION_CHANGE")),
        key(USER, &event(16, "RATE_LIMIT_HIT")),
        key(USER, &event(17, "DEAUTH")),
        key(USER, &event(18, "ACCESS_REVOKED")),
        key(USER, "PROFILE"),
        key(new_user, &event(19, "USER_REAUTH")),
        key(new_user, "PROFILE"),
        key(legacy_user, &event(20, "PERMISSION_CHANGE")),
        key(legacy_user, "PROFILE"),
    ]
    .into();
    let no_user: Vec<&(String, String)> = items.keys().filter(|(pk, _)| pk == "NO_USER").collect();
    assert_eq!(
        no_user.len(),
        4,
        "auth_cancelled, both lab reports and the healthcheck: {no_user:?}"
    );
    for (i, tag) in [
        (7, "AUTH_CANCELLED"),
        (8, "LAB_REPORT_COMPLETED"),
        (9, "LAB_REPORT_FAILED"),
        (21, "HEALTHCHECK"),
    ] {
        let prefix = format!("{}#", event(i, tag));
        let found = no_user.iter().find(|(_, sk)| sk.starts_with(&prefix));
        expected.insert(
            (*found.unwrap_or_else(|| panic!("no item for {prefix}: {no_user:?}"))).clone(),
        );
    }
    let stored: BTreeSet<(String, String)> = items.keys().cloned().collect();
    assert_eq!(stored, expected);

    let activity = &items[&key(USER, "ACTIVITY#123e4567-e89b-12d3-a456-426614174000")];
    let served: Value = serde_json::from_slice(&fixture("openapi_activity.json")).expect("JSON");
    assert_eq!(
        json_of(activity, "data"),
        served["data"][0],
        "record stored as a native map"
    );
    assert!(matches!(activity.get("data"), Some(AttributeValue::M(_))));
    assert_eq!(json_of(activity, "type"), "activity");
    assert_eq!(json_of(activity, "provider"), "GARMIN");
    assert_eq!(json_of(activity, "reference_id"), "your-user-123");
    assert_eq!(json_of(activity, "terra_sent_at"), json!(sent(0)));
    assert!(
        json_of(activity, "received_at")
            .as_u64()
            .is_some_and(|t| t >= sent(0))
    );

    let old_profile = &items[&key(USER, "PROFILE")];
    assert_eq!(json_of(old_profile, "active"), false);
    assert_eq!(
        json_of(old_profile, "replaced_by"),
        "9c8b7a65-4321-4fed-a0b9-87c6d5e4f321"
    );
    assert_eq!(json_of(old_profile, "gsi1pk"), "REF#your-user-123");
    let new_profile = &items[&key(new_user, "PROFILE")];
    assert_eq!(json_of(new_profile, "active"), true);
    assert_eq!(json_of(new_profile, "last_event_type"), "user_reauth");
    assert_eq!(
        json_of(&items[&key(docs_user, "PROFILE")], "gsi1pk"),
        "REF#tony_stark"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_changes_nothing_and_older_messages_never_overwrite_newer() {
    let bed = bed_with_table("terra-versions").await;
    let older: Value = serde_json::from_slice(&fixture("openapi_daily.json")).expect("JSON");
    let mut newer = older.clone();
    newer["data"][0]["distance_data"]["steps"] = json!(20_000);
    let newer_url = bed
        .payloads
        .route("/p/daily-v2", Behaviour::Ok(newer.to_string().into_bytes()));
    let older_url = bed
        .payloads
        .route("/p/daily-v1", Behaviour::Ok(older.to_string().into_bytes()));
    let now = now_ms();
    let newer_event = json!({"Records": [sqs_record("m-newer", &pointer(&newer_url), now)]});
    let older_event =
        json!({"Records": [sqs_record("m-older", &pointer(&older_url), now - 60_000)]});
    let handler = HandlerProcess::spawn(SQS_HANDLER, &bed.env(&[("TERRA_DYNAMODB_TABLE", TABLE)]));
    let daily = key(USER, "DAILY#2026-07-01");

    let first = bed
        .runtime
        .invoke(&newer_event, Duration::from_secs(30))
        .await;
    assert_all_succeeded(&first, &handler);
    let after_first = bed.moto.items(TABLE).await;

    let again = bed
        .runtime
        .invoke(&newer_event, Duration::from_secs(30))
        .await;
    assert_eq!(failed_ids(&again), BTreeSet::new());
    let after_again = bed.moto.items(TABLE).await;
    assert_eq!(
        after_again.keys().collect::<Vec<_>>(),
        after_first.keys().collect::<Vec<_>>()
    );
    let without_received = |item: &Item| {
        let mut item = item.clone();
        item.remove("received_at");
        item
    };
    assert_eq!(
        without_received(&after_again[&daily]),
        without_received(&after_first[&daily])
    );

    let late = bed
        .runtime
        .invoke(&older_event, Duration::from_secs(30))
        .await;
    assert_eq!(
        failed_ids(&late),
        BTreeSet::new(),
        "a stale message is a success"
    );
    let after_late = bed.moto.items(TABLE).await;
    assert_eq!(
        json_of(&after_late[&daily], "data")["distance_data"]["steps"],
        20_000
    );
    assert_eq!(json_of(&after_late[&daily], "terra_sent_at"), json!(now));
    assert!(
        handler.output().contains(r#""stale_items":1"#),
        "the skip is counted:\n{}",
        handler.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_over_400kb_are_stored_compressed_or_as_s3_pointers() {
    let bed = bed_with_table("terra-large").await;
    let compressible_body = big_activity("long-run", 12_000, false)
        .to_string()
        .into_bytes();
    let incompressible_body = big_activity("noisy-run", 60_000, true)
        .to_string()
        .into_bytes();
    for body in [&compressible_body, &incompressible_body] {
        assert!(
            body.len() > 400 * 1024,
            "the record must exceed DynamoDB's limit"
        );
    }
    // What was served, as any JSON reader sees it.
    let compressible: Value = serde_json::from_slice(&compressible_body).expect("JSON");
    let incompressible: Value = serde_json::from_slice(&incompressible_body).expect("JSON");
    let now = now_ms();
    let event = json!({"Records": [
        sqs_record("m-compressible", &pointer(&bed.payloads.route("/p/long", Behaviour::Ok(compressible_body.clone()))), now),
        sqs_record("m-incompressible", &pointer(&bed.payloads.route("/p/noisy", Behaviour::Ok(incompressible_body.clone()))), now),
    ]});
    let handler = HandlerProcess::spawn(SQS_HANDLER, &bed.env(&[("TERRA_DYNAMODB_TABLE", TABLE)]));
    let result = bed.runtime.invoke(&event, Duration::from_secs(60)).await;
    assert_all_succeeded(&result, &handler);

    let items = bed.moto.items(TABLE).await;
    let long = &items[&key(USER, "ACTIVITY#long-run")];
    let Some(AttributeValue::B(blob)) = long.get("data_gz") else {
        panic!(
            "compressible record stored as data_gz: {:?}",
            long.keys().collect::<Vec<_>>()
        );
    };
    let inflated = support::gunzip(blob.as_ref());
    let stored: Value = serde_json::from_slice(&inflated).expect("JSON");
    assert!(
        stored == compressible["data"][0],
        "the compressed record reads back identical"
    );
    assert!(!long.contains_key("data"));

    let noisy = &items[&key(USER, "ACTIVITY#noisy-run")];
    assert!(!noisy.contains_key("data") && !noisy.contains_key("data_gz"));
    let bucket = json_of(noisy, "s3_bucket");
    let s3_key = json_of(noisy, "s3_key");
    assert_eq!(bucket, bed.bucket.as_str());
    let object = bed
        .moto
        .objects(&bed.bucket)
        .await
        .into_iter()
        .find(|o| o.key == s3_key.as_str().expect("string key"))
        .expect("pointer names an archived object");
    let archived: Value = serde_json::from_slice(&object.body).expect("JSON");
    let index = json_of(noisy, "s3_record_index").as_u64().expect("index") as usize;
    assert_eq!(
        archived["data"][index], incompressible["data"][0],
        "reads back identical"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_url_expired_completes_from_the_archived_copy() {
    let bed = Bed::start("terra-recovery").await;
    let sleep = fixture("openapi_sleep.json");
    let url = bed.payloads.route("/p/sleep", Behaviour::Ok(sleep.clone()));
    // Three seconds of URL lifetime left when first delivered.
    let event = json!({"Records": [sqs_record("m-sleep", &pointer(&url), now_ms() - 597_000)]});
    let handler = HandlerProcess::spawn(SQS_HANDLER, &bed.env(&[("TERRA_DYNAMODB_TABLE", TABLE)]));

    let first = bed.runtime.invoke(&event, Duration::from_secs(30)).await;
    assert_eq!(
        failed_ids(&first),
        BTreeSet::from(["m-sleep".to_owned()]),
        "the table does not exist yet: output:\n{}",
        handler.output()
    );
    assert_eq!(
        bed.moto.objects(&bed.bucket).await.len(),
        1,
        "archived before DynamoDB failed"
    );

    bed.moto.create_table(TABLE).await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let retry = bed.runtime.invoke(&event, Duration::from_secs(30)).await;
    assert_all_succeeded(&retry, &handler);
    assert_eq!(
        bed.payloads.hits("/p/sleep"),
        1,
        "the expired URL is not fetched again"
    );
    let items = bed.moto.items(TABLE).await;
    let served: Value = serde_json::from_slice(&sleep).expect("JSON");
    let sleep_item = &items[&key(
        USER,
        "SLEEP#2026-06-30T23:12:00.000000+01:00#2026-07-01T07:02:00.000000+01:00",
    )];
    assert_eq!(json_of(sleep_item, "data"), served["data"][0]);
    assert!(
        handler.output().contains(r#""recovered_from_archive":1"#),
        "{}",
        handler.output()
    );
}

/// One payload holding the same day many times (each record with its own
/// steps): written concurrently at one version, the last in the payload
/// must be the one that stays, every time. DynamoDB throttles every fifth
/// write, so the SDK's retries would land out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_sharing_a_key_in_one_payload_end_as_the_last_of_them() {
    const COPIES: u64 = 48;
    let bed = bed_with_table("terra-same-key").await;
    let throttling = FaultProxy::start(
        &bed.moto.endpoint,
        FaultSchedule {
            every: 5,
            faults: vec![Fault::Throttle],
        },
    )
    .await;
    let mut payload: Value = serde_json::from_slice(&fixture("openapi_daily.json")).expect("JSON");
    let record = payload["data"][0].clone();
    payload["data"] = (0..COPIES)
        .map(|steps| {
            let mut copy = record.clone();
            copy["distance_data"]["steps"] = json!(steps);
            copy
        })
        .collect();
    let url = bed.payloads.route(
        "/p/daily-repeated",
        Behaviour::Ok(payload.to_string().into_bytes()),
    );
    let handler = HandlerProcess::spawn(
        SQS_HANDLER,
        &bed.env(&[
            ("TERRA_DYNAMODB_TABLE", TABLE),
            ("AWS_ENDPOINT_URL_DYNAMODB", &throttling.endpoint),
        ]),
    );
    let result = bed
        .runtime
        .invoke(
            &json!({"Records": [sqs_record("m-repeated", &pointer(&url), now_ms())]}),
            Duration::from_secs(30),
        )
        .await;
    assert_all_succeeded(&result, &handler);
    let items = bed.moto.items(TABLE).await;
    assert_eq!(
        json_of(&items[&key(USER, "DAILY#2026-07-01")], "data")["distance_data"]["steps"],
        COPIES - 1
    );
    assert!(throttling.injected() >= 9, "{}", throttling.injected());
}

/// A `PROFILE` is merged: a later event whose user object lacks
/// `reference_id` and `scopes` keeps them (and the `gsi1pk` that finds the
/// user), and the old user's `replaced_by` survives a later event of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_keep_what_a_later_event_leaves_out() {
    let bed = bed_with_table("terra-profiles").await;
    let old_id = "40f7b0e1-89e2-43ac-a5b8-1e29c8d47cad";
    let new_id = "9c8b7a65-4321-4fed-a0b9-87c6d5e4f321";
    let events = [
        json!({"type": "auth", "status": "success", "reference_id": "your-user-123",
               "user": {"user_id": old_id, "provider": "GARMIN", "reference_id": "your-user-123",
                        "scopes": "ACTIVITY_EXPORT,HEALTH_EXPORT", "active": true}}),
        json!({"type": "user_reauth", "status": "success",
               "old_user": {"user_id": old_id, "provider": "GARMIN", "reference_id": "your-user-123"},
               "new_user": {"user_id": new_id, "provider": "GARMIN", "reference_id": "your-user-123"}}),
        // A later event of the old user, whose user object is bare.
        json!({"type": "connection_error", "status": "warning",
               "user": {"user_id": old_id, "provider": "GARMIN"}}),
    ];
    let base = whole_second_now() - 60_000;
    let handler = HandlerProcess::spawn(SQS_HANDLER, &bed.env(&[("TERRA_DYNAMODB_TABLE", TABLE)]));
    for (i, event) in events.iter().enumerate() {
        let url = bed.payloads.route(
            &format!("/p/profile-{i}"),
            Behaviour::Ok(event.to_string().into_bytes()),
        );
        let result = bed
            .runtime
            .invoke(
                &json!({"Records": [sqs_record(&format!("m-{i}"), &pointer(&url), base + i as u64 * 1000)]}),
                Duration::from_secs(30),
            )
            .await;
        assert_all_succeeded(&result, &handler);
    }
    let items = bed.moto.items(TABLE).await;
    let profile = &items[&key(USER, "PROFILE")];
    assert_eq!(json_of(profile, "last_event_type"), "connection_error");
    assert_eq!(json_of(profile, "gsi1pk"), "REF#your-user-123");
    assert_eq!(json_of(profile, "reference_id"), "your-user-123");
    assert_eq!(json_of(profile, "scopes"), "ACTIVITY_EXPORT,HEALTH_EXPORT");
    assert_eq!(json_of(profile, "replaced_by"), new_id);
}

/// With `TERRA_DYNAMODB_RETENTION_DAYS`, every item, put whole or merged
/// (a PROFILE), carries `expires_at`: that many days after Terra sent the
/// version it holds, in epoch seconds, for the table's time to live. A
/// later send moves it on; without the variable no item has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_stamps_every_item_with_its_expiry_from_the_send() {
    let bed = bed_with_table("terra-retention").await;
    let activity = fixture("openapi_activity.json");
    let auth = json!({"type": "auth", "status": "success",
        "user": {"user_id": "40f7b0e1-89e2-43ac-a5b8-1e29c8d47cad", "provider": "GARMIN",
                 "reference_id": "your-user-123", "active": true}});
    let base = whole_second_now() - 60_000;
    let days: u64 = 30;
    let handler = HandlerProcess::spawn(
        SQS_HANDLER,
        &bed.env(&[
            ("TERRA_DYNAMODB_TABLE", TABLE),
            ("TERRA_DYNAMODB_RETENTION_DAYS", "30"),
        ]),
    );
    let sends = [
        ("activity", activity.clone(), base),
        ("auth", auth.to_string().into_bytes(), base + 1000),
        // The same auth sent again later: its items' expiry moves on.
        ("auth-again", auth.to_string().into_bytes(), base + 5000),
    ];
    for (name, body, sent) in sends {
        let url = bed
            .payloads
            .route(&format!("/p/{name}"), Behaviour::Ok(body));
        let result = bed
            .runtime
            .invoke(
                &json!({"Records": [sqs_record(name, &pointer(&url), sent)]}),
                Duration::from_secs(30),
            )
            .await;
        assert_all_succeeded(&result, &handler);
    }
    let items = bed.moto.items(TABLE).await;
    assert!(items.len() >= 3, "{:?}", items.keys());
    let expiry = |sent_ms: u64| json!(sent_ms / 1000 + days * 86_400);
    for ((pk, sk), item) in &items {
        let sent = json_of(item, "terra_sent_at").as_u64().expect("a number");
        assert_eq!(json_of(item, "expires_at"), expiry(sent), "{pk}/{sk}");
    }
    assert_eq!(
        json_of(&items[&key(USER, "PROFILE")], "expires_at"),
        expiry(base + 5000)
    );

    let kept = bed_with_table("terra-no-retention").await;
    let handler = HandlerProcess::spawn(SQS_HANDLER, &kept.env(&[("TERRA_DYNAMODB_TABLE", TABLE)]));
    let url = kept.payloads.route("/p/activity", Behaviour::Ok(activity));
    let result = kept
        .runtime
        .invoke(
            &json!({"Records": [sqs_record("kept", &pointer(&url), base)]}),
            Duration::from_secs(30),
        )
        .await;
    assert_all_succeeded(&result, &handler);
    for item in kept.moto.items(TABLE).await.values() {
        assert!(!item.contains_key("expires_at"), "{item:?}");
    }
}
