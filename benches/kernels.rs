//! The CPU kernels perceptio adds to candle, at the shapes of Sa2VA-1B's real stages, against the
//! plain candle ops they replace, interleaved in one process (so machine noise hits both alike).
//! Run: `cargo bench --bench kernels` (f32). Prints the minimum and median of `PERCEPTIO_BENCH_RUNS`
//! (default 3) runs per variant and the speed-up. Figures: docs/performance.md.

use candle_core::{Device, Tensor};
use perceptio::models::attention;
use std::time::Instant;

fn rand(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

fn time(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// Runs `a` and `b` alternately; prints min/median seconds of each and min(a)/min(b).
fn ab(name: &str, a_name: &str, a: &mut dyn FnMut(), b_name: &str, b: &mut dyn FnMut()) {
    let runs: usize = std::env::var("PERCEPTIO_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    a();
    b();
    let (mut ta, mut tb) = (vec![], vec![]);
    for _ in 0..runs {
        ta.push(time(a));
        tb.push(time(b));
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.partial_cmp(y).unwrap());
        (v[0], v[v.len() / 2])
    };
    let ((amin, amed), (bmin, bmed)) = (stats(&mut ta), stats(&mut tb));
    println!(
        "{name:<44} {a_name} {amin:.4}/{amed:.4} s   {b_name} {bmin:.4}/{bmed:.4} s   {a_name}/{b_name} {:.2}",
        amin / bmin
    );
}

fn attention_case(
    name: &str,
    (b, nq, nk, hq, hk, d): (usize, usize, usize, usize, usize, usize),
    causal: Option<usize>,
) {
    let q = rand(&[b, nq, hq, d]);
    let k = rand(&[b, nk, hk, d]);
    let v = rand(&[b, nk, hk, d]);
    let s = (d as f64).powf(-0.5);
    ab(
        name,
        "materialised",
        &mut || {
            attention::reference(&q, &k, &v, s, causal).unwrap();
        },
        "fused",
        &mut || {
            attention::attention(&q, &k, &v, s, causal).unwrap();
        },
    );
}

fn gemv_case(name: &str, n: usize, k: usize) {
    let w = rand(&[n, k]);
    let x = rand(&[1, k]);
    ab(
        name,
        "candle matmul",
        &mut || {
            x.matmul(&w.t().unwrap()).unwrap();
        },
        "gemv",
        &mut || {
            perceptio::models::fastops::gemv(&x, &w).unwrap().unwrap();
        },
    );
}

fn linear_case(name: &str, m: usize, k: usize, n: usize) {
    let (x, w, b) = (rand(&[m, k]), rand(&[n, k]), rand(&[n]));
    ab(
        name,
        "matmul+bias",
        &mut || {
            x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
        },
        "fused",
        &mut || {
            perceptio::models::fastops::linear_bias(&x, &w, &b).unwrap().unwrap();
        },
    );
}

fn main() {
    println!("threads: {}", rayon::current_num_threads());
    attention_case(
        "attention InternViT layer, 7 tiles x 1025",
        (7, 1025, 1025, 16, 16, 64),
        None,
    );
    attention_case("attention Hiera-L global block, 4096", (1, 4096, 4096, 8, 8, 72), None);
    attention_case("attention Hiera-L stage-1 windows 8x8", (1024, 64, 64, 2, 2, 72), None);
    attention_case(
        "attention Hiera-L stage-3 windows 16x16",
        (16, 256, 256, 8, 8, 72),
        None,
    );
    attention_case(
        "attention Qwen2 prefill 1816, causal",
        (1, 1816, 1816, 14, 2, 64),
        Some(0),
    );
    attention_case(
        "attention Qwen2 decode step at 1816",
        (1, 1, 1817, 14, 2, 64),
        Some(1816),
    );
    linear_case("linear+bias Hiera-L stage-1 qkv 65536x144->432", 65536, 144, 432);
    linear_case("linear+bias Hiera-L stage-3 fc1 4096x576->2304", 4096, 576, 2304);
    linear_case("linear+bias InternViT fc1 7175x1024->4096", 7175, 1024, 4096);
    linear_case("linear+bias Qwen2 q 1816x896->896", 1816, 896, 896);
    gemv_case("gemv Qwen2 gate/up 1x896 -> 4864", 4864, 896);
    gemv_case("gemv Qwen2 down 1x4864 -> 896", 896, 4864);
    gemv_case("gemv Qwen2 lm_head 1x896 -> 151679", 151679, 896);
}
