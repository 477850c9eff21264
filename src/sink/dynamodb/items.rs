//! The DynamoDB item model: which items a Terra payload becomes, and their keys.
//!
//! One item per Terra record under its user (`pk = USER#{user_id}`), keyed by
//! the record's identity within that user, so a re-sent record (Terra re-sends
//! supersets of earlier data) replaces the earlier version. Lifecycle events
//! become an event item plus an upsert of the user's `PROFILE` item.

use std::borrow::Cow;
use std::fmt;

use aws_sdk_dynamodb::types::AttributeValue;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::projection::LooseText;
use crate::digest::sha256_hex;

/// The partition for events that carry no user (e.g. `auth_cancelled`, lab reports).
pub const NO_USER_PK: &str = "NO_USER";
pub const PROFILE_SK: &str = "PROFILE";

/// One item to write, before it becomes DynamoDB attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedItem {
    pub pk: String,
    pub sk: String,
    pub event_type: String,
    pub user_id: Option<String>,
    pub provider: Option<String>,
    pub reference_id: Option<String>,
    /// The record itself (a `data[]` element, the athlete, the whole event, or
    /// for profiles the user object). `Null` once its attributes are made, and
    /// for a `data[]` record planned from the payload's bytes, whose
    /// attributes are made straight from its JSON.
    pub data: Value,
    /// Position of the record in the payload's `data[]`, for S3 pointers.
    pub data_index: Option<usize>,
    /// Extra top-level attributes (profile fields).
    pub extra: Map<String, Value>,
}

/// The fields a record's identity can come from. Read without building the
/// record: anything but text where an id is expected counts as no id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecordIds {
    summary_id: LooseText,
    start_time: LooseText,
    end_time: LooseText,
    metadata_id: LooseText,
    timestamp: LooseText,
    planned_workout_id: LooseText,
    id: LooseText,
}

impl RecordIds {
    /// The same fields, from a record already converted to DynamoDB's types.
    pub fn from_attribute(record: &AttributeValue) -> Self {
        let text = |value: Option<&AttributeValue>| {
            LooseText(match value {
                Some(AttributeValue::S(text)) => Some(text.clone()),
                _ => None,
            })
        };
        let AttributeValue::M(fields) = record else {
            return Self::default();
        };
        let metadata = match fields.get("metadata") {
            Some(AttributeValue::M(metadata)) => Some(metadata),
            _ => None,
        };
        let in_metadata = |name: &str| text(metadata.and_then(|m| m.get(name)));
        Self {
            summary_id: in_metadata("summary_id"),
            start_time: in_metadata("start_time"),
            end_time: in_metadata("end_time"),
            metadata_id: in_metadata("id"),
            timestamp: text(fields.get("timestamp")),
            planned_workout_id: text(fields.get("planned_workout_id")),
            id: text(fields.get("id")),
        }
    }
}

impl<'de> Deserialize<'de> for RecordIds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RecordIdsVisitor { metadata: false })
    }
}

/// Reads a record's top level, or (`metadata`) its `metadata` object.
struct RecordIdsVisitor {
    metadata: bool,
}

impl<'de> Visitor<'de> for RecordIdsVisitor {
    type Value = RecordIds;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RecordIds, A::Error> {
        let mut ids = RecordIds::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let slot = match (self.metadata, key.as_ref()) {
                (false, "metadata") => {
                    let metadata = map.next_value_seed(RecordIdsVisitor { metadata: true })?;
                    ids.summary_id = metadata.summary_id;
                    ids.start_time = metadata.start_time;
                    ids.end_time = metadata.end_time;
                    ids.metadata_id = metadata.metadata_id;
                    continue;
                }
                (false, "timestamp") => &mut ids.timestamp,
                (false, "planned_workout_id") => &mut ids.planned_workout_id,
                (false, "id") => &mut ids.id,
                (true, "summary_id") => &mut ids.summary_id,
                (true, "start_time") => &mut ids.start_time,
                (true, "end_time") => &mut ids.end_time,
                (true, "id") => &mut ids.metadata_id,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = map.next_value()?;
        }
        Ok(ids)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RecordIds, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RecordIds::default())
    }
    fn visit_bool<E>(self, _: bool) -> Result<RecordIds, E> {
        Ok(RecordIds::default())
    }
    fn visit_i64<E>(self, _: i64) -> Result<RecordIds, E> {
        Ok(RecordIds::default())
    }
    fn visit_u64<E>(self, _: u64) -> Result<RecordIds, E> {
        Ok(RecordIds::default())
    }
    fn visit_f64<E>(self, _: f64) -> Result<RecordIds, E> {
        Ok(RecordIds::default())
    }
    fn visit_str<E>(self, _: &str) -> Result<RecordIds, E> {
        Ok(RecordIds::default())
    }
    fn visit_unit<E>(self) -> Result<RecordIds, E> {
        Ok(RecordIds::default())
    }
}

