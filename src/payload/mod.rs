//! The payload behind the URL (the same JSON a Terra webhook carries) and the
//! names it is stored under.
//!
//! Only the fields needed to describe and name the payload are decoded; the
//! rest is checked as strictly as a full parse would, but never built into a
//! tree.

mod incremental;

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::outcome::{Classify, FailureClass, Retry};
use crate::redact::json_error_position;

pub use incremental::IncrementalInspector;

/// What the sinks need to know about a payload besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PayloadSummary {
    /// Terra's event type: `activity`, `sleep`, `auth`, `lab_report.completed`…
    pub event_type: String,
    pub user_id: Option<String>,
    pub provider: Option<String>,
    pub reference_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Carries serde's position, never its text: that can quote health data.
    #[error("payload is not valid JSON ({0})")]
    NotJson(String),
    #[error("payload has no string \"type\"")]
    MissingType,
    #[error("payload is not valid UTF-8 (byte {0})")]
    NotUtf8(usize),
    #[error("payload nests deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("payload has a number longer than {limit} characters")]
    NumberTooLong { limit: usize },
    #[error("payload's {field} is longer than {limit} bytes")]
    EnvelopeFieldTooLong { field: &'static str, limit: usize },
}

/// Deepest nesting of arrays and objects accepted. Terra's payloads nest
/// about six levels; the limit keeps well inside serde_json's recursion limit
/// (128), so every sink can parse what the archive accepted.
pub const MAX_NESTING: usize = 100;

/// Longest number accepted, in characters. serde_json parses longer ones, but
/// no health metric needs them, and a payload read in pieces must hold a
/// number whole to judge its range.
pub const MAX_NUMBER_CHARS: usize = 4096;

/// Longest `type`, user id, provider or reference id accepted, in bytes: a
/// payload read in pieces holds them until its end.
pub const SUMMARY_FIELD_MAX: usize = 64 * 1024;

impl Classify for PayloadError {
    fn class(&self) -> FailureClass {
        FailureClass::Invalid
    }
    fn retry(&self) -> Retry {
        Retry::Permanent
    }
}

/// The fields the summary needs; everything else is skipped as `Skip`.
#[derive(Default)]
struct Envelope {
    kind: Option<Value>,
    user: Option<Value>,
    new_user: Option<Value>,
    reference_id: Option<Value>,
}

struct EnvelopeVisitor<Skip>(PhantomData<Skip>);

impl<'de, Skip: Deserialize<'de>> Visitor<'de> for EnvelopeVisitor<Skip> {
    type Value = Envelope;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let mut envelope = Envelope::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let slot = match key.as_ref() {
                "type" => &mut envelope.kind,
                "user" => &mut envelope.user,
                "new_user" => &mut envelope.new_user,
                "reference_id" => &mut envelope.reference_id,
                _ => {
                    map.next_value::<Skip>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value()?);
        }
        Ok(envelope)
    }
}

/// Reads the envelope of a whole JSON document, skipping the other fields
/// as `Skip`.
fn read_envelope<'de, Skip: Deserialize<'de>>(body: &'de [u8]) -> serde_json::Result<Envelope> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let envelope = deserializer.deserialize_map(EnvelopeVisitor::<Skip>(PhantomData))?;
    deserializer.end()?;
    Ok(envelope)
}

/// Any JSON value, checked exactly as parsing it into a `serde_json::Value`
/// would check it (numbers in range, strings valid), but building nothing:
/// what the archive accepts, every sink can parse. Recursion is bounded by
/// the nesting check that runs first.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(CheckedVisitor)
            .map(|()| Checked)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(())
    }
}

