//! Pillow's `Image.resize((w, h))` for 8-bit RGB: BICUBIC (Pillow's default filter), bit for bit.
//!
//! A port of the algorithm in Pillow's `src/libImaging/Resample.c` (`precompute_coeffs`,
//! `normalize_coeffs_8bpc`, `ImagingResampleHorizontal_8bpc` / `Vertical_8bpc`,
//! `ImagingResampleInner`):
//!
//! - separable: two passes through an 8-bit intermediate image, horizontal then vertical, except
//!   that Pillow 13 runs the vertical pass first when the height shrinks by more than twice as
//!   many pixels as the width (`in_h - out_h > 0 && in_h - out_h > 2 * (in_w - out_w)`); a pass
//!   is skipped when that dimension does not change. The order changes the rounding of the
//!   intermediate, so it is part of being bit-exact (see [`PillowCompat`]);
//! - the cubic kernel with `a = -0.5` and support 2, stretched by the downscale factor
//!   (`filterscale = max(in/out, 1)`) so downscaling is antialiased;
//! - per output pixel, the weights are computed in `f64`, normalised to sum 1, then converted to
//!   fixed point with `PRECISION_BITS = 22` (rounded half away from zero); the sum starts at
//!   `1 << 21` (rounding), is accumulated in `i32`, shifted right by 22 and clipped to 0..=255.
//!
//! The floating-point expressions are evaluated in the same order as the C code (no FMA), so the
//! integer weights, and hence the output, are identical.
//!
//! Pillow versions: the default ([`resize_bicubic`]) is Pillow 13.0.0; [`PillowCompat`] selects
//! the pass order of older releases. Checked against Pillow 13.0.0, 12.3.0 and 12.1.1 (goldens
//! in `fixtures/preprocess/`). The kernel, weights and rounding are the same in all of them.

use image::RgbImage;

/// Fixed-point fraction bits of the 8-bit resampler: 32 bits minus 8 for the value, minus 2
/// for the overshoot of the negative lobes.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Support (radius) of the bicubic kernel at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;

/// Keys' cubic convolution kernel with a = -0.5, written as Pillow writes it.
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point weights of one axis: for output index `i`, input samples
/// `first[i] .. first[i] + count[i]` with weights `weights[i * ksize ..][.. count[i]]`.
struct Coeffs {
    ksize: usize,
    first: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the whole source range `0..in_size`.
fn coeffs(in_size: u32, out_size: u32) -> Coeffs {
    // Pillow passes the box edges as C floats; the difference is exact for image sizes.
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    let scale = f64::from(in1 - in0) / f64::from(out_size);
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = BICUBIC_SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv_filterscale = 1.0 / filterscale;

    let n = out_size as usize;
    let mut first = Vec::with_capacity(n);
    let mut count = Vec::with_capacity(n);
    let mut weights = vec![0i32; n * ksize];
    let mut w = vec![0.0f64; ksize];
    for (xx, kout) in weights.chunks_exact_mut(ksize).enumerate() {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero; `as i64` does the same (and saturates).
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
        let cnt = (xmax - xmin).max(0) as usize;
        let mut ww = 0.0f64;
        for (x, wx) in w.iter_mut().enumerate().take(cnt) {
            let v = bicubic_filter(((x as i64 + xmin) as f64 - center + 0.5) * inv_filterscale);
            *wx = v;
            ww += v;
        }
        for (x, k) in kout.iter_mut().enumerate().take(cnt) {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let scaled = v * f64::from(1u32 << PRECISION_BITS);
            *k = if v < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        first.push(xmin as usize);
        count.push(cnt);
    }
    Coeffs {
        ksize,
        first,
        count,
        weights,
    }
}

/// `clip8`: drop the fraction bits (arithmetic shift, as C does on these compilers) and clamp.
#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over rows `row0 .. row0 + rows` of `src` (width `in_w`, RGB) into a
/// `out_w × rows` buffer.
fn horizontal(src: &[u8], in_w: usize, row0: usize, rows: usize, c: &Coeffs) -> Vec<u8> {
    let out_w = c.first.len();
    let mut out = vec![0u8; out_w * rows * 3];
    for (y, out_row) in out.chunks_exact_mut(out_w * 3).enumerate() {
        let in_row = &src[(row0 + y) * in_w * 3..(row0 + y + 1) * in_w * 3];
        for (xx, px) in out_row.chunks_exact_mut(3).enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + c.count[xx]];
            let taps = &in_row[c.first[xx] * 3..(c.first[xx] + c.count[xx]) * 3];
            let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
            for (&kw, p) in k.iter().zip(taps.chunks_exact(3)) {
                s0 += i32::from(p[0]) * kw;
                s1 += i32::from(p[1]) * kw;
                s2 += i32::from(p[2]) * kw;
            }
            px[0] = clip8(s0);
            px[1] = clip8(s1);
            px[2] = clip8(s2);
        }
    }
    out
}

