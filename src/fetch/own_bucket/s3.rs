//! The source buckets read with the function's own role.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::types::{ChecksumMode, ServerSideEncryption};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use bytes::Bytes;
use md5::{Digest, Md5};

use super::{SourceBucket, SourceObject, SourceReadError, SourceVersion};
use crate::sdk_error::{Fault, classify, describe};

/// Checking a large body's MD5 is CPU work: off the async workers above this.
const HASH_INLINE_MAX: usize = 256 * 1024;

pub struct S3SourceBucket {
    client: aws_sdk_s3::Client,
    /// Each bucket's region as S3 named it, where a URL named another or
    /// none (the global endpoint, `s3.amazonaws.com`, is taken as
    /// us-east-1): learned once per bucket and instance.
    learned_regions: Mutex<HashMap<String, String>>,
}

/// The header S3 names a bucket's region in, also when it refuses a request
/// sent to another region (301 PermanentRedirect, 400).
const BUCKET_REGION: &str = "x-amz-bucket-region";

impl S3SourceBucket {
    pub fn new(client: aws_sdk_s3::Client) -> Self {
        Self {
            client,
            learned_regions: Mutex::new(HashMap::new()),
        }
    }

    /// The region to ask: the one S3 named for the bucket, else the URL's;
    /// `None` for the configured endpoint, whose region is the function's.
    fn region_for(&self, object: &SourceObject) -> Option<String> {
        let learned = self
            .learned_regions
            .lock()
            .ok()
            .and_then(|regions| regions.get(&object.bucket).cloned());
        learned.or_else(|| object.region.clone())
    }

    /// Sends `call` to the bucket's region. S3 answers a request sent to
    /// another region with an error naming the right one, which the SDK does
    /// not follow: the call goes once more, there, and the region is kept.
    async fn in_bucket_region<T, E, Fut>(
        &self,
        object: &SourceObject,
        call: impl Fn(Option<String>) -> Fut,
    ) -> Result<T, SdkError<E, HttpResponse>>
    where
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    {
        let asked = self.region_for(object);
        let answer = call(asked.clone()).await;
        let named = match &answer {
            Err(SdkError::ServiceError(failed)) => failed
                .raw()
                .headers()
                .get(BUCKET_REGION)
                .filter(|named| Some(*named) != asked.as_deref())
                .map(str::to_owned),
            _ => None,
        };
        let Some(named) = named else {
            return answer;
        };
        tracing::info!(bucket = %object.bucket, region = %named, "source bucket found in another region");
        if let Ok(mut regions) = self.learned_regions.lock() {
            regions.insert(object.bucket.clone(), named.clone());
        }
        call(Some(named)).await
    }
}

/// A request's configuration for `region`, when one is named.
fn in_region(region: Option<String>) -> Option<aws_sdk_s3::config::Builder> {
    region.map(|region| aws_sdk_s3::config::Builder::default().region(Region::new(region)))
}

/// A failed read: refused (a permission, a key policy) or unavailable.
fn failed<E>(
    object: &SourceObject,
    call: &str,
    error: &SdkError<E, HttpResponse>,
) -> SourceReadError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let detail = format!("{call}: {}", describe(error));
    match classify(error) {
        Fault::Refused => SourceReadError::Refused {
            object: object.clone(),
            detail,
        },
        Fault::Throttled | Fault::Unavailable | Fault::Unbuildable => {
            SourceReadError::Unavailable {
                object: object.clone(),
                detail,
            }
        }
    }
}

fn unavailable(object: &SourceObject, detail: String) -> SourceReadError {
    SourceReadError::Unavailable {
        object: object.clone(),
        detail,
    }
}

