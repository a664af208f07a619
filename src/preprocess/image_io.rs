//! Load an image file as 8-bit RGB, as `Image.open(path).convert("RGB")` does in Pillow.
//!
//! PNG and JPEG only (the `image` crate's decoders). The size is checked from the header, before
//! any pixel buffer is allocated: zero dimensions and images over [`MAX_PIXELS`] are refused.
//!
//! Conversion to RGB follows Pillow (checked on generated PNGs of every colour type, see
//! `tools/gen_preprocess_goldens.py`):
//! - RGBA / grey+alpha: the alpha channel is dropped (no compositing); grey is replicated;
//! - palette images: the palette colour (transparency ignored); 1/2/4-bit grey scaled to 0..=255;
//! - 16-bit RGB, RGBA and grey+alpha: the high byte of each sample (Pillow's `RGB;16B` unpacking);
//! - 16-bit grey (no alpha channel): Pillow opens it as mode `I;16` and `convert("RGB")` clips
//!   each value to 255, so a 16-bit grey PNG comes out nearly white. perceptio reproduces this
//!   (InternVL was run on what Pillow gives) rather than rescaling.
//!
//! EXIF orientation is not applied (neither does `Image.open`). JPEG decoding (zune-jpeg here,
//! libjpeg-turbo in Pillow) is not guaranteed to be bit-identical: IDCT and chroma upsampling
//! differ by a few levels on some pixels. PNG decoding is exact.

use std::fs::File;
use std::io::{BufReader, Cursor, Read};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{Error, Result};

/// Largest image (width × height) [`load_rgb`] accepts: 178,956,970 pixels, Pillow's own
/// `DecompressionBombError` threshold (2 × `Image.MAX_IMAGE_PIXELS`), so anything Python's
/// reference pipeline would open, perceptio opens too (about 537 MB as RGB). Larger images, and
/// images with a zero dimension, are refused from their header.
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// Bytes per pixel of the widest buffer a decoder may produce (16-bit RGBA).
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// Load an image file (or "-" = stdin) as 8-bit RGB. Refuse, with a clear error and before
/// allocating pixels, images with a zero dimension or more than [`MAX_PIXELS`] pixels; a file that
/// is not a PNG/JPEG image, or is truncated or corrupt, is an error naming the path.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    if path.as_os_str() == "-" {
        decode_rgb(std::io::stdin().lock(), Path::new("<stdin>"))
    } else {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(Error::input(path, "is a directory, not an image file"));
        }
        decode_rgb(BufReader::new(file), path)
    }
}

/// Decode an in-memory PNG/JPEG (e.g. base64 from an MMBench TSV) with the same checks as
/// [`load_rgb`]; `name` labels errors.
pub fn decode_rgb_bytes(bytes: &[u8], name: &Path) -> Result<RgbImage> {
    decode_rgb(Cursor::new(bytes), name)
}

/// What the PNG header says (the IHDR chunk must come first in a valid PNG).
struct PngHeader {
    width: u32,
    height: u32,
    bit_depth: u8,
    color_type: u8,
}

fn png_header(head: &[u8]) -> Option<PngHeader> {
    const SIG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if head.len() < 33 || !head.starts_with(SIG) || &head[12..16] != b"IHDR" {
        return None;
    }
    let be = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    Some(PngHeader {
        width: be(16),
        height: be(20),
        bit_depth: head[24],
        color_type: head[25],
    })
}

/// A walk over a JPEG's marker segments: the frame size (first SOFn) and whether the data reach
/// the EOI marker. zune-jpeg (as the `image` crate configures it) decodes a truncated file
/// without error, filling the missing part; Pillow refuses it ("image file is truncated").
struct JpegScan {
    size: Option<(u32, u32)>,
    complete: bool,
}

fn scan_jpeg(b: &[u8]) -> JpegScan {
    let be16 = |i: usize| u32::from(u16::from_be_bytes([b[i], b[i + 1]]));
    let mut size = None;
    let incomplete = |size| JpegScan { size, complete: false };
    let mut p = 2; // after SOI
    loop {
        // Next marker: skip stray bytes (libjpeg tolerates them), then 0xFF fill bytes.
        while p < b.len() && b[p] != 0xFF {
            p += 1;
        }
        while p < b.len() && b[p] == 0xFF {
            p += 1;
        }
        if p >= b.len() {
            return incomplete(size);
        }
        let marker = b[p];
        p += 1;
        match marker {
            0xD9 => return JpegScan { size, complete: true },
            0x00 | 0x01 | 0xD0..=0xD7 => continue, // no length field
            _ => {}
        }
        if p + 2 > b.len() {
            return incomplete(size);
        }
        let len = be16(p) as usize;
        if len < 2 || p + len > b.len() {
            return incomplete(size);
        }
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof && len >= 7 && size.is_none() {
            size = Some((be16(p + 5), be16(p + 3)));
        }
        p += len;
        if marker == 0xDA {
            // Entropy-coded data runs to the next marker that is not a stuffed 0xFF00 or RSTn.
            loop {
                while p < b.len() && b[p] != 0xFF {
                    p += 1;
                }
                if p + 1 >= b.len() {
                    return incomplete(size);
                }
                match b[p + 1] {
                    0xFF => p += 1,
                    0x00 | 0xD0..=0xD7 => p += 2,
                    _ => break,
                }
            }
        }
    }
}

