//! `config.json` of a transformers Depth Anything checkpoint (`model_type: "depth_anything"`,
//! `DepthAnythingConfig` + its DINOv2 `backbone_config`). Defaults are transformers' own, so the
//! hub configs (which omit e.g. `num_hidden_layers`) read as transformers reads them.

/// `backbone_config` (a `Dinov2Config`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BackboneConfig {
    #[serde(default = "dinov2")]
    pub model_type: String,
    #[serde(default = "d768")]
    pub hidden_size: usize,
    #[serde(default = "d12")]
    pub num_hidden_layers: usize,
    #[serde(default = "d12")]
    pub num_attention_heads: usize,
    #[serde(default = "d4")]
    pub mlp_ratio: f64,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d224")]
    pub image_size: usize,
    #[serde(default = "d14")]
    pub patch_size: usize,
    #[serde(default = "d3")]
    pub num_channels: usize,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    #[serde(default)]
    pub use_swiglu_ffn: bool,
    #[serde(default = "yes")]
    pub apply_layernorm: bool,
    #[serde(default)]
    pub out_indices: Option<Vec<i64>>,
    #[serde(default)]
    pub out_features: Option<Vec<String>>,
}

/// `DepthAnythingConfig`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Config {
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default = "small_backbone")]
    pub backbone_config: BackboneConfig,
    #[serde(default = "d14")]
    pub patch_size: usize,
    #[serde(default = "d384")]
    pub reassemble_hidden_size: usize,
    #[serde(default = "factors")]
    pub reassemble_factors: Vec<f64>,
    #[serde(default = "neck")]
    pub neck_hidden_sizes: Vec<usize>,
    #[serde(default = "d64")]
    pub fusion_hidden_size: usize,
    #[serde(default = "minus1")]
    pub head_in_index: i64,
    #[serde(default = "d32")]
    pub head_hidden_size: usize,
    #[serde(default = "relative")]
    pub depth_estimation_type: String,
    /// transformers multiplies the head's output by this for both types (default 1; a `null`
    /// reads as 1, as transformers 4.x stored it).
    #[serde(default)]
    pub max_depth: Option<f64>,
}

fn dinov2() -> String {
    "dinov2".into()
}
fn d768() -> usize {
    768
}
fn d12() -> usize {
    12
}
fn d4() -> f64 {
    4.0
}
fn gelu() -> String {
    "gelu".into()
}
fn eps() -> f64 {
    1e-6
}
fn d224() -> usize {
    224
}
fn d14() -> usize {
    14
}
fn d3() -> usize {
    3
}
fn yes() -> bool {
    true
}
fn d384() -> usize {
    384
}
fn d64() -> usize {
    64
}
fn d32() -> usize {
    32
}
fn minus1() -> i64 {
    -1
}
fn relative() -> String {
    "relative".into()
}
fn factors() -> Vec<f64> {
    vec![4.0, 2.0, 1.0, 0.5]
}
fn neck() -> Vec<usize> {
    vec![48, 96, 192, 384]
}

/// `DepthAnythingConfig`'s default backbone (DA-Small's DINOv2 ViT-S/14 at 518).
fn small_backbone() -> BackboneConfig {
    BackboneConfig {
        model_type: dinov2(),
        hidden_size: 384,
        num_hidden_layers: 12,
        num_attention_heads: 6,
        mlp_ratio: 4.0,
        hidden_act: gelu(),
        layer_norm_eps: eps(),
        image_size: 518,
        patch_size: 14,
        num_channels: 3,
        qkv_bias: true,
        use_swiglu_ffn: false,
        apply_layernorm: true,
        out_indices: Some(vec![9, 10, 11, 12]),
        out_features: None,
    }
}

