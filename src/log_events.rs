//! The messages of the log lines that tests and the local tools read back,
//! named once. `dev/src/logs.rs` includes this file, so a message changed
//! here changes what they look for.

/// One record written to every store; its fields say how long it took and
/// how old its payload was when fetched.
pub const RECORD_WRITTEN: &str = "record written";
/// One record failed; its fields say how (`class`, `retry`, `error`).
pub const RECORD_FAILED: &str = "record failed";
/// The invocation's summary line, once every outcome is settled.
pub const BATCH_DONE: &str = "batch done";
