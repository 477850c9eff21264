//! `replay …`, the command's name before 0.2.0: `terra-sink replay …` under
//! its old name, kept for one release (see CHANGELOG.md).

use std::ffi::OsString;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_else(|| OsString::from("replay"));
    let args = [program, OsString::from("replay")].into_iter().chain(args);
    terra_sink_ops::cli::run(args).await
}
