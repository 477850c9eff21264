//! Terra's own-bucket mode: Terra uploads payloads to a bucket of the
//! customer's (`TERRA_SOURCE_BUCKETS`), so a payload URL into that bucket is
//! read with the function's own role instead. No signature is needed, so the
//! URL's lifetime no longer matters, and the archive can take its copy inside
//! S3 without the bytes passing through the function.
//!
//! A URL counts only when it names a configured bucket on an S3 endpoint
//! (virtual-hosted or path-style, with the region), or on the S3 endpoint the
//! function itself is configured with (a local emulator). Every other URL is
//! fetched as usual, under the URL policy.

mod s3;

pub use s3::S3SourceBucket;

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use percent_encoding::percent_decode_str;
use url::Url;

use crate::fetch::s3_endpoint;
use crate::outcome::{Classify, FailureClass, Retry};

/// The buckets Terra uploads to, from `TERRA_SOURCE_BUCKETS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceBuckets {
    names: Vec<String>,
    /// The account that must own them (`TERRA_SOURCE_BUCKET_OWNER`): every
    /// read and copy says so, and S3 refuses it if a bucket of that name
    /// now belongs to someone else.
    owner: Option<String>,
    /// The S3 endpoint the function is configured with (`AWS_ENDPOINT_URL_S3`
    /// or `AWS_ENDPOINT_URL`): path-style URLs to it name a bucket too.
    configured_endpoint: Option<Url>,
}

/// An object a payload URL points to in a source bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceObject {
    pub bucket: String,
    pub key: String,
    /// The bucket's region as the URL's host names it; `None` for the
    /// configured endpoint, whose region is the function's own.
    pub region: Option<String>,
    /// The account that must own the bucket (`ExpectedBucketOwner`).
    pub expected_owner: Option<String>,
}

impl fmt::Display for SourceObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// One version of a source object, as it was when first looked at: every
/// later read and copy insists on this ETag, so the stores get the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceVersion {
    pub object: SourceObject,
    pub etag: String,
    pub size: u64,
    /// Encrypted with KMS: its ETag is not the MD5 of its bytes.
    pub kms_encrypted: bool,
    /// Stored with `Content-Encoding: gzip`: its bytes are the payload
    /// compressed, to be inflated as an HTTP download would be.
    pub gzipped: bool,
}

impl SourceVersion {
    /// The MD5 of the object's bytes, when its ETag is one: a single-part
    /// upload not encrypted with KMS.
    pub fn content_md5(&self) -> Option<[u8; 16]> {
        if self.kms_encrypted {
            return None;
        }
        let hex = self.etag.trim_matches('"');
        let mut md5 = [0u8; 16];
        hex::decode_to_slice(hex, &mut md5).ok()?;
        Some(md5)
    }
}

/// Reads objects from the source buckets.
#[async_trait]
pub trait SourceBucket: Send + Sync {
    /// The object's current version.
    async fn version(&self, object: &SourceObject) -> Result<SourceVersion, SourceReadError>;

    /// The version's bytes: all of them, checked against its size (and its
    /// MD5 where the ETag is one), or only the first `first_bytes`.
    async fn read(
        &self,
        version: &SourceVersion,
        first_bytes: Option<u64>,
    ) -> Result<Bytes, SourceReadError>;
}

/// Object keys appear in these errors (they name no one and carry no
/// credentials); the URL's query string never does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceReadError {
    #[error("{object} is not in the source bucket")]
    Missing { object: SourceObject },
    #[error("{object} changed while it was read; the next attempt reads the new version")]
    Changed { object: SourceObject },
    #[error("{object}: read {got} bytes of {expected}")]
    Truncated {
        object: SourceObject,
        got: u64,
        expected: u64,
    },
    #[error("{object}: the bytes read do not match the object's ETag (MD5)")]
    Corrupt { object: SourceObject },
    /// S3 failed, throttled, or could not be reached.
    #[error("{object}: {detail}")]
    Unavailable {
        object: SourceObject,
        detail: String,
    },
    /// S3 refused the role's read: a permission, a key policy, or a bucket
    /// whose region could not be found.
    #[error("{object}: {detail}")]
    Refused {
        object: SourceObject,
        detail: String,
    },
}

impl SourceReadError {
    /// Reading again can never succeed: what the URL pointed to is gone, as
    /// with an expired URL.
    pub fn is_gone(&self) -> bool {
        matches!(self, SourceReadError::Missing { .. })
    }
}

