//! Downloading a payload from its pre-signed URL: the URL policy, retries with
//! backoff inside the URL's lifetime and the invocation's deadline, a size
//! limit enforced while streaming, and failure classification.

mod redact;
mod url_policy;

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::{Bytes, BytesMut};
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use tokio::time::Instant;
use url::Url;

use crate::outcome::{Classify, FailureClass, Retry};

pub use redact::{RedactedUrl, strip_query_strings, strip_query_strings_in_json};
pub use url_policy::{HostPattern, PolicyViolation, UrlPolicy, is_public};

/// Fetch limits, from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSettings {
    /// Connect timeout and whole-attempt timeout (`TERRA_FETCH_TIMEOUT_SECS`).
    pub timeout: Duration,
    /// Attempts per payload, the first included (`TERRA_FETCH_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// Largest payload accepted, after decompression (`TERRA_MAX_PAYLOAD_BYTES`).
    pub max_payload_bytes: u64,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_attempts: 4,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub body: Bytes,
    pub attempts: u32,
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
}

impl Classify for FetchError {
    fn class(&self) -> FailureClass {
        match self {
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
            FetchError::Status { status, .. } if is_transient_status(*status) => Retry::Transient,
            FetchError::Transport { .. }
            | FetchError::Timeout { .. }
            | FetchError::Deadline { .. } => Retry::Transient,
            _ => Retry::Permanent,
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
/// A `Retry-After` longer than this is not waited for within one invocation.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The shared download client. Built once at cold start, so connections are
/// reused across records and invocations.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    policy: Arc<UrlPolicy>,
    settings: FetchSettings,
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
            .timeout(settings.timeout)
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
        })
    }

    /// Downloads the payload, retrying transient failures with exponential
    /// backoff and jitter, never past the URL's expiry or `give_up_at`.
    pub async fn fetch(&self, url: &Url, deadlines: FetchDeadlines) -> Result<Fetched, FetchError> {
        self.policy.check_url(url).map_err(FetchError::Refused)?;
        let shown = RedactedUrl(url).to_string();
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(FIRST_BACKOFF)
            .with_max_delay(MAX_BACKOFF)
            .with_jitter()
            .with_max_times(self.settings.max_attempts.saturating_sub(1) as usize)
            .build();
        let stop_at = match deadlines.url_expires_at {
            Some(expiry) => expiry.min(deadlines.give_up_at),
            None => deadlines.give_up_at,
        };
        let mut attempts = 0;
        loop {
            if Instant::now() >= stop_at {
                return Err(self.out_of_time(deadlines, shown, attempts));
            }
            attempts += 1;
            let attempt =
                tokio::time::timeout_at(stop_at, self.attempt(url, &shown, attempts)).await;
            let failure = match attempt {
                Ok(Ok(body)) => return Ok(Fetched { body, attempts }),
                Ok(Err(failure)) => failure,
                Err(_elapsed) => return Err(self.out_of_time(deadlines, shown, attempts)),
            };
            if failure.error.retry() == Retry::Permanent {
                return Err(failure.error);
            }
            let Some(mut delay) = backoff.next() else {
                return Err(failure.error);
            };
            if let Some(asked) = failure.retry_after {
                delay = delay.max(asked);
            }
            if Instant::now() + delay >= stop_at {
                return Err(failure.error);
            }
            tracing::debug!(url = %shown, attempt = attempts, delay_ms = delay.as_millis() as u64, error = %failure.error, "retrying fetch");
            tokio::time::sleep(delay).await;
        }
    }

    fn out_of_time(&self, deadlines: FetchDeadlines, url: String, attempts: u32) -> FetchError {
        let expired = deadlines
            .url_expires_at
            .is_some_and(|expiry| expiry <= Instant::now() + Duration::from_millis(1));
        if expired && attempts == 0 {
            FetchError::ExpiredBeforeFetch
        } else if expired {
            FetchError::ExpiredWhileFetching { url, attempts }
        } else {
            FetchError::Deadline { url, attempts }
        }
    }

    async fn attempt(
        &self,
        url: &Url,
        shown: &str,
        attempts: u32,
    ) -> Result<Bytes, AttemptFailure> {
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
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
        let initial = response.content_length().unwrap_or(64 * 1024).min(limit) as usize;
        let mut body = BytesMut::with_capacity(initial);
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.request_error(e, shown, attempts))?
        {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large().into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
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
