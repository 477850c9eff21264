//! moto's server, started on its own port: the real S3, DynamoDB and
//! SQS wire protocols (and CloudFormation, IAM, STS and Lambda for the
//! stack runs), through `dev/moto_server.py`, which mends moto's IAM
//! enforcement where it falls short of AWS's (see dev/README.md).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

pub struct Moto {
    child: Child,
    pub endpoint: String,
    /// Who the clients below call as: moto's default key until IAM is
    /// enforced, then an identity allowed to look on.
    credentials: Credentials,
}

/// Where `make test` installs moto; `MOTO_SERVER` overrides.
fn moto_binary() -> PathBuf {
    match std::env::var_os("MOTO_SERVER") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server"),
    }
}

/// The Python environment moto is installed in: the one `moto_server` runs
/// from.
pub fn python() -> PathBuf {
    moto_binary().with_file_name("python")
}

/// The port moto's server says it is running on (werkzeug's `Running on`
/// line), read from its stderr; the rest of what it writes there (a line
/// per request) is read and dropped, so that it never blocks on a full pipe.
fn bound_port(stderr: ChildStderr) -> u16 {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let port = line
                .split_once(" * Running on http://127.0.0.1:")
                .and_then(|(_, port)| port.trim().parse::<u16>().ok());
            if let Some(port) = port {
                let _ = sender.send(port);
            }
        }
    });
    receiver
        .recv_timeout(Duration::from_secs(30))
        .expect("moto_server did not say its port within 30 s")
}

/// A script in `dev/`.
pub fn dev_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name)
}

