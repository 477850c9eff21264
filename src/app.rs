//! Everything built once at cold start, and the Lambda handlers that use it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;
use tokio::time::Instant;

use crate::batch::{self, BatchLimits, BatchReport};
use crate::budget::{HoldingCost, MemoryBudget};
use crate::config::{Config, ConfigError};
use crate::dead_letter::{self, DeadLetterQueue, SqsDeadLetterQueue};
use crate::fetch::{ClientBuildError, Fetcher};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::redelivery::sqs::{Redelivery, SqsQueueControl};
use crate::sink::{Archive, DynamoDbSink, S3Compression, S3Sink, Sink};
use crate::source::kafka::{self, KafkaBatchResponse, KafkaEvent, ResponseMode};
use crate::source::sqs;

/// Time kept back from the Lambda deadline to report the batch response.
const RESPONSE_RESERVE: Duration = Duration::from_millis(1_000);
const DYNAMODB_MAX_ATTEMPTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] ClientBuildError),
}

pub struct App {
    pipeline: Arc<Pipeline>,
    concurrency: usize,
    kafka_response: ResponseMode,
    dead_letters: Option<Box<dyn DeadLetterQueue>>,
    redelivery: Redelivery,
    metrics: Metrics,
}

impl App {
    /// The cold start of both binaries: JSON logs, then the configuration and
    /// every client. A bad configuration ends the process with the variable
    /// named in the log, before any event is taken.
    pub async fn start() -> Self {
        lambda_runtime::tracing::init_default_subscriber();
        release_large_buffers_when_freed();
        match Self::from_env().await {
            Ok(app) => app,
            Err(error) => {
                tracing::error!(%error, "cold start failed");
                std::process::exit(1);
            }
        }
    }

    /// Reads the configuration from the environment and builds every client.
    pub async fn from_env() -> Result<Self, InitError> {
        Self::from_config(Config::from_env()?).await
    }

    pub async fn from_config(config: Config) -> Result<Self, InitError> {
        let cost = holding_cost(&config);
        let budget = MemoryBudget::new(config.memory_budget_bytes);
        let budget_bytes = budget.total_bytes();
        let max_payload_bytes = config.fetch.max_payload_bytes;
        let fetcher = Fetcher::new(config.url_policy, config.fetch)?.with_budget(budget, cost);
        let aws = aws_config::defaults(BehaviorVersion::latest()).load().await;
        let archive = config.s3.map(|settings| {
            let s3_config = aws_sdk_s3::config::Builder::from(&aws)
                .force_path_style(config.s3_force_path_style)
                .build();
            Arc::new(S3Sink::new(
                aws_sdk_s3::Client::from_conf(s3_config),
                settings,
            )) as Arc<dyn Archive>
        });
        let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
        if let Some(table) = config.dynamodb_table {
            // Throttling and 5xx are retried by the SDK with backoff; the batch
            // cutoff bounds the total.
            let dynamodb_config = aws_sdk_dynamodb::config::Builder::from(&aws)
                .retry_config(RetryConfig::standard().with_max_attempts(DYNAMODB_MAX_ATTEMPTS))
                .build();
            sinks.push(Arc::new(DynamoDbSink::new(
                aws_sdk_dynamodb::Client::from_conf(dynamodb_config),
                table,
                config.dynamodb_max_items,
            )));
        }
        let sqs = aws_sdk_sqs::Client::new(&aws);
        let dead_letters = config.kafka.dead_letter_queue_url.map(|queue_url| {
            Box::new(SqsDeadLetterQueue::new(sqs.clone(), queue_url)) as Box<dyn DeadLetterQueue>
        });
        let pipeline = Pipeline::new(fetcher, archive, sinks);
        tracing::info!(
            memory_budget_bytes = budget_bytes,
            largest_record_holds = pipeline.largest_record_holds(max_payload_bytes),
            "memory budget"
        );
        Ok(Self {
            pipeline: Arc::new(pipeline),
            concurrency: config.concurrency,
            kafka_response: if config.kafka.partial_batch {
                ResponseMode::PartialBatch
            } else {
                ResponseMode::WholeBatch
            },
            dead_letters,
            redelivery: Redelivery::new(Box::new(SqsQueueControl::new(sqs))),
            metrics: Metrics::new(config.metrics_namespace),
        })
    }

    pub async fn handle_sqs(
        &self,
        event: LambdaEvent<SqsEvent>,
    ) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let items = sqs::decode(&event.payload);
        let limits = self.limits(&event);
        let time_left = event
            .context
            .deadline()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        // A slow SQS must not hold the batch's response past the cutoff.
        let hold = tokio::time::timeout_at(
            limits.cutoff,
            self.redelivery.hold(&event.payload, time_left),
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
                .schedule(&event.payload, &report.outcomes, time_left),
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
    ) -> Result<KafkaBatchResponse, lambda_runtime::Error> {
        let mut decoded = kafka::decode(&event.payload);
        let items = std::mem::take(&mut decoded.items);
        let mut report = batch::run(Arc::clone(&self.pipeline), items, self.limits(&event)).await;
        if let Some(queue) = &self.dead_letters {
            let diverted = dead_letter::divert_poison(
                queue.as_ref(),
                report.outcomes.clone(),
                |index, failure| decoded.dead_letter(index, failure),
            );
            // Past the batch cutoff only the response reserve is left; a
            // letter not sent in time leaves its record failed, to be retried.
            let by = cutoff_before(event.context.deadline()) + RESPONSE_RESERVE / 2;
            match tokio::time::timeout_at(by, diverted).await {
                Ok(outcomes) => report = BatchReport { outcomes },
                Err(_) => {
                    tracing::error!("dead-letter queue too slow; poison records will be retried")
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

/// What a record holds for its payload, by the stores configured. The
/// factors are measured by `make bench` (BENCHMARKS.md, "Memory budget").
fn holding_cost(config: &Config) -> HoldingCost {
    let mut cost = HoldingCost::BUFFER_ONLY;
    if config
        .s3
        .as_ref()
        .is_some_and(|s3| s3.compression == S3Compression::Gzip)
    {
        // The compressed copy, its buffer grown by doubling.
        cost.percent_of_payload += 50;
    }
    if config.dynamodb_table.is_some() {
        cost = DynamoDbSink::holding_cost(cost);
    }
    cost
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
