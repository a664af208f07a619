//! `DPTImageProcessor` as transformers 5 runs it for Depth Anything (its torchvision backend, the
//! default whenever torchvision is installed) and the two bicubic resamplers the model needs.
//!
//! - Size: `get_resize_output_image_size` with `keep_aspect_ratio` (scale as little as possible:
//!   the side whose scale is closer to 1 decides) and `ensure_multiple_of` (Python's `round`, i.e.
//!   half to even, of `scale·side / multiple`).
//! - Resize: torchvision's `resize` on the uint8 CHW tensor, bicubic, `antialias=True`. On CPU
//!   torchvision ≥ 0.2x hands uint8 straight to ATen, whose AA kernel is Pillow-SIMD's algorithm
//!   with int16 weights at a precision derived from the largest weight — *not* Pillow's 22-bit
//!   weights, so [`crate::preprocess::resize::resize_bicubic`] differs by ±1–2 on 0.2–0.5 % of values.
//!   [`resize_u8_bicubic_aa`] ports ATen (`_compute_index_ranges_int16_weights` +
//!   `ImagingResample{Horizontal,Vertical}`), bit-exact.
//! - Rescale + normalise fused as the backend does: `mean·(1/rescale)` and `std·(1/rescale)` in
//!   f32, then `(x − m) / s` in f32.
//! - [`resize_bicubic`] (with [`crate::preprocess::resize::bicubic_matrix`]): `F.interpolate(mode="bicubic", align_corners=False)` without antialias
//!   (Keys' a = −0.75, clamped taps) as a dense (out, in) matrix, so a separable resize is two
//!   matmuls on any device: the DINOv2 position-embedding interpolation and
//!   `post_process_depth_estimation` both use it.

use crate::preprocess::resize::bicubic_matrix;
use candle_core::{Device, Result, Tensor};
use image::RgbImage;

/// `preprocessor_config.json` fields the Depth Anything processor reads (defaults: the hub
/// repos' values, which differ from `DPTImageProcessor`'s own defaults in size, mean and std).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PreprocessorConfig {
    #[serde(default = "yes")]
    pub do_resize: bool,
    #[serde(default)]
    pub size: Size,
    #[serde(default = "yes")]
    pub keep_aspect_ratio: bool,
    #[serde(default = "fourteen")]
    pub ensure_multiple_of: usize,
    /// PIL resampling id; only 3 (bicubic) is implemented.
    #[serde(default = "bicubic")]
    pub resample: u32,
    #[serde(default = "yes")]
    pub do_rescale: bool,
    #[serde(default = "rescale")]
    pub rescale_factor: f64,
    #[serde(default = "yes")]
    pub do_normalize: bool,
    #[serde(default = "mean")]
    pub image_mean: Vec<f64>,
    #[serde(default = "std")]
    pub image_std: Vec<f64>,
    #[serde(default)]
    pub do_pad: bool,
}

/// `size` of the processor: the target the keep-aspect-ratio rule starts from.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Size {
    pub height: usize,
    pub width: usize,
}

impl Default for Size {
    fn default() -> Self {
        Size {
            height: 518,
            width: 518,
        }
    }
}

fn yes() -> bool {
    true
}
fn fourteen() -> usize {
    14
}
fn bicubic() -> u32 {
    3
}
fn rescale() -> f64 {
    1.0 / 255.0
}
fn mean() -> Vec<f64> {
    crate::preprocess::IMAGENET_MEAN.to_vec()
}
fn std() -> Vec<f64> {
    crate::preprocess::IMAGENET_STD.to_vec()
}

impl Default for PreprocessorConfig {
    fn default() -> Self {
        PreprocessorConfig {
            do_resize: true,
            size: Size::default(),
            keep_aspect_ratio: true,
            ensure_multiple_of: fourteen(),
            resample: bicubic(),
            do_rescale: true,
            rescale_factor: rescale(),
            do_normalize: true,
            image_mean: mean(),
            image_std: std(),
            do_pad: false,
        }
    }
}

