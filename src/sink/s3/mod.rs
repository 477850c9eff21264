//! The raw archive: each payload as one S3 object, bytes unchanged. Payloads
//! too large to hold are uploaded in parts as they arrive ([`upload`]).

mod replay_reads;
mod upload;

pub use replay_reads::{ArchiveRead, ArchivedAbout, ArchivedPayload};

use std::io::Read;

use async_trait::async_trait;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, MetadataDirective};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use bytes::Bytes;

use super::{
    Archive, ArchiveUpload, ArchiveWrite, ArchivedCopy, ArchivedObject, Delivery, ServerSideCopy,
    SinkError, StreamedUploads, gzip,
};
use crate::fetch::own_bucket::SourceVersion;
use crate::outcome::Retry;
use crate::payload::PayloadSummary;
use crate::sdk_error::describe;
use crate::sink::{ArchiveName, KeyPrefix};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Compression {
    None,
    Gzip,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// `TERRA_S3_BUCKET`.
    pub bucket: String,
    /// `TERRA_S3_PREFIX`.
    pub prefix: KeyPrefix,
    /// `TERRA_S3_COMPRESSION`.
    pub compression: S3Compression,
}

#[derive(Clone)]
pub struct S3Archive {
    client: aws_sdk_s3::Client,
    settings: S3Settings,
}

impl S3Archive {
    pub fn new(client: aws_sdk_s3::Client, settings: S3Settings) -> Self {
        Self { client, settings }
    }

    /// The object key a payload is archived under.
    pub fn key_for(&self, name: &ArchiveName) -> String {
        let suffix = match self.settings.compression {
            S3Compression::None => "",
            S3Compression::Gzip => ".gz",
        };
        name.key(&self.settings.prefix, suffix)
    }

    fn location(&self, key: String) -> ArchivedObject {
        ArchivedObject {
            bucket: self.settings.bucket.clone(),
            key,
        }
    }

    /// Every S3 failure is transient, a refusal too ([`describe`] says which
    /// it was): the archive is the copy that outlives the URL, so a bucket or
    /// permission fixed while the URL lives must find the message still
    /// retrying, not waiting out the queue's visibility timeout.
    fn error(&self, message: impl Into<String>) -> SinkError {
        SinkError {
            sink: "s3",
            retry: Retry::Transient,
            message: message.into(),
            record_at_fault: false,
        }
    }
}

/// The precondition of one conditional write.
#[derive(Debug, Clone)]
enum Expect {
    /// Nothing under the key (`If-None-Match: *`).
    Absent,
    /// The object with this ETag, an older send (`If-Match`).
    Replacing(String),
}

/// What to do after a conditional write found the key taken.
enum AfterConflict {
    /// Write again, under this precondition.
    Write(Expect),
    /// The archive already holds this send, or a later one.
    Settled(ArchiveWrite),
}

/// How many times a write re-reads the object after losing a race.
const CONDITIONAL_ROUNDS: usize = 3;
/// S3's limit for one CopyObject (5 GiB).
const MAX_COPY_BYTES: u64 = 5 * 1024 * 1024 * 1024;
const SENT_AT_METADATA: &str = "terra-sent-at";
const TYPE_METADATA: &str = "terra-type";
const USER_METADATA: &str = "terra-user-id";

impl S3Archive {
    /// One conditional PutObject. `Ok(false)`: the precondition failed (412)
    /// or a concurrent conditional write won (409).
    async fn put(
        &self,
        key: &str,
        body: &Bytes,
        summary: &PayloadSummary,
        sent_at_ms: u64,
        expect: &Expect,
    ) -> Result<bool, SinkError> {
        let request = self
            .client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .content_type("application/json")
            .content_length(body.len() as i64)
            .set_content_encoding(self.content_encoding())
            .set_metadata(Some(object_metadata(summary, sent_at_ms)));
        let request = match expect {
            Expect::Absent => request.if_none_match("*"),
            Expect::Replacing(etag) => request.if_match(etag),
        };
        // The body's integrity rides on its CRC32, which S3 checks before it
        // stores anything, and on TLS: SigV4 need not hash every byte again
        // with SHA-256 (S3 takes `UNSIGNED-PAYLOAD`; the headers, the
        // checksum among them, stay signed). A deployment reaches S3 over
        // TLS only: the template sets no endpoint, and the archive bucket
        // refuses other requests; plain HTTP is a local emulator's.
        let sent = request
            .body(ByteStream::from(body.clone()))
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .customize()
            .disable_payload_signing()
            .send()
            .await;
        precondition_held(sent).map_err(|e| self.error(format!("PutObject {key}: {e}")))
    }

