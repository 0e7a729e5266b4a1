//! The filter's keep rule through real processes with the `meancolour` oracle, whose scores
//! are known by construction (`scripts/models/README.md`): on `colours.mp4` (red, blue, red
//! at 10 fps, every 5th frame: manifest frames 1–2 red, 3–4 blue, 5–6 red) a pure colour scores
//! 0.894932 against its own name and against `anything`, and sigmoid(−12) ≈ 6e-6 against a
//! far colour. Each rule (positive, negative, margin, junk, junk margin) gets literal kept
//! frames; then each strict inequality is tried at its boundary: a threshold equal to the
//! score the agent computed drops the frame, the next value below keeps it.

use dataminer_tests::Db;
use dataminer_wire::ProjectVideoState as S;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::env;
use crate::models::{create_project, frames, model_agent, wait_pv};

both!(each_rule_keeps_its_literal_frames, the_inequalities_are_strict_at_the_boundary);

const BUSY: &[S] = &[S::Pending, S::Filtering];

fn project(name: &str, filter: Value) -> Value {
    let mut f = json!({"model": "meancolour", "batch_size": 4});
    f.as_object_mut().expect("object").extend(filter.as_object().expect("object").clone());
    json!({"name": name, "config": {"extract": {"interval_frames": 5}, "filter": f}})
}

fn indices(page: &dataminer_wire::FramePage) -> Vec<i64> {
    page.items.iter().map(|f| f.frame_index).collect()
}

async fn each_rule_keeps_its_literal_frames(db: Db) {
    let e = env(db, |_| {}).await;
    let agent = model_agent(&e, "r1", "download,extract,filter").await;
    let cases: [(&str, Value, Vec<i64>); 6] = [
        ("positive", json!({"positive_prompts": ["red"], "threshold": 0.5}), vec![1, 2, 5, 6]),
        // Blue frames score 0.89 on the negative `blue`: not below 0.25.
        (
            "negative",
            json!({"positive_prompts": ["anything"], "negative_prompts": ["blue"], "threshold": 0.5,
                   "negative_threshold": 0.25, "margin_threshold": 0.05}),
            vec![1, 2, 5, 6],
        ),
        // Red frames pass the negative threshold (0.89 < 0.95) but beat `red` by ~0, not 0.5.
        (
            "margin",
            json!({"positive_prompts": ["anything"], "negative_prompts": ["red"], "threshold": 0.5,
                   "negative_threshold": 0.95, "margin_threshold": 0.5}),
            vec![3, 4],
        ),
        (
            "junk",
            json!({"positive_prompts": ["anything"], "junk_prompts": ["red"], "threshold": 0.5,
                   "junk_threshold": 0.3, "junk_margin_threshold": 0.05}),
            vec![3, 4],
        ),
        (
            "junkmargin",
            json!({"positive_prompts": ["anything"], "junk_prompts": ["blue"], "threshold": 0.5,
                   "junk_threshold": 0.95, "junk_margin_threshold": 0.5}),
            vec![1, 2, 5, 6],
        ),
        ("nothing", json!({"positive_prompts": ["yellow"], "threshold": 0.5}), vec![]),
    ];
    for (name, filter, _) in &cases {
        create_project(&e, project(name, filter.clone())).await;
    }
    let url = e.media.url("colours.mp4");
    let id = e.submit(std::slice::from_ref(&url), cases[0].0).await[0].id;
    for (name, ..) in &cases[1..] {
        assert_eq!(e.submit(std::slice::from_ref(&url), name).await[0].id, id);
    }
    for (name, filter, expected) in &cases {
        let pv = wait_pv(&e, id, name, BUSY, &[&agent]).await;
        let want = if expected.is_empty() { S::FilteredEmpty } else { S::Filtered };
        assert_eq!(pv.state, want, "{name}: {pv:?}\n{}", agent.log_text());
        assert_eq!((pv.frames_in, pv.frames_filtered), (Some(6), Some(expected.len() as i64)), "{name}");
        let page = frames(&e, name, "").await;
        assert_eq!(&indices(&page), expected, "{name} with {filter}");
    }
    // The rows carry the scores the rule saw.
    let neg = frames(&e, "negative", "").await;
    assert!(neg.items.iter().all(|f| f.pos_max > 0.89 && f.neg_max.is_some_and(|n| n < 1e-4)), "{neg:?}");
    let junk = frames(&e, "junk", "").await;
    assert!(junk.items.iter().all(|f| f.junk_max.is_some_and(|j| j < 1e-4) && f.neg_max.is_none()), "{junk:?}");
    e.app.stop().await;
}

