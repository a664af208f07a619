//! The one depth-map type: what Depth Anything predicts, what the VQ-VAE decodes, what depth
//! PNGs hold, and what the writers in `render::depth` take. No candle here.

/// What the values of a [`DepthMap`] mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthScale {
    /// AURORA's [0, 1] disparity scale (brighter = nearer): the model's decoded maps.
    Unit,
    /// Any float disparity-like map (Depth Anything's relative inverse depth, a 16-bit PNG as
    /// v/65535, a disparity file); NaN/±inf mark missing values.
    Float,
    /// Integer values 0‥255 of an 8-bit map already in AURORA's convention (a Depth Anything
    /// `--grayscale` PNG): AURORA's VQ-VAE input as is.
    Gray8,
}

/// A single-channel depth map, row-major (`data[y·width + x]`).
#[derive(Debug, Clone, PartialEq)]
pub struct DepthMap {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
    pub scale: DepthScale,
}

impl DepthMap {
    pub fn new(width: usize, height: usize, data: Vec<f32>, scale: DepthScale) -> Self {
        Self {
            width,
            height,
            data,
            scale,
        }
    }

    /// (min, max) of the finite values (±inf when there is none).
    pub fn range(&self) -> (f32, f32) {
        self.data
            .iter()
            .filter(|v| v.is_finite())
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)))
    }

    /// The map in [0, 1] for the image writers: a `Unit` map as is, an 8-bit map as v/255,
    /// any other min-max scaled (a constant map and missing values become 0).
    pub fn to_unit(&self) -> Vec<f32> {
        match self.scale {
            DepthScale::Unit => self.data.clone(),
            DepthScale::Gray8 => self.data.iter().map(|v| v / 255.0).collect(),
            DepthScale::Float => {
                let (lo, hi) = self.range();
                let s = if hi > lo { 1.0 / (hi - lo) } else { 0.0 };
                self.data
                    .iter()
                    .map(|&v| if v.is_finite() { (v - lo) * s } else { 0.0 })
                    .collect()
            }
        }
    }
}
