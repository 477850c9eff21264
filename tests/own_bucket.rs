//! Terra's own-bucket mode through the compiled `sqs-handler`, against moto:
//! payload URLs into a source bucket (`TERRA_SOURCE_BUCKETS`) are read with
//! the function's credentials, however long ago their signature expired, and
//! archived by a copy inside S3; every other URL follows the usual policy.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use serde_json::{Value, json};
use support::bed::{
    Bed, KafkaRecord, KafkaSource, assert_all_succeeded, base64, big_activity, failed_ids,
    kafka_event, pointer, sqs_record,
};
use support::logs::{LoggedFailure, record_failures};
use support::payload_server::{Behaviour, assert_no_secrets};
use support::runtime_api::{HandlerProcess, InvocationResult};
use support::{fixture, now_ms};

const SQS_HANDLER: &str = env!("CARGO_BIN_EXE_sqs-handler");
const KAFKA_HANDLER: &str = env!("CARGO_BIN_EXE_kafka-handler");
const ARCHIVE: &str = "customer-archive";
const SOURCE: &str = "terra-drop";
const TABLE: &str = "terra-records";
const USER: &str = "USER#40f7b0e1-89e2-43ac-a5b8-1e29c8d47cad";

/// Sent twenty minutes ago with Terra's ten-minute lifetime: a pre-signed
/// URL in this message is long dead.
fn long_ago() -> u64 {
    now_ms() - 20 * 60 * 1000
}

/// A real pre-signed GetObject URL, signed at `sent_at_ms` for Terra's 600 s.
async fn presigned(bed: &Bed, bucket: &str, key: &str, sent_at_ms: u64) -> String {
    let signed_at = SystemTime::UNIX_EPOCH + Duration::from_millis(sent_at_ms);
    let config = PresigningConfig::builder()
        .start_time(signed_at)
        .expires_in(Duration::from_secs(600))
        .build()
        .expect("presigning config");
    bed.moto
        .s3()
        .get_object()
        .bucket(bucket)
        .key(key)
        .presigned(config)
        .await
        .expect("presigned")
        .uri()
        .to_owned()
}

async fn put(bed: &Bed, bucket: &str, key: &str, body: &[u8]) {
    bed.moto
        .s3()
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
}

async fn bed_with_source() -> Bed {
    let bed = Bed::start(ARCHIVE).await;
    bed.moto.create_bucket(SOURCE).await;
    bed
}

/// `id` is the batch's only failure, logged as `class`, for good.
fn assert_failed_alone(result: &InvocationResult, output: &str, id: &str, class: &str) {
    assert_eq!(
        failed_ids(result),
        BTreeSet::from([id.to_owned()]),
        "{output}"
    );
    assert_eq!(
        record_failures(output).get(id),
        Some(&failure(class)),
        "{output}"
    );
}

