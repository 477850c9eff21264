//! Terra's queue message: the small JSON pointer carried in an SQS body or a
//! Kafka value, `{"type":"s3_payload","url":"…","expires_in":600}`.
//!
//! Decoding is lenient about what Terra may add (unknown fields are ignored)
//! and strict about what we rely on (a known `type`, a parseable `url`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use url::Url;

use crate::outcome::{Classify, FailureClass, Retry};
use crate::redact::json_error_position;

/// A decoded queue message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerraMessage {
    /// Terra checking that the destination works: nothing to fetch.
    Healthcheck,
    Payload(PayloadPointer),
}

/// Where a payload waits, and for how long.
#[derive(Clone, PartialEq, Eq)]
pub struct PayloadPointer {
    /// The pre-signed URL. A credential: never log or format it whole; use
    /// [`crate::redact::RedactedUrl`].
    pub url: Url,
    /// Lifetime of the URL from the moment Terra sent the message, when given.
    pub expires_in: Option<Duration>,
    /// Terra's identity for the payload (newer messages only).
    pub payload_reference: Option<String>,
}

impl std::fmt::Debug for PayloadPointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadPointer")
            .field("url", &crate::redact::RedactedUrl(&self.url))
            .field("expires_in", &self.expires_in)
            .field("payload_reference", &self.payload_reference)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message body is empty")]
    EmptyBody,
    /// Carries serde's position, never its text: that can quote the input.
    #[error("message body is not valid JSON ({0})")]
    NotJson(String),
    #[error("message has no string \"type\"")]
    MissingType,
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("s3_payload message has no string \"url\"")]
    MissingUrl,
    #[error("s3_payload message has an unparseable \"url\" ({0})")]
    BadUrl(url::ParseError),
}

impl Classify for MessageError {
    fn class(&self) -> FailureClass {
        FailureClass::Invalid
    }
    fn retry(&self) -> Retry {
        Retry::Permanent
    }
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
    #[serde(default)]
    url: Option<Value>,
    #[serde(default)]
    expires_in: Option<Value>,
    #[serde(default)]
    payload_reference: Option<Value>,
}

/// Longest `type` value quoted back in an error, so a hostile message cannot
/// flood the logs.
const MAX_QUOTED_TYPE: usize = 64;

/// Terra's `payload_reference` of a message that names one, for the log
/// lines about a record decided before its message was decoded.
pub fn payload_reference(body: &[u8]) -> Option<String> {
    match decode(body) {
        Ok(TerraMessage::Payload(pointer)) => pointer.payload_reference,
        _ => None,
    }
}

pub fn decode(body: &[u8]) -> Result<TerraMessage, MessageError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(MessageError::EmptyBody),
        // serde would also accept a struct written as an array.
        Some(b'{') => {}
        Some(_) => return Err(MessageError::NotJson("not a JSON object".into())),
    }
    let wire: WireMessage =
        serde_json::from_slice(body).map_err(|e| MessageError::NotJson(json_error_position(&e)))?;
    let kind = match wire.kind {
        Some(Value::String(kind)) => kind,
        _ => return Err(MessageError::MissingType),
    };
    match kind.as_str() {
        "healthcheck" => Ok(TerraMessage::Healthcheck),
        "s3_payload" => {
            let url = match wire.url {
                Some(Value::String(url)) if !url.trim().is_empty() => url,
                _ => return Err(MessageError::MissingUrl),
            };
            let url = Url::parse(url.trim()).map_err(MessageError::BadUrl)?;
            Ok(TerraMessage::Payload(PayloadPointer {
                url,
                expires_in: wire.expires_in.as_ref().and_then(seconds),
                payload_reference: match wire.payload_reference {
                    Some(Value::String(reference)) if !reference.is_empty() => Some(reference),
                    _ => None,
                },
            }))
        }
        other => Err(MessageError::UnknownType(
            other.chars().take(MAX_QUOTED_TYPE).collect(),
        )),
    }
}