impl PreprocessorConfig {
    /// Refuse settings this port does not reproduce (rather than silently differ).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.do_resize && self.resample != 3 {
            return Err(format!(
                "resample {} is not supported (only 3 = bicubic, as the Depth Anything repos use)",
                self.resample
            ));
        }
        if self.do_pad {
            return Err("do_pad is not supported".into());
        }
        if self.do_resize && (self.ensure_multiple_of == 0 || self.size.height == 0 || self.size.width == 0) {
            return Err("size and ensure_multiple_of must be positive".into());
        }
        if self.do_normalize && (self.image_mean.len() != 3 || self.image_std.len() != 3) {
            return Err("image_mean and image_std must have 3 values".into());
        }
        if self.do_rescale && self.rescale_factor == 0.0 {
            return Err("rescale_factor must not be 0".into());
        }
        Ok(())
    }

    /// The model input size (width, height) for an image of `w`×`h` (may be 0 for extreme
    /// aspect ratios, as in the reference; [`Self::pixel_values`] refuses that).
    pub fn input_size(&self, w: usize, h: usize) -> (usize, usize) {
        if !self.do_resize {
            return (w, h);
        }
        let (out_h, out_w) = (self.size.height as f64, self.size.width as f64);
        let (in_h, in_w) = (h as f64, w as f64);
        let mut scale_h = out_h / in_h;
        let mut scale_w = out_w / in_w;
        if self.keep_aspect_ratio {
            if (1.0 - scale_w).abs() < (1.0 - scale_h).abs() {
                scale_h = scale_w;
            } else {
                scale_w = scale_h;
            }
        }
        let m = self.ensure_multiple_of as f64;
        // constrain_to_multiple_of(val, multiple, min_val=0, max_val=None)
        let constrain = |val: f64| -> usize {
            let x = (val / m).round_ties_even() * m;
            let x = if x < 0.0 { (val / m).ceil() * m } else { x };
            x.max(0.0) as usize
        };
        (constrain(scale_w * in_w), constrain(scale_h * in_h))
    }

    /// `pixel_values` (1, 3, H', W') in f32 on `device`.
    pub fn pixel_values(&self, img: &RgbImage, device: &Device) -> Result<Tensor> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let (nw, nh) = self.input_size(w, h);
        if nw == 0 || nh == 0 {
            candle_core::bail!("a {w}x{h} image resizes to {nw}x{nh} for Depth Anything (aspect ratio too extreme)");
        }
        let resized = if self.do_resize {
            resize_u8_bicubic_aa(img.as_raw(), w, h, nw, nh)
        } else {
            img.as_raw().clone()
        };
        Tensor::from_vec(self.normalize(&resized, nw * nh), (1, 3, nh, nw), device)
    }

    /// HWC uint8 → CHW f32, with the backend's fused rescale/normalise arithmetic.
    fn normalize(&self, hwc: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; 3 * n];
        for c in 0..3 {
            let (m, s, scale) = if self.do_normalize {
                let (mut m, mut s) = (self.image_mean[c] as f32, self.image_std[c] as f32);
                if self.do_rescale {
                    let inv = (1.0 / self.rescale_factor) as f32;
                    m *= inv;
                    s *= inv;
                }
                (m, s, None)
            } else {
                (0.0, 1.0, self.do_rescale.then_some(self.rescale_factor as f32))
            };
            for (o, px) in out[c * n..(c + 1) * n].iter_mut().zip(hwc.chunks_exact(3)) {
                let x = px[c] as f32;
                *o = match scale {
                    Some(f) => x * f,
                    None if self.do_normalize => (x - m) / s,
                    None => x,
                };
            }
        }
        out
    }
}

/// ATen's antialiasing bicubic filter (Keys, a = −0.5, as Pillow).
fn aa_cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// Per output index: first input index, int16 weights; plus the weights' precision (bits).
struct Int16Taps {
    start: Vec<usize>,
    weights: Vec<Vec<i32>>,
    precision: u32,
}