    fn content_encoding(&self) -> Option<String> {
        match self.settings.compression {
            S3Compression::None => None,
            S3Compression::Gzip => Some("gzip".to_owned()),
        }
    }

    /// A conditional write of the send at `sent_at_ms` found `key` taken:
    /// the send stored there decides.
    async fn after_conflict(&self, key: &str, sent_at_ms: u64) -> Result<AfterConflict, SinkError> {
        Ok(match self.stored_send(key).await? {
            None => AfterConflict::Write(Expect::Absent),
            Some((stored, _)) if stored == sent_at_ms => {
                AfterConflict::Settled(ArchiveWrite::AlreadyHeld(self.location(key.to_owned())))
            }
            Some((stored, _)) if stored > sent_at_ms => {
                AfterConflict::Settled(ArchiveWrite::NewerHeld(self.location(key.to_owned())))
            }
            Some((_, etag)) => AfterConflict::Write(Expect::Replacing(etag)),
        })
    }

    /// Lists `key` in the erasure index under the payload's user, before
    /// the object is written: no object is ever there without its marker
    /// (a marker without its object erases nothing).
    async fn index_for_erasure(
        &self,
        key: &str,
        summary: &PayloadSummary,
    ) -> Result<(), SinkError> {
        match &summary.user_id {
            Some(user_id) => self.list_for_erasure(key, user_id).await,
            None => Ok(()),
        }
    }

    /// Puts the erasure index's marker that lists `key` under `user_id`.
    pub async fn list_for_erasure(&self, key: &str, user_id: &str) -> Result<(), SinkError> {
        let marker = crate::erasure::index_marker(&self.settings.prefix, user_id, key);
        self.client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(&marker)
            .content_length(0)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b""))
            .send()
            .await
            .map_err(|e| {
                self.error(format!(
                    "PutObject {marker} (erasure index): {}",
                    describe(&e)
                ))
            })?;
        Ok(())
    }

    /// Conditional writes of `body`, as many rounds as concurrent writers
    /// make necessary.
    async fn put_conditionally(
        &self,
        key: String,
        body: &Bytes,
        summary: &PayloadSummary,
        sent_at_ms: u64,
    ) -> Result<ArchiveWrite, SinkError> {
        self.index_for_erasure(&key, summary).await?;
        self.write_conditionally(key, sent_at_ms, |key, expect| async move {
            self.put(&key, body, summary, sent_at_ms, &expect).await
        })
        .await
    }

    /// Runs `write` under the precondition each round calls for, as many
    /// rounds as concurrent writers make necessary. `write` answers
    /// `Ok(false)` when its precondition failed.
    async fn write_conditionally<F, Fut>(
        &self,
        key: String,
        sent_at_ms: u64,
        write: F,
    ) -> Result<ArchiveWrite, SinkError>
    where
        F: Fn(String, Expect) -> Fut,
        Fut: Future<Output = Result<bool, SinkError>>,
    {
        let mut expect = Expect::Absent;
        for _ in 0..CONDITIONAL_ROUNDS {
            if write(key.clone(), expect).await? {
                return Ok(ArchiveWrite::Written(self.location(key)));
            }
            expect = match self.after_conflict(&key, sent_at_ms).await? {
                AfterConflict::Write(expect) => expect,
                AfterConflict::Settled(write) => return Ok(write),
            };
        }
        Err(self.error(format!(
            "writing {key}: the object kept changing under concurrent writes"
        )))
    }

    /// One conditional CopyObject of a source-bucket object. `Ok(false)`: a
    /// precondition failed (412; the source's too, when it changed) or a
    /// concurrent conditional write won (409).
    async fn copy(
        &self,
        key: &str,
        source: &SourceVersion,
        summary: &PayloadSummary,
        sent_at_ms: u64,
        expect: &Expect,
    ) -> Result<bool, SinkError> {
        let request = self
            .client
            .copy_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .copy_source(format!(
                "{}/{}",
                source.object.bucket,
                upload::percent_encode_path(&source.object.key)
            ))
            .copy_source_if_match(&source.etag)
            .set_expected_source_bucket_owner(source.object.expected_owner.clone())
            .metadata_directive(MetadataDirective::Replace)
            .content_type("application/json")
            .set_metadata(Some(object_metadata(summary, sent_at_ms)));
        let request = match expect {
            Expect::Absent => request.if_none_match("*"),
            Expect::Replacing(etag) => request.if_match(etag),
        };
        precondition_held(request.send().await)
            .map_err(|e| self.error(format!("CopyObject {key} from {}: {e}", source.object)))
    }

    /// The send time and ETag of the object under `key`, if there is one.
    /// An object without the metadata (not written by terra-sink) counts as
    /// older than any send.
    async fn stored_send(&self, key: &str) -> Result<Option<(u64, String)>, SinkError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await;
        match head {
            Ok(head) => Ok(Some((
                sent_at(head.metadata()).unwrap_or(0),
                head.e_tag().unwrap_or_default().to_owned(),
            ))),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(None),
            Err(e) => Err(self.error(format!("HeadObject {key}: {}", describe(&e)))),
        }
    }
}

