//! A payload too large to hold, archived as a multipart upload while it
//! downloads. The object appears only when the upload completes, under the
//! same conditions as a single PutObject, so a payload found invalid part-way
//! never shows. An upload dropped unfinished is aborted in the background;
//! one that could not be (the process was killed) is removed by the bucket's
//! `AbortIncompleteMultipartUpload` rule.

use std::io::Write;

use async_trait::async_trait;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use flate2::Compression;
use flate2::write::GzEncoder;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::{AfterConflict, CONDITIONAL_ROUNDS, Expect, S3Archive, S3Compression, object_metadata};
use crate::fetch::RetryDelays;
use crate::outcome::Retry;
use crate::payload::PayloadSummary;
use crate::sdk_error::{classify, describe};
use crate::sink::{ArchiveUpload, ArchiveWrite, SinkError};

/// Parts are uploaded once this many bytes are ready; S3 wants at least
/// 5 MiB in every part but the last.
const PART_BYTES: usize = 8 * 1024 * 1024;

/// The most an upload holds, with room to spare: a part's buffer (a part
/// and a piece) and the compressor's output.
pub(super) const HOLDS_BYTES: u64 = 2 * PART_BYTES as u64;

pub(super) struct S3Upload {
    archive: S3Archive,
    key: String,
    sent_at_ms: u64,
    gzip: Option<GzEncoder<Vec<u8>>>,
    /// Bytes for the next part.
    part: BytesMut,
    started: Option<Started>,
}

/// A multipart upload under way.
struct Started {
    upload_id: String,
    /// The summary its metadata was made from.
    metadata_from: PayloadSummary,
    parts: Vec<CompletedPart>,
}

impl S3Upload {
    pub(super) fn new(archive: S3Archive, key: String, sent_at_ms: u64) -> Self {
        let gzip = (archive.settings.compression == S3Compression::Gzip)
            .then(|| GzEncoder::new(Vec::new(), Compression::default()));
        Self {
            archive,
            key,
            sent_at_ms,
            gzip,
            part: BytesMut::new(),
            started: None,
        }
    }

    /// Runs the compressor, when there is one, off the async workers.
    async fn compressed(&mut self, bytes: Bytes, last: bool) -> Result<Bytes, SinkError> {
        let Some(mut encoder) = self.gzip.take() else {
            return Ok(bytes);
        };
        let (encoder, output) = tokio::task::spawn_blocking(move || {
            encoder.write_all(&bytes)?;
            if last {
                return encoder.finish().map(|output| (None, output));
            }
            let output = std::mem::take(encoder.get_mut());
            Ok((Some(encoder), output))
        })
        .await
        .map_err(|e| self.archive.error(format!("compression task failed: {e}")))?
        .map_err(|e| self.archive.error(format!("compression failed: {e}")))?;
        self.gzip = encoder;
        Ok(Bytes::from(output))
    }

    async fn start(&self, known_so_far: &PayloadSummary) -> Result<Started, SinkError> {
        let created = self
            .archive
            .client
            .create_multipart_upload()
            .bucket(&self.archive.settings.bucket)
            .key(&self.key)
            .content_type("application/json")
            .set_content_encoding(self.archive.content_encoding())
            .set_metadata(Some(object_metadata(known_so_far, self.sent_at_ms)))
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .send()
            .await
            .map_err(|e| {
                self.archive.error(format!(
                    "CreateMultipartUpload {}: {}",
                    self.key,
                    describe(&e)
                ))
            })?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        if upload_id.is_empty() {
            return Err(self
                .archive
                .error(format!("CreateMultipartUpload {}: no upload id", self.key)));
        }
        Ok(Started {
            upload_id,
            metadata_from: known_so_far.clone(),
            parts: Vec::new(),
        })
    }