fn failure(class: &str) -> LoggedFailure {
    LoggedFailure {
        class: class.into(),
        retry: "permanent".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_bucket_payloads_land_though_their_urls_expired_and_other_urls_keep_the_policy() {
    let bed = bed_with_source().await;
    bed.moto.create_table(TABLE).await;
    bed.moto.create_bucket("not-terras").await;
    let activity = fixture("openapi_activity.json");
    let sleep = fixture("openapi_sleep.json");
    let daily = fixture("openapi_daily.json");
    put(&bed, SOURCE, "payloads/40f7b0e1/activity.json", &activity).await;
    put(&bed, SOURCE, "payloads/40f7b0e1/sleep night.json", &sleep).await;
    put(&bed, "not-terras", "payloads/daily.json", &daily).await;

    let sent = long_ago();
    let in_source = presigned(&bed, SOURCE, "payloads/40f7b0e1/activity.json", sent).await;
    // Terra's own example shape: virtual-hosted, with the region. The SDK's
    // endpoint (moto) serves it, as S3 would in that region.
    let virtual_hosted = format!(
        "https://{SOURCE}.s3.eu-west-2.amazonaws.com/payloads/40f7b0e1/sleep%20night.json\
         ?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00{}",
        "ab".repeat(31)
    );
    let other_bucket = presigned(&bed, "not-terras", "payloads/daily.json", sent).await;
    let missing = presigned(&bed, SOURCE, "payloads/40f7b0e1/gone.json", sent).await;
    let fresh = bed
        .payloads
        .route("/p/body.json", Behaviour::Ok(fixture("openapi_body.json")));
    let records = json!({ "Records": [
        sqs_record("in-source", &pointer(&in_source), sent),
        sqs_record("virtual-hosted", &pointer(&virtual_hosted), sent + 1000),
        sqs_record("other-bucket", &pointer(&other_bucket), sent + 2000),
        sqs_record("missing", &pointer(&missing), sent + 3000),
        sqs_record("other-host", &pointer(&fresh), now_ms() - 1000),
        sqs_record(
            "not-allowed",
            &pointer("https://storage.googleapis.com/terra-drop/payloads/a.json?X-Goog-Signature=1"),
            now_ms() - 1000,
        ),
    ]});
    let env = bed.env(&[
        ("TERRA_DYNAMODB_TABLE", TABLE),
        ("TERRA_SOURCE_BUCKETS", &format!("{SOURCE},another-drop")),
    ]);
    let handler = HandlerProcess::spawn(SQS_HANDLER, &env);
    let result = bed.runtime.invoke(&records, Duration::from_secs(60)).await;
    let output = handler.output();

    assert_eq!(
        failed_ids(&result),
        BTreeSet::from([
            "other-bucket".into(),
            "missing".into(),
            "not-allowed".into()
        ]),
        "output:\n{output}"
    );
    assert_eq!(
        record_failures(&output),
        BTreeMap::from([
            // Not a source bucket: its URL expired like any other.
            ("other-bucket".to_owned(), failure("expired")),
            ("missing".to_owned(), failure("fetch")),
            ("not-allowed".to_owned(), failure("refused")),
        ]),
        "output:\n{output}"
    );

    // Both sinks hold the source-bucket payloads, the archive byte for byte.
    let archived: HashMap<Vec<u8>, _> = bed
        .moto
        .objects(ARCHIVE)
        .await
        .into_iter()
        .map(|object| (object.body.clone(), object))
        .collect();
    assert_eq!(archived.len(), 3, "two from the source bucket, one fetched");
    for (payload, event_type) in [(&activity, "activity"), (&sleep, "sleep")] {
        let object = archived
            .get(payload)
            .unwrap_or_else(|| panic!("{event_type} not archived as it is in the source bucket"));
        assert_eq!(object.metadata["terra-type"], event_type);
        assert_eq!(
            object.metadata["terra-user-id"],
            USER.trim_start_matches("USER#")
        );
        assert!(object.metadata.contains_key("terra-sent-at"));
        assert_eq!(object.content_type.as_deref(), Some("application/json"));
    }
    let items = bed.moto.items(TABLE).await;
    let sort_keys: BTreeSet<&str> = items
        .keys()
        .filter(|(pk, _)| pk == USER)
        .map(|(_, sk)| sk.as_str())
        .collect();
    assert!(
        sort_keys.contains("ACTIVITY#123e4567-e89b-12d3-a456-426614174000"),
        "{sort_keys:?}"
    );
    assert!(
        sort_keys.iter().any(|sk| sk.starts_with("SLEEP#")),
        "{sort_keys:?}"
    );
    assert!(sort_keys.contains("BODY#2026-07-01"), "{sort_keys:?}");
    assert!(
        !sort_keys.iter().any(|sk| sk.starts_with("DAILY#")),
        "{sort_keys:?}"
    );
    assert_no_secrets(&output);
    assert!(
        !output.contains("X-Amz-Signature"),
        "a signature was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_copies_in_past_the_size_limit_without_reading_the_payload() {
    let bed = bed_with_source().await;
    // Terra's field order (type and user before data), as it arrives.
    let mut large = big_activity("copied-in", 20_000, true);
    let data = large["data"].take();
    let large = serde_json::to_vec(&json!({
        "type": large["type"].take(),
        "user": large["user"].take(),
        "data": data,
    }))
    .expect("json");
    let limit = 64 * 1024;
    assert!(large.len() > 4 * limit, "{} bytes", large.len());
    put(&bed, SOURCE, "payloads/large.json", &large).await;
    let sent = long_ago();
    let url = presigned(&bed, SOURCE, "payloads/large.json", sent).await;
    let records = json!({ "Records": [sqs_record("large", &pointer(&url), sent)] });

    // Archive only: copied in whole, past TERRA_MAX_PAYLOAD_BYTES.
    let env = bed.env(&[
        ("TERRA_SOURCE_BUCKETS", SOURCE),
        ("TERRA_MAX_PAYLOAD_BYTES", &limit.to_string()),
        // Room for one record of the limit, not for the payload.
        ("TERRA_MEMORY_BUDGET_MB", "1"),
    ]);
    let handler = HandlerProcess::spawn(SQS_HANDLER, &env);
    let result = bed.runtime.invoke(&records, Duration::from_secs(60)).await;
    assert_all_succeeded(&result, &handler);
    let objects = bed.moto.objects(ARCHIVE).await;
    assert_eq!(objects.len(), 1);
    assert!(objects[0].body == large, "the archived copy differs");
    let user: Value = serde_json::from_slice::<Value>(&large).expect("json")["user"].clone();
    assert_eq!(objects[0].metadata["terra-type"], "activity");
    assert_eq!(
        objects[0].metadata["terra-user-id"],
        user["user_id"].as_str().expect("user id")
    );
    assert_eq!(objects[0].metadata["terra-sent-at"], sent.to_string());
    drop(handler);

    // With a table as well, the table cannot take it: archived all the same,
    // and the record fails for good, not to be retried.
    bed.moto.create_table(TABLE).await;
    bed.moto
        .s3()
        .delete_object()
        .bucket(ARCHIVE)
        .key(&objects[0].key)
        .send()
        .await
        .expect("delete");
    let env = bed.env(&[
        ("TERRA_SOURCE_BUCKETS", SOURCE),
        ("TERRA_MAX_PAYLOAD_BYTES", &limit.to_string()),
        ("TERRA_DYNAMODB_TABLE", TABLE),
    ]);
    let handler = HandlerProcess::spawn(SQS_HANDLER, &env);
    let result = bed.runtime.invoke(&records, Duration::from_secs(60)).await;
    let output = handler.output();
    assert_failed_alone(&result, &output, "large", "fetch");
    let objects = bed.moto.objects(ARCHIVE).await;
    assert_eq!(objects.len(), 1, "archived although too large to project");
    assert!(objects[0].body == large);
    assert!(bed.moto.items(TABLE).await.is_empty());
    drop(handler);

    // The source object gone since (a lifecycle rule, say): the archived
    // copy stands in only within the limit, so it is not read back either.
    bed.moto
        .s3()
        .delete_object()
        .bucket(SOURCE)
        .key("payloads/large.json")
        .send()
        .await
        .expect("delete");
    let handler = HandlerProcess::spawn(SQS_HANDLER, &env);
    let result = bed.runtime.invoke(&records, Duration::from_secs(60)).await;
    let output = handler.output();
    assert_failed_alone(&result, &output, "large", "fetch");
    assert!(output.contains("archived, not projected"), "{output}");
    assert!(bed.moto.items(TABLE).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_archive_reads_the_payload_and_compresses_it() {
    let bed = bed_with_source().await;
    let activity = fixture("openapi_activity.json");
    put(&bed, SOURCE, "payloads/activity.json", &activity).await;
    let sent = long_ago();
    let url = presigned(&bed, SOURCE, "payloads/activity.json", sent).await;
    let env = bed.env(&[
        ("TERRA_SOURCE_BUCKETS", SOURCE),
        ("TERRA_S3_COMPRESSION", "gzip"),
    ]);
    let handler = HandlerProcess::spawn(SQS_HANDLER, &env);
    let result = bed
        .runtime
        .invoke(
            &json!({ "Records": [sqs_record("gz", &pointer(&url), sent)] }),
            Duration::from_secs(60),
        )
        .await;
    assert_all_succeeded(&result, &handler);
    let objects = bed.moto.objects(ARCHIVE).await;
    assert_eq!(objects.len(), 1);
    assert!(objects[0].key.ends_with(".json.gz"), "{}", objects[0].key);
    assert_eq!(objects[0].content_encoding.as_deref(), Some("gzip"));
    assert!(support::gunzip(&objects[0].body) == activity);
}

/// An empty object is no payload: refused for good, not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_source_object_is_invalid_for_good() {
    let bed = bed_with_source().await;
    put(&bed, SOURCE, "payloads/empty.json", b"").await;
    let sent = long_ago();
    let url = presigned(&bed, SOURCE, "payloads/empty.json", sent).await;
    let handler = HandlerProcess::spawn(SQS_HANDLER, &bed.env(&[("TERRA_SOURCE_BUCKETS", SOURCE)]));
    let result = bed
        .runtime
        .invoke(
            &json!({ "Records": [sqs_record("empty", &pointer(&url), sent)] }),
            Duration::from_secs(60),
        )
        .await;
    let output = handler.output();
    assert_failed_alone(&result, &output, "empty", "invalid");
    assert!(bed.moto.objects(ARCHIVE).await.is_empty());
}

/// A source bucket under IAM enforcement: Terra (who uploads and signs the
/// URLs) may read it all; the function may do anything but read one key
/// (a key policy or an ACL it lacks would look the same). Three pointers:
/// to the denied key with a live URL and with a dead one, and to a key the
/// function may read with a dead URL.
struct DeniedKey {
    bed: Bed,
    function: aws_sdk_s3::config::Credentials,
    quarantine: String,
    /// (id, pointer message, sent at)
    pointers: [(&'static str, String, u64); 3],
    payloads: BTreeSet<Vec<u8>>,
}

async fn denied_key() -> DeniedKey {
    let mut bed = bed_with_source().await;
    let quarantine = bed.moto.create_queue("terra-kafka-quarantine").await;
    let activity = fixture("openapi_activity.json");
    let sleep = fixture("openapi_sleep.json");
    put(&bed, SOURCE, "payloads/denied/activity.json", &activity).await;
    put(&bed, SOURCE, "payloads/open/sleep.json", &sleep).await;
    let keys = bed.moto.enforce_iam_with(&[
        (
            "observer",
            json!({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "*", "Resource": "*"}
            ]}),
        ),
        (
            "terra",
            json!({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
                 "Resource": format!("arn:aws:s3:::{SOURCE}/*")}
            ]}),
        ),
        (
            "function",
            json!({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "*", "Resource": "*"},
                {"Effect": "Deny", "Action": "s3:GetObject",
                 "Resource": format!("arn:aws:s3:::{SOURCE}/payloads/denied/*")}
            ]}),
        ),
    ]);
    bed.moto.call_as(keys["terra"].clone());
    let fresh = now_ms() - 1000;
    let sent = long_ago();
    let denied_fresh = presigned(&bed, SOURCE, "payloads/denied/activity.json", fresh).await;
    let denied_dead = presigned(&bed, SOURCE, "payloads/denied/activity.json", sent).await;
    let open_dead = presigned(&bed, SOURCE, "payloads/open/sleep.json", sent).await;
    bed.moto.call_as(keys["observer"].clone());
    DeniedKey {
        bed,
        function: keys["function"].clone(),
        quarantine,
        pointers: [
            ("denied-fresh", pointer(&denied_fresh), fresh),
            ("denied-dead", pointer(&denied_dead), sent),
            ("open-dead", pointer(&open_dead), sent + 1),
        ],
        payloads: BTreeSet::from([activity, sleep]),
    }
}

