//! `mailbox-store` binary: flags → `mailbox_store::run` until SIGTERM or Ctrl-C (the
//! multi-call `epistole mailbox-store` runs the same function).

fn main() -> anyhow::Result<()> {
    service_kit::service_main::<mailbox_store::Config, _, _>(
        "mailbox-store",
        "Epistole store: accounts, mailboxes, messages and queues over PostgreSQL",
        mailbox_store::run,
    )
}