    async fn send_part(
        &mut self,
        bytes: Bytes,
        known_so_far: &PayloadSummary,
    ) -> Result<(), SinkError> {
        if self.started.is_none() {
            self.started = Some(self.start(known_so_far).await?);
        }
        let Some(started) = &mut self.started else {
            return Err(self
                .archive
                .error(format!("UploadPart {}: no upload under way", self.key)));
        };
        let number = started.parts.len() as i32 + 1;
        let sent = retried(|| {
            self.archive
                .client
                .upload_part()
                .bucket(&self.archive.settings.bucket)
                .key(&self.key)
                .upload_id(&started.upload_id)
                .part_number(number)
                .content_length(bytes.len() as i64)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(ByteStream::from(bytes.clone()))
                // Checked by its CRC32, as a whole object is (`S3Archive::put`).
                .customize()
                .disable_payload_signing()
                .send()
        })
        .await
        .map_err(|e| {
            self.archive.error(format!(
                "UploadPart {} #{number}: {}",
                self.key,
                describe(&e)
            ))
        })?;
        started.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(sent.e_tag().map(str::to_owned))
                .set_checksum_crc32(sent.checksum_crc32().map(str::to_owned))
                .build(),
        );
        Ok(())
    }

    /// One conditional CompleteMultipartUpload. `Ok(None)`: the
    /// precondition failed and the upload is still there to complete.
    async fn complete(
        &self,
        started: &Started,
        expect: &Expect,
    ) -> Result<Option<String>, SinkError> {
        let sent = retried(|| {
            let request = self
                .archive
                .client
                .complete_multipart_upload()
                .bucket(&self.archive.settings.bucket)
                .key(&self.key)
                .upload_id(&started.upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(started.parts.clone()))
                        .build(),
                );
            let request = match expect {
                Expect::Absent => request.if_none_match("*"),
                Expect::Replacing(etag) => request.if_match(etag),
            };
            request.send()
        })
        .await;
        match sent {
            Ok(done) => Ok(Some(done.e_tag().unwrap_or_default().to_owned())),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 412 => Ok(None),
            // A concurrent conditional write won, and S3 discarded this upload.
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 409 => {
                Err(self.archive.error(format!(
                    "CompleteMultipartUpload {}: a concurrent write won; the upload was discarded",
                    self.key
                )))
            }
            Err(e) => Err(self.archive.error(format!(
                "CompleteMultipartUpload {}: {}",
                self.key,
                describe(&e)
            ))),
        }
    }

    /// The metadata was made from the summary as far as it was known when
    /// the upload began; when the payload's end changed it, the object is
    /// copied onto itself with the final metadata (no bytes pass through
    /// the function). Only if it is still the object just completed.
    async fn correct_metadata(&self, started: &Started, summary: &PayloadSummary, etag: &str) {
        let same = |a: &PayloadSummary| {
            (&a.event_type, &a.user_id, &a.provider)
                == (&summary.event_type, &summary.user_id, &summary.provider)
        };
        if same(&started.metadata_from) {
            return;
        }
        let source = format!(
            "{}/{}",
            self.archive.settings.bucket,
            percent_encode_path(&self.key)
        );
        let copied = self
            .archive
            .client
            .copy_object()
            .bucket(&self.archive.settings.bucket)
            .key(&self.key)
            .copy_source(source)
            .copy_source_if_match(etag)
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .content_type("application/json")
            .set_content_encoding(self.archive.content_encoding())
            .set_metadata(Some(object_metadata(summary, self.sent_at_ms)))
            .send()
            .await;
        if let Err(e) = copied {
            // The payload is archived; only its metadata is partial.
            tracing::warn!(
                object = %self.key,
                error = %describe(&e),
                "could not correct the archived object's metadata"
            );
        }
    }

    async fn abort_started(&self, started: &Started) {
        abort_upload(
            &self.archive.client,
            &self.archive.settings.bucket,
            &self.key,
            &started.upload_id,
        )
        .await;
    }
}

/// Tries of one multipart call for a transient failure, each after the
/// SDK's own: giving up aborts the whole upload, and the download behind it
/// is redone on the next delivery, so a part is worth a few seconds more.
/// The invocation's deadline stops the tries first when it comes.
const CALL_TRIES: u32 = 4;

