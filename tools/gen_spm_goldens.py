#!/usr/bin/env python3
"""Goldens for perceptio's native SentencePiece reader (manual; never in CI).

    python3 -m venv /tmp/venv-tf457 && /tmp/venv-tf457/bin/pip install transformers==4.57.0 sentencepiece==0.2.0 protobuf
    /tmp/venv-tf457/bin/python tools/gen_spm_goldens.py [--real REAL_TOKENIZER_MODEL --real-out DIR]

Versions: Sa2VA pins transformers 4.57.0 (its `latest` extra; 4.49.0 for `legacy`) and its demo
sentencepiece 0.2.0; the slow tokenizer is Sa2VA's own `tokenization_internlm2.py` (the class its
checkpoints name, loaded with `use_fast=False`), read from the Sa2VA mirror. Run under transformers
4.49.0 (Sa2VA's `legacy` pin) the cases come out identical (checked once; only the recorded version differs).

1. Trains a small BPE model with the settings of InternLM2's real `tokenizer.model` (read from the
   copy in InternLM/InternEvo's `tools/tokenizer_internlm2.model`: model_type BPE, byte_fallback,
   split_digits, character_coverage 0.9999, normalizer `identity` without precompiled charsmap,
   add_dummy_prefix false, remove_extra_whitespaces false, escape_whitespaces true) on a synthetic
   multilingual corpus, then lays the pieces out as InternLM2's are: <unk> <s> </s>, the 256 byte
   pieces, the normal pieces, user-defined pieces last (fullwidth letters and [UNUSED_TOKEN_*], of
   which the last six are renamed by `added_tokens_decoder`, as in InternLM2). As in the real
   model it adds whitespace-only pieces (runs of ▁, \\n\\n, ▁\\n, \\t\\t, \\r\\n, ...) and gives some
   normal pieces the score of another one (InternLM2 has 2,353 such ties), which is where a
   converted `tokenizers` BPE and sentencepiece can part.
2. Writes fixtures/tokenizer/internlm2-spm/{tokenizer.model, tokenizer_config.json} (the
   InternLM2 config layout plus InternVL's and Sa2VA's added tokens) and
   fixtures/tokenizer/internlm2_spm_goldens.json.gz: for a few thousand generated strings, the ids
   of sentencepiece itself (`sp.encode`), of the slow tokenizer (`tok.encode`, with <s>), and the
   slow tokenizer's `decode` of those ids (skip_special_tokens=False, as Sa2VA decodes) with and
   without the leading <s>.
3. With --real, does the same for a real tokenizer.model (not committed; 1.4 MB) into --real-out,
   with the real InternLM2-chat added tokens and --real-strings strings (default 20,000), for
   tests/tokenizer.rs's opt-in real-vocabulary test (PERCEPTIO_SPM_REAL_DIR).
"""
import argparse
import gzip
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SA2VA_GIT = "/work/.mirror/bytedance+Sa2VA/repo"
SLOW_PATH = "projects/sa2va/hf/models/tokenization_internlm2.py"

INTERNLM2_SPECIAL = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>"]
INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
SA2VA_TOKENS = ["[SEG]", "<p>", "</p>", "<vp>", "</vp>"]


