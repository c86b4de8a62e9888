//! One delivery attempt of a job: read (and DKIM-sign) the message, then
//! for each recipient domain walk the route's hosts and addresses over a
//! reused or new connection until one gives a transaction result.

use std::collections::HashMap;
use std::net::SocketAddr;

use mailstore_api::pb;
use tokio::net::TcpStream;

use crate::client::{self, ClientError, Connection, Envelope, RcptOutcome, Tls};
use crate::route::{Host, RouteError};
use crate::worker::{Worker, domain_of};

/// Largest message read from the store for sending.
const MAX_MESSAGE: u64 = 256 * 1024 * 1024;

/// A connection kept open between messages of one destination group.
pub(crate) struct Open {
    pub(crate) host: String,
    pub(crate) addr: SocketAddr,
    pub(crate) conn: Connection<TcpStream>,
}

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
        route: &Result<Vec<Host>, RouteError>,
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
        let message = self.read_message(&job).await?;
        // RFC 6376: signed as sent (CRLF), once per attempt.
        let signer = self.dkim.read().map(|g| g.clone()).ok();
        let message = match signer {
            Some(s) => s.sign(&message, &job.mail_from).unwrap_or(message),
            None => message,
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
                self.try_route(&job, &group, &message, route, open).await?
            } else {
                let other = self.router.route(&domain).await;
                let mut conn = None;
                let a = self
                    .try_route(&job, &group, &message, &other, &mut conn)
                    .await?;
                if let Some(o) = conn {
                    o.conn.quit().await;
                }
                a
            };
            let remote_dsn = attempt.remote_dsn;
            results.extend(attempt.results.into_iter().map(|(i, o)| (i, o, remote_dsn)));
        }
        self.conclude(&job, &pending, results, &message).await
    }

    /// One attempt for recipients of one domain along `route`.
    async fn try_route(
        &self,
        job: &pb::Job,
        group: &[(usize, pb::Recipient)],
        message: &[u8],
        route: &Result<Vec<Host>, RouteError>,
        open: &mut Option<Open>,
    ) -> Result<Attempt, tonic::Status> {
        match route {
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
            Ok(hosts) => self.attempt(job, group, message, hosts, open).await,
        }
    }

    /// Tries every host and address in order until one gives a
    /// transaction result; connection-level failures move to the next.
    async fn attempt(
        &self,
        job: &pb::Job,
        pending: &[(usize, pb::Recipient)],
        message: &[u8],
        hosts: &[Host],
        open: &mut Option<Open>,
    ) -> Result<Attempt, tonic::Status> {
        let env = Envelope {
            mail_from: job.mail_from.clone(),
            recipients: pending.iter().map(|(_, r)| r.address.clone()).collect(),
            smtputf8: job.smtputf8,
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
            // Reuse, or open a new connection (closing one to another host).
            let reusable = open.as_ref().is_some_and(|o| {
                o.addr == addr && o.conn.transactions < self.config.messages_per_connection
            });
            if !reusable && let Some(o) = open.take() {
                o.conn.quit().await;
            }
            let mut tried_fresh = !reusable;
            loop {
                if open.is_none() {
                    match self.connect(host, addr).await {
                        Ok(conn) => {
                            *open = Some(Open {
                                host: host.to_string(),
                                addr,
                                conn,
                            });
                        }
                        Err(e) => {
                            let text = format!("{host}[{}]: {e}", addr.ip());
                            self.attempt_event(job, host, addr, None, &text).await?;
                            errors.push(text);
                            break;
                        }
                    }
                }
                let Some(o) = open.as_mut() else { break };
                match o.conn.send(&env, message).await {
                    Ok(outcomes) => {
                        let summary = summarise(&outcomes);
                        let tls = o.conn.tls.clone();
                        let name = o.host.clone();
                        let remote_dsn = o.conn.caps.dsn;
                        self.attempt_event(job, &name, addr, tls.as_ref(), &summary)
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
                        self.attempt_event(job, host, addr, tls.as_ref(), &text)
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
        let why = format!("451 4.4.1 all hosts failed: {}", errors.join("; "));
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
    /// the host is tried once more in plaintext (RFC 7435 opportunistic).
    async fn connect(
        &self,
        host: &str,
        addr: SocketAddr,
    ) -> Result<Connection<TcpStream>, ClientError> {
        let tls = self.tls.as_ref().map(|c| Tls {
            connector: c.clone(),
            server_name: rustls_pki_types::ServerName::try_from(host.to_string())
                .unwrap_or_else(|_| rustls_pki_types::ServerName::from(addr.ip())),
        });
        let stream = self.tcp(addr).await?;
        let creds = self.relay_auth.get(&host.to_ascii_lowercase());
        let opened =
            Connection::open(stream, &self.config.hostname, tls.as_ref(), self.timeouts).await;
        let mut conn = match opened {
            // Plaintext fallback, but never with credentials to send.
            Err(ClientError::Tls(e)) if creds.is_none() => {
                tracing::info!(%host, %addr, error = %e, "TLS failed; retrying in plaintext");
                let stream = self.tcp(addr).await?;
                Connection::open(stream, &self.config.hostname, None, self.timeouts).await?
            }
            other => other?,
        };
        if let Some(c) = creds {
            conn.auth_plain(&c.user, &c.password).await?;
        }
        Ok(conn)
    }

    async fn tcp(&self, addr: SocketAddr) -> Result<TcpStream, ClientError> {
        tokio::time::timeout(self.timeouts.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout("connect"))?
            .map_err(ClientError::Connect)
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
