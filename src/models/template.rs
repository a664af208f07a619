//! Chat templates (Sa2VA's templates.py) and InternVL's image-token expansion.

/// One conversation template: how a user turn is wrapped and which strings end the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: &'static str,
    pub instruction: &'static str,
    pub stop_words: &'static [&'static str],
}

const TEMPLATES: &[Template] = &[
    Template {
        name: "qwen_chat",
        instruction: "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
        stop_words: &["<|im_end|>", "<|endoftext|>"],
    },
    Template {
        name: "internlm2_chat",
        instruction: "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
        stop_words: &["<|im_end|>"],
    },
    Template {
        name: "phi3_chat",
        instruction: "<|user|>\n{input}<|end|>\n<|assistant|>\n",
        stop_words: &["<|end|>"],
    },
];

impl Template {
    /// The template a config names; `-` and `_` are the same (Sa2VA's `template.replace('-', '_')`).
    pub fn by_name(name: &str) -> Option<&'static Template> {
        let name = name.replace('-', "_");
        TEMPLATES.iter().find(|t| t.name == name)
    }

    /// The single-turn prompt, without a system message (as Sa2VA's `predict_forward`).
    pub fn prompt(&self, input: &str) -> String {
        self.instruction.replace("{input}", input)
    }
}

pub const IMG_START: &str = "<img>";
pub const IMG_END: &str = "</img>";
pub const IMG_CONTEXT: &str = "<IMG_CONTEXT>";

/// Replace `<image>` by `<img>` + `<IMG_CONTEXT>`×n + `</img>` (Sa2VA strips the trailing
/// newline it adds for a single image).
pub fn expand_image(text: &str, n_image_tokens: usize) -> String {
    let img = format!("{IMG_START}{}{IMG_END}", IMG_CONTEXT.repeat(n_image_tokens));
    text.replace("<image>", &img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sa2va_prompt() {
        let t = Template::by_name("qwen_chat").unwrap();
        let p = t.prompt(&expand_image("<image>\nWhat is it?", 2));
        assert_eq!(
            p,
            "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(Template::by_name("vicuna").is_none());
    }
}
