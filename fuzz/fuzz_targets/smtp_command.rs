//! smtp-in's command line: the CRLF framing (`proto::line`) over a whole
//! pipelined buffer, then the command grammar (`proto::command`) on every
//! line, as the session does; RCPT paths in both SMTPUTF8 modes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smtp_in::proto::command::{self, Command, MAX_COMMAND_LINE};
use smtp_in::proto::line::{self, Frame};

fn command(l: &[u8]) {
    let Ok(cmd) = command::parse_command(l) else {
        return;
    };
    let _ = cmd.verb();
    // What was parsed is in the line: no control characters made it through.
    match &cmd {
        Command::Ehlo(d) | Command::Helo(d) => {
            // A tab is allowed by the grammar (it only reaches Received:).
            assert!(!d.is_empty() && !d.contains(' '));
            assert!(!d.contains(|c: char| c.is_control() && c != '\t'));
        }
        Command::Rcpt { path, .. } => {
            for utf8 in [false, true] {
                if let Ok(mail_wire::path::ForwardPath::Mailbox(m)) =
                    command::parse_rcpt_path(path, utf8)
                {
                    assert!(utf8 || !m.is_utf8(), "non-ASCII path without SMTPUTF8");
                }
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    // The grammar alone, on any bytes.
    command(data);
    // The framing: every line the session would see.
    let mut buf = data;
    loop {
        match line::frame(buf, MAX_COMMAND_LINE) {
            Frame::Line { len, consumed } => {
                assert!(consumed <= buf.len() && consumed <= MAX_COMMAND_LINE);
                assert_eq!(&buf[len..consumed], b"\r\n");
                assert!(!buf[..len].contains(&b'\n'));
                command(&buf[..len]);
                buf = &buf[consumed..];
            }
            Frame::Bad { consumed, .. } => {
                assert!(consumed > 0 && consumed <= buf.len());
                assert_eq!(buf[consumed - 1], b'\n');
                buf = &buf[consumed..];
            }
            Frame::Overflow => {
                assert!(buf.len() >= MAX_COMMAND_LINE);
                // The session discards up to the next LF.
                match buf.iter().position(|&b| b == b'\n') {
                    Some(lf) => buf = &buf[lf + 1..],
                    None => break,
                }
            }
            Frame::NeedMore => {
                assert!(!buf.contains(&b'\n'));
                break;
            }
        }
    }
});
