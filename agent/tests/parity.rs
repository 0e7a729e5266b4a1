//! Parity with the reference: the Rust path (libjpeg-turbo decode, Pillow-exact resize,
//! libtorch) against `scripts/models/reference.py` (PIL, transformers' image processor,
//! PyTorch) on the same package and the same ffmpeg-made frames: scores and embeddings agree
//! within 1e-3 and the keep/drop decisions are identical. The outputs must also vary across
//! frames by far more than that, so a constant model cannot pass.
#![cfg(feature = "models")]

use std::path::{Path, PathBuf};
use std::process::Command;

use dataminer_agent::models::batch::{siglip_score, BatchRun, FrameRef, Pooling};
use dataminer_agent::models::manifest::Package;
use dataminer_agent::models::prompts::PromptTokenizer;
use dataminer_agent::models::rules::{dedup_video, filter_frame, l2_normalise, FilterThresholds, KeptSet};
use dataminer_agent::models::runner::ModelRunner;
use dataminer_agent::models::shared::SharedRunner;
use dataminer_agent::models::torch::{select_device, TorchRunner};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn models_dir() -> PathBuf {
    PathBuf::from(std::env::var("DATAMINER_TEST_MODELS_DIR").expect("DATAMINER_TEST_MODELS_DIR names the CI packages"))
}

/// Frames the way the extract stage lays them out: JPEGs plus its manifest.json.
fn frames(root: &Path) -> (PathBuf, Vec<FrameRef>) {
    let dir = root.join("frames_raw/1/1.1");
    std::fs::create_dir_all(&dir).expect("dir");
    let st = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x96:rate=4:duration=2", "-q:v", "3"])
        .arg(dir.join("frame_%06d.jpg"))
        .status()
        .expect("run ffmpeg");
    assert!(st.success());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("read")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jpg"))
        .collect();
    names.sort();
    let refs: Vec<FrameRef> = names
        .iter()
        .enumerate()
        .map(|(i, n)| FrameRef { index: i as u32 + 1, path: format!("frames_raw/1/1.1/{n}") })
        .collect();
    let manifest = serde_json::json!({
        "version": 1, "video_id": 1, "video_path": "videos/1/1.1/video.mp4",
        "settings": {"strategy": "interval_frames", "interval_frames": 1, "interval_seconds": 1.0,
                     "scene_threshold": 0.3, "diff_threshold": 30.0, "max_frames_per_video": 5000, "jpeg_quality": 95},
        "source": {"duration_s": 2.0, "fps": 4.0, "start_time_s": 0.0, "width": 160, "height": 96,
                   "frames_decoded": refs.len(), "capped": false},
        "frames": refs.iter().map(|f| serde_json::json!({"index": f.index, "source_frame": f.index - 1,
                   "pts_s": f64::from(f.index - 1) * 0.25, "path": f.path})).collect::<Vec<_>>()
    });
    let mpath = dir.join("manifest.json");
    std::fs::write(&mpath, manifest.to_string()).expect("manifest");
    (mpath, refs)
}

