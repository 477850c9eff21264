//! The results as Markdown, written into `BENCHMARKS.md` between two markers
//! so the hand-written analysis around them survives a re-run.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use super::floor::{FloorJob, FloorRun};
use super::profile::Stage;
use super::{KB, MB, Run, Sinks, Store};

pub const START_MARKER: &str = "<!-- bench:results:start -->";
pub const END_MARKER: &str = "<!-- bench:results:end -->";

/// Everything one `make bench` measured.
pub struct Results {
    /// The same workload at growing batch sizes (the wall-time table).
    pub by_batch_size: Vec<Run>,
    /// Workloads for peak memory.
    pub memory: Vec<Run>,
    /// Workloads with DynamoDB as a sink.
    pub dynamodb: Vec<Run>,
    /// Workloads holding far more than the function's memory in flight.
    pub budget: Vec<Run>,
    /// The same workload with tracing off and on, alternated.
    pub tracing: Vec<Run>,
    /// Small batches as deployed (HTTPS, Lambda's CPU share), at the
    /// template's memory and at one vCPU.
    pub deployed: Vec<Run>,
    /// Each sink path against the null store and moto, as deployed.
    pub by_store: Vec<Run>,
    /// Runs sampled by `perf`, as deployed.
    pub profiles: Vec<Run>,
    /// The same bytes moved with nothing of the handler's own, step by step.
    pub floor: Vec<FloorRun>,
    /// One Lambda Managed Instances process taking invocations one at a
    /// time, then several at once.
    pub managed_instances: Vec<Run>,
    /// (time to first poll, RSS then) per cold start.
    pub cold_starts: Vec<(Duration, u64)>,
    /// (name, path) of each deployable binary.
    pub binaries: Vec<(String, String)>,
}

/// The function memory the harness announces (`lambda_environment`).
const FUNCTION_MEMORY: u64 = 512 * MB as u64;
/// CPU per 100 KB record before the budget and the streaming projection,
/// measured at b9f7822 (BENCHMARKS.md then): S3 path (median of the three
/// batch sizes) and DynamoDB alone at 50 ms latency.
const BEFORE_S3_CPU_PER_RECORD: Duration = Duration::from_micros(933);
const BEFORE_DYNAMODB_CPU_PER_RECORD: Duration = Duration::from_micros(3807);
/// The `sqs-handler` artifact's size when issue #29 was taken up (186971a).
const BEFORE_BINARY_BYTES: u64 = 19_924_440;

/// A target from issues #7 and #14, and whether this run met it.
struct Verdict {
    met: bool,
    target: &'static str,
    evidence: String,
}

