//! `make bench`: the compiled `sqs-handler` driven through the Runtime API
//! against a payload server with set latency and payload size, writing to a
//! [`NullStore`]. Measures what a Lambda bill and Terra's URL lifetime
//! depend on: batch wall time against the I/O lower bound, CPU per record
//! and per MB, peak memory, cold-start time and binary size.
//!
//! Figures come from the handler process itself (`/proc/<pid>`), so the
//! servers sharing the machine do not count against it (though they do share
//! its two cores, which wall times include).
//!
//! A workload can also run as deployed: under Lambda's CPU share for its
//! memory ([`CpuQuota`]), over HTTPS ([`TestAuthority`]), with moto as the
//! store so that real S3 and DynamoDB responses are parsed, and sampled by
//! `perf` ([`profile`]).

use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::{Value, json};

pub mod floor;
pub mod profile;
pub mod report;

use crate::cpu_quota::{CpuQuota, MB_PER_VCPU, Throttling};
use crate::demo::loopback_function_env;
use crate::moto::Moto;
use crate::null_store::{NullStore, Received};
use crate::payload_server::{Behaviour, PayloadServer};
use crate::runtime_api::{HandlerProcess, InvocationResult, RuntimeApi};
use crate::sqs_mapping::sqs_record;
use crate::terra_simulator::{activity_in_records, in_terra_order, large_activity};
use crate::tls_front::{TestAuthority, TlsFront};
use crate::xray_daemon::XrayDaemon;

pub const KB: usize = 1024;
pub const MB: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sinks {
    S3,
    DynamoDb,
    S3AndDynamoDb,
}

impl Sinks {
    fn label(self) -> &'static str {
        match self {
            Sinks::S3 => "S3",
            Sinks::DynamoDb => "DynamoDB",
            Sinks::S3AndDynamoDb => "S3 + DynamoDB",
        }
    }

    fn env(self) -> Vec<(&'static str, &'static str)> {
        let bucket = ("TERRA_S3_BUCKET", "terra-bench");
        let table = ("TERRA_DYNAMODB_TABLE", "terra-bench");
        match self {
            Sinks::S3 => vec![bucket],
            Sinks::DynamoDb => vec![table],
            Sinks::S3AndDynamoDb => vec![bucket, table],
        }
    }
}

/// What the handler writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// [`NullStore`]: AWS's answers, nothing kept; the handler's own cost.
    Null,
    /// moto: real S3 and DynamoDB responses, parsed as in the field.
    Moto,
}

impl Store {
    pub fn label(self) -> &'static str {
        match self {
            Store::Null => "null store",
            Store::Moto => "moto",
        }
    }
}

/// The bucket and table a benchmark writes to.
const BENCH_STORE: &str = "terra-bench";

/// One batch shape, invoked `batches` times on one warm handler process.
#[derive(Debug, Clone)]
pub struct Workload {
    pub records: usize,
    pub payload_bytes: usize,
    pub latency: Duration,
    pub concurrency: usize,
    pub sinks: Sinks,
    /// Measured invocations, after one unmeasured warm-up invocation.
    pub batches: usize,
    /// `None`: each payload is one activity record. `Some(bytes)`: records
    /// of about that size, as a large Terra payload holds.
    pub record_bytes: Option<usize>,
    /// Tracing on (`TERRA_TRACING=xray`), every invocation sampled, the
    /// spans sent to an X-Ray daemon stand-in: the worst case.
    pub traced: bool,
    pub store: Store,
    /// Payload host and store behind HTTPS, as in the field.
    pub https: bool,
    /// The function's memory in MB, and Lambda's CPU share for it as a
    /// cgroup quota on the handler. `None`: 512 MB and the whole machine.
    pub memory_mb: Option<u32>,
    /// Sample the measured invocations with `perf` (give an unstripped
    /// handler).
    pub profiled: bool,
    /// Invocations handed to the one process at a time, as Lambda Managed
    /// Instances do (`AWS_LAMBDA_MAX_CONCURRENCY`). Each measured batch is
    /// this many invocations at once, of `records` each.
    pub invocations_at_once: usize,
    /// The CPU quota in cores, when not Lambda's share for `memory_mb`
    /// (Managed Instances give a vCPU per 2 to 8 GiB, not per 1,769 MB).
    pub vcpus: Option<f64>,
}

