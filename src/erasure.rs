//! Erasing one person's data: every archived object naming them, every
//! version of it, and every table item under them, found without listing
//! the archive.
//!
//! The archive keeps an index for this as it writes: before an object whose
//! payload names a user is written, a zero-byte marker goes under
//! `{prefix}_erasure/user={sha256 of the user id}/` with the object's key
//! below the prefix. Erasing a user lists only their markers, deletes every
//! version of each object, and then the marker: a run stopped part-way
//! leaves the markers of what it has not finished, and the next run takes
//! them up. The table's items are a query on the user's partition. The
//! index names users by hash, so it shows no id.
//!
//! The operator command erases everything of a user; with `EraseOnDeauth`
//! the handlers erase when Terra says a user left (`deauth`,
//! `access_revoked`), keeping that one record ([`Kept`]): the event that
//! says when and why the data went.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use futures::StreamExt;
use serde::Serialize;

use crate::digest::sha256_hex;
use crate::sdk_error::describe;
use crate::sink::{ArchiveName, KeyPrefix, user_partition_key};

/// The erasure index's folder under the archive's prefix. The Athena table
/// reads `dt=` partitions only, and replay lists days: neither sees it.
pub const INDEX_FOLDER: &str = "_erasure/";

/// Terra's events that say a user left: with `EraseOnDeauth`, writing one
/// erases the rest of that user's data.
pub const LEAVING_EVENT_TYPES: [&str; 2] = ["deauth", "access_revoked"];

/// Archived objects of one user erased at once: an erasure run by a handler
/// has the invocation's deadline, and a year of one person's data is
/// thousands of objects.
const OBJECTS_AT_ONCE: usize = 16;
/// Table items of one user deleted at once, for the same reason.
const ITEMS_AT_ONCE: usize = 16;

/// Where the index lists `user_id`'s archived objects.
pub fn index_prefix(prefix: &KeyPrefix, user_id: &str) -> String {
    format!(
        "{}{INDEX_FOLDER}user={}/",
        prefix.as_str(),
        sha256_hex(user_id.as_bytes())
    )
}

/// The marker that lists `archive_key` (a key under `prefix`) for `user_id`.
pub fn index_marker(prefix: &KeyPrefix, user_id: &str, archive_key: &str) -> String {
    let below = archive_key
        .strip_prefix(prefix.as_str())
        .unwrap_or(archive_key);
    format!("{}{below}", index_prefix(prefix, user_id))
}

/// True for a key of the erasure index, not an archived payload.
pub fn is_index_key(prefix: &KeyPrefix, key: &str) -> bool {
    key.strip_prefix(prefix.as_str())
        .is_some_and(|below| below.starts_with(INDEX_FOLDER))
}

/// What an erasure removed, and what it could not.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ErasureReport {
    pub users: usize,
    /// Archived objects with at least one version removed.
    pub objects: usize,
    /// Object versions and delete markers removed.
    pub versions: usize,
    pub items: usize,
    pub failures: Vec<ErasureFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasureFailure {
    /// The object key, or the table and the user's partition.
    pub what: String,
    pub reason: String,
}

/// The archive this deployment writes, for erasure.
#[derive(Clone)]
pub struct ArchiveToErase {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
    pub prefix: KeyPrefix,
}

/// The table this deployment writes, for erasure.
#[derive(Clone)]
pub struct TableToErase {
    pub client: aws_sdk_dynamodb::Client,
    pub table: String,
}

/// What an erasure leaves of the user: the record that asked for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    /// The archived object's name ([`ArchiveName`], compressed or not).
    pub archive_name: Option<ArchiveName>,
    /// The table items' `(pk, sk)`.
    pub items: Vec<(String, String)>,
}

/// Erases one user's data: the handlers' view of [`Eraser`], so the
/// pipeline can be tested without stores.
#[async_trait]
pub trait EraseUser: Send + Sync {
    /// Every archived object and table item of `user_id` but `kept`.
    /// Failures are in the report, not raised.
    async fn erase_user(&self, user_id: &str, kept: &Kept) -> ErasureReport;
}

pub struct Eraser {
    pub archive: Option<ArchiveToErase>,
    pub table: Option<TableToErase>,
}

impl Eraser {
    /// Erases every user in `user_ids`: idempotent (a second run finds
    /// nothing), and resumable (a run stopped part-way is finished by the
    /// next). Failures are reported, not raised: the rest goes on.
    pub async fn erase(&self, user_ids: &[String]) -> ErasureReport {
        let mut report = ErasureReport {
            users: user_ids.len(),
            ..ErasureReport::default()
        };
        for user_id in user_ids {
            self.erase_into(user_id, &Kept::default(), &mut report)
                .await;
        }
        report
    }

    async fn erase_into(&self, user_id: &str, kept: &Kept, report: &mut ErasureReport) {
        if let Some(archive) = &self.archive {
            archive.erase(user_id, kept, report).await;
        }
        if let Some(table) = &self.table {
            table.erase(user_id, kept, report).await;
        }
    }
}

#[async_trait]
impl EraseUser for Eraser {
    async fn erase_user(&self, user_id: &str, kept: &Kept) -> ErasureReport {
        let mut report = ErasureReport {
            users: 1,
            ..ErasureReport::default()
        };
        self.erase_into(user_id, kept, &mut report).await;
        report
    }
}

/// One listed object's erasure: its versions removed, or why not.
struct ObjectErased {
    versions: usize,
    failures: Vec<ErasureFailure>,
}

