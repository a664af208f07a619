//! Download throughput from a loopback hub stand-in: `perceptio`'s client (with streaming
//! sha256 verification and the cache layout) against `curl` on the same 1 GiB file and server.
//! Run: `cargo bench --bench download` (needs curl and ~3 GiB free under target/).

#[path = "../tests/common/hub_server.rs"]
mod hub_server;

use hub_server::*;
use perceptio::hub::{self, Filter, HubConfig, RepoSpec};
use sha2::Digest;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const COMMIT: &str = "3333333333333333333333333333333333333333";

fn main() {
    let size: u64 = std::env::var("PERCEPTIO_BENCH_DOWNLOAD_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
        << 20;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-download");
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("weights.bin");
    let mut hasher = sha2::Sha256::new();
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&data).unwrap());
        let mut x = 0x9E3779B97F4A7C15u64;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..(size >> 20) {
            for c in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            hasher.update(&buf);
            f.write_all(&buf).unwrap();
        }
    }
    let sha = format!("{:x}", hasher.finalize());
    let file = HubFile {
        name: "model.safetensors".into(),
        body: Body::File(data.clone(), size, sha.clone()),
        lfs: true,
    };
    let config = HubFile::new("config.json", b"{}".to_vec(), false);
    let mut repo = HubRepo::default();
    repo.refs.insert("main".into(), COMMIT.into());
    repo.commits.insert(COMMIT.into(), vec![config, file]);
    let server = HubServer::start(HashMap::from([("bench/big".to_string(), repo)]));
    println!("{} MiB file, server {}", size >> 20, server.url);

    let mut curl_times = vec![];
    let mut curl_sync_times = vec![];
    let mut ours = vec![];
    for round in 0..3 {
        let out = dir.join("curl.out");
        let _ = std::fs::remove_file(&out);
        let t = Instant::now();
        let st = std::process::Command::new("curl")
            .args([
                "-sS",
                "-o",
                out.to_str().unwrap(),
                &format!("{}/lfs-cdn/{sha}", server.url),
            ])
            .status()
            .expect("curl");
        assert!(st.success());
        curl_times.push(t.elapsed());
        // curl does not fsync; perceptio does before a blob becomes visible. Time both.
        assert!(std::process::Command::new("sync").arg(&out).status().unwrap().success());
        curl_sync_times.push(t.elapsed());
        std::fs::remove_file(&out).unwrap();

        let cache = dir.join(format!("cache{round}"));
        let _ = std::fs::remove_dir_all(&cache);
        let cfg = HubConfig {
            endpoint: server.url.clone(),
            cache_dir: cache.clone(),
            token: None,
            offline: false,
            retries: 1,
            backoff: Duration::from_millis(10),
            progress: false,
        };
        let t = Instant::now();
        let snap = hub::download(&RepoSpec::parse("bench/big", None).unwrap(), &cfg, &Filter::default()).unwrap();
        ours.push(t.elapsed());
        assert_eq!(
            std::fs::metadata(snap.path.join("model.safetensors")).unwrap().len(),
            size
        );
        std::fs::remove_dir_all(&cache).unwrap();
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (c, cs, o) = (med(&mut curl_times), med(&mut curl_sync_times), med(&mut ours));
    let mbps = |d: Duration| (size as f64 / (1 << 20) as f64) / d.as_secs_f64();
    println!(
        "curl -o FILE           median {:>7.2} s  {:>7.0} MiB/s",
        c.as_secs_f64(),
        mbps(c)
    );
    println!(
        "curl -o FILE && sync   median {:>7.2} s  {:>7.0} MiB/s",
        cs.as_secs_f64(),
        mbps(cs)
    );
    println!(
        "perceptio download     median {:>7.2} s  {:>7.0} MiB/s  (sha256 verified, cache layout)",
        o.as_secs_f64(),
        mbps(o)
    );
    println!(
        "perceptio / curl throughput: {:.2} (vs curl + fsync: {:.2})",
        mbps(o) / mbps(c),
        mbps(o) / mbps(cs)
    );
    std::fs::remove_file(&data).unwrap();
}
