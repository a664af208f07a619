//! Fused softmax attention, softmax(scale·q·kᵀ [+ causal mask])·v, for every attention of the
//! encoders and the LLM.
//!
//! On the CPU in f32 it never materialises the (heads, n, n) score tensor: for each head and block
//! of query rows it takes the block's scores against all keys into an L2-sized buffer, applies an
//! exact two-pass softmax there and multiplies by v straight into the output (two calls of the
//! `gemm` crate that candle's matmul uses). It reads q/k/v in place through their strides — the
//! q/k/v thirds of a fused qkv projection, a KV cache's (b, kv, s, d) buffer — and serves grouped
//! heads by index, so no head split, transpose or `repeat_kv` copy is made, and it writes the
//! (b, n, heads, d) layout the output projection reads. Other devices run the same arithmetic as
//! plain ops (scores and softmax in f32, see [`crate::models::nn::score_dtype`]); f16/bf16 CPU
//! tensors are widened to f32 and the result rounded once (as before: candle's reduced-precision
//! CPU kernels accumulate in that precision).

use crate::models::nn::{attend_values, score_dtype};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// softmax(scale·q·kᵀ)·v over `(b, n, heads, d)` views (any strides, unit stride on `d`): q is
/// (b, nq, hq, d), k and v (b, nk, hk, d) with hq a multiple of hk (grouped-query heads share
/// k/v head h / (hq / hk)). `causal_offset: Some(o)` lets query i see keys 0..=o + i (a chunk of
/// new positions after o cached ones). Returns (b, nq, hq, d), contiguous, in q's dtype.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal_offset: Option<usize>) -> Result<Tensor> {
    attention_from(q, k, v, scale, causal_offset, None)
}

/// [`attention`] where batch row b sees only keys `key_start[b]..` (a left-padded batch: the pads
/// before each row's first real token are never attended). A query that sees no key at all (a
/// pad row under a causal mask) gives 0. With a key start each row's softmax and sums run over
/// exactly the keys a lone run of that row has, in the same order.
pub fn attention_from(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    causal_offset: Option<usize>,
    key_start: Option<&[usize]>,
) -> Result<Tensor> {
    let (b, _, hq, d) = q.dims4()?;
    let (bk, nk, hk, dk) = k.dims4()?;
    if bk != b || dk != d || v.dims4()? != (b, nk, hk, d) || hk == 0 || hq % hk != 0 {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit (b, n, heads, d) with grouped heads",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if let Some(ks) = key_start {
        if ks.len() != b {
            candle_core::bail!("attention: {} key starts for a batch of {b}", ks.len());
        }
    }
    if q.device().is_cpu() {
        if q.dtype() == DType::F32 && k.dtype() == DType::F32 && v.dtype() == DType::F32 {
            return q.apply_op3_no_bwd(
                k,
                v,
                &FusedAttention {
                    scale: scale as f32,
                    causal_offset,
                    key_start: key_start.map(<[usize]>::to_vec),
                },
            );
        }
        if matches!(q.dtype(), DType::F16 | DType::BF16) {
            let w = |t: &Tensor| t.to_dtype(DType::F32);
            return attention_from(&w(q)?, &w(k)?, &w(v)?, scale, causal_offset, key_start)?.to_dtype(q.dtype());
        }
    }
    reference_from(q, k, v, scale, causal_offset, key_start)
}

/// The same attention as plain tensor ops (materialised scores), for devices without the
/// fused kernel and as the kernel's test oracle.
pub fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal_offset: Option<usize>) -> Result<Tensor> {
    reference_from(q, k, v, scale, causal_offset, None)
}

