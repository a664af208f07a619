//! Masks, the core type below models, renderers and scorers: the [`Mask`] bitmap and COCO
//! run-length encoded masks, bit-exact with pycocotools' `maskApi.c`. No candle here.
//!
//! A mask of size h×w is flattened column-major (pixel (y, x) → index x·h + y) and stored as
//! alternating run lengths starting with a run of zeros. `codec` is the compressed string
//! form (`rleToString`/`rleFrString`), `poly` the polygon rasteriser (`rleFrPoly`).

mod bitmap;
mod codec;
mod json;
mod poly;

pub use bitmap::{Mask, Segment};
pub use json::{parse_mask_json, MaskJson};
pub use poly::{from_bbox, from_polygon};

use std::fmt;

/// Why an RLE could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RleError(pub String);

impl fmt::Display for RleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for RleError {}

/// Masks are limited to 2^32 pixels, as pycocotools' `uint` counts are.
pub fn check_size(h: u32, w: u32) -> Result<(), RleError> {
    if h as u64 * w as u64 > u32::MAX as u64 {
        return Err(RleError(format!("mask size {h}x{w} exceeds 2^32 pixels")));
    }
    Ok(())
}

/// A validated run-length encoded binary mask: `counts` always sum to `h·w`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rle {
    h: u32,
    w: u32,
    counts: Vec<u32>,
}

impl Rle {
    /// Build from run lengths, checking that they sum to h·w (pycocotools does not check;
    /// a wrong sum would make it read out of bounds).
    pub fn from_counts(h: u32, w: u32, counts: Vec<u32>) -> Result<Self, RleError> {
        let total: u64 = counts.iter().map(|&c| c as u64).sum();
        let area = h as u64 * w as u64;
        if total != area {
            return Err(RleError(format!(
                "RLE counts sum to {total} but the mask size {h}x{w} has {area} pixels"
            )));
        }
        Ok(Rle { h, w, counts })
    }

    /// An all-zero mask (sizes must pass [`check_size`]).
    pub fn empty(h: u32, w: u32) -> Self {
        Rle {
            h,
            w,
            counts: vec![h.wrapping_mul(w)],
        }
    }

    /// Decode the compressed string form (`rleFrString`).
    pub fn from_compressed(s: &str, h: u32, w: u32) -> Result<Self, RleError> {
        let counts = codec::decode(s.as_bytes())?;
        Self::from_counts(h, w, counts)
    }

    /// COCO JSON `{"size": [h, w], "counts": "..."}`.
    pub fn to_coco_json(&self) -> serde_json::Value {
        serde_json::json!({"size": [self.h, self.w], "counts": self.to_compressed()})
    }

    /// The compressed string form (`rleToString`).
    pub fn to_compressed(&self) -> String {
        codec::encode(&self.counts)
    }

    /// Encode a column-major 0/non-0 mask (`rleEncode`; like pycocotools, any change of byte
    /// value starts a new run, so feed it 0/1 data).
    pub fn encode_col_major(mask: &[u8], h: u32, w: u32) -> Result<Self, RleError> {
        let a = h as usize * w as usize;
        if mask.len() != a {
            return Err(RleError(format!("mask has {} bytes, expected {h}x{w}", mask.len())));
        }
        let mut counts = Vec::new();
        let mut p = 0u8;
        let mut c = 0u32;
        for &v in mask {
            if v != p {
                counts.push(c);
                c = 0;
                p = v;
            }
            c += 1;
        }
        counts.push(c);
        Ok(Rle { h, w, counts })
    }

    /// Encode a row-major boolean mask (the layout images use), treating non-zero as set.
    pub fn encode_row_major(mask: &[u8], h: u32, w: u32) -> Result<Self, RleError> {
        let (hu, wu) = (h as usize, w as usize);
        if mask.len() != hu * wu {
            return Err(RleError(format!("mask has {} bytes, expected {h}x{w}", mask.len())));
        }
        let mut counts = Vec::new();
        let mut cur = false;
        let mut run = 0u32;
        for x in 0..wu {
            for y in 0..hu {
                let v = mask[y * wu + x] != 0;
                if v != cur {
                    counts.push(run);
                    run = 0;
                    cur = v;
                }
                run += 1;
            }
        }
        counts.push(run);
        Ok(Rle { h, w, counts })
    }