impl Workload {
    pub fn new(records: usize, payload_bytes: usize) -> Workload {
        Workload {
            records,
            payload_bytes,
            latency: Duration::from_millis(50),
            concurrency: 32,
            sinks: Sinks::S3,
            batches: 3,
            record_bytes: None,
            traced: false,
            store: Store::Null,
            https: false,
            memory_mb: None,
            profiled: false,
            invocations_at_once: 1,
            vcpus: None,
        }
    }

    /// As deployed: HTTPS, and Lambda's CPU share for `memory_mb`.
    pub fn deployed(self, memory_mb: u32) -> Workload {
        Workload {
            https: true,
            memory_mb: Some(memory_mb),
            ..self
        }
    }

    /// On Lambda Managed Instances: an execution environment of `vcpus` at
    /// their default 2 GiB each, taking `at_once` invocations at a time;
    /// HTTPS.
    pub fn managed_instances(self, vcpus: u32, at_once: usize) -> Workload {
        Workload {
            https: true,
            memory_mb: Some(vcpus * 2048),
            vcpus: Some(f64::from(vcpus)),
            invocations_at_once: at_once,
            ..self
        }
    }

    /// The cores the handler may use: the quota's, or the whole machine's
    /// (two) when unbounded.
    pub fn cores(&self) -> f64 {
        match (self.vcpus, self.memory_mb) {
            (Some(vcpus), _) => vcpus,
            (None, Some(memory_mb)) => f64::from(memory_mb) / f64::from(MB_PER_VCPU),
            (None, None) => 2.0,
        }
    }

    /// ⌈N / concurrency⌉ × latency: the batch time if only fetch latency
    /// counted and every slot were always busy.
    pub fn io_lower_bound(&self) -> Duration {
        self.latency * self.records.div_ceil(self.concurrency) as u32
    }
}

/// What one [`Workload`] measured.
#[derive(Debug, Clone)]
pub struct Run {
    pub workload: Workload,
    /// Wall time of each measured invocation: event handed out to response.
    pub walls: Vec<Duration>,
    /// User + system CPU of the handler over the measured invocations.
    pub cpu: Duration,
    pub rss_after_init: u64,
    /// The handler's peak resident memory (VmHWM) over its whole life.
    pub peak_rss: u64,
    /// What the store received over all invocations, warm-up included.
    pub received: Received,
    /// Records the handler reported failed, over all invocations.
    pub failed_records: usize,
    pub payload_bytes_actual: usize,
    /// The memory budget the handler logged at cold start.
    pub budget_bytes: Option<u64>,
    /// Trace documents the X-Ray daemon stand-in received (traced runs).
    pub trace_documents: usize,
    /// How often the CPU quota held the handler back (quota-bound runs).
    pub throttling: Option<Throttling>,
    /// Where the measured invocations' CPU went (profiled runs).
    pub profile: Option<profile::Breakdown>,
    /// TLS connections the handler opened to the store, warm-up included
    /// (HTTPS runs): far fewer than its requests while they are kept alive.
    pub store_connections: Option<usize>,
}

impl Run {
    pub fn median_wall(&self) -> Duration {
        let mut walls = self.walls.clone();
        walls.sort();
        walls[walls.len() / 2]
    }

    pub fn times_lower_bound(&self) -> f64 {
        self.median_wall().as_secs_f64() / self.workload.io_lower_bound().as_secs_f64()
    }

    fn measured_records(&self) -> usize {
        self.workload.records * self.workload.invocations_at_once * self.walls.len()
    }

    pub fn cpu_per_record(&self) -> Duration {
        self.cpu / self.measured_records() as u32
    }

    pub fn cpu_ms_per_mb(&self) -> f64 {
        let measured_mb = (self.measured_records() * self.payload_bytes_actual) as f64 / MB as f64;
        self.cpu.as_secs_f64() * 1000.0 / measured_mb
    }

    /// Records put through per second: every invocation of a batch.
    pub fn records_per_second(&self) -> f64 {
        (self.workload.records * self.workload.invocations_at_once) as f64
            / self.median_wall().as_secs_f64()
    }

    /// Peak memory above the idle process.
    pub fn growth(&self) -> u64 {
        self.peak_rss.saturating_sub(self.rss_after_init)
    }

    /// Payload bytes the concurrency allows in flight at once.
    pub fn in_flight_bytes(&self) -> u64 {
        (self.workload.concurrency.min(self.workload.records) * self.payload_bytes_actual) as u64
    }
}

/// A Terra activity of about `bytes` bytes (heart-rate samples make up the
/// size), unique to `n`.
pub fn activity_of_size(n: usize, bytes: usize) -> Bytes {
    let size = |samples| in_terra_order(&large_activity(n, samples)).len();
    let base = size(0);
    let per_sample = (size(1000) - base) as f64 / 1000.0;
    let samples = (bytes.saturating_sub(base) as f64 / per_sample).round() as usize;
    Bytes::from(in_terra_order(&large_activity(n, samples)))
}

