//! Logging and tracing set-up: JSON lines on stdout (for Loki) or a readable format for a
//! terminal, filtered by `RUST_LOG` (default `info`); and, when an OTLP endpoint is
//! configured, the same spans (`http` → `lease` / task handlers with `task_id` and `stage`)
//! exported over OTLP/HTTP to an OpenTelemetry collector.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Flushes and stops the OTLP exporter when dropped (at the end of `main`).
#[derive(Debug)]
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("OTLP exporter shutdown: {e}");
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up OTLP export to {endpoint}: {message}")]
pub struct TelemetryError {
    endpoint: String,
    message: String,
}

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = match otlp_endpoint {
        Some(endpoint) => {
            let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(traces)
                .build()
                .map_err(|e| TelemetryError { endpoint: endpoint.to_string(), message: e.to_string() })?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name("dataminer-control-plane").build())
                    .build(),
            )
        }
        None => None,
    };
    // Spans go to the collector at info level whatever RUST_LOG says about the log lines.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer().with_tracer(p.tracer("dataminer-control-plane")).with_filter(LevelFilter::INFO)
    });
    let registry = tracing_subscriber::registry().with(otel);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer().json().flatten_event(true).with_current_span(true).with_filter(filter),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer().with_filter(filter)).try_init(),
    };
    Ok(TelemetryGuard(provider))
}
