//! Vectorisable f32 CPU kernels for the two element-wise hot spots of the encoders, softmax and
//! erf-GELU. candle's CPU versions call libm's scalar `exp`/`erf` per element; these use
//! Cephes-style polynomials (exp ≲ 3e-7 relative, erf ≲ 6e-7 absolute) that LLVM vectorises, with an AVX2+FMA
//! build of the same code chosen at run time. The kernels only ever see contiguous f32 CPU storage:
//! other devices use candle's ops (CUDA's softmax accumulates in f32 for f16/bf16, as PyTorch's), and
//! f16/bf16 CPU tensors are widened to f32 first — candle's CPU softmax would otherwise take the
//! exponentials *and their sum* in f16/bf16 (a 4096-wide row loses every term below the sum's ulp),
//! where PyTorch (CPU and CUDA) and transformers' `softmax(dtype=float32)` accumulate in f32; the
//! result is rounded back to the input dtype, as theirs.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// exp(x) for f32 (Cephes expf; ≤ 2 ulp on [-87, 88]); 0 below -87.3, like the true value
/// underflowing.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer in the low bits
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * C1 - n * C2;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let e = ((t.to_bits() as i32 - 0x4B40_0000 + 127) << 23) as u32;
    let v = y * f32::from_bits(e);
    if x < -87.3 {
        0.0
    } else {
        v
    }
}

/// erf(x), Abramowitz & Stegun 7.1.26 (1.5e-7 in exact arithmetic; ≤ 6e-7 absolute in f32).
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6) * t;
    let y = 1.0 - poly * exp_f32(-a * a);
    if x < 0.0 {
        -y
    } else {
        y
    }
}

#[inline(always)]
fn softmax_row(src: &[f32], dst: &mut [f32]) {
    let mut m = [f32::NEG_INFINITY; 8];
    let chunks = src.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
        }
    }
    let mut max = m.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for &v in rem {
        if v > max {
            max = v;
        }
    }
    let mut s = [0f32; 8];
    let (dc, dr) = dst.split_at_mut(src.len() - rem.len());
    for (d, c) in dc.chunks_exact_mut(8).zip(src.chunks_exact(8)) {
        for i in 0..8 {
            d[i] = exp_f32(c[i] - max);
            s[i] += d[i];
        }
    }
    let mut sum: f32 = s.iter().sum();
    for (d, &v) in dr.iter_mut().zip(rem) {
        *d = exp_f32(v - max);
        sum += *d;
    }
    let inv = 1.0 / sum;
    for d in dst.iter_mut() {
        *d *= inv;
    }
}

