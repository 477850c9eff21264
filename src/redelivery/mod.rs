//! When a failed message comes back, planned against the two clocks that
//! decide whether it can still succeed: the pre-signed URL dies `expires_in`
//! after Terra sent the message, while a queue left to itself returns a
//! failed message only after its visibility timeout (1020 s with the
//! template's defaults), long after the URL is gone.
//!
//! SQS ([`sqs`]) lets the function choose: a batch is hidden only for the
//! time its invocation has left plus a margin, so a crashed or killed
//! invocation's messages come back soon after its deadline, and each
//! transient failure comes back while its URL still lives, spread over the
//! receipts the redrive policy leaves. Kafka's mapping retries at once; there
//! the pipeline's own retries within each invocation do the pacing.

pub mod sqs;

use std::time::Duration;

use crate::outcome::{RecordFailure, Retry};

/// A hidden batch comes back this long after its invocation's deadline, at
/// least: the response must reach Lambda, and Lambda must delete the
/// messages that succeeded, before they are visible again.
const MIN_HOLD_MARGIN: Duration = Duration::from_secs(1);
/// Receipts assumed to remain when the queue has no redrive policy.
const RECEIPTS_WITHOUT_REDRIVE: u32 = 4;
/// SQS's largest visibility timeout.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

/// What the plan needs to know of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// The queue's own visibility timeout: what a permanent failure keeps.
    pub visibility_timeout: Duration,
    /// The redrive policy's `maxReceiveCount`, if the queue has one.
    pub max_receive_count: Option<u32>,
}

/// How long a batch stays hidden while its invocation works on it: the time
/// the invocation has left plus a quarter of it (at least one second). An
/// invocation that dies leaves its messages to come back soon after its
/// deadline instead of after the queue's visibility timeout.
pub fn hold_for_invocation(time_left: Duration) -> Duration {
    let margin = (time_left / 4).max(MIN_HOLD_MARGIN);
    whole_seconds_up(time_left + margin)
}

/// When a failed message should become visible again, counted from now.
///
/// - Permanent failures keep the queue's visibility timeout (`None` when the
///   queue's settings are unknown: the batch's hold stands).
/// - A transient failure whose URL still lives comes back within the URL's
///   remaining life, spread over the receipts the redrive policy leaves. The
///   last receipt is aimed half an invocation before the URL dies, so its
///   retries run until the URL does: a payload host that recovers in the
///   URL's final minutes is still caught, and one that never does ends
///   `expired`, not given up on while the URL lived. The receipts before it
///   are spaced evenly up to then. A message on its last receipt comes back
///   at once, since only the dead-letter queue follows.
/// - A transient failure whose URL is dead (the payload is in the archive)
///   or has no known lifetime keeps the queue's timeout.
///
/// `invocation` is how long one invocation may run: the time the current
/// one had when it started.
pub fn return_after(
    failure: &RecordFailure,
    receive_count: u32,
    queue: Option<&QueueSettings>,
    url_life_left: Option<Duration>,
    invocation: Duration,
) -> Option<Duration> {
    let queue_timeout = queue.map(|q| q.visibility_timeout);
    if failure.retry == Retry::Permanent {
        return queue_timeout;
    }
    let url_life_left = match url_life_left {
        Some(left) if !left.is_zero() => left,
        _ => return queue_timeout,
    };
    let receipts_left = match queue.and_then(|q| q.max_receive_count) {
        Some(max) => max.saturating_sub(receive_count),
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
                count,
                Some(&TEMPLATE_DEFAULTS),
                left,
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
                    4,
                    Some(&TEMPLATE_DEFAULTS),
                    Some(left),
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
        assert_eq!(
            return_after(
                &expired,
                1,
                Some(&TEMPLATE_DEFAULTS),
                Some(secs(300)),
                INVOCATION
            ),
            Some(secs(1020))
        );
        assert_eq!(
            return_after(&expired, 1, None, Some(secs(300)), INVOCATION),
            None
        );
    }

    #[test]
    fn without_queue_settings_transient_failures_still_beat_the_url() {
        assert_eq!(
            return_after(&transient(), 3, None, Some(secs(100)), secs(20)),
            Some(secs(22))
        );
    }
}
