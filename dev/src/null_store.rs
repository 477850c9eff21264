//! A store endpoint that answers S3 `PutObject` (and the multipart upload
//! calls that stream a large payload) and DynamoDB `PutItem` as
//! AWS does and keeps nothing but counts: for benchmarks, where moto (one
//! Python process) would be the bottleneck and the handler's own cost is what
//! is measured. Correctness against real wire behaviour is the integration
//! tests' job, against moto.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use futures::StreamExt;

/// What the endpoint has accepted so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    pub objects: usize,
    /// The erasure index's markers, put before each archived object.
    pub index_markers: usize,
    /// Distinct object keys: equal to `objects` unless a key was written twice.
    pub distinct_keys: usize,
    pub object_bytes: u64,
    pub items: usize,
    pub item_bytes: u64,
}

#[derive(Default)]
struct Tally {
    received: Received,
    keys: HashSet<String>,
}

pub struct NullStore {
    pub addr: SocketAddr,
    tally: Arc<Mutex<Tally>>,
    task: tokio::task::JoinHandle<()>,
}

impl NullStore {
    pub async fn start() -> NullStore {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let app = Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&tally));
        let (addr, task) = crate::serve_on_loopback(app, "null store").await;
        NullStore { addr, tally, task }
    }

    /// For `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Received {
        self.tally.lock().expect("not poisoned").received.clone()
    }
}

impl Drop for NullStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const PUT_ITEM_TARGET: &str = "DynamoDB_20120810.PutItem";

async fn answer(State(tally): State<Arc<Mutex<Tally>>>, request: Request<Body>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Read the body as it streams in, as a real endpoint does, without
    // holding it.
    let mut length = 0u64;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) => length += chunk.len() as u64,
            Err(_) => return plain(StatusCode::BAD_REQUEST, "", "body cut short"),
        }
    }
    let mut tally = tally.lock().expect("not poisoned");
    let query = parts.uri.query().unwrap_or_default();
    let has = |name: &str| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(name))
    };
    if parts.method == Method::POST && has("uploads") {
        return plain(
            StatusCode::OK,
            "application/xml",
            "<InitiateMultipartUploadResult><UploadId>null-upload</UploadId></InitiateMultipartUploadResult>",
        );
    }
    if parts.method == Method::PUT && has("partNumber") {
        tally.received.object_bytes += length;
        let mut response = plain(StatusCode::OK, "", "");
        response
            .headers_mut()
            .insert(header::ETAG, HeaderValue::from_static("\"null-part\""));
        return response;
    }
    if parts.method == Method::POST && has("uploadId") {
        tally.received.objects += 1;
        tally.keys.insert(parts.uri.path().to_owned());
        tally.received.distinct_keys = tally.keys.len();
        return plain(
            StatusCode::OK,
            "application/xml",
            "<CompleteMultipartUploadResult><ETag>\"null-1\"</ETag></CompleteMultipartUploadResult>",
        );
    }
    if parts.method == Method::DELETE && has("uploadId") {
        return plain(StatusCode::NO_CONTENT, "", "");
    }
    if parts.method == Method::PUT && parts.headers.contains_key("x-amz-copy-source") {
        // CopyObject in place, to set metadata found at a payload's end.
        return plain(
            StatusCode::OK,
            "application/xml",
            "<CopyObjectResult><ETag>\"null-copy\"</ETag></CopyObjectResult>",
        );
    }
    if parts.method == Method::PUT
        && parts
            .uri
            .path()
            .contains(&format!("/{}", crate::moto::ERASURE_INDEX_FOLDER))
    {
        tally.received.index_markers += 1;
        return plain(StatusCode::OK, "", "");
    }
    if parts.method == Method::PUT {
        // Path-style addressing: /{bucket}/{key}.
        tally.received.objects += 1;
        tally.received.object_bytes += length;
        tally.keys.insert(parts.uri.path().to_owned());
        tally.received.distinct_keys = tally.keys.len();
        let mut response = plain(StatusCode::OK, "", "");
        response
            .headers_mut()
            .insert(header::ETAG, HeaderValue::from_static("\"null\""));
        return response;
    }
    if parts.method == Method::POST && target.as_deref() == Some(PUT_ITEM_TARGET) {
        tally.received.items += 1;
        tally.received.item_bytes += length;
        return plain(StatusCode::OK, "application/x-amz-json-1.0", "{}");
    }
    plain(
        StatusCode::NOT_IMPLEMENTED,
        "application/x-amz-json-1.0",
        r#"{"__type":"com.amazon.coral.service#UnknownOperationException"}"#,
    )
}

fn plain(status: StatusCode, content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    if !content_type.is_empty() {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}
