//! Lambda bootstrap for SQS event source mappings.

use lambda_runtime::{service_fn, tracing};
use terra_sink::app::App;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tracing::init_default_subscriber();
    let app = match App::from_env().await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!(%error, "cold start failed");
            std::process::exit(1);
        }
    };
    let app = &app;
    lambda_runtime::run(service_fn(|event| app.handle_sqs(event))).await
}
