//! The whole flow on one machine: moto as S3, DynamoDB and SQS, the Terra
//! simulator sending pointer messages, the local SQS mapping feeding the
//! compiled `sqs-handler` through the Runtime API. `make demo` prints the
//! result; the end-to-end test asserts on it.

pub mod kafka;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;

use crate::deployed::{Deployed, ManagedInstancesEdit};
use crate::fault_proxy::{FaultProxy, FaultSchedule};
use crate::local_stack::LocalStack;
use crate::moto::Moto;
use crate::runtime_api::{HandlerPool, RuntimeApi, lambda_environment};
use crate::sqs_mapping::{MappingSettings, MappingStats, SqsMapping};
use crate::terra_simulator::{Kind, MIX, Sent, TerraSimulator, count_by_kind};

/// A run of the flow: how it is deployed, what Terra sends, and the faults
/// on the way. Start from [`Scenario::new`], [`Scenario::in_the_stack`] or
/// [`Scenario::at_production_ratios`], then add what the test is about with
/// the `with_*` methods.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The compiled `sqs-handler`.
    handler_binary: String,
    /// Pointer messages Terra sends.
    messages: usize,
    /// Handler processes (concurrent Lambda instances), and the mapping's
    /// concurrency.
    instances: usize,
    /// Handler processes when fewer than `instances`: on Lambda Managed
    /// Instances one execution environment takes several invocations at
    /// once.
    environments: Option<usize>,
    batch_size: i32,
    /// How long the mapping keeps receiving to fill a batch.
    batching_window: Duration,
    function_timeout: Duration,
    /// The queue's visibility timeout: how soon a failed message comes back.
    visibility_timeout: Duration,
    /// Receipts before a message moves to the dead-letter queue.
    max_receive_count: u32,
    /// When to stop waiting for the queue to drain (in the stack, no sooner
    /// than its redrive policy can dead-letter a message).
    give_up: Duration,
    /// The kinds of message Terra sends, in turn.
    mix: Vec<Kind>,
    /// Terra's own-bucket mode: Terra uploads `messages` of its examples to
    /// a source bucket in moto and sends pre-signed URLs into it; the
    /// handler reads them with its role (`TERRA_SOURCE_BUCKETS`). `mix` is
    /// not used.
    own_bucket: bool,
    /// When not empty, the queue (and its dead-letter queue) is FIFO and
    /// Terra sends these message groups, one after another, instead of
    /// `messages` of `mix`.
    fifo_groups: Vec<Vec<Kind>>,
    /// Faults injected between the handlers and S3/DynamoDB.
    store_faults: Option<FaultSchedule>,
    /// Kill one handler process this long after the first message is sent
    /// (mid-batch), and start a new one in its place.
    kill_an_instance_after: Option<Duration>,
    /// More handler environment (overrides the defaults).
    handler_env: Vec<(String, String)>,
    /// Quick fetch retries (2 s timeout, 2 attempts) instead of the
    /// configuration's defaults.
    quick_fetch: bool,
    /// Terra's URL lifetime: `expires_in`, and when the payload server
    /// starts refusing a URL.
    url_lifetime: Duration,
    /// Longer than an invocation, shorter than a URL lives: how long a
    /// `Kind::SlowFirst` payload's first answer takes, and a
    /// `Kind::DownAtFirst` payload's host stays down.
    longer_than_an_invocation: Duration,
    /// The payload host answers 500 to everything from this long after the
    /// first message is sent, for the second duration.
    host_outage: Option<(Duration, Duration)>,
    /// S3 answers 500 to everything, the same way (DynamoDB and SQS stay up).
    pub s3_outage: Option<(Duration, Duration)>,
    /// No message can be delivered: the payload host stays down longer than
    /// the URLs live. Each must end dead-lettered as `expired`.
    undeliverable: bool,
    /// Kinds this configuration cannot write (a payload over
    /// `TERRA_DYNAMODB_MAX_ITEMS` where DynamoDB is configured): they must
    /// end dead-lettered.
    undeliverable_kinds: Vec<Kind>,
    /// Run in the stack `template.yaml` creates, deployed into moto with IAM
    /// enforced, every duration it sets divided by this factor (see
    /// [`Scenario::in_the_stack`]).
    in_the_stack_scaled_down: Option<u32>,
}

