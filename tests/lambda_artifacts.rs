//! The Lambda artifacts as users build and deploy them, not the test build:
//! the x86_64 `bootstrap` from `cargo lambda build --release`, and the arm64
//! (Graviton) `bootstrap`s of both handlers from `sam build` at the
//! template's default architecture. The arm64 ones run under a user-mode
//! emulator through the Runtime API, against moto.
//!
//! `make test` builds them and sets `SQS_HANDLER_ARTIFACT`,
//! `SQS_HANDLER_ARM64_ARTIFACT`, `KAFKA_HANDLER_ARM64_ARTIFACT` and
//! `ARM64_EMULATOR`.

mod support;

use std::time::Duration;

use serde_json::json;
use support::bed::{Bed, KafkaRecord, KafkaSource, base64, kafka_event, pointer};
use support::payload_server::Behaviour;
use support::runtime_api::{Executable, HandlerProcess, InvocationResult, lambda_environment};
use support::{fixture, now_ms};
use terra_sink_dev::artifact::{AL2023_GLIBC, Artifact, Machine};

fn variable(name: &str, what: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name}: {what} (`make test` sets it)"))
}

fn sqs_arm64() -> String {
    variable(
        "SQS_HANDLER_ARM64_ARTIFACT",
        "the arm64 sqs-handler bootstrap `sam build` makes",
    )
}

fn kafka_arm64() -> String {
    variable(
        "KAFKA_HANDLER_ARM64_ARTIFACT",
        "the arm64 kafka-handler bootstrap `sam build` makes",
    )
}

fn emulator() -> String {
    variable(
        "ARM64_EMULATOR",
        "a user-mode emulator for aarch64, e.g. qemu-aarch64-static",
    )
}

fn assert_runs_on_lambda(path: &str, machine: Machine) {
    let artifact = Artifact::read(path);
    assert_eq!(artifact.machine, machine, "{path}");
    let newest = artifact
        .newest_glibc()
        .unwrap_or_else(|| panic!("{path}: no glibc version needs: not a glibc binary?"));
    assert!(
        newest <= AL2023_GLIBC,
        "{path} needs {newest}, but provided.al2023 has {AL2023_GLIBC}: it would not start on Lambda"
    );
}

#[test]
fn every_artifact_is_built_for_its_architecture_and_lambdas_glibc() {
    assert_runs_on_lambda(
        &variable(
            "SQS_HANDLER_ARTIFACT",
            "the x86_64 sqs-handler bootstrap `cargo lambda build --release` makes",
        ),
        Machine::X86_64,
    );
    assert_runs_on_lambda(&sqs_arm64(), Machine::Aarch64);
    assert_runs_on_lambda(&kafka_arm64(), Machine::Aarch64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_arm64_sqs_handler_writes_the_mixed_batch() {
    support::mixed_batch::run(&Executable::emulated(&emulator(), &sqs_arm64())).await;
}

#[test]
fn the_arm64_handlers_refuse_a_bad_configuration_at_cold_start() {
    // No sink configured: the handler stops before it asks the Runtime API
    // for anything, so none is needed at this address.
    let env = lambda_environment("127.0.0.1:9".parse().expect("an address"));
    for artifact in [sqs_arm64(), kafka_arm64()] {
        let mut handler =
            HandlerProcess::start(&Executable::emulated(&emulator(), &artifact), &env);
        let status = handler
            .wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{artifact} did not exit:\n{}", handler.output()));
        assert!(!status.success(), "{artifact}");
        let output = handler.output();
        assert!(
            output.contains("TERRA_S3_BUCKET"),
            "{artifact}: the error names the variable:\n{output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_arm64_kafka_handler_writes_good_records_and_reports_the_rest() {
    let bed = Bed::start("terra-arm64-kafka").await;
    bed.moto.create_table("terra-arm64-kafka").await;
    let activity = fixture("openapi_activity.json");
    let url = bed
        .payloads
        .route("/p/activity.json", Behaviour::Ok(activity.clone()));
    let busy = bed.payloads.route("/p/busy.json", Behaviour::Status(503));
    let record = |offset: i64, value: String| KafkaRecord {
        topic: "terra-events".into(),
        partition: 0,
        offset,
        value,
        timestamp_ms: now_ms(),
    };
    let event = kafka_event(
        KafkaSource::Msk,
        &[
            record(1, base64(&pointer(&url))),
            record(2, base64(&pointer(&busy))),
        ],
    );
    let env = bed.env(&[
        ("TERRA_DYNAMODB_TABLE", "terra-arm64-kafka"),
        ("TERRA_KAFKA_PARTIAL_BATCH", "true"),
        ("TERRA_FETCH_MAX_ATTEMPTS", "2"),
    ]);
    let handler = HandlerProcess::start(&Executable::emulated(&emulator(), &kafka_arm64()), &env);

    let result = bed.runtime.invoke(&event, Duration::from_secs(60)).await;
    assert_eq!(
        result,
        InvocationResult::Response(json!({"batchItemFailures": [
            {"itemIdentifier": {"partition": "terra-events-0", "offset": 2}},
        ]})),
        "output:\n{}",
        handler.output()
    );
    let objects = bed.moto.objects(&bed.bucket).await;
    assert_eq!(
        objects.iter().map(|o| &o.body).collect::<Vec<_>>(),
        [&activity]
    );
    let items = bed.moto.items("terra-arm64-kafka").await;
    assert!(
        items.keys().any(|(_, sk)| sk.starts_with("ACTIVITY#")),
        "{:?}",
        items.keys()
    );
}