fn check_size(path: &Path, width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::input(
            path,
            format!("image has a zero dimension ({width}x{height})"),
        ));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_PIXELS {
        return Err(Error::input(
            path,
            format!("image is {width}x{height} = {pixels} pixels, more than the limit of {MAX_PIXELS}"),
        ));
    }
    Ok(())
}

fn decode_rgb<R: Read>(mut reader: R, path: &Path) -> Result<RgbImage> {
    // The header first: a PNG's size is refused before the rest of the file is even read.
    let mut bytes = Vec::with_capacity(33);
    (&mut reader)
        .take(33)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.is_empty() {
        return Err(Error::input(path, "empty file, not an image"));
    }
    let format = match image::guess_format(&bytes) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg)) => f,
        Ok(other) => {
            return Err(Error::input(
                path,
                format!("{other:?} images are not supported (PNG or JPEG only)"),
            ));
        }
        Err(_) => {
            return Err(Error::input(
                path,
                "not a PNG or JPEG image (unrecognised file signature)",
            ))
        }
    };
    let png = png_header(&bytes);
    if let Some(h) = &png {
        check_size(path, h.width, h.height)?;
    }
    reader.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if format == ImageFormat::Jpeg {
        let scan = scan_jpeg(&bytes);
        if let Some((w, h)) = scan.size {
            check_size(path, w, h)?;
        }
        if !scan.complete {
            return Err(Error::input(
                path,
                "cannot decode the image: truncated JPEG (no end-of-image marker)",
            ));
        }
    }

    let mut reader = ImageReader::with_format(Cursor::new(&bytes[..]), format);
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * MAX_BYTES_PER_PIXEL + (64 << 20));
    reader.limits(limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| Error::input(path, format!("cannot read the image header: {e}")))?;
    let (width, height) = decoder.dimensions();
    check_size(path, width, height)?;
    let img =
        DynamicImage::from_decoder(decoder).map_err(|e| Error::input(path, format!("cannot decode the image: {e}")))?;
    // A 16-bit grey PNG (colour type 0), with or without tRNS: Pillow's mode "I;16".
    let pil_i16 = matches!(&png, Some(h) if h.color_type == 0 && h.bit_depth == 16);
    Ok(to_rgb_like_pillow(img, pil_i16))
}

/// `convert("RGB")` as Pillow does it for what it would have opened (see the module docs).
fn to_rgb_like_pillow(img: DynamicImage, pil_i16: bool) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let from_fn = |channels: usize, px: &dyn Fn(&[u8]) -> [u8; 3], data: &[u8]| {
        let mut out = Vec::with_capacity(w as usize * h as usize * 3);
        for p in data.chunks_exact(channels) {
            out.extend_from_slice(&px(p));
        }
        RgbImage::from_raw(w, h, out).expect("buffer size matches the dimensions")
    };
    let from_fn16 = |channels: usize, px: &dyn Fn(&[u16]) -> [u8; 3], data: &[u16]| {
        let mut out = Vec::with_capacity(w as usize * h as usize * 3);
        for p in data.chunks_exact(channels) {
            out.extend_from_slice(&px(p));
        }
        RgbImage::from_raw(w, h, out).expect("buffer size matches the dimensions")
    };
    let hi = |v: u16| (v >> 8) as u8;
    let clip = |v: u16| v.min(255) as u8;
    match img {
        DynamicImage::ImageRgb8(im) => im,
        DynamicImage::ImageRgba8(im) => from_fn(4, &|p| [p[0], p[1], p[2]], im.as_raw()),
        DynamicImage::ImageLuma8(im) => from_fn(1, &|p| [p[0]; 3], im.as_raw()),
        DynamicImage::ImageLumaA8(im) => from_fn(2, &|p| [p[0]; 3], im.as_raw()),
        DynamicImage::ImageRgb16(im) => from_fn16(3, &|p| [hi(p[0]), hi(p[1]), hi(p[2])], im.as_raw()),
        DynamicImage::ImageRgba16(im) => from_fn16(4, &|p| [hi(p[0]), hi(p[1]), hi(p[2])], im.as_raw()),
        DynamicImage::ImageLuma16(im) if pil_i16 => from_fn16(1, &|p| [clip(p[0]); 3], im.as_raw()),
        DynamicImage::ImageLumaA16(im) if pil_i16 => from_fn16(2, &|p| [clip(p[0]); 3], im.as_raw()),
        DynamicImage::ImageLuma16(im) => from_fn16(1, &|p| [hi(p[0]); 3], im.as_raw()),
        DynamicImage::ImageLumaA16(im) => from_fn16(2, &|p| [hi(p[0]); 3], im.as_raw()),
        other => other.to_rgb8(),
    }
}

