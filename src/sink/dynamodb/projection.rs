//! A payload's items, planned one record at a time from the payload's bytes.
//!
//! The payload is never built into a tree: its top level is read as borrowed
//! slices, each `data[]` record is converted straight from its JSON text to
//! DynamoDB's types, and the planner waits for room in a window of bytes in
//! flight before it converts the next. Memory for the projection is bounded
//! by that window, whatever the payload holds, and a payload that would make
//! more items than `TERRA_DYNAMODB_MAX_ITEMS` is refused before anything is
//! written.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::items::{PlannedItem, RecordIds, canonical_json, plan, record_item, records_header};
use super::to_attribute;

/// Records above this many bytes of JSON skip straight to the compressed form.
pub(super) const MAP_FORM_MAX_JSON: usize = 350 * 1024;
/// Compressed records above this go to S3 pointers (leaves room for the keys).
pub(super) const GZIP_FORM_MAX: usize = 390 * 1024;
/// Bytes of record JSON converted and not yet written, per payload. Bounds
/// the projection's memory: a record's attributes and its request take about
/// 20 times its JSON (see `DynamoDbSink::holding_cost`).
pub const WINDOW_BYTES: usize = 2 * 1024 * 1024;
/// An event without per-record `data[]` becomes one item holding the whole
/// event; above this it is refused rather than built into a tree. Terra's
/// lifecycle events are a few kB.
const WHOLE_EVENT_MAX: usize = 1024 * 1024;
/// The envelope fields read into a tree (`type`, `user`…) are small.
const ENVELOPE_FIELD_MAX: usize = 64 * 1024;

/// Why a payload cannot be projected; the record is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    #[error("payload cannot be projected ({0})")]
    NotJson(String),
    #[error("payload has {records} records, more than TERRA_DYNAMODB_MAX_ITEMS ({limit})")]
    TooManyItems { records: usize, limit: usize },
    #[error("payload's \"{field}\" is {bytes} bytes, too large for an envelope field")]
    EnvelopeTooLarge { field: &'static str, bytes: usize },
    #[error("event without per-record data is {bytes} bytes, over {WHOLE_EVENT_MAX} for one item")]
    EventTooLarge { bytes: usize },
}

fn not_json(error: &serde_json::Error) -> ProjectionError {
    ProjectionError::NotJson(crate::redact::json_error_position(error))
}

/// The ways an item can hold its record, from the most to the least useful.
/// The planner prepares the first to try, off the async workers; a writer
/// moves to the next when DynamoDB refuses the item itself.
pub(super) enum RecordForm {
    /// `data`: the record as a native map.
    Map(AttributeValue),
    /// Compress the record's JSON, and try what that gives.
    Compress,
    /// `data_gz`: too large for a map, small enough compressed.
    Gzip(Vec<u8>),
    /// Too large even compressed: only a pointer to the archive will do.
    PointerOnly { compressed_over: usize },
}

/// One item ready to write, holding its share of the window until written.
pub(super) struct ReadyItem {
    pub item: PlannedItem,
    pub json_len: usize,
    pub json: RecordJson,
    pub form: RecordForm,
    _window: Option<OwnedSemaphorePermit>,
}

/// Where a record's JSON is, should it need compressing after all.
pub(super) enum RecordJson {
    /// A record of `data[]`: these bytes of the payload.
    InPayload(Range<usize>),
    /// An item planned from a whole (small) event.
    Owned(Bytes),
}

impl RecordJson {
    pub fn bytes(&self, payload: &Bytes) -> Bytes {
        match self {
            RecordJson::InPayload(range) => payload.slice(range.clone()),
            RecordJson::Owned(json) => json.clone(),
        }
    }
}

/// Where the planner hands items to the writers; `false` once they stopped
/// listening.
pub(super) trait ItemSink {
    fn send(&mut self, item: ReadyItem) -> bool;
}

