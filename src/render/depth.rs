//! Depth-map files: 16-bit grayscale PNG, a turbo-coloured PNG for people, and `.npy` f32 for
//! tools. Writers are atomic (`util::atomic`). Maps written here are in [0, 1] with brighter =
//! closer (AURORA); [`crate::depthmap::DepthMap::to_unit`] scales others.

use crate::error::{Error, Result};
use std::path::Path;

fn check(data: &[f32], w: usize, h: usize) -> Result<()> {
    if w == 0 || h == 0 || w.checked_mul(h) != Some(data.len()) || w > u32::MAX as usize || h > u32::MAX as usize {
        return Err(Error::at(
            "depth writer",
            format!("{} values do not make a {w}x{h} map", data.len()),
        ));
    }
    Ok(())
}

/// 16-bit grayscale PNG bytes of a [0, 1] map: round(v·65535), clamped; NaN → 0.
pub fn png16(data: &[f32], w: usize, h: usize) -> Result<Vec<u8>> {
    check(data, w, h)?;
    // PNG stores 16-bit samples big-endian; the encoder takes native-endian u16 bytes.
    let raw: Vec<u8> = data.iter().flat_map(|&v| to_u16(v).to_ne_bytes()).collect();
    super::png(&raw, w as u32, h as u32, image::ExtendedColorType::L16)
}

fn to_u16(v: f32) -> u16 {
    if v.is_nan() {
        0
    } else {
        (v.clamp(0.0, 1.0) * 65535.0).round() as u16
    }
}

/// Google's Turbo colormap (Mikhailov 2019, polynomial fit), x ∈ [0, 1] → sRGB bytes.
pub fn turbo(x: f32) -> [u8; 3] {
    let x = if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) } as f64;
    let (x2, x3) = (x * x, x * x * x);
    let (x4, x5) = (x2 * x2, x2 * x3);
    let poly = |c: [f64; 6]| c[0] + c[1] * x + c[2] * x2 + c[3] * x3 + c[4] * x4 + c[5] * x5;
    let r = poly([
        0.13572138,
        4.61539260,
        -42.66032258,
        132.13108234,
        -152.94239396,
        59.28637943,
    ]);
    let g = poly([0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604]);
    let b = poly([
        0.10667330,
        12.64194608,
        -60.58204836,
        110.36276771,
        -89.90310912,
        27.34824973,
    ]);
    [r, g, b].map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8)
}

/// Turbo-coloured RGB PNG bytes of a [0, 1] map (red = near with AURORA's brighter = closer).
pub fn turbo_png(data: &[f32], w: usize, h: usize) -> Result<Vec<u8>> {
    check(data, w, h)?;
    let raw: Vec<u8> = data.iter().flat_map(|&v| turbo(v)).collect();
    super::png(&raw, w as u32, h as u32, image::ExtendedColorType::Rgb8)
}

/// `.npy` (format 1.0, little-endian f32, C order) bytes of an (h, w) map.
pub fn npy_f32(data: &[f32], w: usize, h: usize) -> Result<Vec<u8>> {
    check(data, w, h)?;
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({h}, {w}), }}");
    // magic(6) + version(2) + len(2) + header, padded with spaces to a multiple of 64, '\n' last.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(total + 4 * data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Write [`png16`] atomically.
pub fn write_png16(path: &Path, data: &[f32], w: usize, h: usize) -> Result<()> {
    crate::util::atomic::write(path, &png16(data, w, h)?)
}

/// Write [`turbo_png`] atomically.
pub fn write_turbo_png(path: &Path, data: &[f32], w: usize, h: usize) -> Result<()> {
    crate::util::atomic::write(path, &turbo_png(data, w, h)?)
}

/// Write [`npy_f32`] atomically.
pub fn write_npy(path: &Path, data: &[f32], w: usize, h: usize) -> Result<()> {
    crate::util::atomic::write(path, &npy_f32(data, w, h)?)
}
