//! `terra-sink smoke`: proves a deployed stack works end to end, from the
//! operator's credentials. It puts a small Terra-shaped payload in the
//! archive bucket under `smoke/`, sends Terra's queue a pointer to it with a
//! pre-signed URL, as Terra would, waits until the function has archived the
//! payload (and written its item, with a table), and removes what it made.
//!
//! What the function runs with is read from the function itself (its
//! environment, through Lambda), not assumed: the URL policy the pre-signed
//! URL must pass, the archive's prefix and compression, the table.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_s3::presigning::PresigningConfig;
use serde::Serialize;
use serde_json::{Value, json};
use terra_sink::config::Config;
use terra_sink::erasure::index_marker;
use terra_sink::fetch::RedactedUrl;
use terra_sink::message::{self, TerraMessage};
use terra_sink::sink::{ArchiveName, S3Compression, S3Settings, item_keys};
use terra_sink::wall_clock::now_ms;
use url::Url;

/// Where the smoke payload is put, in the archive bucket.
pub const SMOKE_PREFIX: &str = "smoke/";
/// The Terra user the smoke payload belongs to, and so the table's
/// partition its item lands in.
pub const SMOKE_USER: &str = "terra-sink-smoke";
/// Terra's URL lifetime, which the pointer announces.
const URL_LIFETIME: Duration = Duration::from_secs(600);
const POLL_EVERY: Duration = Duration::from_millis(500);

/// The stack outputs smoke reads.
pub struct StackOutputs {
    pub queue_url: String,
    pub function_name: String,
    /// The function's log group, where the reason for a failure is.
    pub log_group: Option<String>,
}

/// The deployment as its function sees it.
pub struct Deployment {
    pub outputs: StackOutputs,
    /// `config.s3`, which smoke cannot do without.
    pub archive: S3Settings,
    pub config: Config,
}

/// What smoke saw, printed as JSON on stdout.
#[derive(Debug, Serialize)]
pub struct SmokeReport {
    pub queue_url: String,
    pub message_id: String,
    pub payload: String,
    pub archived: String,
    pub item: Option<(String, String)>,
    pub seconds: f64,
    pub removed: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    /// The stack or the function cannot be read, or is not one smoke can
    /// check: nothing was sent.
    #[error("{0}")]
    Setup(String),
    /// The stack did not do what it should: the message was sent, and this
    /// says what did not happen and, where the function's log says, why.
    #[error("{0}")]
    Failed(String),
}

/// What Lambda adds to a function's own variables that the configuration
/// reads: the X-Ray daemon's address, which `TERRA_TRACING=xray` needs (the
/// value Lambda gives it; smoke sends nothing there).
const SET_BY_LAMBDA: [(&str, &str); 1] = [("AWS_XRAY_DAEMON_ADDRESS", "169.254.79.129:2000")];

/// The function's configuration, validated as the function validates it
/// at cold start (its own variables and what Lambda adds), and what smoke
/// needs of it.
pub fn deployment(
    outputs: StackOutputs,
    environment: &HashMap<String, String>,
) -> Result<Deployment, SmokeError> {
    let config = Config::from_lookup(|var| {
        let set_by_lambda = SET_BY_LAMBDA.iter().find(|(name, _)| *name == var);
        environment
            .get(var)
            .cloned()
            .or_else(|| set_by_lambda.map(|(_, value)| (*value).to_owned()))
            .map(Ok)
    })
    .map_err(|e| SmokeError::Setup(format!("the function's configuration: {e}")))?;
    let archive = config.s3.clone().ok_or_else(|| {
        SmokeError::Setup(
            "the function has no archive (TERRA_S3_BUCKET): smoke puts its payload in the \
             archive bucket"
                .into(),
        )
    })?;
    Ok(Deployment {
        outputs,
        archive,
        config,
    })
}