impl ArchiveToErase {
    async fn erase(&self, user_id: &str, kept: &Kept, report: &mut ErasureReport) {
        let listed = index_prefix(&self.prefix, user_id);
        let markers = match self.keys_with_prefix(&listed).await {
            Ok(markers) => markers,
            Err(reason) => {
                report.failures.push(ErasureFailure {
                    what: listed,
                    reason,
                });
                return;
            }
        };
        let to_erase = markers.into_iter().filter_map(|marker| {
            let below = marker.strip_prefix(&listed)?.to_owned();
            let is_kept = kept
                .archive_name
                .as_ref()
                .is_some_and(|name| ArchiveName::of_key("", &below) == *name);
            (!is_kept).then_some((marker, below))
        });
        let mut erased = futures::stream::iter(to_erase)
            .map(|(marker, below)| self.erase_listed(marker, below))
            .buffer_unordered(OBJECTS_AT_ONCE);
        while let Some(object) = erased.next().await {
            if object.versions > 0 {
                report.objects += 1;
                report.versions += object.versions;
            }
            report.failures.extend(object.failures);
        }
    }

    /// Every version of the object `marker` lists, then the marker: a
    /// failure leaves the marker, so the next run tries the object again.
    async fn erase_listed(&self, marker: String, below: String) -> ObjectErased {
        let archived = format!("{}{below}", self.prefix.as_str());
        let versions = match self.delete_every_version(&archived).await {
            Ok(versions) => versions,
            Err(reason) => {
                return ObjectErased {
                    versions: 0,
                    failures: vec![ErasureFailure {
                        what: archived,
                        reason,
                    }],
                };
            }
        };
        let failures = match self.delete_every_version(&marker).await {
            Ok(_) => Vec::new(),
            Err(reason) => vec![ErasureFailure {
                what: marker,
                reason,
            }],
        };
        ObjectErased { versions, failures }
    }

    async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, String> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| format!("ListObjectsV2: {}", describe(&e)))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        Ok(keys)
    }

    /// Deletes every version and delete marker of exactly `key`; returns
    /// how many there were.
    async fn delete_every_version(&self, key: &str) -> Result<usize, String> {
        let mut versions = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(key)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone())
                .send()
                .await
                .map_err(|e| format!("ListObjectVersions: {}", describe(&e)))?;
            let exact = |k: Option<&str>| k == Some(key);
            versions.extend(
                page.versions()
                    .iter()
                    .filter(|v| exact(v.key()))
                    .map(|v| v.version_id().unwrap_or("null").to_owned()),
            );
            versions.extend(
                page.delete_markers()
                    .iter()
                    .filter(|m| exact(m.key()))
                    .map(|m| m.version_id().unwrap_or("null").to_owned()),
            );
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            version_marker = page.next_version_id_marker().map(str::to_owned);
        }
        for version in &versions {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .version_id(version)
                .send()
                .await
                .map_err(|e| format!("DeleteObject (version {version}): {}", describe(&e)))?;
        }
        Ok(versions.len())
    }
}

impl TableToErase {
    async fn erase(&self, user_id: &str, kept: &Kept, report: &mut ErasureReport) {
        let partition = user_partition_key(user_id);
        let what = format!("{}/{partition}", self.table);
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(partition.clone()))
            .projection_expression("pk, sk")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    report.failures.push(ErasureFailure {
                        what: what.clone(),
                        reason: format!("Query: {}", describe(&e)),
                    });
                    return;
                }
            };
            let to_delete: Vec<AttributeValue> = page
                .items()
                .iter()
                .filter_map(|item| item.get("sk").cloned())
                .filter(|sk| {
                    !sk.as_s().is_ok_and(|sk| {
                        kept.items
                            .iter()
                            .any(|(pk, kept_sk)| *pk == partition && kept_sk == sk)
                    })
                })
                .collect();
            let mut deleted = futures::stream::iter(to_delete)
                .map(|sk| self.delete_item(&partition, sk))
                .buffer_unordered(ITEMS_AT_ONCE);
            while let Some(outcome) = deleted.next().await {
                match outcome {
                    Ok(()) => report.items += 1,
                    Err((sk, reason)) => report.failures.push(ErasureFailure {
                        what: format!("{what} {sk}"),
                        reason,
                    }),
                }
            }
        }
    }

    /// Deletes the item `(partition, sk)`; on failure, its sort key and why.
    async fn delete_item(
        &self,
        partition: &str,
        sk: AttributeValue,
    ) -> Result<(), (String, String)> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(partition.to_owned()))
            .key("sk", sk.clone())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                let sk = sk.as_s().map(String::as_str).unwrap_or("?").to_owned();
                (sk, format!("DeleteItem: {}", describe(&e)))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_names_users_by_hash_under_the_prefix() {
        let prefix = KeyPrefix::parse("terra/").expect("valid");
        let user = "40f7b0e1-89e2-43ac-a5b8-1e29c8d47cad";
        let listed = index_prefix(&prefix, user);
        assert!(listed.starts_with("terra/_erasure/user="), "{listed}");
        assert!(!listed.contains(user), "the index shows no id: {listed}");
        let marker = index_marker(&prefix, user, "terra/dt=2026-07-01/abc.json");
        assert_eq!(marker, format!("{listed}dt=2026-07-01/abc.json"));
        assert!(is_index_key(&prefix, &marker));
        assert!(!is_index_key(&prefix, "terra/dt=2026-07-01/abc.json"));
        assert_ne!(index_prefix(&prefix, "other"), listed);
    }
}