    /// Decode to a column-major 0/1 mask (`rleDecode`).
    pub fn decode_col_major(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.h as usize * self.w as usize);
        let mut v = 0u8;
        for &c in &self.counts {
            out.extend(std::iter::repeat_n(v, c as usize));
            v ^= 1;
        }
        out
    }

    /// Decode to a row-major 0/1 mask (for writing images).
    pub fn decode_row_major(&self) -> Vec<u8> {
        let (h, w) = (self.h as usize, self.w as usize);
        let mut out = vec![0u8; h * w];
        let mut pos = 0usize;
        for (i, &c) in self.counts.iter().enumerate() {
            if i % 2 == 1 {
                for p in pos..pos + c as usize {
                    out[(p % h) * w + p / h] = 1;
                }
            }
            pos += c as usize;
        }
        out
    }

    pub fn height(&self) -> u32 {
        self.h
    }
    pub fn width(&self) -> u32 {
        self.w
    }
    pub fn size(&self) -> (u32, u32) {
        (self.h, self.w)
    }
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// Number of set pixels: the sum of the odd-indexed runs (`rleArea`).
    pub fn area(&self) -> u64 {
        self.counts.iter().skip(1).step_by(2).map(|&c| c as u64).sum()
    }

    /// Bounding box `[x, y, w, h]` as pycocotools' `toBbox` computes it (`rleToBbox`).
    pub fn bbox(&self) -> [f64; 4] {
        let (h, w) = (self.h, self.w);
        let m = (self.counts.len() / 2) * 2;
        if m == 0 {
            return [0.0; 4];
        }
        let (mut xs, mut ys, mut xe, mut ye) = (w, h, 0u32, 0u32);
        let mut cc = 0u32;
        let mut xp = 0u32;
        for j in 0..m {
            cc = cc.wrapping_add(self.counts[j]);
            let t = cc.wrapping_sub((j % 2) as u32);
            let y = t % h;
            let x = (t - y) / h;
            if j % 2 == 0 {
                xp = x;
            } else if xp < x {
                ys = 0;
                ye = h - 1;
            }
            xs = xs.min(x);
            xe = xe.max(x);
            ys = ys.min(y);
            ye = ye.max(y);
        }
        [
            xs as f64,
            ys as f64,
            (xe as f64) - (xs as f64) + 1.0,
            (ye as f64) - (ys as f64) + 1.0,
        ]
    }

    /// Intersection and union pixel counts of two masks of the same size (the run walk of `rleIou`).
    pub fn intersection_union(&self, other: &Rle) -> Result<(u64, u64), RleError> {
        if self.size() != other.size() {
            return Err(RleError(format!(
                "mask sizes differ: {}x{} vs {}x{}",
                self.h, self.w, other.h, other.w
            )));
        }
        let (a, b) = (&self.counts, &other.counts);
        let (mut i, mut u) = (0u64, 0u64);
        let (mut ia, mut ib) = (0usize, 0usize);
        let (mut ca, mut cb) = (a[0] as u64, b[0] as u64);
        let (mut va, mut vb) = (false, false);
        loop {
            let c = ca.min(cb);
            if va || vb {
                u += c;
                if va && vb {
                    i += c;
                }
            }
            ca -= c;
            cb -= c;
            while ca == 0 && ia + 1 < a.len() {
                ia += 1;
                ca = a[ia] as u64;
                va = !va;
            }
            while cb == 0 && ib + 1 < b.len() {
                ib += 1;
                cb = b[ib] as u64;
                vb = !vb;
            }
            if ca == 0 && cb == 0 {
                break;
            }
        }
        Ok((i, u))
    }

    /// pycocotools `iou(dt, gt, iscrowd)` for one pair: 0 when the boxes don't overlap or I=0,
    /// area(dt) as the denominator for a crowd ground truth, -1 for a size mismatch.
    pub fn coco_iou(dt: &Rle, gt: &Rle, iscrowd: bool) -> f64 {
        let (db, gb) = (dt.bbox(), gt.bbox());
        // bbIou first: a zero box overlap short-circuits to 0.
        let w = (db[2] + db[0]).min(gb[2] + gb[0]) - db[0].max(gb[0]);
        let h = (db[3] + db[1]).min(gb[3] + gb[1]) - db[1].max(gb[1]);
        if w <= 0.0 || h <= 0.0 {
            return 0.0;
        }
        let Ok((i, u)) = dt.intersection_union(gt) else {
            return -1.0;
        };
        let u = if i == 0 {
            1
        } else if iscrowd {
            dt.area()
        } else {
            u
        };
        i as f64 / u as f64
    }

    /// Combine masks of one size pixel-wise: a pixel is set when `keep(k)` holds for the number
    /// `k` of input masks covering it. Union is `k ≥ 1`, intersection `k == n`.
    pub fn combine(rles: &[Rle], keep: impl Fn(usize) -> bool) -> Result<Rle, RleError> {
        let runs = coverage_runs(rles)?;
        let (h, w) = rles[0].size();
        let mut counts = Vec::new();
        let mut cur = false;
        let mut run = 0u32;
        for (k, len) in runs {
            let v = keep(k);
            if v != cur {
                counts.push(run);
                run = 0;
                cur = v;
            }
            run += len;
        }
        counts.push(run);
        Ok(Rle { h, w, counts })
    }

    /// Union of masks (pycocotools `merge(rles, intersect=0)`).
    pub fn union(rles: &[Rle]) -> Result<Rle, RleError> {
        Self::combine(rles, |k| k >= 1)
    }

    /// Re-read a per-pixel coverage count the way `encode(np.sum(decode(rles), axis=2)
    /// .astype(uint8))` followed by `decode` does in Sa2VA's evaluation: every change of count
    /// value starts a new run and runs alternate 0/1, so pixels covered twice next to pixels
    /// covered once read as background.
    pub fn sum_reencoded(rles: &[Rle]) -> Result<Rle, RleError> {
        let runs = coverage_runs(rles)?;
        let (h, w) = rles[0].size();
        let mut counts = Vec::new();
        let mut prev = 0u8;
        let mut run = 0u32;
        for (k, len) in runs {
            let v = k as u8; // uint8 cast of the sum, as in the reference
            if v != prev {
                counts.push(run);
                run = 0;
                prev = v;
            }
            run += len;
        }
        counts.push(run);
        Ok(Rle { h, w, counts })
    }
}

