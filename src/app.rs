//! Everything built once at cold start, and the Lambda handlers that use it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;
use tokio::time::Instant;

use crate::batch::{self, BatchLimits};
use crate::config::{Config, ConfigError};
use crate::fetch::{ClientBuildError, Fetcher};
use crate::pipeline::Pipeline;
use crate::sink::{Archive, DynamoDbSink, S3Sink, Sink};
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
}

impl App {
    /// Reads the configuration from the environment and builds every client.
    pub async fn from_env() -> Result<Self, InitError> {
        Self::from_config(Config::from_env()?).await
    }

    pub async fn from_config(config: Config) -> Result<Self, InitError> {
        let fetcher = Fetcher::new(config.url_policy, config.fetch)?;
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
            )));
        }
        Ok(Self {
            pipeline: Arc::new(Pipeline::new(fetcher, archive, sinks)),
            concurrency: config.concurrency,
        })
    }

    pub async fn handle_sqs(
        &self,
        event: LambdaEvent<SqsEvent>,
    ) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let items = sqs::decode(&event.payload);
        let limits = BatchLimits {
            concurrency: self.concurrency,
            cutoff: cutoff_before(event.context.deadline()),
        };
        let report = batch::run(Arc::clone(&self.pipeline), items, limits).await;
        Ok(sqs::response(&event.payload, &report.outcomes)?)
    }
}

/// The instant to stop working so the response still reaches Lambda in time.
fn cutoff_before(deadline: SystemTime) -> Instant {
    let remaining = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Instant::now() + remaining.saturating_sub(RESPONSE_RESERVE)
}
