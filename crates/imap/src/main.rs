//! `imap` binary: flags → `imap::run` until SIGTERM or Ctrl-C (the
//! multi-call `epistole imap` runs the same function).

fn main() -> anyhow::Result<()> {
    service_kit::service_main::<imap::Config, _, _>(
        "imap",
        "Epistole IMAP server (143 with STARTTLS, 993)",
        imap::run,
    )
}
