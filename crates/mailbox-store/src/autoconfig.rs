//! Client autoconfiguration and the MTA-STS policy file, on a listener of
//! its own (`--autoconfig-listen`, off by default): unlike the health
//! endpoint (`/metrics` is for the operator) this one faces the internet,
//! behind the ingress that terminates HTTPS for `autoconfig.<domain>`,
//! `autodiscover.<domain>` and `mta-sts.<domain>`.
//!
//! - Thunderbird autoconfig (the "Autoconfiguration" clientConfig v1.1
//!   format): `GET /.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=…`
//!   and `GET /mail/config-v1.1.xml` (the domain from `emailaddress`, else
//!   from the `Host: autoconfig.<domain>` header).
//! - Outlook autodiscover (POX): `POST /autodiscover/autodiscover.xml` with
//!   the request's `<EMailAddress>`.
//! - MTA-STS (RFC 8461 §3.2): `GET /.well-known/mta-sts.txt` on host
//!   `mta-sts.<domain>`.
//!
//! Only hosted domains (those in the `domains` table) get an answer; others
//! get 404, so the endpoint does not advertise us for someone else's domain.
//! Servers advertised: IMAP 993 (implicit TLS, RFC 8314 §3.3) and 143
//! (STARTTLS), POP3 995 and 110 (STARTTLS), submission 465 (implicit TLS)
//! and 587 (STARTTLS), all on `--mail-host`, with the full address as the
//! user name.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sqlx::PgPool;
use tokio::net::TcpListener;

/// What the endpoint needs.
#[derive(Clone)]
struct Ctx {
    pool: PgPool,
    host: String,
    mta_sts_mode: String,
}

/// The MTA-STS policy file (RFC 8461 §3.2) for a domain whose MX is `host`.
/// `mailctl dns` derives the `_mta-sts` TXT id from this same text.
#[must_use]
pub fn mta_sts_policy(host: &str, mode: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {host}\r\nmax_age: 604800\r\n")
}

/// Bodies of autodiscover requests larger than this are refused.
const MAX_BODY: usize = 16 * 1024;

/// Binds the listener.
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until shutdown.
///
/// # Errors
/// On a listener failure.
pub async fn serve(
    listener: TcpListener,
    pool: PgPool,
    host: String,
    mta_sts_mode: String,
    shutdown: service_kit::Shutdown,
) -> std::io::Result<()> {
    let ctx = Ctx {
        pool,
        host,
        mta_sts_mode,
    };
    let app = Router::new()
        .route(
            "/.well-known/autoconfig/mail/config-v1.1.xml",
            get(thunderbird),
        )
        .route("/mail/config-v1.1.xml", get(thunderbird))
        .route("/autodiscover/autodiscover.xml", post(autodiscover))
        .route("/Autodiscover/Autodiscover.xml", post(autodiscover))
        .route("/.well-known/mta-sts.txt", get(mta_sts))
        .with_state(ctx);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// The domain of `user@domain`, lowercased; `None` when malformed.
fn domain_of(address: &str) -> Option<String> {
    let (local, domain) = address.trim().rsplit_once('@')?;
    valid_domain(domain).filter(|_| !local.is_empty())
}

fn valid_domain(d: &str) -> Option<String> {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then_some(d)
}

/// The host name from the Host header, without a port.
fn host_header(headers: &HeaderMap) -> Option<String> {
    let h = headers.get(header::HOST)?.to_str().ok()?;
    let h = h.rsplit_once(':').map_or(h, |(name, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            name
        } else {
            h
        }
    });
    valid_domain(h)
}

/// Percent-decodes a query value (`%40` → `@`, `+` → space).
fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        if k != name {
            return None;
        }
        let mut out = Vec::new();
        let b = v.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'%' => {
                    let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).ok()
    })
}

async fn hosted(pool: &PgPool, domain: &str) -> Result<bool, Response> {
    crate::accounts::domain_id(pool, domain)
        .await
        .map(|id| id.is_some())
        .map_err(|e| {
            tracing::warn!(error = %e, "autoconfig: domain lookup failed");
            (StatusCode::SERVICE_UNAVAILABLE, "try again later\n").into_response()
        })
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not a domain hosted here\n").into_response()
}

