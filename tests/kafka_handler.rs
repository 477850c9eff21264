//! The compiled `kafka-handler`, driven through the Lambda Runtime API with
//! MSK and self-managed Kafka events, against moto (S3, DynamoDB, SQS) and a
//! real payload server.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};
use support::bed::{
    Bed, KafkaRecord, KafkaSource, assert_no_secrets, base64, kafka_event, pointer,
};
use support::payload_server::Behaviour;
use support::runtime_api::{HandlerProcess, InvocationResult};
use support::xray_daemon::{XrayDaemon, annotation};
use support::{fixture, now_ms};

const KAFKA_HANDLER: &str = env!("CARGO_BIN_EXE_kafka-handler");
const TOPIC: &str = "terra-events";
const BACKFILL: &str = "terra-backfill";

fn record(topic: &str, partition: i64, offset: i64, value: String, at: u64) -> KafkaRecord {
    KafkaRecord {
        topic: topic.to_owned(),
        partition,
        offset,
        value,
        timestamp_ms: at,
    }
}

/// A batch over two topics and four partitions. Transient failures: events-0@101
/// (503 on every attempt) and backfill-0@1 (500). Poison: events-0@103 (sent
/// 11 minutes ago, its URL expired), events-1@8 (value not base64) and
/// backfill-0@2 (payload not JSON).
fn mixed_batch(bed: &Bed, source: KafkaSource) -> Value {
    let p = &bed.payloads;
    let ok = |path: &str, example: &str| pointer(&p.route(path, Behaviour::Ok(fixture(example))));
    let now = now_ms();
    kafka_event(
        source,
        &[
            record(
                TOPIC,
                0,
                100,
                base64(&ok("/p/activity.json", "openapi_activity.json")),
                now,
            ),
            record(
                TOPIC,
                0,
                101,
                base64(&pointer(&p.route("/p/busy.json", Behaviour::Status(503)))),
                now,
            ),
            record(
                TOPIC,
                0,
                102,
                base64(&ok("/p/sleep.json", "openapi_sleep.json")),
                now,
            ),
            record(
                TOPIC,
                0,
                103,
                base64(&ok("/p/late.json", "openapi_daily.json")),
                now - 660_000,
            ),
            record(
                TOPIC,
                1,
                7,
                base64(&ok("/p/daily.json", "openapi_daily.json")),
                now,
            ),
            record(
                TOPIC,
                1,
                8,
                "not base64 at all?X-Amz-Signature=5ec7e7516a7c0ffee".into(),
                now,
            ),
            record(
                TOPIC,
                1,
                9,
                base64(r#"{"type":"healthcheck","status":"success"}"#),
                now,
            ),
            record(
                TOPIC,
                2,
                50,
                base64(&pointer(&p.route(
                    "/p/body.json",
                    Behaviour::Gzip(fixture("openapi_body.json")),
                ))),
                now,
            ),
            record(
                BACKFILL,
                0,
                0,
                base64(&ok("/p/auth.json", "openapi_auth__authSuccess.json")),
                now,
            ),
            record(
                BACKFILL,
                0,
                1,
                base64(&pointer(&p.route("/p/down.json", Behaviour::Status(500)))),
                now,
            ),
            record(
                BACKFILL,
                0,
                2,
                base64(&pointer(
                    &p.route("/p/html.json", Behaviour::Ok(b"<html/>".to_vec())),
                )),
                now,
            ),
        ],
    )
}

/// The five good payloads of [`mixed_batch`].
const GOOD_PAYLOADS: usize = 5;

fn response(result: &InvocationResult, handler: &HandlerProcess) -> Value {
    match result {
        InvocationResult::Response(response) => response.clone(),
        InvocationResult::Error(error) => panic!(
            "expected a response, got error {error}\noutput:\n{}",
            handler.output()
        ),
    }
}

fn fast_retries<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![("TERRA_FETCH_MAX_ATTEMPTS", "2")];
    env.extend_from_slice(extra);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msk_partial_batch_resumes_each_partition_at_its_lowest_failed_offset() {
    let bed = Bed::start("terra-kafka-partial").await;
    let event = mixed_batch(&bed, KafkaSource::Msk);
    let env = bed.env(&fast_retries(&[("TERRA_KAFKA_PARTIAL_BATCH", "true")]));
    let handler = HandlerProcess::spawn(KAFKA_HANDLER, &env);

    let first = bed.runtime.invoke(&event, Duration::from_secs(60)).await;
    // Without a quarantine queue, poison records are reported like the rest.
    let expected = json!({"batchItemFailures": [
        {"itemIdentifier": {"partition": "terra-backfill-0", "offset": 1}},
        {"itemIdentifier": {"partition": "terra-events-0", "offset": 101}},
        {"itemIdentifier": {"partition": "terra-events-1", "offset": 8}},
    ]});
    assert_eq!(response(&first, &handler), expected);
    assert_eq!(
        bed.payloads.hits("/p/late.json"),
        0,
        "expired: never fetched"
    );
    assert_eq!(bed.payloads.hits("/p/busy.json"), 2, "transient: retried");

    let objects = bed.moto.objects(&bed.bucket).await;
    assert_eq!(objects.len(), GOOD_PAYLOADS, "{objects:?}");
    let keys: Vec<String> = objects.iter().map(|o| o.key.clone()).collect();
    let mut archived: Vec<Vec<u8>> = objects.into_iter().map(|o| o.body).collect();
    let mut served: Vec<Vec<u8>> = [
        "openapi_activity.json",
        "openapi_sleep.json",
        "openapi_daily.json",
        "openapi_body.json",
        "openapi_auth__authSuccess.json",
    ]
    .map(fixture)
    .into();
    archived.sort();
    served.sort();
    assert!(
        archived == served,
        "archived bytes equal the served payloads"
    );

    // The mapping redelivers the batch from the reported offsets on; a full
    // replay is the worst case: same answer, no new objects.
    let replay = bed.runtime.invoke(&event, Duration::from_secs(60)).await;
    assert_eq!(response(&replay, &handler), expected);
    let again: Vec<String> = bed
        .moto
        .objects(&bed.bucket)
        .await
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(again, keys, "a replayed batch must not add objects");

    let output = handler.output();
    assert_no_secrets(&output);
    let summary = output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["fields"]["message"] == support::logs::BATCH_DONE)
        .unwrap_or_else(|| panic!("a summary line:\n{output}"));
    assert_eq!(
        (
            &summary["fields"]["received"],
            &summary["fields"]["written"],
            &summary["fields"]["healthchecks"],
            &summary["fields"]["failed"]
        ),
        (&json!(11), &json!(GOOD_PAYLOADS), &json!(1), &json!(5))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_quarantine_queue_and_stop_blocking_their_partition() {
    let bed = Bed::start("terra-kafka-quarantine").await;
    let quarantine = bed.moto.create_queue("terra-kafka-quarantine").await;
    let event = mixed_batch(&bed, KafkaSource::SelfManaged);
    let env = bed.env(&fast_retries(&[
        ("TERRA_KAFKA_PARTIAL_BATCH", "true"),
        ("TERRA_QUARANTINE_QUEUE_URL", &quarantine),
    ]));
    let handler = HandlerProcess::spawn(KAFKA_HANDLER, &env);

    let result = bed.runtime.invoke(&event, Duration::from_secs(60)).await;
    assert_eq!(
        response(&result, &handler),
        json!({"batchItemFailures": [
            {"itemIdentifier": {"partition": "terra-backfill-0", "offset": 1}},
            {"itemIdentifier": {"partition": "terra-events-0", "offset": 101}},
        ]}),
        "only transient failures are retried"
    );

    let letters = bed.moto.drain(&quarantine).await;
    let mut by_position: BTreeMap<String, (Value, String)> = BTreeMap::new();
    for letter in &letters {
        let text = letter.body().expect("body");
        assert_no_secrets(text);
        let body: Value = serde_json::from_str(text).expect("JSON quarantine message");
        let class = letter
            .message_attributes()
            .and_then(|a| a.get("terra_failure_class"))
            .and_then(|v| v.string_value())
            .expect("class attribute")
            .to_owned();
        assert_eq!(body["failure"]["class"], class.as_str());
        assert_eq!(body["failure"]["retry"], "permanent");
        assert_eq!(body["eventSource"], "SelfManagedKafka");
        let position = format!(
            "{}-{}@{}",
            body["topic"].as_str().expect("topic"),
            body["partition"],
            body["offset"]
        );
        by_position.insert(position, (body, class));
    }
    let classes: BTreeMap<&str, &str> = by_position
        .iter()
        .map(|(position, (_, class))| (position.as_str(), class.as_str()))
        .collect();
    // Poison behind a transient failure of its partition (backfill-0@2
    // behind @1, events-0@103 behind @101) comes back when the partition
    // resumes: it is left failed, to be quarantined once, on the delivery
    // that settles it, not on every retry.
    assert_eq!(classes, BTreeMap::from([("terra-events-1@8", "invalid")]));
    let (letter, _) = &by_position["terra-events-1@8"];
    assert!(letter["value"].is_string(), "{letter}");
    assert_eq!(bed.moto.objects(&bed.bucket).await.len(), GOOD_PAYLOADS);

    // Replayed: the poison is quarantined again (SQS standard queues are
    // at least once; each letter names its partition and offset), nothing else
    // is written twice.
    let replay = bed.runtime.invoke(&event, Duration::from_secs(60)).await;
    assert_eq!(response(&replay, &handler), response(&result, &handler));
    assert_eq!(bed.moto.drain(&quarantine).await.len(), 1);
    assert_eq!(bed.moto.objects(&bed.bucket).await.len(), GOOD_PAYLOADS);

    let output = handler.output();
    assert_no_secrets(&output);
    assert_eq!(
        output.matches("record quarantined").count(),
        2,
        "one line per quarantined record:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_partial_batch_any_unhandled_failure_fails_the_invocation() {
    let bed = Bed::start("terra-kafka-whole").await;
    let quarantine = bed.moto.create_queue("terra-kafka-whole-quarantine").await;
    let env = bed.env(&fast_retries(&[(
        "TERRA_QUARANTINE_QUEUE_URL",
        &quarantine,
    )]));
    let handler = HandlerProcess::spawn(KAFKA_HANDLER, &env);

    let mixed = bed
        .runtime
        .invoke(
            &mixed_batch(&bed, KafkaSource::Msk),
            Duration::from_secs(60),
        )
        .await;
    let InvocationResult::Error(error) = &mixed else {
        panic!("a transient failure must fail the invocation: {mixed:?}");
    };
    assert_eq!(error["errorType"], "BatchFailed", "{error}");
    let message = error.to_string();
    // The poison counts too: it comes back with the batch.
    assert!(
        message.contains("5 of 11 records failed (expired: 1, fetch: 2, invalid: 2)"),
        "{message}"
    );
    assert!(
        bed.moto.drain(&quarantine).await.is_empty(),
        "no letter yet"
    );
    assert_no_secrets(&message);

    // Poison alone is handled by the quarantine queue: the batch succeeds.
    let p = &bed.payloads;
    let now = now_ms();
    let handled = kafka_event(
        KafkaSource::Msk,
        &[
            record(
                TOPIC,
                3,
                10,
                base64(&pointer(&p.route(
                    "/p/steps.json",
                    Behaviour::Ok(fixture("openapi_daily.json")),
                ))),
                now,
            ),
            record(TOPIC, 3, 11, base64("{}"), now),
            record(
                TOPIC,
                4,
                90,
                base64(&pointer(
                    "https://169.254.169.254/latest?X-Amz-Signature=5ec7e7516a7c0ffee",
                )),
                now,
            ),
        ],
    );
    let result = bed.runtime.invoke(&handled, Duration::from_secs(60)).await;
    assert_eq!(
        response(&result, &handler),
        json!({"batchItemFailures": []})
    );
    let letters: BTreeSet<String> = bed
        .moto
        .drain(&quarantine)
        .await
        .iter()
        .map(|letter| {
            let body: Value = serde_json::from_str(letter.body().expect("body")).expect("JSON");
            format!(
                "{}@{}:{}",
                body["partitionKey"].as_str().expect("partition key"),
                body["offset"],
                body["failure"]["class"].as_str().expect("class")
            )
        })
        .collect();
    // The mixed batch's poison was not quarantined: its transient
    // failures bring the whole batch back, poison and all.
    let expected = ["terra-events-3@11:invalid", "terra-events-4@90:refused"];
    assert_eq!(letters, expected.map(str::to_owned).into());
    assert_no_secrets(&handler.output());
}

/// Traced as the template deploys it: the record's span, under the
/// invocation's in Lambda's trace, has a child for each stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_are_projected_to_dynamodb_as_of_their_record_timestamp_and_traced() {
    let bed = Bed::start("terra-kafka-ddb").await;
    bed.moto.create_table("terra-records").await;
    let daemon = XrayDaemon::start().await;
    let daemon_addr = daemon.addr.to_string();
    let env = bed.env(&[
        ("TERRA_DYNAMODB_TABLE", "terra-records"),
        ("TERRA_TRACING", "xray"),
        ("AWS_XRAY_DAEMON_ADDRESS", &daemon_addr),
    ]);
    let handler = HandlerProcess::spawn(KAFKA_HANDLER, &env);
    let sent = now_ms() / 1000 * 1000 - 5_000;
    let url = bed.payloads.route(
        "/p/activity.json",
        Behaviour::Ok(fixture("openapi_activity.json")),
    );
    let event = kafka_event(
        KafkaSource::Msk,
        &[record(TOPIC, 0, 7, base64(&pointer(&url)), sent)],
    );

    let result = bed.runtime.invoke(&event, Duration::from_secs(30)).await;
    assert_eq!(
        response(&result, &handler),
        json!({"batchItemFailures": []})
    );
    let items = bed.moto.items("terra-records").await;
    let activity = items
        .get(&(
            "USER#40f7b0e1-89e2-43ac-a5b8-1e29c8d47cad".to_owned(),
            "ACTIVITY#123e4567-e89b-12d3-a456-426614174000".to_owned(),
        ))
        .unwrap_or_else(|| panic!("activity item in {:?}", items.keys()));
    assert_eq!(
        activity.get("terra_sent_at"),
        Some(&AttributeValue::N(sent.to_string())),
        "the Kafka record timestamp is the send time"
    );
    assert_eq!(bed.moto.objects(&bed.bucket).await.len(), 1);

    let trace = daemon
        .invocation_trace(&bed.runtime.trace_headers()[0])
        .await;
    assert_eq!(annotation(trace.invocation(), "trigger"), Some("kafka"));
    let traced = trace.record(&format!("{TOPIC}-0@7"));
    assert_eq!(annotation(traced, "event_type"), Some("activity"));
    assert_eq!(annotation(traced, "outcome"), Some("written"));
    assert_eq!(
        trace.children(traced),
        ["archive write", "fetch", "table write"]
    );
    assert_no_secrets(&daemon.received());
}

/// A record no configured sink can ever take (too large for DynamoDB even
/// compressed, with no archive to point to) is poison: quarantined, so it
/// does not block its partition. A table that does not exist is the
/// deployment's fault: that blocks, and alarms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_no_sink_can_take_are_quarantined_but_a_missing_table_blocks() {
    let bed = Bed::start("terra-kafka-unstorable").await;
    bed.moto.create_table("terra-records").await;
    let quarantine = bed.moto.create_queue("terra-kafka-quarantine").await;
    let huge = support::bed::big_activity("noisy-run", 60_000, true)
        .to_string()
        .into_bytes();
    let now = now_ms();
    let event = kafka_event(
        KafkaSource::Msk,
        &[
            record(
                TOPIC,
                0,
                10,
                base64(&pointer(
                    &bed.payloads.route("/huge.json", Behaviour::Ok(huge)),
                )),
                now,
            ),
            record(
                TOPIC,
                0,
                11,
                base64(&pointer(&bed.payloads.route(
                    "/daily.json",
                    Behaviour::Ok(fixture("openapi_daily.json")),
                ))),
                now,
            ),
        ],
    );
    for (table, expected, letters) in [
        ("terra-records", json!({"batchItemFailures": []}), 1),
        // The huge record never reaches the table: it is poison whatever
        // the table. The daily one fails on the table, and blocks.
        (
            "terra-missing",
            json!({"batchItemFailures": [{"itemIdentifier": {"partition": "terra-events-0", "offset": 11}}]}),
            1,
        ),
    ] {
        let mut env = bed.env(&[
            ("TERRA_KAFKA_PARTIAL_BATCH", "true"),
            ("TERRA_QUARANTINE_QUEUE_URL", &quarantine),
            ("TERRA_DYNAMODB_TABLE", table),
        ]);
        env.retain(|(name, _)| name != "TERRA_S3_BUCKET");
        let handler = HandlerProcess::spawn(KAFKA_HANDLER, &env);
        let result = bed.runtime.invoke(&event, Duration::from_secs(60)).await;
        assert_eq!(response(&result, &handler), expected, "{table}");
        let sent = bed.moto.drain(&quarantine).await;
        assert_eq!(sent.len(), letters, "{table}:\n{}", handler.output());
        for letter in sent {
            let body: Value = serde_json::from_str(letter.body().expect("body")).expect("JSON");
            assert_eq!(
                (body["offset"].as_i64(), body["failure"]["class"].as_str()),
                (Some(10), Some("sink"))
            );
        }
    }
    let items = bed.moto.items("terra-records").await;
    assert!(
        items.keys().any(|(_, sk)| sk.starts_with("DAILY#")),
        "the partition went on past the quarantined record: {:?}",
        items.keys().collect::<Vec<_>>()
    );
}

/// However large the record's key, headers and value, and whatever they
/// hold, its quarantine message fits one SQS message and holds no query string,
/// searched for in the decoded key and headers as well as the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_messages_fit_one_sqs_message_whatever_the_record_holds() {
    let bed = Bed::start("terra-kafka-big-letters").await;
    let sqs = bed.moto.sqs();
    // The classic limit: queues made before SQS allowed 1 MiB keep it.
    let quarantine = sqs
        .create_queue()
        .queue_name("terra-kafka-quarantine-256k")
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize,
            "262144",
        )
        .send()
        .await
        .expect("create queue")
        .queue_url()
        .expect("queue URL")
        .to_owned();
    let url = bed.payloads.route("/p.json", Behaviour::Status(404));
    let filler = "\u{1}\"\\".repeat(60_000);
    let text = format!("{url} {filler}");
    let bytes: Vec<Value> = text.bytes().map(|b| json!(b as i8)).collect();
    let mut event = kafka_event(
        KafkaSource::Msk,
        &[record(TOPIC, 0, 7, base64(&text), now_ms())],
    );
    let first = &mut event["records"]["terra-events-0"][0];
    first["key"] = json!(base64(&text));
    first["headers"] = json!([{"x-terra-url": bytes.clone()}, {"x-more": bytes}]);
    let env = bed.env(&[
        ("TERRA_KAFKA_PARTIAL_BATCH", "true"),
        ("TERRA_QUARANTINE_QUEUE_URL", &quarantine),
    ]);
    let handler = HandlerProcess::spawn(KAFKA_HANDLER, &env);
    let result = bed.runtime.invoke(&event, Duration::from_secs(30)).await;
    assert_eq!(
        response(&result, &handler),
        json!({"batchItemFailures": []}),
        "the letter was sent, so the record counts as handled"
    );
    let letters = bed.moto.drain(&quarantine).await;
    assert_eq!(letters.len(), 1, "{}", handler.output());
    let text = letters[0].body().expect("body");
    assert!(text.len() <= 256 * 1024, "{} bytes", text.len());
    assert_no_secrets(text);
    let body: Value = serde_json::from_str(text).expect("JSON letter");
    let stripped = url.split('?').next().expect("path");
    assert!(
        body["key"]
            .as_str()
            .expect("key as text")
            .starts_with(stripped)
    );
    assert!(
        body["headers"][0]["x-terra-url"]
            .as_str()
            .expect("header as text")
            .starts_with(stripped)
    );
    assert_eq!(body["failure"]["class"], "invalid");
}

/// Lambda Managed Instances: one process, several invocations at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_takes_invocations_at_once_each_on_its_own_deadline() {
    support::managed_instances::a_stuck_record_holds_up_no_other_invocation(
        support::managed_instances::Trigger::Kafka,
    )
    .await;
}
