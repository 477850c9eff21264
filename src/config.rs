//! Configuration from the environment, read and validated once at cold start.
//! Every error names the variable at fault.

use std::time::Duration;

use crate::budget::derived_budget_bytes;
use crate::fetch::own_bucket::SourceBuckets;
use crate::fetch::{FetchSettings, HostPattern, UrlPolicy};
use crate::sink::KeyPrefix;
use crate::sink::{DEFAULT_MAX_ITEMS, S3Compression, S3Settings};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The S3 archive sink, when `TERRA_S3_BUCKET` is set.
    pub s3: Option<S3Settings>,
    /// The DynamoDB table, when `TERRA_DYNAMODB_TABLE` is set.
    pub dynamodb_table: Option<String>,
    /// Most items one payload may make (`TERRA_DYNAMODB_MAX_ITEMS`).
    pub dynamodb_max_items: usize,
    /// How long after Terra sent a record its item is kept
    /// (`TERRA_DYNAMODB_RETENTION_DAYS`); `None`: for ever.
    pub dynamodb_retention_days: Option<u32>,
    /// Terra's `deauth` and `access_revoked` erase the rest of that user's
    /// data once written (`TERRA_ERASE_ON_DEAUTH`).
    pub erase_on_deauth: bool,
    pub fetch: FetchSettings,
    pub url_policy: UrlPolicy,
    /// Records processed at once (`TERRA_FETCH_CONCURRENCY`).
    pub concurrency: usize,
    /// Path-style S3 addressing, for local emulators (set when
    /// `AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_S3` is).
    pub s3_force_path_style: bool,
    /// Terra's own-bucket mode: the buckets Terra uploads payloads to
    /// (`TERRA_SOURCE_BUCKETS`), read with the function's role.
    pub source_buckets: Option<SourceBuckets>,
    pub kafka: KafkaSettings,
    /// CloudWatch namespace of the EMF metrics (`TERRA_METRICS_NAMESPACE`).
    pub metrics_namespace: String,
    /// Bytes the records in flight may hold at once: `TERRA_MEMORY_BUDGET_MB`,
    /// or derived from the function's memory (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`).
    pub memory_budget_bytes: u64,
    /// Where traces go (`TERRA_TRACING`).
    pub tracing: Tracing,
}

/// Where the handlers' traces go (`TERRA_TRACING`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Tracing {
    /// Nowhere, at no cost (`off`, the default).
    #[default]
    Off,
    /// To the X-Ray daemon Lambda runs under active tracing, at
    /// `AWS_XRAY_DAEMON_ADDRESS` (`xray`).
    Xray { daemon: std::net::SocketAddr },
}

impl Tracing {
    /// The tracing setting alone: read before the rest of the configuration,
    /// so that the logs are set up to report a bad one.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Env(&env_lookup))
    }

    fn read<F: Fn(&str) -> Option<Result<String, ()>>>(env: &Env<F>) -> Result<Self, ConfigError> {
        match env
            .text("TERRA_TRACING")?
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("off") => Ok(Tracing::Off),
            Some("xray") => {
                let var = "AWS_XRAY_DAEMON_ADDRESS";
                let Some(raw) = env.text(var)? else {
                    return Err(invalid(
                        var,
                        "not set: TERRA_TRACING=xray sends traces to the X-Ray daemon, which \
                         Lambda runs (and names here) when the function's tracing is Active",
                    ));
                };
                raw.parse()
                    .map(|daemon| Tracing::Xray { daemon })
                    .map_err(|_| {
                        invalid(var, format!("expected an IP address and port, got {raw:?}"))
                    })
            }
            Some(other) => Err(invalid(
                "TERRA_TRACING",
                format!("expected off or xray, got {other:?}"),
            )),
        }
    }
}

fn env_lookup(var: &str) -> Option<Result<String, ()>> {
    std::env::var_os(var).map(|v| v.into_string().map_err(|_| ()))
}

