//! `make demo`: the whole flow on this machine, no AWS account. Usage:
//! `demo <path to sqs-handler>`. Exits 0 only when no message was lost.

use terra_sink_dev::demo::{self, Scenario};

#[tokio::main]
async fn main() {
    let Some(handler) = std::env::args().nth(1) else {
        eprintln!("usage: demo <path to the sqs-handler binary>");
        std::process::exit(2);
    };
    println!("Starting moto (S3, DynamoDB, SQS), the Terra simulator and sqs-handler...");
    let report = demo::run(&Scenario::new(handler)).await;
    print!("{}", report.summary());
    if !report.lost().is_empty() {
        eprintln!("FAILED: {} messages lost", report.lost().len());
        std::process::exit(1);
    }
}