impl DeniedKey {
    /// The bed's environment, calling as the function.
    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self.bed.env(extra);
        env.retain(|(name, _)| name != "AWS_ACCESS_KEY_ID" && name != "AWS_SECRET_ACCESS_KEY");
        env.push((
            "AWS_ACCESS_KEY_ID".into(),
            self.function.access_key_id().into(),
        ));
        env.push((
            "AWS_SECRET_ACCESS_KEY".into(),
            self.function.secret_access_key().into(),
        ));
        env
    }

    async fn archived(&self) -> BTreeSet<Vec<u8>> {
        self.bed
            .moto
            .objects(ARCHIVE)
            .await
            .into_iter()
            .map(|object| object.body)
            .collect()
    }
}

/// While the pre-signed URL lives, a read the role is denied is fetched
/// through the URL instead; once it has died, the record fails for good
/// (`fetch`, permanent). Keys the role may read land however old their URLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_the_role_is_denied_falls_back_to_the_url_while_it_lives() {
    let denied = denied_key().await;
    let records: Vec<Value> = denied
        .pointers
        .iter()
        .map(|(id, pointer, sent)| sqs_record(id, pointer, *sent))
        .collect();
    let handler = HandlerProcess::spawn(
        SQS_HANDLER,
        &denied.env(&[("TERRA_SOURCE_BUCKETS", SOURCE)]),
    );
    let result = denied
        .bed
        .runtime
        .invoke(&json!({ "Records": records }), Duration::from_secs(60))
        .await;
    let output = handler.output();

    assert_eq!(
        failed_ids(&result),
        BTreeSet::from(["denied-dead".into()]),
        "{output}"
    );
    assert_eq!(
        record_failures(&output),
        BTreeMap::from([("denied-dead".to_owned(), failure("fetch"))]),
        "{output}"
    );
    assert_eq!(denied.archived().await, denied.payloads, "{output}");
    assert!(
        output.contains("fetching the URL instead"),
        "the refusal is logged:\n{output}"
    );
    assert_no_secrets(&output);
}

