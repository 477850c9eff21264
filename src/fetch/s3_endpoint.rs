//! Recognising Amazon S3's endpoint host names, for the URL policy's `s3`
//! keyword and for own-bucket mode's reading of a bucket's URL.

/// The region of an S3 endpoint host name, if `host` is one:
/// `s3.amazonaws.com` (us-east-1), `s3.<region>.amazonaws.com`,
/// `s3-<region>.amazonaws.com`, `s3.dualstack.<region>.amazonaws.com`, and
/// the same under `amazonaws.com.cn`.
pub(crate) fn region(host: &str) -> Option<String> {
    let service = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let region = match service {
        "s3" | "s3-external-1" => "us-east-1",
        _ => service
            .strip_prefix("s3.dualstack.")
            .or_else(|| service.strip_prefix("s3."))
            .or_else(|| service.strip_prefix("s3-"))?,
    };
    let is_region = !region.is_empty()
        && region.contains('-')
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    is_region.then(|| region.to_owned())
}

/// True for a host S3 answers a bucket's objects at: an endpoint itself
/// (path-style, `s3.<region>.amazonaws.com/<bucket>/<key>`) or a bucket
/// under one (virtual-hosted, `<bucket>.s3.<region>.amazonaws.com`; a
/// bucket name may hold dots).
pub(crate) fn serves_objects(host: &str) -> bool {
    region(host).is_some()
        || host
            .match_indices('.')
            .any(|(dot, _)| dot > 0 && region(&host[dot + 1..]).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_hosts_in_every_form_and_region_and_nothing_else_under_amazonaws() {
        for host in [
            "s3.amazonaws.com",
            "terra-payloads.s3.amazonaws.com",
            "s3.eu-west-1.amazonaws.com",
            "terra-payloads.s3.eu-west-1.amazonaws.com",
            "terra.dotted.name.s3.ap-southeast-2.amazonaws.com",
            "s3.dualstack.us-west-2.amazonaws.com",
            "terra-payloads.s3.dualstack.us-west-2.amazonaws.com",
            "s3-us-west-1.amazonaws.com",
            "terra-payloads.s3-external-1.amazonaws.com",
            "terra-payloads.s3.cn-north-1.amazonaws.com.cn",
        ] {
            assert!(serves_objects(host), "{host}");
        }
        for host in [
            "sts.amazonaws.com",
            "abc123.execute-api.us-east-1.amazonaws.com",
            "lambda.us-east-1.amazonaws.com",
            "sqs.us-east-1.amazonaws.com",
            "s3-control.us-east-1.amazonaws.com",
            "amazonaws.com",
            "s3.amazonaws.com.evil.example",
            "s3.us-east-1.amazonaws.com.evil.example",
            "evil-s3.amazonaws.com",
            ".s3.amazonaws.com",
            "storage.googleapis.com",
        ] {
            assert!(!serves_objects(host), "{host}");
        }
    }
}
