//! Videos through download and extract with every strategy, checked against literal frame
//! numbers and timestamps; failures (corrupt, truncated, not a video, live, redirects, SSRF)
//! end FAILED with the cause and touch nothing they must not.

use std::time::Duration;

use dataminer_tests::server::Canary;
use dataminer_tests::{media, Db};
use dataminer_wire::{ExtractionState, ProjectVideoState, VideoState};
use serde_json::json;

use crate::harness::{env, extraction, frames_dir};

both!(
    interval_frames_over_many_sources,
    full_disk_is_retryable_until_attempts_run_out,
    failures_name_the_cause_without_agent_paths,
    a_containers_claim_is_recorded_beside_the_stream
);

const SETTLE: Duration = Duration::from_secs(90);

async fn interval_frames_over_many_sources(db: Db) {
    let e = env(db, |_| {}).await;
    media::copy_fixture("cfr10.mp4", "cfr10-copy.mp4");
    let canary = Canary::start("127.0.0.1:0").await;
    let proxy = format!("http://127.0.0.1:{}", canary.port);
    e.media.redirect("r1", "/r2");
    e.media.redirect("r2", &e.media.url("redirected.mp4"));
    e.media.redirect("h1", "/h2");
    e.media.redirect("h2", "/h3");
    e.media.redirect("h3", "/h4");
    e.media.redirect("h4", "/cfr25.mp4");
    e.media.redirect("to-canary", &format!("http://127.0.0.1:{}/x.mp4", canary.port));
    e.media.redirect("to-metadata", "http://169.254.169.254/latest/meta-data/");
    let agent = e
        .agent("a1", &[("HTTP_PROXY", &proxy), ("HTTPS_PROXY", &proxy), ("ALL_PROXY", &proxy), ("http_proxy", &proxy)])
        .await;
    e.project("p", json!({"strategy": "interval_frames", "interval_frames": 7})).await;
    let names = [
        "cfr10.mp4",
        "cfr25.mp4",
        "audio.mp4",
        "r1",
        "cfr10-copy.mp4",
        "cfr10.mp4",
        "corrupt.mp4",
        "truncated.mp4",
        "not-a-video.mp4",
        "live.m3u8",
        "h1",
        "to-canary",
        "to-metadata",
        "missing.mp4",
        "audio-only.mp4",
    ];
    let urls: Vec<String> = names.iter().map(|n| e.media.url(n)).collect();
    let vids = e.submit(&urls, "p").await;
    assert_eq!(vids[0].id, vids[5].id, "the same URL is one video");
    assert!(!vids[5].new);
    let ids: Vec<i64> = vids.iter().map(|v| v.id).collect();
    let done = e.settle(&ids, SETTLE, &[&agent]).await;
    let by = |i: usize| &done[i];

    // (source frame, pts in ms) → the µs the harness reports.
    let ms = |v: &[(u64, i64)]| v.iter().map(|(f, t)| (*f, t * 1000)).collect::<Vec<_>>();
    assert_eq!(e.frames(by(0)), ms(&[(0, 0), (7, 700), (14, 1400), (21, 2100), (28, 2800)]));
    assert_eq!(
        e.frames(by(1)),
        ms(&[(0, 0), (7, 280), (14, 560), (21, 840), (28, 1120), (35, 1400), (42, 1680), (49, 1960)])
    );
    assert_eq!(e.frames(by(2)), ms(&[(0, 0), (7, 700), (14, 1400)]));
    assert_eq!(e.frames(by(3)), vec![(0, 0), (7, 583_333)], "served through two redirects");

    // ffprobe's facts, as recorded by the control plane.
    let v = &by(0).video;
    assert_eq!((v.duration_s, v.fps, v.width, v.height), (Some(3.0), Some(10.0), Some(160), Some(120)));
    assert_eq!((v.codec.as_deref(), v.start_time_s, v.stream_frames), (Some("h264"), Some(0.0), Some(30)));
    assert!(v.file_path.as_deref().is_some_and(|p| p.starts_with("videos/") && p.ends_with("/video.mp4")));

    // Identical content under another URL: downloaded, then linked to the first extraction.
    let (orig, copy) = (&by(0).video, &by(4).video);
    assert_eq!(copy.state, VideoState::Downloaded);
    assert_eq!(extraction(by(4)).state, ExtractionState::Extracted);
    assert_eq!(copy.sha256, orig.sha256);
    assert_eq!(copy.sha256.as_deref(), Some(media::sha256_of("cfr10.mp4").as_str()));
    assert_eq!(extraction(by(4)).id, extraction(by(0)).id, "one extraction for identical content and settings");
    // Each detail lists the extract tasks of the extractions it uses: the same one for both.
    let mut extracts: Vec<i64> = [by(0), by(4)]
        .iter()
        .flat_map(|d| d.tasks.iter().filter(|t| t.stage.as_str() == "extract").map(|t| t.id))
        .collect();
    extracts.sort_unstable();
    extracts.dedup();
    assert_eq!(extracts.len(), 1, "identical content is extracted once");
    assert_eq!(e.media.gets("cfr10.mp4").len(), 1, "the same URL submitted twice is downloaded once");

    // A download failure fails the video; an extract failure fails the extraction and the
    // project-videos using it (the video itself is downloaded).
    let failed = |i: usize, stage: &str, needle: &str| {
        let d = by(i);
        let (state, failed_stage, err) = if stage == "extract" {
            assert_eq!(d.video.state, VideoState::Downloaded, "{}", names[i]);
            let e = extraction(d);
            assert_eq!((e.state, e.frames_dir.as_deref()), (ExtractionState::Failed, None), "{}", names[i]);
            let p = &d.projects[0];
            (p.state == ProjectVideoState::Failed, p.failed_stage.clone(), p.error.clone().unwrap_or_default())
        } else {
            assert!(d.projects[0].extraction.is_none(), "{}", names[i]);
            (
                d.video.state == VideoState::Failed,
                d.video.failed_stage.clone(),
                d.video.error.clone().unwrap_or_default(),
            )
        };
        assert!(state, "{} should fail", names[i]);
        assert_eq!(failed_stage.as_deref(), Some(stage), "{}: {err:?}", names[i]);
        assert!(err.contains(needle), "{}: error {err:?} lacks {needle:?}", names[i]);
    };
    failed(6, "extract", "ffmpeg reported errors");
    failed(7, "extract", "ffmpeg reported errors");
    failed(8, "download", "not a readable video");
    failed(9, "download", "live or segmented stream");
    failed(10, "download", "more than 3 redirects");
    failed(11, "download", "not a globally routable address");
    failed(12, "download", "169.254.169.254");
    failed(13, "download", "HTTP 404");
    failed(14, "download", "no video stream");
    // Fatal failures are not retried.
    for (d, name) in done.iter().zip(names).skip(6) {
        let t = d.tasks.iter().find(|t| t.last_error.is_some()).expect("failed task");
        assert_eq!(t.attempts, 1, "{name}: fatal failure retried");
    }
    assert_eq!(canary.hits(), 0, "nothing may reach the canary (redirect target, or proxy from HTTP_PROXY)");

    // /status (text) lists where the frames are.
    let text = e.app.user(reqwest::Method::GET, "/status").header("accept", "text/plain").send().await.expect("status");
    let text = text.text().await.expect("text");
    let dir = frames_dir(by(0));
    assert!(
        text.contains(&format!("#{:<6}DOWNLOADED  ", ids[0])) && text.contains(&format!("5 frames in {dir}/")),
        "{text}"
    );

    let m = agent.metrics_text().await;
    assert!(m.contains("dataminer_agent_tasks_total{outcome=\"succeeded\",stage=\"extract\"} 4"), "{m}");
    assert!(m.contains("dataminer_agent_tasks_total{outcome=\"failed_fatal\",stage=\"download\"} 7"), "{m}");
    e.app.stop().await;
}

