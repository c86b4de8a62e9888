//! One delivery attempt of a job: read (and DKIM-sign) the message, then
//! for each recipient domain walk the route's hosts and addresses over a
//! reused or new connection until one gives a transaction result.
//!
//! Per connection the message goes as stored (signed), or, to a server
//! without 8BITMIME, converted to 7-bit and signed after the conversion
//! ([`crate::downgrade`]). Under an MTA-STS `enforce` policy (RFC 8461
//! §5) only matching MX hosts are tried, and only over TLS whose
//! certificate is verified for the MX name; otherwise the recipients are
//! deferred (`4.7.5`), never sent in the clear. DANE (RFC 7672, [`crate::dane`])
//! works per MX host the same way: secure TLSA records demand TLS whose
//! certificate they match, and a host whose TLSA lookup failed is skipped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use mailstore_api::pb;
use tokio::net::TcpStream;

use crate::client::{self, Capabilities, ClientError, Connection, Envelope, RcptOutcome, Tls};
use crate::dane::HostPolicy;
use crate::mta_sts::{Mode, Policy};
use crate::outcome::{Note, TlsReport};
use crate::route::{Host, RouteError};
use crate::worker::{Open, Worker, domain_of};
use crate::{dkim, downgrade};

/// Where a destination's mail goes and under which MTA-STS and DANE policies.
pub(crate) struct Plan {
    pub(crate) route: Result<Vec<Host>, RouteError>,
    pub(crate) sts: Option<Policy>,
    /// DANE per MX host name (absent: no DANE).
    pub(crate) dane: HashMap<String, HostPolicy>,
}

/// What TLS a connection must have before anything is sent.
#[derive(Debug, Clone)]
pub(crate) enum Demand {
    /// RFC 7435: TLS when offered, plaintext when not (or when it fails).
    Opportunistic,
    /// MTA-STS `enforce` (RFC 8461 §4.2): TLS verified for the MX name.
    MtaSts,
    /// DANE (RFC 7672 §3): TLS with a certificate matching the TLSA records.
    Dane(std::sync::Arc<Vec<crate::dane::Tlsa>>),
    /// DANE with only unusable TLSA records (RFC 7672 §2.2): TLS, unauthenticated.
    DaneEncrypt,
    /// REQUIRETLS (RFC 8689 §4.2.1) without MTA-STS or DANE: TLS verified
    /// for the MX name (PKIX, RFC 6125).
    RequireTls,
}

impl Demand {
    /// The event note for an attempt under this demand.
    fn note(&self, sts: Option<(Mode, Option<String>)>) -> Note {
        let dane = match self {
            Demand::Opportunistic | Demand::MtaSts | Demand::RequireTls => None,
            Demand::Dane(_) => Some("authenticated"),
            Demand::DaneEncrypt => Some("encrypt"),
        };
        Note {
            sts,
            dane,
            report: None,
        }
    }

    /// The RFC 8460 §4.4 policy this attempt ran under: type and text.
    fn rpt_policy(&self, sts: Option<&Policy>) -> (&'static str, Vec<String>) {
        match (self, sts) {
            (Demand::Dane(r), _) => ("tlsa", r.iter().map(tlsa_string).collect()),
            (Demand::DaneEncrypt, _) => ("tlsa", Vec::new()),
            (_, Some(p)) => ("sts", sts_strings(p)),
            (_, None) => ("no-policy-found", Vec::new()),
        }
    }
}

/// A TLSA record in presentation form (`3 1 1 ab12…`).
fn tlsa_string(t: &crate::dane::Tlsa) -> String {
    let hex: String = t.data.iter().map(|b| format!("{b:02x}")).collect();
    format!("{} {} {} {hex}", t.usage, t.selector, t.matching)
}

/// The MTA-STS policy as its lines (RFC 8460 §4.4 policy-string).
fn sts_strings(p: &Policy) -> Vec<String> {
    let mut v = vec![
        "version: STSv1".to_string(),
        format!("mode: {}", p.mode.as_str()),
    ];
    v.extend(p.mx.iter().map(|m| format!("mx: {m}")));
    v.push(format!("max_age: {}", p.max_age));
    v
}

