//! SAM2 input images: a square `size`² (1024) float CHW, ImageNet-normalised, from two paths.
//!
//! - [`sam2_transforms`]: `SAM2ImagePredictor.set_image` (Meta): `ToTensor` then torchvision
//!   `Resize((S, S))` on the float tensor = bilinear with antialias (a triangle filter widened by
//!   the scale when shrinking), ported from ATen's separable AA kernel (horizontal pass, then
//!   vertical, f32 arithmetic), then `Normalize`.
//! - [`sa2va_direct_resize`]: Sa2VA's `DirectResize`: Pillow `Image.resize((S, S))` (bicubic,
//!   uint8, bit-exact port) then `/255`, `-mean`, `/std`.

use super::resize::resize_bicubic;
use image::RgbImage;

const MEAN: [f32; 3] = [
    super::IMAGENET_MEAN[0] as f32,
    super::IMAGENET_MEAN[1] as f32,
    super::IMAGENET_MEAN[2] as f32,
];
const STD: [f32; 3] = [
    super::IMAGENET_STD[0] as f32,
    super::IMAGENET_STD[1] as f32,
    super::IMAGENET_STD[2] as f32,
];

/// Taps of one output pixel: first input index and normalised weights.
struct Taps {
    start: usize,
    w: Vec<f32>,
}

/// ATen `_compute_weights_aa` for the bilinear (triangle) filter, align_corners=False.
fn aa_taps(n_in: usize, n_out: usize) -> Vec<Taps> {
    let scale = n_in as f32 / n_out as f32;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..n_out)
        .map(|i| {
            let center = scale * (i as f32 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0) as usize; // C++ truncation
            let xmax = ((center + support + 0.5) as i64).min(n_in as i64).max(xmin as i64) as usize;
            let mut w: Vec<f32> = (xmin..xmax)
                .map(|j| {
                    let x = ((j as f32 - center + 0.5) * invscale).abs();
                    if x < 1.0 {
                        1.0 - x
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f32 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            Taps { start: xmin, w }
        })
        .collect()
}

/// Antialiased bilinear resize of planar f32 channels (c, h, w) → (c, oh, ow).
pub fn resize_bilinear_aa(src: &[f32], c: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let tx = aa_taps(w, ow);
    let ty = aa_taps(h, oh);
    let mut tmp = vec![0f32; c * h * ow];
    for ch in 0..c {
        for y in 0..h {
            let row = &src[(ch * h + y) * w..(ch * h + y + 1) * w];
            let out = &mut tmp[(ch * h + y) * ow..(ch * h + y + 1) * ow];
            for (o, t) in out.iter_mut().zip(&tx) {
                let mut acc = 0f32;
                for (k, wk) in t.w.iter().enumerate() {
                    acc += row[t.start + k] * wk;
                }
                *o = acc;
            }
        }
    }
    let mut dst = vec![0f32; c * oh * ow];
    for ch in 0..c {
        for (oy, t) in ty.iter().enumerate() {
            let out = &mut dst[(ch * oh + oy) * ow..(ch * oh + oy + 1) * ow];
            for (k, wk) in t.w.iter().enumerate() {
                let row = &tmp[(ch * h + t.start + k) * ow..(ch * h + t.start + k + 1) * ow];
                if k == 0 {
                    out.iter_mut().zip(row).for_each(|(o, r)| *o = r * wk);
                } else {
                    out.iter_mut().zip(row).for_each(|(o, r)| *o += r * wk);
                }
            }
        }
    }
    dst
}

fn normalize_in_place(x: &mut [f32], plane: usize) {
    for (ch, p) in x.chunks_mut(plane).enumerate() {
        p.iter_mut().for_each(|v| *v = (*v - MEAN[ch]) / STD[ch]);
    }
}

/// Meta's SAM2 predictor preprocessing → CHW f32 of size² per channel.
pub fn sam2_transforms(img: &RgbImage, size: usize) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut planar = vec![0f32; 3 * h * w];
    for (i, p) in img.pixels().enumerate() {
        for ch in 0..3 {
            planar[ch * h * w + i] = p.0[ch] as f32 / 255.0;
        }
    }
    let mut out = resize_bilinear_aa(&planar, 3, h, w, size, size);
    normalize_in_place(&mut out, size * size);
    out
}

/// Sa2VA's grounding-encoder preprocessing → CHW f32 of size² per channel.
pub fn sa2va_direct_resize(img: &RgbImage, size: usize) -> Vec<f32> {
    let r = resize_bicubic(img, size as u32, size as u32);
    let n = size * size;
    let mut out = vec![0f32; 3 * n];
    for (i, p) in r.pixels().enumerate() {
        for ch in 0..3 {
            out[ch * n + i] = p.0[ch] as f32 / 255.0;
        }
    }
    normalize_in_place(&mut out, n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aa_weights_are_normalised_and_identity_at_same_size() {
        for (a, b) in [(451, 1024), (3000, 1024), (7, 3), (1024, 1024)] {
            for t in aa_taps(a, b) {
                assert!((t.w.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear_aa(&src, 1, 3, 4, 3, 4), src);
    }

    #[test]
    fn shrinking_averages() {
        // 4 → 2 with the triangle filter of support 2: each output mixes 3 inputs (1/4, 1/2, 1/4 → clipped at borders).
        let src = [0.0f32, 4.0, 8.0, 12.0];
        let out = resize_bilinear_aa(&src, 1, 1, 4, 1, 2);
        assert!(
            (out[0] - (0.0 * 0.75 + 4.0 * 0.75 + 8.0 * 0.25) / 1.75).abs() < 1e-5,
            "{out:?}"
        );
    }
}
