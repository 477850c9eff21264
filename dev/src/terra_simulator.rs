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
    /// 403, as S3 answers an expired pre-signed URL: ends dead-lettered.
    Expired,
    /// A healthcheck message, no URL.
    Healthcheck,
    /// The first response takes 3 s (beyond a 2 s fetch timeout), then fast.
    LatencySpike,
    /// The first response is cut mid-body, then served.
    Reset,
    /// The first body is shorter than its Content-Length, then served.
    ShortBody,
    /// `expires_in` 2 s, and the message only becomes visible after 4 s:
    /// expired before anyone can fetch it. Ends dead-lettered.
    ExpiresWhileWaiting,
    /// Every response takes 700 ms: a batch of them outlasts a short deadline.
    Slow,
    /// The first response takes longer than an invocation has
    /// ([`TerraSimulator::slow_first_answer`]), later ones are fast: a batch
    /// too long for its deadline.
    SlowFirst,
    /// A newer version (`terra_sim_revision` 2) of the previous message's
    /// records, sent after it. When the previous one is an `Outage`, this one
    /// is written first and the older version must not overwrite it.
    Revision,
}

impl Kind {
    /// Whether the message can end written (else dead-lettered).
    pub fn deliverable(self) -> bool {
        !matches!(self, Kind::Expired | Kind::ExpiresWhileWaiting)
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
        }
    }
}

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
    /// How long a [`Kind::SlowFirst`] payload's first answer takes.
    pub slow_first_answer: Duration,
}

impl TerraSimulator {
    pub async fn start() -> TerraSimulator {
        TerraSimulator {
            payloads: PayloadServer::start().await,
            url_lifetime: crate::deployed::TERRA_URL_LIFETIME,
            slow_first_answer: Duration::from_secs(10),
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
        let mut sent = Vec::with_capacity(count);
        for n in 0..count {
            let kind = mix[n % mix.len()];
            let (body, event_type) = self.message(n, kind);
            let delay = if kind == Kind::ExpiresWhileWaiting {
                4
            } else {
                0
            };
            if kind == Kind::Revision {
                // SentTimestamp has millisecond precision: keep the newer
                // version strictly newer.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let output = sqs
                .send_message()
                .delay_seconds(delay)
                .queue_url(queue_url)
                .message_body(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("send to {queue_url}: {e:?}"));
            sent.push(Sent {
                message_id: output.message_id().expect("message id").to_owned(),
                kind,
                event_type,
            });
        }
        sent
    }

    /// Serves the `n`th payload as `kind` says and returns its pointer
    /// message and the payload's type.
    pub fn message(&self, n: usize, kind: Kind) -> (String, String) {
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
        let payload = match kind {
            Kind::Large => large_activity(n, 40_000),
            Kind::Revision => with_revision(unique_example(n.saturating_sub(1)), 2),
            Kind::Outage => with_revision(unique_example(n), 1),
            _ => unique_example(n),
        };
        let event_type = payload["type"].as_str().unwrap_or("unknown").to_owned();
        let bytes = serde_json::to_vec(&payload).expect("serialisable payload");
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
                Behaviour::Delay(self.slow_first_answer, bytes.clone().into()),
                Behaviour::Ok(bytes),
            ]),
            Kind::Gzip => Behaviour::Gzip(bytes),
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
            Kind::Healthcheck => unreachable!("handled above"),
        };
        let lifetime = if kind == Kind::ExpiresWhileWaiting {
            Duration::from_secs(2)
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
        (pointer.to_string(), event_type)
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

/// How many messages of each kind were sent.
pub fn count_by_kind(sent: &[Sent]) -> BTreeMap<Kind, usize> {
    let mut counts = BTreeMap::new();
    for message in sent {
        *counts.entry(message.kind).or_default() += 1;
    }
    counts
}
