//! Small shared helpers: atomic output files, line-numbered JSONL reading, hashing.

pub mod atomic;
pub mod jsonl;
pub mod mapped;

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// Hex sha256 of a file's bytes, streamed (recorded as provenance in eval outputs).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Hex sha256 of bytes already in memory.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Read a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Keep freed memory in the process instead of returning each large block to the kernel.
///
/// glibc serves allocations above its mmap threshold (≤ 32 MiB) with fresh mappings and unmaps
/// them on free, so every encoder layer re-faults its 16–70 MB activations; on the VMs we
/// measured that made a ViT pass swing between 5 and 17 s. A thread's own arena is a 64 MiB heap
/// that maps anything larger afresh whatever the threshold, and the model runs on a rayon worker,
/// so all threads share the main arena (7-tile `segment`: 1.78 M → 0.23 M page faults). The CLI
/// calls this first, before any other thread allocates (a thread keeps the arena it first takes).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before heavy allocation.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Runs `f` on a worker of rayon's global pool (`RAYON_NUM_THREADS` or one thread per CPU), or
/// in place when the caller already is one. From a plain thread every parallel kernel is handed
/// to the pool while the caller sleeps on a latch and must be woken after each op; on a worker
/// the caller runs its share itself (AURORA's VQ-VAE encode, 2-vCPU EPYC: medians 9.2–9.4 →
/// 7.5–8.1 ms). Model commands run inside it; the server's model thread likewise.
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // `rayon::scope` runs its body on a worker: the global pool's when called from outside it.
    rayon::scope(|_| f())
}

/// The shard files a `model.safetensors.index.json` names (its `weight_map` values), sorted and
/// without repeats: the one reader of that file for the hub and the model loader.
pub fn safetensors_index_shards(path: &Path) -> Result<Vec<String>> {
    let mut files: Vec<String> = safetensors_index_map(path)?.into_values().collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// A `model.safetensors.index.json`'s `weight_map`: tensor name → the shard file that holds it.
pub fn safetensors_index_map(path: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let idx: Index = serde_json::from_slice(&read_file(path)?)
        .map_err(|e| Error::input(path, format!("not a safetensors index: {e}")))?;
    Ok(idx.weight_map)
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::on_compute_pool;
    use rayon::prelude::*;

    #[test]
    fn compute_pool_runs_on_a_worker_and_nests_inline() {
        let (on_worker, nested, sum) = on_compute_pool(|| {
            let outer = rayon::current_thread_index();
            // a nested call runs in place, on the same worker
            let inner = on_compute_pool(rayon::current_thread_index);
            let sum: u64 = (0..10_000u64).into_par_iter().sum();
            (outer.is_some(), inner == outer, sum)
        });
        assert!(on_worker, "the closure did not run on a rayon worker");
        assert!(nested);
        assert_eq!(sum, 10_000 * 9_999 / 2);
    }
}
