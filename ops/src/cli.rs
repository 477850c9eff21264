//! The command line: arguments, the progress bar on a terminal, and the
//! summary on stdout. What each command does is in its module.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use terra_sink::app::{dynamodb_client, eraser, pipeline, s3_client};
use terra_sink::config::Config;
use terra_sink::sink::{DynamoDbSink, S3Archive, Sink};
use time::Date;
use time::macros::format_description;

use crate::replay::{
    ArchiveReplay, ArchiveSelection, DeadLetterReplay, ErasureIndexBackfill, ReplayRun, StateFile,
};
use crate::smoke::{self, SmokeError, StackOutputs};

#[derive(Parser)]
#[command(
    name = "terra-sink",
    about = "terra-sink's operator commands, run from a workstation, not deployed. \
             replay and erase read the handlers' variables (TERRA_S3_BUCKET, \
             TERRA_S3_PREFIX, TERRA_DYNAMODB_TABLE, ...); smoke reads a deployed stack. \
             All use the usual AWS credentials."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replays what terra-sink archived.
    #[command(subcommand)]
    Replay(ReplayCommand),
    /// Checks a deployed stack end to end: a small payload put in the
    /// archive bucket under smoke/, a pointer to it sent to Terra's queue,
    /// the payload archived (and its item written) by the function. Removes
    /// what it made. Exit status 0: the stack works.
    Smoke(SmokeArgs),
    /// Erases every archived object (every version of it) and every table
    /// item of the given Terra users, found through the erasure index the
    /// archive keeps, without listing the bucket. Safe to run twice; a run
    /// stopped part-way is finished by the next. Reads TERRA_S3_BUCKET,
    /// TERRA_S3_PREFIX and TERRA_DYNAMODB_TABLE, as replay does.
    Erase(EraseArgs),
}

#[derive(Args)]
struct EraseArgs {
    /// A Terra user_id; repeat for each (a user_reauth gives one person two).
    #[arg(long = "user", required = true)]
    users: Vec<String>,
}

#[derive(Args)]
struct SmokeArgs {
    /// The stack's name (sam deploy's stack_name).
    #[arg(long)]
    stack: String,
    /// How long to wait for the function, in seconds. Default: the
    /// function's timeout and 30 s more, so that a failed attempt has
    /// reached its log, whose reason smoke then shows.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: Option<u64>,
}

#[derive(Subcommand)]
enum ReplayCommand {
    /// Projects archived payloads into the DynamoDB table again. Never
    /// overwrites a newer item; safe to run twice; resumes where it stopped.
    Archive(ArchiveArgs),
    /// Runs each message of Terra's dead-letter queue through the handlers'
    /// pipeline once more: those whose payload the archive holds are
    /// completed from it and deleted; the rest stay, listed.
    DeadLetters(DeadLetterArgs),
}

#[derive(Args)]
struct DeadLetterArgs {
    /// The dead-letter queue's URL (the stack output DeadLetterQueueUrl).
    #[arg(long)]
    queue: String,
    /// The deployment writes the archive alone, no table. A message is
    /// deleted once every store the deployment writes has it, so without
    /// TERRA_DYNAMODB_TABLE this must be said: an unset variable cannot be
    /// told from a forgotten one.
    #[arg(long)]
    archive_only: bool,
}

#[derive(Args)]
struct ArchiveArgs {
    /// First UTC send date (YYYY-MM-DD), inclusive.
    #[arg(long, value_parser = parse_date)]
    from: Date,
    /// Last UTC send date (YYYY-MM-DD), inclusive.
    #[arg(long, value_parser = parse_date)]
    to: Date,
    /// Only payloads of this type (activity, sleep, daily, ...).
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only payloads of this Terra user_id.
    #[arg(long)]
    user: Option<String>,
    /// Read and check every selected payload, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Write the erasure index (one marker per payload naming a user)
    /// instead of the table: once, for objects archived before 0.3.0, so
    /// that `erase` finds them. Needs no TERRA_DYNAMODB_TABLE.
    #[arg(long)]
    erasure_index: bool,
    /// Objects replayed at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Where progress is kept, to resume an interrupted run; removed when
    /// the run completes.
    #[arg(long, default_value = "replay-archive.state.json")]
    state: PathBuf,
}

