//! A proxy in front of moto that injects the failures S3 and DynamoDB really
//! produce: 500, 503 SlowDown, ThrottlingException, and a connection dropped
//! after the request reached the store (the write may or may not have
//! happened, and the client cannot know).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};

/// One injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 500 InternalError / InternalServerError.
    Internal,
    /// 503 SlowDown (S3) or 400 ThrottlingException (DynamoDB).
    Throttle,
    /// The request is forwarded, then the connection is closed unanswered.
    DropAfterForward,
}

/// Every `every`-th request gets the next fault of `faults`, in turn.
#[derive(Debug, Clone)]
pub struct FaultSchedule {
    pub every: usize,
    pub faults: Vec<Fault>,
}

impl FaultSchedule {
    /// No faults by turn (outages only).
    pub fn none() -> FaultSchedule {
        FaultSchedule {
            every: 0,
            faults: Vec::new(),
        }
    }
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    schedule: FaultSchedule,
    /// Spans of time in which every S3 request gets 500 InternalError.
    s3_outages: std::sync::Mutex<Vec<(tokio::time::Instant, tokio::time::Instant)>>,
    requests: AtomicUsize,
    injected: AtomicUsize,
    /// The path and query of every S3 listing (objects or versions).
    s3_listings: std::sync::Mutex<Vec<String>>,
}

pub struct FaultProxy {
    pub endpoint: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: &str, schedule: FaultSchedule) -> FaultProxy {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("proxy client"),
            schedule,
            s3_outages: std::sync::Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            injected: AtomicUsize::new(0),
            s3_listings: std::sync::Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let (addr, task) = crate::serve_on_loopback(app, "fault proxy").await;
        FaultProxy {
            endpoint: format!("http://{addr}"),
            shared,
            task,
        }
    }

    /// S3 is down (500 InternalError to every request; DynamoDB and SQS
    /// unaffected) from `from` for `lasting`.
    pub fn s3_outage(&self, from: tokio::time::Instant, lasting: Duration) {
        self.shared
            .s3_outages
            .lock()
            .expect("not poisoned")
            .push((from, from + lasting));
    }

    /// Faults injected so far.
    pub fn injected(&self) -> usize {
        self.shared.injected.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every S3 listing forwarded so far (ListObjectsV2, ListObjectVersions):
    /// its path and query, as sent.
    pub fn s3_listings(&self) -> Vec<String> {
        self.shared
            .s3_listings
            .lock()
            .expect("not poisoned")
            .clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request<Body>) -> Response<Body> {
    let n = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let query = request.uri().query().unwrap_or_default();
    let is_listing = query.contains("list-type=2")
        || query
            .split('&')
            .any(|p| p == "versions" || p == "versions=");
    if request.method() == axum::http::Method::GET && is_listing {
        shared
            .s3_listings
            .lock()
            .expect("not poisoned")
            .push(request.uri().to_string());
    }
    let schedule = &shared.schedule;
    let fault = (schedule.every > 0 && n % schedule.every == 0 && !schedule.faults.is_empty())
        .then(|| schedule.faults[(n / schedule.every - 1) % schedule.faults.len()]);
    let target = request.headers().get("x-amz-target");
    let dynamodb = target.is_some_and(|t| t.as_bytes().starts_with(b"DynamoDB"));
    let now = tokio::time::Instant::now();
    let s3_down = target.is_none()
        && shared
            .s3_outages
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|(from, to)| (*from..*to).contains(&now));
    if s3_down {
        shared.injected.fetch_add(1, Ordering::SeqCst);
        return error_response(false, StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
    }
    match fault {
        Some(Fault::Internal) => {
            shared.injected.fetch_add(1, Ordering::SeqCst);
            return error_response(dynamodb, StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
        }
        Some(Fault::Throttle) => {
            shared.injected.fetch_add(1, Ordering::SeqCst);
            return if dynamodb {
                error_response(true, StatusCode::BAD_REQUEST, "ThrottlingException")
            } else {
                error_response(false, StatusCode::SERVICE_UNAVAILABLE, "SlowDown")
            };
        }
        Some(Fault::DropAfterForward) | None => {}
    }
    let upstream = send_upstream(&shared, request).await;
    if fault == Some(Fault::DropAfterForward) {
        shared.injected.fetch_add(1, Ordering::SeqCst);
        return dropped_connection();
    }
    upstream
}

async fn send_upstream(shared: &Shared, request: Request<Body>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return dropped_connection();
    };
    let mut upstream = shared
        .client
        .request(parts.method, format!("{}{path}", shared.upstream))
        .timeout(Duration::from_secs(30))
        .body(body);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) {
            upstream = upstream.header(name, value);
        }
    }
    let Ok(response) = upstream.send().await else {
        return error_response(false, StatusCode::BAD_GATEWAY, "BadGateway");
    };
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap_or_default();
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = status;
    for (name, value) in &headers {
        if !is_hop_by_hop(name) {
            out.headers_mut().insert(name, value.clone());
        }
    }
    out
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::HOST
        || name == header::CONTENT_LENGTH
        || name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
}

fn error_response(dynamodb: bool, status: StatusCode, code: &str) -> Response<Body> {
    let (body, content_type) = if dynamodb {
        let kind = if code == "InternalError" {
            "InternalServerError"
        } else {
            code
        };
        (
            format!(
                r#"{{"__type":"com.amazonaws.dynamodb.v20120810#{kind}","message":"injected {kind}"}}"#
            ),
            "application/x-amz-json-1.0",
        )
    } else {
        (
            format!("<Error><Code>{code}</Code><Message>injected {code}</Message></Error>"),
            "application/xml",
        )
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A response that promises a body and ends before it: hyper closes the
/// connection without a complete answer.
fn dropped_connection() -> Response<Body> {
    let mut response = Response::new(Body::from_stream(futures::stream::empty::<
        Result<Vec<u8>, std::io::Error>,
    >()));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("1024"));
    response
}
