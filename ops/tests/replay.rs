//! `terra-sink replay` against moto: the archive the compiled `sqs-handler`
//! wrote, projected again into DynamoDB by the compiled command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};
use terra_sink::sink::from_attribute;
use terra_sink_dev::bed::{Bed, failed_ids, sqs_record};
use terra_sink_dev::payload_server::Behaviour;
use terra_sink_dev::runtime_api::HandlerProcess;
use terra_sink_dev::{fixture, now_ms, workspace_binary};

const OPERATOR_TOOL: &str = env!("CARGO_BIN_EXE_terra-sink");
const OLD_NAME: &str = env!("CARGO_BIN_EXE_replay");
const TABLE: &str = "terra-replayed";
const USER: &str = "USER#40f7b0e1-89e2-43ac-a5b8-1e29c8d47cad";

type Items = BTreeMap<(String, String), std::collections::HashMap<String, AttributeValue>>;

/// Terra's daily example, for day `day` after 2026-01-01 with `steps`.
fn daily(day: u32, steps: u64) -> (String, Vec<u8>) {
    let date = time::macros::date!(2026 - 01 - 01) + time::Duration::days(i64::from(day));
    let mut payload: Value =
        serde_json::from_slice(&fixture("openapi_daily.json")).expect("JSON example");
    payload["data"][0]["metadata"]["start_time"] = json!(format!("{date}T00:00:00.000000+00:00"));
    payload["data"][0]["distance_data"]["steps"] = json!(steps);
    (
        date.to_string(),
        serde_json::to_vec_pretty(&payload).expect("JSON"),
    )
}

/// Sends `payloads` (reference, body, sent at) through the handler into
/// both sinks.
async fn archive(bed: &Bed, payloads: &[(String, Vec<u8>, u64)]) {
    let records: Vec<Value> = payloads
        .iter()
        .map(|(reference, body, sent)| {
            let url = bed
                .payloads
                .route(&format!("/p/{reference}.json"), Behaviour::Ok(body.clone()));
            let message = json!({
                "type": "s3_payload", "url": url, "expires_in": 600,
                "payload_reference": reference,
            });
            sqs_record(reference, &message.to_string(), *sent)
        })
        .collect();
    bed.run_to_success(
        &sqs_handler(),
        &[("TERRA_DYNAMODB_TABLE", TABLE)],
        records,
        Duration::from_secs(120),
    )
    .await;
}

async fn empty_table(bed: &Bed) {
    bed.moto
        .dynamodb()
        .delete_table()
        .table_name(TABLE)
        .send()
        .await
        .expect("table deleted");
    bed.moto.create_table(TABLE).await;
    assert!(bed.moto.items(TABLE).await.is_empty());
}

/// `terra-sink replay` as an operator runs it: the handlers' variables, test
/// credentials, and nothing else from the test's environment.
fn replay(bed: &Bed, extra_env: &[(&str, &str)]) -> Command {
    replay_as(OPERATOR_TOOL, &["replay"], bed, extra_env)
}

/// The compiled sqs-handler, built with this test by `cargo test
/// --workspace` (another package's binary has no `CARGO_BIN_EXE_`).
fn sqs_handler() -> String {
    workspace_binary("sqs-handler")
}

fn replay_as(program: &str, leading: &[&str], bed: &Bed, extra_env: &[(&str, &str)]) -> Command {
    let mut command = bed.operator_command(program, TABLE);
    command.args(leading).envs(extra_env.iter().copied());
    command
}

fn replay_command(bed: &Bed, state: &Path, extra: &[&str]) -> Command {
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let mut command = replay(bed, &[]);
    command
        .args(["archive", "--from", &today, "--to", &today, "--state"])
        .arg(state)
        .args(extra);
    command
}