/// The TLS-RPT outcome of one session, for [`Note::report`].
fn rpt(
    domain: &str,
    (policy_type, policy_strings): (&'static str, Vec<String>),
    failure: Option<(&'static str, String)>,
) -> Option<TlsReport> {
    let (result_type, reason) = failure.unwrap_or(("", String::new()));
    Some(TlsReport {
        domain: domain.to_string(),
        policy_type,
        policy_strings,
        result_type,
        reason: reason.chars().take(200).collect(),
    })
}

/// One job's message in the forms it may be sent in.
pub(crate) struct Payload {
    /// As stored, unsigned.
    original: Vec<u8>,
    /// As stored, DKIM-signed when the job may be signed and we hold a key
    /// (for 8BITMIME servers).
    pub(crate) signed: Vec<u8>,
    /// Converted to 7-bit, then signed (made on first need).
    seven_bit: OnceLock<Result<Vec<u8>, String>>,
    mail_from: String,
    /// The job's `sign` mark: content we vouch for (an authenticated
    /// submission, our own DSN or report). Without it nothing is signed.
    sign: bool,
}

/// Largest message read from the store for sending.
const MAX_MESSAGE: u64 = 256 * 1024 * 1024;

/// What happened to one job's pending recipients in one attempt.
pub(crate) struct Attempt {
    /// (recipient index, outcome)
    pub(crate) results: Vec<(usize, RcptOutcome)>,
    /// The accepting server offered DSN (RFC 3461): it notifies from now on.
    pub(crate) remote_dsn: bool,
}

impl Worker {
    async fn read_message(&self, job: &pb::Job) -> Result<Vec<u8>, tonic::Status> {
        if job.size > MAX_MESSAGE {
            return Err(tonic::Status::failed_precondition("message too large"));
        }
        let capacity = usize::try_from(job.size).unwrap_or(0);
        self.jobs
            .read_message(job.id, 0, MAX_MESSAGE, capacity)
            .await
    }

    /// One attempt at a job's pending recipients, then its outcome.
    pub(crate) async fn work_job(
        &self,
        dest: &str,
        job: pb::Job,
        plan: &Plan,
        open: &mut Option<Open>,
    ) -> Result<(), tonic::Status> {
        let pending: Vec<(usize, pb::Recipient)> = job
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| queue_worker::is_pending(r))
            .filter_map(|(i, r)| r.recipient.clone().map(|rc| (i, rc)))
            .collect();
        if pending.is_empty() {
            return self.finish(&job, pb::FinishOutcome::Done, None, "").await;
        }
        let mut message = self.read_message(&job).await?;
        // A forwarded copy says which alias it went through (the stored
        // message is shared with the local deliveries), so a loop back to us
        // is seen by delivery's Delivered-To check.
        if !job.delivered_to.is_empty() {
            let mut with = format!("Delivered-To: {}\r\n", job.delivered_to).into_bytes();
            with.extend_from_slice(&message);
            message = with;
        }
        if job.sign {
            self.fresh_dkim_key(&message, &job.mail_from).await;
        } else if !job.delivered_to.is_empty() {
            message = self.arc_seal(&job, message).await;
        }
        // RFC 6376: signed as sent (CRLF), once per attempt — only what the
        // enqueuer marked as ours (never relayed or forwarded inbound mail:
        // our d= would vouch for a stranger's From:).
        let payload = Payload {
            signed: self.sign(&message, &job.mail_from, job.sign),
            original: message,
            seven_bit: OnceLock::new(),
            mail_from: job.mail_from.clone(),
            sign: job.sign,
        };
        // Recipients are grouped by domain: normally all are in `dest`
        // (delivery makes one job per recipient); any other domain gets its
        // own route and connection.
        let mut by_domain: Vec<(String, Vec<(usize, pb::Recipient)>)> = Vec::new();
        for (i, r) in pending.iter().cloned() {
            let d = domain_of(&r.address);
            let d = if d.is_empty() { dest.to_string() } else { d };
            match by_domain.iter_mut().find(|(x, _)| *x == d) {
                Some((_, v)) => v.push((i, r)),
                None => by_domain.push((d, vec![(i, r)])),
            }
        }
        let mut results = Vec::new();
        for (domain, group) in by_domain {
            let attempt = if domain == dest {
                self.try_route(&job, &group, &payload, &domain, plan, open)
                    .await?
            } else {
                let other = self.plan(&domain).await;
                let mut conn = None;
                let a = self
                    .try_route(&job, &group, &payload, &domain, &other, &mut conn)
                    .await?;
                if let Some(o) = conn {
                    o.conn.quit().await;
                }
                a
            };
            let remote_dsn = attempt.remote_dsn;
            results.extend(attempt.results.into_iter().map(|(i, o)| (i, o, remote_dsn)));
        }
        self.conclude(&job, &pending, results, &payload.signed)
            .await
    }

    /// The route of `domain` and, for MX delivery, its MTA-STS policy.
    pub(crate) async fn plan(&self, domain: &str) -> Plan {
        let route = self.router.route(domain).await;
        let sts = match (&self.mta_sts, &route) {
            (Some(m), Ok(_)) if !self.router.is_smarthost(domain) => {
                m.policy(&self.router, domain).await
            }
            _ => None,
        };
        let dane = match (&self.dane, &route) {
            (Some(d), Ok(hosts)) if !self.router.is_smarthost(domain) => {
                d.policies(domain, hosts).await
            }
            _ => HashMap::new(),
        };
        Plan { route, sts, dane }
    }

    /// A key made by `mailctl dkim generate` or `rotate` signs the very
    /// next message (issue #14): before signing a marked message, the
    /// store's active key for the domain it would be signed for is compared
    /// with the loaded one (selector); on a difference — a new domain, a
    /// rotated key, a store key withdrawn — the keys are reloaded now, not
    /// at the next minute's reload. One cheap store call per signed
    /// message (only authenticated submissions and our reports are).
    async fn fresh_dkim_key(&self, message: &[u8], mail_from: &str) {
        let loaded = self.dkim.read().map(|g| g.clone()).ok();
        let mut stale = false;
        for domain in dkim::Signer::candidates(message, mail_from) {
            let keys = self
                .store
                .accounts
                .clone()
                .list_dkim_keys(pb::ListDkimKeysRequest {
                    domain: domain.clone(),
                    include_private: false,
                    active_only: true,
                })
                .await;
            // Store unreachable: sign with what is loaded.
            let Ok(keys) = keys else { return };
            let active = keys
                .into_inner()
                .keys
                .into_iter()
                .next()
                .map(|k| k.selector);
            let held = loaded.as_ref().and_then(|s| s.selector(&domain));
            match (active.as_deref(), held) {
                (Some(a), Some((h, true))) if a == h => return,
                (None, None) => continue,
                // A file key and no store key: the file key signs.
                (None, Some((_, false))) => return,
                _ => {
                    stale = true;
                    break;
                }
            }
        }
        if !stale {
            return;
        }
        match crate::load_dkim(&self.store, &self.config.dkim_keys).await {
            Ok(s) => {
                tracing::info!("DKIM keys changed in the store: reloaded");
                if let Ok(mut g) = self.dkim.write() {
                    *g = Arc::new(s);
                }
            }
            Err(e) => tracing::warn!(error = %e, "DKIM reload failed"),
        }
    }

    fn sign(&self, message: &[u8], mail_from: &str, allowed: bool) -> Vec<u8> {
        if !allowed {
            return message.to_vec();
        }
        let signer = self.dkim.read().map(|g| g.clone()).ok();
        signer
            .and_then(|s| s.sign(message, mail_from))
            .unwrap_or_else(|| message.to_vec())
    }

    /// The bytes to send over a connection with `caps`, or the outcome
    /// for every recipient when the message cannot go there.
    fn body_for<'p>(
        &self,
        job: &pb::Job,
        payload: &'p Payload,
        caps: &Capabilities,
    ) -> Result<&'p [u8], RcptOutcome> {
        // RFC 6531 §3.2 / RFC 6532: UTF-8 header fields need SMTPUTF8;
        // they cannot be converted (the envelope is checked by the client).
        if job.smtputf8 && !caps.smtputf8 && downgrade::header_has_eight_bit(&payload.original) {
            return Err(RcptOutcome::Failed(
                "553 5.6.7 the message has internationalised (UTF-8) header fields and the remote server does not offer SMTPUTF8 (RFC 6531 §3.2)".into(),
            ));
        }
        if caps.eight_bit_mime || !mail_wire::dotstuff::has_eight_bit(&payload.signed) {
            return Ok(&payload.signed);
        }
        // RFC 6152 §3: no 8-bit data without 8BITMIME: convert, then sign.
        let converted = payload.seven_bit.get_or_init(|| {
            let crlf = mail_wire::dotstuff::normalise_crlf(&payload.original);
            downgrade::to_seven_bit(&crlf)
                .map(|m| self.sign(&m, &payload.mail_from, payload.sign))
                .map_err(|e| e.to_string())
        });
        match converted {
            Ok(m) => Ok(m),
            Err(e) => Err(RcptOutcome::Failed(format!(
                "554 5.6.3 the remote server does not offer 8BITMIME and the message cannot be converted to 7-bit: {e}"
            ))),
        }
    }

    /// One attempt for recipients of one domain along `plan`.
    async fn try_route(
        &self,
        job: &pb::Job,
        group: &[(usize, pb::Recipient)],
        payload: &Payload,
        domain: &str,
        plan: &Plan,
        open: &mut Option<Open>,
    ) -> Result<Attempt, tonic::Status> {
        match &plan.route {
            Err(e) => {
                self.event(
                    job,
                    pb::EventKind::Attempt,
                    "",
                    &e.to_string(),
                    HashMap::new(),
                )
                .await?;
                let text = e.to_string();
                let o = if e.is_permanent() {
                    RcptOutcome::Failed(format!("550 {text}"))
                } else {
                    RcptOutcome::Deferred(format!("451 {text}"))
                };
                Ok(Attempt {
                    results: group.iter().map(|(i, _)| (*i, o.clone())).collect(),
                    remote_dsn: false,
                })
            }
            Ok(hosts) => {
                let enforce = plan.sts.as_ref().filter(|p| p.mode == Mode::Enforce);
                let Some(p) = enforce else {
                    return self.attempt(job, group, payload, hosts, plan, open).await;
                };
                // RFC 8461 §4.1: only MX hosts that match the policy.
                let matching: Vec<Host> = hosts
                    .iter()
                    .filter(|h| p.matches(&h.name))
                    .cloned()
                    .collect();
                if matching.is_empty() {
                    let text = format!(
                        "4.7.5 MTA-STS policy of {domain} (enforce): no MX host ({}) matches mx: {}",
                        hosts
                            .iter()
                            .map(|h| h.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        p.mx.join(", ")
                    );
                    let attrs = HashMap::from([("mta_sts".to_string(), "enforce".to_string())]);
                    self.event(job, pb::EventKind::Attempt, "", &text, attrs)
                        .await?;
                    let o = RcptOutcome::Deferred(format!("451 {text}"));
                    return Ok(Attempt {
                        results: group.iter().map(|(i, _)| (*i, o.clone())).collect(),
                        remote_dsn: false,
                    });
                }
                self.attempt(job, group, payload, &matching, plan, open)
                    .await
            }
        }
    }

    /// Tries every host and address in order until one gives a
    /// transaction result; connection-level failures move to the next.
    async fn attempt(
        &self,
        job: &pb::Job,
        pending: &[(usize, pb::Recipient)],
        payload: &Payload,
        hosts: &[Host],
        plan: &Plan,
        open: &mut Option<Open>,
    ) -> Result<Attempt, tonic::Status> {
        let sts = plan.sts.as_ref();
        let enforce = sts.is_some_and(|p| p.mode == Mode::Enforce);
        let requiretls = job.requiretls;
        // RFC 8460: outcomes are counted under the recipients' domain.
        let domain = pending
            .first()
            .map(|(_, r)| domain_of(&r.address))
            .unwrap_or_default();
        let env = Envelope {
            mail_from: job.mail_from.clone(),
            recipients: pending.iter().map(|(_, r)| r.address.clone()).collect(),
            smtputf8: job.smtputf8,
            requiretls,
            dsn: Some(client::DsnParams {
                envid: job.envid.clone(),
                ret: job.ret.clone(),
                recipients: pending
                    .iter()
                    .map(|(_, r)| (r.notify, r.orcpt.clone()))
                    .collect(),
            }),
        };
        let mut errors: Vec<String> = Vec::new();
        let mut policy_failures = 0;
        // The connection already open to one of these hosts goes first.
        let mut candidates: Vec<(&str, SocketAddr)> = hosts
            .iter()
            .flat_map(|h| h.addrs.iter().map(move |a| (h.name.as_str(), *a)))
            .collect();
        if let Some(o) = open.as_ref()
            && let Some(pos) = candidates.iter().position(|(_, a)| *a == o.addr)
        {
            let c = candidates.remove(pos);
            candidates.insert(0, c);
        }
        for (host, addr) in candidates {
            // RFC 7672 §2.2: DANE, where it applies, comes before MTA-STS
            // (RFC 8461 §2); a host whose TLSA lookup failed is not used.
            let demand = match plan.dane.get(host) {
                Some(HostPolicy::Failed(why)) => {
                    policy_failures += 1;
                    let text = format!("{host}: 4.7.5 DANE: {why}");
                    let mut note = Note::dane("failed");
                    note.report = rpt(
                        &domain,
                        ("tlsa", Vec::new()),
                        Some(("dnssec-invalid", why.clone())),
                    );
                    self.attempt_event(job, host, addr, None, note, &text)
                        .await?;
                    errors.push(text);
                    continue;
                }
                Some(HostPolicy::Authenticated(r)) => Demand::Dane(r.clone()),
                Some(HostPolicy::Encrypted) if !enforce && !requiretls => Demand::DaneEncrypt,
                _ if enforce => Demand::MtaSts,
                _ if requiretls => Demand::RequireTls,
                _ => Demand::Opportunistic,
            };
            // Reuse, or open a new connection (closing one to another host).
            let reusable = open.as_ref().is_some_and(|o| {
                o.addr == addr && o.conn.transactions < self.config.messages_per_connection
            });
            if !reusable && let Some(o) = open.take() {
                o.conn.quit().await;
            }
            let mut tried_fresh = !reusable;
            // TLS-RPT counts sessions: only a connection opened here.
            let mut new_session = false;
            loop {
                if open.is_none() {
                    match self.connect(host, addr, &demand, requiretls).await {
                        Ok(conn) => {
                            new_session = true;
                            *open = Some(Open {
                                host: host.to_string(),
                                addr,
                                conn,
                            });
                        }
                        Err(e) => {
                            if matches!(e, ClientError::Policy(_)) {
                                policy_failures += 1;
                            }
                            // "421 too many connections" at the greeting or EHLO.
                            if let ClientError::Refused { reply, .. } = &e
                                && crate::throttle::is_throttle(&reply.summary())
                            {
                                self.throttle.slow_down(&domain);
                            }
                            let text = format!("{host}[{}]: {e}", addr.ip());
                            let mut note = demand.note(sts.map(|p| (p.mode, None)));
                            let policy = demand.rpt_policy(sts);
                            let failure = match &e {
                                ClientError::Policy(m) => {
                                    Some((crate::tlsrpt::classify(policy.0, m), m.clone()))
                                }
                                ClientError::Tls(t) => {
                                    Some(("validation-failure", format!("TLS handshake: {t}")))
                                }
                                // Never reached TLS: not a TLS outcome.
                                _ => None,
                            };
                            if failure.is_some() {
                                note.report = rpt(&domain, policy, failure);
                            }
                            self.attempt_event(job, host, addr, None, note, &text)
                                .await?;
                            errors.push(text);
                            break;
                        }
                    }
                }
                let Some(o) = open.as_mut() else { break };
                let message = match self.body_for(job, payload, &o.conn.caps) {
                    Ok(m) => m,
                    Err(outcome) => {
                        let text = format!(
                            "{host}[{}]: {}",
                            addr.ip(),
                            summarise(std::slice::from_ref(&outcome))
                        );
                        let tls = o.conn.tls.clone();
                        self.attempt_event(job, host, addr, tls.as_ref(), demand.note(None), &text)
                            .await?;
                        return Ok(Attempt {
                            results: pending.iter().map(|(i, _)| (*i, outcome.clone())).collect(),
                            remote_dsn: false,
                        });
                    }
                };
                match o.conn.send(&env, message).await {
                    Ok(outcomes) => {
                        // Per-destination back-off (crate::throttle).
                        let slow = outcomes.iter().any(|o| {
                            matches!(o, RcptOutcome::Deferred(t) if crate::throttle::is_throttle(t))
                        });
                        if slow {
                            self.throttle.slow_down(&domain);
                        } else if outcomes
                            .iter()
                            .any(|o| matches!(o, RcptOutcome::Delivered(_)))
                        {
                            self.throttle.delivered(&domain);
                        }
                        let summary = summarise(&outcomes);
                        let tls = o.conn.tls.clone();
                        let name = o.host.clone();
                        let remote_dsn = o.conn.caps.dsn;
                        let note = sts.map(|p| (p.mode, sts_problem(p, &name, tls.as_ref())));
                        if let Some((Mode::Testing, Some(problem))) = &note {
                            // RFC 8461 §5: testing — deliver, report the failure.
                            tracing::warn!(%name, %problem, "MTA-STS (testing) would have refused this host");
                        }
                        let policy = demand.rpt_policy(sts);
                        // RFC 8460 §4.3: what a policy would object to
                        // (testing mode), or no TLS at all.
                        let failure = match (&note, &tls) {
                            (Some((_, Some(problem))), _) => {
                                Some((crate::tlsrpt::classify(policy.0, problem), problem.clone()))
                            }
                            (_, None) => Some((
                                "starttls-not-supported",
                                "the server did not offer STARTTLS".to_string(),
                            )),
                            _ => None,
                        };
                        let mut note = demand.note(note);
                        if new_session {
                            note.report = rpt(&domain, policy, failure);
                        }
                        self.attempt_event(job, &name, addr, tls.as_ref(), note, &summary)
                            .await?;
                        let results = pending
                            .iter()
                            .zip(outcomes)
                            .map(|((i, _), out)| (*i, with_host(out, &name, addr)))
                            .collect();
                        return Ok(Attempt {
                            results,
                            remote_dsn,
                        });
                    }
                    Err(e) => {
                        let tls = o.conn.tls.clone();
                        *open = None;
                        let text = format!("{host}[{}]: {e}", addr.ip());
                        self.attempt_event(job, host, addr, tls.as_ref(), demand.note(None), &text)
                            .await?;
                        errors.push(text);
                        // Lost after the data was sent: the remote may have
                        // the message. Do not hand it to another host now.
                        if matches!(
                            e,
                            ClientError::Closed("end of data")
                                | ClientError::Timeout("end of data")
                        ) {
                            let why = format!("451 4.4.2 {}", errors.join("; "));
                            return Ok(Attempt {
                                results: pending
                                    .iter()
                                    .map(|(i, _)| (*i, RcptOutcome::Deferred(why.clone())))
                                    .collect(),
                                remote_dsn: false,
                            });
                        }
                        // A reused connection may have been closed by the
                        // remote while idle: one fresh try on the same address.
                        if !tried_fresh {
                            tried_fresh = true;
                            continue;
                        }
                        break;
                    }
                }
            }
        }
        // RFC 8689 §4.2.1: no host could take a REQUIRETLS message as it
        // demands: return it (5.7.30), do not wait.
        if requiretls && policy_failures > 0 && policy_failures == errors.len() {
            let why: String = format!(
                "550 5.7.30 REQUIRETLS: no MX host offers verified TLS with REQUIRETLS: {}",
                errors.join("; ")
            )
            .chars()
            .take(1500)
            .collect();
            return Ok(Attempt {
                results: pending
                    .iter()
                    .map(|(i, _)| (*i, RcptOutcome::Failed(why.clone())))
                    .collect(),
                remote_dsn: false,
            });
        }
        // Every host stopped by a TLS policy (MTA-STS, DANE): say so in the status.
        let why = if policy_failures > 0 && policy_failures == errors.len() {
            format!(
                "451 4.7.5 TLS policy (MTA-STS or DANE) not met by any host: {}",
                errors.join("; ")
            )
        } else {
            format!("451 4.4.1 all hosts failed: {}", errors.join("; "))
        };
        let why: String = why.chars().take(1500).collect();
        Ok(Attempt {
            results: pending
                .iter()
                .map(|(i, _)| (*i, RcptOutcome::Deferred(why.clone())))
                .collect(),
            remote_dsn: false,
        })
    }

    /// TCP connect, greeting, EHLO, STARTTLS; when the TLS handshake fails
    /// the host is tried once more in plaintext (RFC 7435 opportunistic),
    /// except when `demand` asks for more than opportunistic TLS (MTA-STS
    /// `enforce`: a certificate verified for `host`, RFC 8461 §4.2; DANE:
    /// one matching the TLSA records, RFC 7672 §3) or with smarthost
    /// credentials to send.
    async fn connect(
        &self,
        host: &str,
        addr: SocketAddr,
        demand: &Demand,
        requiretls: bool,
    ) -> Result<Connection<TcpStream>, ClientError> {
        let tls = self.tls.as_ref().map(|c| Tls {
            connector: c.clone(),
            server_name: rustls_pki_types::ServerName::try_from(host.to_string())
                .unwrap_or_else(|_| rustls_pki_types::ServerName::from(addr.ip())),
            verifier: Some(self.verifier.clone()),
            dane: match demand {
                Demand::Dane(r) => Some(r.clone()),
                _ => None,
            },
        });
        let opportunistic = matches!(demand, Demand::Opportunistic);
        let stream = self.tcp(addr).await?;
        let creds = self.relay_auth.get(&host.to_ascii_lowercase());
        let opened =
            Connection::open(stream, &self.config.hostname, tls.as_ref(), self.timeouts).await;
        let mut conn = match opened {
            // Plaintext fallback, but never with credentials to send.
            Err(ClientError::Tls(e)) if creds.is_none() && opportunistic => {
                tracing::info!(%host, %addr, error = %e, "TLS failed; retrying in plaintext");
                let stream = self.tcp(addr).await?;
                Connection::open(stream, &self.config.hostname, None, self.timeouts).await?
            }
            other => other?,
        };
        let problem = match (demand, &conn.tls) {
            (Demand::Opportunistic, _) | (Demand::DaneEncrypt, Some(_)) => None,
            (_, Some(t)) if t.verified => None,
            (_, Some(t)) => Some(t.verify_error.clone()),
            (_, None) => Some("the server did not offer STARTTLS".to_string()),
        };
        if let Some(p) = problem {
            // Nothing has been sent but EHLO: QUIT and stop here.
            conn.quit().await;
            let what = match demand {
                Demand::MtaSts => "MTA-STS policy (enforce) requires verified TLS",
                Demand::RequireTls => "REQUIRETLS (RFC 8689) requires verified TLS",
                Demand::Dane(_) => "DANE (RFC 7672) requires TLS matching the TLSA records",
                _ => "DANE (RFC 7672) requires TLS",
            };
            return Err(ClientError::Policy(format!("4.7.5 {what}: {p}")));
        }
        if requiretls && !conn.caps.requiretls {
            conn.quit().await;
            return Err(ClientError::Policy(
                "5.7.30 REQUIRETLS (RFC 8689 §4.2.1): the server does not offer REQUIRETLS"
                    .to_string(),
            ));
        }
        if let Some(c) = creds {
            conn.auth_plain(&c.user, &c.password, self.config.relay_auth_unverified_tls)
                .await?;
        }
        Ok(conn)
    }

    async fn tcp(&self, addr: SocketAddr) -> Result<TcpStream, ClientError> {
        // The route already left refused addresses out; checked again here
        // so that no path reaches the network without it.
        if let Err(why) = self.router.policy().check(addr.ip()) {
            return Err(ClientError::Connect(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} is {why}", addr.ip()),
            )));
        }
        tokio::time::timeout(self.timeouts.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout("connect"))?
            .map_err(ClientError::Connect)
    }
}

