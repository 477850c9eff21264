//! The `make demo` flow as a test: the compiled `sqs-handler` behind the
//! local SQS mapping (batches, ReportBatchItemFailures, visibility timeout,
//! redrive) against moto, fed by the Terra simulator with flaky, rate-limited,
//! large and expired payloads. Every message must end archived or
//! dead-lettered, never lost, never both.

use std::time::Duration;

use terra_sink_dev::demo::{self, Scenario};
use terra_sink_dev::terra_simulator::Kind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_ends_archived_or_dead_lettered() {
    let mut scenario = Scenario::new(env!("CARGO_BIN_EXE_sqs-handler"));
    scenario.messages = 24;
    scenario.function_timeout = Duration::from_secs(8);
    scenario.visibility_timeout = Duration::from_secs(9);
    scenario.max_receive_count = 2;
    let report = demo::run(&scenario).await;
    let summary = report.summary();
    println!("{summary}");

    assert!(report.lost().is_empty(), "{summary}");
    assert_eq!(report.duplicates(), 0, "{summary}");
    assert!(report.unexpected().is_empty(), "{summary}");
    let expired = report
        .sent
        .iter()
        .filter(|m| m.kind == Kind::Expired)
        .count();
    assert!(expired > 0, "the mix includes expired URLs");
    assert_eq!(report.dead_lettered.len(), expired, "{summary}");
    for id in &report.dead_lettered {
        assert_eq!(
            report.last_failure.get(id).map(String::as_str),
            Some("expired"),
            "{id}: {summary}"
        );
    }
    assert_eq!(
        report.archived_keys.len(),
        report.acknowledged_payloads(),
        "one archived object per acknowledged payload: {summary}"
    );
    assert!(
        report
            .archived_keys
            .iter()
            .all(|k| k.starts_with(demo::PREFIX)),
        "{summary}"
    );
    assert!(
        report.projected.len() >= report.acknowledged_payloads(),
        "{summary}"
    );
    assert!(
        report.deliveries > report.sent.len(),
        "the outage and expired messages are redelivered: {summary}"
    );
}
