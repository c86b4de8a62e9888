//! The store's autoconfig listener (`--autoconfig-listen`): Thunderbird
//! autoconfig, Outlook autodiscover and the MTA-STS policy file, over real
//! HTTP on loopback, answers parsed as XML.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use mailstore_api::pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One HTTP/1.1 request; returns (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, host: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    let resp = String::from_utf8(resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The (type, port, socketType) of every server of a clientConfig.
fn servers(doc: &roxmltree::Document, tag: &str) -> Vec<(String, String, String)> {
    doc.descendants()
        .filter(|n| n.has_tag_name(tag))
        .map(|n| {
            let child = |name: &str| {
                n.children()
                    .find(|c| c.has_tag_name(name))
                    .and_then(|c| c.text())
                    .unwrap_or_default()
                    .to_string()
            };
            assert_eq!(child("hostname"), "mail.example.org");
            assert_eq!(child("username"), "%EMAILADDRESS%");
            (
                n.attribute("type").unwrap_or_default().to_string(),
                child("port"),
                child("socketType"),
            )
        })
        .collect()
}

fn triple(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.into(), b.into(), c.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoconfig_autodiscover_and_mta_sts_for_hosted_domains() {
    let db = test_kit::fresh_database().await;
    let (token, admin) = (test_kit::random_token(), test_kit::random_token());
    let mut config = mailbox_store::Config::new(db, token);
    config.admin_token = Some(admin.clone());
    config.autoconfig_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.mail_host = Some("mail.example.org".into());
    config.mta_sts_mode = "enforce".into();
    let server = mailbox_store::Server::bind(config).await.unwrap();
    let grpc = server.grpc_addr().unwrap();
    let addr = server.autoconfig_addr().unwrap();
    let shutdown = service_kit::Shutdown::new();
    let serving = tokio::spawn(server.serve(shutdown.clone()));
    mailstore_api::connect(&format!("http://{grpc}"), &admin)
        .unwrap()
        .accounts
        .create_domain(pb::CreateDomainRequest {
            name: "example.org".into(),
        })
        .await
        .unwrap();

    // Thunderbird, both URLs.
    for (path, host) in [
        (
            "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=alice%40Example.org",
            "example.org",
        ),
        ("/mail/config-v1.1.xml", "autoconfig.example.org"),
    ] {
        let (status, body) = http(addr, "GET", path, host, "").await;
        assert_eq!(status, 200, "{path}: {body}");
        let doc = roxmltree::Document::parse(&body).unwrap();
        let root = doc.root_element();
        assert!(root.has_tag_name("clientConfig"));
        assert_eq!(root.attribute("version"), Some("1.1"));
        let provider = root.first_element_child().unwrap();
        assert_eq!(provider.attribute("id"), Some("example.org"));
        let incoming = servers(&doc, "incomingServer");
        assert!(
            incoming.contains(&triple("imap", "993", "SSL")),
            "{incoming:?}"
        );
        assert!(
            incoming.contains(&triple("pop3", "995", "SSL")),
            "{incoming:?}"
        );
        let outgoing = servers(&doc, "outgoingServer");
        assert!(
            outgoing.contains(&triple("smtp", "465", "SSL")),
            "{outgoing:?}"
        );
        assert!(
            outgoing.contains(&triple("smtp", "587", "STARTTLS")),
            "{outgoing:?}"
        );
        // IMAP over implicit TLS is listed first: the client's first choice.
        assert_eq!(incoming[0], triple("imap", "993", "SSL"));
    }
    // Not our domain, or no address: no answer that would advertise us.
    let (status, _) = http(
        addr,
        "GET",
        "/mail/config-v1.1.xml?emailaddress=bob%40other.test",
        "x",
        "",
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = http(
        addr,
        "GET",
        "/mail/config-v1.1.xml?emailaddress=%zz",
        "x",
        "",
    )
    .await;
    assert_eq!(status, 400);

    // Outlook autodiscover.
    let request = r#"<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request><EMailAddress>alice@example.org</EMailAddress>
  <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema></Request>
</Autodiscover>"#;
    let (status, body) = http(
        addr,
        "POST",
        "/autodiscover/autodiscover.xml",
        "autodiscover.example.org",
        request,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let doc = roxmltree::Document::parse(&body).unwrap();
    let protocols: Vec<(String, String, String)> = doc
        .descendants()
        .filter(|n| n.has_tag_name("Protocol"))
        .map(|p| {
            let c = |name: &str| {
                p.children()
                    .find(|c| c.has_tag_name(name))
                    .and_then(|c| c.text())
                    .unwrap_or_default()
                    .to_string()
            };
            assert_eq!(c("Server"), "mail.example.org");
            assert_eq!(c("LoginName"), "alice@example.org");
            (c("Type"), c("Port"), c("SSL"))
        })
        .collect();
    assert_eq!(
        protocols,
        vec![
            triple("IMAP", "993", "on"),
            triple("POP3", "995", "on"),
            triple("SMTP", "465", "on")
        ]
    );
    let (status, _) = http(
        addr,
        "POST",
        "/autodiscover/autodiscover.xml",
        "x",
        &request.replace("example.org<", "other.test<"),
    )
    .await;
    assert_eq!(status, 404);

    let huge = format!("{request}{}", " ".repeat(20 * 1024));
    let (status, _) = http(addr, "POST", "/autodiscover/autodiscover.xml", "x", &huge).await;
    assert_eq!(status, 413, "bodies over 16 KiB are refused");
    // Markup in the address is not echoed into the XML unescaped.
    let (status, body) = http(
        addr,
        "POST",
        "/autodiscover/autodiscover.xml",
        "x",
        &request.replace("alice@", "a&amp;lt;b@"),
    )
    .await;
    assert_eq!(status, 200);
    roxmltree::Document::parse(&body).unwrap();
    assert!(
        body.contains("<LoginName>a&amp;amp;lt;b@example.org</LoginName>"),
        "{body}"
    );

    // MTA-STS policy, by host.
    let (status, body) = http(
        addr,
        "GET",
        "/.well-known/mta-sts.txt",
        "mta-sts.example.org:443",
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "version: STSv1\r\nmode: enforce\r\nmx: mail.example.org\r\nmax_age: 604800\r\n"
    );
    let (status, _) = http(
        addr,
        "GET",
        "/.well-known/mta-sts.txt",
        "mta-sts.other.test",
        "",
    )
    .await;
    assert_eq!(status, 404);

    shutdown.cancel();
    serving.await.unwrap().unwrap();
}
