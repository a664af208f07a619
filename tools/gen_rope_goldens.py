#!/usr/bin/env python3
"""RoPE goldens for InternLM2's scaled rotary embeddings, from the reference classes themselves.

The classes `InternLM2RotaryEmbedding`, `InternLM2LinearScalingRotaryEmbedding` and
`InternLM2DynamicNTKScalingRotaryEmbedding` are taken verbatim (by `ast`, so the rest of the
module and its transformers imports are not needed) from the `modeling_internlm2.py` that Sa2VA
ships (bytedance/Sa2VA `projects/sa2va/hf/models/modeling_internlm2.py`), and driven as
`InternLM2Attention.forward` drives them: one call per forward with `seq_len = kv_seq_len`
(cached + new positions), the rows of the new positions used.

Usage:
    python tools/gen_rope_goldens.py --source PATH/TO/modeling_internlm2.py [--out fixtures/internvl/rope_goldens.json]

Writes, per case, the cos/sin rows (float32 computed as the reference does) of every forward of a
simulated generation: a prefill that crosses `max_position_embeddings`, then single-token steps.
"""
import argparse
import ast
import json

import torch
from torch import nn


def load_classes(path):
    src = open(path).read()
    tree = ast.parse(src)
    keep = [n for n in tree.body if isinstance(n, ast.ClassDef) and "RotaryEmbedding" in n.name]
    mod = ast.Module(body=keep, type_ignores=[])
    ns = {"torch": torch, "nn": nn}
    exec(compile(mod, path, "exec"), ns)
    return ns


def run_case(cls, dim, max_pos, base, factor, prefill, steps):
    kw = {} if factor is None else {"scaling_factor": factor}
    rope = cls(dim, max_position_embeddings=max_pos, base=base, **kw)
    x = torch.zeros(1, 1, 1, dim)
    calls = []
    past = 0
    for n in [prefill] + [1] * steps:
        kv = past + n
        cos, sin = rope(x, seq_len=kv)
        calls.append({
            "offset": past,
            "len": n,
            # rows of the new positions; the reference's emb = cat(freqs, freqs): keep the first half
            "cos": cos[past:kv, : dim // 2].tolist(),
            "sin": sin[past:kv, : dim // 2].tolist(),
        })
        past = kv
    return calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", required=True)
    ap.add_argument("--out", default="fixtures/internvl/rope_goldens.json")
    a = ap.parse_args()
    ns = load_classes(a.source)
    torch.set_default_dtype(torch.float32)
    cases = []
    for name, cls, factor in [
        ("plain", ns["InternLM2RotaryEmbedding"], None),
        ("linear", ns["InternLM2LinearScalingRotaryEmbedding"], 2.0),
        ("dynamic", ns["InternLM2DynamicNTKScalingRotaryEmbedding"], 2.0),
    ]:
        # head_dim 16 as the tiny InternLM2 checkpoint; max 16 positions so a short prompt crosses it.
        cases.append({
            "name": name, "head_dim": 16, "max_position_embeddings": 16, "rope_theta": 1000000.0,
            "factor": factor, "calls": run_case(cls, 16, 16, 1000000.0, factor, prefill=20, steps=4),
        })
    json.dump({"source": "bytedance/Sa2VA projects/sa2va/hf/models/modeling_internlm2.py", "torch": torch.__version__,
               "cases": cases}, open(a.out, "w"))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
