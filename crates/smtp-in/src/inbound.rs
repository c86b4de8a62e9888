//! Who sent it: the checks the MX listener runs at the end of DATA, with
//! the `mail-auth` crate over a hickory resolver (`--dns-server`).
//!
//! - SPF (RFC 7208 §2.3, §2.4) of the HELO identity and of the MAIL FROM
//!   identity (the HELO identity again for the null sender), against the
//!   client IP as the session sees it (after PROXY protocol);
//! - DKIM (RFC 6376 §6): every signature, up to [`MAX_DKIM_SIGNATURES`]
//!   (RFC 6376 §6.1 lets a verifier limit the number it checks);
//! - ARC (RFC 8617 §5.2): the chain is validated and reported; it never
//!   overrides a DMARC verdict (there is no list of trusted sealers yet);
//! - DMARC (RFC 7489 §6.6, alignment §3.1) with the author domain's
//!   published policy.
//!
//! The results become one `Authentication-Results` field (RFC 8601 §2.2)
//! with our host name as authserv-id, and a [`Decision`] from [`Policy`].
//! Each check has a deadline; one that runs out is a `temperror`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dmarc::Policy as DmarcPolicy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput,
    DmarcResult, DnsError, Error, MessageAuthenticator, SpfOutput, SpfResult,
};

/// At most this many `DKIM-Signature` fields are verified per message
/// (each costs a DNS lookup and a signature check).
pub const MAX_DKIM_SIGNATURES: usize = 10;

/// Author domains (in `From:`) evaluated by DMARC; a message naming more is
/// treated as a DMARC failure of a `p=reject` domain.
pub const MAX_AUTHOR_DOMAINS: usize = 5;

/// What to do when a check fails.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Refuse the message: `550 5.7.1` at the end of DATA.
    Enforce,
    /// Accept it, filed by delivery in Junk with `$Junk`.
    Quarantine,
    /// Accept it; only the `Authentication-Results` field says so.
    Report,
}

impl Action {
    /// The stricter of two (enforce > quarantine > report).
    #[must_use]
    pub fn strictest(self, other: Self) -> Self {
        let rank = |a: Self| match a {
            Self::Report => 0,
            Self::Quarantine => 1,
            Self::Enforce => 2,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// The local policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A DMARC failure of a domain publishing `p=reject`.
    pub dmarc_reject: Action,
    /// An SPF `fail` of the MAIL FROM identity with no DKIM signature
    /// passing.
    pub spf_fail: Action,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            dmarc_reject: Action::Enforce,
            spf_fail: Action::Report,
        }
    }
}

/// What happens to the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Accept as usual.
    Accept,
    /// Accept and mark for the Junk folder; the reason goes in the mark.
    Quarantine(String),
    /// Refuse with `550 5.7.1`; the reason goes in the reply.
    Reject(String),
}

impl Decision {
    fn severity(&self) -> u8 {
        match self {
            Self::Accept => 0,
            Self::Quarantine(_) => 1,
            Self::Reject(_) => 2,
        }
    }
}

fn apply(action: Action, why: String) -> Decision {
    match action {
        Action::Enforce => Decision::Reject(why),
        Action::Quarantine => Decision::Quarantine(why),
        Action::Report => Decision::Accept,
    }
}

/// The outcome of the checks.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// `Authentication-Results: ...\r\n`, folded.
    pub header: String,
    /// What to do.
    pub decision: Decision,
    /// One row per author domain with a DMARC record, for the aggregate
    /// report that domain may ask for (RFC 7489 §7.2).
    pub dmarc: Vec<mailstore_api::pb::DmarcResult>,
}

/// The raw results of every check of one message.
struct Evaluation<'x> {
    spf_helo: SpfOutput,
    spf_mail: SpfOutput,
    mail_from_domain: String,
    dkim: Vec<DkimOutput<'x>>,
    arc: ArcOutput<'x>,
    /// Author domains in `From:`.
    authors: usize,
    dmarc: Vec<DmarcOutput>,
}

