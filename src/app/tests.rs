//! The handlers in process, on in-memory stores and queues and a real payload
//! server: their responses, the order of the stores, the archive fallback,
//! the quarantine deadline and the metrics, in milliseconds. What the stores
//! do on the wire is tested against moto in `tests/`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use terra_sink_dev::events::{KafkaRecord, KafkaSource, base64, kafka_event, pointer};
use terra_sink_dev::payload_server::{Behaviour, PayloadServer};
use terra_sink_dev::sqs_mapping::sqs_record;

use super::{App, AppParts};
use crate::erasure::EraseUser;
use crate::fakes::{
    Answer, Journal, MemoryArchive, MemoryEraser, MemoryQuarantine, MemoryQueue, MemorySink,
};
use crate::fetch::{FetchSettings, Fetcher, HostPattern, UrlPolicy};
use crate::message::{self, TerraMessage};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::redelivery::{Redelivery, hold_for_invocation};
use crate::sink::{Archive, ArchiveName, Sink};
use crate::source::kafka::{KafkaBatchResponse, KafkaEvent, ResponseMode};
use crate::wall_clock::now_ms;

/// The invocation's time: enough for a fetch, short enough that a record
/// retried until the deadline keeps a test quick.
const INVOCATION: Duration = Duration::from_secs(3);
const FUNCTION_NAME: &str = "terra-sink-test";

struct Harness {
    app: App,
    journal: Journal,
    archive: Arc<MemoryArchive>,
    sink: Arc<MemorySink>,
    eraser: Arc<MemoryEraser>,
    quarantine: MemoryQuarantine,
    queue: MemoryQueue,
    metrics: Arc<Mutex<Vec<Value>>>,
    payloads: PayloadServer,
}

struct Setup {
    archive: fn(&Journal) -> MemoryArchive,
    /// A table (the in-memory sink) besides the archive.
    table: bool,
    quarantine: Answer,
    kafka_response: ResponseMode,
    /// `EraseOnDeauth`, by an eraser failing its first this many erasures.
    erase_on_deauth: Option<usize>,
    /// The table's writes panic for this user's payloads.
    sink_panics_for: Option<&'static str>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            archive: MemoryArchive::new,
            table: true,
            quarantine: Answer::Accept,
            kafka_response: ResponseMode::PartialBatch,
            erase_on_deauth: None,
            sink_panics_for: None,
        }
    }
}

async fn harness(setup: Setup) -> Harness {
    let journal = Journal::default();
    let archive = Arc::new((setup.archive)(&journal));
    let sink = Arc::new(MemorySink::new(&journal).panicking_for(setup.sink_panics_for));
    let eraser = Arc::new(
        MemoryEraser::new(&journal).failing_first(setup.erase_on_deauth.unwrap_or_default()),
    );
    let quarantine = MemoryQuarantine::answering(setup.quarantine);
    let queue = MemoryQueue::default();
    let (metrics, documents) = Metrics::in_memory("Terra/Test");
    let policy = UrlPolicy {
        allowed_hosts: Some(vec![HostPattern::parse("127.0.0.1").expect("valid")]),
        allow_insecure: true,
    };
    let fetcher = Fetcher::new(
        policy,
        FetchSettings {
            timeout: Duration::from_secs(2),
            max_attempts: Some(2),
            max_payload_bytes: 1024 * 1024,
        },
    )
    .expect("client builds");
    let mut pipeline = Pipeline::new(
        fetcher,
        Some(Arc::clone(&archive) as Arc<dyn Archive>),
        if setup.table {
            vec![Arc::clone(&sink) as Arc<dyn Sink>]
        } else {
            Vec::new()
        },
    );
    if setup.erase_on_deauth.is_some() {
        pipeline = pipeline.erasing_on_deauth(Arc::clone(&eraser) as Arc<dyn EraseUser>);
    }
    let app = App::new(AppParts {
        pipeline,
        concurrency: 4,
        kafka_response: setup.kafka_response,
        quarantine: Some(Box::new(quarantine.clone())),
        redelivery: Redelivery::new(Box::new(queue.clone())),
        metrics,
    });
    Harness {
        app,
        journal,
        archive,
        sink,
        eraser,
        quarantine,
        queue,
        metrics: documents,
        payloads: PayloadServer::start().await,
    }
}

