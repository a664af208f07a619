//! Hugging Face hub access: resolve `--model` (a local directory or `org/name[@revision]`),
//! download what perceptio needs into the cache Python tools share, resumably and verified.
//!
//! A small client on ureq rather than hf-hub's own API: hf-hub 0.5's sync client breaks on
//! large LFS files when the server gzips (hf-hub#141), ignores `HF_HUB_CACHE`/`HF_TOKEN`/
//! `HF_HUB_OFFLINE`, and neither resumes nor verifies; hf-hub 1.0 brings tokio, reqwest and
//! hf-xet. hf-hub's cache module still names the repo folders. See docs/hub.md.

pub mod cache;
pub mod known;
pub mod select;

use crate::error::{Error, Result};
use cache::{is_commit_hash, RepoCache};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where and how to talk to the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub endpoint: String,
    pub cache_dir: PathBuf,
    pub token: Option<String>,
    pub offline: bool,
    /// Attempts per request (connection errors, 5xx, 429, truncated bodies).
    pub retries: u32,
    /// First backoff delay; doubled on each retry.
    pub backoff: Duration,
    /// Progress bars on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
}

impl HubConfig {
    /// From the environment, as huggingface_hub reads it: `HF_ENDPOINT`, `HF_HUB_CACHE` /
    /// `HF_HOME`, `HF_TOKEN` (else `HF_TOKEN_PATH`, else `$HF_HOME/token`), `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let token = env("HF_TOKEN").map(|t| t.trim().to_string()).or_else(|| {
            let p = env("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| cache::hf_home().join("token"));
            std::fs::read_to_string(p)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let offline = env("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        let backoff_ms = env("PERCEPTIO_HUB_BACKOFF_MS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        HubConfig {
            endpoint: env("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            cache_dir: cache::default_cache_dir(),
            token,
            offline,
            retries: 5,
            backoff: Duration::from_millis(backoff_ms),
            progress: true,
        }
    }
}

/// `org/name` or `org/name@revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    pub repo_id: String,
    pub revision: String,
}

impl RepoSpec {
    pub fn parse(s: &str, default_revision: Option<&str>) -> Result<Self> {
        let (id, rev) = match s.split_once('@') {
            Some((id, rev)) => (id, Some(rev)),
            None => (s, None),
        };
        let valid = |p: &str| {
            !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !p.starts_with('.')
        };
        let parts: Vec<&str> = id.split('/').collect();
        if !(parts.len() == 2 && parts.iter().all(|p| valid(p)) || parts.len() == 1 && valid(parts[0])) {
            return Err(Error::Usage(format!(
                "{s:?} is not a repo id (expected org/name or org/name@revision) nor an existing directory"
            )));
        }
        let revision = rev.or(default_revision).unwrap_or("main");
        if revision.is_empty() || revision.contains("..") {
            return Err(Error::Usage(format!("invalid revision {revision:?}")));
        }
        Ok(RepoSpec {
            repo_id: id.to_string(),
            revision: revision.to_string(),
        })
    }
}

/// What to fetch beyond perceptio's needs.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// One file of a finished download.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub file: String,
    pub size: u64,
    pub etag: String,
    /// Already in the cache (no body was transferred).
    pub cached: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub repo_id: String,
    pub revision: String,
    pub commit: String,
    pub path: PathBuf,
    pub files: Vec<FileReport>,
}

#[derive(Deserialize)]
struct RepoInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
}

