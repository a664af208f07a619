//! Vectorisable f32 CPU kernels for the two element-wise hot spots of the encoders, softmax and
//! erf-GELU. candle's CPU versions call libm's scalar `exp`/`erf` per element; these use
//! Cephes-style polynomials (exp ≲ 3e-7 relative, erf ≲ 6e-7 absolute) that LLVM vectorises. Each
//! kernel has three builds chosen at run time: AVX-512 and AVX2, both with FMA (one rounding per
//! multiply-add, the same 16 lanes and so the same result on either), and a portable one. The
//! kernels only ever see contiguous f32 CPU storage:
//! other devices use candle's ops (CUDA's softmax accumulates in f32 for f16/bf16, as PyTorch's), and
//! f16/bf16 CPU tensors are widened to f32 first — candle's CPU softmax would otherwise take the
//! exponentials *and their sum* in f16/bf16 (a 4096-wide row loses every term below the sum's ulp),
//! where PyTorch (CPU and CUDA) and transformers' `softmax(dtype=float32)` accumulate in f32; the
//! result is rounded back to the input dtype, as theirs.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// a·b + c as a kernel build computes it: the portable build rounds twice (LLVM never fuses on
/// its own), the AVX2 and AVX-512 builds once (an FMA instruction, about half the operations of
/// the polynomials below).
trait Madd {
    fn madd(a: f32, b: f32, c: f32) -> f32;
}

/// The portable build's a·b + c.
struct TwoRoundings;

impl Madd for TwoRoundings {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// The FMA builds' a·b + c.
struct Fused;

impl Madd for Fused {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Defines `$name` running the generic kernel `$kernel::<M: Madd>` through its AVX-512 or AVX2
/// build (both with FMA) when the CPU has them, else through the portable build.
macro_rules! simd_kernel {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),*) $(-> $r:ty)? = $kernel:ident;) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn v4($($a: $t),*) $(-> $r)? {
                    $kernel::<Fused>($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($a: $t),*) $(-> $r)? {
                    $kernel::<Fused>($($a),*)
                }
                match simd_level() {
                    // SAFETY: the CPU has the features each build is compiled for (checked at run time).
                    Simd::Avx512 => return unsafe { v4($($a),*) },
                    Simd::Avx2 => return unsafe { v3($($a),*) },
                    Simd::Portable => {}
                }
            }
            $kernel::<TwoRoundings>($($a),*)
        }
    };
}

/// Which build of the element-wise kernels this CPU runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Simd {
    Avx512,
    Avx2,
    Portable,
}

/// The CPU's build, detected once per process (the kernels ask on every call, once per attention row).
fn simd_level() -> Simd {
    static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(detect_simd)
}

fn detect_simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            return Simd::Portable;
        }
        if std::is_x86_feature_detected!("avx512f") {
            Simd::Avx512
        } else {
            Simd::Avx2
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Simd::Portable
    }
}

pub(crate) fn has_avx2() -> bool {
    simd_level() != Simd::Portable
}

/// exp(x) for f32 (Cephes expf; ≤ 2 ulp on [-87, 88]); 0 below -87.3, like the true value
/// underflowing.
#[inline(always)]
fn exp_f32<M: Madd>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer in the low bits
    let xc = x.clamp(-87.0, 88.0);
    let t = M::madd(xc, LOG2E, MAGIC);
    let n = t - MAGIC;
    let r = M::madd(n, -C2, M::madd(n, -C1, xc));
    let mut p = 1.987_569_2e-4f32;
    p = M::madd(p, r, 1.398_2e-3);
    p = M::madd(p, r, 8.333_452e-3);
    p = M::madd(p, r, 4.166_579_6e-2);
    p = M::madd(p, r, 0.166_666_65);
    p = M::madd(p, r, 0.5);
    let y = M::madd(p * r, r, r) + 1.0;
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
fn erf_f32<M: Madd>(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / M::madd(0.327_591_1, a, 1.0);
    let mut p = 1.061_405_4f32;
    p = M::madd(p, t, -1.453_152_1);
    p = M::madd(p, t, 1.421_413_8);
    p = M::madd(p, t, -0.284_496_74);
    p = M::madd(p, t, 0.254_829_6);
    let poly = p * t;
    let y = M::madd(-poly, exp_f32::<M>(-a * a), 1.0);
    if x < 0.0 {
        -y
    } else {
        y
    }
}

