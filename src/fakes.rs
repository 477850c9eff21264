//! In-memory stand-ins for the stores and queues behind the narrow traits, so
//! the handlers' logic is tested in process in milliseconds. They keep the
//! traits' contracts (conditional archive writes, idempotent sinks); what the
//! real services do on the wire is tested against moto.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::http::{Response, StatusCode};
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;

use crate::erasure::{EraseUser, ErasureFailure, ErasureReport, Kept};
use crate::fetch::own_bucket::{SourceBucket, SourceObject, SourceReadError, SourceVersion};
use crate::outcome::Retry;
use crate::payload::PayloadSummary;
use crate::quarantine::{QuarantineError, QuarantineQueue, QuarantinedRecord};
use crate::redelivery::QueueSettings;
use crate::redelivery::{QueueControl, QueueError, VisibilityChange};
use crate::sink::{
    Archive, ArchiveName, ArchiveUpload, ArchiveWrite, ArchivedCopy, ArchivedObject, Delivery,
    ServerSideCopy, Sink, SinkError, SinkReport, StreamedUploads,
};

/// Every request an SDK client sent, as about to go on the wire (signed).
/// Give it to a client with `.interceptor(...)`.
#[derive(Debug, Clone, Default)]
pub struct SentRequests(Arc<Mutex<Vec<SentRequest>>>);

#[derive(Debug, Clone)]
struct SentRequest {
    uri: String,
    headers: Vec<(String, String)>,
}

impl SentRequests {
    /// The host each request went to, in order.
    pub fn hosts(&self) -> Vec<String> {
        lock(&self.0)
            .iter()
            .map(|sent| sent.uri.split('/').nth(2).unwrap_or_default().to_owned())
            .collect()
    }

    /// The header `name` of the last request, if it had one.
    pub fn last_header(&self, name: &str) -> Option<String> {
        let sent = lock(&self.0);
        let last = sent.last()?;
        last.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.clone())
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for SentRequests {
    fn name(&self) -> &'static str {
        "SentRequests"
    }

    fn read_before_transmit(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let request = context.request();
        lock(&self.0).push(SentRequest {
            uri: request.uri().to_owned(),
            headers: request
                .headers()
                .iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        });
        Ok(())
    }
}

/// An S3 answer as it comes over the wire, for aws-smithy-mocks rules.
pub fn s3_answer(
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
) -> impl Fn() -> HttpResponse + Send + Sync {
    move || {
        let mut response = Response::new(
            StatusCode::try_from(status).expect("a status"),
            SdkBody::from(body),
        );
        for (name, value) in headers {
            response.headers_mut().insert(*name, *value);
        }
        response
    }
}

/// What the stores were asked to do, in order, across all of them.
pub type Journal = Arc<Mutex<Vec<String>>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One object per name, holding the send it came from.
#[derive(Default)]
pub struct MemoryArchive {
    objects: Arc<Mutex<HashMap<String, (Bytes, u64)>>>,
    /// Every store fails, transiently, as during an outage.
    failing: bool,
    /// The source bucket it copies in from, as S3 does server-side.
    copies_from: Option<MemorySourceBucket>,
    journal: Journal,
}

impl MemoryArchive {
    pub fn new(journal: &Journal) -> Self {
        Self {
            journal: Arc::clone(journal),
            ..Self::default()
        }
    }

    /// Every store fails, as during an outage.
    pub fn failing(journal: &Journal) -> Self {
        Self {
            failing: true,
            ..Self::new(journal)
        }
    }

    /// Copies payloads in from `source` without them passing through the
    /// pipeline, as the S3 archive does from a source bucket.
    pub fn copying_from(journal: &Journal, source: &MemorySourceBucket) -> Self {
        Self {
            copies_from: Some(source.clone()),
            ..Self::new(journal)
        }
    }

    /// Holds `payload` under `name` for the send at `sent_at_ms`, as an
    /// earlier delivery would have left it.
    pub fn hold(&self, name: &ArchiveName, sent_at_ms: u64, payload: &[u8]) {
        lock(&self.objects).insert(
            name.as_str().to_owned(),
            (Bytes::copy_from_slice(payload), sent_at_ms),
        );
    }

    pub fn object(&self, name: &ArchiveName) -> Option<Bytes> {
        lock(&self.objects)
            .get(name.as_str())
            .map(|(bytes, _)| bytes.clone())
    }

    pub fn len(&self) -> usize {
        lock(&self.objects).len()
    }
}

fn location(name: &str) -> ArchivedObject {
    ArchivedObject {
        bucket: "memory".into(),
        key: name.to_owned(),
    }
}

