//! Images people look at and files tools read: binary mask PNGs, mask overlays on the photo,
//! and depth maps ([`depth`]: 16-bit PNG, turbo colours, `.npy`).

pub mod depth;

use crate::error::{Error, Result};
use crate::mask::Mask;
use image::{ImageEncoder, RgbImage};

/// Tint colours of successive masks (SAM demo palette, dodger blue first).
pub const PALETTE: [[u8; 3]; 6] = [
    [30, 144, 255],
    [255, 99, 71],
    [50, 205, 50],
    [255, 215, 0],
    [186, 85, 211],
    [0, 206, 209],
];

/// Encode raw samples as PNG bytes.
pub(crate) fn png(buf: &[u8], w: u32, h: u32, color: image::ExtendedColorType) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(buf, w, h, color)
        .map_err(|e| Error::at("png encoder", e.to_string()))?;
    Ok(out)
}

/// A binary mask as an 8-bit grayscale PNG (0 / 255) of the photo's size.
pub fn mask_png(m: &Mask) -> Result<Vec<u8>> {
    let px: Vec<u8> = m.data.iter().map(|&v| if v != 0 { 255 } else { 0 }).collect();
    png(&px, m.width, m.height, image::ExtendedColorType::L8)
}

/// The photo with each mask tinted (50 % blend) and its outline drawn opaque; the outline is
/// thicker on large photos so it stays visible.
pub fn overlay(img: &RgbImage, masks: &[&Mask]) -> RgbImage {
    let thick = (img.width().min(img.height()) / 400).max(1) as usize;
    let styled: Vec<Outline> = masks
        .iter()
        .enumerate()
        .map(|(k, m)| Outline {
            mask: m,
            color: PALETTE[k % PALETTE.len()],
            tint: true,
        })
        .collect();
    outlines(img, &styled, thick)
}

/// One mask to draw with [`outlines`]: its colour, and whether its inside is tinted too.
pub struct Outline<'a> {
    pub mask: &'a Mask,
    pub color: [u8; 3],
    pub tint: bool,
}

/// The photo with each mask's outline drawn opaque in its own colour, `thick` pixels wide, and
/// (where asked) its inside blended 50 % with that colour; later masks are drawn over earlier
/// ones. Several masks on one photo, e.g. a prediction and its ground truth.
pub fn outlines(img: &RgbImage, masks: &[Outline], thick: usize) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = img.clone();
    let thick = thick.max(1) as isize;
    for o in masks {
        let (m, c) = (o.mask, o.color);
        assert_eq!(
            (m.width as usize, m.height as usize),
            (w, h),
            "mask and photo sizes differ"
        );
        let inside = |x: isize, y: isize| {
            x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h && m.data[y as usize * w + x as usize] != 0
        };
        for y in 0..h {
            for x in 0..w {
                if m.data[y * w + x] == 0 {
                    continue;
                }
                let (xi, yi) = (x as isize, y as isize);
                let edge = (-thick..=thick).any(|d| !inside(xi + d, yi) || !inside(xi, yi + d));
                if !edge && !o.tint {
                    continue;
                }
                let p = out.get_pixel_mut(x as u32, y as u32);
                for (v, &t) in p.0.iter_mut().zip(&c) {
                    *v = if edge { t } else { ((*v as u16 + t as u16) / 2) as u8 };
                }
            }
        }
    }
    out
}

/// Encode an RGB image as baseline JPEG bytes (`quality` 1–100): small thumbnails for reports.
pub fn jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::at("jpeg encoder", e.to_string()))?;
    Ok(out)
}

pub fn overlay_png(img: &RgbImage, masks: &[&Mask]) -> Result<Vec<u8>> {
    let o = overlay(img, masks);
    png(o.as_raw(), o.width(), o.height(), image::ExtendedColorType::Rgb8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_round_trips_and_overlay_marks_edges() {
        let mut m = Mask::empty(7, 5);
        for y in 1..4 {
            for x in 2..6 {
                m.data[y * 7 + x] = 1;
            }
        }
        let r = m.to_rle().unwrap();
        assert_eq!(r.area(), 12);
        assert_eq!(r.decode_row_major(), m.data);
        let img = RgbImage::from_pixel(7, 5, image::Rgb([0, 0, 0]));
        let o = overlay(&img, &[&m]);
        assert_eq!(o.get_pixel(2, 1).0, PALETTE[0]); // edge: opaque
        assert_eq!(o.get_pixel(0, 0).0, [0, 0, 0]); // outside: untouched
        let p = mask_png(&m).unwrap();
        let back = image::load_from_memory(&p).unwrap().to_luma8();
        assert_eq!(back.get_pixel(3, 2).0[0], 255);
        assert_eq!(back.get_pixel(0, 0).0[0], 0);
    }
}
