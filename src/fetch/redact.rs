use std::fmt;

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

#[cfg(test)]
mod tests {
    use super::*;

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