impl Harness {
    /// A pointer message to Terra's `deauth` of `user`.
    fn deauth_pointer(&self, user: &str) -> String {
        pointer(
            &self
                .payloads
                .route("/deauth.json", Behaviour::Ok(leaving("deauth", user))),
        )
    }

    /// A pointer message to an activity of `user` served at `path`.
    fn activity_pointer(&self, path: &str, user: &str) -> String {
        pointer(&self.payloads.route(path, Behaviour::Ok(activity(user))))
    }

    async fn handle_sqs(&self, records: &[Value]) -> SqsBatchResponse {
        self.app
            .handle_sqs(invocation(sqs_event(records)))
            .await
            .expect("a batch response")
    }
}

fn invocation<T>(payload: T) -> LambdaEvent<T> {
    invocation_lasting(payload, INVOCATION)
}

fn invocation_lasting<T>(payload: T, time: Duration) -> LambdaEvent<T> {
    let mut context = Context::default();
    context.deadline = now_ms() + time.as_millis() as u64;
    context.env_config = Arc::new(lambda_runtime::Config {
        function_name: FUNCTION_NAME.into(),
        ..lambda_runtime::Config::default()
    });
    LambdaEvent::new(payload, context)
}

fn sqs_event(records: &[Value]) -> SqsEvent {
    serde_json::from_value(json!({ "Records": records })).expect("an SQS event")
}

fn activity(user: &str) -> Vec<u8> {
    json!({
        "type": "activity",
        "user": {"user_id": user, "provider": "GARMIN"},
        "data": [{"metadata": {"summary_id": format!("{user}-run"), "start_time": "2026-11-30T07:00:00Z"}}]
    })
    .to_string()
    .into_bytes()
}

/// The archive name the pipeline gives the payload a message points to.
fn name_of(body: &str, sent_at_ms: u64) -> ArchiveName {
    match message::decode(body.as_bytes()).expect("a pointer message") {
        TerraMessage::Payload(pointer) => ArchiveName::for_message(&pointer, sent_at_ms),
        TerraMessage::Healthcheck => panic!("not a payload"),
    }
}

fn failed_ids(response: &SqsBatchResponse) -> Vec<String> {
    let mut ids: Vec<String> = response
        .batch_item_failures
        .iter()
        .map(|failure| failure.item_identifier.clone())
        .collect();
    ids.sort();
    ids
}

/// The counts of the invocation's first metric document.
fn counted(harness: &Harness, metric: &str) -> u64 {
    let documents = harness.metrics.lock().expect("not poisoned");
    let first = documents.first().expect("a metric document");
    first[metric]
        .as_u64()
        .unwrap_or_else(|| panic!("{metric} in {first}"))
}

#[tokio::test]
async fn sqs_reports_only_the_messages_that_failed() {
    let h = harness(Setup::default()).await;
    let now = now_ms();
    let good = h.activity_pointer("/good.json", "u-1");
    let gone = pointer(&h.payloads.route("/gone.json", Behaviour::Status(404)));
    let event = [
        sqs_record("good", &good, now),
        sqs_record("garbled", "not a pointer", now),
        sqs_record("gone", &gone, now),
        sqs_record(
            "health",
            r#"{"type":"healthcheck","status":"success"}"#,
            now,
        ),
    ];

    let response = h.handle_sqs(&event).await;

    assert_eq!(failed_ids(&response), ["garbled", "gone"]);
    let name = name_of(&good, now);
    assert_eq!(
        h.archive.object(&name).as_deref(),
        Some(&activity("u-1")[..])
    );
    assert!(
        h.sink.written(&name).is_some(),
        "the good payload is projected"
    );
    assert_eq!((h.archive.len(), h.sink.len()), (1, 1));
    // Failed messages are given back to the queue on their own schedule;
    // the whole batch was hidden for the invocation first.
    let changed: Vec<String> = h.queue.changes().into_iter().map(|(_, c)| c.id).collect();
    for id in ["good", "garbled", "gone", "health"] {
        assert!(changed.contains(&id.to_owned()), "{id} held: {changed:?}");
    }
    assert!(changed.iter().filter(|id| *id == "gone").count() == 2);
}

