//! The keep/drop rules of the model stages, independent of any model backend: the filter's
//! strict-inequality rule over positive, negative and junk prompt scores, and the exact
//! dedup of L2-normalised embeddings against a kept set (no k-limit, no misses).

/// A project's filter thresholds (from its `filter` config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilterThresholds {
    pub threshold: f64,
    pub negative_threshold: f64,
    pub margin_threshold: f64,
    pub junk_threshold: f64,
    pub junk_margin_threshold: f64,
}

/// What the filter decided for one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilterVerdict {
    pub kept: bool,
    /// Index of the best positive prompt.
    pub best_positive: usize,
    pub pos_max: f32,
    pub neg_max: Option<f32>,
    pub junk_max: Option<f32>,
}

fn max_of(scores: &[f32]) -> Option<(usize, f32)> {
    scores.iter().copied().enumerate().fold(None, |best, (i, s)| match best {
        Some((_, b)) if b >= s => best,
        _ => Some((i, s)),
    })
}

/// The original Data Miner's rule, all inequalities strict: kept iff the best positive score
/// is above `threshold`; with negative prompts also the best negative is below
/// `negative_threshold` and the positive beats it by more than `margin_threshold`; with junk
/// prompts likewise with `junk_threshold` and `junk_margin_threshold`. `None` when there is
/// no positive score (a configuration the control plane refuses).
pub fn filter_frame(positive: &[f32], negative: &[f32], junk: &[f32], t: &FilterThresholds) -> Option<FilterVerdict> {
    let (best_positive, pos_max) = max_of(positive)?;
    let neg_max = max_of(negative).map(|(_, s)| s);
    let junk_max = max_of(junk).map(|(_, s)| s);
    let p = f64::from(pos_max);
    let mut kept = p > t.threshold;
    if let Some(n) = neg_max.map(f64::from) {
        kept &= n < t.negative_threshold && p - n > t.margin_threshold;
    }
    if let Some(j) = junk_max.map(f64::from) {
        kept &= j < t.junk_threshold && p - j > t.junk_margin_threshold;
    }
    Some(FilterVerdict { kept, best_positive, pos_max, neg_max, junk_max })
}

/// Scales `v` to unit L2 norm in place (a zero vector stays zero: it is similar to nothing).
pub fn l2_normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise the loop.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// A project's kept set: L2-normalised embeddings in the order frames entered it, each with
/// the (video, frame index) it came from.
#[derive(Debug, Clone, Default)]
pub struct KeptSet {
    dim: usize,
    rows: Vec<f32>,
    refs: Vec<(i64, i64)>,
}

impl KeptSet {
    pub fn new(dim: usize) -> Self {
        KeptSet { dim, rows: Vec::new(), refs: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.refs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Appends a normalised embedding (its length must be `dim`).
    pub fn push(&mut self, frame: (i64, i64), embedding: &[f32]) -> Result<(), String> {
        if embedding.len() != self.dim {
            return Err(format!("embedding of length {} in a kept set of dimension {}", embedding.len(), self.dim));
        }
        self.rows.extend_from_slice(embedding);
        self.refs.push(frame);
        Ok(())
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.rows[i * self.dim..(i + 1) * self.dim]
    }

    /// Keeps the first `len` entries (drops what a dedup appended, so a cache can be reused
    /// without copying it).
    pub fn truncate(&mut self, len: usize) {
        self.rows.truncate(len * self.dim);
        self.refs.truncate(len);
    }

    /// For each embedding, the most similar of rows `..upto` and the cosine: the same result
    /// as [`KeptSet::most_similar`] per embedding, computed in blocks of embeddings so each kept
    /// row is read from memory once per block instead of once per embedding, with the blocks
    /// shared among the available cores.
    fn most_similar_many(&self, es: &[&[f32]], upto: usize) -> Vec<Option<((i64, i64), f32)>> {
        const BLOCK: usize = 32;
        let one = |block: &[&[f32]]| -> Vec<Option<(usize, f32)>> {
            let mut best: Vec<Option<(usize, f32)>> = vec![None; block.len()];
            for i in 0..upto {
                let row = self.row(i);
                for (b, e) in best.iter_mut().zip(block) {
                    let s = dot(e, row);
                    if b.is_none_or(|(_, v)| s > v) {
                        *b = Some((i, s));
                    }
                }
            }
            best
        };
        let blocks: Vec<&[&[f32]]> = es.chunks(BLOCK).collect();
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(blocks.len()).max(1);
        let per = blocks.len().div_ceil(workers).max(1);
        let found: Vec<Option<(usize, f32)>> = if workers == 1 || upto * es.len() < 1 << 16 {
            blocks.iter().flat_map(|b| one(b)).collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = blocks
                    .chunks(per)
                    .map(|group| scope.spawn(move || group.iter().flat_map(|b| one(b)).collect::<Vec<_>>()))
                    .collect();
                handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
            })
        };
        found.into_iter().map(|b| b.map(|(i, s)| (self.refs[i], s))).collect()
    }

