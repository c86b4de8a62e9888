//! mailbox-store binary: flags → `mailbox_store::run`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "mailbox-store", version)]
struct Cli {
    #[command(flatten)]
    log: service_kit::LogArgs,
    #[command(flatten)]
    config: mailbox_store::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    service_kit::init_tracing(&cli.log);
    mailbox_store::run(cli.config, service_kit::shutdown_on_signals()).await
}
