//! The AWS side of cold start: the SDK clients, configured once from the
//! environment, behind the traits the handlers use.

use std::sync::Arc;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, SdkConfig};

use super::{App, AppParts, InitError};
use crate::budget::{HoldingCost, MemoryBudget};
use crate::config::Config;
use crate::erasure::{ArchiveToErase, Eraser, TableToErase};
use crate::fetch::Fetcher;
use crate::fetch::own_bucket::S3SourceBucket;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::quarantine::{QuarantineQueue, SqsQuarantineQueue};
use crate::redelivery::{Redelivery, SqsQueueControl};
use crate::sink::{Archive, DynamoDbSink, S3Archive, S3Compression, Sink};
use crate::source::kafka::ResponseMode;

const DYNAMODB_MAX_ATTEMPTS: u32 = 8;

impl App {
    /// Reads the configuration from the environment and builds every client.
    pub async fn from_env() -> Result<Self, InitError> {
        Self::from_config(Config::from_env()?).await
    }

    pub async fn from_config(config: Config) -> Result<Self, InitError> {
        let aws = aws_config::defaults(BehaviorVersion::latest()).load().await;
        let pipeline = pipeline(&config, &aws)?;
        let sqs = aws_sdk_sqs::Client::new(&aws);
        let quarantine = config.kafka.quarantine_queue_url.map(|queue_url| {
            Box::new(SqsQuarantineQueue::new(sqs.clone(), queue_url)) as Box<dyn QuarantineQueue>
        });
        Ok(Self::new(AppParts {
            pipeline,
            concurrency: config.concurrency,
            kafka_response: if config.kafka.partial_batch {
                ResponseMode::PartialBatch
            } else {
                ResponseMode::WholeBatch
            },
            quarantine,
            redelivery: Redelivery::new(Box::new(SqsQueueControl::new(sqs))),
            metrics: Metrics::new(config.metrics_namespace),
        }))
    }
}

/// The pipeline the configuration describes: fetcher, memory budget,
/// archive and sinks.
pub fn pipeline(config: &Config, aws: &SdkConfig) -> Result<Pipeline, InitError> {
    let cost = holding_cost(config);
    let budget = MemoryBudget::new(config.memory_budget_bytes);
    let budget_bytes = budget.total_bytes();
    let max_payload_bytes = config.fetch.max_payload_bytes;
    let fetcher =
        Fetcher::new(config.url_policy.clone(), config.fetch.clone())?.with_budget(budget, cost);
    let s3 = s3_client(aws, config.s3_force_path_style);
    let archive = config
        .s3
        .clone()
        .map(|settings| Arc::new(S3Archive::new(s3.clone(), settings)) as Arc<dyn Archive>);
    let dynamodb = dynamodb_client(aws);
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if let Some(table) = &config.dynamodb_table {
        sinks.push(Arc::new(
            DynamoDbSink::new(dynamodb.clone(), table.clone(), config.dynamodb_max_items)
                .expiring_after(config.dynamodb_retention_days),
        ));
    }
    let mut pipeline = Pipeline::new(fetcher, archive, sinks);
    if config.erase_on_deauth {
        let eraser = eraser_with(config, s3.clone(), dynamodb);
        pipeline = pipeline.erasing_on_deauth(Arc::new(eraser));
    }
    if let Some(buckets) = config.source_buckets.clone() {
        pipeline = pipeline.reading_source_buckets(buckets, Arc::new(S3SourceBucket::new(s3)));
    }
    tracing::info!(
        memory_budget_bytes = budget_bytes,
        largest_record_holds = pipeline.largest_record_holds(max_payload_bytes),
        "memory budget"
    );
    Ok(pipeline)
}

/// What erases a user's data from the stores the configuration names.
pub fn eraser(config: &Config, aws: &SdkConfig) -> Eraser {
    eraser_with(
        config,
        s3_client(aws, config.s3_force_path_style),
        dynamodb_client(aws),
    )
}

/// The same, on clients already built (the handlers' own).
fn eraser_with(
    config: &Config,
    s3: aws_sdk_s3::Client,
    dynamodb: aws_sdk_dynamodb::Client,
) -> Eraser {
    Eraser {
        archive: config.s3.as_ref().map(|settings| ArchiveToErase {
            client: s3,
            bucket: settings.bucket.clone(),
            prefix: settings.prefix.clone(),
        }),
        table: config.dynamodb_table.as_ref().map(|table| TableToErase {
            client: dynamodb,
            table: table.clone(),
        }),
    }
}

/// The archive's client; path-style addressing for local emulators.
pub fn s3_client(aws: &SdkConfig, force_path_style: bool) -> aws_sdk_s3::Client {
    let s3_config = aws_sdk_s3::config::Builder::from(aws)
        .force_path_style(force_path_style)
        .build();
    aws_sdk_s3::Client::from_conf(s3_config)
}

/// The table's client. Throttling and 5xx are retried by the SDK with
/// backoff; a batch's cutoff bounds the total.
pub fn dynamodb_client(aws: &SdkConfig) -> aws_sdk_dynamodb::Client {
    let dynamodb_config = aws_sdk_dynamodb::config::Builder::from(aws)
        .retry_config(RetryConfig::standard().with_max_attempts(DYNAMODB_MAX_ATTEMPTS))
        .build();
    aws_sdk_dynamodb::Client::from_conf(dynamodb_config)
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
