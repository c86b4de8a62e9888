//! delivery binary: flags → `delivery::run`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "delivery", version)]
struct Cli {
    #[command(flatten)]
    log: service_kit::LogArgs,
    #[command(flatten)]
    config: delivery::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    service_kit::init_tracing(&cli.log);
    delivery::run(cli.config, service_kit::shutdown_on_signals()).await
}
