//! The `make bench` harness measures what it claims to: every record reaches
//! the store, and the figures are consistent with the workload. (The figures
//! themselves are benchmarks, in BENCHMARKS.md, not asserted here.)

use std::time::Duration;

use terra_sink_dev::bench::floor::FloorJob;
use terra_sink_dev::bench::profile::Stage;
use terra_sink_dev::bench::report::{END_MARKER, Results, START_MARKER};
use terra_sink_dev::bench::{KB, Sinks, Store, Workload, cold_starts, floor, measure};
use terra_sink_dev::cpu_quota::CpuQuota;

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

    // As deployed: under the CPU quota for 512 MB, over HTTPS, against
    // moto, sampled by perf (the test build keeps its symbols).
    let deployed = measure(
        HANDLER,
        &Workload {
            sinks: Sinks::S3AndDynamoDb,
            store: Store::Moto,
            batches: 1,
            profiled: true,
            ..Workload::new(5, 10 * KB).deployed(512)
        },
    )
    .await;
    assert_eq!(deployed.failed_records, 0, "{deployed:?}");
    // Each invocation's payloads are new: moto holds every one.
    assert_eq!(deployed.received.objects, 10, "{deployed:?}");
    assert_eq!(deployed.received.index_markers, 10, "{deployed:?}");
    assert_eq!(deployed.received.items, 10, "{deployed:?}");
    assert!(
        deployed.throttling.is_some_and(|t| t.periods > 0),
        "{deployed:?}"
    );
    // 30 requests (a marker, an object and an item per record) over kept-
    // alive connections, though moto closes each of its own.
    assert!(
        deployed.store_connections.is_some_and(|n| n < 20),
        "{deployed:?}"
    );
    let profile = deployed.profile.clone().expect("perf sampled the handler");
    assert!(profile.samples > 0 && !profile.top.is_empty());
    let shares: f64 = Stage::ALL.iter().map(|stage| profile.share(*stage)).sum();
    assert!(
        (shares - 1.0).abs() < 1e-9,
        "every sample in one stage: {profile:?}"
    );

    // As on Lambda Managed Instances: four invocations at once, each step.
    let managed = measure(
        HANDLER,
        &Workload {
            batches: 1,
            ..Workload::new(5, 10 * KB).managed_instances(2, 4)
        },
    )
    .await;
    assert_eq!(managed.failed_records, 0, "{managed:?}");
    // A warm-up step and one measured, four invocations of five each.
    assert_eq!(managed.received.objects, 40, "{managed:?}");
    assert_eq!(managed.walls.len(), 1);

    // The floor's five steps, on a batch of the same shape, and over plain
    // HTTP as the large payloads' runs are.
    let mut floor_runs = floor(&Workload {
        batches: 1,
        ..Workload::new(5, 10 * KB).deployed(512)
    })
    .await;
    floor_runs.extend(
        floor(&Workload {
            batches: 1,
            ..Workload::new(2, 10 * KB)
        })
        .await,
    );
    assert_eq!(floor_runs.len(), 2 * FloorJob::ALL.len());
    assert!(
        floor_runs
            .iter()
            .all(|run| !run.cpu_per_record.is_zero() && run.payload_bytes > 0),
        "{floor_runs:?}"
    );
    assert_eq!(floor_runs.iter().filter(|run| run.https).count(), 5);

    let starts = cold_starts(HANDLER, 2).await;
    assert_eq!(starts.len(), 2);
    assert!(starts.iter().all(|(time, rss)| !time.is_zero() && *rss > 0));

    let markdown = Results {
        by_batch_size: vec![run.clone()],
        memory: vec![run.clone()],
        dynamodb: vec![run.clone()],
        budget: vec![run.clone()],
        tracing: vec![run, traced],
        deployed: vec![deployed.clone()],
        by_store: vec![deployed.clone()],
        profiles: vec![deployed],
        floor: floor_runs,
        managed_instances: vec![managed],
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
        "### As deployed: Lambda's CPU share",
        "### CPU per record by store",
        "### Lambda Managed Instances",
        "### Where CPU per record goes",
        "### The floor under CPU per record",
        "### Cold start",
        "| sqs-handler |",
    ] {
        assert!(markdown.contains(section), "{section} missing:\n{markdown}");
    }
}

/// The quota the as-deployed runs rely on holds a process to its share: a
/// busy loop given a quarter of a core for a second gets about a quarter of
/// a second of CPU.
#[test]
fn a_cpu_quota_holds_a_busy_process_to_its_share() {
    let quota = CpuQuota::of_cores(0.25).expect("a cgroup CPU quota (needs root)");
    let mut busy = std::process::Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .expect("sh");
    quota.admit(busy.id()).expect("admitted");
    let cpu_before = cpu_seconds(busy.id());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_seconds(busy.id()) - cpu_before;
    busy.kill().expect("kill");
    busy.wait().expect("reaped");
    assert!(
        (0.1..0.5).contains(&used),
        "a quarter of a core for a second gave {used:.2} s of CPU"
    );
    assert!(quota.throttling().throttled > 0, "{:?}", quota.throttling());
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("name") + 2..]
        .split_whitespace()
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}