#[async_trait]
impl SourceBucket for S3SourceBucket {
    async fn version(&self, object: &SourceObject) -> Result<SourceVersion, SourceReadError> {
        let sent = self
            .in_bucket_region(object, |region| {
                let request = self
                    .client
                    .head_object()
                    .bucket(&object.bucket)
                    .key(&object.key)
                    .set_expected_bucket_owner(object.expected_owner.clone());
                async move {
                    match in_region(region) {
                        Some(region) => request.customize().config_override(region).send().await,
                        None => request.send().await,
                    }
                }
            })
            .await;
        let head = match sent {
            Ok(head) => head,
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => {
                return Err(SourceReadError::Missing {
                    object: object.clone(),
                });
            }
            Err(e) => return Err(failed(object, "HeadObject", &e)),
        };
        let etag = head.e_tag().unwrap_or_default().to_owned();
        if etag.is_empty() {
            return Err(unavailable(object, "HeadObject: no ETag".into()));
        }
        Ok(SourceVersion {
            object: object.clone(),
            etag,
            size: head.content_length().unwrap_or_default().max(0) as u64,
            kms_encrypted: matches!(
                head.server_side_encryption(),
                Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse)
            ),
            gzipped: head
                .content_encoding()
                .is_some_and(|encoding| encoding.trim().eq_ignore_ascii_case("gzip")),
        })
    }

    async fn read(
        &self,
        version: &SourceVersion,
        first_bytes: Option<u64>,
    ) -> Result<Bytes, SourceReadError> {
        let object = &version.object;
        let sent = self
            .in_bucket_region(object, |region| {
                let request = self
                    .client
                    .get_object()
                    .bucket(&object.bucket)
                    .key(&object.key)
                    .set_expected_bucket_owner(object.expected_owner.clone())
                    .if_match(&version.etag)
                    // The SDK checks the object's own checksum, when it has one.
                    .checksum_mode(ChecksumMode::Enabled)
                    .set_range(first_bytes.map(|n| format!("bytes=0-{}", n.saturating_sub(1))));
                async move {
                    match in_region(region) {
                        Some(region) => request.customize().config_override(region).send().await,
                        None => request.send().await,
                    }
                }
            })
            .await;
        let got = match sent {
            Ok(got) => got,
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 412 => {
                return Err(SourceReadError::Changed {
                    object: object.clone(),
                });
            }
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => {
                return Err(SourceReadError::Missing {
                    object: object.clone(),
                });
            }
            Err(e) => return Err(failed(object, "GetObject", &e)),
        };
        let body = got
            .body
            .collect()
            .await
            .map_err(|e| unavailable(object, format!("GetObject: reading body: {e}")))?
            .into_bytes();
        let expected = first_bytes.map_or(version.size, |n| n.min(version.size));
        if body.len() as u64 != expected {
            return Err(SourceReadError::Truncated {
                object: object.clone(),
                got: body.len() as u64,
                expected,
            });
        }
        if first_bytes.is_none()
            && let Some(md5) = version.content_md5()
            && md5_of(&body).await != Some(md5)
        {
            return Err(SourceReadError::Corrupt {
                object: object.clone(),
            });
        }
        Ok(body)
    }
}

/// `None` only when the hashing task failed.
async fn md5_of(body: &Bytes) -> Option<[u8; 16]> {
    let hash = |body: &[u8]| -> [u8; 16] { Md5::digest(body).into() };
    if body.len() <= HASH_INLINE_MAX {
        return Some(hash(body));
    }
    let body = body.clone();
    tokio::task::spawn_blocking(move || hash(&body)).await.ok()
}

#[cfg(test)]
mod tests {
    //! What S3 answers, on the wire through aws-smithy-mocks: moto cannot
    //! change an object between two reads or send bytes that are not its own.

    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use aws_smithy_types::retry::RetryConfig;

    use super::*;
    use crate::fakes::s3_answer as answer;
    use crate::outcome::{Classify, Retry};

    const PAYLOAD: &[u8] = br#"{"type":"activity","user":{"user_id":"u-1"},"data":[]}"#;

    fn version(etag: &str, size: u64) -> SourceVersion {
        SourceVersion {
            object: SourceObject {
                bucket: "terra-drop".into(),
                key: "payloads/a.json".into(),
                region: Some("eu-west-2".into()),
                expected_owner: None,
            },
            etag: etag.into(),
            size,
            kms_encrypted: false,
            gzipped: false,
        }
    }

    fn md5_etag() -> String {
        format!("\"{}\"", hex::encode(Md5::digest(PAYLOAD)))
    }

    async fn read(
        status: u16,
        body: &'static [u8],
        version: &SourceVersion,
    ) -> Result<Bytes, SourceReadError> {
        let rule =
            mock!(aws_sdk_s3::Client::get_object).then_http_response(answer(status, &[], body));
        let client = mock_client!(aws_sdk_s3, RuleMode::Sequential, [&rule], |c| c
            .retry_config(RetryConfig::disabled()));
        S3SourceBucket::new(client).read(version, None).await
    }

    #[tokio::test]
    async fn a_whole_read_must_match_the_size_and_md5_it_was_asked_for() {
        let size = PAYLOAD.len() as u64;
        let read_back = read(200, PAYLOAD, &version(&md5_etag(), size)).await;
        assert_eq!(read_back.as_deref().ok(), Some(PAYLOAD));

        let other = br#"{"type":"activity","user":{"user_id":"u-2"},"data":[]}"#;
        assert!(matches!(
            read(200, other, &version(&md5_etag(), size)).await,
            Err(SourceReadError::Corrupt { .. })
        ));
        // A multipart object's ETag is no MD5: size alone is checked.
        let multipart = "\"0cc175b9c0f1b6a831c399e269772661-2\"";
        assert!(read(200, other, &version(multipart, size)).await.is_ok());
        assert!(matches!(
            read(200, &PAYLOAD[..10], &version(multipart, size)).await,
            Err(SourceReadError::Truncated { got: 10, .. })
        ));
    }

