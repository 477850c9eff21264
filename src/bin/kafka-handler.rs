//! Lambda bootstrap for Amazon MSK and self-managed Kafka event source mappings.

use lambda_runtime::service_fn;
use terra_sink::app::{App, async_runtime};

fn main() -> Result<(), lambda_runtime::Error> {
    async_runtime::for_the_process()?.block_on(async {
        let app = App::start_for_the_process().await;
        lambda_runtime::run_concurrent(service_fn(|event| app.handle_kafka(event))).await
    })
}