/// The longest lifetime a pre-signed URL can have (S3's limit is 7 days);
/// a larger `expires_in` is nonsense and treated as unknown.
const MAX_URL_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// `expires_in` as Terra sends it: whole seconds, occasionally as a string or
/// a float. Anything else means "unknown", and the URL host decides.
fn seconds(value: &Value) -> Option<Duration> {
    let secs = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|lifetime| *lifetime <= MAX_URL_LIFETIME)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointer(body: &str) -> PayloadPointer {
        match decode(body.as_bytes()) {
            Ok(TerraMessage::Payload(p)) => p,
            other => panic!("expected a payload pointer, got {other:?}"),
        }
    }

    #[test]
    fn decodes_terra_documented_message() {
        let p = pointer(
            r#"{"status":"success","type":"s3_payload","url":"https://presigned-download-url.example.com/a?X-Amz-Signature=s","expires_in":600}"#,
        );
        assert_eq!(p.url.host_str(), Some("presigned-download-url.example.com"));
        assert_eq!(p.expires_in, Some(Duration::from_secs(600)));
        assert_eq!(p.payload_reference, None);
    }

    #[test]
    fn keeps_payload_reference_and_ignores_unknown_fields() {
        let p = pointer(
            r#"{"type":"s3_payload","url":"https://storage.googleapis.com/b/o","expires_in":"300","payload_reference":"bb0a8574","user_id":"u","new_field":{"x":[1]}}"#,
        );
        assert_eq!(p.payload_reference.as_deref(), Some("bb0a8574"));
        assert_eq!(p.expires_in, Some(Duration::from_secs(300)));
        for odd in [
            r#""-5""#,
            "1e300",
            r#""NaN""#,
            "6222222000000000014554249",
            "604801",
        ] {
            let body = format!(r#"{{"type":"s3_payload","url":"https://h/p","expires_in":{odd}}}"#);
            let Ok(TerraMessage::Payload(p)) = decode(body.as_bytes()) else {
                panic!("{odd}: still a pointer");
            };
            assert_eq!(p.expires_in, None, "{odd} is not a lifetime");
        }
    }

    #[test]
    fn healthcheck_needs_no_url() {
        assert_eq!(
            decode(br#"{"type":"healthcheck","status":"success","sent_webhooks_last_hour":42}"#),
            Ok(TerraMessage::Healthcheck)
        );
    }

    #[test]
    fn missing_or_odd_expires_in_is_unknown() {
        assert_eq!(
            pointer(r#"{"type":"s3_payload","url":"https://h/p"}"#).expires_in,
            None
        );
        assert_eq!(
            pointer(r#"{"type":"s3_payload","url":"https://h/p","expires_in":-5}"#).expires_in,
            None
        );
        assert_eq!(
            pointer(r#"{"type":"s3_payload","url":"https://h/p","expires_in":[1]}"#).expires_in,
            None
        );
    }

    #[test]
    fn rejects_bad_messages_with_specific_errors() {
        assert_eq!(decode(b""), Err(MessageError::EmptyBody));
        assert_eq!(decode(b"  \n"), Err(MessageError::EmptyBody));
        assert!(matches!(decode(b"not json"), Err(MessageError::NotJson(_))));
        assert!(matches!(decode(b"[1,2]"), Err(MessageError::NotJson(_))));
        assert_eq!(
            decode(br#"{"url":"https://h/p"}"#),
            Err(MessageError::MissingType)
        );
        assert_eq!(decode(br#"{"type":7}"#), Err(MessageError::MissingType));
        assert_eq!(
            decode(br#"{"type":"s3_payload","expires_in":600}"#),
            Err(MessageError::MissingUrl)
        );
        assert_eq!(
            decode(br#"{"type":"s3_payload","url":""}"#),
            Err(MessageError::MissingUrl)
        );
        assert!(matches!(
            decode(br#"{"type":"s3_payload","url":"not a url"}"#),
            Err(MessageError::BadUrl(_))
        ));
        assert_eq!(
            decode(br#"{"type":"webhook_v9"}"#),
            Err(MessageError::UnknownType("webhook_v9".into()))
        );
    }

    #[test]
    fn errors_never_quote_the_url() {
        let secret = "X-Amz-Signature=deadbeef";
        for body in [
            format!(r#"{{"type":"s3_payload","url":"https://h/p?{secret}" "#),
            format!(r#"{{"type":"s3_payload","url":"https://h/p?{secret}","expires_in":{{]"#),
            format!(r#"{{"type":"s3_payload","url":"http s://h/p?{secret}"}}"#),
        ] {
            let error = decode(body.as_bytes()).expect_err("must fail");
            assert!(!error.to_string().contains(secret), "{error}");
        }
    }

    #[test]
    fn debug_of_pointer_hides_query() {
        let p = pointer(r#"{"type":"s3_payload","url":"https://h/p?X-Amz-Signature=deadbeef"}"#);
        assert!(!format!("{p:?}").contains("deadbeef"));
    }
}
