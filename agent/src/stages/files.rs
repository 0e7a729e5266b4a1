//! File helpers the stages share on the data root: atomic writes, SHA-256 of a file (or of
//! its first bytes, for a resumed download), and the other attempt directories of a task.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Writes `data` to a temporary sibling and renames it over `path`, so readers never see
/// half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Feeds everything `r` yields to `hasher` in 1 MiB reads; returns the byte count.
pub fn hash_into(r: &mut impl Read, hasher: &mut Sha256) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(size);
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The task's other attempt directories beside `attempt_dir` (named `<task_id>.<token>`).
pub fn sibling_attempts(attempt_dir: &Path, task_id: i64) -> Vec<PathBuf> {
    let (Some(parent), Some(own)) = (attempt_dir.parent(), attempt_dir.file_name()) else { return Vec::new() };
    let prefix = format!("{task_id}.");
    let Ok(entries) = std::fs::read_dir(parent) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_name() != own && e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_are_the_same_tasks_other_attempts() {
        let root = std::env::temp_dir().join(format!("dm-files-{}", std::process::id()));
        for d in ["7.1", "7.2", "7.3", "70.1", "8.1"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        let mut s = sibling_attempts(&root.join("7.2"), 7);
        s.sort();
        assert_eq!(s, vec![root.join("7.1"), root.join("7.3")]);
        let mut h = Sha256::new();
        assert_eq!(hash_into(&mut &b"abc"[..], &mut h).expect("hash"), 3);
        assert_eq!(hex(&h.finalize())[..8], *"ba7816bf");
        let _ = std::fs::remove_dir_all(&root);
    }
}
