//! Per-invocation metrics in CloudWatch Embedded Metric Format: JSON lines on
//! stdout that CloudWatch Logs turns into metrics, with no API call and no
//! added latency.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value, json};

use crate::outcome::BatchReport;
use crate::outcome::{FailureClass, Outcome};

/// EMF takes at most 100 values per metric in one document.
const MAX_VALUES_PER_DOCUMENT: usize = 100;

/// Terra's event types (its documentation and example payloads) that get a
/// `Type` value of their own. Any other is counted as [`OTHER_TYPE`], so a
/// stray or new type cannot add a metric stream per value.
pub const KNOWN_TYPES: [&str; 23] = [
    "activity",
    "sleep",
    "daily",
    "body",
    "nutrition",
    "menstruation",
    "athlete",
    "planned_workout",
    "hormone",
    "health_observation",
    "lab_report.completed",
    "lab_report.failed",
    "auth",
    "auth_cancelled",
    "deauth",
    "user_reauth",
    "access_revoked",
    "connection_error",
    "permission_change",
    "google_no_datasource",
    "large_request_processing",
    "large_request_sending",
    "rate_limit_hit",
];
pub const OTHER_TYPE: &str = "other";
/// A record that failed before its payload was read.
pub const UNKNOWN_TYPE: &str = "unknown";

/// The `Type` dimension's value for Terra's `event_type`.
pub fn type_dimension(event_type: Option<&str>) -> &'static str {
    match event_type {
        None => UNKNOWN_TYPE,
        Some(event_type) => KNOWN_TYPES
            .iter()
            .find(|known| **known == event_type)
            .copied()
            .unwrap_or(OTHER_TYPE),
    }
}

#[derive(Debug, Clone)]
pub struct Metrics {
    namespace: String,
    destination: Destination,
    /// Until the first invocation's metrics are out: `ColdStart` is 1 then,
    /// 0 after, once per process (the app holds one `Metrics`).
    cold: Arc<AtomicBool>,
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
            cold: Arc::new(AtomicBool::new(true)),
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
            cold: Arc::new(AtomicBool::new(true)),
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
    /// in the first, further timings in as many more as needed, then one per
    /// `Type` the batch had, with its records written and failed.
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
            (
                "ColdStart".into(),
                "Count",
                u64::from(self.cold.swap(false, Ordering::Relaxed)),
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
        let timings: [(&str, Vec<u64>); 3] = [
            (
                "FetchLatency",
                fetches.iter().map(|(f, _)| f.latency_ms).collect(),
            ),
            (
                "PayloadAgeAtFetch",
                fetches.iter().map(|(f, _)| f.age_at_fetch_ms).collect(),
            ),
            (
                "RecordDuration",
                report
                    .outcomes
                    .iter()
                    .filter_map(|outcome| match outcome {
                        Outcome::Written(written) => Some(written.duration_ms),
                        _ => None,
                    })
                    .collect(),
            ),
        ];

        let mut documents = Vec::new();
        let longest = timings.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        let chunks = longest.div_ceil(MAX_VALUES_PER_DOCUMENT).max(1);
        for chunk in 0..chunks {
            let mut values: Vec<(String, &str, Value)> = Vec::new();
            if chunk == 0 {
                values.extend(
                    counts
                        .iter()
                        .map(|(name, unit, n)| (name.clone(), *unit, json!(n))),
                );
            }
            for (name, series) in &timings {
                let start = (chunk * MAX_VALUES_PER_DOCUMENT).min(series.len());
                let end = ((chunk + 1) * MAX_VALUES_PER_DOCUMENT).min(series.len());
                if start < end {
                    values.push(((*name).into(), "Milliseconds", json!(series[start..end])));
                }
            }
            documents.push(self.document(function_name, trigger, timestamp_ms, None, values));
        }
        documents.extend(self.by_type(function_name, trigger, report, timestamp_ms));
        documents
    }

    /// One document per `Type` value the batch had: its records written and
    /// failed, under the dimensions `FunctionName` and `Type`.
    fn by_type(
        &self,
        function_name: &str,
        trigger: &str,
        report: &BatchReport,
        timestamp_ms: u64,
    ) -> Vec<Value> {
        let mut by_type: std::collections::BTreeMap<&'static str, (u64, u64)> =
            std::collections::BTreeMap::new();
        for outcome in &report.outcomes {
            match outcome {
                Outcome::Written(written) => {
                    by_type
                        .entry(type_dimension(Some(&written.event_type)))
                        .or_default()
                        .0 += 1;
                }
                Outcome::Failed(failure) => {
                    by_type
                        .entry(type_dimension(failure.event_type.as_deref()))
                        .or_default()
                        .1 += 1;
                }
                Outcome::Healthcheck | Outcome::Quarantined(_) => {}
            }
        }
        by_type
            .into_iter()
            .map(|(event_type, (written, failed))| {
                self.document(
                    function_name,
                    trigger,
                    timestamp_ms,
                    Some(event_type),
                    vec![
                        ("RecordsWritten".into(), "Count", json!(written)),
                        ("RecordsFailed".into(), "Count", json!(failed)),
                    ],
                )
            })
            .collect()
    }

