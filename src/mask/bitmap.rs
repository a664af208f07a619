//! A binary mask as a row-major bitmap at the photo's size: what SAM2 predicts and what
//! renderers and scorers consume (through its COCO RLE).

use super::{Rle, RleError};

/// One byte per pixel (0 or 1), row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl Mask {
    pub fn empty(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            data: vec![0; width as usize * height as usize],
        }
    }

    /// Pixel-wise OR (several `[SEG]`s for one expression).
    pub fn or(&mut self, other: &Mask) {
        self.data.iter_mut().zip(&other.data).for_each(|(a, b)| *a |= *b);
    }

    pub fn area(&self) -> u64 {
        self.data.iter().map(|&v| v as u64).sum()
    }

    /// COCO RLE (column-major runs), as pycocotools encodes it.
    pub fn to_rle(&self) -> Result<Rle, RleError> {
        Rle::encode_row_major(&self.data, self.height, self.width)
    }

    /// `{"mask": {"size", "counts"}, "area", "bbox"}` (bbox `null` when empty): the per-mask
    /// summary every command prints.
    pub fn summary_json(&self) -> Result<serde_json::Value, RleError> {
        let r = self.to_rle()?;
        let area = r.area();
        Ok(serde_json::json!({
            "mask": r.to_coco_json(),
            "area": area,
            "bbox": if area > 0 { serde_json::json!(r.bbox()) } else { serde_json::Value::Null },
        }))
    }
}

/// One `[SEG]`'s result: the mask, SAM2's predicted IoU of it and the object-score logit.
#[derive(Debug, Clone)]
pub struct Segment {
    pub mask: Mask,
    pub score: f32,
    pub object_score: f32,
}
