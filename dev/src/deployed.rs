//! What `template.yaml` deploys, read from the template itself so that local
//! runs use the same settings: the parameter defaults, resolved through the
//! `!Ref` and `!FindInMap` that wire them to the queue, the event source
//! mappings and the function's environment. Scenarios about time run these
//! durations scaled down by one factor, keeping every ratio.

use std::time::Duration;

use serde_yaml_ng::Value;

/// Terra's URL lifetime (`expires_in`): Terra's, not the template's.
pub const TERRA_URL_LIFETIME: Duration = Duration::from_secs(600);

/// The settings a default deployment of `template.yaml` runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployed {
    pub function_timeout: Duration,
    /// The function's memory size in MB (Lambda's MB are MiB).
    pub function_memory_mb: u64,
    /// The events queue's visibility timeout.
    pub visibility_timeout: Duration,
    /// The events queue's redrive policy.
    pub max_receive_count: u32,
    /// The SQS event source mapping.
    pub sqs_batch_size: i32,
    pub sqs_batching_window: Duration,
    /// The Kafka event source mapping.
    pub kafka_batch_size: usize,
    /// Whether the Kafka mapping has `ReportBatchItemFailures` (and the
    /// function answers with partial batch responses).
    pub kafka_partial_batch: bool,
    /// Retries before the mapping gives a batch up (partial batch mode
    /// only; otherwise it retries until the record leaves the topic).
    pub kafka_maximum_retry_attempts: u32,
    /// The functions' environment, where it follows from parameters alone
    /// (not the bucket and table, which name resources).
    pub environment: Vec<(String, String)>,
    /// Terra's URL lifetime, scaled with the rest.
    pub url_lifetime: Duration,
}

impl Deployed {
    /// The defaults of the repository's `template.yaml`.
    pub fn from_template() -> Deployed {
        let path = format!("{}/../template.yaml", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        Deployed::from_yaml(&text)
    }

    pub fn from_yaml(text: &str) -> Deployed {
        let template: Value = serde_yaml_ng::from_str(text).expect("template.yaml is YAML");
        let t = Template(&template);
        let queue = &template["Resources"]["EventsQueue"]["Properties"];
        let sqs_events = &template["Resources"]["SqsHandlerFunction"]["Properties"]["Events"]["TerraQueue"]
            ["Properties"];
        let kafka = &template["Resources"]["KafkaEventSourceMapping"]["Properties"];
        let globals = &template["Globals"]["Function"];
        let mut environment = Vec::new();
        if let Value::Mapping(variables) = &globals["Environment"]["Variables"] {
            for (name, value) in variables {
                if let (Some(name), Some(value)) = (name.as_str(), t.try_resolve(value)) {
                    environment.push((name.to_owned(), value));
                }
            }
        }
        Deployed {
            function_timeout: t.seconds(&globals["Timeout"]),
            function_memory_mb: t.number(&globals["MemorySize"]),
            visibility_timeout: t.seconds(&queue["VisibilityTimeout"]),
            max_receive_count: t.number(&queue["RedrivePolicy"]["maxReceiveCount"]) as u32,
            sqs_batch_size: t.number(&sqs_events["BatchSize"]) as i32,
            sqs_batching_window: t.seconds(&sqs_events["MaximumBatchingWindowInSeconds"]),
            kafka_batch_size: t.number(&kafka["BatchSize"]) as usize,
            kafka_partial_batch: t.try_resolve(&t.parameter("KafkaPartialBatch")).as_deref()
                == Some("true"),
            // Conditional on partial batch responses: the parameter's default.
            kafka_maximum_retry_attempts: t.number(&t.parameter("KafkaMaximumRetryAttempts"))
                as u32,
            environment,
            url_lifetime: TERRA_URL_LIFETIME,
        }
    }

    /// The function environment for a local run: the template's, less the
    /// allowed URL hosts (the local payload server is the only host there),
    /// and the memory size Lambda announces to the function.
    pub fn loopback_environment(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.environment
            .iter()
            .filter(|(name, _)| name != "TERRA_ALLOWED_URL_HOSTS")
            .cloned()
            .chain([(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".to_owned(),
                self.function_memory_mb.to_string(),
            )])
    }

    /// Every duration divided by `factor`: the same deployment, faster.
    pub fn scaled_down(&self, factor: u32) -> Deployed {
        Deployed {
            function_timeout: self.function_timeout / factor,
            visibility_timeout: self.visibility_timeout / factor,
            sqs_batching_window: self.sqs_batching_window / factor,
            url_lifetime: self.url_lifetime / factor,
            ..self.clone()
        }
    }
}

/// Resolves the intrinsic functions the settings above use.
struct Template<'a>(&'a Value);

impl Template<'_> {
    fn parameter(&self, name: &str) -> Value {
        let default = &self.0["Parameters"][name]["Default"];
        assert!(!default.is_null(), "parameter {name} has no default");
        default.clone()
    }

    fn try_resolve(&self, value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Tagged(tagged) if tagged.tag == "Ref" => {
                let name = tagged.value.as_str()?;
                self.0["Parameters"].get(name)?;
                self.try_resolve(&self.parameter(name))
            }
            Value::Tagged(tagged) if tagged.tag == "FindInMap" => {
                let path = tagged.value.as_sequence()?;
                let [map, key, attribute] = path.as_slice() else {
                    return None;
                };
                let (map, key, attribute) = (
                    self.try_resolve(map)?,
                    self.try_resolve(key)?,
                    self.try_resolve(attribute)?,
                );
                self.try_resolve(
                    &self.0["Mappings"][map.as_str()][key.as_str()][attribute.as_str()],
                )
            }
            _ => None,
        }
    }

    fn number(&self, value: &Value) -> u64 {
        let resolved = self
            .try_resolve(value)
            .unwrap_or_else(|| panic!("cannot resolve {value:?} from the template"));
        resolved
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{resolved:?} is not a whole number"))
    }

    fn seconds(&self, value: &Value) -> Duration {
        Duration::from_secs(self.number(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_default_deployment() {
        let deployed = Deployed::from_template();
        // The queue's visibility timeout follows the function timeout through
        // the template's own mapping (6 x timeout + 300 s).
        assert_eq!(
            deployed.visibility_timeout,
            deployed.function_timeout * 6 + Duration::from_secs(300)
        );
        assert!(deployed.max_receive_count >= 1);
        assert!(deployed.sqs_batch_size >= 1);
        let named = |var: &str| deployed.environment.iter().any(|(name, _)| name == var);
        assert!(
            named("TERRA_FETCH_CONCURRENCY"),
            "{:?}",
            deployed.environment
        );
        assert!(!named("TERRA_S3_BUCKET"), "names a resource");
        assert!(deployed.function_memory_mb >= 128);
        let scaled = deployed.scaled_down(20);
        assert_eq!(scaled.url_lifetime, Duration::from_secs(30));
        assert_eq!(scaled.max_receive_count, deployed.max_receive_count);
    }
}
