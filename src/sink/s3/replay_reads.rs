//! Reading the archive back for `replay`: the keys of a day, and each
//! object's payload with the send it holds.

use aws_sdk_s3::error::SdkError;
use bytes::Bytes;

use super::{S3Archive, SENT_AT_METADATA, TYPE_METADATA, USER_METADATA};
use crate::sdk_error::describe;
use crate::sink::SinkError;

/// One archived payload, as Terra served it.
#[derive(Debug, Clone)]
pub struct ArchivedPayload {
    pub key: String,
    pub payload: Bytes,
    /// When Terra sent it (the object's `terra-sent-at`), the version
    /// DynamoDB's guard compares.
    pub sent_at_ms: u64,
}

/// What the object's metadata says it holds, known before its body is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchivedAbout {
    pub event_type: Option<String>,
    pub user_id: Option<String>,
}

/// What reading one archived object gave.
#[derive(Debug)]
pub enum ArchiveRead {
    Payload(ArchivedPayload),
    /// Its metadata did not match: the body was not read.
    NotWanted,
    /// Deleted since it was listed.
    Gone,
    /// Holds more than the reader may (stored, or once inflated): not read.
    TooLarge,
}

impl S3Archive {
    /// Keys under `prefix` (a day's `{TERRA_S3_PREFIX}dt=YYYY-MM-DD/`), in
    /// key order, after `start_after` when given.
    pub async fn keys_under(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, SinkError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.settings.bucket)
            .prefix(prefix)
            .set_start_after(start_after.map(str::to_owned))
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| self.error(format!("ListObjectsV2 {prefix}: {}", describe(&e))))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        Ok(keys)
    }

    pub fn key_prefix(&self) -> &str {
        self.settings.prefix.as_str()
    }

    pub fn bucket(&self) -> &str {
        &self.settings.bucket
    }

    /// The payload under `key`, read only when `wanted` accepts what its
    /// metadata says it is and it holds at most `max_bytes`.
    pub async fn read_archived(
        &self,
        key: &str,
        wanted: impl Fn(&ArchivedAbout) -> bool,
        max_bytes: u64,
    ) -> Result<ArchiveRead, SinkError> {
        let object = match self
            .client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => {
                return Ok(ArchiveRead::Gone);
            }
            Err(e) => return Err(self.error(format!("GetObject {key}: {}", describe(&e)))),
        };
        let metadata = object.metadata();
        let field = |name: &str| metadata.and_then(|m| m.get(name)).cloned();
        let about = ArchivedAbout {
            event_type: field(TYPE_METADATA),
            user_id: field(USER_METADATA),
        };
        if !wanted(&about) {
            return Ok(ArchiveRead::NotWanted);
        }
        let sent_at_ms = field(SENT_AT_METADATA)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| SinkError {
                record_at_fault: true,
                ..self.error(format!(
                    "{key}: no {SENT_AT_METADATA} metadata: not written by terra-sink"
                ))
            })?;
        let gzipped = object.content_encoding() == Some("gzip") || key.ends_with(".gz");
        let Some(payload) = self.payload_of(key, object, gzipped, max_bytes).await? else {
            return Ok(ArchiveRead::TooLarge);
        };
        Ok(ArchiveRead::Payload(ArchivedPayload {
            key: key.to_owned(),
            payload,
            sent_at_ms,
        }))
    }
}
