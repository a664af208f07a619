//! Which files of a repo perceptio needs, plus user `--include`/`--exclude` globs
//! (fnmatch semantics as huggingface_hub's allow/ignore patterns: `*` also matches `/`).

/// Files every model directory may need besides weights.
const META_FILES: [&str; 14] = [
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
];

/// Weight formats used only when a repo has no safetensors (e.g. Meta's SAM2 `.pt`).
const FALLBACK_WEIGHTS: [&str; 3] = [".pt", ".pth", ".bin"];

/// fnmatch: `*` any run (including `/`), `?` one char, `[...]` a class (`[!...]` negated).
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(end) = p.iter().skip(1).position(|&c| c == ']').map(|e| e + 1) else {
                    return n.first() == Some(&'[') && go(&p[1..], &n[1..]);
                };
                let Some(&c) = n.first() else { return false };
                let class = &p[1..end];
                let (neg, class) = match class.first() {
                    Some('!') => (true, &class[1..]),
                    _ => (false, class),
                };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        hit |= class[i] <= c && c <= class[i + 2];
                        i += 3;
                    } else {
                        hit |= class[i] == c;
                        i += 1;
                    }
                }
                hit != neg && go(&p[end + 1..], &n[1..])
            }
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// Choose files from a repo listing. `shards` are the files a `model.safetensors.index.json`
/// names (when the repo has one and it was read).
pub fn select(files: &[String], shards: Option<&[String]>, include: &[String], exclude: &[String]) -> Vec<String> {
    let has = |f: &str| files.iter().any(|x| x == f);
    let mut out: Vec<String> = files
        .iter()
        .filter(|f| META_FILES.contains(&f.as_str()) || f.ends_with(".tiktoken"))
        .cloned()
        .collect();
    let safetensors: Vec<&String> = files.iter().filter(|f| f.ends_with(".safetensors")).collect();
    match shards {
        Some(s) => out.extend(s.iter().filter(|f| has(f)).cloned()),
        None if !safetensors.is_empty() => out.extend(safetensors.into_iter().cloned()),
        None => out.extend(
            files
                .iter()
                .filter(|f| FALLBACK_WEIGHTS.iter().any(|e| f.ends_with(e)))
                .cloned(),
        ),
    }
    out.extend(files.iter().filter(|f| include.iter().any(|g| fnmatch(g, f))).cloned());
    out.retain(|f| !exclude.iter().any(|g| fnmatch(g, f)));
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_like_python() {
        assert!(fnmatch("*.json", "config.json"));
        assert!(fnmatch("*.json", "sub/dir/x.json"));
        assert!(fnmatch(
            "model-0000?-of-*.safetensors",
            "model-00001-of-00002.safetensors"
        ));
        assert!(fnmatch("[a-c]*", "b.txt"));
        assert!(!fnmatch("[!a-c]*", "b.txt"));
        assert!(!fnmatch("*.bin", "model.safetensors"));
    }

    #[test]
    fn picks_index_shards_and_skips_duplicates() {
        let files: Vec<String> = [
            "config.json",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "stray.safetensors",
            "pytorch_model.bin",
            "README.md",
            "modeling_sa2va_chat.py",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let shards = vec![
            "model-00001-of-00002.safetensors".to_string(),
            "model-00002-of-00002.safetensors".to_string(),
        ];
        let got = select(&files, Some(&shards), &[], &[]);
        assert_eq!(
            got,
            vec![
                "config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json"
            ]
        );
        let got = select(&files, Some(&shards), &["*.py".into()], &["config.json".into()]);
        assert!(got.contains(&"modeling_sa2va_chat.py".to_string()) && !got.contains(&"config.json".to_string()));
        // .pt only when there are no safetensors at all
        let meta: Vec<String> = ["sam2.1_hiera_large.pt", "README.md"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(select(&meta, None, &[], &[]), vec!["sam2.1_hiera_large.pt"]);
    }
}