/// Runs `workload` against a fresh handler process and measures it.
pub async fn measure(handler: &str, workload: &Workload) -> Run {
    let authority = workload.https.then(TestAuthority::new);
    let store = StoreServer::start(workload.store, authority.as_ref()).await;
    let payloads = PayloadServer::start().await;
    let payloads_front = match &authority {
        Some(authority) => Some(authority.front(payloads.addr).await),
        None => None,
    };
    let runtime = RuntimeApi::start().await;
    // moto keeps what it is sent, so each invocation brings payloads of its
    // own, as in the field (a payload sent again is a redelivery, and costs
    // the conditional write's extra round trips). The null store keeps
    // nothing, and the same payloads serve every invocation.
    let distinct_invocations = match workload.store {
        Store::Null => 1,
        Store::Moto => workload.batches + 1,
    };
    let mut actual_size = 0;
    let urls: Vec<Vec<String>> = (0..distinct_invocations)
        .map(|invocation| {
            let first = invocation * workload.records;
            let (urls, size) = serve_payloads(&payloads, workload, first);
            actual_size = size;
            match &payloads_front {
                Some(front) => urls.iter().map(|url| front.https(url)).collect(),
                None => urls,
            }
        })
        .collect();
    let urls_of = |invocation: usize| &urls[invocation % distinct_invocations];

    let mut env = bench_env(&runtime, &store.endpoint(), workload.sinks);
    env.push((
        "TERRA_FETCH_CONCURRENCY".into(),
        workload.concurrency.to_string(),
    ));
    if let Some(authority) = &authority {
        // Read by both HTTP clients' root stores (rustls-native-certs).
        env.push((
            "SSL_CERT_FILE".into(),
            authority.ca_file.display().to_string(),
        ));
    }
    if let Some(memory_mb) = workload.memory_mb {
        env.retain(|(name, _)| name != "AWS_LAMBDA_FUNCTION_MEMORY_SIZE");
        env.push((
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
            memory_mb.to_string(),
        ));
    }
    let daemon = XrayDaemon::start().await;
    if workload.traced {
        env.push(("TERRA_TRACING".into(), "xray".into()));
        env.push(("AWS_XRAY_DAEMON_ADDRESS".into(), daemon.addr.to_string()));
    }
    if workload.invocations_at_once > 1 {
        env.push((
            "AWS_LAMBDA_MAX_CONCURRENCY".into(),
            workload.invocations_at_once.to_string(),
        ));
    }
    let quota = match (workload.vcpus, workload.memory_mb) {
        (Some(vcpus), _) => Some(CpuQuota::of_cores(vcpus)),
        (None, Some(memory_mb)) => Some(CpuQuota::for_memory(memory_mb)),
        (None, None) => None,
    }
    .map(|quota| quota.unwrap_or_else(|e| panic!("CPU quota: {e}")));
    let handler = HandlerProcess::spawn(handler, &env);
    if let Some(quota) = &quota {
        // Before its first poll: init runs under the quota too, as it does
        // in Lambda.
        quota
            .admit(handler.pid())
            .unwrap_or_else(|e| panic!("CPU quota: {e}"));
    }
    wait_for_first_poll(&runtime, &handler).await;
    let rss_after_init = proc_status(handler.pid(), "VmRSS");

    let (_, mut failed_records) =
        invoke_at_once(&runtime, &handler, workload, urls_of(0), "warmup").await;
    let throttled_before = quota.as_ref().map(CpuQuota::throttling);
    let recording = if workload.profiled {
        let recording = profile::Recording::attach(handler.pid());
        assert!(recording.is_some(), "perf could not be started");
        recording
    } else {
        None
    };
    let cpu_before = cpu_time(handler.pid());
    let mut walls = Vec::new();
    for batch in 0..workload.batches {
        let (wall, failed) = invoke_at_once(
            &runtime,
            &handler,
            workload,
            urls_of(batch + 1),
            &format!("b{batch}"),
        )
        .await;
        walls.push(wall);
        failed_records += failed;
    }
    let cpu = cpu_time(handler.pid()).saturating_sub(cpu_before);
    let profile = recording.and_then(profile::Recording::finish);
    let throttling = quota.as_ref().map(|quota| {
        let (before, after) = (throttled_before.unwrap_or_default(), quota.throttling());
        Throttling {
            periods: after.periods - before.periods,
            throttled: after.throttled - before.throttled,
        }
    });
    let peak_rss = proc_status(handler.pid(), "VmHWM");
    let budget_bytes = logged_budget(&handler.output());
    drop(handler);
    Run {
        workload: workload.clone(),
        walls,
        cpu,
        rss_after_init,
        peak_rss,
        received: store.received().await,
        failed_records,
        payload_bytes_actual: actual_size,
        budget_bytes,
        trace_documents: daemon.settled_count(Duration::from_millis(100)).await,
        throttling,
        profile,
        store_connections: store.front.as_ref().map(TlsFront::connections),
    }
}

