//! Every input kept under `fuzz/seeds/` and `fuzz/regressions/` (crashes the
//! fuzzer found, once fixed) still passes the fuzz targets' checks.

#[path = "support/fuzz_checks.rs"]
mod fuzz_checks;

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut found = Vec::new();
    for dir in [
        root.join("seeds").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() && path.extension().is_none_or(|e| e != "md") {
                let bytes = std::fs::read(&path).expect("readable input");
                found.push((path.display().to_string(), bytes));
            }
        }
    }
    found
}

/// Runs `check` over every kept input of `target`.
fn replay(target: &str, check: fn(&[u8])) {
    let inputs = inputs(target);
    assert!(!inputs.is_empty(), "seeds exist for {target}");
    for (name, bytes) in inputs {
        println!("{name}");
        check(&bytes);
    }
}

#[test]
fn sqs_body_inputs() {
    replay("sqs_body", fuzz_checks::sqs_body);
}

#[test]
fn kafka_event_inputs() {
    replay("kafka_event", fuzz_checks::kafka_event);
}

#[test]
fn payload_inputs() {
    replay("payload", fuzz_checks::payload);
}