/// The same softmax in place (the fused attention's score rows).
#[inline(always)]
fn softmax_row_mut(x: &mut [f32]) {
    let mut m = [f32::NEG_INFINITY; 8];
    let split = x.len() - x.len() % 8;
    for c in x[..split].chunks_exact(8) {
        for i in 0..8 {
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
        }
    }
    let mut max = m.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for &v in &x[split..] {
        if v > max {
            max = v;
        }
    }
    let mut s = [0f32; 8];
    for c in x[..split].chunks_exact_mut(8) {
        for i in 0..8 {
            c[i] = exp_f32(c[i] - max);
            s[i] += c[i];
        }
    }
    let mut sum: f32 = s.iter().sum();
    for v in &mut x[split..] {
        *v = exp_f32(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row_mut_avx2(x: &mut [f32]) {
    softmax_row_mut(x)
}

/// Softmax of one f32 row in place, with the AVX2 build when the CPU has it.
pub fn softmax_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
        return unsafe { softmax_row_mut_avx2(x) };
    }
    softmax_row_mut(x)
}

#[inline(always)]
fn gelu_chunk(src: &[f32], dst: &mut [f32]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = 0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row_avx2(src: &[f32], dst: &mut [f32]) {
    softmax_row(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_chunk_avx2(src: &[f32], dst: &mut [f32]) {
    gelu_chunk(src, dst)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn softmax_row_avx2(src: &[f32], dst: &mut [f32]) {
    softmax_row(src, dst)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn gelu_chunk_avx2(src: &[f32], dst: &mut [f32]) {
    gelu_chunk(src, dst)
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The f32 values of a contiguous CPU storage (the custom CPU kernels' input check).
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("fastops: expected contiguous f32"),
    }
}

/// Apply a row/chunk kernel over a contiguous f32 storage in parallel, through its AVX2+FMA
/// build when the CPU has those features.
#[allow(unused_variables)]
fn map_chunks(
    s: &CpuStorage,
    l: &Layout,
    chunk: usize,
    plain: fn(&[f32], &mut [f32]),
    avx2: unsafe fn(&[f32], &mut [f32]),
) -> Result<(CpuStorage, Shape)> {
    let src = contiguous_f32(s, l)?;
    let mut dst = vec![0f32; src.len()];
    let avx = has_avx2();
    src.par_chunks(chunk.max(1))
        .zip(dst.par_chunks_mut(chunk.max(1)))
        .for_each(|(s, d)| {
            #[cfg(target_arch = "x86_64")]
            if avx {
                // SAFETY: the CPU supports AVX2 and FMA (checked above).
                unsafe { avx2(s, d) };
                return;
            }
            plain(s, d)
        });
    Ok((CpuStorage::F32(dst), l.shape().clone()))
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fast-softmax-last-dim"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = *l.shape().dims().last().unwrap_or(&1);
        map_chunks(s, l, n, softmax_row, softmax_row_avx2)
    }
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "fast-gelu-erf"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        map_chunks(s, l, 1 << 14, gelu_chunk, gelu_chunk_avx2)
    }
}

/// y = W·x for one f32 row x (k) and a row-major weight W (n, k): the linear layers of a decode
/// step. candle routes this through its GEMM, which is slow on one-row products (2.3-2.5x behind
/// MKL on an Intel Xeon; 1.1-1.5x behind this kernel on an AMD EPYC); this streams W once, row
/// by row with independent FMA chains, split over the rayon threads.
#[inline(always)]
fn gemv_rows(x: &[f32], w: &[f32], k: usize, out: &mut [f32]) {
    let main = k - k % 8;
    let mut rows = out.chunks_exact_mut(4);
    let mut r = 0;
    for o in &mut rows {
        let (w0, w1, w2, w3) = (
            &w[r * k..(r + 1) * k],
            &w[(r + 1) * k..(r + 2) * k],
            &w[(r + 2) * k..(r + 3) * k],
            &w[(r + 3) * k..(r + 4) * k],
        );
        let mut acc = [[0f32; 8]; 4];
        let mut i = 0;
        while i < main {
            for l in 0..8 {
                let xv = x[i + l];
                acc[0][l] = w0[i + l].mul_add(xv, acc[0][l]);
                acc[1][l] = w1[i + l].mul_add(xv, acc[1][l]);
                acc[2][l] = w2[i + l].mul_add(xv, acc[2][l]);
                acc[3][l] = w3[i + l].mul_add(xv, acc[3][l]);
            }
            i += 8;
        }
        for (j, wr) in [w0, w1, w2, w3].iter().enumerate() {
            let mut s: f32 = acc[j].iter().sum();
            for t in main..k {
                s = wr[t].mul_add(x[t], s);
            }
            o[j] = s;
        }
        r += 4;
    }
    for o in rows.into_remainder() {
        let wr = &w[r * k..(r + 1) * k];
        let mut acc = [0f32; 8];
        let mut i = 0;
        while i < main {
            for l in 0..8 {
                acc[l] = wr[i + l].mul_add(x[i + l], acc[l]);
            }
            i += 8;
        }
        let mut s: f32 = acc.iter().sum();
        for t in main..k {
            s = wr[t].mul_add(x[t], s);
        }
        *o = s;
        r += 1;
    }
}

/// The AVX2 build: one weight row at a time (a single forward stream, which the prefetchers
/// follow best: measured faster than four interleaved rows on the LM head) with four 8-lane FMA
/// chains.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_rows_avx2(x: &[f32], w: &[f32], k: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let main = k - k % 32;
    let xp = x.as_ptr();
    for (r, o) in out.iter_mut().enumerate() {
        let p = w.as_ptr().add(r * k);
        let mut a = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < main {
            for (j, acc) in a.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(p.add(i + 8 * j)),
                    _mm256_loadu_ps(xp.add(i + 8 * j)),
                    *acc,
                );
            }
            i += 32;
        }
        let v = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
        let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let mut s = _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
        for (t, &xv) in x.iter().enumerate().skip(main) {
            s = (*p.add(t)).mul_add(xv, s);
        }
        *o = s;
    }
}

struct Gemv;

impl CustomOp2 for Gemv {
    fn name(&self) -> &'static str {
        "fast-gemv"
    }
    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl)?;
        let w = contiguous_f32(ws, wl)?;
        let (n, k) = wl.shape().dims2()?;
        let m = x.len() / k.max(1);
        if k == 0 || x.len() != m * k || w.len() != n * k {
            candle_core::bail!("gemv: x has {} values for a ({n}, {k}) weight", x.len());
        }
        // 64 rows per task: big enough to stream, small enough to balance two to many threads.
        const ROWS: usize = 64;
        let avx = has_avx2();
        let one_row = |x: &[f32], wc: &[f32], o: &mut [f32]| {
            #[cfg(target_arch = "x86_64")]
            if avx {
                // SAFETY: the CPU supports AVX2 and FMA (checked above).
                unsafe { gemv_rows_avx2(x, wc, k, o) };
                return;
            }
            gemv_rows(x, wc, k, o)
        };
        let y = if m == 1 {
            let mut y = vec![0f32; n];
            y.par_chunks_mut(ROWS)
                .enumerate()
                .for_each(|(c, o)| one_row(x, &w[c * ROWS * k..(c * ROWS + o.len()) * k], o));
            y
        } else {
            // yt (n, m): for each weight row, the m dot products while it is in cache.
            let mut yt = vec![0f32; n * m];
            yt.par_chunks_mut(ROWS * m).enumerate().for_each(|(c, o)| {
                for (j, oj) in o.chunks_exact_mut(m).enumerate() {
                    let r = c * ROWS + j;
                    let wr = &w[r * k..(r + 1) * k];
                    for (i, out) in oj.iter_mut().enumerate() {
                        one_row(&x[i * k..(i + 1) * k], wr, std::slice::from_mut(out));
                    }
                }
            });
            let mut y = vec![0f32; m * n];
            for (r, col) in yt.chunks_exact(m).enumerate() {
                for (i, &v) in col.iter().enumerate() {
                    y[i * n + r] = v;
                }
            }
            y
        };
        let mut dims = xl.shape().dims().to_vec();
        *dims.last_mut().unwrap_or(&mut 0) = n;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