/// The same payloads as `workload`'s, moved by each [`floor::FloorJob`]
/// against the null store (over HTTPS when the workload is), with nothing
/// of the handler's own.
pub async fn floor(workload: &Workload) -> Vec<floor::FloorRun> {
    let authority = workload.https.then(TestAuthority::new);
    let store = StoreServer::start(Store::Null, authority.as_ref()).await;
    let payloads = PayloadServer::start().await;
    let (urls, payload_bytes) = serve_payloads(&payloads, workload, 0);
    let front = match &authority {
        Some(authority) => Some(authority.front(payloads.addr).await),
        None => None,
    };
    let urls: Vec<String> = match &front {
        Some(front) => urls.iter().map(|url| front.https(url)).collect(),
        None => urls,
    };
    let ca_pem = authority
        .as_ref()
        .map(|authority| std::fs::read(&authority.ca_file).expect("the bench's authority"));
    let mut runs = Vec::new();
    for job in floor::FloorJob::ALL {
        let (workload, urls, endpoint, ca_pem) = (
            workload.clone(),
            urls.clone(),
            store.endpoint(),
            ca_pem.clone(),
        );
        // Its own thread, so the servers keep this runtime's workers.
        let run = tokio::task::spawn_blocking(move || {
            floor::measure_floor(job, &workload, urls, payload_bytes, endpoint, ca_pem)
        })
        .await
        .expect("the floor job ran");
        runs.push(run);
    }
    runs
}

/// Routes `workload.records` payloads, numbered from `first`, on `payloads`:
/// their URLs, and the size of each.
fn serve_payloads(
    payloads: &PayloadServer,
    workload: &Workload,
    first: usize,
) -> (Vec<String>, usize) {
    // Payloads this large are served from one copy, so the harness's own
    // memory and set-up time stay small; each is still downloaded apart.
    let shared = match workload.record_bytes {
        Some(record) if workload.payload_bytes >= SHARED_BODY_FROM => Some(Bytes::from(
            activity_in_records(0, workload.payload_bytes, record),
        )),
        _ => None,
    };
    let mut actual_size = 0;
    let urls = (first..first + workload.records)
        .map(|n| {
            let body = match (&shared, workload.record_bytes) {
                (Some(body), _) => body.clone(),
                (None, Some(record)) => {
                    Bytes::from(activity_in_records(n, workload.payload_bytes, record))
                }
                (None, None) => activity_of_size(n, workload.payload_bytes),
            };
            actual_size = body.len();
            payloads.route(
                &format!("/bench/{n}.json"),
                Behaviour::Delay(workload.latency, body),
            )
        })
        .collect();
    (urls, actual_size)
}

/// The store a workload writes to, and the HTTPS in front of it.
struct StoreServer {
    kind: StoreKind,
    front: Option<TlsFront>,
}

enum StoreKind {
    Null(NullStore),
    Moto(Moto),
}

impl StoreServer {
    async fn start(store: Store, authority: Option<&TestAuthority>) -> StoreServer {
        let kind = match store {
            Store::Null => StoreKind::Null(NullStore::start().await),
            Store::Moto => {
                let moto = Moto::start().await;
                moto.create_bucket(BENCH_STORE).await;
                moto.create_table(BENCH_STORE).await;
                StoreKind::Moto(moto)
            }
        };
        let plain = match &kind {
            StoreKind::Null(null) => null.addr,
            StoreKind::Moto(moto) => moto
                .endpoint
                .trim_start_matches("http://")
                .parse()
                .expect("moto listens on an address"),
        };
        let front = match authority {
            Some(authority) => Some(authority.front(plain).await),
            None => None,
        };
        StoreServer { kind, front }
    }

    /// For `AWS_ENDPOINT_URL`.
    fn endpoint(&self) -> String {
        match (&self.front, &self.kind) {
            (Some(front), _) => front.endpoint(),
            (None, StoreKind::Null(null)) => null.endpoint(),
            (None, StoreKind::Moto(moto)) => moto.endpoint.clone(),
        }
    }