/// A role read's error reaches a record only once the pre-signed URL has
/// died: while it lives, any failure but a missing object falls back to the
/// URL (see `pipeline::own_bucket`). Then:
///
/// - a missing object is gone for good;
/// - a refusal will not pass until someone changes a policy: permanent, and
///   the record's to carry (a Kafka record is quarantined instead of
///   stalling its partition). Nothing is lost, since the object stays in
///   the bucket: on SQS `terra-sink replay dead-letters` completes the message from
///   there once the role may read it;
/// - an outage, a changed object or bytes that do not match are transient,
///   retried within the invocation and then by the source.
impl Classify for SourceReadError {
    fn class(&self) -> FailureClass {
        FailureClass::Fetch
    }

    fn retry(&self) -> Retry {
        match self {
            SourceReadError::Missing { .. } | SourceReadError::Refused { .. } => Retry::Permanent,
            SourceReadError::Changed { .. }
            | SourceReadError::Truncated { .. }
            | SourceReadError::Corrupt { .. }
            | SourceReadError::Unavailable { .. } => Retry::Transient,
        }
    }

    fn record_at_fault(&self) -> bool {
        self.retry() == Retry::Permanent
    }
}

impl SourceBuckets {
    /// `None` when no bucket is named.
    pub fn new(names: Vec<String>, configured_endpoint: Option<Url>) -> Option<Self> {
        (!names.is_empty()).then_some(Self {
            names,
            owner: None,
            configured_endpoint,
        })
    }

    /// Every read and copy expects the buckets to belong to `owner`.
    pub fn owned_by(self, owner: Option<String>) -> Self {
        Self { owner, ..self }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The source object `url` points to, if it points into a source bucket.
    pub fn locate(&self, url: &Url) -> Option<SourceObject> {
        if !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let (bucket, key, region) = if self.is_configured_endpoint(url) {
            let (bucket, key) = path_style(url)?;
            (bucket, key, None)
        } else {
            if url.scheme() != "https" || url.port().is_some() {
                return None;
            }
            let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
            match self.virtual_hosted(&host) {
                Some((bucket, region)) => (bucket, key_of(url.path())?, Some(region)),
                None => {
                    let region = s3_endpoint::region(&host)?;
                    let (bucket, key) = path_style(url)?;
                    (bucket, key, Some(region))
                }
            }
        };
        self.names.contains(&bucket).then(|| SourceObject {
            bucket,
            key,
            region,
            expected_owner: self.owner.clone(),
        })
    }

    fn is_configured_endpoint(&self, url: &Url) -> bool {
        self.configured_endpoint.as_ref().is_some_and(|endpoint| {
            endpoint.scheme() == url.scheme()
                && endpoint.host() == url.host()
                && endpoint.port_or_known_default() == url.port_or_known_default()
        })
    }

    /// `<bucket>.<S3 endpoint>`: the configured bucket names decide where
    /// the bucket ends, since a bucket name may hold dots.
    fn virtual_hosted(&self, host: &str) -> Option<(String, String)> {
        self.names.iter().find_map(|bucket| {
            let endpoint = host.strip_prefix(bucket.as_str())?.strip_prefix('.')?;
            Some((bucket.clone(), s3_endpoint::region(endpoint)?))
        })
    }
}

/// `/<bucket>/<key>`.
fn path_style(url: &Url) -> Option<(String, String)> {
    let path = url.path().strip_prefix('/')?;
    let (bucket, key) = path.split_once('/')?;
    let bucket = percent_decode_str(bucket).decode_utf8().ok()?;
    Some((bucket.into_owned(), key_of(&format!("/{key}"))?))
}

/// The object key a URL's path names: percent-decoded, not empty.
fn key_of(path: &str) -> Option<String> {
    let key = percent_decode_str(path.strip_prefix('/')?)
        .decode_utf8()
        .ok()?;
    (!key.is_empty()).then(|| key.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets() -> SourceBuckets {
        SourceBuckets::new(
            vec!["terra-drop".into(), "terra.dotted".into()],
            Some(Url::parse("http://127.0.0.1:5000").expect("url")),
        )
        .expect("named")
    }

    fn located(url: &str) -> Option<(String, String, Option<String>)> {
        buckets()
            .locate(&Url::parse(url).expect("url"))
            .map(|o| (o.bucket, o.key, o.region))
    }

    fn at(
        bucket: &str,
        key: &str,
        region: Option<&str>,
    ) -> Option<(String, String, Option<String>)> {
        Some((bucket.into(), key.into(), region.map(str::to_owned)))
    }

    #[test]
    fn virtual_hosted_urls_carry_their_region() {
        let signed = "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc";
        assert_eq!(
            located(&format!(
                "https://terra-drop.s3.eu-west-2.amazonaws.com/2026-11-30/activity/u-1.json{signed}"
            )),
            at(
                "terra-drop",
                "2026-11-30/activity/u-1.json",
                Some("eu-west-2")
            )
        );
        assert_eq!(
            located("https://terra-drop.s3.amazonaws.com/a.json"),
            at("terra-drop", "a.json", Some("us-east-1"))
        );
        assert_eq!(
            located("https://terra-drop.s3-us-west-1.amazonaws.com/a.json"),
            at("terra-drop", "a.json", Some("us-west-1"))
        );
        assert_eq!(
            located("https://terra-drop.s3.dualstack.ap-south-1.amazonaws.com/a.json"),
            at("terra-drop", "a.json", Some("ap-south-1"))
        );
        assert_eq!(
            located("https://terra.dotted.s3.cn-north-1.amazonaws.com.cn/a.json"),
            at("terra.dotted", "a.json", Some("cn-north-1"))
        );
    }

    #[test]
    fn terras_own_example_points_into_its_bucket() {
        let message: serde_json::Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/terra/openapi_s3_upload.json"
        ))
        .expect("json");
        let url = Url::parse(message["url"].as_str().expect("url")).expect("valid url");
        let buckets = SourceBuckets::new(vec!["terra-payload-bucket".into()], None).expect("named");
        assert_eq!(
            buckets.locate(&url),
            Some(SourceObject {
                bucket: "terra-payload-bucket".into(),
                key: "payloads/40f7b0e1/activity-2026-07-01.json".into(),
                region: Some("eu-west-2".into()),
                expected_owner: None,
            })
        );
    }