/// Terra's `type` event for `user`, as the OpenAPI examples have them.
fn leaving(event_type: &str, user: &str) -> Vec<u8> {
    json!({
        "type": event_type,
        "status": "success",
        "user": {"user_id": user, "provider": "GARMIN", "reference_id": "ref-1"}
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn with_erase_on_deauth_a_user_who_left_is_erased_after_the_event_is_written() {
    let h = harness(Setup {
        erase_on_deauth: Some(0),
        ..Setup::default()
    })
    .await;
    let now = now_ms();
    let active = h.activity_pointer("/active.json", "u-1");
    let deauth = h.deauth_pointer("u-1");
    let revoked = pointer(&h.payloads.route(
        "/revoked.json",
        Behaviour::Ok(leaving("access_revoked", "u-2")),
    ));
    let event = [
        sqs_record("active", &active, now),
        sqs_record("deauth", &deauth, now),
        sqs_record("revoked", &revoked, now),
    ];

    let response = h.handle_sqs(&event).await;

    assert_eq!(failed_ids(&response), Vec::<String>::new());
    let erased = h.eraser.erased();
    let users: Vec<&str> = {
        let mut users: Vec<&str> = erased.iter().map(|(user, _)| user.as_str()).collect();
        users.sort();
        users
    };
    assert_eq!(users, ["u-1", "u-2"], "an activity erases no one");
    let (_, kept) = erased
        .iter()
        .find(|(user, _)| user == "u-1")
        .expect("u-1 erased");
    assert_eq!(
        kept.archive_name,
        Some(name_of(&deauth, now)),
        "the deauth stays"
    );
    assert!(
        kept.items
            .iter()
            .any(|(pk, sk)| pk == "USER#u-1" && sk.ends_with("#DEAUTH")),
        "its table item stays: {:?}",
        kept.items
    );
    // Written first, to both stores, then erased.
    let journal = h.journal.lock().expect("not poisoned").clone();
    let deauth_name = name_of(&deauth, now);
    let at = |entry: String| journal.iter().position(|e| *e == entry);
    let erase_at = at("erase u-1".into()).expect("erased");
    assert!(at(format!("archive {}", deauth_name.as_str())).expect("archived") < erase_at);
    assert!(at(format!("sink {}", deauth_name.as_str())).expect("projected") < erase_at);
}

#[tokio::test]
async fn an_erasure_left_undone_fails_the_leaving_record_alone_for_a_retry() {
    let h = harness(Setup {
        erase_on_deauth: Some(1),
        ..Setup::default()
    })
    .await;
    let now = now_ms();
    let active = h.activity_pointer("/active.json", "u-1");
    let deauth = h.deauth_pointer("u-1");
    let event = [
        sqs_record("active", &active, now),
        sqs_record("deauth", &deauth, now),
    ];

    let response = h.handle_sqs(&event).await;
    assert_eq!(failed_ids(&response), ["deauth"]);
    assert!(
        h.archive.object(&name_of(&deauth, now)).is_some(),
        "the event is written all the same"
    );

    // The retry writes it again and finishes the erasure.
    let retried = h.handle_sqs(&[sqs_record("deauth", &deauth, now)]).await;
    assert_eq!(failed_ids(&retried), Vec::<String>::new());
    assert_eq!(h.eraser.erased().len(), 2);
}

#[tokio::test]
async fn without_erase_on_deauth_a_deauth_is_only_written() {
    let h = harness(Setup::default()).await;
    let now = now_ms();
    let deauth = h.deauth_pointer("u-1");
    let response = h.handle_sqs(&[sqs_record("deauth", &deauth, now)]).await;
    assert_eq!(failed_ids(&response), Vec::<String>::new());
    assert!(h.archive.object(&name_of(&deauth, now)).is_some());
    assert_eq!(h.eraser.erased(), Vec::new());
}

#[tokio::test]
async fn metrics_count_the_invocation_by_outcome_and_class() {
    let h = harness(Setup::default()).await;
    let now = now_ms();
    let good = h.activity_pointer("/good.json", "u-1");
    let event = [
        sqs_record("good", &good, now),
        sqs_record("garbled", "not a pointer", now),
        sqs_record(
            "health",
            r#"{"type":"healthcheck","status":"success"}"#,
            now,
        ),
    ];
    h.handle_sqs(&event).await;

    let documents = h.metrics.lock().expect("not poisoned").clone();
    // The invocation's, then one per type: the activity written, and the
    // garbled message failed before any payload was read.
    let types: Vec<&Value> = documents[1..].iter().map(|d| &d["Type"]).collect();
    assert_eq!(
        types,
        [&json!("activity"), &json!("unknown")],
        "{documents:?}"
    );
    let document = &documents[0];
    assert_eq!(document["ColdStart"], 1, "the app's first invocation");
    let directive = &document["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "Terra/Test");
    assert_eq!(document["FunctionName"], FUNCTION_NAME);
    assert_eq!(document["Trigger"], "sqs");
    drop(documents);
    for (metric, count) in [
        ("RecordsReceived", 3),
        ("RecordsWritten", 1),
        ("RecordsSkipped", 1),
        ("RecordsFailed", 1),
        ("RecordsFailedInvalid", 1),
        ("RecordsFailedFetch", 0),
        ("RecordsRecoveredFromArchive", 0),
    ] {
        assert_eq!(counted(&h, metric), count, "{metric}");
    }
}

#[tokio::test]
async fn the_archive_is_written_before_the_table_and_its_failure_stops_the_record() {
    let h = harness(Setup::default()).await;
    let now = now_ms();
    let good = h.activity_pointer("/good.json", "u-1");
    let response = h.handle_sqs(&[sqs_record("good", &good, now)]).await;
    assert!(failed_ids(&response).is_empty());
    let name = name_of(&good, now);
    assert_eq!(
        *h.journal.lock().expect("not poisoned"),
        [
            format!("archive {}", name.as_str()),
            format!("sink {}", name.as_str())
        ]
    );
    assert!(
        h.sink
            .written(&name)
            .and_then(|delivery| delivery.archived)
            .is_some(),
        "the table is told where the archive holds the payload"
    );

    let down = harness(Setup {
        archive: MemoryArchive::failing,
        ..Setup::default()
    })
    .await;
    let url = down.activity_pointer("/good.json", "u-1");
    let response = down.handle_sqs(&[sqs_record("good", &url, now)]).await;
    assert_eq!(failed_ids(&response), ["good"]);
    assert_eq!(down.sink.len(), 0, "nothing reaches the table unarchived");
    let journal = down.journal.lock().expect("not poisoned").clone();
    assert!(
        journal.len() > 1 && journal.iter().all(|entry| entry.starts_with("archive ")),
        "the archive is retried until the deadline, the table never asked: {journal:?}"
    );
    assert_eq!(counted(&down, "RecordsFailedSink"), 1);
}

const EXPIRED_PATH: &str = "/expired.json";

/// Two messages sent long enough ago that their URLs expired: an earlier
/// delivery archived the first one's payload, nobody archived the second's.
async fn expired_messages(setup: Setup) -> (Harness, ArchiveName) {
    let sent = now_ms() - 700_000;
    let h = harness(setup).await;
    let body = h.activity_pointer(EXPIRED_PATH, "u-1");
    let name = name_of(&body, sent);
    h.archive.hold(&name, sent, &activity("u-1"));
    let lost = h.activity_pointer("/lost.json", "u-2");

    let response = h
        .handle_sqs(&[
            sqs_record("archived", &body, sent),
            sqs_record("lost", &lost, sent),
        ])
        .await;

    assert_eq!(failed_ids(&response), ["lost"]);
    assert_eq!(
        h.payloads.hits(EXPIRED_PATH),
        0,
        "an expired URL is not tried"
    );
    assert_eq!(counted(&h, "RecordsRecoveredFromArchive"), 1);
    assert_eq!(counted(&h, "RecordsFailedExpired"), 1);
    (h, name)
}

#[tokio::test]
async fn an_expired_url_is_completed_from_the_archived_copy() {
    let (h, name) = expired_messages(Setup::default()).await;
    let written = h.sink.written(&name).expect("projected from the archive");
    assert_eq!(&written.payload[..], &activity("u-1")[..]);
}

/// With the archive as the only store there is nothing to project: the
/// archive is asked whether it holds the send, and nothing is read back.
#[tokio::test]
async fn with_the_archive_alone_an_expired_url_needs_only_the_archived_copy_to_exist() {
    let (h, _) = expired_messages(Setup {
        table: false,
        ..Setup::default()
    })
    .await;
    let journal = h.journal.lock().expect("not poisoned").clone();
    assert!(
        journal.iter().all(|entry| entry.starts_with("holds ")),
        "asked, never read back or rewritten: {journal:?}"
    );
    assert_eq!(counted(&h, "RecordsWritten"), 1);
}

fn kafka_invocation(records: &[KafkaRecord]) -> LambdaEvent<KafkaEvent> {
    invocation(
        serde_json::from_value(kafka_event(KafkaSource::Msk, records)).expect("a Kafka event"),
    )
}

fn kafka_record(offset: i64, value: &str) -> KafkaRecord {
    KafkaRecord {
        topic: "terra-events".into(),
        partition: 0,
        offset,
        value: base64(value),
        timestamp_ms: now_ms(),
    }
}

fn failed_offsets(response: &KafkaBatchResponse) -> Vec<i64> {
    response
        .batch_item_failures
        .iter()
        .map(|failure| failure.item_identifier.offset)
        .collect()
}

#[tokio::test]
async fn kafka_poison_is_quarantined_and_the_partition_moves_on() {
    let h = harness(Setup::default()).await;
    let good = h.activity_pointer("/good.json", "u-1");
    let response = h
        .app
        .handle_kafka(kafka_invocation(&[
            kafka_record(7, &good),
            kafka_record(8, "not a pointer"),
        ]))
        .await
        .expect("a batch response");

    assert!(failed_offsets(&response).is_empty(), "{response:?}");
    let letters = h.quarantine.sent();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].group, "terra-events-0");
    assert_eq!(counted(&h, "RecordsQuarantined"), 1);
    assert_eq!(h.sink.len(), 1);
}

/// A quarantine queue that never answers must not cost the response: the
/// handler answers before Lambda's deadline, with the poison record failed
/// so the mapping retries it.
#[tokio::test]
async fn a_quarantine_queue_that_hangs_leaves_poison_failed_before_the_deadline() {
    let h = harness(Setup {
        quarantine: Answer::Hang,
        ..Setup::default()
    })
    .await;
    let event = kafka_invocation(&[kafka_record(7, "not a pointer")]);
    let deadline = event.context.deadline();

    let response = tokio::time::timeout(INVOCATION * 2, h.app.handle_kafka(event))
        .await
        .expect("the handler answers despite the queue")
        .expect("a batch response");

    assert!(SystemTime::now() < deadline, "answered before the deadline");
    assert_eq!(failed_offsets(&response), [7]);
    assert!(h.quarantine.sent().is_empty());
    assert_eq!(counted(&h, "RecordsQuarantined"), 0);
    assert_eq!(counted(&h, "RecordsFailedInvalid"), 1);
}

#[tokio::test]
async fn kafka_without_partial_batch_responses_fails_the_invocation_for_a_transient_failure() {
    let h = harness(Setup {
        kafka_response: ResponseMode::WholeBatch,
        ..Setup::default()
    })
    .await;
    let good = h.activity_pointer("/good.json", "u-1");
    let down = pointer(&h.payloads.route("/down.json", Behaviour::Status(503)));
    let error = h
        .app
        .handle_kafka(kafka_invocation(&[
            kafka_record(7, &good),
            kafka_record(8, &down),
        ]))
        .await
        .expect_err("the whole batch is retried");
    let reported = lambda_runtime::Diagnostic::from(error);
    assert_eq!(reported.error_type, "BatchFailed");
    assert!(
        reported.error_message.contains("1 of 2 records failed"),
        "{}",
        reported.error_message
    );
}

/// Whole-batch mode retries every record while any failure stays: a poison
/// record is quarantined once, on the retry that settles the batch, not
/// again on every retry before it.
#[tokio::test]
async fn kafka_whole_batch_retries_quarantine_poison_once() {
    let h = harness(Setup {
        kafka_response: ResponseMode::WholeBatch,
        ..Setup::default()
    })
    .await;
    let recovering = pointer(&h.payloads.route(
        "/recovering.json",
        Behaviour::FailThenOk {
            failures: 2,
            status: 503,
            retry_after: None,
            body: activity("u-1"),
        },
    ));
    let batch = || {
        kafka_invocation(&[
            kafka_record(8, "not a pointer"),
            kafka_record(9, &recovering),
        ])
    };

    let first = h.app.handle_kafka(batch()).await;
    assert!(
        first.is_err(),
        "the transient failure brings the batch back"
    );
    assert!(h.quarantine.sent().is_empty(), "the poison comes back too");

    let second = h.app.handle_kafka(batch()).await.expect("settled");
    assert!(failed_offsets(&second).is_empty());
    assert_eq!(h.quarantine.sent().len(), 1);
    assert_eq!(h.sink.len(), 1);
}

/// Lambda Managed Instances hand one app several invocations at once. Each
/// hides its own batch for its own time left: one invocation's deadline is
/// never another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_at_once_each_hold_their_batch_for_their_own_time() {
    let h = harness(Setup::default()).await;
    let now = now_ms();
    let (short, long) = (Duration::from_secs(2), Duration::from_secs(40));
    let short_batch = [sqs_record(
        "short",
        &h.activity_pointer("/short.json", "u-short"),
        now,
    )];
    let long_batch = [sqs_record(
        "long",
        &h.activity_pointer("/long.json", "u-long"),
        now,
    )];

    let (short_response, long_response) = tokio::join!(
        h.app
            .handle_sqs(invocation_lasting(sqs_event(&short_batch), short)),
        h.app
            .handle_sqs(invocation_lasting(sqs_event(&long_batch), long)),
    );

    for response in [short_response, long_response] {
        assert!(failed_ids(&response.expect("a batch response")).is_empty());
    }
    let held = |id: &str| {
        h.queue
            .changes()
            .into_iter()
            .find(|(_, change)| change.id == id)
            .map(|(_, change)| change.timeout)
    };
    // The hold rounds up to whole seconds, so the few milliseconds spent
    // before it do not show.
    assert_eq!(held("short"), Some(hold_for_invocation(short)));
    assert_eq!(held("long"), Some(hold_for_invocation(long)));
}

/// A bug that panics on one record fails that record alone, in its own
/// invocation; the invocation beside it, and the app's next one, are whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_invocation_fails_its_record_alone() {
    let h = harness(Setup {
        sink_panics_for: Some("u-bug"),
        ..Setup::default()
    })
    .await;
    let now = now_ms();
    let with_the_bug = [
        sqs_record("bug", &h.activity_pointer("/bug.json", "u-bug"), now),
        sqs_record("beside", &h.activity_pointer("/beside.json", "u-1"), now),
    ];
    let alongside = [sqs_record(
        "alongside",
        &h.activity_pointer("/alongside.json", "u-2"),
        now,
    )];

    let (with_the_bug_response, alongside_response) =
        tokio::join!(h.handle_sqs(&with_the_bug), h.handle_sqs(&alongside));
    let next = [sqs_record(
        "next",
        &h.activity_pointer("/next.json", "u-3"),
        now_ms(),
    )];
    let next_response = h.handle_sqs(&next).await;

    assert_eq!(failed_ids(&with_the_bug_response), ["bug"]);
    assert!(failed_ids(&alongside_response).is_empty());
    assert!(failed_ids(&next_response).is_empty());
    assert_eq!(h.sink.len(), 3, "beside, alongside and next are written");
    // Classified as a bug: the queue gives the message back for a retry
    // rather than dropping it.
    let bug_changes = h
        .queue
        .changes()
        .into_iter()
        .filter(|(_, change)| change.id == "bug")
        .count();
    assert_eq!(bug_changes, 2, "held, then returned");
}
