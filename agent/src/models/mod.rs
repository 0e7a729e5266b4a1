//! Model stages: verified model packages (`manifest.rs`), frame pre-processing identical to
//! the reference's PIL path (`preprocess.rs`), the keep/drop rules (`rules.rs`), and the
//! backend seam (`runner.rs`: package → batched tensors in, tensors out) with its libtorch
//! implementation (`torch.rs`, `models` feature only: CPU-only agents never link libtorch),
//! and the per-package runner thread every task feeds (`shared.rs`), which batches across
//! tasks and backs off on out-of-memory.

pub mod batch;
pub mod manifest;
pub mod npy;
pub mod preprocess;
#[cfg(feature = "models")]
pub mod prompts;
#[cfg(feature = "models")]
pub mod registry;
pub mod rules;
pub mod runner;
pub mod shared;
#[cfg(feature = "models")]
pub mod torch;