impl Scenario {
    pub fn new(handler_binary: impl Into<String>) -> Scenario {
        Scenario {
            handler_binary: handler_binary.into(),
            messages: 48,
            instances: 2,
            environments: None,
            batch_size: 10,
            batching_window: Duration::ZERO,
            function_timeout: Duration::from_secs(5),
            visibility_timeout: Duration::from_secs(6),
            max_receive_count: 3,
            give_up: Duration::from_secs(120),
            mix: MIX.to_vec(),
            fifo_groups: Vec::new(),
            own_bucket: false,
            store_faults: None,
            kill_an_instance_after: None,
            handler_env: Vec::new(),
            quick_fetch: true,
            url_lifetime: crate::deployed::TERRA_URL_LIFETIME,
            longer_than_an_invocation: Duration::from_secs(10),
            host_outage: None,
            s3_outage: None,
            undeliverable: false,
            undeliverable_kinds: Vec::new(),
            in_the_stack_scaled_down: None,
        }
    }

    /// The run `make demo` shows: the stack `template.yaml` creates, deployed
    /// into moto (see [`crate::local_stack`]), with IAM enforced. Terra
    /// sends with the key created for the stack's sender user; the handler
    /// runs with the function's environment, memory size and role; the
    /// mapping takes batch size, window, response types and maximum
    /// concurrency from the stack's event source mapping, and the queue its
    /// own visibility timeout and redrive policy. Every duration (function
    /// timeout, visibility timeout, batching window, URL lifetime) is divided
    /// by `factor`, keeping every ratio.
    pub fn in_the_stack(handler_binary: impl Into<String>, factor: u32) -> Scenario {
        let mut scenario = Scenario::new(handler_binary);
        scenario.in_the_stack_scaled_down = Some(factor);
        scenario.quick_fetch = false;
        scenario.url_lifetime = crate::deployed::TERRA_URL_LIFETIME / factor;
        scenario
    }

    /// The deployment `template.yaml` makes by default, with every duration
    /// divided by `factor`: URL lifetime, function timeout, visibility
    /// timeout, batching window, and the template's batch size,
    /// `maxReceiveCount` and function environment (the payload host allowed
    /// is the local one).
    pub fn at_production_ratios(handler_binary: impl Into<String>, factor: u32) -> Scenario {
        let deployed = Deployed::from_template().scaled_down(factor);
        let mut scenario = Scenario::new(handler_binary);
        scenario.batch_size = deployed.sqs_batch_size;
        scenario.batching_window = deployed.sqs_batching_window;
        scenario.function_timeout = deployed.function_timeout;
        scenario.visibility_timeout = deployed.visibility_timeout;
        scenario.max_receive_count = deployed.max_receive_count;
        scenario.url_lifetime = deployed.url_lifetime;
        scenario.longer_than_an_invocation = deployed.function_timeout * 2;
        scenario.quick_fetch = false;
        scenario.handler_env = deployed.loopback_environment().collect();
        scenario
    }

    /// Terra sends `messages`, of the kinds in `mix` in turn.
    pub fn with_messages(mut self, mix: &[Kind], messages: usize) -> Scenario {
        self.mix = mix.to_vec();
        self.messages = messages;
        self
    }

    /// Terra sends these FIFO message groups, one after another, to a FIFO
    /// queue (and dead-letter queue), instead of messages of the mix.
    pub fn with_fifo_groups(mut self, groups: Vec<Vec<Kind>>) -> Scenario {
        self.fifo_groups = groups;
        self
    }

    /// Terra uploads its examples to a source bucket and sends pre-signed
    /// URLs into it; the handler reads them with its role.
    pub fn in_own_bucket_mode(mut self) -> Scenario {
        self.own_bucket = true;
        self
    }

    pub fn with_handler_binary(mut self, handler_binary: impl Into<String>) -> Scenario {
        self.handler_binary = handler_binary.into();
        self
    }

    /// One more handler variable, over the defaults.
    pub fn with_handler_env(mut self, var: &str, value: &str) -> Scenario {
        self.handler_env.push((var.into(), value.into()));
        self
    }

    pub fn with_timeouts(mut self, function: Duration, visibility: Duration) -> Scenario {
        self.function_timeout = function;
        self.visibility_timeout = visibility;
        self
    }

    pub fn with_max_receive_count(mut self, max_receive_count: u32) -> Scenario {
        self.max_receive_count = max_receive_count;
        self
    }