/// `_compute_index_ranges_int16_weights` for the AA bicubic filter, align_corners=False and no
/// explicit scale (torchvision passes a size): weights in f64, normalised, then scaled to int16
/// by 2^precision where precision is the largest that keeps the biggest weight below 2^15.
fn int16_taps(n_in: usize, n_out: usize) -> Int16Taps {
    let scale = n_in as f64 / n_out as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let max_taps = support.ceil() as i64 * 2 + 1;
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut wt_max = 0f64;
    let mut start = Vec::with_capacity(n_out);
    let mut float_w = Vec::with_capacity(n_out);
    for i in 0..n_out {
        let center = scale * (i as f64 + 0.5);
        let xmin = ((center - support + 0.5) as i64).max(0); // C++ truncation toward zero
        let xsize = (((center + support + 0.5) as i64).min(n_in as i64) - xmin).clamp(0, max_taps);
        let mut w: Vec<f64> = (0..xsize)
            .map(|j| aa_cubic((j as f64 + xmin as f64 - center + 0.5) * invscale))
            .collect();
        let total: f64 = w.iter().sum();
        if total != 0.0 {
            for v in w.iter_mut() {
                *v /= total;
                wt_max = wt_max.max(*v);
            }
        }
        start.push(xmin as usize);
        float_w.push(w);
    }
    let mut precision = 0u32;
    while precision < 22 {
        let next = (0.5 + wt_max * (1i64 << (precision + 1)) as f64) as i64;
        if next >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    let unit = (1i64 << precision) as f64;
    let weights = float_w
        .into_iter()
        .map(|w| {
            w.into_iter()
                .map(|v| {
                    let v = v * unit;
                    let r = if v < 0.0 { (-0.5 + v) as i32 } else { (0.5 + v) as i32 };
                    r as i16 as i32 // stored as int16
                })
                .collect()
        })
        .collect();
    Int16Taps {
        start,
        weights,
        precision,
    }
}

/// One fixed-point tap sum, as `ImagingResample*Convolution8u`: rounding bias, arithmetic
/// shift, saturation to 0..=255.
#[inline]
fn fixed_point(acc: i32, precision: u32) -> u8 {
    (acc >> precision).clamp(0, 255) as u8
}

/// torchvision `resize(uint8 tensor, (nh, nw), BICUBIC, antialias=True)` on CPU, on HWC RGB bytes:
/// horizontal pass (when the width changes) then vertical pass (when the height changes), each
/// rounding to uint8. Returns HWC RGB bytes of `nw`×`nh`.
pub fn resize_u8_bicubic_aa(src: &[u8], w: usize, h: usize, nw: usize, nh: usize) -> Vec<u8> {
    const C: usize = 3;
    let mut cur = src.to_vec();
    let mut cw = w;
    if nw != w {
        let t = int16_taps(w, nw);
        let bias = if t.precision > 0 { 1i32 << (t.precision - 1) } else { 0 };
        let mut out = vec![0u8; h * nw * C];
        for y in 0..h {
            let row = &cur[y * w * C..(y + 1) * w * C];
            for x in 0..nw {
                let (s, k) = (t.start[x], &t.weights[x]);
                for c in 0..C {
                    let acc = k
                        .iter()
                        .enumerate()
                        .fold(bias, |a, (j, &wj)| a + row[(s + j) * C + c] as i32 * wj);
                    out[(y * nw + x) * C + c] = fixed_point(acc, t.precision);
                }
            }
        }
        cur = out;
        cw = nw;
    }
    if nh != h {
        let t = int16_taps(h, nh);
        let bias = if t.precision > 0 { 1i32 << (t.precision - 1) } else { 0 };
        let mut out = vec![0u8; nh * cw * C];
        for y in 0..nh {
            let (s, k) = (t.start[y], &t.weights[y]);
            for i in 0..cw * C {
                let acc = k
                    .iter()
                    .enumerate()
                    .fold(bias, |a, (j, &wj)| a + cur[(s + j) * cw * C + i] as i32 * wj);
                out[y * cw * C + i] = fixed_point(acc, t.precision);
            }
        }
        cur = out;
    }
    cur
}

/// ATen's non-antialiased cubic convolution coefficients (a = −0.75) for fraction `t`, in f32.
/// Bicubic resize of the last two dims of `x` (…, h, w) → (…, nh, nw) as `Wy · x · Wxᵀ`.
pub fn resize_bicubic(x: &Tensor, nh: usize, nw: usize) -> Result<Tensor> {
    let dims = x.dims();
    let r = dims.len();
    if r < 2 {
        candle_core::bail!("bicubic resize needs at least 2 dims, got {dims:?}");
    }
    let (h, w) = (dims[r - 2], dims[r - 1]);
    if (h, w) == (nh, nw) {
        return Ok(x.clone());
    }
    let lead: usize = dims[..r - 2].iter().product();
    let wy = Tensor::from_vec(bicubic_matrix::<f32>(h, nh), (nh, h), x.device())?.to_dtype(x.dtype())?;
    let wx = Tensor::from_vec(bicubic_matrix::<f32>(w, nw), (nw, w), x.device())?.to_dtype(x.dtype())?;
    let x3 = x.reshape((lead, h, w))?;
    // (lead, h, w) · (w, nw) → (lead, h, nw); then Wy (nh, h) on each slice
    let t = x3.broadcast_matmul(&wx.t()?)?;
    let out = wy.broadcast_left(lead)?.matmul(&t.contiguous()?)?;
    let mut shape = dims[..r - 2].to_vec();
    shape.extend([nh, nw]);
    out.reshape(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_size_follows_keep_aspect_ratio_and_multiple() {
        let p = PreprocessorConfig::default();
        assert_eq!(p.input_size(451, 300), (518, 350));
        assert_eq!(p.input_size(280, 400), (364, 518));
        assert_eq!(p.input_size(518, 518), (518, 518));
        // extreme aspect ratio: the short side rounds to 0 (the caller refuses it)
        assert_eq!(p.input_size(5000, 2), (518, 0));
    }

    #[test]
    fn bicubic_matrix_rows_sum_to_one_and_identity_at_same_size() {
        let m = bicubic_matrix::<f32>(4, 7);
        for r in m.chunks(4) {
            assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        let id = bicubic_matrix::<f32>(5, 5);
        for (i, r) in id.chunks(5).enumerate() {
            for (j, v) in r.iter().enumerate() {
                assert_eq!(*v, if i == j { 1.0 } else { 0.0 });
            }
        }
    }

    #[test]
    fn resize_keeps_a_flat_image_flat() {
        let src = vec![77u8; 9 * 5 * 3];
        for (nw, nh) in [(4, 3), (20, 11), (9, 2)] {
            assert!(resize_u8_bicubic_aa(&src, 9, 5, nw, nh).iter().all(|&v| v == 77));
        }
    }
}