    #[tokio::test]
    async fn a_version_replaced_since_it_was_looked_at_is_read_again_later() {
        let failed = read(
            412,
            b"<Error><Code>PreconditionFailed</Code></Error>",
            &version(&md5_etag(), 3),
        )
        .await
        .expect_err("the precondition failed");
        assert!(matches!(failed, SourceReadError::Changed { .. }));
        assert_eq!(failed.retry(), Retry::Transient);
    }

    async fn head(
        status: u16,
        headers: &'static [(&'static str, &'static str)],
    ) -> Result<SourceVersion, SourceReadError> {
        let rule =
            mock!(aws_sdk_s3::Client::head_object).then_http_response(answer(status, headers, b""));
        let client = mock_client!(aws_sdk_s3, RuleMode::Sequential, [&rule], |c| c
            .retry_config(RetryConfig::disabled()));
        S3SourceBucket::new(client)
            .version(&version("", 0).object)
            .await
    }

    #[tokio::test]
    async fn missing_and_refused_are_for_good_and_an_outage_for_now() {
        let found = head(
            200,
            &[
                ("etag", "\"abc\""),
                ("content-length", "1234"),
                ("x-amz-server-side-encryption", "aws:kms"),
            ],
        )
        .await
        .expect("found");
        assert_eq!((found.etag.as_str(), found.size), ("\"abc\"", 1234));
        assert!(found.kms_encrypted && found.content_md5().is_none());

        let missing = head(404, &[]).await.expect_err("not found");
        assert!(missing.is_gone());
        assert_eq!(
            (missing.retry(), missing.record_at_fault()),
            (Retry::Permanent, true)
        );

        let denied = head(403, &[]).await.expect_err("denied");
        assert!(
            matches!(denied, SourceReadError::Refused { .. }),
            "{denied}"
        );
        assert_eq!(
            (denied.retry(), denied.record_at_fault()),
            (Retry::Permanent, true),
            "once the URL has died: the dead-letter queue's replay, or quarantine, and the bucket complete it later"
        );

        let down = head(503, &[]).await.expect_err("unavailable");
        assert!(
            matches!(down, SourceReadError::Unavailable { .. }),
            "{down}"
        );
        assert_eq!(down.retry(), Retry::Transient);
    }

    /// A URL on the global endpoint (`s3.amazonaws.com`, taken as
    /// us-east-1) into a bucket in eu-west-2: S3 refuses, naming the
    /// bucket's region, and the read goes there, then and from then on.
    #[tokio::test]
    async fn a_bucket_in_another_region_is_read_where_s3_says_it_is() {
        let wrong_region = mock!(aws_sdk_s3::Client::head_object).then_http_response(answer(
            301,
            &[("x-amz-bucket-region", "eu-west-2")],
            b"",
        ));
        let found = mock!(aws_sdk_s3::Client::head_object)
            .match_requests(|head| head.expected_bucket_owner() == Some("123456789012"))
            .then_http_response(answer(
                200,
                &[("etag", "\"abc\""), ("content-length", "3")],
                b"",
            ));
        let found_again = mock!(aws_sdk_s3::Client::head_object).then_http_response(answer(
            200,
            &[("etag", "\"abc\""), ("content-length", "3")],
            b"",
        ));
        let sent = crate::fakes::SentRequests::default();
        let client = mock_client!(
            aws_sdk_s3,
            RuleMode::Sequential,
            [&wrong_region, &found, &found_again],
            |c| c
                .retry_config(RetryConfig::disabled())
                .interceptor(sent.clone())
        );
        let reader = S3SourceBucket::new(client);
        let global = SourceObject {
            bucket: "terra-drop".into(),
            key: "payloads/a.json".into(),
            region: Some("us-east-1".into()),
            expected_owner: Some("123456789012".into()),
        };
        for _ in 0..2 {
            let version = reader.version(&global).await.expect("found");
            assert_eq!(version.etag, "\"abc\"");
        }
        assert_eq!(
            sent.hosts(),
            [
                "terra-drop.s3.us-east-1.amazonaws.com",
                "terra-drop.s3.eu-west-2.amazonaws.com",
                "terra-drop.s3.eu-west-2.amazonaws.com"
            ]
        );
    }
}
