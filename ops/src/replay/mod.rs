//! The operator's replays (`src/bin/replay.rs`, never deployed).
//!
//! `replay archive` (here) projects the archive into DynamoDB again, for a
//! new table, after a change of the item model, or after an outage. Every
//! write goes through the same version guard as the handlers (the object's
//! `terra-sent-at`), so an archived payload older than what the table holds
//! changes nothing, and a replay is safe to run twice. Progress is kept in a
//! state file after every object, in key order, so a run that is stopped
//! resumes after the last object all of whose predecessors were done.
//!
//! `replay archive --erasure-index` (`erasure_index.rs`) writes the erasure
//! index instead of the table, for objects archived before it existed.
//!
//! `replay dead-letters` (`dead_letters.rs`) completes dead-lettered
//! messages from the archive.

mod dead_letters;
mod erasure_index;
mod state;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use time::Date;

use terra_sink::outcome::{FailureClass, RecordFailure, Retry};
use terra_sink::pipeline::inspect_off_the_workers;
use terra_sink::sink::{
    ArchiveName, ArchiveRead, ArchivedAbout, ArchivedObject, Delivery, S3Archive, Sink, SinkError,
};

pub use dead_letters::{DeadLetterQueueError, DeadLetterReplay, DeadLetterSummary, LeftMessage};
pub use erasure_index::ErasureIndexBackfill;
pub use state::{FailedKey, ReplayRun, StateError, StateFile};

/// What a replay selects and how it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSelection {
    /// First and last UTC send date, inclusive.
    pub from: Date,
    pub to: Date,
    /// Only payloads of this `type`.
    pub event_type: Option<String>,
    /// Only payloads of this Terra `user_id`.
    pub user_id: Option<String>,
}

impl ArchiveSelection {
    fn wants(&self, about: &ArchivedAbout) -> bool {
        let matches = |wanted: &Option<String>, found: &Option<String>| {
            wanted.as_ref().is_none_or(|w| found.as_ref() == Some(w))
        };
        matches(&self.event_type, &about.event_type) && matches(&self.user_id, &about.user_id)
    }

    fn dates(&self) -> impl Iterator<Item = Date> + '_ {
        std::iter::successors(Some(self.from), |d| d.next_day()).take_while(|d| *d <= self.to)
    }
}

/// What a replay did, this run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    /// Objects listed in the selected dates (after the resume point).
    pub objects_listed: u64,
    /// Objects whose payload was read.
    pub objects_read: u64,
    /// Objects left alone: their type or user was not selected, or they
    /// were deleted after the listing.
    pub objects_not_selected: u64,
    pub items_written: u64,
    /// Items not written because the table holds a newer version.
    pub items_stale: u64,
    /// Failed objects by class and retry (`sink/transient`, `invalid/permanent`),
    /// those of earlier runs this one resumed included.
    pub failures: BTreeMap<String, u64>,
    /// The keys that failed, to look at or replay again (earlier runs'
    /// included).
    pub failed_keys: Vec<String>,
    /// Where this run started, when it resumed an earlier one.
    pub resumed_after: Option<String>,
    /// Of `failed_keys`, those the earlier runs failed.
    #[serde(skip)]
    failed_before_resuming: u64,
    pub dry_run: bool,
}

impl ReplaySummary {
    /// Objects this run has done.
    pub fn objects_done(&self) -> u64 {
        self.objects_read + self.objects_not_selected + self.failed_keys.len() as u64
            - self.failed_before_resuming
    }

    fn count_failure(&mut self, key: &str, failure: &str) {
        *self.failures.entry(failure.to_owned()).or_default() += 1;
        self.failed_keys.push(key.to_owned());
    }
}

/// One object's result.
enum ObjectOutcome {
    Written { items: usize, stale: usize },
    Read,
    NotSelected,
    Failed { class: FailureClass, retry: Retry },
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("listing the archive: {0}")]
    Listing(SinkError),
    #[error(transparent)]
    State(#[from] StateError),
}

pub struct ArchiveReplay {
    archive: S3Archive,
    table: Arc<dyn Sink>,
    concurrency: usize,
    /// `TERRA_MAX_PAYLOAD_BYTES`: a larger archived payload (copied in from
    /// a source bucket) is not read, as the handlers would not fetch it.
    max_payload_bytes: u64,
    dry_run: bool,
}

impl ArchiveReplay {
    pub fn new(
        archive: S3Archive,
        table: Arc<dyn Sink>,
        concurrency: usize,
        max_payload_bytes: u64,
        dry_run: bool,
    ) -> Self {
        Self {
            archive,
            table,
            concurrency: concurrency.max(1),
            max_payload_bytes,
            dry_run,
        }
    }

