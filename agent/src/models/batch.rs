//! Running a package over a video's frames, backend-independent: frames are read, decoded
//! and pre-processed on a small pool of threads a batch at a time (never a whole video in
//! memory), the image tower runs on the batch, and an out-of-memory error halves the batch
//! down to one frame before it becomes a (retryable) failure. A frame whose JPEG cannot be
//! decoded is recorded as unreadable and never kept; a frame that cannot be read at all is an
//! I/O failure of the task.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::manifest::Package;
use super::preprocess::{decode_jpeg, to_tensor};
use super::rules::l2_normalise;
use super::runner::{ImageOutput, RunError};
use super::shared::{SharedRunner, Ticket, WaitError};

/// Why running a package over frames failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A frame file could not be read (retryable: the shared data root may be flaky).
    #[error("cannot read frame {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Model(#[from] RunError),
    /// The caller asked to stop (cancel, lost lease, shutdown).
    #[error("stopped")]
    Stopped,
}

/// One frame to run: its index in the extraction and its path relative to the data root.
#[derive(Debug, Clone)]
pub struct FrameRef {
    pub index: u32,
    pub path: String,
}

/// Image-tower outputs per frame, L2-normalised (`None`: the JPEG was unreadable).
pub type Features = Vec<Option<Vec<f32>>>;

/// Which of an embedder's outputs is the frame's embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Pooler,
    HiddenCls,
    HiddenMean,
}

/// Rows `from..from + n` of an image tower's output as the embeddings `pooling` picks,
/// L2-normalised (scorers' features ignore `pooling`).
pub fn pick_rows(out: &ImageOutput, from: usize, n: usize, pooling: Pooling) -> Vec<Vec<f32>> {
    let rows = from..from + n;
    let mut picked: Vec<Vec<f32>> = match out {
        ImageOutput::Features(m) => rows.map(|r| m.row(r).to_vec()).collect(),
        ImageOutput::Embeddings { pooler, hidden, tokens } => {
            let tokens = (*tokens).max(1);
            let d = hidden.cols / tokens;
            rows.map(|r| match pooling {
                Pooling::Pooler => pooler.row(r).to_vec(),
                Pooling::HiddenCls => hidden.row(r)[..d].to_vec(),
                // Mean of the patch tokens 1.. (token 0 is CLS).
                Pooling::HiddenMean if tokens >= 2 => {
                    let row = hidden.row(r);
                    (0..d).map(|k| (1..tokens).map(|t| row[t * d + k]).sum::<f32>() / (tokens - 1) as f32).collect()
                }
                Pooling::HiddenMean => hidden.row(r)[..d].to_vec(),
            })
            .collect()
        }
    };
    for v in &mut picked {
        l2_normalise(v);
    }
    picked
}

