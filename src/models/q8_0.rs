//! Q8_0 weights for the decode steps (`--quantize q8_0`) and their one-row product.
//!
//! The format is ggml's Q8_0 (blocks of 32 int8 values and one scale, the scale rounded to f16 as
//! ggml stores it) and every number is what candle's `QMatMul` computes for it: the same
//! quantization of the weight and of the input row, and the same per-block arithmetic as its
//! AVX2 `vec_dot_q8_0_q8_0`. What differs is the layout and the loop: the scales are kept as f32
//! beside the int8 stream (no f16 conversion per block), the rows are split over the rayon pool,
//! and the weight is prefetched ahead (candle's product ran at ~14 GB/s of Q8_0 on a 2-vCPU Xeon;
//! this one is bound by memory bandwidth).

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

/// Values per block.
pub const BLOCK: usize = 32;

/// A row-major (n, k) weight quantized to Q8_0.
pub struct Q8Weight {
    n: usize,
    k: usize,
    /// One scale per block (n·k/32), the f16-rounded value as f32.
    scales: Vec<f32>,
    /// n·k int8 values, row-major.
    quants: Vec<i8>,
}

impl std::fmt::Debug for Q8Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q8Weight({}, {})", self.n, self.k)
    }
}

/// Quantize one block as candle's `BlockQ8_0::from_float` does (amax/127, round half away from
/// zero); returns the scale, rounded through f16.
fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    half::f16::from_f32(d).to_f32()
}

/// Quantize a row of `k` values (k a multiple of 32) into `q` and `scales`.
fn quantize_row(x: &[f32], q: &mut [i8], scales: &mut [f32]) {
    for ((xb, qb), s) in x.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)).zip(scales) {
        *s = quantize_block(xb, qb);
    }
}

impl Q8Weight {
    /// Quantize an f32 CPU weight of shape (n, k), k a multiple of 32 (rows in parallel).
    pub fn quantize(w: &Tensor) -> Result<Self> {
        let (n, k) = w.dims2()?;
        if !w.device().is_cpu() || w.dtype() != DType::F32 {
            candle_core::bail!("Q8_0: the weight must be f32 on the CPU, not {:?}", w.dtype());
        }
        if k == 0 || !k.is_multiple_of(BLOCK) {
            candle_core::bail!("Q8_0: a weight's rows must be a multiple of {BLOCK} long, not {k}");
        }
        let w = w.contiguous()?;
        let (storage, layout) = w.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("Q8_0: not a CPU tensor");
        };
        let data = &crate::models::fastops::contiguous_f32(cpu, layout)?[..n * k];
        let mut quants = vec![0i8; n * k];
        let mut scales = vec![0f32; n * k / BLOCK];
        const ROWS: usize = 64;
        quants
            .par_chunks_mut(ROWS * k)
            .zip(scales.par_chunks_mut(ROWS * k / BLOCK))
            .enumerate()
            .for_each(|(c, (q, s))| {
                let rows = q.len() / k;
                for r in 0..rows {
                    let x = &data[(c * ROWS + r) * k..(c * ROWS + r + 1) * k];
                    quantize_row(
                        x,
                        &mut q[r * k..(r + 1) * k],
                        &mut s[r * k / BLOCK..(r + 1) * k / BLOCK],
                    );
                }
            });
        Ok(Self { n, k, scales, quants })
    }

    /// Output width.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// x·Wᵀ (+ b) for one f32 row `x` (any leading dimensions of size 1): the row is quantized to
    /// Q8_0 as candle does, then each output is the sum over blocks of the two scales times the
    /// block's integer dot product. `None` when `x` is not one f32 CPU row of width k.
    pub fn forward(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Option<Tensor>> {
        if x.elem_count() != self.k || x.dtype() != DType::F32 || !x.device().is_cpu() {
            return Ok(None);
        }
        let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let b: Option<Vec<f32>> = bias.map(|b| b.to_dtype(DType::F32)?.to_vec1()).transpose()?;
        if b.as_ref().is_some_and(|b| b.len() != self.n) {
            candle_core::bail!(
                "Q8_0: a bias of {} values for {} outputs",
                b.map_or(0, |b| b.len()),
                self.n
            );
        }
        let y = self.gemv(&xv, b.as_deref());
        let mut dims = x.dims().to_vec();
        *dims.last_mut().unwrap_or(&mut 0) = self.n;
        Tensor::from_vec(y, dims, x.device()).map(Some)
    }

    /// The product for one row of k values.
    pub fn gemv(&self, x: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let (k, nb) = (self.k, self.k / BLOCK);
        let mut xq = vec![0i8; k];
        let mut xs = vec![0f32; nb];
        quantize_row(x, &mut xq, &mut xs);
        // 64 rows per task, as the f32 GEMV: long enough to stream, short enough to balance.
        const ROWS: usize = 64;
        let avx = crate::models::fastops::has_avx2();
        let mut y = vec![0f32; self.n];
        y.par_chunks_mut(ROWS).enumerate().for_each(|(c, o)| {
            let r0 = c * ROWS;
            let q = &self.quants[r0 * k..(r0 + o.len()) * k];
            let s = &self.scales[r0 * nb..(r0 + o.len()) * nb];
            #[cfg(target_arch = "x86_64")]
            if avx {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                unsafe { dot_rows_avx2(q, s, &xq, &xs, o) };
            } else {
                dot_rows(q, s, &xq, &xs, o);
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = avx;
                dot_rows(q, s, &xq, &xs, o);
            }
            if let Some(b) = bias {
                for (v, &b) in o.iter_mut().zip(&b[r0..]) {
                    *v += b;
                }
            }
        });
        y
    }
}

