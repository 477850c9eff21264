//! Object names for archived payloads.
//!
//! The name derives from the queue message alone (never from the payload), so
//! a redelivered message lands on the same object, and a later retry can find
//! an earlier copy without the URL. Every name stays inside the configured
//! prefix: the variable parts are restricted to a safe alphabet.

use time::OffsetDateTime;
use time::macros::format_description;

use crate::digest::sha256_hex;
use crate::message::PayloadPointer;
use crate::redact::RedactedUrl;

/// A validated `TERRA_S3_PREFIX`: empty, or safe path segments ending in `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyPrefixError {
    #[error("must not start with '/'")]
    LeadingSlash,
    #[error("must not contain empty, '.' or '..' segments")]
    BadSegment,
    #[error("may only contain letters, digits and - _ . / =")]
    BadCharacter,
    #[error("must be at most 512 bytes")]
    TooLong,
}

impl KeyPrefix {
    pub fn parse(raw: &str) -> Result<Self, KeyPrefixError> {
        if raw.is_empty() {
            return Ok(Self(String::new()));
        }
        if raw.len() > 512 {
            return Err(KeyPrefixError::TooLong);
        }
        if raw.starts_with('/') {
            return Err(KeyPrefixError::LeadingSlash);
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=".contains(&b))
        {
            return Err(KeyPrefixError::BadCharacter);
        }
        let trimmed = raw.strip_suffix('/').unwrap_or(raw);
        if trimmed
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(KeyPrefixError::BadSegment);
        }
        Ok(Self(format!("{trimmed}/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The object name of one message's payload, relative to the prefix:
/// `dt={YYYY-MM-DD}/{id}.json`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArchiveName(String);

/// Longest `payload_reference` used verbatim; longer ones are hashed.
const MAX_REFERENCE_LEN: usize = 128;

impl ArchiveName {
    /// `sent_at_ms` is when the message was sent (SQS `SentTimestamp`, Kafka
    /// record timestamp); its UTC date partitions the archive.
    pub fn for_message(pointer: &PayloadPointer, sent_at_ms: u64) -> Self {
        let id = match pointer.payload_reference.as_deref() {
            Some(reference) if is_safe_id(reference) => reference.to_owned(),
            Some(reference) => sha256_hex(reference.as_bytes()),
            // The URL without its query names the object Terra stored; the
            // query is the signature, which differs on every re-send.
            None => sha256_hex(RedactedUrl(&pointer.url).to_string().as_bytes()),
        };
        Self(format!("dt={}/{id}.json", utc_date(sent_at_ms)))
    }

    /// The name an archived object's `key` stands for under `prefix`.
    pub fn of_key(prefix: &str, key: &str) -> Self {
        let name = key.strip_prefix(prefix).unwrap_or(key);
        Self(name.strip_suffix(".gz").unwrap_or(name).to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The full key under `prefix`, with `suffix` (such as `.gz`) appended.
    pub fn key(&self, prefix: &KeyPrefix, suffix: &str) -> String {
        format!("{}{}{suffix}", prefix.as_str(), self.0)
    }
}

fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REFERENCE_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn utc_date(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let date = OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .date();
    date.format(format_description!("[year]-[month]-[day]"))
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use url::Url;

    fn is_safe_key_text(text: &str) -> bool {
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=".contains(&b))
            && !text.split('/').any(|s| s == "." || s == "..")
    }

    proptest! {
        /// Whatever a message holds, its object lands under the prefix with a
        /// valid S3 key made of safe characters only.
        #[test]
        fn no_message_names_a_key_outside_the_prefix(
            raw_prefix in "[a-z0-9/._=-]{0,40}",
            reference in proptest::option::of(any::<String>()),
            path in any::<String>(),
            sent_at_ms in any::<u64>(),
            gzip in any::<bool>(),
        ) {
            let Ok(prefix) = KeyPrefix::parse(&raw_prefix) else {
                return Ok(());
            };
            prop_assert!(is_safe_key_text(prefix.as_str()));
            let mut url = Url::parse("https://bucket.s3.amazonaws.com/").expect("base URL");
            url.set_path(&path);
            let pointer = PayloadPointer { url, expires_in: None, payload_reference: reference };
            let key = ArchiveName::for_message(&pointer, sent_at_ms)
                .key(&prefix, if gzip { ".gz" } else { "" });
            let rest = key.strip_prefix(prefix.as_str()).expect("under the prefix");
            prop_assert!(rest.starts_with("dt="), "{}", key);
            prop_assert!(!rest.starts_with('/'));
            prop_assert!(is_safe_key_text(rest), "{}", key);
            prop_assert_eq!(rest.matches('/').count(), 1, "{}", key);
            prop_assert!(key.len() <= 1024);
        }

        /// Any prefix the parser accepts is safe; anything with a dot segment
        /// or a leading slash is refused.
        #[test]
        fn accepted_prefixes_are_safe(raw in any::<String>()) {
            if let Ok(prefix) = KeyPrefix::parse(&raw) {
                prop_assert!(is_safe_key_text(prefix.as_str()));
                prop_assert!(prefix.as_str().is_empty() || prefix.as_str().ends_with('/'));
                prop_assert!(!prefix.as_str().starts_with('/'));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use url::Url;

    fn pointer(url: &str, reference: Option<&str>) -> PayloadPointer {
        PayloadPointer {
            url: Url::parse(url).expect("valid"),
            expires_in: None,
            payload_reference: reference.map(str::to_owned),
        }
    }

    // 2026-07-01T09:12:33Z
    const SENT: u64 = 1_782_897_153_000;

    #[test]
    fn uses_a_safe_payload_reference() {
        let name = ArchiveName::for_message(
            &pointer(
                "https://h/p?sig=1",
                Some("bb0a8574-ac33-42e5-ae33-49aa52600b1c"),
            ),
            SENT,
        );
        assert_eq!(
            name.as_str(),
            "dt=2026-07-01/bb0a8574-ac33-42e5-ae33-49aa52600b1c.json"
        );
        let prefix = KeyPrefix::parse("terra").expect("valid");
        assert_eq!(
            name.key(&prefix, ".gz"),
            "terra/dt=2026-07-01/bb0a8574-ac33-42e5-ae33-49aa52600b1c.json.gz"
        );
    }

    #[test]
    fn hashes_hostile_references() {
        for reference in [
            "../../etc/passwd",
            "a/b",
            "x".repeat(500).as_str(),
            "é",
            "a b",
        ] {
            let name = ArchiveName::for_message(&pointer("https://h/p", Some(reference)), SENT);
            let id = name
                .as_str()
                .strip_prefix("dt=2026-07-01/")
                .expect("date first");
            assert_eq!(id.len(), 64 + ".json".len(), "{reference}");
            assert!(!id.contains('/') && !id.contains(".."), "{reference}");
        }
    }

    #[test]
    fn without_reference_the_url_minus_query_names_the_payload() {
        let first =
            ArchiveName::for_message(&pointer("https://h/p/a.json?X-Amz-Signature=1", None), SENT);
        let resent =
            ArchiveName::for_message(&pointer("https://h/p/a.json?X-Amz-Signature=2", None), SENT);
        let other =
            ArchiveName::for_message(&pointer("https://h/p/b.json?X-Amz-Signature=1", None), SENT);
        assert_eq!(first, resent);
        assert_ne!(first, other);
        assert!(!first.as_str().contains("Signature"));
    }

    #[test]
    fn dates_partition_by_utc_send_day() {
        let p = pointer("https://h/p", Some("r"));
        assert_eq!(
            ArchiveName::for_message(&p, 0).as_str(),
            "dt=1970-01-01/r.json"
        );
        assert!(
            ArchiveName::for_message(&p, u64::MAX)
                .as_str()
                .starts_with("dt=")
        );
    }

    #[test]
    fn prefixes_are_normalised_or_refused() {
        assert_eq!(KeyPrefix::parse("").expect("valid").as_str(), "");
        assert_eq!(
            KeyPrefix::parse("terra/").expect("valid").as_str(),
            "terra/"
        );
        assert_eq!(KeyPrefix::parse("a/b=c").expect("valid").as_str(), "a/b=c/");
        assert_eq!(KeyPrefix::parse("/abs"), Err(KeyPrefixError::LeadingSlash));
        assert_eq!(KeyPrefix::parse("a/../b"), Err(KeyPrefixError::BadSegment));
        assert_eq!(KeyPrefix::parse("a//b"), Err(KeyPrefixError::BadSegment));
        assert_eq!(KeyPrefix::parse("a b"), Err(KeyPrefixError::BadCharacter));
        assert_eq!(
            KeyPrefix::parse(&"a".repeat(600)),
            Err(KeyPrefixError::TooLong)
        );
    }
}
