//! Reading the handlers' JSON log lines.

use std::collections::{BTreeMap, BTreeSet};

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

/// Lines about records, gathered by one key: a record id or Terra's
/// `payload_reference`.
#[derive(Debug, Clone, Default)]
pub struct Gathered {
    /// The record ids (SQS messageId, Kafka offset) the lines name.
    pub ids: BTreeSet<String>,
    /// The `payload_reference`s they carry.
    pub references: BTreeSet<String>,
    /// The X-Ray trace ids of the invocations they came from: one per attempt.
    pub traces: BTreeSet<String>,
    /// Their messages (`record failed`, `record written`, ...).
    pub messages: BTreeSet<String>,
}

/// The handlers' lines about records, as an on-call engineer's query sees
/// them (docs/operations.md, "Logs").
#[derive(Debug, Clone, Default)]
pub struct RecordLines {
    /// Lines about a record that miss a correlation field: a `record failed`
    /// line outside a record span; a line in one without the record's `id`
    /// or the invocation's `xrayTraceId`; a `record written` line without
    /// the payload's `event_type` and `user_id`.
    pub uncorrelated: Vec<String>,
    pub by_id: BTreeMap<String, Gathered>,
    pub by_reference: BTreeMap<String, Gathered>,
}

pub fn record_lines(output: &str) -> RecordLines {
    let mut found = RecordLines::default();
    for line in output.lines() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let message = entry["fields"]["message"].as_str().unwrap_or_default();
        let spans = entry["spans"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let span = |name: &str| spans.iter().find(|span| span["name"] == name);
        let Some(record) = span("record") else {
            if message == RECORD_FAILED {
                found.uncorrelated.push(line.to_owned());
            }
            continue;
        };
        let id = record["id"].as_str();
        let trace = span("Lambda runtime invoke").and_then(|s| s["xrayTraceId"].as_str());
        let read = record["event_type"].is_string() && record["user_id"].is_string();
        let (Some(id), Some(trace)) = (id, trace) else {
            found.uncorrelated.push(line.to_owned());
            continue;
        };
        if message == RECORD_WRITTEN && !read {
            found.uncorrelated.push(line.to_owned());
        }
        let reference = record["payload_reference"].as_str();
        let gather = |into: &mut Gathered| {
            into.ids.insert(id.to_owned());
            into.references.extend(reference.map(str::to_owned));
            into.traces.insert(trace.to_owned());
            into.messages.insert(message.to_owned());
        };
        gather(found.by_id.entry(id.to_owned()).or_default());
        if let Some(reference) = reference {
            gather(found.by_reference.entry(reference.to_owned()).or_default());
        }
    }
    found
}