impl Results {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{START_MARKER}");
        let _ = writeln!(out, "## Results\n\n{}\n", machine());
        self.targets_section(&mut out);
        self.deployed_section(&mut out);
        self.managed_instances_section(&mut out);
        self.by_store_section(&mut out);
        self.floor_section(&mut out);
        self.profile_section(&mut out);
        self.wall_time_section(&mut out);
        self.memory_section(&mut out);
        self.dynamodb_section(&mut out);
        self.budget_section(&mut out);
        self.tracing_section(&mut out);
        self.cold_start_section(&mut out);
        self.binary_section(&mut out);
        let _ = writeln!(out, "{END_MARKER}");
        out
    }

    fn targets_section(&self, out: &mut String) {
        let _ = writeln!(out, "### Targets\n");
        for verdict in self.verdicts() {
            let mark = if verdict.met { "met" } else { "**missed**" };
            let _ = writeln!(out, "- {mark}: {}. {}", verdict.target, verdict.evidence);
        }
        let _ = writeln!(out);
    }

    fn verdicts(&self) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        if let Some(largest) = self.by_batch_size.iter().max_by_key(|r| r.workload.records) {
            verdicts.push(Verdict {
                met: largest.times_lower_bound() <= 1.2,
                target: "batch wall time within 1.2× the I/O lower bound at the largest batch",
                evidence: format!(
                    "N = {}: {} against {} ({:.2}×).",
                    largest.workload.records,
                    ms(largest.median_wall()),
                    ms(largest.workload.io_lower_bound()),
                    largest.times_lower_bound()
                ),
            });
        }
        if let (Some(smallest), Some(largest)) = (
            self.by_batch_size.iter().min_by_key(|r| r.workload.records),
            self.by_batch_size.iter().max_by_key(|r| r.workload.records),
        ) {
            // The smaller batch already fills every concurrency slot; allow
            // allocator noise of a few MB on top.
            let allowance = smallest.growth() + smallest.growth() / 2 + 8 * MB as u64;
            verdicts.push(Verdict {
                met: largest.growth() <= allowance,
                target: "peak memory does not grow with batch size",
                evidence: format!(
                    "growth over the idle process: {} at N = {}, {} at N = {}.",
                    mib(smallest.growth()),
                    smallest.workload.records,
                    mib(largest.growth()),
                    largest.workload.records
                ),
            });
        }
        if let Some(widest) = self.memory.iter().max_by_key(|r| r.in_flight_bytes()) {
            let ratio = widest.growth() as f64 / widest.in_flight_bytes() as f64;
            verdicts.push(Verdict {
                met: ratio <= 1.5,
                target: "archiving does not hold a payload twice (growth ≤ 1.5 × bytes in flight)",
                evidence: format!(
                    "{} × {} at concurrency {}: {} in flight, growth {} ({ratio:.2}×).",
                    widest.workload.records,
                    size(widest.payload_bytes_actual),
                    widest.workload.concurrency,
                    mib(widest.in_flight_bytes()),
                    mib(widest.growth())
                ),
            });
        }
        if !self.cold_starts.is_empty() {
            let median = median(self.cold_starts.iter().map(|(d, _)| *d).collect());
            verdicts.push(Verdict {
                met: median < Duration::from_millis(15),
                target: "init under 15 ms (median)",
                evidence: format!(
                    "median {} over {} cold starts.",
                    ms(median),
                    self.cold_starts.len()
                ),
            });
        }
        let per_mb = |run: &Run| run.cpu_ms_per_mb();
        if let (Some(small), Some(large)) = (
            self.by_batch_size.iter().max_by_key(|r| r.workload.records),
            self.memory.iter().max_by_key(|r| r.payload_bytes_actual),
        ) {
            verdicts.push(Verdict {
                met: per_mb(small) <= 2.0 * per_mb(large),
                target: "CPU dominated by bytes moved (CPU per MB at 100 KB payloads ≤ 2× that at the largest payloads)",
                evidence: format!(
                    "{:.1} ms/MB at {}, {:.1} ms/MB at {}.",
                    per_mb(small),
                    size(small.payload_bytes_actual),
                    per_mb(large),
                    size(large.payload_bytes_actual)
                ),
            });
        }
        if !self.budget.is_empty() {
            verdicts.push(Verdict {
                met: self.budget.iter().all(|run| run.peak_rss < FUNCTION_MEMORY),
                target: "peak memory within the function's 512 MB whatever is in flight",
                evidence: self
                    .budget
                    .iter()
                    .map(|run| {
                        format!(
                            "{} × {} ({}): peak {}.",
                            run.workload.records,
                            size(run.payload_bytes_actual),
                            run.workload.sinks.label(),
                            mib(run.peak_rss)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            });
        }
        if !self.by_batch_size.is_empty() {
            let now = median(self.by_batch_size.iter().map(Run::cpu_per_record).collect());
            verdicts.push(Verdict {
                met: now.as_secs_f64() <= 1.1 * BEFORE_S3_CPU_PER_RECORD.as_secs_f64(),
                target: "S3 path CPU per 100 KB record within 1.1× of before the budget",
                evidence: format!(
                    "{} (median of the batch sizes) against {} at b9f7822.",
                    micros(now),
                    micros(BEFORE_S3_CPU_PER_RECORD)
                ),
            });
        }
        if let Some(dynamodb) = self.dynamodb.first() {
            let now = dynamodb.cpu_per_record();
            verdicts.push(Verdict {
                met: 2 * now <= BEFORE_DYNAMODB_CPU_PER_RECORD,
                target: "DynamoDB path CPU per 100 KB record at most half of before the streaming projection",
                evidence: format!(
                    "{} ({}, {} latency) against {} at b9f7822.",
                    micros(now),
                    dynamodb.workload.sinks.label(),
                    ms(dynamodb.workload.latency),
                    micros(BEFORE_DYNAMODB_CPU_PER_RECORD)
                ),
            });
        }
        self.deployed_verdicts(&mut verdicts);
        self.managed_instances_verdicts(&mut verdicts);
        if let Some((off, on)) = self.tracing_cpu_per_record() {
            let overhead = tracing_overhead_percent(off, on);
            verdicts.push(Verdict {
                met: overhead <= 10.0,
                target: "tracing on costs at most 10 % more CPU per record than off",
                evidence: format!(
                    "{} off, {} on, every invocation sampled ({overhead:+.1} %).",
                    micros(off),
                    micros(on)
                ),
            });
        }
        verdicts
    }

    /// Issue #29's targets: as deployed, at Lambda's CPU share.
    fn deployed_verdicts(&self, verdicts: &mut Vec<Verdict>) {
        let at_template_memory = self
            .deployed
            .iter()
            .find(|run| run.workload.sinks == Sinks::S3);
        if let Some(small) = at_template_memory {
            verdicts.push(Verdict {
                met: small.times_lower_bound() <= 1.3,
                target: "at the template's memory, a batch of 10 × 100 KB at 50 ms latency within 1.3× its I/O lower bound",
                evidence: format!(
                    "{} records at {} MB ({:.2} of a core), {} against {} ({:.2}×).",
                    small.workload.records,
                    small.workload.memory_mb.unwrap_or(512),
                    small.workload.cores(),
                    ms(small.median_wall()),
                    ms(small.workload.io_lower_bound()),
                    small.times_lower_bound()
                ),
            });
        }
        let by_store = |sinks: Sinks, store: Store| {
            self.by_store
                .iter()
                .find(|run| run.workload.sinks == sinks && run.workload.store == store)
        };
        for (sinks, store, limit) in [
            (Sinks::S3, Store::Null, 300),
            (Sinks::S3, Store::Moto, 450),
            (Sinks::DynamoDb, Store::Null, 1000),
        ] {
            if let Some(run) = by_store(sinks, store) {
                let limit = Duration::from_micros(limit);
                verdicts.push(Verdict {
                    met: run.cpu_per_record() <= limit,
                    target: match (sinks, store) {
                        (Sinks::S3, Store::Null) => {
                            "S3 path CPU per 100 KB record at most 0.30 ms against the null store"
                        }
                        (Sinks::S3, _) => {
                            "S3 path CPU per 100 KB record at most 0.45 ms against moto"
                        }
                        _ => "DynamoDB path CPU per 100 KB record at most 1.0 ms against the null store",
                    },
                    evidence: format!(
                        "{} over HTTPS at {:.2} of a core (limit {}).{}",
                        micros(run.cpu_per_record()),
                        run.workload.cores(),
                        micros(limit),
                        if sinks == Sinks::S3 {
                            self.floor_summary(run, false)
                        } else {
                            String::new()
                        }
                    ),
                });
            }
        }
        let large: Vec<&Run> = self
            .memory
            .iter()
            .chain(&self.budget)
            .filter(|run| run.payload_bytes_actual >= MB)
            .collect();
        if !large.is_empty() {
            verdicts.push(Verdict {
                met: large.iter().all(|run| run.cpu_ms_per_mb() <= 2.0),
                target: "large payloads at most 2 ms of CPU per MB, streamed or held",
                evidence: large
                    .iter()
                    .map(|run| {
                        format!(
                            "{} × {} ({}): {:.1} ms/MB.",
                            run.workload.records,
                            size(run.payload_bytes_actual),
                            run.workload.sinks.label(),
                            run.cpu_ms_per_mb()
                        )
                    })
                    .chain(
                        large
                            .first()
                            .map(|run| self.floor_summary(run, true).trim_start().to_owned()),
                    )
                    .filter(|part| !part.is_empty())
                    .collect::<Vec<_>>()
                    .join(" "),
            });
        }
        if let Some(bytes) = self
            .binaries
            .first()
            .and_then(|(_, path)| std::fs::metadata(path).ok())
            .map(|m| m.len())
        {
            verdicts.push(Verdict {
                met: bytes * 10 <= BEFORE_BINARY_BYTES * 11,
                target: "the binary grows by at most 10 %",
                evidence: format!(
                    "{} against {} at 186971a ({:+.1} %).",
                    mib(bytes),
                    mib(BEFORE_BINARY_BYTES),
                    (bytes as f64 / BEFORE_BINARY_BYTES as f64 - 1.0) * 100.0
                ),
            });
        }
    }

    fn deployed_section(&self, out: &mut String) {
        let Some(first) = self.deployed.first() else {
            return;
        };
        let w = &first.workload;
        let _ = writeln!(
            out,
            "### As deployed: Lambda's CPU share\n\nA batch of the template's size, {} payloads \
             of {}, {} fetch latency, concurrency {}; payload host and store over HTTPS (TLS \
             1.3, kept-alive connections). The handler runs under a cgroup CPU quota of memory \
             ÷ 1,769 MB of a core, the share Lambda gives a function. Median of the measured \
             invocations after one warm-up. The cost table in docs/operations.md takes its \
             Lambda duration from the S3 + DynamoDB rows.\n",
            w.records,
            size(first.payload_bytes_actual),
            ms(w.latency),
            w.concurrency,
        );
        let _ = writeln!(
            out,
            "| Memory | CPU share | Sinks | Store | Invocations | I/O lower bound | Wall time | × lower bound | CPU per record | Periods throttled |\n|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"
        );
        for run in &self.deployed {
            let throttling = run.throttling.unwrap_or_default();
            let _ = writeln!(
                out,
                "| {} MB | {:.2} | {} | {} | {} | {} | {} | {:.2} | {} | {} of {} |",
                run.workload.memory_mb.unwrap_or(512),
                run.workload.cores(),
                run.workload.sinks.label(),
                run.workload.store.label(),
                run.walls.len(),
                ms(run.workload.io_lower_bound()),
                ms(run.median_wall()),
                run.times_lower_bound(),
                micros(run.cpu_per_record()),
                throttling.throttled,
                throttling.periods
            );
        }
        let _ = writeln!(out);
    }

    /// For `sinks`: one at a time, and the most at once.
    fn managed_instances_pair(&self, sinks: Sinks) -> Option<(&Run, &Run)> {
        let runs = || {
            self.managed_instances
                .iter()
                .filter(move |run| run.workload.sinks == sinks)
        };
        let one = runs().find(|run| run.workload.invocations_at_once == 1)?;
        let most = runs().max_by_key(|run| run.workload.invocations_at_once)?;
        (most.workload.invocations_at_once > 1).then_some((one, most))
    }

    /// Both sinks, as the template deploys; the archive alone beside it.
    fn managed_instances_verdicts(&self, verdicts: &mut Vec<Verdict>) {
        let Some((one, most)) = self.managed_instances_pair(Sinks::S3AndDynamoDb) else {
            return;
        };
        let memory = u64::from(most.workload.memory_mb.unwrap_or(512)) * MB as u64;
        let speedup =
            |(one, most): (&Run, &Run)| most.records_per_second() / one.records_per_second();
        let archive_alone = self
            .managed_instances_pair(Sinks::S3)
            .map_or(String::new(), |pair| {
                format!(" The archive alone: {:.1}×.", speedup(pair))
            });
        verdicts.push(Verdict {
            met: most.failed_records == 0 && most.peak_rss <= memory && speedup((one, most)) >= 5.0,
            target: "Managed Instances: 8 invocations of 10 × 100 KB at once in one process at a 2-vCPU quota, nothing lost, peak memory within the function's, at least 5× the throughput of one at a time",
            evidence: format!(
                "Both sinks, {} at once: {:.0} records/s against {:.0} one at a time ({:.1}×), {} failed, peak {} of {}.{archive_alone}",
                most.workload.invocations_at_once,
                most.records_per_second(),
                one.records_per_second(),
                speedup((one, most)),
                most.failed_records,
                mib(most.peak_rss),
                mib(memory)
            ),
        });
    }

    fn managed_instances_section(&self, out: &mut String) {
        let Some(first) = self.managed_instances.first() else {
            return;
        };
        let w = &first.workload;
        let _ = writeln!(
            out,
            "### Lambda Managed Instances: invocations at once\n\nOne handler process with \
             `AWS_LAMBDA_MAX_CONCURRENCY` set, as Managed Instances run it: an execution \
             environment of {:.0} vCPUs (a cgroup quota) and {} MB, batches of {} payloads of \
             {} behind {} of latency, over HTTPS. Each measured step hands the process that \
             many invocations at once; wall time is until the last is answered. \
             docs/operations.md prices Managed Instances from the S3 + DynamoDB rows.\n",
            w.cores(),
            w.memory_mb.unwrap_or(512),
            w.records,
            size(first.payload_bytes_actual),
            ms(w.latency),
        );
        let _ = writeln!(
            out,
            "| Sinks | Invocations at once | Steps | Wall time per step | Records per second | CPU per record | Peak memory | Failed records |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for run in &self.managed_instances {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} | {} | {} | {} |",
                run.workload.sinks.label(),
                run.workload.invocations_at_once,
                run.walls.len(),
                ms(run.median_wall()),
                run.records_per_second(),
                micros(run.cpu_per_record()),
                mib(run.peak_rss),
                run.failed_records
            );
        }
        let _ = writeln!(out);
    }

    fn by_store_section(&self, out: &mut String) {
        let Some(first) = self.by_store.first() else {
            return;
        };
        let w = &first.workload;
        let _ = writeln!(
            out,
            "### CPU per record by store\n\n{} payloads of {}, {} fetch latency, as deployed at \
             {} MB ({:.2} of a core, HTTPS). Against moto, each invocation's payloads are new, \
             as in the field; the handler parses moto's real S3 and DynamoDB responses. Wall \
             times against moto are moto's (one Python process), not the handler's.\n",
            w.records,
            size(first.payload_bytes_actual),
            ms(w.latency),
            w.memory_mb.unwrap_or(512),
            first.workload.cores(),
        );
        let _ = writeln!(
            out,
            "| Sinks | Store | Invocations | Wall time | CPU per record | CPU per MB |\n|---|---|---:|---:|---:|---:|"
        );
        for run in &self.by_store {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.1} ms |",
                run.workload.sinks.label(),
                run.workload.store.label(),
                run.walls.len(),
                ms(run.median_wall()),
                micros(run.cpu_per_record()),
                run.cpu_ms_per_mb()
            );
        }
        let _ = writeln!(out);
    }

    /// The floor's runs on payloads like `run`'s: its size, over HTTPS or not.
    fn floor_like(&self, run: &Run) -> Vec<&FloorRun> {
        self.floor
            .iter()
            .filter(|floor| {
                floor.payload_bytes == run.payload_bytes_actual && floor.https == run.workload.https
            })
            .collect()
    }

    /// The handler's run on the payloads of `floor`, archive only.
    fn handler_like(&self, floor: &FloorRun) -> Option<&Run> {
        self.by_store
            .iter()
            .chain(&self.memory)
            .chain(&self.by_batch_size)
            .find(|run| {
                run.workload.sinks == Sinks::S3
                    && run.workload.store == Store::Null
                    && run.payload_bytes_actual == floor.payload_bytes
                    && run.workload.https == floor.https
            })
    }

    /// The floor beside `run`, for its targets: moving and checking the
    /// bytes with a plain PUT, and the handler's requests.
    fn floor_summary(&self, run: &Run, per_mb: bool) -> String {
        let floor = self.floor_like(run);
        let figure = |floor: &FloorRun| {
            if per_mb {
                format!("{:.1} ms/MB", floor.cpu_ms_per_mb())
            } else {
                micros(floor.cpu_per_record)
            }
        };
        match (
            floor.iter().find(|f| f.job == FloorJob::FetchCheckAndPut),
            floor.last(),
        ) {
            (Some(plain), Some(all)) => format!(
                " The floor on this stack: {} to move and check the bytes with one plain PUT, {} \
                 with the handler's requests through the AWS SDK.",
                figure(plain),
                figure(all)
            ),
            _ => String::new(),
        }
    }

    fn floor_section(&self, out: &mut String) {
        if self.floor.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "### The floor under CPU per record\n\nThe bench's payloads moved by a client with \
             nothing of the handler's own (`dev/src/bench/floor.rs`), against the null store: \
             reqwest, hyper and rustls on aws-lc as in the handler, on one thread whose CPU \
             clock is the measure, kernel time included. Each step adds to the one before. The \
             handler's row is its run on the same payloads, from the tables around this one.\n"
        );
        let mut sets: Vec<(usize, bool)> = Vec::new();
        for run in &self.floor {
            if !sets.contains(&(run.payload_bytes, run.https)) {
                sets.push((run.payload_bytes, run.https));
            }
        }
        for (payload_bytes, https) in sets {
            let _ = writeln!(
                out,
                "Payloads of {}, over {}:\n\n| Per record | CPU per record | Added by the step | CPU per MB |\n|---|---:|---:|---:|",
                size(payload_bytes),
                if https { "HTTPS" } else { "plain HTTP" }
            );
            let mut before = Duration::ZERO;
            let set = self
                .floor
                .iter()
                .filter(|run| run.payload_bytes == payload_bytes && run.https == https);
            let mut last = None;
            for run in set {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.1} ms |",
                    run.job.label(),
                    micros(run.cpu_per_record),
                    added(run.cpu_per_record, before),
                    run.cpu_ms_per_mb()
                );
                before = run.cpu_per_record;
                last = Some(run);
            }
            if let Some(handler) = last.and_then(|run| self.handler_like(run)) {
                let _ = writeln!(
                    out,
                    "| the handler, S3 path (its pipeline, logging and metrics besides) | {} | {} | {:.1} ms |",
                    micros(handler.cpu_per_record()),
                    added(handler.cpu_per_record(), before),
                    handler.cpu_ms_per_mb()
                );
            }
            let _ = writeln!(out);
        }
    }

    fn profile_section(&self, out: &mut String) {
        let profiled: Vec<(&Run, &super::profile::Breakdown)> = self
            .profiles
            .iter()
            .filter_map(|run| Some((run, run.profile.as_ref()?)))
            .collect();
        if profiled.is_empty() {
            if !self.profiles.is_empty() {
                let _ = writeln!(
                    out,
                    "### Where CPU per record goes\n\nNo profile: `perf` could not sample.\n"
                );
            }
            return;
        }
        let _ = writeln!(
            out,
            concat!(
                "### Where CPU per record goes\n\n`perf record` (CPU clock, 4,999 Hz) over the ",
                "measured invocations of the runs below, as deployed, on a build with its symbol ",
                "table (`--profile profiling`, otherwise the release build). Each sample is put in ",
                "a stage by the crate of the function it landed in (`dev/src/bench/profile.rs`): a ",
                "copy made for hyper counts as a copy, and inlined code counts as its caller. Each ",
                "cell: share of the samples, and that share of the run's CPU per record.\n"
            )
        );
        let mut header = "| Stage |".to_owned();
        let mut rule = "|---|".to_owned();
        for (run, breakdown) in &profiled {
            let _ = write!(
                header,
                " {}, {} ({} samples) |",
                run.workload.sinks.label(),
                run.workload.store.label(),
                breakdown.samples
            );
            rule.push_str("---:|");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for stage in Stage::ALL {
            let mut row = format!("| {stage} |");
            for (run, breakdown) in &profiled {
                let share = breakdown.share(stage);
                let _ = write!(
                    row,
                    " {:.1} % · {} |",
                    share * 100.0,
                    micros(run.cpu_per_record().mul_f64(share))
                );
            }
            let _ = writeln!(out, "{row}");
        }
        let mut total = "| all (CPU per record) |".to_owned();
        for (run, _) in &profiled {
            let _ = write!(total, " 100 % · {} |", micros(run.cpu_per_record()));
        }
        let _ = writeln!(out, "{total}\n");
        for (run, breakdown) in &profiled {
            let _ = writeln!(
                out,
                "Functions with the most samples, {}, {}:\n",
                run.workload.sinks.label(),
                run.workload.store.label()
            );
            for (samples, function, stage) in &breakdown.top {
                let _ = writeln!(
                    out,
                    "- {:.1} % `{}` ({stage})",
                    *samples as f64 * 100.0 / breakdown.samples as f64,
                    shorten(function)
                );
            }
            let _ = writeln!(out);
        }
    }

    /// CPU per record with tracing off and on, each the median of its runs.
    fn tracing_cpu_per_record(&self) -> Option<(Duration, Duration)> {
        let of = |traced: bool| {
            let runs: Vec<Duration> = self
                .tracing
                .iter()
                .filter(|run| run.workload.traced == traced)
                .map(Run::cpu_per_record)
                .collect();
            (!runs.is_empty()).then(|| median(runs))
        };
        Some((of(false)?, of(true)?))
    }

    fn tracing_section(&self, out: &mut String) {
        let Some((off, on)) = self.tracing_cpu_per_record() else {
            return;
        };
        let workload = &self.tracing[0].workload;
        let _ = writeln!(
            out,
            "### Tracing\n\n{} payloads of {}, {} fetch latency, S3, tracing off \
             (`TERRA_TRACING=off`: no exporter) and on (`xray`: every invocation \
             sampled, each span sent to an X-Ray daemon stand-in on loopback as it \
             ends), runs alternated.\n\n\
             | Tracing | Runs | CPU per record | Trace documents per invocation |\n|---|---|---|---|",
            workload.records,
            size(self.tracing[0].payload_bytes_actual),
            ms(workload.latency),
        );
        for (traced, cpu) in [(false, off), (true, on)] {
            let runs: Vec<&Run> = self
                .tracing
                .iter()
                .filter(|run| run.workload.traced == traced)
                .collect();
            let invocations: usize = runs.iter().map(|run| run.walls.len() + 1).sum();
            let documents: usize = runs.iter().map(|run| run.trace_documents).sum();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                if traced { "on" } else { "off" },
                runs.len(),
                micros(cpu),
                documents / invocations.max(1)
            );
        }
        let _ = writeln!(
            out,
            "\nOverhead: {:+.1} % CPU per record.\n",
            tracing_overhead_percent(off, on)
        );
    }

    fn budget_section(&self, out: &mut String) {
        if self.budget.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "### Memory budget\n\nPayloads whose sum in flight is far over the function's \
             512 MB, in records of the size shown (a large Terra payload), at concurrency 32: \
             records wait for room in the memory budget the handler derives from its memory. \
             One warm-up and one measured invocation; the harness kills a handler whose peak \
             passes 512 MiB, as Lambda does.\n"
        );
        let _ = writeln!(
            out,
            "| Sinks | Records × payload | Records of | Asked in flight | Budget | Peak RSS | Peak ÷ memory | Wall time | CPU per MB |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for run in &self.budget {
            let _ = writeln!(
                out,
                "| {} | {} × {} | {} | {} | {} | {} | {:.2} | {} | {:.1} ms |",
                run.workload.sinks.label(),
                run.workload.records,
                size(run.payload_bytes_actual),
                size(
                    run.workload
                        .record_bytes
                        .unwrap_or(run.payload_bytes_actual)
                ),
                mib(run.in_flight_bytes()),
                run.budget_bytes.map_or("?".to_owned(), mib),
                mib(run.peak_rss),
                run.peak_rss as f64 / FUNCTION_MEMORY as f64,
                ms(run.median_wall()),
                run.cpu_ms_per_mb()
            );
        }
        let _ = writeln!(out);
    }

    fn wall_time_section(&self, out: &mut String) {
        let Some(first) = self.by_batch_size.first() else {
            return;
        };
        let w = &first.workload;
        let _ = writeln!(
            out,
            "### Batch wall time\n\n{} payloads of {}, {} fetch latency, concurrency {}, \
             archived to S3. Wall time is from the event handed out on `next` to the \
             response; the median of the measured invocations after one warm-up.\n",
            w.sinks.label(),
            size(first.payload_bytes_actual),
            ms(w.latency),
            w.concurrency
        );
        let _ = writeln!(
            out,
            "| Records | Invocations | I/O lower bound | Wall time | × lower bound | CPU per record | CPU per MB | Peak RSS |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for run in &self.by_batch_size {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} | {} | {:.1} ms | {} |",
                run.workload.records,
                run.walls.len(),
                ms(run.workload.io_lower_bound()),
                ms(run.median_wall()),
                run.times_lower_bound(),
                micros(run.cpu_per_record()),
                run.cpu_ms_per_mb(),
                mib(run.peak_rss)
            );
        }
        let _ = writeln!(out);
    }

    fn memory_section(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "### Peak memory\n\nPeak RSS (VmHWM) of the handler over a warm-up and the measured \
             invocations; growth is over the idle process after init. In flight is \
             min(concurrency, records) × payload size.\n"
        );
        let _ = writeln!(
            out,
            "| Records × payload | Concurrency | In flight | RSS after init | Peak RSS | Growth | Growth ÷ in flight |\n|---|---:|---:|---:|---:|---:|---:|"
        );
        for run in self.by_batch_size.iter().chain(&self.memory) {
            let _ = writeln!(
                out,
                "| {} × {} | {} | {} | {} | {} | {} | {:.2} |",
                run.workload.records,
                size(run.payload_bytes_actual),
                run.workload.concurrency,
                mib(run.in_flight_bytes()),
                mib(run.rss_after_init),
                mib(run.peak_rss),
                mib(run.growth()),
                run.growth() as f64 / run.in_flight_bytes() as f64
            );
        }
        let _ = writeln!(out);
    }

    fn dynamodb_section(&self, out: &mut String) {
        if self.dynamodb.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "### DynamoDB path\n\nEach payload is one activity record, projected into one item \
             (a native map of the record) and written with a conditional `PutItem`.\n"
        );
        let _ = writeln!(
            out,
            "| Sinks | Records × payload | Fetch latency | Concurrency | Wall time | Records/s | Items/s | CPU per record | Peak RSS |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for run in &self.dynamodb {
            let items_per_batch = run.received.items as f64 / (run.walls.len() + 1) as f64;
            let _ = writeln!(
                out,
                "| {} | {} × {} | {} | {} | {} | {:.0} | {:.0} | {} | {} |",
                run.workload.sinks.label(),
                run.workload.records,
                size(run.payload_bytes_actual),
                ms(run.workload.latency),
                run.workload.concurrency,
                ms(run.median_wall()),
                run.records_per_second(),
                items_per_batch / run.median_wall().as_secs_f64(),
                micros(run.cpu_per_record()),
                mib(run.peak_rss)
            );
        }
        let _ = writeln!(out);
    }

    fn cold_start_section(&self, out: &mut String) {
        if self.cold_starts.is_empty() {
            return;
        }
        let durations: Vec<Duration> = self.cold_starts.iter().map(|(d, _)| *d).collect();
        let fastest = durations.iter().min().copied().unwrap_or_default();
        let slowest = durations.iter().max().copied().unwrap_or_default();
        let rss = median(self.cold_starts.iter().map(|(_, r)| *r).collect());
        let _ = writeln!(
            out,
            "### Cold start\n\nProcess start to the first `next` request, with S3 and DynamoDB \
             configured (config validated, every client built).\n\n\
             | Runs | Fastest | Median | Slowest | RSS at first `next` |\n|---:|---:|---:|---:|---:|\n\
             | {} | {} | {} | {} | {} |\n",
            durations.len(),
            ms(fastest),
            ms(median(durations.clone())),
            ms(slowest),
            mib(rss)
        );
    }

    fn binary_section(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "### Binary size\n\nThe `bootstrap` files `cargo lambda build --release` makes \
             (what `sam build` packages).\n\n| Binary | Size | Stripped |\n|---|---:|---|"
        );
        for (name, path) in &self.binaries {
            let (bytes, stripped) = match std::fs::read(path) {
                Ok(contents) => (contents.len() as u64, !has_symbol_table(&contents)),
                Err(_) => continue,
            };
            let _ = writeln!(
                out,
                "| {name} | {} | {} |",
                mib(bytes),
                if stripped { "yes" } else { "no" }
            );
        }
        let _ = writeln!(out);
    }
}

