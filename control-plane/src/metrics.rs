//! Prometheus metrics of the control plane. Counters and histograms are updated where the
//! events happen; queue depth and agent gauges are read from the database at scrape time so
//! every replica reports the same truth. Labels are low-cardinality (stage, state, outcome,
//! route) — never ids or URLs.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// Task durations span seconds to hours.
const TASK_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0];
/// Lease waits are bounded by the long-poll limit.
const WAIT_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const HTTP_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub leases: IntCounterVec,
    pub completions: IntCounterVec,
    pub failures: IntCounterVec,
    pub expiries: IntCounterVec,
    pub task_duration: HistogramVec,
    pub lease_wait: HistogramVec,
    pub http_duration: HistogramVec,
    pub tasks: IntGaugeVec,
    pub oldest_queued: IntGaugeVec,
    pub agents: IntGaugeVec,
    pub waiting_for_capability: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let leases = IntCounterVec::new(Opts::new("dataminer_leases_total", "Tasks handed out to agents"), &["stage"])?;
        let completions = IntCounterVec::new(
            Opts::new("dataminer_completions_total", "Task completions accepted (duplicates not counted)"),
            &["stage"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new("dataminer_failures_total", "Task failures reported by agents, by outcome (retry or dead)"),
            &["stage", "outcome"],
        )?;
        let expiries = IntCounterVec::new(
            Opts::new(
                "dataminer_lease_expiries_total",
                "Leases reclaimed by the reaper (expired or over the time limit)",
            ),
            &["stage"],
        )?;
        let task_duration = HistogramVec::new(
            HistogramOpts::new("dataminer_task_duration_seconds", "Lease-to-completion time of accepted tasks")
                .buckets(TASK_BUCKETS.to_vec()),
            &["stage"],
        )?;
        let lease_wait = HistogramVec::new(
            HistogramOpts::new("dataminer_lease_wait_seconds", "Time a lease request waited, by whether it got tasks")
                .buckets(WAIT_BUCKETS.to_vec()),
            &["outcome"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new("dataminer_http_request_duration_seconds", "HTTP request duration")
                .buckets(HTTP_BUCKETS.to_vec()),
            &["method", "route", "status"],
        )?;
        let tasks = IntGaugeVec::new(Opts::new("dataminer_tasks", "Tasks by stage and state"), &["stage", "state"])?;
        let oldest_queued = IntGaugeVec::new(
            Opts::new("dataminer_oldest_queued_task_age_seconds", "Age of the oldest runnable queued task"),
            &["stage"],
        )?;
        let agents = IntGaugeVec::new(Opts::new("dataminer_agents", "Registered agents by liveness"), &["state"])?;
        // `requires` is a capability tag: a model name or yt-dlp, a handful per deployment.
        let waiting_for_capability = IntGaugeVec::new(
            Opts::new(
                "dataminer_tasks_waiting_for_capability",
                "Queued tasks that require a capability no live agent serving their stage advertises",
            ),
            &["stage", "requires"],
        )?;
        for c in [&leases, &completions, &failures, &expiries] {
            registry.register(Box::new(c.clone()))?;
        }
        for h in [&task_duration, &lease_wait, &http_duration] {
            registry.register(Box::new(h.clone()))?;
        }
        for g in [&tasks, &oldest_queued, &agents, &waiting_for_capability] {
            registry.register(Box::new(g.clone()))?;
        }
        Ok(Self {
            registry,
            leases,
            completions,
            failures,
            expiries,
            task_duration,
            lease_wait,
            http_duration,
            tasks,
            oldest_queued,
            agents,
            waiting_for_capability,
        })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