/// Through `kafka-handler`, in both response modes: the denied key with a
/// dead URL is poison, quarantined once, and the batch settles instead of
/// stalling its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_a_denied_read_past_its_url_is_quarantined_once_and_the_partition_moves_on() {
    let denied = denied_key().await;
    let records: Vec<KafkaRecord> = denied
        .pointers
        .iter()
        .enumerate()
        .map(|(offset, (_, pointer, sent))| KafkaRecord {
            topic: "terra-events".into(),
            partition: 0,
            offset: offset as i64,
            value: base64(pointer),
            timestamp_ms: *sent,
        })
        .collect();
    let event = kafka_event(KafkaSource::SelfManaged, &records);
    for partial_batch in ["true", "false"] {
        let handler = HandlerProcess::spawn(
            KAFKA_HANDLER,
            &denied.env(&[
                ("TERRA_SOURCE_BUCKETS", SOURCE),
                ("TERRA_KAFKA_PARTIAL_BATCH", partial_batch),
                ("TERRA_QUARANTINE_QUEUE_URL", &denied.quarantine),
            ]),
        );
        let result = denied
            .bed
            .runtime
            .invoke(&event, Duration::from_secs(60))
            .await;
        let output = handler.output();
        let InvocationResult::Response(response) = &result else {
            panic!("partial batch {partial_batch}: the batch settles, got {result:?}\n{output}");
        };
        assert_eq!(
            response["batchItemFailures"].as_array().map(Vec::len),
            Some(0),
            "{output}"
        );
        let letters = denied.bed.moto.drain(&denied.quarantine).await;
        assert_eq!(letters.len(), 1, "partial batch {partial_batch}: {output}");
        let letter: Value = serde_json::from_str(letters[0].body().expect("a body")).expect("JSON");
        assert_eq!(letter["offset"], 1, "{letter}");
        assert_eq!(letter["failure"]["class"], "fetch", "{letter}");
        assert_eq!(denied.archived().await, denied.payloads, "{output}");
        assert_no_secrets(&output);
    }
}

