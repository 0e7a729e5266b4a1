//! The packages this agent has loaded, by name, on its device: each verified (hashes), loaded
//! once and shared by every task that names it; a scorer's tokenizer comes with it. A package
//! that fails to load is an error naming it (the task fails fatally: retrying on this agent
//! would fail the same way).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::manifest::Package;
use super::prompts::PromptTokenizer;
use super::torch::{select_device, TorchRunner};

/// One loaded package.
#[derive(Debug)]
pub struct Loaded {
    pub package: Package,
    pub runner: TorchRunner,
    pub tokenizer: Option<PromptTokenizer>,
}

#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    device: tch::Device,
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
    /// Chooses the device now, so an impossible setting (`cuda` without CUDA) stops the agent
    /// at start rather than failing every task.
    pub fn new(dir: PathBuf, device: &str) -> Result<Registry, String> {
        let device = select_device(device)?;
        Ok(Registry { dir, device, loaded: Mutex::new(HashMap::new()), kept: Mutex::new(HashMap::new()) })
    }

    pub fn device_name(&self) -> String {
        match self.device {
            tch::Device::Cuda(n) => format!("cuda:{n}"),
            _ => "cpu".into(),
        }
    }

    /// The package `name`, loading it on first use.
    pub fn get(&self, name: &str) -> Result<Arc<Loaded>, String> {
        if let Some(l) = self.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(l.clone());
        }
        let package = Package::load(&self.dir, name).map_err(|e| e.to_string())?;
        let runner = TorchRunner::load(&package, self.device)?;
        let tokenizer = match &package.manifest.text {
            Some(t) => Some(PromptTokenizer::load(&package.dir, t)?),
            None => None,
        };
        let l = Arc::new(Loaded { package, runner, tokenizer });
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), l.clone());
        Ok(l)
    }
}