/// [`reference`] with [`attention_from`]'s per-row key start (masked scores; a query that sees
/// no key gives 0, as the kernel does).
pub fn reference_from(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    causal_offset: Option<usize>,
    key_start: Option<&[usize]>,
) -> Result<Tensor> {
    let (b, nq, hq, d) = q.dims4()?;
    let (_, nk, hk, _) = k.dims4()?;
    let rep = hq / hk;
    let heads = |t: &Tensor| crate::models::nn::repeat_kv(t.transpose(1, 2)?.contiguous()?, rep);
    let qh = q.transpose(1, 2)?.contiguous()?;
    let (kh, vh) = (heads(k)?, heads(v)?);
    let mut s = (score_dtype(&qh)?.matmul(&score_dtype(&kh)?.t()?)? * scale)?;
    if causal_offset.is_none() && key_start.is_none() {
        let w = crate::models::fastops::softmax_last_dim(&s)?;
        return attend_values(&w, &vh)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, nq, hq, d));
    }
    // 1 where (row, query, key) may attend; the masked softmax of a row with no key is 0.
    let allowed: Vec<f32> = (0..b)
        .flat_map(|bi| {
            let ks = key_start.map_or(0, |k| k[bi]);
            (0..nq).flat_map(move |i| {
                (0..nk).map(move |j| {
                    let causal_ok = causal_offset.is_none_or(|off| j <= i + off);
                    if causal_ok && j >= ks {
                        1.0
                    } else {
                        0.0
                    }
                })
            })
        })
        .collect();
    let allowed = Tensor::from_vec(allowed, (b, 1, nq, nk), q.device())?.to_dtype(s.dtype())?;
    let neg = ((allowed.ones_like()? - &allowed)? * -1e30)?;
    s = s.broadcast_add(&neg)?;
    let w = crate::models::fastops::softmax_last_dim(&s)?.broadcast_mul(&allowed)?;
    attend_values(&w, &vh)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, nq, hq, d))
}

struct FusedAttention {
    scale: f32,
    causal_offset: Option<usize>,
    /// Per batch row, the first key it may see.
    key_start: Option<Vec<usize>>,
}

/// A (b, n, h, d) view into f32 storage: element (b, n, h, i) is at `off + b·sb + n·sn + h·sh + i`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    sb: usize,
    sn: usize,
    sh: usize,
}

impl View {
    /// Where (b, n, h, 0) is. SAFETY: the indices lie inside the view's shape.
    unsafe fn at(&self, b: usize, n: usize, h: usize) -> *const f32 {
        self.ptr.add(b * self.sb + n * self.sn + h * self.sh)
    }
}

// SAFETY: the views only read storage that outlives the kernel call.
unsafe impl Send for View {}
unsafe impl Sync for View {}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
impl OutPtr {
    /// SAFETY: `i` lies inside the output buffer.
    unsafe fn at(&self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

// SAFETY: every task writes a disjoint set of output rows.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

fn view(s: &CpuStorage, l: &Layout, what: &str) -> Result<View> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("attention: {what} is not f32");
    };
    let st = l.stride();
    if st.len() != 4 || (l.dims()[3] > 1 && st[3] != 1) {
        candle_core::bail!("attention: {what} needs unit stride on its last dimension, got {st:?}");
    }
    // The furthest element read must lie inside the storage.
    let last = l.start_offset()
        + l.dims()
            .iter()
            .zip(st)
            .map(|(&n, &s)| n.saturating_sub(1) * s)
            .sum::<usize>();
    if l.dims().contains(&0) || last >= data.len() {
        candle_core::bail!("attention: {what} has an empty or out-of-bounds layout");
    }
    Ok(View {
        ptr: data[l.start_offset()..].as_ptr(),
        sb: st[0],
        sn: st[1],
        sh: st[2],
    })
}

/// Rows per query block: the block's scores against `nk` keys take up to 4 MB (a share of L3),
/// and the rows are spread evenly over the blocks. Each block repacks k and v inside `gemm`, so
/// taller blocks amortise that: against the earlier 1 MB blocks of at most 256 rows (and a
/// 5-row last block at 1,025 queries) this took the InternViT layer from 0.25-0.27 to
/// 0.20-0.24 s and Hiera's global block from 0.30-0.32 to 0.24-0.27 s (AMD EPYC, 2 threads).
/// Causal blocks stay at most 256 rows: a block computes all of its last row's keys, so the
/// masked triangle it throws away grows with its height.
fn block_rows(nq: usize, nk: usize, causal: bool) -> usize {
    let most = ((1 << 20) / nk.max(1)).clamp(8, if causal { 256 } else { 1024 });
    nq.div_ceil(nq.div_ceil(most).max(1)).max(1)
}

