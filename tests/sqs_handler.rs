//! The compiled `sqs-handler`, driven through the Lambda Runtime API, against
//! moto's S3 and a real payload server.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{Value, json};
use support::bed::{Bed, assert_all_succeeded, assert_no_secrets, failed_ids, pointer, sqs_record};
use support::managed_instances::{self, Trigger};
use support::payload_server::Behaviour;
use support::runtime_api::{Executable, HandlerProcess, RuntimeApi, lambda_environment};
use support::sqs_mapping::{MappingSettings, SqsMapping};
use support::xray_daemon::{XrayDaemon, annotation};
use support::{fixture, logs, now_ms};

const SQS_HANDLER: &str = env!("CARGO_BIN_EXE_sqs-handler");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_batch_reports_exactly_the_failed_records_and_writes_the_rest() {
    support::mixed_batch::run(&Executable::native(SQS_HANDLER)).await;
}

/// Every log line about a record carries its correlation fields (its span's
/// message id and `payload_reference`, the invocation's X-Ray trace id, and
/// once the payload is read its type and user), so one `payload_reference`
/// gathers all of its lines, from the first attempt to the last. The level
/// follows `AWS_LAMBDA_LOG_LEVEL`, as Lambda sets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_log_lines_carry_its_correlation_fields_across_attempts() {
    let bed = Bed::start("terra-correlated").await;
    let url = bed.payloads.route(
        "/payloads/sleep.json",
        Behaviour::FailThenOk {
            failures: 1,
            status: 500,
            retry_after: None,
            body: fixture("openapi_sleep.json"),
        },
    );
    let message = json!({"type": "s3_payload", "url": url, "expires_in": 600,
                         "payload_reference": "ref-sleep"});
    let event = json!({"Records": [sqs_record("m-sleep", &message.to_string(), now_ms())]});
    // Lambda sets AWS_LAMBDA_LOG_LEVEL from the function's log level, and no
    // RUST_LOG (which the runtime would let win). At debug, the record's
    // lines from its stages carry the same fields.
    let mut env = bed.env(&[
        ("TERRA_FETCH_MAX_ATTEMPTS", "1"),
        ("AWS_LAMBDA_LOG_LEVEL", "debug"),
    ]);
    env.retain(|(name, _)| name != "RUST_LOG");
    let handler = HandlerProcess::spawn(SQS_HANDLER, &env);
    let first = bed.runtime.invoke(&event, Duration::from_secs(30)).await;
    assert_eq!(failed_ids(&first), BTreeSet::from(["m-sleep".to_owned()]));
    let last = bed.runtime.invoke(&event, Duration::from_secs(30)).await;
    assert_all_succeeded(&last, &handler);

    let output = handler.output();
    let span_field = |line: &Value, span: &str, field: &str| -> Option<String> {
        line["spans"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == span)
            .and_then(|s| s[field].as_str().map(str::to_owned))
    };
    let lines: Vec<Value> = output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| {
            span_field(line, "record", "payload_reference").as_deref() == Some("ref-sleep")
        })
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    assert!(messages.contains(&logs::RECORD_FAILED), "{output}");
    assert!(messages.contains(&logs::RECORD_WRITTEN), "{output}");
    assert!(
        messages.contains(&"payload written"),
        "a debug line: {output}"
    );
    let mut traces = BTreeSet::new();
    for line in &lines {
        assert_eq!(
            span_field(line, "record", "id").as_deref(),
            Some("m-sleep"),
            "{line}"
        );
        let trace = span_field(line, "Lambda runtime invoke", "xrayTraceId");
        assert!(
            trace.as_deref().is_some_and(|t| t.starts_with("Root=1-")),
            "{line}"
        );
        traces.insert(trace);
        if line["fields"]["message"] == logs::RECORD_WRITTEN {
            assert_eq!(
                span_field(line, "record", "event_type").as_deref(),
                Some("sleep"),
                "{line}"
            );
            assert_eq!(
                span_field(line, "record", "user_id").as_deref(),
                Some("40f7b0e1-89e2-43ac-a5b8-1e29c8d47cad"),
                "{line}"
            );
        }
    }
    assert_eq!(
        traces.len(),
        2,
        "both attempts, each under its invocation's trace"
    );
}

