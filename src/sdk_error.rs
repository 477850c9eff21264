//! One reading of every failed AWS SDK call, whichever client made it: was
//! the service slow or down (worth retrying), or did it refuse the request
//! (the request or the deployment is wrong)? Each store then decides what a
//! refusal means for a record; this module only says what happened.

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::outcome::Retry;

/// What went wrong with a call, as far as retrying it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The service asked for fewer requests (throttling, `SlowDown`, 429).
    Throttled,
    /// The service failed (5xx, its own request timeout), or the request
    /// never completed: a timeout, a connection that failed or broke, a
    /// response that could not be read. It may or may not have landed.
    Unavailable,
    /// The service refused the request (4xx): missing permission or
    /// resource, or a request it will never accept.
    Refused,
    /// The request could not even be built: a bug, not an outage.
    Unbuildable,
}

impl Fault {
    /// Whether the same call can succeed later without anyone changing
    /// anything.
    pub fn retry(self) -> Retry {
        match self {
            Fault::Throttled | Fault::Unavailable => Retry::Transient,
            Fault::Refused | Fault::Unbuildable => Retry::Permanent,
        }
    }
}

/// Error codes that mean "slow down", across AWS services (the SDK's own
/// retry classifier reads the same list).
const THROTTLING_CODES: [&str; 14] = [
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// Codes a service gives for its own failure to finish in time, with a 4xx.
const TRANSIENT_CODES: [&str; 2] = ["RequestTimeout", "RequestTimeoutException"];

/// What happened to a call that failed.
pub fn classify<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> Fault {
    match error {
        SdkError::ConstructionFailure(_) => Fault::Unbuildable,
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Fault::Unavailable
        }
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            let status = service.raw().status().as_u16();
            if THROTTLING_CODES.contains(&code) || status == 429 {
                Fault::Throttled
            } else if TRANSIENT_CODES.contains(&code) || (500..600).contains(&status) {
                Fault::Unavailable
            } else {
                Fault::Refused
            }
        }
        // `SdkError` is non-exhaustive: a kind added later is not known to
        // be the request's fault.
        _ => Fault::Unavailable,
    }
}

/// What happened, and the SDK's account of it (code, message, request id):
/// never the request itself.
pub fn describe<E>(error: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let fault = match classify(error) {
        Fault::Throttled => "throttled",
        Fault::Unavailable => "unavailable",
        Fault::Refused => "refused",
        Fault::Unbuildable => "not built",
    };
    format!("{fault}: {}", DisplayErrorContext(error))
}

#[cfg(test)]
mod tests {
    //! Each client's failures as its service sends them (on the wire, through
    //! aws-smithy-mocks), and the two that never reach a service (a refused
    //! connection, a server that never answers), through real sockets.

    use std::time::Duration;

    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::retry::RetryConfig;
    use aws_smithy_types::timeout::TimeoutConfig;

    use super::*;

    fn answer(status: u16, body: &'static str) -> impl Fn() -> HttpResponse + Send + Sync {
        move || {
            let mut response = Response::new(
                StatusCode::try_from(status).expect("a status"),
                SdkBody::from(body),
            );
            let content_type = if body.starts_with('<') {
                "application/xml"
            } else {
                "application/x-amz-json-1.0"
            };
            response.headers_mut().insert("content-type", content_type);
            response
        }
    }

    const S3_SLOW_DOWN: &str =
        "<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>";
    const S3_INTERNAL: &str = "<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>";
    const S3_DENIED: &str =
        "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
    const S3_TIMEOUT: &str = "<Error><Code>RequestTimeout</Code><Message>Your socket connection was not read from.</Message></Error>";

    async fn s3_put(status: u16, body: &'static str) -> Fault {
        let rule = mock!(aws_sdk_s3::Client::put_object).then_http_response(answer(status, body));
        let client = mock_client!(aws_sdk_s3, RuleMode::Sequential, [&rule], |c| c
            .retry_config(RetryConfig::disabled()));
        let error = client
            .put_object()
            .bucket("archive")
            .key("k")
            .send()
            .await
            .expect_err("the mock fails");
        classify(&error)
    }

    #[tokio::test]
    async fn s3_failures() {
        assert_eq!(s3_put(503, S3_SLOW_DOWN).await, Fault::Throttled);
        assert_eq!(s3_put(500, S3_INTERNAL).await, Fault::Unavailable);
        assert_eq!(s3_put(400, S3_TIMEOUT).await, Fault::Unavailable);
        assert_eq!(s3_put(403, S3_DENIED).await, Fault::Refused);
    }