/// Settings only `kafka-handler` reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaSettings {
    /// Answer with a partial batch response (`TERRA_KAFKA_PARTIAL_BATCH`);
    /// otherwise any failed record fails the invocation.
    pub partial_batch: bool,
    /// Where records that can never succeed go (`TERRA_QUARANTINE_QUEUE_URL`).
    pub quarantine_queue_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {problem}")]
    Invalid { var: &'static str, problem: String },
    #[error("no sink configured: set TERRA_S3_BUCKET and/or TERRA_DYNAMODB_TABLE")]
    NoSink,
}

/// The Kafka quarantine queue's variable before 0.2.0.
const RETIRED_QUARANTINE_VARIABLE: &str = "TERRA_DEAD_LETTER_QUEUE_URL";

const MAX_CONCURRENCY: usize = 1024;
const MAX_TIMEOUT_SECS: u64 = 900;
const MAX_ATTEMPTS: u32 = 20;
/// A hundred years: longer is not retention.
const MAX_RETENTION_DAYS: u32 = 36_500;
/// Lambda's largest function; and the memory assumed outside Lambda, which
/// is the template's default.
const MAX_FUNCTION_MEMORY_MB: u64 = 10_240;
const DEFAULT_FUNCTION_MEMORY_MB: u64 = 512;
/// A payload of more items than this could not be written within Lambda's
/// longest timeout (about 1 000 conditional writes a second per payload).
const MAX_ITEMS_PER_PAYLOAD: usize = 500_000;

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(env_lookup)
    }

    /// Reads the configuration through `lookup`, which returns `Err(())` for a
    /// value that is not valid UTF-8.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<Result<String, ()>>,
    ) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let defaults = FetchSettings::default();
        let fetch = FetchSettings {
            timeout: Duration::from_secs(env.number(
                "TERRA_FETCH_TIMEOUT_SECS",
                10,
                1,
                MAX_TIMEOUT_SECS,
            )?),
            max_attempts: env.optional_number("TERRA_FETCH_MAX_ATTEMPTS", 1, MAX_ATTEMPTS)?,
            max_payload_bytes: env.number(
                "TERRA_MAX_PAYLOAD_BYTES",
                defaults.max_payload_bytes,
                1,
                u64::MAX,
            )?,
        };
        let concurrency = env.number("TERRA_FETCH_CONCURRENCY", 32, 1, MAX_CONCURRENCY)?;
        let url_policy = UrlPolicy {
            allowed_hosts: env.host_list("TERRA_ALLOWED_URL_HOSTS")?,
            allow_insecure: env.flag("TERRA_ALLOW_INSECURE_URLS", false)?,
        };
        let s3 = match env.text("TERRA_S3_BUCKET")? {
            None => None,
            Some(bucket) => Some(S3Settings {
                bucket: validate_bucket(&bucket)
                    .map_err(|problem| invalid("TERRA_S3_BUCKET", problem))?,
                prefix: KeyPrefix::parse(
                    &env.text("TERRA_S3_PREFIX")?
                        .unwrap_or_else(|| "terra/".into()),
                )
                .map_err(|e| invalid("TERRA_S3_PREFIX", e.to_string()))?,
                compression: match env.text("TERRA_S3_COMPRESSION")?.as_deref() {
                    None | Some("none") => S3Compression::None,
                    Some("gzip") => S3Compression::Gzip,
                    Some(other) => {
                        return Err(invalid(
                            "TERRA_S3_COMPRESSION",
                            format!("expected none or gzip, got {other:?}"),
                        ));
                    }
                },
            }),
        };
        let dynamodb_table = match env.text("TERRA_DYNAMODB_TABLE")? {
            None => None,
            Some(table) => Some(
                validate_table(&table)
                    .map_err(|problem| invalid("TERRA_DYNAMODB_TABLE", problem))?,
            ),
        };
        let dynamodb_max_items = env.number(
            "TERRA_DYNAMODB_MAX_ITEMS",
            DEFAULT_MAX_ITEMS,
            1,
            MAX_ITEMS_PER_PAYLOAD,
        )?;
        let dynamodb_retention_days =
            env.optional_number("TERRA_DYNAMODB_RETENTION_DAYS", 1, MAX_RETENTION_DAYS)?;
        if s3.is_none() && dynamodb_table.is_none() {
            return Err(ConfigError::NoSink);
        }
        let erase_on_deauth = env.flag("TERRA_ERASE_ON_DEAUTH", false)?;
        let s3_force_path_style =
            env.text("AWS_ENDPOINT_URL")?.is_some() || env.text("AWS_ENDPOINT_URL_S3")?.is_some();
        let source_buckets = match env.text("TERRA_SOURCE_BUCKETS")? {
            None => None,
            Some(raw) => {
                let names = raw
                    .split(',')
                    .map(str::trim)
                    .filter(|name| !name.is_empty())
                    .map(validate_bucket)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|problem| invalid("TERRA_SOURCE_BUCKETS", problem))?;
                let owner = match env.text("TERRA_SOURCE_BUCKET_OWNER")? {
                    None => None,
                    Some(account)
                        if account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        Some(account)
                    }
                    Some(_) => {
                        return Err(invalid(
                            "TERRA_SOURCE_BUCKET_OWNER",
                            "must be a 12-digit AWS account id",
                        ));
                    }
                };
                SourceBuckets::new(names, env.s3_endpoint()?).map(|b| b.owned_by(owner))
            }
        };
        // Renamed, not dropped: a deployment still setting the old name
        // would otherwise lose its quarantine without a word, and poison
        // records would block their partitions.
        if env.text(RETIRED_QUARANTINE_VARIABLE)?.is_some() {
            return Err(invalid(
                RETIRED_QUARANTINE_VARIABLE,
                "renamed TERRA_QUARANTINE_QUEUE_URL in 0.2.0 (see CHANGELOG.md); set that instead",
            ));
        }
        let kafka = KafkaSettings {
            partial_batch: env.flag("TERRA_KAFKA_PARTIAL_BATCH", false)?,
            quarantine_queue_url: match env.text("TERRA_QUARANTINE_QUEUE_URL")? {
                None => None,
                Some(url) => Some(
                    validate_queue_url(&url)
                        .map_err(|problem| invalid("TERRA_QUARANTINE_QUEUE_URL", problem))?,
                ),
            },
        };
        let metrics_namespace = match env.text("TERRA_METRICS_NAMESPACE")? {
            None => "TerraSink".to_owned(),
            Some(namespace) => validate_namespace(&namespace)
                .map_err(|problem| invalid("TERRA_METRICS_NAMESPACE", problem))?,
        };
        let function_memory_mb = env.number(
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            DEFAULT_FUNCTION_MEMORY_MB,
            128,
            MAX_FUNCTION_MEMORY_MB,
        )?;
        let memory_budget_bytes =
            match env.optional_number("TERRA_MEMORY_BUDGET_MB", 1, function_memory_mb)? {
                Some(mb) => mb * 1024 * 1024,
                None => derived_budget_bytes(function_memory_mb),
            };
        let tracing = Tracing::read(&env)?;
        Ok(Self {
            s3,
            dynamodb_table,
            dynamodb_max_items,
            dynamodb_retention_days,
            erase_on_deauth,
            fetch,
            url_policy,
            concurrency,
            s3_force_path_style,
            source_buckets,
            kafka,
            metrics_namespace,
            memory_budget_bytes,
            tracing,
        })
    }
}