/// What Terra's payload holds, which no span may carry.
const PAYLOAD_CONTENT: [&str; 3] = ["sleep_durations_data", "25200", "your-user-123"];

/// With tracing on (`TERRA_TRACING=xray`, as the template deploys it), an
/// invocation's spans reach the X-Ray daemon as subsegments of Lambda's
/// segment in the trace Lambda handed out: a span per record with its
/// correlation fields as annotations, and its stages below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_the_xray_daemon_under_the_invocations_trace() {
    let bed = Bed::start("terra-traced").await;
    let daemon = XrayDaemon::start().await;
    let good = bed.payloads.route(
        "/payloads/sleep.json",
        Behaviour::Ok(fixture("openapi_sleep.json")),
    );
    let garbled = bed.payloads.route(
        "/payloads/garbled.json",
        Behaviour::Ok(b"{not json".to_vec()),
    );
    let referenced = json!({"type": "s3_payload", "url": good, "expires_in": 600,
                            "payload_reference": "ref-sleep"});
    let event = json!({"Records": [
        sqs_record("m-good", &referenced.to_string(), now_ms()),
        sqs_record("m-garbled", &pointer(&garbled), now_ms()),
    ]});
    let daemon_addr = daemon.addr.to_string();
    let handler = HandlerProcess::spawn(
        SQS_HANDLER,
        &bed.env(&[
            ("TERRA_TRACING", "xray"),
            ("AWS_XRAY_DAEMON_ADDRESS", &daemon_addr),
        ]),
    );
    let result = bed.runtime.invoke(&event, Duration::from_secs(30)).await;
    assert_eq!(
        failed_ids(&result),
        BTreeSet::from(["m-garbled".to_owned()])
    );

    let trace = daemon
        .invocation_trace(&bed.runtime.trace_headers()[0])
        .await;
    let invocation = trace.invocation();
    assert_eq!(annotation(invocation, "trigger"), Some("sqs"));
    assert_eq!(annotation(invocation, "request_id"), Some("req-1"));
    assert_eq!(trace.named("record").len(), 2, "{:#?}", trace.documents);

    let written = trace.record("m-good");
    assert_eq!(annotation(written, "payload_reference"), Some("ref-sleep"));
    assert_eq!(annotation(written, "event_type"), Some("sleep"));
    assert_eq!(
        annotation(written, "user_id"),
        Some("40f7b0e1-89e2-43ac-a5b8-1e29c8d47cad")
    );
    assert_eq!(annotation(written, "outcome"), Some("written"));
    assert_eq!(trace.children(written), ["archive write", "fetch"]);
    let fetch = trace.child(written, "fetch");
    // The exporter writes numbers as text.
    assert_eq!(annotation(fetch, "attempts"), Some("1"), "{fetch}");
    assert_eq!(
        annotation(fetch, "bytes"),
        Some(fixture("openapi_sleep.json").len().to_string().as_str()),
        "{fetch}"
    );
    assert!(
        fetch.get("metadata").is_none() && written.get("metadata").is_none(),
        "only the annotated fields are sent: {written}"
    );

    let failed = trace.record("m-garbled");
    assert_eq!(annotation(failed, "outcome"), Some("failed"));
    assert_eq!(annotation(failed, "class"), Some("invalid"));
    assert_eq!(failed["fault"], true, "{failed}");
    assert_eq!(trace.children(failed), ["fetch"]);

    let sent = daemon.received();
    assert_no_secrets(&sent);
    for content in PAYLOAD_CONTENT {
        assert!(
            !sent.contains(content),
            "payload content {content} in {sent}"
        );
    }
    assert_no_secrets(&handler.output());
}