fn store_conditionally(
    objects: &Mutex<HashMap<String, (Bytes, u64)>>,
    name: &str,
    sent_at_ms: u64,
    payload: Bytes,
) -> ArchiveWrite {
    let mut objects = lock(objects);
    match objects.get(name) {
        Some((_, held)) if *held > sent_at_ms => ArchiveWrite::NewerHeld(location(name)),
        Some((_, held)) if *held == sent_at_ms => ArchiveWrite::AlreadyHeld(location(name)),
        _ => {
            objects.insert(name.to_owned(), (payload, sent_at_ms));
            ArchiveWrite::Written(location(name))
        }
    }
}

#[async_trait]
impl Archive for MemoryArchive {
    async fn store(&self, delivery: &Delivery) -> Result<ArchiveWrite, SinkError> {
        lock(&self.journal).push(format!("archive {}", delivery.name.as_str()));
        if self.failing {
            return Err(SinkError {
                sink: "memory archive",
                retry: Retry::Transient,
                message: "unavailable".into(),
                record_at_fault: false,
            });
        }
        Ok(store_conditionally(
            &self.objects,
            delivery.name.as_str(),
            delivery.sent_at_ms,
            delivery.payload.clone(),
        ))
    }

    async fn retrieve(
        &self,
        name: &ArchiveName,
        sent_at_ms: u64,
        max_bytes: u64,
    ) -> Result<Option<ArchivedCopy>, SinkError> {
        lock(&self.journal).push(format!("retrieve {}", name.as_str()));
        Ok(lock(&self.objects)
            .get(name.as_str())
            .filter(|(_, held)| *held == sent_at_ms)
            .map(|(bytes, _)| {
                let object = location(name.as_str());
                if bytes.len() as u64 > max_bytes {
                    ArchivedCopy::TooLarge(object)
                } else {
                    ArchivedCopy::Payload(bytes.clone(), object)
                }
            }))
    }

    async fn holds(
        &self,
        name: &ArchiveName,
        sent_at_ms: u64,
    ) -> Result<Option<ArchivedObject>, SinkError> {
        lock(&self.journal).push(format!("holds {}", name.as_str()));
        Ok(lock(&self.objects)
            .get(name.as_str())
            .filter(|(_, held)| *held == sent_at_ms)
            .map(|_| location(name.as_str())))
    }

    fn streamed_uploads(&self) -> Option<&dyn StreamedUploads> {
        Some(self)
    }

    fn server_side_copy(&self) -> Option<&dyn ServerSideCopy> {
        self.copies_from
            .is_some()
            .then_some(self as &dyn ServerSideCopy)
    }
}

impl StreamedUploads for MemoryArchive {
    fn begin_upload(&self, name: &ArchiveName, sent_at_ms: u64) -> Box<dyn ArchiveUpload> {
        Box::new(MemoryUpload {
            objects: Arc::clone(&self.objects),
            name: name.as_str().to_owned(),
            sent_at_ms,
            received: Vec::new(),
        })
    }

    fn upload_holds_bytes(&self) -> u64 {
        0
    }
}

#[async_trait]
impl ServerSideCopy for MemoryArchive {
    async fn copy_in(
        &self,
        name: &ArchiveName,
        sent_at_ms: u64,
        source: &SourceVersion,
        _summary: &PayloadSummary,
    ) -> Result<ArchiveWrite, SinkError> {
        lock(&self.journal).push(format!("copy {}", name.as_str()));
        let copied = match &self.copies_from {
            Some(bucket) => bucket.current(source),
            None => None,
        };
        let Some(payload) = copied else {
            return Err(SinkError {
                sink: "memory archive",
                retry: Retry::Transient,
                message: format!("cannot copy {} in", source.object),
                record_at_fault: false,
            });
        };
        Ok(store_conditionally(
            &self.objects,
            name.as_str(),
            sent_at_ms,
            payload,
        ))
    }
}

struct MemoryUpload {
    objects: Arc<Mutex<HashMap<String, (Bytes, u64)>>>,
    name: String,
    sent_at_ms: u64,
    received: Vec<u8>,
}

#[async_trait]
impl ArchiveUpload for MemoryUpload {
    async fn append(&mut self, bytes: Bytes, _known: &PayloadSummary) -> Result<(), SinkError> {
        self.received.extend_from_slice(&bytes);
        Ok(())
    }

    async fn finish(self: Box<Self>, _summary: &PayloadSummary) -> Result<ArchiveWrite, SinkError> {
        Ok(store_conditionally(
            &self.objects,
            &self.name,
            self.sent_at_ms,
            Bytes::from(self.received),
        ))
    }

    async fn abort(self: Box<Self>) {}
}