/// Sweep `rles` together into maximal runs of constant coverage count: `(count, length)`.
fn coverage_runs(rles: &[Rle]) -> Result<Vec<(usize, u32)>, RleError> {
    let Some(first) = rles.first() else {
        return Err(RleError("no masks to combine".into()));
    };
    let size = first.size();
    // Each mask toggles at its cumulative run boundaries: +1 entering a set run, -1 leaving.
    let mut events: Vec<(u64, i32)> = Vec::new();
    for r in rles {
        if r.size() != size {
            return Err(RleError(format!(
                "mask sizes differ: {}x{} vs {}x{}",
                size.0, size.1, r.h, r.w
            )));
        }
        // Zero-length runs merge their neighbours, so track the actual value, not the index.
        let mut pos = 0u64;
        let mut set = false;
        for (i, &c) in r.counts.iter().enumerate() {
            let v = i % 2 == 1;
            if c > 0 && v != set {
                events.push((pos, if v { 1 } else { -1 }));
                set = v;
            }
            pos += c as u64;
        }
    }
    events.sort_unstable();
    let total = size.0 as u64 * size.1 as u64;
    let mut out: Vec<(usize, u32)> = Vec::new();
    let mut k: i64 = 0;
    let mut pos = 0u64;
    let mut idx = 0;
    while pos < total {
        while idx < events.len() && events[idx].0 == pos {
            k += events[idx].1 as i64;
            idx += 1;
        }
        let next = if idx < events.len() { events[idx].0 } else { total };
        let len = (next - pos) as u32;
        match out.last_mut() {
            Some((kk, l)) if *kk == k as usize => *l += len,
            _ => out.push((k as usize, len)),
        }
        pos = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
