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
use terra_sink_dev::fault_proxy::{Fault, FaultSchedule};
use terra_sink_dev::terra_simulator::Kind;

const SQS_HANDLER: &str = env!("CARGO_BIN_EXE_sqs-handler");

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let summary = report.summary();
    assert!(report.lost().is_empty(), "lost messages:\n{summary}");
    assert_eq!(report.duplicates(), 0, "{summary}");
    assert!(
        report.unexpected().is_empty(),
        "unexpected ends:\n{summary}"
    );
    assert_eq!(
        report.archived_keys.len(),
        report.acknowledged_payloads(),
        "one archived object per delivered payload:\n{summary}"
    );
    for id in &report.dead_lettered {
        assert_eq!(
            report.last_failure.get(id).map(String::as_str),
            Some("expired"),
            "{id} was dead-lettered for another reason:\n{summary}"
        );
    }
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
