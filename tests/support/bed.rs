//! The usual test bed for the SQS handler: moto with a bucket, a payload
//! server and a Runtime API emulator, and helpers for SQS events.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::moto::Moto;
use super::payload_server::PayloadServer;
use super::runtime_api::{HandlerProcess, InvocationResult, RuntimeApi, lambda_environment};

pub fn sqs_record(message_id: &str, body: &str, sent_at_ms: u64) -> Value {
    json!({
        "messageId": message_id,
        "receiptHandle": format!("rh-{message_id}"),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": sent_at_ms.to_string(),
            "SenderId": "AIDAEXAMPLE",
            "ApproximateFirstReceiveTimestamp": sent_at_ms.to_string()
        },
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:terra-events",
        "awsRegion": "us-east-1"
    })
}

pub fn pointer(url: &str) -> String {
    json!({"status": "success", "type": "s3_payload", "url": url, "expires_in": 600}).to_string()
}

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
