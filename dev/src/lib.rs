//! Local stand-ins for everything terra-sink talks to, shared by the
//! integration tests and `make demo`: moto (S3, DynamoDB, SQS), a payload
//! server standing in for Terra's bucket, a Terra simulator that sends pointer
//! messages, the Lambda Runtime API with the compiled handlers behind it, and
//! an SQS event source mapping that feeds them the way Lambda does.
//!
//! Test code: it panics on broken setup rather than returning errors.

pub mod demo;
pub mod fault_proxy;
pub mod kafka_mapping;
pub mod logs;
pub mod moto;
pub mod payload_server;
pub mod runtime_api;
pub mod sqs_mapping;
pub mod terra_simulator;

use std::net::TcpListener;

/// A port that was free a moment ago, for servers that take a port number.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the loopback interface accepts a listener")
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Terra's example payloads, copied into the repository.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../tests/fixtures/terra/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}
