//! Real servers for the integration tests, from the `terra-sink-dev` crate
//! (`dev/`), and the usual test bed built from them.
#![allow(dead_code, unused_imports)]

pub mod managed_instances;
pub mod mixed_batch;

pub use terra_sink_dev::{
    bed, fixture, logs, moto, now_ms, payload_server, runtime_api, sqs_mapping, xray_daemon,
};

/// The bytes a gzip stream holds.
pub fn gunzip(compressed: &[u8]) -> Vec<u8> {
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(compressed), &mut inflated)
        .expect("valid gzip");
    inflated
}