    /// How long to wait for the queue to drain before reporting.
    pub fn giving_up_after(mut self, give_up: Duration) -> Scenario {
        self.give_up = give_up;
        self
    }

    /// Faults between the handlers and S3/DynamoDB, on every `every`-th
    /// request.
    pub fn with_store_faults(mut self, schedule: FaultSchedule) -> Scenario {
        self.store_faults = Some(schedule);
        self
    }

    /// On Lambda Managed Instances as docs/deploy.md's edit deploys them: one
    /// execution environment, of the edit's memory, taking up to its
    /// per-environment concurrency at once (`AWS_LAMBDA_MAX_CONCURRENCY`),
    /// fed by a mapping invoking that many at a time.
    pub fn on_managed_instances(mut self, edit: ManagedInstancesEdit) -> Scenario {
        self.instances = edit.per_environment_concurrency;
        self.environments = Some(1);
        self.with_handler_env(
            "AWS_LAMBDA_MAX_CONCURRENCY",
            &edit.per_environment_concurrency.to_string(),
        )
        .with_handler_env(
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            &edit.memory_mb.to_string(),
        )
    }

    /// One handler process is killed `after` the first message is sent, and
    /// another started in its place.
    pub fn with_kill_at(mut self, after: Duration) -> Scenario {
        self.kill_an_instance_after = Some(after);
        self
    }

    /// The payload host answers 500 to everything from `from` after the
    /// first message is sent, for `lasting`.
    pub fn with_host_outage(mut self, from: Duration, lasting: Duration) -> Scenario {
        self.host_outage = Some((from, lasting));
        self
    }

    /// S3 answers 500 to everything the same way (DynamoDB and SQS stay up).
    pub fn with_s3_outage(mut self, from: Duration, lasting: Duration) -> Scenario {
        self.s3_outage = Some((from, lasting));
        self
    }

    /// No message can be delivered: each must end dead-lettered as `expired`.
    pub fn expecting_nothing_delivered(mut self) -> Scenario {
        self.undeliverable = true;
        self
    }

    /// Kinds this configuration cannot write: they must end dead-lettered.
    pub fn expecting_undeliverable(mut self, kinds: &[Kind]) -> Scenario {
        self.undeliverable_kinds = kinds.to_vec();
        self
    }
}

pub const BUCKET: &str = "terra-demo-archive";
pub const TABLE: &str = "terra-demo-records";
pub const PREFIX: &str = "terra/";
/// The bucket Terra uploads to in own-bucket scenarios.
pub const SOURCE_BUCKET: &str = "terra-demo-drop";

/// Where a run's messages go and end, and how they are fed to the handler.
struct Deployment {
    bucket: String,
    table: String,
    prefix: String,
    queue_url: String,
    dead_letter_queue_url: String,
    /// How Terra sends.
    terra_sqs: aws_sdk_sqs::Client,
    /// How the mapping polls (Lambda polls with the function's role).
    mapping_sqs: aws_sdk_sqs::Client,
    mapping: MappingSettings,
    /// How long the queue may take to drain.
    drain_within: Duration,
    /// The stack's, when there is one.
    stack: Option<LocalStack>,
}