fn summary_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "a JSON summary on stdout ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Runs `command` to a successful end and returns its summary.
fn succeeded(mut command: Command) -> Value {
    let output = command.output().expect("replay runs");
    assert!(
        output.status.success(),
        "stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    summary_of(&output)
}

/// Starts a replay one object at a time and kills it (SIGKILL) once it has
/// saved progress.
fn killed_once_under_way(bed: &Bed, state: &Path) {
    let mut first = replay_command(bed, state, &["--concurrency", "1"])
        .spawn()
        .expect("replay starts");
    let started = Instant::now();
    while !state.exists() {
        assert!(
            first.try_wait().expect("waitable").is_none(),
            "replay finished before it could be stopped; archive more objects"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().expect("killed");
    first.wait().expect("reaped");
}

fn state_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("terra-replay-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("state.json")
}

/// The items as replay must leave them: all but the time they were written.
fn without_received_at(items: &Items) -> BTreeMap<(String, String), Value> {
    items
        .iter()
        .map(|(key, item)| {
            let mut item = item.clone();
            item.remove("received_at");
            let value = from_attribute(&AttributeValue::M(item));
            (key.clone(), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_a_deleted_table_from_the_archive() {
    let bed = Bed::start("terra-replay-rebuild").await;
    bed.moto.create_table(TABLE).await;
    let sent = now_ms() - 60_000;
    let mut payloads: Vec<(String, Vec<u8>, u64)> = (0..12)
        .map(|day| {
            (
                format!("daily-{day:02}"),
                daily(day, 1000 + u64::from(day)).1,
                sent,
            )
        })
        .collect();
    for (reference, example) in [
        ("activity", "openapi_activity.json"),
        ("sleep", "openapi_sleep.json"),
        ("auth", "openapi_auth__authSuccess.json"),
    ] {
        payloads.push((reference.to_owned(), fixture(example), sent));
    }
    archive(&bed, &payloads).await;
    let before = bed.moto.items(TABLE).await;
    assert_eq!(
        before.len(),
        12 + 4,
        "12 days, an activity, a sleep, an auth event and a profile"
    );

    empty_table(&bed).await;
    let state = state_path("rebuild");
    let summary = succeeded(replay_command(&bed, &state, &[]));
    assert_eq!(summary["objects_listed"], 15);
    assert_eq!(summary["objects_read"], 15);
    assert_eq!(summary["items_written"], 16);
    assert_eq!(summary["items_stale"], 0);
    assert_eq!(summary["failures"], json!({}));
    assert!(!state.exists(), "a finished run leaves nothing to resume");

    let after = bed.moto.items(TABLE).await;
    assert_eq!(without_received_at(&after), without_received_at(&before));

    // Twice is as once: every item is already this version. Run under the
    // command's old name, `replay`, kept as an alias for one release.
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let mut old_name = replay_as(OLD_NAME, &[], &bed, &[]);
    old_name
        .args(["archive", "--from", &today, "--to", &today, "--state"])
        .arg(&state);
    let again = succeeded(old_name);
    assert_eq!(
        again["items_written"], 16,
        "written again, as the same version"
    );
    assert_eq!(
        without_received_at(&bed.moto.items(TABLE).await),
        without_received_at(&before)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_never_overwrites_an_item_from_a_newer_message() {
    let bed = Bed::start("terra-replay-newer").await;
    bed.moto.create_table(TABLE).await;
    let sent = now_ms() - 60_000;
    // Terra re-sends the same day in a new payload: two archived objects.
    let (date, older) = daily(3, 5_000);
    let (_, newer) = daily(3, 9_999);
    archive(&bed, &[("daily-first".into(), older, sent)]).await;
    archive(&bed, &[("daily-resent".into(), newer, sent + 1_000)]).await;

    let dry_summary = succeeded(replay_command(
        &bed,
        &state_path("newer-dry"),
        &["--dry-run"],
    ));
    assert_eq!(
        (
            &dry_summary["objects_read"],
            &dry_summary["items_written"],
            &dry_summary["dry_run"]
        ),
        (&json!(2), &json!(0), &json!(true))
    );

    let summary = succeeded(replay_command(&bed, &state_path("newer"), &[]));
    assert_eq!(summary["objects_read"], 2);
    assert_eq!(
        summary["items_stale"], 1,
        "the first send is older: {summary}"
    );

    let items = bed.moto.items(TABLE).await;
    let day = &items[&(USER.to_owned(), format!("DAILY#{date}"))];
    assert_eq!(
        from_attribute(&day["data"])["distance_data"]["steps"],
        9_999,
        "the newer message's record stays"
    );

    // A selection by type or user reads only what it names.
    let other_type = replay_command(&bed, &state_path("newer-type"), &["--type", "sleep"])
        .output()
        .expect("replay runs");
    let other_summary = summary_of(&other_type);
    assert_eq!(
        (
            &other_summary["objects_read"],
            &other_summary["objects_not_selected"]
        ),
        (&json!(0), &json!(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replay_resumes_without_redoing_finished_work() {
    const OBJECTS: u32 = 300;
    let bed = Bed::start("terra-replay-resume").await;
    bed.moto.create_table(TABLE).await;
    let sent = now_ms() - 60_000;
    let payloads: Vec<(String, Vec<u8>, u64)> = (0..OBJECTS)
        .map(|day| {
            (
                format!("daily-{day:04}"),
                daily(day, u64::from(day)).1,
                sent,
            )
        })
        .collect();
    archive(&bed, &payloads).await;
    empty_table(&bed).await;

    let state = state_path("resume");
    killed_once_under_way(&bed, &state);

    let saved: Value =
        serde_json::from_slice(&std::fs::read(&state).expect("state kept")).expect("JSON state");
    let resume_after = saved["resume_after"]
        .as_str()
        .expect("a resume point")
        .to_owned();
    let done = payloads
        .iter()
        .filter(|(reference, _, _)| resume_after.ends_with(&format!("/{reference}.json")))
        .count();
    assert_eq!(
        done, 1,
        "the resume point names an archived object: {resume_after}"
    );
    let finished: u32 = resume_after
        .rsplit_once("daily-")
        .and_then(|(_, rest)| rest.strip_suffix(".json"))
        .and_then(|n| n.parse::<u32>().ok())
        .map(|n| n + 1)
        .expect("a daily object");
    assert!(finished < OBJECTS, "stopped mid-run");
    let written_before_resume = bed.moto.items(TABLE).await;

    let summary = succeeded(replay_command(&bed, &state, &["--concurrency", "1"]));
    assert_eq!(summary["resumed_after"], resume_after);
    assert_eq!(
        summary["objects_read"],
        OBJECTS - finished,
        "only what the first run had not finished"
    );
    assert!(!state.exists());

    let items = bed.moto.items(TABLE).await;
    assert_eq!(items.len(), OBJECTS as usize, "every day projected");
    for day in 0..finished {
        let (date, _) = daily(day, 0);
        let key = (USER.to_owned(), format!("DAILY#{date}"));
        assert_eq!(
            items[&key]["received_at"], written_before_resume[&key]["received_at"],
            "day {day} was finished before the kill and must not be written again"
        );
    }
}

/// Puts `body` straight into the archive under today's partition, as the
/// handlers would have stored the send at `sent_at_ms`.
async fn put_archived(bed: &Bed, name: &str, body: &[u8], sent_at_ms: u64) {
    let today = time::OffsetDateTime::now_utc().date();
    bed.moto
        .s3()
        .put_object()
        .bucket(&bed.bucket)
        .key(format!("terra/dt={today}/{name}.json"))
        .metadata("terra-sent-at", sent_at_ms.to_string())
        .body(body.to_vec().into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {name}: {e:?}"));
}

/// A run killed after an object failed, resumed: the failure is reported,
/// the run exits 1, and only then is its state removed. Before, the state
/// kept only the resume point: the resumed run reported no failure, exited
/// 0, and the table silently lacked that object's items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replay_still_reports_what_failed_before_the_kill() {
    const OBJECTS: u32 = 300;
    let bed = Bed::start("terra-replay-failed").await;
    bed.moto.create_table(TABLE).await;
    let sent = now_ms() - 60_000;
    // First in key order, and not a payload: it fails at once.
    put_archived(&bed, "000-not-json", b"not json", sent).await;
    for day in 0..OBJECTS {
        put_archived(&bed, &format!("daily-{day:04}"), &daily(day, 1).1, sent).await;
    }

    let state = state_path("failed");
    killed_once_under_way(&bed, &state);

    let output = replay_command(&bed, &state, &["--concurrency", "1"])
        .output()
        .expect("replay runs");
    let summary = summary_of(&output);
    assert!(!output.status.success(), "a failure was left: {summary}");
    let today = time::OffsetDateTime::now_utc().date();
    assert_eq!(
        summary["failed_keys"],
        json!([format!("terra/dt={today}/000-not-json.json")]),
        "{summary}"
    );
    assert_eq!(summary["failures"], json!({"invalid/permanent": 1}));
    assert!(summary["resumed_after"].is_string(), "{summary}");
    assert!(!state.exists(), "reported: nothing left to resume");
    assert_eq!(bed.moto.items(TABLE).await.len(), OBJECTS as usize);
}

/// A payload over `TERRA_MAX_PAYLOAD_BYTES` in the archive (copied in from
/// a source bucket, or a limit lowered since) is not read back into memory:
/// it fails, and the rest are replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_leaves_archived_payloads_over_the_limit_unread() {
    let bed = Bed::start("terra-replay-limit").await;
    bed.moto.create_table(TABLE).await;
    let sent = now_ms() - 60_000;
    let small = daily(1, 1).1;
    let mut large: Value = serde_json::from_slice(&daily(2, 2).1).expect("JSON");
    large["padding"] = json!("x".repeat(4 * small.len()));
    let large = serde_json::to_vec(&large).expect("JSON");
    put_archived(&bed, "daily-small", &small, sent).await;
    put_archived(&bed, "daily-large", &large, sent).await;
    let limit = (2 * small.len()).to_string();

    let today = time::OffsetDateTime::now_utc().date().to_string();
    let mut command = replay(&bed, &[("TERRA_MAX_PAYLOAD_BYTES", &limit)]);
    command
        .args(["archive", "--from", &today, "--to", &today, "--state"])
        .arg(state_path("limit"));
    let output = command.output().expect("replay runs");
    let summary = summary_of(&output);
    assert!(!output.status.success(), "{summary}");
    assert_eq!(
        summary["failures"],
        json!({"fetch/permanent": 1}),
        "{summary}"
    );
    assert_eq!(
        summary["failed_keys"],
        json!([format!("terra/dt={today}/daily-large.json")])
    );
    assert_eq!(summary["objects_read"], 1);
    assert_eq!(bed.moto.items(TABLE).await.len(), 1);
}

fn dead_letter_command(bed: &Bed, queue: &str) -> Command {
    let mut command = replay(
        bed,
        &[
            ("TERRA_ALLOW_INSECURE_URLS", "true"),
            ("TERRA_ALLOWED_URL_HOSTS", "127.0.0.1"),
            ("TERRA_FETCH_TIMEOUT_SECS", "2"),
        ],
    );
    command.args(["dead-letters", "--queue", queue]);
    command
}

async fn visible_messages(bed: &Bed, queue: &str) -> u64 {
    let attributes = bed
        .moto
        .sqs()
        .get_queue_attributes()
        .queue_url(queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .expect("queue attributes");
    attributes
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages))
        .and_then(|n| n.parse().ok())
        .expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_with_an_archived_payload_complete_and_the_rest_stay_listed() {
    use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
    let bed = Bed::start("terra-replay-dlq").await;
    let sqs = bed.moto.sqs();
    // Terra's queue and its dead-letter queue, with the template's redrive.
    let max_receive_count = terra_sink_dev::deployed::Deployed::from_template().max_receive_count;
    let dead_letters = bed.moto.create_queue("terra-replay-dlq").await;
    let dead_letter_arn = sqs
        .get_queue_attributes()
        .queue_url(&dead_letters)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("attributes")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .expect("an ARN");
    let queue = sqs
        .create_queue()
        .queue_name("terra-replay-events")
        .attributes(
            QueueAttributeName::RedrivePolicy,
            json!({"deadLetterTargetArn": dead_letter_arn,
                   "maxReceiveCount": max_receive_count.to_string()})
            .to_string(),
        )
        .send()
        .await
        .expect("queue")
        .queue_url()
        .expect("URL")
        .to_owned();

    // Archived, but the table was missing: the message failed until it was
    // dead-lettered. Its URL lives two seconds.
    let (date, body) = daily(40, 4_040);
    let archived_url = bed.payloads.route("/p/archived.json", Behaviour::Ok(body));
    let archived = json!({"type": "s3_payload", "url": archived_url, "expires_in": 2,
                          "payload_reference": "dlq-archived"});
    // Never fetched in time, so never archived.
    let lost_url = bed.payloads.route("/p/lost.json", Behaviour::Status(403));
    let lost = json!({"type": "s3_payload", "url": lost_url, "expires_in": 600,
                      "payload_reference": "dlq-lost"});
    for body in [
        archived.to_string(),
        lost.to_string(),
        "not Terra's".to_owned(),
    ] {
        sqs.send_message()
            .queue_url(&queue)
            .message_body(body)
            .send()
            .await
            .expect("sent");
    }
    let received = sqs
        .receive_message()
        .queue_url(&queue)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .send()
        .await
        .expect("received");
    let records: Vec<Value> = received
        .messages()
        .iter()
        .map(|m| {
            let sent = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .and_then(|t| t.parse::<u64>().ok())
                .expect("SentTimestamp");
            sqs_record(m.message_id().expect("id"), m.body().expect("body"), sent)
        })
        .collect();
    assert_eq!(records.len(), 3);
    let env = bed.env(&[("TERRA_DYNAMODB_TABLE", TABLE)]);
    let handler = HandlerProcess::spawn(&sqs_handler(), &env);
    let result = bed
        .runtime
        .invoke(&json!({ "Records": records }), Duration::from_secs(60))
        .await;
    assert_eq!(
        failed_ids(&result).len(),
        3,
        "no table yet: every message fails\n{}",
        handler.output()
    );
    assert_eq!(
        bed.moto.objects(&bed.bucket).await.len(),
        1,
        "but one is archived"
    );
    // Every later delivery fails the same way while the table is missing
    // (the handler, run above, is not needed to see that again); once past
    // maxReceiveCount they are on the dead-letter queue.
    for delivery in 2..=max_receive_count {
        let retried = sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .send()
            .await
            .expect("received");
        assert_eq!(retried.messages().len(), 3, "delivery {delivery}");
    }
    let again = sqs
        .receive_message()
        .queue_url(&queue)
        .max_number_of_messages(10)
        .send()
        .await
        .expect("received");
    assert!(again.messages().is_empty());
    assert_eq!(visible_messages(&bed, &dead_letters).await, 3);

    tokio::time::sleep(Duration::from_secs(2)).await;
    // Without the table's name the command cannot know the deployment
    // writes one: it refuses, rather than take the archive alone for done.
    let mut without_table = dead_letter_command(&bed, &dead_letters);
    without_table.env_remove("TERRA_DYNAMODB_TABLE");
    let refused = without_table.output().expect("replay runs");
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("TERRA_DYNAMODB_TABLE") && said.contains("--archive-only"),
        "{said}"
    );
    assert_eq!(visible_messages(&bed, &dead_letters).await, 3);
    // The table still missing: the archived message is not done, so it
    // stays.
    let output = dead_letter_command(&bed, &dead_letters)
        .output()
        .expect("replay runs");
    assert_eq!(summary_of(&output)["completed"], 0, "no table yet");
    assert_eq!(visible_messages(&bed, &dead_letters).await, 3);

    bed.moto.create_table(TABLE).await;
    let output = dead_letter_command(&bed, &dead_letters)
        .output()
        .expect("replay runs");
    assert_eq!(
        output.status.code(),
        Some(1),
        "messages are left: stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = summary_of(&output);
    assert_eq!(
        (&summary["received"], &summary["completed"]),
        (&json!(3), &json!(1)),
        "{summary}"
    );
    let mut left: Vec<(Value, Value)> = summary["left"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| (m["payload_reference"].clone(), m["failure"].clone()))
        .collect();
    left.sort_by_key(|(reference, _)| reference.to_string());
    assert_eq!(
        left,
        [
            (json!("dlq-lost"), json!("expired/permanent")),
            (Value::Null, json!("invalid/permanent")),
        ]
    );
    for message in summary["left"].as_array().expect("a list") {
        assert!(
            message["sent_at_ms"].as_u64().is_some_and(|t| t > 0),
            "{message}"
        );
    }
    terra_sink_dev::bed::assert_no_secrets(&String::from_utf8_lossy(&output.stdout));
    terra_sink_dev::bed::assert_no_secrets(&String::from_utf8_lossy(&output.stderr));

    let items = bed.moto.items(TABLE).await;
    let day = items
        .get(&(USER.to_owned(), format!("DAILY#{date}")))
        .unwrap_or_else(|| panic!("the archived payload's record: {:?}", items.keys()));
    assert_eq!(
        from_attribute(&day["data"])["distance_data"]["steps"],
        4_040
    );
    assert_eq!(
        bed.payloads.hits("/p/archived.json"),
        1,
        "completed from the archive, not the expired URL"
    );
    assert_eq!(
        visible_messages(&bed, &dead_letters).await,
        2,
        "the completed message is deleted; the others are visible again"
    );
}
