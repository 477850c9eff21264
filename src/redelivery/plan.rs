//! The plan: how long each failed message stays hidden, from its URL's
//! life, the receipts its queue's redrive policy leaves, and its FIFO group.

use std::time::Duration;

use super::QueueSettings;
use crate::outcome::{RecordFailure, Retry};

/// A hidden batch comes back this long after its invocation's deadline, at
/// least: the response must reach Lambda, and Lambda must delete the
/// messages that succeeded, before they are visible again.
const MIN_HOLD_MARGIN: Duration = Duration::from_secs(1);
/// Receipts assumed to remain when the queue has no redrive policy.
const RECEIPTS_WITHOUT_REDRIVE: u32 = 4;
/// SQS's largest visibility timeout.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

/// How long a batch stays hidden while its invocation works on it: the time
/// the invocation has left plus a quarter of it (at least one second). An
/// invocation that dies leaves its messages to come back soon after its
/// deadline instead of after the queue's visibility timeout.
pub fn hold_for_invocation(time_left: Duration) -> Duration {
    let margin = (time_left / 4).max(MIN_HOLD_MARGIN);
    whole_seconds_up(time_left + margin)
}

/// The two counts that time a failed message's return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Receipts so far (SQS's `ApproximateReceiveCount`).
    pub receive_count: u32,
    /// How long its URL still works, when its lifetime is known.
    pub url_life_left: Option<Duration>,
}

impl Clock {
    /// The clock two messages share when they must come back together (a
    /// FIFO group's): the soonest living URL and the most receipts decide,
    /// so the last receipt of either still lands while both URLs live.
    pub fn shared_with(self, other: Clock) -> Clock {
        let living = |clock: Clock| clock.url_life_left.filter(|left| !left.is_zero());
        let url_life_left = match (living(self), living(other)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Clock {
            receive_count: self.receive_count.max(other.receive_count),
            url_life_left,
        }
    }
}

/// Whether the failed message holds others back: on a FIFO queue SQS
/// delivers nothing more from a message group while one of its messages is
/// in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOrder {
    /// A standard queue: a message comes back on its own.
    Unordered,
    /// A message of a FIFO group: its group waits for it.
    FifoGroup,
}

/// When a failed message should become visible again, counted from now.
///
/// - Permanent failures keep the queue's visibility timeout (`None` when the
///   queue's settings are unknown: the batch's hold stands). In a FIFO group
///   under a redrive policy they come back at once instead, so that they
///   reach the dead-letter queue in their remaining receipts and do not hold
///   up the group's later messages, whose URLs are dying.
/// - A transient failure whose URL still lives comes back within the URL's
///   remaining life, spread over the receipts the redrive policy leaves. The
///   last receipt is aimed half an invocation before the URL dies, so its
///   retries run until the URL does: a payload host that recovers in the
///   URL's final minutes is still caught, and one that never does ends
///   `expired`, not given up on while the URL lived. The receipts before it
///   are spaced evenly up to then. A message on its last receipt comes back
///   at once, since only the dead-letter queue follows. In a FIFO group the
///   clock is the group's ([`Clock::shared_with`]): the failure and the
///   messages held behind it come back together.
/// - A transient failure whose URL is dead (the payload is in the archive)
///   or has no known lifetime keeps the queue's timeout.
///
/// `invocation` is how long one invocation may run: the time the current
/// one had when it started.
pub fn return_after(
    failure: &RecordFailure,
    clock: Clock,
    queue: Option<&QueueSettings>,
    ordering: QueueOrder,
    invocation: Duration,
) -> Option<Duration> {
    let queue_timeout = queue.map(|q| q.visibility_timeout);
    if failure.retry == Retry::Permanent {
        let dead_letters_follow = queue.is_some_and(|q| q.max_receive_count.is_some());
        return if ordering == QueueOrder::FifoGroup && dead_letters_follow {
            Some(Duration::ZERO)
        } else {
            queue_timeout
        };
    }
    let url_life_left = match clock.url_life_left {
        Some(left) if !left.is_zero() => left,
        _ => return queue_timeout,
    };
    let receipts_left = match queue.and_then(|q| q.max_receive_count) {
        Some(max) => max.saturating_sub(clock.receive_count),
        None => RECEIPTS_WITHOUT_REDRIVE,
    };
    if receipts_left == 0 {
        return Some(Duration::ZERO);
    }
    let last_receipt_at = url_life_left.saturating_sub(invocation / 2);
    let spread = last_receipt_at / receipts_left;
    let delay = match queue_timeout {
        Some(timeout) => spread.min(timeout),
        None => spread,
    };
    Some(Duration::from_secs(delay.as_secs()))
}

