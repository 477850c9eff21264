//! Real servers for the integration tests, from the `terra-sink-dev` crate
//! (`dev/`), and the usual test bed built from them.
#![allow(dead_code, unused_imports)]

pub mod bed;

pub use terra_sink_dev::{
    fixture, free_port, logs, moto, now_ms, payload_server, runtime_api, sqs_mapping,
};