/// A record cut off at the invocation's deadline still reports its span
/// (spans are sent as they end, nothing waits for a flush that a frozen
/// or timed-out function never makes); and with tracing off nothing is sent
/// at all, though a daemon is there to take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_cut_at_the_deadline_is_traced_and_tracing_off_sends_nothing() {
    let bed = Bed::start("terra-traced-deadline").await;
    let daemon = XrayDaemon::start().await;
    let endless = bed.payloads.route(
        "/payloads/endless.json",
        Behaviour::Trickle(Duration::from_millis(100)),
    );
    let event = json!({"Records": [sqs_record("m-endless", &pointer(&endless), now_ms())]});
    let daemon_addr = daemon.addr.to_string();
    let run = |tracing: &'static str| {
        let env = bed.env(&[
            ("TERRA_TRACING", tracing),
            ("AWS_XRAY_DAEMON_ADDRESS", &daemon_addr),
            ("TERRA_FETCH_TIMEOUT_SECS", "60"),
        ]);
        let event = &event;
        let bed = &bed;
        async move {
            let handler = HandlerProcess::spawn(SQS_HANDLER, &env);
            // Three seconds: the batch stops one second before the deadline.
            let result = bed.runtime.invoke(event, Duration::from_secs(3)).await;
            assert_eq!(
                failed_ids(&result),
                BTreeSet::from(["m-endless".to_owned()])
            );
            handler
        }
    };

    let traced = run("xray").await;
    let trace = daemon
        .invocation_trace(&bed.runtime.trace_headers()[0])
        .await;
    let cut = trace.record("m-endless");
    assert_eq!(annotation(cut, "class"), Some("deferred"), "{cut}");
    assert_eq!(trace.children(cut), ["fetch"]);
    drop(traced);

    let sent_before = daemon.documents().len();
    let untraced = run("off").await;
    // As long again as a traced invocation's last span takes to arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        daemon.documents().len(),
        sent_before,
        "tracing off sent spans"
    );
    drop(untraced);
    assert_no_secrets(&daemon.received());
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
/// standard queue with fair-queue groups carries `MessageGroupId` too. In a
/// FIFO group a failure that may yet succeed holds the messages behind it;
/// a permanent one does not, since it never will be written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_groups_are_ordered_only_on_fifo_queues() {
    let bed = Bed::start("terra-fifo-source").await;
    let p = &bed.payloads;
    let daily = fixture("openapi_daily.json");
    let handler =
        HandlerProcess::spawn(SQS_HANDLER, &bed.env(&[("TERRA_FETCH_MAX_ATTEMPTS", "1")]));
    for (queue, expected_failures) in [
        ("terra-events", vec!["a-down", "c-gone"]),
        ("terra-events.fifo", vec!["a-down", "b-after", "c-gone"]),
    ] {
        let grouped = |id: &str, group: &str, behaviour: Behaviour| {
            let path = format!("/{queue}/{id}.json");
            let mut record = sqs_record(id, &pointer(&p.route(&path, behaviour)), now_ms());
            record["attributes"]["MessageGroupId"] = json!(group);
            record["eventSourceARN"] = json!(format!("arn:aws:sqs:us-east-1:123456789012:{queue}"));
            record
        };
        let event = json!({"Records": [
            grouped("a-down", "user-1", Behaviour::Status(500)),
            grouped("b-after", "user-1", Behaviour::Ok(daily.clone())),
            grouped("c-gone", "user-2", Behaviour::Status(404)),
            grouped("d-after", "user-2", Behaviour::Ok(daily.clone())),
        ]});
        let result = bed.runtime.invoke(&event, Duration::from_secs(30)).await;
        let expected: BTreeSet<String> = expected_failures.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            failed_ids(&result),
            expected,
            "{queue}:\n{}",
            handler.output()
        );
        let fetched = |id: &str| p.hits(&format!("/{queue}/{id}.json"));
        assert_eq!(
            fetched("b-after"),
            usize::from(!queue.ends_with(".fifo")),
            "{queue}"
        );
        assert_eq!(fetched("d-after"), 1, "{queue}");
    }
}

