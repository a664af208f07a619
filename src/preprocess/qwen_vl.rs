//! Qwen-VL image preprocessing as Sa2VA-Qwen3-VL's `predict_forward` runs it: `qwen_vl_utils.fetch_image`
//! (smart resize to multiples of 28, Pillow bicubic), then transformers' `Qwen2VLImageProcessorFast`
//! (smart resize to multiples of patch·merge within `min_pixels..max_pixels`, torchvision's uint8
//! antialiased bicubic, `(x/255 − mean)/std`, the frame repeated to `temporal_patch_size`, and the
//! patch flattening that groups each `merge × merge` block of patches together).

use image::RgbImage;

/// Python's `round` (half to even), as both smart resizes use it.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// Which smart resize: `qwen_vl_utils`' (the rounded side at least one factor) or transformers'
/// (`image_processing_qwen2_vl.smart_resize`: the floored side at least one factor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmartResize {
    QwenVlUtils,
    Transformers,
}

/// (height, width) divisible by `factor`, with height·width within `min_pixels..=max_pixels` and the
/// aspect ratio kept as closely as possible. Refuses an aspect ratio above 200 (as both references).
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
    kind: SmartResize,
) -> Result<(usize, usize), String> {
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w).max(1.0) > 200.0 || height == 0 || width == 0 {
        return Err(format!(
            "absolute aspect ratio must be smaller than 200, got {width}x{height}"
        ));
    }
    let mut hb = round_half_even(h / f) * f;
    let mut wb = round_half_even(w / f) * f;
    if kind == SmartResize::QwenVlUtils {
        hb = hb.max(f);
        wb = wb.max(f);
    }
    if hb * wb > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        hb = (h / beta / f).floor() * f;
        wb = (w / beta / f).floor() * f;
        if kind == SmartResize::Transformers {
            hb = hb.max(f);
            wb = wb.max(f);
        }
    } else if hb * wb < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        hb = (h * beta / f).ceil() * f;
        wb = (w * beta / f).ceil() * f;
    }
    Ok((hb as usize, wb as usize))
}

/// PIL's/ATen's antialiased bicubic (a = −0.5) weights for one axis: (first source index, weights).
fn aa_bicubic_weights(n_in: usize, n_out: usize) -> Vec<(usize, Vec<f64>)> {
    let filter = |x: f64| {
        let (a, x) = (-0.5, x.abs());
        if x < 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * a
        } else {
            0.0
        }
    };
    let scale = n_in as f64 / n_out as f64;
    let (support, inv) = if scale >= 1.0 {
        (2.0 * scale, 1.0 / scale)
    } else {
        (2.0, 1.0)
    };
    (0..n_out)
        .map(|i| {
            let c = scale * (i as f64 + 0.5);
            let lo = ((c - support + 0.5) as i64).max(0) as usize;
            let hi = ((c + support + 0.5) as i64).min(n_in as i64) as usize;
            let w: Vec<f64> = (lo..hi).map(|j| filter((j as f64 - c + 0.5) * inv)).collect();
            let t: f64 = w.iter().sum();
            (lo, w.into_iter().map(|x| x / t).collect())
        })
        .collect()
}

/// ATen's uint8 kernel quantises the weights to int16 with the most bits that keep the largest
/// weight below 2^15 (not Pillow's fixed 22 bits), which is why its output differs from Pillow's.
fn quantize(ws: &[(usize, Vec<f64>)]) -> (Vec<(usize, Vec<i64>)>, u32) {
    let max = ws.iter().flat_map(|(_, w)| w.iter().copied()).fold(f64::MIN, f64::max);
    let mut p = 0u32;
    while p < 22 && ((0.5 + max * (1u64 << (p + 1)) as f64) as i64) < (1 << 15) {
        p += 1;
    }
    let q = ws
        .iter()
        .map(|(lo, w)| {
            let s = (1u64 << p) as f64;
            (
                *lo,
                w.iter()
                    .map(|&x| {
                        if x < 0.0 {
                            (x * s - 0.5) as i64
                        } else {
                            (x * s + 0.5) as i64
                        }
                    })
                    .collect(),
            )
        })
        .collect();
    (q, p)
}