impl<'x> Evaluation<'x> {
    /// The `Authentication-Results` (RFC 8601) of these checks, with
    /// `hostname` as authserv-id.
    fn results(
        &self,
        hostname: &'x str,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        parsed: &AuthenticatedMessage<'_>,
    ) -> AuthenticationResults<'x> {
        let header_from = parsed.from.first().map_or("", String::as_str);
        let mut ar = AuthenticationResults::new(hostname)
            .with_dkim_results(&self.dkim, header_from)
            .with_spf_ehlo_result(&self.spf_helo, ip, helo)
            .with_spf_mailfrom_result(&self.spf_mail, ip, mail_from, helo)
            .with_arc_result(&self.arc, ip);
        for d in self.dmarc.iter().filter(|d| !d.domain().is_empty()) {
            ar = ar.with_dmarc_result(d);
        }
        ar
    }
}

/// A resolver could not be built.
#[derive(Debug, thiserror::Error)]
#[error("DNS resolver: {0}")]
pub struct ResolverError(String);

/// The checks, with their resolver and policy.
#[derive(Clone)]
pub struct Checker {
    auth: MessageAuthenticator,
    policy: Policy,
    deadline: Duration,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("policy", &self.policy)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Checker {
    /// A checker asking `dns` (or the system resolver configuration when
    /// `None`), each query timing out after `timeout`. hickory's cache
    /// (bounded TTLs) serves repeated lookups.
    ///
    /// # Errors
    /// When the system resolver configuration cannot be read.
    pub fn new(
        dns: Option<SocketAddr>,
        timeout: Duration,
        policy: Policy,
    ) -> Result<Self, ResolverError> {
        let mut builder = service_kit::dns::resolver_builder(dns, timeout)
            .map_err(|e| ResolverError(e.to_string()))?;
        let opts = builder.options_mut();
        opts.positive_max_ttl = Some(Duration::from_secs(3600));
        opts.negative_max_ttl = Some(Duration::from_secs(60));
        // A negative answer without an SOA has no TTL (RFC 2308 §5), and
        // hickory then caches it for 0 s: every message from a sender
        // domain without SPF/DMARC records asked again, and one dropped
        // UDP answer cost the whole query timeout (issue #17: p99 DATA→250
        // of 5 s, 5 msg/s). We are the last consumer of these answers (no
        // forwarding, so no caching loop), so they are kept 30 s.
        opts.negative_min_ttl = Some(Duration::from_secs(30));
        let resolver = builder.build().map_err(|e| ResolverError(e.to_string()))?;
        Ok(Self {
            auth: MessageAuthenticator(resolver),
            policy,
            // SPF alone may take ten lookups (RFC 7208 §4.6.4), each with
            // its retries; beyond this the check is a temperror.
            deadline: timeout.saturating_mul(6).max(Duration::from_secs(1)),
        })
    }

    /// The action for a DMARC p=reject failure given a recipient domain's
    /// stored choice (`Domain.dmarc_reject_action`); `""` or anything
    /// unknown is the global `--dmarc-reject-action`.
    #[must_use]
    pub fn dmarc_reject_action(&self, domain_choice: &str) -> Action {
        match domain_choice {
            "enforce" => Action::Enforce,
            "quarantine" => Action::Quarantine,
            "report" => Action::Report,
            _ => self.policy.dmarc_reject,
        }
    }

    /// Runs every check on one message. `mail_from` is the envelope sender
    /// (empty for `<>`), `helo` the HELO/EHLO argument, `hostname` our
    /// authserv-id; `dmarc_reject` overrides the global
    /// `--dmarc-reject-action` (the recipients' domains' choice).
    pub async fn check(
        &self,
        hostname: &str,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        message: &[u8],
        dmarc_reject: Option<Action>,
    ) -> Verdict {
        let dmarc_reject = dmarc_reject.unwrap_or(self.policy.dmarc_reject);
        let mut parsed = AuthenticatedMessage::parse(message).unwrap_or_default();
        parsed.dkim_headers.truncate(MAX_DKIM_SIGNATURES);
        let ev = self.evaluate(hostname, ip, helo, mail_from, &parsed).await;
        let mut header = ev
            .results(hostname, ip, helo, mail_from, &parsed)
            .to_header();
        let Evaluation {
            spf_mail,
            mail_from_domain,
            dkim,
            authors,
            dmarc,
            ..
        } = ev;
        // RFC 8601 §2.7.1: say "none" rather than leave a method out.
        let mut extra = String::new();
        if dkim.is_empty() {
            extra.push_str(";\r\n\tdkim=none");
        }
        if !dmarc.iter().any(|d| !d.domain().is_empty()) {
            extra.push_str(";\r\n\tdmarc=none");
        }
        if !extra.is_empty() {
            header.truncate(header.trim_end_matches("\r\n").len());
            header.push_str(&extra);
            header.push_str("\r\n");
        }

        let decision = if authors > MAX_AUTHOR_DOMAINS {
            apply(dmarc_reject, "too many author domains in From:".into())
        } else {
            dmarc
                .iter()
                .map(|d| self.decide(dmarc_reject, &spf_mail, &dkim, d))
                .max_by_key(Decision::severity)
                .unwrap_or(Decision::Accept)
        };
        let label = |r: &DmarcResult| match r {
            DmarcResult::Pass => "pass",
            DmarcResult::Fail(_) => "fail",
            DmarcResult::TempError(_) => "temperror",
            DmarcResult::PermError(_) => "permerror",
            DmarcResult::None => "none",
        };
        for d in &dmarc {
            metrics::counter!("smtp_in_dmarc_total", "result" => label(&d.result())).increment(1);
            tracing::info!(
                dmarc = label(&d.result()),
                from_domain = d.domain(),
                "inbound DMARC"
            );
        }
        tracing::info!(
            spf = %spf_mail.result(),
            dkim = dkim.iter().filter(|d| d.result() == &DkimResult::Pass).count(),
            decision = ?decision,
            "inbound authentication"
        );
        let mut rows = Vec::new();
        for d in &dmarc {
            let Some(record) = d.dmarc_record() else {
                continue;
            };
            let disposition = match self.decide(dmarc_reject, &spf_mail, &dkim, d) {
                Decision::Reject(_) => "reject",
                Decision::Quarantine(_) => "quarantine",
                Decision::Accept => "none",
            };
            rows.push(report_row(
                d,
                record,
                ip,
                &mail_from_domain,
                &dkim,
                &spf_mail,
                disposition,
            ));
        }
        Verdict {
            header,
            decision,
            dmarc: rows,
        }
    }

    /// Every check of one message (parsed by the caller, which keeps it
    /// alive for the results that borrow it).
    async fn evaluate<'x>(
        &self,
        hostname: &str,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        parsed: &'x AuthenticatedMessage<'x>,
    ) -> Evaluation<'x> {
        let auth = &self.auth;
        let helo_is_domain = helo.contains('.') && !helo.starts_with('[');
        // RFC 7208 §2.3: the HELO identity.
        let spf_helo = if helo_is_domain {
            self.within(
                auth.verify_spf(SpfParameters::verify_ehlo(ip, helo, hostname)),
                || SpfOutput::new(helo.to_string()).with_result(SpfResult::TempError),
            )
            .await
        } else {
            SpfOutput::new(helo.to_string()).with_result(SpfResult::None)
        };
        // RFC 7208 §2.4: MAIL FROM, or the HELO identity for the null sender.
        let spf_mail = if mail_from.is_empty() {
            spf_helo.clone()
        } else {
            self.within(
                auth.verify_spf(SpfParameters::verify_mail_from(
                    ip, helo, hostname, mail_from,
                )),
                || SpfOutput::new(mail_from.to_string()).with_result(SpfResult::TempError),
            )
            .await
        };
        let mail_from_domain = mail_from
            .rsplit_once('@')
            .map_or(helo, |(_, d)| d)
            .to_ascii_lowercase();
        let timeout = || Error::Dns(DnsError::Resolver("deadline exceeded".into()));
        let dkim = self
            .within(auth.verify_dkim(parsed), || {
                vec![DkimOutput::temp_err(timeout())]
            })
            .await;
        let arc = self
            .within(auth.verify_arc(parsed), || {
                ArcOutput::default().with_result(DkimResult::TempError(timeout()))
            })
            .await;
        // RFC 7489 §6.6.1: one author domain is the rule. mail-auth exempts
        // a message with several (several From: fields or mailboxes), which
        // would let `From: x@evil.example, ceo@bank.example` dodge DMARC;
        // each domain is evaluated instead, and the strictest verdict wins.
        let mut authors: Vec<&str> = Vec::new();
        for address in &parsed.from {
            if let Some((_, domain)) = address.rsplit_once('@')
                && !authors
                    .iter()
                    .any(|a| a.rsplit_once('@').is_some_and(|(_, d)| d == domain))
            {
                authors.push(address);
            }
        }
        let mut dmarc = Vec::with_capacity(authors.len().min(MAX_AUTHOR_DOMAINS));
        if authors.len() <= 1 {
            dmarc.push(
                self.dmarc(parsed, &dkim, &mail_from_domain, &spf_mail)
                    .await,
            );
        } else {
            for author in authors.iter().take(MAX_AUTHOR_DOMAINS) {
                let mut one = parsed.clone();
                one.from = vec![(*author).to_string()];
                dmarc.push(self.dmarc(&one, &dkim, &mail_from_domain, &spf_mail).await);
            }
        }
        Evaluation {
            spf_helo,
            spf_mail,
            mail_from_domain,
            dkim,
            arc,
            authors: authors.len(),
            dmarc,
        }
    }

    /// An ARC set (RFC 8617 §4) for `message` as we forward it: the checks
    /// run again (against the client that handed it to us: `ip`, `helo`,
    /// the original `mail_from`), their results become the
    /// `ARC-Authentication-Results`, and `sealer` signs the message
    /// (`ARC-Message-Signature`) and the chain (`ARC-Seal`, `cv=` from the
    /// validation of the chain the message came with: a chain broken on
    /// the way is sealed `cv=fail`, which ends it, §5.1.2). `None` when the
    /// last seal already says `cv=fail` (§5.1.1: nothing more to seal) or
    /// signing failed. The returned fields go on top of the message;
    /// `message` must end its lines with CRLF.
    pub async fn arc_seal(
        &self,
        sealer: &mail_auth::arc::ArcSealer<
            mail_auth::common::crypto::DkimKey,
            mail_auth::dkim::Done,
        >,
        hostname: &str,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        message: &[u8],
    ) -> Option<String> {
        let mut parsed = AuthenticatedMessage::parse(message)?;
        parsed.dkim_headers.truncate(MAX_DKIM_SIGNATURES);
        let ev = self.evaluate(hostname, ip, helo, mail_from, &parsed).await;
        if !ev.arc.can_be_sealed() {
            tracing::info!("ARC chain already ended with cv=fail: not sealed (RFC 8617 §5.1.1)");
            return None;
        }
        let results = ev.results(hostname, ip, helo, mail_from, &parsed);
        match sealer.seal(&parsed, &results, &ev.arc) {
            Ok(set) => Some(set.to_header()),
            Err(e) => {
                tracing::warn!(error = %e, "ARC sealing failed; forwarded without a seal");
                None
            }
        }
    }

    async fn dmarc(
        &self,
        message: &AuthenticatedMessage<'_>,
        dkim: &[DkimOutput<'_>],
        mail_from_domain: &str,
        spf: &SpfOutput,
    ) -> DmarcOutput {
        let late = || Error::Dns(DnsError::Resolver("deadline exceeded".into()));
        self.within(
            self.auth
                .verify_dmarc(DmarcParameters::new(message, dkim, mail_from_domain, spf)),
            || {
                DmarcOutput::default()
                    .with_dkim_result(DmarcResult::TempError(late()))
                    .with_spf_result(DmarcResult::TempError(late()))
            },
        )
        .await
    }

    async fn within<T>(&self, fut: impl Future<Output = T>, late: impl FnOnce() -> T) -> T {
        tokio::time::timeout(self.deadline, fut)
            .await
            .unwrap_or_else(|_| late())
    }

    fn decide(
        &self,
        dmarc_reject: Action,
        spf: &SpfOutput,
        dkim: &[DkimOutput<'_>],
        dmarc: &DmarcOutput,
    ) -> Decision {
        let dmarc_failed = matches!(dmarc.result(), DmarcResult::Fail(_));
        // RFC 7489 §6.6.2 step 6 and §6.7: the domain owner asks; local
        // policy decides.
        match dmarc.policy() {
            DmarcPolicy::Reject if dmarc_failed => {
                return apply(
                    dmarc_reject,
                    format!("DMARC policy of {} (p=reject)", dmarc.domain()),
                );
            }
            DmarcPolicy::Quarantine if dmarc_failed => {
                // p=quarantine never refuses; "report" only marks.
                let action = match dmarc_reject {
                    Action::Report => Action::Report,
                    _ => Action::Quarantine,
                };
                return apply(
                    action,
                    format!("DMARC policy of {} (p=quarantine)", dmarc.domain()),
                );
            }
            _ => {}
        }
        let dkim_pass = dkim.iter().any(|d| d.result() == &DkimResult::Pass);
        if spf.result() == SpfResult::Fail && !dkim_pass {
            // RFC 7208 §8.4: a "fail" may be refused; RFC 7489 §10.1
            // advises waiting for DKIM, which did not pass either.
            return apply(
                self.policy.spf_fail,
                format!("SPF of {} says fail", spf.domain()),
            );
        }
        Decision::Accept
    }
}

/// The aggregate-report row of one DMARC evaluation (RFC 7489 §7.2,
/// Appendix C): what was checked, what was found, what we did.
fn report_row(
    d: &DmarcOutput,
    record: &mail_auth::dmarc::Dmarc,
    ip: IpAddr,
    mail_from_domain: &str,
    dkim: &[DkimOutput<'_>],
    spf: &SpfOutput,
    disposition: &str,
) -> mailstore_api::pb::DmarcResult {
    use mail_auth::dmarc::{Alignment, Report};
    let policy = |p: &DmarcPolicy| match p {
        DmarcPolicy::Reject => "reject",
        DmarcPolicy::Quarantine => "quarantine",
        DmarcPolicy::None | DmarcPolicy::Unspecified => "none",
    };
    let align = |a: &Alignment| match a {
        Alignment::Strict => "s",
        Alignment::Relaxed => "r",
    };
    let aligned = |r: &DmarcResult| {
        if *r == DmarcResult::Pass {
            "pass"
        } else {
            "fail"
        }
    };
    let sp = match record.sp {
        DmarcPolicy::Unspecified => &record.p,
        ref sp => sp,
    };
    let spf_result = match spf.result() {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    };
    let dkim = dkim
        .iter()
        .filter_map(|o| {
            let sig = o.signature()?;
            let result = match o.result() {
                DkimResult::Pass => "pass",
                DkimResult::Neutral(_) => "neutral",
                DkimResult::Fail(_) => "fail",
                DkimResult::PermError(_) => "permerror",
                DkimResult::TempError(_) => "temperror",
                DkimResult::None => "none",
            };
            Some(mailstore_api::pb::DmarcDkimAuth {
                domain: sig.d.clone(),
                selector: sig.s.clone(),
                result: result.into(),
            })
        })
        .take(MAX_DKIM_SIGNATURES)
        .collect();
    mailstore_api::pb::DmarcResult {
        policy_domain: d.domain().to_ascii_lowercase(),
        header_from: d.domain().to_ascii_lowercase(),
        envelope_from: mail_from_domain.to_string(),
        source_ip: ip.to_string(),
        disposition: disposition.into(),
        dkim_aligned: aligned(d.dkim_result()).into(),
        spf_aligned: aligned(d.spf_result()).into(),
        dkim,
        spf_domain: spf.domain().to_ascii_lowercase(),
        spf_result: spf_result.into(),
        p: policy(&record.p).into(),
        sp: policy(sp).into(),
        adkim: align(&record.adkim).into(),
        aspf: align(&record.aspf).into(),
        // DMARCbis dropped pct; mail-auth applies the policy to all mail.
        pct: 100,
        fo: match record.fo {
            Report::All => "0",
            Report::Any => "1",
            Report::Dkim => "d",
            Report::Spf => "s",
            Report::DkimSpf => "d:s",
        }
        .into(),
        // RFC 7489 §6.2: `uri!size`, the limit kept for the sender.
        // mail-auth keeps mailto: URIs only, without their scheme.
        rua: record
            .rua
            .iter()
            .take(16)
            .map(|u| {
                let uri = if u.uri().contains(':') {
                    u.uri().to_string()
                } else {
                    format!("mailto:{}", u.uri())
                };
                if u.max_size() > 0 {
                    format!("{uri}!{}", u.max_size())
                } else {
                    uri
                }
            })
            .collect(),
        count: 1,
        day: String::new(),
    }
}