/// Most rows [`gemv`] takes at once: a batched decode step's rows (`eval refcoco --batch-size`).
pub const GEMV_MAX_ROWS: usize = 8;

/// x·Wᵀ for a CPU f32 `x` holding one row (any leading dims of size 1), or up to
/// [`GEMV_MAX_ROWS`] rows of one position each ((m, k) or (m, 1, k): a batched decode step), and a
/// contiguous (n, k) weight, through the streaming GEMV above; `None` when the fast path does
/// not apply. Several rows share each pass over a weight row (read from memory once, then from
/// cache), and every output is the one-row kernel's dot product, so a row gets exactly what it
/// gets alone; a GEMM would repack the whole weight on every call (6.5× slower per decode step
/// than one row for 4 rows of Qwen2.5-0.5B).
pub fn gemv(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let k = *x.dims().last().unwrap_or(&0);
    let rows = x.elem_count() / k.max(1);
    let one_position = match x.dims() {
        [_, _] => true,
        [_, 1, _] => true,
        _ => rows == 1,
    };
    let fits = x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && w.rank() == 2
        && w.dim(1)? == k
        && k > 0
        && rows <= GEMV_MAX_ROWS
        && one_position
        && w.is_contiguous();
    if !fits {
        return Ok(None);
    }
    x.contiguous()?.apply_op2_no_bwd(w, &Gemv).map(Some)
}

/// x·Wᵀ + b for f32 CPU rows x (m, k), a row-major weight W (n, k) and a bias b (n): the
/// output is filled with the bias rows and the GEMM accumulates onto it (`gemm`'s `read_dst`), so
/// the bias costs no separate pass. candle's `broadcast_add` after its matmul is a single-threaded
/// pass over the whole output (for Hiera-L, ~1.2 G outputs per image).
struct LinearBias;