fn reference(args: &[&str]) -> serde_json::Value {
    let out = Command::new(std::env::var("DATAMINER_TEST_PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(repo().join("scripts/models/reference.py"))
        .args(args)
        .output()
        .expect("run reference.py");
    assert!(out.status.success(), "reference.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("reference JSON")
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

fn load(name: &str) -> (Package, TorchRunner) {
    let p = Package::load(&models_dir(), name).unwrap_or_else(|e| panic!("{e}"));
    let r = TorchRunner::load(&p, select_device("cpu").expect("cpu")).unwrap_or_else(|e| panic!("{e}"));
    (p, r)
}

/// The package's shared runner (a second copy of the model, on its own thread).
fn shared(p: &Package) -> SharedRunner {
    let r = TorchRunner::load(p, select_device("cpu").expect("cpu")).unwrap_or_else(|e| panic!("{e}"));
    let per = 3 * p.manifest.image.height as usize * p.manifest.image.width as usize;
    SharedRunner::start(&p.manifest.name, std::sync::Arc::new(r), per, None).expect("runner thread")
}

#[test]
fn filter_scores_and_decisions_match_the_reference() {
    let root = std::env::temp_dir().join(format!("dm-parity-f-{}", std::process::id()));
    let (manifest, refs) = frames(&root);
    let (p, r) = load("siglip2-tiny");
    let positive = ["a red car".to_string(), "a street at night".to_string()];
    let negative = ["a dog".to_string()];
    let sr = shared(&p);
    let run =
        BatchRun { runner: &sr, package: &p, data_root: &root, batch_size: 3, pooling: Pooling::Pooler, threads: 2 };
    let feats = run.image_features(&refs, &|| false, &mut |_| {}).expect("run").0;
    let tok = PromptTokenizer::load(&p.dir, p.manifest.text.as_ref().expect("text")).expect("tokenizer");
    let prompts: Vec<String> = positive.iter().chain(&negative).cloned().collect();
    let t = r.text(&tok.encode(&prompts).expect("ids"), prompts.len()).expect("text");
    let texts: Vec<Vec<f32>> = (0..t.rows)
        .map(|i| {
            let mut v = t.row(i).to_vec();
            l2_normalise(&mut v);
            v
        })
        .collect();
    let (scale, bias) = (p.manifest.logit_scale.expect("scale"), p.manifest.logit_bias.expect("bias"));
    // Thresholds between the observed scores, so the decision is not the same for every frame.
    let scores: Vec<Vec<f32>> = feats
        .iter()
        .map(|f| texts.iter().map(|t| siglip_score(f.as_ref().expect("readable"), t, scale, bias)).collect())
        .collect();
    let mut pos: Vec<f32> = scores.iter().map(|s| s[0].max(s[1])).collect();
    pos.sort_by(f32::total_cmp);
    let threshold = f64::from(pos[pos.len() / 2] + pos[pos.len() / 2 - 1]) / 2.0;
    let th = FilterThresholds {
        threshold,
        negative_threshold: 1.0,
        margin_threshold: -1.0,
        junk_threshold: 1.0,
        junk_margin_threshold: -1.0,
    };
    let reference = reference(&[
        "--package",
        p.dir.to_str().expect("utf-8"),
        "--frames",
        manifest.to_str().expect("utf-8"),
        "--data-root",
        root.to_str().expect("utf-8"),
        "--positive",
        &positive[0],
        "--positive",
        &positive[1],
        "--negative",
        &negative[0],
        "--threshold",
        &threshold.to_string(),
        "--negative-threshold",
        "1.0",
        "--margin-threshold",
        "-1.0",
    ]);
    let rframes = reference["frames"].as_array().expect("frames");
    assert_eq!(rframes.len(), refs.len());
    let mut kept_both = (0, 0);
    for (i, rf) in rframes.iter().enumerate() {
        let want = floats(&rf["scores"]);
        for (a, b) in scores[i].iter().zip(&want) {
            assert!((a - b).abs() < 1e-3, "frame {}: rust {:?} vs reference {want:?}", i + 1, scores[i]);
        }
        let v = filter_frame(&scores[i][..2], &scores[i][2..], &[], &th).expect("verdict");
        assert_eq!(Some(v.kept), rf["kept"].as_bool(), "frame {}", i + 1);
        if v.kept {
            kept_both.0 += 1;
        } else {
            kept_both.1 += 1;
        }
    }
    assert!(kept_both.0 > 0 && kept_both.1 > 0, "the threshold splits the frames: {kept_both:?}");
    let spread = feats
        .iter()
        .map(|f| f.as_ref().expect("readable")[0])
        .fold((f32::MAX, f32::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    assert!(spread.1 - spread.0 > 1e-2, "image features barely vary across frames: {spread:?}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn dedup_embeddings_and_decisions_match_the_reference() {
    let root = std::env::temp_dir().join(format!("dm-parity-d-{}", std::process::id()));
    let (manifest, refs) = frames(&root);
    let (p, _) = load("dinov2-tiny");
    for (pooling, name) in
        [(Pooling::Pooler, "pooler"), (Pooling::HiddenMean, "hidden_mean"), (Pooling::HiddenCls, "hidden_cls")]
    {
        let sr = shared(&p);
        let run = BatchRun { runner: &sr, package: &p, data_root: &root, batch_size: 4, pooling, threads: 2 };
        let feats = run.image_features(&refs, &|| false, &mut |_| {}).expect("run").0;
        let rows: Vec<((i64, i64), Vec<f32>)> =
            feats.into_iter().enumerate().map(|(i, f)| ((1, i as i64 + 1), f.expect("readable"))).collect();
        // A threshold between the closest and the farthest pair, so some frames drop.
        let mut sims = Vec::new();
        for i in 0..rows.len() {
            for j in 0..i {
                sims.push(rows[i].1.iter().zip(&rows[j].1).map(|(a, b)| a * b).sum::<f32>());
            }
        }
        sims.sort_by(f32::total_cmp);
        // Midway between two observed cosines: the two sides' cosines differ by ~1e-7, so a
        // threshold equal to an observed one could fall either way.
        let q = sims.len() * 3 / 4;
        let threshold = (f64::from(sims[q]) + f64::from(sims[q + 1])) / 2.0;
        let mut kept = KeptSet::new(rows[0].1.len());
        let ours = dedup_video(&mut kept, &rows, threshold).expect("dedup");
        let reference = reference(&[
            "--package",
            p.dir.to_str().expect("utf-8"),
            "--frames",
            manifest.to_str().expect("utf-8"),
            "--data-root",
            root.to_str().expect("utf-8"),
            "--embedding",
            name,
            "--threshold",
            &threshold.to_string(),
        ]);
        let rframes = reference["frames"].as_array().expect("frames");
        for (i, rf) in rframes.iter().enumerate() {
            let want = floats(&rf["embedding"]);
            let diff = rows[i].1.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff < 1e-3, "{name} frame {}: embeddings differ by {diff}", i + 1);
            assert_eq!(Some(ours[i].kept), rf["kept"].as_bool(), "{name} frame {}", i + 1);
        }
        assert!(ours.iter().any(|d| d.kept) && ours.iter().any(|d| !d.kept), "{name}: the threshold splits the frames");
        assert!(sims[0] < 0.999, "{name}: embeddings barely vary across frames");
    }
    let _ = std::fs::remove_dir_all(&root);
}
