//! The libtorch backend on real TorchScript packages made by `scripts/models/export.py
//! --ci-packages` into `$DATAMINER_TEST_MODELS_DIR` (`.ci/run` makes them): packages verify
//! and load, outputs have the manifest's shapes, a batch gives the same rows as single images,
//! random models' outputs vary across inputs, and the oracles give their documented values.
#![cfg(feature = "models")]

use std::path::PathBuf;

use dataminer_agent::models::batch::{siglip_score, BatchError, BatchRun, FrameRef, Pooling};
use dataminer_agent::models::manifest::Package;
use dataminer_agent::models::preprocess::{to_tensor, Rgb8};
use dataminer_agent::models::prompts::PromptTokenizer;
use dataminer_agent::models::rules::{dedup_video, filter_frame, l2_normalise, FilterThresholds, KeptSet};
use dataminer_agent::models::runner::{ImageOutput, Matrix, ModelRunner};
use dataminer_agent::models::shared::SharedRunner;
use dataminer_agent::models::torch::{cuda_available, select_device, TorchRunner};

fn models_dir() -> PathBuf {
    PathBuf::from(std::env::var("DATAMINER_TEST_MODELS_DIR").expect(
        "DATAMINER_TEST_MODELS_DIR must name the CI packages (python3 scripts/models/export.py --out DIR --ci-packages)",
    ))
}

fn load(name: &str) -> (Package, TorchRunner) {
    let p = Package::load(&models_dir(), name).unwrap_or_else(|e| panic!("{e}"));
    let r = TorchRunner::load(&p, select_device("cpu").expect("cpu")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.device(), "cpu");
    (p, r)
}

/// The package's shared runner (a second copy of the model, on its own thread).
fn shared(p: &Package) -> SharedRunner {
    let r = TorchRunner::load(p, select_device("cpu").expect("cpu")).unwrap_or_else(|e| panic!("{e}"));
    let per = 3 * p.manifest.image.height as usize * p.manifest.image.width as usize;
    SharedRunner::start(&p.manifest.name, std::sync::Arc::new(r), per, None).expect("runner thread")
}

/// A `w × h` image whose pixels follow `f(x, y) -> [r, g, b]`.
fn image(w: usize, h: usize, f: impl Fn(usize, usize) -> [u8; 3]) -> Rgb8 {
    Rgb8 { width: w, height: h, data: (0..h).flat_map(|y| (0..w).flat_map(|x| f(x, y)).collect::<Vec<_>>()).collect() }
}

fn pixels(p: &Package, imgs: &[Rgb8]) -> Vec<f32> {
    let s = &p.manifest.image;
    let one = 3 * s.height as usize * s.width as usize;
    let mut out = vec![0f32; one * imgs.len()];
    for (i, img) in imgs.iter().enumerate() {
        to_tensor(img, s, &mut out[i * one..(i + 1) * one]);
    }
    out
}

fn features(o: ImageOutput) -> Matrix {
    match o {
        ImageOutput::Features(m) => m,
        ImageOutput::Embeddings { pooler, .. } => pooler,
    }
}

