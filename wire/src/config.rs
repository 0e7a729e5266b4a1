//! A project's configuration: the extract, filter, dedup and detect parameters of seed 000's
//! `data-miner-config` ConfigMap, with its defaults. Unknown fields are rejected at every level
//! so a typo (`treshold`) is an error rather than a silently ignored setting.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Everything a project can tune. Every section and field takes the seed's default, except
/// `filter.positive_prompts` (what to look for), which is required.
// Field-level defaults (not a container default): a container default would put
// `FilterConfig::default()`, whose `positive_prompts` is empty, into the schema as the
// default of a required section, which the schema itself refuses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    #[serde(default)]
    pub extract: ExtractConfig,
    #[serde(default)]
    #[schema(required = true)]
    pub filter: FilterConfig,
    #[serde(default)]
    pub dedup: DedupConfig,
    #[serde(default)]
    pub detect: DetectConfig,
}

/// How frames are sampled from a video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExtractStrategy {
    /// Source frames 0, N, 2N, … in decode order.
    #[default]
    IntervalFrames,
    /// For k = 0, 1, 2, … the first frame with pts − start_time ≥ k·T.
    IntervalSeconds,
    /// ffmpeg's scene score ≥ `scene_threshold`; the first frame is always kept.
    Scene,
    /// Mean absolute grey-level difference from the previous frame ≥ `diff_threshold`.
    Diff,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ExtractConfig {
    pub strategy: ExtractStrategy,
    /// N for `interval_frames`.
    #[schema(minimum = 1, maximum = 10000000)]
    pub interval_frames: u32,
    /// T (seconds) for `interval_seconds`.
    #[schema(minimum = 0.001, maximum = 86400)]
    pub interval_seconds: f64,
    #[schema(minimum = 0, maximum = 1)]
    pub scene_threshold: f64,
    #[schema(minimum = 0, maximum = 255)]
    pub diff_threshold: f64,
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_frames_per_video: u32,
    /// JPEG quality on the seed's 0–100 scale.
    #[schema(minimum = 1, maximum = 100)]
    pub jpeg_quality: u32,
}

impl ExtractConfig {
    /// The identity of an extraction's settings: canonical JSON of exactly the fields the
    /// strategy uses (a `scene_threshold` means nothing to `interval_frames`), so projects
    /// whose settings differ only in unused fields share one extraction.
    pub fn settings_key(&self) -> String {
        let (param, value) = match self.strategy {
            ExtractStrategy::IntervalFrames => ("interval_frames", serde_json::json!(self.interval_frames)),
            ExtractStrategy::IntervalSeconds => ("interval_seconds", serde_json::json!(self.interval_seconds)),
            ExtractStrategy::Scene => ("scene_threshold", serde_json::json!(self.scene_threshold)),
            ExtractStrategy::Diff => ("diff_threshold", serde_json::json!(self.diff_threshold)),
        };
        // serde_json's map is ordered by key, which makes the text canonical.
        let mut m = serde_json::Map::new();
        m.insert("strategy".into(), serde_json::json!(self.strategy));
        m.insert(param.into(), value);
        m.insert("max_frames_per_video".into(), serde_json::json!(self.max_frames_per_video));
        m.insert("jpeg_quality".into(), serde_json::json!(self.jpeg_quality));
        serde_json::Value::Object(m).to_string()
    }
}

impl Default for ExtractConfig {
    fn default() -> Self {
        Self {
            strategy: ExtractStrategy::IntervalFrames,
            interval_frames: 30,
            interval_seconds: 1.0,
            scene_threshold: 0.3,
            diff_threshold: 30.0,
            max_frames_per_video: 5000,
            jpeg_quality: 95,
        }
    }
}

