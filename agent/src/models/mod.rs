//! Model stages, backend-independent parts: the keep/drop rules (`rules.rs`). The model
//! runner (package → batched tensors in, tensors out) and the filter and dedup stages build
//! on these.

pub mod rules;