/// Plans every item of `payload` in turn, handing each to `out` once the
/// window has room for it. Blocking: run it off the async workers.
pub(super) fn project(
    payload: &[u8],
    sent_at_ms: u64,
    max_items: usize,
    window: &Arc<Semaphore>,
    out: &mut dyn ItemSink,
) -> Result<(), ProjectionError> {
    let top = TopLevel::read(payload, max_items)?;
    let envelope_field =
        |field: &'static str, raw: Option<&RawValue>| -> Result<Option<Value>, ProjectionError> {
            let Some(raw) = raw else {
                return Ok(None);
            };
            let bytes = raw.get().len();
            if bytes > ENVELOPE_FIELD_MAX {
                return Err(ProjectionError::EnvelopeTooLarge { field, bytes });
            }
            serde_json::from_str(raw.get())
                .map(Some)
                .map_err(|e| not_json(&e))
        };
    let header = match &top.records {
        Some(_) => records_header(
            envelope_field("type", top.kind)?.as_ref(),
            envelope_field("user", top.user)?.as_ref(),
            envelope_field("reference_id", top.reference_id)?.as_ref(),
        ),
        None => None,
    };
    let (Some(header), Some(records)) = (header, top.records) else {
        // Lifecycle and operational events, athletes: one small event.
        if payload.len() > WHOLE_EVENT_MAX {
            return Err(ProjectionError::EventTooLarge {
                bytes: payload.len(),
            });
        }
        let event: Value = serde_json::from_slice(payload).map_err(|e| not_json(&e))?;
        for item in plan(event, sent_at_ms) {
            let ready = prepare(item, window);
            if !out.send(ready) {
                break;
            }
        }
        return Ok(());
    };
    if records.count > max_items {
        return Err(ProjectionError::TooManyItems {
            records: records.count,
            limit: max_items,
        });
    }
    for (index, raw) in records.kept.into_iter().enumerate() {
        let json = raw.get();
        let window = take_window(window, json.len());
        // A record small enough for a map is parsed once, into the map, and
        // its identity read from that; a larger one is only scanned for it.
        let (ids, form, hash_source) = if json.len() <= MAP_FORM_MAX_JSON {
            let attribute = ToAttribute
                .deserialize(&mut serde_json::Deserializer::from_str(json))
                .map_err(|e| not_json(&e))?;
            let ids = RecordIds::from_attribute(&attribute);
            (ids, RecordForm::Map(attribute), HashSource::Attribute)
        } else {
            let ids: RecordIds = serde_json::from_str(json).map_err(|e| not_json(&e))?;
            (
                ids,
                compressed_form(json.as_bytes()),
                HashSource::Text(json),
            )
        };
        let item = record_item(&header, index, &ids, || match (&hash_source, &form) {
            (HashSource::Attribute, RecordForm::Map(attribute)) => {
                canonical_json(&super::from_attribute(attribute))
            }
            (HashSource::Text(text), _) => text.as_bytes().to_vec(),
            _ => Vec::new(),
        });
        let start = json.as_ptr() as usize - payload.as_ptr() as usize;
        let ready = ReadyItem {
            item,
            json_len: json.len(),
            json: RecordJson::InPayload(start..start + json.len()),
            form,
            _window: window,
        };
        if !out.send(ready) {
            break;
        }
    }
    Ok(())
}

/// The payload's top level, read in one pass without building anything: the
/// envelope fields as slices of the payload, and `data[]` (when an array) as
/// the slice of each record.
#[derive(Default)]
struct TopLevel<'a> {
    kind: Option<&'a RawValue>,
    user: Option<&'a RawValue>,
    reference_id: Option<&'a RawValue>,
    records: Option<Records<'a>>,
}

/// `data[]`'s records: all of them counted, the first `limit` kept, so a
/// payload of millions of records is refused without holding them.
#[derive(Default)]
struct Records<'a> {
    kept: Vec<&'a RawValue>,
    count: usize,
}

impl<'a> TopLevel<'a> {
    fn read(payload: &'a [u8], limit: usize) -> Result<Self, ProjectionError> {
        let mut deserializer = serde_json::Deserializer::from_slice(payload);
        let top = TopLevelVisitor { limit }
            .deserialize(&mut deserializer)
            .and_then(|top| deserializer.end().map(|()| top))
            .map_err(|e| not_json(&e))?;
        Ok(top)
    }
}

struct TopLevelVisitor {
    limit: usize,
}