    /// A document under `FunctionName`, and `Type` when `event_type` is given.
    fn document(
        &self,
        function_name: &str,
        trigger: &str,
        timestamp_ms: u64,
        event_type: Option<&str>,
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
                    "Dimensions": if event_type.is_some() {
                        json!([["FunctionName", "Type"]])
                    } else {
                        json!([["FunctionName"]])
                    },
                    "Metrics": definitions,
                }]
            }),
        );
        document.insert("FunctionName".into(), json!(function_name));
        if let Some(event_type) = event_type {
            document.insert("Type".into(), json!(event_type));
        }
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
        let untyped = documents.iter().filter(|d| d["Type"].is_null()).count();
        assert_eq!(untyped, 1, "{documents:#?}");
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
        assert_eq!(document["RecordDuration"], json!([0, 0, 0]));
        assert_eq!(document["ColdStart"], 1);
    }

    #[test]
    fn more_than_100_timings_spill_into_further_documents() {
        let report = BatchReport {
            outcomes: (0..250).map(|i| written(i, i * 10)).collect(),
        };
        let documents = Metrics::new("N".into()).documents("f", "kafka", &report, 1);
        // Three of timings, one of the batch's only type.
        assert_eq!(documents.len(), 4);
        let sizes: Vec<usize> = documents[..3]
            .iter()
            .map(|d| d["FetchLatency"].as_array().expect("values").len())
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
        assert_eq!(documents[0]["RecordsWritten"], 250);
        assert!(documents[1]["RecordsWritten"].is_null());
        assert_eq!(
            metric_names(&documents[2]),
            ["FetchLatency", "PayloadAgeAtFetch", "RecordDuration"]
        );
        for document in &documents[..3] {
            for name in metric_names(document) {
                let values = document[name].as_array().map_or(1, Vec::len);
                assert!(values <= MAX_VALUES_PER_DOCUMENT, "{name}: {values}");
            }
        }
    }

    #[test]
    fn an_empty_batch_still_reports_zero_counts() {
        let documents =
            Metrics::new("N".into()).documents("f", "sqs", &BatchReport { outcomes: vec![] }, 1);
        assert_eq!(documents.len(), 1);
        assert_eq!(documents[0]["RecordsReceived"], 0);
        assert!(documents[0]["FetchLatency"].is_null());
    }

    #[test]
    fn a_type_dimension_of_its_own_for_terras_types_and_other_for_the_rest() {
        let made_up = (0..101).map(|i| format!("made_up_{i}"));
        let types = KNOWN_TYPES.iter().map(|t| (*t).to_owned()).chain(made_up);
        let outcomes: Vec<Outcome> = types
            .map(|event_type| {
                Outcome::Written(Written {
                    event_type,
                    ..Written::default()
                })
            })
            .chain([
                Outcome::Failed(RecordFailure::new(
                    FailureClass::Fetch,
                    Retry::Transient,
                    "503",
                )),
                Outcome::Failed(
                    RecordFailure::new(FailureClass::Sink, Retry::Transient, "throttled")
                        .of_type("sleep"),
                ),
            ])
            .collect();
        let documents =
            Metrics::new("N".into()).documents("f", "sqs", &BatchReport { outcomes }, 1);
        let typed: Vec<&Value> = documents.iter().filter(|d| !d["Type"].is_null()).collect();
        assert_eq!(typed.len(), KNOWN_TYPES.len() + 2, "known, other, unknown");
        let of = |t: &str| {
            typed
                .iter()
                .find(|d| d["Type"] == t)
                .unwrap_or_else(|| panic!("{t}"))
        };
        assert_eq!(of(OTHER_TYPE)["RecordsWritten"], 101);
        assert_eq!(of(UNKNOWN_TYPE)["RecordsFailed"], 1);
        assert_eq!(
            (
                &of("sleep")["RecordsWritten"],
                &of("sleep")["RecordsFailed"]
            ),
            (&json!(1), &json!(1))
        );
        assert_eq!(
            of("sleep")["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["FunctionName", "Type"]])
        );
    }

    #[test]
    fn cold_start_is_counted_once_per_process() {
        let metrics = Metrics::new("N".into());
        let empty = BatchReport { outcomes: vec![] };
        let first = metrics.documents("f", "sqs", &empty, 1);
        let clone_in_the_app = metrics.clone();
        let second = clone_in_the_app.documents("f", "sqs", &empty, 2);
        assert_eq!(
            (&first[0]["ColdStart"], &second[0]["ColdStart"]),
            (&json!(1), &json!(0))
        );
    }
}