/// What an MTA-STS policy would object to in a delivery to `host`.
fn sts_problem(p: &Policy, host: &str, tls: Option<&client::TlsInfo>) -> Option<String> {
    if !p.matches(host) {
        return Some(format!("MX host {host} does not match the policy"));
    }
    match tls {
        None => Some("no TLS".into()),
        Some(t) if !t.verified => Some(t.verify_error.clone()),
        Some(_) => None,
    }
}

/// "mx.example[192.0.2.1]: 250 …" so the queue shows where it went.
fn with_host(o: RcptOutcome, host: &str, addr: SocketAddr) -> RcptOutcome {
    // The text keeps the reply first (status extraction reads it).
    let tag = |t: String| format!("{t} (from {host}[{}])", addr.ip());
    match o {
        RcptOutcome::Delivered(t) => RcptOutcome::Delivered(tag(t)),
        RcptOutcome::Deferred(t) => RcptOutcome::Deferred(tag(t)),
        RcptOutcome::Failed(t) => RcptOutcome::Failed(tag(t)),
    }
}

fn summarise(outcomes: &[RcptOutcome]) -> String {
    let mut parts: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            RcptOutcome::Delivered(t) | RcptOutcome::Deferred(t) | RcptOutcome::Failed(t) => {
                t.clone()
            }
        })
        .collect();
    parts.dedup();
    parts.join("; ")
}
