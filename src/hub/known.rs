//! Model repos perceptio knows how to run, listed by `perceptio download --list` and README.md.

/// (repo id, role, note)
pub const KNOWN_REPOS: &[(&str, &str, &str)] = &[
    (
        "ByteDance/Sa2VA-1B",
        "full model",
        "targets the model the repo holds since Sept 2025: InternVL2.5-1B (InternViT-300M + Qwen2.5-0.5B) + SAM2-L; \
         default --model. The repo was replaced in place (before: InternVL2.0-1B + Qwen2-0.5B); that one runs with a \
         warning (told from the base names in config.json). No revision hash is pinned (none known from a source): \
         pass @REV or --revision for reproducible runs",
    ),
    (
        "ByteDance/Sa2VA-4B",
        "full model",
        "InternVL2.5-4B (Qwen2.5-3B) + SAM2-L; its config names template phi3_chat",
    ),
    (
        "ByteDance/Sa2VA-8B",
        "full model",
        "InternVL2.5-8B (InternLM2.5-7B) + SAM2-L; SentencePiece tokenizer.model read natively",
    ),
    (
        "ByteDance/Sa2VA-26B",
        "full model",
        "InternVL2.5-26B (InternViT-6B + InternLM2.5-20B) + SAM2-L; InternViT-6B checked on a tiny layout; SentencePiece tokenizer.model read natively",
    ),
    (
        "ByteDance/Sa2VA-InternVL3-2B",
        "full model",
        "InternVL3-2B (InternViT-300M + Qwen2.5-1.5B, untied lm_head) + SAM2-L; the 1B's code path, checked on a tiny InternVL3 layout",
    ),
    (
        "ByteDance/Sa2VA-InternVL3-8B",
        "full model",
        "InternVL3-8B (InternViT-300M + Qwen2.5-7B, untied lm_head) + SAM2-L; the 1B's code path, checked on a tiny InternVL3 layout",
    ),
    (
        "ByteDance/Sa2VA-InternVL3-14B",
        "full model",
        "InternVL3-14B (InternViT-300M + Qwen2.5-14B, untied lm_head) + SAM2-L; the 1B's code path, checked on a tiny InternVL3 layout",
    ),
    (
        "ByteDance/Sa2VA-Qwen2_5-VL-3B",
        "full model",
        "Qwen2.5-VL-3B (window attention, MRoPE) + SAM2-L; checked on a tiny layout against Sa2VA's predict_forward (transformers 4.57)",
    ),
    (
        "ByteDance/Sa2VA-Qwen2_5-VL-7B",
        "full model",
        "Qwen2.5-VL-7B (window attention, MRoPE) + SAM2-L; checked on a tiny layout against Sa2VA's predict_forward (transformers 4.57)",
    ),
    (
        "ByteDance/Sa2VA-Qwen3-VL-4B",
        "full model",
        "Qwen3-VL-4B (DeepStack, MRoPE) + SAM2-L; checked on a tiny layout against Sa2VA's predict_forward (transformers 4.57)",
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

#[cfg(test)]
mod tests {
    use super::KNOWN_REPOS;

    #[test]
    fn every_sa2va_zoo_checkpoint_is_listed_once() {
        for size in ["1B", "4B", "8B", "26B", "InternVL3-2B", "InternVL3-8B", "InternVL3-14B"] {
            let repo = format!("ByteDance/Sa2VA-{size}");
            assert_eq!(KNOWN_REPOS.iter().filter(|r| r.0 == repo).count(), 1, "{repo}");
        }
        for repo in [
            "ByteDance/Sa2VA-Qwen2_5-VL-3B",
            "ByteDance/Sa2VA-Qwen2_5-VL-7B",
            "ByteDance/Sa2VA-Qwen3-VL-4B",
        ] {
            assert_eq!(KNOWN_REPOS.iter().filter(|r| r.0 == repo).count(), 1, "{repo}");
        }
        // the 1B note says which of the two models under that name perceptio targets
        let one_b = KNOWN_REPOS.iter().find(|r| r.0 == "ByteDance/Sa2VA-1B").unwrap().2;
        assert!(
            one_b.contains("Qwen2.5-0.5B") && one_b.contains("--revision"),
            "{one_b}"
        );
    }
}
