//! `make bench`: measures the compiled `sqs-handler` and writes the results
//! into BENCHMARKS.md. Usage: `bench <sqs-handler> <kafka-handler> <BENCHMARKS.md>`.

use std::time::Duration;

use terra_sink_dev::bench::report::{Results, splice};
use terra_sink_dev::bench::{KB, MB, Sinks, Workload, cold_starts, measure};

const COLD_STARTS: usize = 20;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [sqs_handler, kafka_handler, output] = args.as_slice() else {
        eprintln!("usage: bench <sqs-handler> <kafka-handler> <BENCHMARKS.md>");
        std::process::exit(2);
    };

    let mut results = Results {
        by_batch_size: Vec::new(),
        memory: Vec::new(),
        dynamodb: Vec::new(),
        budget: Vec::new(),
        tracing: Vec::new(),
        cold_starts: Vec::new(),
        binaries: vec![
            ("sqs-handler".into(), sqs_handler.clone()),
            ("kafka-handler".into(), kafka_handler.clone()),
        ],
    };
    for (records, batches) in [(10, 30), (100, 10), (1000, 3)] {
        let workload = Workload {
            batches,
            ..Workload::new(records, 100 * KB)
        };
        results
            .by_batch_size
            .push(run(sqs_handler, &workload).await);
    }
    for concurrency in [32, 4, 1] {
        let workload = Workload {
            concurrency,
            batches: 2,
            ..Workload::new(10, 20 * MB)
        };
        results.memory.push(run(sqs_handler, &workload).await);
    }
    for (sinks, latency) in [
        (Sinks::DynamoDb, 50),
        (Sinks::S3AndDynamoDb, 50),
        (Sinks::DynamoDb, 0),
    ] {
        let workload = Workload {
            sinks,
            latency: Duration::from_millis(latency),
            ..Workload::new(1000, 100 * KB)
        };
        results.dynamodb.push(run(sqs_handler, &workload).await);
    }
    // Far more in flight than the function's memory: the budget holds it.
    for (sinks, records, payload, record) in [
        (Sinks::S3, 32, 64 * MB, MB),
        (Sinks::DynamoDb, 32, 5 * MB, 100 * KB),
    ] {
        let workload = Workload {
            sinks,
            batches: 1,
            record_bytes: Some(record),
            ..Workload::new(records, payload)
        };
        results.budget.push(run(sqs_handler, &workload).await);
    }
    // Alternated, so that drift in the machine's speed falls on both; each
    // the median of six runs, since a run varies by more than the 10 %
    // target between runs.
    for traced in [false, true].repeat(6) {
        let workload = Workload {
            traced,
            batches: 10,
            ..Workload::new(100, 100 * KB)
        };
        results.tracing.push(run(sqs_handler, &workload).await);
    }
    eprintln!("{COLD_STARTS} cold starts...");
    results.cold_starts = cold_starts(sqs_handler, COLD_STARTS).await;

    let markdown = results.markdown();
    print!("{markdown}");
    let existing = std::fs::read_to_string(output).unwrap_or_default();
    std::fs::write(output, splice(&existing, &markdown))
        .unwrap_or_else(|e| panic!("write {output}: {e}"));
    eprintln!("written to {output}");
}

/// Measures `workload` and refuses a run in which anything went unwritten:
/// its figures would flatter the handler.
async fn run(handler: &str, workload: &Workload) -> terra_sink_dev::bench::Run {
    eprintln!(
        "{} × {} B, {:?} latency, concurrency {}, {:?}{}...",
        workload.records,
        workload.payload_bytes,
        workload.latency,
        workload.concurrency,
        workload.sinks,
        if workload.traced { ", traced" } else { "" }
    );
    let run = measure(handler, workload).await;
    let invocations = workload.batches + 1;
    let expected = workload.records * invocations;
    assert_eq!(run.failed_records, 0, "records failed: {run:?}");
    if workload.sinks != Sinks::DynamoDb {
        assert_eq!(run.received.objects, expected, "objects archived: {run:?}");
        assert_eq!(
            run.received.distinct_keys, workload.records,
            "distinct keys: {run:?}"
        );
    }
    if workload.sinks != Sinks::S3 {
        assert!(run.received.items >= expected, "items written: {run:?}");
    }
    // An invocation and its redelivery hold and schedule, then per record
    // a record, a fetch and an archive write.
    let traced = if workload.traced {
        invocations * (3 + 3 * workload.records)
    } else {
        0
    };
    assert!(run.trace_documents >= traced, "trace documents: {run:?}");
    if !workload.traced {
        assert_eq!(run.trace_documents, 0, "tracing off sent spans: {run:?}");
    }
    run
}