async fn retried<T, E, Fut>(mut call: impl FnMut() -> Fut) -> Result<T, SdkError<E, HttpResponse>>
where
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata,
{
    let mut delays = RetryDelays::new();
    let mut tries = 1;
    loop {
        match call().await {
            Err(e) if tries < CALL_TRIES && classify(&e).retry() == Retry::Transient => {
                tries += 1;
                tokio::time::sleep(delays.next_delay()).await;
            }
            done => return done,
        }
    }
}

async fn abort_upload(client: &aws_sdk_s3::Client, bucket: &str, key: &str, upload_id: &str) {
    let aborted = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    if let Err(e) = aborted {
        tracing::warn!(
            object = %key,
            error = %describe(&e),
            "could not abort the multipart upload; the bucket's lifecycle rule removes it"
        );
    }
}

/// An upload dropped unfinished (its record stopped at the invocation's
/// deadline) is aborted in the background, best effort: before the
/// invocation returns, or when the next one thaws the process. The bucket's
/// lifecycle rule removes what this misses.
impl Drop for S3Upload {
    fn drop(&mut self) {
        let Some(started) = self.started.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.archive.client.clone();
        let bucket = self.archive.settings.bucket.clone();
        let key = std::mem::take(&mut self.key);
        runtime.spawn(async move {
            abort_upload(&client, &bucket, &key, &started.upload_id).await;
        });
    }
}

#[async_trait]
impl ArchiveUpload for S3Upload {
    async fn append(
        &mut self,
        bytes: Bytes,
        known_so_far: &PayloadSummary,
    ) -> Result<(), SinkError> {
        let bytes = self.compressed(bytes, false).await?;
        if self.part.is_empty() && bytes.len() >= PART_BYTES {
            return self.send_part(bytes, known_so_far).await;
        }
        if self.part.capacity() == 0 {
            // Sized once: growing by doubling would hold twice a part.
            self.part.reserve(PART_BYTES + bytes.len());
        }
        self.part.extend_from_slice(&bytes);
        if self.part.len() >= PART_BYTES {
            let part = std::mem::take(&mut self.part).freeze();
            self.send_part(part, known_so_far).await?;
        }
        Ok(())
    }

    async fn finish(
        mut self: Box<Self>,
        summary: &PayloadSummary,
    ) -> Result<ArchiveWrite, SinkError> {
        let tail = self.compressed(Bytes::new(), true).await;
        let tail = match tail {
            Ok(tail) => tail,
            Err(e) => {
                self.abort().await;
                return Err(e);
            }
        };
        self.part.extend_from_slice(&tail);
        let last = self.part.split().freeze();
        if self.started.is_none() {
            // Compressed, the whole payload fits one request.
            return self
                .archive
                .put_conditionally(self.key.clone(), &last, summary, self.sent_at_ms)
                .await;
        }
        if !last.is_empty()
            && let Err(e) = self.send_part(last, summary).await
        {
            self.abort().await;
            return Err(e);
        }
        let written = self.complete_conditionally(summary).await;
        // Completed or aborted: nothing is left for `drop` to abort. Until
        // here, a record stopped mid-way leaves it to `drop`.
        self.started = None;
        written
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(started) = &self.started {
            self.abort_started(started).await;
        }
        self.started = None;
    }
}

