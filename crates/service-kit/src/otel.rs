//! OpenTelemetry: the services' tracing spans exported over OTLP/gRPC
//! (`--otlp-endpoint`, `EPISTOLE_OTLP_ENDPOINT`; off when unset), and the
//! W3C Trace Context (`traceparent`) carried across processes: on every
//! store call (`mailstore_api::TRACE_CONTEXT`), into the store's request
//! spans ([`server_span`]) and through the queue (the job keeps the
//! `traceparent` of its Enqueue; workers continue it with [`set_parent`]),
//! so one message is one trace from smtp-in to the mailbox.

use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The exporter and the layer that feeds it, for `endpoint`
/// (`http://collector:4317`). Must run inside the Tokio runtime (the
/// gRPC channel lives there).
///
/// # Errors
/// A malformed endpoint.
pub(crate) fn layer<S>(
    endpoint: &str,
    service: &str,
) -> Result<impl tracing_subscriber::Layer<S>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| e.to_string())?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build();
    let tracer = provider.tracer("epistole");
    let _ = PROVIDER.set(provider);
    let _ = mailstore_api::TRACE_CONTEXT.set(current_traceparent);
    Ok(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Sends the spans not yet exported (on a normal exit).
pub fn flush() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
    }
}

/// The `traceparent` of the current span, when it is sampled.
#[must_use]
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(mailstore_api::TRACEPARENT)
}

/// Makes `span` continue the trace named by `traceparent` (a job's, a
/// request's). Nothing happens for an empty or malformed value, or when
/// traces are not exported.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() || PROVIDER.get().is_none() {
        return;
    }
    let carrier = HashMap::from([(
        mailstore_api::TRACEPARENT.to_string(),
        traceparent.to_string(),
    )]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}

/// The span of one gRPC request on a server (tonic's `trace_fn`), child of
/// the caller's span when the request carries a `traceparent`.
pub fn server_span<B>(req: &tonic::codegen::http::Request<B>) -> tracing::Span {
    if PROVIDER.get().is_none() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("grpc", path = %req.uri().path());
    if let Some(tp) = req
        .headers()
        .get(mailstore_api::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
    {
        set_parent(&span, tp);
    }
    span
}

/// The `traceparent` a request arrived with ("" when none).
#[must_use]
pub fn request_traceparent<T>(req: &tonic::Request<T>) -> String {
    req.metadata()
        .get(mailstore_api::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .unwrap_or_default()
        .to_string()
}
