//! `smtp-in` binary: flags → `smtp_in::run` until SIGTERM or Ctrl-C (the
//! multi-call `epistole smtp-in` runs the same function).

fn main() -> anyhow::Result<()> {
    service_kit::service_main::<smtp_in::Config, _, _>(
        "smtp-in",
        "Epistole SMTP receiver (MX, submission, submissions)",
        smtp_in::run,
    )
}
