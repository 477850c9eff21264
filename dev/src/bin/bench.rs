//! `make bench`: measures the compiled `sqs-handler` and writes the results
//! into BENCHMARKS.md. Usage:
//! `bench <sqs-handler> <kafka-handler> <sqs-handler with symbols> <BENCHMARKS.md>`.

use std::time::Duration;

use terra_sink_dev::bench::report::{Results, splice};
use terra_sink_dev::bench::{KB, MB, Sinks, Store, Workload, cold_starts, floor, measure};
use terra_sink_dev::cpu_quota::MB_PER_VCPU;
use terra_sink_dev::deployed::Deployed;

const COLD_STARTS: usize = 20;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [sqs_handler, kafka_handler, profiled_handler, output] = args.as_slice() else {
        eprintln!(
            "usage: bench <sqs-handler> <kafka-handler> <sqs-handler with symbols> <BENCHMARKS.md>"
        );
        std::process::exit(2);
    };
    let deployed = Deployed::from_template();
    let memory_mb =
        u32::try_from(deployed.function_memory_mb).expect("the template's memory size fits in u32");
    let batch_size =
        usize::try_from(deployed.sqs_batch_size).expect("the template's batch size is positive");

    let mut results = Results {
        by_batch_size: Vec::new(),
        memory: Vec::new(),
        dynamodb: Vec::new(),
        budget: Vec::new(),
        tracing: Vec::new(),
        deployed: Vec::new(),
        by_store: Vec::new(),
        profiles: Vec::new(),
        floor: Vec::new(),
        managed_instances: Vec::new(),
        cold_starts: Vec::new(),
        binaries: vec![
            ("sqs-handler".into(), sqs_handler.clone()),
            ("kafka-handler".into(), kafka_handler.clone()),
        ],
    };
    // As deployed: the template's batch size, HTTPS, and Lambda's CPU share
    // at the template's memory and at one whole vCPU; the archive alone, and
    // both sinks (what the cost table prices).
    for memory in [memory_mb, MB_PER_VCPU] {
        for sinks in [Sinks::S3, Sinks::S3AndDynamoDb] {
            let workload = Workload {
                sinks,
                batches: 30,
                ..Workload::new(batch_size, 100 * KB).deployed(memory)
            };
            results.deployed.push(run(sqs_handler, &workload).await);
        }
    }
    // Lambda Managed Instances: one process of two vCPUs taking the
    // template's batches one at a time, then eight at once; both sinks (what
    // the cost table prices), and the archive alone.
    for sinks in [Sinks::S3AndDynamoDb, Sinks::S3] {
        for at_once in [1, 8] {
            let workload = Workload {
                sinks,
                batches: 10,
                ..Workload::new(batch_size, 100 * KB).managed_instances(2, at_once)
            };
            results
                .managed_instances
                .push(run(sqs_handler, &workload).await);
        }
    }
    for sinks in [Sinks::S3, Sinks::DynamoDb] {
        for store in [Store::Null, Store::Moto] {
            // moto's DynamoDB spends a large fraction of a second of its own
            // CPU on each 100 KB item (the server, not the handler, is the
            // slow side): fewer of them.
            let (records, batches) = match (sinks, store) {
                (Sinks::DynamoDb, Store::Moto) => (20, 3),
                _ => (100, 5),
            };
            let workload = Workload {
                sinks,
                store,
                batches,
                ..Workload::new(records, 100 * KB).deployed(memory_mb)
            };
            results.by_store.push(run(sqs_handler, &workload).await);
        }
    }
    // Under those figures, the floor: the same payloads moved with nothing
    // of the handler's own, step by step.
    eprintln!("the floor under CPU per record...");
    results.floor = floor(&Workload {
        batches: 5,
        ..Workload::new(100, 100 * KB).deployed(memory_mb)
    })
    .await;
    // And under the large payloads' (the peak memory runs' first shape).
    results.floor.extend(
        floor(&Workload {
            batches: 2,
            ..Workload::new(10, 20 * MB)
        })
        .await,
    );
    for (sinks, store) in [
        (Sinks::S3, Store::Null),
        (Sinks::S3, Store::Moto),
        (Sinks::DynamoDb, Store::Null),
    ] {
        let workload = Workload {
            sinks,
            store,
            batches: 5,
            profiled: true,
            ..Workload::new(100, 100 * KB).deployed(memory_mb)
        };
        results
            .profiles
            .push(run(profiled_handler, &workload).await);
    }
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
        "{} × {} B, {:?} latency, concurrency {}, {:?} on {:?}{}{}{}{}{}...",
        workload.records,
        workload.payload_bytes,
        workload.latency,
        workload.concurrency,
        workload.sinks,
        workload.store,
        if workload.https { ", HTTPS" } else { "" },
        workload.memory_mb.map_or(String::new(), |mb| {
            format!(", {mb} MB at {:.2} of a core", workload.cores())
        }),
        if workload.traced { ", traced" } else { "" },
        if workload.profiled { ", profiled" } else { "" },
        if workload.invocations_at_once > 1 {
            format!(", {} invocations at once", workload.invocations_at_once)
        } else {
            String::new()
        },
    );
    let run = measure(handler, workload).await;
    let invocations = (workload.batches + 1) * workload.invocations_at_once;
    let expected = workload.records * invocations;
    assert_eq!(run.failed_records, 0, "records failed: {run:?}");
    if workload.sinks != Sinks::DynamoDb {
        assert_eq!(run.received.objects, expected, "objects archived: {run:?}");
        let distinct = match workload.store {
            Store::Null => workload.records,
            Store::Moto => expected,
        };
        assert_eq!(
            run.received.distinct_keys, distinct,
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
    if let Some(throttling) = run.throttling {
        // A quota that never held the handler back did not apply.
        assert!(
            throttling.periods > 0,
            "the CPU quota was never in force: {run:?}"
        );
    }
    if workload.profiled {
        assert!(run.profile.is_some(), "perf recorded no samples: {run:?}");
    }
    if !workload.traced {
        assert_eq!(run.trace_documents, 0, "tracing off sent spans: {run:?}");
    }
    run
}
