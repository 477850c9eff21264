//! `kafka-handler` behind the local Kafka mapping, against moto and the Terra
//! simulator: the Kafka side of the demo flow, for the fault scenarios. Every
//! record must end archived or quarantined, as its kind predicts.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::deployed::Deployed;
use crate::events;
use crate::fault_proxy::{Fault, FaultProxy, FaultSchedule};
use crate::kafka_mapping::{self, KafkaMappingSettings, TopicRecord};
use crate::local_stack::LocalStack;
use crate::moto::Moto;
use crate::runtime_api::{HandlerPool, RuntimeApi};
use crate::terra_simulator::{Kind, TerraSimulator};

/// Faults for a Kafka scenario besides the payload server's.
#[derive(Debug, Clone, Default)]
pub struct KafkaFaults {
    /// S3 and SQS (quarantine) traffic through the fault proxy.
    pub stores: bool,
    /// Kill the handler this long after the start, and start a new one.
    pub kill_after: Option<Duration>,
    /// The payload host answers 500 to everything for this long from the
    /// start.
    pub host_outage: Option<Duration>,
    /// The template's deployment, durations scaled down by [`KafkaScenario::time_scale`]:
    /// its function timeout, Kafka batch size and retry limit, its function
    /// environment, and a URL lifetime scaled the same way.
    pub production_ratios: bool,
    /// Also in the stack `kafka/template.yaml` creates for self-managed Kafka,
    /// deployed into moto with IAM enforced: the function's environment and
    /// role, its bucket, table and quarantine queue, and the mapping's
    /// settings as the template would create it (moto cannot).
    pub in_the_stack: bool,
}

#[derive(Debug, Clone)]
pub struct KafkaScenario {
    /// The compiled `kafka-handler`.
    pub handler_binary: String,
    /// The function answers with partial batch responses (and the mapping
    /// has `ReportBatchItemFailures`), or fails whole batches.
    pub partial_batch: bool,
    pub faults: KafkaFaults,
    /// What the template's durations are divided by, at production ratios.
    pub time_scale: u32,
}

/// How a Kafka scenario ended.
#[derive(Debug)]
pub struct KafkaReport {
    pub name: String,
    pub sent: usize,
    pub archived: usize,
    /// Records set aside: quarantined by the function, or discarded by the
    /// mapping after its retries.
    pub set_aside: usize,
    /// Deliverable records not archived, and undeliverable ones neither
    /// archived nor set aside.
    pub lost: usize,
    /// Records both archived and set aside.
    pub duplicates: usize,
    /// Records that did not end as their kind predicts.
    pub unexpected: Vec<String>,
    /// Records Terra sent with URLs already expired: the ones to quarantine.
    pub expired_sent: usize,
    pub invocations: usize,
    pub failed_invocations: usize,
    /// Records the mapping gave up on (its retry limit), not the function.
    pub discarded_by_the_mapping: usize,
    /// Faults the proxy injected into S3 and SQS traffic.
    pub store_faults_injected: usize,
    /// Everything the handlers printed.
    pub output: String,
}

impl KafkaReport {
    pub fn figures(&self) -> String {
        format!(
            "sent {} / delivered {} / set aside {} / lost {} / duplicates {} ({} invocations, {} failed, {} discarded by the mapping)",
            self.sent,
            self.archived,
            self.set_aside,
            self.lost,
            self.duplicates,
            self.invocations,
            self.failed_invocations,
            self.discarded_by_the_mapping
        )
    }
}

