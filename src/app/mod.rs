//! Everything built once at cold start, and the Lambda handlers that use it.
//! [`aws`] wires the AWS clients from the configuration; the handlers see only
//! the narrow traits, so tests run them in process on in-memory fakes.

pub mod async_runtime;
mod aws;

pub use aws::{dynamodb_client, eraser, pipeline, s3_client};
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Diagnostic, LambdaEvent};
use tokio::time::Instant;
use tracing::Instrument;

use crate::batch::{self, BatchLimits};
use crate::config::{ConfigError, Tracing};
use crate::fetch::ClientBuildError;
use crate::metrics::Metrics;
use crate::outcome::BatchReport;
use crate::pipeline::Pipeline;
use crate::quarantine::{self, QuarantineQueue};
use crate::redelivery::Redelivery;
use crate::source::kafka::{
    self, KafkaBatchResponse, KafkaEvent, KafkaResponseError, ResponseMode,
};
use crate::source::sqs::{self, SqsResponseError};
use crate::telemetry::Telemetry;

/// Time kept back from the Lambda deadline to report the batch response.
const RESPONSE_RESERVE: Duration = Duration::from_millis(1_000);

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] ClientBuildError),
}

/// Why a handler fails its whole invocation, so that the mapping retries the
/// batch. Lambda records the `errorType` named here.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Sqs(#[from] SqsResponseError),
    #[error(transparent)]
    Kafka(#[from] KafkaResponseError),
}

impl HandlerError {
    /// The `errorType` Lambda reports: what happened, not a Rust type name.
    pub fn error_type(&self) -> &'static str {
        match self {
            HandlerError::Kafka(KafkaResponseError::BatchFailed { .. }) => "BatchFailed",
            HandlerError::Kafka(KafkaResponseError::MissingOffset { .. }) => "MissingOffset",
            HandlerError::Sqs(SqsResponseError::MissingMessageId { .. }) => "MissingMessageId",
            HandlerError::Sqs(SqsResponseError::Mismatch { .. })
            | HandlerError::Kafka(KafkaResponseError::Mismatch { .. }) => "OutcomeMismatch",
        }
    }
}

impl From<HandlerError> for Diagnostic {
    fn from(error: HandlerError) -> Self {
        Diagnostic {
            error_type: error.error_type().to_owned(),
            error_message: error.to_string(),
        }
    }
}

pub struct App {
    pipeline: Arc<Pipeline>,
    concurrency: usize,
    kafka_response: ResponseMode,
    quarantine: Option<Box<dyn QuarantineQueue>>,
    redelivery: Redelivery,
    metrics: Metrics,
    telemetry: Telemetry,
}

/// What an [`App`] is made of.
pub struct AppParts {
    pub pipeline: Pipeline,
    /// Records in flight at once (`TERRA_FETCH_CONCURRENCY`).
    pub concurrency: usize,
    pub kafka_response: ResponseMode,
    /// Where poison Kafka records go, when configured.
    pub quarantine: Option<Box<dyn QuarantineQueue>>,
    pub redelivery: Redelivery,
    pub metrics: Metrics,
}

impl App {
    /// The cold start of both binaries: logs (and traces, when asked), then
    /// the configuration and every client. A bad configuration ends the
    /// process with the variable named in the log, before any event is taken.
    pub async fn start() -> Self {
        // A bad tracing setting still gets the logs that report it: the
        // configuration below fails on it, naming the variable.
        let telemetry = Telemetry::init(Tracing::from_env().unwrap_or_default())
            .unwrap_or_else(|error| cold_start_failed(&error));
        release_large_buffers_when_freed();
        match Self::from_env().await {
            Ok(app) => app.with_telemetry(telemetry),
            Err(error) => cold_start_failed(&error),
        }
    }

