//! The source buckets read with the function's own role.

use async_trait::async_trait;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::types::{ChecksumMode, ServerSideEncryption};
use bytes::Bytes;
use md5::{Digest, Md5};

use super::{SourceBucket, SourceObject, SourceReadError, SourceVersion};
use crate::sdk_error::describe;

/// Checking a large body's MD5 is CPU work: off the async workers above this.
const HASH_INLINE_MAX: usize = 256 * 1024;

pub struct S3SourceBucket {
    client: aws_sdk_s3::Client,
}

impl S3SourceBucket {
    pub fn new(client: aws_sdk_s3::Client) -> Self {
        Self { client }
    }
}

/// A request to the bucket's own region, as its URL names it: S3 answers a
/// request sent to another region with a redirect the SDK does not follow.
fn in_region(object: &SourceObject) -> Option<aws_sdk_s3::config::Builder> {
    object
        .region
        .as_ref()
        .map(|region| aws_sdk_s3::config::Builder::default().region(Region::new(region.clone())))
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
        let request = self
            .client
            .head_object()
            .bucket(&object.bucket)
            .key(&object.key);
        let sent = match in_region(object) {
            Some(region) => request.customize().config_override(region).send().await,
            None => request.send().await,
        };
        let head = match sent {
            Ok(head) => head,
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => {
                return Err(SourceReadError::Missing {
                    object: object.clone(),
                });
            }
            Err(e) => return Err(unavailable(object, format!("HeadObject: {}", describe(&e)))),
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
        })
    }

    async fn read(
        &self,
        version: &SourceVersion,
        first_bytes: Option<u64>,
    ) -> Result<Bytes, SourceReadError> {
        let object = &version.object;
        let request = self
            .client
            .get_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .if_match(&version.etag)
            // The SDK checks the object's own checksum, when it has one.
            .checksum_mode(ChecksumMode::Enabled)
            .set_range(first_bytes.map(|n| format!("bytes=0-{}", n.saturating_sub(1))));
        let sent = match in_region(object) {
            Some(region) => request.customize().config_override(region).send().await,
            None => request.send().await,
        };
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
            Err(e) => return Err(unavailable(object, format!("GetObject: {}", describe(&e)))),
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
