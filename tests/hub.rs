//! `perceptio download` against a local stand-in for the hub (tests/common/hub_server.rs).

mod common;
#[path = "common/hub_server.rs"]
mod hub_server;
#[path = "common/sa2va.rs"]
mod sa2va;

use common::*;
use hub_server::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const C1: &str = "1111111111111111111111111111111111111111";
const C2: &str = "2222222222222222222222222222222222222222";

fn weights(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// A Sa2VA-like repo: config, tokenizer, a sharded checkpoint with an index, a stray
/// safetensors file not in the index, a .bin duplicate and remote code.
fn repo_files(seed: u8) -> Vec<HubFile> {
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": {
        "a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}});
    vec![
        HubFile::new(
            "config.json",
            format!("{{\"model_type\": \"sa2va_chat\", \"seed\": {seed}}}").into_bytes(),
            false,
        ),
        HubFile::new("tokenizer.json", b"{\"version\": \"1.0\"}".to_vec(), false),
        HubFile::new(
            "model.safetensors.index.json",
            serde_json::to_vec(&index).unwrap(),
            false,
        ),
        HubFile::new("model-00001-of-00002.safetensors", weights(3 << 20, seed), true),
        HubFile::new("model-00002-of-00002.safetensors", weights(1 << 20, seed ^ 1), true),
        HubFile::new("old_unused.safetensors", weights(1000, 3), true),
        HubFile::new("pytorch_model.bin", weights(2000, 4), true),
        HubFile::new("modeling_sa2va_chat.py", b"# remote code\n".to_vec(), false),
        HubFile::new("README.md", b"# card\n".to_vec(), false),
    ]
}

fn server() -> HubServer {
    let mut repo = HubRepo::default();
    repo.refs.insert("main".into(), C1.into());
    repo.refs.insert("v1.0".into(), C2.into());
    repo.commits.insert(C1.into(), repo_files(7));
    repo.commits.insert(C2.into(), repo_files(9));
    let mut gated = repo.clone();
    gated.gated_token = Some("hf_secret".into());
    HubServer::start(HashMap::from([
        ("org/tiny".to_string(), repo),
        ("org/gated".to_string(), gated),
    ]))
}

struct Env {
    dir: tempfile::TempDir,
    endpoint: String,
}

impl Env {
    fn new(s: &HubServer) -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
            endpoint: s.url.clone(),
        }
    }
    fn home(&self) -> PathBuf {
        self.dir.path().join("hf")
    }
    fn cache(&self) -> PathBuf {
        self.home().join("hub")
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_perceptio"));
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("HF_HOME", self.home())
            .env("HF_ENDPOINT", &self.endpoint)
            .env("PERCEPTIO_HUB_BACKOFF_MS", "10")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
    fn run(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let mut c = self.cmd(args);
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c.output().unwrap()
    }
}

fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn expected_needed() -> Vec<String> {
    [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn fresh_download_then_noop_rerun() {
    let s = server();
    let env = Env::new(&s);
    let o = env.run(&["download", "org/tiny"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let snap = env.cache().join("models--org--tiny/snapshots").join(C1);
    assert_eq!(stdout(&o).trim(), snap.display().to_string());
    // exactly what perceptio needs: index shards only, no stray safetensors, no .bin, no code
    assert_eq!(snapshot_files(&snap), expected_needed());
    // Python's layout: relative symlinks into blobs named by ETag, refs/main = commit
    let link = std::fs::read_link(snap.join("model-00001-of-00002.safetensors")).unwrap();
    let sha = repo_files(7)[3].sha256();
    assert_eq!(link, Path::new("../../blobs").join(&sha));
    assert_eq!(
        std::fs::read(snap.join("model-00001-of-00002.safetensors")).unwrap(),
        weights(3 << 20, 7)
    );
    let cfg_link = std::fs::read_link(snap.join("config.json")).unwrap();
    assert_eq!(
        cfg_link.file_name().unwrap().to_string_lossy(),
        repo_files(7)[0].git_sha1()
    );
    assert_eq!(
        std::fs::read_to_string(env.cache().join("models--org--tiny/refs/main")).unwrap(),
        C1
    );
    let blobs = env.cache().join("models--org--tiny/blobs");
    assert!(std::fs::read_dir(&blobs).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".incomplete")));
    let gets = s.stats().body_gets.len();
    assert_eq!(gets, 5);
    // re-run: one API call, no HEAD, no body
    let heads = s.stats().heads;
    let o = env.run(&["download", "org/tiny", "--json"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(s.stats().body_gets.len(), gets);
    assert_eq!(s.stats().heads, heads);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["commit"], C1);
    assert!(j["files"].as_array().unwrap().iter().all(|f| f["cached"] == true));
}

#[test]
fn include_exclude_and_revisions() {
    let s = server();
    let env = Env::new(&s);
    let o = env.run(
        &[
            "download",
            "org/tiny@v1.0",
            "--include",
            "*.py",
            "--exclude",
            "tokenizer.json",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let snap = env.cache().join("models--org--tiny/snapshots").join(C2);
    let files = snapshot_files(&snap);
    assert!(files.contains(&"modeling_sa2va_chat.py".to_string()) && !files.contains(&"tokenizer.json".to_string()));
    assert_eq!(
        std::fs::read_to_string(env.cache().join("models--org--tiny/refs/v1.0")).unwrap(),
        C2
    );
    assert_eq!(
        std::fs::read(snap.join("model-00002-of-00002.safetensors")).unwrap(),
        weights(1 << 20, 9 ^ 1)
    );
    // a commit hash as revision writes no ref
    let o = env.run(&["download", "org/tiny", "--revision", C1], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!env.cache().join(format!("models--org--tiny/refs/{C1}")).exists());
    assert!(env
        .cache()
        .join("models--org--tiny/snapshots")
        .join(C1)
        .join("config.json")
        .is_file());
}

#[test]
fn interrupted_download_resumes_and_verifies() {
    let s = server();
    s.faults
        .lock()
        .unwrap()
        .drop_after
        .insert("model-00001-of-00002.safetensors".into(), 1_000_000);
    let env = Env::new(&s);
    let o = env.run(&["download", "org/tiny"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("retrying"), "{}", stderr(&o));
    // the second GET asked for the rest only
    assert_eq!(s.body_gets_of("model-00001-of-00002.safetensors"), vec![0, 1_000_000]);
    let snap = env.cache().join("models--org--tiny/snapshots").join(C1);
    assert_eq!(
        std::fs::read(snap.join("model-00001-of-00002.safetensors")).unwrap(),
        weights(3 << 20, 7)
    );
}

#[test]
fn server_errors_are_retried() {
    let s = server();
    s.faults.lock().unwrap().unavailable.insert("config.json".into(), 2);
    let env = Env::new(&s);
    let o = env.run(&["download", "org/tiny"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("HTTP 503"), "{}", stderr(&o));
}

#[test]
fn corrupted_body_fails_and_leaves_nothing() {
    let s = server();
    s.faults
        .lock()
        .unwrap()
        .corrupt
        .push("model-00002-of-00002.safetensors".into());
    let env = Env::new(&s);
    let o = env.run(&["download", "org/tiny"], &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("model-00002-of-00002.safetensors: checksum mismatch: expected"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    let root = env.cache().join("models--org--tiny");
    let sha = repo_files(7)[4].sha256();
    assert!(!root.join("blobs").join(&sha).exists());
    assert!(!root.join("blobs").join(format!("{sha}.incomplete")).exists());
    assert!(!root
        .join("snapshots")
        .join(C1)
        .join("model-00002-of-00002.safetensors")
        .exists());
}

#[test]
fn small_files_are_checked_against_their_git_sha1() {
    let s = server();
    s.faults.lock().unwrap().corrupt.push("tokenizer.json".into());
    let env = Env::new(&s);
    let o = env.run(&["download", "org/tiny"], &[]);
    assert_eq!(o.status.code(), Some(1));
    let want = format!(
        "tokenizer.json: checksum mismatch: expected {}",
        repo_files(7)[1].git_sha1()
    );
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
}

#[test]
fn gated_and_missing_repos_explain_themselves() {
    let s = server();
    let env = Env::new(&s);
    let o = env.run(&["download", "org/gated"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("repo not found or gated; set HF_TOKEN"),
        "{}",
        stderr(&o)
    );
    let o = env.run(&["download", "org/gated"], &[("HF_TOKEN", "hf_secret")]);
    assert!(o.status.success(), "{}", stderr(&o));
    // the token file works too
    let env2 = Env::new(&s);
    std::fs::create_dir_all(env2.home()).unwrap();
    std::fs::write(env2.home().join("token"), "hf_secret\n").unwrap();
    assert!(env2.run(&["download", "org/gated"], &[]).status.success());
    let o = env.run(&["download", "org/tiny@no-such-branch"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("repo or revision not found"), "{}", stderr(&o));
    let o = env.run(&["download", "not a repo!"], &[]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn offline_warm_and_cold() {
    let s = server();
    let env = Env::new(&s);
    let o = env.run(&["download", "org/tiny", "--offline"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not in the cache"), "{}", stderr(&o));
    assert!(env.run(&["download", "org/tiny"], &[]).status.success());
    let before = s.stats();
    let o = env.run(&["download", "org/tiny"], &[("HF_HUB_OFFLINE", "1")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(s.stats().api_calls, before.api_calls);
    // a shard gone from the cache is named
    std::fs::remove_file(
        env.cache()
            .join("models--org--tiny/snapshots")
            .join(C1)
            .join("model-00002-of-00002.safetensors"),
    )
    .unwrap();
    let o = env.run(&["download", "org/tiny", "--offline"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("lacks model-00002-of-00002.safetensors"),
        "{}",
        stderr(&o)
    );
    // with the hub unreachable, a warm cache is still used (with a warning)
    let mut dead = Env::new(&s);
    dead.endpoint = "http://127.0.0.1:9".into();
    let home = dead.home();
    std::fs::create_dir_all(&home).unwrap();
    let o = dead.run(&["download", "org/tiny"], &[("HF_HOME", env.home().to_str().unwrap())]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o)); // the shard is missing from that cache
    assert!(env.run(&["download", "org/tiny"], &[]).status.success()); // repaired
    let o = dead.run(&["download", "org/tiny"], &[("HF_HOME", env.home().to_str().unwrap())]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("using the cached snapshot"), "{}", stderr(&o));
}

#[test]
fn reads_a_cache_written_in_pythons_layout() {
    // Laid out by hand exactly as huggingface_hub writes it, under HF_HUB_CACHE.
    let s = server();
    let env = Env::new(&s);
    let cache = env.dir.path().join("pycache");
    let root = cache.join("models--org--tiny");
    let files = repo_files(7);
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), C1).unwrap();
    let snap = root.join("snapshots").join(C1);
    std::fs::create_dir_all(&snap).unwrap();
    for f in files.iter().filter(|f| expected_needed().contains(&f.name)) {
        let Body::Bytes(b) = &f.body else { unreachable!() };
        std::fs::write(root.join("blobs").join(f.etag()), b.as_slice()).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(f.etag()), snap.join(&f.name)).unwrap();
    }
    let o = env.run(
        &["download", "org/tiny", "--offline", "--json"],
        &[("HF_HUB_CACHE", cache.to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["path"], snap.display().to_string());
    // online, nothing is transferred: the commit's snapshot is complete
    let o = env.run(&["download", "org/tiny"], &[("HF_HUB_CACHE", cache.to_str().unwrap())]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(s.stats().body_gets.is_empty());
}

#[test]
fn concurrent_processes_share_one_download() {
    let s = server();
    s.faults.lock().unwrap().throttle.insert(
        "model-00001-of-00002.safetensors".into(),
        std::time::Duration::from_millis(5),
    );
    let env = Env::new(&s);
    let a = env.cmd(&["download", "org/tiny"]).spawn().unwrap();
    let b = env.cmd(&["download", "org/tiny"]).spawn().unwrap();
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(oa.status.success(), "{}", stderr(&oa));
    assert!(ob.status.success(), "{}", stderr(&ob));
    assert_eq!(
        s.body_gets_of("model-00001-of-00002.safetensors").len(),
        1,
        "the lock lets one process download"
    );
    let snap = env.cache().join("models--org--tiny/snapshots").join(C1);
    assert_eq!(
        std::fs::read(snap.join("model-00001-of-00002.safetensors")).unwrap(),
        weights(3 << 20, 7)
    );
}

#[test]
fn list_prints_known_repos() {
    let o = run(&["download", "--list"], None);
    assert!(o.status.success());
    let out = stdout(&o);
    for r in [
        "ByteDance/Sa2VA-1B",
        "ByteDance/Sa2VA-8B",
        "OpenGVLab/InternVL2_5-1B",
        "facebook/sam2.1-hiera-large",
        "depth-anything/Depth-Anything-V2-Small-hf",
    ] {
        assert!(out.contains(r), "{r} missing from --list");
    }
}

#[test]
fn ask_with_a_hub_model_id_end_to_end() {
    // The tiny Sa2VA-layout checkpoint served by the stand-in; `ask --model org/name` fetches it.
    let dir = fixture("internvl/tiny-qwen2");
    let files: Vec<HubFile> = [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ]
    .iter()
    .map(|f| HubFile::new(f, std::fs::read(dir.join(f)).unwrap(), f.ends_with(".safetensors")))
    .collect();
    let mut repo = HubRepo::default();
    repo.refs.insert("main".into(), C1.into());
    repo.commits.insert(C1.into(), files);
    let s = HubServer::start(HashMap::from([("org/tiny-sa2va".to_string(), repo)]));
    let env = Env::new(&s);
    let img = fixture("images/chelsea.png");
    let args = [
        "ask",
        img.to_str().unwrap(),
        "Describe the image in detail.",
        "--model",
        "org/tiny-sa2va",
        "--device",
        "cpu",
        "--max-tiles",
        "6",
        "--max-new-tokens",
        "12",
        "--json",
    ];
    let o = env.run(&args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let via_hub: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let local = run_json(&[
        "ask",
        img.to_str().unwrap(),
        "Describe the image in detail.",
        "--model",
        dir.to_str().unwrap(),
        "--device",
        "cpu",
        "--max-tiles",
        "6",
        "--max-new-tokens",
        "12",
        "--json",
    ]);
    assert_eq!(via_hub["token_ids"], local["token_ids"]);
    assert!(env
        .cache()
        .join("models--org--tiny-sa2va/snapshots")
        .join(C1)
        .join("model.safetensors")
        .is_file());
    // offline, from the cache just filled
    let o = env.run(&args, &[("HF_HUB_OFFLINE", "1")]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A Perceptio model whose `perceptio.depth` block puts the VQ-VAE in another hub repo: with
/// `--offline` (the flag, not the environment) a cold cache is a clear error and the hub hears
/// nothing; once the repo is cached, the same offline run works, still without a request.
#[test]
fn offline_flag_holds_for_a_vqvae_in_another_repo() {
    let model = tempfile::tempdir().unwrap();
    sa2va::assemble(model.path());
    sa2va::add_depth_tokens(model.path());
    std::fs::remove_file(model.path().join("vqvae.pt")).unwrap();
    let cfg_path = model.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["perceptio"]["depth"]["vqvae"] = serde_json::json!({"file": "vqvae.pt", "repo": "org/tiny-vqvae"});
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut repo = HubRepo::default();
    repo.refs.insert("main".into(), C1.into());
    repo.commits.insert(
        C1.into(),
        vec![HubFile::new(
            "vqvae.pt",
            std::fs::read(fixture("depth/tiny_vqvae.pt")).unwrap(),
            true,
        )],
    );
    let s = HubServer::start(HashMap::from([("org/tiny-vqvae".to_string(), repo)]));
    let env = Env::new(&s);
    let img = fixture("images/chelsea.png");
    let args = [
        "depth",
        img.to_str().unwrap(),
        "--model",
        model.path().to_str().unwrap(),
        "--force-depth",
        "--max-tiles",
        "2",
        "--max-new-tokens",
        "16",
        "--json",
        "--offline",
    ];
    let o = env.run(&args, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("org/tiny-vqvae") && stderr(&o).contains("offline"),
        "{}",
        stderr(&o)
    );
    let st = s.stats();
    assert_eq!(
        (st.api_calls, st.heads, st.body_gets.len()),
        (0, 0, 0),
        "--offline must not touch the hub: {st:?}"
    );
    // Warm the cache, then the offline run works and still asks nothing.
    let o = env.run(&["download", "org/tiny-vqvae"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = s.stats();
    let o = env.run(&args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tokens"].as_array().map(|t| t.len()), Some(9));
    let after = s.stats();
    assert_eq!(
        (after.api_calls, after.heads, after.body_gets.len()),
        (before.api_calls, before.heads, before.body_gets.len())
    );
}
