//! Mutual TLS between the services and the store (threat model T118): with
//! `--grpc-client-ca`, only a client holding a certificate from that CA
//! gets as far as the token check; the bearer token is still required.

use std::path::{Path, PathBuf};

use mailbox_store::{Config, Server};
use mailstore_api::{ClientTls, pb};
use service_kit::Shutdown;

struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().expect("key");
    let pem = params.self_signed(&key).expect("ca").pem();
    Ca {
        issuer: rcgen::Issuer::new(params, key),
        pem,
    }
}

/// A leaf certificate from `ca` for `name`: (certificate PEM, key PEM).
fn leaf(ca: &Ca, name: &str, usage: rcgen::ExtendedKeyUsagePurpose) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
    params.extended_key_usages.push(usage);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.issuer).expect("leaf");
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

async fn probe(url: &str, token: &str, tls: &ClientTls) -> Result<(), String> {
    let mut c = mailstore_api::connect_tls(url, token, Some(tls)).map_err(|e| e.to_string())?;
    c.accounts
        .create_domain(pb::CreateDomainRequest {
            name: format!("d{}.test", test_kit::random_token().to_lowercase()),
        })
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test]
async fn only_clients_with_a_certificate_from_the_ca_get_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = ca("Epistole services");
    let other = ca("Someone else");
    let (server_cert, server_key) = leaf(
        &good,
        "localhost",
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) =
        leaf(&good, "smtp-in", rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let (stranger_cert, stranger_key) = leaf(
        &other,
        "smtp-in",
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );

    let admin = test_kit::random_token();
    let mut config = Config::new(test_kit::fresh_database().await, test_kit::random_token());
    config.admin_token = Some(admin.clone());
    config.grpc_tls_cert = Some(write(dir.path(), "server.pem", &server_cert));
    config.grpc_tls_key = Some(write(dir.path(), "server.key", &server_key));
    config.grpc_client_ca = Some(write(dir.path(), "ca.pem", &good.pem));
    let server = Server::bind(config).await.expect("bind");
    let port = server.grpc_addr().expect("addr").port();
    let shutdown = Shutdown::new();
    let serving = tokio::spawn(server.serve(shutdown.clone()));

    let url = format!("https://localhost:{port}");
    let ca_pem = good.pem.as_bytes().to_vec();
    let member = ClientTls {
        ca_pem: ca_pem.clone(),
        identity: Some((client_cert.into_bytes(), client_key.into_bytes())),
    };
    // The balanced channel may need a moment to learn its endpoint.
    let mut last = String::new();
    for _ in 0..50 {
        match probe(&url, &admin, &member).await {
            Ok(()) => break,
            Err(e) => last = e,
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    probe(&url, &admin, &member)
        .await
        .unwrap_or_else(|e| panic!("a client with our certificate is served: {e} ({last})"));

    // The certificate does not replace the token.
    let err = probe(&url, "wrong-token", &member)
        .await
        .expect_err("token");
    assert!(err.starts_with("Unauthenticated"), "{err}");

    // No client certificate, or one from another CA: the handshake fails.
    let anonymous = ClientTls {
        ca_pem: ca_pem.clone(),
        identity: None,
    };
    let stranger = ClientTls {
        ca_pem,
        identity: Some((stranger_cert.into_bytes(), stranger_key.into_bytes())),
    };
    for (who, tls) in [("no certificate", &anonymous), ("another CA", &stranger)] {
        let err = probe(&url, &admin, tls).await.expect_err(who);
        assert!(
            err.starts_with("Unavailable") || err.starts_with("Unknown"),
            "{who}: {err}"
        );
    }

    // A plain-text client gets nowhere either.
    let mut plain =
        mailstore_api::connect(&format!("http://127.0.0.1:{port}"), &admin).expect("client");
    let r = plain
        .accounts
        .create_domain(pb::CreateDomainRequest {
            name: "plain.test".into(),
        })
        .await;
    assert!(r.is_err(), "plain text is refused");

    shutdown.cancel();
    let _ = serving.await;
}

#[test]
fn https_urls_need_a_ca_and_tls_needs_https() {
    let tls = ClientTls::default();
    let e = mailstore_api::connect_tls("http://127.0.0.1:1", "t", Some(&tls)).expect_err("http");
    assert!(e.to_string().contains("https://"), "{e}");
    let e = mailstore_api::connect("https://127.0.0.1:1", "t").expect_err("no CA");
    assert!(e.to_string().contains("--store-ca"), "{e}");
}
