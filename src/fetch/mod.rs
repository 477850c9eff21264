//! Downloading a payload from its pre-signed URL: the URL policy, retries with
//! backoff inside the URL's lifetime and the invocation's deadline, a size
//! limit enforced while streaming, and failure classification.

pub mod own_bucket;
mod s3_endpoint;
mod url_policy;

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use bytes::{Bytes, BytesMut};
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use url::Url;

use crate::budget::{HoldingCost, MemoryBudget, Reservation};
use crate::outcome::{Classify, FailureClass, RecordFailure, Retry};

pub use crate::redact::RedactedUrl;
pub use url_policy::{HostPattern, PolicyViolation, UrlPolicy, is_public};

/// Fetch limits, from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSettings {
    /// Longest wait to connect, for the response headers, and for the next
    /// piece of the body (`TERRA_FETCH_TIMEOUT_SECS`). A body that keeps
    /// coming is bounded by the deadline and the size limit, not by this.
    pub timeout: Duration,
    /// At most this many attempts per payload in one invocation, the first
    /// included (`TERRA_FETCH_MAX_ATTEMPTS`); `None`: as many as the URL's
    /// lifetime and the invocation's deadline allow.
    pub max_attempts: Option<u32>,
    /// Largest payload accepted, after decompression (`TERRA_MAX_PAYLOAD_BYTES`).
    pub max_payload_bytes: u64,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_attempts: None,
            max_payload_bytes: 64 * 1024 * 1024,
        }
    }
}

/// When a fetch must give up.
#[derive(Debug, Clone, Copy)]
pub struct FetchDeadlines {
    /// When the pre-signed URL stops working, when known.
    pub url_expires_at: Option<Instant>,
    /// When the invocation stops waiting for this record.
    pub give_up_at: Instant,
}

#[derive(Debug)]
pub struct Fetched<B = Bytes> {
    pub body: B,
    pub attempts: u32,
    /// The budget the body holds, until the record is done with it.
    pub reservation: Reservation,
}

/// Takes a download's body as it arrives. Each attempt gets a new receiver:
/// a failed attempt's is abandoned, and a retry starts afresh.
#[async_trait]
pub trait BodyReceiver: Send {
    type Body: Send;
    /// The response's headers are in, announcing the body's length or not.
    fn announced(&mut self, length: Option<u64>);
    async fn receive(&mut self, chunk: Bytes) -> Result<(), RecordFailure>;
    /// The whole body arrived. Returns it, and the bytes it still holds in
    /// memory.
    async fn complete(self) -> Result<(Self::Body, u64), RecordFailure>;
    /// The attempt failed: undo what the receiver started.
    async fn abandon(self);
}

/// The body held in memory.
#[derive(Debug, Default)]
pub struct HeldBody {
    buffer: BytesMut,
    /// The most the buffer is sized for up front.
    limit: u64,
}

impl HeldBody {
    pub fn new(limit: u64) -> Self {
        Self {
            buffer: BytesMut::new(),
            limit,
        }
    }

    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// The buffer itself, leaving this body empty.
    pub fn take_buffer(&mut self) -> BytesMut {
        std::mem::take(&mut self.buffer)
    }
}

#[async_trait]
impl BodyReceiver for HeldBody {
    type Body = Bytes;
    /// Sized for the announced length; a body of unannounced length grows
    /// its buffer by doubling.
    fn announced(&mut self, length: Option<u64>) {
        self.buffer
            .reserve(length.unwrap_or(64 * 1024).min(self.limit) as usize);
    }
    async fn receive(&mut self, chunk: Bytes) -> Result<(), RecordFailure> {
        self.buffer.extend_from_slice(&chunk);
        Ok(())
    }
    async fn complete(self) -> Result<(Bytes, u64), RecordFailure> {
        let held = self.buffer.capacity() as u64;
        Ok((self.buffer.freeze(), held))
    }
    async fn abandon(self) {}
}

