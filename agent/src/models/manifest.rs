//! A model package on disk: `<models_dir>/<name>/manifest.json` describing the TorchScript
//! files, the image pre-processing, the text tokenizer (scorers) and the embedding size, with
//! the SHA-256 of every file. Loading checks every hash, so a package that was changed or
//! half-copied is refused with the file named, before any model runs. The format is written by
//! `scripts/models/export.py` (see `scripts/models/README.md`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The manifest format this agent reads.
pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("model package {0}: cannot read {1}: {2}")]
    Io(String, String, std::io::Error),
    #[error("model package {0}: manifest.json is invalid: {1}")]
    Manifest(String, String),
    #[error("model package {0}: {1} has sha256 {2}, the manifest says {3}")]
    Hash(String, String, String, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Image and text towers scoring frames against prompts (SigLIP2-style).
    ImageTextScorer,
    /// An image tower whose embeddings dedup frames (DINO-style).
    ImageEmbedder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resample {
    Bilinear,
    Bicubic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    pub height: u32,
    pub width: u32,
    /// Only `squash` (resize to exactly height × width) is defined.
    pub resize: String,
    pub resample: Resample,
    /// Multiplies 8-bit values before normalisation (1/255).
    pub rescale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    /// Token ids per prompt: padded (with `pad_id`) or refused when longer.
    pub length: usize,
    pub pad_id: i64,
    pub lowercase: bool,
    /// The tokenizer file, relative to the package.
    pub tokenizer: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub kind: Kind,
    /// `random-init seed N`, `checkpoint <dir>` or `oracle <name>`.
    pub source: String,
    pub dtype: String,
    pub image: ImageSpec,
    #[serde(default)]
    pub text: Option<TextSpec>,
    #[serde(default)]
    pub logit_scale: Option<f32>,
    #[serde(default)]
    pub logit_bias: Option<f32>,
    pub embedding_dim: usize,
    /// File (relative to the package) → SHA-256 hex.
    pub files: BTreeMap<String, String>,
}

/// A verified package: its manifest, where it is, and its digest (the SHA-256 of the
/// manifest file, which names every other file's hash).
#[derive(Debug, Clone)]
pub struct Package {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub digest: String,
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

impl Manifest {
    /// Everything wrong with a parsed manifest, in words an operator can act on.
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.format != FORMAT {
            p.push(format!("format {} is not {FORMAT}", self.format));
        }
        // What the towers compute in; their inputs and outputs are float32 either way.
        if !matches!(self.dtype.as_str(), "float32" | "bfloat16") {
            p.push(format!("dtype {:?} is not float32 or bfloat16", self.dtype));
        }
        if self.image.resize != "squash" {
            p.push(format!("image.resize {:?} is not \"squash\"", self.image.resize));
        }
        if self.image.height == 0 || self.image.width == 0 || self.image.height > 4096 || self.image.width > 4096 {
            p.push("image.height and image.width must be 1–4096".into());
        }
        if self.image.std.iter().any(|s| !s.is_finite() || *s == 0.0) || !self.image.rescale.is_finite() {
            p.push("image.std must be non-zero and image.rescale finite".into());
        }
        if self.embedding_dim == 0 {
            p.push("embedding_dim must be at least 1".into());
        }
        let need: &[&str] = match self.kind {
            Kind::ImageTextScorer => &["image.pt", "text.pt"],
            Kind::ImageEmbedder => &["image.pt"],
        };
        for f in need {
            if !self.files.contains_key(*f) {
                p.push(format!("files lacks {f}"));
            }
        }
        if self.kind == Kind::ImageTextScorer {
            match &self.text {
                None => p.push("an image-text-scorer needs a text section".into()),
                Some(t) => {
                    if t.length == 0 {
                        p.push("text.length must be at least 1".into());
                    }
                    if !self.files.contains_key(&t.tokenizer) {
                        p.push(format!("files lacks the tokenizer {}", t.tokenizer));
                    }
                }
            }
            if self.logit_scale.is_none_or(|x| !x.is_finite()) || self.logit_bias.is_none_or(|x| !x.is_finite()) {
                p.push("an image-text-scorer needs finite logit_scale and logit_bias".into());
            }
        }
        for f in self.files.keys() {
            let ok = !f.is_empty() && !f.starts_with('/') && f.split('/').all(|c| !c.is_empty() && c != "..");
            if !ok {
                p.push(format!("file name {f:?} must stay inside the package"));
            }
        }
        p
    }
}

impl Package {
    /// Reads and verifies `<models_dir>/<name>`: the manifest parses and makes sense, and
    /// every listed file has the listed SHA-256.
    pub fn load(models_dir: &Path, name: &str) -> Result<Package, PackageError> {
        let dir = models_dir.join(name);
        let mpath = dir.join("manifest.json");
        let text = std::fs::read(&mpath).map_err(|e| PackageError::Io(name.into(), "manifest.json".into(), e))?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| PackageError::Manifest(name.into(), e.to_string()))?;
        let problems = manifest.problems();
        if !problems.is_empty() {
            return Err(PackageError::Manifest(name.into(), problems.join("; ")));
        }
        for (file, want) in &manifest.files {
            let got = sha256_file(&dir.join(file)).map_err(|e| PackageError::Io(name.into(), file.clone(), e))?;
            if !got.eq_ignore_ascii_case(want) {
                return Err(PackageError::Hash(name.into(), file.clone(), got, want.clone()));
            }
        }
        let digest = {
            use sha2::{Digest, Sha256};
            format!("{:x}", Sha256::digest(&text))
        };
        Ok(Package { dir, manifest, digest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_package(dir: &Path, image_pt: &[u8], tamper: bool) {
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::write(dir.join("image.pt"), image_pt).expect("write");
        let hash = {
            use sha2::{Digest, Sha256};
            format!("{:x}", Sha256::digest(if tamper { b"other".as_slice() } else { image_pt }))
        };
        let m = serde_json::json!({
            "format": 1, "name": "thumb", "kind": "image-embedder", "source": "oracle thumbnail",
            "dtype": "float32",
            "image": {"height": 64, "width": 64, "resize": "squash", "resample": "bilinear",
                      "rescale": 1.0 / 255.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
            "embedding_dim": 256,
            "files": {"image.pt": hash}
        });
        std::fs::write(dir.join("manifest.json"), m.to_string()).expect("manifest");
    }

    #[test]
    fn packages_are_verified_file_by_file() {
        let root = std::env::temp_dir().join(format!("dm-pkg-{}", std::process::id()));
        write_package(&root.join("ok"), b"torchscript bytes", false);
        let p = Package::load(&root, "ok").expect("valid package");
        assert_eq!((p.manifest.kind, p.manifest.embedding_dim), (Kind::ImageEmbedder, 256));
        assert_eq!(p.digest.len(), 64);
        write_package(&root.join("bad"), b"torchscript bytes", true);
        let e = Package::load(&root, "bad").expect_err("tampered").to_string();
        assert!(e.contains("image.pt has sha256"), "{e}");
        let e = Package::load(&root, "missing").expect_err("missing").to_string();
        assert!(e.contains("cannot read manifest.json"), "{e}");
        std::fs::write(root.join("ok/manifest.json"), r#"{"format": 2}"#).expect("overwrite");
        let e = Package::load(&root, "ok").expect_err("invalid").to_string();
        assert!(e.contains("manifest.json is invalid"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn scorers_need_text_and_logits() {
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "format": 1, "name": "s", "kind": "image-text-scorer", "source": "random-init seed 0",
            "dtype": "float32",
            "image": {"height": 32, "width": 32, "resize": "squash", "resample": "bicubic",
                      "rescale": 0.0039, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
            "embedding_dim": 8, "files": {"image.pt": "00", "../text.pt": "00"}
        }))
        .expect("parses");
        let p = m.problems().join("; ");
        for want in ["files lacks text.pt", "needs a text section", "logit_scale", "inside the package"] {
            assert!(p.contains(want), "{want} missing from {p}");
        }
    }
}
