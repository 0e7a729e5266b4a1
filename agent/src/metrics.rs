//! The agent's Prometheus metrics (units in the names): tasks by stage and outcome, bytes
//! downloaded, frames extracted, stage durations, tasks in flight and whether the control
//! plane answered the last call. Served on the agent's own port at `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// outcome: succeeded, failed_retryable, failed_fatal, lease_lost, cancelled, released.
    pub tasks: IntCounterVec,
    pub bytes_downloaded: IntCounter,
    pub frames_extracted: IntCounter,
    pub stage_duration: HistogramVec,
    pub in_flight: IntGaugeVec,
    pub control_plane_up: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let tasks = IntCounterVec::new(
            Opts::new("dataminer_agent_tasks_total", "Task attempts finished by this agent, by stage and outcome"),
            &["stage", "outcome"],
        )?;
        let bytes_downloaded = IntCounter::new("dataminer_agent_downloaded_bytes_total", "Bytes written by downloads")?;
        let frames_extracted = IntCounter::new(
            "dataminer_agent_frames_extracted_total",
            "Frames written by extract attempts that succeeded",
        )?;
        let stage_duration = HistogramVec::new(
            HistogramOpts::new("dataminer_agent_stage_duration_seconds", "Run time of task attempts")
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0]),
            &["stage", "outcome"],
        )?;
        let in_flight =
            IntGaugeVec::new(Opts::new("dataminer_agent_tasks_in_flight", "Tasks running now"), &["stage"])?;
        let control_plane_up = IntGauge::new(
            "dataminer_agent_control_plane_up",
            "1 when the last call to the control plane got an answer",
        )?;
        registry.register(Box::new(tasks.clone()))?;
        registry.register(Box::new(bytes_downloaded.clone()))?;
        registry.register(Box::new(frames_extracted.clone()))?;
        registry.register(Box::new(stage_duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(control_plane_up.clone()))?;
        Ok(Self { registry, tasks, bytes_downloaded, frames_extracted, stage_duration, in_flight, control_plane_up })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}
