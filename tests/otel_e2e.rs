//! OpenTelemetry end to end: the real `epistole mailbox-store`, `smtp-in`
//! and `delivery` processes export their spans over OTLP/gRPC to a small
//! collector in this test (a tonic server implementing the collector's
//! TraceService). One message sent over SMTP must be one trace: smtp-in's
//! message span, the store's Enqueue call (traceparent on the gRPC call),
//! delivery's job (traceparent kept with the job) and the store's
//! DeliverFromQueue into the mailbox share one trace id.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailstore_api::pb;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const TOKEN: &str = "otel-service-token";
const ADMIN: &str = "otel-admin-token";

/// One exported span: (service.name, span name, trace id in hex, its
/// string attributes as "key=value").
type Spans = Arc<Mutex<Vec<(String, String, String, Vec<String>)>>>;

#[derive(Clone, Default)]
struct Collector(Spans);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attrs = s
                        .attributes
                        .iter()
                        .map(|a| {
                            let v = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(Value::StringValue(s)) => s.clone(),
                                Some(other) => format!("{other:?}"),
                                None => String::new(),
                            };
                            format!("{}={v}", a.key)
                        })
                        .collect();
                    let trace: String = s.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    got.push((service.clone(), s.name.clone(), trace, attrs));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn collector() -> (SocketAddr, Spans) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let c = Collector::default();
    let spans = c.0.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(c))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l))
            .await
            .unwrap();
    });
    (addr, spans)
}

/// Spawns `epistole <args>`, exporting spans to `otlp`; waits for the
/// stdout line starting with `wait_for` (if any) and returns it.
async fn spawn(args: &[&str], env: &[(&str, &str)], wait_for: Option<&str>) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_epistole"))
        .args(args)
        .envs(env.iter().copied())
        // Export quickly: the test waits for the spans, then kills.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut found = String::new();
    if let Some(prefix) = wait_for {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("the service did not report its listener")
                .unwrap()
                .expect("the service exited before listening");
            if line.starts_with(prefix) {
                found = line;
                break;
            }
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, found)
}

async fn smtp_send(mx: SocketAddr) -> String {
    let s = TcpStream::connect(mx).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut last = String::new();
    for line in [
        None,
        Some("EHLO client.example"),
        Some("MAIL FROM:<someone@example.net>"),
        Some("RCPT TO:<alice@a.test>"),
        Some("DATA"),
        Some("Subject: traced\r\nMessage-ID: <otel-1@example.net>\r\n\r\nhello\r\n."),
        Some("QUIT"),
    ] {
        if let Some(l) = line {
            w.write_all(format!("{l}\r\n").as_bytes()).await.unwrap();
        }
        loop {
            let mut reply = String::new();
            let n = tokio::time::timeout(Duration::from_secs(60), r.read_line(&mut reply))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(n > 0, "closed after {last}");
            let more = reply.as_bytes().get(3) == Some(&b'-');
            last = reply;
            if !more {
                break;
            }
        }
        if line == Some("Subject: traced\r\nMessage-ID: <otel-1@example.net>\r\n\r\nhello\r\n.") {
            assert!(last.starts_with("250"), "{last}");
            return last;
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_from_smtp_in_to_the_mailbox() {
    let (otlp, spans) = collector().await;
    let otlp = format!("http://{otlp}");
    let db = test_kit::fresh_database().await;
    let common = [
        ("EPISTOLE_OTLP_ENDPOINT", otlp.as_str()),
        ("EPISTOLE_STORE_TOKEN", TOKEN),
    ];
    let (_store, line) = spawn(
        &[
            "--log",
            "warn",
            "mailbox-store",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        &[
            common[0],
            common[1],
            ("DATABASE_URL", db.as_str()),
            ("EPISTOLE_STORE_ADMIN_TOKEN", ADMIN),
        ],
        Some("listening grpc="),
    )
    .await;
    let grpc = line
        .trim_start_matches("listening grpc=")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let url = format!("http://{grpc}");
    let admin = mailstore_api::connect(&url, ADMIN).unwrap();
    admin
        .accounts
        .clone()
        .create_domain(pb::CreateDomainRequest {
            name: "a.test".into(),
        })
        .await
        .unwrap();
    admin
        .accounts
        .clone()
        .create_user(pb::CreateUserRequest {
            address: "alice@a.test".into(),
            password: "pw-alice".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let env = [common[0], common[1], ("EPISTOLE_STORE_URL", url.as_str())];
    let (_smtp_in, line) = spawn(
        &[
            "--log",
            "warn",
            "smtp-in",
            "--hostname",
            "mx.a.test",
            "--mx-listen",
            "127.0.0.1:0",
            "--submission-listen",
            "off",
            "--submissions-listen",
            "off",
            "--http-listen",
            "127.0.0.1:0",
            "--tls-self-signed",
            // No DNS in this test: the checks are another test's business.
            "--inbound-auth",
            "false",
        ],
        &env,
        Some("listening mx="),
    )
    .await;
    let mx: SocketAddr = line.trim_start_matches("listening mx=").parse().unwrap();
    let (_delivery, _) = spawn(
        &[
            "--log",
            "warn",
            "delivery",
            "--http-listen",
            "127.0.0.1:0",
            "--hostname",
            "mx.a.test",
        ],
        &env,
        None,
    )
    .await;

    let reply = smtp_send(mx).await;
    assert!(reply.starts_with("250"), "{reply}");

    // smtp-in's span of the message names the trace …
    let has = |svc: &str, name: &str, attr: Option<&str>| {
        let spans = spans.clone();
        let (svc, name, attr) = (svc.to_string(), name.to_string(), attr.map(str::to_string));
        move |trace: &str| {
            spans.lock().unwrap().iter().any(|(s, n, t, a)| {
                *s == svc
                    && *n == name
                    && t == trace
                    && attr
                        .as_ref()
                        .is_none_or(|w| a.iter().any(|x| x.contains(w.as_str())))
            })
        }
    };
    let mut trace = String::new();
    test_kit::wait_until("smtp-in's message span", Duration::from_secs(60), || {
        let found = spans
            .lock()
            .unwrap()
            .iter()
            .find(|(s, n, _, _)| s == "smtp-in" && n == "message")
            .map(|(_, _, t, _)| t.clone());
        if let Some(t) = &found {
            trace.clone_from(t);
        }
        async move { found.is_some() }
    })
    .await;
    assert_ne!(trace, "0".repeat(32));
    // … and the store's Enqueue, delivery's job and the store's
    // DeliverFromQueue into alice's mailbox are in it.
    let enqueue = has("mailbox-store", "grpc", Some("Queue/Enqueue"));
    let job = has("delivery", "job", None);
    let deliver = has("mailbox-store", "grpc", Some("Mailboxes/DeliverFromQueue"));
    test_kit::wait_until(
        "the store's and delivery's spans in the message's trace",
        Duration::from_secs(60),
        || {
            let ok = enqueue(&trace) && job(&trace) && deliver(&trace);
            async move { ok }
        },
    )
    .await;
    // Another message would be another trace: nothing else shares it.
    let all = spans.lock().unwrap().clone();
    let services: std::collections::BTreeSet<&str> = all
        .iter()
        .filter(|(_, _, t, _)| *t == trace)
        .map(|(s, _, _, _)| s.as_str())
        .collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        vec!["delivery", "mailbox-store", "smtp-in"],
        "{all:?}"
    );
}
