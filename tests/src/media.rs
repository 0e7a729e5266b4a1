//! Test videos made by the real ffmpeg, once per test process, with known frame counts and
//! timestamps (the expected values in the tests are worked out from these recipes).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Bump when a recipe changes, so a stale set is not reused.
const RECIPES: u32 = 7;

/// Directory holding every fixture, generated once per machine and recipe version (into a
/// private directory renamed into place, so concurrent test processes never see half a set).
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dataminer-media-v{RECIPES}"));
        if !dir.join("complete").exists() {
            let tmp = std::env::temp_dir().join(format!("dataminer-media-v{RECIPES}.{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).expect("fixture dir");
            generate(&tmp);
            std::fs::write(tmp.join("complete"), b"").expect("marker");
            if std::fs::rename(&tmp, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&tmp); // another process won the race
            }
        }
        dir
    })
}

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(args)
        .output()
        .expect("run ffmpeg (install it: apt-get install ffmpeg)");
    assert!(out.status.success(), "ffmpeg {:?} failed: {}", args, String::from_utf8_lossy(&out.stderr));
}

fn src(size: &str, rate: &str, secs: &str) -> String {
    format!("testsrc2=size={size}:rate={rate}:duration={secs}")
}

fn generate(d: &Path) {
    let p = |n: &str| d.join(n).to_string_lossy().into_owned();
    let enc = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"];
    let video = |name: &str, lavfi: &str, extra: &[&str]| {
        let mut a = vec!["-f", "lavfi", "-i", lavfi];
        a.extend_from_slice(&enc);
        a.extend_from_slice(extra);
        let out = p(name);
        a.push(&out);
        ffmpeg(&a);
    };
    // 10 fps, 3 s: 30 frames, pts k/10.
    video("cfr10.mp4", &src("160x120", "10", "3"), &[]);
    // Colour segments for the model stages' oracles, 10 fps: red 0–1 s, blue 1–2 s, red again
    // 2–3 s (the same scene as the first: a duplicate for dedup).
    video(
        "colours.mp4",
        "color=c=red:size=64x48:rate=10:duration=1[a];color=c=blue:size=64x48:rate=10:duration=1[b];\
         color=c=red:size=64x48:rate=10:duration=1[c];[a][b][c]concat=n=3:v=1:a=0",
        &[],
    );
    // Shots for dedup, 10 fps, 2 s each, 160x120: a red shot is red with a dark-red
    // (200,0,0) 80x60 box (mean colour near red for the meancolour oracle; the box's place is
    // what the thumbnail embedder sees). shots-a: red box top-left, lime, red box bottom-right.
    // shots-b: blue, the top-left red shot again (a shared scene), red box in the centre.
    let shot = |c: &str, boxed: Option<(u32, u32)>, label: &str| {
        let b = boxed.map(|(x, y)| format!(",drawbox=x={x}:y={y}:w=80:h=60:color=0xC80000:t=fill")).unwrap_or_default();
        format!("color=c={c}:size=160x120:rate=10:duration=2{b}[{label}]")
    };
    let three = |a: String, b: String, c: String| format!("{a};{b};{c};[a][b][c]concat=n=3:v=1:a=0");
    video(
        "shots-a.mp4",
        &three(shot("red", Some((0, 0)), "a"), shot("lime", None, "b"), shot("red", Some((80, 60)), "c")),
        &[],
    );
    video(
        "shots-b.mp4",
        &three(shot("blue", None, "a"), shot("red", Some((0, 0)), "b"), shot("red", Some((40, 30)), "c")),
        &[],
    );
    // 25 fps, 2 s: 50 frames, pts k/25.
    video("cfr25.mp4", &src("320x240", "25", "2"), &[]);
    // 30000/1001 fps, 2 s: 60 frames, pts k·1001/30000.
    video("ntsc.mp4", &src("64x48", "30000/1001", "2"), &[]);
    // 12 fps, 1 s: 12 frames (served only through redirects).
    video("redirected.mp4", &src("96x64", "12", "1"), &[]);
    // Variable frame rate: the 10 fps clip with the odd frames of second 1 removed: 25 frames
    // at 0.0–0.9, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0–2.9.
    video(
        "vfr.mp4",
        &src("160x120", "10", "3"),
        &["-vf", "select='lt(n\\,10)+gte(n\\,20)+between(n\\,10\\,19)*not(mod(n\\,2))'", "-fps_mode", "vfr"],
    );
    // Starts at 5 s: 10 fps, 2 s, pts 5.0 + k/10.
    video("offset.mp4", &src("160x120", "10", "2"), &["-output_ts_offset", "5"]);
    // With an audio track: 10 fps, 2 s video + 2 s of sine.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &src("160x120", "10", "2"),
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-shortest",
        &p("audio.mp4"),
    ]);
    // Three solid 1 s shots at 10 fps: black, white, grey (luma 16, 235, 126; cuts at
    // frames 10 and 20, where the mean luma difference is 219 and 109).
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=c=black:size=160x120:rate=10:duration=1",
        "-f",
        "lavfi",
        "-i",
        "color=c=white:size=160x120:rate=10:duration=1",
        "-f",
        "lavfi",
        "-i",
        "color=c=gray:size=160x120:rate=10:duration=1",
        "-filter_complex",
        "[0:v][1:v][2:v]concat=n=3:v=1:a=0[v]",
        "-map",
        "[v]",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        &p("shots.mp4"),
    ]);
    // The same three shots in Matroska: identical frames, different bytes (not linked).
    ffmpeg(&["-i", &p("shots.mp4"), "-c", "copy", &p("shots.mkv")]);
    // 5 s at 10 fps with the index first, for truncation and corruption.
    video("whole.mp4", &src("320x240", "10", "5"), &["-movflags", "+faststart"]);
    let whole = std::fs::read(d.join("whole.mp4")).expect("read whole.mp4");
    std::fs::write(d.join("truncated.mp4"), &whole[..whole.len() / 2]).expect("write truncated");
    let mut corrupt = whole.clone();
    let (a, b) = (whole.len() / 3, whole.len() / 3 + whole.len() / 4);
    for (i, byte) in corrupt[a..b].iter_mut().enumerate() {
        *byte = (i * 37 + 11) as u8;
    }
    std::fs::write(d.join("corrupt.mp4"), corrupt).expect("write corrupt");
    // A larger clip for the slow (throttled) downloads of the kill and SIGTERM tests.
    video("slow.mp4", &src("320x240", "10", "8"), &["-g", "1"]);
    // Sound only: no video stream.
    ffmpeg(&["-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", &p("audio-only.mp4")]);
    // A heavier clip for stopping an agent mid-extract: 1280x720, 10 s at 30 fps.
    video("heavy.mp4", &src("1280x720", "30", "10"), &[]);
    std::fs::write(d.join("not-a-video.mp4"), b"<html>this is not a video</html>").expect("write");
    std::fs::write(d.join("live.m3u8"), b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n").expect("write");
}

