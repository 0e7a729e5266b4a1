//! The filter stage end to end inside the agent (`models` build): a leased filter task over an
//! extraction's frames with the `meancolour` oracle keeps exactly the frames the rule keeps,
//! writes `scores.npy` and `kept.json`, counts unreadable frames, and fails fatally (naming
//! the cause) on a missing manifest or an unknown model.
#![cfg(feature = "models")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use dataminer_agent::config::Config;
use dataminer_agent::error::TaskError;
use dataminer_agent::metrics::Metrics;
use dataminer_agent::models::preprocess::{encode_jpeg, Rgb8};
use dataminer_agent::models::registry::Registry;
use dataminer_agent::stages::download::guard::Guard;
use dataminer_agent::stages::{run, Progress, StageContext};
use dataminer_wire::{FilterConfig, LeasedTask, Stage, StageResult, TaskInput};
use tokio_util::sync::CancellationToken;

fn models_dir() -> PathBuf {
    PathBuf::from(std::env::var("DATAMINER_TEST_MODELS_DIR").expect("DATAMINER_TEST_MODELS_DIR names the CI packages"))
}

/// Frames of solid colours (`None`: a corrupt file) and the extract manifest listing them.
fn extraction(root: &Path, colours: &[Option<[u8; 3]>]) -> String {
    let dir = root.join("frames_raw/5/2.1");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut frames = Vec::new();
    for (i, c) in colours.iter().enumerate() {
        let name = format!("frame_{:06}.jpg", i + 1);
        let bytes = match c {
            Some(c) => {
                let img = Rgb8 { width: 32, height: 24, data: c.repeat(32 * 24) };
                encode_jpeg(&img, 100).expect("jpeg")
            }
            None => b"\xff\xd8 broken".to_vec(),
        };
        std::fs::write(dir.join(&name), bytes).expect("frame");
        frames.push(serde_json::json!({"index": i + 1, "source_frame": i * 30, "pts_s": i as f64,
            "path": format!("frames_raw/5/2.1/{name}")}));
    }
    let manifest = serde_json::json!({
        "version": 1, "video_id": 5, "video_path": "videos/5/1.1/video.mp4",
        "settings": {"strategy": "interval_frames", "interval_frames": 30, "interval_seconds": 1.0,
                     "scene_threshold": 0.3, "diff_threshold": 30.0, "max_frames_per_video": 5000, "jpeg_quality": 95},
        "source": {"duration_s": 5.0, "fps": 30.0, "start_time_s": 0.0, "width": 32, "height": 24,
                   "frames_decoded": 150, "capped": false},
        "frames": frames
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).expect("manifest");
    "frames_raw/5/2.1/manifest.json".into()
}

fn context(root: &Path) -> StageContext {
    let cfg = Config::try_parse_from([
        "agent",
        "--data-root",
        root.to_str().expect("utf-8"),
        "--stages",
        "filter",
        "--device",
        "cpu",
        "--min-free-bytes",
        "0",
    ])
    .expect("config");
    let mut ctx = StageContext::new(Arc::new(cfg), Guard::system(&[]), Metrics::new().expect("metrics"));
    ctx.models = Some(Arc::new(Registry::new(models_dir(), "cpu", Default::default()).expect("registry")));
    ctx
}

fn task(manifest: &str, filter: FilterConfig) -> LeasedTask {
    LeasedTask {
        task_id: 9,
        stage: Stage::Filter,
        lease_token: 1,
        attempt: 1,
        max_attempts: 5,
        lease_ttl_ms: 30_000,
        time_limit_ms: 60_000,
        attempt_dir: "projects/p/frames_filtered/5/9.1".into(),
        input: TaskInput {
            video_id: 5,
            project_id: Some(1),
            project: Some("p".into()),
            manifest_path: Some(manifest.into()),
            filter: Some(filter),
            ..TaskInput::default()
        },
    }
}

fn red_filter() -> FilterConfig {
    FilterConfig {
        model: "meancolour".into(),
        batch_size: 2,
        threshold: 0.5,
        positive_prompts: vec!["red".into()],
        negative_prompts: vec!["blue".into()],
        negative_threshold: 0.5,
        margin_threshold: 0.05,
        ..FilterConfig::default()
    }
}

#[tokio::test]
async fn filter_keeps_exactly_the_frames_the_rule_keeps() {
    let root = std::env::temp_dir().join(format!("dm-filter-stage-{}", std::process::id()));
    let manifest =
        extraction(&root, &[Some([255, 0, 0]), Some([0, 0, 255]), None, Some([250, 4, 4]), Some([0, 255, 0])]);
    let ctx = context(&root);
    let r = run(&ctx, &task(&manifest, red_filter()), Arc::new(Progress::default()), CancellationToken::new())
        .await
        .expect("filter");
    let StageResult::Filter { output_dir, frames_in, frames_kept, frames, frames_unreadable, config_digest } = r else {
        panic!("not a filter result: {r:?}")
    };
    assert_eq!((frames_in, frames_kept, frames_unreadable), (5, 2, 1));
    assert_eq!(frames.iter().map(|f| f.frame_index).collect::<Vec<_>>(), [1, 4]);
    assert!(frames.iter().all(|f| f.best_prompt == 0 && f.pos_max > 0.5 && f.neg_max.is_some_and(|n| n < 0.5)));
    assert_eq!((frames[0].width, frames[0].height, frames[1].pts_s), (32, 24, 3.0));
    assert_eq!(config_digest.len(), 64);
    let out = root.join(&output_dir);
    let scores = std::fs::read(out.join("scores.npy")).expect("scores.npy");
    let (rows, cols, data) = dataminer_agent::models::npy::decode(&scores).expect("npy");
    assert_eq!((rows, cols), (5, 2));
    assert!(data[4].is_nan() && data[5].is_nan(), "the unreadable frame has no scores");
    assert!(data[0] > 0.5 && data[3] > 0.5, "blue frame scores high on the negative: {data:?}");
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("kept.json")).expect("kept")).expect("json");
    assert_eq!(kept.as_array().map(Vec::len), Some(2));
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn bad_inputs_fail_fatally_with_their_cause() {
    let root = std::env::temp_dir().join(format!("dm-filter-bad-{}", std::process::id()));
    let manifest = extraction(&root, &[Some([255, 0, 0])]);
    let ctx = context(&root);
    let fatal = |e: TaskError| match e {
        TaskError::Fatal(m) => m,
        other => panic!("not fatal: {other:?}"),
    };
    let e = run(&ctx, &task("frames_raw/5/none/manifest.json", red_filter()), Arc::default(), CancellationToken::new())
        .await
        .expect_err("missing manifest");
    assert!(fatal(e).contains("frames_raw/5/none/manifest.json"));
    let unknown = FilterConfig { model: "no-such-model".into(), ..red_filter() };
    let e = run(&ctx, &task(&manifest, unknown), Arc::default(), CancellationToken::new())
        .await
        .expect_err("unknown model");
    assert!(fatal(e).contains("no-such-model"));
    let embedder = FilterConfig { model: "thumbnail".into(), ..red_filter() };
    let e =
        run(&ctx, &task(&manifest, embedder), Arc::default(), CancellationToken::new()).await.expect_err("embedder");
    assert!(fatal(e).contains("not an image-text scorer"));
    let _ = std::fs::remove_dir_all(&root);
}