/// Every error text here is free of URL query strings: URLs appear only as
/// [`RedactedUrl`], and reqwest errors are stripped of their URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("refused by URL policy: {0}")]
    Refused(PolicyViolation),
    #[error("URL expired before it could be fetched")]
    ExpiredBeforeFetch,
    #[error("URL expired while fetching ({url}, after {attempts} attempt(s))")]
    ExpiredWhileFetching { url: String, attempts: u32 },
    #[error("HTTP {status} from {url}: URL expired or its signature was refused")]
    ExpiredUrl { status: u16, url: String },
    #[error("HTTP {status} from {url} after {attempts} attempt(s)")]
    Status {
        status: u16,
        url: String,
        attempts: u32,
    },
    #[error("{detail} ({url}, after {attempts} attempt(s))")]
    Transport {
        detail: String,
        url: String,
        attempts: u32,
    },
    #[error("timed out after {timeout:?} ({url}, after {attempts} attempt(s))")]
    Timeout {
        timeout: Duration,
        url: String,
        attempts: u32,
    },
    #[error("payload from {url} exceeds TERRA_MAX_PAYLOAD_BYTES ({limit} bytes)")]
    TooLarge { limit: u64, url: String },
    #[error("too many redirects from {url}")]
    TooManyRedirects { url: String },
    #[error("gave up: the invocation deadline is near ({url}, after {attempts} attempt(s))")]
    Deadline { url: String, attempts: u32 },
    /// The body's receiver refused it (an invalid payload streamed to the
    /// archive, or the archive failing); classified by the receiver.
    #[error("{}", .0.message)]
    Received(RecordFailure),
}

impl Classify for FetchError {
    fn class(&self) -> FailureClass {
        match self {
            FetchError::Received(failure) => failure.class,
            FetchError::Refused(_) => FailureClass::Refused,
            FetchError::ExpiredBeforeFetch
            | FetchError::ExpiredWhileFetching { .. }
            | FetchError::ExpiredUrl { .. } => FailureClass::Expired,
            FetchError::Deadline { .. } => FailureClass::Deferred,
            _ => FailureClass::Fetch,
        }
    }

    fn retry(&self) -> Retry {
        match self {
            FetchError::Received(failure) => failure.retry,
            FetchError::Status { status, .. } if is_transient_status(*status) => Retry::Transient,
            FetchError::Transport { .. }
            | FetchError::Timeout { .. }
            | FetchError::Deadline { .. } => Retry::Transient,
            _ => Retry::Permanent,
        }
    }

    fn record_at_fault(&self) -> bool {
        match self {
            FetchError::Received(failure) => failure.record_at_fault,
            _ => self.class() != FailureClass::Sink,
        }
    }
}

/// 408 and 429 are the server asking to come back; 5xx is the server's fault.
fn is_transient_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

/// S3 answers an expired pre-signed URL with 403, GCS with 400.
fn is_expired_status(status: u16) -> bool {
    matches!(status, 400 | 401 | 403)
}

const MAX_REDIRECTS: usize = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The waits between retries within one invocation, for downloads and store
/// writes alike: 200 ms doubling to 5 s, with jitter, for as long as the
/// caller's deadline allows.
pub(crate) struct RetryDelays(ExponentialBackoff);

impl RetryDelays {
    pub(crate) fn new() -> Self {
        Self(
            ExponentialBuilder::default()
                .with_min_delay(FIRST_BACKOFF)
                .with_max_delay(MAX_BACKOFF)
                .with_jitter()
                .without_max_times()
                .build(),
        )
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        self.0.next().unwrap_or(MAX_BACKOFF)
    }
}
/// The last attempt starts at least this long before the URL expires, so the
/// request reaches the host while the signature is still good.
const LAST_CHANCE_BEFORE_EXPIRY: Duration = Duration::from_millis(250);
/// A `Retry-After` longer than this is not waited for within one invocation.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The shared download client. Built once at cold start, so connections are
/// reused across records and invocations.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    policy: Arc<UrlPolicy>,
    settings: FetchSettings,
    budget: MemoryBudget,
    cost: HoldingCost,
    /// Set when large bodies are streamed: how many may stream at once.
    streams_at_once: Option<Arc<Semaphore>>,
}