/// Refuses a pre-signed URL the function's URL policy would refuse, naming
/// the setting that blocks it.
pub fn check_url_policy(config: &Config, url: &Url) -> Result<(), SmokeError> {
    config.url_policy.check_url(url).map_err(|violation| {
        let shown = RedactedUrl(url);
        let allowed = config
            .url_policy
            .allowed_hosts
            .as_ref()
            .map(|hosts| {
                hosts
                    .iter()
                    .map(|h| h.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|| "(any public host)".into());
        SmokeError::Setup(format!(
            "the function's URL policy refuses the archive bucket's pre-signed URL {shown} \
             ({violation}). TERRA_ALLOWED_URL_HOSTS (the template's AllowedUrlHosts setting) is \
             {allowed}; Terra's payloads and this check both need S3's hosts: add s3 \
             (any S3 endpoint and its buckets)"
        ))
    })
}

/// A Terra activity of one record, as small as Terra sends.
pub fn smoke_payload(run_id: &str, now_rfc3339: &str) -> Value {
    json!({
        "type": "activity",
        "version": "2022-03-16",
        "user": {
            "user_id": SMOKE_USER,
            "provider": "TERRA_SINK_SMOKE",
            "reference_id": SMOKE_USER,
            "scopes": null,
            "last_webhook_update": null
        },
        "data": [{
            "metadata": {
                "summary_id": run_id,
                "name": "terra-sink smoke test",
                "type": 0,
                "upload_type": 0,
                "start_time": now_rfc3339,
                "end_time": now_rfc3339,
                "city": null, "state": null, "country": null
            }
        }]
    })
}

/// The pointer Terra would send for the payload at `url`.
pub fn pointer_message(url: &Url, run_id: &str) -> String {
    json!({
        "type": "s3_payload",
        "status": "success",
        "url": url.as_str(),
        "expires_in": URL_LIFETIME.as_secs(),
        "payload_reference": run_id,
    })
    .to_string()
}

/// Where the function archives the message, for a send at `sent_at_ms`.
pub fn archived_key(
    archive: &S3Settings,
    message_body: &str,
    sent_at_ms: u64,
) -> Result<String, SmokeError> {
    let pointer = match message::decode(message_body.as_bytes()) {
        Ok(TerraMessage::Payload(pointer)) => pointer,
        other => {
            return Err(SmokeError::Setup(format!(
                "the smoke message is not a payload pointer: {other:?}"
            )));
        }
    };
    let suffix = match archive.compression {
        S3Compression::None => "",
        S3Compression::Gzip => ".gz",
    };
    Ok(ArchiveName::for_message(&pointer, sent_at_ms).key(&archive.prefix, suffix))
}

/// The clients smoke calls with, from the operator's credentials.
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
}

/// Sends the smoke message and waits up to `timeout` for its payload to be
/// stored; removes what it made either way.
pub async fn run(
    clients: &Clients,
    deployment: &Deployment,
    run_id: &str,
    timeout: Duration,
) -> Result<SmokeReport, SmokeError> {
    let bucket = deployment.archive.bucket.as_str();
    let payload_key = format!("{SMOKE_PREFIX}{run_id}.json");
    let now = time::OffsetDateTime::now_utc();
    let now_text = now
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| SmokeError::Setup(e.to_string()))?;
    let payload = smoke_payload(run_id, &now_text);

    let presigned = clients
        .s3
        .get_object()
        .bucket(bucket)
        .key(&payload_key)
        .presigned(
            PresigningConfig::expires_in(URL_LIFETIME)
                .map_err(|e| SmokeError::Setup(e.to_string()))?,
        )
        .await
        .map_err(|e| SmokeError::Setup(format!("pre-signing a URL: {e}")))?;
    let url = Url::parse(presigned.uri())
        .map_err(|e| SmokeError::Setup(format!("the pre-signed URL: {e}")))?;
    check_url_policy(&deployment.config, &url)?;

    let mut made = Made::default();
    let outcome = send_and_wait(
        clients,
        deployment,
        &mut made,
        Sent {
            payload_key: &payload_key,
            payload: &payload,
            url: &url,
            run_id,
        },
        timeout,
    )
    .await;
    let removed = made
        .remove(clients, bucket, deployment.config.dynamodb_table.as_deref())
        .await;
    let mut report = outcome?;
    report.removed = removed;
    Ok(report)
}

