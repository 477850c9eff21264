//! A stand-in for Terra: it serves realistic payloads (Terra's own examples,
//! made unique per message, and large activities with samples) from a local
//! payload server, some of them flaky or expired, and sends the pointer
//! messages to an SQS queue as Terra does.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::fixture;
use crate::payload_server::{Behaviour, PayloadServer};

/// What a message's URL does when fetched, and so how it should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Served at once.
    Good,
    /// Served gzip-compressed.
    Gzip,
    /// 503 on the first request, then served: retried within the invocation.
    Flaky,
    /// 500 on the first three requests: needs a second delivery of the message.
    Outage,
    /// 429 with Retry-After, then served.
    RateLimited,
    /// An activity with several MB of samples.
    Large,
    /// 403, as S3 answers an expired pre-signed URL: ends dead-lettered
    /// (SQS) or quarantined (Kafka).
    Expired,
    /// A healthcheck message, no URL.
    Healthcheck,
    /// The first response takes 3 s (beyond a 2 s fetch timeout), then fast.
    LatencySpike,
    /// The first response is cut mid-body, then served.
    Reset,
    /// The first body is shorter than its Content-Length, then served.
    ShortBody,
    /// `expires_in` 2 s, and the message only becomes visible after 4 s (on
    /// a FIFO queue, nothing is sent after it for 4 s): expired before
    /// anyone can fetch it. Ends dead-lettered (SQS) or quarantined (Kafka).
    ExpiresWhileWaiting,
    /// Every response takes 700 ms: a batch of them outlasts a short deadline.
    Slow,
    /// The first response takes longer than an invocation has
    /// ([`TerraSimulator::longer_than_an_invocation`]), later ones are fast: a batch
    /// too long for its deadline.
    SlowFirst,
    /// An activity of exactly [`TerraSimulator::max_payload_bytes`], in records
    /// of about 1 MiB of heart-rate samples each.
    MaxSize,
    /// A daily payload of a million tiny records: over any sensible bound of
    /// items per payload, so it can be archived but not projected.
    MillionTinyRecords,
    /// 503 for [`TerraSimulator::longer_than_an_invocation`] after the
    /// message is made, then served: a host that recovers while the URL
    /// lives, but only after a whole invocation's retries.
    DownAtFirst,
    /// A message body that is not Terra's: fails `invalid`, for good, and
    /// ends dead-lettered (SQS) or quarantined (Kafka).
    NotTerra,
    /// A newer version (`terra_sim_revision` 2) of the previous message's
    /// records, sent after it. When the previous one is an `Outage`, this one
    /// is written first and the older version must not overwrite it.
    Revision,
}

impl Kind {
    /// Whether the message can end written (else dead-lettered on SQS,
    /// quarantined on Kafka).
    pub fn deliverable(self) -> bool {
        !matches!(
            self,
            Kind::Expired | Kind::ExpiresWhileWaiting | Kind::NotTerra
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Good => "good",
            Kind::Gzip => "gzip",
            Kind::Flaky => "flaky",
            Kind::Outage => "outage",
            Kind::RateLimited => "rate-limited",
            Kind::Large => "large",
            Kind::Expired => "expired",
            Kind::Healthcheck => "healthcheck",
            Kind::LatencySpike => "latency-spike",
            Kind::Reset => "reset",
            Kind::ShortBody => "short-body",
            Kind::ExpiresWhileWaiting => "expires-while-waiting",
            Kind::Slow => "slow",
            Kind::SlowFirst => "slow-first",
            Kind::Revision => "revision",
            Kind::MaxSize => "max-size",
            Kind::MillionTinyRecords => "million-tiny-records",
            Kind::DownAtFirst => "down-at-first",
            Kind::NotTerra => "not-terra",
        }
    }
}

/// A [`Kind::ExpiresWhileWaiting`] URL's lifetime, and how long its message
/// waits before anything can receive it.
const EXPIRES_WHILE_WAITING_LIFETIME: Duration = Duration::from_secs(2);
const EXPIRES_WHILE_WAITING_DELAY: Duration = Duration::from_secs(4);

