//! Polygon and box rasterisation, a line-for-line port of pycocotools' `rleFrPoly` and
//! `rleFrBbox` (5× upsampled boundary walk, then y-boundary points downsampled), including
//! C's truncating casts, so masks match pycocotools pixel for pixel.

use super::{Rle, RleError};

/// C's `(int)` of a double on x86-64 (`cvttsd2si`): truncation toward zero, and the
/// "integer indefinite" `INT_MIN` for NaN or out-of-range values (Rust's `as` saturates).
fn c_int(v: f64) -> i32 {
    if v.is_nan() || v >= 2147483648.0 || v <= -2147483649.0 {
        i32::MIN
    } else {
        v as i32
    }
}

/// Largest coordinate magnitude accepted; beyond it the boundary walk would need gigabytes.
const MAX_COORD: f64 = 1.0e6;
/// Largest number of upsampled boundary points (128 MiB of work buffers); a COCO polygon on a
/// 640×480 image has a few thousand.
const MAX_BOUNDARY: usize = 16 << 20;

/// Rasterise one polygon `[x0, y0, x1, y1, ...]` at size h×w (`rleFrPoly`). An odd trailing
/// value is ignored, as pycocotools does (`int(len(p)/2)` points).
pub fn from_polygon(xy: &[f64], h: u32, w: u32) -> Result<Rle, RleError> {
    if let Some(v) = xy.iter().find(|v| !v.is_finite() || v.abs() > MAX_COORD) {
        return Err(RleError(format!(
            "polygon coordinate {v} is not a finite number within ±{MAX_COORD}"
        )));
    }
    super::check_size(h, w)?;
    let k = xy.len() / 2;
    if k == 0 {
        return Ok(Rle::empty(h, w));
    }
    let scale = 5.0f64;
    let mut x: Vec<i32> = (0..k).map(|j| c_int(scale * xy[j * 2] + 0.5)).collect();
    let mut y: Vec<i32> = (0..k).map(|j| c_int(scale * xy[j * 2 + 1] + 0.5)).collect();
    x.push(x[0]);
    y.push(y[0]);
    let mut m: usize = 0;
    for j in 0..k {
        let dx = x[j].wrapping_sub(x[j + 1]).unsigned_abs();
        let dy = y[j].wrapping_sub(y[j + 1]).unsigned_abs();
        m += dx.max(dy) as usize + 1;
    }
    if m > MAX_BOUNDARY {
        return Err(RleError(format!(
            "polygon boundary of {m} upsampled points is too long to rasterise"
        )));
    }
    let mut u: Vec<i32> = Vec::with_capacity(m);
    let mut v: Vec<i32> = Vec::with_capacity(m);
    for j in 0..k {
        let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
        let dx = xe.wrapping_sub(xs).wrapping_abs();
        let dy = ys.wrapping_sub(ye).wrapping_abs();
        let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if flip {
            std::mem::swap(&mut xs, &mut xe);
            std::mem::swap(&mut ys, &mut ye);
        }
        let s = if dx >= dy {
            ye.wrapping_sub(ys) as f64 / dx as f64
        } else {
            xe.wrapping_sub(xs) as f64 / dy as f64
        };
        if dx >= dy {
            for d in 0..=dx {
                let t = if flip { dx - d } else { d };
                u.push(t.wrapping_add(xs));
                v.push(c_int(ys as f64 + s * t as f64 + 0.5));
            }
        } else {
            for d in 0..=dy {
                let t = if flip { dy - d } else { d };
                v.push(t.wrapping_add(ys));
                u.push(c_int(xs as f64 + s * t as f64 + 0.5));
            }
        }
    }
    // Points along the y-boundary, downsampled.
    let wm1 = (w as u64).wrapping_sub(1) as f64; // C: siz arithmetic, w-1 wraps for w == 0
    let mut bx: Vec<i32> = Vec::new();
    let mut by: Vec<i32> = Vec::new();
    for j in 1..u.len() {
        if u[j] == u[j - 1] {
            continue;
        }
        let mut xd = (if u[j] < u[j - 1] { u[j] } else { u[j].wrapping_sub(1) }) as f64;
        xd = (xd + 0.5) / scale - 0.5;
        if xd.floor() != xd || xd < 0.0 || xd > wm1 {
            continue;
        }
        let mut yd = (if v[j] < v[j - 1] { v[j] } else { v[j - 1] }) as f64;
        yd = (yd + 0.5) / scale - 0.5;
        if yd < 0.0 {
            yd = 0.0;
        } else if yd > h as f64 {
            yd = h as f64;
        }
        yd = yd.ceil();
        bx.push(c_int(xd));
        by.push(c_int(yd));
    }
    // RLE from the boundary points.
    let mut a: Vec<u32> = bx
        .iter()
        .zip(&by)
        .map(|(&xx, &yy)| xx.wrapping_mul(h as i32).wrapping_add(yy) as u32)
        .collect();
    a.push(h.wrapping_mul(w));
    a.sort_unstable();
    let mut p = 0u32;
    for e in a.iter_mut() {
        let t = *e;
        *e = e.wrapping_sub(p);
        p = t;
    }
    let mut b: Vec<u32> = Vec::with_capacity(a.len());
    let mut j = 0;
    b.push(a[j]);
    j += 1;
    while j < a.len() {
        if a[j] > 0 {
            b.push(a[j]);
            j += 1;
        } else {
            j += 1;
            if j < a.len() {
                let last = b.len() - 1;
                b[last] = b[last].wrapping_add(a[j]);
                j += 1;
            }
        }
    }
    Rle::from_counts(h, w, b)
}

/// Rasterise a box `[x, y, w, h]` through the polygon path (`rleFrBbox`).
pub fn from_bbox(bb: [f64; 4], h: u32, w: u32) -> Result<Rle, RleError> {
    let (xs, ys) = (bb[0], bb[1]);
    let (xe, ye) = (xs + bb[2], ys + bb[3]);
    from_polygon(&[xs, ys, xs, ye, xe, ye, xe, ys], h, w)
}
