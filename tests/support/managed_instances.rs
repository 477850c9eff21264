//! Lambda Managed Instances: one process of either compiled handler takes
//! several invocations at once (`AWS_LAMBDA_MAX_CONCURRENCY`, which Lambda
//! sets there), each with one record, through the Runtime API emulator.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::bed::{
    Bed, KafkaRecord, KafkaSource, base64, failed_ids, kafka_event, pointer, sqs_record,
};
use super::payload_server::Behaviour;
use super::runtime_api::{HandlerProcess, InvocationResult};
use super::{fixture, now_ms};

/// Which handler, and how its events name a record.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    Sqs,
    /// MSK with partial batch responses; a record is named by its topic.
    Kafka,
}

impl Trigger {
    fn binary(self) -> &'static str {
        match self {
            Trigger::Sqs => env!("CARGO_BIN_EXE_sqs-handler"),
            Trigger::Kafka => env!("CARGO_BIN_EXE_kafka-handler"),
        }
    }

    fn spawn(self, bed: &Bed, extra: &[(&str, &str)]) -> HandlerProcess {
        let mut env = extra.to_vec();
        if let Trigger::Kafka = self {
            env.push(("TERRA_KAFKA_PARTIAL_BATCH", "true"));
        }
        HandlerProcess::spawn(self.binary(), &bed.env(&env))
    }

    /// An invocation of one record named `id`, pointing at `url`.
    fn event(self, id: &str, url: &str, sent_at_ms: u64) -> Value {
        match self {
            Trigger::Sqs => json!({"Records": [sqs_record(id, &pointer(url), sent_at_ms)]}),
            Trigger::Kafka => kafka_event(
                KafkaSource::Msk,
                &[KafkaRecord {
                    topic: id.to_owned(),
                    partition: 0,
                    offset: 0,
                    value: base64(&pointer(url)),
                    timestamp_ms: sent_at_ms,
                }],
            ),
        }
    }

    fn failed(self, result: &InvocationResult, handler: &HandlerProcess) -> BTreeSet<String> {
        match self {
            Trigger::Sqs => failed_ids(result),
            Trigger::Kafka => {
                let InvocationResult::Response(response) = result else {
                    panic!("a batch response, got {result:?}:\n{}", handler.output());
                };
                response["batchItemFailures"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{response}"))
                    .iter()
                    .map(|failure| {
                        let partition = failure["itemIdentifier"]["partition"]
                            .as_str()
                            .unwrap_or_else(|| panic!("{failure}"));
                        partition.trim_end_matches("-0").to_owned()
                    })
                    .collect()
            }
        }
    }
}

