//! Per-invocation metrics in CloudWatch Embedded Metric Format: JSON lines on
//! stdout that CloudWatch Logs turns into metrics, with no API call and no
//! added latency.

use std::io::Write;

use serde_json::{Map, Value, json};

use crate::outcome::BatchReport;
use crate::outcome::{FailureClass, Outcome};

/// EMF takes at most 100 values per metric in one document.
const MAX_VALUES_PER_DOCUMENT: usize = 100;

#[derive(Debug, Clone)]
pub struct Metrics {
    namespace: String,
    destination: Destination,
}

#[derive(Debug, Clone)]
enum Destination {
    /// Where Lambda sends it to CloudWatch Logs.
    Stdout,
    #[cfg(test)]
    Memory(std::sync::Arc<std::sync::Mutex<Vec<Value>>>),
}

impl Metrics {
    pub fn new(namespace: String) -> Self {
        Self {
            namespace,
            destination: Destination::Stdout,
        }
    }

    /// Metrics kept in memory: every document emitted is pushed onto the
    /// returned list.
    #[cfg(test)]
    pub fn in_memory(namespace: &str) -> (Self, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
        let documents = std::sync::Arc::default();
        let metrics = Self {
            namespace: namespace.to_owned(),
            destination: Destination::Memory(std::sync::Arc::clone(&documents)),
        };
        (metrics, documents)
    }

    /// Emits the invocation's metric documents (to stdout, in production).
    pub fn emit(&self, function_name: &str, trigger: &str, report: &BatchReport) {
        let documents = self.documents(function_name, trigger, report, crate::wall_clock::now_ms());
        match &self.destination {
            Destination::Stdout => {
                let mut stdout = std::io::stdout().lock();
                for document in documents {
                    // A metric line that cannot be written is not worth
                    // failing a batch whose records are already stored.
                    let _ = writeln!(stdout, "{document}");
                }
            }
            #[cfg(test)]
            Destination::Memory(kept) => {
                if let Ok(mut kept) = kept.lock() {
                    kept.extend(documents);
                }
            }
        }
    }

    /// The EMF documents for one invocation: counts and the first 100 timings
    /// in the first, further timings in as many more as needed.
    pub fn documents(
        &self,
        function_name: &str,
        trigger: &str,
        report: &BatchReport,
        timestamp_ms: u64,
    ) -> Vec<Value> {
        let summary = report.summary();
        let mut counts: Vec<(String, &str, u64)> = vec![
            ("RecordsReceived".into(), "Count", summary.received as u64),
            ("RecordsWritten".into(), "Count", summary.written as u64),
            (
                "RecordsSkipped".into(),
                "Count",
                summary.healthchecks as u64,
            ),
            (
                "StaleItemsSkipped".into(),
                "Count",
                summary.stale_items as u64,
            ),
            ("RecordsFailed".into(), "Count", summary.failed as u64),
            (
                "RecordsQuarantined".into(),
                "Count",
                summary.quarantined as u64,
            ),
            (
                "RecordsRecoveredFromArchive".into(),
                "Count",
                summary.recovered_from_archive as u64,
            ),
        ];
        // Every class, so each failure metric has a datapoint (0 included)
        // in every invocation and alarms never see missing data for a
        // healthy function.
        for class in FailureClass::ALL {
            let failed = summary.failed_by_class.get(&class).copied().unwrap_or(0);
            counts.push((failed_metric(class), "Count", failed as u64));
        }

        let fetches: Vec<_> = report
            .outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                Outcome::Written(written) => written.fetch.map(|f| (f, written.payload_bytes)),
                _ => None,
            })
            .collect();
        counts.push((
            "BytesFetched".into(),
            "Bytes",
            fetches.iter().map(|(_, bytes)| bytes).sum(),
        ));
        let latencies: Vec<u64> = fetches.iter().map(|(f, _)| f.latency_ms).collect();
        let ages: Vec<u64> = fetches.iter().map(|(f, _)| f.age_at_fetch_ms).collect();

        let mut documents = Vec::new();
        let chunks = latencies.len().div_ceil(MAX_VALUES_PER_DOCUMENT).max(1);
        for chunk in 0..chunks {
            let range = chunk * MAX_VALUES_PER_DOCUMENT
                ..((chunk + 1) * MAX_VALUES_PER_DOCUMENT).min(latencies.len());
            let mut values: Vec<(String, &str, Value)> = Vec::new();
            if chunk == 0 {
                values.extend(
                    counts
                        .iter()
                        .map(|(name, unit, n)| (name.clone(), *unit, json!(n))),
                );
            }
            if !range.is_empty() {
                values.push((
                    "FetchLatency".into(),
                    "Milliseconds",
                    json!(latencies[range.clone()]),
                ));
                values.push((
                    "PayloadAgeAtFetch".into(),
                    "Milliseconds",
                    json!(ages[range]),
                ));
            }
            documents.push(self.document(function_name, trigger, timestamp_ms, values));
        }
        documents
    }

    fn document(
        &self,
        function_name: &str,
        trigger: &str,
        timestamp_ms: u64,
        values: Vec<(String, &str, Value)>,
    ) -> Value {
        let definitions: Vec<Value> = values
            .iter()
            .map(|(name, unit, _)| json!({"Name": name, "Unit": unit}))
            .collect();
        let mut document = Map::new();
        document.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [["FunctionName"]],
                    "Metrics": definitions,
                }]
            }),
        );
        document.insert("FunctionName".into(), json!(function_name));
        document.insert("Trigger".into(), json!(trigger));
        for (name, _, value) in values {
            document.insert(name, value);
        }
        Value::Object(document)
    }
}