/// Lanes of the running max and sum: 16 in every build, so the AVX2 and AVX-512 builds add in
/// the same order and agree bit for bit.
const LANES: usize = 16;

/// max over a row.
#[inline(always)]
fn row_max(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let split = x.len() - x.len() % LANES;
    for c in x[..split].chunks_exact(LANES) {
        for i in 0..LANES {
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
        }
    }
    let mut max = m.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for &v in &x[split..] {
        if v > max {
            max = v;
        }
    }
    max
}

/// exp(x − max(x)) in place; returns the sum of the exponentials.
#[inline(always)]
fn exp_shifted<M: Madd>(x: &mut [f32]) -> f32 {
    let max = row_max(x);
    let mut s = [0f32; LANES];
    let split = x.len() - x.len() % LANES;
    for c in x[..split].chunks_exact_mut(LANES) {
        for i in 0..LANES {
            c[i] = exp_f32::<M>(c[i] - max);
            s[i] += c[i];
        }
    }
    let mut sum: f32 = s.iter().sum();
    for v in &mut x[split..] {
        *v = exp_f32::<M>(*v - max);
        sum += *v;
    }
    sum
}

/// Softmax of one row in place.
#[inline(always)]
fn softmax_row<M: Madd>(x: &mut [f32]) {
    let inv = 1.0 / exp_shifted::<M>(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

simd_kernel! {
    /// Softmax of one f32 row in place.
    pub fn softmax_in_place(x: &mut [f32]) = softmax_row;
}

simd_kernel! {
    /// The unnormalised softmax of one f32 row in place, exp(x − max x); returns the row's sum
    /// (the fused attention divides its output rows by it instead of every weight).
    pub fn exp_shifted_in_place(x: &mut [f32]) -> f32 = exp_shifted;
}

#[inline(always)]
fn gelu_row<M: Madd>(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf_f32::<M>(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

simd_kernel! {
    /// erf-GELU of f32 values in place.
    pub fn gelu_in_place(x: &mut [f32]) = gelu_row;
}

/// Elements per parallel GELU chunk (64 KiB: a few hundred per MLP output, each in L2).
const GELU_CHUNK: usize = 1 << 14;

/// erf-GELU over a whole buffer in place, in parallel chunks (a linear layer's fresh output).
pub(crate) fn gelu_in_place_par(x: &mut [f32]) {
    x.par_chunks_mut(GELU_CHUNK).for_each(gelu_in_place);
}

/// The f32 values of a contiguous CPU storage (the custom CPU kernels' input check).
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("fastops: expected contiguous f32"),
    }
}

/// A new `len`-element vector whose chunks `fill` writes in parallel (chunk index, chunk). The
/// buffer is never zero-filled first: `vec![0.0; n]` on a reused heap block is calloc's memset, a
/// single-threaded pass over the whole tensor while the other threads wait. `fill` must write
/// every element of its chunk.
pub(crate) fn par_filled(len: usize, chunk: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| fill(i, c));
    // SAFETY: every chunk of the first `len` elements was written by `fill`.
    unsafe { v.set_len(len) };
    v
}

/// `src` copied into `dst` (uninitialised), returned as the initialised slice.
#[inline]
pub(crate) fn init_copy<'a>(dst: &'a mut [MaybeUninit<f32>], src: &[f32]) -> &'a mut [f32] {
    assert_eq!(dst.len(), src.len());
    // SAFETY: f32 has the layout of MaybeUninit<f32>; the copy initialises all of `dst`.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr() as *mut f32, src.len());
        &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32])
    }
}

