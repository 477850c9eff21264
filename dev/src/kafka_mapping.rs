//! A local stand-in for Lambda's Kafka event source mapping, without a
//! broker: the topic is an in-memory log per partition, and what matters is
//! the mapping's contract. It invokes the function with batches from each
//! partition's committed offset; with `ReportBatchItemFailures` it resumes a
//! reported partition at the reported offset and commits the others, without
//! it an error retries the whole batch; after `max_retry_attempts` retries a
//! batch (or a record) goes to the on-failure destination, as Lambda does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::events::{KafkaRecord, KafkaSource, kafka_event};
use crate::runtime_api::{InvocationResult, RuntimeApi};

/// One record of the topic.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub partition: i64,
    pub offset: i64,
    pub value: String,
    pub timestamp_ms: u64,
}

#[derive(Debug, Clone)]
pub struct KafkaMappingSettings {
    pub topic: String,
    /// Records per partition per invocation.
    pub batch_size: usize,
    pub function_timeout: Duration,
    /// Whether the mapping has `ReportBatchItemFailures`.
    pub report_batch_item_failures: bool,
    /// Retries of a failing batch or record before it is discarded to the
    /// on-failure destination.
    pub max_retry_attempts: u32,
}

#[derive(Debug, Clone, Default)]
pub struct KafkaMappingStats {
    pub invocations: usize,
    pub failed_invocations: usize,
    /// `(partition, offset)` of the records the mapping gave up on.
    pub discarded: BTreeSet<(i64, i64)>,
}

/// Feeds `records` to the function until every partition is committed to its
/// end, or `give_up` has passed.
pub async fn run(
    runtime: &RuntimeApi,
    records: &[TopicRecord],
    settings: &KafkaMappingSettings,
    give_up: Duration,
) -> KafkaMappingStats {
    let mut partitions: BTreeMap<i64, Vec<&TopicRecord>> = BTreeMap::new();
    for record in records {
        partitions.entry(record.partition).or_default().push(record);
    }
    let mut committed: BTreeMap<i64, usize> = partitions.keys().map(|p| (*p, 0)).collect();
    let mut retries: BTreeMap<(i64, usize), u32> = BTreeMap::new();
    let mut stats = KafkaMappingStats::default();
    let started = Instant::now();
    while started.elapsed() < give_up {
        let batch: BTreeMap<i64, &[&TopicRecord]> = partitions
            .iter()
            .filter_map(|(partition, log)| {
                let from = committed[partition];
                (from < log.len()).then(|| {
                    let to = (from + settings.batch_size).min(log.len());
                    (*partition, &log[from..to])
                })
            })
            .collect();
        if batch.is_empty() {
            break;
        }
        let result = runtime
            .try_invoke(&event(&settings.topic, &batch), settings.function_timeout)
            .await;
        stats.invocations += 1;
        let resume_at = resume_points(&settings.topic, &batch, result.as_ref(), settings);
        for (partition, records) in &batch {
            let start = committed[partition];
            let end = start + records.len();
            match resume_at.as_ref().map(|r| r.get(partition)) {
                // Success for this partition.
                Some(None) => {
                    committed.insert(*partition, end);
                }
                // Resume at a reported offset.
                Some(Some(&offset)) => {
                    let index = partitions[partition]
                        .iter()
                        .position(|r| r.offset == offset)
                        .unwrap_or(start);
                    committed.insert(*partition, index);
                    let tries = retries.entry((*partition, index)).or_default();
                    *tries += 1;
                    if *tries > settings.max_retry_attempts {
                        stats.discarded.insert((*partition, offset));
                        committed.insert(*partition, index + 1);
                    }
                }
                // The whole batch failed.
                None => {
                    let tries = retries.entry((*partition, start)).or_default();
                    *tries += 1;
                    if *tries > settings.max_retry_attempts {
                        stats
                            .discarded
                            .extend(records.iter().map(|r| (r.partition, r.offset)));
                        committed.insert(*partition, end);
                    }
                }
            }
        }
        if resume_at.is_none() {
            stats.failed_invocations += 1;
        }
    }
    stats
}

/// Per partition of the batch, where to resume (absent: all done); `None`
/// when the whole batch failed: an error, a timeout, an answer the mapping
/// cannot use, or a partial answer without `ReportBatchItemFailures`... which
/// Lambda then ignores, counting the batch as done.
fn resume_points(
    topic: &str,
    batch: &BTreeMap<i64, &[&TopicRecord]>,
    result: Option<&InvocationResult>,
    settings: &KafkaMappingSettings,
) -> Option<BTreeMap<i64, i64>> {
    let Some(InvocationResult::Response(response)) = result else {
        return None;
    };
    if !settings.report_batch_item_failures {
        return Some(BTreeMap::new());
    }
    let mut resume = BTreeMap::new();
    let Some(failures) = response.get("batchItemFailures") else {
        return Some(resume);
    };
    for failure in failures.as_array()? {
        let identifier = failure.get("itemIdentifier")?;
        let name = identifier.get("partition")?.as_str()?;
        let offset = identifier.get("offset")?.as_i64()?;
        let partition: i64 = name.strip_prefix(&format!("{topic}-"))?.parse().ok()?;
        let records = batch.get(&partition)?;
        if !records.iter().any(|r| r.offset == offset) {
            return None;
        }
        let lowest = resume.entry(partition).or_insert(offset);
        *lowest = (*lowest).min(offset);
    }
    Some(resume)
}

/// The event an MSK mapping builds.
fn event(topic: &str, batch: &BTreeMap<i64, &[&TopicRecord]>) -> Value {
    let records: Vec<KafkaRecord> = batch
        .iter()
        .flat_map(|(partition, records)| {
            records.iter().map(move |r| KafkaRecord {
                topic: topic.to_owned(),
                partition: *partition,
                offset: r.offset,
                value: r.value.clone(),
                timestamp_ms: r.timestamp_ms,
            })
        })
        .collect();
    kafka_event(KafkaSource::Msk, &records)
}