    async fn dynamodb_put(status: u16, body: &'static str) -> Fault {
        let rule =
            mock!(aws_sdk_dynamodb::Client::put_item).then_http_response(answer(status, body));
        let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&rule], |c| c
            .retry_config(RetryConfig::disabled()));
        let error = client
            .put_item()
            .table_name("records")
            .send()
            .await
            .expect_err("the mock fails");
        classify(&error)
    }

    #[tokio::test]
    async fn dynamodb_failures() {
        for throttled in [
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"slow down"}"#,
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"over"}"#,
        ] {
            assert_eq!(
                dynamodb_put(400, throttled).await,
                Fault::Throttled,
                "{throttled}"
            );
        }
        assert_eq!(
            dynamodb_put(500, r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"oops"}"#).await,
            Fault::Unavailable
        );
        for refused in [
            r#"{"__type":"com.amazon.coral.service#AccessDeniedException","message":"no"}"#,
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ResourceNotFoundException","message":"no table"}"#,
            r#"{"__type":"com.amazon.coral.validate#ValidationException","message":"Item size has exceeded the maximum allowed size"}"#,
        ] {
            assert_eq!(
                dynamodb_put(400, refused).await,
                Fault::Refused,
                "{refused}"
            );
        }
    }

    async fn sqs_send(status: u16, body: &'static str) -> Fault {
        let rule =
            mock!(aws_sdk_sqs::Client::send_message).then_http_response(answer(status, body));
        let client = mock_client!(aws_sdk_sqs, RuleMode::Sequential, [&rule], |c| c
            .retry_config(RetryConfig::disabled()));
        let error = client
            .send_message()
            .queue_url("https://sqs.eu-west-1.amazonaws.com/123456789012/dlq")
            .message_body("{}")
            .send()
            .await
            .expect_err("the mock fails");
        classify(&error)
    }

    #[tokio::test]
    async fn sqs_failures() {
        assert_eq!(
            sqs_send(
                400,
                r#"{"__type":"com.amazonaws.sqs#ThrottlingException","message":"Rate exceeded"}"#
            )
            .await,
            Fault::Throttled
        );
        assert_eq!(
            sqs_send(
                500,
                r#"{"__type":"com.amazonaws.sqs#InternalError","message":"oops"}"#
            )
            .await,
            Fault::Unavailable
        );
        for refused in [
            r#"{"__type":"com.amazon.coral.service#AccessDeniedException","message":"no"}"#,
            r#"{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"gone"}"#,
        ] {
            assert_eq!(sqs_send(400, refused).await, Fault::Refused, "{refused}");
        }
    }

    /// A port nothing listens on, and one that accepts and never answers.
    async fn unreachable_endpoints() -> (String, String, tokio::task::JoinHandle<()>) {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let refused = format!("http://{}", closed.local_addr().expect("bound"));
        drop(closed);
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let hanging = format!("http://{}", silent.local_addr().expect("bound"));
        let keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        (refused, hanging, keep)
    }

    fn quick_timeouts() -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(1))
            .operation_attempt_timeout(Duration::from_millis(300))
            .build()
    }

    async fn s3_at(endpoint: &str) -> Fault {
        let config = aws_sdk_s3::Config::builder()
            .with_test_defaults_v2()
            .endpoint_url(endpoint)
            .force_path_style(true)
            .retry_config(RetryConfig::disabled())
            .timeout_config(quick_timeouts());
        let client = aws_sdk_s3::Client::from_conf(config.build());
        let call = client.put_object().bucket("archive").key("k").send();
        classify(&call.await.expect_err("nothing answers"))
    }

    async fn dynamodb_at(endpoint: &str) -> Fault {
        let config = aws_sdk_dynamodb::Config::builder()
            .with_test_defaults_v2()
            .endpoint_url(endpoint)
            .retry_config(RetryConfig::disabled())
            .timeout_config(quick_timeouts());
        let client = aws_sdk_dynamodb::Client::from_conf(config.build());
        let call = client.put_item().table_name("records").send();
        classify(&call.await.expect_err("nothing answers"))
    }

    async fn sqs_at(
        endpoint: &str,
    ) -> SdkError<aws_sdk_sqs::operation::send_message::SendMessageError, HttpResponse> {
        let config = aws_sdk_sqs::Config::builder()
            .with_test_defaults_v2()
            .endpoint_url(endpoint)
            .retry_config(RetryConfig::disabled())
            .timeout_config(quick_timeouts());
        let client = aws_sdk_sqs::Client::from_conf(config.build());
        let call = client
            .send_message()
            .queue_url(format!("{endpoint}/123456789012/dlq"))
            .message_body("{}")
            .send();
        call.await.expect_err("nothing answers")
    }

    #[tokio::test]
    async fn calls_that_never_reach_a_service_are_unavailable_for_every_client() {
        let (refused, hanging, _server) = unreachable_endpoints().await;
        for endpoint in [&refused, &hanging] {
            assert_eq!(
                s3_at(endpoint).await,
                Fault::Unavailable,
                "S3 at {endpoint}"
            );
            assert_eq!(
                dynamodb_at(endpoint).await,
                Fault::Unavailable,
                "DynamoDB at {endpoint}"
            );
            assert_eq!(
                classify(&sqs_at(endpoint).await),
                Fault::Unavailable,
                "SQS at {endpoint}"
            );
        }
        let silence = sqs_at(&hanging).await;
        assert!(matches!(silence, SdkError::TimeoutError(_)), "{silence:?}");
        assert!(matches!(
            sqs_at(&refused).await,
            SdkError::DispatchFailure(_)
        ));
        let described = describe(&silence);
        assert!(described.starts_with("unavailable: "), "{described}");
    }

    #[test]
    fn only_slow_or_failing_services_are_retried() {
        assert_eq!(Fault::Throttled.retry(), Retry::Transient);
        assert_eq!(Fault::Unavailable.retry(), Retry::Transient);
        assert_eq!(Fault::Refused.retry(), Retry::Permanent);
        assert_eq!(Fault::Unbuildable.retry(), Retry::Permanent);
    }
}
