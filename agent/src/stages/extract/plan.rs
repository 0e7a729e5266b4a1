//! Turns a project's extract settings into one ffmpeg invocation. Each strategy is a
//! filter between two `showinfo` taps: `showinfo@src` sees every decoded frame (source frame
//! number, pts, and how far decoding got) and `showinfo@out` sees the kept ones, so the
//! manifest is built from what ffmpeg actually did, in a single decoding pass.
//!
//! The rules (checked by the tests with literal values):
//! - `interval_frames` N: source frames 0, N, 2N, … (0-based, in decoder output order).
//! - `interval_seconds` T: for k = 0, 1, 2, … the first frame with pts − start_time ≥ k·T,
//!   where start_time is the video stream's start time; timestamps are compared with a 1 µs
//!   tolerance so that rational timestamps rounded to binary floating point (3 × 1/30 s)
//!   still count as reaching 0.1 s. A frame that is the first past several k is kept once.
//! - `scene`: the first frame, and every frame whose ffmpeg scene score is ≥ the threshold.
//! - `diff`: the first frame, and every frame whose mean absolute difference from the
//!   previous decoded frame in 8-bit luma (ffmpeg `signalstats` YDIF) is ≥ the threshold.
//! - At most `max_frames_per_video` frames; JPEG quality q (1–100) maps to ffmpeg's mjpeg
//!   qscale as `2 + round((100 − q) · 29 / 99)`: 100 → 2 (best), 95 → 3, 50 → 17, 1 → 31.

use dataminer_wire::{ExtractConfig, ExtractStrategy};

/// Tolerance for timestamp comparisons in `interval_seconds`, seconds.
pub const TIME_EPSILON_S: f64 = 1e-6;

#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Filtergraph output label, e.g. `o0`.
    pub label: String,
    /// Name of the `showinfo` tap on this output.
    pub tap: String,
    /// File number of this output's first frame.
    pub start_number: u32,
    pub max_frames: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub filter_complex: String,
    pub outputs: Vec<Output>,
    pub qscale: u32,
}

pub const SRC_TAP: &str = "showinfo@src";

/// mjpeg qscale for a 1–100 quality (monotonic: higher quality, lower qscale).
pub fn qscale(quality: u32) -> u32 {
    let q = quality.clamp(1, 100);
    2 + ((100 - q) as f64 * 29.0 / 99.0).round() as u32
}

/// A number as the ffmpeg expression parser reads it (Rust prints f64 without exponents).
fn num(v: f64) -> String {
    format!("{v}")
}

pub fn plan(cfg: &ExtractConfig, start_time_s: f64) -> Plan {
    let max = cfg.max_frames_per_video.max(1);
    let src = format!("[0:v:0]{SRC_TAP}=checksum=0");
    let single = |select: String| Plan {
        filter_complex: format!("{src},select='{select}',showinfo@out=checksum=0[o0]"),
        outputs: vec![Output { label: "o0".into(), tap: "showinfo@out".into(), start_number: 1, max_frames: max }],
        qscale: qscale(cfg.jpeg_quality),
    };
    match cfg.strategy {
        ExtractStrategy::IntervalFrames => single(format!("not(mod(n\\,{}))", cfg.interval_frames.max(1))),
        ExtractStrategy::IntervalSeconds => {
            let k = |t: &str| {
                format!(
                    "floor(({t}-({s})+{e})/{p})",
                    s = num(start_time_s),
                    e = num(TIME_EPSILON_S),
                    p = num(cfg.interval_seconds)
                )
            };
            single(format!("gte({kt}\\,0)*(isnan(prev_t)+gt({kt}\\,{kp}))", kt = k("t"), kp = k("prev_t")))
        }
        ExtractStrategy::Scene => single(format!("eq(n\\,0)+gte(scene\\,{})", num(cfg.scene_threshold))),
        ExtractStrategy::Diff if max == 1 => single("eq(n\\,0)".into()),
        ExtractStrategy::Diff => {
            // signalstats compares the first frame with itself (YDIF 0), so the first frame
            // takes its own branch and output; the rest are judged by YDIF.
            let first = format!(
                "{src},format=yuv420p,signalstats,split[a][b];[a]select='eq(n\\,0)',showinfo@first=checksum=0[o0]"
            );
            let mut outputs =
                vec![Output { label: "o0".into(), tap: "showinfo@first".into(), start_number: 1, max_frames: 1 }];
            let mut graph = first;
            let rest = format!(
                ";[b]select='gte(n\\,1)',metadata=mode=select:key=lavfi.signalstats.YDIF:value={}:function=expr:\
                 expr='gte(VALUE1\\,VALUE2)',showinfo@out=checksum=0[o1]",
                num(cfg.diff_threshold)
            );
            graph.push_str(&rest);
            outputs.push(Output {
                label: "o1".into(),
                tap: "showinfo@out".into(),
                start_number: 2,
                max_frames: max - 1,
            });
            Plan { filter_complex: graph, outputs, qscale: qscale(cfg.jpeg_quality) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_maps_monotonically_onto_qscale() {
        assert_eq!(qscale(100), 2);
        assert_eq!(qscale(95), 3);
        assert_eq!(qscale(50), 17);
        assert_eq!(qscale(1), 31);
        let qs: Vec<u32> = (1..=100).map(qscale).collect();
        assert!(qs.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn interval_frames_graph() {
        let cfg = ExtractConfig { interval_frames: 7, max_frames_per_video: 9, ..Default::default() };
        let p = plan(&cfg, 0.0);
        assert_eq!(
            p.filter_complex,
            "[0:v:0]showinfo@src=checksum=0,select='not(mod(n\\,7))',showinfo@out=checksum=0[o0]"
        );
        assert_eq!(p.outputs[0].max_frames, 9);
    }

    #[test]
    fn diff_has_a_first_frame_output() {
        let cfg = ExtractConfig { strategy: ExtractStrategy::Diff, max_frames_per_video: 5, ..Default::default() };
        let p = plan(&cfg, 0.0);
        assert_eq!(p.outputs.len(), 2);
        assert_eq!((p.outputs[0].start_number, p.outputs[0].max_frames), (1, 1));
        assert_eq!((p.outputs[1].start_number, p.outputs[1].max_frames), (2, 4));
        assert!(p.filter_complex.contains("value=30:"));
    }
}