    /// What the store holds: moto's objects and items are counted once
    /// each (the workload writes each once).
    async fn received(&self) -> Received {
        match &self.kind {
            StoreKind::Null(null) => null.received(),
            StoreKind::Moto(moto) => {
                let (objects, index_markers) = moto.count_keys(BENCH_STORE).await;
                Received {
                    objects,
                    index_markers,
                    distinct_keys: objects,
                    items: moto.count_items(BENCH_STORE).await,
                    ..Received::default()
                }
            }
        }
    }
}

const SHARED_BODY_FROM: usize = 32 * MB;

/// `memory_budget_bytes` from the handler's cold-start log line.
fn logged_budget(output: &str) -> Option<u64> {
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find_map(|line| line["fields"]["memory_budget_bytes"].as_u64())
}

/// The function's configuration: `sinks` at `store`, payload URLs allowed on
/// loopback, credentials as Lambda passes them (a session token included),
/// and otherwise the defaults a deployment has.
fn bench_env(runtime: &RuntimeApi, store_endpoint: &str, sinks: Sinks) -> Vec<(String, String)> {
    let mut env = loopback_function_env(runtime.addr, store_endpoint);
    env.push(("AWS_SESSION_TOKEN".into(), "bench-session-token".into()));
    env.extend(
        sinks
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    env
}

/// `workload.invocations_at_once` invocations of `urls`, all handed out at
/// once: the wall time until the last is answered, and the records failed.
async fn invoke_at_once(
    runtime: &RuntimeApi,
    handler: &HandlerProcess,
    workload: &Workload,
    urls: &[String],
    batch: &str,
) -> (Duration, usize) {
    if workload.invocations_at_once == 1 {
        return invoke_batch(runtime, handler, urls, batch).await;
    }
    let started = Instant::now();
    let answers = futures::future::join_all((0..workload.invocations_at_once).map(|n| {
        let id = format!("{batch}i{n}");
        async move { invoke_batch(runtime, handler, urls, &id).await }
    }))
    .await;
    let failed = answers.iter().map(|(_, failed)| failed).sum();
    (started.elapsed(), failed)
}

async fn invoke_batch(
    runtime: &RuntimeApi,
    handler: &HandlerProcess,
    urls: &[String],
    batch: &str,
) -> (Duration, usize) {
    let sent_at = crate::now_ms();
    let records: Vec<Value> = urls
        .iter()
        .enumerate()
        .map(|(n, url)| {
            let pointer = json!({"type": "s3_payload", "url": url, "expires_in": 600});
            sqs_record(&format!("{batch}-{n}"), &pointer.to_string(), sent_at)
        })
        .collect();
    let event = json!({ "Records": records });
    let started = Instant::now();
    let result = runtime.invoke(&event, Duration::from_secs(300)).await;
    let wall = started.elapsed();
    let InvocationResult::Response(response) = result else {
        panic!(
            "the handler failed the invocation: {result:?}\n{}",
            handler.output()
        );
    };
    let failed = response["batchItemFailures"].as_array().map_or(0, Vec::len);
    (wall, failed)
}

async fn wait_for_first_poll(runtime: &RuntimeApi, handler: &HandlerProcess) -> Instant {
    let started = Instant::now();
    loop {
        if let Some(polled) = runtime.first_poll() {
            return polled;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the handler never asked for an event:\n{}",
            handler.output()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Cold start, `runs` times: process start to the first request for an
/// event, with both sinks configured, and the RSS then.
pub async fn cold_starts(handler: &str, runs: usize) -> Vec<(Duration, u64)> {
    let store = NullStore::start().await;
    let mut starts = Vec::new();
    for _ in 0..runs {
        let runtime = RuntimeApi::start().await;
        let env = bench_env(&runtime, &store.endpoint(), Sinks::S3AndDynamoDb);
        let spawned = Instant::now();
        let handler = HandlerProcess::spawn(handler, &env);
        let polled = wait_for_first_poll(&runtime, &handler).await;
        starts.push((
            polled.duration_since(spawned),
            proc_status(handler.pid(), "VmRSS"),
        ));
    }
    starts
}

/// A field of `/proc/<pid>/status` given in kB, in bytes.
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    crate::runtime_api::proc_field_kib(&status, &format!("{field}:"))
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// User + system CPU time of a process, all its threads (living and ended).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // The command name (field 2) may hold spaces; fields count from after it.
    let after_name = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64)
}

fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}
