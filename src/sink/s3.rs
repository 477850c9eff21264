//! The raw archive: each payload as one S3 object, bytes unchanged.

use std::io::Read;

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::{Archive, ArchivedObject, Delivery, SinkError, gzip};
use crate::outcome::Retry;
use crate::payload::{ArchiveName, KeyPrefix};

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

pub struct S3Sink {
    client: aws_sdk_s3::Client,
    settings: S3Settings,
}

impl S3Sink {
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

    /// S3 failures are transient: the record is fine, and the bucket (or its
    /// permissions) needs to recover.
    fn error(&self, message: impl Into<String>) -> SinkError {
        SinkError {
            sink: "s3",
            retry: Retry::Transient,
            message: message.into(),
        }
    }
}

#[async_trait]
impl Archive for S3Sink {
    async fn store(&self, delivery: &Delivery) -> Result<ArchivedObject, SinkError> {
        let key = self.key_for(&delivery.name);
        let (body, encoding) = match self.settings.compression {
            S3Compression::None => (delivery.payload.clone(), None),
            S3Compression::Gzip => {
                let payload = delivery.payload.clone();
                let gz = tokio::task::spawn_blocking(move || gzip(&payload))
                    .await
                    .map_err(|e| self.error(format!("compression task failed: {e}")))?
                    .map_err(|e| self.error(format!("compression failed: {e}")))?;
                (gz, Some("gzip"))
            }
        };
        let summary = &delivery.summary;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(&key)
            .content_type("application/json")
            .content_length(body.len() as i64)
            .set_content_encoding(encoding.map(str::to_owned))
            .metadata("terra-type", metadata_value(&summary.event_type))
            .metadata("terra-sent-at", delivery.sent_at_ms.to_string());
        if let Some(user_id) = &summary.user_id {
            request = request.metadata("terra-user-id", metadata_value(user_id));
        }
        if let Some(provider) = &summary.provider {
            request = request.metadata("terra-provider", metadata_value(provider));
        }
        request
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.error(format!("PutObject {key}: {}", describe(&e))))?;
        Ok(self.location(key))
    }

    async fn retrieve(
        &self,
        name: &ArchiveName,
    ) -> Result<Option<(Bytes, ArchivedObject)>, SinkError> {
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
        let stored = object
            .body
            .collect()
            .await
            .map_err(|e| self.error(format!("GetObject {key}: reading body: {e}")))?
            .into_bytes();
        let payload = match self.settings.compression {
            S3Compression::None => stored,
            S3Compression::Gzip => {
                let mut inflated = Vec::new();
                flate2::read::GzDecoder::new(&stored[..])
                    .read_to_end(&mut inflated)
                    .map_err(|e| self.error(format!("GetObject {key}: not valid gzip: {e}")))?;
                Bytes::from(inflated)
            }
        };
        Ok(Some((payload, self.location(key))))
    }
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

fn describe<E: std::error::Error + 'static, R: std::fmt::Debug>(error: &SdkError<E, R>) -> String {
    DisplayErrorContext(error).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
