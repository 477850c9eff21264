//! terra-sink: lands Terra health data, delivered as pointer messages on SQS or
//! Kafka, in the customer's own S3 bucket and DynamoDB table.
//!
//! The flow for one record: [`source`] decodes the trigger's record into a
//! [`record`], [`message`] decodes Terra's pointer, [`fetch`] downloads the
//! payload under the URL policy (or, in Terra's own-bucket mode, reads it
//! from the customer's bucket with the function's role), [`payload`] checks
//! it, [`sink`] names and writes it. [`pipeline`] strings these together for
//! one record, and [`batch`] runs a whole invocation: concurrency, deadline,
//! ordering and the per-record [`outcome`]s the sources turn into partial
//! batch responses.
//! [`redelivery`] times the return of failed SQS messages; [`quarantine`]
//! sets aside Kafka records that can never succeed. [`metrics`] reports each
//! invocation to CloudWatch. [`app`] builds all of it once at cold start from
//! [`config`], within the memory [`budget`]. [`redact`] is what may be shown of
//! it in logs and errors; [`telemetry`] sets up the logs and, when asked,
//! sends the same spans as X-Ray traces. [`erasure`] removes one person's
//! data, found through the index the archive keeps.

pub mod app;
pub mod batch;
pub mod budget;
pub mod config;
pub mod digest;
pub mod erasure;
#[cfg(test)]
mod fakes;
pub mod fetch;
pub mod log_events;
pub mod message;
pub mod metrics;
pub mod outcome;
pub mod payload;
pub mod pipeline;
pub mod quarantine;
pub mod record;
pub mod redact;
pub mod redelivery;
pub mod sdk_error;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod wall_clock;