/// The usual mix: mostly good payloads, a few of each fault.
pub const MIX: [Kind; 12] = [
    Kind::Good,
    Kind::Good,
    Kind::Gzip,
    Kind::Good,
    Kind::Flaky,
    Kind::Good,
    Kind::RateLimited,
    Kind::Large,
    Kind::Good,
    Kind::Outage,
    Kind::Expired,
    Kind::Healthcheck,
];

/// Terra's example payloads the simulator varies.
const EXAMPLES: [&str; 10] = [
    "openapi_activity.json",
    "openapi_sleep.json",
    "openapi_daily.json",
    "openapi_body.json",
    "openapi_nutrition.json",
    "openapi_menstruation.json",
    "openapi_athlete.json",
    "openapi_auth__authSuccess.json",
    "openapi_permission_change.json",
    "openapi_connection_error.json",
];

/// One pointer message Terra sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message_id: String,
    pub kind: Kind,
    /// The payload's `type`, or `healthcheck`.
    pub event_type: String,
}

pub struct TerraSimulator {
    pub payloads: PayloadServer,
    /// `expires_in` of the URLs, and when the payload server starts refusing
    /// them (counted from when the message is made, just before it is sent).
    pub url_lifetime: Duration,
    /// Longer than an invocation, shorter than a URL lives: how long a
    /// [`Kind::SlowFirst`] payload's first answer takes, and a
    /// [`Kind::DownAtFirst`] payload's host stays down.
    pub longer_than_an_invocation: Duration,
    /// The size of a [`Kind::MaxSize`] payload: the function's
    /// `TERRA_MAX_PAYLOAD_BYTES`.
    pub max_payload_bytes: usize,
}

/// terra-sink's default `TERRA_MAX_PAYLOAD_BYTES`.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

