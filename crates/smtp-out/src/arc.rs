//! ARC sealing of mail forwarded through an alias (RFC 8617 §4, §5.1).
//!
//! Forwarded mail is never DKIM-signed with our key (we did not write it);
//! an ARC set instead says what we saw when it reached us: the checks of
//! the MX run again against the client that handed it to us (its IP and
//! HELO are kept with the job; the sender is the one before our SRS
//! rewriting), their results become `ARC-Authentication-Results`, and the
//! key of the alias's domain (else of the SRS domain) signs the message
//! as it leaves (`ARC-Message-Signature`) and the chain (`ARC-Seal`). A
//! receiver that trusts us can then accept the message although SPF and
//! the original DKIM signature no longer align. A chain broken before us
//! is sealed `cv=fail` (RFC 8617 §5.1.2: the chain ends there); nothing is
//! sealed when the chain already ended so, when we hold no key for those
//! domains, or with `--no-arc`.

use std::net::IpAddr;

use mailstore_api::pb;

use crate::dkim;
use crate::worker::Worker;

/// The envelope sender before an SRS rewriting (`SRS0=HHHH=TT=domain=local@
/// ours` → `local@domain`); other senders unchanged. The hash is not
/// checked: the job is ours, made by delivery.
fn before_srs(mail_from: &str) -> String {
    let Some((local, _)) = mail_from.rsplit_once('@') else {
        return mail_from.to_string();
    };
    let Some(rest) = local
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("SRS0="))
        .map(|_| &local[5..])
    else {
        return mail_from.to_string();
    };
    let mut parts = rest.splitn(4, '=');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_hash), Some(_stamp), Some(domain), Some(orig_local))
            if !domain.is_empty() && !orig_local.is_empty() =>
        {
            format!("{orig_local}@{domain}")
        }
        _ => mail_from.to_string(),
    }
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

impl Worker {
    /// `message` with an ARC set on top when it can be sealed (see the
    /// module documentation), else unchanged.
    pub(crate) async fn arc_seal(&self, job: &pb::Job, message: Vec<u8>) -> Vec<u8> {
        let Some(checker) = &self.arc else {
            return message;
        };
        let Ok(ip) = job.client_ip.parse::<IpAddr>() else {
            return message;
        };
        let Some(signer) = self.dkim.read().map(|g| g.clone()).ok() else {
            return message;
        };
        let Some(sealer) = signer.sealer([domain_of(&job.delivered_to), domain_of(&job.mail_from)])
        else {
            return message;
        };
        let crlf = dkim::normalise_crlf(&message);
        let sender = before_srs(&job.mail_from);
        match checker
            .arc_seal(sealer, &self.config.hostname, ip, &job.helo, &sender, &crlf)
            .await
        {
            Some(set) => {
                metrics::counter!("smtp_out_arc_sealed_total").increment(1);
                let mut out = set.into_bytes();
                out.extend_from_slice(&crlf);
                out
            }
            None => message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sender_before_srs() {
        assert_eq!(
            before_srs("SRS0=AbCd=X2=orig.test=stranger@a.test"),
            "stranger@orig.test"
        );
        assert_eq!(
            before_srs("srs0=AbCd=X2=a.test=SRS0=EfGh=X2=orig.test=s@b.test"),
            "SRS0=EfGh=X2=orig.test=s@a.test"
        );
        assert_eq!(before_srs("plain@orig.test"), "plain@orig.test");
        assert_eq!(before_srs("SRS0=broken@a.test"), "SRS0=broken@a.test");
        assert_eq!(before_srs(""), "");
    }
}
