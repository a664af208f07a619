//! One fast f32 CPU convolution for every conv in the models (Depth Anything's DPT neck and head,
//! the VQ-VAE's strided encoder and transposed decoder, the patch embeddings): im2col over a
//! band of output rows into a small reused buffer (≤ ~1 MiB, so it stays in cache and never
//! reaches the allocator's large-block path), then one `gemm` call that accumulates the band
//! straight into the output, pre-filled with the bias. candle's CPU `conv2d` and
//! `conv_transpose2d` kernels run at a fraction of GEMM speed (~13 GMAC/s on a 3×3 conv).
//! Bands run in parallel with single-threaded GEMMs; a small map with too few bands to share
//! (the VQ-VAE's 10×10 to 40×40 layers) splits its output channels over the threads instead.
//! A ReLU after the conv can be fused into it ([`conv2d_act`]).
//! Transposed convolutions are the adjoint: one GEMM Wᵀ·x per image band, then a col2im
//! scatter-add per output channel. Other devices and dtypes use candle's kernels.

use crate::models::fastops::contiguous_f32;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Benchmarks set this to time candle's kernels against these in one process.
static CANDLE_ONLY: AtomicBool = AtomicBool::new(false);

/// Route every convolution and bilinear resize through candle's own kernels (`true`) or
/// perceptio's (`false`, the default); for A/B benchmarks of whole passes.
#[doc(hidden)]
pub fn use_candle_kernels(on: bool) {
    CANDLE_ONLY.store(on, Ordering::Relaxed);
}

/// Whether [`use_candle_kernels`] asked for candle's kernels.
pub(crate) fn candle_only() -> bool {
    CANDLE_ONLY.load(Ordering::Relaxed)
}

/// Bytes of im2col buffer a band may use (per thread).
const BAND_BYTES: usize = 1 << 20;

thread_local! {
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// dst (m, n; row stride `dst_rs`) (+)= lhs (m, k; row-major) · rhs (k, n; row stride `rhs_rs`).
///
/// # Safety
/// The pointers must address buffers holding those elements, and `dst` must not alias.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_acc(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    read_dst: bool,
    par: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        read_dst,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        1,
        rhs_rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        par,
    )
}

/// Geometry of one conv2d (groups 1, dilation 1).
#[derive(Debug, Clone, Copy)]
struct Geom {
    b: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
}

/// Fill `cols` (K rows × (rows·ow) columns) with the input taps of output rows `oy0..oy0+rows`
/// of image `x` (cin, h, w); out-of-image taps are zero. Channels go in parallel when `par`.
fn im2col(g: &Geom, x: &[f32], oy0: usize, rows: usize, cols: &mut [f32], par: bool) {
    let per_ci = g.kh * g.kw * rows * g.ow;
    if par && g.cin > 1 {
        let n = g.cin.div_ceil(4 * rayon::current_num_threads());
        cols[..g.cin * per_ci]
            .par_chunks_mut(n * per_ci)
            .enumerate()
            .for_each(|(c, part)| im2col_channels(g, x, oy0, rows, c * n, part));
    } else {
        for (ci, part) in cols[..g.cin * per_ci].chunks_mut(per_ci).enumerate() {
            im2col_channels(g, x, oy0, rows, ci, part);
        }
    }
}

/// [`im2col`] for the channels from `ci0` whose kh·kw rows `cols` holds. Each input row the
/// band reads is laid out once per channel, zero-padded and split into its `stride` phases, so
/// that every tap is one contiguous copy: tap (ky, kx) of output (j, ox) reads padded column
/// ox·s + kx of band input row j·s + ky, which is element ox + kx div s of phase kx mod s.
fn im2col_channels(g: &Geom, x: &[f32], oy0: usize, rows: usize, ci0: usize, cols: &mut [f32]) {
    let (s, p) = (g.stride, rows * g.ow);
    let pw = (g.w + 2 * g.pad).div_ceil(s);
    let (nin, iy0) = ((rows - 1) * s + g.kh, (oy0 * s) as isize - g.pad as isize);
    // Rows outside the image and the padding columns are never written: they stay zero for
    // every channel, since each channel writes the same positions.
    let mut phases = vec![0f32; nin * s * pw];
    for (c, taps) in cols.chunks_exact_mut(g.kh * g.kw * p).enumerate() {
        let plane = &x[(ci0 + c) * g.h * g.w..][..g.h * g.w];
        for (r, row) in phases.chunks_exact_mut(s * pw).enumerate() {
            let iy = iy0 + r as isize;
            if iy < 0 || iy as usize >= g.h {
                continue;
            }
            split_phases(&plane[iy as usize * g.w..][..g.w], g.pad, s, pw, row);
        }
        for ky in 0..g.kh {
            for j in 0..rows {
                let row = &phases[(j * s + ky) * s * pw..][..s * pw];
                for kx in 0..g.kw {
                    taps[(ky * g.kw + kx) * p + j * g.ow..][..g.ow]
                        .copy_from_slice(&row[(kx % s) * pw + kx / s..][..g.ow]);
                }
            }
        }
    }
}