/// Puts `filter` into project `name`'s config, re-runs its filter and returns the kept frames.
async fn refilter(
    e: &crate::harness::Env,
    name: &str,
    id: i64,
    filter: Value,
    agent: &crate::harness::Agent,
) -> Vec<i64> {
    let config = project(name, filter)["config"].clone();
    let r = e.app.user(Method::PUT, &format!("/v1/projects/{name}/config")).json(&config).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap_or_default());
    let r =
        e.app.user(Method::POST, &format!("/v1/projects/{name}/rerun")).json(&json!({"from": "filter"})).send().await;
    let r = r.expect("send");
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap_or_default());
    let pv = wait_pv(e, id, name, BUSY, &[agent]).await;
    assert!(matches!(pv.state, S::Filtered | S::FilteredEmpty), "{pv:?}");
    indices(&frames(e, name, "").await)
}

async fn the_inequalities_are_strict_at_the_boundary(db: Db) {
    let e = env(db, |_| {}).await;
    let agent = model_agent(&e, "r2", "download,extract,filter").await;
    create_project(&e, project("b", json!({"positive_prompts": ["red"], "threshold": 0.5}))).await;
    let id = e.submit(&[e.media.url("colours.mp4")], "b").await[0].id;
    let pv = wait_pv(&e, id, "b", BUSY, &[&agent]).await;
    assert_eq!(pv.state, S::Filtered, "{pv:?}\n{}", agent.log_text());
    let first = frames(&e, "b", "").await;
    assert_eq!(indices(&first), [1, 2, 5, 6]);
    // The agent compares its f32 score, widened, with the f64 threshold.
    let score = |f: &dataminer_wire::FrameView| f64::from(f.pos_max as f32);
    let low = first.items.iter().map(score).fold(f64::INFINITY, f64::min);
    let above_low: Vec<i64> = first.items.iter().filter(|f| score(f) > low).map(|f| f.frame_index).collect();
    // threshold == the lowest kept score: the frames with exactly that score go.
    let at = refilter(&e, "b", id, json!({"positive_prompts": ["red"], "threshold": low}), &agent).await;
    assert_eq!(at, above_low, "threshold {low}");
    assert!(at.len() < 4);
    let below = refilter(&e, "b", id, json!({"positive_prompts": ["red"], "threshold": low - 1e-12}), &agent).await;
    assert_eq!(below, [1, 2, 5, 6]);
    // negative_threshold == the kept frames' negative score (`blue` on red frames): dropped.
    let neg = refilter(
        &e,
        "b",
        id,
        json!({"positive_prompts": ["red"], "negative_prompts": ["blue"], "threshold": 0.5,
               "negative_threshold": 0.25, "margin_threshold": 0.05}),
        &agent,
    )
    .await;
    assert_eq!(neg, [1, 2, 5, 6]);
    let rows = frames(&e, "b", "").await;
    let n = |f: &dataminer_wire::FrameView| f64::from(f.neg_max.expect("neg_max") as f32);
    let neg_low = rows.items.iter().map(n).fold(f64::INFINITY, f64::min);
    let neg_high = rows.items.iter().map(n).fold(f64::NEG_INFINITY, f64::max);
    let below_high: Vec<i64> = rows.items.iter().filter(|f| n(f) < neg_high).map(|f| f.frame_index).collect();
    let at = refilter(
        &e,
        "b",
        id,
        json!({"positive_prompts": ["red"], "negative_prompts": ["blue"], "threshold": 0.5,
               "negative_threshold": neg_high, "margin_threshold": 0.05}),
        &agent,
    )
    .await;
    assert_eq!(at, below_high, "negative_threshold {neg_high} (lowest {neg_low})");
    // margin_threshold == pos − neg of a frame (as the agent computes it, in f64): dropped.
    let m = |f: &dataminer_wire::FrameView| score(f) - n(f);
    let margin_low = rows.items.iter().map(m).fold(f64::INFINITY, f64::min);
    let above: Vec<i64> = rows.items.iter().filter(|f| m(f) > margin_low).map(|f| f.frame_index).collect();
    let at = refilter(
        &e,
        "b",
        id,
        json!({"positive_prompts": ["red"], "negative_prompts": ["blue"], "threshold": 0.5,
               "negative_threshold": 0.25, "margin_threshold": margin_low}),
        &agent,
    )
    .await;
    assert_eq!(at, above, "margin_threshold {margin_low}");
    e.app.stop().await;
}
