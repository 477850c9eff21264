//! A real HTTP server standing in for Terra's payload bucket, with scripted
//! behaviour per path and a count of the requests each path received.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use futures::StreamExt;

/// The query string of every URL this server gives out, like an S3
/// pre-signed URL's: its credentials.
pub const PRESIGNED_QUERY: &str = "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIASECRETKEYID&X-Amz-Signature=5ec7e7516a7c0ffee";

/// The parts of [`PRESIGNED_QUERY`] no output may show.
pub const SECRETS: [&str; 3] = ["X-Amz-Signature", "5ec7e7516a7c0ffee", "AKIASECRETKEYID"];

/// Fails when `text` (a log, an error, a response) shows any part of a
/// pre-signed URL's credentials.
pub fn assert_no_secrets(text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "leaks {secret}:\n{text}");
    }
}

#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 with the body as is.
    Ok(Vec<u8>),
    /// 200 with the body gzip-compressed and `Content-Encoding: gzip`.
    Gzip(Vec<u8>),
    /// 200 with bytes already gzip-compressed and `Content-Encoding: gzip`
    /// (for large bodies: compressing per request would be the slow part).
    Gzipped(Vec<u8>),
    /// 200 with a chunked body (no Content-Length).
    Chunked(Vec<u8>),
    /// `failures` answers of `status` (with an optional Retry-After), then 200.
    FailThenOk {
        failures: usize,
        status: u16,
        retry_after: Option<u64>,
        body: Vec<u8>,
    },
    /// 503 until `until`, then 200: a host that recovers.
    UnavailableUntil { until: Instant, body: Vec<u8> },
    /// Always `status`, with a body like S3's.
    Status(u16),
    /// Waits, then 200. The body is shared, not copied, between requests.
    Delay(Duration, Bytes),
    /// A redirect to `location`.
    Redirect(String),
    /// 200 whose body never ends: one byte every `interval`.
    Trickle(Duration),
    /// 200 whose body starts with `head` at once, then never ends: one space
    /// every `interval`.
    TrickleAfter { head: Vec<u8>, interval: Duration },
    /// 200 declaring `Content-Length: declared`, then sending `body` and
    /// closing the connection early (a short body, or a terabyte claim).
    DeclaredLength { declared: u64, body: Vec<u8> },
    /// 200 with `body`'s first half, then the connection is cut.
    ResetMidBody(Vec<u8>),
    /// The n-th request gets the n-th behaviour; once they run out, the last
    /// one again. (Not nested.)
    Sequence(Vec<Behaviour>),
}

#[derive(Default)]
struct Routes {
    behaviours: HashMap<String, Behaviour>,
    /// When a path's pre-signed URL stops working: S3 then answers 403.
    expiries: HashMap<String, Instant>,
    /// Spans of time in which the whole host answers 500.
    outages: Vec<(Instant, Instant)>,
    hits: HashMap<String, usize>,
    queries: Vec<String>,
}

pub struct PayloadServer {
    pub addr: SocketAddr,
    routes: Arc<Mutex<Routes>>,
    task: tokio::task::JoinHandle<()>,
}

impl PayloadServer {
    pub async fn start() -> PayloadServer {
        let routes = Arc::new(Mutex::new(Routes::default()));
        let app = Router::new()
            .fallback(serve)
            .with_state(Arc::clone(&routes));
        let (addr, task) = crate::serve_on_loopback(app, "payload server").await;
        PayloadServer { addr, routes, task }
    }

    /// Registers `path` and returns a pre-signed-looking URL for it.
    pub fn route(&self, path: &str, behaviour: Behaviour) -> String {
        self.routes
            .lock()
            .expect("not poisoned")
            .behaviours
            .insert(path.to_owned(), behaviour);
        format!("http://{}{path}{PRESIGNED_QUERY}", self.addr)
    }

    /// As [`PayloadServer::route`], for a URL that, like S3's, refuses
    /// requests arriving after `expires_at` with 403; a response already
    /// under way finishes.
    pub fn route_expiring(&self, path: &str, behaviour: Behaviour, expires_at: Instant) -> String {
        self.routes
            .lock()
            .expect("not poisoned")
            .expiries
            .insert(path.to_owned(), expires_at);
        self.route(path, behaviour)
    }

    /// The whole host answers 500 from `from` for `lasting`.
    pub fn outage(&self, from: Instant, lasting: Duration) {
        self.routes
            .lock()
            .expect("not poisoned")
            .outages
            .push((from, from + lasting));
    }