/// Image row `src` into its `s` phases of `pw` padded columns each: phase r holds padded
/// columns r, r + s, …, i.e. image columns r + t·s − pad for the t that land inside the image.
fn split_phases(src: &[f32], pad: usize, s: usize, pw: usize, row: &mut [f32]) {
    if s == 1 {
        row[pad..pad + src.len()].copy_from_slice(src);
        return;
    }
    for (r, ph) in row.chunks_exact_mut(pw).enumerate() {
        let t0 = pad.saturating_sub(r).div_ceil(s);
        let ix0 = r + t0 * s - pad;
        if ix0 >= src.len() {
            continue;
        }
        for (o, v) in ph[t0..].iter_mut().zip(src[ix0..].iter().step_by(s)) {
            *o = *v;
        }
    }
}

/// Output rows per band so that the band's im2col buffer stays within [`BAND_BYTES`].
fn band_rows(k: usize, ow: usize, oh: usize) -> usize {
    (BAND_BYTES / 4 / (k * ow).max(1)).clamp(1, oh.max(1))
}

fn gemm_par(flops: usize) -> gemm::Parallelism {
    if flops > 1 << 20 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    }
}

/// The fewest GEMM columns (output pixels) a band should have: narrower GEMMs lose most of
/// their speed to packing and edge kernels.
const MIN_BAND_COLS: usize = 64;

/// Run `f` on this thread's im2col buffer grown to `need` floats, or on a fresh one when the
/// buffer is in use (a nested call from a task this thread picked up while waiting).
fn with_cols<R>(need: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    COLS.with(|c| match c.try_borrow_mut() {
        Ok(mut cols) => {
            if cols.len() < need {
                cols.resize(need, 0.0);
            }
            f(&mut cols[..need])
        }
        Err(_) => f(&mut vec![0f32; need]),
    })
}

/// dst (m, n; row stride `dst_rs`) += w (m, k) · cols (k, n), both row-major, on this thread.
///
/// # Safety
/// As [`gemm_acc`].
unsafe fn gemm_w_cols(m: usize, n: usize, k: usize, dst: *mut f32, dst_rs: usize, w: &[f32], cols: &[f32]) {
    gemm_acc(
        m,
        n,
        k,
        dst,
        dst_rs,
        w.as_ptr(),
        k,
        1,
        cols.as_ptr(),
        n,
        true,
        gemm::Parallelism::None,
    )
}

/// [`gemm_w_cols`] with the m output channels split into
/// chunks that run in parallel, each a single-threaded GEMM. candle's gemm parallelises a
/// GEMM this small (n ≤ a few hundred) poorly: 2 threads ran at 1.0–1.3× one thread's speed.
///
/// # Safety
/// As [`gemm_acc`]: `dst` addresses m rows of n columns (row stride `dst_rs`) written by
/// nobody else during the call.
unsafe fn gemm_acc_split_m(m: usize, n: usize, k: usize, dst: *mut f32, dst_rs: usize, w: &[f32], cols: &[f32]) {
    let threads = rayon::current_num_threads();
    if threads == 1 || m < 16 || m * n * k < 1 << 18 {
        return gemm_w_cols(m, n, k, dst, dst_rs, w, cols);
    }
    // Chunks of whole 8-row panels, two per thread so that an uneven core still balances.
    let chunk = m.div_ceil(2 * threads).next_multiple_of(8).max(8);
    let dp = SendPtr(dst);
    (0..m.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let p = dp;
        let (r0, rows) = (c * chunk, chunk.min(m - c * chunk));
        // SAFETY: rows r0..r0+rows of dst belong to this chunk only; w's rows likewise.
        unsafe { gemm_w_cols(rows, n, k, p.0.add(r0 * dst_rs), dst_rs, &w[r0 * k..], cols) }
    });
}