    /// [`App::start`], for the rest of the process. On Lambda Managed
    /// Instances the runtime hands out invocations from several workers at
    /// once (`AWS_LAMBDA_MAX_CONCURRENCY`), and each holds the app: one
    /// memory budget and one set of clients for all of them.
    pub async fn start_for_the_process() -> &'static Self {
        Box::leak(Box::new(Self::start().await))
    }

    /// Spans traced by `telemetry` (the app is built with tracing off).
    pub fn with_telemetry(self, telemetry: Telemetry) -> Self {
        Self { telemetry, ..self }
    }

    /// An app of the parts given: the binaries get them from [`App::from_config`],
    /// tests from in-memory fakes.
    pub fn new(parts: AppParts) -> Self {
        Self {
            pipeline: Arc::new(parts.pipeline),
            concurrency: parts.concurrency,
            kafka_response: parts.kafka_response,
            quarantine: parts.quarantine,
            redelivery: parts.redelivery,
            metrics: parts.metrics,
            telemetry: Telemetry::off(),
        }
    }

    /// The span every line and trace of an invocation sits under: a child of
    /// Lambda's own segment when tracing.
    fn invocation_span<T>(&self, trigger: &'static str, event: &LambdaEvent<T>) -> tracing::Span {
        let span = tracing::info_span!(
            "invocation",
            trigger,
            request_id = %event.context.request_id,
            records = tracing::field::Empty,
        );
        self.telemetry
            .continue_trace(&span, event.context.xray_trace_id.as_deref());
        span
    }

    pub async fn handle_sqs(
        &self,
        event: LambdaEvent<SqsEvent>,
    ) -> Result<SqsBatchResponse, HandlerError> {
        let span = self.invocation_span("sqs", &event);
        self.handle_sqs_traced(event).instrument(span).await
    }

    async fn handle_sqs_traced(
        &self,
        event: LambdaEvent<SqsEvent>,
    ) -> Result<SqsBatchResponse, HandlerError> {
        let items = sqs::decode(&event.payload);
        tracing::Span::current().record("records", items.len());
        let limits = self.limits(&event);
        let time_left = event
            .context
            .deadline()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        // A slow SQS must not hold the batch's response past the cutoff.
        let hold = tokio::time::timeout_at(
            limits.cutoff,
            self.redelivery
                .hold(&event.payload, time_left)
                .instrument(tracing::info_span!("redelivery", step = "hold")),
        );
        let (report, held) =
            tokio::join!(batch::run(Arc::clone(&self.pipeline), items, limits), hold);
        if held.is_err() {
            tracing::warn!("SQS too slow to hold the batch for this invocation");
        }
        // The response reserve is all that is left: a return not timed by
        // then falls back to the batch's hold.
        let by = limits.cutoff + RESPONSE_RESERVE / 2;
        if tokio::time::timeout_at(
            by,
            self.redelivery
                .schedule(&event.payload, &report.outcomes, time_left)
                .instrument(tracing::info_span!("redelivery", step = "schedule")),
        )
        .await
        .is_err()
        {
            tracing::warn!("SQS too slow to time the return of failed messages");
        }
        report.log_summary();
        self.metrics
            .emit(&event.context.env_config.function_name, "sqs", &report);
        Ok(sqs::response(&event.payload, &report.outcomes)?)
    }

    pub async fn handle_kafka(
        &self,
        event: LambdaEvent<KafkaEvent>,
    ) -> Result<KafkaBatchResponse, HandlerError> {
        let span = self.invocation_span("kafka", &event);
        self.handle_kafka_traced(event).instrument(span).await
    }

    async fn handle_kafka_traced(
        &self,
        event: LambdaEvent<KafkaEvent>,
    ) -> Result<KafkaBatchResponse, HandlerError> {
        let (decoded, items) = kafka::decode(&event.payload);
        tracing::Span::current().record("records", items.len());
        let mut report = batch::run(Arc::clone(&self.pipeline), items, self.limits(&event)).await;
        if let Some(queue) = &self.quarantine {
            let settled = kafka::settled_once_set_aside(
                &decoded,
                &report.outcomes,
                self.kafka_response,
                |failure| !failure.is_poison(),
            );
            let diverted = quarantine::divert_poison(
                queue.as_ref(),
                report.outcomes.clone(),
                |index, failure| {
                    if settled.get(index).copied().unwrap_or(false) {
                        decoded.quarantined(index, failure)
                    } else {
                        tracing::info!(id = %decoded.records.get(index).map(|r| r.log_id(index)).unwrap_or_default(), "poison record comes back with its batch; quarantined once nothing holds it back");
                        None
                    }
                },
            );
            // Past the batch cutoff only the response reserve is left; a
            // record not quarantined in time is left failed, to be retried.
            let by = cutoff_before(event.context.deadline()) + RESPONSE_RESERVE / 2;
            let diverted = diverted.instrument(tracing::info_span!("quarantine"));
            match tokio::time::timeout_at(by, diverted).await {
                Ok(outcomes) => report = BatchReport { outcomes },
                Err(_) => {
                    tracing::error!("quarantine queue too slow; poison records will be retried")
                }
            }
        }
        report.log_summary();
        self.metrics
            .emit(&event.context.env_config.function_name, "kafka", &report);
        Ok(kafka::response(
            &decoded,
            &report.outcomes,
            self.kafka_response,
        )?)
    }

    fn limits<T>(&self, event: &LambdaEvent<T>) -> BatchLimits {
        BatchLimits {
            concurrency: self.concurrency,
            cutoff: cutoff_before(event.context.deadline()),
        }
    }
}

fn cold_start_failed(error: &dyn std::fmt::Display) -> ! {
    tracing::error!(%error, "cold start failed");
    std::process::exit(1);
}

/// Payload buffers are large and short-lived. By default glibc raises its mmap
/// threshold to the largest buffer freed so far, after which such buffers come
/// from per-thread heaps that keep them once freed: peak memory grew with the
/// threads that had held a payload (3.2x one 20 MB payload at concurrency 1;
/// see BENCHMARKS.md). A fixed threshold gives every buffer over 1 MiB back to
/// the system when it is freed.
fn release_large_buffers_when_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const LARGE_BUFFER: libc::c_int = 1024 * 1024;
        // SAFETY: mallopt only sets an allocator parameter; it takes the
        // allocator's own locks and may be called at any time.
        if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE_BUFFER) } != 1 {
            tracing::warn!("could not set the allocator's mmap threshold");
        }
    }
}

/// The instant to stop working so the response still reaches Lambda in time.
fn cutoff_before(deadline: SystemTime) -> Instant {
    let remaining = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Instant::now() + remaining.saturating_sub(RESPONSE_RESERVE)
}