    #[test]
    fn path_style_urls_name_the_bucket_first() {
        assert_eq!(
            located(
                "https://s3.eu-central-1.amazonaws.com/terra-drop/dir/a%20b%2Bc.json?X-Amz-Signature=x"
            ),
            at("terra-drop", "dir/a b+c.json", Some("eu-central-1"))
        );
        assert_eq!(
            located("https://s3.amazonaws.com/terra.dotted/a.json"),
            at("terra.dotted", "a.json", Some("us-east-1"))
        );
        assert_eq!(
            located("http://127.0.0.1:5000/terra-drop/a.json?X-Amz-Expires=1"),
            at("terra-drop", "a.json", None)
        );
    }

    #[test]
    fn other_urls_are_fetched_as_usual() {
        for url in [
            // Not a source bucket.
            "https://other.s3.eu-west-2.amazonaws.com/a.json",
            "https://s3.eu-west-2.amazonaws.com/other/a.json",
            "http://127.0.0.1:5000/other/a.json",
            // Not S3, or not the configured endpoint.
            "https://terra-drop.s3.eu-west-2.amazonaws.com.evil.example/a.json",
            "https://terra-drop.evil.example/a.json",
            "https://storage.googleapis.com/terra-drop/a.json",
            "http://127.0.0.1:5001/terra-drop/a.json",
            "https://127.0.0.1:5000/terra-drop/a.json",
            // Plain http, another port or userinfo on a real S3 host.
            "http://terra-drop.s3.eu-west-2.amazonaws.com/a.json",
            "https://terra-drop.s3.eu-west-2.amazonaws.com:8443/a.json",
            "https://user:pw@terra-drop.s3.eu-west-2.amazonaws.com/a.json",
            // No key, or an endpoint without a region.
            "https://terra-drop.s3.eu-west-2.amazonaws.com/",
            "https://s3.eu-west-2.amazonaws.com/terra-drop/",
            "https://terra-drop.s3-accelerate.amazonaws.com/a.json",
            "https://terra-drop.s3.x.amazonaws.com/a.json",
        ] {
            assert_eq!(located(url), None, "{url}");
        }
    }

    #[test]
    fn only_plain_etags_are_md5s() {
        let version = |etag: &str, kms_encrypted| SourceVersion {
            object: SourceObject {
                bucket: "b".into(),
                key: "k".into(),
                region: None,
                expected_owner: None,
            },
            etag: etag.into(),
            size: 0,
            kms_encrypted,
            gzipped: false,
        };
        let md5 = "\"9e107d9d372bb6826bd81d3542a419d6\"";
        assert!(version(md5, false).content_md5().is_some());
        assert_eq!(version(md5, true).content_md5(), None);
        assert_eq!(
            version("\"9e107d9d372bb6826bd81d3542a419d6-3\"", false).content_md5(),
            None
        );
    }
}
