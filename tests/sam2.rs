//! SAM2 parity with Meta's sam2 1.1.0 on a tiny random checkpoint (fixtures/sam2, made by
//! tools/gen_sam2_goldens.py). So far the prompt encoder; tolerance 1e-5 absolute (f32).

mod common;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::fixture;
use perceptio::models::sam2::prompt_encoder::PromptEncoder;
use std::collections::HashMap;

fn goldens() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("sam2/goldens.safetensors"), &Device::Cpu).unwrap()
}

fn close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    let d: f32 = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    assert!(d <= 1e-5, "{what}: max abs diff {d}");
}

fn encoder(vb: VarBuilder) -> PromptEncoder {
    PromptEncoder::new(32, (64, 64), (1024, 1024), vb).unwrap()
}

fn labels(g: &HashMap<String, Tensor>, k: &str) -> Vec<i64> {
    g[k].to_dtype(DType::I64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn check(pe: &PromptEncoder, g: &HashMap<String, Tensor>, layout: &str) {
    for case in ["point", "box"] {
        let coords = &g[&format!("{case}.coords")];
        let l = labels(g, &format!("{case}.labels"));
        let s = pe.sparse(Some((coords, &l)), None).unwrap();
        close(&s, &g[&format!("{case}.sparse")], &format!("{layout} {case} sparse"));
    }
    // Sa2VA: one (0,0) point labelled -1 (+ the automatic padding point), then the [SEG] token.
    let s = pe.sparse(Some((&Tensor::zeros((1, 1, 2), DType::F32, &Device::Cpu).unwrap(), &[-1])), None).unwrap();
    let s = Tensor::cat(&[&s, &g["sa2va.seg_embedding"]], 1).unwrap();
    close(&s, &g["sa2va.sparse"], &format!("{layout} sa2va sparse"));
    let dense = pe.dense_pe().unwrap();
    close(&dense.narrow(2, 0, 8).unwrap().narrow(3, 0, 8).unwrap().squeeze(0).unwrap(), &g["dense_pe.crop_tl"], "dense_pe top-left");
    close(&dense.narrow(2, 28, 8).unwrap().narrow(3, 28, 8).unwrap().squeeze(0).unwrap(), &g["dense_pe.crop_c"], "dense_pe centre");
    let nm = pe.dense_no_mask(1).unwrap();
    assert_eq!(nm.dims(), &[1, 32, 64, 64]);
    close(&nm.narrow(2, 5, 1).unwrap().narrow(3, 7, 1).unwrap().flatten_all().unwrap(), &g["no_mask_embed"], "no_mask_embed");
}

#[test]
fn prompt_encoder_matches_meta_in_both_key_layouts() {
    let g = goldens();
    let st = fixture("sam2/tiny_sa2va_sam2.safetensors");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[st], DType::F32, &Device::Cpu) }.unwrap();
    check(&encoder(vb.pp("grounding_encoder.sam2_model.sam_prompt_encoder")), &g, "sa2va safetensors");
    let vb = VarBuilder::from_pth_with_state(fixture("sam2/tiny_sam2.pt"), DType::F32, "model", &Device::Cpu).unwrap();
    check(&encoder(vb.pp("sam_prompt_encoder")), &g, "meta .pt");
}
