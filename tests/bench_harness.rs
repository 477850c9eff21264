//! The `make bench` harness measures what it claims to: every record reaches
//! the store, and the figures are consistent with the workload. (The figures
//! themselves are benchmarks, in BENCHMARKS.md, not asserted here.)

use std::time::Duration;

use terra_sink_dev::bench::report::{END_MARKER, Results, START_MARKER};
use terra_sink_dev::bench::{KB, Sinks, Workload, cold_starts, measure};

const HANDLER: &str = env!("CARGO_BIN_EXE_sqs-handler");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measures_a_batch_written_to_both_sinks() {
    let workload = Workload {
        latency: Duration::from_millis(10),
        concurrency: 4,
        sinks: Sinks::S3AndDynamoDb,
        batches: 2,
        ..Workload::new(20, 10 * KB)
    };
    let run = measure(HANDLER, &workload).await;

    assert_eq!(run.failed_records, 0);
    // A warm-up and two measured invocations, each archiving every record
    // under the same key as before and projecting it into one item.
    assert_eq!(run.received.objects, 60);
    // Each archive write is preceded by its user's erasure-index marker.
    assert_eq!(run.received.index_markers, 60);
    assert_eq!(run.received.distinct_keys, 20);
    assert_eq!(run.received.items, 60);
    assert!(run.payload_bytes_actual.abs_diff(10 * KB) < KB / 2);
    assert_eq!(run.walls.len(), 2);
    assert!(
        run.median_wall() >= workload.io_lower_bound(),
        "faster than the fetch latency allows: {run:?}"
    );
    assert!(run.rss_after_init > 0 && run.peak_rss >= run.rss_after_init);
    assert_eq!(run.trace_documents, 0, "tracing is off unless asked");

    let traced = measure(
        HANDLER,
        &Workload {
            traced: true,
            batches: 1,
            ..Workload::new(5, 10 * KB)
        },
    )
    .await;
    assert_eq!(traced.failed_records, 0);
    // Per invocation (a warm-up and one measured): the invocation's span,
    // its redelivery hold and schedule, and per record its span, the fetch
    // and the archive write.
    assert_eq!(traced.trace_documents, 2 * (3 + 3 * 5), "{traced:?}");

    let starts = cold_starts(HANDLER, 2).await;
    assert_eq!(starts.len(), 2);
    assert!(starts.iter().all(|(time, rss)| !time.is_zero() && *rss > 0));

    let markdown = Results {
        by_batch_size: vec![run.clone()],
        memory: vec![run.clone()],
        dynamodb: vec![run.clone()],
        budget: vec![run.clone()],
        tracing: vec![run, traced],
        cold_starts: starts,
        binaries: vec![("sqs-handler".into(), HANDLER.into())],
    }
    .markdown();
    assert!(markdown.starts_with(START_MARKER) && markdown.trim_end().ends_with(END_MARKER));
    for section in [
        "### Targets",
        "### Batch wall time",
        "### Peak memory",
        "### DynamoDB path",
        "### Memory budget",
        "### Tracing",
        "### Cold start",
        "| sqs-handler |",
    ] {
        assert!(markdown.contains(section), "{section} missing:\n{markdown}");
    }
}
