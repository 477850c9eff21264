//! Hostile queue messages and a hostile payload server, through the compiled
//! `sqs-handler`: every record ends in a classified failure, the batch
//! answers in time, and nothing the function prints (logs, errors, metrics,
//! the response) holds a URL query string, a signature or an AWS credential.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};
use support::bed::{Bed, assert_no_secrets, failed_ids, pointer, sqs_record};
use support::now_ms;
use support::payload_server::Behaviour;
use support::payload_server::PRESIGNED_QUERY;
use support::runtime_api::{HandlerProcess, InvocationResult};
use terra_sink_dev::deployed::Deployed;
use terra_sink_dev::logs::record_failures;

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(body).expect("in-memory write");
    encoder.finish().expect("in-memory write")
}

const SQS_HANDLER: &str = env!("CARGO_BIN_EXE_sqs-handler");
const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMIK7MDENGbPxRfiCYHOSTILETESTKEY";

/// Runs `records` (id, body) through a fresh handler; returns the failed ids'
/// (class, retry) and everything the process printed plus the response.
async fn run(
    bed: &Bed,
    extra_env: &[(&str, &str)],
    records: &[(&str, String)],
) -> (BTreeMap<String, (String, String)>, String) {
    let now = now_ms();
    let event = json!({"Records": records.iter().map(|(id, body)| sqs_record(id, body, now)).collect::<Vec<_>>()});
    let mut env = bed.env(extra_env);
    env.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_SECRET_ACCESS_KEY".into(), SECRET_ACCESS_KEY.into()));
    let handler = HandlerProcess::spawn(SQS_HANDLER, &env);
    // Short, so the endless body meets the deadline soon: a body that keeps
    // coming is bounded by the deadline and the size limit.
    let result = bed.runtime.invoke(&event, Duration::from_secs(8)).await;
    let failed = failed_ids(&result);
    let InvocationResult::Response(response) = &result else {
        unreachable!("failed_ids checked the response");
    };
    // Let the last log lines through the pipe.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let output = handler.output();
    let logged = record_failures(&output);
    let classes = failed
        .iter()
        .map(|id| {
            let failure = logged
                .get(id)
                .unwrap_or_else(|| panic!("{id} failed without a log line:\n{output}"));
            (id.clone(), (failure.class.clone(), failure.retry.clone()))
        })
        .collect();
    (classes, format!("{output}\n{response}"))
}

fn assert_clean(everything: &str) {
    assert_no_secrets(everything);
    assert!(
        !everything.contains(SECRET_ACCESS_KEY),
        "output leaks the secret access key:\n{everything}"
    );
}