fn inputs() -> Vec<Rgb8> {
    (0..3u8)
        .map(|k| {
            image(40, 30, move |x, y| [(x * 6) as u8 ^ (k * 80), (y * 8) as u8, (k * 90).wrapping_add((x + y) as u8)])
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn random_packages_batch_consistently_and_vary_with_the_input() {
    for name in ["siglip2-tiny", "dinov2-tiny"] {
        let (p, r) = load(name);
        let imgs = inputs();
        let batch = features(r.image(&pixels(&p, &imgs), 3).expect("batch"));
        assert_eq!((batch.rows, batch.cols), (3, p.manifest.embedding_dim), "{name}");
        for (i, img) in imgs.iter().enumerate() {
            let single = features(r.image(&pixels(&p, std::slice::from_ref(img)), 1).expect("single"));
            assert!(max_abs_diff(single.row(0), batch.row(i)) < 1e-4, "{name}: row {i} depends on the batch");
        }
        assert!(max_abs_diff(batch.row(0), batch.row(1)) > 1e-3, "{name}: a constant model");
    }
    let (p, r) = load("dinov2-tiny");
    match r.image(&pixels(&p, &inputs()), 3).expect("run") {
        ImageOutput::Embeddings { hidden, tokens, pooler } => {
            assert!(tokens >= 2);
            assert_eq!((hidden.rows, hidden.cols), (3, tokens * pooler.cols));
        }
        other => panic!("an embedder returned {other:?}"),
    }
    let (p, r) = load("siglip2-tiny");
    let len = p.manifest.text.as_ref().expect("text").length;
    let ids: Vec<i64> = (0..2 * len as i64).map(|i| 2 + i % 7).collect();
    let t = r.text(&ids, 2).expect("text tower");
    assert_eq!((t.rows, t.cols), (2, p.manifest.embedding_dim));
}

#[test]
fn thumbnail_oracle_is_its_formula() {
    let (p, r) = load("thumbnail");
    let img = image(64, 48, |x, y| [(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8]);
    let out = features(r.image(&pixels(&p, std::slice::from_ref(&img)), 1).expect("run"));
    // The formula on the pre-processed input: grey = channel mean of [0,1] values, 16×16
    // average pool, minus its mean, L2-normalised.
    let s = &p.manifest.image;
    let (w, h) = (s.width as usize, s.height as usize);
    let x = pixels(&p, std::slice::from_ref(&img));
    let (bw, bh) = (w / 16, h / 16);
    let mut v = vec![0f32; 256];
    for (cell, slot) in v.iter_mut().enumerate() {
        let (cy, cx) = (cell / 16, cell % 16);
        let mut sum = 0f64;
        for yy in cy * bh..(cy + 1) * bh {
            for xx in cx * bw..(cx + 1) * bw {
                sum += (0..3).map(|c| f64::from(x[c * w * h + yy * w + xx])).sum::<f64>() / 3.0;
            }
        }
        *slot = (sum / (bw * bh) as f64) as f32;
    }
    let mean = v.iter().sum::<f32>() / 256.0;
    v.iter_mut().for_each(|e| *e -= mean);
    l2_normalise(&mut v);
    assert!(max_abs_diff(&v, out.row(0)) < 1e-5, "{:?} vs {:?}", &v[..4], &out.row(0)[..4]);
}

#[test]
fn meancolour_oracle_scores_as_documented() {
    let (p, r) = load("meancolour");
    let text = p.manifest.text.clone().expect("text");
    let tok = PromptTokenizer::load(&p.dir, &text).expect("tokenizer");
    let prompts: Vec<String> = ["Red", "anything", "green"].iter().map(|s| s.to_string()).collect();
    let ids = tok.encode(&prompts).expect("encode");
    assert_eq!(ids.len(), 3 * text.length);
    assert!(ids[1..text.length].iter().all(|i| *i == text.pad_id), "padded with the pad id: {ids:?}");
    let long = vec!["red green blue white black grey red green blue".to_string()];
    let e = tok.encode(&long).expect_err("too long");
    assert!(e.contains("text length is 8"), "{e}");
    let t = r.text(&ids, prompts.len()).expect("text");
    let red = image(8, 8, |_, _| [255, 0, 0]);
    let img = features(r.image(&pixels(&p, std::slice::from_ref(&red)), 1).expect("image"));
    let (scale, bias) = (p.manifest.logit_scale.expect("scale"), p.manifest.logit_bias.expect("bias"));
    let score = |j: usize| {
        let (a, b) = (img.row(0), t.row(j));
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        1.0 / (1.0 + (-(scale.exp() * dot / (na * nb) + bias)).exp())
    };
    // The package README's worked example: 0.894932 for red and anything, 6.144e-06 for green.
    assert!((score(0) - 0.894932).abs() < 1e-5, "{}", score(0));
    assert!((score(1) - 0.894932).abs() < 1e-5, "{}", score(1));
    assert!(score(2) < 1e-5, "{}", score(2));
}

#[test]
fn cuda_is_refused_without_a_cuda_device() {
    if !cuda_available() {
        let e = select_device("cuda:0").expect_err("no CUDA here");
        // The reason says which: no CUDA in this libtorch, or no device.
        let why =
            if dataminer_agent::models::torch::cuda_linked() { "no CUDA device is visible" } else { "has no CUDA" };
        assert!(e.contains(why), "{e}");
    }
    assert!(select_device("tpu").is_err());
    let auto = select_device("auto").expect("auto");
    assert_eq!(auto == select_device("cpu").expect("cpu"), !cuda_available());
}

/// Writes `frames` (solid colours, `None` for a corrupt file) as JPEGs under `dir`.
fn write_frames(dir: &std::path::Path, frames: &[Option<[u8; 3]>]) -> Vec<FrameRef> {
    std::fs::create_dir_all(dir).expect("dir");
    frames
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = format!("frame_{:06}.jpg", i + 1);
            let bytes = match c {
                Some(c) => {
                    let img = image(48, 32, |_, _| *c);
                    turbojpeg_bytes(&img)
                }
                None => b"\xff\xd8 truncated".to_vec(),
            };
            std::fs::write(dir.join(&name), bytes).expect("write");
            FrameRef { index: i as u32 + 1, path: format!("frames/{name}") }
        })
        .collect()
}

fn turbojpeg_bytes(img: &Rgb8) -> Vec<u8> {
    // Quality 100 keeps solid colours within a couple of levels of the input.
    dataminer_agent::models::preprocess::encode_jpeg(img, 100).expect("encode")
}

#[test]
fn meancolour_filter_keeps_the_red_frames_and_records_unreadable_ones() {
    let (p, r) = load("meancolour");
    let root = std::env::temp_dir().join(format!("dm-filter-{}", std::process::id()));
    let frames = write_frames(&root.join("frames"), &[Some([255, 0, 0]), Some([0, 0, 255]), None, Some([250, 5, 5])]);
    let sr = shared(&p);
    let run =
        BatchRun { runner: &sr, package: &p, data_root: &root, batch_size: 3, pooling: Pooling::Pooler, threads: 2 };
    let feats = run.image_features(&frames, &|| false, &mut |_| {}).expect("run").0;
    let text = p.manifest.text.clone().expect("text");
    let tok = PromptTokenizer::load(&p.dir, &text).expect("tokenizer");
    let t = r.text(&tok.encode(&["red".to_string()]).expect("ids"), 1).expect("text");
    let mut red = t.row(0).to_vec();
    l2_normalise(&mut red);
    let (scale, bias) = (p.manifest.logit_scale.expect("scale"), p.manifest.logit_bias.expect("bias"));
    let thresholds = FilterThresholds {
        threshold: 0.5,
        negative_threshold: 0.25,
        margin_threshold: 0.05,
        junk_threshold: 0.3,
        junk_margin_threshold: 0.05,
    };
    let kept: Vec<Option<bool>> = feats
        .iter()
        .map(|f| {
            f.as_ref()
                .and_then(|f| filter_frame(&[siglip_score(f, &red, scale, bias)], &[], &[], &thresholds))
                .map(|v| v.kept)
        })
        .collect();
    assert_eq!(kept, [Some(true), Some(false), None, Some(true)]);
    // Stopping is honoured between batches.
    assert!(matches!(run.image_features(&frames, &|| true, &mut |_| {}), Err(BatchError::Stopped)));
    // A missing frame file is an I/O failure, not an unreadable frame.
    let missing = [FrameRef { index: 9, path: "frames/nope.jpg".into() }];
    assert!(matches!(run.image_features(&missing, &|| false, &mut |_| {}), Err(BatchError::Io { .. })));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn thumbnail_dedup_drops_the_repeated_frame() {
    let (p, _) = load("thumbnail");
    let root = std::env::temp_dir().join(format!("dm-dedup-{}", std::process::id()));
    let dir = root.join("frames");
    std::fs::create_dir_all(&dir).expect("dir");
    let scene = |k: usize| image(64, 64, move |x, y| [((x * 4 + k * 40) % 256) as u8, (y * 4) as u8, 0]);
    let mut frames = Vec::new();
    for (i, k) in [0usize, 3, 0].iter().enumerate() {
        let name = format!("frame_{:06}.jpg", i + 1);
        std::fs::write(dir.join(&name), turbojpeg_bytes(&scene(*k))).expect("write");
        frames.push(FrameRef { index: i as u32 + 1, path: format!("frames/{name}") });
    }
    let sr = shared(&p);
    let run =
        BatchRun { runner: &sr, package: &p, data_root: &root, batch_size: 8, pooling: Pooling::Pooler, threads: 1 };
    let feats = run.image_features(&frames, &|| false, &mut |_| {}).expect("run").0;
    let rows: Vec<((i64, i64), Vec<f32>)> =
        feats.into_iter().enumerate().map(|(i, f)| ((7, i as i64 + 1), f.expect("readable"))).collect();
    let mut kept = KeptSet::new(p.manifest.embedding_dim);
    let v = dedup_video(&mut kept, &rows, 0.9).expect("dedup");
    assert_eq!(v.iter().map(|d| d.kept).collect::<Vec<_>>(), [true, true, false]);
    assert_eq!(v[2].most_similar.map(|m| m.0), Some((7, 1)));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn cuda_is_force_linked_when_the_libtorch_has_it() {
    use dataminer_agent::models::torch::cuda_linked;
    // Load libtorch (any call does), then find the directory it came from.
    let _ = select_device("cpu").expect("cpu");
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let cpu = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .expect("libtorch_cpu.so is mapped");
    let dir = std::path::Path::new(cpu).parent().expect("dir");
    // The PyPI wheel CI uses is a CUDA build: its CUDA part must be loaded although nothing
    // calls it directly (otherwise a GPU host would silently run on the CPU).
    assert_eq!(cuda_linked(), dir.join("libtorch_cuda.so").exists(), "libtorch in {}", dir.display());
}

#[test]
fn the_registry_refuses_a_broken_package() {
    use dataminer_agent::models::registry::Registry;
    // A copy of a good package with one byte of its model changed.
    let dir = std::env::temp_dir().join(format!("dm-broken-{}", std::process::id()));
    let pkg = dir.join("thumbnail");
    std::fs::create_dir_all(&pkg).expect("dir");
    for f in std::fs::read_dir(models_dir().join("thumbnail")).expect("read") {
        let f = f.expect("entry");
        std::fs::copy(f.path(), pkg.join(f.file_name())).expect("copy");
    }
    let good = Registry::new(dir.clone(), "cpu", Default::default()).expect("registry");
    assert_eq!(good.available().expect("list"), ["thumbnail"]);
    good.serve(&["thumbnail".to_string()]).expect("a good package serves");
    let mut bytes = std::fs::read(pkg.join("image.pt")).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(pkg.join("image.pt"), bytes).expect("write");
    let r = Registry::new(dir.clone(), "cpu", Default::default()).expect("registry");
    let e = r.serve(&["thumbnail".to_string()]).expect_err("broken package");
    assert!(e.contains("thumbnail") && e.contains("image.pt"), "{e}");
    let e = r.serve(&["absent".to_string()]).expect_err("missing package");
    assert!(e.contains("absent"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bfloat16_package_embeds_close_to_its_float32_twin() {
    // Same weights, exported with --dtype bfloat16: float32 in and out, bf16 inside.
    let (p32, r32) = load("dinov2-tiny");
    let (p16, r16) = load("dinov2-tiny-bf16");
    assert_eq!((p32.manifest.dtype.as_str(), p16.manifest.dtype.as_str()), ("float32", "bfloat16"));
    let imgs: Vec<Rgb8> =
        (0..4).map(|k| image(48, 40, move |x, y| [(x * 5 + k * 60) as u8, (y * 6) as u8, 90])).collect();
    let pooled = |p: &Package, r: &TorchRunner| match r.image(&pixels(p, &imgs), imgs.len()).expect("run") {
        ImageOutput::Embeddings { pooler, .. } => pooler,
        other => panic!("{other:?}"),
    };
    let (a, b) = (pooled(&p32, &r32), pooled(&p16, &r16));
    assert_eq!((a.rows, a.cols), (b.rows, b.cols));
    for i in 0..a.rows {
        let (mut x, mut y) = (a.row(i).to_vec(), b.row(i).to_vec());
        l2_normalise(&mut x);
        l2_normalise(&mut y);
        let cos: f32 = x.iter().zip(&y).map(|(u, v)| u * v).sum();
        assert!(cos > 0.99, "row {i}: cosine {cos}");
        assert_ne!(x, y, "bf16 computed exactly as f32: not a bf16 graph");
    }
}
