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
///   remaining life, spread over the receipts the redrive policy leaves: the
///   remaining life divided by the receipts left plus one. Its last receipt
///   comes back at once, since only the dead-letter queue follows.
/// - A transient failure whose URL is dead (the payload is in the archive)
///   or has no known lifetime keeps the queue's timeout.
pub fn return_after(
    failure: &RecordFailure,
    receive_count: u32,
    queue: Option<&QueueSettings>,
    url_life_left: Option<Duration>,
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
    let spread = url_life_left / (receipts_left + 1);
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

    #[test]
    fn transient_failures_come_back_while_the_url_lives() {
        let back = |count, left| return_after(&transient(), count, Some(&TEMPLATE_DEFAULTS), left);
        // The template's defaults: a 600 s URL, first failure after a 120 s
        // invocation, 4 receipts left.
        assert_eq!(back(1, Some(secs(480))), Some(secs(96)));
        assert_eq!(back(2, Some(secs(264))), Some(secs(66)));
        assert_eq!(back(4, Some(secs(60))), Some(secs(30)));
        assert_eq!(back(5, Some(secs(60))), Some(secs(0)), "the DLQ is next");
        assert_eq!(back(1, None), Some(secs(1020)), "no known lifetime");
        assert_eq!(back(1, Some(Duration::ZERO)), Some(secs(1020)), "URL dead");
        let long_url = return_after(
            &transient(),
            1,
            Some(&TEMPLATE_DEFAULTS),
            Some(secs(86_400)),
        );
        assert_eq!(
            long_url,
            Some(secs(1020)),
            "never later than the queue's timeout"
        );
    }

    #[test]
    fn permanent_failures_keep_the_queue_timeout() {
        let expired = RecordFailure::new(FailureClass::Expired, Retry::Permanent, "gone");
        assert_eq!(
            return_after(&expired, 1, Some(&TEMPLATE_DEFAULTS), Some(secs(300))),
            Some(secs(1020))
        );
        assert_eq!(return_after(&expired, 1, None, Some(secs(300))), None);
    }

    #[test]
    fn without_queue_settings_transient_failures_still_beat_the_url() {
        assert_eq!(
            return_after(&transient(), 3, None, Some(secs(100))),
            Some(secs(20))
        );
    }
}
