//! Dedup cost per video as a project's kept set grows (BENCHMARKS.md): for kept sets of random
//! L2-normalised embeddings (sizes × dimensions), the median over runs of
//! - `dedup`: one `dedup_video` call — a video's filter-kept frames against the kept set, the
//!   exact comparison the agent's dedup stage makes (`agent/src/models/rules.rs`);
//! - `clone`: one `KeptSet::clone`, for scale: what copying the set would cost (the dedup
//!   stage no longer copies it; it takes the cached set out of the registry and truncates it
//!   back after the run);
//! - `load`: what an agent with an empty cache does before its first dedup of the project —
//!   read every kept entry's `embeddings.npy` (rows × dim) and `kept.json`, decode, append —
//!   with the files in the page cache (`load`) and evicted from it first (`load cold`,
//!   `posix_fadvise(DONTNEED)` after an fsync).
//!
//! No model and no libtorch: the rules and the `.npy` code are backend-independent.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use dataminer_agent::models::npy;
use dataminer_agent::models::rules::{dedup_video, l2_normalise, KeptSet};
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Parser)]
struct Args {
    /// Kept-set sizes (embeddings), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    sizes: Vec<usize>,
    /// Embedding dimensions, comma-separated (DINOv3 ViT-B/16: 768; ViT-L: 1024).
    #[arg(long, value_delimiter = ',', default_value = "768,1024")]
    dims: Vec<usize>,
    /// Filter-kept frames of the video being deduplicated.
    #[arg(long, default_value_t = 50)]
    frames: usize,
    /// Rows per kept entry (`embeddings.npy` of one earlier video).
    #[arg(long, default_value_t = 20)]
    rows_per_file: usize,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The project's dedup threshold.
    #[arg(long, default_value_t = 0.9)]
    threshold: f64,
    /// Scratch directory for the kept entries' files (removed afterwards).
    #[arg(long, default_value = "bench/results/dedup")]
    dir: PathBuf,
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.runs == 0 || a.rows_per_file == 0 {
        bail!("--runs and --rows-per-file must be positive");
    }
    println!(
        "dedup of one video ({} frames) against a kept set; median of {} runs; kept entries of {} rows",
        a.frames, a.runs, a.rows_per_file
    );
    println!(
        "{:>5} {:>7} {:>11} {:>9} {:>8} {:>10} {:>10} {:>13} {:>9}",
        "dim", "kept", "dedup ms", "µs/frame", "GFLOP/s", "clone ms", "load ms", "load cold ms", "MiB"
    );
    let mut rng = StdRng::seed_from_u64(7);
    for &dim in &a.dims {
        let largest = a.sizes.iter().copied().max().unwrap_or(0);
        // One set of entries per dimension; a smaller kept set is a prefix of it.
        let rows = random_rows(&mut rng, largest, dim);
        let entries = write_entries(&a.dir, &rows, dim, a.rows_per_file)?;
        for &size in &a.sizes {
            let mut kept = KeptSet::new(dim);
            for i in 0..size {
                kept.push(((i / a.rows_per_file) as i64 + 1, i as i64), &rows[i * dim..(i + 1) * dim])
                    .map_err(anyhow::Error::msg)?;
            }
            let (mut dedup, mut clone, mut load, mut cold) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..a.runs {
                let t = Instant::now();
                let mut set = kept.clone();
                clone.push(t.elapsed().as_secs_f64());
                let v = random_rows(&mut rng, a.frames, dim);
                let frames: Vec<((i64, i64), Vec<f32>)> =
                    v.chunks_exact(dim).enumerate().map(|(i, e)| ((0, i as i64), e.to_vec())).collect();
                let t = Instant::now();
                let verdicts = dedup_video(&mut set, &frames, a.threshold).map_err(anyhow::Error::msg)?;
                dedup.push(t.elapsed().as_secs_f64());
                std::hint::black_box(verdicts);
                let n = size.div_ceil(a.rows_per_file);
                let t = Instant::now();
                let loaded = load_entries(&entries[..n], dim)?;
                load.push(t.elapsed().as_secs_f64());
                if loaded.len() < size {
                    bail!("loaded {} rows for a kept set of {size}", loaded.len());
                }
                drop(loaded);
                evict(&entries[..n])?;
                let t = Instant::now();
                std::hint::black_box(load_entries(&entries[..n], dim)?);
                cold.push(t.elapsed().as_secs_f64());
            }
            let d = median(dedup);
            let flops = 2.0 * a.frames as f64 * size as f64 * dim as f64;
            println!(
                "{dim:>5} {size:>7} {:>11.2} {:>9.1} {:>8.2} {:>10.2} {:>10.2} {:>13.2} {:>9.1}",
                d * 1e3,
                d * 1e6 / a.frames as f64,
                flops / d / 1e9,
                median(clone) * 1e3,
                median(load) * 1e3,
                median(cold) * 1e3,
                (size * dim * 4) as f64 / (1 << 20) as f64,
            );
        }
        std::fs::remove_dir_all(&a.dir).with_context(|| format!("remove {}", a.dir.display()))?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `n` random unit vectors of length `dim`, row after row.
fn random_rows(rng: &mut StdRng, n: usize, dim: usize) -> Vec<f32> {
    let mut out: Vec<f32> = (0..n * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    for row in out.chunks_exact_mut(dim) {
        l2_normalise(row);
    }
    out
}

/// Writes `rows` as kept entries of `per` rows each — `<dir>/<k>/embeddings.npy` and
/// `kept.json`, as the dedup stage writes them — synced to disk; returns their directories.
fn write_entries(dir: &Path, rows: &[f32], dim: usize, per: usize) -> Result<Vec<PathBuf>> {
    let _ = std::fs::remove_dir_all(dir);
    let mut out = Vec::new();
    for (k, chunk) in rows.chunks(per * dim).enumerate() {
        let d = dir.join(format!("{k:06}"));
        std::fs::create_dir_all(&d)?;
        let n = chunk.len() / dim;
        npy::write(&d.join("embeddings.npy"), n, dim, chunk)?;
        let idx: Vec<i64> = (0..n as i64).map(|i| i * 30).collect();
        std::fs::write(d.join("kept.json"), serde_json::to_vec(&idx)?)?;
        out.push(d);
    }
    Ok(out)
}

/// What `stages/dedup.rs` does per kept entry when its cache is empty: read and decode
/// `embeddings.npy`, read `kept.json`, check, append each row.
fn load_entries(entries: &[PathBuf], dim: usize) -> Result<KeptSet> {
    let mut set = KeptSet::new(dim);
    for (k, d) in entries.iter().enumerate() {
        let (rows, cols, data) = npy::decode(&std::fs::read(d.join("embeddings.npy"))?)?;
        let idx: Vec<i64> = serde_json::from_slice(&std::fs::read(d.join("kept.json"))?)?;
        if idx.len() != rows || cols != dim {
            bail!("{}: {rows}×{cols} embeddings for {} frames", d.display(), idx.len());
        }
        for (i, frame) in idx.iter().enumerate() {
            set.push((k as i64 + 1, *frame), &data[i * cols..(i + 1) * cols]).map_err(anyhow::Error::msg)?;
        }
    }
    Ok(set)
}

/// Drops the entries' files from the page cache (they are clean: written and synced).
fn evict(entries: &[PathBuf]) -> Result<()> {
    for d in entries {
        for name in ["embeddings.npy", "kept.json"] {
            let f = File::open(d.join(name))?;
            f.sync_all()?;
            posix_fadvise(&f, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)?;
        }
    }
    Ok(())
}
