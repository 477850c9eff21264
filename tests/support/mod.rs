//! Real servers for the integration tests: moto (S3), an HTTP payload server
//! with scripted behaviours, a Lambda Runtime API emulator, and the compiled
//! handler binaries. Each test file uses a subset.
#![allow(dead_code)]

pub mod bed;
pub mod moto;
pub mod payload_server;
pub mod runtime_api;

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

pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/terra/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}
