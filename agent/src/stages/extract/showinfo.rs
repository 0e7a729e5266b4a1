//! Reads ffmpeg's `showinfo` lines (`[showinfo@src @ 0x…] [info] n: 3 pts: 3072 …`) and the
//! `config in time_base` line of each tap, and turns them into the manifest's frames: each
//! kept frame (an `@out`/`@first` line) matched by pts to the decoded frame (`@src` line)
//! it came from.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tapped {
    pub n: u64,
    pub pts: i64,
}

/// Everything the taps printed.
#[derive(Debug, Default)]
pub struct Taps {
    pub frames: HashMap<String, Vec<Tapped>>,
    pub time_base: HashMap<String, (i64, i64)>,
}

impl Taps {
    /// Feeds one ffmpeg log line; returns the tap name when it was a frame line.
    pub fn feed(&mut self, line: &str) -> Option<&str> {
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
        let v = self.frames.entry(name.to_string()).or_default();
        v.push(Tapped { n, pts });
        Some(self.frames.get_key_value(name).map(|(k, _)| k.as_str()).unwrap_or(""))
    }

    pub fn count(&self, tap: &str) -> usize {
        self.frames.get(tap).map_or(0, Vec::len)
    }

    pub fn last(&self, tap: &str) -> Option<Tapped> {
        self.frames.get(tap).and_then(|v| v.last().copied())
    }

    pub fn seconds(&self, tap: &str, pts: i64) -> Option<f64> {
        let (a, b) = self.time_base.get(tap).copied()?;
        (b != 0).then(|| pts as f64 * a as f64 / b as f64)
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

/// A kept frame: where it came from in the source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeptFrame {
    pub source_frame: u64,
    pub pts: i64,
}

/// Maps the kept frames of each output (in output order, each capped at `max`) to source
/// frames by pts. Frames of several outputs are merged in pts order (diff's first-frame
/// output comes first).
pub fn kept_frames(taps: &Taps, outputs: &[(&str, usize)]) -> Result<Vec<KeptFrame>, String> {
    let src = taps.frames.get(super::plan::SRC_TAP).map(Vec::as_slice).unwrap_or(&[]);
    let mut by_pts: HashMap<i64, u64> = HashMap::with_capacity(src.len());
    for f in src.iter().rev() {
        by_pts.insert(f.pts, f.n); // first occurrence wins
    }
    let mut kept = Vec::new();
    for (tap, max) in outputs {
        for f in taps.frames.get(*tap).map(Vec::as_slice).unwrap_or(&[]).iter().take(*max) {
            let n = by_pts
                .get(&f.pts)
                .copied()
                .ok_or_else(|| format!("kept frame with pts {} has no decoded source frame", f.pts))?;
            kept.push(KeptFrame { source_frame: n, pts: f.pts });
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_taps_and_maps_kept_frames() {
        let mut t = Taps::default();
        for l in [
            "[showinfo@src @ 0x55e4] [info] config in time_base: 1/10240, frame_rate: 10/1",
            "[showinfo@src @ 0x55e4] [info] n:   0 pts:      0 pts_time:0       pos:       48 fmt:yuv420p",
            "[showinfo@src @ 0x55e4] [info] n:   1 pts:   1024 pts_time:0.1     pos:      900 fmt:yuv420p",
            "[showinfo@src @ 0x55e4] [info] n:   2 pts:   2048 pts_time:0.2     pos:     1900 fmt:yuv420p",
            "[showinfo@out @ 0x55e5] [info] n:   0 pts:      0 pts_time:0",
            "[showinfo@out @ 0x55e5] [info] n:   1 pts:   2048 pts_time:0.2",
            "[h264 @ 0x55e6] [info] something else n: 7 pts: 1",
        ] {
            t.feed(l);
        }
        assert_eq!(t.count("showinfo@src"), 3);
        assert_eq!(t.seconds("showinfo@src", 2048), Some(0.2));
        let k = kept_frames(&t, &[("showinfo@out", 10)]).expect("map");
        assert_eq!(k, vec![KeptFrame { source_frame: 0, pts: 0 }, KeptFrame { source_frame: 2, pts: 2048 }]);
        assert_eq!(kept_frames(&t, &[("showinfo@out", 1)]).expect("map").len(), 1);
    }
}