/// y (b, cout, oh, ow) = conv(x, w) + bias, into `y` pre-filled with the bias.
fn conv2d_f32(g: &Geom, x: &[f32], w: &[f32], y: &mut [f32]) {
    let (k, ohw) = (g.k(), g.oh * g.ow);
    let pointwise = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0;
    if pointwise {
        for (xi, yi) in x.chunks_exact(g.cin * g.h * g.w).zip(y.chunks_exact_mut(g.cout * ohw)) {
            // SAFETY: yi is (cout, ohw), w (cout, cin), xi (cin, ohw), all row-major.
            unsafe {
                if ohw >= 4096 {
                    gemm_acc(
                        g.cout,
                        ohw,
                        k,
                        yi.as_mut_ptr(),
                        ohw,
                        w.as_ptr(),
                        k,
                        1,
                        xi.as_ptr(),
                        ohw,
                        true,
                        gemm_par(g.cout * ohw * k),
                    )
                } else {
                    gemm_acc_split_m(g.cout, ohw, k, yi.as_mut_ptr(), ohw, w, xi)
                }
            };
        }
        return;
    }
    let threads = rayon::current_num_threads();
    // Enough bands for two per thread over the batch, each at least MIN_BAND_COLS wide and its
    // im2col buffer within BAND_BYTES; failing that (small maps), the largest bands the buffer
    // allows, their output channels split over the threads.
    let per_image = (2 * threads).div_ceil(g.b);
    let most = band_rows(k, g.ow, g.oh);
    let mut rows = g.oh.div_ceil(per_image).max(MIN_BAND_COLS.div_ceil(g.ow)).min(most);
    let split = g.b * g.oh.div_ceil(rows) < 2 * threads;
    if split {
        rows = most;
    }
    let bands = g.oh.div_ceil(rows);
    let yp = SendPtr(y.as_mut_ptr());
    // Band t: im2col of its rows, then its GEMM, single-threaded or channel-split.
    let run = |t: usize| {
        let p = yp;
        let (bi, band) = (t / bands, t % bands);
        let oy0 = band * rows;
        let r = rows.min(g.oh - oy0);
        let xi = &x[bi * g.cin * g.h * g.w..(bi + 1) * g.cin * g.h * g.w];
        with_cols(k * r * g.ow, |cols| {
            im2col(g, xi, oy0, r, cols, split);
            // SAFETY: dst addresses image bi's output at row oy0; the band's r·ow columns of
            // each of the cout channel planes (row stride ohw) are inside y and written by this
            // band only; cols is (k, r·ow) row-major.
            unsafe {
                let dst = p.0.add(bi * g.cout * ohw + oy0 * g.ow);
                if split {
                    gemm_acc_split_m(g.cout, r * g.ow, k, dst, ohw, w, cols)
                } else {
                    gemm_w_cols(g.cout, r * g.ow, k, dst, ohw, w, cols)
                }
            }
        });
    };
    if split {
        (0..g.b * bands).for_each(run);
    } else {
        (0..g.b * bands).into_par_iter().for_each(run);
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint regions of the buffer behind the pointer (see `conv2d_f32`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

struct Conv2dOp {
    stride: usize,
    pad: usize,
    relu: bool,
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "fast-conv2d"
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
        let bias = contiguous_f32(bs, bl)?;
        let (b, cin, h, wd) = xl.shape().dims4()?;
        let (cout, wcin, kh, kw) = wl.shape().dims4()?;
        let (s, p) = (self.stride, self.pad);
        if wcin != cin || bias.len() != cout || s == 0 || h + 2 * p < kh || wd + 2 * p < kw {
            candle_core::bail!("conv2d: x {:?}, w {:?}, bias {}", xl.shape(), wl.shape(), bias.len());
        }
        let g = Geom {
            b,
            cin,
            h,
            w: wd,
            cout,
            kh,
            kw,
            stride: s,
            pad: p,
            oh: (h + 2 * p - kh) / s + 1,
            ow: (wd + 2 * p - kw) / s + 1,
        };
        let ohw = g.oh * g.ow;
        let mut y = vec![0f32; b * cout * ohw];
        y.par_chunks_mut(ohw.max(1))
            .enumerate()
            .for_each(|(i, plane)| plane.fill(bias[i % cout]));
        conv2d_f32(&g, x, w, &mut y);
        if self.relu {
            relu_in_place(&mut y);
        }
        Ok((CpuStorage::F32(y), Shape::from((b, cout, g.oh, g.ow))))
    }
}

/// max(x, 0) over `y`, in parallel chunks on rayon's pool (not candle's elementwise pool, whose
/// spinning worker competes for the cores with the next convolution's GEMM threads).
fn relu_in_place(y: &mut [f32]) {
    y.par_chunks_mut(1 << 14)
        .for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
}

/// Geometry of one transposed conv2d (groups 1, dilation 1, no output padding).
struct TGeom {
    w: usize,
    ph: usize,
    pw: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

/// Accumulate one output channel's taps for input rows `iy0..iy0+rows` into its s² phase
/// planes. Output pixel oy = iy·s − pad + ky has phase (oy + pad) mod s = ky mod s and plane row
/// (oy + pad) div s = iy + ky div s, so every tap row is one contiguous (vectorised) add into the
/// plane of its phase; `gather` interleaves the planes afterwards. `z` holds kh·kw rows of `zs`
/// columns; a plane is (ph, pw) = (h + (kh − 1) div s + 1, w + (kw − 1) div s + 1).
fn scatter_phases(g: &TGeom, z: &[f32], zs: usize, iy0: usize, rows: usize, planes: &mut [f32]) {
    let (s, pp) = (g.stride, g.ph * g.pw);
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let row = &z[(ky * g.kw + kx) * zs..][..rows * g.w];
            let plane = &mut planes[((ky % s) * s + kx % s) * pp..][..pp];
            for j in 0..rows {
                let dst = &mut plane[(iy0 + j + ky / s) * g.pw + kx / s..][..g.w];
                for (o, v) in dst.iter_mut().zip(&row[j * g.w..(j + 1) * g.w]) {
                    *o += v;
                }
            }
        }
    }
}

/// y[oy, ox] = bias + plane[phase][(oy + pad) div s, (ox + pad) div s] for one output channel.
fn gather_phases(g: &TGeom, planes: &[f32], bias: f32, relu: bool, y: &mut [f32]) {
    let (s, pp) = (g.stride, g.ph * g.pw);
    for (oy, out) in y.chunks_exact_mut(g.ow).enumerate() {
        let u = oy + g.pad;
        for rx in 0..s {
            let plane = &planes[((u % s) * s + rx) * pp + (u / s) * g.pw..][..g.pw];
            // Columns of phase rx: ox ≡ rx − pad (mod s), from the first such ox ≥ 0.
            let ox0 = (rx + s - g.pad % s) % s;
            let q0 = (ox0 + g.pad) / s;
            for (o, v) in out.iter_mut().skip(ox0).step_by(s).zip(&plane[q0..]) {
                *o = if relu { (bias + v).max(0.0) } else { bias + v };
            }
        }
    }
}

struct ConvTranspose2dOp {
    stride: usize,
    pad: usize,
    relu: bool,
}

impl CustomOp3 for ConvTranspose2dOp {
    fn name(&self) -> &'static str {
        "fast-conv-transpose2d"
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
        let bias = contiguous_f32(bs, bl)?;
        let (b, cin, h, wd) = xl.shape().dims4()?;
        let (wcin, cout, kh, kw) = wl.shape().dims4()?;
        let (s, p) = (self.stride, self.pad);
        let fits = wcin == cin && bias.len() == cout && s > 0 && h > 0 && wd > 0;
        if !fits || (h - 1) * s + kh <= 2 * p || (wd - 1) * s + kw <= 2 * p {
            candle_core::bail!(
                "conv_transpose2d: x {:?}, w {:?}, bias {}",
                xl.shape(),
                wl.shape(),
                bias.len()
            );
        }
        let g = TGeom {
            w: wd,
            ph: h + (kh - 1) / s + 1,
            pw: wd + (kw - 1) / s + 1,
            kh,
            kw,
            stride: s,
            pad: p,
            oh: (h - 1) * s + kh - 2 * p,
            ow: (wd - 1) * s + kw - 2 * p,
        };
        let (hw, ohw, kk) = (h * wd, g.oh * g.ow, kh * kw);
        let pl = s * s * g.ph * g.pw; // the phase planes of one output channel
        let mut y = vec![0f32; b * cout * ohw];
        let mut planes = vec![0f32; cout * pl];
        // Per band of input rows, z = Wᵀ·x: (cout·kh·kw, rows·w), then each output channel
        // adds its kh·kw rows into its phase planes. Bands of one image run in order (their
        // footprints overlap).
        let rows = (BAND_BYTES / (cout * kk * wd).max(1)).clamp(1, h);
        let mut z = vec![0f32; cout * kk * rows * wd];
        for bi in 0..b {
            let xi = &x[bi * cin * hw..(bi + 1) * cin * hw];
            planes.fill(0.0);
            for iy0 in (0..h).step_by(rows) {
                let r = rows.min(h - iy0);
                let zs = r * wd;
                // SAFETY: z holds (cout·kk, zs) row-major; lhs is Wᵀ, W being (cin, cout·kk)
                // row-major (strides rs 1, cs cout·kk); rhs is the band of xi: (cin, zs) with
                // row stride hw.
                unsafe {
                    gemm_acc(
                        cout * kk,
                        zs,
                        cin,
                        z.as_mut_ptr(),
                        zs,
                        w.as_ptr(),
                        1,
                        cout * kk,
                        xi[iy0 * wd..].as_ptr(),
                        hw,
                        false,
                        gemm_par(cout * kk * zs * cin),
                    )
                };
                let z = &z;
                planes
                    .par_chunks_mut(pl)
                    .enumerate()
                    .for_each(|(co, p)| scatter_phases(&g, &z[co * kk * zs..], zs, iy0, r, p));
            }
            y[bi * cout * ohw..(bi + 1) * cout * ohw]
                .par_chunks_mut(ohw)
                .zip(planes.par_chunks(pl))
                .enumerate()
                .for_each(|(co, (yc, p))| gather_phases(&g, p, bias[co], self.relu, yc));
        }
        Ok((CpuStorage::F32(y), Shape::from((b, cout, g.oh, g.ow))))
    }
}