fn failed_metric(class: FailureClass) -> String {
    let name = class.as_str();
    let mut chars = name.chars();
    let capitalised: String = chars
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default();
    format!("RecordsFailed{capitalised}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{FetchTiming, RecordFailure, Retry, Written};

    fn written(latency_ms: u64, age_at_fetch_ms: u64) -> Outcome {
        Outcome::Written(Written {
            event_type: "activity".into(),
            payload_bytes: 1000,
            fetch: Some(FetchTiming {
                latency_ms,
                age_at_fetch_ms,
            }),
            ..Written::default()
        })
    }

    fn metric_names(document: &Value) -> Vec<&str> {
        document["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .expect("metrics")
            .iter()
            .map(|m| m["Name"].as_str().expect("name"))
            .collect()
    }

    #[test]
    fn one_document_holds_counts_failures_by_class_and_timings() {
        let report = BatchReport {
            outcomes: vec![
                written(120, 4_000),
                written(80, 2_000),
                Outcome::Healthcheck,
                Outcome::Failed(RecordFailure::new(
                    FailureClass::Expired,
                    Retry::Permanent,
                    "late",
                )),
                Outcome::Written(Written {
                    recovered_from_archive: true,
                    ..Written::default()
                }),
            ],
        };
        let documents =
            Metrics::new("TerraSink".into()).documents("terra-sink-sqs", "sqs", &report, 42);
        assert_eq!(documents.len(), 1);
        let document = &documents[0];
        assert_eq!(document["_aws"]["Timestamp"], 42);
        let directive = &document["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "TerraSink");
        assert_eq!(directive["Dimensions"], json!([["FunctionName"]]));
        for name in metric_names(document) {
            assert!(!document[name].is_null(), "{name} has a value");
        }
        assert_eq!(document["FunctionName"], "terra-sink-sqs");
        assert_eq!(document["Trigger"], "sqs");
        assert_eq!(document["RecordsReceived"], 5);
        assert_eq!(document["RecordsWritten"], 3);
        assert_eq!(document["RecordsSkipped"], 1);
        assert_eq!(document["RecordsFailed"], 1);
        assert_eq!(document["RecordsFailedExpired"], 1);
        assert_eq!(document["RecordsFailedSink"], 0);
        assert_eq!(document["RecordsRecoveredFromArchive"], 1);
        assert_eq!(document["BytesFetched"], 2000);
        assert_eq!(document["FetchLatency"], json!([120, 80]));
        assert_eq!(document["PayloadAgeAtFetch"], json!([4000, 2000]));
    }

    #[test]
    fn more_than_100_timings_spill_into_further_documents() {
        let report = BatchReport {
            outcomes: (0..250).map(|i| written(i, i * 10)).collect(),
        };
        let documents = Metrics::new("N".into()).documents("f", "kafka", &report, 1);
        assert_eq!(documents.len(), 3);
        let sizes: Vec<usize> = documents
            .iter()
            .map(|d| d["FetchLatency"].as_array().expect("values").len())
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
        assert_eq!(documents[0]["RecordsWritten"], 250);
        assert!(documents[1]["RecordsWritten"].is_null());
        assert_eq!(
            metric_names(&documents[2]),
            ["FetchLatency", "PayloadAgeAtFetch"]
        );
    }

    #[test]
    fn an_empty_batch_still_reports_zero_counts() {
        let documents =
            Metrics::new("N".into()).documents("f", "sqs", &BatchReport { outcomes: vec![] }, 1);
        assert_eq!(documents.len(), 1);
        assert_eq!(documents[0]["RecordsReceived"], 0);
        assert!(documents[0]["FetchLatency"].is_null());
    }
}
