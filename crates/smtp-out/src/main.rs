//! smtp-out binary: flags → `smtp_out::run`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "smtp-out", version)]
struct Cli {
    #[command(flatten)]
    log: service_kit::LogArgs,
    #[command(flatten)]
    config: smtp_out::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    service_kit::init_tracing(&cli.log);
    smtp_out::run(cli.config, service_kit::shutdown_on_signals()).await
}
