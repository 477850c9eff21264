//! The stack `template.yaml` creates (or `kafka/template.yaml`, for the Kafka
//! function), deployed into a moto server by `dev/local_stack.py` and read
//! back through the services' own APIs: the function's configuration and
//! role, its event source mapping, the queue's attributes, and credentials
//! Terra would send with. When [`LocalStack::deploy`]
//! returns, moto enforces IAM: every later call is checked against its
//! caller's policies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use aws_sdk_s3::config::Credentials;
use serde_json::Value;

use crate::moto::{Moto, dev_script, python};
use crate::runtime_api::{HandlerPool, lambda_environment};

/// The stack as a local run uses it.
#[derive(Debug, Clone)]
pub struct LocalStack {
    pub outputs: BTreeMap<String, String>,
    /// What Terra sends to the SQS stack's queue with: a session of the role
    /// standing in for Terra's principal, which only the queue policy lets
    /// in (or, with `TerraAccess=access-key`, a key of `TerraSenderUser`).
    /// The Kafka stack has none: Terra reaches its brokers, not this account.
    pub terra_sender: Option<Credentials>,
    /// A key allowed everything, for the harness to look on with.
    pub observer: Credentials,
    pub function: StackFunction,
    /// The SQS function's event source mapping and queue.
    pub mapping: Option<StackMapping>,
    pub queue: Option<StackQueue>,
    /// The Kafka function's mapping, as the template would create it (moto
    /// cannot).
    pub kafka_mapping: Option<StackKafkaMapping>,
}

/// The function as Lambda's GetFunctionConfiguration describes it.
#[derive(Debug, Clone)]
pub struct StackFunction {
    pub name: String,
    /// Its execution role's name.
    pub role_name: String,
    pub timeout: Duration,
    pub memory_mb: u64,
    pub log_format: String,
    pub log_level: Option<String>,
    /// The function's environment variables.
    pub environment: Vec<(String, String)>,
    /// Its role's, from STS AssumeRole.
    pub credentials: Credentials,
}

/// The function's SQS event source mapping.
#[derive(Debug, Clone)]
pub struct StackMapping {
    pub batch_size: i32,
    pub batching_window: Duration,
    pub report_batch_item_failures: bool,
    pub maximum_concurrency: Option<usize>,
}

/// The Kafka function's event source mapping.
#[derive(Debug, Clone)]
pub struct StackKafkaMapping {
    pub topic: String,
    pub batch_size: usize,
    pub report_batch_item_failures: bool,
    /// `None`: the mapping retries until the record leaves the topic.
    pub maximum_retry_attempts: Option<u32>,
}

/// The mapped queue.
#[derive(Debug, Clone)]
pub struct StackQueue {
    pub url: String,
    pub visibility_timeout: Duration,
    pub max_receive_count: u32,
    pub dead_letter_queue_url: String,
}

impl LocalStack {
    /// Deploys the template's default stack into `moto`, for the SQS
    /// function, and switches IAM enforcement on; `moto`'s own clients then
    /// call as the observer.
    pub async fn deploy(moto: &mut Moto) -> LocalStack {
        LocalStack::deploy_for(moto, "SqsHandlerFunction", &[]).await
    }