fn invalid(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        problem: problem.into(),
    }
}

struct Env<'a, F>(&'a F);

impl<F: Fn(&str) -> Option<Result<String, ()>>> Env<'_, F> {
    /// The trimmed value; unset and empty are the same.
    fn text(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        match (self.0)(var) {
            None => Ok(None),
            Some(Err(())) => Err(invalid(var, "is not valid UTF-8")),
            Some(Ok(value)) => {
                let value = value.trim();
                Ok((!value.is_empty()).then(|| value.to_owned()))
            }
        }
    }

    fn number<T>(&self, var: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        Ok(self.optional_number(var, min, max)?.unwrap_or(default))
    }

    fn optional_number<T>(
        &self,
        var: &'static str,
        min: T,
        max: T,
    ) -> Result<Option<T>, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(raw) = self.text(var)? else {
            return Ok(None);
        };
        match raw.parse::<T>() {
            Ok(n) if n >= min && n <= max => Ok(Some(n)),
            _ => Err(invalid(
                var,
                format!("expected a whole number from {min} to {max}, got {raw:?}"),
            )),
        }
    }

    fn flag(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.text(var)?.map(|v| v.to_ascii_lowercase()).as_deref() {
            None => Ok(default),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(other) => Err(invalid(
                var,
                format!("expected true or false, got {other:?}"),
            )),
        }
    }

    /// The S3 endpoint set for the SDK, if any: `AWS_ENDPOINT_URL_S3`, else
    /// `AWS_ENDPOINT_URL`.
    fn s3_endpoint(&self) -> Result<Option<url::Url>, ConfigError> {
        for var in ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"] {
            if let Some(raw) = self.text(var)? {
                return url::Url::parse(&raw)
                    .map(Some)
                    .map_err(|e| invalid(var, format!("{raw:?} is not a URL: {e}")));
            }
        }
        Ok(None)
    }

    fn host_list(&self, var: &'static str) -> Result<Option<Vec<HostPattern>>, ConfigError> {
        let Some(raw) = self.text(var)? else {
            return Ok(None);
        };
        raw.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                HostPattern::parse(entry).ok_or_else(|| {
                    invalid(var, format!("{entry:?} is not a host name or *.suffix"))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// S3's bucket naming rules, checked here so a typo fails init rather than
/// every write.
fn validate_bucket(bucket: &str) -> Result<String, String> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(bucket.to_owned())
    } else {
        Err(format!(
            "{bucket:?} is not a valid bucket name (3-63 lowercase letters, digits, '-' or '.')"
        ))
    }
}

/// DynamoDB's table naming rules.
fn validate_table(table: &str) -> Result<String, String> {
    let ok = (3..=255).contains(&table.len())
        && table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(table.to_owned())
    } else {
        Err(format!(
            "{table:?} is not a valid table name (3-255 letters, digits, '_', '-' or '.')"
        ))
    }
}