/// Sends 24 records over three partitions (good, host outage, expired,
/// flaky, reset, large, short body) and runs the mapping until they are done.
pub async fn run(scenario: &KafkaScenario) -> KafkaReport {
    let mut moto = Moto::start().await;
    let stack = if scenario.faults.in_the_stack {
        let settings = format!("KafkaPartialBatch={}", scenario.partial_batch);
        let parameters = [
            ("KafkaBrokers", "b-1.kafka.internal:9096"),
            (
                "KafkaSecretArn",
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:terra-kafka-AbCdEf",
            ),
            ("Settings", settings.as_str()),
        ];
        Some(LocalStack::deploy_for(&mut moto, "KafkaHandlerFunction", &parameters).await)
    } else {
        None
    };
    let (bucket, quarantine) = match &stack {
        Some(stack) => (
            stack
                .variable("TERRA_S3_BUCKET")
                .expect("a bucket")
                .to_owned(),
            stack
                .variable("TERRA_QUARANTINE_QUEUE_URL")
                .expect("a quarantine queue")
                .to_owned(),
        ),
        None => {
            moto.create_bucket(super::BUCKET).await;
            (
                super::BUCKET.to_owned(),
                moto.create_queue("terra-kafka-quarantine").await,
            )
        }
    };
    let mut terra = TerraSimulator::start().await;
    let deployed = Deployed::from_template().scaled_down(scenario.time_scale);
    if scenario.faults.production_ratios || scenario.faults.in_the_stack {
        terra.url_lifetime = deployed.url_lifetime;
    }
    if let Some(lasting) = scenario.faults.host_outage {
        terra.payloads.outage(tokio::time::Instant::now(), lasting);
    }
    let runtime = RuntimeApi::start().await;
    let mix = [
        Kind::Good,
        Kind::Outage,
        Kind::Expired,
        Kind::Flaky,
        Kind::Reset,
        Kind::Large,
        Kind::ShortBody,
        Kind::Good,
    ];
    let now = crate::now_ms();
    let mut records = Vec::new();
    let mut kinds = Vec::new();
    for n in 0..24 {
        let kind = mix[n % mix.len()];
        let (pointer, _) = terra.message(n, kind);
        records.push(TopicRecord {
            partition: (n % 3) as i64,
            offset: 100 + (n / 3) as i64,
            value: events::base64(&pointer),
            timestamp_ms: now,
        });
        kinds.push((n, kind));
    }
    let proxy = if scenario.faults.stores {
        Some(
            FaultProxy::start(
                &moto.endpoint,
                FaultSchedule {
                    every: 4,
                    faults: vec![Fault::Throttle, Fault::DropAfterForward, Fault::Internal],
                },
            )
            .await,
        )
    } else {
        None
    };
    let endpoint = proxy
        .as_ref()
        .map_or(moto.endpoint.as_str(), |p| p.endpoint.as_str());
    let env = if let Some(stack) = &stack {
        stack.handler_environment(runtime.addr, endpoint)
    } else {
        let mut env = if scenario.faults.production_ratios {
            let mut env = super::archive_function_env(runtime.addr, endpoint);
            env.extend(deployed.loopback_environment());
            env
        } else {
            super::local_function_env(runtime.addr, endpoint)
        };
        env.push(("TERRA_QUARANTINE_QUEUE_URL".into(), quarantine.clone()));
        env.push((
            "TERRA_KAFKA_PARTIAL_BATCH".into(),
            scenario.partial_batch.to_string(),
        ));
        env
    };
    let handlers = HandlerPool::spawn(&scenario.handler_binary, &env, 1);
    let chaos = async {
        if let Some(after) = scenario.faults.kill_after {
            tokio::time::sleep(after).await;
            handlers.kill_and_replace_one();
        }
    };
    let settings = if let Some(stack) = &stack {
        let mapping = stack.kafka_mapping.clone().expect("the Kafka mapping");
        assert_eq!(
            mapping.report_batch_item_failures, scenario.partial_batch,
            "the stack wires KafkaPartialBatch to the mapping"
        );
        KafkaMappingSettings {
            topic: mapping.topic,
            batch_size: mapping.batch_size,
            function_timeout: stack.function.timeout / scenario.time_scale,
            report_batch_item_failures: mapping.report_batch_item_failures,
            max_retry_attempts: mapping.maximum_retry_attempts.unwrap_or(u32::MAX),
        }
    } else if scenario.faults.production_ratios {
        KafkaMappingSettings {
            topic: "terra-events".into(),
            batch_size: deployed.kafka_batch_size,
            function_timeout: deployed.function_timeout,
            report_batch_item_failures: scenario.partial_batch,
            // Without partial batch responses the mapping retries until the
            // record leaves the topic.
            max_retry_attempts: if scenario.partial_batch {
                deployed.kafka_maximum_retry_attempts
            } else {
                u32::MAX
            },
        }
    } else {
        KafkaMappingSettings {
            topic: "terra-events".into(),
            batch_size: 4,
            function_timeout: Duration::from_secs(5),
            report_batch_item_failures: scenario.partial_batch,
            max_retry_attempts: 10,
        }
    };
    let (stats, ()) = tokio::join!(
        kafka_mapping::run(&runtime, &records, &settings, Duration::from_secs(240)),
        chaos
    );

    let archived: BTreeSet<String> = moto
        .objects(&bucket)
        .await
        .into_iter()
        .map(|o| o.key)
        .collect();
    let mut set_aside: BTreeSet<(i64, i64)> = stats.discarded.clone();
    for letter in moto.drain(&quarantine).await {
        let body: serde_json::Value =
            serde_json::from_str(letter.body().expect("body")).expect("JSON letter");
        set_aside.insert((
            body["partition"].as_i64().expect("partition"),
            body["offset"].as_i64().expect("offset"),
        ));
    }
    let (mut lost, mut duplicates, mut unexpected) = (0, 0, Vec::new());
    for ((n, kind), record) in kinds.iter().zip(&records) {
        let is_archived = archived
            .iter()
            .any(|key| key.ends_with(&format!("/sim-{n:04}-{}.json", kind.as_str())));
        let is_set_aside = set_aside.contains(&(record.partition, record.offset));
        // A deliverable record that was set aside is lost all the same.
        lost += usize::from(!is_archived && (kind.deliverable() || !is_set_aside));
        duplicates += usize::from(is_archived && is_set_aside);
        if is_archived != kind.deliverable() {
            unexpected.push(format!("{n} ({})", kind.as_str()));
        }
    }
    let name = format!(
        "kafka, {} batch{}{}{}{}{}",
        if scenario.partial_batch {
            "partial"
        } else {
            "whole"
        },
        if scenario.faults.stores {
            ", S3/SQS faults"
        } else {
            ""
        },
        if scenario.faults.kill_after.is_some() {
            ", handler killed"
        } else {
            ""
        },
        if scenario.faults.host_outage.is_some() {
            ", payload host outage"
        } else {
            ""
        },
        if scenario.faults.production_ratios {
            ", production ratios"
        } else {
            ""
        },
        if scenario.faults.in_the_stack {
            ", in the stack"
        } else {
            ""
        },
    );
    let output = handlers.output();
    KafkaReport {
        name,
        sent: records.len(),
        archived: archived.len(),
        set_aside: set_aside.len(),
        lost,
        duplicates,
        unexpected,
        expired_sent: kinds.iter().filter(|(_, k)| *k == Kind::Expired).count(),
        invocations: stats.invocations,
        failed_invocations: stats.failed_invocations,
        discarded_by_the_mapping: stats.discarded.len(),
        store_faults_injected: proxy.as_ref().map_or(0, |p| p.injected()),
        output,
    }
}
