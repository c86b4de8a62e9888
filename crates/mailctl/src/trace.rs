//! `mailctl trace <message-id | job id>`: each hop of one message, from
//! the store's event log — received by smtp-in (client, HELO, TLS, AUTH,
//! SPF/DKIM/DMARC), queued, delivered (mailbox and UID) or relayed,
//! smtp-out's attempts (MX, address, TLS, reply), deferrals, bounces and
//! the DSNs made about it — in job order, events in the order written.

use std::collections::BTreeMap;

use mailstore_api::{StoreClient, pb};

use crate::{kind_name, state_name, status, when};

/// Which message to trace.
#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    /// The Message-ID (`<abc@example.org>` or `abc@example.org`), a
    /// queue id (the number in smtp-in's "250 … queued as N"), or a sender
    /// or recipient address (its last 10 messages; tried when no
    /// Message-ID matches).
    pub key: String,
}

/// Prints the trace of one message.
///
/// # Errors
/// Store errors; nothing found.
pub async fn command(
    c: &StoreClient,
    args: TraceArgs,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let raw = args.key.trim();
    let key = match raw.parse::<u64>() {
        Ok(id) if id > 0 => pb::trace_request::Key::JobId(id),
        _ => pb::trace_request::Key::MessageId(raw.to_string()),
    };
    let ask = |key| async move {
        c.queue
            .clone()
            .trace(pb::TraceRequest { key: Some(key) })
            .await
            .map_err(status)
            .map(tonic::Response::into_inner)
    };
    let mut r = ask(key).await?;
    // `local@domain` is a Message-ID or an address: a Message-ID first,
    // then the last messages from or to the address.
    if r.jobs.is_empty() && raw.contains('@') {
        r = ask(pb::trace_request::Key::Address(raw.to_string())).await?;
    }
    if r.jobs.is_empty() {
        anyhow::bail!("no queued message matches {:?}", args.key);
    }
    for d in &r.jobs {
        write_job(d, out)?;
    }
    Ok(())
}

fn write_job(d: &pb::JobDetail, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let s = d.summary.clone().unwrap_or_default();
    let j = d.job.clone().unwrap_or_default();
    let mut how = String::new();
    if j.parent_job_id != 0 {
        how.push_str(&format!(", relayed from job {}", j.parent_job_id));
    }
    if j.about_job_id != 0 {
        how.push_str(&format!(", report about job {}", j.about_job_id));
    }
    if !j.destination.is_empty() {
        how.push_str(&format!(", to {}", j.destination));
    }
    writeln!(
        out,
        "job {} ({} queue, {}{how})",
        s.id,
        kind_name(s.kind),
        state_name(s.state)
    )?;
    let mid = if j.message_id.is_empty() {
        "-".to_string()
    } else {
        format!("<{}>", j.message_id)
    };
    writeln!(
        out,
        "  message-id: {mid}  from: <{}>  size: {}  attempts: {}",
        j.mail_from, j.size, j.attempts
    )?;
    for e in &d.events {
        let kind =
            pb::EventKind::try_from(e.kind).map_or("?".into(), |k| format!("{k:?}").to_lowercase());
        let mut line = format!("  {} {kind:<11} {}", when(e.at.as_ref()), e.source);
        if !e.recipient.is_empty() {
            line.push_str(&format!(" <{}>", e.recipient));
        }
        if !e.detail.is_empty() {
            line.push_str(&format!(": {}", one_line(&e.detail)));
        }
        writeln!(out, "{line}")?;
        // Attributes in a stable order, one per line.
        let attrs: BTreeMap<_, _> = e.attributes.iter().collect();
        for (k, v) in attrs {
            writeln!(out, "      {k}={}", one_line(v))?;
        }
    }
    for r in &j.recipients {
        let addr = r.recipient.as_ref().map_or("", |x| x.address.as_str());
        let st = pb::RecipientState::try_from(r.state)
            .map_or("?".into(), |x| format!("{x:?}").to_lowercase());
        writeln!(
            out,
            "  recipient <{addr}>: {st} after {} attempt(s){}",
            r.attempts,
            if r.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", one_line(&r.detail))
            }
        )?;
    }
    Ok(())
}

/// Text from remote servers on one terminal line: control characters
/// (a reply's CR LF, escape sequences) become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_text_stays_on_one_line() {
        assert_eq!(one_line("250 ok\r\n\x1b[2J"), "250 ok   [2J");
    }
}
