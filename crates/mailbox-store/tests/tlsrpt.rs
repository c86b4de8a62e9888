//! TlsReports service against a real PostgreSQL: TLS outcomes counted per
//! day and policy domain (RFC 8460), across replicas, with bounded input.
#![allow(clippy::unwrap_used)]

use mailstore_api::pb;
use test_kit::TestStore;

fn result(domain: &str, result_type: &str) -> pb::RecordTlsResultRequest {
    pb::RecordTlsResultRequest {
        result: Some(pb::TlsResult {
            policy_domain: domain.into(),
            policy_type: "sts".into(),
            policy_strings: vec!["version: STSv1".into(), "mode: enforce".into()],
            mx_host: "MX.B.test.".into(),
            result_type: result_type.into(),
            receiving_ip: "192.0.2.7".into(),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn outcomes_are_counted_per_domain_and_day_across_replicas() {
    let s = TestStore::start().await;
    let replica = s.replica().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = if i % 2 == 0 {
            s.service_client()
        } else {
            replica.service_client()
        }
        .tls_reports;
        let rt = if i < 15 { "" } else { "certificate-expired" };
        tasks.push(tokio::spawn(async move {
            c.record_tls_result(result("B.test", rt)).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut c = s.service_client().tls_reports;
    c.record_tls_result(result("c.test", "")).await.unwrap();
    let today = chrono::Utc::now().date_naive().to_string();
    let rows = c
        .list_tls_results(pb::ListTlsResultsRequest {
            day: today.clone(),
            policy_domain: "b.test".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let ok = rows.iter().find(|r| r.result_type.is_empty()).unwrap();
    let bad = rows.iter().find(|r| !r.result_type.is_empty()).unwrap();
    assert_eq!((ok.count, bad.count), (15, 5));
    assert_eq!(ok.policy_domain, "b.test", "lower-cased");
    assert_eq!(ok.mx_host, "mx.b.test", "lower-cased, no trailing dot");
    assert_eq!(ok.policy_strings, vec!["version: STSv1", "mode: enforce"]);
    assert_eq!(ok.day, today);
    let all = c
        .list_tls_results(pb::ListTlsResultsRequest {
            day: today,
            policy_domain: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(all.len(), 3);
    let other_day = c
        .list_tls_results(pb::ListTlsResultsRequest {
            day: "2001-01-01".into(),
            policy_domain: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(other_day.is_empty());
}

#[tokio::test]
async fn bad_arguments_are_refused() {
    let s = TestStore::start().await;
    let mut c = s.service_client().tls_reports;
    let mut bad = Vec::new();
    let base = result("b.test", "").result.unwrap();
    bad.push(pb::TlsResult {
        policy_domain: String::new(),
        ..base.clone()
    });
    bad.push(pb::TlsResult {
        policy_type: "dmarc".into(),
        ..base.clone()
    });
    bad.push(pb::TlsResult {
        policy_strings: vec!["x".repeat(1025)],
        ..base.clone()
    });
    bad.push(pb::TlsResult {
        policy_strings: vec!["x".into(); 65],
        ..base.clone()
    });
    bad.push(pb::TlsResult {
        failure_reason: "a\0b".into(),
        ..base.clone()
    });
    bad.push(pb::TlsResult {
        mx_host: "m".repeat(256),
        ..base.clone()
    });
    for r in bad {
        let e = c
            .record_tls_result(pb::RecordTlsResultRequest {
                result: Some(r.clone()),
            })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{r:?}: {e:?}");
    }
    let e = c
        .record_tls_result(pb::RecordTlsResultRequest { result: None })
        .await
        .expect_err("no result");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = c
        .list_tls_results(pb::ListTlsResultsRequest {
            day: "yesterday".into(),
            policy_domain: String::new(),
        })
        .await
        .expect_err("bad day");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}