    /// The same for `function`'s template (`KafkaHandlerFunction`:
    /// `kafka/template.yaml`), with `parameters` other than their defaults.
    pub async fn deploy_for(
        moto: &mut Moto,
        function: &str,
        parameters: &[(&str, &str)],
    ) -> LocalStack {
        let mut command = tokio::process::Command::new(python());
        command.arg(dev_script("local_stack.py")).args([
            "--endpoint",
            &moto.endpoint,
            "--function",
            function,
        ]);
        for (name, value) in parameters {
            command.args(["--parameter", &format!("{name}={value}")]);
        }
        let output = command.output().await.expect("run dev/local_stack.py");
        assert!(
            output.status.success(),
            "dev/local_stack.py failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let described: Value =
            serde_json::from_slice(&output.stdout).expect("dev/local_stack.py prints JSON");
        let stack = LocalStack::from_description(&described);
        moto.call_as(stack.observer.clone());
        stack
    }

    fn from_description(described: &Value) -> LocalStack {
        let function = &described["function"];
        LocalStack {
            outputs: strings(&described["outputs"]),
            terra_sender: (!described["terra_sender"].is_null())
                .then(|| credentials(&described["terra_sender"])),
            observer: credentials(&described["observer"]),
            function: StackFunction {
                name: text(&function["name"]),
                role_name: text(&function["role_name"]),
                timeout: Duration::from_secs(number(&function["timeout_secs"])),
                memory_mb: number(&function["memory_mb"]),
                log_format: text(&function["log_format"]),
                log_level: function["log_level"].as_str().map(str::to_owned),
                environment: strings(&function["environment"]).into_iter().collect(),
                credentials: credentials(&function["credentials"]),
            },
            mapping: present(&described["mapping"]).map(|mapping| StackMapping {
                batch_size: number(&mapping["batch_size"]) as i32,
                batching_window: Duration::from_secs(number(
                    &mapping["maximum_batching_window_secs"],
                )),
                report_batch_item_failures: reports_batch_item_failures(mapping),
                maximum_concurrency: mapping["maximum_concurrency"].as_u64().map(|n| n as usize),
            }),
            queue: present(&described["queue"]).map(|queue| StackQueue {
                url: text(&queue["url"]),
                visibility_timeout: Duration::from_secs(number(&queue["visibility_timeout_secs"])),
                max_receive_count: number(&queue["max_receive_count"]) as u32,
                dead_letter_queue_url: text(&queue["dead_letter_queue_url"]),
            }),
            kafka_mapping: present(&described["kafka_mapping"]).map(|mapping| StackKafkaMapping {
                topic: text(&mapping["topic"]),
                batch_size: number(&mapping["batch_size"]) as usize,
                report_batch_item_failures: reports_batch_item_failures(mapping),
                maximum_retry_attempts: mapping["maximum_retry_attempts"]
                    .as_u64()
                    .map(|n| n as u32),
            }),
        }
    }

    /// A variable of the function's environment.
    pub fn variable(&self, name: &str) -> Option<&str> {
        self.function
            .environment
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    /// The handler's process environment as Lambda would set it for this
    /// function: Lambda's own variables from its configuration, its role's
    /// credentials, and the function's environment (whose payload URLs
    /// `dev/local_stack.py` allows on 127.0.0.1 over http, the local
    /// payload server's). AWS endpoints are the local run's: `store_endpoint`.
    pub fn handler_environment(
        &self,
        runtime_api: SocketAddr,
        store_endpoint: &str,
    ) -> Vec<(String, String)> {
        let function = &self.function;
        let credentials = &function.credentials;
        let mut lambda = lambda_environment(runtime_api);
        // Lambda sets no RUST_LOG: the log level is the function's.
        lambda.retain(|(name, _)| name != "RUST_LOG");
        let mut set = vec![
            ("AWS_LAMBDA_FUNCTION_NAME", function.name.clone()),
            (
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                function.memory_mb.to_string(),
            ),
            ("AWS_LAMBDA_LOG_FORMAT", function.log_format.clone()),
            ("AWS_ACCESS_KEY_ID", credentials.access_key_id().to_owned()),
            (
                "AWS_SECRET_ACCESS_KEY",
                credentials.secret_access_key().to_owned(),
            ),
            (
                "AWS_SESSION_TOKEN",
                credentials.session_token().unwrap_or_default().to_owned(),
            ),
            ("AWS_ENDPOINT_URL", store_endpoint.to_owned()),
        ];
        if let Some(level) = &function.log_level {
            set.push(("AWS_LAMBDA_LOG_LEVEL", level.clone()));
        }
        let mut env = lambda;
        let overrides = set
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .chain(function.environment.iter().cloned());
        for (name, value) in overrides {
            env.retain(|(existing, _)| *existing != name);
            env.push((name, value));
        }
        env
    }

    /// Denies the function's role `actions` on every resource, as a policy
    /// attached to it would: for a test of what a missing permission does.
    pub async fn deny_the_function(&self, moto: &Moto, actions: &[&str]) {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Deny", "Action": actions, "Resource": "*"}],
        });
        let script = "import boto3, sys\n\
            boto3.client('iam', endpoint_url=sys.argv[1], region_name='us-east-1')\
            .put_role_policy(RoleName=sys.argv[2], PolicyName='denied-by-a-test', \
            PolicyDocument=sys.argv[3])";
        let output = tokio::process::Command::new(python())
            .args(["-c", script, &moto.endpoint, &self.function.role_name])
            .arg(policy.to_string())
            .env("AWS_ACCESS_KEY_ID", self.observer.access_key_id())
            .env("AWS_SECRET_ACCESS_KEY", self.observer.secret_access_key())
            .output()
            .await
            .expect("run python");
        assert!(
            output.status.success(),
            "deny {actions:?} to {}: {}",
            self.function.role_name,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Sends what `handlers` print from now on to the log group `group`, as
/// Lambda sends a function's output to CloudWatch Logs, for as long as it
/// is polled. Each call writes a log stream of its own.
pub async fn ship_logs(logs: &aws_sdk_cloudwatchlogs::Client, group: &str, handlers: &HandlerPool) {
    let stream = &format!("local-runtime-{}", crate::now_ms());
    logs.create_log_stream()
        .log_group_name(group)
        .log_stream_name(stream)
        .send()
        .await
        .unwrap_or_else(|e| panic!("a log stream in {group}: {e:?}"));
    let mut shipped = handlers.output().len();
    loop {
        let output = handlers.output();
        let new = &output[shipped..];
        let complete = new.rfind('\n').map_or(0, |end| end + 1);
        let events: Vec<InputLogEvent> = new[..complete]
            .lines()
            .filter(|line| !line.trim().is_empty())
            .filter_map(|line| {
                InputLogEvent::builder()
                    .timestamp(i64::try_from(crate::now_ms()).unwrap_or(i64::MAX))
                    .message(line)
                    .build()
                    .ok()
            })
            .collect();
        if !events.is_empty() {
            logs.put_log_events()
                .log_group_name(group)
                .log_stream_name(stream)
                .set_log_events(Some(events))
                .send()
                .await
                .unwrap_or_else(|e| panic!("log events into {group}: {e:?}"));
        }
        shipped += complete;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn present(value: &Value) -> Option<&Value> {
    (!value.is_null()).then_some(value)
}

fn reports_batch_item_failures(mapping: &Value) -> bool {
    mapping["function_response_types"]
        .as_array()
        .expect("response types")
        .iter()
        .any(|t| t.as_str() == Some("ReportBatchItemFailures"))
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not text"))
        .to_owned()
}

fn number(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{value} is not a whole number"))
}

/// A JSON object's values as text (the function's environment holds
/// numbers as CloudFormation passed them).
fn strings(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("{value} is not an object"))
        .iter()
        .map(|(name, value)| {
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (name.clone(), value)
        })
        .collect()
}

fn credentials(value: &Value) -> Credentials {
    Credentials::new(
        text(&value["access_key_id"]),
        text(&value["secret_access_key"]),
        value["session_token"].as_str().map(str::to_owned),
        None,
        "local-stack",
    )
}