/// Apply an in-place row/chunk kernel to a copy of a contiguous f32 storage, chunks in parallel.
fn map_chunks(s: &CpuStorage, l: &Layout, chunk: usize, kernel: fn(&mut [f32])) -> Result<(CpuStorage, Shape)> {
    let src = contiguous_f32(s, l)?;
    let chunk = chunk.max(1);
    let dst = par_filled(src.len(), chunk, |i, d| {
        kernel(init_copy(d, &src[i * chunk..i * chunk + d.len()]));
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
        map_chunks(s, l, n, softmax_in_place)
    }
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "fast-gelu-erf"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        map_chunks(s, l, GELU_CHUNK, gelu_in_place)
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

/// How far ahead (in floats: 2 KiB) the AVX2 GEMV prefetches. The hardware prefetchers stop at
/// each 4 KiB page, so every page of the weight began with demand misses and, on a VM, a nested
/// page walk; fetching half a page ahead overlaps both with the FMAs (1-tile `ask` decode on a
/// 2-vCPU Xeon: 8.6-10.7 -> 12.4-13.3 tok/s; 256 to 2048 floats all within noise of it).
const PREFETCH: usize = 512;

/// The AVX2 build: one weight row at a time (a single forward stream, which the prefetchers
/// follow best: measured faster than four interleaved rows on the LM head) with four 8-lane FMA
/// chains, and software prefetch [`PREFETCH`] floats ahead.
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
            // The two lines read PREFETCH floats from now (past the row's end: the next row's).
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i + PREFETCH) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i + PREFETCH + 16) as *const i8);
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
    gemv_admit(x, w, GEMV_MAX_ROWS, true)
}

/// Most rows [`gemv_few`] takes: a SAM2 mask decoder's token side (the object-score, IoU and four
/// mask tokens and a prompt's few sparse embeddings, 7-9 rows an image).
pub const GEMV_FEW_ROWS: usize = 16;

/// x·Wᵀ through the streaming GEMV for up to [`GEMV_FEW_ROWS`] f32 CPU rows in any leading layout
/// ((1, 9, k): a mask decoder's tokens). Such a product is tens of µs of work; candle's GEMM spends
/// ~0.1-0.3 ms a call packing and threading it (~10 ms of a 50 ms SAM2 decode on an Intel Xeon).
/// `None` when the fast path does not apply.
pub fn gemv_few(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    gemv_admit(x, w, GEMV_FEW_ROWS, false)
}

fn gemv_admit(x: &Tensor, w: &Tensor, max_rows: usize, one_position_only: bool) -> Result<Option<Tensor>> {
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
        && rows > 0
        && rows <= max_rows
        && (one_position || !one_position_only)
        && w.is_contiguous();
    if !fits {
        return Ok(None);
    }
    x.contiguous()?.apply_op2_no_bwd(w, &Gemv).map(Some)
}

