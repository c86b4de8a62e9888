//! `delivery` binary: flags → `delivery::run` until SIGTERM or Ctrl-C (the
//! multi-call `epistole delivery` runs the same function).

fn main() -> anyhow::Result<()> {
    service_kit::service_main::<delivery::Config, _, _>(
        "delivery",
        "Epistole inbound queue worker: local delivery, relay hand-off, bounces",
        delivery::run,
    )
}