impl S3Archive {
    /// An object's body as the payload it stores: read whole, and inflated
    /// when it was stored gzipped; `None`, unread, when it holds more than
    /// `max_bytes` (stored or inflated).
    async fn payload_of(
        &self,
        key: &str,
        object: GetObjectOutput,
        gzipped: bool,
        max_bytes: u64,
    ) -> Result<Option<Bytes>, SinkError> {
        let stored_bytes = object.content_length().unwrap_or_default().max(0) as u64;
        if stored_bytes > max_bytes {
            return Ok(None);
        }
        let stored = object
            .body
            .collect()
            .await
            .map_err(|e| self.error(format!("GetObject {key}: reading body: {e}")))?
            .into_bytes();
        if stored.len() as u64 > max_bytes {
            return Ok(None);
        }
        if !gzipped {
            return Ok(Some(stored));
        }
        inflate(stored, max_bytes)
            .await
            .map_err(|e| self.error(format!("GetObject {key}: {e}")))
    }
}

/// A conditional write's answer: `Ok(false)` when its precondition failed
/// (412) or a concurrent conditional write won (409); any other failure,
/// described.
fn precondition_held<T, E>(answer: Result<T, SdkError<E, HttpResponse>>) -> Result<bool, String>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match answer {
        Ok(_) => Ok(true),
        Err(SdkError::ServiceError(e)) if matches!(e.raw().status().as_u16(), 409 | 412) => {
            Ok(false)
        }
        Err(e) => Err(describe(&e)),
    }
}

/// Decompressing tens of MB is CPU work: off the async workers. `None` when
/// it inflates to more than `max_bytes` (a bomb stops there).
pub(crate) async fn inflate(stored: Bytes, max_bytes: u64) -> Result<Option<Bytes>, String> {
    tokio::task::spawn_blocking(move || {
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(&stored[..])
            .take(max_bytes.saturating_add(1))
            .read_to_end(&mut inflated)
            .map(|_| (inflated.len() as u64 <= max_bytes).then(|| Bytes::from(inflated)))
    })
    .await
    .map_err(|e| format!("decompression task failed: {e}"))?
    .map_err(|e| format!("not valid gzip: {e}"))
}