/// x·Wᵀ + b for f32 CPU rows x (m, k), a row-major weight W (n, k) and a bias b (n): the
/// output is filled with the bias rows and the GEMM accumulates onto it (`gemm`'s `read_dst`), so
/// the bias costs no separate pass. candle's `broadcast_add` after its matmul is a single-threaded
/// pass over the whole output (for Hiera-L, ~1.2 G outputs per image). With `gelu` the erf-GELU
/// follows in place on the same buffer (an MLP's fc1): no second tensor is allocated and written.
struct LinearBias {
    gelu: bool,
}

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
        let mut y = par_filled(m * n, n * 64, |_, c| {
            for row in c.chunks_exact_mut(n) {
                init_copy(row, b);
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
        if self.gelu {
            gelu_in_place_par(&mut y);
        }
        let mut dims = xl.shape().dims().to_vec();
        *dims.last_mut().unwrap_or(&mut 0) = n;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

/// x·Wᵀ + b through [`LinearBias`] for contiguous f32 CPU tensors (any leading dims); `None`
/// when that path does not apply.
pub fn linear_bias(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    linear_bias_act(x, w, b, false)
}

/// gelu_erf(x·Wᵀ + b) in one op (the same values as [`linear_bias`] then [`gelu_erf`]); `None`
/// when that path does not apply.
pub fn linear_bias_gelu(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    linear_bias_act(x, w, b, true)
}

fn linear_bias_act(x: &Tensor, w: &Tensor, b: &Tensor, gelu: bool) -> Result<Option<Tensor>> {
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
    x.apply_op3_no_bwd(w, b, &LinearBias { gelu }).map(Some)
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

/// Whether the dims after the first two of a strided layout are dense (each stride the product of
/// the dims after it), so that a pixel's channels are one contiguous run.
fn dense_pixels(dims: &[usize], st: &[usize]) -> bool {
    (2..dims.len()).all(|i| dims[i] == 1 || st[i] == dims[i + 1..].iter().product::<usize>())
}

/// 2×2 stride-2 max pooling (floor) over the pixels of (b, h·w, …) f32 on the CPU, whose trailing
/// dims are contiguous and whose pixels may be strided (Hiera's q, a view of the fused qkv
/// projection): one pass, rows in parallel. candle's path (a copy, then two strided reductions)
/// took ~0.14 s a call on Hiera-L's stage transitions. NaN propagates as in ATen's kernel.
struct MaxPool2 {
    h: usize,
    w: usize,
}

impl CustomOp1 for MaxPool2 {
    fn name(&self) -> &'static str {
        "fast-max-pool2"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = s else {
            candle_core::bail!("max_pool2: expected f32")
        };
        let (dims, st) = (l.dims(), l.stride());
        let (h, w) = (self.h, self.w);
        if dims.len() < 3 || dims[1] != h * w || !dense_pixels(dims, st) {
            candle_core::bail!(
                "max_pool2: {:?} (strides {st:?}) is not (b, {h}·{w}, …) with dense pixels",
                dims
            );
        }
        let c: usize = dims[2..].iter().product();
        let (b, ps, bs, off) = (dims[0], st[1], st[0], l.start_offset());
        let (ho, wo) = (h / 2, w / 2);
        // one chunk per output row; an empty output has no chunks
        let y = par_filled(b * ho * wo * c, (wo * c).max(1), |r, out| {
            let (bi, oy) = (r / ho, r % ho);
            let base = off + bi * bs;
            for (ox, o) in out.chunks_exact_mut(c).enumerate() {
                let at = |dy: usize, dx: usize| &x[base + ((2 * oy + dy) * w + 2 * ox + dx) * ps..][..c];
                let (tl, tr, bl, br) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1));
                for ((((o, &a), &p), &q), &r) in o.iter_mut().zip(tl).zip(tr).zip(bl).zip(br) {
                    // ATen's tap order and rule: a later tap wins if greater or NaN
                    let mut m = a;
                    for v in [p, q, r] {
                        if v > m || v.is_nan() {
                            m = v;
                        }
                    }
                    o.write(m);
                }
            }
        });
        let mut shape = dims.to_vec();
        shape[1] = ho * wo;
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }
}

/// 2×2 stride-2 max pooling (floor, as `nn.MaxPool2d(2, 2)`) of the (h, w) pixel grid of
/// `x` (b, h·w, …) → (b, (h/2)·(w/2), …): [`MaxPool2`] for f32 CPU tensors (pixels may be strided),
/// candle's reductions otherwise.
pub fn max_pool2_pixels(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    if dims.len() < 3 || dims[1] != h * w {
        candle_core::bail!("max_pool2: {dims:?} is not (b, {h}·{w}, …)");
    }
    let (ho, wo) = (h / 2, w / 2);
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let x = if dense_pixels(&dims, x.stride()) {
            x.clone()
        } else {
            x.contiguous()?
        };
        return x.apply_op1_no_bwd(&MaxPool2 { h, w });
    }
    let (b, c) = (dims[0], dims[2..].iter().product::<usize>());
    let mut out = dims.clone();
    out[1] = ho * wo;
    x.reshape((b, h, w, c))?
        .narrow(1, 0, ho * 2)?
        .narrow(2, 0, wo * 2)?
        .reshape((b, ho, 2, wo, 2, c))?
        .max(4)?
        .max(2)?
        .reshape(out)
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

#[inline(always)]
fn silu_mul_rows<M: Madd>(y: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) {
    for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
        // Below −88.72 exp(−g) overflows f32 and g / ∞ is −0, as libm's SiLU gives.
        let s = if g < -88.722_84 {
            -0.0
        } else {
            g / (1.0 + exp_f32::<M>(-g))
        };
        y.write(s * u);
    }
}