impl S3Upload {
    /// Completes the upload under the conditions of `Archive::store`, or
    /// aborts it when it is not to be the object.
    async fn complete_conditionally(
        &self,
        summary: &PayloadSummary,
    ) -> Result<ArchiveWrite, SinkError> {
        let Some(started) = &self.started else {
            return Err(self
                .archive
                .error(format!("{}: no upload to complete", self.key)));
        };
        // The object appears at completion: its marker goes first.
        if let Err(e) = self.archive.index_for_erasure(&self.key, summary).await {
            self.abort_started(started).await;
            return Err(e);
        }
        let mut expect = Expect::Absent;
        for _ in 0..CONDITIONAL_ROUNDS {
            let completed = match self.complete(started, &expect).await {
                Ok(completed) => completed,
                Err(e) => {
                    self.abort_started(started).await;
                    return Err(e);
                }
            };
            if let Some(etag) = completed {
                self.correct_metadata(started, summary, &etag).await;
                return Ok(ArchiveWrite::Written(
                    self.archive.location(self.key.clone()),
                ));
            }
            let next = match self
                .archive
                .after_conflict(&self.key, self.sent_at_ms)
                .await
            {
                Ok(next) => next,
                Err(e) => {
                    self.abort_started(started).await;
                    return Err(e);
                }
            };
            expect = match next {
                AfterConflict::Write(expect) => expect,
                AfterConflict::Settled(write) => {
                    self.abort_started(started).await;
                    return Ok(write);
                }
            };
        }
        self.abort_started(started).await;
        Err(self.archive.error(format!(
            "CompleteMultipartUpload {}: the object kept changing under concurrent writes",
            self.key
        )))
    }
}

/// A copy source names the object in a URL path.
pub(super) fn percent_encode_path(key: &str) -> String {
    let mut encoded = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'/') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::s3_answer as answer;
    use crate::sink::{ArchiveName, KeyPrefix, S3Settings, StreamedUploads};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use aws_smithy_types::retry::RetryConfig;

    /// A part (or the completion) S3 fails with a 503 is sent again, not
    /// the whole upload given up, and the download behind it redone.
    #[tokio::test]
    async fn a_part_or_completion_s3_fails_for_now_is_sent_again() {
        let created = mock!(aws_sdk_s3::Client::create_multipart_upload).then_http_response(
            answer(
                200,
                &[],
                b"<InitiateMultipartUploadResult><UploadId>up-1</UploadId></InitiateMultipartUploadResult>",
            ),
        );
        let slow_down = || {
            mock!(aws_sdk_s3::Client::upload_part).then_http_response(answer(
                503,
                &[],
                b"<Error><Code>SlowDown</Code></Error>",
            ))
        };
        let (first, second) = (slow_down(), slow_down());
        let part = mock!(aws_sdk_s3::Client::upload_part).then_http_response(answer(
            200,
            &[("etag", "\"p1\"")],
            b"",
        ));
        let unavailable = mock!(aws_sdk_s3::Client::complete_multipart_upload).then_http_response(
            answer(503, &[], b"<Error><Code>ServiceUnavailable</Code></Error>"),
        );
        let completed = mock!(aws_sdk_s3::Client::complete_multipart_upload)
            .match_requests(|complete| complete.if_none_match() == Some("*"))
            .then_http_response(answer(
                200,
                &[],
                b"<CompleteMultipartUploadResult><ETag>\"done\"</ETag></CompleteMultipartUploadResult>",
            ));
        let client = mock_client!(
            aws_sdk_s3,
            RuleMode::Sequential,
            [&created, &first, &second, &part, &unavailable, &completed],
            |c| c.retry_config(RetryConfig::disabled())
        );
        let archive = S3Archive::new(
            client,
            S3Settings {
                bucket: "archive".into(),
                prefix: KeyPrefix::parse("terra/").expect("prefix"),
                compression: S3Compression::None,
            },
        );
        let summary = crate::payload::inspect(br#"{"type":"activity","data":[]}"#).expect("valid");
        let name = ArchiveName::of_key("terra/", "terra/dt=2026-11-30/big.json");
        let mut upload = archive.begin_upload(&name, 1000);
        upload
            .append(Bytes::from(vec![b' '; PART_BYTES]), &summary)
            .await
            .expect("the part is sent again");
        let written = upload.finish(&summary).await.expect("completed");
        assert!(matches!(written, ArchiveWrite::Written(_)), "{written:?}");
        assert_eq!(part.num_calls(), 1);
        assert_eq!(completed.num_calls(), 1);
    }

    #[test]
    fn copy_sources_are_percent_encoded_but_keep_their_slashes() {
        assert_eq!(
            percent_encode_path("terra/dt=2026-11-30/a b+c.json"),
            "terra/dt%3D2026-11-30/a%20b%2Bc.json"
        );
    }
}