async fn full_disk_is_retryable_until_attempts_run_out(db: Db) {
    let e = env(db, |c| c.max_attempts = 3).await;
    // An agent that must keep more free space than any disk has.
    let agent = e.agent("full", &[("DATAMINER_MIN_FREE_BYTES", "1000000000000000000")]).await;
    e.project("p", json!({})).await;
    let id = e.submit(&[e.media.url("cfr10.mp4")], "p").await[0].id;
    let done = e.settle(&[id], SETTLE, &[&agent]).await;
    let v = &done[0].video;
    assert_eq!(v.state, VideoState::Failed);
    assert!(v.error.as_deref().is_some_and(|m| m.contains("not enough free space")), "{:?}", v.error);
    let t = done[0].tasks.iter().find(|t| t.stage.as_str() == "download").expect("download task");
    assert_eq!(t.attempts, 3, "a full disk is retried (another node may have room)");
    assert!(e.media.gets("cfr10.mp4").len() <= 3);
    e.app.stop().await;
}

async fn failures_name_the_cause_without_agent_paths(db: Db) {
    let e = env(db, |_| {}).await;
    media::put_fixture("empty.mp4", b"");
    let claim = media::claimed_duration_fixture();
    let agent = e.agent("a1", &[]).await;
    e.project("p", json!({})).await;
    let urls = [
        e.media.url("empty.mp4"),
        format!("http://localhost:{}/empty.mp4", e.media.port), // through yt-dlp
        e.media.url("not-a-video.mp4"),
        e.media.url(claim),
    ];
    let ids: Vec<i64> = e.submit(&urls, "p").await.iter().map(|v| v.id).collect();
    let done = e.settle(&ids, SETTLE, &[&agent]).await;
    let root = e.data.0.to_string_lossy().into_owned();
    let errors: Vec<String> = done
        .iter()
        .map(|d| {
            assert_eq!(d.video.state, VideoState::Failed, "{:?}", d.video);
            assert_eq!(d.video.failed_stage.as_deref(), Some("download"));
            let err = d.video.error.clone().unwrap_or_default();
            assert!(!err.contains(&root), "the agent's data root {root} shows in {err:?}");
            for t in &d.tasks {
                let last = t.last_error.clone().unwrap_or_default();
                assert!(!last.contains(&root), "the agent's data root {root} shows in the task's {last:?}");
            }
            err
        })
        .collect();
    assert!(errors[0].starts_with("empty response (Content-Length 0) from "), "{}", errors[0]);
    assert!(errors[1].starts_with("empty file from http://localhost:"), "{}", errors[1]);
    // ffprobe names the file it read: relative to the data root.
    assert!(errors[2].contains("not a readable video"), "{}", errors[2]);
    assert!(errors[2].contains(&format!(" videos/{}/", ids[2])), "{}", errors[2]);
    // Empty and over-the-limit files are not worth another attempt.
    for d in &done {
        let t = d.tasks.iter().find(|t| t.last_error.is_some()).expect("failed task");
        assert_eq!(t.attempts, 1, "{:?} retried", d.video.error);
    }
    assert_eq!(
        errors[3],
        "the container claims a duration of 4294967.3 s (49.7 days) for a video stream of 3.0 s; \
         the claim is more than the limit of 14400 s"
    );
    e.app.stop().await;
}