simd_kernel! {
    fn silu_mul_chunk(y: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) = silu_mul_rows;
}

/// silu(g)·u for a gated MLP (Qwen2's and InternLM2's `act(gate_proj(x)) * up_proj(x)`): on the
/// CPU in f32 one parallel pass with the vectorised exp, rounding as the two ops do (the SiLU,
/// then the product). candle's SiLU is a single-threaded pass calling libm's `exp` per element,
/// and the product a second pass and a second tensor.
pub fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    let fits = g.device().is_cpu() && g.dtype() == DType::F32 && u.dtype() == DType::F32 && g.dims() == u.dims();
    if !fits {
        return crate::models::nn::activation(g, candle_nn::Activation::Silu)? * u;
    }
    g.contiguous()?.apply_op2_no_bwd(&u.contiguous()?, &SiluMul)
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "fast-silu-mul"
    }
    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (contiguous_f32(gs, gl)?, contiguous_f32(us, ul)?);
        if g.len() != u.len() {
            candle_core::bail!("silu_mul: {:?} and {:?}", gl.shape(), ul.shape());
        }
        const C: usize = 1 << 14;
        let y = par_filled(g.len(), C, |i, y| {
            let at = i * C..i * C + y.len();
            silu_mul_chunk(y, &g[at.clone()], &u[at]);
        });
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }
}

/// `x` laid out contiguously: a CPU f32 view (a transpose, a narrow, a broadcast) is copied in
/// parallel, and a transpose whose source is contiguous along the second-to-last output dim is
/// copied in tiles (16 source floats, one cache line, per read). candle's strided copy moves one
/// element at a time on one thread: a (256, 4096) → (4096, 256) transpose in SAM2's mask decoder
/// took 7 ms. Other devices and dtypes, and contiguous tensors, go through `contiguous()`.
pub fn contiguous(x: &Tensor) -> Result<Tensor> {
    if x.is_contiguous() || !x.device().is_cpu() || x.dtype() != DType::F32 {
        return x.contiguous();
    }
    x.apply_op1_no_bwd(&StridedCopy)
}

struct StridedCopy;

/// A layout's dims and strides without size-1 dims, adjacent dims merged where the outer one
/// steps over exactly the inner one (so a narrow of rows stays one long row).
fn merged_dims(dims: &[usize], strides: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let (mut d, mut s): (Vec<usize>, Vec<usize>) = (vec![], vec![]);
    for (&n, &st) in dims.iter().zip(strides).filter(|(&n, _)| n != 1) {
        match (d.last_mut(), s.last_mut()) {
            (Some(pd), Some(ps)) if *ps == st * n => {
                *pd *= n;
                *ps = st;
            }
            _ => {
                d.push(n);
                s.push(st);
            }
        }
    }
    if d.is_empty() {
        (vec![1], vec![1])
    } else {
        (d, s)
    }
}

