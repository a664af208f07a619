//! The Hugging Face cache layout shared with Python tools:
//! `$HF_HUB_CACHE` (else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
//! `~/.cache/huggingface/hub`) / `models--org--name/{blobs,refs,snapshots}`, with snapshot files
//! as relative symlinks into `blobs/` named by ETag, and download locks under `.locks/`.

use crate::error::{Error, Result};
use hf_hub::{Repo, RepoType};
use std::path::{Path, PathBuf};

/// `$HF_HOME`, defaulting as huggingface_hub does.
pub fn hf_home() -> PathBuf {
    if let Some(h) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h);
    }
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir().join(".cache"));
    xdg.join("huggingface")
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The hub cache directory from the environment.
pub fn default_cache_dir() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => hf_home().join("hub"),
    }
}

/// One model repo inside the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    pub root: PathBuf,
    pub repo_id: String,
}

impl RepoCache {
    pub fn new(cache_dir: &Path, repo_id: &str) -> Self {
        // hf-hub's cache module names the folder (`models--org--name`).
        let folder = Repo::new(repo_id.to_string(), RepoType::Model).folder_name();
        RepoCache {
            root: cache_dir.join(folder),
            repo_id: repo_id.to_string(),
        }
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(etag)
    }

    /// Partial download of a blob, resumed with a Range request (huggingface_hub's name).
    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{etag}.incomplete"))
    }

    /// Lock file guarding one blob against concurrent downloads.
    pub fn lock(&self, cache_dir: &Path, etag: &str) -> PathBuf {
        let folder = self.root.file_name().expect("repo folder").to_owned();
        cache_dir.join(".locks").join(folder).join(format!("{etag}.lock"))
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    fn ref_path(&self, revision: &str) -> PathBuf {
        self.root.join("refs").join(revision)
    }

    /// The commit a branch or tag points to, as last recorded.
    pub fn read_ref(&self, revision: &str) -> Option<String> {
        std::fs::read_to_string(self.ref_path(revision))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Record `revision → commit` (atomically; a revision may contain `/`).
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        let p = self.ref_path(revision);
        let dir = p.parent().expect("ref path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        crate::util::atomic::write(&p, commit.as_bytes())
    }

    /// Resolve a revision to a commit from the cache alone: a recorded ref, or a commit hash
    /// whose snapshot exists.
    pub fn resolve_offline(&self, revision: &str) -> Option<String> {
        if let Some(c) = self.read_ref(revision) {
            return Some(c);
        }
        if is_commit_hash(revision) && self.snapshot(revision).is_dir() {
            return Some(revision.to_string());
        }
        None
    }

    /// Point `snapshots/<commit>/<file>` at `blobs/<etag>` with a relative symlink (a copy where
    /// symlinks are not available), replacing what was there.
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> Result<PathBuf> {
        let dst = self.snapshot(commit).join(file);
        let dir = dst.parent().expect("snapshot file has a parent");
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let depth = file.split('/').count() + 1; // snapshots/<commit>/a/b -> ../../../blobs
        let mut rel = PathBuf::new();
        for _ in 0..depth {
            rel.push("..");
        }
        rel.push("blobs");
        rel.push(etag);
        // Unique per process and call: another process may be linking the same file.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{}.{}.{seq}.tmp-link",
            dst.file_name().unwrap().to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        #[cfg(unix)]
        let linked = std::os::unix::fs::symlink(&rel, &tmp);
        #[cfg(not(unix))]
        let linked: std::io::Result<()> = Err(std::io::Error::other("no symlinks"));
        if linked.is_err() {
            std::fs::copy(self.blob(etag), &tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
        Ok(dst)
    }
}

/// A full 40-hex git commit id.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}
