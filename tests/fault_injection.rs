//! Faults injected into the whole flow: the compiled `sqs-handler` behind the
//! local SQS mapping, against moto, fed by the Terra simulator. After the
//! queue drains, every scenario must show: every message archived or
//! dead-lettered (0 lost), none both (0 duplicates), each ending as its kind
//! predicts, and exactly one archived object per delivered payload.
//!
//! The scenarios run one at a time: their timeouts are part of what they
//! test, and two cores shared by four of them would blur that.

use std::collections::BTreeSet;
use std::time::Duration;

use terra_sink_dev::demo::kafka::{KafkaFaults, KafkaScenario};
use terra_sink_dev::demo::{self, DemoReport, Scenario};
use terra_sink_dev::deployed::{Deployed, ManagedInstancesEdit};
use terra_sink_dev::fault_proxy::{Fault, FaultSchedule};

use terra_sink_dev::terra_simulator::{Kind, MIX};

const SQS_HANDLER: &str = env!("CARGO_BIN_EXE_sqs-handler");
const KAFKA_HANDLER: &str = env!("CARGO_BIN_EXE_kafka-handler");

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Production-ratio runs divide every duration `template.yaml` deploys (and
/// Terra's URL lifetime) by this: with the defaults, a 30 s URL, a 6 s
/// function timeout and a 51 s visibility timeout.
const TIME_SCALE: u32 = 20;

fn scenario(mix: &[Kind], messages: usize) -> Scenario {
    Scenario::new(SQS_HANDLER)
        .with_messages(mix, messages)
        .with_max_receive_count(5)
        .giving_up_after(Duration::from_secs(240))
}

async fn run(name: &str, scenario: Scenario) -> DemoReport {
    let _turn = ONE_AT_A_TIME.lock().await;
    let report = demo::run(&scenario).await;
    println!("{name}: {}\n{}", report.figures(), report.summary());
    report
}

fn assert_nothing_lost(report: &DemoReport) {
    assert_ends(report, "expired");
}

/// Nothing lost, and every dead letter for `dead_letter_class`.
fn assert_ends(report: &DemoReport, dead_letter_class: &str) {
    let summary = report.summary();
    assert_eq!(report.killed_for_memory, 0, "{summary}");
    assert!(report.lost().is_empty(), "lost messages:\n{summary}");
    assert_eq!(report.duplicates(), 0, "{summary}");
    assert!(
        report.unexpected().is_empty(),
        "unexpected ends:\n{summary}"
    );
    // The archive is written first: a payload a later store refused is
    // archived all the same.
    let archived_but_refused = if dead_letter_class == "sink" {
        report.dead_lettered.len()
    } else {
        0
    };
    assert_eq!(
        report.archived_keys.len(),
        report.acknowledged_payloads() + archived_but_refused,
        "one archived object per delivered payload:\n{summary}"
    );
    for id in &report.dead_lettered {
        assert_eq!(
            report.last_failure.get(id).map(String::as_str),
            Some(dead_letter_class),
            "{id} was dead-lettered for another reason:\n{summary}"
        );
    }
}

/// The `make demo` flow: the usual mix of good, gzip, flaky, outage,
/// rate-limited, large, expired and healthcheck messages, sent by Terra's key
/// into the stack `template.yaml` creates, deployed into moto with IAM
/// enforced, at the stack's own settings scaled down in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_mix_in_the_stack() {
    let demo_mix = Scenario::in_the_stack(SQS_HANDLER, TIME_SCALE).with_messages(&MIX, 24);
    let report = run("demo mix in the stack", demo_mix).await;
    assert_nothing_lost(&report);
    assert!(!report.dead_lettered.is_empty(), "the mix has expired URLs");
    assert!(
        report.projected.len() >= report.acknowledged_payloads(),
        "{}",
        report.summary()
    );
    assert!(
        report.stack_outputs.contains_key("QueueUrl"),
        "{}",
        report.summary()
    );
    assert!(
        report.access_denied.is_empty(),
        "the function's role lacks a permission its code uses:\n{}",
        report.access_denied.join("\n")
    );
    assert_each_payloads_lines_are_gathered(&report);
}