impl<'de> DeserializeSeed<'de> for RecordIdsVisitor {
    type Value = RecordIds;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RecordIds, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// Data types whose records carry their own identity.
fn record_key(event_type: &str, ids: &RecordIds) -> Option<String> {
    let text = |field: &LooseText| {
        field
            .0
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    match event_type {
        "activity" | "health_observation" => text(&ids.summary_id),
        "sleep" => text(&ids.summary_id).or_else(|| {
            Some(format!(
                "{}#{}",
                text(&ids.start_time)?,
                text(&ids.end_time)?
            ))
        }),
        "daily" | "body" | "nutrition" | "menstruation" => {
            text(&ids.start_time).map(|t| t.chars().take(10).collect())
        }
        "hormone" => text(&ids.timestamp),
        "planned_workout" => text(&ids.planned_workout_id)
            .or_else(|| text(&ids.metadata_id))
            .or_else(|| text(&ids.id)),
        _ => None,
    }
}

/// What every item of a user's data payload shares.
#[derive(Debug, Clone)]
pub struct RecordsHeader {
    event_type: String,
    tag: String,
    pk: String,
    user_id: Option<String>,
    provider: Option<String>,
    reference_id: Option<String>,
}

/// The header of a payload whose `data[]` records each become an item: one
/// with a user object naming the user.
pub fn records_header(
    kind: Option<&Value>,
    user: Option<&Value>,
    reference_id: Option<&Value>,
) -> Option<RecordsHeader> {
    let user = user.filter(|u| u.is_object());
    let user_id = user_text(user, "user_id")?;
    let event_type = kind.and_then(Value::as_str).unwrap_or("unknown").to_owned();
    Some(RecordsHeader {
        tag: type_tag(&event_type),
        pk: user_partition_key(&user_id),
        user_id: Some(user_id),
        provider: user_text(user, "provider"),
        reference_id: user_text(user, "reference_id")
            .or_else(|| reference_id.and_then(Value::as_str).map(str::to_owned)),
        event_type,
    })
}

/// The item of the `index`th record, its `data` left for the caller to fill.
/// `canonical` gives the bytes a record without its own identity is keyed by.
pub fn record_item(
    header: &RecordsHeader,
    index: usize,
    ids: &RecordIds,
    canonical: impl FnOnce() -> Vec<u8>,
) -> PlannedItem {
    let id = record_key(&header.event_type, ids)
        .unwrap_or_else(|| sha256_hex(&canonical())[..32].to_owned());
    PlannedItem {
        pk: header.pk.clone(),
        sk: format!("{}#{}", header.tag, key_part(&id)),
        event_type: header.event_type.clone(),
        user_id: header.user_id.clone(),
        provider: header.provider.clone(),
        reference_id: header.reference_id.clone(),
        data: Value::Null,
        data_index: Some(index),
        extra: Map::new(),
    }
}

/// Longest id used verbatim in a key; longer ones (never Terra's, which are
/// UUIDs and timestamps) are hashed, so every key stays far inside DynamoDB's
/// limits (partition key 2048 bytes, sort key 1024) whatever a payload holds.
const MAX_KEY_PART: usize = 256;

/// The partition every item of `user_id` is under.
pub fn user_partition_key(user_id: &str) -> String {
    format!("USER#{}", key_part(user_id))
}

/// `text`, or `sha256:{hex}` of it when it is too long for a key.
fn key_part(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_KEY_PART {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(format!("sha256:{}", sha256_hex(text.as_bytes())))
    }
}

/// `sk` type tag: `ACTIVITY`, `LAB_REPORT_COMPLETED`…
fn type_tag(event_type: &str) -> String {
    event_type
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A stable short hash of a JSON value, from its canonical JSON.
pub fn stable_hash(value: &Value) -> String {
    sha256_hex(&canonical_json(value))[..32].to_owned()
}

/// JSON with every object's keys sorted, whatever order the value holds
/// them in. Keys derive from it, so it must not depend on serde_json's
/// `preserve_order` feature, which any dependency may switch on (the AWS
/// SDK's test utilities do): with it, a map's order is its insertion order,
/// and a redelivered record would get a new key.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(&SortedKeys(value)).unwrap_or_default()
}

struct SortedKeys<'a>(&'a Value);

impl serde::Serialize for SortedKeys<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let mut out = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    out.serialize_entry(key, &SortedKeys(value))?;
                }
                out.end()
            }
            Value::Array(values) => {
                let mut out = serializer.serialize_seq(Some(values.len()))?;
                for value in values {
                    out.serialize_element(&SortedKeys(value))?;
                }
                out.end()
            }
            scalar => scalar.serialize(serializer),
        }
    }
}

