//! What may be shown of what passes through: URLs without their credentials,
//! text and JSON with every query string cut, and parse errors by position,
//! never by the content they would quote (it can be health data).

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;
use url::Url;

/// Formats a URL without userinfo, query or fragment. Pre-signed URLs carry
/// their credentials in the query string, so this is the only way a URL may
/// reach a log line, an error or a metric.
pub struct RedactedUrl<'a>(pub &'a Url);

impl fmt::Display for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.0;
        write!(f, "{}://", url.scheme())?;
        if let Some(host) = url.host_str() {
            f.write_str(host)?;
        }
        if let Some(port) = url.port() {
            write!(f, ":{port}")?;
        }
        f.write_str(url.path())
    }
}

impl fmt::Debug for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Cuts what could be a query string out of free text, for text that must
/// leave the function (a quarantined record) but may hold a pre-signed URL in any
/// shape, whole or in part: every word (a run between whitespace and quotes)
/// loses everything from its first `?`, and a word holding a URL (`://`, or
/// JSON-escaped `:\/\/`) its fragment too.
pub fn strip_query_strings(text: &str) -> Cow<'_, str> {
    if !text.contains(['?', '#']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for piece in text.split_inclusive(is_word_boundary) {
        let (word, boundary) = match piece.char_indices().last() {
            Some((at, c)) if is_word_boundary(c) => piece.split_at(at),
            _ => (piece, ""),
        };
        let is_url = word.contains("://") || word.contains(r":\/\/");
        let cut = if is_url {
            word.find(['?', '#'])
        } else {
            word.find('?')
        };
        out.push_str(cut.map_or(word, |at| &word[..at]));
        out.push_str(boundary);
    }
    Cow::Owned(out)
}

fn is_word_boundary(c: char) -> bool {
    c.is_whitespace() || "\"'<>`".contains(c)
}

/// [`strip_query_strings`] applied to every string in a JSON document, so JSON
/// escapes (`https:\/\/...`) cannot hide a URL from it.
pub fn strip_query_strings_in_json(value: &mut Value) {
    match value {
        Value::String(text) => {
            if let Cow::Owned(stripped) = strip_query_strings(text) {
                *text = stripped;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_query_strings_in_json),
        Value::Object(fields) => fields.values_mut().for_each(strip_query_strings_in_json),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Describes a serde_json error by category and position only.
pub fn json_error_position(error: &serde_json::Error) -> String {
    let category = match error.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected structure",
        serde_json::error::Category::Eof => "unexpected end of input",
    };
    format!(
        "{category} at line {} column {}",
        error.line(),
        error.column()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_every_query_string_from_free_text() {
        for (text, expected) in [
            ("no urls here", "no urls here"),
            ("why? #5 not a url", "why #5 not a url"),
            (
                "not base64?X-Amz-Signature=abc&X-Amz-Credential=AKIA",
                "not base64",
            ),
            (
                "see https://b.s3.amazonaws.com/a.json?X-Amz-Signature=abc now",
                "see https://b.s3.amazonaws.com/a.json now",
            ),
            (
                r#"{"url":"https://h/p?sig=1#f","other":"http://x/?a"}"#,
                r#"{"url":"https://h/p","other":"http://x/"}"#,
            ),
            ("s3://b/k#frag\nhttps://h/?q", "s3://b/k\nhttps://h/"),
            ("trailing ://?secret", "trailing ://"),
            (
                r"escaped https:\/\/h\/p?sig=1 end",
                r"escaped https:\/\/h\/p end",
            ),
            ("two http://a/?x http://b/#y", "two http://a/ http://b/"),
        ] {
            assert_eq!(strip_query_strings(text), expected, "{text}");
        }
    }

    #[test]
    fn strips_query_strings_inside_json_escapes() {
        let mut doc: Value = serde_json::from_str(
            r##"{"url":"https:\/\/h\/p?X-Amz-Signature=s#f","n":[1,"ftp://h/?k=v"],"tag":"#1"}"##,
        )
        .expect("json");
        strip_query_strings_in_json(&mut doc);
        assert_eq!(
            doc,
            serde_json::json!({"url": "https://h/p", "n": [1, "ftp://h/"], "tag": "#1"})
        );
    }

    #[test]
    fn drops_query_fragment_and_userinfo() {
        let url =
            Url::parse("https://user:pw@b.s3.amazonaws.com:8443/p/a.json?X-Amz-Signature=abc#frag")
                .expect("valid url");
        assert_eq!(
            RedactedUrl(&url).to_string(),
            "https://b.s3.amazonaws.com:8443/p/a.json"
        );
    }
}
