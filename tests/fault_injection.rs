//! Faults injected into the whole flow: the compiled `sqs-handler` behind the
//! local SQS mapping, against moto, fed by the Terra simulator. After the
//! queue drains, every scenario must show: every message archived or
//! dead-lettered (0 lost), none both (0 duplicates), each ending as its kind
//! predicts, and exactly one archived object per delivered payload.
//!
//! The scenarios run one at a time: their timeouts are part of what they
//! test, and two cores shared by four of them would blur that.

use std::time::Duration;

use terra_sink_dev::demo::{self, DemoReport, Scenario};
use terra_sink_dev::deployed::Deployed;
use terra_sink_dev::fault_proxy::{Fault, FaultProxy, FaultSchedule};
use terra_sink_dev::local_stack::LocalStack;
use terra_sink_dev::terra_simulator::Kind;

const SQS_HANDLER: &str = env!("CARGO_BIN_EXE_sqs-handler");

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Production-ratio runs divide every duration `template.yaml` deploys (and
/// Terra's URL lifetime) by this: with the defaults, a 30 s URL, a 6 s
/// function timeout and a 51 s visibility timeout.
const TIME_SCALE: u32 = 20;

fn scenario(mix: &[Kind], messages: usize) -> Scenario {
    let mut scenario = Scenario::new(SQS_HANDLER);
    scenario.mix = mix.to_vec();
    scenario.messages = messages;
    scenario.max_receive_count = 5;
    scenario.give_up = Duration::from_secs(240);
    scenario
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
    let mut demo_mix = Scenario::in_the_stack(SQS_HANDLER, TIME_SCALE);
    demo_mix.messages = 24;
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
    let mut faulty = scenario(&[Kind::Good, Kind::Gzip, Kind::Large, Kind::Good], 16);
    faulty.store_faults = Some(FaultSchedule {
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
    let mut killed = scenario(&[Kind::Slow, Kind::Good, Kind::Slow, Kind::Large], 20);
    killed.function_timeout = Duration::from_secs(6);
    killed.visibility_timeout = Duration::from_secs(8);
    killed.kill_an_instance_after = Some(Duration::from_millis(1500));
    killed.handler_env = vec![("TERRA_FETCH_CONCURRENCY".into(), "2".into())];
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
    let mut short = scenario(&[Kind::Slow], 12);
    // One second of work per invocation (the last second is kept back for
    // the response): two or three 700 ms downloads out of a batch of ten.
    short.function_timeout = Duration::from_secs(2);
    short.visibility_timeout = Duration::from_secs(3);
    short.max_receive_count = 12;
    short.handler_env = vec![("TERRA_FETCH_CONCURRENCY".into(), "2".into())];
    let report = run("deadline too short", short).await;
    assert_nothing_lost(&report);
    assert!(report.dead_lettered.is_empty(), "{}", report.summary());
    assert!(
        report.deliveries > report.sent.len(),
        "deferred records come back: {}",
        report.summary()
    );
}

/// Faults for a Kafka scenario besides the payload server's.
#[derive(Default)]
struct KafkaFaults {
    /// S3 and SQS (dead letters) traffic through the fault proxy.
    stores: bool,
    /// Kill the handler this long after the start, and start a new one.
    kill_after: Option<Duration>,
    /// The payload host answers 500 to everything for this long from the
    /// start.
    host_outage: Option<Duration>,
    /// The template's deployment, durations scaled down by [`TIME_SCALE`]:
    /// its function timeout, Kafka batch size and retry limit, its function
    /// environment, and a URL lifetime scaled the same way.
    production_ratios: bool,
    /// Also in the stack `template.yaml` creates for self-managed Kafka,
    /// deployed into moto with IAM enforced: the function's environment and
    /// role, its bucket, table and dead-letter queue, and the mapping's
    /// settings as the template would create it (moto cannot).
    in_the_stack: bool,
}

/// `kafka-handler` behind the local Kafka mapping, in both response modes,
/// with transient faults and poison records (dead-lettered by the function).
async fn kafka_scenario(report_batch_item_failures: bool, faults: KafkaFaults) {
    use std::collections::BTreeSet;
    use terra_sink_dev::events;
    use terra_sink_dev::kafka_mapping::{self, KafkaMappingSettings, TopicRecord};
    use terra_sink_dev::moto::Moto;
    use terra_sink_dev::runtime_api::{HandlerPool, RuntimeApi};
    use terra_sink_dev::terra_simulator::TerraSimulator;

    let _turn = ONE_AT_A_TIME.lock().await;
    let mut moto = Moto::start().await;
    let stack = if faults.in_the_stack {
        let partial_batch = report_batch_item_failures.to_string();
        let parameters = [
            ("KafkaSource", "self-managed"),
            ("KafkaBootstrapServers", "b-1.kafka.internal:9096"),
            (
                "KafkaSecretArn",
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:terra-kafka-AbCdEf",
            ),
            ("KafkaPartialBatch", partial_batch.as_str()),
        ];
        Some(LocalStack::deploy_for(&mut moto, "KafkaHandlerFunction", &parameters).await)
    } else {
        None
    };
    let (bucket, dlq) = match &stack {
        Some(stack) => (
            stack
                .variable("TERRA_S3_BUCKET")
                .expect("a bucket")
                .to_owned(),
            stack
                .variable("TERRA_DEAD_LETTER_QUEUE_URL")
                .expect("a dead-letter queue")
                .to_owned(),
        ),
        None => {
            moto.create_bucket(demo::BUCKET).await;
            (
                demo::BUCKET.to_owned(),
                moto.create_queue("terra-kafka-dlq").await,
            )
        }
    };
    let mut terra = TerraSimulator::start().await;
    let deployed = Deployed::from_template().scaled_down(TIME_SCALE);
    if faults.production_ratios || faults.in_the_stack {
        terra.url_lifetime = deployed.url_lifetime;
    }
    if let Some(lasting) = faults.host_outage {
        terra.payloads.outage(tokio::time::Instant::now(), lasting);
    }
    let runtime = RuntimeApi::start().await;
    let mix = [
        Kind::Good,
        Kind::Outage,
        Kind::Expired,
        Kind::Flaky,
        Kind::Reset,
        Kind::Large,
        Kind::ShortBody,
        Kind::Good,
    ];
    let now = terra_sink_dev::now_ms();
    let mut records = Vec::new();
    let mut kinds = Vec::new();
    for n in 0..24 {
        let kind = mix[n % mix.len()];
        let (pointer, _) = terra.message(n, kind);
        records.push(TopicRecord {
            partition: (n % 3) as i64,
            offset: 100 + (n / 3) as i64,
            value: events::base64(&pointer),
            timestamp_ms: now,
        });
        kinds.push((n, kind));
    }
    let proxy = if faults.stores {
        Some(
            FaultProxy::start(
                &moto.endpoint,
                FaultSchedule {
                    every: 4,
                    faults: vec![Fault::Throttle, Fault::DropAfterForward, Fault::Internal],
                },
            )
            .await,
        )
    } else {
        None
    };
    let endpoint = proxy
        .as_ref()
        .map_or(moto.endpoint.as_str(), |p| p.endpoint.as_str());
    let env = if let Some(stack) = &stack {
        stack.handler_environment(runtime.addr, endpoint)
    } else {
        let mut env = if faults.production_ratios {
            let mut env = demo::archive_function_env(runtime.addr, endpoint);
            env.extend(deployed.loopback_environment());
            env
        } else {
            demo::local_function_env(runtime.addr, endpoint)
        };
        env.push(("TERRA_DEAD_LETTER_QUEUE_URL".into(), dlq.clone()));
        env.push((
            "TERRA_KAFKA_PARTIAL_BATCH".into(),
            report_batch_item_failures.to_string(),
        ));
        env
    };
    let handlers = HandlerPool::spawn(env!("CARGO_BIN_EXE_kafka-handler"), &env, 1);
    let chaos = async {
        if let Some(after) = faults.kill_after {
            tokio::time::sleep(after).await;
            handlers.kill_and_replace_one();
        }
    };
    let settings = if let Some(stack) = &stack {
        let mapping = stack.kafka_mapping.clone().expect("the Kafka mapping");
        assert_eq!(
            mapping.report_batch_item_failures, report_batch_item_failures,
            "the stack wires KafkaPartialBatch to the mapping"
        );
        KafkaMappingSettings {
            topic: mapping.topic,
            batch_size: mapping.batch_size,
            function_timeout: stack.function.timeout / TIME_SCALE,
            report_batch_item_failures: mapping.report_batch_item_failures,
            max_retry_attempts: mapping.maximum_retry_attempts.unwrap_or(u32::MAX),
        }
    } else if faults.production_ratios {
        KafkaMappingSettings {
            topic: "terra-events".into(),
            batch_size: deployed.kafka_batch_size,
            function_timeout: deployed.function_timeout,
            report_batch_item_failures,
            // Without partial batch responses the mapping retries until the
            // record leaves the topic.
            max_retry_attempts: if report_batch_item_failures {
                deployed.kafka_maximum_retry_attempts
            } else {
                u32::MAX
            },
        }
    } else {
        KafkaMappingSettings {
            topic: "terra-events".into(),
            batch_size: 4,
            function_timeout: Duration::from_secs(5),
            report_batch_item_failures,
            max_retry_attempts: 10,
        }
    };
    let (stats, ()) = tokio::join!(
        kafka_mapping::run(&runtime, &records, &settings, Duration::from_secs(240)),
        chaos
    );

    let archived: BTreeSet<String> = moto
        .objects(&bucket)
        .await
        .into_iter()
        .map(|o| o.key)
        .collect();
    let mut dead_lettered: BTreeSet<(i64, i64)> = stats.discarded.clone();
    for letter in moto.drain(&dlq).await {
        let body: serde_json::Value =
            serde_json::from_str(letter.body().expect("body")).expect("JSON letter");
        dead_lettered.insert((
            body["partition"].as_i64().expect("partition"),
            body["offset"].as_i64().expect("offset"),
        ));
    }
    let (mut lost, mut duplicates, mut unexpected) = (0, 0, Vec::new());
    for ((n, kind), record) in kinds.iter().zip(&records) {
        let is_archived = archived
            .iter()
            .any(|key| key.ends_with(&format!("/sim-{n:04}-{}.json", kind.as_str())));
        let is_dead = dead_lettered.contains(&(record.partition, record.offset));
        // A deliverable record that was dead-lettered is lost all the same.
        lost += usize::from(!is_archived && (kind.deliverable() || !is_dead));
        duplicates += usize::from(is_archived && is_dead);
        if is_archived != kind.deliverable() {
            unexpected.push(format!("{n} ({})", kind.as_str()));
        }
    }
    let name = format!(
        "kafka, {} batch{}{}{}{}{}",
        if report_batch_item_failures {
            "partial"
        } else {
            "whole"
        },
        if faults.stores { ", S3/SQS faults" } else { "" },
        if faults.kill_after.is_some() {
            ", handler killed"
        } else {
            ""
        },
        if faults.host_outage.is_some() {
            ", payload host outage"
        } else {
            ""
        },
        if faults.production_ratios {
            ", production ratios"
        } else {
            ""
        },
        if faults.in_the_stack {
            ", in the stack"
        } else {
            ""
        },
    );
    println!(
        "{name}: sent {} / delivered {} / dead-lettered {} / lost {lost} / duplicates {duplicates} ({} invocations, {} failed, {} discarded by the mapping)",
        records.len(),
        archived.len(),
        dead_lettered.len(),
        stats.invocations,
        stats.failed_invocations,
        stats.discarded.len()
    );
    let output = handlers.output();
    if let Some(proxy) = &proxy {
        assert!(proxy.injected() > 0, "faults were injected");
    }
    if faults.kill_after.is_some() {
        assert!(
            stats.failed_invocations > 0,
            "the killed invocation timed out"
        );
    }
    assert_eq!((lost, duplicates), (0, 0), "{output}");
    assert!(unexpected.is_empty(), "{unexpected:?}\n{output}");
    assert!(
        stats.discarded.is_empty(),
        "the function handled its poison itself"
    );
    let expired = kinds.iter().filter(|(_, k)| *k == Kind::Expired).count();
    assert_eq!(dead_lettered.len(), expired);
    let denied = terra_sink_dev::logs::refused_by_iam(&output);
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
    let mut scenario = Scenario::at_production_ratios(SQS_HANDLER, TIME_SCALE);
    scenario.mix = mix.to_vec();
    scenario.messages = messages;
    scenario.give_up = Duration::from_secs(300);
    scenario
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
    let mut outage = at_production_ratios(&[Kind::Good], 20);
    outage.host_outage = Some((Duration::ZERO, Duration::from_secs(5)));
    let report = run("production ratios, payload host down 5 s", outage).await;
    assert_all_delivered(&report);
}

/// Longer than one invocation: the messages must come back, while their
/// URLs live, more than once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_payload_host_outage_longer_than_an_invocation() {
    let mut outage = at_production_ratios(&[Kind::Good], 20);
    outage.host_outage = Some((Duration::ZERO, Duration::from_secs(20)));
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
    let mut outage = at_production_ratios(&[Kind::Good, Kind::Gzip, Kind::Large], 20);
    outage.s3_outage = Some((Duration::ZERO, Duration::from_secs(10)));
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
    let mut killed = at_production_ratios(&[Kind::SlowFirst], 20);
    killed.kill_an_instance_after = Some(Duration::from_millis(1500));
    let report = run("production ratios, handler killed mid-batch", killed).await;
    assert_all_delivered(&report);
    assert_eq!(report.instances_killed, 1);
    assert!(
        report.failed_invocations >= 1,
        "the killed instance's invocation timed out: {}",
        report.summary()
    );
}

/// Down for longer than a URL lives: nothing can be fetched, every message
/// ends dead-lettered as `expired`, and the metrics count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_outage_longer_than_the_url_lives() {
    let mut outage = at_production_ratios(&[Kind::Good], 4);
    outage.host_outage = Some((Duration::ZERO, Duration::from_secs(120)));
    outage.undeliverable = true;
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

fn memory_scenario() -> Scenario {
    let artifact = std::env::var("SQS_HANDLER_ARTIFACT").expect(
        "SQS_HANDLER_ARTIFACT: the release bootstrap `cargo lambda build --release` makes \
         (make test sets it)",
    );
    let mut scenario = at_production_ratios(&MEMORY_MIX, 2 * MEMORY_MIX.len());
    scenario.handler_binary = artifact;
    scenario
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_memory_holds_whatever_arrives_in_the_archive() {
    let mut archive_only = memory_scenario();
    archive_only
        .handler_env
        .push(("TERRA_DYNAMODB_TABLE".into(), String::new()));
    let report = run("production ratios, memory, S3 archive only", archive_only).await;
    assert_all_delivered(&report);
    assert!(report.projected.is_empty(), "no table configured");
}

/// With DynamoDB the million-record payload is over
/// `TERRA_DYNAMODB_MAX_ITEMS`: archived, refused by the table before any
/// write, and dead-lettered as `sink`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_ratios_memory_holds_whatever_arrives_with_dynamodb() {
    let mut with_table = memory_scenario();
    with_table.undeliverable_kinds = vec![Kind::MillionTinyRecords];
    with_table.give_up = Duration::from_secs(480);
    let report = run("production ratios, memory, S3 and DynamoDB", with_table).await;
    assert_ends(&report, "sink");
    assert_eq!(report.dead_lettered.len(), 2, "{}", report.summary());
    assert!(
        report.projected.len() >= 18 * 64,
        "the max-size payloads' records are items: {}",
        report.summary()
    );
}
