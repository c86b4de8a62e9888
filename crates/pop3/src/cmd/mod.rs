//! Command handlers, one module per command family, and the dispatcher.
//!
//! "Is this command allowed now?" is answered once, here, from a per-state
//! table ([`allowed`]) before any handler runs:
//!
//! | state         | commands                                               |
//! |---------------|--------------------------------------------------------|
//! | AUTHORIZATION | CAPA USER PASS AUTH STLS UTF8 QUIT                     |
//! | TRANSACTION   | CAPA STAT LIST RETR TOP DELE NOOP RSET UIDL QUIT       |
//! | UPDATE        | none (the session ends right after QUIT)               |
//!
//! - [`auth`]: USER, PASS, AUTH (SASL PLAIN), STLS; login opens the maildrop.
//! - [`maildrop`]: STAT, LIST, UIDL, DELE, RSET.
//! - [`retr`]: RETR and TOP.
//! - [`quit`]: QUIT and the UPDATE state.
//! - [`misc`]: CAPA (NOOP and UTF8 are answered in [`Session::dispatch`]).

mod auth;
mod maildrop;
mod misc;
mod quit;
mod retr;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::proto::{Command, Reply};
use crate::session::{Flow, Session, SessionError, State};

/// RFC 1939 §4: the AUTHORIZATION state; RFC 2449 §5: CAPA; RFC 2595 §4
/// and RFC 6856 §2: STLS and UTF8 only here.
const AUTHORIZATION: &[&str] = &["CAPA", "USER", "PASS", "AUTH", "STLS", "UTF8", "QUIT"];

/// RFC 1939 §5: the TRANSACTION state (TOP and UIDL: RFC 1939 §7).
const TRANSACTION: &[&str] = &[
    "CAPA", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "QUIT", "TOP", "UIDL",
];

/// The commands valid in `state`.
fn table(state: &State) -> &'static [&'static str] {
    match state {
        State::Authorization { .. } => AUTHORIZATION,
        State::Transaction(_) => TRANSACTION,
        // RFC 1939 §6: nothing is read in UPDATE.
        State::Update => &[],
    }
}

/// Whether `cmd` may run in `state`.
fn allowed(state: &State, cmd: &Command) -> bool {
    table(state).contains(&cmd.name())
}

impl Session {
    /// Runs one parsed command, after checking it against the state table.
    pub(crate) async fn dispatch<S>(
        &mut self,
        cmd: Command,
        io: &mut S,
        out: &mut Vec<u8>,
    ) -> Result<Flow, SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !allowed(&self.state, &cmd) {
            return Ok(self.reply(out, Reply::err("Command not valid in this state")));
        }
        let flow = match cmd {
            Command::Capa => Self::ok(
                out,
                &Reply::multi("Capability list follows", self.capabilities()),
            ),
            Command::User(name) => self.user(name, out),
            Command::Pass(password) => self.pass(password, out).await,
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial, out).await,
            Command::Stls => self.stls(out),
            Command::Utf8 => Self::ok(out, &Reply::ok("UTF8 enabled")),
            Command::Quit => self.quit(out).await,
            Command::Noop => Self::ok(out, &Reply::ok("")),
            Command::Stat => self.stat(out).await,
            Command::List(n) => self.list(n, out).await,
            Command::Uidl(n) => self.uidl(n, out),
            Command::Dele(n) => self.dele(n, out),
            Command::Rset => self.rset(out),
            Command::Retr(n) => return self.send_body(n, None, io, out).await,
            Command::Top { msg, lines } => return self.send_body(msg, Some(lines), io, out).await,
        };
        Ok(flow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table agrees with the RFC's per-state lists for every command.
    #[test]
    fn state_table() {
        let all = [
            Command::Capa,
            Command::User("u".into()),
            Command::Pass("p".into()),
            Command::Auth {
                mechanism: None,
                initial: None,
            },
            Command::Stls,
            Command::Utf8,
            Command::Stat,
            Command::List(None),
            Command::Retr(1),
            Command::Dele(1),
            Command::Noop,
            Command::Rset,
            Command::Quit,
            Command::Top { msg: 1, lines: 0 },
            Command::Uidl(None),
        ];
        let authorization = State::Authorization { user: None };
        let names = |s: &State| -> Vec<&str> {
            all.iter()
                .filter(|c| allowed(s, c))
                .map(Command::name)
                .collect()
        };
        assert_eq!(
            names(&authorization),
            ["CAPA", "USER", "PASS", "AUTH", "STLS", "UTF8", "QUIT"]
        );
        assert!(names(&State::Update).is_empty());
        // Every name in the tables is a real command name.
        for name in AUTHORIZATION.iter().chain(TRANSACTION) {
            assert!(all.iter().any(|c| c.name() == *name), "{name}");
        }
        for c in &all {
            let in_transaction = TRANSACTION.contains(&c.name());
            let expected = !matches!(
                c,
                Command::User(_)
                    | Command::Pass(_)
                    | Command::Auth { .. }
                    | Command::Stls
                    | Command::Utf8
            );
            assert_eq!(in_transaction, expected, "{}", c.name());
        }
    }
}
