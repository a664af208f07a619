//! InternVL2.5-1B stages at real size with random weights on this machine, for comparison with
//! the PyTorch reference (../shared/tools/perf_reference.py, figures in docs/performance.md).
//! Run: `cargo bench --bench internvl` (f32, CPU; ~2 GB of RAM; `-- decode`: only the batched
//! decode steps; `-- prefill`: the LLM prefill alone).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use perceptio::models::internvl::{config::Config, InternVl};
use std::time::Instant;

fn config() -> Config {
    serde_json::from_value(serde_json::json!({
        "model_type": "sa2va_chat", "template": "qwen_chat", "force_image_size": 448, "downsample_ratio": 0.5,
        "select_layer": -1, "ps_version": "v2",
        "vision_config": {"hidden_size": 1024, "num_attention_heads": 16, "intermediate_size": 4096, "num_hidden_layers": 24,
            "image_size": 448, "patch_size": 14, "qkv_bias": true, "qk_normalization": false, "norm_type": "layer_norm", "layer_norm_eps": 1e-6, "hidden_act": "gelu"},
        "llm_config": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
            "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "tie_word_embeddings": true, "hidden_act": "silu"}
    }))
    .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// `-- prefill`: the Qwen2.5-0.5B prefill alone over `PERCEPTIO_BENCH_TOKENS` (default 1816, a
/// 7-tile prompt) random embeddings, the whole last layer and the last row only (what
/// generation reads), alternating; one warm-up pass, then 3 timed passes each.
fn prefill(model: &mut InternVl, dev: &Device) -> candle_core::Result<()> {
    let n: usize = std::env::var("PERCEPTIO_BENCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1816);
    let x = (Tensor::randn(0f32, 1.0, (1, n, 896), dev)? * 0.02)?;
    let (mut full, mut tail) = (vec![], vec![]);
    for i in 0..4 {
        for (keep, times) in [(1, &mut tail), (n, &mut full)] {
            model.llm.clear_kv_cache();
            let t = Instant::now();
            let _ = model.llm.forward_embeds_tail(&x, 0, keep)?;
            if i > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
    }
    println!(
        "Qwen2.5-0.5B prefill {n}, all rows   median {:.3} s  {full:.3?}",
        median(full.clone())
    );
    println!(
        "Qwen2.5-0.5B prefill {n}, last row   median {:.3} s  {tail:.3?}",
        median(tail.clone())
    );
    Ok(())
}

/// On the compute pool, as the model commands run.
fn main() -> candle_core::Result<()> {
    perceptio::util::on_compute_pool(run)
}

fn run() -> candle_core::Result<()> {
    perceptio::util::tune_allocator(); // as `perceptio ask` does
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let mut model = InternVl::new(config(), vb)?;
    // Random weights (the VarMap starts from zeros); values do not change the FLOPs.
    for v in vm.all_vars() {
        let t = (Tensor::randn(0f32, 1.0, v.shape(), &dev)?
            * (1.0 / (v.dims().last().copied().unwrap_or(1) as f64).sqrt()))?;
        v.set(&t)?;
    }
    println!(
        "InternVL2.5-1B shapes (InternViT-300M + Qwen2.5-0.5B), random f32 weights, {} threads",
        candle_core::utils::get_num_threads()
    );
    if std::env::args().any(|a| a == "prefill") {
        return prefill(&mut model, &dev);
    }
    let ids: Vec<u32> = (0..300u32).map(|i| (i * 7919) % 151000).collect();
    if !std::env::args().any(|a| a == "decode") {
        let px = Tensor::randn(0f32, 1.0, (1, 3, 448, 448), &dev)?;
        // One untimed warm-up pass, as the PyTorch reference script does: on this VM the first
        // passes over fresh memory run up to 2x slower (pages being backed by the hypervisor).
        let t = Instant::now();
        let _ = model.vit_hidden(&px)?;
        println!("InternViT-300M warm-up pass       {:.2} s", t.elapsed().as_secs_f64());
        let mut vit = vec![];
        let mut hidden = None;
        for _ in 0..5 {
            let t = Instant::now();
            hidden = Some(model.vit_hidden(&px)?);
            vit.push(t.elapsed().as_secs_f64());
        }
        println!(
            "InternViT-300M, 1 tile 448²       median {:.2} s  {vit:.2?}",
            median(vit.clone())
        );
        let _ = hidden;
        let mut proj = vec![];
        for _ in 0..5 {
            let t = Instant::now();
            let _ = model.extract_feature(&px)?;
            proj.push(t.elapsed().as_secs_f64());
        }
        println!("ViT + pixel shuffle + mlp1        median {:.2} s", median(proj));
        let mut pre = vec![];
        for i in 0..4 {
            let e = model.llm.embed(&Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?)?;
            model.llm.clear_kv_cache();
            let t = Instant::now();
            let h = model.llm.forward_embeds(&e, 0)?;
            let _ = model.llm.logits(&h.narrow(1, 299, 1)?)?;
            if i > 0 {
                pre.push(t.elapsed().as_secs_f64()); // the first pass is a warm-up
            }
        }
        let p = median(pre.clone());
        println!(
            "Qwen2.5-0.5B prefill 300           median {p:.2} s = {:.1} tok/s  {pre:.2?}",
            300.0 / p
        );
        // Decode 32 tokens after the 300-token prompt (KV cache warm), greedy.
        let mut dec = vec![];
        for _ in 0..2 {
            let e = model.llm.embed(&Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?)?;
            model.llm.clear_kv_cache();
            let h = model.llm.forward_embeds(&e, 0)?;
            let mut next = model
                .llm
                .logits(&h.narrow(1, 299, 1)?)?
                .flatten_all()?
                .argmax(0)?
                .to_scalar::<u32>()?;
            let t = Instant::now();
            for k in 0..32 {
                let x = model.llm.embed(&Tensor::new(&[[next]], &dev)?)?;
                let h = model.llm.forward_embeds(&x, 300 + k)?;
                next = model.llm.logits(&h)?.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
            }
            dec.push(t.elapsed().as_secs_f64() / 32.0);
        }
        let d = median(dec.clone());
        println!(
            "Qwen2.5-0.5B decode (32 after 300) median {d:.4} s/token = {:.2} tok/s",
            1.0 / d
        );
    }
    // Batched decode steps (what `eval refcoco --batch-size N` without --force-seg runs): b rows
    // after a 64-token prompt each, one step feeding one token per row; a step's linear layers
    // then make one pass over the weights for all b rows instead of one pass per row.
    let short: Vec<u32> = ids[..64].to_vec();
    for b in [1usize, 4, 8] {
        let e = model.llm.embed(&Tensor::new(short.as_slice(), &dev)?.unsqueeze(0)?)?;
        let e = Tensor::cat(&vec![&e; b], 0)?;
        model.llm.clear_kv_cache();
        model.llm.set_left_padding(&vec![0; b]);
        let h = model.llm.forward_embeds(&e, 0)?;
        let mut next: Vec<u32> = model
            .llm
            .logits(&h.narrow(1, 63, 1)?.squeeze(1)?)?
            .argmax(1)?
            .to_vec1()?;
        let mut steps = vec![];
        for k in 0..17 {
            let t = Instant::now();
            let x = model.llm.embed(&Tensor::new(next.as_slice(), &dev)?.unsqueeze(1)?)?;
            let h = model.llm.forward_embeds(&x, 64 + k)?;
            next = model.llm.logits(&h.squeeze(1)?)?.argmax(1)?.to_vec1()?;
            if k > 0 {
                steps.push(t.elapsed().as_secs_f64()); // the first step is a warm-up
            }
        }
        let d = median(steps);
        println!(
            "Qwen2.5-0.5B decode, {b} rows (16 steps after 64) median {d:.4} s/step = {:.2} tok/s",
            b as f64 / d
        );
        // Of which: the LM head alone, and one layer's MLP alone.
        let hid = Tensor::randn(0f32, 1.0, (b, 896), &dev)?;
        let mut lm = vec![];
        for _ in 0..5 {
            let t = Instant::now();
            let _ = model.llm.logits(&hid)?;
            lm.push(t.elapsed().as_secs_f64());
        }
        let x3 = hid.unsqueeze(1)?;
        let mut step1 = vec![];
        for k in 0..5 {
            let t = Instant::now();
            let _ = model.llm.forward_embeds(&x3, 81 + k)?;
            step1.push(t.elapsed().as_secs_f64());
        }
        println!(
            "    LM head alone median {:.4} s; 24 layers alone median {:.4} s",
            median(lm),
            median(step1)
        );
    }
    model.llm.clear_kv_cache();
    Ok(())
}