/// Resolve `--model`: an existing directory is used as is; anything else is a repo id fetched
/// (or found, offline) in the cache. Returns the directory holding the files.
pub fn resolve_model(spec: &str, cfg: &HubConfig) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if looks_like_path(spec) {
        return Err(Error::io(
            p,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    let repo = RepoSpec::parse(spec, None)?;
    Ok(download(&repo, cfg, &Filter::default())?.path)
}

/// A spec that names a local file or directory rather than a hub repo (`./x`, `/x`, `~/x`, a
/// checkpoint extension, or more than one `/`), so a typo is reported as a missing path.
pub fn looks_like_path(spec: &str) -> bool {
    let exts = [".pt", ".pth", ".safetensors", ".bin", ".json", ".ckpt"];
    spec.starts_with('.')
        || spec.starts_with('/')
        || spec.starts_with('~')
        || exts.iter().any(|e| spec.ends_with(e))
        || spec.split('@').next().unwrap_or("").matches('/').count() > 1
}

/// Fetch what perceptio needs from `repo` into the cache (or find it there, offline).
pub fn download(repo: &RepoSpec, cfg: &HubConfig, filter: &Filter) -> Result<Snapshot> {
    let rc = RepoCache::new(&cfg.cache_dir, &repo.repo_id);
    if cfg.offline {
        return offline_snapshot(repo, &rc, filter);
    }
    let client = Client::new(cfg);
    let info = match client.repo_info(repo) {
        Ok(i) => i,
        Err(e @ ClientError::Network(_)) => {
            // As huggingface_hub does: a warm cache still works when the hub is unreachable.
            if let Ok(s) = offline_snapshot(repo, &rc, filter) {
                eprintln!("warning: {e}; using the cached snapshot {}", s.commit);
                return Ok(s);
            }
            return Err(e.into_error(repo));
        }
        Err(e) => return Err(e.into_error(repo)),
    };
    let names: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    if !is_commit_hash(&info.sha) {
        return Err(Error::at(
            format!("{}/api/models/{}", cfg.endpoint, repo.repo_id),
            format!("commit {:?} is not a 40-hex id", info.sha),
        ));
    }
    let commit = info.sha.clone();
    let bars = Bars::new(cfg.progress);
    let mut reports = Vec::new();
    // The index decides which shards to take, so fetch it first.
    let index_name = "model.safetensors.index.json";
    let mut shards = None;
    if names.iter().any(|n| n == index_name) && !filter.exclude.iter().any(|g| select::fnmatch(g, index_name)) {
        let r = fetch_file(&client, &rc, cfg, repo, &commit, index_name, &bars)?;
        let p = rc.snapshot(&commit).join(index_name);
        let s = crate::util::safetensors_index_shards(&p)?;
        if let Some(missing) = s.iter().find(|f| !names.contains(f)) {
            return Err(Error::input(
                &p,
                format!("names shard {missing} which the repo does not have"),
            ));
        }
        shards = Some(s);
        reports.push(r);
    }
    let wanted = select::select(&names, shards.as_deref(), &filter.include, &filter.exclude);
    if wanted.is_empty() {
        return Err(Error::at(
            format!("{}@{}", repo.repo_id, repo.revision),
            "no file matches (the repo has none of the files perceptio needs)",
        ));
    }
    bars.total(wanted.len());
    for f in wanted.iter().filter(|f| f.as_str() != index_name || shards.is_none()) {
        reports.push(fetch_file(&client, &rc, cfg, repo, &commit, f, &bars)?);
    }
    reports.sort_by(|a, b| a.file.cmp(&b.file));
    if repo.revision != commit {
        rc.write_ref(&repo.revision, &commit)?;
    }
    bars.finish();
    Ok(Snapshot {
        repo_id: repo.repo_id.clone(),
        revision: repo.revision.clone(),
        commit: commit.clone(),
        path: rc.snapshot(&commit),
        files: reports,
    })
}

/// A snapshot from the cache alone, checking that the files a model needs are there.
fn offline_snapshot(repo: &RepoSpec, rc: &RepoCache, filter: &Filter) -> Result<Snapshot> {
    let loc = format!("{}@{} (offline)", repo.repo_id, repo.revision);
    let Some(commit) = rc.resolve_offline(&repo.revision) else {
        return Err(Error::at(
            loc,
            format!(
                "not in the cache {}: no refs/{} and no snapshot; run `perceptio download {}` while online",
                rc.root.display(),
                repo.revision,
                repo.repo_id
            ),
        ));
    };
    let dir = rc.snapshot(&commit);
    let mut names = Vec::new();
    list_files(&dir, &dir, &mut names);
    let mut missing = Vec::new();
    if !names.iter().any(|n| n == "config.json") && !names.iter().any(|n| n.ends_with(".pt")) {
        missing.push("config.json".to_string());
    }
    let index = dir.join("model.safetensors.index.json");
    let mut shards = None;
    if index.is_file() {
        let s = crate::util::safetensors_index_shards(&index)?;
        missing.extend(s.iter().filter(|f| !dir.join(f).is_file()).cloned());
        shards = Some(s);
    } else if !names
        .iter()
        .any(|n| n.ends_with(".safetensors") || n.ends_with(".pt") || n.ends_with(".pth") || n.ends_with(".bin"))
    {
        missing.push("*.safetensors (no weights)".into());
    }
    for g in &filter.include {
        if !names.iter().any(|n| select::fnmatch(g, n)) {
            missing.push(format!("{g} (--include)"));
        }
    }
    if !missing.is_empty() {
        return Err(Error::at(
            loc,
            format!("the cached snapshot {} lacks {}", dir.display(), missing.join(", ")),
        ));
    }
    let wanted = select::select(&names, shards.as_deref(), &filter.include, &filter.exclude);
    let files = wanted.into_iter().map(|f| cached_report(&dir.join(&f), f)).collect();
    Ok(Snapshot {
        repo_id: repo.repo_id.clone(),
        revision: repo.revision.clone(),
        commit,
        path: dir,
        files,
    })
}

/// Report for a file already in a snapshot: its size and the blob (ETag) its link points to.
fn cached_report(path: &Path, file: String) -> FileReport {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let etag = std::fs::read_link(path)
        .ok()
        .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    FileReport {
        file,
        size,
        etag,
        cached: true,
    }
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            list_files(root, &p, out);
        } else if p.exists() {
            if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
}

/// Download one file of `commit` into the cache unless its snapshot entry exists.
fn fetch_file(
    client: &Client,
    rc: &RepoCache,
    cfg: &HubConfig,
    repo: &RepoSpec,
    commit: &str,
    file: &str,
    bars: &Bars,
) -> Result<FileReport> {
    let snap = rc.snapshot(commit).join(file);
    if snap.is_file() {
        // A commit is immutable: a complete snapshot entry needs no request at all.
        bars.done_one();
        return Ok(cached_report(&snap, file.into()));
    }
    let url = format!(
        "{}/{}/resolve/{}/{}",
        cfg.endpoint,
        repo.repo_id,
        commit,
        encode_path(file)
    );
    let meta = client.head(&url).map_err(|e| e.into_file_error(repo, file))?;
    let blob = rc.blob(&meta.etag);
    let lock_path = rc.lock(&cfg.cache_dir, &meta.etag);
    let lock_dir = lock_path.parent().unwrap();
    std::fs::create_dir_all(lock_dir).map_err(|e| Error::io(lock_dir, e))?;
    let blobs_dir = blob.parent().unwrap();
    std::fs::create_dir_all(blobs_dir).map_err(|e| Error::io(blobs_dir, e))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?; // another process may hold it: wait
    let mut cached = true;
    if !blob.is_file() {
        cached = false;
        let bar = bars.file(file, meta.size);
        client
            .download_blob(&meta, &rc.incomplete(&meta.etag), &blob, &bar)
            .map_err(|e| e.into_file_error(repo, file))?;
        bar.finish_and_clear();
    }
    let _ = lock.unlock();
    rc.link(commit, file, &meta.etag)?;
    bars.done_one();
    let size = std::fs::metadata(&blob)
        .map(|m| m.len())
        .unwrap_or(meta.size.unwrap_or(0));
    Ok(FileReport {
        file: file.into(),
        size,
        etag: meta.etag,
        cached,
    })
}

fn encode_path(p: &str) -> String {
    let mut s = String::new();
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Metadata of one file from a HEAD on its resolve URL.
#[derive(Debug, Clone)]
struct FileMeta {
    /// sha256 for LFS files (X-Linked-Etag), the git blob sha1 otherwise.
    etag: String,
    size: Option<u64>,
    /// Where the body is (an LFS redirect target, or the resolve URL).
    url: String,
}

/// Failures, classified so callers can retry, fall back to the cache, or explain.
#[derive(Debug)]
enum ClientError {
    Network(String),
    Status(u16, String),
    Integrity(String),
    Io(PathBuf, std::io::Error),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Network(m) => write!(f, "network error: {m}"),
            ClientError::Status(s, u) => write!(f, "HTTP {s} from {u}"),
            ClientError::Integrity(m) => write!(f, "{m}"),
            ClientError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl ClientError {
    fn into_error(self, repo: &RepoSpec) -> Error {
        let loc = format!("{}@{}", repo.repo_id, repo.revision);
        match self {
            ClientError::Status(401 | 403, _) => Error::at(
                loc,
                "repo not found or gated; set HF_TOKEN (or log in with `huggingface-cli login`) if you have access",
            ),
            ClientError::Status(404, _) => Error::at(
                loc,
                "repo or revision not found (if it is private or gated, set HF_TOKEN)",
            ),
            ClientError::Io(p, e) => Error::io(p, e),
            other => Error::at(loc, other.to_string()),
        }
    }

    fn into_file_error(self, repo: &RepoSpec, file: &str) -> Error {
        match self {
            ClientError::Status(404, _) => Error::at(
                format!("{}@{}", repo.repo_id, repo.revision),
                format!("file {file} not found"),
            ),
            ClientError::Integrity(m) => Error::at(format!("{}@{}: {file}", repo.repo_id, repo.revision), m),
            other => other.into_error(repo),
        }
    }

    fn retryable(&self) -> bool {
        match self {
            ClientError::Network(_) => true,
            ClientError::Status(s, _) => *s == 429 || *s >= 500,
            _ => false,
        }
    }
}

struct Client<'a> {
    agent: ureq::Agent,
    cfg: &'a HubConfig,
}

fn header(r: &ureq::http::Response<ureq::Body>, k: &str) -> Option<String> {
    r.headers().get(k).and_then(|v| v.to_str().ok()).map(|s| s.to_string())
}

/// `"abc"` / `W/"abc"` → `abc`.
fn clean_etag(e: &str) -> String {
    e.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

impl<'a> Client<'a> {
    fn new(cfg: &'a HubConfig) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .accept_encoding("identity") // never gzip: sizes and hashes are of the raw bytes (hf-hub#141)
            .user_agent(format!("perceptio/{}", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        Client { agent, cfg }
    }

    fn with_retries<T>(&self, mut f: impl FnMut() -> Result<T, ClientError>) -> Result<T, ClientError> {
        let mut delay = self.cfg.backoff;
        let mut attempt = 1;
        loop {
            match f() {
                Err(e) if e.retryable() && attempt < self.cfg.retries => {
                    eprintln!(
                        "warning: {e}; retrying in {:.1} s (attempt {}/{})",
                        delay.as_secs_f64(),
                        attempt + 1,
                        self.cfg.retries
                    );
                    std::thread::sleep(delay);
                    delay *= 2;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// GET/HEAD with the token, following redirects by hand (keeping auth on the same host only).
    fn call(
        &self,
        method: &str,
        url: &str,
        range_from: Option<u64>,
    ) -> Result<(ureq::http::Response<ureq::Body>, String), ClientError> {
        let mut url = url.to_string();
        for _ in 0..10 {
            let mut req = ureq::http::Request::builder().method(method).uri(&url);
            if let Some(t) = &self.cfg.token {
                if same_host(&url, &self.cfg.endpoint) {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
            }
            if let Some(from) = range_from.filter(|&f| f > 0) {
                req = req.header("range", format!("bytes={from}-"));
            }
            let req = req.body(()).map_err(|e| ClientError::Network(e.to_string()))?;
            let resp = self
                .agent
                .run(req)
                .map_err(|e| ClientError::Network(format!("{url}: {e}")))?;
            let status = resp.status().as_u16();
            if (300..400).contains(&status) && method == "GET" {
                let loc = header(&resp, "location").ok_or_else(|| ClientError::Status(status, url.clone()))?;
                url = join_url(&url, &loc);
                continue;
            }
            return Ok((resp, url));
        }
        Err(ClientError::Network(format!("{url}: too many redirects")))
    }

    fn repo_info(&self, repo: &RepoSpec) -> Result<RepoInfo, ClientError> {
        let url = format!(
            "{}/api/models/{}/revision/{}",
            self.cfg.endpoint,
            repo.repo_id,
            repo.revision.replace('/', "%2F")
        );
        self.with_retries(|| {
            let (mut resp, url) = self.call("GET", &url, None)?;
            let status = resp.status().as_u16();
            if status != 200 {
                return Err(ClientError::Status(status, url));
            }
            let body = resp
                .body_mut()
                .read_to_string()
                .map_err(|e| ClientError::Network(e.to_string()))?;
            serde_json::from_str(&body)
                .map_err(|e| ClientError::Integrity(format!("unexpected answer from {url}: {e}")))
        })
    }

    fn head(&self, url: &str) -> Result<FileMeta, ClientError> {
        self.with_retries(|| {
            let (resp, url) = self.call("HEAD", url, None)?;
            let status = resp.status().as_u16();
            if !(200..400).contains(&status) {
                return Err(ClientError::Status(status, url));
            }
            let etag = header(&resp, "x-linked-etag")
                .or_else(|| header(&resp, "etag"))
                .map(|e| clean_etag(&e));
            let etag = etag
                .filter(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
                .ok_or_else(|| ClientError::Integrity(format!("{url} sent no usable ETag")))?;
            let size = header(&resp, "x-linked-size")
                .or_else(|| header(&resp, "content-length"))
                .and_then(|s| s.parse().ok());
            let body_url = if (300..400).contains(&status) {
                header(&resp, "location")
                    .map(|l| join_url(&url, &l))
                    .unwrap_or(url.clone())
            } else {
                url.clone()
            };
            Ok(FileMeta {
                etag,
                size,
                url: body_url,
            })
        })
    }

    /// Download into `partial` (resuming what is there), verify, and move to `blob`.
    fn download_blob(
        &self,
        meta: &FileMeta,
        partial: &Path,
        blob: &Path,
        bar: &ProgressBar,
    ) -> Result<(), ClientError> {
        // The digest is computed while the bytes arrive (a resumed attempt first re-reads
        // the part already on disk), so a fresh download reads its data once.
        let digest = self.with_retries(|| self.download_once(meta, partial, bar))?;
        let len = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        let fail = |msg: String| {
            let _ = std::fs::remove_file(partial);
            Err(ClientError::Integrity(format!("{msg}; the download was deleted")))
        };
        if let Some(size) = meta.size.filter(|&s| s != len) {
            return fail(format!("size mismatch: expected {size} bytes, got {len}"));
        }
        if let Some(got) = digest.filter(|d| !d.eq_ignore_ascii_case(&meta.etag)) {
            return fail(format!("checksum mismatch: expected {}, got {got}", meta.etag));
        }
        std::fs::rename(partial, blob).map_err(|e| ClientError::Io(blob.to_path_buf(), e))
    }

    /// One attempt; returns the digest of the whole partial file when the ETag is checkable.
    fn download_once(&self, meta: &FileMeta, partial: &Path, bar: &ProgressBar) -> Result<Option<String>, ClientError> {
        let io = |e: std::io::Error| ClientError::Io(partial.to_path_buf(), e);
        let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        let mut hasher = Hasher::for_etag(&meta.etag, meta.size);
        if meta.size.is_some_and(|s| have == s && s > 0) {
            // complete from an earlier attempt
            hasher.update_from_file(partial, have).map_err(io)?;
            return Ok(hasher.finish());
        }
        let (resp, url) = self.call("GET", &meta.url, Some(have))?;
        let status = resp.status().as_u16();
        let append = match status {
            206 => {
                let start = header(&resp, "content-range").and_then(|r| {
                    r.strip_prefix("bytes ")
                        .and_then(|r| r.split('-').next())
                        .and_then(|s| s.parse::<u64>().ok())
                });
                if start != Some(have) {
                    return Err(ClientError::Integrity(format!(
                        "{url} answered a range starting at {start:?}, asked {have}"
                    )));
                }
                true
            }
            200 => false, // no range support: start over
            416 => {
                let _ = std::fs::remove_file(partial); // our partial is longer than the file
                return Err(ClientError::Network(format!(
                    "{url}: range not satisfiable, restarting"
                )));
            }
            s => return Err(ClientError::Status(s, url)),
        };
        if append {
            hasher.update_from_file(partial, have).map_err(io)?;
        }
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(partial)
            .map_err(io)?;
        let start = if append { have } else { 0 };
        bar.set_position(start);
        let mut reader = resp.into_body().into_reader();
        // Two stages so receiving overlaps hashing + writing: this thread reads the socket,
        // a worker hashes and writes; buffers circulate through a pair of bounded channels.
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(4);
        let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(6);
        for _ in 0..6 {
            empty_tx.send(vec![0u8; 1 << 20]).expect("fresh channel");
        }
        let (received, write_result) = std::thread::scope(|scope| {
            let worker = scope.spawn(move || -> std::io::Result<Hasher> {
                for (buf, n) in full_rx {
                    out.write_all(&buf[..n])?;
                    hasher.update(&buf[..n]);
                    let _ = empty_tx.send(buf);
                }
                out.sync_all()?;
                Ok(hasher)
            });
            let mut done = start;
            let mut net_err = None;
            while let Ok(mut buf) = empty_rx.recv() {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        done += n as u64;
                        bar.set_position(done);
                        if full_tx.send((buf, n)).is_err() {
                            break; // the writer failed; its error is reported below
                        }
                    }
                    Err(e) => {
                        net_err = Some(e);
                        break;
                    }
                }
            }
            drop(full_tx);
            let w = worker.join().expect("writer thread");
            ((done, net_err), w)
        });
        let hasher = write_result.map_err(io)?;
        let (done, net_err) = received;
        if let Some(e) = net_err {
            return Err(ClientError::Network(format!(
                "{url}: connection lost after {done} bytes: {e}"
            )));
        }
        if let Some(size) = meta.size {
            if done < size {
                return Err(ClientError::Network(format!(
                    "{url}: body ended after {done} of {size} bytes"
                )));
            }
        }
        Ok(hasher.finish())
    }
}

/// The digest an ETag names: sha256 for LFS files, git's blob sha1 (over "blob {len}\0" +
/// content, so the size must be known) for small files; anything else cannot be checked.
enum Hasher {
    Sha256(sha2::Sha256),
    GitSha1(sha1::Sha1),
    Unverifiable,
}

impl Hasher {
    fn for_etag(etag: &str, size: Option<u64>) -> Self {
        let is_hex = |n: usize| etag.len() == n && etag.bytes().all(|b| b.is_ascii_hexdigit());
        match size {
            _ if is_hex(64) => Hasher::Sha256(sha2::Sha256::new()),
            Some(len) if is_hex(40) => {
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {len}\0").as_bytes());
                Hasher::GitSha1(h)
            }
            _ => Hasher::Unverifiable,
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::GitSha1(h) => h.update(b),
            Hasher::Unverifiable => {}
        }
    }

    fn update_from_file(&mut self, path: &Path, len: u64) -> std::io::Result<()> {
        if matches!(self, Hasher::Unverifiable) {
            return Ok(());
        }
        let mut f = std::fs::File::open(path)?.take(len);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.update(&buf[..n]);
        }
    }

    fn finish(self) -> Option<String> {
        match self {
            Hasher::Sha256(h) => Some(format!("{:x}", h.finalize())),
            Hasher::GitSha1(h) => Some(format!("{:x}", h.finalize())),
            Hasher::Unverifiable => None,
        }
    }
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split('/').next().unwrap_or("")
}

fn same_host(a: &str, b: &str) -> bool {
    host_of(a).eq_ignore_ascii_case(host_of(b))
}

/// Resolve a Location header against the URL it came from.
fn join_url(base: &str, loc: &str) -> String {
    if loc.contains("://") {
        return loc.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    let host = rest.split('/').next().unwrap_or("");
    if loc.starts_with('/') {
        format!("{scheme}://{host}{loc}")
    } else {
        let dir = base.rsplit_once('/').map(|(d, _)| d).unwrap_or(base);
        format!("{dir}/{loc}")
    }
}

/// Progress bars: one per file plus a total, on stderr, drawn only on a terminal.
struct Bars {
    multi: Option<MultiProgress>,
    total: ProgressBar,
}

impl Bars {
    fn new(enabled: bool) -> Self {
        if enabled && std::io::stderr().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let total = multi.add(ProgressBar::new(0));
            total.set_style(
                ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} files")
                    .unwrap()
                    .progress_chars("=> "),
            );
            total.set_message("total");
            Bars {
                multi: Some(multi),
                total,
            }
        } else {
            Bars {
                multi: None,
                total: ProgressBar::hidden(),
            }
        }
    }
    fn total(&self, n: usize) {
        self.total.set_length(n as u64);
    }
    fn file(&self, name: &str, size: Option<u64>) -> ProgressBar {
        match &self.multi {
            Some(m) => {
                let b = m.insert_before(&self.total, ProgressBar::new(size.unwrap_or(0)));
                b.set_style(
                    ProgressStyle::with_template(
                        "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap()
                    .progress_chars("=> "),
                );
                let short: String = name
                    .chars()
                    .rev()
                    .take(24)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                b.set_message(short);
                b
            }
            None => ProgressBar::hidden(),
        }
    }
    fn done_one(&self) {
        self.total.inc(1);
    }
    fn finish(&self) {
        self.total.finish_and_clear();
    }
}
