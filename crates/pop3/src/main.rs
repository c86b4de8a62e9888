//! `pop3` binary: flags → `pop3::run` until SIGTERM or Ctrl-C (the
//! multi-call `epistole pop3` runs the same function).

fn main() -> anyhow::Result<()> {
    service_kit::service_main::<pop3::Config, _, _>(
        "pop3",
        "Epistole POP3 server (110 with STLS, 995)",
        pop3::run,
    )
}