impl Deployment {
    /// Queue, dead-letter queue, bucket and table made by hand, with the
    /// scenario's settings.
    async fn by_hand(moto: &Moto, scenario: &Scenario) -> Deployment {
        moto.create_bucket(BUCKET).await;
        moto.create_table(TABLE).await;
        let sqs = moto.sqs();
        let fifo = !scenario.fifo_groups.is_empty();
        // A FIFO queue's dead-letter queue must be FIFO too.
        let (events, dead_letters) = if fifo {
            ("terra-demo-events.fifo", "terra-demo-dlq.fifo")
        } else {
            ("terra-demo-events", "terra-demo-dlq")
        };
        let fifo_attributes = || {
            fifo.then(|| {
                std::collections::HashMap::from([(
                    QueueAttributeName::FifoQueue,
                    "true".to_owned(),
                )])
            })
        };
        let dead_letter_queue_url = sqs
            .create_queue()
            .queue_name(dead_letters)
            .set_attributes(fifo_attributes())
            .send()
            .await
            .expect("create the dead-letter queue")
            .queue_url()
            .expect("queue URL")
            .to_owned();
        let dlq_arn = queue_arn(&sqs, &dead_letter_queue_url).await;
        let queue_url = sqs
            .create_queue()
            .queue_name(events)
            .set_attributes(fifo_attributes())
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                scenario.visibility_timeout.as_secs().to_string(),
            )
            .attributes(
                QueueAttributeName::RedrivePolicy,
                serde_json::json!({
                    "deadLetterTargetArn": dlq_arn,
                    "maxReceiveCount": scenario.max_receive_count
                })
                .to_string(),
            )
            .send()
            .await
            .expect("create the events queue")
            .queue_url()
            .expect("queue URL")
            .to_owned();
        Deployment {
            bucket: BUCKET.to_owned(),
            table: TABLE.to_owned(),
            prefix: PREFIX.to_owned(),
            queue_url,
            dead_letter_queue_url,
            terra_sqs: sqs.clone(),
            mapping_sqs: sqs,
            mapping: MappingSettings {
                batch_size: scenario.batch_size,
                // Lambda has no batching window for FIFO queues.
                batching_window: if fifo {
                    Duration::ZERO
                } else {
                    scenario.batching_window
                },
                report_batch_item_failures: true,
                function_timeout: scenario.function_timeout,
                concurrency: scenario.instances.max(1),
            },
            drain_within: scenario.give_up,
            stack: None,
        }
    }

    /// The stack `template.yaml` creates, its durations divided by `factor`.
    /// Only the queue's visibility timeout has to be changed in the stack
    /// for that; the rest are the local run's own clocks.
    async fn in_the_stack(moto: &mut Moto, factor: u32, give_up: Duration) -> Deployment {
        let stack = LocalStack::deploy(moto).await;
        let queue = stack.queue.clone().expect("the SQS function's queue");
        let mapping = stack.mapping.clone().expect("the SQS function's mapping");
        let visibility_timeout = queue.visibility_timeout / factor;
        moto.sqs()
            .set_queue_attributes()
            .queue_url(&queue.url)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility_timeout.as_secs().to_string(),
            )
            .send()
            .await
            .expect("scale the queue's visibility timeout");
        let variable = |name: &str| stack.variable(name).unwrap_or_default().to_owned();
        // A message that fails every time reaches the dead-letter queue only
        // after `maxReceiveCount` visibility timeouts.
        let function_timeout = stack.function.timeout / factor;
        let drain_within =
            give_up.max(visibility_timeout * (queue.max_receive_count + 1) + function_timeout * 2);
        Deployment {
            bucket: variable("TERRA_S3_BUCKET"),
            table: variable("TERRA_DYNAMODB_TABLE"),
            prefix: variable("TERRA_S3_PREFIX"),
            queue_url: queue.url,
            dead_letter_queue_url: queue.dead_letter_queue_url,
            terra_sqs: moto.sqs_as(
                stack
                    .terra_sender
                    .clone()
                    .expect("the SQS stack creates Terra's sender"),
            ),
            mapping_sqs: moto.sqs_as(stack.function.credentials.clone()),
            mapping: MappingSettings {
                batch_size: mapping.batch_size,
                batching_window: mapping.batching_window / factor,
                report_batch_item_failures: mapping.report_batch_item_failures,
                function_timeout,
                // Without a maximum Lambda scales on; two instances stand in.
                concurrency: mapping.maximum_concurrency.unwrap_or(2),
            },
            drain_within,
            stack: Some(stack),
        }
    }
}

