//! Lambda bootstrap for Amazon MSK and self-managed Kafka event source mappings.

use lambda_runtime::service_fn;
use terra_sink::app::App;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let app = &App::start().await;
    lambda_runtime::run(service_fn(|event| app.handle_kafka(event))).await
}
