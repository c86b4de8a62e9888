//! `smtp-in` binary: parses the configuration and runs the service until
//! SIGTERM / Ctrl-C. Everything else lives in the library.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "smtp-in",
    version,
    about = "Epistole SMTP receiver (MX, submission, submissions)"
)]
struct Cli {
    #[command(flatten)]
    config: smtp_in::Config,
    #[command(flatten)]
    log: service_kit::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    service_kit::init_tracing(&cli.log);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = service_kit::metrics_handle();
    smtp_in::run(cli.config, service_kit::shutdown_on_signals()).await
}
