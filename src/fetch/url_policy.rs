//! Which URLs the function may fetch. A queue writer controls the URL, so
//! without this policy it could make the function read instance metadata or
//! anything else inside the customer's network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use futures::future::BoxFuture;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// One entry of `TERRA_ALLOWED_URL_HOSTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `host.example.com`: that host only.
    Exact(String),
    /// `*.example.com`: any host below example.com (not example.com itself).
    Subdomains(String),
    /// `s3`: any host Amazon S3 serves objects at, in any region,
    /// virtual-hosted or path-style, dual-stack too, and nothing else under
    /// amazonaws.com (not STS, API Gateway or any other service).
    AmazonS3,
}

impl HostPattern {
    /// Parses one allow-list entry; `None` when it cannot name a host.
    pub fn parse(entry: &str) -> Option<Self> {
        let entry = entry.trim().trim_end_matches('.').to_ascii_lowercase();
        if entry == "s3" {
            return Some(HostPattern::AmazonS3);
        }
        let (pattern, host) = match entry.strip_prefix("*.") {
            Some(suffix) => (
                HostPattern::Subdomains(suffix.to_owned()),
                suffix.to_owned(),
            ),
            None => (HostPattern::Exact(entry.clone()), entry),
        };
        let valid = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']'))
            && !host.contains("..");
        valid.then_some(pattern)
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => host == exact,
            HostPattern::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| label.len() > 1 && label.ends_with('.')),
            HostPattern::AmazonS3 => super::s3_endpoint::serves_objects(host),
        }
    }
}

/// As the allow-list names it (`*.amazonaws.com`).
impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Subdomains(suffix) => write!(f, "*.{suffix}"),
            HostPattern::AmazonS3 => f.write_str("s3"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    #[error("URL scheme {0:?} is not allowed (https only)")]
    Scheme(String),
    #[error("URL has no host")]
    NoHost,
    #[error("URL carries userinfo")]
    Userinfo,
    #[error("port {0} is not allowed (443 only)")]
    Port(u16),
    #[error("host {0} is not in TERRA_ALLOWED_URL_HOSTS")]
    HostNotAllowed(String),
    #[error("address {0} is in a private, loopback, link-local or reserved range")]
    ForbiddenAddress(IpAddr),
    #[error("host {0} resolves only to private, loopback, link-local or reserved addresses")]
    ForbiddenResolution(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// `TERRA_ALLOWED_URL_HOSTS`; `None` allows any public host.
    pub allowed_hosts: Option<Vec<HostPattern>>,
    /// `TERRA_ALLOW_INSECURE_URLS`: allows `http` and non-public addresses, for
    /// local development and tests. The allow-list still applies.
    pub allow_insecure: bool,
}

impl UrlPolicy {
    /// Checks everything that can be known before DNS: scheme, userinfo,
    /// allow-list and literal IP addresses (including the odd encodings the
    /// URL parser normalises, such as `http://2130706433/`).
    pub fn check_url(&self, url: &Url) -> Result<(), PolicyViolation> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_insecure => {}
            other => return Err(PolicyViolation::Scheme(other.chars().take(16).collect())),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(PolicyViolation::Userinfo);
        }
        // Pre-signed storage URLs use the default port; any other would let a
        // message probe services on public hosts.
        if let Some(port) = url.port().filter(|_| !self.allow_insecure) {
            return Err(PolicyViolation::Port(port));
        }
        let host = url.host().ok_or(PolicyViolation::NoHost)?;
        let host_name = match &host {
            Host::Domain(domain) => domain.trim_end_matches('.').to_ascii_lowercase(),
            Host::Ipv4(ip) => ip.to_string(),
            Host::Ipv6(ip) => ip.to_string(),
        };
        if let Some(allowed) = &self.allowed_hosts {
            let bracketed = format!("[{host_name}]");
            let listed = allowed
                .iter()
                .any(|p| p.matches(&host_name) || p.matches(&bracketed));
            if !listed {
                return Err(PolicyViolation::HostNotAllowed(host_name));
            }
        }
        match host {
            Host::Ipv4(ip) => self.check_ip(IpAddr::V4(ip)),
            Host::Ipv6(ip) => self.check_ip(IpAddr::V6(ip)),
            Host::Domain(_) => Ok(()),
        }
    }

    /// Checks an address the URL's host resolved to (or is).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), PolicyViolation> {
        if self.allow_insecure || is_public(ip) {
            Ok(())
        } else {
            Err(PolicyViolation::ForbiddenAddress(ip))
        }
    }
}