impl CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "fast-linear-bias"
    }
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl)?;
        let w = contiguous_f32(ws, wl)?;
        let b = contiguous_f32(bs, bl)?;
        let (n, k) = wl.shape().dims2()?;
        let m = x.len() / k.max(1);
        if k == 0 || x.len() != m * k || b.len() != n {
            candle_core::bail!("linear: x {:?}, w ({n}, {k}), bias {}", xl.shape(), b.len());
        }
        let mut y = vec![0f32; m * n];
        y.par_chunks_mut(n * 64).for_each(|c| {
            for row in c.chunks_exact_mut(n) {
                row.copy_from_slice(b);
            }
        });
        let par = if m * n * k > 1 << 18 {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: y is (m, n) row-major, x (m, k) row-major, Wᵀ read as (k, n) with strides
        // (1, k); all three buffers hold exactly those elements.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                y.as_mut_ptr(),
                1,
                n as isize,
                true,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
        let mut dims = xl.shape().dims().to_vec();
        *dims.last_mut().unwrap_or(&mut 0) = n;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

/// x·Wᵀ + b through [`LinearBias`] for contiguous f32 CPU tensors (any leading dims); `None`
/// when that path does not apply.
pub fn linear_bias(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    let k = *x.dims().last().unwrap_or(&0);
    let fits = x.device().is_cpu()
        && [x.dtype(), w.dtype(), b.dtype()].iter().all(|&d| d == DType::F32)
        && w.rank() == 2
        && w.dim(1)? == k
        && b.rank() == 1
        && b.dim(0)? == w.dim(0)?
        && k > 0
        && x.is_contiguous()
        && w.is_contiguous()
        && b.is_contiguous();
    if !fits {
        return Ok(None);
    }
    x.apply_op3_no_bwd(w, b, &LinearBias).map(Some)
}

/// Source rows/columns and weights of one axis of `F.interpolate(mode="bilinear")` given the
/// sizes (ATen's `compute_source_index_and_lambda` in f32, the opmath of a float tensor):
/// (i0, i1, λ0, λ1) per output index.
fn bilinear_taps(n_in: usize, n_out: usize, align_corners: bool) -> Vec<(usize, usize, f32, f32)> {
    if n_in == n_out {
        return (0..n_out).map(|i| (i, i, 1.0, 0.0)).collect();
    }
    let scale = if align_corners {
        if n_out > 1 {
            (n_in as f32 - 1.0) / (n_out as f32 - 1.0)
        } else {
            0.0
        }
    } else {
        n_in as f32 / n_out as f32
    };
    (0..n_out)
        .map(|o| {
            let src = if align_corners {
                scale * o as f32
            } else {
                (scale * (o as f32 + 0.5) - 0.5).max(0.0)
            };
            let i0 = (src as usize).min(n_in - 1);
            let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// `F.interpolate(size=(h, w), mode="bilinear")` for a contiguous f32 (b, c, H, W) CPU tensor,
/// planes in parallel: out = λ0ʰ(λ0ʷ·x00 + λ1ʷ·x01) + λ1ʰ(λ0ʷ·x10 + λ1ʷ·x11), ATen's order and
/// f32 arithmetic. candle's CPU kernel computes each output in f64 on one thread (116 ms for
/// Depth Anything's 32×296² → 518² head upsample).
struct Bilinear {
    h: usize,
    w: usize,
    align_corners: bool,
}

impl CustomOp1 for Bilinear {
    fn name(&self) -> &'static str {
        "fast-upsample-bilinear2d"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let (b, c, hi, wi) = l.shape().dims4()?;
        let (ho, wo) = (self.h, self.w);
        if hi == 0 || wi == 0 {
            candle_core::bail!("upsample_bilinear2d: empty input {:?}", l.shape());
        }
        let th = bilinear_taps(hi, ho, self.align_corners);
        let tw = bilinear_taps(wi, wo, self.align_corners);
        let mut y = vec![0f32; b * c * ho * wo];
        if ho * wo > 0 {
            // Work items are output rows of every plane, so one large plane still uses all threads.
            y.par_chunks_mut(wo).enumerate().for_each(|(r, out)| {
                let (plane, oy) = (r / ho, r % ho);
                let (h0, h1, a0, a1) = th[oy];
                let src = &x[plane * hi * wi..(plane + 1) * hi * wi];
                let (r0, r1) = (&src[h0 * wi..(h0 + 1) * wi], &src[h1 * wi..(h1 + 1) * wi]);
                for (o, &(w0, w1, b0, b1)) in out.iter_mut().zip(&tw) {
                    *o = a0 * (b0 * r0[w0] + b1 * r0[w1]) + a1 * (b0 * r1[w0] + b1 * r1[w1]);
                }
            });
        }
        Ok((CpuStorage::F32(y), Shape::from((b, c, ho, wo))))
    }
}

/// Bilinear resize of a (b, c, H, W) tensor to (h, w), as `F.interpolate(size=..., mode="bilinear",
/// align_corners=...)`: [`Bilinear`] for f32 CPU tensors, candle's op otherwise.
pub fn upsample_bilinear2d(x: &Tensor, h: usize, w: usize, align_corners: bool) -> Result<Tensor> {
    if crate::models::conv::candle_only() || !(x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 4) {
        return x.upsample_bilinear2d(h, w, align_corners);
    }
    x.contiguous()?.apply_op1_no_bwd(&Bilinear { h, w, align_corners })
}

/// Whether `x` is a reduced-precision float tensor on the CPU (computed in f32, then rounded).
fn cpu_low_precision(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F16 | DType::BF16)
}

/// Softmax over the last dimension; on the CPU always accumulated in f32, the result in `x`'s dtype.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1_no_bwd(&Softmax)
    } else if cpu_low_precision(x) {
        softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// GELU with the exact (erf) formulation, as `nn.GELU()`; f16/bf16 CPU tensors are computed in
/// f32 and rounded (as PyTorch's CPU kernel; candle's would go through f64 per element).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1_no_bwd(&GeluErf)
    } else if cpu_low_precision(x) {
        gelu_erf(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())
    } else {
        x.gelu_erf()
    }
}