struct Sent<'a> {
    payload_key: &'a str,
    payload: &'a Value,
    url: &'a Url,
    run_id: &'a str,
}

/// What smoke made, to be removed.
#[derive(Default)]
struct Made {
    /// Keys, with the version each write made.
    objects: Vec<(String, Option<String>)>,
    item: Option<(String, String)>,
}

impl Made {
    /// Removes each object's version and the item. What cannot be removed
    /// is said on stderr, not hidden: the check's result stands.
    async fn remove(&self, clients: &Clients, bucket: &str, table: Option<&str>) -> Vec<String> {
        let mut removed = Vec::new();
        for (key, version) in &self.objects {
            match remove_object(&clients.s3, bucket, key, version.as_deref()).await {
                Ok(()) => removed.push(format!("s3://{bucket}/{key}")),
                Err(e) => eprintln!("terra-sink smoke: could not remove s3://{bucket}/{key}: {e}"),
            }
        }
        if let (Some((pk, sk)), Some(table)) = (&self.item, table) {
            let deleted = clients
                .dynamodb
                .delete_item()
                .table_name(table)
                .key("pk", AttributeValue::S(pk.clone()))
                .key("sk", AttributeValue::S(sk.clone()))
                .send()
                .await;
            match deleted {
                Ok(_) => removed.push(format!("{table}: {pk} {sk}")),
                Err(e) => eprintln!(
                    "terra-sink smoke: could not remove the item {pk} {sk} from {table}: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e)
                ),
            }
        }
        removed
    }
}

/// Deletes the version smoke made (for good: a versioned bucket would only
/// hide the object behind a delete marker), or the object in a bucket
/// without versions.
async fn remove_object(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    version: Option<&str>,
) -> Result<(), String> {
    s3.delete_object()
        .bucket(bucket)
        .key(key)
        .set_version_id(version.filter(|v| *v != "null").map(str::to_owned))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string())
}

async fn send_and_wait(
    clients: &Clients,
    deployment: &Deployment,
    made: &mut Made,
    sent: Sent<'_>,
    timeout: Duration,
) -> Result<SmokeReport, SmokeError> {
    let bucket = deployment.archive.bucket.as_str();
    let put = clients
        .s3
        .put_object()
        .bucket(bucket)
        .key(sent.payload_key)
        .content_type("application/json")
        .body(sent.payload.to_string().into_bytes().into())
        .send()
        .await
        .map_err(|e| {
            SmokeError::Setup(format!(
                "putting the smoke payload in s3://{bucket}/{}: {}",
                sent.payload_key,
                aws_sdk_s3::error::DisplayErrorContext(e)
            ))
        })?;
    made.objects.push((
        sent.payload_key.to_owned(),
        put.version_id().map(str::to_owned),
    ));

    let body = pointer_message(sent.url, sent.run_id);
    let started = Instant::now();
    let before_ms = now_ms();
    let sent_message = clients
        .sqs
        .send_message()
        .queue_url(&deployment.outputs.queue_url)
        .message_body(&body)
        .send()
        .await
        .map_err(|e| {
            SmokeError::Setup(format!(
                "sending to Terra's queue {}: {}",
                deployment.outputs.queue_url,
                aws_sdk_sqs::error::DisplayErrorContext(e)
            ))
        })?;
    let after_ms = now_ms();
    let message_id = sent_message.message_id().unwrap_or_default().to_owned();

    // SQS stamps the send between these two instants; they fall on one UTC
    // date but in the second around midnight.
    let mut candidates = vec![archived_key(&deployment.archive, &body, before_ms)?];
    let later = archived_key(&deployment.archive, &body, after_ms)?;
    if !candidates.contains(&later) {
        candidates.push(later);
    }
    let (archived, version) = loop {
        if let Some(found) = first_present(&clients.s3, bucket, &candidates).await {
            break found;
        }
        if started.elapsed() > timeout {
            let why = logged_failure(clients, deployment, &message_id, before_ms).await;
            return Err(SmokeError::Failed(format!(
                "the payload was not archived within {} s: s3://{bucket}/{} does not exist. \
                 The function (its role) must be able to fetch the pre-signed URL and write \
                 the archive under {}. {why}",
                timeout.as_secs(),
                candidates[0],
                deployment.archive.prefix.as_str(),
            )));
        }
        tokio::time::sleep(POLL_EVERY).await;
    };
    made.objects.push((archived.clone(), version));
    // The erasure index's marker the function put first, under the smoke
    // user: smoke's too, to remove.
    let marker = index_marker(&deployment.archive.prefix, SMOKE_USER, &archived);
    if let Some(found) = first_present(&clients.s3, bucket, std::slice::from_ref(&marker)).await {
        made.objects.push(found);
    }

    let item = match &deployment.config.dynamodb_table {
        None => None,
        Some(table) => {
            // The item model's own key for the payload (one record, one item).
            let Some(key) = item_keys(sent.payload, before_ms).into_iter().next() else {
                return Err(SmokeError::Setup("the smoke payload makes no item".into()));
            };
            made.item = Some(key.clone());
            loop {
                if item_present(&clients.dynamodb, table, &key).await {
                    break;
                }
                if started.elapsed() > timeout {
                    let why = logged_failure(clients, deployment, &message_id, before_ms).await;
                    return Err(SmokeError::Failed(format!(
                        "the payload was archived, but its item ({} {}) was not written to \
                         {table} within {} s. {why}",
                        key.0,
                        key.1,
                        timeout.as_secs()
                    )));
                }
                tokio::time::sleep(POLL_EVERY).await;
            }
            Some(key)
        }
    };
    Ok(SmokeReport {
        queue_url: deployment.outputs.queue_url.clone(),
        message_id,
        payload: format!("s3://{bucket}/{}", sent.payload_key),
        archived: format!("s3://{bucket}/{archived}"),
        item,
        seconds: started.elapsed().as_secs_f64(),
        removed: Vec::new(),
    })
}