/// CloudWatch's namespace rules; `AWS/` is reserved for AWS services.
fn validate_namespace(namespace: &str) -> Result<String, String> {
    let ok = namespace.len() <= 255
        && !namespace.starts_with("AWS/")
        && namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " ._-/#:".contains(c));
    if ok {
        Ok(namespace.to_owned())
    } else {
        Err(format!(
            "{namespace:?} is not a CloudWatch namespace (up to 255 letters, digits and . - _ / # : or space; not AWS/...)"
        ))
    }
}

/// An SQS queue URL (`https://sqs.<region>.amazonaws.com/<account>/<name>`;
/// plain http only for local emulators).
fn validate_queue_url(raw: &str) -> Result<String, String> {
    let problem = || {
        format!(
            "{raw:?} is not an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<queue>)"
        )
    };
    let url = url::Url::parse(raw).map_err(|_| problem())?;
    let segments: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let valid = matches!(url.scheme(), "https" | "http")
        && url.host_str().is_some()
        && url.query().is_none()
        && url.username().is_empty()
        && segments.len() == 2
        && segments[0].bytes().all(|b| b.is_ascii_digit())
        && segments[1]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if valid {
        Ok(raw.to_owned())
    } else {
        Err(problem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned().map(Ok))
    }

    fn failing_var(vars: &[(&str, &str)]) -> &'static str {
        match load(vars) {
            Err(ConfigError::Invalid { var, .. }) => var,
            other => panic!("expected an invalid variable, got {other:?}"),
        }
    }

    #[test]
    fn erasing_on_deauth_is_off_unless_asked() {
        let table = ("TERRA_DYNAMODB_TABLE", "terra-records");
        assert!(!load(&[table]).expect("valid").erase_on_deauth);
        let on = load(&[table, ("TERRA_ERASE_ON_DEAUTH", "true")]).expect("valid");
        assert!(on.erase_on_deauth);
        assert_eq!(
            failing_var(&[table, ("TERRA_ERASE_ON_DEAUTH", "yes")]),
            "TERRA_ERASE_ON_DEAUTH"
        );
    }

    #[test]
    fn tracing_is_off_unless_asked_and_xray_needs_lambdas_daemon() {
        let table = ("TERRA_DYNAMODB_TABLE", "terra-records");
        assert_eq!(load(&[table]).expect("valid").tracing, Tracing::Off);
        let off = load(&[table, ("TERRA_TRACING", "off")]).expect("valid");
        assert_eq!(off.tracing, Tracing::Off);
        let daemon = ("AWS_XRAY_DAEMON_ADDRESS", "169.254.79.129:2000");
        let xray = load(&[table, ("TERRA_TRACING", "xray"), daemon]).expect("valid");
        assert_eq!(
            xray.tracing,
            Tracing::Xray {
                daemon: "169.254.79.129:2000".parse().expect("an address")
            }
        );
        assert_eq!(
            failing_var(&[table, ("TERRA_TRACING", "xray")]),
            "AWS_XRAY_DAEMON_ADDRESS"
        );
        assert_eq!(
            failing_var(&[
                table,
                ("TERRA_TRACING", "xray"),
                ("AWS_XRAY_DAEMON_ADDRESS", "xray-daemon")
            ]),
            "AWS_XRAY_DAEMON_ADDRESS"
        );
        assert_eq!(
            failing_var(&[table, ("TERRA_TRACING", "otlp"), daemon]),
            "TERRA_TRACING"
        );
    }

    #[test]
    fn table_retention_is_whole_days_or_none() {
        let table = ("TERRA_DYNAMODB_TABLE", "terra-records");
        assert_eq!(load(&[table]).expect("valid").dynamodb_retention_days, None);
        let empty = load(&[table, ("TERRA_DYNAMODB_RETENTION_DAYS", "")]).expect("valid");
        assert_eq!(empty.dynamodb_retention_days, None);
        let days = load(&[table, ("TERRA_DYNAMODB_RETENTION_DAYS", "30")]).expect("valid");
        assert_eq!(days.dynamodb_retention_days, Some(30));
        for bad in ["0", "-1", "36501", "a month"] {
            assert_eq!(
                failing_var(&[table, ("TERRA_DYNAMODB_RETENTION_DAYS", bad)]),
                "TERRA_DYNAMODB_RETENTION_DAYS",
                "{bad}"
            );
        }
    }

    #[test]
    fn defaults_with_just_a_bucket() {
        let config = load(&[("TERRA_S3_BUCKET", "my-terra-archive")]).expect("valid");
        let s3 = config.s3.expect("s3 sink");
        assert_eq!(s3.prefix.as_str(), "terra/");
        assert_eq!(s3.compression, S3Compression::None);
        assert_eq!(config.fetch, FetchSettings::default());
        assert_eq!(config.concurrency, 32);
        assert_eq!(config.url_policy, UrlPolicy::default());
        assert!(!config.s3_force_path_style);
        assert_eq!(config.kafka, KafkaSettings::default());
        assert_eq!(config.metrics_namespace, "TerraSink");
        assert_eq!(config.memory_budget_bytes, derived_budget_bytes(512));
    }

    #[test]
    fn the_memory_budget_follows_the_function_unless_set() {
        let bucket = ("TERRA_S3_BUCKET", "bucket");
        let budget = |vars: &[(&str, &str)]| load(vars).expect("valid").memory_budget_bytes;
        assert_eq!(
            budget(&[bucket, ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048")]),
            derived_budget_bytes(2048)
        );
        assert_eq!(
            budget(&[
                bucket,
                ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048"),
                ("TERRA_MEMORY_BUDGET_MB", "100")
            ]),
            100 * 1024 * 1024
        );
        // More than the function has is a mistake, not a budget.
        assert_eq!(
            failing_var(&[
                bucket,
                ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512"),
                ("TERRA_MEMORY_BUDGET_MB", "600")
            ]),
            "TERRA_MEMORY_BUDGET_MB"
        );
    }

    #[test]
    fn reads_every_setting() {
        let config = load(&[
            ("TERRA_S3_BUCKET", "b.example"),
            ("TERRA_S3_PREFIX", "raw/terra"),
            ("TERRA_S3_COMPRESSION", "gzip"),
            ("TERRA_FETCH_CONCURRENCY", "8"),
            ("TERRA_FETCH_TIMEOUT_SECS", "3"),
            ("TERRA_FETCH_MAX_ATTEMPTS", "2"),
            ("TERRA_MAX_PAYLOAD_BYTES", "1000"),
            (
                "TERRA_ALLOWED_URL_HOSTS",
                "storage.googleapis.com, *.amazonaws.com",
            ),
            ("TERRA_ALLOW_INSECURE_URLS", "TRUE"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
            ("TERRA_KAFKA_PARTIAL_BATCH", "true"),
            (
                "TERRA_QUARANTINE_QUEUE_URL",
                "https://sqs.eu-west-1.amazonaws.com/123456789012/terra-quarantine.fifo",
            ),
            ("TERRA_METRICS_NAMESPACE", "Acme/Terra"),
            ("TERRA_DYNAMODB_MAX_ITEMS", "250"),
        ])
        .expect("valid");
        assert_eq!(config.dynamodb_max_items, 250);
        assert_eq!(config.metrics_namespace, "Acme/Terra");
        assert_eq!(
            config.kafka,
            KafkaSettings {
                partial_batch: true,
                quarantine_queue_url: Some(
                    "https://sqs.eu-west-1.amazonaws.com/123456789012/terra-quarantine.fifo".into()
                ),
            }
        );
        let s3 = config.s3.expect("s3 sink");
        assert_eq!(
            (s3.prefix.as_str(), s3.compression),
            ("raw/terra/", S3Compression::Gzip)
        );
        assert_eq!(config.concurrency, 8);
        assert_eq!(
            config.fetch,
            FetchSettings {
                timeout: Duration::from_secs(3),
                max_attempts: Some(2),
                max_payload_bytes: 1000
            }
        );
        assert_eq!(config.url_policy.allowed_hosts.map(|h| h.len()), Some(2));
        assert!(config.url_policy.allow_insecure);
        assert!(config.s3_force_path_style);
    }

    #[test]
    fn dynamodb_alone_is_a_sink() {
        let config = load(&[("TERRA_DYNAMODB_TABLE", "terra-records")]).expect("valid");
        assert_eq!(
            (config.s3, config.dynamodb_table.as_deref()),
            (None, Some("terra-records"))
        );
    }

    #[test]
    fn needs_a_sink() {
        assert_eq!(load(&[]), Err(ConfigError::NoSink));
        assert_eq!(load(&[("TERRA_S3_BUCKET", "  ")]), Err(ConfigError::NoSink));
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        let bucket = ("TERRA_S3_BUCKET", "bucket");
        for (var, value) in [
            ("TERRA_S3_BUCKET", "Bad_Bucket"),
            ("TERRA_DYNAMODB_TABLE", "no spaces"),
            ("TERRA_S3_PREFIX", "../escape"),
            ("TERRA_S3_COMPRESSION", "zstd"),
            ("TERRA_FETCH_CONCURRENCY", "0"),
            ("TERRA_FETCH_CONCURRENCY", "many"),
            ("TERRA_FETCH_TIMEOUT_SECS", "-1"),
            ("TERRA_FETCH_MAX_ATTEMPTS", "0"),
            ("TERRA_MAX_PAYLOAD_BYTES", "64MB"),
            ("TERRA_MEMORY_BUDGET_MB", "0"),
            ("TERRA_DYNAMODB_MAX_ITEMS", "0"),
            ("TERRA_DYNAMODB_MAX_ITEMS", "1000001"),
            ("TERRA_MEMORY_BUDGET_MB", "lots"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "big"),
            ("TERRA_ALLOWED_URL_HOSTS", "ok.com,bad host"),
            ("TERRA_ALLOW_INSECURE_URLS", "yes please"),
            ("TERRA_KAFKA_PARTIAL_BATCH", "on"),
            ("TERRA_METRICS_NAMESPACE", "AWS/Lambda"),
            ("TERRA_METRICS_NAMESPACE", "terra{sink}"),
            ("TERRA_QUARANTINE_QUEUE_URL", "terra-quarantine"),
            (
                "TERRA_QUARANTINE_QUEUE_URL",
                "arn:aws:sqs:eu-west-1:123456789012:terra-quarantine",
            ),
            (
                "TERRA_QUARANTINE_QUEUE_URL",
                "https://sqs.eu-west-1.amazonaws.com/terra-quarantine",
            ),
            // The old name, valid URL and all: refused, so the rename
            // cannot pass unnoticed.
            (
                RETIRED_QUARANTINE_VARIABLE,
                "https://sqs.eu-west-1.amazonaws.com/123456789012/terra-quarantine",
            ),
        ] {
            let vars = if var == "TERRA_S3_BUCKET" {
                vec![(var, value)]
            } else {
                vec![bucket, (var, value)]
            };
            assert_eq!(failing_var(&vars), var, "{var}={value}");
            let message = load(&vars).expect_err("invalid").to_string();
            assert!(message.starts_with(var), "{message}");
        }
    }

    #[test]
    fn non_utf8_values_name_their_variable() {
        let result = Config::from_lookup(|k| match k {
            "TERRA_S3_BUCKET" => Some(Ok("bucket".into())),
            "TERRA_S3_PREFIX" => Some(Err(())),
            _ => None,
        });
        assert!(matches!(
            result,
            Err(ConfigError::Invalid {
                var: "TERRA_S3_PREFIX",
                ..
            })
        ));
    }

    #[test]
    fn source_buckets_are_checked_and_know_the_emulator() {
        let bucket = ("TERRA_S3_BUCKET", "bucket");
        assert_eq!(load(&[bucket]).expect("valid").source_buckets, None);
        let config =
            load(&[bucket, ("TERRA_SOURCE_BUCKETS", " terra-drop , terra.eu ,")]).expect("valid");
        let sources = config.source_buckets.expect("source buckets");
        assert_eq!(sources.names(), ["terra-drop", "terra.eu"]);
        let emulated = load(&[
            bucket,
            ("TERRA_SOURCE_BUCKETS", "terra-drop"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
        ])
        .expect("valid")
        .source_buckets
        .expect("source buckets");
        let url = url::Url::parse("http://127.0.0.1:5000/terra-drop/a.json").expect("url");
        assert_eq!(emulated.locate(&url).expect("located").key, "a.json");
        assert_eq!(
            failing_var(&[bucket, ("TERRA_SOURCE_BUCKETS", "terra-drop,Not_A_Bucket")]),
            "TERRA_SOURCE_BUCKETS"
        );
        assert_eq!(
            failing_var(&[
                bucket,
                ("TERRA_SOURCE_BUCKETS", "terra-drop"),
                ("AWS_ENDPOINT_URL_S3", "not a url"),
            ]),
            "AWS_ENDPOINT_URL_S3"
        );
        let owned = load(&[
            bucket,
            ("TERRA_SOURCE_BUCKETS", "terra-drop"),
            ("TERRA_SOURCE_BUCKET_OWNER", "123456789012"),
        ])
        .expect("valid")
        .source_buckets
        .expect("source buckets");
        let url =
            url::Url::parse("https://terra-drop.s3.eu-west-2.amazonaws.com/a.json").expect("url");
        assert_eq!(
            owned
                .locate(&url)
                .expect("located")
                .expected_owner
                .as_deref(),
            Some("123456789012")
        );
        assert_eq!(
            failing_var(&[
                bucket,
                ("TERRA_SOURCE_BUCKETS", "terra-drop"),
                ("TERRA_SOURCE_BUCKET_OWNER", "12345"),
            ]),
            "TERRA_SOURCE_BUCKET_OWNER"
        );
    }
}