/// x + h·λ with λ (d) over the last dimension: a ViT's layer-scaled residual (InternViT's
/// `ls1`/`ls2`, DINOv2's `layer_scale*.lambda1`). In f32 on the CPU one pass on rayon's pool,
/// rounding as the two ops do (the product, then the sum); candle's broadcast_mul and add
/// were two passes and two allocations, each on its elementwise pool.
pub fn add_scaled(x: &Tensor, h: &Tensor, lambda: &Tensor) -> Result<Tensor> {
    let d = x.dims().last().copied().unwrap_or(0);
    let fits = x.device().is_cpu()
        && [x, h, lambda].iter().all(|t| t.dtype() == DType::F32)
        && x.dims() == h.dims()
        && lambda.dims() == [d]
        && d > 0;
    if !fits {
        return x + h.broadcast_mul(lambda)?;
    }
    x.contiguous()?
        .apply_op3_no_bwd(&h.contiguous()?, &lambda.contiguous()?, &AddScaled)
}

struct AddScaled;

impl CustomOp3 for AddScaled {
    fn name(&self) -> &'static str {
        "fast-add-scaled"
    }
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        hs: &CpuStorage,
        hl: &Layout,
        ls: &CpuStorage,
        ll: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, h, l) = (
            contiguous_f32(xs, xl)?,
            contiguous_f32(hs, hl)?,
            contiguous_f32(ls, ll)?,
        );
        let d = l.len();
        let mut y = vec![0f32; x.len()];
        // Rows of d in chunks of ~16 Ki elements.
        let rows = (1usize << 14).div_ceil(d);
        y.par_chunks_mut(rows * d)
            .zip(x.par_chunks(rows * d).zip(h.par_chunks(rows * d)))
            .for_each(|(y, (x, h))| {
                for ((y, x), h) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(h.chunks_exact(d)) {
                    for (((y, &x), &h), &l) in y.iter_mut().zip(x).zip(h).zip(l) {
                        *y = x + h * l;
                    }
                }
            });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_scaled_matches_broadcast_ops() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 37, 24), &dev).unwrap();
        let h = Tensor::randn(0f32, 1.0, (2, 37, 24), &dev).unwrap();
        let l = Tensor::randn(0f32, 1.0, 24, &dev).unwrap();
        let want: Vec<f32> = (&x + h.broadcast_mul(&l).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got: Vec<f32> = add_scaled(&x, &h, &l)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, want); // same two roundings, bit for bit
                               // a strided h goes through the same kernel after a copy
        let ht = h
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap()
            .transpose(0, 1)
            .unwrap();
        let got: Vec<f32> = add_scaled(&x, &ht, &l)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn exp_and_erf_are_accurate() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -100_000..=100_000 {
            let x = i as f32 * 0.00088; // -88..88
            let e = exp_f32(x) as f64;
            let t = (x as f64).exp();
            if t > 1e-37 {
                worst_exp = worst_exp.max(((e - t) / t).abs());
            }
            let y = i as f32 * 0.0001; // -10..10
            let a = erf_f32(y) as f64;
            worst_erf = worst_erf.max((a - libm_erf(y as f64)).abs());
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 1e-6, "erf absolute error {worst_erf}");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    fn libm_erf(x: f64) -> f64 {
        // candle's erf is a port of the reference libm implementation.
        candle_core::cpu::erf::erf_f64(x)
    }

    #[test]
    fn ops_match_candle() {
        let dev = candle_core::Device::Cpu;
        let x = (Tensor::randn(0f32, 3.0, (7, 37), &dev).unwrap()).contiguous().unwrap();
        let a = softmax_last_dim(&x).unwrap();
        let b = candle_nn::ops::softmax_last_dim(&x).unwrap();
        let d: f32 = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(d < 1e-6, "softmax diff {d}");
        let a = gelu_erf(&x).unwrap();
        let b = x.gelu_erf().unwrap();
        let d: f32 = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(d < 1e-5, "gelu diff {d}");
        // masked (-inf) entries get exactly zero weight
        let m = Tensor::new(&[[0f32, f32::NEG_INFINITY, 1.0]], &dev).unwrap();
        let p: Vec<f32> = softmax_last_dim(&m).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(p[1], 0.0);
    }

    #[test]
    fn bilinear_matches_candle() {
        let dev = candle_core::Device::Cpu;
        for (b, c, h, w, oh, ow, ac) in [
            (1, 3, 5, 7, 11, 13, true),
            (2, 2, 5, 7, 11, 13, false),
            (1, 1, 9, 9, 4, 3, false),
            (1, 2, 6, 6, 6, 6, true),
            (1, 1, 1, 4, 3, 8, true),
            (1, 2, 19, 19, 37, 37, false),
        ] {
            let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
            let want = x.upsample_bilinear2d(oh, ow, ac).unwrap();
            let got = upsample_bilinear2d(&x, oh, ow, ac).unwrap();
            assert_eq!(got.dims(), want.dims());
            let d: f32 = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d < 1e-5, "{b} {c} {h} {w} -> {oh} {ow} ac={ac}: {d}");
        }
    }

    #[test]
    fn gemv_matches_matmul() {
        let dev = candle_core::Device::Cpu;
        for (n, k) in [(13, 37), (197, 896), (4, 8), (1, 5)] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (1, 1, k), &dev).unwrap();
            let got = gemv(&x, &w).unwrap().expect("fast path applies");
            assert_eq!(got.dims(), &[1, 1, n]);
            let want = x.reshape((1, k)).unwrap().matmul(&w.t().unwrap()).unwrap();
            let d: f32 = (got.reshape((1, n)).unwrap() - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d < 1e-4, "({n}, {k}): {d}");
        }
        // GEMM with the bias folded in, against matmul + broadcast_add
        let (w, b) = (
            Tensor::randn(0f32, 1.0, (70, 33), &dev).unwrap(),
            Tensor::randn(0f32, 1.0, 70, &dev).unwrap(),
        );
        let x = Tensor::randn(0f32, 1.0, (3, 5, 33), &dev).unwrap();
        let got = linear_bias(&x, &w, &b).unwrap().expect("fast path applies");
        let want = x.broadcast_matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
        let d: f32 = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-4, "linear_bias: {d}");
        // up to GEMV_MAX_ROWS rows of one position each: every row exactly its one-row result
        let w = Tensor::randn(0f32, 1.0, (197, 896), &dev).unwrap();
        for shape in [vec![5, 896], vec![8, 1, 896]] {
            let x = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev).unwrap();
            let got = gemv(&x, &w).unwrap().expect("fast path applies");
            let m = shape[0];
            let flat = got.reshape((m, 197)).unwrap();
            for i in 0..m {
                let one = gemv(&x.narrow(0, i, 1).unwrap(), &w).unwrap().unwrap();
                let d: f32 = (flat.narrow(0, i, 1).unwrap() - one.reshape((1, 197)).unwrap())
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert_eq!(d, 0.0, "{shape:?} row {i}");
            }
        }
        // more rows, several positions per row, or a transposed weight: not this kernel's case
        let w = Tensor::randn(0f32, 1.0, (6, 4), &dev).unwrap();
        let none = |x: &Tensor, w: &Tensor| gemv(x, w).unwrap().is_none();
        assert!(none(&Tensor::zeros((9, 4), DType::F32, &dev).unwrap(), &w));
        assert!(none(&Tensor::zeros((1, 2, 4), DType::F32, &dev).unwrap(), &w));
        assert!(none(&Tensor::zeros((1, 6), DType::F32, &dev).unwrap(), &w.t().unwrap()));
    }
}
