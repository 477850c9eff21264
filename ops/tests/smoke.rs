//! `terra-sink smoke` against the stack `template.yaml` creates, deployed
//! into moto with IAM enforced: the compiled `sqs-handler` behind the
//! stack's queue, through a local SQS mapping, its output shipped to its
//! log group as Lambda ships it. smoke runs with an operator's key and
//! knows only the stack's name.

use std::process::{Output, Stdio};

use serde_json::Value;
use terra_sink_dev::local_stack::{LocalStack, ship_logs};
use terra_sink_dev::moto::Moto;
use terra_sink_dev::runtime_api::{HandlerPool, RuntimeApi};
use terra_sink_dev::sqs_mapping::{MappingSettings, SqsMapping};
use terra_sink_dev::workspace_binary;

const OPERATOR_TOOL: &str = env!("CARGO_BIN_EXE_terra-sink");
/// The name dev/local_stack.py deploys the stack under.
const STACK: &str = "terra-sink";
/// The template's shortest function timeout, deployed as it deploys it (the
/// queue's visibility timeout follows): a failing attempt reaches the log,
/// and smoke's default wait ends, within a minute.
const FUNCTION_TIMEOUT: &str = "30";

/// The stack's function running locally, fed by its queue, logging to its
/// log group.
struct Running {
    moto: Moto,
    stack: LocalStack,
    runtime: RuntimeApi,
    handlers: HandlerPool,
    mapping: SqsMapping,
}

impl Running {
    async fn start() -> Running {
        let mut moto = Moto::start().await;
        let stack = LocalStack::deploy_for(
            &mut moto,
            "SqsHandlerFunction",
            &[("Settings", &format!("FunctionTimeout={FUNCTION_TIMEOUT}"))],
        )
        .await;
        let runtime = RuntimeApi::start().await;
        let env = stack.handler_environment(runtime.addr, &moto.endpoint);
        let handlers = HandlerPool::spawn(&workspace_binary("sqs-handler"), &env, 1);
        let queue = stack.queue.clone().expect("the stack's queue");
        let mapping = stack.mapping.clone().expect("the stack's mapping");
        let mapping = SqsMapping::new(
            moto.sqs(),
            &queue.url,
            MappingSettings {
                batch_size: mapping.batch_size,
                batching_window: mapping.batching_window,
                report_batch_item_failures: mapping.report_batch_item_failures,
                function_timeout: stack.function.timeout,
                concurrency: 1,
            },
        )
        .await;
        Running {
            moto,
            stack,
            runtime,
            handlers,
            mapping,
        }
    }

    /// Runs `terra-sink smoke` with its default wait, the function's
    /// timeout and 30 s (while [`Running::feed`] runs).
    async fn smoke(&self) -> Output {
        let observer = &self.stack.observer;
        tokio::process::Command::new(OPERATOR_TOOL)
            .args(["smoke", "--stack", STACK])
            .env_clear()
            .envs([
                ("AWS_ENDPOINT_URL", self.moto.endpoint.as_str()),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", observer.access_key_id()),
                ("AWS_SECRET_ACCESS_KEY", observer.secret_access_key()),
            ])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run terra-sink smoke")
    }

    /// The mapping feeding the function and its output going to its log
    /// group, for as long as this is polled. Never dropped mid-test: a
    /// receive cut off while moto waits for a message would take one
    /// unseen.
    async fn feed(&self) {
        let group = &self.stack.outputs["SqsHandlerLogGroupName"];
        let logs = self.moto.logs();
        tokio::join!(
            self.mapping.run_until_stopped(&self.runtime),
            ship_logs(&logs, group, &self.handlers)
        );
    }

    /// The bucket's current objects.
    async fn keys(&self, bucket: &str) -> Vec<String> {
        let listed = self
            .moto
            .s3()
            .list_objects_v2()
            .bucket(bucket)
            .send()
            .await
            .expect("list the archive");
        listed
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .map(str::to_owned)
            .collect()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn smoke_passes_against_the_stack_and_says_why_when_the_role_cannot_write_the_archive() {
    let running = Running::start().await;
    tokio::select! {
        () = smoke_passes_then_says_why_it_fails(&running) => {}
        () = running.feed() => unreachable!("the function is fed until the checks end"),
    }
}

async fn smoke_passes_then_says_why_it_fails(running: &Running) {
    let bucket = running.stack.outputs["BucketName"].clone();
    let table = running.stack.outputs["TableName"].clone();

    let output = running.smoke().await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "smoke failed:\n{stderr}\n{stdout}");
    let seen: Value = serde_json::from_str(&stdout).expect("a JSON summary");
    let archived = seen["archived"].as_str().expect("the archived object");
    let prefix = format!("s3://{bucket}/terra/dt=");
    assert!(archived.starts_with(&prefix), "{archived}");
    assert!(
        seen["payload"]
            .as_str()
            .expect("the payload")
            .contains("/smoke/")
    );
    let (pk, sk) = (&seen["item"][0], &seen["item"][1]);
    assert_eq!(pk, "USER#terra-sink-smoke");
    assert!(
        sk.as_str()
            .expect("a sort key")
            .starts_with("ACTIVITY#terra-sink-smoke-")
    );
    let removed: Vec<&str> = seen["removed"]
        .as_array()
        .expect("what it removed")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // The payload, the archived object, its erasure-index marker, the item.
    assert_eq!(removed.len(), 4, "{removed:?}\n{stderr}");
    assert!(
        removed.iter().any(|r| r.contains("/_erasure/")),
        "{removed:?}"
    );
    assert!(removed.contains(&archived), "{removed:?}");
    assert!(removed.iter().any(|r| r.starts_with(&table)), "{removed:?}");
    let left = running.keys(&bucket).await;
    assert!(left.is_empty(), "smoke left objects behind: {left:?}");

    // The function's role loses the archive: smoke fails, and says so.
    running
        .stack
        .deny_the_function(&running.moto, &["s3:PutObject"])
        .await;
    // The store retries end at the invocation's deadline, and only then is
    // the failure logged: smoke's default wait outlasts it.
    let output = running.smoke().await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not work"), "{stderr}");
    assert!(stderr.contains("was not archived"), "{stderr}");
    assert!(
        stderr.contains("sink/"),
        "the reason from the function's log:\n{stderr}"
    );
    assert!(
        stderr.contains("AccessDenied"),
        "the reason from the function's log:\n{stderr}"
    );
    assert!(
        !stderr.contains("X-Amz-Signature"),
        "a pre-signed URL shown:\n{stderr}"
    );
    let left = running.keys(&bucket).await;
    assert!(
        left.iter().all(|key| !key.starts_with("smoke/")),
        "smoke left its payload behind: {left:?}"
    );
}

#[tokio::test]
async fn smoke_refuses_a_stack_it_cannot_find_without_sending_anything() {
    let moto = Moto::start().await;
    let output = tokio::process::Command::new(OPERATOR_TOOL)
        .args(["smoke", "--stack", "no-such-stack"])
        .env_clear()
        .envs([
            ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ])
        .output()
        .await
        .expect("run terra-sink smoke");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no-such-stack"), "{stderr}");
}
