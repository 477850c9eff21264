//! The answer a Kafka event source mapping understands: with
//! `ReportBatchItemFailures`, where each partition resumes; without it, an
//! error that retries the whole batch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{DecodedBatch, KafkaRecord};
use crate::outcome::{FailureClass, Outcome, RecordFailure};

/// The response a Kafka event source mapping with `ReportBatchItemFailures`
/// understands: it resumes each listed partition from the listed offset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaBatchResponse {
    pub batch_item_failures: Vec<KafkaBatchItemFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaBatchItemFailure {
    pub item_identifier: KafkaItemIdentifier,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaItemIdentifier {
    /// `"<topic>-<partition>"`, as the event names the partition.
    pub partition: String,
    pub offset: i64,
}

/// Which response the function gives (`TERRA_KAFKA_PARTIAL_BATCH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    /// Report the lowest failed offset of each partition; needs
    /// `ReportBatchItemFailures` on the mapping.
    PartialBatch,
    /// Fail the invocation when any record failed, so the whole batch is
    /// retried (the mapping ignores a partial response without
    /// `ReportBatchItemFailures`, which would lose the failed records).
    WholeBatch,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaResponseError {
    /// The batch must be retried as a whole: some records were not written.
    #[error("{failed} of {received} records failed ({by_class}); retrying the whole batch")]
    BatchFailed {
        failed: usize,
        received: usize,
        by_class: String,
    },
    /// A failed record without a partition and offset cannot be reported on
    /// its own, so the whole batch has to be retried instead.
    #[error("record {log_id} failed but has no offset to report")]
    MissingOffset { log_id: String },
    #[error("{outcomes} outcomes for {records} records")]
    Mismatch { records: usize, outcomes: usize },
}

/// The answer to Lambda. In [`ResponseMode::PartialBatch`] each partition with
/// a failure resumes from its lowest failed offset, so nothing after it is
/// skipped; in [`ResponseMode::WholeBatch`] any failure is an error.
pub fn response(
    batch: &DecodedBatch,
    outcomes: &[Outcome],
    mode: ResponseMode,
) -> Result<KafkaBatchResponse, KafkaResponseError> {
    if batch.records.len() != outcomes.len() {
        return Err(KafkaResponseError::Mismatch {
            records: batch.records.len(),
            outcomes: outcomes.len(),
        });
    }
    let failed: Vec<(&KafkaRecord, &RecordFailure)> = batch
        .records
        .iter()
        .zip(outcomes)
        .filter_map(|(record, outcome)| Some((record, outcome.failure()?)))
        .collect();
    if failed.is_empty() {
        return Ok(KafkaBatchResponse::default());
    }
    if mode == ResponseMode::WholeBatch {
        let mut by_class: BTreeMap<FailureClass, usize> = BTreeMap::new();
        for (_, failure) in &failed {
            *by_class.entry(failure.class).or_default() += 1;
        }
        return Err(KafkaResponseError::BatchFailed {
            failed: failed.len(),
            received: outcomes.len(),
            by_class: by_class
                .iter()
                .map(|(class, n)| format!("{class}: {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut lowest: BTreeMap<&str, i64> = BTreeMap::new();
    for (index, (record, _)) in failed.iter().enumerate() {
        let offset = record
            .offset
            .ok_or_else(|| KafkaResponseError::MissingOffset {
                log_id: record.log_id(index),
            })?;
        lowest
            .entry(&record.partition_key)
            .and_modify(|known| *known = (*known).min(offset))
            .or_insert(offset);
    }
    Ok(KafkaBatchResponse {
        batch_item_failures: lowest
            .into_iter()
            .map(|(partition, offset)| KafkaBatchItemFailure {
                item_identifier: KafkaItemIdentifier {
                    partition: partition.to_owned(),
                    offset,
                },
            })
            .collect(),
    })
}

/// For each record, whether it is done with once set aside now: the
/// mapping will not deliver it again. A failure that stays (one not set
/// aside) brings back the whole batch in [`ResponseMode::WholeBatch`] (and
/// when it has no offset to report), and in [`ResponseMode::PartialBatch`]
/// its partition from its offset on. A poison record that comes back would
/// be quarantined again on every retry: it waits, failed, until nothing
/// holds it back, and is quarantined once.
pub fn settled_once_set_aside(
    batch: &DecodedBatch,
    outcomes: &[Outcome],
    mode: ResponseMode,
    stays_failed: impl Fn(&RecordFailure) -> bool,
) -> Vec<bool> {
    let staying: Vec<&KafkaRecord> = batch
        .records
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| outcome.failure().is_some_and(&stays_failed))
        .map(|(record, _)| record)
        .collect();
    let whole_batch_again = !staying.is_empty()
        && (mode == ResponseMode::WholeBatch || staying.iter().any(|r| r.offset.is_none()));
    let mut resumes_at: BTreeMap<&str, i64> = BTreeMap::new();
    for record in &staying {
        if let Some(offset) = record.offset {
            resumes_at
                .entry(&record.partition_key)
                .and_modify(|known| *known = (*known).min(offset))
                .or_insert(offset);
        }
    }
    batch
        .records
        .iter()
        .map(|record| {
            if whole_batch_again {
                return false;
            }
            match (resumes_at.get(record.partition_key.as_str()), record.offset) {
                (None, _) => true,
                (Some(resume), Some(offset)) => offset < *resume,
                (Some(_), None) => false,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::decode;
    use super::super::tests::{event, record};
    use super::*;
    use crate::outcome::Retry;
    use crate::outcome::examples::{failed, written};
    use serde_json::json;

    #[test]
    fn partial_response_names_the_lowest_failed_offset_per_partition() {
        let (batch, _) = decode(&event(json!({
            "a-0": [record("a", 0, 10, "e30="), record("a", 0, 11, "e30="), record("a", 0, 12, "e30=")],
            "a-1": [record("a", 1, 20, "e30="), record("a", 1, 21, "e30=")],
            "b-0": [record("b", 0, 5, "e30=")]
        })));
        let outcomes = [
            written(),
            failed(),
            failed(),
            written(),
            written(),
            Outcome::Failed(RecordFailure::new(
                FailureClass::Sink,
                Retry::Transient,
                "x",
            )),
        ];
        let response = response(&batch, &outcomes, ResponseMode::PartialBatch).expect("ok");
        assert_eq!(
            serde_json::to_value(&response).expect("serializes"),
            json!({"batchItemFailures": [
                {"itemIdentifier": {"partition": "a-0", "offset": 11}},
                {"itemIdentifier": {"partition": "b-0", "offset": 5}}
            ]})
        );
    }

    #[test]
    fn whole_batch_mode_fails_the_invocation_on_any_failure() {
        let (batch, _) = decode(&event(json!({
            "a-0": [record("a", 0, 1, "e30="), record("a", 0, 2, "e30=")]
        })));
        let error = response(&batch, &[written(), failed()], ResponseMode::WholeBatch)
            .expect_err("a failure fails the batch");
        assert_eq!(
            error.to_string(),
            "1 of 2 records failed (fetch: 1); retrying the whole batch"
        );
        let quarantined = Outcome::Quarantined(RecordFailure::new(
            FailureClass::Expired,
            Retry::Permanent,
            "late",
        ));
        assert_eq!(
            response(&batch, &[written(), quarantined], ResponseMode::WholeBatch),
            Ok(KafkaBatchResponse::default())
        );
    }

    #[test]
    fn poison_is_settled_only_where_no_staying_failure_brings_it_back() {
        let (batch, _) = decode(&event(json!({
            "a-0": [record("a", 0, 10, "e30="), record("a", 0, 11, "e30="), record("a", 0, 12, "e30=")],
            "b-0": [record("b", 0, 5, "e30=")]
        })));
        let poison = Outcome::Failed(RecordFailure::new(
            FailureClass::Invalid,
            Retry::Permanent,
            "x",
        ));
        // a-0: poison, then a transient failure, then poison again.
        let outcomes = [poison.clone(), failed(), poison.clone(), poison.clone()];
        let stays = |failure: &RecordFailure| !failure.is_poison();
        assert_eq!(
            settled_once_set_aside(&batch, &outcomes, ResponseMode::PartialBatch, stays),
            [true, false, false, true],
            "a-0 resumes at 11: offset 12 comes back"
        );
        assert_eq!(
            settled_once_set_aside(&batch, &outcomes, ResponseMode::WholeBatch, stays),
            [false; 4],
            "the whole batch comes back"
        );
        let only_poison = [poison.clone(), written(), poison.clone(), written()];
        for mode in [ResponseMode::PartialBatch, ResponseMode::WholeBatch] {
            assert_eq!(
                settled_once_set_aside(&batch, &only_poison, mode, stays),
                [true; 4],
                "{mode:?}"
            );
        }
    }

    #[test]
    fn a_failure_without_offset_fails_the_whole_batch() {
        let (batch, _) = decode(&event(json!({
            "a-0": [{"topic": "a", "partition": 0, "value": "e30=", "timestamp": 1}]
        })));
        assert!(matches!(
            response(&batch, &[failed()], ResponseMode::PartialBatch),
            Err(KafkaResponseError::MissingOffset { .. })
        ));
    }
}