/// A source bucket of own-bucket mode: objects by key (whatever the bucket),
/// each version's ETag a digest of its bytes.
#[derive(Clone, Default)]
pub struct MemorySourceBucket {
    objects: Arc<Mutex<HashMap<String, Bytes>>>,
    /// Keys stored with `Content-Encoding: gzip`.
    gzipped: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Looks that fail before any succeeds, and how.
    failures: Arc<Mutex<Vec<SourceFailure>>>,
    journal: Journal,
}

/// How a [`MemorySourceBucket`] look fails.
#[derive(Clone, Copy, Debug)]
pub enum SourceFailure {
    Refused,
    Unavailable,
}

impl MemorySourceBucket {
    pub fn new(journal: &Journal) -> Self {
        Self {
            journal: Arc::clone(journal),
            ..Self::default()
        }
    }

    pub fn put(&self, key: &str, payload: &[u8]) {
        lock(&self.objects).insert(key.to_owned(), Bytes::copy_from_slice(payload));
    }

    /// Stores `payload` gzip-compressed, with `Content-Encoding: gzip`.
    pub fn put_gzipped(&self, key: &str, payload: &[u8]) {
        self.put(key, &crate::sink::gzip(payload).expect("in-memory gzip"));
        lock(&self.gzipped).insert(key.to_owned());
    }

    /// The next looks at an object fail, one per entry, before any succeeds.
    pub fn fail_next(&self, failures: &[SourceFailure]) {
        lock(&self.failures).extend_from_slice(failures);
    }

    fn etag(payload: &[u8]) -> String {
        format!("\"{}\"", crate::digest::sha256_hex(payload))
    }

    /// The object's bytes, if it is still the version given.
    fn current(&self, version: &SourceVersion) -> Option<Bytes> {
        lock(&self.objects)
            .get(&version.object.key)
            .filter(|payload| Self::etag(payload) == version.etag)
            .cloned()
    }
}

#[async_trait]
impl SourceBucket for MemorySourceBucket {
    async fn version(&self, object: &SourceObject) -> Result<SourceVersion, SourceReadError> {
        lock(&self.journal).push(format!("source version {}", object.key));
        let failure = {
            let mut failures = lock(&self.failures);
            (!failures.is_empty()).then(|| failures.remove(0))
        };
        let detail = "HeadObject: scripted".to_owned();
        match failure {
            Some(SourceFailure::Refused) => {
                return Err(SourceReadError::Refused {
                    object: object.clone(),
                    detail,
                });
            }
            Some(SourceFailure::Unavailable) => {
                return Err(SourceReadError::Unavailable {
                    object: object.clone(),
                    detail,
                });
            }
            None => {}
        }
        let objects = lock(&self.objects);
        let payload = objects
            .get(&object.key)
            .ok_or_else(|| SourceReadError::Missing {
                object: object.clone(),
            })?;
        Ok(SourceVersion {
            object: object.clone(),
            etag: Self::etag(payload),
            size: payload.len() as u64,
            kms_encrypted: false,
            gzipped: lock(&self.gzipped).contains(&object.key),
        })
    }

    async fn read(
        &self,
        version: &SourceVersion,
        first_bytes: Option<u64>,
    ) -> Result<Bytes, SourceReadError> {
        let key = &version.object.key;
        lock(&self.journal).push(match first_bytes {
            Some(n) => format!("source read {key} first {n}"),
            None => format!("source read {key}"),
        });
        let payload = self
            .current(version)
            .ok_or_else(|| SourceReadError::Changed {
                object: version.object.clone(),
            })?;
        let len = first_bytes.map_or(payload.len(), |n| payload.len().min(n as usize));
        Ok(payload.slice(..len))
    }
}

/// Records each erasure asked of it, in the journal too; fails the first
/// `failing` of them with a failure in the report, as a refused delete does.
#[derive(Default)]
pub struct MemoryEraser {
    erased: Mutex<Vec<(String, Kept)>>,
    failing: Mutex<usize>,
    journal: Journal,
}

impl MemoryEraser {
    pub fn new(journal: &Journal) -> Self {
        Self {
            journal: Arc::clone(journal),
            ..Self::default()
        }
    }

    pub fn failing_first(self, failing: usize) -> Self {
        *lock(&self.failing) = failing;
        self
    }

    pub fn erased(&self) -> Vec<(String, Kept)> {
        lock(&self.erased).clone()
    }
}

