//! Commands valid in every state, or with no mailbox work: CAPABILITY
//! (RFC 9051 §6.1.1), NOOP and CHECK (§6.1.2), LOGOUT (§6.1.3), ID
//! (RFC 2971), ENABLE (RFC 5161) and COMPRESS (RFC 4978).

use tokio::io::{AsyncRead, AsyncWrite};

use crate::io::Io;
use crate::response::Status;
use crate::session::{Exit, Session, State};

impl Session {
    /// CAPABILITY (RFC 9051 §6.1.1).
    pub(super) fn capability<S: AsyncRead + AsyncWrite + Unpin>(&self, io: &mut Io<S>) -> Status {
        let c = format!("* CAPABILITY {}\r\n", self.capabilities());
        io.write(c.as_bytes());
        Status::ok("CAPABILITY completed")
    }

    /// NOOP and CHECK (RFC 9051 §6.1.2): a resync, nothing else.
    pub(super) async fn noop<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
    ) -> Status {
        self.sync(io, true).await;
        Status::ok("NOOP completed")
    }

    /// LOGOUT (RFC 9051 §6.1.3): BYE, then the tagged OK.
    pub(super) async fn logout<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        tag: &str,
    ) -> std::io::Result<Option<Exit>> {
        io.write(&Status::bye("Logging out").encode(None));
        io.write(&Status::ok("LOGOUT completed").encode(Some(tag)));
        io.flush().await?;
        self.state = State::Logout;
        Ok(Some(Exit::Closed))
    }

    /// ID (RFC 2971): the client's parameters are ignored.
    pub(super) fn id<S: AsyncRead + AsyncWrite + Unpin>(io: &mut Io<S>) -> Status {
        io.write(b"* ID (\"name\" \"Epistole\")\r\n");
        Status::ok("ID completed")
    }

    /// ENABLE (RFC 5161; RFC 9051 §6.3.1; RFC 7162 §3.2.3 QRESYNC).
    pub(super) fn enable<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        caps: &[String],
    ) -> Status {
        let mut newly = Vec::new();
        for c in caps {
            let flag = match c.as_str() {
                "IMAP4REV2" => &mut self.enabled.rev2,
                "UTF8=ACCEPT" => &mut self.enabled.utf8,
                "CONDSTORE" => &mut self.enabled.condstore,
                "QRESYNC" => {
                    // RFC 7162 §3.2.3: QRESYNC implies CONDSTORE.
                    self.enabled.condstore = true;
                    &mut self.enabled.qresync
                }
                _ => continue,
            };
            if !*flag {
                *flag = true;
                newly.push(match c.as_str() {
                    "IMAP4REV2" => "IMAP4rev2",
                    other => other,
                });
            }
        }
        io.write(
            format!(
                "* ENABLED{}{}\r\n",
                if newly.is_empty() { "" } else { " " },
                newly.join(" ")
            )
            .as_bytes(),
        );
        Status::ok("ENABLE completed")
    }

    /// COMPRESS (RFC 4978 §3): the tagged OK leaves uncompressed, then
    /// both directions are raw DEFLATE streams. A second COMPRESS is
    /// `NO [COMPRESSIONACTIVE]`; another mechanism is `BAD`.
    pub(super) async fn compress<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        tag: &str,
        mechanism: &str,
    ) -> std::io::Result<Option<Exit>> {
        let st = if self.compressed {
            Status::no("DEFLATE active already").with(crate::response::Code::CompressionActive)
        } else if mechanism != "DEFLATE" {
            Status::bad("Only DEFLATE is supported")
        } else {
            io.write(&Status::ok("DEFLATE active").encode(Some(tag)));
            io.flush().await?;
            io.start_compression();
            self.compressed = true;
            return Ok(None);
        };
        io.write(&st.encode(Some(tag)));
        Ok(None)
    }
}
