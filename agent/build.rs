//! Models build only: when the libtorch this agent links (torch-sys tells us its directory)
//! has CUDA, link `libtorch_cuda` with `--no-as-needed`. Nothing in the agent calls into it
//! directly, so the linker's default `--as-needed` would drop it and CUDA would be silently
//! absent at run time (`tch::Cuda::is_available()` false on a GPU host).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var_os("CARGO_FEATURE_MODELS").is_none() {
        return;
    }
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch dir; CUDA is not force-linked");
        return;
    };
    if Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={dir}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
