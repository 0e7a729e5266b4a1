//! The packages this agent serves, by name, on its device: at start each is verified
//! (hashes), loaded, and run once on a dummy input, so a broken package stops the agent
//! before it advertises `model:<name>`. Each loaded package gets one shared runner thread
//! (`shared.rs`) that every task feeds; a scorer's tokenizer and its prompt embeddings
//! (per prompt list) are kept with it. A package a task names that was not served at start
//! is loaded on first use; one that fails to load fails the task fatally (retrying on this
//! agent would fail the same way).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::manifest::{Kind, Package};
use super::prompts::PromptTokenizer;
use super::rules::l2_normalise;
use super::runner::ModelRunner;
use super::shared::{HookedRunner, RunObserver, SharedRunner};
use super::torch::{select_device, TorchRunner};

/// Prompt lists whose embeddings are kept per package (a project has one; a few projects
/// share an agent).
const TEXT_CACHE: usize = 64;

/// Normalised text embeddings per prompt list.
type TextCache = Mutex<HashMap<Vec<String>, Arc<Vec<Vec<f32>>>>>;

/// One loaded package.
#[derive(Debug)]
pub struct Loaded {
    pub package: Package,
    /// Direct access (text towers, start-up checks); image batches go through `shared`.
    pub runner: Arc<TorchRunner>,
    pub shared: SharedRunner,
    pub tokenizer: Option<PromptTokenizer>,
    texts: TextCache,
}

impl Loaded {
    /// The normalised text embeddings of `prompts` (lower-cased and padded as the manifest
    /// says), computed once per prompt list. A prompt longer than the text length is an
    /// error naming it.
    pub fn prompt_embeddings(&self, prompts: &[String]) -> Result<Arc<Vec<Vec<f32>>>, PromptError> {
        if let Some(t) = self.texts.lock().unwrap_or_else(|p| p.into_inner()).get(prompts) {
            return Ok(t.clone());
        }
        let tok = self.tokenizer.as_ref().ok_or_else(|| {
            PromptError::Fatal(format!(
                "model {} has no tokenizer (not an image-text scorer)",
                self.package.manifest.name
            ))
        })?;
        let ids = tok.encode(prompts).map_err(PromptError::Fatal)?;
        let m = self.runner.text(&ids, prompts.len()).map_err(|e| PromptError::Model(e.to_string()))?;
        let rows: Vec<Vec<f32>> = (0..m.rows)
            .map(|i| {
                let mut v = m.row(i).to_vec();
                l2_normalise(&mut v);
                v
            })
            .collect();
        let rows = Arc::new(rows);
        let mut cache = self.texts.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= TEXT_CACHE {
            cache.clear();
        }
        cache.insert(prompts.to_vec(), rows.clone());
        Ok(rows)
    }
}

/// Why prompt embeddings could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The prompts or the package are wrong (fatal for the task).
    #[error("{0}")]
    Fatal(String),
    /// The text tower failed (retryable).
    #[error("{0}")]
    Model(String),
}

/// How packages run on this agent.
#[derive(Clone, Default)]
pub struct RunSettings {
    /// Test hooks (hidden settings): out of memory above this many frames, delay per batch.
    pub oom_above: Option<usize>,
    pub delay: Duration,
    pub observer: Option<Arc<dyn RunObserver>>,
}

impl std::fmt::Debug for RunSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunSettings").field("oom_above", &self.oom_above).field("delay", &self.delay).finish()
    }
}

#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    device: tch::Device,
    settings: RunSettings,
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
    /// Per project, the kept set this agent has read so far (dedup tasks of a project run
    /// one at a time, so each reads only the entries it lacks).
    pub kept: Mutex<HashMap<String, KeptCache>>,
}

/// A project's kept set as far as `upto` (its last `kept_seq`), made with `digest`.
#[derive(Debug, Clone)]
pub struct KeptCache {
    pub upto: i64,
    pub digest: String,
    pub set: super::rules::KeptSet,
}

impl Registry {
    /// Chooses the device now, so an impossible setting (`cuda` without CUDA) stops the
    /// agent at start rather than failing every task.
    pub fn new(dir: PathBuf, device: &str, settings: RunSettings) -> Result<Registry, String> {
        let device = select_device(device)?;
        Ok(Registry { dir, device, settings, loaded: Mutex::new(HashMap::new()), kept: Mutex::new(HashMap::new()) })
    }

    pub fn device_name(&self) -> String {
        match self.device {
            tch::Device::Cuda(n) => format!("cuda:{n}"),
            _ => "cpu".into(),
        }
    }

    /// The package names in the models dir (directories with a `manifest.json`), sorted.
    pub fn available(&self) -> Result<Vec<String>, String> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| format!("cannot read the models dir {}: {e}", self.dir.display()))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("manifest.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Loads every package in `names` and runs each once on a dummy input (one black frame;
    /// a scorer also embeds one padded prompt). The first failure is the error.
    pub fn serve(&self, names: &[String]) -> Result<(), String> {
        for name in names {
            let l = self.get(name)?;
            let m = &l.package.manifest;
            let per = 3 * m.image.height as usize * m.image.width as usize;
            l.runner.image(&vec![0.0; per], 1).map_err(|e| format!("model package {name}: dummy forward: {e}"))?;
            if m.kind == Kind::ImageTextScorer {
                l.prompt_embeddings(&["a photo".to_string()])
                    .map_err(|e| format!("model package {name}: dummy text forward: {e}"))?;
            }
        }
        Ok(())
    }

    /// The package `name`, loading it on first use.
    pub fn get(&self, name: &str) -> Result<Arc<Loaded>, String> {
        if let Some(l) = self.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(l.clone());
        }
        let package = Package::load(&self.dir, name).map_err(|e| e.to_string())?;
        let runner = Arc::new(TorchRunner::load(&package, self.device)?);
        if package.manifest.dtype == "bfloat16" && !matches!(self.device, tch::Device::Cuda(_)) {
            tracing::warn!(model = name, "a bfloat16 package on the CPU: slower than its float32 export");
        }
        let tokenizer = match &package.manifest.text {
            Some(t) => Some(PromptTokenizer::load(&package.dir, t)?),
            None => None,
        };
        let s = &self.settings;
        let image_runner: Arc<dyn ModelRunner> = if s.oom_above.is_some() || !s.delay.is_zero() {
            Arc::new(HookedRunner { inner: runner.clone(), oom_above: s.oom_above, delay: s.delay })
        } else {
            runner.clone()
        };
        let per = 3 * package.manifest.image.height as usize * package.manifest.image.width as usize;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let overlap = matches!(self.device, tch::Device::Cuda(_)) || cores > tch::get_num_threads().max(1) as usize;
        let shared = SharedRunner::start(name, image_runner, per, s.observer.clone())
            .map_err(|e| format!("model package {name}: cannot start its runner thread: {e}"))?
            .with_overlap(overlap);
        let l = Arc::new(Loaded { package, runner, shared, tokenizer, texts: Mutex::new(HashMap::new()) });
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        // Two tasks may have loaded it at once: keep the first.
        Ok(loaded.entry(name.to_string()).or_insert(l).clone())
    }
}