fn xml(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn thunderbird(State(ctx): State<Ctx>, uri: Uri, headers: HeaderMap) -> Response {
    let asked = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("emailaddress=")));
    let domain = match query_param(&uri, "emailaddress") {
        Some(a) => domain_of(&a),
        None if asked => None,
        None => host_header(&headers).map(|h| {
            h.strip_prefix("autoconfig.")
                .map_or(h.clone(), str::to_string)
        }),
    };
    let Some(domain) = domain else {
        return (StatusCode::BAD_REQUEST, "no emailaddress\n").into_response();
    };
    match hosted(&ctx.pool, &domain).await {
        Ok(true) => {}
        Ok(false) => return not_found(),
        Err(r) => return r,
    }
    let d = xml_escape(&domain);
    let h = xml_escape(&ctx.host);
    let server = |kind: &str, tag: &str, port: u16, socket: &str| {
        format!(
            "    <{tag} type=\"{kind}\">\n      <hostname>{h}</hostname>\n      <port>{port}</port>\n      <socketType>{socket}</socketType>\n      <authentication>password-cleartext</authentication>\n      <username>%EMAILADDRESS%</username>\n    </{tag}>\n"
        )
    };
    let mut body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clientConfig version=\"1.1\">\n  <emailProvider id=\"{d}\">\n    <domain>{d}</domain>\n    <displayName>{d}</displayName>\n    <displayShortName>{d}</displayShortName>\n"
    );
    body.push_str(&server("imap", "incomingServer", 993, "SSL"));
    body.push_str(&server("imap", "incomingServer", 143, "STARTTLS"));
    body.push_str(&server("pop3", "incomingServer", 995, "SSL"));
    body.push_str(&server("pop3", "incomingServer", 110, "STARTTLS"));
    body.push_str(&server("smtp", "outgoingServer", 465, "SSL"));
    body.push_str(&server("smtp", "outgoingServer", 587, "STARTTLS"));
    body.push_str("  </emailProvider>\n</clientConfig>\n");
    xml(body)
}

async fn autodiscover(State(ctx): State<Ctx>, body: Bytes) -> Response {
    if body.len() > MAX_BODY {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request too large\n").into_response();
    }
    let text = String::from_utf8_lossy(&body);
    let address = text
        .split_once("<EMailAddress>")
        .and_then(|(_, rest)| rest.split_once("</EMailAddress>"))
        .map(|(a, _)| a.trim().to_string());
    let Some((address, domain)) = address.and_then(|a| domain_of(&a).map(|d| (a, d))) else {
        return (StatusCode::BAD_REQUEST, "no EMailAddress\n").into_response();
    };
    match hosted(&ctx.pool, &domain).await {
        Ok(true) => {}
        Ok(false) => return not_found(),
        Err(r) => return r,
    }
    let a = xml_escape(&address);
    let h = xml_escape(&ctx.host);
    let proto = |kind: &str, port: u16| {
        format!(
            "      <Protocol>\n        <Type>{kind}</Type>\n        <Server>{h}</Server>\n        <Port>{port}</Port>\n        <LoginName>{a}</LoginName>\n        <DomainRequired>off</DomainRequired>\n        <SPA>off</SPA>\n        <SSL>on</SSL>\n        <AuthRequired>on</AuthRequired>\n      </Protocol>\n"
        )
    };
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006\">\n  <Response xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a\">\n    <Account>\n      <AccountType>email</AccountType>\n      <Action>settings</Action>\n",
    );
    out.push_str(&proto("IMAP", 993));
    out.push_str(&proto("POP3", 995));
    out.push_str(&proto("SMTP", 465));
    out.push_str("    </Account>\n  </Response>\n</Autodiscover>\n");
    xml(out)
}

async fn mta_sts(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    let Some(domain) =
        host_header(&headers).and_then(|h| h.strip_prefix("mta-sts.").map(str::to_string))
    else {
        return not_found();
    };
    match hosted(&ctx.pool, &domain).await {
        Ok(true) => {}
        Ok(false) => return not_found(),
        Err(r) => return r,
    }
    // RFC 8461 §3.2: media type text/plain.
    (
        [(header::CONTENT_TYPE, "text/plain")],
        mta_sts_policy(&ctx.host, &ctx.mta_sts_mode),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_helpers() {
        let uri: Uri = "/mail/config-v1.1.xml?emailaddress=alice%40Example.ORG&x=1"
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"));
        assert_eq!(
            query_param(&uri, "emailaddress").as_deref(),
            Some("alice@Example.ORG")
        );
        let bad: Uri = "/x?emailaddress=a%4"
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"));
        assert_eq!(query_param(&bad, "emailaddress"), None);
        assert_eq!(
            domain_of("alice@Example.ORG").as_deref(),
            Some("example.org")
        );
        assert_eq!(domain_of("@example.org"), None);
        assert_eq!(domain_of("alice@exa<mple"), None);
        assert_eq!(xml_escape("<a&'\">"), "&lt;a&amp;&apos;&quot;&gt;");
    }
}
