//! Where videos come from: yt-dlp for platform hosts (the real yt-dlp, generic extractor,
//! against the local server), and resumed direct downloads after a cut connection.

use std::time::Duration;

use dataminer_tests::{media, Db};
use dataminer_wire::{ExtractionState, VideoState};
use serde_json::json;

use crate::harness::{env, extraction};

both!(platform_url_goes_through_ytdlp, cut_download_resumes_with_if_range);

const SETTLE: Duration = Duration::from_secs(90);

async fn platform_url_goes_through_ytdlp(db: Db) {
    let e = env(db, |_| {}).await;
    let agent = e.agent("a1", &[]).await;
    e.project("p", json!({"interval_frames": 7})).await;
    let url = format!("http://localhost:{}/cfr10.mp4", e.media.port);
    let v = e.submit(&[url], "p").await[0].id;
    let done = e.settle(&[v], SETTLE, &[&agent]).await;
    let d = &done[0];
    assert_eq!(d.video.source_kind, "platform");
    assert_eq!(d.video.state, VideoState::Downloaded, "{:?}", d.video.error);
    assert_eq!(extraction(d).state, ExtractionState::Extracted);
    assert_eq!(d.video.sha256.as_deref(), Some(media::sha256_of("cfr10.mp4").as_str()));
    assert_eq!(e.frames(d), vec![(0, 0), (7, 700_000), (14, 1_400_000), (21, 2_100_000), (28, 2_800_000)]);
    let ua = e.media.gets("cfr10.mp4").first().and_then(|r| r.headers.get("user-agent").cloned()).unwrap_or_default();
    assert!(!ua.starts_with("dataminer-agent"), "fetched by yt-dlp, not the agent's HTTP client: {ua}");
    e.app.stop().await;
}

async fn cut_download_resumes_with_if_range(db: Db) {
    let e = env(db, |_| {}).await;
    let agent = e.agent("a1", &[("DATAMINER_RESUME_QUIET_MS", "0")]).await;
    e.project("p", json!({"interval_frames": 25})).await;

    // A connection cut after 10000 bytes: the retry asks for the rest with If-Range.
    e.media.cut_once("cfr25.mp4", 10_000);
    let a = e.submit(&[e.media.url("cfr25.mp4")], "p").await[0].id;
    let done = e.settle(&[a], SETTLE, &[&agent]).await;
    assert_eq!(done[0].video.sha256.as_deref(), Some(media::sha256_of("cfr25.mp4").as_str()));
    assert_eq!(e.frames(&done[0]), vec![(0, 0), (25, 1_000_000)]);
    let gets = e.media.gets("cfr25.mp4");
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].headers.get("range"), None);
    assert_eq!(gets[1].headers.get("range").map(String::as_str), Some("bytes=10000-"));
    assert!(gets[1].headers.get("if-range").is_some_and(|v| v.starts_with('"')), "strong ETag as If-Range");

    // A server that ignores ranges answers 200: the retry starts over and still gets it right.
    e.media.ignore_ranges(true);
    e.media.cut_once("audio.mp4", 5_000);
    let b = e.submit(&[e.media.url("audio.mp4")], "p").await[0].id;
    let done = e.settle(&[b], SETTLE, &[&agent]).await;
    assert_eq!(done[0].video.sha256.as_deref(), Some(media::sha256_of("audio.mp4").as_str()));
    assert_eq!(
        done[0].video.size_bytes,
        Some(std::fs::metadata(media::fixtures().join("audio.mp4")).expect("f").len() as i64)
    );
    let gets = e.media.gets("audio.mp4");
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[1].headers.get("range").map(String::as_str), Some("bytes=5000-"));
    e.app.stop().await;
}