/// The portable product: per block the integer dot product, then scale_w·scale_x times it,
/// summed over blocks.
fn dot_rows(q: &[i8], s: &[f32], xq: &[i8], xs: &[f32], out: &mut [f32]) {
    let (k, nb) = (xq.len(), xs.len());
    for (r, o) in out.iter_mut().enumerate() {
        let mut sum = 0f32;
        for b in 0..nb {
            let w = &q[r * k + b * BLOCK..r * k + (b + 1) * BLOCK];
            let x = &xq[b * BLOCK..(b + 1) * BLOCK];
            let i: i32 = w.iter().zip(x).map(|(&a, &c)| a as i32 * c as i32).sum();
            sum += i as f32 * (s[r * nb + b] * xs[b]);
        }
        *o = sum;
    }
}

/// Bytes ahead of the int8 stream that [`dot_rows_avx2`] prefetches (the hardware prefetchers
/// stop at each 4 KiB page; see the f32 GEMV's `PREFETCH`).
const PREFETCH_BYTES: usize = 2048;

/// The AVX2 product, block for block candle's `vec_dot_q8_0_q8_0`: |w| times x with w's signs
/// (`maddubs`), pairs summed to 8 int32 lanes, converted, and accumulated with the product of the
/// two scales by FMA; then the 8 lanes are summed in candle's order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(q: &[i8], s: &[f32], xq: &[i8], xs: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let (k, nb) = (xq.len(), xs.len());
    let ones = _mm256_set1_epi16(1);
    for (r, o) in out.iter_mut().enumerate() {
        let qp = q.as_ptr().add(r * k);
        let sp = s.as_ptr().add(r * nb);
        let mut acc = _mm256_setzero_ps();
        for b in 0..nb {
            if b % 2 == 0 {
                _mm_prefetch::<_MM_HINT_T0>(qp.wrapping_add(b * BLOCK + PREFETCH_BYTES));
            }
            if b % 16 == 0 {
                _mm_prefetch::<_MM_HINT_T0>(sp.wrapping_add(b + PREFETCH_BYTES / BLOCK) as *const i8);
            }
            let w = _mm256_loadu_si256(qp.add(b * BLOCK) as *const __m256i);
            let x = _mm256_loadu_si256(xq.as_ptr().add(b * BLOCK) as *const __m256i);
            let d = _mm256_set1_ps(*sp.add(b) * *xs.get_unchecked(b));
            let dot = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
            let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, dot));
            acc = _mm256_fmadd_ps(d, p, acc);
        }
        let h = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        *o = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module};

    /// The same numbers as candle's QMatMul on Q8_0 (which quantizes the row the same way), and
    /// close to the f32 product.
    #[test]
    fn matches_candles_q8_0_matmul() {
        let dev = Device::Cpu;
        for (n, k) in [(200, 96), (67, 896), (5, 32)] {
            let w = Tensor::randn(0f32, 0.05, (n, k), &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (1, 1, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 0.1, n, &dev).unwrap();
            let ours = Q8Weight::quantize(&w).unwrap().forward(&x, Some(&b)).unwrap().unwrap();
            assert_eq!(ours.dims(), &[1, 1, n]);
            let qm = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap();
            let theirs = qm
                .forward(&x.reshape((1, k)).unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let f32 = x
                .reshape((1, k))
                .unwrap()
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let ours = ours.reshape((1, n)).unwrap();
            let scale = crate::models::max_abs_diff(&f32, &f32.zeros_like().unwrap());
            let e = crate::models::max_abs_diff(&ours, &theirs);
            assert!(
                e <= 1e-5 * scale,
                "({n}, {k}): {e} from candle's Q8_0 (|y| up to {scale})"
            );
            let q = crate::models::max_abs_diff(&ours, &f32);
            assert!(
                q > 0.0 && q < 0.02 * scale,
                "({n}, {k}): Q8_0 error {q} (|y| up to {scale})"
            );
        }
    }

    /// The portable and AVX2 products agree, and both match an exact integer reference.
    #[test]
    fn portable_and_simd_products_agree() {
        let dev = Device::Cpu;
        let (n, k) = (70, 160);
        let w = Tensor::randn(0f32, 0.05, (n, k), &dev).unwrap();
        let q = Q8Weight::quantize(&w).unwrap();
        let x: Vec<f32> = Tensor::randn(0f32, 1.0, k, &dev).unwrap().to_vec1().unwrap();
        let (mut xq, mut xs) = (vec![0i8; k], vec![0f32; k / BLOCK]);
        quantize_row(&x, &mut xq, &mut xs);
        let exact: Vec<f64> = (0..n)
            .map(|r| {
                (0..k / BLOCK)
                    .map(|b| {
                        let i: i64 = (0..BLOCK)
                            .map(|j| q.quants[r * k + b * BLOCK + j] as i64 * xq[b * BLOCK + j] as i64)
                            .sum();
                        i as f64 * q.scales[r * k / BLOCK + b] as f64 * xs[b] as f64
                    })
                    .sum()
            })
            .collect();
        let mut portable = vec![0f32; n];
        dot_rows(&q.quants, &q.scales, &xq, &xs, &mut portable);
        let simd = q.gemv(&x, None);
        for r in 0..n {
            let tol = 1e-5 * (1.0 + exact[r].abs());
            assert!(
                (portable[r] as f64 - exact[r]).abs() < tol,
                "row {r}: {} vs {}",
                portable[r],
                exact[r]
            );
            assert!(
                (simd[r] as f64 - exact[r]).abs() < tol,
                "row {r}: {} vs {}",
                simd[r],
                exact[r]
            );
        }
    }

    #[test]
    fn refuses_rows_that_are_not_whole_blocks() {
        let w = Tensor::zeros((4, 33), DType::F32, &Device::Cpu).unwrap();
        let e = Q8Weight::quantize(&w).unwrap_err().to_string();
        assert!(e.contains("multiple of 32"), "{e}");
    }
}