/// An object Terra stored with `Content-Encoding: gzip` lands inflated, as
/// its URL's download would: archived as the payload it holds, not as the
/// compressed bytes (which would fail as no JSON, or be archived as such).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_encoded_source_object_lands_inflated() {
    let bed = bed_with_source().await;
    let activity = fixture("openapi_activity.json");
    bed.moto
        .s3()
        .put_object()
        .bucket(SOURCE)
        .key("payloads/activity.json.gz")
        .content_encoding("gzip")
        .body(ByteStream::from(support::payload_server::gzip(&activity)))
        .send()
        .await
        .expect("put");
    let sent = long_ago();
    let url = presigned(&bed, SOURCE, "payloads/activity.json.gz", sent).await;
    let handler = HandlerProcess::spawn(SQS_HANDLER, &bed.env(&[("TERRA_SOURCE_BUCKETS", SOURCE)]));
    let result = bed
        .runtime
        .invoke(
            &json!({ "Records": [sqs_record("gz-source", &pointer(&url), sent)] }),
            Duration::from_secs(60),
        )
        .await;
    assert_all_succeeded(&result, &handler);
    let objects = bed.moto.objects(ARCHIVE).await;
    assert_eq!(objects.len(), 1);
    assert!(objects[0].body == activity, "archived inflated");
    assert_eq!(objects[0].metadata["terra-type"], "activity");
}
