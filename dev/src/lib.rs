//! Local stand-ins for everything terra-sink talks to, shared by the
//! integration tests and `make demo`: moto (S3, DynamoDB, SQS), a payload
//! server standing in for Terra's bucket, a Terra simulator that sends pointer
//! messages, the Lambda Runtime API with the compiled handlers behind it, and
//! an SQS event source mapping that feeds them the way Lambda does, and the
//! X-Ray daemon that takes their traces.
//!
//! [`bed`] is the usual integration setup. `dev/README.md` maps every
//! stand-in: what it stands in for, how faithful it is, and which tests use
//! it.
//!
//! Test code: it panics on broken setup rather than returning errors.

pub mod artifact;
pub mod bed;
#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "bench")]
pub mod cpu_quota;
pub mod demo;
pub mod deployed;
pub mod events;
pub mod fault_proxy;
pub mod kafka_mapping;
pub mod local_stack;
pub mod logs;
pub mod moto;
#[cfg(feature = "bench")]
pub mod null_store;
pub mod payload_server;
pub mod runtime_api;
pub mod sqs_mapping;
pub mod terra_simulator;
#[cfg(feature = "bench")]
pub mod tls_front;
pub mod xray_daemon;

use std::net::SocketAddr;

/// Serves `app` on a new loopback port, as a real server would: with
/// `TCP_NODELAY`, so small responses are not held back by Nagle's algorithm
/// (which, against a delayed ACK, adds up to 40 ms to an exchange).
pub async fn serve_on_loopback(
    app: axum::Router,
    what: &'static str,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind {what}: {e}"));
    let addr = listener.local_addr().expect("bound address");
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .await
            .unwrap_or_else(|e| panic!("{what} stopped: {e}"));
    });
    (addr, task)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A binary of another package in the workspace, where cargo built it
/// beside the running test (`target/<profile>/`): a test gets
/// `CARGO_BIN_EXE_*` only for its own package's binaries. `cargo test
/// --workspace` builds every package's binaries before it runs a test.
pub fn workspace_binary(name: &str) -> String {
    let test = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let path = test
        .parent()
        .and_then(std::path::Path::parent)
        .expect("a test runs from target/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test --workspace` (as `make integration` does), \
         or `cargo build --bin {name}` first",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// Terra's example payloads, copied into the repository.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../tests/fixtures/terra/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}