/// One block of `m` query rows against `kv_len` keys, the core both task shapes share: q row i
/// at `q + i·q_rs`, key/value j at `k + j·k_rs` / `v + j·v_rs`, output row i at `out + i·out_rs`;
/// query row i sees the first `seen(i)` keys (none: its output is 0).
struct Block {
    m: usize,
    kv_len: usize,
    d: usize,
    q: *const f32,
    q_rs: usize,
    k: *const f32,
    k_rs: usize,
    v: *const f32,
    v_rs: usize,
    out: *mut f32,
    out_rs: usize,
    scale: f32,
}

impl Block {
    /// softmax(scale·q·kᵀ)·v of the block, with `scratch` for its scores. SAFETY: every row the
    /// fields name lies inside its storage, and the output rows belong to the caller alone.
    unsafe fn run(&self, scratch: &mut Vec<f32>, seen: impl Fn(usize) -> usize) {
        let (m, kv_len, d) = (self.m, self.kv_len, self.d);
        // the block's scores, then the reciprocals of its rows' exponential sums
        scratch.resize(m * kv_len + m, 0.0);
        let (scores, inv) = scratch.split_at_mut(m * kv_len);
        // SAFETY (both products): the caller's guarantees on the fields.
        unsafe {
            // scores (m × kv_len, row-major) = scale · q_blk (m × d) · kᵀ (d × kv_len)
            gemm::gemm(
                m,
                kv_len,
                d,
                scores.as_mut_ptr(),
                1,
                kv_len as isize,
                false,
                self.q,
                1,
                self.q_rs as isize,
                self.k,
                self.k_rs as isize,
                1,
                0.0,
                self.scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for (i, row) in scores.chunks_exact_mut(kv_len).enumerate() {
            let seen = seen(i);
            // exp(s − max) here; the output row is scaled by 1/sum after P·V (m·d
            // multiplications instead of m·kv_len)
            inv[i] = if seen > 0 {
                1.0 / crate::models::fastops::exp_shifted_in_place(&mut row[..seen])
            } else {
                0.0
            };
            row[seen..].fill(0.0);
        }
        unsafe {
            // out rows (m × d, row stride out_rs) = p (m × kv_len) · v (kv_len × d)
            gemm::gemm(
                m,
                d,
                kv_len,
                self.out,
                1,
                self.out_rs as isize,
                false,
                scores.as_ptr(),
                1,
                kv_len as isize,
                self.v,
                1,
                self.v_rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
            for (i, &r) in inv.iter().enumerate() {
                for o in std::slice::from_raw_parts_mut(self.out.add(i * self.out_rs), d) {
                    *o *= r;
                }
            }
        }
    }
}

impl FusedAttention {
    /// One query row (a decode step) with grouped heads: the `rep` query heads that share a kv
    /// head are one `rep`-row block against it (their q rows lie `sh` apart, their output rows
    /// `d` apart), so each cached k/v head is read once per step instead of once per query head,
    /// in one task per (batch row, kv head).
    fn one_row_grouped(
        &self,
        q: View,
        k: View,
        v: View,
        (b, hq, d): (usize, usize, usize),
        (nk, hk): (usize, usize),
    ) -> (CpuStorage, Shape) {
        let rep = hq / hk;
        let len = b * hq * d;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let optr = OutPtr(out.as_mut_ptr());
        let (scale, causal) = (self.scale, self.causal_offset);
        let key_start = self.key_start.as_deref();
        (0..b * hk).into_par_iter().for_each_init(Vec::<f32>::new, |scores, t| {
            let (bi, kh) = (t / hk, t % hk);
            let h0 = kh * rep;
            // SAFETY: output rows (bi, 0, h0..h0 + rep), d apart, lie inside the buffer.
            let op = unsafe { optr.at((bi * hq + h0) * d) };
            let ks = key_start.map_or(0, |k| k[bi]).min(nk);
            let kv_end = causal.map_or(nk, |off| (off + 1).min(nk));
            if kv_end <= ks {
                // SAFETY: the group's rep·d output values belong to this task.
                unsafe { std::ptr::write_bytes(op, 0, rep * d) };
                return;
            }
            let block = Block {
                m: rep,
                kv_len: kv_end - ks,
                d,
                // SAFETY: (bi, 0, h0) and (bi, ks, kh) lie inside the views' shapes.
                q: unsafe { q.at(bi, 0, h0) },
                q_rs: q.sh,
                k: unsafe { k.at(bi, ks, kh) },
                k_rs: k.sn,
                v: unsafe { v.at(bi, ks, kh) },
                v_rs: v.sn,
                out: op,
                out_rs: d,
                scale,
            };
            // SAFETY: the group's q rows lie sh apart inside q, its keys inside k and v, and the
            // output rows of heads h0..h0 + rep of batch row bi belong to this task alone.
            unsafe { block.run(scores, |_| block.kv_len) };
        });
        // SAFETY: the tasks together wrote every (b, head) row of the output.
        unsafe { out.set_len(len) };
        (CpuStorage::F32(out), Shape::from((b, 1, hq, d)))
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (view(s1, l1, "q")?, view(s2, l2, "k")?, view(s3, l3, "v")?);
        let &[b, nq, hq, d] = l1.dims() else { unreachable!() };
        let &[_, nk, hk, _] = l2.dims() else { unreachable!() };
        let rep = hq / hk;
        if nq == 1 && rep > 1 {
            return Ok(self.one_row_grouped(q, k, v, (b, hq, d), (nk, hk)));
        }
        let bq = block_rows(nq, nk, self.causal_offset.is_some());
        let nblocks = nq.div_ceil(bq);
        // Not zero-filled first: every task writes all of its rows (zeros where no key is seen).
        let len = b * nq * hq * d;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let optr = OutPtr(out.as_mut_ptr());
        let (scale, causal) = (self.scale, self.causal_offset);
        let key_start = self.key_start.as_deref();
        let tasks = b * hq * nblocks;
        (0..tasks).into_par_iter().for_each_init(Vec::<f32>::new, |scores, t| {
            let (bi, rest) = (t / (hq * nblocks), t % (hq * nblocks));
            let (h, blk) = (rest / nblocks, rest % nblocks);
            let r0 = blk * bq;
            let m = bq.min(nq - r0);
            // where output row (bi, r0 + i, h) starts
            let orow = |i: usize| ((bi * nq + r0 + i) * hq + h) * d;
            // This block's keys are ks..kv_end; `kv_len` of them.
            let ks = key_start.map_or(0, |k| k[bi]).min(nk);
            let kv_end = match causal {
                Some(off) => (off + r0 + m).min(nk),
                None => nk,
            };
            if kv_end <= ks {
                // no row of the block sees a key: its output is 0
                for i in 0..m {
                    // SAFETY: row i of this task's block lies inside the output buffer.
                    unsafe { std::ptr::write_bytes(optr.at(orow(i)), 0, d) };
                }
                return;
            }
            let kh = h / rep;
            let block = Block {
                m,
                kv_len: kv_end - ks,
                d,
                // SAFETY: (bi, r0, h), (bi, ks, kh) and output row (bi, r0, h) lie inside their
                // buffers.
                q: unsafe { q.at(bi, r0, h) },
                q_rs: q.sn,
                k: unsafe { k.at(bi, ks, kh) },
                k_rs: k.sn,
                v: unsafe { v.at(bi, ks, kh) },
                v_rs: v.sn,
                out: unsafe { optr.at(orow(0)) },
                out_rs: hq * d,
                scale,
            };
            // keys ks..ks + seen of query i (none: a pad row before the key start)
            let seen = |i: usize| match causal {
                Some(off) => (off + r0 + i + 1).min(kv_end).saturating_sub(ks),
                None => block.kv_len,
            };
            // SAFETY: every row stays inside its storage (checked by `view` and the shapes), and
            // the output rows (bi, r0..r0+m, h) belong to this task alone.
            unsafe { block.run(scores, seen) };
        });
        // SAFETY: the tasks together wrote every (b, row, head) of the output.
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), Shape::from((b, nq, hq, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn fused_matches_materialised_attention() {
        // ViT-like, SAM2-window-like (d = 72), grouped causal prefill with and without a cache
        // offset, decode steps (one row: the grouped-heads path), and a multi-block size that
        // does not divide evenly.
        type Case = (usize, usize, usize, usize, usize, usize, Option<usize>);
        let cases: &[Case] = &[
            (2, 65, 65, 4, 4, 16, None),
            (1, 64, 64, 2, 2, 72, None),
            (1, 37, 37, 7, 1, 8, Some(0)),
            (1, 9, 40, 4, 2, 16, Some(31)),
            (1, 1, 50, 14, 2, 64, Some(49)),
            // one row with grouped heads, batched, without a mask and under one
            (3, 1, 33, 6, 2, 8, None),
            (2, 1, 40, 4, 1, 16, Some(30)),
            (1, 700, 700, 2, 1, 8, None),
        ];
        for (i, &(b, nq, nk, hq, hk, d, causal)) in cases.iter().enumerate() {
            let q = rand(&[b, nq, hq, d], 3 * i as u64);
            let k = rand(&[b, nk, hk, d], 3 * i as u64 + 1);
            let v = rand(&[b, nk, hk, d], 3 * i as u64 + 2);
            let scale = (d as f64).powf(-0.5);
            let got = attention(&q, &k, &v, scale, causal).unwrap();
            let want = reference(&q, &k, &v, scale, causal).unwrap();
            assert_eq!(got.dims(), &[b, nq, hq, d]);
            let e = crate::models::max_abs_diff(&got, &want);
            assert!(e < 2e-5, "case {i}: max |fused - reference| = {e}");
        }
    }

    #[test]
    fn reads_strided_views_in_place() {
        // q/k/v as thirds of a fused (b, n, 3, h, d) projection, and k/v as a transposed
        // (b, kv, s, d) cache with spare capacity.
        let (b, n, h, d) = (1, 33, 3, 8);
        let qkv = rand(&[b, n, 3, h, d], 7);
        let part = |i: usize| qkv.i((.., .., i)).unwrap();
        let (q, k, v) = (part(0), part(1), part(2));
        let got = attention(&q, &k, &v, 0.3, None).unwrap();
        let want = reference(
            &q.contiguous().unwrap(),
            &k.contiguous().unwrap(),
            &v.contiguous().unwrap(),
            0.3,
            None,
        )
        .unwrap();
        assert!(crate::models::max_abs_diff(&got, &want) < 2e-5);
        let cache = rand(&[b, h, 64, d], 8);
        let kc = cache.narrow(2, 0, n).unwrap().transpose(1, 2).unwrap();
        let got = attention(&q, &kc, &kc, 0.3, Some(0)).unwrap();
        let kc2 = kc.contiguous().unwrap();
        let want = reference(&q.contiguous().unwrap(), &kc2, &kc2, 0.3, Some(0)).unwrap();
        assert!(crate::models::max_abs_diff(&got, &want) < 2e-5);
    }

    /// What the padded LLM prefill relies on: rows right-padded to one length and run causally
    /// as a batch give each row's real positions the output of that row alone (pads come after
    /// every real token, so the causal mask hides them), with finite pad rows.
    #[test]
    fn right_padded_causal_rows_equal_lone_rows() {
        let (hq, hk, d) = (4, 2, 16);
        let lens = [5usize, 19, 12];
        let n = 19;
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        let mut lone = Vec::new();
        for (i, &l) in lens.iter().enumerate() {
            let q = rand(&[1, l, hq, d], 40 + 3 * i as u64);
            let k = rand(&[1, l, hk, d], 41 + 3 * i as u64);
            let v = rand(&[1, l, hk, d], 42 + 3 * i as u64);
            lone.push(attention(&q, &k, &v, 0.25, Some(0)).unwrap());
            let pad = |t: &Tensor| t.pad_with_zeros(1, 0, n - l).unwrap();
            qs.push(pad(&q));
            ks.push(pad(&k));
            vs.push(pad(&v));
        }
        let cat = |t: &[Tensor]| Tensor::cat(t, 0).unwrap();
        let (q, k, v) = (cat(&qs), cat(&ks), cat(&vs));
        for (name, out) in [
            ("fused", attention(&q, &k, &v, 0.25, Some(0)).unwrap()),
            ("reference", reference(&q, &k, &v, 0.25, Some(0)).unwrap()),
        ] {
            for (i, &l) in lens.iter().enumerate() {
                let row = out.narrow(0, i, 1).unwrap();
                let e = crate::models::max_abs_diff(&row.narrow(1, 0, l).unwrap(), &lone[i]);
                assert!(e < 2e-5, "{name} row {i}: max |batched - lone| = {e}");
                let all: Vec<f32> = row.flatten_all().unwrap().to_vec1().unwrap();
                assert!(
                    all.iter().all(|x| x.is_finite()),
                    "{name} row {i}: a pad row is not finite"
                );
            }
        }
    }

    /// A left-padded batch with per-row key starts: each row's real queries give its lone
    /// output (prefill and a decode step over the cache), in the kernel and in `reference_from`;
    /// the pad queries, which see no key, give 0.
    #[test]
    fn key_start_rows_equal_lone_rows() {
        let (hq, hk, d) = (4, 2, 16);
        let lens = [5usize, 19, 12];
        let n = 19;
        let starts: Vec<usize> = lens.iter().map(|l| n - l).collect();
        let (mut qs, mut ks, mut vs, mut lone, mut step) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut q1s, mut k1s, mut v1s) = (vec![], vec![], vec![]);
        for (i, &l) in lens.iter().enumerate() {
            let seed = 60 + 6 * i as u64;
            let (q, k, v) = (
                rand(&[1, l, hq, d], seed),
                rand(&[1, l, hk, d], seed + 1),
                rand(&[1, l, hk, d], seed + 2),
            );
            lone.push(attention(&q, &k, &v, 0.25, Some(0)).unwrap());
            // one decode step: a new query and key/value after the l cached ones
            let (q1, k1, v1) = (
                rand(&[1, 1, hq, d], seed + 3),
                rand(&[1, 1, hk, d], seed + 4),
                rand(&[1, 1, hk, d], seed + 5),
            );
            let cat1 = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 1).unwrap();
            step.push(attention(&q1, &cat1(&k, &k1), &cat1(&v, &v1), 0.25, Some(l)).unwrap());
            let pad = |t: &Tensor| t.pad_with_zeros(1, n - l, 0).unwrap();
            qs.push(pad(&q));
            ks.push(cat1(&pad(&k), &k1));
            vs.push(cat1(&pad(&v), &v1));
            q1s.push(q1);
            k1s.push(k1);
            v1s.push(v1);
        }
        let cat = |t: &[Tensor]| Tensor::cat(t, 0).unwrap();
        let (q, k, v, q1) = (cat(&qs), cat(&ks), cat(&vs), cat(&q1s));
        let kp = k.narrow(1, 0, n).unwrap();
        let vp = v.narrow(1, 0, n).unwrap();
        for (name, f) in [
            (
                "fused",
                attention_from as fn(&Tensor, &Tensor, &Tensor, f64, Option<usize>, Option<&[usize]>) -> Result<Tensor>,
            ),
            ("reference", reference_from),
        ] {
            let out = f(&q, &kp, &vp, 0.25, Some(0), Some(&starts)).unwrap();
            let out1 = f(&q1, &k, &v, 0.25, Some(n), Some(&starts)).unwrap();
            for (i, &l) in lens.iter().enumerate() {
                let row = out.narrow(0, i, 1).unwrap();
                let e = crate::models::max_abs_diff(&row.narrow(1, n - l, l).unwrap(), &lone[i]);
                assert!(e < 2e-5, "{name} row {i}: prefill max |batched - lone| = {e}");
                if l < n {
                    let pads = row.narrow(1, 0, n - l).unwrap();
                    assert_eq!(
                        crate::models::max_abs_diff(&pads, &pads.zeros_like().unwrap()),
                        0.0,
                        "{name} row {i}"
                    );
                }
                let e = crate::models::max_abs_diff(&out1.narrow(0, i, 1).unwrap(), &step[i]);
                assert!(e < 2e-5, "{name} row {i}: decode step max |batched - lone| = {e}");
            }
        }
        assert!(attention_from(&q, &kp, &vp, 0.25, Some(0), Some(&starts[..2])).is_err());
    }

    #[test]
    fn bad_shapes_are_errors() {
        let q = rand(&[1, 4, 3, 8], 1);
        let k = rand(&[1, 4, 2, 8], 2);
        assert!(attention(&q, &k, &k, 1.0, None).is_err());
        let k = rand(&[1, 4, 3, 4], 2);
        assert!(attention(&q, &k, &k, 1.0, None).is_err());
    }
}