fn parse_date(text: &str) -> Result<Date, String> {
    Date::parse(text, format_description!("[year]-[month]-[day]"))
        .map_err(|e| format!("{text:?} is not a date (YYYY-MM-DD): {e}"))
}

/// Runs the command `args` (the program's name first) names.
pub async fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let (name, outcome) = match Cli::parse_from(args).command {
        Command::Replay(ReplayCommand::Archive(args)) => {
            ("replay archive", replay_archive(args).await)
        }
        Command::Replay(ReplayCommand::DeadLetters(args)) => {
            ("replay dead-letters", replay_dead_letters(args).await)
        }
        Command::Smoke(args) => ("smoke", smoke_test(args).await),
        Command::Erase(args) => ("erase", erase(args).await),
    };
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("terra-sink {name}: {message}");
            ExitCode::from(2)
        }
    }
}

async fn replay_archive(args: ArchiveArgs) -> Result<ExitCode, String> {
    if args.from > args.to {
        return Err(format!("--from {} is after --to {}", args.from, args.to));
    }
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let settings = config
        .s3
        .ok_or("TERRA_S3_BUCKET: not set; replay reads the archive in this bucket")?;
    let table = match (args.erasure_index, config.dynamodb_table) {
        (true, _) => None,
        (false, Some(table)) => Some(table),
        (false, None) => {
            return Err(
                "TERRA_DYNAMODB_TABLE: not set; replay archive writes this table \
                 (or the erasure index, with --erasure-index)"
                    .into(),
            );
        }
    };
    let run = ReplayRun {
        bucket: settings.bucket.clone(),
        prefix: settings.prefix.as_str().to_owned(),
        table: table.clone().unwrap_or_default(),
        erasure_index: args.erasure_index,
        from: args.from.to_string(),
        to: args.to.to_string(),
        event_type: args.event_type.clone(),
        user_id: args.user.clone(),
        dry_run: args.dry_run,
    };
    let mut state = StateFile::open(&args.state, run).map_err(|e| e.to_string())?;

    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let archive = S3Archive::new(s3_client(&aws, config.s3_force_path_style), settings);
    let sink: Arc<dyn Sink> = match table {
        // Replayed items expire as the handlers' would: from when Terra sent them.
        Some(table) => Arc::new(
            DynamoDbSink::new(dynamodb_client(&aws), table, config.dynamodb_max_items)
                .expiring_after(config.dynamodb_retention_days),
        ),
        None => Arc::new(ErasureIndexBackfill::new(archive.clone())),
    };
    let replay = ArchiveReplay::new(
        archive,
        sink,
        usize::from(args.concurrency),
        config.fetch.max_payload_bytes,
        args.dry_run,
    );
    let selection = ArchiveSelection {
        from: args.from,
        to: args.to,
        event_type: args.event_type,
        user_id: args.user,
    };

    // Drawn only when stderr is a terminal.
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} objects {msg} ({eta})")
            .map_err(|e| e.to_string())?,
    );
    let summary = replay
        .run(&selection, &mut state, |summary, total| {
            bar.set_length(total);
            bar.set_position(summary.objects_done());
            bar.set_message(format!(
                "{} items written, {} stale, {} failed",
                summary.items_written,
                summary.items_stale,
                summary.failed_keys.len()
            ));
        })
        .await
        .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    report(&summary, summary.failed_keys.is_empty())
}

async fn replay_dead_letters(args: DeadLetterArgs) -> Result<ExitCode, String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    if config.s3.is_none() {
        return Err(
            "TERRA_S3_BUCKET: not set; replay dead-letters completes messages from the archive"
                .into(),
        );
    }
    match (config.dynamodb_table.is_some(), args.archive_only) {
        (false, false) => {
            return Err(
                "TERRA_DYNAMODB_TABLE: not set; set it to the deployment's table, or \
                        pass --archive-only if the deployment writes no table (a message is \
                        deleted once every store the deployment writes has it)"
                    .into(),
            );
        }
        (true, true) => {
            return Err(
                "TERRA_DYNAMODB_TABLE: set, yet --archive-only says there is no table".into(),
            );
        }
        _ => {}
    }
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let pipeline = pipeline(&config, &aws).map_err(|e| e.to_string())?;
    let replay = DeadLetterReplay::new(aws_sdk_sqs::Client::new(&aws), args.queue, pipeline);
    let summary = replay.run().await.map_err(|e| e.to_string())?;
    report(&summary, summary.left.is_empty())
}