impl Moto {
    pub async fn start() -> Moto {
        let python = python();
        assert!(
            python.exists(),
            "moto's Python not found at {}: run `make test` (it installs moto into .venv) or set MOTO_SERVER to a moto_server",
            python.display()
        );
        // Port 0: moto binds whatever port is free and says which. A port
        // picked here and handed over could be taken by another test's
        // server before moto binds it, and moto would exit while that one
        // answered in its place.
        let mut child = Command::new(&python)
            .arg(dev_script("moto_server.py"))
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start moto with {}: {e}", python.display()));
        let port = bound_port(child.stderr.take().expect("stderr piped"));
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            credentials: Credentials::new("test", "test", None, None, "test"),
        };
        let started = Instant::now();
        let client = reqwest::Client::new();
        loop {
            if client
                .get(format!("{}/moto-api/", moto.endpoint))
                .send()
                .await
                .is_ok()
            {
                return moto;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto_server did not answer on {} within 30 s",
                moto.endpoint
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// From now on the clients below call as `credentials`.
    pub fn call_as(&mut self, credentials: Credentials) {
        self.credentials = credentials;
    }

    /// Creates an IAM user per `(name, policy document)`, each with an
    /// access key, then enforces IAM: every later call is checked against
    /// its caller's policies (the clients below then need [`Moto::call_as`]
    /// an identity allowed to look on). The keys, by user name.
    pub fn enforce_iam_with(
        &self,
        identities: &[(&str, serde_json::Value)],
    ) -> std::collections::BTreeMap<String, Credentials> {
        use std::io::Write;
        let policies: serde_json::Map<String, serde_json::Value> = identities
            .iter()
            .map(|(name, policy)| ((*name).to_owned(), policy.clone()))
            .collect();
        let mut child = Command::new(python())
            .arg(dev_script("moto_identities.py"))
            .arg(&self.endpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run moto_identities.py");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(serde_json::Value::Object(policies).to_string().as_bytes())
            .expect("write the policies");
        let output = child.wait_with_output().expect("moto_identities.py ends");
        assert!(output.status.success(), "moto_identities.py failed");
        let keys: serde_json::Value = serde_json::from_slice(&output.stdout).expect("keys as JSON");
        keys.as_object()
            .expect("keys by user")
            .iter()
            .map(|(user, key)| {
                let field = |name: &str| key[name].as_str().expect("key field").to_owned();
                (
                    user.clone(),
                    Credentials::new(
                        field("AccessKeyId"),
                        field("SecretAccessKey"),
                        None,
                        None,
                        "moto",
                    ),
                )
            })
            .collect()
    }

    pub fn s3(&self) -> aws_sdk_s3::Client {
        self.s3_at(&self.endpoint)
    }

    /// An S3 client for moto reached at `endpoint` (a proxy in front of it).
    pub fn s3_at(&self, endpoint: &str) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(self.credentials.clone())
            .force_path_style(true)
            // moto 5.2.1 reports a multipart object's CRC32 as one that is
            // neither the whole object's nor composite (S3's `<crc>-<parts>`,
            // which the SDK skips), so checking it fails every read of one.
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(self.credentials.clone())
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    pub fn logs(&self) -> aws_sdk_cloudwatchlogs::Client {
        let config = aws_sdk_cloudwatchlogs::Config::builder()
            .behavior_version(aws_sdk_cloudwatchlogs::config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_sdk_cloudwatchlogs::config::Region::new("us-east-1"))
            .credentials_provider(self.credentials.clone())
            .build();
        aws_sdk_cloudwatchlogs::Client::from_conf(config)
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        self.sqs_as(self.credentials.clone())
    }

    pub fn sqs_as(&self, credentials: Credentials) -> aws_sdk_sqs::Client {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }

    /// Creates a queue and returns its URL.
    pub async fn create_queue(&self, name: &str) -> String {
        let created = self
            .sqs()
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create queue {name}: {e:?}"));
        created.queue_url().expect("queue URL").to_owned()
    }

    /// Receives and deletes every message now on the queue.
    pub async fn drain(&self, queue_url: &str) -> Vec<aws_sdk_sqs::types::Message> {
        let sqs = self.sqs();
        let mut messages = Vec::new();
        loop {
            let received = sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .send()
                .await
                .unwrap_or_else(|e| panic!("receive from {queue_url}: {e:?}"));
            let batch = received.messages().to_vec();
            if batch.is_empty() {
                return messages;
            }
            for message in &batch {
                sqs.delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(message.receipt_handle().expect("receipt handle"))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("delete from {queue_url}: {e:?}"));
            }
            messages.extend(batch);
        }
    }

    /// The table as template.yaml creates it: string `pk` and `sk`, on demand,
    /// index `gsi1` on `gsi1pk`.
    pub async fn create_table(&self, table: &str) {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
            Projection, ProjectionType, ScalarAttributeType,
        };
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("complete definition")
        };
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .expect("complete key")
        };
        self.dynamodb()
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute("pk"))
            .attribute_definitions(attribute("sk"))
            .key_schema(key("pk", KeyType::Hash))
            .key_schema(key("sk", KeyType::Range))
            .attribute_definitions(attribute("gsi1pk"))
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name("gsi1")
                    .key_schema(key("gsi1pk", KeyType::Hash))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .expect("complete index"),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("create table {table}: {e:?}"));
    }

    /// Every item of the table, keyed by (pk, sk).
    pub async fn items(
        &self,
        table: &str,
    ) -> std::collections::BTreeMap<
        (String, String),
        std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
    > {
        let pages = self
            .dynamodb()
            .scan()
            .table_name(table)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .unwrap_or_else(|e| panic!("scan {table}: {e:?}"));
        pages
            .into_iter()
            .map(|item| {
                let key = |name: &str| {
                    item.get(name)
                        .and_then(|v| v.as_s().ok())
                        .cloned()
                        .unwrap_or_else(|| panic!("item without {name}: {item:?}"))
                };
                ((key("pk"), key("sk")), item.clone())
            })
            .collect()
    }

    pub async fn create_bucket(&self, bucket: &str) {
        self.s3()
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
    }

    /// Every key in the bucket, every page of the listing.
    async fn keys(&self, bucket: &str) -> Vec<String> {
        let pages = self
            .s3()
            .list_objects_v2()
            .bucket(bucket)
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .unwrap_or_else(|e| panic!("list {bucket}: {e:?}"));
        pages
            .iter()
            .flat_map(|page| page.contents())
            .filter_map(|o| o.key())
            .map(str::to_owned)
            .collect()
    }

    /// The erasure index's current markers in the bucket: the archive
    /// lists each object there under its user.
    pub async fn index_markers(&self, bucket: &str) -> Vec<String> {
        let mut keys = self.keys(bucket).await;
        keys.retain(|key| is_index_marker(key));
        keys
    }

    /// Every archived object in the bucket: (key, bytes, content-encoding),
    /// the erasure index's markers aside ([`Moto::index_markers`]).
    pub async fn objects(&self, bucket: &str) -> Vec<StoredObject> {
        let s3 = self.s3();
        let mut objects = Vec::new();
        for key in self.keys(bucket).await {
            if is_index_marker(&key) {
                continue;
            }
            let object = s3
                .get_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
            let content_encoding = object.content_encoding().map(str::to_owned);
            let content_type = object.content_type().map(str::to_owned);
            let e_tag = object.e_tag().map(str::to_owned);
            let metadata = object.metadata().cloned().unwrap_or_default();
            let body = object
                .body
                .collect()
                .await
                .expect("object body")
                .into_bytes()
                .to_vec();
            objects.push(StoredObject {
                key,
                body,
                content_encoding,
                content_type,
                e_tag,
                metadata,
            });
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        objects
    }
}