/// What became of every message.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub sent: Vec<Sent>,
    /// Messages the function reported done and the mapping deleted.
    pub acknowledged: BTreeSet<String>,
    /// Message ids on the dead-letter queue.
    pub dead_lettered: BTreeSet<String>,
    /// The last failure class the function logged for each message id.
    pub last_failure: BTreeMap<String, String>,
    pub archived_keys: Vec<String>,
    /// (pk, sk) of every DynamoDB item.
    pub projected: Vec<(String, String)>,
    /// The `terra_sim_revision` of every stored record that has one (see
    /// `Kind::Revision`).
    pub stored_revisions: Vec<u64>,
    pub invocations: usize,
    /// Invocations that failed as a whole (error or timeout).
    pub failed_invocations: usize,
    pub deliveries: usize,
    /// Faults the proxy injected into S3 and DynamoDB traffic.
    pub store_faults_injected: usize,
    /// Handler processes killed mid-batch.
    pub instances_killed: usize,
    /// The most invocations the handler processes had taken and not yet
    /// answered at one time.
    pub peak_invocations_at_once: usize,
    /// Handler processes the harness killed, as Lambda would, for passing
    /// the function's memory size.
    pub killed_for_memory: usize,
    /// The highest peak resident memory of any handler instance, in MiB.
    pub peak_memory_mib: u64,
    /// `RecordsFailedExpired` summed over every invocation's metrics.
    pub expired_in_metrics: u64,
    /// Messages that can end delivered (else they must be dead-lettered).
    pub deliverable: BTreeSet<String>,
    pub elapsed: Duration,
    pub bucket: String,
    pub table: String,
    pub prefix: String,
    /// The stack's outputs, when the run deployed one.
    pub stack_outputs: BTreeMap<String, String>,
    /// Handler log lines about a call IAM denied: each is a permission the
    /// function lacks, even where the failure changes no outcome (a
    /// visibility change, say).
    pub access_denied: Vec<String>,
    /// The handlers' lines about records, by Terra's `payload_reference`.
    pub record_lines: crate::logs::RecordLines,
}

impl DemoReport {
    /// Deliverable but not delivered (a dead letter of a message that
    /// could have been fetched in time is lost all the same), or neither
    /// delivered nor dead-lettered.
    pub fn lost(&self) -> Vec<&Sent> {
        self.sent
            .iter()
            .filter(|m| {
                !self.acknowledged.contains(&m.message_id)
                    && (self.deliverable.contains(&m.message_id)
                        || !self.dead_lettered.contains(&m.message_id))
            })
            .collect()
    }

    /// Both acknowledged and dead-lettered: handled twice.
    pub fn duplicates(&self) -> usize {
        self.acknowledged.intersection(&self.dead_lettered).count()
    }

    /// Messages whose end differs from what their kind predicts.
    pub fn unexpected(&self) -> Vec<&Sent> {
        self.sent
            .iter()
            .filter(|m| {
                self.deliverable.contains(&m.message_id)
                    != self.acknowledged.contains(&m.message_id)
            })
            .collect()
    }

    /// Payload messages acknowledged: each must have its archived object.
    pub fn acknowledged_payloads(&self) -> usize {
        self.sent
            .iter()
            .filter(|m| m.kind != Kind::Healthcheck && self.acknowledged.contains(&m.message_id))
            .count()
    }

    /// The invariant's figures on one line.
    pub fn figures(&self) -> String {
        format!(
            "sent {} / delivered {} / dead-lettered {} / lost {} / duplicates {}",
            self.sent.len(),
            self.acknowledged.len(),
            self.dead_lettered.len(),
            self.lost().len(),
            self.duplicates()
        )
    }

