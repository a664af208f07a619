//! Model repos perceptio knows how to run, listed by `perceptio download --list` and README.md.

/// (repo id, role, note)
pub const KNOWN_REPOS: &[(&str, &str, &str)] = &[
    (
        "ByteDance/Sa2VA-1B",
        "full model",
        "InternVL2.5-1B (InternViT-300M + Qwen2.5-0.5B) + SAM2-L; default --model",
    ),
    (
        "ByteDance/Sa2VA-4B",
        "full model",
        "InternVL2.5-4B (Qwen2.5-3B) + SAM2-L",
    ),
    (
        "ByteDance/Sa2VA-8B",
        "full model",
        "InternVL2.5-8B (InternLM2.5-7B) + SAM2-L",
    ),
    (
        "OpenGVLab/InternVL2_5-1B",
        "backbone",
        "InternViT-300M + Qwen2.5-0.5B-Instruct",
    ),
    (
        "OpenGVLab/InternVL2_5-2B",
        "backbone",
        "InternViT-300M + InternLM2.5-1.8B-chat",
    ),
    (
        "OpenGVLab/InternVL2_5-4B",
        "backbone",
        "InternViT-300M + Qwen2.5-3B-Instruct",
    ),
    (
        "OpenGVLab/InternVL2_5-8B",
        "backbone",
        "InternViT-300M + InternLM2.5-7B-chat",
    ),
    ("facebook/sam2.1-hiera-tiny", "SAM2", "Meta's .pt checkpoint"),
    ("facebook/sam2.1-hiera-small", "SAM2", "Meta's .pt checkpoint"),
    ("facebook/sam2.1-hiera-base-plus", "SAM2", "Meta's .pt checkpoint"),
    (
        "facebook/sam2.1-hiera-large",
        "SAM2",
        "Meta's .pt checkpoint (Sa2VA's grounding encoder)",
    ),
    (
        "depth-anything/Depth-Anything-V2-Small-hf",
        "depth teacher",
        "transformers layout, safetensors",
    ),
    (
        "depth-anything/Depth-Anything-V2-Base-hf",
        "depth teacher",
        "transformers layout, safetensors",
    ),
    (
        "depth-anything/Depth-Anything-V2-Large-hf",
        "depth teacher",
        "transformers layout, safetensors",
    ),
];
