//! mailctl binary: parses flags and runs one command.

use clap::Parser as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = mailctl::Cli::parse();
    mailctl::run(cli, &mut std::io::stdout()).await
}
