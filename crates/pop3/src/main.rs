//! `pop3` binary: parses the configuration and runs the service until
//! SIGTERM / Ctrl-C (the multi-call `epistole pop3` does the same).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "pop3",
    version,
    about = "Epistole POP3 server (110 with STLS, 995)"
)]
struct Cli {
    #[command(flatten)]
    config: pop3::Config,
    #[command(flatten)]
    log: service_kit::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    service_kit::init_tracing(&cli.log);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = service_kit::metrics_handle();
    pop3::run(cli.config, service_kit::shutdown_on_signals()).await
}