/// Replaces the results between the markers in `existing`, or appends them.
pub fn splice(existing: &str, results: &str) -> String {
    match (existing.find(START_MARKER), existing.find(END_MARKER)) {
        (Some(start), Some(end)) if start < end => format!(
            "{}{}{}",
            &existing[..start],
            results.trim_end_matches('\n'),
            &existing[end + END_MARKER.len()..]
        ),
        _ => format!("{}\n\n{results}", existing.trim_end()),
    }
}

/// An ELF file names its sections in `.shstrtab`; a stripped one has no
/// `.symtab` among them.
fn has_symbol_table(elf: &[u8]) -> bool {
    elf.windows(8).any(|w| w == b".symtab\0")
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .map_or("unknown CPU".to_owned(), |m| m.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or("unknown".to_owned(), |kb| {
            format!("{:.0} GiB", kb as f64 / (1024.0 * 1024.0))
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("unknown".to_owned(), |k| k.trim().to_owned());
    let commit = command("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = !command("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    format!(
        "Measured {} at commit {commit}{} on {cpu}, {cores} cores, {memory} memory, Linux {kernel}; {}.",
        command("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        command("rustc", &["--version"]),
    )
}

fn command(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|text| text.trim().to_owned())
        .unwrap_or_default()
}

fn median<T: Ord + Copy + Default>(mut values: Vec<T>) -> T {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

/// What a step added to the one before, which noise can make less than
/// nothing.
fn added(after: Duration, before: Duration) -> String {
    let micros = (after.as_secs_f64() - before.as_secs_f64()) * 1_000_000.0;
    if micros < 0.0 {
        format!("−{:.0} µs", -micros)
    } else {
        format!("{micros:.0} µs")
    }
}

fn micros(duration: Duration) -> String {
    format!("{:.0} µs", duration.as_secs_f64() * 1_000_000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MB as f64)
}

fn size(bytes: usize) -> String {
    if bytes >= MB {
        format!("{:.0} MB", bytes as f64 / MB as f64)
    } else {
        format!("{:.0} KB", bytes as f64 / KB as f64)
    }
}

/// A function's name without its hash suffix, and at most 100 characters.
fn shorten(function: &str) -> String {
    let name = match function.rsplit_once("::h") {
        Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name
        }
        _ => function,
    };
    let name = name.replace('`', "'");
    match name.char_indices().nth(100) {
        Some((at, _)) => format!("{}…", &name[..at]),
        None => name,
    }
}

/// How much more CPU per record tracing on costs than off, in percent.
pub fn tracing_overhead_percent(off: Duration, on: Duration) -> f64 {
    (on.as_secs_f64() / off.as_secs_f64() - 1.0) * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_the_results() {
        let existing = format!("# Head\n\n{START_MARKER}\nold\n{END_MARKER}\n\n## Analysis\n");
        let new = format!("{START_MARKER}\nnew\n{END_MARKER}\n");
        assert_eq!(
            splice(&existing, &new),
            format!("# Head\n\n{START_MARKER}\nnew\n{END_MARKER}\n\n## Analysis\n")
        );
        assert_eq!(
            splice("# Head\n", &new),
            format!("# Head\n\n{START_MARKER}\nnew\n{END_MARKER}\n")
        );
    }
}
