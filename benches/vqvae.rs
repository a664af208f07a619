//! AURORA's depth VQ-VAE (`Config::default()`: 320², 128 codes × 512, hidden 16, 2 ResBlocks,
//! stride 32 → 10×10 grid) at real size with random weights on this machine, for comparison
//! with AiT's PyTorch `VQVAE` (`tools/gen_vqvae_goldens.py --bench`, same cases and protocol).
//! Run: `cargo bench --bench vqvae` (f32, CPU; 1 warm-up + 10 timed runs per case, medians).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use perceptio::models::vqvae::{Config, VqVae};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The kernel sets a run is timed with, one after the other in one process.
const KERNELS: [(&str, bool); 2] = [("candle conv kernels", true), ("perceptio conv kernels", false)];

/// For each kernel set in turn, 1 untimed warm-up and 10 timed runs; prints the medians in ms and
/// the ratio to candle's kernels. The sets run in blocks, not interleaved: right after one of
/// candle's passes its elementwise pool's worker is still spinning and slowed the next pass.
fn time<T>(label: &str, mut f: impl FnMut() -> candle_core::Result<T>) -> candle_core::Result<f64> {
    let mut v = vec![Vec::with_capacity(10); KERNELS.len()];
    for (i, &(_, candle)) in KERNELS.iter().enumerate().rev() {
        perceptio::models::conv::use_candle_kernels(candle);
        let _ = f()?;
        for _ in 0..10 {
            let t = Instant::now();
            let _ = f()?;
            v[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    perceptio::models::conv::use_candle_kernels(false);
    let m: Vec<f64> = v.iter().map(|r| median(r.clone())).collect();
    println!("{label}");
    for (i, &(name, _)) in KERNELS.iter().enumerate() {
        let runs: Vec<String> = v[i].iter().map(|x| format!("{x:.1}")).collect();
        println!(
            "  {name:<24} median {:8.2} ms ({:.2}x candle)  [{}]",
            m[i],
            m[i] / m[0],
            runs.join(", ")
        );
    }
    Ok(m[KERNELS.len() - 1])
}

/// On the compute pool, as the model commands run.
fn main() -> candle_core::Result<()> {
    perceptio::util::on_compute_pool(run)
}

fn run() -> candle_core::Result<()> {
    perceptio::util::tune_allocator(); // as the CLI does
    let dev = Device::Cpu;
    let cfg = Config::default();
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let model = VqVae::new(&cfg, vb)?;
    // Random weights (the VarMap starts from zeros); values do not change the FLOPs.
    for v in vm.all_vars() {
        let fan_in: usize = v.dims().iter().skip(1).product::<usize>().max(1);
        let t = (Tensor::randn(0f32, 1.0, v.shape(), &dev)? * (1.0 / (fan_in as f64).sqrt()))?;
        v.set(&t)?;
    }
    let (gh, gw) = cfg.grid();
    println!(
        "AURORA depth VQ-VAE ({}², {} codes × {}, hidden {}, {} ResBlocks, grid {gh}×{gw}), random f32 weights, {} threads",
        cfg.image_size,
        cfg.num_tokens,
        cfg.codebook_dim,
        cfg.hidden_dim,
        cfg.num_resnet_blocks,
        candle_core::utils::get_num_threads()
    );
    let codes = |b: usize| -> candle_core::Result<Tensor> {
        let v: Vec<u32> = (0..b * gh * gw)
            .map(|i| ((i * 37 + 11) % cfg.num_tokens) as u32)
            .collect();
        Tensor::from_vec(v, (b, gh, gw), &dev)
    };
    let c1 = codes(1)?;
    let out = model.decode(&c1)?;
    assert_eq!(out.dims(), &[1, 1, cfg.image_size, cfg.image_size]);
    time("decode codes (1,10,10) -> (1,1,320,320)", || model.decode(&c1))?;
    let x = Tensor::randn(0f32, 0.5, (1, 1, cfg.image_size, cfg.image_size), &dev)?.clamp(-1f32, 1f32)?;
    assert_eq!(model.encode(&x)?.dims(), &[1, gh, gw]);
    time("encode (1,1,320,320) -> codes (1,10,10)", || model.encode(&x))?;
    // The encode's two parts: the conv stack, and the nearest-code search on its 10×10 latents.
    time("  of which the encoder's convolutions", || model.encode_latents(&x))?;
    let lat = model.encode_latents(&x)?;
    time("  of which the nearest-code search", || model.quantize(&lat))?;
    let c8 = codes(8)?;
    time("decode codes (8,10,10) -> (8,1,320,320)", || model.decode(&c8))?;
    encoder_layers(&dev)
}

/// The encoder's convolutions one by one at AURORA's shapes (random weights, ReLU fused as in the
/// model), perceptio's kernels only, 5 warm-ups and 50 timed runs each: to set against
/// PyTorch's own layers (`nn.Conv2d` + ReLU at the same shapes) when the whole encode is close.
fn encoder_layers(dev: &Device) -> candle_core::Result<()> {
    use candle_nn::{Conv2dConfig, Module};
    let layers: [(&str, usize, usize, usize, usize, usize, usize); 8] = [
        ("down 1->16 4x4 s2 at 320²", 1, 16, 4, 2, 1, 320),
        ("down 16->32 at 160²", 16, 32, 4, 2, 1, 160),
        ("down 32->64 at 80²", 32, 64, 4, 2, 1, 80),
        ("down 64->128 at 40²", 64, 128, 4, 2, 1, 40),
        ("down 128->256 at 20²", 128, 256, 4, 2, 1, 20),
        ("res 3x3 256->256 at 10² (x4)", 256, 256, 3, 1, 1, 10),
        ("res 1x1 256->256 at 10² (x2)", 256, 256, 1, 1, 0, 10),
        ("out 1x1 256->512 at 10²", 256, 512, 1, 1, 0, 10),
    ];
    println!("encoder layers, perceptio conv kernels (+ReLU), median of 50");
    for (name, ci, co, k, stride, padding, hw) in layers {
        let w = (Tensor::randn(0f32, 1.0, (co, ci, k, k), dev)? * (1.0 / ((ci * k * k) as f64).sqrt()))?;
        let b = Tensor::randn(0f32, 0.1, co, dev)?;
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let conv = candle_nn::Conv2d::new(w, Some(b), cfg);
        let x = Tensor::randn(0f32, 1.0, (1, ci, hw, hw), dev)?;
        let want = conv.forward(&x)?.relu()?;
        let got = perceptio::models::conv::conv2d_act(&conv, &x, true)?;
        assert_eq!(got.dims(), want.dims());
        for _ in 0..5 {
            perceptio::models::conv::conv2d_act(&conv, &x, true)?;
        }
        let mut v = Vec::with_capacity(50);
        for _ in 0..50 {
            let t = Instant::now();
            perceptio::models::conv::conv2d_act(&conv, &x, true)?;
            v.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("  {name:<30} median {:.3} ms", median(v));
    }
    Ok(())
}