/// The filter's keep rule (all inequalities strict, as the original Data Miner): a frame is
/// kept iff `pos_max > threshold`; with negative prompts also `neg_max < negative_threshold`
/// and `pos_max − neg_max > margin_threshold`; with junk prompts also
/// `junk_max < junk_threshold` and `pos_max − junk_max > junk_margin_threshold`. `pos_max`,
/// `neg_max` and `junk_max` are the best scores of the frame over each prompt list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Name of the image–text model package on the agents (filter tasks require the agent
    /// capability `model:<name>`).
    #[schema(min_length = 1, max_length = 58, pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]*$")]
    pub model: String,
    #[schema(minimum = 1, maximum = 4096)]
    pub batch_size: u32,
    /// Kept only if the best positive score is strictly above this.
    #[schema(minimum = -1, maximum = 1)]
    pub threshold: f64,
    /// With negative prompts: kept only if the best positive score beats the best negative
    /// score by strictly more than this.
    #[schema(minimum = -2, maximum = 2)]
    pub margin_threshold: f64,
    #[schema(schema_with = crate::schema::positive_prompts, required = true)]
    pub positive_prompts: Vec<String>,
    #[schema(schema_with = crate::schema::prompts)]
    pub negative_prompts: Vec<String>,
    /// With negative prompts: kept only if the best negative score is strictly below this.
    #[schema(minimum = -1, maximum = 1)]
    pub negative_threshold: f64,
    /// Prompts describing unusable frames (blur, black, text slides…).
    #[schema(schema_with = crate::schema::prompts)]
    pub junk_prompts: Vec<String>,
    /// With junk prompts: kept only if the best junk score is strictly below this.
    #[schema(minimum = -1, maximum = 1)]
    pub junk_threshold: f64,
    /// With junk prompts: kept only if the best positive score beats the best junk score by
    /// strictly more than this.
    #[schema(minimum = -2, maximum = 2)]
    pub junk_margin_threshold: f64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            model: "siglip2".into(),
            batch_size: 32,
            threshold: 0.25,
            margin_threshold: 0.05,
            positive_prompts: Vec::new(),
            negative_prompts: Vec::new(),
            negative_threshold: 0.25,
            junk_prompts: Vec::new(),
            junk_threshold: 0.3,
            junk_margin_threshold: 0.05,
        }
    }
}

/// Which output of the image embedder dedup compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum DedupEmbedding {
    /// The model's pooled output.
    #[default]
    Pooler,
    /// The last hidden state's first token (CLS).
    HiddenCls,
    /// The mean of the last hidden state's patch tokens (1..).
    HiddenMean,
}

/// Dedup is exact: in frame order a frame is dropped iff its cosine similarity to any frame
/// already kept in the project (earlier videos in `kept_seq` order, then earlier kept frames
/// of its own video) is at least `threshold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// Name of the image embedder package on the agents (dedup tasks require the agent
    /// capability `model:<name>`). Cannot change once the project has a kept set (the
    /// embeddings would not be comparable).
    #[schema(min_length = 1, max_length = 58, pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]*$")]
    pub model: String,
    #[schema(minimum = 1, maximum = 4096)]
    pub batch_size: u32,
    /// A frame is dropped when its cosine similarity to a kept frame is at least this.
    #[schema(minimum = -1, maximum = 1)]
    pub threshold: f64,
    /// Ignored: dedup compares against every kept frame (exact, no neighbour limit). Still
    /// accepted so configurations written for the original keep working.
    #[schema(minimum = 1, maximum = 10000)]
    pub k_neighbors: u32,
    /// Cannot change once the project has a kept set.
    pub embedding: DedupEmbedding,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            model: "dino".into(),
            batch_size: 64,
            threshold: 0.90,
            k_neighbors: 50,
            embedding: DedupEmbedding::Pooler,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Name of the detector package on the agents (detect tasks require the agent capability
    /// `model:<name>`).
    #[schema(min_length = 1, max_length = 58, pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]*$")]
    pub model: String,
    #[schema(minimum = 1, maximum = 4096)]
    pub batch_size: u32,
    /// Minimum box score.
    #[schema(minimum = 0, maximum = 1)]
    pub threshold: f64,
    /// Prompts to detect; empty means the filter's positive prompts.
    #[schema(schema_with = crate::schema::prompts)]
    pub prompts: Vec<String>,
    pub save_visualizations: bool,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            model: "grounding_dino".into(),
            batch_size: 16,
            threshold: 0.3,
            prompts: Vec::new(),
            save_visualizations: true,
        }
    }
}

/// About four days of video at 30 fps between two frames: more is a typo.
pub const MAX_INTERVAL_FRAMES: u32 = 10_000_000;
pub const MAX_PROMPTS: usize = 256;
pub const MAX_PROMPT_CHARS: usize = 500;
/// A model name is advertised as the capability `model:<name>`, which must fit an agent's
/// capability tag (the schemas' `maxLength` of the three `model` fields says the same: 58).
pub const MAX_MODEL_NAME_CHARS: usize = crate::MAX_CAPABILITY_CHARS - crate::MODEL_CAPABILITY_PREFIX.len();
const _: () = assert!(MAX_MODEL_NAME_CHARS == 58, "update the schemas' maxLength of the model fields");

