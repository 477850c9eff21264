//! The compiled `sqs-handler`, driven through the Lambda Runtime API, against
//! moto's S3 and a real payload server.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::bed::{Bed, assert_all_succeeded, assert_no_secrets, failed_ids, pointer, sqs_record};
use support::payload_server::Behaviour;
use support::runtime_api::{HandlerProcess, RuntimeApi, lambda_environment};
use support::{fixture, now_ms};

const SQS_HANDLER: &str = env!("CARGO_BIN_EXE_sqs-handler");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_batch_reports_exactly_the_failed_records_and_archives_the_rest() {
    let bed = Bed::start("terra-mixed").await;
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

    let env = bed.env(&[("TERRA_MAX_PAYLOAD_BYTES", "262144")]);
    let handler = HandlerProcess::spawn(SQS_HANDLER, &env);
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

    // Redelivery: the same event again adds nothing and fails the same records.
    let second = bed.runtime.invoke(&event, Duration::from_secs(60)).await;
    assert_eq!(failed_ids(&second), expected_failures);
    let again = bed.moto.objects(&bed.bucket).await;
    let again_keys: Vec<&str> = again.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(again_keys, keys, "a replayed batch must not add objects");

    let output = handler.output();
    assert_no_secrets(&output);
    let summaries: Vec<Value> = output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["message"] == support::logs::BATCH_DONE)
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
    assert_eq!(metrics.len(), 2, "one EMF document per batch:\n{output}");
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
        .filter(|l| l.contains(support::logs::RECORD_FAILED))
        .count();
    assert_eq!(
        failure_lines, 12,
        "one line per failed record per batch:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_archive_compresses_under_the_configured_prefix() {
    let bed = Bed::start("terra-gzip").await;
    let body = fixture("openapi_body.json");
    let url = bed
        .payloads
        .route("/payloads/body.json", Behaviour::Ok(body.clone()));
    let event = json!({"Records": [sqs_record("m-body", &pointer(&url), now_ms())]});
    let env = bed.env(&[
        ("TERRA_S3_COMPRESSION", "gzip"),
        ("TERRA_S3_PREFIX", "archive/terra"),
    ]);
    let handler = HandlerProcess::spawn(SQS_HANDLER, &env);

    let result = bed.runtime.invoke(&event, Duration::from_secs(30)).await;
    assert_all_succeeded(&result, &handler);
    let objects = bed.moto.objects(&bed.bucket).await;
    assert_eq!(objects.len(), 1);
    let object = &objects[0];
    assert!(
        object.key.starts_with("archive/terra/dt=") && object.key.ends_with(".json.gz"),
        "{}",
        object.key
    );
    assert_eq!(object.content_encoding.as_deref(), Some("gzip"));
    let decoded = support::gunzip(&object.body);
    assert!(decoded == body, "decompressed object equals the payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_stops_cold_start_and_names_the_variable() {
    let runtime = RuntimeApi::start().await;
    for (var, value) in [
        ("TERRA_FETCH_CONCURRENCY", "lots"),
        ("TERRA_S3_PREFIX", "../outside"),
        ("TERRA_ALLOWED_URL_HOSTS", "good.example, not a host"),
    ] {
        let mut env = lambda_environment(runtime.addr);
        env.push(("TERRA_S3_BUCKET".into(), "terra-archive".into()));
        env.push((var.into(), value.into()));
        let mut handler = HandlerProcess::spawn(SQS_HANDLER, &env);
        let status = handler
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{var}={value}: the handler must exit"));
        assert!(!status.success(), "{var}={value}: exit status {status}");
        let output = handler.output();
        assert!(
            output.contains(var),
            "{var}={value}: output must name it:\n{output}"
        );
    }

    let mut no_sink = HandlerProcess::spawn(SQS_HANDLER, &lambda_environment(runtime.addr));
    let status = no_sink
        .wait_exit(Duration::from_secs(20))
        .expect("the handler must exit");
    assert!(!status.success());
    assert!(
        no_sink.output().contains("TERRA_S3_BUCKET"),
        "{}",
        no_sink.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_failures_are_reported_for_retry() {
    let bed = Bed::start("terra-exists").await;
    let url = bed.payloads.route(
        "/payloads/activity.json",
        Behaviour::Ok(fixture("openapi_activity.json")),
    );
    let event = json!({"Records": [sqs_record("m-unwritable", &pointer(&url), now_ms())]});
    let env = bed.env(&[("TERRA_S3_BUCKET", "terra-does-not-exist")]);
    let handler = HandlerProcess::spawn(SQS_HANDLER, &env);

    let result = bed.runtime.invoke(&event, Duration::from_secs(30)).await;
    assert_eq!(
        failed_ids(&result),
        BTreeSet::from(["m-unwritable".to_owned()])
    );
    let output = handler.output();
    let failure = output
        .lines()
        .find(|l| l.contains(support::logs::RECORD_FAILED))
        .unwrap_or_else(|| panic!("a failure line:\n{output}"));
    assert!(
        failure.contains(r#""class":"sink""#) && failure.contains(r#""retry":"transient""#),
        "{failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_deadline_unfinished_records_are_reported_in_time() {
    let bed = Bed::start("terra-deadline").await;
    let p = &bed.payloads;
    let slow = p.route(
        "/payloads/slow.json",
        Behaviour::Delay(
            Duration::from_secs(20),
            fixture("openapi_daily.json").into(),
        ),
    );
    let quick = p.route(
        "/payloads/quick.json",
        Behaviour::Ok(fixture("openapi_sleep.json")),
    );
    let now = now_ms();
    let event = json!({"Records": [
        sqs_record("m-slow", &pointer(&slow), now),
        sqs_record("m-queued-behind", &pointer(&quick), now),
    ]});
    let env = bed.env(&[
        ("TERRA_FETCH_CONCURRENCY", "1"),
        ("TERRA_FETCH_TIMEOUT_SECS", "30"),
    ]);
    let handler = HandlerProcess::spawn(SQS_HANDLER, &env);

    let started = std::time::Instant::now();
    let result = bed.runtime.invoke(&event, Duration::from_secs(3)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after the deadline"
    );
    assert_eq!(
        failed_ids(&result),
        BTreeSet::from(["m-slow".to_owned(), "m-queued-behind".to_owned()]),
        "output:\n{}",
        handler.output()
    );
    assert_eq!(
        p.hits("/payloads/quick.json"),
        0,
        "nothing starts after the cutoff"
    );
    assert!(handler.output().contains(r#""class":"deferred""#));
}

/// S3 and GCS check a pre-signed URL when the request arrives: a download
/// that started while the URL lived finishes after it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_under_way_when_its_url_expires_finishes() {
    let bed = Bed::start("terra-started-download").await;
    let activity = fixture("openapi_activity.json");
    let url = bed.payloads.route(
        "/payloads/slow.json",
        Behaviour::Delay(Duration::from_millis(2_500), activity.clone().into()),
    );
    // Sent 598.5 s ago with a 600 s lifetime: the request goes out with
    // 1.5 s to spare, and the answer comes a second after the expiry.
    let event = json!({"Records": [sqs_record("m-slow", &pointer(&url), now_ms() - 598_500)]});
    let handler =
        HandlerProcess::spawn(SQS_HANDLER, &bed.env(&[("TERRA_FETCH_TIMEOUT_SECS", "5")]));
    let result = bed.runtime.invoke(&event, Duration::from_secs(30)).await;
    assert_all_succeeded(&result, &handler);
    assert_eq!(bed.payloads.hits("/payloads/slow.json"), 1);
    let objects = bed.moto.objects(&bed.bucket).await;
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].body, activity);
}

/// Two sends of one payload share an archive name (the same
/// `payload_reference`, the same day). The archive keeps the later send, and
/// recovery after expiry uses an archived object only if it is this send's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_keeps_the_latest_send_and_recovers_only_the_same_send() {
    let bed = Bed::start("terra-same-send").await;
    let p = &bed.payloads;
    let day_ms = 86_400_000;
    let now = now_ms();
    // Three sends a second apart, on one UTC day.
    let newest = (now - 1_000).max(now - now % day_ms + 2_000);
    let (older, oldest) = (newest - 1_000, newest - 2_000);
    let sleep_v1 = fixture("openapi_sleep.json");
    let sleep_v2 = fixture("openapi_daily.json");
    let to = |url: String| {
        json!({"type": "s3_payload", "url": url, "expires_in": 600, "payload_reference": "sleep-4711"})
            .to_string()
    };
    let handler = HandlerProcess::spawn(SQS_HANDLER, &bed.env(&[]));
    let runtime = &bed.runtime;
    let invoke = |records: Vec<Value>| {
        let event = json!({ "Records": records });
        async move { runtime.invoke(&event, Duration::from_secs(30)).await }
    };

    // The newest send lands first.
    let first = invoke(vec![sqs_record(
        "m-newest",
        &to(p.route("/v2.json", Behaviour::Ok(sleep_v2.clone()))),
        newest,
    )])
    .await;
    assert_all_succeeded(&first, &handler);

    // A late redelivery of an older send, its URL still good, must not
    // replace it; a still older send whose URL expired must not be
    // completed from it; a redelivery of the newest send whose URL expired
    // is completed from its own copy.
    let late = invoke(vec![
        sqs_record(
            "m-older",
            &to(p.route("/v1.json", Behaviour::Ok(sleep_v1.clone()))),
            older,
        ),
        sqs_record(
            "m-oldest-expired",
            &to(p.route("/v0.json", Behaviour::Status(403))),
            oldest,
        ),
        sqs_record(
            "m-newest-expired",
            &to(p.route("/v2-gone.json", Behaviour::Status(403))),
            newest,
        ),
    ])
    .await;
    assert_eq!(
        failed_ids(&late),
        BTreeSet::from(["m-oldest-expired".to_owned()]),
        "{}",
        handler.output()
    );
    let logged = support::logs::record_failures(&handler.output());
    assert_eq!(logged["m-oldest-expired"].class, "expired");
    assert_eq!(p.hits("/v1.json"), 1, "the older send was fetched");

    let objects = bed.moto.objects(&bed.bucket).await;
    assert_eq!(objects.len(), 1, "one name, one object");
    assert_eq!(objects[0].body, sleep_v2, "the newest send's payload stays");
    assert_eq!(objects[0].metadata["terra-sent-at"], newest.to_string());
}

/// Only a FIFO queue (its ARN ends in `.fifo`) orders a message group: a
/// standard queue with fair-queue groups carries `MessageGroupId` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_groups_are_ordered_only_on_fifo_queues() {
    let bed = Bed::start("terra-fifo-source").await;
    let p = &bed.payloads;
    let daily = fixture("openapi_daily.json");
    let handler = HandlerProcess::spawn(SQS_HANDLER, &bed.env(&[]));
    for (queue, expected_failures) in [
        ("terra-events", vec!["a-gone"]),
        ("terra-events.fifo", vec!["a-gone", "b-after"]),
    ] {
        let grouped = |id: &str, path: &str, behaviour: Behaviour| {
            let mut record = sqs_record(id, &pointer(&p.route(path, behaviour)), now_ms());
            record["attributes"]["MessageGroupId"] = json!("user-1");
            record["eventSourceARN"] = json!(format!("arn:aws:sqs:us-east-1:123456789012:{queue}"));
            record
        };
        let event = json!({"Records": [
            grouped("a-gone", &format!("/{queue}/a.json"), Behaviour::Status(404)),
            grouped("b-after", &format!("/{queue}/b.json"), Behaviour::Ok(daily.clone())),
        ]});
        let result = bed.runtime.invoke(&event, Duration::from_secs(30)).await;
        let expected: BTreeSet<String> = expected_failures.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            failed_ids(&result),
            expected,
            "{queue}:\n{}",
            handler.output()
        );
        let fetched_after = p.hits(&format!("/{queue}/b.json"));
        assert_eq!(
            fetched_after,
            usize::from(!queue.ends_with(".fifo")),
            "{queue}"
        );
    }
}
