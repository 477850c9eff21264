//! What the handlers tell about themselves as they run: log lines, and with
//! `TERRA_TRACING=xray`, traces.
//!
//! Logs keep the form Lambda's Rust runtime gives them: JSON under Lambda's
//! JSON log format, at the level of `AWS_LAMBDA_LOG_LEVEL` (else `RUST_LOG`,
//! else INFO). Traces reuse the same `tracing` spans: each span of this crate
//! becomes an OpenTelemetry span with X-Ray ids, continuing the trace Lambda
//! hands each invocation (`Lambda-Runtime-Trace-Id`), and is sent as an X-Ray
//! subsegment to the daemon Lambda runs under active tracing
//! (`AWS_XRAY_DAEMON_ADDRESS`), the moment it ends. Sending as spans end,
//! rather than in batches, means nothing waits in the process when Lambda
//! freezes it, and a record cut off at the deadline still reports its span.
//!
//! Lambda's sampling decision stands: an invocation it did not sample sends
//! nothing. With tracing off, no OpenTelemetry layer is installed at all.

use std::net::SocketAddr;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_aws::trace::XrayIdGenerator;
use opentelemetry_aws::trace::xray_propagator::span_context_from_str;
use opentelemetry_aws::xray_exporter::daemon_client::XrayDaemonClient;
use opentelemetry_aws::xray_exporter::{SegmentTranslator, XrayExporter};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::Tracing;

/// Span fields X-Ray indexes as annotations, to search and filter traces by
/// (a record by its message id or offset, by Terra's reference, its type,
/// user, outcome or failure class; a fetch by its attempts and bytes). No
/// other field is sent.
pub const ANNOTATED_FIELDS: [&str; 12] = [
    "id",
    "payload_reference",
    "event_type",
    "user_id",
    "outcome",
    "class",
    "request_id",
    "trigger",
    "records",
    "attempts",
    "bytes",
    "step",
];

/// Only this crate's spans are traced: the runtime's own and the SDKs' are
/// left to the logs.
const TRACED_TARGET: &str = "terra_sink";

/// The process's log and trace pipeline, installed once at cold start.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "AWS_XRAY_DAEMON_ADDRESS: cannot open a UDP socket to the X-Ray daemon at {daemon}: {source}"
)]
pub struct TracingInitError {
    daemon: SocketAddr,
    source: std::io::Error,
}

impl Telemetry {
    /// Logs only, nothing installed: tests that run an app in process.
    pub fn off() -> Self {
        Self { traces: None }
    }

    /// Installs the global subscriber: the log lines, and the traces when
    /// `tracing` asks for them. A tracing setting that cannot be honoured
    /// leaves the logs installed and returns the error, so the caller can
    /// log it and stop.
    pub fn init(tracing: Tracing) -> Result<Self, TracingInitError> {
        let traces = match tracing {
            Tracing::Off => Ok(None),
            Tracing::Xray { daemon } => xray_tracer_provider(daemon).map(Some),
        };
        let trace_layer = traces
            .as_ref()
            .ok()
            .and_then(Option::as_ref)
            .map(|provider| {
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer(TRACED_TARGET))
                    .with_location(false)
                    .with_threads(false)
                    .with_level(false)
                    // Not wanted: the module as an attribute, busy and idle times
                    // (two clock reads at every poll of an instrumented future),
                    // and the OpenTelemetry context made current on entry (for
                    // OpenTelemetry's own instrumentation, which this process
                    // has none of).
                    .with_target(false)
                    .with_tracked_inactivity(false)
                    .with_context_activation(false)
                    // Decided once per callsite where it can be: every event
                    // and every other crate's span (hyper's, rustls's, the
                    // SDK's, at any level) is never looked at again.
                    .with_filter(
                        Targets::new()
                            .with_target(TRACED_TARGET, LevelFilter::INFO)
                            .and(filter_fn(|metadata| metadata.is_span())),
                    )
            });
        let json =
            std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
        let log_layer = tracing_subscriber::fmt::layer()
            .with_target(false)
            .without_time();
        let log_layer = if json {
            log_layer.json().boxed()
        } else {
            log_layer.boxed()
        };
        // Each layer filters for itself: a quieter log level leaves the
        // traces whole.
        Registry::default()
            .with(log_layer.with_filter(log_filter()))
            .with(trace_layer)
            .init();
        Ok(Self { traces: traces? })
    }

    /// Makes `span` (an invocation's) a child of Lambda's segment in the trace
    /// of `lambda_trace_header`, taking Lambda's sampling decision. Without
    /// tracing, or without a header, it does nothing.
    pub fn continue_trace(&self, span: &tracing::Span, lambda_trace_header: Option<&str>) {
        if self.traces.is_none() {
            return;
        }
        let Some(parent) = lambda_trace_header.and_then(span_context_from_str) else {
            return;
        };
        // Fails only when the span is disabled, which leaves nothing to trace.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
}

/// The log level: Lambda's own setting (`AWS_LAMBDA_LOG_LEVEL`, from the
/// function's logging configuration) when there is one, else `RUST_LOG`'s
/// directives, else INFO. Unlike the runtime's default subscriber, a
/// `RUST_LOG` left in the environment does not override Lambda's level.
fn log_filter() -> EnvFilter {
    let lambda_level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .ok()
        .and_then(|level| {
            match level.trim().to_ascii_lowercase().as_str() {
                // Lambda's FATAL is tracing's ERROR: it has nothing above.
                "fatal" => Some(LevelFilter::ERROR),
                other => other.parse::<LevelFilter>().ok(),
            }
        });
    match lambda_level {
        Some(level) => EnvFilter::builder()
            .with_default_directive(level.into())
            .parse_lossy(""),
        None => EnvFilter::builder()
            .with_default_directive(LevelFilter::INFO.into())
            .from_env_lossy(),
    }
}

fn xray_tracer_provider(daemon: SocketAddr) -> Result<SdkTracerProvider, TracingInitError> {
    let client =
        XrayDaemonClient::new(daemon).map_err(|source| TracingInitError { daemon, source })?;
    // Fields not annotated are not sent (the URL without its query, the
    // archive key): they are in the logs, and each costs CPU per span.
    let translator =
        SegmentTranslator::new().with_indexed_attrs(ANNOTATED_FIELDS.map(str::to_owned));
    // The function's name, as Lambda names its own segment.
    let service = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "terra-sink".into());
    Ok(SdkTracerProvider::builder()
        .with_resource(Resource::builder_empty().with_service_name(service).build())
        .with_id_generator(XrayIdGenerator::default())
        // Lambda samples; a span with no sampled parent is not sent.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
        .with_simple_exporter(XrayExporter::new(client).with_translator(translator))
        .build())
}
