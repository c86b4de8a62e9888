//! `mailctl dns` and `mailctl dns check`: the real binary, a real store, and
//! the records served by test-dns on loopback.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use mailstore_api::pb;
use test_dns::{Record, TestDns};
use test_kit::TestStore;

fn mailctl(store: &TestStore, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailctl"))
        .args(args)
        .env("EPISTOLE_STORE_URL", &store.grpc_url)
        .env("EPISTOLE_STORE_ADMIN_TOKEN", &store.token)
        .env_remove("EPISTOLE_DNS_SERVER")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_check_reports_missing_dmarc_and_a_stale_dkim_record() {
    let store = TestStore::start().await;
    store.add_domain("example.org").await;
    let s = &store;
    let run = |args: &[&str]| tokio::task::block_in_place(|| mailctl(s, args));
    let (ok, _, err) = run(&[
        "dkim",
        "generate",
        "example.org",
        "--algorithm",
        "ed25519",
        "--selector",
        "s1",
    ]);
    assert!(ok, "{err}");
    let key = store
        .client()
        .accounts
        .list_dkim_keys(pb::ListDkimKeysRequest {
            domain: "example.org".into(),
            include_private: false,
            active_only: true,
        })
        .await
        .unwrap()
        .into_inner()
        .keys
        .remove(0);

    // What to publish.
    let (ok, out, err) = run(&["dns", "example.org"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("example.org. 3600 IN MX 10 mail.example.org."),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "s1._domainkey.example.org. 3600 IN TXT \"{}",
            &key.dns_txt[..40]
        )),
        "{out}"
    );
    assert!(out.contains("_dmarc.example.org. 3600 IN TXT \"v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org\""), "{out}");
    assert!(
        out.contains("_imaps._tcp.example.org. 3600 IN SRV 0 1 993 mail.example.org."),
        "{out}"
    );
    assert!(out.contains(";   mode: testing"), "{out}");

    // A zone with everything but DMARC, and the DKIM record of an old key.
    let dns = TestDns::start().await;
    let host = "mail.example.org";
    dns.mx("example.org", 10, host);
    dns.txt("example.org", "v=spf1 mx -all");
    dns.txt("example.org", "google-site-verification=abc");
    dns.txt(
        "s1._domainkey.example.org",
        "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
    );
    let policy = mailctl::dns::mta_sts_policy(host, "testing");
    dns.txt(
        "_mta-sts.example.org",
        &format!("v=STSv1; id={}", mailctl::dns::mta_sts_id(&policy)),
    );
    dns.txt(
        "_smtp._tls.example.org",
        "v=TLSRPTv1; rua=mailto:tlsrpt@example.org",
    );
    for (label, port) in mailctl::dns::SRV_SERVICES {
        dns.add(
            &format!("{label}.example.org"),
            Record::Srv {
                priority: 0,
                weight: 1,
                port,
                target: host.into(),
            },
        );
    }
    let server = dns.addr.to_string();
    let (ok, out, err) = run(&["dns", "check", "example.org", "--dns-server", &server]);
    assert!(!ok, "problems must fail the command:\n{out}");
    assert!(
        err.contains("2 DNS record(s) of example.org missing or wrong"),
        "{err}"
    );
    assert!(
        out.contains("MISSING DMARC   _dmarc.example.org: publish _dmarc.example.org. 3600 IN TXT"),
        "{out}"
    );
    assert!(out.contains("WRONG   DKIM    s1._domainkey.example.org: p= is not the public key of the active signing key"), "{out}");
    for ok_line in [
        "ok      MX      example.org",
        "ok      SPF     example.org",
        "ok      MTA-STS _mta-sts.example.org",
        "ok      TLS-RPT _smtp._tls.example.org",
        "ok      SRV     _submissions._tcp.example.org",
        "ok      SRV     _pop3._tcp.example.org",
    ] {
        assert!(out.contains(ok_line), "{ok_line} not in\n{out}");
    }

    // Fixed: DMARC published, the DKIM record replaced by the active key's.
    dns.txt(
        "_dmarc.example.org",
        "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org",
    );
    dns.remove("s1._domainkey.example.org");
    dns.txt("s1._domainkey.example.org", &key.dns_txt);
    let (ok, out, err) = run(&["dns", "check", "example.org", "--dns-server", &server]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("all DNS records of example.org are in place"),
        "{out}"
    );

    // An MX pointing elsewhere is wrong, not missing.
    dns.remove("example.org");
    dns.mx("example.org", 10, "mx.elsewhere.test");
    dns.txt("example.org", "v=spf1 mx -all");
    let (ok, out, _) = run(&["dns", "check", "example.org", "--dns-server", &server]);
    assert!(!ok);
    assert!(
        out.contains("WRONG   MX      example.org: MX points to mx.elsewhere.test"),
        "{out}"
    );
}
