//! The time of day in milliseconds since the epoch: the unit SQS's
//! `SentTimestamp` and Kafka's record timestamps come in, so a message's age
//! is one subtraction.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in ms since the epoch; 0 on a clock set before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
