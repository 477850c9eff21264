//! `terra-sink`: the operator's commands (see `terra_sink_ops::cli`).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    terra_sink_ops::cli::run(std::env::args_os()).await
}