/// Validates the whole payload as a JSON object and extracts its summary.
pub fn inspect(body: &[u8]) -> Result<PayloadSummary, PayloadError> {
    // serde would also accept a struct written as an array.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(PayloadError::NotJson("not a JSON object".into()));
    }
    // serde_json skips fields without checking their text, their depth, or
    // that their numbers fit an f64, all of which a sink parsing the payload
    // would trip on: what the archive accepts, every sink can parse. UTF-8
    // and depth are checked here; the rare payload whose numbers or escapes
    // could fail a full parse is walked the slow way, by [`Checked`].
    if let Err(error) = std::str::from_utf8(body) {
        return Err(PayloadError::NotUtf8(error.valid_up_to()));
    }
    let scan = scan(body, MAX_NESTING);
    if scan.too_deep {
        return Err(PayloadError::TooDeep { limit: MAX_NESTING });
    }
    if scan.number_too_long {
        return Err(PayloadError::NumberTooLong {
            limit: MAX_NUMBER_CHARS,
        });
    }
    let envelope = if scan.needs_full_checks {
        read_envelope::<Checked>(body)
    } else {
        read_envelope::<IgnoredAny>(body)
    }
    .map_err(|e| PayloadError::NotJson(json_error_position(&e)))?;
    let event_type = match envelope.kind {
        Some(Value::String(kind)) if !kind.is_empty() => kind,
        _ => return Err(PayloadError::MissingType),
    };
    // user_reauth carries the user as new_user; auth_cancelled has none.
    let user = envelope.user.or(envelope.new_user);
    let user_field = |name: &str| {
        user.as_ref()
            .and_then(|u| u.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let summary = PayloadSummary {
        user_id: user_field("user_id"),
        provider: user_field("provider"),
        reference_id: user_field("reference_id").or(match envelope.reference_id {
            Some(Value::String(reference)) => Some(reference),
            _ => None,
        }),
        event_type,
    };
    summary.check_field_lengths()?;
    Ok(summary)
}

impl PayloadSummary {
    fn check_field_lengths(&self) -> Result<(), PayloadError> {
        for (field, value) in [
            ("type", Some(&self.event_type)),
            ("user.user_id", self.user_id.as_ref()),
            ("user.provider", self.provider.as_ref()),
            ("reference_id", self.reference_id.as_ref()),
        ] {
            if value.is_some_and(|v| v.len() > SUMMARY_FIELD_MAX) {
                return Err(PayloadError::EnvelopeFieldTooLong {
                    field,
                    limit: SUMMARY_FIELD_MAX,
                });
            }
        }
        Ok(())
    }
}

/// What one pass over the bytes finds. Only valid JSON is judged correctly;
/// the parse that follows rejects the rest.
#[derive(Debug, Default, PartialEq, Eq)]
struct Scan {
    /// Brackets outside strings nest deeper than the limit.
    too_deep: bool,
    /// A `\u` escape (a lone surrogate fails a full parse), a number with an
    /// exponent, or one of [`LONG_NUMBER`] digits or more (either may be out
    /// of an f64's range).
    needs_full_checks: bool,
    /// A number longer than [`MAX_NUMBER_CHARS`].
    number_too_long: bool,
}

/// Digits from which an integer may exceed an f64 (about 1.8e308).
const LONG_NUMBER: usize = 300;

fn scan(body: &[u8], limit: usize) -> Scan {
    let mut found = Scan::default();
    let mut depth = 0usize;
    let mut digits = 0usize;
    // Outside strings, a run of these is a number (or the `e` of a literal).
    let mut number_chars = 0usize;
    let mut at = 0;
    while let Some(&byte) = body.get(at) {
        at += 1;
        let after_digit = digits > 0;
        digits = if byte.is_ascii_digit() { digits + 1 } else { 0 };
        number_chars = if matches!(byte, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
            number_chars + 1
        } else {
            0
        };
        if number_chars > MAX_NUMBER_CHARS {
            found.number_too_long = true;
        }
        match byte {
            b'"' => {
                // Most of a payload is string contents: jump through them.
                at = match string_end(&body[at..], &mut found) {
                    Some(length) => at + length,
                    None => body.len(),
                };
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    found.too_deep = true;
                    return found;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'e' | b'E' if after_digit => found.needs_full_checks = true,
            _ if digits >= LONG_NUMBER => found.needs_full_checks = true,
            _ => {}
        }
    }
    found
}

/// The length of a string's contents and closing quote, given the bytes after
/// its opening quote; `None` when it never closes.
fn string_end(rest: &[u8], found: &mut Scan) -> Option<usize> {
    let mut at = 0;
    loop {
        at += memchr::memchr2(b'"', b'\\', &rest[at..])?;
        if rest[at] == b'"' {
            return Some(at + 1);
        }
        // An escape: the backslash and the character it escapes.
        if rest.get(at + 1) == Some(&b'u') {
            found.needs_full_checks = true;
        }
        at += 2;
        if at >= rest.len() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTIVITY: &str = include_str!("../../tests/fixtures/terra/openapi_activity.json");
    const REAUTH: &str = include_str!("../../tests/fixtures/terra/openapi_user_reauth.json");
    const CANCELLED: &str =
        include_str!("../../tests/fixtures/terra/openapi_auth__authCancelled.json");

    #[test]
    fn refuses_numbers_no_sink_could_parse_even_in_skipped_fields() {
        for body in [
            r#"{"type":"activity","data":[{"distance":1e400}]}"#,
            r#"{"type":"activity","extra":{"x":-1e999},"data":[]}"#,
        ] {
            assert!(
                matches!(inspect(body.as_bytes()), Err(PayloadError::NotJson(_))),
                "{body}"
            );
        }
        assert!(
            inspect(br#"{"type":"activity","data":[{"d":1.5e300,"n":null,"t":true}]}"#).is_ok()
        );
    }

    #[test]
    fn refuses_lone_surrogates_no_sink_could_parse_even_in_skipped_fields() {
        let body = br#"{"type":"activity","data":[{"name":"\ud800"}]}"#;
        assert!(serde_json::from_slice::<Value>(body).is_err());
        assert!(matches!(inspect(body), Err(PayloadError::NotJson(_))));
        assert!(
            inspect(br#"{"type":"activity","data":[{"name":"caf\u00e9 \ud83d\ude00"}]}"#).is_ok()
        );
    }

    #[test]
    fn only_numbers_and_escapes_that_could_fail_a_full_parse_need_full_checks() {
        let needs_full_checks = |body: &str| scan(body.as_bytes(), MAX_NESTING).needs_full_checks;
        for risky in [
            r#"{"d":1e5}"#,
            r#"{"d":[1.5E-7]}"#,
            r#"{"s":"\u0041"}"#,
            &format!(r#"{{"n":{}}}"#, "9".repeat(LONG_NUMBER)),
        ] {
            assert!(needs_full_checks(risky), "{risky}");
        }
        for plain in [
            r#"{"t":true,"f":false,"n":null,"x":-12.5,"s":"1e400 \" \\u0041"}"#,
            &format!(r#"{{"n":{}}}"#, "9".repeat(LONG_NUMBER - 1)),
        ] {
            assert!(!needs_full_checks(plain), "{plain}");
        }
    }

    #[test]
    fn refuses_invalid_utf8_even_in_skipped_fields() {
        let mut body = br#"{"type":"activity","data":[""#.to_vec();
        let at = body.len();
        body.extend([0xff, 0xfe]);
        body.extend(br#""]}"#);
        assert_eq!(inspect(&body), Err(PayloadError::NotUtf8(at)));
    }

    /// An activity whose `data` is `levels` nested arrays.
    pub(super) fn deep(levels: usize) -> String {
        format!(
            r#"{{"type":"activity","data":{}{}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    }

    #[test]
    fn refuses_deep_nesting_before_parsing() {
        assert_eq!(
            inspect(deep(MAX_NESTING - 1).as_bytes()).map(|s| s.event_type),
            Ok("activity".into())
        );
        assert_eq!(
            inspect(deep(MAX_NESTING).as_bytes()),
            Err(PayloadError::TooDeep { limit: MAX_NESTING })
        );
        assert_eq!(
            inspect(deep(100_000).as_bytes()),
            Err(PayloadError::TooDeep { limit: MAX_NESTING })
        );
        // Brackets inside strings (escaped quotes included) do not count.
        let text = format!(
            r#"{{"type":"sleep","note":"\"{}","data":[]}}"#,
            "[".repeat(500)
        );
        assert!(inspect(text.as_bytes()).is_ok());
    }

    #[test]
    fn summarises_a_data_event() {
        assert_eq!(
            inspect(ACTIVITY.as_bytes()),
            Ok(PayloadSummary {
                event_type: "activity".into(),
                user_id: Some("40f7b0e1-89e2-43ac-a5b8-1e29c8d47cad".into()),
                provider: Some("GARMIN".into()),
                reference_id: Some("your-user-123".into()),
            })
        );
    }

    #[test]
    fn summarises_lifecycle_events_without_a_plain_user() {
        let reauth = inspect(REAUTH.as_bytes()).expect("valid");
        assert_eq!(
            reauth.user_id.as_deref(),
            Some("9c8b7a65-4321-4fed-a0b9-87c6d5e4f321")
        );
        let cancelled = inspect(CANCELLED.as_bytes()).expect("valid");
        assert_eq!(cancelled.event_type, "auth_cancelled");
        assert_eq!(cancelled.user_id, None);
        assert_eq!(cancelled.reference_id.as_deref(), Some("your-user-123"));
    }

    #[test]
    fn every_fixture_is_accepted() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/terra");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("fixtures present") {
            let path = entry.expect("readable dir").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            if !name.ends_with(".json") || name.starts_with("docs_sqs_message") {
                continue;
            }
            let body = std::fs::read(&path).expect("readable fixture");
            let summary = inspect(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!summary.event_type.is_empty(), "{name}");
            seen += 1;
        }
        assert!(seen >= 20, "expected the Terra examples, saw {seen}");
    }

    #[test]
    fn null_user_fields_are_absent() {
        let summary =
            inspect(br#"{"type":"daily","user":{"user_id":null,"provider":7},"data":[]}"#)
                .expect("valid");
        assert_eq!((summary.user_id, summary.provider), (None, None));
    }

    #[test]
    fn rejects_what_is_not_a_terra_payload() {
        assert!(matches!(inspect(b"<html>"), Err(PayloadError::NotJson(_))));
        assert!(matches!(
            inspect(b"{\"type\":\"daily\"} trailing"),
            Err(PayloadError::NotJson(_))
        ));
        assert!(matches!(inspect(b"[]"), Err(PayloadError::NotJson(_))));
        assert!(matches!(
            inspect(&[0xff, 0xfe, b'{']),
            Err(PayloadError::NotJson(_))
        ));
        assert_eq!(inspect(br#"{"data":[]}"#), Err(PayloadError::MissingType));
        assert_eq!(
            inspect(br#"{"type":["activity"]}"#),
            Err(PayloadError::MissingType)
        );
    }

    #[test]
    fn errors_do_not_quote_health_data() {
        let error =
            inspect(br#"{"type":"body","user":{"user_id":"u"},"data":[{"weight_kg":72.4,}]}"#)
                .expect_err("trailing comma");
        assert!(!error.to_string().contains("72.4"), "{error}");
    }
}
