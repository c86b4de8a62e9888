//! `smtp-out` binary: flags → `smtp_out::run` until SIGTERM or Ctrl-C (the
//! multi-call `epistole smtp-out` runs the same function).

fn main() -> anyhow::Result<()> {
    service_kit::service_main::<smtp_out::Config, _, _>(
        "smtp-out",
        "Epistole outbound queue worker: MX routing, SMTP relay, retries, bounces",
        smtp_out::run,
    )
}