    pub fn summary(&self) -> String {
        let mut out = String::new();
        let kinds: Vec<String> = count_by_kind(&self.sent)
            .iter()
            .map(|(kind, n)| format!("{n} {}", kind.as_str()))
            .collect();
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for id in &self.dead_lettered {
            let reason = self.last_failure.get(id).map_or("unknown", String::as_str);
            *reasons.entry(reason).or_default() += 1;
        }
        let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        let healthchecks = self
            .sent
            .iter()
            .filter(|m| m.kind == Kind::Healthcheck && self.acknowledged.contains(&m.message_id))
            .count();
        if !self.stack_outputs.is_empty() {
            let _ = writeln!(out, "stack outputs (template.yaml, deployed into moto):");
            for (name, value) in &self.stack_outputs {
                let _ = writeln!(out, "  {name:<24} {value}");
            }
        }
        let _ = writeln!(
            out,
            "terra-sink demo: {} messages in {:.1} s ({} invocations, at most {} at once; {} \
             deliveries)",
            self.sent.len(),
            self.elapsed.as_secs_f64(),
            self.invocations,
            self.peak_invocations_at_once,
            self.deliveries
        );
        let _ = writeln!(
            out,
            "  sent           {:>4}  ({})",
            self.sent.len(),
            kinds.join(", ")
        );
        let _ = writeln!(
            out,
            "  archived       {:>4}  objects in s3://{}/{}",
            self.archived_keys.len(),
            self.bucket,
            self.prefix
        );
        let _ = writeln!(
            out,
            "  projected      {:>4}  items in DynamoDB table {}",
            self.projected.len(),
            self.table
        );
        let _ = writeln!(
            out,
            "  healthchecks   {:>4}  acknowledged, nothing to store",
            healthchecks
        );
        let _ = writeln!(
            out,
            "  dead-lettered  {:>4}  ({})",
            self.dead_lettered.len(),
            if reasons.is_empty() {
                "none".to_owned()
            } else {
                reasons.join(", ")
            }
        );
        let _ = writeln!(out, "  duplicates     {:>4}", self.duplicates());
        let _ = writeln!(
            out,
            "  peak memory    {:>4}  MiB, the highest of any handler instance",
            self.peak_memory_mib
        );
        if self.killed_for_memory > 0 {
            let _ = writeln!(
                out,
                "  out of memory  {:>4}  handler(s) killed for passing the function's memory",
                self.killed_for_memory
            );
        }
        if self.store_faults_injected > 0 || self.instances_killed > 0 {
            let _ = writeln!(
                out,
                "  faults         {:>4}  injected into S3/DynamoDB traffic; {} handler(s) killed mid-batch",
                self.store_faults_injected, self.instances_killed
            );
        }
        if !self.access_denied.is_empty() {
            let _ = writeln!(
                out,
                "  denied         {:>4}  calls refused by IAM, the first: {}",
                self.access_denied.len(),
                self.access_denied[0]
            );
        }
        let _ = writeln!(out, "  lost           {:>4}", self.lost().len());
        for message in self.lost() {
            let _ = writeln!(
                out,
                "    lost: {} ({})",
                message.message_id,
                message.kind.as_str()
            );
        }
        for message in self.unexpected() {
            let _ = writeln!(
                out,
                "    unexpected end: {} ({})",
                message.message_id,
                message.kind.as_str()
            );
        }
        let _ = writeln!(out, "some archived objects:");
        for key in self.archived_keys.iter().take(4) {
            let _ = writeln!(out, "  s3://{}/{key}", self.bucket);
        }
        let _ = writeln!(out, "some DynamoDB items (pk, sk):");
        let mut shown = BTreeSet::new();
        for (pk, sk) in &self.projected {
            // One item per kind of sort key, for variety.
            let kind = sk.split('#').next().unwrap_or_default().to_owned();
            if shown.insert(kind) && shown.len() <= 6 {
                let _ = writeln!(out, "  {pk}  {sk}");
            }
        }
        out
    }
}

/// Runs the scenario from empty stores to a drained queue.
pub async fn run(scenario: &Scenario) -> DemoReport {
    let started = Instant::now();
    let stage = Stage::set_up(scenario).await;
    let driven = stage.drive(scenario).await;
    stage.report(driven, started.elapsed()).await
}

/// Everything a run stands up: the stores, the deployment in them, the
/// fault proxy in front of them, Terra, and the handlers behind the Runtime
/// API.
struct Stage {
    moto: Moto,
    deployment: Deployment,
    proxy: Option<FaultProxy>,
    /// Where the handlers reach S3 and DynamoDB: moto, or the proxy.
    store_endpoint: String,
    terra: TerraSimulator,
    runtime: RuntimeApi,
    handlers: HandlerPool,
}

/// What driving the run came to, before the stores are read.
struct Driven {
    sent: Vec<Sent>,
    deliverable: BTreeSet<String>,
    stats: MappingStats,
    instances_killed: usize,
}

impl Stage {
    async fn set_up(scenario: &Scenario) -> Stage {
        let mut moto = Moto::start().await;
        let deployment = match scenario.in_the_stack_scaled_down {
            Some(factor) => Deployment::in_the_stack(&mut moto, factor, scenario.give_up).await,
            None => Deployment::by_hand(&moto, scenario).await,
        };
        let proxy = match (&scenario.store_faults, scenario.s3_outage) {
            (Some(schedule), _) => Some(FaultProxy::start(&moto.endpoint, schedule.clone()).await),
            (None, Some(_)) => Some(FaultProxy::start(&moto.endpoint, FaultSchedule::none()).await),
            (None, None) => None,
        };
        let store_endpoint = proxy
            .as_ref()
            .map_or(moto.endpoint.clone(), |p| p.endpoint.clone());
        let mut terra = TerraSimulator::start().await;
        terra.url_lifetime = scenario.url_lifetime;
        terra.longer_than_an_invocation = match scenario.in_the_stack_scaled_down {
            Some(_) => deployment.mapping.function_timeout * 2,
            None => scenario.longer_than_an_invocation,
        };
        let runtime = RuntimeApi::start().await;
        let env = handler_environment(scenario, &deployment, runtime.addr, &store_endpoint);
        let handlers = HandlerPool::spawn(
            &scenario.handler_binary,
            &env,
            scenario
                .environments
                .unwrap_or(deployment.mapping.concurrency),
        );
        Stage {
            moto,
            deployment,
            proxy,
            store_endpoint,
            terra,
            runtime,
            handlers,
        }
    }

