//! The model stages through real processes (`models` build): the control plane and an agent
//! that serves download, extract, filter and dedup with the oracle packages mine the red frames
//! of a video of colour segments (`GET /v1/projects/{p}/frames` lists exactly them), and drop a
//! second video's repeated frames, each naming the kept frame it repeats.

use std::time::{Duration, Instant};

use dataminer_tests::Db;
use dataminer_wire::{FramePage, ProjectVideoState};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::env;

both!(
    filter_mines_the_red_frames,
    dedup_drops_a_second_videos_repeated_frames,
    dedup_drops_a_shared_scene_and_keeps_a_near_one
);

/// The states a project-video passes before its dedup has finished.
pub const DEDUP_BUSY: [ProjectVideoState; 4] = [
    ProjectVideoState::Pending,
    ProjectVideoState::Filtering,
    ProjectVideoState::Filtered,
    ProjectVideoState::Deduping,
];

/// An agent of the `models` build serving `stages` with the CI packages on the CPU.
pub async fn model_agent(e: &crate::harness::Env, name: &str, stages: &str) -> crate::harness::Agent {
    model_agent_with(e, name, stages, &[]).await
}

/// The CI packages' directory.
pub fn models_dir() -> String {
    std::env::var("DATAMINER_TEST_MODELS_DIR").expect("DATAMINER_TEST_MODELS_DIR names the CI packages")
}

/// [`model_agent`] with more environment (test hooks, a subset of the packages).
pub async fn model_agent_with(
    e: &crate::harness::Env,
    name: &str,
    stages: &str,
    extra: &[(&str, &str)],
) -> crate::harness::Agent {
    let models = models_dir();
    let ld = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let mut env = vec![
        ("DATAMINER_STAGES", stages),
        ("DATAMINER_MODELS_DIR", models.as_str()),
        ("DATAMINER_DEVICE", "cpu"),
        ("LD_LIBRARY_PATH", ld.as_str()),
    ];
    env.extend_from_slice(extra);
    e.agent(name, &env).await
}

/// Creates a project from its JSON body (201 expected).
pub async fn create_project(e: &crate::harness::Env, body: serde_json::Value) {
    let r = e.app.user(Method::POST, "/v1/projects").json(&body).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap_or_default());
}

