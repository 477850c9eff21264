//! `make demo`: the whole flow on this machine, no AWS account. Usage:
//! `demo <path to sqs-handler>`. Exits 0 only when no message was lost.

use terra_sink_dev::demo::{self, Scenario};

/// Every duration the stack sets, and Terra's URL lifetime, is divided by
/// this: the same ratios as a deployment, twenty times faster.
const TIME_SCALE: u32 = 20;

#[tokio::main]
async fn main() {
    let Some(handler) = std::env::args().nth(1) else {
        eprintln!("usage: demo <path to the sqs-handler binary>");
        std::process::exit(2);
    };
    println!(
        "Deploying template.yaml into moto (CloudFormation, IAM enforced), then Terra's simulator sends and sqs-handler runs in the stack, every duration divided by {TIME_SCALE}..."
    );
    let report = demo::run(&Scenario::in_the_stack(handler, TIME_SCALE)).await;
    print!("{}", report.summary());
    if !report.lost().is_empty() {
        eprintln!("FAILED: {} messages lost", report.lost().len());
        std::process::exit(1);
    }
}