/// torchvision's `resize(uint8 tensor, BICUBIC, antialias=True)` on the CPU (ATen's native uint8
/// antialiased bicubic: horizontal pass, uint8 intermediate, vertical pass, int16 weights).
pub fn resize_bicubic_torch_u8(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    if (ow, oh) == (w, h) {
        return img.clone();
    }
    let src = img.as_raw();
    let pass = |n_in: usize, n_out: usize| quantize(&aa_bicubic_weights(n_in, n_out));
    let clip = |s: i64, p: u32| (s >> p).clamp(0, 255) as u8;
    let mut tmp = src.clone();
    let mut tw = w;
    if ow != w {
        let (cx, px) = pass(w, ow);
        tmp = vec![0u8; h * ow * 3];
        for y in 0..h {
            for (x, (lo, ws)) in cx.iter().enumerate() {
                for c in 0..3 {
                    let mut s = 1i64 << (px - 1);
                    for (j, wt) in ws.iter().enumerate() {
                        s += src[(y * w + lo + j) * 3 + c] as i64 * wt;
                    }
                    tmp[(y * ow + x) * 3 + c] = clip(s, px);
                }
            }
        }
        tw = ow;
    }
    let mut out = tmp.clone();
    if oh != h {
        let (cy, py) = pass(h, oh);
        out = vec![0u8; oh * tw * 3];
        for (y, (lo, ws)) in cy.iter().enumerate() {
            for x in 0..tw * 3 {
                let mut s = 1i64 << (py - 1);
                for (j, wt) in ws.iter().enumerate() {
                    s += tmp[(lo + j) * tw * 3 + x] as i64 * wt;
                }
                out[y * tw * 3 + x] = clip(s, py);
            }
        }
    }
    RgbImage::from_raw(ow as u32, oh as u32, out).expect("sizes match")
}

/// The image-processor settings (`preprocessor_config.json` plus the call's min/max pixels).
#[derive(Debug, Clone)]
pub struct QwenVlPreprocess {
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub min_pixels: usize,
    pub max_pixels: usize,
}

/// `pixel_values` (rows × C·T·P·P, row-major) and `image_grid_thw` of one image.
#[derive(Debug, Clone)]
pub struct QwenVlPixels {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    pub grid_thw: [usize; 3],
    /// The uint8 image after both resizes.
    pub resized: RgbImage,
}

/// `qwen_vl_utils.fetch_image`'s resize (factor 28 = its default patch 14 × merge 2, 4..16384 tokens,
/// Pillow's default bicubic).
pub fn fetch_image(img: &RgbImage) -> Result<RgbImage, String> {
    let f = 28;
    let (h, w) = smart_resize(
        img.height() as usize,
        img.width() as usize,
        f,
        4 * f * f,
        16384 * f * f,
        SmartResize::QwenVlUtils,
    )?;
    Ok(super::resize::resize_bicubic(img, w as u32, h as u32))
}

impl QwenVlPreprocess {
    /// The processor's resize, rescale/normalise and patch flattening of an already fetched image.
    pub fn pixels(&self, img: &RgbImage) -> Result<QwenVlPixels, String> {
        let (p, t, m) = (self.patch_size, self.temporal_patch_size, self.merge_size);
        let (h, w) = smart_resize(
            img.height() as usize,
            img.width() as usize,
            p * m,
            self.min_pixels,
            self.max_pixels,
            SmartResize::Transformers,
        )?;
        let r = resize_bicubic_torch_u8(img, w as u32, h as u32);
        let (gh, gw) = (h / p, w / p);
        let raw = r.as_raw();
        let cols = 3 * t * p * p;
        let rows = gh * gw;
        let mut data = vec![0f32; rows * cols];
        // The fast processor fuses rescale and normalise: (x − mean·255)/(std·255) in f32.
        let k255 = 1.0 / (1.0f64 / 255.0);
        let norm: Vec<(f32, f32)> = (0..3)
            .map(|c| ((self.mean[c] as f64 * k255) as f32, (self.std[c] as f64 * k255) as f32))
            .collect();
        let mut row = 0;
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for ih in 0..m {
                    for iw in 0..m {
                        let (py, px) = (bh * m + ih, bw * m + iw);
                        let out = &mut data[row * cols..(row + 1) * cols];
                        let mut k = 0;
                        for (c, &(mu, sd)) in norm.iter().enumerate() {
                            for _ in 0..t {
                                for y in 0..p {
                                    for x in 0..p {
                                        let v = raw[((py * p + y) * w + px * p + x) * 3 + c] as f32;
                                        out[k] = (v - mu) / sd;
                                        k += 1;
                                    }
                                }
                            }
                        }
                        row += 1;
                    }
                }
            }
        }
        Ok(QwenVlPixels {
            data,
            rows,
            cols,
            grid_thw: [1, gh, gw],
            resized: r,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_rounds_half_to_even_and_respects_the_pixel_range() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(-2.5), -2.0);
        // 300x451 → multiples of 28: 308 x 448 (451/28 = 16.1)
        assert_eq!(
            smart_resize(300, 451, 28, 3136, 12845056, SmartResize::QwenVlUtils),
            Ok((308, 448))
        );
        // then at least 401408 pixels in multiples of 32
        assert_eq!(
            smart_resize(308, 448, 32, 401408, 1605632, SmartResize::Transformers),
            Ok((544, 768))
        );
        assert!(smart_resize(1, 400, 28, 1, 1 << 30, SmartResize::QwenVlUtils).is_err());
    }
}