    /// Every selected object after `state`'s resume point, projected in key
    /// order with up to `concurrency` at once; `progress` sees the summary
    /// after each object and the total first. The state file is removed
    /// once the run is complete.
    pub async fn run(
        &self,
        selection: &ArchiveSelection,
        state: &mut StateFile,
        mut progress: impl FnMut(&ReplaySummary, u64),
    ) -> Result<ReplaySummary, ReplayError> {
        let resume_after = state.resume_after().map(str::to_owned);
        let mut summary = ReplaySummary {
            resumed_after: resume_after.clone(),
            dry_run: self.dry_run,
            ..ReplaySummary::default()
        };
        for earlier in state.earlier_failures() {
            summary.count_failure(&earlier.key, &earlier.failure);
            summary.failed_before_resuming += 1;
        }
        let keys = self
            .selected_keys(selection, resume_after.as_deref())
            .await?;
        let total = keys.len() as u64;
        summary.objects_listed = total;
        progress(&summary, total);

        let mut outcomes = futures::stream::iter(keys)
            .map(|key| async move {
                let outcome = self.replay_one(&key, selection).await;
                (key, outcome)
            })
            .buffered(self.concurrency);
        while let Some((key, outcome)) = outcomes.next().await {
            let mut failure = None;
            match outcome {
                ObjectOutcome::Written { items, stale } => {
                    summary.objects_read += 1;
                    summary.items_written += items as u64;
                    summary.items_stale += stale as u64;
                }
                ObjectOutcome::Read => summary.objects_read += 1,
                ObjectOutcome::NotSelected => summary.objects_not_selected += 1,
                ObjectOutcome::Failed { class, retry } => {
                    let how = format!("{class}/{retry}");
                    summary.count_failure(&key, &how);
                    failure = Some(how);
                }
            }
            state.completed_through(&key, failure.as_deref())?;
            progress(&summary, total);
        }
        state.finish()?;
        Ok(summary)
    }

    /// The keys of the selected dates, in key order (the `dt=` partitions
    /// sort by date), after `resume_after`.
    async fn selected_keys(
        &self,
        selection: &ArchiveSelection,
        resume_after: Option<&str>,
    ) -> Result<Vec<String>, ReplayError> {
        let prefix = self.archive.key_prefix();
        let days: Vec<String> = selection
            .dates()
            .map(|date| format!("{prefix}dt={date}/"))
            .filter(|day| resume_after.is_none_or(|after| !after_whole_day(after, day)))
            .collect();
        let listings = futures::stream::iter(days)
            .map(|day| async move {
                let start_after = resume_after.filter(|after| after.starts_with(&day));
                self.archive.keys_under(&day, start_after).await
            })
            .buffered(4)
            .try_collect::<Vec<_>>()
            .await
            .map_err(ReplayError::Listing)?;
        Ok(listings.into_iter().flatten().collect())
    }

    async fn replay_one(&self, key: &str, selection: &ArchiveSelection) -> ObjectOutcome {
        let failed = |failure: RecordFailure| {
            tracing::warn!(object = %key, error = %failure.message, "replay of an archived payload failed");
            ObjectOutcome::Failed {
                class: failure.class,
                retry: failure.retry,
            }
        };
        let archived = match self
            .archive
            .read_archived(key, |about| selection.wants(about), self.max_payload_bytes)
            .await
        {
            Ok(ArchiveRead::Payload(archived)) => archived,
            Ok(ArchiveRead::NotWanted | ArchiveRead::Gone) => return ObjectOutcome::NotSelected,
            Ok(ArchiveRead::TooLarge) => {
                return failed(RecordFailure::new(
                    FailureClass::Fetch,
                    Retry::Permanent,
                    format!(
                        "archived payload over TERRA_MAX_PAYLOAD_BYTES ({} bytes): not read",
                        self.max_payload_bytes
                    ),
                ));
            }
            Err(e) => return failed(e.into()),
        };
        let summary = match inspect_off_the_workers(&archived.payload).await {
            Ok(summary) => summary,
            Err(failure) => return failed(failure),
        };
        if self.dry_run {
            return ObjectOutcome::Read;
        }
        let delivery = Delivery {
            name: ArchiveName::of_key(self.archive.key_prefix(), key),
            sent_at_ms: archived.sent_at_ms,
            payload: archived.payload,
            summary,
            archived: Some(ArchivedObject {
                bucket: self.archive.bucket().to_owned(),
                key: key.to_owned(),
            }),
        };
        match self.table.write(&delivery).await {
            Ok(report) => ObjectOutcome::Written {
                items: report.items_written,
                stale: report.items_stale,
            },
            Err(e) => failed(e.into()),
        }
    }
}

/// Whether `after` (a key already done) lies beyond every key of `day`.
fn after_whole_day(after: &str, day: &str) -> bool {
    after > day && !after.starts_with(day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn a_resume_point_skips_earlier_days_and_starts_inside_its_own() {
        let day = "terra/dt=2026-07-02/";
        assert!(after_whole_day("terra/dt=2026-07-03/a.json", day));
        assert!(!after_whole_day("terra/dt=2026-07-02/a.json", day));
        assert!(!after_whole_day("terra/dt=2026-07-01/z.json", day));
    }

    #[test]
    fn the_selection_spans_its_dates_inclusively_and_filters_by_metadata() {
        let selection = ArchiveSelection {
            from: date!(2026 - 06 - 30),
            to: date!(2026 - 07 - 02),
            event_type: Some("daily".into()),
            user_id: None,
        };
        assert_eq!(
            selection.dates().map(|d| d.to_string()).collect::<Vec<_>>(),
            ["2026-06-30", "2026-07-01", "2026-07-02"]
        );
        let about = |t: &str| ArchivedAbout {
            event_type: Some(t.into()),
            user_id: Some("u".into()),
        };
        assert!(selection.wants(&about("daily")));
        assert!(!selection.wants(&about("sleep")));
        assert!(!selection.wants(&ArchivedAbout::default()));
    }
}