fn sent_at(metadata: Option<&std::collections::HashMap<String, String>>) -> Option<u64> {
    metadata?.get(SENT_AT_METADATA)?.parse().ok()
}

#[async_trait]
impl Archive for S3Archive {
    /// Conditional writes keep the newest send under each name: a late
    /// redelivery of an older send can neither overwrite a newer object nor
    /// race one being written.
    async fn store(&self, delivery: &Delivery) -> Result<ArchiveWrite, SinkError> {
        let key = self.key_for(&delivery.name);
        let body = match self.settings.compression {
            S3Compression::None => delivery.payload.clone(),
            S3Compression::Gzip => {
                let payload = delivery.payload.clone();
                tokio::task::spawn_blocking(move || gzip(&payload))
                    .await
                    .map_err(|e| self.error(format!("compression task failed: {e}")))?
                    .map_err(|e| self.error(format!("compression failed: {e}")))?
            }
        };
        self.put_conditionally(key, &body, &delivery.summary, delivery.sent_at_ms)
            .await
    }

    fn streamed_uploads(&self) -> Option<&dyn StreamedUploads> {
        Some(self)
    }

    /// A compressed archive stores other bytes than the source object's.
    fn server_side_copy(&self) -> Option<&dyn ServerSideCopy> {
        (self.settings.compression == S3Compression::None).then_some(self as &dyn ServerSideCopy)
    }

    async fn holds(
        &self,
        name: &ArchiveName,
        sent_at_ms: u64,
    ) -> Result<Option<ArchivedObject>, SinkError> {
        let key = self.key_for(name);
        Ok(match self.stored_send(&key).await? {
            Some((stored, _)) if stored == sent_at_ms => Some(self.location(key)),
            _ => None,
        })
    }

    async fn retrieve(
        &self,
        name: &ArchiveName,
        sent_at_ms: u64,
        max_bytes: u64,
    ) -> Result<Option<ArchivedCopy>, SinkError> {
        let key = self.key_for(name);
        let result = self
            .client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(&key)
            .send()
            .await;
        let object = match result {
            Ok(object) => object,
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => return Ok(None),
            Err(e) => return Err(self.error(format!("GetObject {key}: {}", describe(&e)))),
        };
        let stored = sent_at(object.metadata());
        if stored != Some(sent_at_ms) {
            tracing::info!(
                object = %key,
                stored_sent_at = stored,
                "the archived object under this name is another send's; not used"
            );
            return Ok(None);
        }
        let gzipped = self.settings.compression == S3Compression::Gzip;
        let payload = self.payload_of(&key, object, gzipped, max_bytes).await?;
        let location = self.location(key);
        Ok(Some(match payload {
            Some(payload) => ArchivedCopy::Payload(payload, location),
            None => ArchivedCopy::TooLarge(location),
        }))
    }
}

fn object_metadata(
    summary: &PayloadSummary,
    sent_at_ms: u64,
) -> std::collections::HashMap<String, String> {
    let mut metadata = std::collections::HashMap::from([
        (
            TYPE_METADATA.to_owned(),
            metadata_value(&summary.event_type),
        ),
        (SENT_AT_METADATA.to_owned(), sent_at_ms.to_string()),
    ]);
    if let Some(user_id) = &summary.user_id {
        metadata.insert(USER_METADATA.to_owned(), metadata_value(user_id));
    }
    if let Some(provider) = &summary.provider {
        metadata.insert("terra-provider".to_owned(), metadata_value(provider));
    }
    metadata
}

