//! The usual test bed for the SQS handler: moto with a bucket, a payload
//! server and a Runtime API emulator, and helpers for SQS events.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use std::time::Duration;

use crate::moto::Moto;
use crate::payload_server::PayloadServer;
use crate::runtime_api::{HandlerProcess, InvocationResult, RuntimeApi, lambda_environment};
pub use crate::sqs_mapping::sqs_record;

pub use crate::payload_server::{SECRETS, assert_no_secrets};

pub use crate::events::{KafkaRecord, KafkaSource, base64, kafka_event, pointer};

pub fn failed_ids(result: &InvocationResult) -> BTreeSet<String> {
    let InvocationResult::Response(response) = result else {
        panic!("the batch must succeed as a whole, got {result:?}");
    };
    response["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("no batchItemFailures in {response}"))
        .iter()
        .map(|f| {
            let id = f["itemIdentifier"].as_str().expect("string identifier");
            assert!(!id.is_empty(), "empty identifier in {response}");
            id.to_owned()
        })
        .collect()
}

pub struct Bed {
    pub moto: Moto,
    pub payloads: PayloadServer,
    pub runtime: RuntimeApi,
    pub bucket: String,
}

impl Bed {
    pub async fn start(bucket: &str) -> Bed {
        let moto = Moto::start().await;
        moto.create_bucket(bucket).await;
        Bed {
            moto,
            payloads: PayloadServer::start().await,
            runtime: RuntimeApi::start().await,
            bucket: bucket.to_owned(),
        }
    }

    pub fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = lambda_environment(self.runtime.addr);
        env.extend(
            [
                ("AWS_ENDPOINT_URL", self.moto.endpoint.as_str()),
                ("TERRA_S3_BUCKET", self.bucket.as_str()),
                ("TERRA_ALLOW_INSECURE_URLS", "true"),
                ("TERRA_ALLOWED_URL_HOSTS", "127.0.0.1"),
                ("TERRA_FETCH_TIMEOUT_SECS", "2"),
            ]
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        env
    }

    /// An operator's command (`program`, the `terra-sink` tool) as run from
    /// a workstation against this bed: the handlers' variables for its
    /// bucket and `table`, test credentials, nothing else from the test's
    /// environment; output captured.
    pub fn operator_command(&self, program: &str, table: &str) -> std::process::Command {
        let mut command = std::process::Command::new(program);
        command
            .env_clear()
            .envs([
                ("AWS_ENDPOINT_URL", self.moto.endpoint.as_str()),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
                ("TERRA_S3_BUCKET", self.bucket.as_str()),
                ("TERRA_DYNAMODB_TABLE", table),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    }

    /// Starts `handler` (a compiled handler's path) with the bed's
    /// environment and `extra`, invokes it once with `records` as an SQS
    /// event, and asserts every record was written or acknowledged. The
    /// handler stays up for more invocations.
    pub async fn run_to_success(
        &self,
        handler: &str,
        extra: &[(&str, &str)],
        records: Vec<Value>,
        timeout: Duration,
    ) -> HandlerProcess {
        let handler = HandlerProcess::spawn(handler, &self.env(extra));
        let result = self
            .runtime
            .invoke(&json!({ "Records": records }), timeout)
            .await;
        assert_all_succeeded(&result, &handler);
        handler
    }
}

/// Every record of the batch was written or acknowledged.
pub fn assert_all_succeeded(result: &InvocationResult, handler: &HandlerProcess) {
    assert_eq!(
        failed_ids(result),
        BTreeSet::new(),
        "output:\n{}",
        handler.output()
    );
}

/// An activity whose record is `samples` heart-rate samples; `noisy` makes
/// them incompressible.
pub fn big_activity(summary_id: &str, samples: usize, noisy: bool) -> Value {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let hr_samples: Vec<Value> = (0..samples)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if noisy {
                json!({"timestamp": format!("2026-07-01T07:{:02}:{:02}.{:06}+01:00", (i / 60) % 60, i % 60, state % 1_000_000), "bpm": (state % 100_000) as f64 / 997.0})
            } else {
                json!({"timestamp": format!("2026-07-01T07:{:02}:{:02}.000000+01:00", (i / 60) % 60, i % 60), "bpm": 120 + i % 40})
            }
        })
        .collect();
    json!({
        "type": "activity",
        "version": "2022-03-16",
        "user": {"user_id": "40f7b0e1-89e2-43ac-a5b8-1e29c8d47cad", "provider": "GARMIN", "reference_id": "your-user-123"},
        "data": [{
            "metadata": {"summary_id": summary_id, "start_time": "2026-07-01T07:00:00.000000+01:00", "end_time": "2026-07-01T09:00:00.000000+01:00", "type": 8},
            "heart_rate_data": {"detailed": {"hr_samples": hr_samples}}
        }]
    })
}
