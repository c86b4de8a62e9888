//! `epistole`: every Epistole service in one executable, chosen by the first
//! argument (`epistole mailbox-store …`, `epistole smtp-in …`, …). Containers
//! run one image with the service as the command; each service crate also
//! builds its own binary with the same `run` function.

mod tools;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "epistole", version, about = "Epistole mail server")]
struct Cli {
    #[command(flatten)]
    log: service_kit::LogArgs,
    #[command(subcommand)]
    service: Service,
}

#[derive(Subcommand)]
enum Service {
    /// The store: accounts, mailboxes, messages and queues over PostgreSQL.
    #[command(name = "mailbox-store", alias = "store")]
    MailboxStore(mailbox_store::Config),
    /// SMTP receiver: MX (25), submission (587) and submissions (465).
    #[command(name = "smtp-in")]
    SmtpIn(smtp_in::Config),
    /// POP3 server: 110 (STLS) and 995 (implicit TLS).
    Pop3(pop3::Config),
    /// IMAP server: 143 (STARTTLS) and 993 (implicit TLS).
    Imap(imap::Config),
    /// Inbound queue worker: local delivery, relay hand-off, bounces.
    Delivery(delivery::Config),
    /// Outbound queue worker: MX routing, SMTP relay, retries, bounces.
    #[command(name = "smtp-out")]
    SmtpOut(smtp_out::Config),
    /// The admin CLI.
    Mailctl(mailctl::Cli),
    /// Writes a self-signed certificate (tls.crt, tls.key) for development.
    #[command(name = "tls-cert")]
    TlsCert(tools::TlsCertArgs),
    /// Exits 0 when an HTTP URL answers 200 (container health checks).
    Probe {
        /// e.g. http://127.0.0.1:7001/readyz
        url: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.service {
            Service::Mailctl(c) => return mailctl::run(c, &mut std::io::stdout()).await,
            Service::TlsCert(a) => return tools::tls_cert(&a),
            Service::Probe { url } => return tools::probe(&url).await,
            _ => {}
        }
        let name = match &cli.service {
            Service::MailboxStore(_) => "mailbox-store",
            Service::SmtpIn(_) => "smtp-in",
            Service::Pop3(_) => "pop3",
            Service::Imap(_) => "imap",
            Service::Delivery(_) => "delivery",
            Service::SmtpOut(_) => "smtp-out",
            Service::Mailctl(_) | Service::TlsCert(_) | Service::Probe { .. } => "epistole",
        };
        service_kit::init_tracing(&cli.log, name);
        let shutdown = service_kit::shutdown_on_signals();
        let result = match cli.service {
            Service::MailboxStore(c) => mailbox_store::run(c, shutdown).await,
            Service::SmtpIn(c) => smtp_in::run(c, shutdown).await,
            Service::Pop3(c) => pop3::run(c, shutdown).await,
            Service::Imap(c) => imap::run(c, shutdown).await,
            Service::Delivery(c) => delivery::run(c, shutdown).await,
            Service::SmtpOut(c) => smtp_out::run(c, shutdown).await,
            Service::Mailctl(_) | Service::TlsCert(_) | Service::Probe { .. } => Ok(()),
        };
        service_kit::otel::flush();
        result
    })
}