async fn a_containers_claim_is_recorded_beside_the_stream(db: Db) {
    let e = env(db, |_| {}).await;
    let claim = media::claimed_duration_fixture();
    let agent = e.agent("a1", &[("DATAMINER_MAX_VIDEO_DURATION_S", "5000000")]).await;
    e.project("p", json!({"interval_frames": 7})).await;
    let id = e.submit(&[e.media.url(claim)], "p").await[0].id;
    let done = e.settle(&[id], SETTLE, &[&agent]).await;
    let v = &done[0].video;
    assert_eq!(v.state, VideoState::Downloaded, "{:?}", v.error);
    assert_eq!(extraction(&done[0]).state, ExtractionState::Extracted);
    // The stream's real duration is the video's, the claim is recorded beside it; the frames
    // come from the real stream.
    assert_eq!((v.duration_s, v.container_duration_s), (Some(3.0), Some(4_294_967.295)));
    assert_eq!(e.frames(&done[0]), vec![(0, 0), (7, 700_000), (14, 1_400_000), (21, 2_100_000), (28, 2_800_000)]);
    let m = e.manifest(&done[0]);
    assert_eq!((m.source.duration_s, m.source.container_duration_s), (Some(3.0), Some(4_294_967.295)));
    e.app.stop().await;
}