/// Waits until the payload server has had a request for `path`.
async fn first_request_to(bed: &Bed, path: &str, handler: &HandlerProcess) {
    let waiting = Instant::now();
    while bed.payloads.hits(path) == 0 {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "{path} was never asked for:\n{}",
            handler.output()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn archived(bed: &Bed) -> usize {
    bed.moto.objects(&bed.bucket).await.len()
}

/// A record stuck in one invocation holds up no other, and each invocation
/// ends by its own deadline: the others are answered while the stuck one is
/// still under way, and it is answered, its record deferred, before its
/// deadline.
pub async fn a_stuck_record_holds_up_no_other_invocation(trigger: Trigger) {
    let bed = Bed::start("terra-managed-instances").await;
    let p = &bed.payloads;
    let stuck_url = p.route(
        "/payloads/stuck.json",
        Behaviour::Delay(
            Duration::from_secs(60),
            fixture("openapi_daily.json").into(),
        ),
    );
    let handler = trigger.spawn(
        &bed,
        &[
            ("AWS_LAMBDA_MAX_CONCURRENCY", "4"),
            ("TERRA_FETCH_TIMEOUT_SECS", "120"),
        ],
    );
    let now = now_ms();
    let others: Vec<Value> = ["sleep", "activity", "body"]
        .iter()
        .map(|kind| {
            let url = p.route(
                &format!("/payloads/{kind}.json"),
                Behaviour::Ok(fixture(&format!("openapi_{kind}.json"))),
            );
            trigger.event(&format!("m-{kind}"), &url, now)
        })
        .collect();

    let started = Instant::now();
    let stuck_deadline = Duration::from_secs(8);
    let stuck = async {
        let event = trigger.event("m-stuck", &stuck_url, now);
        let result = bed.runtime.invoke(&event, stuck_deadline).await;
        (result, started.elapsed())
    };
    let the_others = async {
        first_request_to(&bed, "/payloads/stuck.json", &handler).await;
        let invocations = others
            .iter()
            .map(|event| bed.runtime.invoke(event, Duration::from_secs(30)));
        (
            futures::future::join_all(invocations).await,
            started.elapsed(),
        )
    };
    let ((stuck_result, stuck_answered), (results, others_answered)) =
        tokio::join!(stuck, the_others);

    for result in &results {
        assert_eq!(trigger.failed(result, &handler), BTreeSet::new());
    }
    assert!(
        others_answered < stuck_answered,
        "the others waited for the stuck invocation ({others_answered:?}, it at \
         {stuck_answered:?}):\n{}",
        handler.output()
    );
    assert_eq!(
        trigger.failed(&stuck_result, &handler),
        BTreeSet::from(["m-stuck".to_owned()])
    );
    assert!(
        stuck_answered < stuck_deadline,
        "answered after its deadline"
    );
    assert!(handler.output().contains(r#""class":"deferred""#));
    assert_eq!(archived(&bed).await, 3);
}

/// Every invocation in the process draws on one memory budget, sized for
/// the function's memory: a payload holding all of it keeps the records of
/// another invocation waiting until it is given back (here, when its
/// invocation's deadline defers it), and they are written then.
pub async fn invocations_draw_on_one_memory_budget(trigger: Trigger) {
    let bed = Bed::start("terra-managed-instances-budget").await;
    let p = &bed.payloads;
    // No announced length: it reserves the most a payload may hold, which is
    // more than this budget, so it holds all of it for as long as it runs.
    let hog_url = p.route(
        "/payloads/endless.json",
        Behaviour::Trickle(Duration::from_millis(100)),
    );
    let small_url = p.route(
        "/payloads/sleep.json",
        Behaviour::Ok(fixture("openapi_sleep.json")),
    );
    let handler = trigger.spawn(
        &bed,
        &[
            ("AWS_LAMBDA_MAX_CONCURRENCY", "2"),
            ("TERRA_MEMORY_BUDGET_MB", "1"),
            ("TERRA_FETCH_TIMEOUT_SECS", "120"),
        ],
    );
    let now = now_ms();

    let started = Instant::now();
    let hog_deadline = Duration::from_secs(5);
    let hog = async {
        let event = trigger.event("m-endless", &hog_url, now);
        let result = bed.runtime.invoke(&event, hog_deadline).await;
        (result, started.elapsed())
    };
    let small = async {
        first_request_to(&bed, "/payloads/endless.json", &handler).await;
        // Its headers are out at once; the reservation follows them.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let event = trigger.event("m-small", &small_url, now);
        let result = bed.runtime.invoke(&event, Duration::from_secs(30)).await;
        let archived_by_then = archived(&bed).await;
        (result, started.elapsed(), archived_by_then)
    };
    let ((hog_result, hog_answered), (small_result, small_answered, archived_by_then)) =
        tokio::join!(hog, small);

    assert_eq!(
        trigger.failed(&hog_result, &handler),
        BTreeSet::from(["m-endless".to_owned()])
    );
    assert!(hog_answered < hog_deadline, "answered after its deadline");
    assert_eq!(
        trigger.failed(&small_result, &handler),
        BTreeSet::new(),
        "{}",
        handler.output()
    );
    assert!(
        small_answered > hog_answered,
        "the small record did not wait for the budget ({small_answered:?}, the \
         endless one given back at {hog_answered:?}):\n{}",
        handler.output()
    );
    assert_eq!(archived_by_then, 1);
}
