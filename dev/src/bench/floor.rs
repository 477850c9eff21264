//! The floor under the handler's CPU per record: the same bytes moved on
//! the same stack (reqwest, hyper and rustls on aws-lc, the kernel's
//! loopback) with nothing of the handler's own, so that what the handler
//! spends above it is known to be its pipeline, the AWS SDK and its
//! logging, and what it spends within it no implementation on this stack
//! could save.
//!
//! Five jobs, each adding to the one before: download each payload; check
//! it is JSON the cheapest way serde_json offers (UTF-8, then skipping
//! every value); PUT it to the store as one plain request; put it instead
//! through the AWS SDK as the handler does (a conditional `PutObject`,
//! SigV4 over its headers, its CRC32, the payload unsigned); and put the
//! erasure index's empty marker before it, as the handler does. Each runs
//! on one thread of its own (a current-thread runtime), whose CPU clock is
//! the measure: it counts the kernel's work for its sockets as the
//! handler's `/proc` figures do.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use futures::StreamExt;
use serde::de::IgnoredAny;

use super::{MB, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorJob {
    Fetch,
    FetchAndCheck,
    FetchCheckAndPut,
    FetchCheckAndSdkPut,
    FetchCheckAndSdkPutWithMarker,
}

impl FloorJob {
    pub const ALL: [FloorJob; 5] = [
        FloorJob::Fetch,
        FloorJob::FetchAndCheck,
        FloorJob::FetchCheckAndPut,
        FloorJob::FetchCheckAndSdkPut,
        FloorJob::FetchCheckAndSdkPutWithMarker,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FloorJob::Fetch => "download",
            FloorJob::FetchAndCheck => "download, and check it is JSON (UTF-8, serde_json's skip)",
            FloorJob::FetchCheckAndPut => "download, check, and PUT it (one plain request)",
            FloorJob::FetchCheckAndSdkPut => {
                "download, check, and put it through the AWS SDK as the handler does"
            }
            FloorJob::FetchCheckAndSdkPutWithMarker => {
                "the same, and the erasure index's marker before it: the handler's requests"
            }
        }
    }
}

/// One job's CPU per record, on payloads of `payload_bytes`.
#[derive(Debug, Clone)]
pub struct FloorRun {
    pub job: FloorJob,
    pub cpu_per_record: Duration,
    pub payload_bytes: usize,
    pub https: bool,
}

impl FloorRun {
    pub fn cpu_ms_per_mb(&self) -> f64 {
        self.cpu_per_record.as_secs_f64() * 1000.0 / (self.payload_bytes as f64 / MB as f64)
    }
}

/// Runs `job` over `urls` (one batch of the workload's records, each of
/// `payload_bytes`) `batches` times after one unmeasured batch,
/// `workload.concurrency` at a time, and puts to `store_endpoint`; over
/// HTTPS when `ca_pem` (the bench's own authority) is given.
pub fn measure_floor(
    job: FloorJob,
    workload: &Workload,
    urls: Vec<String>,
    payload_bytes: usize,
    store_endpoint: String,
    ca_pem: Option<Vec<u8>>,
) -> FloorRun {
    let https = ca_pem.is_some();
    let concurrency = workload.concurrency;
    let batches = workload.batches;
    let records = urls.len();
    let cpu = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the floor job");
        runtime.block_on(async move {
            let mut client = reqwest::Client::builder();
            if let Some(ca_pem) = &ca_pem {
                client = client.add_root_certificate(
                    reqwest::Certificate::from_pem(ca_pem).expect("the bench's authority"),
                );
            }
            let client = client.build().expect("an HTTP client");
            let s3 = s3_client(&store_endpoint, ca_pem);
            let clients = Clients {
                http: &client,
                s3: &s3,
                store: &store_endpoint,
            };
            let batch = || {
                futures::stream::iter(urls.iter().enumerate())
                    .map(|(n, url)| one_record(job, clients, url, n))
                    .buffer_unordered(concurrency)
                    .collect::<Vec<()>>()
            };
            batch().await;
            let before = thread_cpu();
            for _ in 0..batches {
                batch().await;
            }
            thread_cpu().saturating_sub(before)
        })
    })
    .join()
    .expect("the floor job ran");
    FloorRun {
        job,
        cpu_per_record: cpu / u32::try_from(records * batches).expect("a bench-sized count"),
        payload_bytes,
        https,
    }
}

#[derive(Clone, Copy)]
struct Clients<'a> {
    http: &'a reqwest::Client,
    s3: &'a aws_sdk_s3::Client,
    store: &'a str,
}

/// An S3 client as the handlers build theirs (path-style, as for any local
/// endpoint), trusting the bench's authority when given.
fn s3_client(endpoint: &str, ca_pem: Option<Vec<u8>>) -> aws_sdk_s3::Client {
    use aws_smithy_http_client::tls;
    let mut trust_store = tls::TrustStore::empty();
    if let Some(ca_pem) = ca_pem {
        trust_store = trust_store.with_pem_certificate(ca_pem);
    }
    let tls_context = tls::TlsContext::builder()
        .with_trust_store(trust_store)
        .build()
        .expect("a TLS context");
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(tls_context)
        .build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "bench", "bench", None, None, "bench",
        ))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .http_client(http_client)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

async fn one_record(job: FloorJob, clients: Clients<'_>, url: &str, n: usize) {
    let payload = clients
        .http
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("the payload server answers")
        .bytes()
        .await
        .expect("the payload arrives whole");
    if job == FloorJob::Fetch {
        return;
    }
    std::str::from_utf8(&payload).expect("a UTF-8 payload");
    serde_json::from_slice::<IgnoredAny>(&payload).expect("a JSON payload");
    if job == FloorJob::FetchAndCheck {
        return;
    }
    let key = format!("floor/{n}.json");
    if job == FloorJob::FetchCheckAndPut {
        clients
            .http
            .put(format!("{}/terra-bench/{key}", clients.store))
            .body(payload)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("the store answers");
        return;
    }
    if job == FloorJob::FetchCheckAndSdkPutWithMarker {
        clients
            .s3
            .put_object()
            .bucket("terra-bench")
            .key(format!("erasure-index/user/{key}"))
            .content_length(0)
            .body(ByteStream::from_static(b""))
            .send()
            .await
            .expect("the store takes the marker");
    }
    clients
        .s3
        .put_object()
        .bucket("terra-bench")
        .key(key)
        .content_type("application/json")
        .content_length(i64::try_from(payload.len()).expect("a bench-sized payload"))
        .metadata("terra-sent-at", "1")
        .if_none_match("*")
        .body(ByteStream::from(payload))
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .customize()
        .disable_payload_signing()
        .send()
        .await
        .expect("the store takes the payload");
}

fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `now` is.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "the thread's CPU clock");
    Duration::new(
        u64::try_from(now.tv_sec).expect("a clock past the epoch"),
        u32::try_from(now.tv_nsec).expect("nanoseconds under a second"),
    )
}
