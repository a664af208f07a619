//! The Slurm job-array recipe of docs/eval.md on a real one-node Slurm cluster
//! (tools/slurm-one-node.sh: Debian's slurm-wlm + munge, as root): three array tasks run
//! `eval refcoco --model ... --shard $SLURM_ARRAY_TASK_ID/3` over the fixture RefCOCO set with the
//! tiny Sa2VA checkpoint, `eval merge` joins them, and the result must equal the unsharded run,
//! line for line and score for score. Where Slurm cannot start (not root, packages missing, no
//! daemons in this container) the test prints "skipped: WHY" and passes.

mod common;
#[path = "common/sa2va.rs"]
mod sa2va;
use common::{coco_images, fixture, run, stderr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Stops the cluster's daemons however the test ends.
struct Cluster {
    dir: PathBuf,
    conf: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).arg("stop").arg(&self.dir).status();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/slurm-one-node.sh")
}

/// Start the cluster under `dir`, or say why it cannot run here.
fn start(dir: &Path) -> Result<Cluster, String> {
    let o = Command::new("bash")
        .arg(script())
        .arg("start")
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    match (o.status.code(), out.trim().strip_prefix("export SLURM_CONF=")) {
        (Some(0), Some(conf)) => Ok(Cluster {
            dir: dir.to_path_buf(),
            conf: conf.to_string(),
        }),
        (Some(2), _) => Err(err.trim().to_string()),
        _ => panic!("tools/slurm-one-node.sh failed unexpectedly ({}): {out}{err}", o.status),
    }
}

fn sorted_lines(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// cIoU and gIoU of a prediction file, as `eval refcoco --json` reports them.
fn score(pred: &Path) -> (f64, f64) {
    let refer = fixture("refcoco");
    let o = run(
        &[
            "eval",
            "refcoco",
            "--refer-root",
            refer.to_str().unwrap(),
            "--dataset",
            "refcoco",
            "--split",
            "val",
            "--predictions",
            pred.to_str().unwrap(),
            "--json",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    (v["ciou"].as_f64().unwrap(), v["giou"].as_f64().unwrap())
}

#[test]
fn a_slurm_job_array_of_three_shards_merges_to_the_unsharded_run() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // munged wants every directory above its socket searchable.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cluster = match start(&root.join("slurm")) {
        Ok(c) => c,
        Err(why) => {
            println!("skipped: {why}");
            eprintln!("skipped: {why}");
            return;
        }
    };
    let model = root.join("model");
    std::fs::create_dir(&model).unwrap();
    sa2va::assemble(&model);
    let images = coco_images(root);
    let bin = env!("CARGO_BIN_EXE_perceptio");
    let refer = fixture("refcoco");
    let eval_args = |pred: &str, shard: Option<&str>| -> Vec<String> {
        let mut v: Vec<String> = [
            "eval",
            "refcoco",
            "--refer-root",
            refer.to_str().unwrap(),
            "--dataset",
            "refcoco",
            "--split",
            "val",
            "--model",
            model.to_str().unwrap(),
            "--images",
            images.to_str().unwrap(),
            "--predictions",
            pred,
            "--force-seg",
            "--max-tiles",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(s) = shard {
            v.extend(["--shard".to_string(), s.to_string()]);
        }
        v
    };
    // The job script of docs/eval.md's recipe (shards are 1-based: --array=1-3).
    let preds = root.join("preds");
    std::fs::create_dir(&preds).unwrap();
    let shard_pred = format!("{}/s${{SLURM_ARRAY_TASK_ID}}.jsonl", preds.display());
    let cmd: Vec<String> = eval_args(&shard_pred, Some("${SLURM_ARRAY_TASK_ID}/3"))
        .into_iter()
        .map(|a| {
            if a.contains('$') {
                format!("\"{a}\"")
            } else {
                format!("'{a}'")
            }
        })
        .collect();
    let job = root.join("job.sh");
    std::fs::write(
        &job,
        format!(
            "#!/bin/bash\n#SBATCH --array=1-3\n#SBATCH --time=10\n#SBATCH --output={}/slurm-%A_%a.out\nset -e\nexec '{bin}' {}\n",
            root.display(),
            cmd.join(" ")
        ),
    )
    .unwrap();
    // The unsharded run on this machine while Slurm runs the shards.
    let full = root.join("full.jsonl");
    let full_args = eval_args(full.to_str().unwrap(), None);
    let unsharded = std::thread::spawn(move || {
        let a: Vec<&str> = full_args.iter().map(String::as_str).collect();
        let o = run(&a, None);
        assert!(o.status.success(), "unsharded run: {}", stderr(&o));
    });
    // `timeout`: a node that never runs the job fails the test instead of hanging it.
    let o = Command::new("timeout")
        .args(["600", "sbatch", "--wait", "--job-name=perceptio-shards"])
        .arg(&job)
        .current_dir(root)
        .env("SLURM_CONF", &cluster.conf)
        .output()
        .expect("run sbatch");
    let outs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("slurm-"))
        .collect();
    let logs: String = outs
        .iter()
        .map(|p| format!("== {}\n{}", p.display(), std::fs::read_to_string(p).unwrap_or_default()))
        .collect();
    assert!(
        o.status.success(),
        "sbatch --wait: {}{}\n{logs}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(outs.len(), 3, "one output per array task: {logs}");
    for k in 1..=3 {
        assert!(logs.contains(&format!("shard {k}/3 complete")), "{logs}");
    }
    unsharded.join().unwrap();
    let shards: Vec<PathBuf> = (1..=3).map(|k| preds.join(format!("s{k}.jsonl"))).collect();
    for s in &shards {
        assert!(
            !sorted_lines(s).is_empty(),
            "{} is empty: each shard has an image",
            s.display()
        );
    }
    let merged = root.join("merged.jsonl");
    let mut a = vec!["eval", "merge", "--out", merged.to_str().unwrap()];
    a.extend(shards.iter().map(|s| s.to_str().unwrap()));
    let o = run(&a, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        sorted_lines(&merged),
        sorted_lines(&full),
        "merged shards = the unsharded run"
    );
    assert_eq!(score(&merged), score(&full));
    drop(cluster);
    eprintln!("slurm test: {:.1} s", t0.elapsed().as_secs_f64());
}
