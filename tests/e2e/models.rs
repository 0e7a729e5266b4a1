//! The model stages through real processes (`models` build): the control plane and an agent
//! that serves download, extract and filter with the `meancolour` oracle package mine the red
//! frames of a video of colour segments, and `GET /v1/projects/{p}/frames` lists exactly them.

use std::time::{Duration, Instant};

use dataminer_tests::Db;
use dataminer_wire::{FramePage, ProjectVideoState};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::env;

both!(filter_mines_the_red_frames);

async fn filter_mines_the_red_frames(db: Db) {
    let e = env(db, |_| {}).await;
    let models = std::env::var("DATAMINER_TEST_MODELS_DIR").expect("DATAMINER_TEST_MODELS_DIR names the CI packages");
    let ld = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let agent = e
        .agent(
            "m1",
            &[
                ("DATAMINER_STAGES", "download,extract,filter"),
                ("DATAMINER_MODELS_DIR", models.as_str()),
                ("DATAMINER_DEVICE", "cpu"),
                ("LD_LIBRARY_PATH", ld.as_str()),
            ],
        )
        .await;
    // Every 5th frame of red 0–1 s, blue 1–2 s, red 2–3 s at 10 fps: source frames 0, 5 (red),
    // 10, 15 (blue), 20, 25 (red), i.e. manifest indices 1–6.
    let body = json!({"name": "p", "config": {"extract": {"interval_frames": 5},
        "filter": {"model": "meancolour", "positive_prompts": ["red"], "threshold": 0.5}}});
    let r = e.app.user(Method::POST, "/v1/projects").json(&body).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap_or_default());
    let id = e.submit(&[e.media.url("colours.mp4")], "p").await[0].id;
    let deadline = Instant::now() + Duration::from_secs(60);
    let pv = loop {
        let d = e.app.video(id).await;
        let pv = d.projects[0].clone();
        if !matches!(pv.state, ProjectVideoState::Pending | ProjectVideoState::Filtering) {
            break pv;
        }
        assert!(Instant::now() < deadline, "not filtered: {pv:?}\n{}", agent.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(pv.state, ProjectVideoState::Filtered, "{pv:?}\n{}", agent.log_text());
    assert_eq!((pv.frames_in, pv.frames_filtered), (Some(6), Some(4)));
    let page: FramePage = dataminer_tests::expect_json(
        e.app.user(Method::GET, "/v1/projects/p/frames").send().await.expect("send"),
        StatusCode::OK,
    )
    .await;
    let indices: Vec<i64> = page.items.iter().map(|f| f.frame_index).collect();
    assert_eq!(indices, [1, 2, 5, 6]);
    assert!(page.items.iter().all(|f| f.pos_max > 0.5 && f.best_prompt == 0 && f.video_id == id));
    let scores = e.data.0.join(pv.filter_dir.as_deref().expect("filter dir")).join("scores.npy");
    assert!(scores.exists(), "{}", scores.display());
    e.app.stop().await;
}