/// Read a depth PNG/JPEG: 8-bit gray stays 8-bit (AURORA's input as is); 16-bit gray becomes a
/// float map v/65535; colour images contribute their blue channel, as AURORA's
/// `cv2.imread(...)[:, :, 0]` does (the three channels are equal in a `--grayscale` file).
pub fn load_depth_image(path: &Path) -> Result<crate::depthmap::DepthMap> {
    use crate::depthmap::{DepthMap, DepthScale};
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let img = image::load_from_memory(&bytes).map_err(|e| Error::input(path, format!("not a readable image: {e}")))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let gray8 = |data: Vec<u8>| DepthMap::new(w, h, data.iter().map(|&v| v as f32).collect(), DepthScale::Gray8);
    let float16 = |data: Vec<u16>| {
        DepthMap::new(
            w,
            h,
            data.iter().map(|&v| v as f32 / 65535.0).collect(),
            DepthScale::Float,
        )
    };
    Ok(match img {
        DynamicImage::ImageLuma8(i) => gray8(i.into_raw()),
        DynamicImage::ImageLumaA8(i) => gray8(i.pixels().map(|p| p[0]).collect()),
        DynamicImage::ImageRgb8(i) => gray8(i.pixels().map(|p| p[2]).collect()),
        DynamicImage::ImageRgba8(i) => gray8(i.pixels().map(|p| p[2]).collect()),
        DynamicImage::ImageLuma16(i) => float16(i.into_raw()),
        DynamicImage::ImageLumaA16(i) => float16(i.pixels().map(|p| p[0]).collect()),
        DynamicImage::ImageRgb16(i) => float16(i.pixels().map(|p| p[2]).collect()),
        DynamicImage::ImageRgba16(i) => float16(i.pixels().map(|p| p[2]).collect()),
        other => {
            return Err(Error::input(
                path,
                format!("unsupported depth image type {:?}", other.color()),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_header_parsing() {
        let mut h = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        h.extend_from_slice(&30000u32.to_be_bytes());
        h.extend_from_slice(&20u32.to_be_bytes());
        h.extend_from_slice(&[16, 0, 0, 0, 0, 0, 0, 0, 0]);
        let p = png_header(&h).unwrap();
        assert_eq!((p.width, p.height, p.bit_depth, p.color_type), (30000, 20, 16, 0));
        assert!(png_header(&h[..20]).is_none());
    }

    #[test]
    fn jpeg_scan() {
        // SOI, SOF0 100x50, SOS with entropy data holding FF00 and RST0, EOI
        let mut j = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 8, 0, 50, 0, 100, 1, 1, 0x11, 0];
        j.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 1, 1, 0, 0, 63, 0]);
        j.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xFF, 0xD9]);
        let s = scan_jpeg(&j);
        assert_eq!(s.size, Some((100, 50)));
        assert!(s.complete);
        for cut in 3..j.len() - 1 {
            assert!(!scan_jpeg(&j[..cut]).complete, "cut at {cut}");
        }
        // trailing bytes after EOI are fine
        j.extend_from_slice(b"trailer");
        assert!(scan_jpeg(&j).complete);
    }

    #[test]
    fn size_limits() {
        let p = Path::new("x.png");
        assert!(check_size(p, 1, 1).is_ok());
        assert!(check_size(p, 0, 5).is_err());
        assert!(check_size(p, 16384, 10922).is_ok());
        assert!(check_size(p, 16384, 16384).is_err());
        let e = check_size(p, 30000, 30000).unwrap_err().to_string();
        assert!(e.contains("x.png") && e.contains("30000x30000"), "{e}");
    }
}