/// A copy of a fixture under another name (identical content, another URL).
pub fn copy_fixture(from: &str, to: &str) {
    let d = fixtures();
    if !d.join(to).exists() {
        std::fs::copy(d.join(from), d.join(to)).expect("copy fixture");
    }
}

/// A fixture with these bytes (written once, atomically: tests run in parallel threads).
pub fn put_fixture(name: &str, bytes: &[u8]) {
    let d = fixtures();
    if !d.join(name).exists() {
        let tmp = d.join(format!(".{name}.{}.{:?}", std::process::id(), std::thread::current().id()));
        std::fs::write(&tmp, bytes).expect("write fixture");
        std::fs::rename(&tmp, d.join(name)).expect("rename fixture");
    }
}

/// `cfr10.mp4` (3 s of video) whose movie header claims 2^32 − 1 ms, 49.7 days: the case of
/// a container that claims far more than its stream holds. Named `claims-49-days.mp4`.
pub fn claimed_duration_fixture() -> &'static str {
    const NAME: &str = "claims-49-days.mp4";
    let mut b = std::fs::read(fixtures().join("cfr10.mp4")).expect("read cfr10.mp4");
    let i = b.windows(4).position(|w| w == b"mvhd").expect("mvhd box");
    // version 0: version+flags, creation, modification, timescale, duration (32-bit each).
    assert_eq!(b[i + 4], 0, "mvhd version 0");
    assert_eq!(b[i + 16..i + 20], 1000u32.to_be_bytes(), "movie timescale 1000");
    b[i + 20..i + 24].copy_from_slice(&u32::MAX.to_be_bytes());
    put_fixture(NAME, &b);
    NAME
}

/// Lowercase hex SHA-256 of a fixture, by `sha256sum` (independent of the agent's code).
pub fn sha256_of(name: &str) -> String {
    let out = Command::new("sha256sum").arg(fixtures().join(name)).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string()
}
