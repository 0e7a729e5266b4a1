//! The seam between the model stages and a model backend: a package's towers as functions
//! from batched tensors to batched tensors, nothing else. The stages pre-process frames,
//! batch them, and apply the rules; a backend (libtorch through `tch`, behind the `models`
//! feature, in `torch.rs`) only runs the TorchScript files. Another backend would implement
//! this trait.

/// A row-major `rows × cols` matrix of `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// What an image tower returns.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageOutput {
    /// Image features of a scorer (`[B, D]`, not normalised).
    Features(Matrix),
    /// An embedder's pooled output (`[B, D]`) and last hidden state (`[B, T, D]`, flattened
    /// to `B` rows of `T·D`).
    Embeddings { pooler: Matrix, hidden: Matrix, tokens: usize },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RunError {
    /// The device ran out of memory; the caller halves the batch and tries again.
    #[error("out of memory on {device}: {message}")]
    OutOfMemory { device: String, message: String },
    #[error("model {model} failed: {message}")]
    Failed { model: String, message: String },
}

/// One loaded package on one device.
pub trait ModelRunner: Send + Sync {
    /// The device it really runs on (`cpu`, `cuda:0`).
    fn device(&self) -> String;
    /// `pixels`: `n` images, planar `3 × height × width` each, as the manifest's pre-processing
    /// made them.
    fn image(&self, pixels: &[f32], n: usize) -> Result<ImageOutput, RunError>;
    /// `ids`: `n` prompts of the manifest's text length each (scorers only).
    fn text(&self, ids: &[i64], n: usize) -> Result<Matrix, RunError>;
}