    /// Terra sends, the outages and the kill happen when the scenario says,
    /// and the mapping feeds the handlers until the queue drains.
    async fn drive(&self, scenario: &Scenario) -> Driven {
        let first_sent = tokio::time::Instant::now();
        if let Some((after, lasting)) = scenario.host_outage {
            self.terra.payloads.outage(first_sent + after, lasting);
        }
        if let (Some(proxy), Some((after, lasting))) = (&self.proxy, scenario.s3_outage) {
            proxy.s3_outage(first_sent + after, lasting);
        }
        let sent = self.send(scenario).await;
        let deliverable = sent
            .iter()
            .filter(|m| {
                m.kind.deliverable()
                    && !scenario.undeliverable
                    && !scenario.undeliverable_kinds.contains(&m.kind)
            })
            .map(|m| m.message_id.clone())
            .collect();
        let deployment = &self.deployment;
        let mapping = SqsMapping::new(
            deployment.mapping_sqs.clone(),
            &deployment.queue_url,
            deployment.mapping.clone(),
        )
        .await;
        let chaos = async {
            let Some(after) = scenario.kill_an_instance_after else {
                return 0;
            };
            tokio::time::sleep(after).await;
            self.handlers.kill_and_replace_one();
            1
        };
        let (stats, instances_killed) = tokio::join!(
            mapping.run_until_drained(&self.runtime, deployment.drain_within),
            chaos
        );
        Driven {
            sent,
            deliverable,
            stats,
            instances_killed,
        }
    }

    async fn send(&self, scenario: &Scenario) -> Vec<Sent> {
        let (sqs, queue_url) = (&self.deployment.terra_sqs, &self.deployment.queue_url);
        if scenario.own_bucket {
            self.moto.create_bucket(SOURCE_BUCKET).await;
            // Uploaded before any outage; signed for the endpoint the handler
            // reads S3 at, so the URLs point into its source bucket.
            let s3 = (&self.moto.s3(), &self.moto.s3_at(&self.store_endpoint));
            self.terra
                .send_from_bucket(sqs, queue_url, s3, SOURCE_BUCKET, scenario.messages)
                .await
        } else if scenario.fifo_groups.is_empty() {
            self.terra
                .send(sqs, queue_url, &scenario.mix, scenario.messages)
                .await
        } else {
            self.terra
                .send_groups(sqs, queue_url, &scenario.fifo_groups)
                .await
        }
    }

    /// Where every message ended, read from the queues, the stores and the
    /// handlers' output.
    async fn report(self, driven: Driven, elapsed: Duration) -> DemoReport {
        let Stage {
            moto,
            deployment,
            proxy,
            handlers,
            runtime,
            ..
        } = self;
        let dead_lettered: BTreeSet<String> = moto
            .drain(&deployment.dead_letter_queue_url)
            .await
            .iter()
            .filter_map(|m| m.message_id().map(str::to_owned))
            .collect();
        let archived_keys = moto
            .objects(&deployment.bucket)
            .await
            .into_iter()
            .map(|o| o.key)
            .collect();
        let items = moto.items(&deployment.table).await;
        let stored_revisions = items
            .values()
            .filter_map(|item| {
                item.get("data")?
                    .as_m()
                    .ok()?
                    .get("terra_sim_revision")?
                    .as_n()
                    .ok()?
                    .parse()
                    .ok()
            })
            .collect();
        let projected = items.into_keys().collect();
        let output = handlers.output();
        // For a failing run: every handler line, to read beside the report.
        if let Some(path) = std::env::var_os("TERRA_DEMO_HANDLER_LOG") {
            let _ = std::fs::write(path, &output);
        }
        let last_failure = crate::logs::record_failures(&output)
            .into_iter()
            .map(|(id, failure)| (id, failure.class))
            .collect();
        DemoReport {
            sent: driven.sent,
            acknowledged: driven.stats.acknowledged,
            dead_lettered,
            last_failure,
            archived_keys,
            projected,
            stored_revisions,
            invocations: driven.stats.invocations,
            failed_invocations: driven.stats.failed_invocations,
            deliveries: driven.stats.deliveries,
            store_faults_injected: proxy.as_ref().map_or(0, FaultProxy::injected),
            instances_killed: driven.instances_killed,
            peak_invocations_at_once: runtime.peak_at_once(),
            killed_for_memory: handlers.killed_for_memory(),
            peak_memory_mib: handlers.peak_memory_mib(),
            expired_in_metrics: crate::logs::metric_total(&output, "RecordsFailedExpired"),
            deliverable: driven.deliverable,
            elapsed,
            stack_outputs: deployment
                .stack
                .as_ref()
                .map(|stack| stack.outputs.clone())
                .unwrap_or_default(),
            bucket: deployment.bucket,
            table: deployment.table,
            prefix: deployment.prefix,
            access_denied: crate::logs::refused_by_iam(&output),
            record_lines: crate::logs::record_lines(&output),
        }
    }
}