impl Moto {
    /// (archived objects, erasure-index markers) in the bucket, every page
    /// of the listing counted.
    pub async fn count_keys(&self, bucket: &str) -> (usize, usize) {
        let keys = self.keys(bucket).await;
        let markers = keys.iter().filter(|key| is_index_marker(key)).count();
        (keys.len() - markers, markers)
    }

    /// How many items the table holds, every page of the scan counted.
    pub async fn count_items(&self, table: &str) -> usize {
        let pages = self
            .dynamodb()
            .scan()
            .table_name(table)
            .select(aws_sdk_dynamodb::types::Select::Count)
            .into_paginator()
            .send()
            .collect::<Vec<_>>()
            .await;
        pages
            .into_iter()
            .map(|page| {
                page.unwrap_or_else(|e| panic!("scan {table}: {e:?}"))
                    .count() as usize
            })
            .sum()
    }
}

impl Moto {
    /// Multipart uploads begun in the bucket and neither completed nor aborted.
    pub async fn uploads_in_progress(&self, bucket: &str) -> Vec<String> {
        let listed = self
            .s3()
            .list_multipart_uploads()
            .bucket(bucket)
            .send()
            .await
            .unwrap_or_else(|e| panic!("list uploads in {bucket}: {e:?}"));
        listed
            .uploads()
            .iter()
            .map(|u| u.key().unwrap_or_default().to_owned())
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct StoredObject {
    pub key: String,
    pub body: Vec<u8>,
    pub content_encoding: Option<String>,
    pub content_type: Option<String>,
    /// A multipart upload's ends in `-<parts>`.
    pub e_tag: Option<String>,
    pub metadata: std::collections::HashMap<String, String>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The erasure index's folder under the archive's prefix: the library's
/// `terra_sink::erasure::INDEX_FOLDER` (this crate cannot depend on it;
/// `ops/tests/erase.rs` holds the two equal).
pub const ERASURE_INDEX_FOLDER: &str = "_erasure/";

/// A key of the erasure index (under any prefix), not an archived payload.
fn is_index_marker(key: &str) -> bool {
    key.starts_with(ERASURE_INDEX_FOLDER) || key.contains(&format!("/{ERASURE_INDEX_FOLDER}"))
}