    /// The most similar kept frame and the cosine (rows are normalised), over rows `from..`.
    fn most_similar(&self, e: &[f32], from: usize) -> Option<((i64, i64), f32)> {
        let mut best: Option<(usize, f32)> = None;
        for i in from..self.len() {
            let s = dot(e, self.row(i));
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
        }
        best.map(|(i, s)| (self.refs[i], s))
    }
}

/// The dedup decision for one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DedupVerdict {
    pub kept: bool,
    /// The most similar kept frame (earlier videos, then earlier kept frames of this video)
    /// and its cosine; `None` when the kept set was empty.
    pub most_similar: Option<((i64, i64), f32)>,
}

/// Dedups one video's frames, in frame order, against `kept` (which it extends with the
/// frames it keeps): a frame is dropped iff its cosine with any kept frame is ≥ `threshold`.
/// Embeddings must be L2-normalised and of the kept set's dimension.
pub fn dedup_video(
    kept: &mut KeptSet,
    frames: &[((i64, i64), Vec<f32>)],
    threshold: f64,
) -> Result<Vec<DedupVerdict>, String> {
    let prior = kept.len();
    // Against the prior kept set: independent per frame (the expensive, parallel part).
    if let Some((_, e)) = frames.iter().find(|(_, e)| e.len() != kept.dim()) {
        return Err(format!("embedding of length {} in a kept set of dimension {}", e.len(), kept.dim()));
    }
    let es: Vec<&[f32]> = frames.iter().map(|(_, e)| e.as_slice()).collect();
    let against_prior = kept.most_similar_many(&es, prior);
    if against_prior.len() != frames.len() {
        return Err("a dedup worker failed".into());
    }
    // Then in frame order against this video's own kept frames.
    let mut out = Vec::with_capacity(frames.len());
    for ((frame, e), prior_best) in frames.iter().zip(against_prior) {
        let own_best = kept.most_similar(e, prior);
        let best = match (prior_best, own_best) {
            (Some(a), Some(b)) => Some(if b.1 > a.1 { b } else { a }),
            (a, b) => a.or(b),
        };
        let is_kept = best.is_none_or(|(_, s)| f64::from(s) < threshold);
        if is_kept {
            kept.push(*frame, e)?;
        }
        out.push(DedupVerdict { kept: is_kept, most_similar: best });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: FilterThresholds = FilterThresholds {
        threshold: 0.25,
        negative_threshold: 0.25,
        margin_threshold: 0.05,
        junk_threshold: 0.3,
        junk_margin_threshold: 0.05,
    };

    /// (positive, negative, junk, kept)
    type Case = (&'static [f32], &'static [f32], &'static [f32], bool);

    #[test]
    fn filter_inequalities_are_strict() {
        let cases: &[Case] = &[
            (&[0.5], &[], &[], true),
            (&[0.25], &[], &[], false),    // equal to the threshold: dropped
            (&[0.1, 0.3], &[], &[], true), // the best positive counts
            (&[0.5], &[0.25], &[], false), // negative equal to its threshold
            (&[0.5], &[0.2], &[], true),
            (&[0.26], &[0.2], &[], true),   // margin 0.06 > 0.05
            (&[0.3], &[0.24], &[], true),   // margin 0.06
            (&[0.28], &[0.24], &[], false), // margin 0.04
            (&[0.5], &[], &[0.3], false),   // junk equal to its threshold
            (&[0.5], &[], &[0.29], true),
            (&[0.32], &[], &[0.29], false), // junk margin 0.03
            (&[0.5], &[0.1], &[0.1], true),
        ];
        for (i, (p, n, j, kept)) in cases.iter().enumerate() {
            let v = filter_frame(p, n, j, &T).expect("has positives");
            assert_eq!(v.kept, *kept, "case {i}: {v:?}");
        }
        let v = filter_frame(&[0.1, 0.9, 0.3], &[0.2, 0.1], &[], &T).expect("verdict");
        assert_eq!((v.best_positive, v.pos_max, v.neg_max, v.junk_max), (1, 0.9, Some(0.2), None));
        assert!(filter_frame(&[], &[0.1], &[], &T).is_none());
    }

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        l2_normalise(&mut v);
        v
    }

    #[test]
    fn dedup_is_exact_against_earlier_videos_then_earlier_frames() {
        let mut kept = KeptSet::new(2);
        kept.push((1, 0), &unit(&[1.0, 0.0])).expect("push");
        let frames = vec![
            ((2, 0), unit(&[1.0, 0.01])), // ~1.0 with video 1's frame: duplicate
            ((2, 1), unit(&[0.0, 1.0])),  // orthogonal: kept
            ((2, 2), unit(&[0.05, 1.0])), // near frame 1 of this video: duplicate of it
            ((2, 3), unit(&[1.0, 1.0])),  // cos 0.707 with both: kept at 0.9
        ];
        let v = dedup_video(&mut kept, &frames, 0.9).expect("dedup");
        assert_eq!(v.iter().map(|d| d.kept).collect::<Vec<_>>(), [false, true, false, true]);
        assert_eq!(v[0].most_similar.map(|m| m.0), Some((1, 0)));
        assert_eq!(v[2].most_similar.map(|m| m.0), Some((2, 1)));
        assert_eq!(kept.len(), 3);
    }

    #[test]
    fn dedup_threshold_is_inclusive() {
        // cos exactly representable: identical vectors give 1.0, at threshold 1.0 → dropped.
        let mut kept = KeptSet::new(4);
        let e = unit(&[0.5, 0.5, 0.5, 0.5]);
        kept.push((1, 0), &e).expect("push");
        let v = dedup_video(&mut kept, &[((2, 0), e.clone())], 1.0).expect("dedup");
        assert!(!v[0].kept, "{v:?}");
        let mut empty = KeptSet::new(4);
        let v = dedup_video(&mut empty, &[((2, 0), e.clone()), ((2, 1), e)], 0.9).expect("dedup");
        assert_eq!((v[0].kept, v[0].most_similar, v[1].kept), (true, None, false));
    }

    #[test]
    fn dimension_mismatches_are_errors() {
        let mut kept = KeptSet::new(3);
        assert!(kept.push((1, 0), &[1.0, 0.0]).is_err());
        assert!(dedup_video(&mut kept, &[((1, 1), vec![1.0])], 0.9).is_err());
    }

    #[test]
    fn blocked_search_equals_the_per_frame_scan() {
        // Pseudo-random unit vectors (an LCG), enough of them for the threaded path, with a
        // few exact repeats so ties and duplicates occur.
        let mut x = 12345u64;
        let mut next = move || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let dim = 24;
        let mut kept = KeptSet::new(dim);
        for i in 0..400 {
            kept.push((1, i), &unit(&(0..dim).map(|_| next()).collect::<Vec<_>>())).expect("push");
        }
        let mut es: Vec<Vec<f32>> = (0..250).map(|_| unit(&(0..dim).map(|_| next()).collect::<Vec<_>>())).collect();
        es[7] = kept.row(3).to_vec();
        es[100] = kept.row(399).to_vec();
        let refs: Vec<&[f32]> = es.iter().map(|e| e.as_slice()).collect();
        let many = kept.most_similar_many(&refs, kept.len());
        let one: Vec<_> = es.iter().map(|e| kept.most_similar(e, 0)).collect();
        assert_eq!(many, one);
        assert_eq!(many[7].map(|m| m.0), Some((1, 3)));
        // A prefix of the set, and truncation back to it.
        let prefix = kept.most_similar_many(&refs[..5], 10);
        let mut short = kept.clone();
        short.truncate(10);
        assert_eq!(short.len(), 10);
        assert_eq!(prefix, refs[..5].iter().map(|e| short.most_similar(e, 0)).collect::<Vec<_>>());
    }

    #[test]
    fn dot_matches_a_plain_sum_beyond_one_chunk() {
        let a: Vec<f32> = (0..21).map(|i| i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..21).map(|i| 1.0 - i as f32 * 0.03).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-4);
    }
}
