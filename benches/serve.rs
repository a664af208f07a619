//! `perceptio serve` throughput and latency with the tiny Sa2VA checkpoint (tests/common/sa2va.rs),
//! or any model directory given as `PERCEPTIO_SERVE_MODEL` (e.g. the real-size random checkpoint
//! of tools/gen_sa2va_realsize.py): requests/s and p50/p99 latency at 1 and 8 concurrent HTTP
//! clients, for a short `ask` and a forced `segment` (photo features cached after a warm-up
//! request). `PERCEPTIO_SERVE_TILES` (default 2) and `PERCEPTIO_SERVE_SCALE` (requests per
//! workload divided by it, default 1) size the run. Run: `cargo bench --bench serve`.
//! Figures: docs/performance.md.

#[path = "../tests/common/sa2va.rs"]
mod sa2va;

use base64::Engine;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let model = match std::env::var("PERCEPTIO_SERVE_MODEL") {
        Ok(m) => std::path::PathBuf::from(m),
        Err(_) => {
            sa2va::assemble(tmp.path());
            tmp.path().to_path_buf()
        }
    };
    let tiles = std::env::var("PERCEPTIO_SERVE_TILES").unwrap_or_else(|_| "2".into());
    let scale: usize = std::env::var("PERCEPTIO_SERVE_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    println!("model {}, --max-tiles {tiles}", model.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_perceptio"))
        .args(["serve", "--model", model.to_str().unwrap(), "--port", "0"])
        .args(["--max-tiles", tiles.as_str(), "--queue", "256"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
            if let Some(i) = line.find("listening on http://") {
                let _ = tx.send(line[i + "listening on ".len()..].trim().to_string());
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the server did not start");
    let b64 = |f: &str| base64::engine::general_purpose::STANDARD.encode(std::fs::read(root.join(f)).unwrap());
    let chelsea = b64("images/chelsea.png");
    let portrait = b64("images/coffee_portrait.png");
    let workloads = [
        (
            "ask, 4 new tokens, 2 photos alternating",
            "/v1/ask",
            vec![
                json!({"image": chelsea, "question": "Where is the cat?", "max_new_tokens": 4}).to_string(),
                json!({"image": portrait, "question": "Where is the cat?", "max_new_tokens": 4}).to_string(),
            ],
            160,
        ),
        (
            "segment, forced [SEG], 1 expression, 1 photo",
            "/v1/segment",
            vec![json!({"image": chelsea, "expressions": ["the cat"], "force_seg": true}).to_string()],
            48,
        ),
    ];
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    println!("| workload | clients | requests | requests/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for (name, path, bodies, n) in &workloads {
        let n = (n / scale).max(8);
        let url = format!("{base}{path}");
        // Warm-up: every photo's features into the caches.
        for b in bodies {
            agent.post(&url).send(b.as_str()).unwrap();
        }
        for clients in [1usize, 8] {
            let bodies = Arc::new(bodies.clone());
            let t = Instant::now();
            let threads: Vec<_> = (0..clients)
                .map(|c| {
                    let (agent, url, bodies) = (agent.clone(), url.clone(), bodies.clone());
                    let per = n / clients;
                    std::thread::spawn(move || {
                        (0..per)
                            .map(|i| {
                                let t = Instant::now();
                                let mut r = agent.post(&url).send(bodies[(c + i) % bodies.len()].as_str()).unwrap();
                                r.body_mut().read_to_string().unwrap();
                                t.elapsed().as_secs_f64() * 1e3
                            })
                            .collect::<Vec<f64>>()
                    })
                })
                .collect();
            let mut lat: Vec<f64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
            let secs = t.elapsed().as_secs_f64();
            lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let q = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
            println!(
                "| {name} | {clients} | {} | {:.1} | {:.0} | {:.0} |",
                lat.len(),
                lat.len() as f64 / secs,
                q(0.50),
                q(0.99)
            );
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
