//! The JSON forms a mask can take in perceptio's files: a COCO RLE (`counts` compressed string
//! or uncompressed int list), `{"polygons": [[x, y, ...], ...]}`, or `null` (no mask).

use super::{from_polygon, Rle, RleError};
use serde_json::Value;

/// A parsed mask whose polygons (if any) still need the image size to be rasterised.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskJson {
    /// `null`: the model produced no mask.
    Null,
    Rle(Rle),
    Polygons(Vec<Vec<f64>>),
}

fn size_of(v: &Value) -> Result<(u32, u32), RleError> {
    let arr = v
        .as_array()
        .filter(|a| a.len() == 2)
        .ok_or_else(|| RleError("RLE `size` must be [height, width]".into()))?;
    let dim = |x: &Value| -> Result<u32, RleError> {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| RleError(format!("RLE size entry {x} is not a non-negative integer")))
    };
    let (h, w) = (dim(&arr[0])?, dim(&arr[1])?);
    super::check_size(h, w)?;
    Ok((h, w))
}

/// Parse one mask value.
pub fn parse_mask_json(v: &Value) -> Result<MaskJson, RleError> {
    match v {
        Value::Null => Ok(MaskJson::Null),
        Value::Object(o) => {
            if let Some(polys) = o.get("polygons") {
                let list = polys
                    .as_array()
                    .ok_or_else(|| RleError("`polygons` must be a list of [x, y, ...] lists".into()))?;
                let mut out = Vec::with_capacity(list.len());
                for (i, p) in list.iter().enumerate() {
                    let coords = p
                        .as_array()
                        .ok_or_else(|| RleError(format!("polygon {i} is not a list of numbers")))?;
                    let xy = coords
                        .iter()
                        .map(|c| {
                            c.as_f64()
                                .ok_or_else(|| RleError(format!("polygon {i} has a non-number {c}")))
                        })
                        .collect::<Result<Vec<f64>, _>>()?;
                    out.push(xy);
                }
                return Ok(MaskJson::Polygons(out));
            }
            let (Some(size), Some(counts)) = (o.get("size"), o.get("counts")) else {
                return Err(RleError(
                    "a mask must be an RLE {\"size\", \"counts\"}, {\"polygons\": [...]}, or null".into(),
                ));
            };
            let (h, w) = size_of(size)?;
            let rle = match counts {
                Value::String(s) => Rle::from_compressed(s, h, w)?,
                Value::Array(a) => {
                    let counts = a
                        .iter()
                        .map(|c| {
                            c.as_u64()
                                .and_then(|n| u32::try_from(n).ok())
                                .ok_or_else(|| RleError(format!("RLE count {c} is not a non-negative 32-bit integer")))
                        })
                        .collect::<Result<Vec<u32>, _>>()?;
                    Rle::from_counts(h, w, counts)?
                }
                other => {
                    return Err(RleError(format!(
                        "RLE `counts` must be a string or a list, not {other}"
                    )))
                }
            };
            Ok(MaskJson::Rle(rle))
        }
        other => Err(RleError(format!(
            "unsupported mask value {}",
            truncate(&other.to_string())
        ))),
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 60 {
        s.to_string()
    } else {
        let mut end = 60;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

impl MaskJson {
    /// The mask at image size h×w: `None` for `null`; polygons are rasterised and OR-ed;
    /// an RLE of another size is an error.
    pub fn resolve(&self, h: u32, w: u32) -> Result<Option<Rle>, RleError> {
        super::check_size(h, w)?;
        match self {
            MaskJson::Null => Ok(None),
            MaskJson::Rle(r) => {
                if r.size() != (h, w) {
                    return Err(RleError(format!(
                        "mask size {}x{} differs from the image size {h}x{w} (sizes are [height, width])",
                        r.height(),
                        r.width()
                    )));
                }
                Ok(Some(r.clone()))
            }
            MaskJson::Polygons(ps) => {
                if ps.is_empty() {
                    return Ok(Some(Rle::empty(h, w)));
                }
                let rles = ps
                    .iter()
                    .map(|p| from_polygon(p, h, w))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Some(Rle::union(&rles)?))
            }
        }
    }
}
