//! Depth Anything V2 Small at real size (the hub config's geometry) with random weights, f32 CPU,
//! one 518×518 input: one warm-up pass, then the median of 3. The PyTorch figure for the same
//! shapes comes from `tools/gen_depth_anything_goldens.py --bench` (2 threads, no_grad, f32).
//! Run: `cargo bench --bench depth_anything`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use perceptio::models::depth_anything::{Config, DepthAnything};
use std::time::Instant;

/// `depth-anything/Depth-Anything-V2-Small-hf`'s config.json (fields that matter).
fn config() -> Config {
    serde_json::from_value(serde_json::json!({
        "model_type": "depth_anything", "patch_size": 14, "reassemble_hidden_size": 384,
        "reassemble_factors": [4, 2, 1, 0.5], "neck_hidden_sizes": [48, 96, 192, 384],
        "fusion_hidden_size": 64, "head_hidden_size": 32, "head_in_index": -1, "depth_estimation_type": "relative",
        "backbone_config": {"model_type": "dinov2", "hidden_size": 384, "num_attention_heads": 6, "num_hidden_layers": 12,
            "image_size": 518, "patch_size": 14, "out_indices": [9, 10, 11, 12], "reshape_hidden_states": false}
    }))
    .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// On the compute pool, as the model commands run.
fn main() -> candle_core::Result<()> {
    perceptio::util::on_compute_pool(run)
}

fn run() -> candle_core::Result<()> {
    perceptio::util::tune_allocator(); // as the model commands do
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let cfg = config();
    // Build once to create every variable, randomise them, then build the model that is timed
    // (it fuses q/k/v at load time, so it must be built from the final values).
    DepthAnything::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
    for v in vm.all_vars() {
        let fan_in: usize = v.dims().iter().skip(1).product::<usize>().max(1);
        v.set(&(Tensor::randn(0f32, 1.0, v.shape(), &dev)? * (1.0 / (fan_in as f64).sqrt()))?)?;
    }
    let model = DepthAnything::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
    println!(
        "Depth Anything V2 Small (DINOv2 ViT-S/14 + DPT), random f32 weights, {} threads",
        candle_core::utils::get_num_threads()
    );
    let px = Tensor::randn(0f32, 1.0, (1, 3, 518, 518), &dev)?;
    // perceptio's conv kernels, then candle's, each a block of one warm-up and 3 timed passes
    // (interleaved, a pass right after one of candle's ran slower: its elementwise pool's worker
    // was still spinning).
    let kernels = [("candle conv kernels", true), ("perceptio conv kernels", false)];
    let (mut runs, mut bb) = (vec![vec![]; 2], vec![vec![]; 2]);
    for (i, &(name, candle)) in kernels.iter().enumerate().rev() {
        perceptio::models::conv::use_candle_kernels(candle);
        let t = Instant::now();
        let _ = model.forward(&px)?;
        println!("warm-up pass, {name:<24} {:.3} s", t.elapsed().as_secs_f64());
        for _ in 0..3 {
            let t = Instant::now();
            let d = model.forward(&px)?;
            runs[i].push(t.elapsed().as_secs_f64());
            assert_eq!(d.dims(), &[1, 518, 518]);
            let t = Instant::now();
            let _ = model.feature_maps(&px)?;
            bb[i].push(t.elapsed().as_secs_f64());
        }
    }
    perceptio::models::conv::use_candle_kernels(false);
    for (i, &(name, _)) in kernels.iter().enumerate() {
        println!(
            "{name:<24} forward 1x3x518x518 median {:.3} s {:.3?}; DINOv2 backbone alone median {:.3} s {:.3?}",
            median(runs[i].clone()),
            runs[i],
            median(bb[i].clone()),
            bb[i]
        );
    }
    Ok(())
}
