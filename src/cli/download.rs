//! `perceptio download`: fetch model repos into the shared Hugging Face cache.

use crate::error::{Error, Result};
use crate::hub::{self, known::KNOWN_REPOS, Filter, HubConfig, RepoSpec};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// Repos to fetch, `org/name` or `org/name@revision` (default: ByteDance/Sa2VA-1B).
    #[arg(value_name = "REPO[@REVISION]")]
    pub repos: Vec<String>,
    /// Branch, tag or commit for repos given without `@revision`.
    #[arg(long)]
    pub revision: Option<String>,
    /// Also fetch files matching these globs (fnmatch, e.g. "*.py").
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Skip files matching these globs.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Use only the cache (same as HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Cache directory (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// List the model repos perceptio knows and exit.
    #[arg(long)]
    pub list: bool,
    /// Print one JSON object per repo instead of the snapshot paths.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: DownloadArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let w = |e: std::io::Error| Error::io("<stdout>", e);
    if a.list {
        for (repo, role, note) in KNOWN_REPOS {
            writeln!(out, "{repo:<44} {role:<14} {note}").map_err(w)?;
        }
        return Ok(());
    }
    let mut cfg = HubConfig::from_env();
    cfg.offline |= a.offline;
    if let Some(d) = a.cache_dir {
        cfg.cache_dir = d;
    }
    let filter = Filter {
        include: a.include,
        exclude: a.exclude,
    };
    let repos = if a.repos.is_empty() {
        vec!["ByteDance/Sa2VA-1B".to_string()]
    } else {
        a.repos
    };
    for r in &repos {
        let spec = RepoSpec::parse(r, a.revision.as_deref())?;
        let snap = hub::download(&spec, &cfg, &filter)?;
        let fetched = snap.files.iter().filter(|f| !f.cached).count();
        eprintln!(
            "{}@{}: {} files ({} downloaded, {} cached) at commit {}",
            snap.repo_id,
            snap.revision,
            snap.files.len(),
            fetched,
            snap.files.len() - fetched,
            snap.commit
        );
        if a.json {
            serde_json::to_writer(&mut out, &snap).map_err(|e| w(e.into()))?;
            writeln!(out).map_err(w)?;
        } else {
            writeln!(out, "{}", snap.path.display()).map_err(w)?;
        }
    }
    Ok(())
}