impl<'de> DeserializeSeed<'de> for TopLevelVisitor {
    type Value = TopLevel<'de>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<TopLevel<'de>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel<'de>, A::Error> {
        let mut top = TopLevel::default();
        // Later duplicates win, as they would in a tree.
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "type" => top.kind = Some(map.next_value()?),
                "user" => top.user = Some(map.next_value()?),
                "reference_id" => top.reference_id = Some(map.next_value()?),
                "data" => {
                    top.records = map.next_value_seed(RecordsVisitor { limit: self.limit })?
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(top)
    }
}

/// `data`: its records when it is an array, else `None`.
struct RecordsVisitor {
    limit: usize,
}

impl<'de> DeserializeSeed<'de> for RecordsVisitor {
    type Value = Option<Records<'de>>;
    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Option<Records<'de>>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RecordsVisitor {
    type Value = Option<Records<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut records = Records::default();
        loop {
            if records.count < self.limit {
                match seq.next_element::<&'de RawValue>()? {
                    Some(record) => records.kept.push(record),
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            records.count += 1;
        }
        Ok(Some(records))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// What a record without its own identity is hashed from: its canonical
/// JSON (keys sorted, as earlier versions did), or, for records too large to
/// build into a tree, its text as sent.
enum HashSource<'a> {
    Attribute,
    Text(&'a str),
}

/// An item planned from a whole event, made ready the same way.
fn prepare(mut item: PlannedItem, window: &Arc<Semaphore>) -> ReadyItem {
    let json = serde_json::to_vec(&item.data).unwrap_or_default();
    let window = take_window(window, json.len());
    let form = if json.len() <= MAP_FORM_MAX_JSON {
        RecordForm::Map(to_attribute(item.data.take()))
    } else {
        item.data = Value::Null;
        compressed_form(&json)
    };
    ReadyItem {
        item,
        json_len: json.len(),
        json: RecordJson::Owned(Bytes::from(json)),
        form,
        _window: window,
    }
}

/// Waits for room for `bytes` of JSON in the window (a record larger than the
/// window takes all of it).
fn take_window(window: &Arc<Semaphore>, bytes: usize) -> Option<OwnedSemaphorePermit> {
    let wanted = bytes.clamp(1, WINDOW_BYTES) as u32;
    futures::executor::block_on(Arc::clone(window).acquire_many_owned(wanted)).ok()
}

/// A new window for one payload's items.
pub(super) fn window() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(WINDOW_BYTES))
}

/// The record gzip-compressed, giving up as soon as the output passes what
/// an item can hold, so a huge record never holds a huge compressed copy.
pub(super) fn compressed_form(json: &[u8]) -> RecordForm {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    for piece in json.chunks(64 * 1024) {
        if encoder.write_all(piece).is_err() {
            break;
        }
        if encoder.get_ref().len() > GZIP_FORM_MAX {
            return RecordForm::PointerOnly {
                compressed_over: encoder.get_ref().len(),
            };
        }
    }
    match encoder.finish() {
        Ok(compressed) if compressed.len() <= GZIP_FORM_MAX => RecordForm::Gzip(compressed),
        Ok(compressed) => RecordForm::PointerOnly {
            compressed_over: compressed.len(),
        },
        Err(_) => RecordForm::PointerOnly { compressed_over: 0 },
    }
}

/// JSON straight to DynamoDB's types, with no `serde_json::Value` between:
/// objects become maps, arrays lists, numbers their shortest exact text.
struct ToAttribute;

impl<'de> DeserializeSeed<'de> for ToAttribute {
    type Value = AttributeValue;
    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<AttributeValue, D::Error> {
        deserializer.deserialize_any(AttributeVisitor)
    }
}

struct AttributeVisitor;