    pub fn hits(&self, path: &str) -> usize {
        self.routes
            .lock()
            .expect("not poisoned")
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for PayloadServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(body).expect("in-memory write");
    encoder.finish().expect("in-memory write")
}

async fn serve(State(routes): State<Arc<Mutex<Routes>>>, request: Request<Body>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let behaviour = {
        let mut routes = routes.lock().expect("not poisoned");
        let hit = routes.hits.entry(path.clone()).or_default();
        *hit += 1;
        let hit = *hit;
        routes
            .queries
            .push(request.uri().query().unwrap_or_default().to_owned());
        let now = Instant::now();
        if routes.expiries.get(&path).is_some_and(|at| now >= *at) {
            return status(403);
        }
        if routes
            .outages
            .iter()
            .any(|(from, to)| (*from..*to).contains(&now))
        {
            return status(500);
        }
        routes.behaviours.get(&path).cloned().map(|b| (b, hit))
    };
    let Some((behaviour, hit)) = behaviour else {
        return status(404);
    };
    let behaviour = match behaviour {
        Behaviour::Sequence(steps) => match steps.get(hit - 1).or(steps.last()) {
            Some(Behaviour::Sequence(_)) | None => return status(500),
            Some(step) => step.clone(),
        },
        other => other,
    };
    match behaviour {
        Behaviour::Ok(body) => ok(body),
        Behaviour::Gzip(body) => gzip_encoded(gzip(&body)),
        Behaviour::Gzipped(bytes) => gzip_encoded(bytes),
        Behaviour::Chunked(body) => {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                body.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
            Response::new(Body::from_stream(futures::stream::iter(chunks)))
        }
        Behaviour::FailThenOk {
            failures,
            status: code,
            retry_after,
            body,
        } => {
            if hit <= failures {
                let mut response = status(code);
                if let Some(secs) = retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                response
            } else {
                ok(body)
            }
        }
        Behaviour::UnavailableUntil { until, body } => {
            if Instant::now() < until {
                status(503)
            } else {
                ok(body)
            }
        }
        Behaviour::Status(code) => status(code),
        Behaviour::Delay(delay, body) => {
            tokio::time::sleep(delay).await;
            ok(body)
        }
        Behaviour::Trickle(interval) => {
            let bytes = futures::stream::unfold((), move |()| async move {
                tokio::time::sleep(interval).await;
                Some((Ok::<_, std::io::Error>(vec![b' ']), ()))
            });
            Response::new(Body::from_stream(bytes))
        }
        Behaviour::TrickleAfter { head, interval } => {
            let trickle = futures::stream::unfold((), move |()| async move {
                tokio::time::sleep(interval).await;
                Some((Ok::<_, std::io::Error>(vec![b' ']), ()))
            });
            let chunks = futures::stream::iter([Ok::<_, std::io::Error>(head)]).chain(trickle);
            Response::new(Body::from_stream(chunks))
        }
        Behaviour::DeclaredLength { declared, body } => {
            // The stream ends before `declared` bytes: hyper then cuts the
            // connection, as a failing server would. The pause first lets
            // the headers and the body so far reach the client.
            let pause = futures::stream::once(tokio::time::sleep(Duration::from_millis(200)))
                .filter_map(|()| async { None });
            let chunks = futures::stream::iter([Ok::<_, std::io::Error>(body)]).chain(pause);
            let mut response = Response::new(Body::from_stream(chunks));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(declared));
            response
        }
        Behaviour::ResetMidBody(body) => {
            let half = body[..body.len() / 2].to_vec();
            let chunks = futures::stream::iter([
                Ok(half),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset by the payload server",
                )),
            ]);
            Response::new(Body::from_stream(chunks))
        }
        Behaviour::Sequence(_) => status(500),
        Behaviour::Redirect(location) => {
            let mut response = status(302);
            response.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_str(&location).expect("valid location"),
            );
            response
        }
    }
}

fn gzip_encoded(bytes: Vec<u8>) -> Response<Body> {
    let mut response = ok(bytes);
    response
        .headers_mut()
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    response
}

fn ok(body: impl Into<Body>) -> Response<Body> {
    let mut response = Response::new(body.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn status(code: u16) -> Response<Body> {
    let code = StatusCode::from_u16(code).expect("valid status");
    let body = format!(
        "<Error><Code>{}</Code></Error>",
        code.canonical_reason().unwrap_or("Error")
    );
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = code;
    response
}
