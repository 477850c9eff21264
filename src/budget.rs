//! The byte budget: how much payload data the records in flight may hold at
//! once, so that an invocation's memory stays inside the function's whatever
//! the batch holds. A Lambda that runs out of memory is killed with its whole
//! batch, and a batch that killed it once kills it on every retry.
//!
//! A record reserves what it will hold before it downloads the body, from the
//! length the server announces (or the largest payload accepted, when it
//! announces none), and gives back what it did not need once the body is in.
//! Reserving once, up front, means no record ever waits for more while holding
//! some, so records cannot starve one another into a deadlock. A record that
//! needs more than the whole budget takes all of it and runs alone.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits count KiB, so that `acquire_many`'s `u32` covers any function size.
const UNIT: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Memory the process needs besides payloads: the runtime, the SDK clients,
/// TLS sessions and allocator slack.
const PROCESS_RESERVE_MIB: u64 = 64;
/// Of the rest, the share payloads may hold; the remainder absorbs what the
/// cost model does not count (allocator fragmentation, SDK buffers).
const PAYLOAD_SHARE_PERCENT: u64 = 75;
/// The smallest budget, for functions whose memory is close to the reserve.
const MIN_BUDGET_MIB: u64 = 16;

/// The memory payloads may hold, for a function of `function_memory_mb` MB
/// (Lambda's MB are MiB): 75 % of what is left after 64 MiB for the process.
/// 512 MB gives 336 MiB; 128 MB gives 48 MiB.
pub fn derived_budget_bytes(function_memory_mb: u64) -> u64 {
    let payloads =
        function_memory_mb.saturating_sub(PROCESS_RESERVE_MIB) * PAYLOAD_SHARE_PERCENT / 100;
    payloads.max(MIN_BUDGET_MIB) * MIB
}

/// The shared budget of one process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total_units: u32,
}

/// Bytes held against the budget; they return when this is dropped.
#[derive(Debug)]
pub struct Reservation {
    /// `None` only if the semaphore were closed, which it never is.
    permit: Option<OwnedSemaphorePermit>,
    /// Another limit the record is admitted under, released with the bytes.
    _also_held: Option<OwnedSemaphorePermit>,
}

/// What a record holds in memory for a payload, by the work done on it: the
/// body itself, a copy compressed for the archive, the DynamoDB projection's
/// items in flight, and what every record holds whatever its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldingCost {
    /// Held per payload byte, in percent: the body, and a compressed copy.
    pub percent_of_payload: u64,
    /// The DynamoDB projection's items in flight: in percent of the payload,
    /// up to a cap, since it writes in windows of bounded size.
    pub projection_percent: u64,
    pub projection_cap: u64,
    /// Held by every record: the request, TLS buffers, the SDK's calls.
    pub per_record: u64,
    /// Payloads larger than this are streamed, never held whole.
    pub streamed: Option<Streamed>,
}

/// Payloads above `above` bytes hold `holds` bytes whatever their size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streamed {
    pub above: u64,
    pub holds: u64,
}

impl HoldingCost {
    /// The body alone.
    pub const BUFFER_ONLY: HoldingCost = HoldingCost {
        percent_of_payload: 100,
        projection_percent: 0,
        projection_cap: 0,
        per_record: 256 * 1024,
        streamed: None,
    };

    pub fn streaming_above(self, above: u64, holds: u64) -> Self {
        Self {
            streamed: Some(Streamed { above, holds }),
            ..self
        }
    }

    /// Whether a payload of `payload_bytes` is streamed rather than held.
    pub fn streams(&self, payload_bytes: u64) -> bool {
        self.streamed
            .is_some_and(|streamed| payload_bytes > streamed.above)
    }

    /// What a record holds for a payload of `payload_bytes` as it arrives.
    pub fn of(&self, payload_bytes: u64) -> u64 {
        match self.streamed {
            Some(streamed) if self.streams(payload_bytes) => {
                streamed.holds.saturating_add(self.per_record)
            }
            _ => self.held_whole(payload_bytes),
        }
    }

    /// What a record holds for a payload it holds whole, however large
    /// (one read back from the archive).
    pub fn held_whole(&self, payload_bytes: u64) -> u64 {
        let projection = payload_bytes
            .saturating_mul(self.projection_percent)
            .div_ceil(100)
            .min(self.projection_cap);
        payload_bytes
            .saturating_mul(self.percent_of_payload)
            .div_ceil(100)
            .saturating_add(projection)
            .saturating_add(self.per_record)
    }
}

impl MemoryBudget {
    /// A budget that never makes a record wait: for tools and tests that
    /// do not bound memory.
    pub fn unbounded() -> Self {
        Self::new(u64::from(u32::MAX) * UNIT)
    }

