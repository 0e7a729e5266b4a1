//! Model stages, backend-independent parts: verified model packages (`manifest.rs`), frame
//! pre-processing identical to the reference's PIL path (`preprocess.rs`) and the keep/drop
//! rules (`rules.rs`). The model runner (package → batched tensors in, tensors out) and the
//! filter and dedup stages build on these.

pub mod manifest;
pub mod preprocess;
pub mod rules;