fn user_text(user: Option<&Value>, field: &str) -> Option<String> {
    user?
        .get(field)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn sent_time(sent_at_ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(sent_at_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| sent_at_ms.to_string())
}

/// Plans the items for one payload. `payload` is the whole Terra event; its
/// records move into the items rather than being copied (they can be large).
pub fn plan(mut payload: Value, sent_at_ms: u64) -> Vec<PlannedItem> {
    let user_id = user_text(payload.get("user").filter(|u| u.is_object()), "user_id");
    let records = match (&user_id, payload.get_mut("data")) {
        (Some(_), Some(Value::Array(records))) => Some(std::mem::take(records)),
        _ => None,
    };
    let payload = &payload;
    let event_type = payload
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned();
    let tag = type_tag(&event_type);
    let user = payload.get("user").filter(|u| u.is_object());
    let base = |pk: String, sk: String, user: Option<&Value>, data: Value| PlannedItem {
        pk,
        sk,
        event_type: event_type.clone(),
        user_id: user_text(user, "user_id"),
        provider: user_text(user, "provider"),
        reference_id: user_text(user, "reference_id").or_else(|| {
            payload
                .get("reference_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        }),
        data,
        data_index: None,
        extra: Map::new(),
    };

    if let (Some(header), Some(records)) = (
        records_header(payload.get("type"), user, payload.get("reference_id")),
        records,
    ) {
        return records
            .into_iter()
            .enumerate()
            .map(|(index, record)| {
                let ids = RecordIds::deserialize(&record).unwrap_or_default();
                let mut item = record_item(&header, index, &ids, || canonical_json(&record));
                item.data = record;
                item
            })
            .collect();
    }
    if let (Some(user_id), Some(athlete)) = (&user_id, payload.get("athlete")) {
        return vec![base(
            user_partition_key(user_id),
            "ATHLETE".into(),
            user,
            athlete.clone(),
        )];
    }

    // Lifecycle and operational events. user_reauth names the user new_user.
    let new_user = payload.get("new_user").filter(|u| u.is_object());
    let subject = user.or(new_user);
    let Some(subject_id) = user_text(subject, "user_id") else {
        let sk = format!(
            "EVENT#{}#{tag}#{}",
            sent_time(sent_at_ms),
            &stable_hash(payload)[..8]
        );
        return vec![base(NO_USER_PK.into(), sk, None, payload.clone())];
    };
    let pk = user_partition_key(&subject_id);
    let mut items = vec![base(
        pk.clone(),
        format!("EVENT#{}#{tag}", sent_time(sent_at_ms)),
        subject,
        payload.clone(),
    )];
    let deactivates = matches!(event_type.as_str(), "deauth" | "access_revoked");
    items.push(profile(
        &base,
        pk,
        subject,
        &event_type,
        sent_at_ms,
        deactivates.then_some(false),
        None,
    ));
    if let Some(old_user) = payload.get("old_user").filter(|u| u.is_object())
        && let Some(old_id) = user_text(Some(old_user), "user_id")
        && old_id != subject_id
    {
        items.push(profile(
            &base,
            user_partition_key(&old_id),
            Some(old_user),
            &event_type,
            sent_at_ms,
            Some(false),
            Some(&subject_id),
        ));
    }
    items
}

fn profile(
    base: &impl Fn(String, String, Option<&Value>, Value) -> PlannedItem,
    pk: String,
    user: Option<&Value>,
    event_type: &str,
    sent_at_ms: u64,
    active_override: Option<bool>,
    replaced_by: Option<&str>,
) -> PlannedItem {
    let user_object = user.cloned().unwrap_or(Value::Null);
    let mut item = base(pk, PROFILE_SK.into(), user, user_object.clone());
    // The reference_id of a profile is the user's own, never the event's.
    item.reference_id = user_text(user, "reference_id");
    let active = active_override
        .or_else(|| user_object.get("active").and_then(Value::as_bool))
        .unwrap_or(true);
    let mut extra = json!({
        "active": active,
        "last_event_type": event_type,
        "last_event_at": sent_at_ms,
    });
    if let Some(scopes) = user_text(user, "scopes") {
        extra["scopes"] = Value::String(scopes);
    }
    if let Some(reference_id) = &item.reference_id {
        extra["gsi1pk"] = Value::String(format!("REF#{}", key_part(reference_id)));
    }
    if let Some(new_id) = replaced_by {
        extra["replaced_by"] = Value::String(new_id.to_owned());
    }
    if let Value::Object(extra) = extra {
        item.extra = extra;
    }
    item
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn assert_valid_keys(items: &[PlannedItem]) -> Result<(), TestCaseError> {
        for item in items {
            prop_assert!(
                !item.pk.is_empty() && item.pk.len() <= 2048,
                "pk {}",
                item.pk.len()
            );
            prop_assert!(
                !item.sk.is_empty() && item.sk.len() <= 1024,
                "sk {}",
                item.sk.len()
            );
            if let Some(Value::String(gsi1pk)) = item.extra.get("gsi1pk") {
                prop_assert!(!gsi1pk.is_empty() && gsi1pk.len() <= 2048);
            }
        }
        Ok(())
    }

    proptest! {
        /// Whatever ids and types a payload carries, every planned item has
        /// keys DynamoDB accepts.
        #[test]
        fn every_item_key_is_valid(
            event_type in prop_oneof![
                Just("activity".to_owned()), Just("sleep".to_owned()), Just("daily".to_owned()),
                Just("auth".to_owned()), Just("user_reauth".to_owned()), any::<String>(),
            ],
            user_id in any::<String>(),
            reference_id in any::<String>(),
            record_id in any::<String>(),
            long in "[a-z]{3000}",
            use_long in any::<bool>(),
            sent_at_ms in any::<u64>(),
        ) {
            let user_id = if use_long { long.clone() } else { user_id };
            let record_id = if use_long { long.clone() } else { record_id };
            let user = json!({"user_id": user_id, "reference_id": reference_id, "provider": "X"});
            let with_data = json!({
                "type": event_type, "user": user,
                "data": [{"metadata": {"summary_id": record_id, "start_time": record_id, "end_time": record_id}}]
            });
            assert_valid_keys(&plan(with_data, sent_at_ms))?;
            let lifecycle = json!({
                "type": event_type, "user": user,
                "old_user": {"user_id": record_id}, "new_user": user,
            });
            assert_valid_keys(&plan(lifecycle, sent_at_ms))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test builds have serde_json's `preserve_order` (through the AWS SDK's
    /// test utilities), so maps here keep the order keys were inserted in.
    #[test]
    fn canonical_json_sorts_keys_whatever_order_they_were_inserted_in() {
        let mut inner = Map::new();
        inner.insert("z".into(), json!(1));
        inner.insert("a".into(), json!([{"y": 2, "b": 3}]));
        let mut outer = Map::new();
        outer.insert("m".into(), Value::Object(inner));
        outer.insert("c".into(), json!(null));
        let value = Value::Object(outer);
        assert_eq!(
            String::from_utf8(canonical_json(&value)).expect("UTF-8"),
            r#"{"c":null,"m":{"a":[{"b":3,"y":2}],"z":1}}"#
        );
        assert_eq!(
            stable_hash(&value),
            stable_hash(&json!({"c": null, "m": {"a": [{"b": 3, "y": 2}], "z": 1}}))
        );
    }

    const USER: &str = "USER#40f7b0e1-89e2-43ac-a5b8-1e29c8d47cad";
    const SENT: u64 = 1_782_897_153_000;

    fn fixture(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/terra/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("JSON fixture")
    }

    fn keys(items: &[PlannedItem]) -> Vec<(String, String)> {
        items.iter().map(|i| (i.pk.clone(), i.sk.clone())).collect()
    }

    fn key(pk: &str, sk: &str) -> (String, String) {
        (pk.to_owned(), sk.to_owned())
    }

    #[test]
    fn data_events_key_by_record_identity() {
        let cases = [
            (
                "openapi_activity.json",
                "ACTIVITY#123e4567-e89b-12d3-a456-426614174000",
            ),
            (
                "openapi_sleep.json",
                "SLEEP#2026-06-30T23:12:00.000000+01:00#2026-07-01T07:02:00.000000+01:00",
            ),
            ("openapi_daily.json", "DAILY#2026-07-01"),
            ("openapi_body.json", "BODY#2026-07-01"),
            ("openapi_nutrition.json", "NUTRITION#2026-07-01"),
            ("openapi_menstruation.json", "MENSTRUATION#2026-07-01"),
            ("openapi_athlete.json", "ATHLETE"),
        ];
        for (name, sk) in cases {
            let items = plan(fixture(name), SENT);
            assert_eq!(keys(&items), [key(USER, sk)], "{name}");
            let item = &items[0];
            assert_eq!(item.provider.as_deref(), Some("GARMIN"), "{name}");
            assert_eq!(
                item.reference_id.as_deref(),
                Some("your-user-123"),
                "{name}"
            );
        }
    }

    #[test]
    fn other_record_types() {
        let user = json!({"user_id": "u1", "provider": "OURA"});
        let hormone = json!({"type": "hormone", "user": user, "data": [{"timestamp": "2026-07-01T08:00:00Z", "lh": 3}]});
        assert_eq!(
            keys(&plan(hormone, SENT)),
            [key("USER#u1", "HORMONE#2026-07-01T08:00:00Z")]
        );
        let workout = json!({"type": "planned_workout", "user": user, "data": [{"planned_workout_id": "pw-9"}]});
        assert_eq!(
            keys(&plan(workout, SENT)),
            [key("USER#u1", "PLANNED_WORKOUT#pw-9")]
        );
        let observation = json!({"type": "health_observation", "user": user, "data": [{"metadata": {"summary_id": "s1"}}]});
        assert_eq!(
            keys(&plan(observation, SENT)),
            [key("USER#u1", "HEALTH_OBSERVATION#s1")]
        );
    }

    #[test]
    fn unknown_types_and_records_without_identity_are_hashed_not_dropped() {
        let payload =
            json!({"type": "glucose", "user": {"user_id": "u1"}, "data": [{"v": 1}, {"v": 2}]});
        let items = plan(payload.clone(), SENT);
        assert_eq!(items.len(), 2);
        assert!(
            items
                .iter()
                .all(|i| i.sk.starts_with("GLUCOSE#") && i.sk.len() == "GLUCOSE#".len() + 32)
        );
        assert_ne!(items[0].sk, items[1].sk);
        assert_eq!(
            plan(payload, SENT + 1)[0].sk,
            items[0].sk,
            "stable across deliveries"
        );
        let activity =
            json!({"type": "activity", "user": {"user_id": "u1"}, "data": [{"metadata": {}}]});
        assert!(plan(activity, SENT)[0].sk.starts_with("ACTIVITY#"));
    }

    #[test]
    fn lifecycle_events_write_an_event_and_the_profile() {
        let items = plan(fixture("openapi_auth__authSuccess.json"), SENT);
        assert_eq!(
            keys(&items),
            [
                key(USER, "EVENT#2026-07-01T09:12:33Z#AUTH"),
                key(USER, PROFILE_SK)
            ]
        );
        let profile = &items[1];
        assert_eq!(profile.extra["active"], true);
        assert_eq!(profile.extra["gsi1pk"], "REF#your-user-123");
        assert_eq!(profile.extra["scopes"], "ACTIVITY_EXPORT,HEALTH_EXPORT");
        assert_eq!(profile.extra["last_event_type"], "auth");

        for name in ["openapi_deauth.json", "openapi_access_revoked.json"] {
            let items = plan(fixture(name), SENT);
            assert_eq!(items[1].extra["active"], false, "{name}");
        }
        let connection = plan(fixture("openapi_connection_error.json"), SENT);
        assert_eq!(connection[1].extra["active"], true);
    }

    #[test]
    fn reauth_creates_the_new_profile_and_retires_the_old() {
        let items = plan(fixture("openapi_user_reauth.json"), SENT);
        let new = "USER#9c8b7a65-4321-4fed-a0b9-87c6d5e4f321";
        assert_eq!(
            keys(&items),
            [
                key(new, "EVENT#2026-07-01T09:12:33Z#USER_REAUTH"),
                key(new, PROFILE_SK),
                key(USER, PROFILE_SK),
            ]
        );
        assert_eq!(items[1].extra["active"], true);
        assert_eq!(items[2].extra["active"], false);
        assert_eq!(
            items[2].extra["replaced_by"],
            "9c8b7a65-4321-4fed-a0b9-87c6d5e4f321"
        );
    }

    #[test]
    fn events_without_a_user_are_kept() {
        for name in [
            "openapi_auth__authCancelled.json",
            "openapi_lab_report__completed.json",
        ] {
            let items = plan(fixture(name), SENT);
            assert_eq!(items.len(), 1, "{name}");
            assert_eq!(items[0].pk, NO_USER_PK, "{name}");
            assert!(
                items[0].sk.starts_with("EVENT#2026-07-01T09:12:33Z#"),
                "{name}"
            );
        }
        let cancelled = plan(fixture("openapi_auth__authCancelled.json"), SENT);
        assert_eq!(cancelled[0].reference_id.as_deref(), Some("your-user-123"));
    }
}