#[derive(Debug, thiserror::Error)]
#[error("could not build the HTTP client: {0}")]
pub struct ClientBuildError(String);

impl Fetcher {
    pub fn new(policy: UrlPolicy, settings: FetchSettings) -> Result<Self, ClientBuildError> {
        Self::with_lookup(policy, settings, url_policy::system_lookup())
    }

    /// As [`Fetcher::new`], resolving host names with `lookup`.
    pub(crate) fn with_lookup(
        policy: UrlPolicy,
        settings: FetchSettings,
        lookup: url_policy::Lookup,
    ) -> Result<Self, ClientBuildError> {
        let policy = Arc::new(policy);
        let redirect_policy = Arc::clone(&policy);
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .dns_resolver(url_policy::PolicyResolver {
                policy: Arc::clone(&policy),
                lookup,
            })
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(RedirectLoop);
                }
                match redirect_policy.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(violation) => attempt.error(violation),
                }
            }))
            .build()
            .map_err(|e| ClientBuildError(e.without_url().to_string()))?;
        Ok(Self {
            client,
            policy,
            settings,
            budget: MemoryBudget::unbounded(),
            cost: HoldingCost::BUFFER_ONLY,
            streams_at_once: None,
        })
    }

    /// Bodies are downloaded only once `budget` has room for what the record
    /// will hold, by `cost`.
    pub fn with_budget(self, budget: MemoryBudget, cost: HoldingCost) -> Self {
        Self {
            budget,
            cost,
            ..self
        }
    }

    /// Holds room in the budget for the largest payload accepted, held
    /// whole, for a payload read from elsewhere whose size is not known
    /// beforehand.
    pub async fn reserve_for_any_payload(&self) -> Reservation {
        self.reserve_for_payload_of(self.settings.max_payload_bytes)
            .await
    }

    /// Holds room in the budget for a payload of `bytes` held whole, read
    /// from elsewhere.
    pub async fn reserve_for_payload_of(&self, bytes: u64) -> Reservation {
        self.budget.reserve(self.cost.held_whole(bytes)).await
    }

    /// `TERRA_MAX_PAYLOAD_BYTES`.
    pub fn max_payload_bytes(&self) -> u64 {
        self.settings.max_payload_bytes
    }

    /// Bodies above `above` bytes are streamed, holding `holds` bytes
    /// whatever their size, `at_once` of them at a time.
    pub fn streaming_above(self, above: u64, holds: u64, at_once: usize) -> Self {
        Self {
            cost: self.cost.streaming_above(above, holds),
            streams_at_once: Some(Arc::new(Semaphore::new(at_once.max(1)))),
            ..self
        }
    }

    pub fn holding_cost(&self) -> HoldingCost {
        self.cost
    }

    /// Downloads the payload, retrying transient failures with exponential
    /// backoff and jitter for as long as a new attempt can still reach the
    /// host before the URL expires and the invocation's deadline allows.
    ///
    /// S3 and GCS check a pre-signed URL when the request arrives, so the
    /// expiry only stops new attempts; one already under way runs on, bounded
    /// by `give_up_at` and the size limit.
    pub async fn fetch(&self, url: &Url, deadlines: FetchDeadlines) -> Result<Fetched, FetchError> {
        let limit = self.settings.max_payload_bytes;
        self.fetch_into(url, deadlines, || HeldBody::new(limit))
            .await
    }

    /// As [`Fetcher::fetch`], handing the body to a receiver from
    /// `new_receiver` (one per attempt) as it arrives.
    pub async fn fetch_into<R, F>(
        &self,
        url: &Url,
        deadlines: FetchDeadlines,
        mut new_receiver: F,
    ) -> Result<Fetched<R::Body>, FetchError>
    where
        R: BodyReceiver,
        F: FnMut() -> R + Send,
    {
        self.policy.check_url(url).map_err(FetchError::Refused)?;
        let shown = RedactedUrl(url).to_string();
        let mut delays = RetryDelays::new();
        let last_start = deadlines.url_expires_at.map(|expiry| {
            expiry
                .checked_sub(LAST_CHANCE_BEFORE_EXPIRY)
                .unwrap_or(expiry)
        });
        let mut attempts = 0;
        loop {
            let now = Instant::now();
            if deadlines.url_expires_at.is_some_and(|expiry| now >= expiry) {
                return Err(expired(shown, attempts));
            }
            if now >= deadlines.give_up_at {
                return Err(FetchError::Deadline {
                    url: shown,
                    attempts,
                });
            }
            attempts += 1;
            // Outside the attempt, so that it is abandoned (its upload
            // aborted) even when the deadline cuts the attempt short.
            let mut receiver = new_receiver();
            let attempt = tokio::time::timeout_at(
                deadlines.give_up_at,
                self.attempt(url, &shown, attempts, &mut receiver),
            )
            .await;
            let failure = match attempt {
                Ok(Ok(mut reservation)) => {
                    let (body, held) = receiver.complete().await.map_err(FetchError::Received)?;
                    reservation.shrink_to(self.cost.of(held));
                    return Ok(Fetched {
                        body,
                        attempts,
                        reservation,
                    });
                }
                Ok(Err(failure)) => {
                    receiver.abandon().await;
                    failure
                }
                Err(_elapsed) => {
                    receiver.abandon().await;
                    return Err(FetchError::Deadline {
                        url: shown,
                        attempts,
                    });
                }
            };
            if matches!(failure.error, FetchError::Received(_))
                || failure.error.retry() == Retry::Permanent
                || self
                    .settings
                    .max_attempts
                    .is_some_and(|max| attempts >= max)
            {
                return Err(failure.error);
            }
            let mut delay = delays.next_delay();
            if let Some(asked) = failure.retry_after {
                delay = delay.max(asked);
            }
            let mut next_start = Instant::now() + delay;
            if let Some(last_start) = last_start
                && next_start > last_start
            {
                // One more try while the signature still holds, if there is time.
                if Instant::now() >= last_start {
                    return Err(expired(shown, attempts));
                }
                next_start = last_start;
            }
            if next_start >= deadlines.give_up_at {
                return Err(failure.error);
            }
            tracing::debug!(url = %shown, attempt = attempts, delay_ms = next_start.saturating_duration_since(Instant::now()).as_millis() as u64, error = %failure.error, "retrying fetch");
            tokio::time::sleep_until(next_start).await;
        }
    }

    /// One request, its body handed to `receiver`.
    async fn attempt<R: BodyReceiver>(
        &self,
        url: &Url,
        shown: &str,
        attempts: u32,
        receiver: &mut R,
    ) -> Result<Reservation, AttemptFailure> {
        let stalled = || FetchError::Timeout {
            timeout: self.settings.timeout,
            url: shown.to_owned(),
            attempts,
        };
        let response =
            tokio::time::timeout(self.settings.timeout, self.client.get(url.clone()).send())
                .await
                .map_err(|_| stalled())?
                .map_err(|e| self.request_error(e, shown, attempts))?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_failure(&response, status, shown, attempts));
        }
        let limit = self.settings.max_payload_bytes;
        let too_large = || FetchError::TooLarge {
            limit,
            url: shown.to_owned(),
        };
        // With gzip decoding on, reqwest reports no length for compressed bodies,
        // so this only short-cuts honest plain bodies; the loop below is the limit.
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(too_large().into());
        }
        // Waiting here, between the headers and the body, holds a connection
        // but no bytes; the caller's deadline bounds the wait. A body of
        // unannounced length may be as large as the limit.
        let announced = response.content_length();
        let expected = announced.unwrap_or(limit).min(limit);
        let stream_slot = match &self.streams_at_once {
            Some(slots) if self.cost.streams(expected) => {
                Arc::clone(slots).acquire_owned().await.ok()
            }
            _ => None,
        };
        let reservation = self
            .budget
            .reserve(self.cost.of(expected))
            .await
            .also_holding(stream_slot);
        receiver.announced(announced);
        let mut received = 0u64;
        let mut response = response;
        while let Some(chunk) = tokio::time::timeout(self.settings.timeout, response.chunk())
            .await
            .map_err(|_| stalled())?
            .map_err(|e| self.request_error(e, shown, attempts))?
        {
            received += chunk.len() as u64;
            if received > limit {
                return Err(too_large().into());
            }
            receiver
                .receive(chunk)
                .await
                .map_err(FetchError::Received)?;
        }
        Ok(reservation)
    }

    fn request_error(&self, error: reqwest::Error, shown: &str, attempts: u32) -> AttemptFailure {
        let url = shown.to_owned();
        if let Some(violation) = find_source::<PolicyViolation>(&error) {
            return FetchError::Refused(violation.clone()).into();
        }
        if find_source::<RedirectLoop>(&error).is_some() {
            return FetchError::TooManyRedirects { url }.into();
        }
        if error.is_timeout() {
            return FetchError::Timeout {
                timeout: self.settings.timeout,
                url,
                attempts,
            }
            .into();
        }
        FetchError::Transport {
            detail: describe_chain(&error.without_url()),
            url,
            attempts,
        }
        .into()
    }
}