/// The first of `keys` the bucket holds, with its current version.
async fn first_present(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    keys: &[String],
) -> Option<(String, Option<String>)> {
    for key in keys {
        if let Ok(head) = s3.head_object().bucket(bucket).key(key).send().await {
            return Some((key.clone(), head.version_id().map(str::to_owned)));
        }
    }
    None
}

async fn item_present(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    (pk, sk): &(String, String),
) -> bool {
    dynamodb
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(pk.clone()))
        .key("sk", AttributeValue::S(sk.clone()))
        .consistent_read(true)
        .send()
        .await
        .is_ok_and(|found| found.item().is_some())
}

/// What the function logged about the message: its `record failed` lines'
/// class, retry verdict and error, or where to look when they cannot be
/// read.
async fn logged_failure(
    clients: &Clients,
    deployment: &Deployment,
    message_id: &str,
    since_ms: u64,
) -> String {
    let Some(group) = &deployment.outputs.log_group else {
        return "The function's log line `record failed` says why.".into();
    };
    let lines = clients
        .logs
        .filter_log_events()
        .log_group_name(group)
        .start_time(i64::try_from(since_ms).unwrap_or(i64::MAX))
        // One quoted term: the lines about this message, of which the
        // `record failed` ones are picked out below.
        .filter_pattern(format!("\"{message_id}\""))
        .send()
        .await;
    match lines {
        Ok(found) => {
            let reasons: Vec<String> = found
                .events()
                .iter()
                .filter_map(|event| event.message())
                .filter(|line| line.contains(terra_sink::log_events::RECORD_FAILED))
                .filter_map(failure_of_line)
                .collect();
            match reasons.last().map(|reason| shortened(reason)) {
                Some(reason) => format!(
                    "The function logged, for message {message_id}: {reason} \
                     ({} attempt(s) so far).",
                    reasons.len()
                ),
                None => format!(
                    "The function logged no failure for message {message_id} in {group}: \
                     check that its event source mapping is enabled and that it is invoked."
                ),
            }
        }
        Err(e) => format!(
            "The function's log group {group} could not be read ({}); its line \
             `record failed` says why.",
            aws_sdk_cloudwatchlogs::error::DisplayErrorContext(e)
        ),
    }
}