/// Decodes and pre-processes `frames` on `threads` threads into one planar buffer; returns it
/// and, per frame, whether it was readable.
fn prepare(
    pkg: &Package,
    data_root: &Path,
    frames: &[FrameRef],
    threads: usize,
) -> Result<(Vec<f32>, Vec<bool>), BatchError> {
    let s = &pkg.manifest.image;
    let one = 3 * s.height as usize * s.width as usize;
    let mut buf = vec![0f32; one * frames.len()];
    let mut ok = vec![false; frames.len()];
    let per = frames.len().div_ceil(threads.max(1)).max(1);
    let results: Vec<Result<(), BatchError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = buf
            .chunks_mut(one * per)
            .zip(ok.chunks_mut(per))
            .zip(frames.chunks(per))
            .map(|((b, o), f)| {
                scope.spawn(move || -> Result<(), BatchError> {
                    for (i, fr) in f.iter().enumerate() {
                        let bytes = std::fs::read(data_root.join(&fr.path))
                            .map_err(|source| BatchError::Io { path: fr.path.clone(), source })?;
                        if let Ok(img) = decode_jpeg(&bytes) {
                            to_tensor(&img, s, &mut b[i * one..(i + 1) * one]);
                            o[i] = true;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(Err(BatchError::Stopped))).collect()
    });
    for r in results {
        r?;
    }
    Ok((buf, ok))
}

/// How to run a package over frames.
#[derive(Clone, Copy)]
pub struct BatchRun<'a> {
    /// The package's shared runner (batches across tasks, backs off on out-of-memory).
    pub runner: &'a SharedRunner,
    pub package: &'a Package,
    pub data_root: &'a Path,
    /// The most frames per model call (the runner halves it on out-of-memory).
    pub batch_size: usize,
    /// Embedders: which output is the embedding (scorers ignore it).
    pub pooling: Pooling,
    /// Decode threads.
    pub threads: usize,
}

impl std::fmt::Debug for BatchRun<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchRun")
            .field("package", &self.package.manifest.name)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

/// Time spent by a run, for the agent's metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunTimes {
    /// Reading, decoding and pre-processing frames.
    pub decode: std::time::Duration,
}

/// Sets the task's stop flag when a run ends early, so the runner drops what it queued.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl BatchRun<'_> {
    /// Runs the image tower over `frames`, returning each frame's normalised output (scorer
    /// features, or the embedder output `pooling` picks). When the runner overlaps, a batch is
    /// decoded while the one before it runs (at most two in memory). `stop` is polled between batches and while
    /// waiting; `done(frames so far)` is called after each batch.
    pub fn image_features(
        &self,
        frames: &[FrameRef],
        stop: &dyn Fn() -> bool,
        done: &mut dyn FnMut(usize),
    ) -> Result<(Features, RunTimes), BatchError> {
        let s = &self.package.manifest.image;
        let one = 3 * s.height as usize * s.width as usize;
        let stopped = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let mut out: Features = Vec::with_capacity(frames.len());
        let mut times = RunTimes::default();
        let mut in_flight: VecDeque<(Option<Ticket>, Vec<bool>)> = VecDeque::new();
        let mut collect = |ticket: Option<Ticket>, ok: Vec<bool>, out: &mut Features| -> Result<(), BatchError> {
            let mut rows = match ticket {
                Some(t) => t.wait(stop).map_err(|e| match e {
                    WaitError::Stopped => BatchError::Stopped,
                    WaitError::Model(m) => BatchError::Model(m),
                })?,
                None => Vec::new(),
            }
            .into_iter();
            for good in ok {
                out.push(if good { rows.next() } else { None });
            }
            done(out.len());
            Ok(())
        };
        for chunk in frames.chunks(self.batch_size.max(1)) {
            if stop() {
                return Err(BatchError::Stopped);
            }
            let started = std::time::Instant::now();
            let (buf, ok) = prepare(self.package, self.data_root, chunk, self.threads)?;
            // Only readable frames go to the model.
            let n = ok.iter().filter(|g| **g).count();
            let pixels = if n == ok.len() {
                buf
            } else {
                let mut p = Vec::with_capacity(n * one);
                for (i, _) in ok.iter().enumerate().filter(|(_, g)| **g) {
                    p.extend_from_slice(&buf[i * one..(i + 1) * one]);
                }
                p
            };
            times.decode += started.elapsed();
            let ticket = if n == 0 {
                None
            } else {
                Some(self.runner.submit(pixels, n, self.pooling, self.batch_size, stopped.0.clone())?)
            };
            in_flight.push_back((ticket, ok));
            let ahead = usize::from(self.runner.overlaps());
            while in_flight.len() > ahead {
                if let Some((t, ok)) = in_flight.pop_front() {
                    collect(t, ok, &mut out)?;
                }
            }
        }
        while let Some((t, ok)) = in_flight.pop_front() {
            collect(t, ok, &mut out)?;
        }
        Ok((out, times))
    }
}

/// SigLIP's score of an image against a prompt from their normalised features:
/// `sigmoid(exp(logit_scale) · cos + logit_bias)`.
pub fn siglip_score(image: &[f32], text: &[f32], logit_scale: f32, logit_bias: f32) -> f32 {
    let cos: f32 = image.iter().zip(text).map(|(a, b)| a * b).sum();
    let z = f64::from(logit_scale).exp() * f64::from(cos) + f64::from(logit_bias);
    (1.0 / (1.0 + (-z).exp())) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::runner::Matrix;

    #[test]
    fn scores_follow_the_sigmoid_formula() {
        let a = [1.0f32, 0.0];
        let b = [(0.5f32).sqrt(), (0.5f32).sqrt()];
        // exp(ln 20) · 0.7071 − 12 = 2.1421 → 0.89493
        assert!((siglip_score(&a, &b, 20f32.ln(), -12.0) - 0.894932).abs() < 1e-5);
        assert!((siglip_score(&a, &a, 0.0, 0.0) - 0.731059).abs() < 1e-5);
    }

    #[test]
    fn hidden_pooling_picks_cls_or_the_patch_mean() {
        // Two images of three tokens of dimension 2; the second is the first plus 10.
        let hidden =
            Matrix { rows: 2, cols: 6, data: vec![3.0, 4.0, 2.0, 0.0, 4.0, 0.0, 13.0, 14.0, 12.0, 10.0, 14.0, 10.0] };
        let pooler = Matrix { rows: 2, cols: 2, data: vec![9.0, 0.0, 0.0, 5.0] };
        let out = ImageOutput::Embeddings { pooler, hidden, tokens: 3 };
        let unit = |a: f32, b: f32| {
            let mut v = vec![a, b];
            l2_normalise(&mut v);
            v
        };
        assert_eq!(pick_rows(&out, 0, 2, Pooling::Pooler), [vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert_eq!(pick_rows(&out, 0, 1, Pooling::HiddenCls), [unit(3.0, 4.0)]);
        assert_eq!(pick_rows(&out, 1, 1, Pooling::HiddenCls), [unit(13.0, 14.0)]);
        assert_eq!(pick_rows(&out, 0, 1, Pooling::HiddenMean), [vec![1.0, 0.0]]);
        assert_eq!(pick_rows(&out, 1, 1, Pooling::HiddenMean), [unit(13.0, 10.0)]);
    }
}
