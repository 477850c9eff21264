//! What the templates deploy, read from the templates themselves so that
//! local runs use the same settings: the parameter and setting defaults,
//! resolved through the intrinsic functions that wire them to the queue, the
//! event source mappings and the function's environment. Scenarios about
//! time run these durations scaled down by one factor, keeping every ratio.

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
    /// The defaults of the repository's templates: the SQS stack's
    /// `template.yaml`, and `kafka/template.yaml` for the Kafka mapping.
    pub fn from_template() -> Deployed {
        let read = |relative: &str| {
            let path = format!("{}/../{relative}", env!("CARGO_MANIFEST_DIR"));
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        Deployed::from_yaml(&read("template.yaml"), &read("kafka/template.yaml"))
    }

    pub fn from_yaml(sqs_template: &str, kafka_template: &str) -> Deployed {
        let sqs: Value = serde_yaml_ng::from_str(sqs_template).expect("template.yaml is YAML");
        let kafka: Value =
            serde_yaml_ng::from_str(kafka_template).expect("kafka/template.yaml is YAML");
        let (t, k) = (Template(&sqs), Template(&kafka));
        let queue = &sqs["Resources"]["EventsQueue"]["Properties"];
        let sqs_events = &sqs["Resources"]["SqsHandlerFunction"]["Properties"]["Events"]["TerraQueue"]
            ["Properties"];
        let mapping = &kafka["Resources"]["KafkaEventSourceMapping"]["Properties"];
        let globals = &sqs["Globals"]["Function"];
        let mut environment = Vec::new();
        if let Value::Mapping(variables) = &globals["Environment"]["Variables"] {
            for (name, value) in variables {
                if let (Some(name), Some(value)) = (name.as_str(), t.try_resolve(value)) {
                    environment.push((name.to_owned(), value));
                }
            }
        }
        let kafka_partial_batch = k.condition("KafkaPartialBatchOn");
        Deployed {
            function_timeout: t.seconds(&globals["Timeout"]),
            function_memory_mb: t.number(&globals["MemorySize"]),
            visibility_timeout: t.seconds(&queue["VisibilityTimeout"]),
            max_receive_count: t.number(&queue["RedrivePolicy"]["maxReceiveCount"]) as u32,
            sqs_batch_size: t.number(&sqs_events["BatchSize"]) as i32,
            sqs_batching_window: t.seconds(&sqs_events["MaximumBatchingWindowInSeconds"]),
            kafka_batch_size: k.number(&mapping["BatchSize"]) as usize,
            kafka_partial_batch,
            // Conditional on partial batch responses: the setting's default
            // whether or not the mapping uses it.
            kafka_maximum_retry_attempts: k.number(&k.setting("KafkaMaximumRetryAttempts")) as u32,
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

/// What docs/deploy.md's edit for Lambda Managed Instances deploys: one
/// execution environment taking this many invocations at once, with this
/// much memory (the example its deploy command gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagedInstancesEdit {
    pub per_environment_concurrency: usize,
    pub memory_mb: u64,
}

impl ManagedInstancesEdit {
    /// Read from docs/deploy.md, the edit users make to their template.
    pub fn from_docs() -> ManagedInstancesEdit {
        let path = format!("{}/../docs/deploy.md", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        ManagedInstancesEdit::from_markdown(&text)
    }

    pub fn from_markdown(text: &str) -> ManagedInstancesEdit {
        let (_, edit) = text
            .split_once("<!-- managed-instances-edit -->")
            .expect("deploy.md marks the Managed Instances edit");
        let number_after = |marker: &str| -> u64 {
            let (_, rest) = edit
                .split_once(marker)
                .unwrap_or_else(|| panic!("the edit sets {marker}"));
            let digits: String = rest
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits
                .parse()
                .unwrap_or_else(|e| panic!("{marker} {digits:?}: {e}"))
        };
        ManagedInstancesEdit {
            per_environment_concurrency: usize::try_from(number_after(
                "PerExecutionEnvironmentMaxConcurrency:",
            ))
            .expect("a concurrency that fits"),
            memory_mb: number_after("FunctionMemory="),
        }
    }
}

/// Resolves the intrinsic functions the settings above use, with every
/// parameter at its default: `Ref`, `Fn::FindInMap`, `Fn::Join`,
/// `Fn::Split`, `Fn::Select`, `Fn::If` and the conditions behind it.
struct Template<'a>(&'a Value);

impl Template<'_> {
    fn parameter(&self, name: &str) -> Value {
        let default = &self.0["Parameters"][name]["Default"];
        assert!(!default.is_null(), "parameter {name} has no default");
        default.clone()
    }

    /// A setting read as the template reads it (Settings at its default).
    fn setting(&self, key: &str) -> Value {
        let default = &self.0["Mappings"]["Defaults"]["Settings"][key];
        assert!(!default.is_null(), "no setting {key}");
        default.clone()
    }

    fn condition(&self, name: &str) -> bool {
        let body = &self.0["Conditions"][name];
        self.truth(body)
            .unwrap_or_else(|| panic!("cannot decide condition {name}: {body:?}"))
    }

    fn truth(&self, node: &Value) -> Option<bool> {
        let Value::Tagged(tagged) = node else {
            return None;
        };
        let args = tagged.value.as_sequence();
        match tagged.tag.to_string().trim_start_matches('!') {
            "Condition" => Some(self.condition(tagged.value.as_str()?)),
            "Equals" => {
                let [left, right] = args?.as_slice() else {
                    return None;
                };
                Some(self.try_resolve(left)? == self.try_resolve(right)?)
            }
            "Not" => Some(!self.truth(args?.first()?)?),
            "And" => args?
                .iter()
                .try_fold(true, |all, c| Some(all && self.truth(c)?)),
            "Or" => args?
                .iter()
                .try_fold(false, |any, c| Some(any || self.truth(c)?)),
            _ => None,
        }
    }

    fn try_resolve(&self, value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Tagged(tagged) => {
                let args = tagged.value.as_sequence();
                match tagged.tag.to_string().trim_start_matches('!') {
                    "Ref" => {
                        let name = tagged.value.as_str()?;
                        self.0["Parameters"].get(name)?;
                        self.try_resolve(&self.parameter(name))
                    }
                    "FindInMap" => {
                        let [map, key, attribute] = args?.as_slice() else {
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
                    "Join" => {
                        let [separator, Value::Sequence(parts)] = args?.as_slice() else {
                            return None;
                        };
                        let parts: Option<Vec<String>> =
                            parts.iter().map(|p| self.try_resolve(p)).collect();
                        Some(parts?.join(&self.try_resolve(separator)?))
                    }
                    "Select" => {
                        let [index, list] = args?.as_slice() else {
                            return None;
                        };
                        let index: usize = self.try_resolve(index)?.parse().ok()?;
                        self.try_list(list)?.into_iter().nth(index)
                    }
                    "If" => {
                        let [name, when_true, when_false] = args?.as_slice() else {
                            return None;
                        };
                        let chosen = if self.condition(name.as_str()?) {
                            when_true
                        } else {
                            when_false
                        };
                        self.try_resolve(chosen)
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn try_list(&self, value: &Value) -> Option<Vec<String>> {
        match value {
            Value::Sequence(items) => items.iter().map(|i| self.try_resolve(i)).collect(),
            Value::Tagged(tagged) if tagged.tag == "Split" => {
                let [separator, text] = tagged.value.as_sequence()?.as_slice() else {
                    return None;
                };
                let (separator, text) = (self.try_resolve(separator)?, self.try_resolve(text)?);
                Some(text.split(separator.as_str()).map(str::to_owned).collect())
            }
            _ => None,
        }
    }

    fn number(&self, value: &Value) -> u64 {
        let resolved = self
            .try_resolve(value)
            .unwrap_or_else(|| panic!("cannot resolve {value:?} from the template"));
        let number: i64 = resolved
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{resolved:?} is not a whole number"));
        u64::try_from(number).unwrap_or_else(|_| panic!("{number} is negative"))
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
        assert!(deployed.kafka_batch_size >= 1);
        let scaled = deployed.scaled_down(20);
        assert_eq!(scaled.url_lifetime, Duration::from_secs(30));
        assert_eq!(scaled.max_receive_count, deployed.max_receive_count);
    }

    #[test]
    fn reads_the_managed_instances_edit_from_the_docs() {
        let edit = ManagedInstancesEdit::from_markdown(
            "<!-- managed-instances-edit -->\n```yaml\n        \
             PerExecutionEnvironmentMaxConcurrency: 8\n```\n\
             `Settings=\"FunctionMemory=4096 FunctionSubnetIds=subnet-0a1b2c3d\"`",
        );
        assert_eq!(
            edit,
            ManagedInstancesEdit {
                per_environment_concurrency: 8,
                memory_mb: 4096
            }
        );
        let documented = ManagedInstancesEdit::from_docs();
        assert!(documented.per_environment_concurrency > 1, "{documented:?}");
        assert!(documented.memory_mb >= 2048, "{documented:?}");
    }

    /// A deployer's Settings pair wins over the default; the others keep theirs.
    #[test]
    fn a_setting_given_wins_over_its_default() {
        let sqs =
            std::fs::read_to_string(format!("{}/../template.yaml", env!("CARGO_MANIFEST_DIR")))
                .expect("template.yaml");
        let kafka = std::fs::read_to_string(format!(
            "{}/../kafka/template.yaml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("kafka/template.yaml");
        let given = |text: &str, settings: &str| {
            let mut template: Value = serde_yaml_ng::from_str(text).expect("YAML");
            template["Parameters"]["Settings"]["Default"] = Value::String(settings.to_owned());
            serde_yaml_ng::to_string(&template).expect("YAML")
        };
        let defaults = Deployed::from_yaml(&sqs, &kafka);
        let tuned = Deployed::from_yaml(
            &given(&sqs, "SqsBatchSize=20  FunctionTimeout=300"),
            &given(&kafka, "KafkaPartialBatch=true KafkaBatchSize=7"),
        );
        assert_eq!(tuned.sqs_batch_size, 20);
        assert_eq!(tuned.function_timeout, Duration::from_secs(300));
        assert_eq!(tuned.visibility_timeout, Duration::from_secs(2100));
        assert_eq!(tuned.max_receive_count, defaults.max_receive_count);
        assert_eq!(
            (tuned.kafka_partial_batch, tuned.kafka_batch_size),
            (true, 7)
        );
        assert!(!defaults.kafka_partial_batch);
    }
}