/// `class/retry: error` from a `record failed` log line, JSON or text.
pub fn failure_of_line(line: &str) -> Option<String> {
    if let Ok(json) = serde_json::from_str::<Value>(line) {
        let fields = json.get("fields").unwrap_or(&json);
        let text = |name: &str| fields.get(name).and_then(Value::as_str).map(str::to_owned);
        return Some(format!(
            "{}/{}: {}",
            text("class")?,
            text("retry")?,
            text("error")?
        ));
    }
    let field = |name: &str| {
        let start = line.find(&format!("{name}="))? + name.len() + 1;
        let rest = &line[start..];
        let end = if name == "error" {
            rest.len()
        } else {
            rest.find(' ').unwrap_or(rest.len())
        };
        Some(rest[..end].trim_matches('"').to_owned())
    };
    Some(format!(
        "{}/{}: {}",
        field("class")?,
        field("retry")?,
        field("error")?
    ))
}

/// The reason's first 300 characters: the SDK's errors carry the whole
/// response after what says why.
fn shortened(reason: &str) -> String {
    const SHOWN: usize = 300;
    match reason.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &reason[..cut]),
        None => reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Config {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|var| vars.get(var).cloned().map(Ok)).expect("valid")
    }

    #[test]
    fn the_smoke_payload_passes_the_functions_checks() {
        let payload = smoke_payload("smoke-1", "2026-12-05T12:00:00Z");
        let bytes = serde_json::to_vec(&payload).expect("JSON");
        terra_sink::payload::inspect(&bytes).expect("a payload the function accepts");
    }

    #[test]
    fn the_message_is_archived_under_its_reference_and_send_date() {
        let config = config(&[
            ("TERRA_S3_BUCKET", "archive"),
            ("TERRA_S3_PREFIX", "terra/"),
        ]);
        let url = Url::parse(
            "https://archive.s3.eu-west-1.amazonaws.com/smoke/smoke-1.json?X-Amz-Signature=s",
        )
        .expect("URL");
        let body = pointer_message(&url, "smoke-1");
        // 2026-12-05T00:00:00Z
        let key = archived_key(
            config.s3.as_ref().expect("archive"),
            &body,
            1_796_428_800_000,
        )
        .expect("a pointer");
        assert_eq!(key, "terra/dt=2026-12-05/smoke-1.json");
    }

    #[test]
    fn a_url_policy_that_leaves_s3_out_is_named() {
        let url = Url::parse(
            "https://archive.s3.eu-west-1.amazonaws.com/smoke/x.json?X-Amz-Signature=secret",
        )
        .expect("URL");
        let narrow = config(&[
            ("TERRA_S3_BUCKET", "archive"),
            ("TERRA_ALLOWED_URL_HOSTS", "storage.googleapis.com"),
        ]);
        let message = check_url_policy(&narrow, &url)
            .expect_err("refused")
            .to_string();
        assert!(message.contains("TERRA_ALLOWED_URL_HOSTS"), "{message}");
        assert!(message.contains("AllowedUrlHosts"), "{message}");
        assert!(
            !message.contains("secret"),
            "the signature is shown: {message}"
        );
        let default = config(&[
            ("TERRA_S3_BUCKET", "archive"),
            ("TERRA_ALLOWED_URL_HOSTS", "s3,storage.googleapis.com"),
        ]);
        check_url_policy(&default, &url).expect("the template's default allows S3");
    }

    #[test]
    fn a_failure_is_read_from_json_and_text_lines() {
        let json = r#"{"level":"WARN","fields":{"message":"record failed","class":"sink","retry":"transient","error":"S3 refused: AccessDenied"}}"#;
        assert_eq!(
            failure_of_line(json).as_deref(),
            Some("sink/transient: S3 refused: AccessDenied")
        );
        let text = r#"WARN record: record failed class=sink retry=transient error=S3 refused: AccessDenied"#;
        assert_eq!(
            failure_of_line(text).as_deref(),
            Some("sink/transient: S3 refused: AccessDenied")
        );
    }
}