/// Vertical pass: `src` has width `w` (RGB); output row `yy` reads rows
/// `c.first[yy] - row_offset ..` of `src`.
fn vertical(src: &[u8], w: usize, row_offset: usize, c: &Coeffs) -> Vec<u8> {
    let out_h = c.first.len();
    let stride = w * 3;
    let mut out = vec![0u8; stride * out_h];
    let mut acc = vec![0i32; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        acc.fill(HALF);
        let k = &c.weights[yy * c.ksize..yy * c.ksize + c.count[yy]];
        let y0 = c.first[yy] - row_offset;
        for (dy, &kw) in k.iter().enumerate() {
            let in_row = &src[(y0 + dy) * stride..(y0 + dy + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(in_row) {
                *a += i32::from(p) * kw;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Which Pillow release to reproduce. Only the order of the two passes differs between them
/// (and with it the rounding of the 8-bit intermediate image: usually ±1-2 levels on some pixels,
/// up to 9 on high-contrast noise in the goldens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PillowCompat {
    /// Pillow 13.0: vertical pass first iff `in_h - out_h > 0 && in_h - out_h > 2 * (in_w - out_w)`.
    #[default]
    Pillow13,
    /// Pillow 12.2 and 12.3: vertical pass first iff `in_h > 100 * in_w && out_h < in_h`
    /// (done in `Image.resize` as two single-pass resizes).
    Pillow12_2,
    /// Pillow up to 12.1: always horizontal, then vertical. (The 8-bit resampler is otherwise
    /// unchanged since at least Pillow 8; before Pillow 7 `Image.resize` defaulted to NEAREST.)
    Pillow12_1,
}

impl PillowCompat {
    fn vertical_first(self, in_w: u32, in_h: u32, out_w: u32, out_h: u32) -> bool {
        let (in_w, in_h, out_w, out_h) = (i64::from(in_w), i64::from(in_h), i64::from(out_w), i64::from(out_h));
        match self {
            PillowCompat::Pillow13 => in_h - out_h > 0 && in_h - out_h > (in_w - out_w) * 2,
            PillowCompat::Pillow12_2 => in_h > in_w * 100 && out_h < in_h,
            PillowCompat::Pillow12_1 => false,
        }
    }
}

/// Pillow-exact BICUBIC resize of an 8-bit RGB image: the same bytes as
/// `Image.resize((width, height))` (default filter) on an `RGB` image in Pillow 13.
///
/// Same size returns a copy (as Pillow does). A zero target dimension gives an empty image; an
/// empty source gives a black image of the requested size (Pillow refuses both).
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize_bicubic_compat(img, width, height, PillowCompat::Pillow13)
}

/// [`resize_bicubic`] as a given Pillow release computes it.
pub fn resize_bicubic_compat(img: &RgbImage, width: u32, height: u32, compat: PillowCompat) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    if (in_w, in_h) == (width, height) {
        return img.clone();
    }
    if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    let need_horizontal = width != in_w;
    let need_vertical = height != in_h;
    let src = img.as_raw();
    let data = if need_horizontal && need_vertical && compat.vertical_first(in_w, in_h, width, height) {
        let tmp = vertical(src, in_w as usize, 0, &coeffs(in_h, height));
        horizontal(&tmp, in_w as usize, 0, height as usize, &coeffs(in_w, width))
    } else if need_horizontal {
        let horiz = coeffs(in_w, width);
        if need_vertical {
            let vert = coeffs(in_h, height);
            // Only the source rows the vertical pass reads go through the horizontal pass.
            let row_first = vert.first[0];
            let row_last = vert.first[height as usize - 1] + vert.count[height as usize - 1];
            let tmp = horizontal(src, in_w as usize, row_first, row_last - row_first, &horiz);
            vertical(&tmp, width as usize, row_first, &vert)
        } else {
            horizontal(src, in_w as usize, 0, in_h as usize, &horiz)
        }
    } else {
        vertical(src, in_w as usize, 0, &coeffs(in_h, height))
    };
    RgbImage::from_raw(width, height, data).expect("buffer size matches the dimensions")
}

/// Precision in which the cubic coefficients are computed: torch evaluates them in the
/// tensor's accumulation type, which differs between the two places that need them (SAM2's
/// pos-embed resize in f64, Depth Anything's post-processing in f32), and the goldens see it.
pub trait CubicFloat:
    Copy + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> + std::ops::Mul<Output = Self>
{
    fn of(x: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl CubicFloat for f32 {
    fn of(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl CubicFloat for f64 {
    fn of(x: f32) -> Self {
        x as f64
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}

/// The row-major (n_out, n_in) matrix of `F.interpolate(mode="bicubic", align_corners=False)`
/// along one axis (no antialias, A = −0.75): source coordinate `(i + 0.5)·in/out − 0.5` in f32,
/// four taps clamped to the edge (clamped taps add up on the edge pixel), coefficients in `T`.
pub fn bicubic_matrix<T: CubicFloat>(n_in: usize, n_out: usize) -> Vec<f32> {
    let a = T::of(-0.75);
    let (one, two, three, four, five, eight) = (T::of(1.0), T::of(2.0), T::of(3.0), T::of(4.0), T::of(5.0), T::of(8.0));
    let c1 = |x: T| ((a + two) * x - (a + three)) * x * x + one; // |x| <= 1
    let c2 = |x: T| ((a * x - five * a) * x + eight * a) * x - four * a; // 1 < |x| < 2
    let mut m = vec![0f32; n_out * n_in];
    let scale = n_in as f32 / n_out as f32;
    for o in 0..n_out {
        let src = scale * (o as f32 + 0.5) - 0.5;
        let x0 = src.floor();
        let t = T::of(src - x0);
        let x2 = one - t;
        let w = [c2(t + one), c1(t), c1(x2), c2(x2 + one)];
        for (k, wk) in w.iter().enumerate() {
            let i = (x0 as i64 - 1 + k as i64).clamp(0, n_in as i64 - 1) as usize;
            m[o * n_in + i] += wk.to_f32();
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_values() {
        assert_eq!(bicubic_filter(0.0), 1.0);
        assert_eq!(bicubic_filter(1.0), 0.0);
        assert_eq!(bicubic_filter(-1.5), bicubic_filter(1.5));
        assert_eq!(bicubic_filter(2.0), 0.0);
        assert!(bicubic_filter(1.5) < 0.0);
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(7u32, 23u32), (37, 11), (1, 5), (400, 7), (451, 1344)] {
            let c = coeffs(i, o);
            for xx in 0..o as usize {
                let s: i64 = c.weights[xx * c.ksize..][..c.count[xx]]
                    .iter()
                    .map(|&k| i64::from(k))
                    .sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= c.count[xx] as i64,
                    "{i}->{o} at {xx}: {s}"
                );
                assert!(c.first[xx] + c.count[xx] <= i as usize);
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(13, 7, image::Rgb([10, 200, 255]));
        for (w, h) in [(5, 3), (40, 21), (13, 2), (1, 1), (29, 7)] {
            let out = resize_bicubic(&img, w, h);
            assert_eq!(out.dimensions(), (w, h));
            assert!(out.pixels().all(|p| p.0 == [10, 200, 255]), "{w}x{h}");
        }
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let img = RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3]));
        assert_eq!(resize_bicubic(&img, 0, 5).dimensions(), (0, 5));
        assert_eq!(resize_bicubic(&RgbImage::new(0, 0), 4, 4), RgbImage::new(4, 4));
        assert_eq!(resize_bicubic(&img, 3, 2), img);
    }
}
