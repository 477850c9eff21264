//! A stand-in for the X-Ray daemon Lambda runs beside a function with active
//! tracing: a UDP socket on loopback that keeps every segment document sent
//! to it, in the daemon's wire format (a JSON header line, then one segment
//! or subsegment document per datagram).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::net::UdpSocket;

/// The header line every datagram to the daemon starts with.
pub const DAEMON_HEADER: &str = r#"{"format": "json", "version": 1}"#;

pub struct XrayDaemon {
    /// What `AWS_XRAY_DAEMON_ADDRESS` names.
    pub addr: SocketAddr,
    datagrams: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl XrayDaemon {
    pub async fn start() -> XrayDaemon {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("a loopback UDP port");
        let addr = socket.local_addr().expect("bound");
        let datagrams = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&datagrams);
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 65_536];
            while let Ok(length) = socket.recv(&mut buffer).await {
                let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
                kept.lock().expect("not poisoned").push(text);
            }
        });
        XrayDaemon {
            addr,
            datagrams,
            task,
        }
    }

    /// Everything received, as sent: for the secret scan.
    pub fn received(&self) -> String {
        self.datagrams.lock().expect("not poisoned").join("\n")
    }

    /// The documents received so far; panics on a datagram the real daemon
    /// would reject (no header, or no JSON document after it).
    pub fn documents(&self) -> Vec<Value> {
        self.datagrams
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|datagram| {
                let (header, document) = datagram
                    .split_once('\n')
                    .unwrap_or_else(|| panic!("no header line: {datagram}"));
                assert_eq!(header, DAEMON_HEADER, "{datagram}");
                serde_json::from_str(document)
                    .unwrap_or_else(|e| panic!("not a JSON document ({e}): {datagram}"))
            })
            .collect()
    }

    /// The documents once `done` holds of them, or whatever arrived by
    /// `timeout`. Datagrams are sent as spans end, so the last may trail the
    /// invocation's response by a moment.
    pub async fn documents_once(
        &self,
        done: impl Fn(&[Value]) -> bool,
        timeout: Duration,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let documents = self.documents();
            if done(&documents) || tokio::time::Instant::now() >= deadline {
                return documents;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl XrayDaemon {
    /// How many datagrams have arrived once none has for `quiet`: the
    /// last spans of an invocation may trail its response by a moment.
    pub async fn settled_count(&self, quiet: Duration) -> usize {
        let mut count = self.datagrams.lock().expect("not poisoned").len();
        loop {
            tokio::time::sleep(quiet).await;
            let now = self.datagrams.lock().expect("not poisoned").len();
            if now == count {
                return count;
            }
            count = now;
        }
    }

    /// The documents of the invocation Lambda handed `trace_header`, once
    /// its own (the last to end) has arrived, checked to hang together: all
    /// in that trace, all subsegments, the invocation's a child of Lambda's
    /// segment (the header's `Parent`), every other one below it.
    pub async fn invocation_trace(&self, trace_header: &str) -> InvocationTrace {
        let (root, lambda_segment) = root_and_parent(trace_header);
        let documents = self
            .documents_once(
                |documents| {
                    documents
                        .iter()
                        .any(|d| d["trace_id"] == root && d["name"] == "invocation")
                },
                Duration::from_secs(10),
            )
            .await;
        let documents: Vec<Value> = documents
            .into_iter()
            .filter(|d| d["trace_id"] == root)
            .collect();
        let trace = InvocationTrace { documents };
        let invocation = trace.invocation();
        assert_eq!(invocation["parent_id"], lambda_segment, "{invocation}");
        let parents: std::collections::HashMap<&str, &str> = trace
            .documents
            .iter()
            .filter_map(|d| Some((d["id"].as_str()?, d["parent_id"].as_str()?)))
            .collect();
        for document in &trace.documents {
            assert_eq!(document["type"], "subsegment", "{document}");
            let mut at = document["id"].as_str().expect("an id");
            while at != invocation["id"] {
                at = parents
                    .get(at)
                    .unwrap_or_else(|| panic!("not below the invocation: {document}"));
            }
        }
        trace
    }
}

/// The trace id (`Root`) and Lambda's segment (`Parent`) of a trace header.
pub fn root_and_parent(trace_header: &str) -> (String, String) {
    let field = |key: &str| {
        trace_header
            .split(';')
            .find_map(|part| part.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {trace_header}"))
            .to_owned()
    };
    (field("Root="), field("Parent="))
}

/// One invocation's subsegments, as the daemon got them.
pub struct InvocationTrace {
    pub documents: Vec<Value>,
}

impl InvocationTrace {
    pub fn invocation(&self) -> &Value {
        let mut invocations = self.named("invocation");
        assert_eq!(invocations.len(), 1, "{:#?}", self.documents);
        invocations.remove(0)
    }

    pub fn named(&self, name: &str) -> Vec<&Value> {
        self.documents
            .iter()
            .filter(|d| d["name"] == name)
            .collect()
    }

    /// The record span of the message id or Kafka offset `id`.
    pub fn record(&self, id: &str) -> &Value {
        self.named("record")
            .into_iter()
            .find(|d| annotation(d, "id") == Some(id))
            .unwrap_or_else(|| panic!("no record {id} in {:#?}", self.documents))
    }

    /// The names of `parent`'s children, sorted.
    pub fn children(&self, parent: &Value) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .documents
            .iter()
            .filter(|d| d["parent_id"] == parent["id"])
            .filter_map(|d| d["name"].as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// `parent`'s one child named `name`.
    pub fn child(&self, parent: &Value, name: &str) -> &Value {
        self.documents
            .iter()
            .find(|d| d["parent_id"] == parent["id"] && d["name"] == name)
            .unwrap_or_else(|| panic!("no {name} under {parent}"))
    }
}

/// A span field X-Ray indexes (terra-sink's annotated fields), as text.
pub fn annotation<'a>(document: &'a Value, key: &str) -> Option<&'a str> {
    document["annotations"][key].as_str()
}

impl Drop for XrayDaemon {
    fn drop(&mut self) {
        self.task.abort();
    }
}