fn expired(url: String, attempts: u32) -> FetchError {
    if attempts == 0 {
        FetchError::ExpiredBeforeFetch
    } else {
        FetchError::ExpiredWhileFetching { url, attempts }
    }
}

/// One failed attempt, with what the server asked for before a retry.
struct AttemptFailure {
    error: FetchError,
    retry_after: Option<Duration>,
}

impl From<FetchError> for AttemptFailure {
    fn from(error: FetchError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

fn status_failure(
    response: &reqwest::Response,
    status: StatusCode,
    shown: &str,
    attempts: u32,
) -> AttemptFailure {
    let code = status.as_u16();
    let error = if is_expired_status(code) {
        FetchError::ExpiredUrl {
            status: code,
            url: shown.to_owned(),
        }
    } else {
        FetchError::Status {
            status: code,
            url: shown.to_owned(),
            attempts,
        }
    };
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    AttemptFailure { error, retry_after }
}

#[derive(Debug, thiserror::Error)]
#[error("too many redirects")]
struct RedirectLoop;

fn find_source<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// "error sending request: client error (Connect): Connection refused": the
/// top-level reqwest text alone says too little to act on.
fn describe_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut current = error.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> String {
        "https://h/p".into()
    }

    #[test]
    fn classifies_statuses() {
        let status = |status| FetchError::Status {
            status,
            url: url(),
            attempts: 1,
        };
        for transient in [408, 429, 500, 502, 503, 504] {
            assert_eq!(status(transient).retry(), Retry::Transient, "{transient}");
            assert_eq!(status(transient).class(), FailureClass::Fetch);
        }
        for permanent in [404, 405, 410, 413] {
            assert_eq!(status(permanent).retry(), Retry::Permanent, "{permanent}");
        }
        for expired in [400, 401, 403] {
            assert!(is_expired_status(expired));
        }
        let expired = FetchError::ExpiredUrl {
            status: 403,
            url: url(),
        };
        assert_eq!(
            (expired.class(), expired.retry()),
            (FailureClass::Expired, Retry::Permanent)
        );
    }

    #[test]
    fn classifies_the_rest() {
        let refused = FetchError::Refused(PolicyViolation::NoHost);
        assert_eq!(
            (refused.class(), refused.retry()),
            (FailureClass::Refused, Retry::Permanent)
        );
        let large = FetchError::TooLarge {
            limit: 1,
            url: url(),
        };
        assert_eq!(
            (large.class(), large.retry()),
            (FailureClass::Fetch, Retry::Permanent)
        );
        let timeout = FetchError::Timeout {
            timeout: Duration::from_secs(1),
            url: url(),
            attempts: 4,
        };
        assert_eq!(
            (timeout.class(), timeout.retry()),
            (FailureClass::Fetch, Retry::Transient)
        );
        let deadline = FetchError::Deadline {
            url: url(),
            attempts: 1,
        };
        assert_eq!(
            (deadline.class(), deadline.retry()),
            (FailureClass::Deferred, Retry::Transient)
        );
    }
}
