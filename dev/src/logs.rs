//! Reading the handlers' JSON log lines.

use std::collections::BTreeMap;

use serde_json::Value;

#[path = "../../src/log_events.rs"]
mod log_events;
pub use log_events::{BATCH_DONE, RECORD_FAILED, RECORD_WRITTEN};

/// How a record failed, as its [`RECORD_FAILED`] log line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedFailure {
    pub class: String,
    pub retry: String,
}

/// The handlers' log lines about a call IAM refused: each names a permission
/// the function's role lacks, even where the failure changed no outcome.
pub fn refused_by_iam(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|line| line.contains("AccessDenied") || line.contains("not authorized"))
        .map(str::to_owned)
        .collect()
}

/// The last `record failed` line of each record id (SQS messageId, Kafka
/// `topic-partition@offset`). The id is a field of the line, or of the span
/// the line was logged in.
pub fn record_failures(output: &str) -> BTreeMap<String, LoggedFailure> {
    let mut last = BTreeMap::new();
    for line in output.lines() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let fields = &entry["fields"];
        if fields["message"] != RECORD_FAILED {
            continue;
        }
        let id = fields["id"]
            .as_str()
            .or_else(|| entry["span"]["id"].as_str());
        if let (Some(id), Some(class), Some(retry)) =
            (id, fields["class"].as_str(), fields["retry"].as_str())
        {
            last.insert(
                id.to_owned(),
                LoggedFailure {
                    class: class.to_owned(),
                    retry: retry.to_owned(),
                },
            );
        }
    }
    last
}

/// The sum of one EMF metric over every invocation's metrics document the
/// handlers printed (not the per-`Type` ones, which count the same records
/// again by type).
pub fn metric_total(output: &str, metric: &str) -> u64 {
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|doc| doc.get("_aws").is_some() && doc.get("Type").is_none())
        .filter_map(|doc| doc.get(metric)?.as_f64())
        .map(|n| n as u64)
        .sum()
}