impl CustomOp1 for StridedCopy {
    fn name(&self) -> &'static str {
        "fast-strided-copy"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(src) = s else {
            candle_core::bail!("strided copy: expected f32")
        };
        let n = l.shape().elem_count();
        if n == 0 {
            return Ok((CpuStorage::F32(vec![]), l.shape().clone()));
        }
        let (dims, st) = merged_dims(l.dims(), l.stride());
        let last = dims.len() - 1;
        let (dl, sl) = (dims[last], st[last]);
        let base = l.start_offset();
        // Every element read must lie in the storage (a malformed layout errors, not panics).
        let reach = base + dims.iter().zip(&st).map(|(&d, &s)| (d - 1) * s).sum::<usize>();
        if reach >= src.len() {
            candle_core::bail!("strided copy: layout {l:?} reaches past {} elements", src.len());
        }
        // Source offset of output row `row` (the index over every dim but the last).
        let row_off = |mut row: usize| {
            let mut off = base;
            for i in (0..last).rev() {
                off += (row % dims[i]) * st[i];
                row /= dims[i];
            }
            off
        };
        let rows_per = (1usize << 14).div_ceil(dl).max(1);
        let out = if sl == 1 {
            par_filled(n, rows_per * dl, |ci, c| {
                for (r, d) in c.chunks_exact_mut(dl).enumerate() {
                    let off = row_off(ci * rows_per + r);
                    init_copy(d, &src[off..off + dl]);
                }
            })
        } else if last > 0 && st[last - 1] == 1 {
            // A transpose: output rows are contiguous in the source. Chunks of g rows that divide
            // the second-to-last dim, so a chunk never spans two of its matrices.
            let a = dims[last - 1];
            let g = [256usize, 128, 64, 32, 16]
                .into_iter()
                .find(|g| a % g == 0)
                .unwrap_or(a);
            par_filled(n, g * dl, |ci, c| {
                let first = ci * g;
                for t0 in (0..g).step_by(16) {
                    let tn = 16.min(g - t0);
                    let off = row_off(first + t0);
                    for j in 0..dl {
                        let sp = off + j * sl;
                        for (t, &v) in src[sp..sp + tn].iter().enumerate() {
                            c[(t0 + t) * dl + j].write(v);
                        }
                    }
                }
            })
        } else {
            par_filled(n, rows_per * dl, |ci, c| {
                for (r, d) in c.chunks_exact_mut(dl).enumerate() {
                    let off = row_off(ci * rows_per + r);
                    for (j, d) in d.iter_mut().enumerate() {
                        d.write(src[off + j * sl]);
                    }
                }
            })
        };
        Ok((CpuStorage::F32(out), l.shape().clone()))
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
        // Rows of d in chunks of ~16 Ki elements.
        let c = (1usize << 14).div_ceil(d) * d;
        let y = par_filled(x.len(), c, |i, y| {
            let (x, h) = (&x[i * c..i * c + y.len()], &h[i * c..i * c + y.len()]);
            for ((y, x), h) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(h.chunks_exact(d)) {
                for (((y, &x), &h), &l) in y.iter_mut().zip(x).zip(h).zip(l) {
                    y.write(x + h * l);
                }
            }
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The max of each 2×2 block by index arithmetic, as the reference loop would take it.
    fn pool_ref(x: &[f32], b: usize, h: usize, w: usize, c: usize) -> Vec<f32> {
        let mut out = Vec::new();
        for bi in 0..b {
            for oy in 0..h / 2 {
                for ox in 0..w / 2 {
                    for ci in 0..c {
                        let at = |dy: usize, dx: usize| x[((bi * h + 2 * oy + dy) * w + 2 * ox + dx) * c + ci];
                        out.push(at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1)));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn max_pool2_matches_blockwise_max_on_strided_and_odd_grids() {
        let dev = candle_core::Device::Cpu;
        for &(b, h, w) in &[(1usize, 8usize, 6usize), (2, 7, 5), (3, 1, 4)] {
            // (b, h·w, 3, heads 2, hd 5): pool the q third in place, as Hiera does
            let qkv = Tensor::randn(0f32, 1.0, (b, h * w, 3, 2, 5), &dev).unwrap();
            let q = qkv.narrow(2, 0, 1).unwrap().squeeze(2).unwrap();
            let dense: Vec<f32> = q.flatten_all().unwrap().to_vec1().unwrap();
            let got = max_pool2_pixels(&q, h, w).unwrap();
            assert_eq!(got.dims(), &[b, (h / 2) * (w / 2), 2, 5]);
            let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, pool_ref(&dense, b, h, w, 10), "{b}×{h}×{w}");
        }
        // NaN propagates (ATen's `val > max || isnan(val)`), wherever it sits in the block
        for pos in 0..4 {
            let mut v = vec![1f32, 2.0, 3.0, 4.0];
            v[pos] = f32::NAN;
            let x = Tensor::from_vec(v, (1, 4, 1), &dev).unwrap();
            let y: Vec<f32> = max_pool2_pixels(&x, 2, 2)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(y[0].is_nan(), "NaN at {pos} gave {y:?}");
        }
        assert!(max_pool2_pixels(&Tensor::zeros((1, 5, 2), DType::F32, &dev).unwrap(), 2, 2).is_err());
    }

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

    fn exp_erf_accuracy<M: Madd>() -> (f64, f64) {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -100_000..=100_000 {
            let x = i as f32 * 0.00088; // -88..88
            let e = exp_f32::<M>(x) as f64;
            let t = (x as f64).exp();
            if t > 1e-37 {
                worst_exp = worst_exp.max(((e - t) / t).abs());
            }
            let y = i as f32 * 0.0001; // -10..10
            let a = erf_f32::<M>(y) as f64;
            worst_erf = worst_erf.max((a - libm_erf(y as f64)).abs());
        }
        assert_eq!(exp_f32::<M>(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32::<M>(f32::NAN).is_nan());
        (worst_exp, worst_erf)
    }

    #[test]
    fn exp_and_erf_are_accurate() {
        // both roundings of a·b + c: the portable build's and the FMA builds'
        for (name, (worst_exp, worst_erf)) in [
            ("two roundings", exp_erf_accuracy::<TwoRoundings>()),
            ("fused", exp_erf_accuracy::<Fused>()),
        ] {
            assert!(worst_exp < 3e-7, "{name}: exp relative error {worst_exp}");
            assert!(worst_erf < 1e-6, "{name}: erf absolute error {worst_erf}");
        }
    }

    #[test]
    fn simd_builds_agree_with_the_portable_one() {
        // The dispatched build (AVX-512 or AVX2 with FMA here) against the portable kernels, on
        // rows whose lengths are not multiples of the 16 lanes.
        let mut s = 12345u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 16.0 - 8.0
        };
        for n in [1usize, 15, 16, 17, 100, 1025] {
            let x: Vec<f32> = (0..n).map(|_| next()).collect();
            let (mut a, mut b) = (x.clone(), x.clone());
            softmax_in_place(&mut a);
            softmax_row::<TwoRoundings>(&mut b);
            let d = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            assert!(d < 1e-6, "softmax of {n}: {d}");
            let (mut a, mut b) = (x.clone(), x.clone());
            let sum = exp_shifted_in_place(&mut a);
            softmax_row::<TwoRoundings>(&mut b);
            let d = a.iter().zip(&b).map(|(p, q)| (p / sum - q).abs()).fold(0f32, f32::max);
            assert!(d < 1e-6, "unnormalised softmax of {n}: {d}");
            let (mut a, mut b) = (x.clone(), x);
            gelu_in_place(&mut a);
            gelu_row::<TwoRoundings>(&mut b);
            let d = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            assert!(d < 1e-5, "gelu of {n}: {d}");
        }
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
        let d = crate::models::max_abs_diff(&a, &b);
        assert!(d < 1e-6, "softmax diff {d}");
        let a = gelu_erf(&x).unwrap();
        let b = x.gelu_erf().unwrap();
        let d = crate::models::max_abs_diff(&a, &b);
        assert!(d < 1e-5, "gelu diff {d}");
        // silu(g)·u against candle's silu then mul, relative to the product's size, over 3 chunks
        // of the parallel pass and the exp's clamped ends.
        let g = Tensor::randn(0f32, 4.0, (3, 17_000), &dev).unwrap();
        let u = Tensor::randn(0f32, 2.0, (3, 17_000), &dev).unwrap();
        let a = silu_mul(&g, &u).unwrap();
        let b = (g.silu().unwrap() * &u).unwrap();
        let d: f32 = ((&a - &b).unwrap().abs().unwrap() / (b.abs().unwrap() + 1e-30).unwrap())
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-6, "silu_mul relative diff {d}");
        let ends = Tensor::new(&[-200f32, -90.0, -87.5, 0.0, 87.5, 200.0], &dev).unwrap();
        let ones = Tensor::ones(6, DType::F32, &dev).unwrap();
        let y: Vec<f32> = silu_mul(&ends, &ones).unwrap().to_vec1().unwrap();
        let want: Vec<f32> = ends.silu().unwrap().to_vec1().unwrap();
        for (y, w) in y.iter().zip(&want) {
            assert!((y - w).abs() <= 1e-6 * w.abs() + 1e-35, "silu at the ends: {y} vs {w}");
        }
        assert!(silu_mul(
            &Tensor::new(&[f32::NAN], &dev).unwrap(),
            &Tensor::new(&[1f32], &dev).unwrap()
        )
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0]
            .is_nan());
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
            let d = crate::models::max_abs_diff(&got, &want);
            assert!(d < 1e-5, "{b} {c} {h} {w} -> {oh} {ow} ac={ac}: {d}");
        }
    }

    #[test]
    fn strided_copy_matches_candles_contiguous() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 48, 37), &dev).unwrap();
        let y = Tensor::randn(0f32, 1.0, (2, 6, 35, 16), &dev).unwrap();
        let views = [
            x.transpose(1, 2).unwrap(),  // a transpose, rows of 48 (chunks of 16)
            x.transpose(0, 2).unwrap(),  // source rows 37 apart
            x.narrow(2, 3, 30).unwrap(), // row copies
            x.narrow(1, 5, 40).unwrap().transpose(1, 2).unwrap(),
            y.permute((0, 2, 1, 3)).unwrap(), // head split
            y.permute((0, 2, 3, 1)).unwrap(), // no unit stride innermost
            y.transpose(2, 3).unwrap(),       // a transpose of 35 rows (one chunk)
            x.narrow(1, 7, 1).unwrap().transpose(1, 2).unwrap(),
            Tensor::randn(0f32, 1.0, (1, 5), &dev)
                .unwrap()
                .broadcast_as((4, 5))
                .unwrap(),
            Tensor::randn(0f32, 1.0, (5, 1), &dev)
                .unwrap()
                .broadcast_as((5, 4))
                .unwrap(),
            x.clone(),
        ];
        for (i, v) in views.iter().enumerate() {
            let a = contiguous(v).unwrap();
            assert!(a.is_contiguous() && a.dims() == v.dims(), "view {i}");
            let want: Vec<f32> = v.contiguous().unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let got: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, want, "view {i}");
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
            let d = crate::models::max_abs_diff(&got.reshape((1, n)).unwrap(), &want);
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
        let d = crate::models::max_abs_diff(&got, &want);
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
                let d = crate::models::max_abs_diff(&flat.narrow(0, i, 1).unwrap(), &one.reshape((1, 197)).unwrap());
                assert_eq!(d, 0.0, "{shape:?} row {i}");
            }
        }
        // more rows, several positions per row, or a transposed weight: not this kernel's case
        let w = Tensor::randn(0f32, 1.0, (6, 4), &dev).unwrap();
        let none = |x: &Tensor, w: &Tensor| gemv(x, w).unwrap().is_none();
        assert!(none(&Tensor::zeros((9, 4), DType::F32, &dev).unwrap(), &w));
        assert!(none(&Tensor::zeros((1, 2, 4), DType::F32, &dev).unwrap(), &w));
        assert!(none(&Tensor::zeros((1, 6), DType::F32, &dev).unwrap(), &w.t().unwrap()));
        // gemv_few: a mask decoder's tokens (1, 9, k) against matmul; past GEMV_FEW_ROWS, a GEMM's case
        let w = Tensor::randn(0f32, 1.0, (2048, 256), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 9, 256), &dev).unwrap();
        let got = gemv_few(&x, &w).unwrap().expect("fast path applies");
        assert_eq!(got.dims(), &[1, 9, 2048]);
        let want = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        let d = crate::models::max_abs_diff(&got, &want);
        assert!(d < 1e-4, "gemv_few: {d}");
        let rows = Tensor::zeros((1, GEMV_FEW_ROWS + 1, 256), DType::F32, &dev).unwrap();
        assert!(gemv_few(&rows, &w).unwrap().is_none());
    }
}
