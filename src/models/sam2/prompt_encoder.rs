//! SAM2's prompt encoder (`sam_prompt_encoder.*`): random-Fourier positional encoding of
//! points and box corners, learned point-type embeddings, `not_a_point_embed` for padding,
//! and the `no_mask_embed` dense prompt. Mask prompts are not supported yet.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Point labels as SAM2 uses them.
pub const LABEL_PAD: i64 = -1;
pub const LABEL_NEG: i64 = 0;
pub const LABEL_POS: i64 = 1;

#[derive(Debug, Clone)]
pub struct PromptEncoder {
    gaussian: Tensor, // (2, C/2)
    point_embeddings: [Tensor; 4],
    not_a_point: Tensor,
    no_mask: Tensor,
    embed_dim: usize,
    /// (H, W) of the image embedding (64×64 for 1024 input).
    pub embedding_size: (usize, usize),
    /// (H, W) of the encoder input (1024×1024).
    pub input_size: (usize, usize),
    dense_pe: std::sync::OnceLock<Tensor>,
    span: tracing::Span,
}

impl PromptEncoder {
    pub fn new(
        embed_dim: usize,
        embedding_size: (usize, usize),
        input_size: (usize, usize),
        vb: VarBuilder,
    ) -> Result<Self> {
        let e = |name: &str| vb.pp(name).get((1, embed_dim), "weight");
        Ok(Self {
            gaussian: vb.get((2, embed_dim / 2), "pe_layer.positional_encoding_gaussian_matrix")?,
            point_embeddings: [
                e("point_embeddings.0")?,
                e("point_embeddings.1")?,
                e("point_embeddings.2")?,
                e("point_embeddings.3")?,
            ],
            not_a_point: e("not_a_point_embed")?,
            no_mask: e("no_mask_embed")?,
            embed_dim,
            embedding_size,
            input_size,
            dense_pe: std::sync::OnceLock::new(),
            span: tracing::span!(tracing::Level::TRACE, "sam2-prompt-encoder"),
        })
    }

    /// sin/cos of 2π·(2c−1)·G for coordinates normalised to [0, 1]: (…, 2) → (…, C).
    fn pe_encoding(&self, coords: &Tensor) -> Result<Tensor> {
        let c = ((coords * 2.0)? - 1.0)?;
        let c = c.broadcast_matmul(&self.gaussian.to_dtype(c.dtype())?)?;
        let c = (c * (2.0 * std::f64::consts::PI))?;
        Tensor::cat(&[c.sin()?, c.cos()?], D::Minus1)
    }

    /// Encode pixel coordinates (b, n, 2) in the encoder's input frame.
    fn pe_with_coords(&self, coords: &Tensor) -> Result<Tensor> {
        let (h, w) = self.input_size;
        let scale = Tensor::new(&[1.0 / w as f32, 1.0 / h as f32], coords.device())?.to_dtype(coords.dtype())?;
        self.pe_encoding(&coords.broadcast_mul(&scale)?)
    }

    /// Dense positional encoding of the embedding grid, (1, C, H, W) (computed once).
    pub fn dense_pe(&self) -> Result<Tensor> {
        if let Some(t) = self.dense_pe.get() {
            return Ok(t.clone());
        }
        let t = self.compute_dense_pe()?;
        Ok(self.dense_pe.get_or_init(|| t).clone())
    }

    fn compute_dense_pe(&self) -> Result<Tensor> {
        let (h, w) = self.embedding_size;
        let dev = self.gaussian.device();
        let mut xy = Vec::with_capacity(h * w * 2);
        for y in 0..h {
            for x in 0..w {
                xy.push((x as f32 + 0.5) / w as f32);
                xy.push((y as f32 + 0.5) / h as f32);
            }
        }
        let grid = Tensor::from_vec(xy, (h, w, 2), dev)?;
        self.pe_encoding(&grid)?.permute((2, 0, 1))?.unsqueeze(0)
    }

    /// Sparse tokens for points (coords (b, n, 2) in input pixels, labels (b, n)) and/or a box
    /// (b, 4) as x0, y0, x1, y1. Points get a padding point when there is no box, as in SAM2.
    pub fn sparse(&self, points: Option<(&Tensor, &[i64])>, boxes: Option<&Tensor>) -> Result<Tensor> {
        let _g = self.span.enter();
        let mut parts = Vec::new();
        if let Some((coords, labels)) = points {
            let (b, _, _) = coords.dims3()?;
            let mut coords = (coords + 0.5)?;
            let mut labels = labels.to_vec();
            if boxes.is_none() {
                coords = Tensor::cat(
                    &[&coords, &Tensor::zeros((b, 1, 2), coords.dtype(), coords.device())?],
                    1,
                )?;
                labels.push(LABEL_PAD);
            }
            let pe = self.pe_with_coords(&coords)?; // (b, n', C)
            let mut rows = Vec::with_capacity(labels.len());
            for (i, &l) in labels.iter().enumerate() {
                let r = pe.narrow(1, i, 1)?;
                let r = match l {
                    LABEL_PAD => self
                        .not_a_point
                        .to_dtype(r.dtype())?
                        .unsqueeze(0)?
                        .expand((b, 1, self.embed_dim))?,
                    0..=3 => r.broadcast_add(&self.point_embeddings[l as usize].to_dtype(r.dtype())?)?,
                    other => candle_core::bail!("invalid point label {other} (expected -1, 0, 1, 2 or 3)"),
                };
                rows.push(r);
            }
            parts.push(Tensor::cat(&rows, 1)?);
        }
        if let Some(bx) = boxes {
            let b = bx.dim(0)?;
            let corners = (bx + 0.5)?.reshape((b, 2, 2))?;
            let pe = self.pe_with_coords(&corners)?;
            let c0 = pe
                .narrow(1, 0, 1)?
                .broadcast_add(&self.point_embeddings[2].to_dtype(pe.dtype())?)?;
            let c1 = pe
                .narrow(1, 1, 1)?
                .broadcast_add(&self.point_embeddings[3].to_dtype(pe.dtype())?)?;
            parts.push(Tensor::cat(&[c0, c1], 1)?);
        }
        if parts.is_empty() {
            return Tensor::zeros((1, 0, self.embed_dim), DType::F32, self.gaussian.device());
        }
        Tensor::cat(&parts, 1)
    }

    /// The dense prompt without a mask: `no_mask_embed` over the embedding grid, (b, C, H, W).
    pub fn dense_no_mask(&self, b: usize) -> Result<Tensor> {
        let (h, w) = self.embedding_size;
        self.no_mask
            .reshape((1, self.embed_dim, 1, 1))?
            .expand((b, self.embed_dim, h, w))
    }
}
