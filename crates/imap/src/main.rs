//! Stand-alone `imap` binary (the multi-call `epistole imap` does the same).

use clap::Parser;

#[derive(Parser)]
#[command(name = "imap", about = "Epistole IMAP server")]
struct Cli {
    #[command(flatten)]
    config: imap::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    imap::run(cli.config, service_kit::shutdown_on_signals()).await
}
