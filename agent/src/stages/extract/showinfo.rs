//! Reads ffmpeg's `showinfo` lines (`[showinfo@src @ 0x…] [info] n: 3 pts: 3072 …`) and the
//! `config in time_base` line of each tap, and turns them into the manifest's frames: each
//! kept frame (an `@out`/`@first` line) matched by pts to the decoded frame (`@src` line)
//! it came from.
//!
//! Memory stays bounded however long the video: a frame passes the `@src` tap just before
//! any output tap (one filter chain, one thread, one log), so only a window of the most
//! recent decoded frames is kept for matching, plus the count and the last one; each output
//! keeps at most its frame cap of matched frames.

use std::collections::{HashMap, VecDeque};

use super::plan::SRC_TAP;

/// Decoded frames remembered for matching kept frames by pts. A kept frame's `@out` line
/// follows its `@src` line within a few frames; this leaves ample room for reordering.
pub const SRC_WINDOW: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tapped {
    pub n: u64,
    pub pts: i64,
}

/// A kept frame: where it came from in the source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeptFrame {
    pub source_frame: u64,
    pub pts: i64,
}

#[derive(Debug)]
struct OutTap {
    name: String,
    max: usize,
    /// Frames this tap printed (ffmpeg may pass a few past the output's frame limit).
    seen: usize,
    kept: Vec<KeptFrame>,
    /// The first kept frame that matched no decoded frame.
    unmatched: Option<i64>,
}

/// What the taps printed, reduced as it streams in.
#[derive(Debug)]
pub struct Taps {
    outputs: Vec<OutTap>,
    src_count: u64,
    src_last: Option<Tapped>,
    recent: VecDeque<Tapped>,
    time_base: HashMap<String, (i64, i64)>,
}

/// Which tap printed a frame line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapLine {
    Source,
    Output,
}

impl Taps {
    /// Taps for these outputs (tap name, most frames kept), in output order.
    pub fn new(outputs: &[(&str, usize)]) -> Self {
        Self {
            outputs: outputs
                .iter()
                .map(|(name, max)| OutTap {
                    name: name.to_string(),
                    max: *max,
                    seen: 0,
                    kept: Vec::with_capacity((*max).min(1024)),
                    unmatched: None,
                })
                .collect(),
            src_count: 0,
            src_last: None,
            recent: VecDeque::with_capacity(SRC_WINDOW),
            time_base: HashMap::new(),
        }
    }

    /// Feeds one ffmpeg log line; says which kind of tap printed it when it was a frame line.
    pub fn feed(&mut self, line: &str) -> Option<TapLine> {
        let rest = line.strip_prefix('[')?;
        let (name, rest) = rest.split_once(" @ ")?;
        if !name.starts_with("showinfo@") {
            return None;
        }
        let (_, body) = rest.split_once("] ")?;
        let body = body.strip_prefix("[info] ").unwrap_or(body).trim_start();
        if let Some(tb) = body.strip_prefix("config in time_base: ") {
            let tb = tb.split(',').next()?;
            let (a, b) = tb.split_once('/')?;
            if let (Ok(a), Ok(b)) = (a.trim().parse(), b.trim().parse()) {
                self.time_base.insert(name.to_string(), (a, b));
            }
            return None;
        }
        let n = field(body, "n:")?.parse().ok()?;
        let pts = field(body, "pts:")?.parse().ok()?;
        if name == SRC_TAP {
            let t = Tapped { n, pts };
            if self.recent.len() == SRC_WINDOW {
                self.recent.pop_front();
            }
            self.recent.push_back(t);
            self.src_last = Some(t);
            self.src_count += 1;
            return Some(TapLine::Source);
        }
        let out = self.outputs.iter_mut().find(|o| o.name == name)?;
        out.seen += 1;
        if out.kept.len() < out.max && out.unmatched.is_none() {
            // The earliest decoded frame with this pts (a duplicated pts maps to its first frame).
            match self.recent.iter().find(|f| f.pts == pts) {
                Some(f) => out.kept.push(KeptFrame { source_frame: f.n, pts }),
                None => out.unmatched = Some(pts),
            }
        }
        Some(TapLine::Output)
    }

    /// Frames decoded so far.
    pub fn decoded(&self) -> u64 {
        self.src_count
    }

    /// The last decoded frame.
    pub fn last_decoded(&self) -> Option<Tapped> {
        self.src_last
    }

    /// Frames written so far: what each output tap printed, capped at its limit.
    pub fn written(&self) -> usize {
        self.outputs.iter().map(|o| o.seen.min(o.max)).sum()
    }

