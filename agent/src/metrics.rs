//! The agent's Prometheus metrics (units in the names): tasks by stage and outcome, bytes
//! downloaded, frames extracted, stage durations, tasks in flight, whether the control
//! plane answered the last call, the data root's free bytes, and for the model stages the
//! frames run per stage, the model's batch sizes and busy seconds per package and the
//! decode seconds per stage (model time vs decode time). Served on the agent's own port at
//! `/metrics`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
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
    /// Frames through a model stage's model (readable ones), by stage.
    pub model_frames: IntCounterVec,
    /// Frames per forward pass, by package.
    pub model_batch_frames: HistogramVec,
    /// Seconds the model ran (forward passes), by package.
    pub model_seconds: CounterVec,
    /// Seconds spent reading, decoding and pre-processing frames, by stage.
    pub decode_seconds: CounterVec,
    pub data_root_free_bytes: IntGauge,
    /// GPU memory (whole device, from nvidia-smi), by device.
    pub device_memory_used: IntGaugeVec,
    pub device_memory_total: IntGaugeVec,
    /// Set once at start: the data root whose free bytes each scrape reads.
    pub data_root: Arc<OnceLock<PathBuf>>,
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
        let model_frames = IntCounterVec::new(
            Opts::new("dataminer_agent_model_frames_total", "Frames run through the model of a model stage"),
            &["stage"],
        )?;
        let model_batch_frames = HistogramVec::new(
            HistogramOpts::new("dataminer_agent_model_batch_frames", "Frames per forward pass of a model")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
            &["model"],
        )?;
        let model_seconds = CounterVec::new(
            Opts::new("dataminer_agent_model_seconds_total", "Seconds a model spent in forward passes"),
            &["model"],
        )?;
        let decode_seconds = CounterVec::new(
            Opts::new(
                "dataminer_agent_decode_seconds_total",
                "Seconds a model stage spent reading, decoding and pre-processing frames",
            ),
            &["stage"],
        )?;
        let data_root_free_bytes =
            IntGauge::new("dataminer_agent_data_root_free_bytes", "Free bytes on the data root's filesystem")?;
        let device_memory_used = IntGaugeVec::new(
            Opts::new("dataminer_agent_device_memory_used_bytes", "GPU memory in use on the model device"),
            &["device"],
        )?;
        let device_memory_total = IntGaugeVec::new(
            Opts::new("dataminer_agent_device_memory_total_bytes", "GPU memory of the model device"),
            &["device"],
        )?;
        registry.register(Box::new(device_memory_used.clone()))?;
        registry.register(Box::new(device_memory_total.clone()))?;
        registry.register(Box::new(model_frames.clone()))?;
        registry.register(Box::new(model_batch_frames.clone()))?;
        registry.register(Box::new(model_seconds.clone()))?;
        registry.register(Box::new(decode_seconds.clone()))?;
        registry.register(Box::new(data_root_free_bytes.clone()))?;
        registry.register(Box::new(tasks.clone()))?;
        registry.register(Box::new(bytes_downloaded.clone()))?;
        registry.register(Box::new(frames_extracted.clone()))?;
        registry.register(Box::new(stage_duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(control_plane_up.clone()))?;
        Ok(Self {
            registry,
            tasks,
            bytes_downloaded,
            frames_extracted,
            stage_duration,
            in_flight,
            control_plane_up,
            model_frames,
            model_batch_frames,
            model_seconds,
            decode_seconds,
            data_root_free_bytes,
            device_memory_used,
            device_memory_total,
            data_root: Arc::new(OnceLock::new()),
        })
    }

    pub fn render(&self) -> String {
        if let Some(free) = self.data_root.get().and_then(|d| fs4::available_space(d).ok()) {
            self.data_root_free_bytes.set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        let mut buf = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl crate::models::shared::RunObserver for Metrics {
    fn batch(&self, model: &str, frames: usize, took: Duration) {
        self.model_batch_frames.with_label_values(&[model]).observe(frames as f64);
        self.model_seconds.with_label_values(&[model]).inc_by(took.as_secs_f64());
    }
}