fn whole_seconds_up(duration: Duration) -> Duration {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    Duration::from_secs(secs).min(MAX_VISIBILITY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::FailureClass;

    const TEMPLATE_DEFAULTS: QueueSettings = QueueSettings {
        visibility_timeout: Duration::from_secs(1020),
        max_receive_count: Some(5),
    };

    fn transient() -> RecordFailure {
        RecordFailure::new(FailureClass::Fetch, Retry::Transient, "HTTP 500")
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn clock(receive_count: u32, url_life_left: Option<Duration>) -> Clock {
        Clock {
            receive_count,
            url_life_left,
        }
    }

    #[test]
    fn a_batch_is_held_for_its_invocation_and_a_margin() {
        assert_eq!(hold_for_invocation(secs(119)), secs(149));
        assert_eq!(hold_for_invocation(Duration::from_millis(5_900)), secs(8));
        assert_eq!(hold_for_invocation(Duration::ZERO), secs(1));
    }

    /// The template's default function timeout.
    const INVOCATION: Duration = Duration::from_secs(120);

    #[test]
    fn transient_failures_come_back_while_the_url_lives() {
        let back = |count, left| {
            return_after(
                &transient(),
                clock(count, left),
                Some(&TEMPLATE_DEFAULTS),
                QueueOrder::Unordered,
                INVOCATION,
            )
        };
        // The template's defaults: a 600 s URL, a payload host down for good,
        // each receipt's retries running out its 120 s invocation.
        assert_eq!(back(1, Some(secs(480))), Some(secs(105)));
        assert_eq!(back(2, Some(secs(255))), Some(secs(65)));
        assert_eq!(back(3, Some(secs(70))), Some(secs(5)));
        // The last receipt starts half an invocation before the URL dies.
        assert_eq!(back(4, Some(secs(200))), Some(secs(140)));
        assert_eq!(
            back(4, Some(secs(50))),
            Some(secs(0)),
            "already inside the last half"
        );
        assert_eq!(back(5, Some(secs(60))), Some(secs(0)), "the DLQ is next");
        assert_eq!(back(1, None), Some(secs(1020)), "no known lifetime");
        assert_eq!(back(1, Some(Duration::ZERO)), Some(secs(1020)), "URL dead");
        assert_eq!(
            back(1, Some(secs(86_400))),
            Some(secs(1020)),
            "never later than the queue's timeout"
        );
    }

    #[test]
    fn the_last_receipt_outlives_the_url_at_any_ratio() {
        for invocation_secs in [3, 6, 30, 120, 900] {
            let invocation = secs(invocation_secs);
            for left_secs in 1..=600 {
                let left = secs(left_secs);
                let back = return_after(
                    &transient(),
                    clock(4, Some(left)),
                    Some(&TEMPLATE_DEFAULTS),
                    QueueOrder::Unordered,
                    invocation,
                )
                .unwrap_or_default();
                assert!(
                    back < left && left - back <= invocation / 2 + secs(1),
                    "{left_secs} s left, {invocation_secs} s invocations: back after {back:?}"
                );
            }
        }
    }

    #[test]
    fn permanent_failures_keep_the_queue_timeout() {
        let expired = RecordFailure::new(FailureClass::Expired, Retry::Permanent, "gone");
        let back = |queue, ordering| {
            return_after(
                &expired,
                clock(1, Some(secs(300))),
                queue,
                ordering,
                INVOCATION,
            )
        };
        assert_eq!(
            back(Some(&TEMPLATE_DEFAULTS), QueueOrder::Unordered),
            Some(secs(1020))
        );
        assert_eq!(back(None, QueueOrder::Unordered), None);
        assert_eq!(back(None, QueueOrder::FifoGroup), None);
    }

    /// A FIFO group waits while any of its messages is in flight: a
    /// permanent failure held for the queue's 1020 s would hold the group's
    /// later messages past their URLs.
    #[test]
    fn in_a_fifo_group_permanent_failures_come_back_at_once_to_be_dead_lettered() {
        let invalid = RecordFailure::new(FailureClass::Invalid, Retry::Permanent, "not Terra's");
        let back = |queue| {
            return_after(
                &invalid,
                clock(1, None),
                queue,
                QueueOrder::FifoGroup,
                INVOCATION,
            )
        };
        assert_eq!(back(Some(&TEMPLATE_DEFAULTS)), Some(Duration::ZERO));
        let without_redrive = QueueSettings {
            max_receive_count: None,
            ..TEMPLATE_DEFAULTS
        };
        assert_eq!(
            back(Some(&without_redrive)),
            Some(secs(1020)),
            "without a dead-letter queue it would come back for ever"
        );
    }

    #[test]
    fn a_fifo_group_shares_the_soonest_living_url_and_the_most_receipts() {
        let head = clock(2, Some(secs(400)));
        let behind = clock(1, Some(secs(250)));
        let archived = clock(3, Some(Duration::ZERO));
        assert_eq!(head.shared_with(behind), clock(2, Some(secs(250))));
        assert_eq!(archived.shared_with(behind), clock(3, Some(secs(250))));
        assert_eq!(
            clock(1, None).shared_with(behind),
            clock(1, Some(secs(250)))
        );
        assert_eq!(
            archived.shared_with(clock(1, None)).url_life_left,
            None,
            "no living URL: the queue's timeout"
        );
        // The held messages' URLs, not the head's, time the group's return.
        let group = archived.shared_with(behind);
        assert_eq!(
            return_after(
                &transient(),
                group,
                Some(&TEMPLATE_DEFAULTS),
                QueueOrder::FifoGroup,
                INVOCATION
            ),
            Some(secs(95))
        );
    }

    #[test]
    fn without_queue_settings_transient_failures_still_beat_the_url() {
        assert_eq!(
            return_after(
                &transient(),
                clock(3, Some(secs(100))),
                None,
                QueueOrder::Unordered,
                secs(20)
            ),
            Some(secs(22))
        );
    }
}
