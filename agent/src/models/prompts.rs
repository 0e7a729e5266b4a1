//! Prompt tokenization for a scorer package's text tower: the package's `tokenizer.json`
//! (loaded from disk, never fetched), lower-cased when the manifest says so, padded to the
//! text length with the pad id. A prompt longer than the text length is an error naming it
//! (silently truncating would score a different prompt than the user wrote).

use std::path::Path;

use super::manifest::TextSpec;

#[derive(Debug)]
pub struct PromptTokenizer {
    inner: tokenizers::Tokenizer,
    spec: TextSpec,
}

impl PromptTokenizer {
    pub fn load(package_dir: &Path, spec: &TextSpec) -> Result<PromptTokenizer, String> {
        let path = package_dir.join(&spec.tokenizer);
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| format!("cannot load the tokenizer {}: {e}", path.display()))?;
        Ok(PromptTokenizer { inner, spec: spec.clone() })
    }

    /// Token ids of `prompts`, `text length` per prompt, row after row.
    pub fn encode(&self, prompts: &[String]) -> Result<Vec<i64>, String> {
        let mut out = Vec::with_capacity(prompts.len() * self.spec.length);
        for p in prompts {
            let text = if self.spec.lowercase { p.to_lowercase() } else { p.clone() };
            let enc = self.inner.encode(text, false).map_err(|e| format!("cannot tokenize prompt {p:?}: {e}"))?;
            let ids = enc.get_ids();
            if ids.len() > self.spec.length {
                return Err(format!(
                    "prompt {p:?} is {} tokens long; this model's text length is {}",
                    ids.len(),
                    self.spec.length
                ));
            }
            out.extend(ids.iter().map(|i| i64::from(*i)));
            out.extend(std::iter::repeat_n(self.spec.pad_id, self.spec.length - ids.len()));
        }
        Ok(out)
    }
}