/// True for addresses on the public internet. Anything private, local,
/// reserved or special-purpose is refused, including IPv4 embedded in IPv6.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19))) // benchmarking
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) and IPv4-compatible (::/96) addresses carry IPv4.
    let embedded_v4 = Ipv4Addr::from(((segments[6] as u32) << 16) | segments[7] as u32);
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || segments[..6] == [0; 6] {
        return !ip.is_unspecified() && !ip.is_loopback() && is_public_v4(embedded_v4);
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        || (segments[0] & 0xffc0) == 0xfec0 // deprecated site-local
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)) // documentation
}

/// Turns a host name into addresses: the system resolver in production, a
/// fixed table in tests.
pub(crate) type Lookup =
    Arc<dyn Fn(String) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

pub(crate) fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) })
    })
}

/// DNS resolver for the fetch client: resolves the name and keeps only the
/// addresses the policy allows, so a public-looking host that resolves to
/// 169.254.169.254 is never connected to.
pub(crate) struct PolicyResolver {
    pub(crate) policy: Arc<UrlPolicy>,
    pub(crate) lookup: Lookup,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let lookup = Arc::clone(&self.lookup);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = lookup(host.clone()).await?;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| policy.check_ip(addr.ip()).is_ok())
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(PolicyViolation::ForbiddenResolution(host)) as _);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> UrlPolicy {
        UrlPolicy::default()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test URL parses")
    }

    #[test]
    fn allows_public_https() {
        assert_eq!(
            strict().check_url(&url(
                "https://b.s3.eu-west-2.amazonaws.com/p?X-Amz-Signature=x"
            )),
            Ok(())
        );
    }

    #[test]
    fn refuses_other_schemes_unless_insecure_allows_http() {
        for s in [
            "http://example.com/",
            "ftp://example.com/",
            "file:///etc/passwd",
            "gopher://x/",
        ] {
            assert!(
                matches!(strict().check_url(&url(s)), Err(PolicyViolation::Scheme(_))),
                "{s}"
            );
        }
        let insecure = UrlPolicy {
            allow_insecure: true,
            ..strict()
        };
        assert_eq!(insecure.check_url(&url("http://127.0.0.1:9000/p")), Ok(()));
        assert!(insecure.check_url(&url("file:///etc/passwd")).is_err());
    }

    #[test]
    fn refuses_userinfo() {
        assert_eq!(
            strict().check_url(&url("https://user:pw@example.com/")),
            Err(PolicyViolation::Userinfo)
        );
        assert_eq!(
            strict().check_url(&url("https://example.com@169.254.169.254/")),
            Err(PolicyViolation::Userinfo)
        );
    }

    #[test]
    fn refuses_internal_literals_in_every_encoding() {
        for s in [
            "https://127.0.0.1/",
            "https://2130706433/",
            "https://0x7f.1/",
            "https://0177.0.0.1/",
            "https://169.254.169.254/latest/meta-data/",
            "https://10.0.0.1/",
            "https://172.16.5.4/",
            "https://192.168.1.1/",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[::]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:a9fe:a9fe]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
        ] {
            assert!(
                matches!(
                    strict().check_url(&url(s)),
                    Err(PolicyViolation::ForbiddenAddress(_))
                ),
                "{s} must be refused"
            );
        }
        assert_eq!(strict().check_url(&url("https://8.8.8.8/")), Ok(()));
        assert_eq!(
            strict().check_url(&url("https://[2606:4700::1111]/")),
            Ok(())
        );
    }

    #[test]
    fn allow_list_matches_exact_hosts_and_subdomains() {
        let policy = UrlPolicy {
            allowed_hosts: Some(vec![
                HostPattern::parse("storage.googleapis.com").expect("valid"),
                HostPattern::parse("*.amazonaws.com").expect("valid"),
            ]),
            ..strict()
        };
        assert_eq!(
            policy.check_url(&url("https://storage.googleapis.com/b/o")),
            Ok(())
        );
        assert_eq!(
            policy.check_url(&url("https://STORAGE.googleapis.com./b/o")),
            Ok(())
        );
        assert_eq!(
            policy.check_url(&url("https://b.s3.amazonaws.com/o")),
            Ok(())
        );
        for s in [
            "https://amazonaws.com/o",
            "https://evilamazonaws.com/o",
            "https://amazonaws.com.evil.net/o",
            "https://googleapis.com/o",
            "https://8.8.8.8/o",
        ] {
            assert!(
                matches!(
                    policy.check_url(&url(s)),
                    Err(PolicyViolation::HostNotAllowed(_))
                ),
                "{s} must be refused"
            );
        }
    }

    #[test]
    fn the_s3_keyword_admits_s3_in_every_form_and_no_other_aws_service() {
        let policy = UrlPolicy {
            allowed_hosts: Some(vec![
                HostPattern::parse("s3").expect("valid"),
                HostPattern::parse("storage.googleapis.com").expect("valid"),
            ]),
            ..strict()
        };
        for s in [
            "https://terra-payloads.s3.us-east-1.amazonaws.com/a.json",
            "https://s3.eu-central-1.amazonaws.com/terra-payloads/a.json",
            "https://terra-payloads.s3.dualstack.ap-south-1.amazonaws.com/a.json",
            "https://terra-payloads.s3.amazonaws.com/a.json",
            "https://storage.googleapis.com/terra/a.json",
        ] {
            assert_eq!(policy.check_url(&url(s)), Ok(()), "{s}");
        }
        for s in [
            "https://abc123.execute-api.us-east-1.amazonaws.com/prod/a.json",
            "https://sts.amazonaws.com/?Action=GetCallerIdentity",
            "https://lambda.us-east-1.amazonaws.com/2015-03-31/functions",
            "https://s3.us-east-1.amazonaws.com.evil.example/a.json",
        ] {
            assert!(
                matches!(
                    policy.check_url(&url(s)),
                    Err(PolicyViolation::HostNotAllowed(_))
                ),
                "{s} must be refused"
            );
        }
        assert_eq!(HostPattern::AmazonS3.to_string(), "s3");
    }

    #[test]
    fn insecure_mode_keeps_the_allow_list() {
        let policy = UrlPolicy {
            allowed_hosts: Some(vec![HostPattern::parse("127.0.0.1").expect("valid")]),
            allow_insecure: true,
        };
        assert_eq!(policy.check_url(&url("http://127.0.0.1:8080/p")), Ok(()));
        assert!(matches!(
            policy.check_url(&url("http://localhost:8080/p")),
            Err(PolicyViolation::HostNotAllowed(_))
        ));
    }

    #[test]
    fn host_patterns_reject_nonsense() {
        for entry in ["", "*.", "a..b", "exa mple.com", "*.*.com", "http://x"] {
            assert_eq!(HostPattern::parse(entry), None, "{entry:?}");
        }
    }

    /// A DNS stand-in: fixed answers per name.
    pub(crate) fn fake_dns(table: &[(&str, &[&str])]) -> Lookup {
        let table: Vec<(String, Vec<SocketAddr>)> = table
            .iter()
            .map(|(name, ips)| {
                let addrs = ips
                    .iter()
                    .map(|ip| SocketAddr::new(ip.parse().expect("test address"), 443))
                    .collect();
                (name.to_string(), addrs)
            })
            .collect();
        Arc::new(move |host: String| {
            let found = table
                .iter()
                .find(|(name, _)| *name == host)
                .map(|(_, a)| a.clone());
            Box::pin(async move {
                found.ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such host")
                })
            })
        })
    }

    #[tokio::test]
    async fn names_resolving_to_internal_addresses_are_refused_or_filtered() {
        let resolver = PolicyResolver {
            policy: Arc::new(strict()),
            lookup: fake_dns(&[
                ("metadata.attacker.example", &["169.254.169.254"]),
                (
                    "private.attacker.example",
                    &["10.1.2.3", "192.168.0.7", "172.20.0.1"],
                ),
                ("loopback.attacker.example", &["127.0.0.1", "::1"]),
                (
                    "mapped.attacker.example",
                    &["::ffff:10.0.0.1", "::ffff:169.254.169.254"],
                ),
                ("nat64.attacker.example", &["64:ff9b::a9fe:a9fe"]),
                ("cgnat.attacker.example", &["100.100.100.200"]),
                ("ula.attacker.example", &["fd12:3456::1", "fe80::1"]),
                (
                    "mixed.attacker.example",
                    &["10.0.0.1", "1.1.1.1", "::ffff:127.0.0.1"],
                ),
            ]),
        };
        for name in [
            "metadata.attacker.example",
            "private.attacker.example",
            "loopback.attacker.example",
            "mapped.attacker.example",
            "nat64.attacker.example",
            "cgnat.attacker.example",
            "ula.attacker.example",
        ] {
            let resolved = resolver.resolve(name.parse().expect("valid name")).await;
            let error = match resolved {
                Ok(addrs) => panic!(
                    "{name} must be refused, got {:?}",
                    addrs.collect::<Vec<_>>()
                ),
                Err(error) => error,
            };
            assert!(
                matches!(
                    error.downcast_ref::<PolicyViolation>(),
                    Some(PolicyViolation::ForbiddenResolution(_))
                ),
                "{name}: {error}"
            );
        }
        let mixed: Vec<SocketAddr> = match resolver
            .resolve("mixed.attacker.example".parse().expect("valid name"))
            .await
        {
            Ok(addrs) => addrs.collect(),
            Err(e) => panic!("a public address remains: {e}"),
        };
        assert_eq!(
            mixed,
            [SocketAddr::new("1.1.1.1".parse().expect("ip"), 443)]
        );
    }

    #[test]
    fn refuses_ports_other_than_443_unless_insecure() {
        assert_eq!(
            strict().check_url(&url("https://b.s3.amazonaws.com:443/o")),
            Ok(())
        );
        for s in [
            "https://b.s3.amazonaws.com:22/o",
            "https://b.s3.amazonaws.com:8443/o",
            "https://8.8.8.8:6379/",
        ] {
            assert!(
                matches!(strict().check_url(&url(s)), Err(PolicyViolation::Port(_))),
                "{s}"
            );
        }
        let insecure = UrlPolicy {
            allow_insecure: true,
            ..strict()
        };
        assert_eq!(insecure.check_url(&url("http://127.0.0.1:8080/p")), Ok(()));
    }

    #[test]
    fn userinfo_tricks_and_odd_schemes_are_refused() {
        for (s, expected) in [
            (
                "https://s3.amazonaws.com@169.254.169.254/",
                PolicyViolation::Userinfo,
            ),
            (
                "https://user:pass@b.s3.amazonaws.com/o",
                PolicyViolation::Userinfo,
            ),
            ("file:///etc/passwd", PolicyViolation::Scheme("file".into())),
            (
                "gopher://b.s3.amazonaws.com/",
                PolicyViolation::Scheme("gopher".into()),
            ),
            (
                "ftp://b.s3.amazonaws.com/o",
                PolicyViolation::Scheme("ftp".into()),
            ),
            (
                "http://b.s3.amazonaws.com/o",
                PolicyViolation::Scheme("http".into()),
            ),
            ("data:text/plain,hi", PolicyViolation::Scheme("data".into())),
        ] {
            assert_eq!(strict().check_url(&url(s)), Err(expected), "{s}");
        }
    }

    #[tokio::test]
    async fn resolver_drops_internal_addresses() {
        let resolver = PolicyResolver {
            policy: Arc::new(strict()),
            lookup: system_lookup(),
        };
        let name: Name = "localhost".parse().expect("valid name");
        let error = match resolver.resolve(name).await {
            Ok(addrs) => panic!(
                "localhost must be refused, got {:?}",
                addrs.collect::<Vec<_>>()
            ),
            Err(e) => e,
        };
        assert!(error.downcast_ref::<PolicyViolation>().is_some(), "{error}");

        let insecure = PolicyResolver {
            policy: Arc::new(UrlPolicy {
                allow_insecure: true,
                ..strict()
            }),
            lookup: system_lookup(),
        };
        let name: Name = "localhost".parse().expect("valid name");
        let addrs: Vec<SocketAddr> = match insecure.resolve(name).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => panic!("insecure mode resolves localhost: {e}"),
        };
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