impl ProjectConfig {
    /// The model package the project configures for a model stage (filter, dedup, detect).
    pub fn model(&self, stage: crate::Stage) -> Option<&str> {
        match stage {
            crate::Stage::Filter => Some(&self.filter.model),
            crate::Stage::Dedup => Some(&self.dedup.model),
            crate::Stage::Detect => Some(&self.detect.model),
            crate::Stage::Download | crate::Stage::Extract => None,
        }
    }

    /// The capability a task of `stage` of this project requires: `model:<its model>` for the
    /// model stages, none for the others.
    pub fn requires(&self, stage: crate::Stage) -> Option<String> {
        self.model(stage).map(crate::model_capability)
    }

    /// Why `new` may not replace `self` once the project has a kept set (dedup embeddings of
    /// another model or output are not comparable with the kept ones); `None` when it may.
    pub fn kept_set_conflict(&self, new: &ProjectConfig) -> Option<String> {
        let (a, b) = (&self.dedup, &new.dedup);
        if a.model != b.model {
            Some(format!(
                "dedup.model cannot change from {:?} to {:?}: the project has a kept set made with it",
                a.model, b.model
            ))
        } else if a.embedding != b.embedding {
            Some(format!(
                "dedup.embedding cannot change from {:?} to {:?}: the project has a kept set made with it",
                a.embedding, b.embedding
            ))
        } else {
            None
        }
    }

    /// Every problem with this configuration, each naming the field; empty when valid.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let e = &self.extract;
        if !(1..=MAX_INTERVAL_FRAMES).contains(&e.interval_frames) {
            p.push(format!("extract.interval_frames must be between 1 and {MAX_INTERVAL_FRAMES}"));
        }
        check_range(&mut p, "extract.interval_seconds", e.interval_seconds, 0.001, 86_400.0);
        check_range(&mut p, "extract.scene_threshold", e.scene_threshold, 0.0, 1.0);
        check_range(&mut p, "extract.diff_threshold", e.diff_threshold, 0.0, 255.0);
        if !(1..=1_000_000).contains(&e.max_frames_per_video) {
            p.push("extract.max_frames_per_video must be between 1 and 1000000".into());
        }
        if !(1..=100).contains(&e.jpeg_quality) {
            p.push("extract.jpeg_quality must be between 1 and 100".into());
        }
        let f = &self.filter;
        check_model(&mut p, "filter.model", &f.model);
        check_batch(&mut p, "filter.batch_size", f.batch_size);
        check_range(&mut p, "filter.threshold", f.threshold, -1.0, 1.0);
        check_range(&mut p, "filter.margin_threshold", f.margin_threshold, -2.0, 2.0);
        if f.positive_prompts.is_empty() {
            p.push("filter.positive_prompts must name at least one prompt".into());
        }
        check_prompts(&mut p, "filter.positive_prompts", &f.positive_prompts);
        check_prompts(&mut p, "filter.negative_prompts", &f.negative_prompts);
        check_range(&mut p, "filter.negative_threshold", f.negative_threshold, -1.0, 1.0);
        check_prompts(&mut p, "filter.junk_prompts", &f.junk_prompts);
        check_range(&mut p, "filter.junk_threshold", f.junk_threshold, -1.0, 1.0);
        check_range(&mut p, "filter.junk_margin_threshold", f.junk_margin_threshold, -2.0, 2.0);
        let d = &self.dedup;
        check_model(&mut p, "dedup.model", &d.model);
        check_batch(&mut p, "dedup.batch_size", d.batch_size);
        check_range(&mut p, "dedup.threshold", d.threshold, -1.0, 1.0);
        if !(1..=10_000).contains(&d.k_neighbors) {
            p.push("dedup.k_neighbors must be between 1 and 10000".into());
        }
        let t = &self.detect;
        check_model(&mut p, "detect.model", &t.model);
        check_batch(&mut p, "detect.batch_size", t.batch_size);
        check_range(&mut p, "detect.threshold", t.threshold, 0.0, 1.0);
        check_prompts(&mut p, "detect.prompts", &t.prompts);
        p
    }
}

fn check_range(p: &mut Vec<String>, field: &str, v: f64, lo: f64, hi: f64) {
    if !v.is_finite() || v < lo || v > hi {
        p.push(format!("{field} must be between {lo} and {hi}"));
    }
}

fn check_batch(p: &mut Vec<String>, field: &str, v: u32) {
    if !(1..=4096).contains(&v) {
        p.push(format!("{field} must be between 1 and 4096"));
    }
}