    pub fn new(total_bytes: u64) -> Self {
        let total_units = u32::try_from(units(total_bytes).max(1)).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        u64::from(self.total_units) * UNIT
    }

    /// Bytes not reserved right now.
    pub fn available_bytes(&self) -> u64 {
        self.permits.available_permits() as u64 * UNIT
    }

    /// Waits until `bytes` (at most the whole budget) are free and holds them.
    /// Waiters are served in order, so a large reservation is not starved by
    /// a stream of small ones.
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        let wanted = self.units_for(bytes);
        Reservation {
            permit: Arc::clone(&self.permits)
                .acquire_many_owned(wanted)
                .await
                .ok(),
            _also_held: None,
        }
    }

    fn units_for(&self, bytes: u64) -> u32 {
        u32::try_from(units(bytes).max(1))
            .unwrap_or(u32::MAX)
            .min(self.total_units)
    }
}

impl Reservation {
    /// Holds `permit` for as long as the bytes.
    pub fn also_holding(self, permit: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            _also_held: permit,
            ..self
        }
    }

    pub fn bytes(&self) -> u64 {
        self.permit
            .as_ref()
            .map_or(0, |p| p.num_permits() as u64 * UNIT)
    }

    /// Gives back everything above `bytes`, once a record knows it holds
    /// less than it reserved.
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = units(bytes).max(1) as usize;
        if let Some(permit) = &mut self.permit {
            let held = permit.num_permits();
            if keep < held {
                drop(permit.split(held - keep));
            }
        }
    }
}

fn units(bytes: u64) -> u64 {
    bytes.div_ceil(UNIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_budget_follows_the_function_memory() {
        assert_eq!(derived_budget_bytes(512), 336 * MIB);
        assert_eq!(derived_budget_bytes(128), 48 * MIB);
        assert_eq!(derived_budget_bytes(10_240), 7632 * MIB);
        assert_eq!(derived_budget_bytes(64), MIN_BUDGET_MIB * MIB);
    }

    #[test]
    fn a_streamed_payload_holds_the_same_whatever_its_size() {
        let cost = HoldingCost::BUFFER_ONLY.streaming_above(8 * MIB, 20 * MIB);
        assert_eq!(cost.of(8 * MIB), HoldingCost::BUFFER_ONLY.of(8 * MIB));
        assert_eq!(cost.of(8 * MIB + 1), 20 * MIB + cost.per_record);
        assert_eq!(cost.of(64 * MIB), cost.of(8 * MIB + 1));
        assert_eq!(
            cost.held_whole(64 * MIB),
            HoldingCost::BUFFER_ONLY.of(64 * MIB)
        );
    }

    #[tokio::test]
    async fn a_reservation_waits_until_the_bytes_are_free() {
        let budget = MemoryBudget::new(10 * MIB);
        let first = budget.reserve(6 * MIB).await;
        assert_eq!(budget.available_bytes(), 4 * MIB);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(6 * MIB).await.bytes() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "only 4 MiB were free");
        drop(first);
        assert_eq!(waiting.await.expect("reserved"), 6 * MIB);
        assert_eq!(budget.available_bytes(), 10 * MIB);
    }

    #[tokio::test]
    async fn a_record_larger_than_the_budget_takes_all_of_it_and_runs_alone() {
        let budget = MemoryBudget::new(10 * MIB);
        let whole = budget.reserve(64 * MIB).await;
        assert_eq!(whole.bytes(), 10 * MIB);
        assert_eq!(budget.available_bytes(), 0);
        drop(whole);
        assert_eq!(budget.available_bytes(), 10 * MIB);
    }

    #[tokio::test]
    async fn shrinking_gives_the_rest_back_at_once() {
        let budget = MemoryBudget::new(10 * MIB);
        let mut held = budget.reserve(8 * MIB).await;
        held.shrink_to(100 * 1024);
        assert_eq!(held.bytes(), 100 * 1024);
        assert_eq!(budget.available_bytes(), 10 * MIB - 100 * 1024);
        held.shrink_to(MIB);
        assert_eq!(held.bytes(), 100 * 1024, "shrinking never grows");
    }

    #[tokio::test]
    async fn a_large_waiter_is_not_overtaken_by_small_ones() {
        let budget = MemoryBudget::new(10 * MIB);
        let first = budget.reserve(6 * MIB).await;
        let large = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(8 * MIB).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let small = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(MIB).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !small.is_finished(),
            "the small one queues behind the large"
        );
        drop(first);
        let large = large.await.expect("large reserved");
        assert_eq!(large.bytes(), 8 * MIB);
        drop(large);
        assert_eq!(small.await.expect("small reserved").bytes(), MIB);
    }
}