    /// Seconds of a source pts, once ffmpeg has printed the source tap's time base.
    pub fn seconds(&self, pts: i64) -> Option<f64> {
        let (a, b) = self.time_base.get(SRC_TAP).copied()?;
        (b != 0).then(|| pts as f64 * a as f64 / b as f64)
    }

    /// The kept frames of every output, in output order (diff's first-frame output first),
    /// each capped at its limit.
    pub fn kept_frames(&self) -> Result<Vec<KeptFrame>, String> {
        let mut kept = Vec::with_capacity(self.outputs.iter().map(|o| o.kept.len()).sum());
        for o in &self.outputs {
            if let Some(pts) = o.unmatched {
                return Err(format!("kept frame with pts {pts} has no decoded source frame"));
            }
            kept.extend_from_slice(&o.kept);
        }
        Ok(kept)
    }
}

/// The value after `key` in a showinfo line (`n:   3` → "3").
fn field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let mut it = body.split_whitespace();
    while let Some(tok) = it.next() {
        if tok == key {
            return it.next();
        }
        if let Some(v) = tok.strip_prefix(key) {
            if !v.is_empty() {
                return Some(v);
            }
            return it.next();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_taps_and_maps_kept_frames() {
        let lines = [
            "[showinfo@src @ 0x55e4] [info] config in time_base: 1/10240, frame_rate: 10/1",
            "[showinfo@src @ 0x55e4] [info] n:   0 pts:      0 pts_time:0       pos:       48 fmt:yuv420p",
            "[showinfo@out @ 0x55e5] [info] n:   0 pts:      0 pts_time:0",
            "[showinfo@src @ 0x55e4] [info] n:   1 pts:   1024 pts_time:0.1     pos:      900 fmt:yuv420p",
            "[showinfo@src @ 0x55e4] [info] n:   2 pts:   2048 pts_time:0.2     pos:     1900 fmt:yuv420p",
            "[showinfo@out @ 0x55e5] [info] n:   1 pts:   2048 pts_time:0.2",
            "[h264 @ 0x55e6] [info] something else n: 7 pts: 1",
        ];
        let mut t = Taps::new(&[("showinfo@out", 10)]);
        let kinds: Vec<_> = lines.iter().map(|l| t.feed(l)).collect();
        assert_eq!(kinds[1..3], [Some(TapLine::Source), Some(TapLine::Output)]);
        assert_eq!(kinds[6], None);
        assert_eq!(t.decoded(), 3);
        assert_eq!(t.last_decoded(), Some(Tapped { n: 2, pts: 2048 }));
        assert_eq!(t.seconds(2048), Some(0.2));
        assert_eq!(t.written(), 2);
        let k = t.kept_frames().expect("map");
        assert_eq!(k, vec![KeptFrame { source_frame: 0, pts: 0 }, KeptFrame { source_frame: 2, pts: 2048 }]);

        let mut capped = Taps::new(&[("showinfo@out", 1)]);
        for l in lines {
            capped.feed(l);
        }
        assert_eq!((capped.kept_frames().expect("map").len(), capped.written()), (1, 1));
    }

    #[test]
    fn memory_is_bounded_by_the_window_and_the_caps() {
        let mut t = Taps::new(&[("showinfo@out", 3)]);
        t.feed("[showinfo@src @ 0x1] [info] config in time_base: 1/60, frame_rate: 60/1");
        // Three hours at 60 fps, every frame kept by the filter.
        for n in 0..(3 * 3600 * 60) {
            t.feed(&format!("[showinfo@src @ 0x1] [info] n: {n} pts: {n} pts_time:0"));
            t.feed(&format!("[showinfo@out @ 0x2] [info] n: {n} pts: {n} pts_time:0"));
        }
        assert_eq!(t.recent.len(), SRC_WINDOW);
        assert_eq!(t.outputs[0].kept.len(), 3);
        assert_eq!(t.decoded(), 3 * 3600 * 60);
        assert_eq!(t.seconds(t.last_decoded().expect("last").pts), Some(10_799.983333333334));
    }

    #[test]
    fn a_kept_frame_without_its_source_is_an_error() {
        let mut t = Taps::new(&[("showinfo@out", 3)]);
        t.feed("[showinfo@src @ 0x1] [info] n: 0 pts: 0");
        t.feed("[showinfo@out @ 0x2] [info] n: 0 pts: 99");
        assert!(t.kept_frames().is_err_and(|e| e.contains("pts 99")));
    }
}
