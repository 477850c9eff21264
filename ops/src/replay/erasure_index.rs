//! `replay archive --erasure-index`: puts the erasure index's marker of each
//! archived payload that names a user, for objects archived before the
//! handlers kept the index (0.3.0). It stands in for the table of an
//! ordinary replay, so the run is resumable and concurrent in the same way.

use async_trait::async_trait;
use terra_sink::sink::{Delivery, S3Archive, Sink, SinkError, SinkReport};

pub struct ErasureIndexBackfill {
    archive: S3Archive,
}

impl ErasureIndexBackfill {
    pub fn new(archive: S3Archive) -> Self {
        Self { archive }
    }
}

#[async_trait]
impl Sink for ErasureIndexBackfill {
    /// One marker per archived payload with a user; none without. Putting a
    /// marker again changes nothing.
    async fn write(&self, delivery: &Delivery) -> Result<SinkReport, SinkError> {
        let (Some(user_id), Some(archived)) = (&delivery.summary.user_id, &delivery.archived)
        else {
            return Ok(SinkReport {
                items_written: 0,
                items_stale: 0,
            });
        };
        self.archive
            .list_for_erasure(&archived.key, user_id)
            .await?;
        Ok(SinkReport {
            items_written: 1,
            items_stale: 0,
        })
    }
}