/// Waits until video `id`'s entry in `project` leaves the states in `busy`.
pub async fn wait_pv(
    e: &crate::harness::Env,
    id: i64,
    project: &str,
    busy: &[ProjectVideoState],
    agents: &[&crate::harness::Agent],
) -> dataminer_wire::ProjectVideoView {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let d = e.app.video(id).await;
        let pv = d.projects.iter().find(|p| p.project == project).expect("project-video").clone();
        if !busy.contains(&pv.state) {
            return pv;
        }
        let logs: Vec<String> = agents.iter().map(|a| a.log_text()).collect();
        assert!(Instant::now() < deadline, "still {:?}: {pv:?}\n{}", pv.state, logs.join("\n"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One page of `GET /v1/projects/{project}/frames?{query}`.
pub async fn frames(e: &crate::harness::Env, project: &str, query: &str) -> FramePage {
    let r = e.app.user(Method::GET, &format!("/v1/projects/{project}/frames?{query}")).send().await.expect("send");
    dataminer_tests::expect_json::<FramePage>(r, StatusCode::OK).await
}

async fn filter_mines_the_red_frames(db: Db) {
    let e = env(db, |_| {}).await;
    let agent = model_agent(&e, "m1", "download,extract,filter").await;
    // Every 5th frame of red 0–1 s, blue 1–2 s, red 2–3 s at 10 fps: source frames 0, 5 (red),
    // 10, 15 (blue), 20, 25 (red), i.e. manifest indices 1–6.
    let body = json!({"name": "p", "config": {"extract": {"interval_frames": 5},
        "filter": {"model": "meancolour", "positive_prompts": ["red"], "threshold": 0.5}}});
    create_project(&e, body).await;
    let id = e.submit(&[e.media.url("colours.mp4")], "p").await[0].id;
    let pv = wait_pv(&e, id, "p", &[ProjectVideoState::Pending, ProjectVideoState::Filtering], &[&agent]).await;
    assert_eq!(pv.state, ProjectVideoState::Filtered, "{pv:?}\n{}", agent.log_text());
    assert_eq!((pv.frames_in, pv.frames_filtered), (Some(6), Some(4)));
    let page = frames(&e, "p", "").await;
    let indices: Vec<i64> = page.items.iter().map(|f| f.frame_index).collect();
    assert_eq!(indices, [1, 2, 5, 6]);
    assert!(page.items.iter().all(|f| f.pos_max > 0.5 && f.best_prompt == 0 && f.video_id == id));
    let scores = e.data.0.join(pv.filter_dir.as_deref().expect("filter dir")).join("scores.npy");
    assert!(scores.exists(), "{}", scores.display());
    e.app.stop().await;
}

/// Two URLs with the same bytes in one project: the second video's frames are all
/// duplicates of kept frames of the first (same extraction); a frame whose identical twin was
/// kept names that twin with cosine 1.
async fn dedup_drops_a_second_videos_repeated_frames(db: Db) {
    let e = env(db, |_| {}).await;
    let agent = model_agent(&e, "m2", "download,extract,filter,dedup").await;
    let body = json!({"name": "d", "config": {"extract": {"interval_frames": 10},
        "filter": {"model": "meancolour", "positive_prompts": ["anything"], "threshold": 0.5},
        "dedup": {"model": "thumbnail", "threshold": 0.9}}});
    create_project(&e, body).await;
    let busy = DEDUP_BUSY;
    let first = e.submit(&[e.media.url("cfr10.mp4")], "d").await[0].id;
    let a = wait_pv(&e, first, "d", &busy, &[&agent]).await;
    assert_eq!(a.state, ProjectVideoState::Deduped, "{a:?}\n{}", agent.log_text());
    assert_eq!((a.frames_filtered, a.kept_seq), (Some(3), Some(1)));
    let copy = format!("http://localhost:{}/cfr10.mp4", e.media.port);
    let second = e.submit(&[copy], "d").await[0].id;
    let b = wait_pv(&e, second, "d", &busy, &[&agent]).await;
    assert_eq!((b.state, b.frames_deduped, b.kept_seq), (ProjectVideoState::Complete, Some(0), None), "{b:?}");
    let kept: Vec<i64> =
        frames(&e, "d", &format!("state=kept&video={first}")).await.items.iter().map(|f| f.frame_index).collect();
    assert!(!kept.is_empty() && Some(kept.len() as i64) == a.frames_deduped, "{kept:?} vs {a:?}");
    let dups = frames(&e, "d", &format!("state=duplicate&video={second}")).await;
    assert_eq!(dups.items.len(), 3, "{dups:?}");
    for f in &dups.items {
        let of = f.duplicate_of.expect("duplicate_of");
        assert!(of.video_id == first && kept.contains(&of.frame_index), "not a kept frame of the first video: {f:?}");
        if kept.contains(&f.frame_index) {
            assert_eq!(of.frame_index, f.frame_index, "{f:?}");
            assert!(f.similarity.is_some_and(|s| s > 0.999), "{f:?}");
        } else {
            assert!(f.similarity.is_some_and(|s| s >= 0.9), "{f:?}");
        }
    }
    e.app.stop().await;
}

/// Two videos sharing a scene, the second submitted once the first is deduplicated: the
/// shared red shot is dropped naming the first video's kept frame, while a red shot of another
/// layout (the same colour for the filter, below the cosine threshold for the embedder) is
/// kept. Frames (one per second): shots-a = red box top-left ×2, lime ×2, red box bottom-right
/// ×2; shots-b = blue ×2, red box top-left ×2, red box centre ×2.
async fn dedup_drops_a_shared_scene_and_keeps_a_near_one(db: Db) {
    let e = env(db, |_| {}).await;
    let agent = model_agent(&e, "m3", "download,extract,filter,dedup").await;
    let body = json!({"name": "s", "config": {"extract": {"interval_frames": 10},
        "filter": {"model": "meancolour", "positive_prompts": ["red"], "threshold": 0.5},
        "dedup": {"model": "thumbnail", "threshold": 0.9}}});
    create_project(&e, body).await;
    let busy = DEDUP_BUSY;
    let a = e.submit(&[e.media.url("shots-a.mp4")], "s").await[0].id;
    let pa = wait_pv(&e, a, "s", &busy, &[&agent]).await;
    assert_eq!(
        (pa.state, pa.frames_filtered, pa.frames_deduped),
        (ProjectVideoState::Deduped, Some(4), Some(2)),
        "{pa:?}"
    );
    let b = e.submit(&[e.media.url("shots-b.mp4")], "s").await[0].id;
    let pb = wait_pv(&e, b, "s", &busy, &[&agent]).await;
    assert_eq!(
        (pb.state, pb.frames_filtered, pb.frames_deduped),
        (ProjectVideoState::Deduped, Some(4), Some(1)),
        "{pb:?}"
    );
    let kept = frames(&e, "s", "state=kept").await;
    let kept: Vec<(i64, i64)> = kept.items.iter().map(|f| (f.video_id, f.frame_index)).collect();
    assert_eq!(kept, [(a, 1), (a, 5), (b, 5)]);
    let dups = frames(&e, "s", "state=duplicate").await;
    let dups: Vec<((i64, i64), (i64, i64))> = dups
        .items
        .iter()
        .map(|f| {
            assert!(f.similarity.is_some_and(|s| s >= 0.9), "{f:?}");
            let of = f.duplicate_of.expect("duplicate_of");
            ((f.video_id, f.frame_index), (of.video_id, of.frame_index))
        })
        .collect();
    assert_eq!(dups, [((a, 2), (a, 1)), ((a, 6), (a, 5)), ((b, 3), (a, 1)), ((b, 4), (a, 1)), ((b, 6), (b, 5))]);
    e.app.stop().await;
}
