//! Each extraction strategy against its written rule, with literal expected frames:
//! (source frame number, pts in µs).

use std::time::Duration;

use dataminer_tests::Db;
use serde_json::json;

use crate::harness::{env, frames_dir};

both!(interval_seconds_on_ntsc_vfr_and_offset_start, scene_and_diff_on_hard_cuts, frame_cap_and_quality);

const SETTLE: Duration = Duration::from_secs(90);

async fn interval_seconds_on_ntsc_vfr_and_offset_start(db: Db) {
    let e = env(db, |_| {}).await;
    let agent = e.agent("a1", &[]).await;
    e.project("half", json!({"strategy": "interval_seconds", "interval_seconds": 0.5})).await;
    e.project("third", json!({"strategy": "interval_seconds", "interval_seconds": 0.3})).await;
    let mut ids: Vec<i64> =
        e.submit(&[e.media.url("ntsc.mp4"), e.media.url("offset.mp4")], "half").await.iter().map(|v| v.id).collect();
    ids.extend(e.submit(&[e.media.url("vfr.mp4")], "third").await.iter().map(|v| v.id));
    let done = e.settle(&ids, SETTLE, &[&agent]).await;
    // 30000/1001 fps: frame k at k·1001/30000 s; the first frames at or past 0, 0.5, 1.0, 1.5 s.
    assert_eq!(e.frames(&done[0]), vec![(0, 0), (15, 500_500), (30, 1_001_000), (45, 1_501_500)]);
    // Starts at 5 s: pts − start_time decides; the manifest keeps the real pts.
    assert_eq!(e.frames(&done[1]), vec![(0, 5_000_000), (5, 5_500_000), (10, 6_000_000), (15, 6_500_000)]);
    // VFR (0.0–0.9 by 0.1, 1.0–1.8 by 0.2, 2.0–2.9 by 0.1): the first frame at or past k·0.3 s.
    // 1.5 s falls in the gap: the frame at 1.6 s is the first past it.
    assert_eq!(
        e.frames(&done[2]),
        vec![
            (0, 0),
            (3, 300_000),
            (6, 600_000),
            (9, 900_000),
            (11, 1_200_000),
            (13, 1_600_000),
            (14, 1_800_000),
            (16, 2_100_000),
            (19, 2_400_000),
            (22, 2_700_000)
        ]
    );
    let m = e.manifest(&done[1]);
    assert_eq!((done[1].video.start_time_s, done[1].video.duration_s), (Some(5.0), Some(2.0)));
    assert_eq!(m.source.start_time_s, 5.0);
    assert_eq!(m.source.frames_decoded, 20);
    e.app.stop().await;
}

async fn scene_and_diff_on_hard_cuts(db: Db) {
    let e = env(db, |_| {}).await;
    let agent = e.agent("a1", &[]).await;
    // Black, white, grey shots of 1 s at 10 fps: cuts at frames 10 and 20 (scene score 1.0).
    e.project("scene", json!({"strategy": "scene"})).await;
    // Luma 16 → 235 → 126: the cuts differ by 219 and 109, so a threshold of 150 keeps the
    // first cut only (and the first frame); frames within a shot differ by 0.
    e.project("diff", json!({"strategy": "diff", "diff_threshold": 150.0})).await;
    let a = e.submit(&[e.media.url("shots.mp4")], "scene").await[0].id;
    let b = e.submit(&[e.media.url("shots.mkv")], "diff").await[0].id;
    let done = e.settle(&[a, b], SETTLE, &[&agent]).await;
    assert_eq!(e.frames(&done[0]), vec![(0, 0), (10, 1_000_000), (20, 2_000_000)]);
    assert_eq!(e.frames(&done[1]), vec![(0, 0), (10, 1_000_000)]);
    // Matroska declares no frame count: the whole stream is still decoded, never guessed.
    assert_eq!(done[1].video.stream_frames, None);
    assert_eq!(e.manifest(&done[1]).source.frames_decoded, 30);
    e.app.stop().await;
}

async fn frame_cap_and_quality(db: Db) {
    let e = env(db, |_| {}).await;
    let agent = e.agent("a1", &[]).await;
    e.project("capped", json!({"interval_frames": 7, "max_frames_per_video": 3, "jpeg_quality": 100})).await;
    e.project("low", json!({"interval_frames": 25, "jpeg_quality": 1})).await;
    let a = e.submit(&[e.media.url("cfr25.mp4")], "capped").await[0].id;
    let b = e.submit(&[e.media.url("cfr10.mp4")], "low").await[0].id;
    let done = e.settle(&[a, b], SETTLE, &[&agent]).await;
    assert_eq!(e.frames(&done[0]), vec![(0, 0), (7, 280_000), (14, 560_000)]);
    assert!(e.manifest(&done[0]).source.capped);
    assert_eq!(e.frames(&done[1]), vec![(0, 0), (25, 2_500_000)]);
    // Quality 100 (qscale 2) makes a larger first frame than quality 1 (qscale 31).
    let size = |d: &dataminer_wire::VideoDetail| {
        let dir = e.data.0.join(frames_dir(d));
        std::fs::metadata(dir.join("frame_000001.jpg")).expect("frame").len()
    };
    assert!(size(&done[0]) > 2 * size(&done[1]), "{} vs {}", size(&done[0]), size(&done[1]));
    e.app.stop().await;
}