impl TerraSimulator {
    pub async fn start() -> TerraSimulator {
        TerraSimulator {
            payloads: PayloadServer::start().await,
            url_lifetime: crate::deployed::TERRA_URL_LIFETIME,
            longer_than_an_invocation: Duration::from_secs(10),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    /// Serves `count` payloads, cycling through `mix`, and sends a pointer
    /// message for each to `queue_url`.
    pub async fn send(
        &self,
        sqs: &aws_sdk_sqs::Client,
        queue_url: &str,
        mix: &[Kind],
        count: usize,
    ) -> Vec<Sent> {
        let messages: Vec<(Kind, Option<String>)> =
            (0..count).map(|n| (mix[n % mix.len()], None)).collect();
        self.send_each(sqs, queue_url, &messages).await
    }

    /// Sends each group's messages, in order, to the FIFO queue at
    /// `queue_url`: group `i` has `MessageGroupId` `g{i}`.
    pub async fn send_groups(
        &self,
        sqs: &aws_sdk_sqs::Client,
        queue_url: &str,
        groups: &[Vec<Kind>],
    ) -> Vec<Sent> {
        let messages: Vec<(Kind, Option<String>)> = groups
            .iter()
            .enumerate()
            .flat_map(|(i, kinds)| kinds.iter().map(move |kind| (*kind, Some(format!("g{i}")))))
            .collect();
        self.send_each(sqs, queue_url, &messages).await
    }

    /// Sends one pointer message per `(kind, message group)`, in order.
    async fn send_each(
        &self,
        sqs: &aws_sdk_sqs::Client,
        queue_url: &str,
        messages: &[(Kind, Option<String>)],
    ) -> Vec<Sent> {
        // Generated payloads (tens of MB) are made before anything is sent,
        // so messages arrive as fast as Terra sends them and fill batches.
        let mut generated: Vec<Option<(&'static str, Vec<u8>)>> = messages
            .iter()
            .enumerate()
            .map(|(n, (kind, _))| self.generated(n, *kind))
            .collect();
        let mut sent = Vec::with_capacity(messages.len());
        for (n, (kind, group)) in messages.iter().enumerate() {
            let kind = *kind;
            let (body, event_type) = self.message_with(n, kind, generated[n].take());
            let expires_while_waiting = kind == Kind::ExpiresWhileWaiting;
            if kind == Kind::Revision {
                // SentTimestamp has millisecond precision: keep the newer
                // version strictly newer.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut request = sqs.send_message().queue_url(queue_url).message_body(body);
            match group {
                // A FIFO queue takes no delay per message.
                Some(group) => {
                    request = request
                        .message_group_id(group)
                        .message_deduplication_id(format!("sim-{n}"));
                }
                None if expires_while_waiting => {
                    request = request.delay_seconds(EXPIRES_WHILE_WAITING_DELAY.as_secs() as i32);
                }
                None => {}
            }
            let output = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("send to {queue_url}: {e:?}"));
            if expires_while_waiting && group.is_some() {
                // Nothing behind it is sent, or received, before its URL dies.
                tokio::time::sleep(EXPIRES_WHILE_WAITING_DELAY).await;
            }
            sent.push(Sent {
                message_id: output.message_id().expect("message id").to_owned(),
                kind,
                event_type,
            });
        }
        sent
    }

    /// Terra's own-bucket mode: uploads `count` of Terra's examples to
    /// `bucket` with `uploader` and sends a pointer message for each, its
    /// URL pre-signed by `signer` (for the endpoint the reader uses) for the
    /// URL lifetime.
    pub async fn send_from_bucket(
        &self,
        sqs: &aws_sdk_sqs::Client,
        queue_url: &str,
        (uploader, signer): (&aws_sdk_s3::Client, &aws_sdk_s3::Client),
        bucket: &str,
        count: usize,
    ) -> Vec<Sent> {
        let mut sent = Vec::with_capacity(count);
        for n in 0..count {
            let payload = unique_example(n);
            let event_type = payload["type"].as_str().unwrap_or("unknown").to_owned();
            let key = format!("payloads/{n:04}.json");
            uploader
                .put_object()
                .bucket(bucket)
                .key(&key)
                .body(in_terra_order(&payload).into())
                .send()
                .await
                .unwrap_or_else(|e| panic!("upload {key}: {e:?}"));
            let presigning =
                aws_sdk_s3::presigning::PresigningConfig::expires_in(self.url_lifetime)
                    .expect("a lifetime S3 accepts");
            let url = signer
                .get_object()
                .bucket(bucket)
                .key(&key)
                .presigned(presigning)
                .await
                .expect("pre-signed")
                .uri()
                .to_owned();
            let pointer = json!({
                "status": "success",
                "type": "s3_payload",
                "url": url,
                "expires_in": self.url_lifetime.as_secs(),
                "payload_reference": format!("sim-{n:04}-own-bucket")
            });
            let output = sqs
                .send_message()
                .queue_url(queue_url)
                .message_body(pointer.to_string())
                .send()
                .await
                .unwrap_or_else(|e| panic!("send to {queue_url}: {e:?}"));
            sent.push(Sent {
                message_id: output.message_id().expect("message id").to_owned(),
                kind: Kind::Good,
                event_type,
            });
        }
        sent
    }

    /// Serves the `n`th payload as `kind` says and returns its pointer
    /// message and the payload's type.
    pub fn message(&self, n: usize, kind: Kind) -> (String, String) {
        self.message_with(n, kind, self.generated(n, kind))
    }

    /// The payload of a kind whose body is generated as text, and its type.
    fn generated(&self, n: usize, kind: Kind) -> Option<(&'static str, Vec<u8>)> {
        match kind {
            Kind::MaxSize => Some((
                "activity",
                activity_in_records(n, self.max_payload_bytes, 1024 * 1024),
            )),
            Kind::MillionTinyRecords => Some(("daily", tiny_records(n, 1_000_000))),
            _ => None,
        }
    }

    fn message_with(
        &self,
        n: usize,
        kind: Kind,
        generated: Option<(&'static str, Vec<u8>)>,
    ) -> (String, String) {
        if kind == Kind::NotTerra {
            let body = json!({"event": "order.created", "order": n});
            return (body.to_string(), "none".into());
        }
        if kind == Kind::Healthcheck {
            let body = json!({
                "type": "healthcheck",
                "status": "success",
                "creation_timestamp": "2026-11-28T09:00:00.000000+00:00",
                "trend_percentage": 0.0,
                "sent_webhooks_last_hour": n
            });
            return (body.to_string(), "healthcheck".into());
        }
        if let Some((event_type, bytes)) = generated {
            return (
                self.pointer(n, kind, Behaviour::Ok(bytes)),
                event_type.to_owned(),
            );
        }
        let payload = match kind {
            Kind::Large => large_activity(n, 40_000),
            Kind::Revision => with_revision(unique_example(n.saturating_sub(1)), 2),
            Kind::Outage => with_revision(unique_example(n), 1),
            _ => unique_example(n),
        };
        let event_type = payload["type"].as_str().unwrap_or("unknown").to_owned();
        let bytes = in_terra_order(&payload);
        let behaviour = match kind {
            Kind::Good | Kind::Large | Kind::ExpiresWhileWaiting | Kind::Revision => {
                Behaviour::Ok(bytes)
            }
            Kind::LatencySpike => Behaviour::Sequence(vec![
                Behaviour::Delay(Duration::from_secs(3), bytes.clone().into()),
                Behaviour::Ok(bytes),
            ]),
            Kind::Reset => Behaviour::Sequence(vec![
                Behaviour::ResetMidBody(bytes.clone()),
                Behaviour::Ok(bytes),
            ]),
            Kind::ShortBody => Behaviour::Sequence(vec![
                Behaviour::DeclaredLength {
                    declared: bytes.len() as u64 + 1000,
                    body: bytes[..bytes.len() / 2].to_vec(),
                },
                Behaviour::Ok(bytes),
            ]),
            Kind::Slow => Behaviour::Delay(Duration::from_millis(700), bytes.into()),
            Kind::SlowFirst => Behaviour::Sequence(vec![
                Behaviour::Delay(self.longer_than_an_invocation, bytes.clone().into()),
                Behaviour::Ok(bytes),
            ]),
            Kind::Gzip => Behaviour::Gzip(bytes),
            Kind::DownAtFirst => Behaviour::UnavailableUntil {
                until: tokio::time::Instant::now() + self.longer_than_an_invocation,
                body: bytes,
            },
            Kind::Flaky => Behaviour::FailThenOk {
                failures: 1,
                status: 503,
                retry_after: None,
                body: bytes,
            },
            Kind::Outage => Behaviour::FailThenOk {
                failures: 3,
                status: 500,
                retry_after: None,
                body: bytes,
            },
            Kind::RateLimited => Behaviour::FailThenOk {
                failures: 1,
                status: 429,
                retry_after: Some(1),
                body: bytes,
            },
            Kind::Expired => Behaviour::Status(403),
            Kind::Healthcheck | Kind::NotTerra | Kind::MaxSize | Kind::MillionTinyRecords => {
                unreachable!("handled above")
            }
        };
        (self.pointer(n, kind, behaviour), event_type)
    }

    /// Serves the `n`th payload as `behaviour` and returns its pointer message.
    fn pointer(&self, n: usize, kind: Kind, behaviour: Behaviour) -> String {
        let lifetime = if kind == Kind::ExpiresWhileWaiting {
            EXPIRES_WHILE_WAITING_LIFETIME
        } else {
            self.url_lifetime
        };
        let url = self.payloads.route_expiring(
            &format!("/payloads/{n:04}-{}.json", kind.as_str()),
            behaviour,
            tokio::time::Instant::now() + lifetime,
        );
        let expires_in = lifetime.as_secs();
        let pointer = json!({
            "status": "success",
            "type": "s3_payload",
            "url": url,
            "expires_in": expires_in,
            "payload_reference": format!("sim-{n:04}-{}", kind.as_str())
        });
        pointer.to_string()
    }
}

/// One of Terra's examples, with its ids made unique to message `n` so each
/// message lands as its own records.
pub fn unique_example(n: usize) -> Value {
    let name = EXAMPLES[n % EXAMPLES.len()];
    let mut payload: Value =
        serde_json::from_slice(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    if let Some(records) = payload.get_mut("data").and_then(Value::as_array_mut) {
        for record in records {
            if let Some(metadata) = record.get_mut("metadata").and_then(Value::as_object_mut) {
                if let Some(Value::String(id)) = metadata.get_mut("summary_id") {
                    id.push_str(&format!("-sim{n}"));
                }
                // Daily-style records are keyed by their start date.
                if let Some(Value::String(start)) = metadata.get_mut("start_time")
                    && start.len() >= 10
                {
                    let day = 1 + n % 28;
                    start.replace_range(8..10, &format!("{day:02}"));
                }
            }
        }
    }
    payload
}

/// Marks each `data[]` record with `terra_sim_revision`, so a test can see
/// which version a store kept.
fn with_revision(mut payload: Value, revision: u64) -> Value {
    if let Some(records) = payload.get_mut("data").and_then(Value::as_array_mut) {
        for record in records.iter_mut().filter(|r| r.is_object()) {
            record["terra_sim_revision"] = json!(revision);
        }
    }
    payload
}

/// An activity with `samples` heart-rate samples (about 60 bytes each).
pub fn large_activity(n: usize, samples: usize) -> Value {
    let mut payload: Value =
        serde_json::from_slice(&fixture("openapi_activity.json")).expect("activity example");
    let record = &mut payload["data"][0];
    record["metadata"]["summary_id"] = json!(format!("large-activity-sim{n}"));
    let hr_samples: Vec<Value> = (0..samples)
        .map(|i| json!({"timestamp": format!("2026-11-28T09:{:02}:{:02}.000000+00:00", (i / 60) % 60, i % 60), "bpm": 60 + (i % 120)}))
        .collect();
    record["heart_rate_data"]["detailed"]["hr_samples"] = json!(hr_samples);
    payload
}

/// `payload` serialised as Terra sends it: the envelope first, `data` last
/// (a `Value` keeps its keys sorted, which would put `data` first).
pub fn in_terra_order(payload: &Value) -> Vec<u8> {
    let Some(fields) = payload.as_object() else {
        return payload.to_string().into_bytes();
    };
    let rank = |key: &str| match key {
        "type" => 0,
        "version" => 1,
        "user" | "new_user" => 2,
        "data" => 4,
        _ => 3,
    };
    let mut ordered: Vec<(&String, &Value)> = fields.iter().collect();
    ordered.sort_by_key(|(key, _)| rank(key));
    let members: Vec<String> = ordered
        .iter()
        .map(|(key, value)| format!("{}:{value}", Value::from(key.as_str())))
        .collect();
    format!("{{{}}}", members.join(",")).into_bytes()
}

const SIM_USER: &str = r#"{"user_id":"7a9f4e2c-5b1d-4c3e-9f8a-2d6b0e1c4a55","provider":"GARMIN","reference_id":"sim-user","scopes":null,"last_webhook_update":null}"#;

/// An activity payload of exactly `size` bytes: records of about
/// `record_bytes` of heart-rate samples, each with its own summary id, the
/// last padded to fit. Written as text: a tree of 64 MiB of samples would
/// take gigabytes.
pub fn activity_in_records(n: usize, size: usize, record_bytes: usize) -> Vec<u8> {
    let record = record_bytes.max(1024);
    let mut body =
        format!(r#"{{"type":"activity","version":"2022-03-16","user":{SIM_USER},"data":["#)
            .into_bytes();
    let closing = b"]}";
    let mut index = 0;
    loop {
        let head = format!(
            r#"{{"metadata":{{"summary_id":"max-size-sim{n}-{index}","start_time":"2026-11-28T09:00:00.000000+00:00","end_time":"2026-11-28T10:00:00.000000+00:00","type":1}},"heart_rate_data":{{"detailed":{{"hr_samples":["#
        );
        let separator = usize::from(index > 0);
        // What a record needs besides samples, and the padding field that
        // makes the last one fit exactly.
        let tail = r#"]}},"pad":""}"#;
        let room =
            size.saturating_sub(body.len() + separator + head.len() + tail.len() + closing.len());
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(head.as_bytes());
        let samples_budget = room.min(record);
        let mut written = 0;
        let mut i = 0usize;
        loop {
            let sample = format!(
                r#"{}{{"timestamp":"2026-11-28T09:{:02}:{:02}.000000+00:00","bpm":{}}}"#,
                if i > 0 { "," } else { "" },
                (i / 60) % 60,
                i % 60,
                60 + i % 120
            );
            if written + sample.len() > samples_budget {
                break;
            }
            body.extend_from_slice(sample.as_bytes());
            written += sample.len();
            i += 1;
        }
        let last = room - written < record / 2;
        let pad = if last { room - written } else { 0 };
        body.extend_from_slice(br#"]}},"pad":""#);
        body.extend(std::iter::repeat_n(b'x', pad));
        body.extend_from_slice(br#""}"#);
        index += 1;
        if last {
            break;
        }
    }
    body.extend_from_slice(closing);
    assert_eq!(body.len(), size, "activity_in_records is exact");
    body
}

/// A daily payload of `count` tiny records (`{"v":i}`).
pub fn tiny_records(n: usize, count: usize) -> Vec<u8> {
    let mut body = format!(r#"{{"type":"daily","version":"2022-03-16","user":{SIM_USER},"data":["#)
        .into_bytes();
    for i in 0..count {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(format!(r#"{{"v":{i},"sim":{n}}}"#).as_bytes());
    }
    body.extend_from_slice(b"]}");
    body
}

/// How many messages of each kind were sent.
pub fn count_by_kind(sent: &[Sent]) -> BTreeMap<Kind, usize> {
    let mut counts = BTreeMap::new();
    for message in sent {
        *counts.entry(message.kind).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod generated_payloads {
    use super::*;

    #[test]
    fn max_size_activities_are_exact_and_valid() {
        for size in [3 * 1024 * 1024 + 17, 5 * 1024 * 1024] {
            let body = activity_in_records(1, size, 1024 * 1024);
            assert_eq!(body.len(), size);
            let payload: Value = serde_json::from_slice(&body).expect("valid JSON");
            let records = payload["data"].as_array().expect("records");
            assert!(records.len() >= 3, "{}", records.len());
            let ids: std::collections::BTreeSet<_> = records
                .iter()
                .map(|r| r["metadata"]["summary_id"].as_str().expect("id"))
                .collect();
            assert_eq!(ids.len(), records.len(), "each record its own id");
        }
    }

    #[test]
    fn payloads_are_serialised_envelope_first_and_unchanged() {
        let payload = large_activity(7, 3);
        let bytes = in_terra_order(&payload);
        let text = String::from_utf8(bytes.clone()).expect("text");
        assert!(
            text.starts_with(r#"{"type":"activity","version":"#),
            "{text}"
        );
        assert!(text.find(r#""user":"#) < text.find(r#""data":"#));
        let parsed: Value = serde_json::from_slice(&bytes).expect("valid JSON");
        assert_eq!(parsed, payload);
    }

    #[test]
    fn tiny_records_are_valid() {
        let payload: Value = serde_json::from_slice(&tiny_records(3, 1000)).expect("valid JSON");
        assert_eq!(payload["data"].as_array().map(Vec::len), Some(1000));
    }
}
