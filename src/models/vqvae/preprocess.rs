//! Depth maps in AURORA's convention, and the exact preprocessing its VQ-VAE was trained with.
//!
//! AURORA (`AiT/vae/dataset/custom.py`, `get_codes.py`) reads Depth Anything v1's `--grayscale`
//! output: relative *disparity-like* depth, brighter = closer, min-max scaled per image to
//! 0‥255 and truncated to 8 bits (`(d − min)/(max − min)·255`, `astype(uint8)`). It takes
//! channel 0, resizes to 320² with PIL NEAREST, `ToTensor` (/255) and `Normalize(0.5, 0.5)`,
//! so the encoder sees `(x/255 − 0.5)/0.5` ∈ [−1, 1]. The VQ-VAE's own `norm` (`max_value`
//! 10) is off in AURORA's config. A metric depth map (farther = larger) must be turned into
//! disparity first ([`depth_to_disparity`]) or the codes describe an inverted scene.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};

pub use crate::depthmap::{DepthMap, DepthScale};

/// The 8-bit map AURORA's VQ-VAE reads: an 8-bit map unchanged; a float map with missing
/// values filled by the smallest valid value (farthest), then Depth Anything's min-max to 8 bits.
pub fn to_gray8(map: &DepthMap) -> Result<Vec<u8>> {
    check_len(map.data.len(), map.width, map.height)?;
    match map.scale {
        DepthScale::Gray8 => Ok(map.data.iter().map(|&v| v.clamp(0.0, 255.0) as u8).collect()),
        DepthScale::Unit | DepthScale::Float => {
            let mut d = map.data.clone();
            if fill_non_finite(&mut d).is_none() {
                return Err(Error::at("depth map", "no finite value to normalise"));
            }
            Ok(minmax_u8(&d))
        }
    }
}

fn check_len(n: usize, w: usize, h: usize) -> Result<()> {
    if w == 0 || h == 0 || w.checked_mul(h) != Some(n) {
        return Err(Error::at("depth map", format!("{n} values do not make a {w}x{h} map")));
    }
    Ok(())
}

/// Replace NaN/±inf (e.g. Middlebury's "no ground truth") by the smallest finite value, i.e. the
/// farthest disparity; returns how many were replaced, `None` when no value is finite.
pub fn fill_non_finite(data: &mut [f32]) -> Option<usize> {
    let lo = data
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f32::INFINITY, f32::min);
    if !lo.is_finite() {
        return None;
    }
    let mut n = 0;
    for v in data.iter_mut().filter(|v| !v.is_finite()) {
        *v = lo;
        n += 1;
    }
    Some(n)
}

/// Depth Anything v1 `run.py --grayscale`: `((d − min)/(max − min)·255).astype(uint8)` in f32
/// (truncation); a constant map (max = min, a NaN there) becomes all zeros. Values must be finite.
pub fn minmax_u8(data: &[f32]) -> Vec<u8> {
    let lo = data.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let range = hi - lo;
    data.iter()
        .map(|&v| {
            if range > 0.0 {
                ((v - lo) / range * 255.0f32) as u8
            } else {
                0
            }
        })
        .collect()
}

/// `1/d` for metric depth (d > 0), so that brighter = closer as AURORA expects; other values
/// become NaN (missing).
pub fn depth_to_disparity(depth: &[f32]) -> Vec<f32> {
    depth
        .iter()
        .map(|&d| if d > 0.0 && d.is_finite() { 1.0 / d } else { f32::NAN })
        .collect()
}

/// Pillow's `Image.resize(..., NEAREST)` (`ImagingScaleAffine`): source index
/// `floor(a·(i + 0.5))` with `a = src/dst`, accumulated in f64 exactly as Pillow does, so the
/// chosen pixels match bit for bit.
pub fn resize_nearest<T: Copy>(src: &[T], w: usize, h: usize, dw: usize, dh: usize) -> Vec<T> {
    let index = |n_src: usize, n_dst: usize| -> Vec<usize> {
        let a = n_src as f64 / n_dst as f64;
        let mut pos = a * 0.5;
        (0..n_dst)
            .map(|_| {
                let i = (pos as usize).min(n_src - 1);
                pos += a;
                i
            })
            .collect()
    };
    if w == 0 || h == 0 || src.len() != w * h {
        return Vec::new();
    }
    let (xs, ys) = (index(w, dw), index(h, dh));
    let mut out = Vec::with_capacity(dw * dh);
    for &y in &ys {
        let row = &src[y * w..(y + 1) * w];
        out.extend(xs.iter().map(|&x| row[x]));
    }
    out
}

/// `ToTensor` + `Normalize(0.5, 0.5)` on 8-bit values, in f32 as torchvision computes them.
pub fn u8_to_unit_range(data: &[u8]) -> Vec<f32> {
    data.iter().map(|&v| (v as f32 / 255.0 - 0.5) / 0.5).collect()
}

/// AURORA's VQ-VAE input for a map: 8 bits (see [`to_gray8`]), NEAREST to `size`²,
/// `(x/255 − 0.5)/0.5`; returns (1, 1, size, size) f32 on `device`.
pub fn normalize_depth(map: &DepthMap, size: usize, device: &Device) -> Result<Tensor> {
    if size == 0 {
        return Err(Error::Usage("depth input size must be positive".into()));
    }
    let g = to_gray8(map)?;
    let r = resize_nearest(&g, map.width, map.height, size, size);
    Tensor::from_vec(u8_to_unit_range(&r), (1, 1, size, size), device)
        .map_err(|e| Error::at("depth map", crate::error::candle_message(&e)))
}

/// Decoder output (normalised space) back to AURORA's [0, 1] disparity scale, clamped.
pub fn denormalize(x: &Tensor) -> candle_core::Result<Tensor> {
    x.affine(0.5, 0.5)?.clamp(0f32, 1f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_follows_pillow_centres() {
        // Pillow picks floor((i + 0.5)·src/dst): 4 → 2 takes 1 and 3; 2 → 4 repeats.
        assert_eq!(resize_nearest(&[0, 1, 2, 3], 4, 1, 2, 1), vec![1, 3]);
        assert_eq!(resize_nearest(&[5, 6], 2, 1, 4, 1), vec![5, 5, 6, 6]);
        assert_eq!(resize_nearest(&[1, 2, 3, 4, 5, 6], 3, 2, 3, 2), vec![1, 2, 3, 4, 5, 6]);
        assert!(resize_nearest(&[1u8, 2], 3, 1, 2, 2).is_empty());
    }

    #[test]
    fn missing_values_and_degenerate_maps() {
        let mut d = vec![f32::NAN, 2.0, f32::INFINITY, 4.0];
        assert_eq!(fill_non_finite(&mut d), Some(2));
        assert_eq!(d, vec![2.0, 2.0, 2.0, 4.0]);
        assert_eq!(minmax_u8(&d), vec![0, 0, 0, 255]);
        assert_eq!(minmax_u8(&[3.0, 3.0]), vec![0, 0]);
        assert_eq!(fill_non_finite(&mut [f32::NAN]), None);
        assert_eq!(u8_to_unit_range(&[0, 255]), vec![-1.0, 1.0]);
        let disp = depth_to_disparity(&[2.0, 0.0, -1.0]);
        assert_eq!(disp[0], 0.5);
        assert!(disp[1].is_nan() && disp[2].is_nan());
    }
}
