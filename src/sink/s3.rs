//! The raw archive: each payload as one S3 object, bytes unchanged.

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;

use super::{Delivery, Sink, SinkError};
use crate::payload::KeyPrefix;

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

    /// The object key a delivery is archived under.
    pub fn key_for(&self, delivery: &Delivery) -> String {
        let suffix = match self.settings.compression {
            S3Compression::None => "",
            S3Compression::Gzip => ".gz",
        };
        delivery.name.key(&self.settings.prefix, suffix)
    }

    fn error(&self, message: impl Into<String>) -> SinkError {
        SinkError {
            sink: "s3",
            message: message.into(),
        }
    }
}

#[async_trait]
impl Sink for S3Sink {
    fn name(&self) -> &'static str {
        "s3"
    }

    async fn write(&self, delivery: &Delivery) -> Result<(), SinkError> {
        let key = self.key_for(delivery);
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
        Ok(())
    }
}

fn gzip(payload: &[u8]) -> std::io::Result<Bytes> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(payload.len() / 4),
        Compression::default(),
    );
    encoder.write_all(payload)?;
    Ok(Bytes::from(encoder.finish()?))
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
