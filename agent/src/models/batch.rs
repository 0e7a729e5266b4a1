//! Running a package over a video's frames, backend-independent: frames are read, decoded
//! and pre-processed on a small pool of threads a batch at a time (never a whole video in
//! memory), the image tower runs on the batch, and an out-of-memory error halves the batch
//! down to one frame before it becomes a (retryable) failure. A frame whose JPEG cannot be
//! decoded is recorded as unreadable and never kept; a frame that cannot be read at all is an
//! I/O failure of the task.

use std::path::Path;

use super::manifest::Package;
use super::preprocess::{decode_jpeg, to_tensor};
use super::rules::l2_normalise;
use super::runner::{ImageOutput, Matrix, ModelRunner, RunError};

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

fn pick(out: ImageOutput, pooling: Pooling) -> Matrix {
    match out {
        ImageOutput::Features(m) => m,
        ImageOutput::Embeddings { pooler, hidden, tokens } => match pooling {
            Pooling::Pooler => pooler,
            Pooling::HiddenCls | Pooling::HiddenMean => {
                let d = hidden.cols / tokens.max(1);
                let mut data = Vec::with_capacity(hidden.rows * d);
                for r in 0..hidden.rows {
                    let row = hidden.row(r);
                    if pooling == Pooling::HiddenCls || tokens < 2 {
                        data.extend_from_slice(&row[..d]);
                    } else {
                        // Mean of the patch tokens 1.. (token 0 is CLS).
                        for k in 0..d {
                            let s: f32 = (1..tokens).map(|t| row[t * d + k]).sum();
                            data.push(s / (tokens - 1) as f32);
                        }
                    }
                }
                Matrix { rows: hidden.rows, cols: d, data }
            }
        },
    }
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
    pub runner: &'a dyn ModelRunner,
    pub package: &'a Package,
    pub data_root: &'a Path,
    /// The most frames per model call (halved on out-of-memory).
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

impl BatchRun<'_> {
    /// Runs the image tower over `frames` in batches, returning each frame's normalised output
    /// (scorer features, or the embedder output `pooling` picks). `stop` is polled between
    /// batches.
    pub fn image_features(&self, frames: &[FrameRef], stop: &dyn Fn() -> bool) -> Result<Features, BatchError> {
        let s = &self.package.manifest.image;
        let one = 3 * s.height as usize * s.width as usize;
        let mut out: Features = Vec::with_capacity(frames.len());
        let mut size = self.batch_size.max(1);
        let mut at = 0;
        while at < frames.len() {
            if stop() {
                return Err(BatchError::Stopped);
            }
            let chunk = &frames[at..(at + size).min(frames.len())];
            let (buf, ok) = prepare(self.package, self.data_root, chunk, self.threads)?;
            // Only readable frames go to the model.
            let mut pixels = Vec::with_capacity(buf.len());
            for (i, good) in ok.iter().enumerate() {
                if *good {
                    pixels.extend_from_slice(&buf[i * one..(i + 1) * one]);
                }
            }
            let n = ok.iter().filter(|g| **g).count();
            let result = if n == 0 { None } else { Some(self.runner.image(&pixels, n)) };
            match result {
                Some(Err(RunError::OutOfMemory { .. })) if size > 1 => {
                    size /= 2;
                    continue;
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(o)) => {
                    let m = pick(o, self.pooling);
                    let mut rows = (0..m.rows).map(|r| {
                        let mut v = m.row(r).to_vec();
                        l2_normalise(&mut v);
                        v
                    });
                    for good in ok {
                        out.push(if good { rows.next() } else { None });
                    }
                }
                None => out.extend(ok.iter().map(|_| None)),
            }
            at += chunk.len();
        }
        Ok(out)
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
        let hidden = Matrix { rows: 1, cols: 6, data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0] };
        let pooler = Matrix { rows: 1, cols: 2, data: vec![9.0, 9.0] };
        let out = |p| pick(ImageOutput::Embeddings { pooler: pooler.clone(), hidden: hidden.clone(), tokens: 3 }, p);
        assert_eq!(out(Pooling::Pooler).data, [9.0, 9.0]);
        assert_eq!(out(Pooling::HiddenCls).data, [1.0, 2.0]);
        assert_eq!(out(Pooling::HiddenMean).data, [4.0, 5.0]);
    }
}