/// S3 user metadata travels as HTTP headers: printable ASCII only.
fn metadata_value(value: &str) -> String {
    value
        .chars()
        .take(256)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl StreamedUploads for S3Archive {
    fn begin_upload(&self, name: &ArchiveName, sent_at_ms: u64) -> Box<dyn ArchiveUpload> {
        Box::new(upload::S3Upload::new(
            self.clone(),
            self.key_for(name),
            sent_at_ms,
        ))
    }

    fn upload_holds_bytes(&self) -> u64 {
        upload::HOLDS_BYTES
    }
}

#[async_trait]
impl ServerSideCopy for S3Archive {
    async fn copy_in(
        &self,
        name: &ArchiveName,
        sent_at_ms: u64,
        source: &SourceVersion,
        summary: &PayloadSummary,
    ) -> Result<ArchiveWrite, SinkError> {
        if source.size > MAX_COPY_BYTES {
            return Err(SinkError {
                retry: Retry::Permanent,
                record_at_fault: true,
                ..self.error(format!(
                    "{} is {} bytes; one server-side copy takes at most {MAX_COPY_BYTES}",
                    source.object, source.size
                ))
            });
        }
        let key = self.key_for(name);
        self.index_for_erasure(&key, summary).await?;
        self.write_conditionally(key, sent_at_ms, |key, expect| async move {
            self.copy(&key, source, summary, sent_at_ms, &expect).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::s3_answer as answer;
    use crate::fetch::own_bucket::SourceObject;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use aws_smithy_types::retry::RetryConfig;

    const COPIED: &[u8] = b"<CopyObjectResult><ETag>\"new\"</ETag></CopyObjectResult>";
    const PRECONDITION_FAILED: &[u8] = b"<Error><Code>PreconditionFailed</Code></Error>";

    fn source() -> SourceVersion {
        SourceVersion {
            object: SourceObject {
                bucket: "terra-drop".into(),
                key: "payloads/a b.json".into(),
                region: None,
                expected_owner: Some("123456789012".into()),
            },
            etag: "\"source-etag\"".into(),
            size: 100,
            kms_encrypted: false,
            gzipped: false,
        }
    }

    fn archive(client: aws_sdk_s3::Client) -> S3Archive {
        S3Archive::new(
            client,
            S3Settings {
                bucket: "archive".into(),
                prefix: KeyPrefix::parse("terra/").expect("prefix"),
                compression: S3Compression::None,
            },
        )
    }

    fn summary() -> PayloadSummary {
        crate::payload::inspect(br#"{"type":"activity","user":{"user_id":"u-1"},"data":[]}"#)
            .expect("valid")
    }

    /// The erasure index's marker for the payload's user, put before the
    /// object (`summary()`'s user is u-1).
    fn index_marker_put() -> aws_smithy_mocks::Rule {
        let marker = crate::erasure::index_marker(
            &KeyPrefix::parse("terra/").expect("valid"),
            "u-1",
            "terra/dt=2026-11-30/a.json",
        );
        mock!(aws_sdk_s3::Client::put_object)
            .match_requests(move |put| {
                put.key() == Some(marker.as_str()) && put.content_length() == Some(0)
            })
            .then_http_response(answer(200, &[("etag", "\"marker\"")], b""))
    }

    /// The copy names its source by that version and asks for an empty key
    /// first; when a later send holds the key, it stays. The erasure index
    /// lists it first.
    #[tokio::test]
    async fn a_copy_keeps_the_newest_send_under_its_name() {
        let name = ArchiveName::of_key("terra/", "terra/dt=2026-11-30/a.json");
        let marker = index_marker_put();
        let first_copy = mock!(aws_sdk_s3::Client::copy_object)
            .match_requests(|copy| {
                copy.if_none_match() == Some("*")
                    && copy.copy_source_if_match() == Some("\"source-etag\"")
                    && copy.copy_source() == Some("terra-drop/payloads/a%20b.json")
                    && copy.expected_source_bucket_owner() == Some("123456789012")
                    && copy.metadata().is_some_and(|m| {
                        m.get(SENT_AT_METADATA).map(String::as_str) == Some("1000")
                            && m.get(TYPE_METADATA).map(String::as_str) == Some("activity")
                    })
            })
            .then_http_response(answer(412, &[], PRECONDITION_FAILED));
        let newer = mock!(aws_sdk_s3::Client::head_object).then_http_response(answer(
            200,
            &[("etag", "\"held\""), ("x-amz-meta-terra-sent-at", "2000")],
            b"",
        ));
        let client = mock_client!(
            aws_sdk_s3,
            RuleMode::Sequential,
            [&marker, &first_copy, &newer],
            |c| c.retry_config(RetryConfig::disabled())
        );
        let stored = archive(client)
            .copy_in(&name, 1000, &source(), &summary())
            .await
            .expect("settled");
        assert!(matches!(stored, ArchiveWrite::NewerHeld(_)), "{stored:?}");
        assert_eq!(marker.num_calls(), 1);
    }

    /// An older send under the key is replaced, by that very object only.
    #[tokio::test]
    async fn a_copy_replaces_an_older_send_by_its_etag() {
        let name = ArchiveName::of_key("terra/", "terra/dt=2026-11-30/a.json");
        let marker = index_marker_put();
        let first_copy = mock!(aws_sdk_s3::Client::copy_object).then_http_response(answer(
            412,
            &[],
            PRECONDITION_FAILED,
        ));
        let older = mock!(aws_sdk_s3::Client::head_object).then_http_response(answer(
            200,
            &[("etag", "\"held\""), ("x-amz-meta-terra-sent-at", "500")],
            b"",
        ));
        let replacing = mock!(aws_sdk_s3::Client::copy_object)
            .match_requests(|copy| {
                copy.if_match() == Some("\"held\"") && copy.if_none_match().is_none()
            })
            .then_http_response(answer(200, &[], COPIED));
        let client = mock_client!(
            aws_sdk_s3,
            RuleMode::Sequential,
            [&marker, &first_copy, &older, &replacing],
            |c| c.retry_config(RetryConfig::disabled())
        );
        let stored = archive(client)
            .copy_in(&name, 1000, &source(), &summary())
            .await
            .expect("copied");
        assert!(matches!(stored, ArchiveWrite::Written(_)), "{stored:?}");
        assert_eq!(replacing.num_calls(), 1);
    }

    #[test]
    fn metadata_values_are_header_safe() {
        assert_eq!(metadata_value("GARMIN"), "GARMIN");
        assert_eq!(metadata_value("a\nb\u{e9}"), "a_b_");
    }

    #[test]
    fn gzip_round_trips() {
        let payload = br#"{"type":"activity","data":[]}"#;
        let compressed = gzip(payload).expect("compresses");
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&compressed[..]),
            &mut decoded,
        )
        .expect("decompresses");
        assert_eq!(decoded, payload);
    }

    /// A payload goes up with its CRC32 for S3 to check, and unsigned, so
    /// that its bytes are hashed once, not twice; the headers are signed.
    #[tokio::test]
    async fn a_payload_is_checked_by_its_crc32_not_hashed_for_the_signature() {
        let put = mock!(aws_sdk_s3::Client::put_object).then_http_response(answer(
            200,
            &[("etag", "\"new\"")],
            b"",
        ));
        let sent = crate::fakes::SentRequests::default();
        let client = mock_client!(aws_sdk_s3, RuleMode::Sequential, [&put], |c| c
            .interceptor(sent.clone()));
        let body = Bytes::from_static(br#"{"type":"activity","data":[]}"#);
        let written = archive(client)
            .put("terra/a.json", &body, &summary(), 1000, &Expect::Absent)
            .await
            .expect("written");
        assert!(written);
        // The CRC32 S3 will compute over the body, base64.
        let mut crc = flate2::Crc::new();
        crc.update(&body);
        let expected = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            crc.sum().to_be_bytes(),
        );
        assert_eq!(sent.last_header("x-amz-checksum-crc32"), Some(expected));
        assert_eq!(
            sent.last_header("x-amz-content-sha256").as_deref(),
            Some("UNSIGNED-PAYLOAD")
        );
        let authorization = sent.last_header("authorization").expect("signed");
        assert!(
            authorization.contains("x-amz-checksum-crc32")
                && authorization.contains("if-none-match"),
            "{authorization}"
        );
    }
}