def slow_class():
    """InternLM2Tokenizer from Sa2VA's mirror (a temporary copy of the one file)."""
    src = subprocess.check_output(["git", f"--git-dir={SA2VA_GIT}", "show", f"HEAD:{SLOW_PATH}"])
    d = tempfile.mkdtemp()
    p = os.path.join(d, "tokenization_internlm2.py")
    with open(p, "wb") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("tokenization_internlm2", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.InternLM2Tokenizer.source_file = p
    return mod.InternLM2Tokenizer


WORDS_EN = ("the a cat dog sat on mat red cup left right image segment please describe what is there how many "
            "people person car table chair window light blue green small large first second answer question "
            "object region point box camera closer farther tokenizer sentence piece model byte fallback").split()
WORDS_ZH = "一只 猫 坐在 垫子 上 红色 杯子 左边 右边 图像 分割 请 描述 这张 图片 中 有 什么 多少 人 桌子 椅子 窗户".split()
WORDS_JA = "こんにちは 世界 猫 が 好き です 東京 タワー カメラ 写真".split()
WORDS_KO = "안녕하세요 고양이 사진 카메라 세계".split()
WORDS_RU = "привет мир кошка сидит на коврике красная чашка".split()
CODE = ["def f(x):\n    return x + 1\n", "if (a) {\n\tb();\n}\n", "for i in range(10):\n        print(i)\n",
        "    # comment\n", "\t\tint y = 42;\r\n", "x = [1, 2, 3]\n\n\n", "<div class=\"a\">b</div>\n"]


def corpus(rng, n=6000):
    lines = []
    for _ in range(n):
        k = rng.random()
        if k < 0.35:
            s = " ".join(rng.choice(WORDS_EN) for _ in range(rng.randint(3, 14)))
            s = s[0].upper() + s[1:] + rng.choice([".", "?", "!", ",", ""])
        elif k < 0.55:
            s = "".join(rng.choice(WORDS_ZH) for _ in range(rng.randint(2, 10))) + rng.choice(["。", "？", "，", ""])
        elif k < 0.62:
            s = "".join(rng.choice(WORDS_JA) for _ in range(rng.randint(2, 6)))
        elif k < 0.67:
            s = " ".join(rng.choice(WORDS_KO) for _ in range(rng.randint(2, 5)))
        elif k < 0.74:
            s = " ".join(rng.choice(WORDS_RU) for _ in range(rng.randint(2, 6)))
        elif k < 0.86:
            s = "".join(rng.choice(CODE) for _ in range(rng.randint(1, 3)))
        else:
            s = f"{rng.randint(0, 10**rng.randint(1, 9))} {rng.choice(WORDS_EN)} ({rng.random():.3f})"
        lines.append(s)
    return lines


def train(tmp, rng, vocab_size):
    lines = corpus(rng)
    # The trainer reads one sentence per line; code keeps its newlines as an escaped form, so
    # newline- and tab-bearing pieces are added afterwards as InternLM2's vocabulary has them.
    path = os.path.join(tmp, "corpus.txt")
    with open(path, "w") as f:
        for s in lines:
            f.write(s.replace("\r", " ").replace("\n", " ") + "\n")
    user = [chr(0xFF25 + i) for i in range(8)] + [f"[UNUSED_TOKEN_{i}]" for i in range(139, 147)]
    spm.SentencePieceTrainer.train(
        input=path, model_prefix=os.path.join(tmp, "m"), model_type="bpe", vocab_size=vocab_size,
        character_coverage=0.9999, split_digits=True, byte_fallback=True, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        user_defined_symbols=user, hard_vocab_limit=False, num_threads=1, seed_sentencepiece_size=100000,
        minloglevel=2)
    m = pb.ModelProto()
    with open(os.path.join(tmp, "m.model"), "rb") as f:
        m.ParseFromString(f.read())
    return m


def relayout(m, rng):
    """InternLM2's order (specials, bytes, normal pieces, user-defined last), extra whitespace
    pieces, and score ties between normal pieces."""
    P = pb.ModelProto.SentencePiece
    specials = [p for p in m.pieces if p.type in (P.UNKNOWN, P.CONTROL)]
    byte = [p for p in m.pieces if p.type == P.BYTE]
    normal = [p for p in m.pieces if p.type == P.NORMAL]
    user = [p for p in m.pieces if p.type == P.USER_DEFINED]
    have = {p.piece for p in normal}
    extra = ["▁▁", "▁▁▁▁", "▁▁▁", "▁▁▁▁▁▁▁▁", "\n\n", "▁\n", "\t\t", "\r\n", "\n\n\n", "▁▁▁▁\n", "\t\n",
             "\t\t\t\t", "▁▁▁▁▁▁", "\r\n\r\n", ".\n", ":\n", "▁▁▁▁▁▁▁▁\n", "。\n", "\n\n\n\n", "▁▁▁▁▁▁▁▁▁▁▁▁"]
    for e in ["\n", "\t", "\r"]:
        if e not in have:
            normal.insert(rng.randint(0, 40), P(piece=e, score=0.0, type=P.NORMAL))
            have.add(e)
    for e in extra:
        if e not in have:
            normal.insert(rng.randint(40, len(normal)), P(piece=e, score=0.0, type=P.NORMAL))
            have.add(e)
    for i, p in enumerate(normal):
        p.score = -float(i)
    # Ties: a piece in the upper half takes the score of one in the lower half.
    n = len(normal)
    for _ in range(n // 12):
        a, b = rng.randrange(n // 3, n), rng.randrange(40, n)
        normal[a].score = normal[b].score
    del m.pieces[:]
    m.pieces.extend(specials + byte + normal + user)
    # The trainer records its temporary paths; fixed names keep the file reproducible.
    del m.trainer_spec.input[:]
    m.trainer_spec.input.append("corpus.txt")
    m.trainer_spec.model_prefix = "m"
    return m


def added_decoder(n_vocab, extra):
    dec = {}
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    for i, c in [(0, "<unk>"), (1, "<s>"), (2, "</s>")]:
        dec[str(i)] = {"content": c, **flags}
    for k, c in enumerate(INTERNLM2_SPECIAL):
        dec[str(n_vocab - 6 + k)] = {"content": c, **flags}
    for k, c in enumerate(extra):
        dec[str(n_vocab + k)] = {"content": c, **flags}
    return dec


def write_config(dir_, n_vocab, extra):
    cfg = {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added_decoder(n_vocab, extra),
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>",
                                      "<|interpreter|>", "<|plugin|>"],
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>", "clean_up_tokenization_spaces": False, "decode_with_prefix_space": False,
        "eos_token": "</s>", "model_max_length": 8192, "pad_token": "</s>", "sp_model_kwargs": None,
        "tokenizer_class": "InternLM2Tokenizer", "unk_token": "<unk>",
    }
    with open(os.path.join(dir_, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)


FRAGMENTS = [
    " ", "  ", "   ", "    ", "        ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", " \n", "\n ", " \t ",
    "the", "The", " cat", "cat", " sat on the mat", "Please segment", " the red cup", ".", ",", "?", "!", " .",
    " 's", "n't", " ' ", "0", "7", "42", "2026", "3.14159", "1,234,567", "一只猫坐在垫子上", "猫", "红色杯子",
    "。", "？", "東京タワー", "こんにちは", "안녕하세요", "привет мир", "🙂", "🚀🚀", "👩‍👩‍👧", "é", "e\u0301",
    "ẞ", "𝔘𝔫𝔦", "\u0000", "\u00a0", "\u3000", "\ufeff", "\ufffd", "Ｅ", "ＦＧ", "Ｚ", "[UNUSED_TOKEN_143]",
    "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "<|action_start|>", "<|plugin|>", "<img>", "</img>",
    "<IMG_CONTEXT>", "[SEG]", "<p>", "</p>", "<vp>", "<ref>", "</box>", "<", ">", "|", "[", "]", "<|", "|>",
    "def f(x):\n    return x\n", "\tif (a) {\n\t\tb();\n\t}\n", "    ", "▁", "▁▁", "_", "__init__",
]


def gen_strings(rng, n, pieces):
    """The fixed cases, then alternately random fragment strings and concatenations of the
    model's own normal pieces (▁ as a space), which exercise merge order and score ties."""
    out = [
        "", " ", "  ", "\n", "hello", " hello", "hello ", "  hello  world  ", "Sure, [SEG].", "Sure, [SEG]",
        "It is [SEG] and [SEG].", "<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 16 + "</img>\nPlease segment the cat in this image.<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n<image>\nWhat is on the table?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>",
        "Sure, it is [SEG].<|im_end|>", "<s>", "<s><s>", "</s>", "a</s>b", "<unk>", "[UNUSED_TOKEN_146]", "Ｅ Ｆ",
        "1234567890", "  1  2  3  ", "\t\ttabs\t\t", "\r\n\r\n", "🙂", "a🙂b", "\u0000", "x\u00a0y",
    ]
    while len(out) < n:
        if len(out) % 2:
            out.append("".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 10))))
        else:
            out.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))).replace("\u2581", " "))
    return out