impl BackboneConfig {
    /// `out_indices` into `hidden_states` (0 = embeddings, k = after layer k), from `out_indices`
    /// or `out_features` ("stem", "stageN"); negative indices count from the end as in Python.
    pub fn resolved_out_indices(&self) -> Result<Vec<usize>, String> {
        let n = self.num_hidden_layers as i64 + 1;
        if let Some(idx) = &self.out_indices {
            return idx
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + n } else { i };
                    if (0..n).contains(&j) {
                        Ok(j as usize)
                    } else {
                        Err(format!("backbone_config.out_indices has {i}, outside 0..={}", n - 1))
                    }
                })
                .collect();
        }
        if let Some(f) = &self.out_features {
            return f
                .iter()
                .map(|s| match s.as_str() {
                    "stem" => Ok(0),
                    _ => s
                        .strip_prefix("stage")
                        .and_then(|k| k.parse::<usize>().ok())
                        .filter(|&k| k >= 1 && (k as i64) < n)
                        .ok_or_else(|| {
                            format!(
                                "backbone_config.out_features has {s:?}, not stem or stage1..stage{}",
                                n - 1
                            )
                        }),
                })
                .collect();
        }
        Ok(vec![self.num_hidden_layers])
    }

    /// `int(hidden_size * mlp_ratio)`.
    pub fn intermediate_size(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }
}

impl Config {
    /// The factor by which the head's activation is multiplied.
    pub fn max_depth(&self) -> f64 {
        self.max_depth.unwrap_or(1.0)
    }

    /// Everything transformers would refuse (or crash on) and everything this port does not do,
    /// as one message.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(t) = &self.model_type {
            if t != "depth_anything" {
                return Err(format!("model_type is {t:?}, expected \"depth_anything\""));
            }
        }
        let b = &self.backbone_config;
        if b.model_type != "dinov2" {
            return Err(format!(
                "backbone_config.model_type {:?} is not supported (only dinov2)",
                b.model_type
            ));
        }
        if b.use_swiglu_ffn {
            return Err("backbone_config.use_swiglu_ffn (DINOv2 giant) is not supported".into());
        }
        if !matches!(
            b.hidden_act.as_str(),
            "gelu" | "gelu_pytorch_tanh" | "gelu_new" | "relu"
        ) {
            return Err(format!(
                "backbone_config.hidden_act {:?} is not supported",
                b.hidden_act
            ));
        }
        if b.num_attention_heads == 0 || !b.hidden_size.is_multiple_of(b.num_attention_heads) {
            return Err(format!(
                "backbone_config.hidden_size {} is not a multiple of num_attention_heads {}",
                b.hidden_size, b.num_attention_heads
            ));
        }
        if b.patch_size == 0 || self.patch_size == 0 || b.num_channels != 3 {
            return Err("patch sizes must be positive and num_channels 3".into());
        }
        if !["relative", "metric"].contains(&self.depth_estimation_type.as_str()) {
            return Err(format!(
                "depth_estimation_type must be relative or metric, got {:?}",
                self.depth_estimation_type
            ));
        }
        let outs = b.resolved_out_indices()?;
        let n = self.neck_hidden_sizes.len();
        if n == 0 || outs.len() != n || self.reassemble_factors.len() != n {
            return Err(format!(
                "the backbone gives {} feature maps, neck_hidden_sizes has {n}, reassemble_factors {}: they must agree",
                outs.len(),
                self.reassemble_factors.len()
            ));
        }
        for &f in &self.reassemble_factors {
            let ok = if f > 1.0 {
                f.fract() == 0.0
            } else {
                f == 1.0 || (f > 0.0 && (1.0 / f).fract() == 0.0)
            };
            if !ok {
                return Err(format!("reassemble factor {f} is not an integer or the inverse of one"));
            }
        }
        if self.head_in_index >= n as i64 || self.head_in_index < -(n as i64) {
            return Err(format!(
                "head_in_index {} is out of range for {n} fused maps",
                self.head_in_index
            ));
        }
        if self.fusion_hidden_size < 2 {
            return Err("fusion_hidden_size must be at least 2".into());
        }
        Ok(())
    }
}
