//! The model stages' image path against `scripts/models/reference.py --bench` (`models`
//! build): the same package, frames manifest, batch size and libtorch thread count; reads,
//! decodes and pre-processes the frames on the agent's decode threads while the package's
//! shared runner runs the previous batch, exactly as the filter and dedup stages do, and
//! prints JSON with end-to-end frames/s and the model-only time (the runner's forward
//! passes), which must agree with the reference's within 10 % for the comparison to count.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use dataminer_agent::models::batch::{BatchRun, FrameRef, Pooling};
use dataminer_agent::models::manifest::Package;
use dataminer_agent::models::shared::{RunObserver, SharedRunner};
use dataminer_agent::models::torch::{select_device, TorchRunner};

#[derive(Parser, Debug)]
#[command(about = "Agent model path (decode + pre-process + batched model) frames/s")]
struct Args {
    /// Package directory (`<models_dir>/<name>`).
    #[arg(long)]
    package: PathBuf,
    /// Frames manifest (the extract stage's `manifest.json` format).
    #[arg(long)]
    frames: PathBuf,
    /// Data root the manifest's paths are relative to.
    #[arg(long)]
    data_root: PathBuf,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// libtorch intra-op threads (the reference's `--threads`).
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Decode threads (the agent's DATAMINER_DECODE_THREADS).
    #[arg(long, default_value_t = 1)]
    decode_threads: usize,
    /// Passes over the frames (after one warm-up pass).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Decode the next batch while the model runs: auto (as the agent: on a GPU, or with more
    /// cores than libtorch threads), on or off.
    #[arg(long, default_value = "auto")]
    overlap: String,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Default)]
struct ModelTime(Mutex<(Duration, usize)>);

impl RunObserver for ModelTime {
    fn batch(&self, _model: &str, frames: usize, took: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.0 += took;
        t.1 += frames;
    }
}

#[derive(serde::Deserialize)]
struct Manifest {
    frames: Vec<ManifestFrame>,
}

#[derive(serde::Deserialize)]
struct ManifestFrame {
    index: u32,
    path: String,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    tch::set_num_threads(a.threads);
    let dir = a.package.parent().context("package path has no parent")?;
    let name = a.package.file_name().and_then(|n| n.to_str()).context("package name")?;
    let package = Package::load(dir, name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let device = select_device(&a.device).map_err(|e| anyhow::anyhow!(e))?;
    let runner = Arc::new(TorchRunner::load(&package, device).map_err(|e| anyhow::anyhow!(e))?);
    let per = 3 * package.manifest.image.height as usize * package.manifest.image.width as usize;
    let timer = Arc::new(ModelTime::default());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let overlap = match a.overlap.as_str() {
        "on" => true,
        "off" => false,
        _ => matches!(device, tch::Device::Cuda(_)) || cores > a.threads.max(1) as usize,
    };
    let shared = SharedRunner::start(name, runner, per, Some(timer.clone()))?.with_overlap(overlap);
    let m: Manifest = serde_json::from_slice(&std::fs::read(&a.frames)?)?;
    let frames: Vec<FrameRef> = m.frames.into_iter().map(|f| FrameRef { index: f.index, path: f.path }).collect();
    let run = BatchRun {
        runner: &shared,
        package: &package,
        data_root: &a.data_root,
        batch_size: a.batch_size,
        pooling: Pooling::Pooler,
        threads: a.decode_threads,
    };
    let pass = || run.image_features(&frames, &|| false, &mut |_| {}).map_err(|e| anyhow::anyhow!("{e}"));
    pass()?; // warm-up: first-call allocations and graph optimisation
    *timer.0.lock().unwrap_or_else(|p| p.into_inner()) = (Duration::ZERO, 0);
    let started = Instant::now();
    let mut decode = Duration::ZERO;
    let mut readable = 0;
    for _ in 0..a.repeat.max(1) {
        let (feats, times) = pass()?;
        decode += times.decode;
        readable += feats.iter().filter(|f| f.is_some()).count();
    }
    let wall = started.elapsed().as_secs_f64();
    let (model, model_frames) = *timer.0.lock().unwrap_or_else(|p| p.into_inner());
    let n = frames.len() * a.repeat.max(1);
    let out = serde_json::json!({
        "package": name,
        "frames": n,
        "readable": readable,
        "batch_size": a.batch_size,
        "threads": a.threads,
        "decode_threads": a.decode_threads,
        "overlap": overlap,
        "device": a.device,
        "dtype": package.manifest.dtype,
        "wall_s": wall,
        "frames_per_s": n as f64 / wall,
        "decode_s": decode.as_secs_f64(),
        "model_s": model.as_secs_f64(),
        "model_frames": model_frames,
        "model_frames_per_s": model_frames as f64 / model.as_secs_f64().max(1e-9),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