/// Every log line about a record carries its correlation fields, and each
/// record's lines, from its first attempt (each under its own trace id) to
/// its last, are found under its one `payload_reference`, with no other
/// record's.
fn assert_each_payloads_lines_are_gathered(report: &DemoReport) {
    let lines = &report.record_lines;
    assert!(
        lines.uncorrelated.is_empty(),
        "lines about a record without its correlation fields:\n{}",
        lines.uncorrelated.join("\n")
    );
    let mut attempted_again = 0;
    for (id, of_record) in &lines.by_id {
        if of_record.references.is_empty() {
            // A healthcheck, or a message that is not Terra's.
            continue;
        }
        let [reference] = Vec::from_iter(&of_record.references)[..] else {
            panic!("{id}: {of_record:?}");
        };
        let gathered = &lines.by_reference[reference];
        assert_eq!(gathered.ids, BTreeSet::from([id.clone()]), "{gathered:?}");
        assert_eq!(gathered.traces, of_record.traces, "{id}: {gathered:?}");
        attempted_again += usize::from(gathered.traces.len() > 1);
    }
    assert!(
        attempted_again > 0,
        "the mix has records attempted more than once: {:?}",
        lines.by_reference
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_server_faults() {
    let report = run(
        "payload server faults",
        scenario(
            &[
                Kind::Good,
                Kind::Flaky,
                Kind::RateLimited,
                Kind::Outage,
                Kind::LatencySpike,
                Kind::Reset,
                Kind::ShortBody,
                Kind::ExpiresWhileWaiting,
                Kind::Expired,
            ],
            18,
        ),
    )
    .await;
    assert_nothing_lost(&report);
    assert_eq!(report.dead_lettered.len(), 4, "{}", report.summary());
}

/// An older version redelivered after a newer one was written: DynamoDB
/// keeps the newer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_version_wins() {
    let report = run(
        "newest version wins",
        scenario(&[Kind::Outage, Kind::Revision], 20),
    )
    .await;
    assert_nothing_lost(&report);
    assert!(
        !report.stored_revisions.is_empty(),
        "revised records are stored: {}",
        report.summary()
    );
    assert!(
        report.stored_revisions.iter().all(|r| *r == 2),
        "an older version overwrote a newer one: {:?}",
        report.stored_revisions
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_and_dynamodb_faults() {
    let faulty = scenario(&[Kind::Good, Kind::Gzip, Kind::Large, Kind::Good], 16)
        .with_store_faults(FaultSchedule {
            every: 3,
            faults: vec![Fault::Throttle, Fault::Internal, Fault::DropAfterForward],
        });
    let report = run("S3 and DynamoDB faults", faulty).await;
    assert_nothing_lost(&report);
    assert!(report.store_faults_injected >= 3, "{}", report.summary());
    assert!(report.dead_lettered.is_empty(), "{}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_killed_mid_batch() {
    let killed = scenario(&[Kind::Slow, Kind::Good, Kind::Slow, Kind::Large], 20)
        .with_timeouts(Duration::from_secs(6), Duration::from_secs(8))
        .with_kill_at(Duration::from_millis(1500))
        .with_handler_env("TERRA_FETCH_CONCURRENCY", "2");
    let report = run("handler killed mid-batch", killed).await;
    assert_nothing_lost(&report);
    assert_eq!(report.instances_killed, 1);
    assert!(
        report.failed_invocations >= 1,
        "the killed instance's invocation timed out: {}",
        report.summary()
    );
    assert!(report.dead_lettered.is_empty(), "{}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_too_short_for_the_batch() {
    // One second of work per invocation (the last second is kept back for
    // the response): two or three 700 ms downloads out of a batch of ten.
    let short = scenario(&[Kind::Slow], 12)
        .with_timeouts(Duration::from_secs(2), Duration::from_secs(3))
        .with_max_receive_count(12)
        .with_handler_env("TERRA_FETCH_CONCURRENCY", "2");
    let report = run("deadline too short", short).await;
    assert_nothing_lost(&report);
    assert!(report.dead_lettered.is_empty(), "{}", report.summary());
    assert!(
        report.deliveries > report.sent.len(),
        "deferred records come back: {}",
        report.summary()
    );
}

/// `kafka-handler` behind the local Kafka mapping, in both response modes,
/// with transient faults and poison records (quarantined by the function).
async fn kafka_scenario(partial_batch: bool, faults: KafkaFaults) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let killed = faults.kill_after.is_some();
    let store_faults = faults.stores;
    let report = demo::kafka::run(&KafkaScenario {
        handler_binary: KAFKA_HANDLER.into(),
        partial_batch,
        faults,
        time_scale: TIME_SCALE,
    })
    .await;
    println!("{}: {}", report.name, report.figures());
    let output = &report.output;
    if store_faults {
        assert!(report.store_faults_injected > 0, "faults were injected");
    }
    if killed {
        assert!(
            report.failed_invocations > 0,
            "the killed invocation timed out"
        );
    }
    assert_eq!((report.lost, report.duplicates), (0, 0), "{output}");
    assert!(
        report.unexpected.is_empty(),
        "{:?}\n{output}",
        report.unexpected
    );
    assert_eq!(
        report.discarded_by_the_mapping, 0,
        "the function handled its poison itself"
    );
    assert_eq!(report.set_aside, report.expired_sent);
    let denied = terra_sink_dev::logs::refused_by_iam(output);
    assert!(
        denied.is_empty(),
        "the function's role lacks a permission its code uses:\n{}",
        denied.join("\n")
    );
}

/// `kafka-handler` in the stack `template.yaml` creates for self-managed
/// Kafka, IAM enforced, at the template's ratios: with partial batch
/// responses, and with the template's default whole-batch retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_in_the_stack() {
    for partial_batch in [true, false] {
        let faults = KafkaFaults {
            in_the_stack: true,
            ..KafkaFaults::default()
        };
        kafka_scenario(partial_batch, faults).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_with_partial_batch_responses() {
    kafka_scenario(true, KafkaFaults::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_with_store_faults_and_a_killed_handler() {
    let faults = KafkaFaults {
        stores: true,
        kill_after: Some(Duration::from_millis(800)),
        ..KafkaFaults::default()
    };
    kafka_scenario(true, faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_with_whole_batch_retries() {
    kafka_scenario(false, KafkaFaults::default()).await;
}

// --- At the deployed template's own ratios ---------------------------------
//
// Every duration below comes from `template.yaml` (and Terra's 600 s URL
// lifetime), divided by TIME_SCALE; batch size, maxReceiveCount and the
// function's environment are the template's too.

fn at_production_ratios(mix: &[Kind], messages: usize) -> Scenario {
    Scenario::at_production_ratios(SQS_HANDLER, TIME_SCALE)
        .with_messages(mix, messages)
        .giving_up_after(Duration::from_secs(300))
}

fn assert_all_delivered(report: &DemoReport) {
    assert_nothing_lost(report);
    assert!(
        report.dead_lettered.is_empty(),
        "every message could be delivered:\n{}",
        report.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_payload_host_outage_of_5s() {
    let outage = at_production_ratios(&[Kind::Good], 20)
        .with_host_outage(Duration::ZERO, Duration::from_secs(5));
    let report = run("production ratios, payload host down 5 s", outage).await;
    assert_all_delivered(&report);
}

/// Longer than one invocation: the messages must come back, while their
/// URLs live, more than once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_payload_host_outage_longer_than_an_invocation() {
    let outage = at_production_ratios(&[Kind::Good], 20)
        .with_host_outage(Duration::ZERO, Duration::from_secs(20));
    let report = run("production ratios, payload host down 20 s", outage).await;
    assert_all_delivered(&report);
    assert!(
        report.deliveries >= 2 * report.sent.len(),
        "the outage outlasts an invocation: {}",
        report.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_s3_outage_of_10s() {
    let outage = at_production_ratios(&[Kind::Good, Kind::Gzip, Kind::Large], 20)
        .with_s3_outage(Duration::ZERO, Duration::from_secs(10));
    let report = run("production ratios, S3 down 10 s", outage).await;
    assert_all_delivered(&report);
    assert!(report.store_faults_injected > 0, "{}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_a_batch_too_long_for_its_deadline() {
    let report = run(
        "production ratios, first answers slower than an invocation",
        at_production_ratios(&[Kind::SlowFirst, Kind::Good], 20),
    )
    .await;
    assert_all_delivered(&report);
    assert!(
        report.deliveries > report.sent.len(),
        "deferred records come back: {}",
        report.summary()
    );
}

/// The killed invocation's messages come back soon after its deadline, not
/// after the queue's visibility timeout (51 s here, past the 30 s URLs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_a_handler_killed_mid_batch() {
    // Every first answer is slower than an invocation, so the kill lands
    // before anything is archived: only a quick return can save the batch.
    let killed =
        at_production_ratios(&[Kind::SlowFirst], 20).with_kill_at(Duration::from_millis(1500));
    let report = run("production ratios, handler killed mid-batch", killed).await;
    assert_all_delivered(&report);
    assert_eq!(report.instances_killed, 1);
    assert!(
        report.failed_invocations >= 1,
        "the killed instance's invocation timed out: {}",
        report.summary()
    );
}

/// On Lambda Managed Instances, as docs/deploy.md's edit deploys them: one
/// execution environment takes the mapping's invocations, several at once,
/// and the kill takes every one of them down together. Each invocation's
/// messages come back by its own hold, and everything is delivered while
/// the URLs live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_on_managed_instances_the_environment_killed_mid_batch() {
    let edit = ManagedInstancesEdit::from_docs();
    let killed = at_production_ratios(&[Kind::SlowFirst, Kind::Good, Kind::Gzip], 60)
        .on_managed_instances(edit)
        .with_kill_at(Duration::from_millis(1500));
    let report = run(
        "production ratios, Managed Instances, environment killed mid-batch",
        killed,
    )
    .await;
    assert_all_delivered(&report);
    assert_eq!(report.instances_killed, 1);
    // More than two: one at a time would show at most two, the killed
    // environment's last invocation (counted until it times out) and its
    // successor's first.
    assert!(
        report.peak_invocations_at_once > 2,
        "one environment took invocations one at a time: {}",
        report.summary()
    );
    assert!(
        report.failed_invocations >= 2,
        "the kill took down every invocation under way, not one: {}",
        report.summary()
    );
}

/// Down for longer than a URL lives: nothing can be fetched, every message
/// ends dead-lettered as `expired`, and the metrics count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_outage_longer_than_the_url_lives() {
    let outage = at_production_ratios(&[Kind::Good], 4)
        .with_host_outage(Duration::ZERO, Duration::from_secs(120))
        .expecting_nothing_delivered();
    let report = run(
        "production ratios, payload host down past URL expiry",
        outage,
    )
    .await;
    assert_nothing_lost(&report);
    assert_eq!(report.dead_lettered.len(), 4, "{}", report.summary());
    assert!(
        report.expired_in_metrics >= 4,
        "RecordsFailedExpired counted {}",
        report.expired_in_metrics
    );
}

/// Terra's own-bucket mode, S3 down 10 s from the first send: the role's
/// reads of the source bucket fail, and so do the URLs into it (the same
/// S3) and the archive. Every message comes back while its URL lives and
/// lands once S3 is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_own_bucket_through_an_s3_outage() {
    let outage = at_production_ratios(&[Kind::Good], 20)
        .in_own_bucket_mode()
        .with_s3_outage(Duration::ZERO, Duration::from_secs(10));
    let report = run("production ratios, own bucket, S3 down 10 s", outage).await;
    assert_all_delivered(&report);
    assert!(report.store_faults_injected > 0, "{}", report.summary());
    assert!(
        report.deliveries > report.sent.len(),
        "the outage outlasts the first receipts: {}",
        report.summary()
    );
}

/// A FIFO queue: SQS delivers nothing more from a message group while one
/// of its messages is in flight, so a failure must not hold its group past
/// the URLs behind it. At the head of a group: a body that is not Terra's
/// (`invalid`, for good), a payload host that recovers only after a whole
/// invocation (transient), and a URL already dead when it is received
/// (`expired`). Every good message behind them is delivered; the two that
/// can never be are dead-lettered, in their remaining receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_fifo_groups_move_past_their_failures() {
    let fifo = at_production_ratios(&[], 0).with_fifo_groups(vec![
        vec![Kind::NotTerra, Kind::Good, Kind::Good],
        vec![Kind::DownAtFirst, Kind::Good, Kind::Good],
        vec![Kind::ExpiresWhileWaiting, Kind::Good, Kind::Good],
        vec![Kind::Good, Kind::Good],
    ]);
    let report = run("production ratios, FIFO groups", fifo).await;
    let summary = report.summary();
    assert!(report.lost().is_empty(), "lost messages:\n{summary}");
    assert!(
        report.unexpected().is_empty(),
        "unexpected ends:\n{summary}"
    );
    assert_eq!(report.duplicates(), 0, "{summary}");
    let dead_letter_classes: Vec<&str> = report
        .dead_lettered
        .iter()
        .filter_map(|id| report.last_failure.get(id).map(String::as_str))
        .collect();
    assert_eq!(
        BTreeSet::from_iter(dead_letter_classes),
        BTreeSet::from(["expired", "invalid"]),
        "{summary}"
    );
    assert_eq!(report.dead_lettered.len(), 2, "{summary}");
    // The recovering host's message did fail first, holding its group.
    let held_up: Vec<&str> = report
        .sent
        .iter()
        .filter(|m| m.kind == Kind::DownAtFirst)
        .filter_map(|m| report.last_failure.get(&m.message_id).map(String::as_str))
        .collect();
    assert_eq!(held_up, ["fetch"], "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_kafka_payload_host_outage_longer_than_an_invocation() {
    let deployed = Deployed::from_template();
    let faults = KafkaFaults {
        host_outage: Some(Duration::from_secs(20)),
        production_ratios: true,
        ..KafkaFaults::default()
    };
    kafka_scenario(deployed.kafka_partial_batch, faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_kafka_handler_killed_and_s3_faults() {
    let deployed = Deployed::from_template();
    let faults = KafkaFaults {
        stores: true,
        kill_after: Some(Duration::from_millis(1500)),
        production_ratios: true,
        ..KafkaFaults::default()
    };
    kafka_scenario(deployed.kafka_partial_batch, faults).await;
}

/// Memory whatever arrives: at the template's memory size and concurrency,
/// payloads at `TERRA_MAX_PAYLOAD_BYTES` (most of a batch, more than the
/// function's memory holds at once), a payload of a million records, and
/// ordinary ones. The harness kills a handler whose memory passes the
/// function's, as Lambda does; none may be killed, and nothing lost. Runs the
/// Lambda artifact: a debug build neither uses memory nor keeps time as the
/// deployed one does.
const MEMORY_MIX: [Kind; 12] = [
    Kind::MaxSize,
    Kind::MaxSize,
    Kind::MaxSize,
    Kind::MaxSize,
    Kind::MaxSize,
    Kind::Good,
    Kind::MaxSize,
    Kind::MaxSize,
    Kind::MaxSize,
    Kind::MaxSize,
    Kind::MillionTinyRecords,
    Kind::Large,
];

/// `rounds` passes of [`MEMORY_MIX`]; one already brings a batch of nine
/// payloads at the limit (576 MiB) to one instance of 512 MB.
fn memory_scenario(rounds: usize) -> Scenario {
    let artifact = std::env::var("SQS_HANDLER_ARTIFACT").expect(
        "SQS_HANDLER_ARTIFACT: the release bootstrap `cargo lambda build --release` makes \
         (make test sets it)",
    );
    at_production_ratios(&MEMORY_MIX, rounds * MEMORY_MIX.len()).with_handler_binary(artifact)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_memory_holds_whatever_arrives_in_the_archive() {
    let archive_only = memory_scenario(2).with_handler_env("TERRA_DYNAMODB_TABLE", "");
    let report = run("production ratios, memory, S3 archive only", archive_only).await;
    assert_all_delivered(&report);
    assert!(report.projected.is_empty(), "no table configured");
}

/// With DynamoDB the million-record payload is over
/// `TERRA_DYNAMODB_MAX_ITEMS`: archived, refused by the table before any
/// write, and dead-lettered as `sink`.
///
/// One round, not two: a payload at the limit is 64 items, which take moto
/// 2.5 to 5 s, against a function timeout of 6 s at this time scale (DynamoDB
/// takes a fraction of a second; moto's speed does not scale with the
/// clock). Two rounds are more than two cores can put through moto before
/// the URLs die, and records ran out of receives deferred at the deadline:
/// moto's limit, not the function's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_memory_holds_whatever_arrives_with_dynamodb() {
    let with_table = memory_scenario(1)
        .expecting_undeliverable(&[Kind::MillionTinyRecords])
        .giving_up_after(Duration::from_secs(480));
    let report = run("production ratios, memory, S3 and DynamoDB", with_table).await;
    assert_ends(&report, "sink");
    assert_eq!(report.dead_lettered.len(), 1, "{}", report.summary());
    assert!(
        report.projected.len() >= 9 * 64,
        "the max-size payloads' records are items: {}",
        report.summary()
    );
}