def normal_pieces(model_bytes):
    m = pb.ModelProto()
    m.ParseFromString(model_bytes)
    return [p.piece for p in m.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL]


def goldens(tok, sp, strings):
    cases = []
    for s in strings:
        ids = tok.encode(s)
        cases.append({
            "text": s,
            "sp": sp.encode(s),
            "ids": ids,
            "decoded": tok.decode(ids[1:] if ids[:1] == [tok.bos_token_id] else ids, skip_special_tokens=False),
            "decoded_bos": tok.decode(ids, skip_special_tokens=False),
        })
    return cases


def build(model_bytes, dir_, extra, strings, out_json, Slow):
    os.makedirs(dir_, exist_ok=True)
    with open(os.path.join(dir_, "tokenizer.model"), "wb") as f:
        f.write(model_bytes)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(dir_, "tokenizer.model"))
    write_config(dir_, sp.get_piece_size(), extra)
    # As Sa2VA loads it: AutoTokenizer.from_pretrained(dir, trust_remote_code=True, use_fast=False)
    # on a copy of the directory with Sa2VA's tokenization_internlm2.py beside it.
    from transformers import AutoTokenizer
    with tempfile.TemporaryDirectory() as t:
        for f in ["tokenizer.model", "tokenizer_config.json"]:
            shutil.copy(os.path.join(dir_, f), t)
        shutil.copy(Slow.source_file, os.path.join(t, "tokenization_internlm2.py"))
        tok = AutoTokenizer.from_pretrained(t, trust_remote_code=True, use_fast=False)
    assert type(tok).__name__ == "InternLM2Tokenizer", type(tok)
    assert tok.convert_tokens_to_ids("<|im_start|>") == sp.get_piece_size() - 1
    cases = goldens(tok, sp, strings)
    blob = json.dumps({"generator": "tools/gen_spm_goldens.py", "transformers": __import__("transformers").__version__,
                       "sentencepiece": spm.__version__, "vocab_size": sp.get_piece_size(),
                       "added": {c: tok.convert_tokens_to_ids(c) for c in INTERNLM2_SPECIAL + extra},
                       "cases": cases}, ensure_ascii=False).encode()
    with gzip.GzipFile(out_json, "wb", compresslevel=9, mtime=0) as f:
        f.write(blob)
    n_same = sum(c["ids"][1:] == c["sp"] for c in cases)
    print(f"{dir_}: vocab {sp.get_piece_size()}, {len(cases)} strings, slow ids = [bos] + sp ids on {n_same}, "
          f"model {len(model_bytes)} B, goldens {os.path.getsize(out_json)} B")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab-size", type=int, default=3000)
    ap.add_argument("--strings", type=int, default=3000)
    ap.add_argument("--real", help="a real InternLM2 tokenizer.model (goldens written to --real-out)")
    ap.add_argument("--real-out", default="/tmp/internlm2-real")
    ap.add_argument("--real-strings", type=int, default=20000)
    a = ap.parse_args()
    Slow = slow_class()
    rng = random.Random(15)
    with tempfile.TemporaryDirectory() as tmp:
        m = relayout(train(tmp, rng, a.vocab_size), rng)
    model = m.SerializeToString()
    strings = gen_strings(random.Random(1515), a.strings, normal_pieces(model))
    build(model, os.path.join(ROOT, "fixtures/tokenizer/internlm2-spm"), INTERNVL_TOKENS + SA2VA_TOKENS,
          strings, os.path.join(ROOT, "fixtures/tokenizer/internlm2_spm_goldens.json.gz"), Slow)
    if a.real:
        with open(a.real, "rb") as f:
            real = f.read()
        strings = gen_strings(random.Random(1516), a.real_strings, normal_pieces(real))
        build(real, a.real_out, INTERNVL_TOKENS + SA2VA_TOKENS, strings, os.path.join(a.real_out, "goldens.json.gz"), Slow)


if __name__ == "__main__":
    sys.exit(main())
