//! The CPU kernels perceptio adds to candle, at the shapes of Sa2VA-1B's real stages, against the
//! plain candle ops they replace, interleaved in one process (so machine noise hits both alike).
//! Run: `cargo bench --bench kernels` (f32). Prints the minimum and median (ms) of `PERCEPTIO_BENCH_RUNS`
//! (default 3) runs per variant and the speed-up; `PERCEPTIO_BENCH_FILTER=TEXT` runs only the cases
//! whose name contains TEXT. Figures: docs/performance.md.

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

/// Runs `a` and `b` alternately; prints min/median milliseconds of each and min(a)/min(b).
/// Cases whose name lacks `PERCEPTIO_BENCH_FILTER` (when set) are skipped.
fn ab(name: &str, a_name: &str, a: &mut dyn FnMut(), b_name: &str, b: &mut dyn FnMut()) {
    if std::env::var("PERCEPTIO_BENCH_FILTER").is_ok_and(|f| !name.contains(&f)) {
        return;
    }
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
        "{name:<44} {a_name} {:.3}/{:.3} ms   {b_name} {:.3}/{:.3} ms   {a_name}/{b_name} {:.2}",
        amin * 1e3,
        amed * 1e3,
        bmin * 1e3,
        bmed * 1e3,
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

/// A conv2d (or, with `transposed`, a conv_transpose2d) through candle's kernel and perceptio's.
fn conv_case(
    name: &str,
    (b, cin, h, w): (usize, usize, usize, usize),
    cout: usize,
    k: usize,
    s: usize,
    p: usize,
    transposed: bool,
) {
    let x = rand(&[b, cin, h, w]);
    let bias = Some(rand(&[cout]));
    type Run = Box<dyn FnMut()>;
    let (mut fast, mut slow): (Run, Run) = if transposed {
        let cfg = candle_nn::ConvTranspose2dConfig {
            padding: p,
            stride: s,
            ..Default::default()
        };
        let c = candle_nn::ConvTranspose2d::new(rand(&[cin, cout, k, k]), bias, cfg);
        let c2 = c.clone();
        let x2 = x.clone();
        (
            Box::new(move || {
                perceptio::models::conv::conv_transpose2d(&c, &x).unwrap();
            }),
            Box::new(move || {
                candle_nn::Module::forward(&c2, &x2).unwrap();
            }),
        )
    } else {
        let cfg = candle_nn::Conv2dConfig {
            padding: p,
            stride: s,
            ..Default::default()
        };
        let c = candle_nn::Conv2d::new(rand(&[cout, cin, k, k]), bias, cfg);
        let c2 = c.clone();
        let x2 = x.clone();
        (
            Box::new(move || {
                perceptio::models::conv::conv2d(&c, &x).unwrap();
            }),
            Box::new(move || {
                candle_nn::Module::forward(&c2, &x2).unwrap();
            }),
        )
    };
    ab(name, "candle", &mut *slow, "perceptio", &mut *fast);
}

/// On the compute pool, as the model commands run.
fn main() {
    perceptio::util::on_compute_pool(run)
}

fn run() {
    println!("threads: {}", rayon::current_num_threads());
    if std::env::var("PERCEPTIO_BENCH_ONLY").as_deref() == Ok("conv") {
        return conv_cases();
    }
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

/// The convolutions of the depth chain at real size (Depth Anything V2-Small at 518², AURORA's
/// VQ-VAE at 320²) and the patch embeddings.
fn conv_cases() {
    conv_case(
        "conv DA head conv2 32->32 3x3 at 518x518",
        (1, 32, 518, 518),
        32,
        3,
        1,
        1,
        false,
    );
    conv_case(
        "conv DA head conv1 64->32 3x3 at 296x296",
        (1, 64, 296, 296),
        32,
        3,
        1,
        1,
        false,
    );
    conv_case(
        "conv DA fusion 64->64 3x3 at 148x148",
        (1, 64, 148, 148),
        64,
        3,
        1,
        1,
        false,
    );
    conv_case(
        "conv DA reassemble down 384 3x3 s2 at 37x37",
        (1, 384, 37, 37),
        384,
        3,
        2,
        1,
        false,
    );
    conv_case(
        "conv DINOv2 patch 3->384 14x14 s14 at 518",
        (1, 3, 518, 518),
        384,
        14,
        14,
        0,
        false,
    );
    conv_case(
        "conv Hiera patch 3->144 7x7 s4 at 1024",
        (1, 3, 1024, 1024),
        144,
        7,
        4,
        3,
        false,
    );
    conv_case(
        "conv VQ-VAE enc 1->16 4x4 s2 at 320",
        (1, 1, 320, 320),
        16,
        4,
        2,
        1,
        false,
    );
    conv_case(
        "conv VQ-VAE enc 16->32 4x4 s2 at 160",
        (1, 16, 160, 160),
        32,
        4,
        2,
        1,
        false,
    );
    conv_case(
        "conv VQ-VAE enc 32->64 4x4 s2 at 80",
        (1, 32, 80, 80),
        64,
        4,
        2,
        1,
        false,
    );
    conv_case(
        "conv VQ-VAE enc 64->128 4x4 s2 at 40",
        (1, 64, 40, 40),
        128,
        4,
        2,
        1,
        false,
    );
    conv_case(
        "conv VQ-VAE enc 128->256 4x4 s2 at 20",
        (1, 128, 20, 20),
        256,
        4,
        2,
        1,
        false,
    );
    conv_case(
        "conv VQ-VAE res 256->256 3x3 at 10",
        (1, 256, 10, 10),
        256,
        3,
        1,
        1,
        false,
    );
    conv_case(
        "conv VQ-VAE res 256->256 1x1 at 10",
        (1, 256, 10, 10),
        256,
        1,
        1,
        0,
        false,
    );
    conv_case(
        "conv VQ-VAE enc out 256->512 1x1 at 10",
        (1, 256, 10, 10),
        512,
        1,
        1,
        0,
        false,
    );
    conv_case(
        "convT VQ-VAE dec 256->128 4x4 s2 at 20",
        (1, 256, 20, 20),
        128,
        4,
        2,
        1,
        true,
    );
    conv_case(
        "convT VQ-VAE dec 32->16 4x4 s2 at 160",
        (1, 32, 160, 160),
        16,
        4,
        2,
        1,
        true,
    );
}