#[async_trait]
impl EraseUser for MemoryEraser {
    async fn erase_user(&self, user_id: &str, kept: &Kept) -> ErasureReport {
        lock(&self.journal).push(format!("erase {user_id}"));
        lock(&self.erased).push((user_id.to_owned(), kept.clone()));
        let mut failing = lock(&self.failing);
        let failures = if *failing > 0 {
            *failing -= 1;
            vec![ErasureFailure {
                what: "terra/dt=2026-11-30/x.json".into(),
                reason: "DeleteObject: AccessDenied".into(),
            }]
        } else {
            Vec::new()
        };
        ErasureReport {
            users: 1,
            failures,
            ..ErasureReport::default()
        }
    }
}

/// Keeps the newest delivery per name, as the DynamoDB version guard does.
#[derive(Default)]
pub struct MemorySink {
    written: Mutex<HashMap<String, Delivery>>,
    journal: Journal,
    /// A bug to reach: writing this user's payloads panics.
    panics_for_user: Option<&'static str>,
}

impl MemorySink {
    pub fn new(journal: &Journal) -> Self {
        Self {
            journal: Arc::clone(journal),
            ..Self::default()
        }
    }

    pub fn panicking_for(self, user: Option<&'static str>) -> Self {
        Self {
            panics_for_user: user,
            ..self
        }
    }

    pub fn written(&self, name: &ArchiveName) -> Option<Delivery> {
        lock(&self.written).get(name.as_str()).cloned()
    }

    pub fn len(&self) -> usize {
        lock(&self.written).len()
    }
}

#[async_trait]
impl Sink for MemorySink {
    async fn write(&self, delivery: &Delivery) -> Result<SinkReport, SinkError> {
        if let Some(user) = self.panics_for_user {
            assert_ne!(delivery.summary.user_id.as_deref(), Some(user), "a bug");
        }
        lock(&self.journal).push(format!("sink {}", delivery.name.as_str()));
        let mut written = lock(&self.written);
        let newer_held = written
            .get(delivery.name.as_str())
            .is_some_and(|held| held.sent_at_ms > delivery.sent_at_ms);
        if newer_held {
            return Ok(SinkReport {
                items_written: 0,
                items_stale: 1,
            });
        }
        written.insert(delivery.name.as_str().to_owned(), delivery.clone());
        Ok(SinkReport {
            items_written: 1,
            items_stale: 0,
        })
    }
}

/// How a [`MemoryQuarantine`] answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Answer {
    #[default]
    Accept,
    /// Accepts every record, except those whose group is this.
    RefuseGroup(&'static str),
    /// Never answers, like a queue whose endpoint does not respond.
    Hang,
}

/// Clones share what was sent, so a test keeps one while the app owns another.
#[derive(Default, Clone)]
pub struct MemoryQuarantine {
    pub answer: Answer,
    sent: Arc<Mutex<Vec<QuarantinedRecord>>>,
}

impl MemoryQuarantine {
    pub fn answering(answer: Answer) -> Self {
        Self {
            answer,
            ..Self::default()
        }
    }

    pub fn sent(&self) -> Vec<QuarantinedRecord> {
        lock(&self.sent).clone()
    }
}

#[async_trait]
impl QuarantineQueue for MemoryQuarantine {
    async fn send(&self, quarantined: &QuarantinedRecord) -> Result<(), QuarantineError> {
        match self.answer {
            Answer::RefuseGroup(group) if quarantined.group == group => {
                Err(QuarantineError("AccessDenied".into()))
            }
            Answer::Accept | Answer::RefuseGroup(_) => {
                lock(&self.sent).push(quarantined.clone());
                Ok(())
            }
            Answer::Hang => {
                futures::future::pending::<()>().await;
                Ok(())
            }
        }
    }
}

/// A queue with the template's settings that records every visibility
/// change. Clones share the record.
#[derive(Default, Clone)]
pub struct MemoryQueue {
    changes: Arc<Mutex<Vec<(String, VisibilityChange)>>>,
}

impl MemoryQueue {
    pub const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(1020);
    pub const MAX_RECEIVE_COUNT: u32 = 5;

    pub fn changes(&self) -> Vec<(String, VisibilityChange)> {
        lock(&self.changes).clone()
    }
}

#[async_trait]
impl QueueControl for MemoryQueue {
    async fn settings(&self, _queue_url: &str) -> Result<QueueSettings, QueueError> {
        Ok(QueueSettings {
            visibility_timeout: Self::VISIBILITY_TIMEOUT,
            max_receive_count: Some(Self::MAX_RECEIVE_COUNT),
        })
    }

    async fn change_visibility(
        &self,
        queue_url: &str,
        changes: &[VisibilityChange],
    ) -> Result<(), QueueError> {
        lock(&self.changes).extend(
            changes
                .iter()
                .map(|change| (queue_url.to_owned(), change.clone())),
        );
        Ok(())
    }
}