/// Lambda Managed Instances: one process, several invocations at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_takes_invocations_at_once_each_on_its_own_deadline() {
    managed_instances::a_stuck_record_holds_up_no_other_invocation(Trigger::Sqs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_at_once_draw_on_one_memory_budget() {
    managed_instances::invocations_draw_on_one_memory_budget(Trigger::Sqs).await;
}

/// Lambda Managed Instances: each invocation hides its own batch for its own
/// time, on a real queue (moto). The queue's visibility timeout is shorter
/// than both invocations, so only the handler's holds keep the messages
/// hidden: the short invocation's while it runs, and the long one's past
/// the short one's end, for as long as the long one still works on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_at_once_each_hold_their_messages_for_their_own_time() {
    let bed = Bed::start("terra-managed-instances-holds").await;
    let sqs = bed.moto.sqs();
    let queue_url = bed.moto.create_queue("terra-held").await;
    sqs.set_queue_attributes()
        .queue_url(&queue_url)
        .attributes(QueueAttributeName::VisibilityTimeout, "2")
        .send()
        .await
        .expect("queue settings");
    for name in ["short", "long"] {
        let url = bed.payloads.route(
            &format!("/payloads/{name}.json"),
            Behaviour::Delay(
                Duration::from_secs(60),
                fixture("openapi_daily.json").into(),
            ),
        );
        sqs.send_message()
            .queue_url(&queue_url)
            .message_body(pointer(&url))
            .send()
            .await
            .expect("sent");
    }
    let mapping = SqsMapping::new(
        sqs.clone(),
        &queue_url,
        MappingSettings {
            batch_size: 10,
            batching_window: Duration::ZERO,
            report_batch_item_failures: true,
            function_timeout: Duration::from_secs(10),
            concurrency: 2,
        },
    )
    .await;
    let mut records = Vec::new();
    while records.len() < 2 {
        records.extend(mapping.receive_records(2 - records.len()).await);
    }
    let named = |name: &str| -> Value {
        records
            .iter()
            .find(|record| {
                record["body"]
                    .as_str()
                    .is_some_and(|b| b.contains(&format!("/{name}.json")))
            })
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {records:?}"))
    };
    let (short, long) = (named("short"), named("long"));
    let handler = HandlerProcess::spawn(
        SQS_HANDLER,
        &bed.env(&[
            ("AWS_LAMBDA_MAX_CONCURRENCY", "2"),
            ("TERRA_FETCH_TIMEOUT_SECS", "120"),
        ]),
    );
    let visible = || async {
        let received = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            // A look that leaves whatever it finds visible.
            .visibility_timeout(0)
            .send()
            .await
            .expect("received");
        received
            .messages()
            .iter()
            .filter_map(|m| m.message_id().map(str::to_owned))
            .collect::<BTreeSet<String>>()
    };
    let id = |record: &Value| record["messageId"].as_str().expect("an id").to_owned();

    let (short_event, long_event) = (
        json!({"Records": [short.clone()]}),
        json!({"Records": [long.clone()]}),
    );
    let started = std::time::Instant::now();
    let invocations = async {
        tokio::join!(
            bed.runtime.invoke(&short_event, Duration::from_secs(4)),
            bed.runtime.invoke(&long_event, Duration::from_secs(10)),
        )
    };
    let looks = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let while_both_run = visible().await;
        tokio::time::sleep_until((started + Duration::from_secs(7)).into()).await;
        let after_the_short_one = visible().await;
        (while_both_run, after_the_short_one)
    };
    let ((short_result, long_result), (while_both_run, after_the_short_one)) =
        tokio::join!(invocations, looks);

    assert_eq!(failed_ids(&short_result), BTreeSet::from([id(&short)]));
    assert_eq!(failed_ids(&long_result), BTreeSet::from([id(&long)]));
    assert_eq!(
        while_both_run,
        BTreeSet::new(),
        "both held past the queue's 2 s:\n{}",
        handler.output()
    );
    assert!(
        !after_the_short_one.contains(&id(&long)),
        "the long invocation's message came back while it ran ({after_the_short_one:?}):\n{}",
        handler.output()
    );
}
