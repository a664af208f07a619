//! The VQ-VAE's geometry and the checkpoint shapes it implies (AURORA's defaults).

use serde::{Deserialize, Serialize};

/// VQ-VAE geometry; every default is AURORA's (`ait_depth_vqvae.py`, `get_codes.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Square input side the codes were trained at (AURORA resizes every map to 320²).
    pub image_size: usize,
    /// Input/output channels (1: a grayscale depth map).
    pub channels: usize,
    /// Codebook entries, i.e. the number of `<DEPTH_k>` tokens.
    pub num_tokens: usize,
    /// Width of a codebook vector.
    pub codebook_dim: usize,
    /// Channels after the first conv; doubles at every further downsampling.
    pub hidden_dim: usize,
    /// ResBlocks after the encoder's last downsampling and after the decoder's 1×1 input conv.
    pub num_resnet_blocks: usize,
    /// Total stride of the encoder (a power of two); 320/32 = the 10×10 code grid.
    pub downsample_ratio: usize,
    /// The reference's `residul_type`; only `v1` (conv3-ReLU-conv3-ReLU-conv1 + skip) is
    /// implemented (`v2` has BatchNorm and no AURORA checkpoint uses it).
    #[serde(alias = "residul_type")]
    pub residual_type: String,
    /// EMA quantiser (codebook in the buffer `_vq_vae._embedding`) when > 0, as AURORA trains.
    pub ema_decay: f64,
    /// When true the model maps inputs with `2·(x/max_value − 0.5)` and outputs back (AiT's
    /// `norm`/`denorm`); AURORA sets it false: its inputs are already in [−1, 1].
    pub use_norm: bool,
    /// Scale of `use_norm` (unused by AURORA, whose config says 10).
    pub max_value: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image_size: 320,
            channels: 1,
            num_tokens: 128,
            codebook_dim: 512,
            hidden_dim: 16,
            num_resnet_blocks: 2,
            downsample_ratio: 32,
            residual_type: "v1".into(),
            ema_decay: 0.99,
            use_norm: false,
            max_value: 10.0,
        }
    }
}

impl Config {
    /// Downsamplings after the first conv: `log2(downsample_ratio) − 1` (4 for AURORA).
    pub fn layer_num(&self) -> usize {
        (self.downsample_ratio.trailing_zeros() as usize).saturating_sub(1)
    }

    /// Code grid (rows, cols) for an `image_size`² input: (10, 10) for AURORA.
    pub fn grid(&self) -> (usize, usize) {
        let g = self.image_size / self.downsample_ratio;
        (g, g)
    }

    /// Reject geometries the reference cannot build or this port does not implement.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::Usage(format!("vqvae config: {m}")));
        if self.downsample_ratio < 2 || !self.downsample_ratio.is_power_of_two() {
            return bad(format!(
                "downsample_ratio must be a power of two >= 2, got {}",
                self.downsample_ratio
            ));
        }
        if self.image_size == 0 || !self.image_size.is_multiple_of(self.downsample_ratio) {
            return bad(format!(
                "image_size {} is not a positive multiple of downsample_ratio {}",
                self.image_size, self.downsample_ratio
            ));
        }
        if self.channels == 0 || self.num_tokens == 0 || self.codebook_dim == 0 || self.hidden_dim == 0 {
            return bad("channels, num_tokens, codebook_dim and hidden_dim must be positive".into());
        }
        if self.hidden_dim.checked_mul(self.downsample_ratio).is_none() {
            return bad("hidden_dim × downsample_ratio overflows".into());
        }
        if self.residual_type != "v1" {
            return bad(format!(
                "residual_type {:?} is not supported (only \"v1\")",
                self.residual_type
            ));
        }
        if self.use_norm && !(self.max_value.is_finite() && self.max_value != 0.0) {
            return bad("use_norm needs a finite non-zero max_value".into());
        }
        Ok(())
    }

    /// Every tensor the reference's `state_dict()` holds for this config, with its shape (the
    /// EMA buffers included); used to explain a checkpoint that does not fit.
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = Vec::new();
        let mut conv = |name: String, o: usize, i: usize, k: usize| {
            v.push((format!("{name}.weight"), vec![o, i, k, k]));
            v.push((format!("{name}.bias"), vec![o]));
        };
        let (mut dim, mut idx) = (self.hidden_dim, 0);
        conv(format!("encoder.{idx}"), dim, self.channels, 4);
        idx += 2;
        for _ in 0..self.layer_num() {
            conv(format!("encoder.{idx}"), dim * 2, dim, 4);
            dim *= 2;
            idx += 2;
        }
        let res = |conv: &mut dyn FnMut(String, usize, usize, usize), p: String, c: usize| {
            conv(format!("{p}.net.0"), c, c, 3);
            conv(format!("{p}.net.2"), c, c, 3);
            conv(format!("{p}.net.4"), c, c, 1);
        };
        for _ in 0..self.num_resnet_blocks {
            res(&mut conv, format!("encoder.{idx}"), dim);
            idx += 1;
        }
        conv(format!("encoder.{idx}"), self.codebook_dim, dim, 1);
        let mut dim = self.hidden_dim * self.downsample_ratio / 2;
        conv("decoder.0".into(), dim, self.codebook_dim, 1);
        let mut idx = 2;
        for _ in 0..self.num_resnet_blocks {
            res(&mut conv, format!("decoder.{idx}"), dim);
            idx += 1;
        }
        // ConvTranspose2d weights are (in, out, k, k).
        let mut convt = |name: String, i: usize, o: usize| {
            v.push((format!("{name}.weight"), vec![i, o, 4, 4]));
            v.push((format!("{name}.bias"), vec![o]));
        };
        convt(format!("decoder.{idx}"), dim, dim);
        idx += 2;
        for _ in 0..self.layer_num() {
            convt(format!("decoder.{idx}"), dim, dim / 2);
            dim /= 2;
            idx += 2;
        }
        v.push((format!("decoder.{idx}.weight"), vec![self.channels, dim, 1, 1]));
        v.push((format!("decoder.{idx}.bias"), vec![self.channels]));
        if self.ema_decay > 0.0 {
            v.push(("_vq_vae._embedding".into(), vec![self.num_tokens, self.codebook_dim]));
            v.push(("_vq_vae._ema_cluster_size".into(), vec![self.num_tokens]));
            v.push(("_vq_vae._ema_w".into(), vec![self.num_tokens, self.codebook_dim]));
        } else {
            v.push((
                "_vq_vae._embedding.weight".into(),
                vec![self.num_tokens, self.codebook_dim],
            ));
        }
        v
    }
}