/// The handler's environment: the stack's (or the local one), the demo's
/// own stores when made by hand, own-bucket mode, and the scenario's extras
/// over all of them.
fn handler_environment(
    scenario: &Scenario,
    deployment: &Deployment,
    runtime_api: SocketAddr,
    store_endpoint: &str,
) -> Vec<(String, String)> {
    let mut env = match (&deployment.stack, scenario.quick_fetch) {
        (Some(stack), _) => stack.handler_environment(runtime_api, store_endpoint),
        (None, true) => local_function_env(runtime_api, store_endpoint),
        (None, false) => archive_function_env(runtime_api, store_endpoint),
    };
    let by_hand = [("TERRA_S3_PREFIX", PREFIX), ("TERRA_DYNAMODB_TABLE", TABLE)];
    let by_hand = by_hand
        .iter()
        .filter(|_| deployment.stack.is_none())
        .map(|(n, v)| (n.to_string(), v.to_string()));
    let own_bucket = [("TERRA_SOURCE_BUCKETS", SOURCE_BUCKET)]
        .iter()
        .filter(|_| scenario.own_bucket)
        .map(|(n, v)| (n.to_string(), v.to_string()));
    for (name, value) in by_hand
        .chain(own_bucket)
        .chain(scenario.handler_env.iter().cloned())
    {
        env.retain(|(existing, _)| *existing != name);
        env.push((name, value));
    }
    env
}

/// What every local run of a handler shares: Lambda's variables, the stores
/// at `store_endpoint`, and payload URLs allowed on 127.0.0.1 over http.
/// No sink is configured.
pub fn loopback_function_env(
    runtime_api: SocketAddr,
    store_endpoint: &str,
) -> Vec<(String, String)> {
    let mut env = lambda_environment(runtime_api);
    for (name, value) in [
        ("AWS_ENDPOINT_URL", store_endpoint),
        ("TERRA_ALLOWED_URL_HOSTS", "127.0.0.1"),
        ("TERRA_ALLOW_INSECURE_URLS", "true"),
    ] {
        env.push((name.to_owned(), value.to_owned()));
    }
    env
}

/// The loopback environment with the demo bucket as the archive.
pub fn archive_function_env(
    runtime_api: SocketAddr,
    store_endpoint: &str,
) -> Vec<(String, String)> {
    let mut env = loopback_function_env(runtime_api, store_endpoint);
    env.push(("TERRA_S3_BUCKET".to_owned(), BUCKET.to_owned()));
    env
}

/// The environment of a handler in the demo and fault runs: the demo
/// bucket, and quick fetch retries.
pub fn local_function_env(runtime_api: SocketAddr, store_endpoint: &str) -> Vec<(String, String)> {
    let mut env = archive_function_env(runtime_api, store_endpoint);
    for (name, value) in [
        ("TERRA_FETCH_TIMEOUT_SECS", "2"),
        ("TERRA_FETCH_MAX_ATTEMPTS", "2"),
    ] {
        env.push((name.to_owned(), value.to_owned()));
    }
    env
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue attributes")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .expect("queue ARN")
        .clone()
}