impl<'de> Visitor<'de> for AttributeVisitor {
    type Value = AttributeValue;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<AttributeValue, E> {
        Ok(AttributeValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<AttributeValue, E> {
        Ok(AttributeValue::N(v.to_string()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<AttributeValue, E> {
        Ok(AttributeValue::N(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<AttributeValue, E> {
        // serde_json's own number text, so items match what a tree gave.
        serde_json::Number::from_f64(v)
            .map(|n| AttributeValue::N(n.to_string()))
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<AttributeValue, E> {
        Ok(AttributeValue::S(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<AttributeValue, E> {
        Ok(AttributeValue::S(v))
    }
    fn visit_unit<E>(self) -> Result<AttributeValue, E> {
        Ok(AttributeValue::Null(true))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AttributeValue, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(ToAttribute)? {
            items.push(item);
        }
        Ok(AttributeValue::L(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AttributeValue, A::Error> {
        let mut fields = HashMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(ToAttribute)?;
            fields.insert(key, value);
        }
        Ok(AttributeValue::M(fields))
    }
}

/// Text where a record's identity is expected; anything else there is no
/// identity, and is skipped without building it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct LooseText(pub Option<String>);

impl<'de> Deserialize<'de> for LooseText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LooseVisitor;
        impl<'de> Visitor<'de> for LooseVisitor {
            type Value = LooseText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<LooseText, E> {
                Ok(LooseText(Some(v.to_owned())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<LooseText, E> {
                Ok(LooseText(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<LooseText, E> {
                Ok(LooseText(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<LooseText, E> {
                Ok(LooseText(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<LooseText, E> {
                Ok(LooseText(None))
            }
            fn visit_unit<E>(self) -> Result<LooseText, E> {
                Ok(LooseText(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LooseText, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LooseText(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LooseText, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LooseText(None))
            }
        }
        deserializer.deserialize_any(LooseVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Collect(Vec<ReadyItem>);

    impl ItemSink for Collect {
        fn send(&mut self, item: ReadyItem) -> bool {
            self.0.push(item);
            true
        }
    }

    fn project_all(payload: &Value) -> Result<Vec<ReadyItem>, ProjectionError> {
        let mut out = Collect(Vec::new());
        // A window as large as the test's records, since nothing writes them.
        let window = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
        project(
            &serde_json::to_vec(payload).expect("serialises"),
            1_000,
            10,
            &window,
            &mut out,
        )?;
        Ok(out.0)
    }

    #[test]
    fn records_become_the_same_items_a_whole_tree_gave() {
        let payload = json!({
            "type": "glucose",
            "user": {"user_id": "u1", "provider": "DEXCOM"},
            "data": [
                {"v": 1.5e300, "n": -3, "big": 18446744073709551615u64, "s": "caf\u{e9}", "z": null,
                 "nested": {"a": [true, {"b": []}]}},
                {"metadata": {"summary_id": 7}, "v": 0.1}
            ]
        });
        let streamed = project_all(&payload).expect("projects");
        let whole = plan(payload, 1_000);
        assert_eq!(streamed.len(), whole.len());
        for (streamed, whole) in streamed.iter().zip(whole) {
            assert_eq!(
                (&streamed.item.pk, &streamed.item.sk),
                (&whole.pk, &whole.sk)
            );
            let RecordForm::Map(attribute) = &streamed.form else {
                panic!("small records are maps")
            };
            assert_eq!(attribute, &to_attribute(whole.data));
        }
    }

    #[test]
    fn every_terra_example_gets_the_keys_a_whole_tree_gave() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/terra");
        let mut payloads: Vec<Value> = std::fs::read_dir(dir)
            .expect("fixtures present")
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let name = path.file_name()?.to_str()?.to_owned();
                (name.starts_with("openapi_") && name.ends_with(".json"))
                    .then(|| serde_json::from_slice(&std::fs::read(&path).ok()?).ok())?
            })
            .collect();
        assert!(payloads.len() >= 15, "{}", payloads.len());
        // Ids that are not text are no ids, whichever way they are read.
        payloads.push(json!({"type": "activity", "user": {"user_id": "u"}, "data": [
            {"metadata": {"summary_id": 7}}, {"metadata": "m"}, [1], {"metadata": {"summary_id": "s"}}
        ]}));
        payloads.push(json!({"type": "planned_workout", "user": {"user_id": "u"}, "data": [
            {"metadata": {"id": "m1"}}, {"id": "i1"}, {"planned_workout_id": {"x": 1}, "id": "i2"}
        ]}));
        for payload in payloads {
            let streamed: Vec<(String, String)> = project_all(&payload)
                .expect("projects")
                .into_iter()
                .map(|ready| (ready.item.pk, ready.item.sk))
                .collect();
            let whole: Vec<(String, String)> = plan(payload.clone(), 1_000)
                .into_iter()
                .map(|item| (item.pk, item.sk))
                .collect();
            assert_eq!(streamed, whole, "{payload}");
        }
    }

    #[test]
    fn the_envelope_may_come_after_the_records() {
        let payload = json!({"data": [{"metadata": {"summary_id": "s1"}}], "type": "activity", "user": {"user_id": "u1"}});
        let items = project_all(&payload).expect("projects");
        assert_eq!(items[0].item.sk, "ACTIVITY#s1");
    }

    #[test]
    fn too_many_records_are_refused_before_any_item_is_made() {
        let records: Vec<Value> = (0..11).map(|i| json!({"v": i})).collect();
        let payload = json!({"type": "daily", "user": {"user_id": "u1"}, "data": records});
        assert_eq!(
            project_all(&payload).err(),
            Some(ProjectionError::TooManyItems {
                records: 11,
                limit: 10
            })
        );
    }

    #[test]
    fn a_large_event_without_records_is_refused_not_built() {
        let payload =
            json!({"type": "auth", "user": {"user_id": "u1"}, "junk": "x".repeat(WHOLE_EVENT_MAX)});
        assert!(matches!(
            project_all(&payload),
            Err(ProjectionError::EventTooLarge { .. })
        ));
        let huge_user = json!({"type": "daily", "user": {"user_id": "u1", "junk": "x".repeat(ENVELOPE_FIELD_MAX)}, "data": []});
        assert!(matches!(
            project_all(&huge_user),
            Err(ProjectionError::EnvelopeTooLarge { field: "user", .. })
        ));
    }

    #[test]
    fn large_records_are_compressed_or_left_to_a_pointer() {
        let compressible = "a".repeat(MAP_FORM_MAX_JSON);
        assert!(matches!(
            compressed_form(compressible.as_bytes()),
            RecordForm::Gzip(_)
        ));
        // Incompressible text well past the limit stops early.
        let mut noise = String::new();
        let mut state = 0x2545_f491_u64;
        while noise.len() < 4 * GZIP_FORM_MAX {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            noise.push_str(&format!("{state:x}"));
        }
        match compressed_form(noise.as_bytes()) {
            RecordForm::PointerOnly { compressed_over } => {
                assert!(compressed_over > GZIP_FORM_MAX && compressed_over < 2 * GZIP_FORM_MAX)
            }
            _ => panic!("incompressible records need a pointer"),
        }
    }

    #[test]
    fn the_window_bounds_what_is_converted_ahead_of_the_writers() {
        use std::sync::Mutex;
        use std::sync::atomic::{AtomicBool, Ordering};
        let records: Vec<Value> = (0..8)
            .map(|i| json!({"v": i, "pad": "p".repeat(WINDOW_BYTES / 4)}))
            .collect();
        let payload = serde_json::to_vec(
            &json!({"type": "daily", "user": {"user_id": "u1"}, "data": records}),
        )
        .expect("serialises");
        let window = window();
        /// Holds what it is given, as writers that have not finished would,
        /// until told to let go.
        struct Writers<'a> {
            held: &'a Mutex<Vec<ReadyItem>>,
            done: &'a AtomicBool,
        }
        impl ItemSink for Writers<'_> {
            fn send(&mut self, item: ReadyItem) -> bool {
                if !self.done.load(Ordering::SeqCst) {
                    self.held.lock().expect("not poisoned").push(item);
                }
                true
            }
        }
        let held = Mutex::new(Vec::new());
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let planner = scope.spawn(|| {
                let mut writers = Writers {
                    held: &held,
                    done: &done,
                };
                project(&payload, 1, 100, &window, &mut writers)
            });
            // Each record is a little over a quarter of the window: three
            // fit, and the planner then waits however long it is given.
            let held_now = || held.lock().expect("not poisoned").len();
            let started = std::time::Instant::now();
            while held_now() < 3 && started.elapsed() < std::time::Duration::from_secs(20) {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert_eq!(held_now(), 3);
            done.store(true, Ordering::SeqCst);
            held.lock().expect("not poisoned").clear();
            planner.join().expect("planner").expect("projects");
        });
    }
}