fn check_model(p: &mut Vec<String>, field: &str, v: &str) {
    let ok = !v.is_empty()
        && v.len() <= MAX_MODEL_NAME_CHARS
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !v.starts_with('.');
    if !ok {
        p.push(format!(
            "{field} must be 1-{MAX_MODEL_NAME_CHARS} characters of [A-Za-z0-9._-], not starting with '.' \
             (agents advertise it as the capability `model:<name>`, at most {} characters)",
            crate::MAX_CAPABILITY_CHARS
        ));
    }
}

fn check_prompts(p: &mut Vec<String>, field: &str, prompts: &[String]) {
    if prompts.len() > MAX_PROMPTS {
        p.push(format!("{field} has more than {MAX_PROMPTS} prompts"));
    }
    if prompts.iter().any(|s| s.trim().is_empty() || s.chars().count() > MAX_PROMPT_CHARS) {
        p.push(format!("{field} entries must be non-blank and at most {MAX_PROMPT_CHARS} characters"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seeds() {
        let c = ProjectConfig::default();
        assert_eq!(c.extract.interval_frames, 30);
        assert_eq!(c.extract.max_frames_per_video, 5000);
        assert_eq!(c.extract.jpeg_quality, 95);
        assert_eq!(c.filter.threshold, 0.25);
        assert_eq!(c.filter.margin_threshold, 0.05);
        assert_eq!(c.filter.negative_threshold, 0.25);
        assert!(c.filter.junk_prompts.is_empty());
        assert_eq!(c.filter.junk_threshold, 0.3);
        assert_eq!(c.filter.junk_margin_threshold, 0.05);
        assert_eq!(c.dedup.embedding, DedupEmbedding::Pooler);
        assert_eq!(c.dedup.threshold, 0.90);
        assert_eq!(c.dedup.k_neighbors, 50);
        assert_eq!(c.detect.threshold, 0.3);
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level() {
        for body in [r#"{"extrac":{}}"#, r#"{"filter":{"treshold":0.3}}"#, r#"{"dedup":{"k":3}}"#] {
            assert!(serde_json::from_str::<ProjectConfig>(body).is_err(), "{body} accepted");
        }
    }

    #[test]
    fn settings_keys_name_only_the_fields_the_strategy_uses() {
        let a = ExtractConfig::default();
        let mut b = a.clone();
        b.scene_threshold = 0.9;
        b.interval_seconds = 7.0;
        assert_eq!(a.settings_key(), b.settings_key());
        assert_eq!(
            a.settings_key(),
            r#"{"interval_frames":30,"jpeg_quality":95,"max_frames_per_video":5000,"strategy":"interval_frames"}"#
        );
        b.interval_frames = 31;
        assert_ne!(a.settings_key(), b.settings_key());
        let mut s = a.clone();
        s.strategy = ExtractStrategy::IntervalSeconds;
        assert_eq!(
            s.settings_key(),
            r#"{"interval_seconds":1.0,"jpeg_quality":95,"max_frames_per_video":5000,"strategy":"interval_seconds"}"#
        );
        let mut q = a.clone();
        q.jpeg_quality = 90;
        assert_ne!(a.settings_key(), q.settings_key());
    }

    #[test]
    fn problems_name_the_field() {
        let mut c = ProjectConfig::default();
        c.filter.positive_prompts = vec!["a glass door".into()];
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        c.extract.jpeg_quality = 0;
        c.dedup.threshold = 1.5;
        c.filter.model = "../x".into();
        let p = c.problems();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("extract.jpeg_quality"));
        assert!(p[1].starts_with("filter.model"));
        assert!(p[2].starts_with("dedup.threshold"));
    }

    #[test]
    fn model_names_fit_a_capability_tag() {
        let mut c = ProjectConfig::default();
        c.filter.positive_prompts = vec!["a glass door".into()];
        c.filter.model = "m".repeat(MAX_MODEL_NAME_CHARS);
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert_eq!(c.requires(crate::Stage::Filter).map(|r| r.chars().count()), Some(crate::MAX_CAPABILITY_CHARS));
        c.dedup.model = "m".repeat(MAX_MODEL_NAME_CHARS + 1);
        let p = c.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("dedup.model must be 1-58 characters"), "{p:?}");
        assert_eq!(c.requires(crate::Stage::Dedup).as_deref(), Some(&*format!("model:{}", c.dedup.model)));
        assert_eq!(c.requires(crate::Stage::Detect).as_deref(), Some("model:grounding_dino"));
        assert_eq!(c.requires(crate::Stage::Extract), None);
    }
}