fn fast_applies(x: &Tensor, w: &Tensor) -> bool {
    !candle_only()
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && x.rank() == 4
        && w.rank() == 4
}

fn bias_or_zeros(b: Option<&Tensor>, n: usize, x: &Tensor) -> Result<Tensor> {
    match b {
        Some(b) => b.to_dtype(DType::F32)?.flatten_all()?.contiguous(),
        None => Tensor::zeros(n, DType::F32, x.device()),
    }
}

/// `candle_nn::Conv2d::forward` through the fast CPU kernel where it applies (f32 CPU,
/// groups 1, dilation 1), else candle's.
pub fn conv2d(conv: &candle_nn::Conv2d, x: &Tensor) -> Result<Tensor> {
    conv2d_act(conv, x, false)
}

/// [`conv2d`] followed by a ReLU when `relu`, fused into the kernel's output where it applies.
pub fn conv2d_act(conv: &candle_nn::Conv2d, x: &Tensor, relu: bool) -> Result<Tensor> {
    let cfg = conv.config();
    if !fast_applies(x, conv.weight()) || cfg.groups != 1 || cfg.dilation != 1 {
        let y = candle_nn::Module::forward(conv, x)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    let b = bias_or_zeros(conv.bias(), conv.weight().dim(0)?, x)?;
    x.contiguous()?.apply_op3_no_bwd(
        &conv.weight().contiguous()?,
        &b,
        &Conv2dOp {
            stride: cfg.stride,
            pad: cfg.padding,
            relu,
        },
    )
}

/// `candle_nn::ConvTranspose2d::forward` through the fast CPU kernel where it applies (f32 CPU,
/// groups 1, dilation 1, no output padding), else candle's.
pub fn conv_transpose2d(conv: &candle_nn::ConvTranspose2d, x: &Tensor) -> Result<Tensor> {
    conv_transpose2d_act(conv, x, false)
}

/// [`conv_transpose2d`] followed by a ReLU when `relu`, fused where the fast kernel applies.
pub fn conv_transpose2d_act(conv: &candle_nn::ConvTranspose2d, x: &Tensor, relu: bool) -> Result<Tensor> {
    let cfg = conv.config();
    if !fast_applies(x, conv.weight()) || cfg.dilation != 1 || cfg.output_padding != 0 {
        let y = candle_nn::Module::forward(conv, x)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    let b = bias_or_zeros(conv.bias(), conv.weight().dim(1)?, x)?;
    x.contiguous()?.apply_op3_no_bwd(
        &conv.weight().contiguous()?,
        &b,
        &ConvTranspose2dOp {
            stride: cfg.stride,
            pad: cfg.padding,
            relu,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::{Conv2dConfig, ConvTranspose2dConfig};

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let s = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        d / s.max(1e-6)
    }

    #[test]
    fn conv2d_matches_candle() {
        let dev = Device::Cpu;
        // (b, cin, h, w, cout, k, stride, pad, bias)
        let cases = [
            (1, 3, 17, 19, 5, 3, 1, 1, true),
            (2, 4, 16, 16, 6, 4, 2, 1, true),
            (1, 3, 28, 28, 8, 14, 14, 0, true),
            (1, 3, 23, 21, 7, 7, 4, 3, false),
            (2, 5, 9, 11, 3, 1, 1, 0, true),
            (1, 6, 33, 40, 4, 3, 2, 1, false),
            (1, 2, 300, 64, 3, 3, 1, 1, true), // several bands
            (3, 2, 5, 5, 2, 5, 1, 2, true),
            // small maps with many channels: bands in turn, output channels split over threads
            (1, 64, 10, 10, 72, 3, 1, 1, true),
            (2, 48, 12, 9, 40, 4, 2, 1, false),
            (1, 40, 6, 6, 200, 1, 1, 0, true), // pointwise, channels split
            (1, 3, 41, 37, 5, 5, 3, 4, true),  // pad beyond the kernel's reach on both sides
            // stride-2 phases: no padding, padding of 2 (phase 0 starts one column in), odd sizes
            (1, 3, 15, 13, 4, 3, 2, 0, true),
            (1, 2, 11, 10, 3, 5, 2, 2, false),
        ];
        for (b, cin, h, w, cout, k, s, p, bias) in cases {
            let x = Tensor::randn(0f32, 1.0, (b, cin, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (cout, cin, k, k), &dev).unwrap();
            let bt = bias.then(|| Tensor::randn(0f32, 1.0, cout, &dev).unwrap());
            let cfg = Conv2dConfig {
                stride: s,
                padding: p,
                ..Default::default()
            };
            let conv = candle_nn::Conv2d::new(wt, bt, cfg);
            let want = candle_nn::Module::forward(&conv, &x).unwrap();
            let got = conv2d(&conv, &x).unwrap();
            assert_eq!(got.dims(), want.dims(), "{b} {cin} {h} {w} {cout} {k} {s} {p}");
            let e = max_rel(&got, &want);
            assert!(e < 1e-5, "case {b} {cin} {h} {w} {cout} {k} {s} {p}: rel err {e}");
        }
    }

    #[test]
    fn fused_relu_matches_a_separate_relu() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 8, 11, 13), &dev).unwrap();
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let w = Tensor::randn(0f32, 1.0, (16, 8, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 16, &dev).unwrap();
        let conv = candle_nn::Conv2d::new(w, Some(b.clone()), cfg);
        let want = candle_nn::Module::forward(&conv, &x).unwrap().relu().unwrap();
        let got = conv2d_act(&conv, &x, true).unwrap();
        assert!(max_rel(&got, &want) < 1e-5);
        assert_eq!(got.min_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let tcfg = ConvTranspose2dConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        let wt = Tensor::randn(0f32, 1.0, (8, 16, 4, 4), &dev).unwrap();
        let tconv = candle_nn::ConvTranspose2d::new(wt, Some(b), tcfg);
        let want = candle_nn::Module::forward(&tconv, &x).unwrap().relu().unwrap();
        let got = conv_transpose2d_act(&tconv, &x, true).unwrap();
        assert!(max_rel(&got, &want) < 1e-5);
    }

    #[test]
    fn conv_transpose2d_matches_candle() {
        let dev = Device::Cpu;
        // (b, cin, h, w, cout, k, stride, pad, bias)
        let cases = [
            (1, 4, 5, 6, 3, 4, 2, 1, true),
            (2, 3, 7, 7, 5, 3, 1, 1, false),
            (1, 2, 4, 4, 2, 2, 2, 0, true),
            (1, 3, 6, 5, 4, 5, 3, 2, true),
            (2, 2, 5, 4, 3, 6, 2, 3, true),
            (1, 3, 9, 7, 2, 4, 2, 1, false),
        ];
        for (b, cin, h, w, cout, k, s, p, bias) in cases {
            let x = Tensor::randn(0f32, 1.0, (b, cin, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (cin, cout, k, k), &dev).unwrap();
            let bt = bias.then(|| Tensor::randn(0f32, 1.0, cout, &dev).unwrap());
            let cfg = ConvTranspose2dConfig {
                stride: s,
                padding: p,
                ..Default::default()
            };
            let conv = candle_nn::ConvTranspose2d::new(wt, bt, cfg);
            let want = candle_nn::Module::forward(&conv, &x).unwrap();
            let got = conv_transpose2d(&conv, &x).unwrap();
            assert_eq!(got.dims(), want.dims());
            let e = max_rel(&got, &want);
            assert!(e < 1e-5, "case {b} {cin} {h} {w} {cout} {k} {s} {p}: rel err {e}");
        }
    }
}