async fn erase(args: EraseArgs) -> Result<ExitCode, String> {
    if let Some(empty) = args.users.iter().find(|u| u.trim().is_empty()) {
        return Err(format!("--user {empty:?}: a Terra user_id, not empty"));
    }
    let config = Config::from_env().map_err(|e| e.to_string())?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let erased = eraser(&config, &aws).erase(&args.users).await;
    report(&erased, erased.failures.is_empty())
}

async fn smoke_test(args: SmokeArgs) -> Result<ExitCode, String> {
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let outputs = stack_outputs(&aws, &args.stack).await?;
    let (environment, function_timeout) =
        function_configuration(&aws, &outputs.function_name).await?;
    let timeout = args.timeout.map_or(
        function_timeout + Duration::from_secs(30),
        Duration::from_secs,
    );
    let deployment = smoke::deployment(outputs, &environment).map_err(|e| e.to_string())?;
    // The operator's own endpoint settings, not the function's.
    let path_style = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
        .iter()
        .any(|var| std::env::var_os(var).is_some());
    let clients = smoke::Clients {
        s3: s3_client(&aws, path_style),
        sqs: aws_sdk_sqs::Client::new(&aws),
        dynamodb: dynamodb_client(&aws),
        logs: aws_sdk_cloudwatchlogs::Client::new(&aws),
    };
    let run_id = format!("terra-sink-smoke-{}", terra_sink::wall_clock::now_ms());
    match smoke::run(&clients, &deployment, &run_id, timeout).await {
        Ok(seen) => report(&seen, true),
        Err(SmokeError::Setup(message)) => Err(message),
        Err(SmokeError::Failed(message)) => {
            eprintln!(
                "terra-sink smoke: the stack {} does not work: {message}",
                args.stack
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The outputs smoke needs, from CloudFormation.
async fn stack_outputs(aws: &aws_config::SdkConfig, stack: &str) -> Result<StackOutputs, String> {
    let described = aws_sdk_cloudformation::Client::new(aws)
        .describe_stacks()
        .stack_name(stack)
        .send()
        .await
        .map_err(|e| {
            format!(
                "the stack {stack}: {}",
                aws_sdk_cloudformation::error::DisplayErrorContext(e)
            )
        })?;
    let outputs: std::collections::HashMap<&str, &str> = described
        .stacks()
        .first()
        .map(|s| s.outputs())
        .unwrap_or_default()
        .iter()
        .filter_map(|o| Some((o.output_key()?, o.output_value()?)))
        .collect();
    let required = |name: &str| {
        outputs.get(name).map(|v| (*v).to_owned()).ok_or_else(|| {
            format!(
                "the stack {stack} has no output {name}: smoke checks the SQS path of a stack \
                 template.yaml made"
            )
        })
    };
    Ok(StackOutputs {
        queue_url: required("QueueUrl")?,
        function_name: required("SqsHandlerFunctionName")?,
        log_group: outputs
            .get("SqsHandlerLogGroupName")
            .map(|v| (*v).to_owned()),
    })
}

/// The function's environment variables and timeout, as Lambda runs it.
async fn function_configuration(
    aws: &aws_config::SdkConfig,
    function: &str,
) -> Result<(std::collections::HashMap<String, String>, Duration), String> {
    let configuration = aws_sdk_lambda::Client::new(aws)
        .get_function_configuration()
        .function_name(function)
        .send()
        .await
        .map_err(|e| {
            format!(
                "the function {function}: {}",
                aws_sdk_lambda::error::DisplayErrorContext(e)
            )
        })?;
    let environment = configuration
        .environment()
        .and_then(|e| e.variables())
        .cloned()
        .unwrap_or_default();
    let timeout = configuration
        .timeout()
        .and_then(|secs| u64::try_from(secs).ok())
        .unwrap_or(3);
    Ok((environment, Duration::from_secs(timeout)))
}

/// The summary on stdout, for people and scripts; failure (1) unless
/// everything was done.
fn report(summary: &impl serde::Serialize, all_done: bool) -> Result<ExitCode, String> {
    println!(
        "{}",
        serde_json::to_string_pretty(summary).map_err(|e| e.to_string())?
    );
    Ok(if all_done {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