fn expect(cases: &[(&str, &str, &str)]) -> BTreeMap<String, (String, String)> {
    cases
        .iter()
        .map(|(id, class, retry)| (id.to_string(), (class.to_string(), retry.to_string())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_payload_server_gets_bounded_classified_failures() {
    let bed = Bed::start("terra-hostile").await;
    let p = &bed.payloads;
    let deep = format!(
        r#"{{"type":"activity","data":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let mut not_utf8 = br#"{"type":"activity","data":[""#.to_vec();
    not_utf8.extend([0xff, 0xfe, 0xc0, 0x80]);
    not_utf8.extend(br#""]}"#);
    // 32 MiB of spaces in about 32 KiB on the wire, against a 1 MiB limit.
    let bomb = gzip(&vec![b' '; 32 * 1024 * 1024]);
    let records = [
        (
            "gzip-bomb",
            pointer(&p.route("/bomb.json", Behaviour::Gzipped(bomb))),
        ),
        (
            "endless-body",
            pointer(&p.route(
                "/endless.json",
                Behaviour::Trickle(Duration::from_millis(100)),
            )),
        ),
        (
            "terabyte-length",
            pointer(&p.route(
                "/terabyte.json",
                Behaviour::DeclaredLength {
                    declared: 1 << 40,
                    body: b"{".to_vec(),
                },
            )),
        ),
        (
            "short-body",
            pointer(&p.route(
                "/short.json",
                Behaviour::DeclaredLength {
                    declared: 50_000,
                    body: b"{\"type\":".to_vec(),
                },
            )),
        ),
        (
            "reset-mid-body",
            pointer(&p.route("/reset.json", Behaviour::ResetMidBody(vec![b' '; 100_000]))),
        ),
        (
            "invalid-utf8",
            pointer(&p.route("/utf8.json", Behaviour::Ok(not_utf8))),
        ),
        (
            "nested-100k",
            pointer(&p.route("/deep.json", Behaviour::Ok(deep.into_bytes()))),
        ),
        (
            "redirect-to-metadata",
            pointer(&p.route(
                "/to-metadata.json",
                Behaviour::Redirect(format!(
                    "http://169.254.169.254/latest/meta-data/iam/{PRESIGNED_QUERY}"
                )),
            )),
        ),
        (
            "redirect-loop",
            pointer(&p.route(
                "/loop.json",
                Behaviour::Redirect(format!("http://{}/loop.json{PRESIGNED_QUERY}", p.addr)),
            )),
        ),
    ];
    let (classes, everything) = run(
        &bed,
        &[
            ("TERRA_MAX_PAYLOAD_BYTES", "1048576"),
            ("TERRA_FETCH_TIMEOUT_SECS", "1"),
            ("TERRA_FETCH_MAX_ATTEMPTS", "2"),
        ],
        &records,
    )
    .await;
    assert_eq!(
        classes,
        expect(&[
            ("gzip-bomb", "fetch", "permanent"),
            ("endless-body", "deferred", "transient"),
            ("terabyte-length", "fetch", "permanent"),
            ("short-body", "fetch", "transient"),
            ("reset-mid-body", "fetch", "transient"),
            ("invalid-utf8", "invalid", "permanent"),
            ("nested-100k", "invalid", "permanent"),
            ("redirect-to-metadata", "refused", "permanent"),
            ("redirect-loop", "fetch", "permanent"),
        ]),
        "{everything}"
    );
    assert!(bed.moto.objects(&bed.bucket).await.is_empty());
    assert_clean(&everything);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queue_messages_are_refused_before_any_request() {
    let bed = Bed::start("terra-ssrf").await;
    let url = |base: &str| format!("{base}{PRESIGNED_QUERY}");
    let records = [
        (
            "metadata-literal",
            pointer(&url("https://169.254.169.254/latest/meta-data/")),
        ),
        ("decimal-loopback", pointer(&url("https://2130706433/"))),
        ("octal-loopback", pointer(&url("https://0177.0.0.1/"))),
        ("hex-loopback", pointer(&url("https://0x7f.0.0.1/"))),
        (
            "mapped-v6",
            pointer(&url("https://[::ffff:169.254.169.254]/")),
        ),
        ("private-v6", pointer(&url("https://[fd00::1]/"))),
        (
            "userinfo",
            pointer(&url("https://s3.amazonaws.com@169.254.169.254/")),
        ),
        (
            "plain-http",
            pointer(&url("http://terra-payloads.s3.amazonaws.com/a.json")),
        ),
        ("file-scheme", pointer("file:///etc/passwd")),
        (
            "odd-port",
            pointer(&url("https://terra-payloads.s3.amazonaws.com:6379/a.json")),
        ),
        (
            "not-allowed-host",
            pointer(&url("https://attacker.example/a.json")),
        ),
        // Under amazonaws.com, but not S3: the template's allow-list names S3.
        (
            "api-gateway",
            pointer(&url(
                "https://abc123.execute-api.us-east-1.amazonaws.com/prod/a.json",
            )),
        ),
        (
            "sts",
            pointer("https://sts.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15"),
        ),
        ("localhost-name", pointer(&url("https://localhost/a.json"))),
        (
            "url-not-a-string",
            json!({"type": "s3_payload", "url": {"href": url("https://x/")}}).to_string(),
        ),
        (
            "body-not-json",
            format!("see https://b.s3.amazonaws.com/a.json{PRESIGNED_QUERY}"),
        ),
        (
            "unknown-type",
            json!({"type": "rm -rf", "url": url("https://b.s3.amazonaws.com/a")}).to_string(),
        ),
    ];
    // The template's own allow-list, plus names the address checks must
    // refuse even when listed.
    let deployed = Deployed::from_template();
    let (_, template_hosts) = deployed
        .environment
        .iter()
        .find(|(name, _)| name == "TERRA_ALLOWED_URL_HOSTS")
        .expect("the template sets TERRA_ALLOWED_URL_HOSTS");
    let allowed = format!("{template_hosts},localhost,2130706433,169.254.169.254");
    let (classes, everything) = run(
        &bed,
        &[
            ("TERRA_ALLOW_INSECURE_URLS", "false"),
            ("TERRA_ALLOWED_URL_HOSTS", &allowed),
        ],
        &records,
    )
    .await;
    let refused = [
        "metadata-literal",
        "decimal-loopback",
        "octal-loopback",
        "hex-loopback",
        "mapped-v6",
        "private-v6",
        "userinfo",
        "plain-http",
        "file-scheme",
        "odd-port",
        "not-allowed-host",
        "api-gateway",
        "sts",
        "localhost-name",
    ];
    let mut expected: Vec<(&str, &str, &str)> = refused
        .iter()
        .map(|id| (*id, "refused", "permanent"))
        .collect();
    expected.extend([
        ("url-not-a-string", "invalid", "permanent"),
        ("body-not-json", "invalid", "permanent"),
        ("unknown-type", "invalid", "permanent"),
    ]);
    assert_eq!(classes, expect(&expected), "{everything}");
    assert_clean(&everything);
    let summary: Value = everything
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["fields"]["message"] == support::logs::BATCH_DONE)
        .expect("a summary line");
    assert_eq!(summary["fields"]["failed"], records.len());
}
