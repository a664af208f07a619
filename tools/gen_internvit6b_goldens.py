#!/usr/bin/env python3
"""Goldens for an InternViT-6B-style vision tower (Sa2VA-26B's), manual; never in CI.

    /work/venv-torch/bin/python tools/gen_internvit6b_goldens.py

Venv: torch 2.15 (CPU), transformers 5.24.0, timm 1.0.31, einops 0.8.2 (what
tools/gen_internvl_goldens.py uses). The model is Sa2VA's own `InternVisionModel`
(`projects/sa2va/hf/models/modeling_intern_vit.py` + `configuration_intern_vit.py`, read from the
Sa2VA mirror at its HEAD, nothing edited; no apex, so `InternRMSNorm` is the class's own), built
from a tiny config with InternViT-6B-448px-V2_5's switches: `norm_type: rms_norm`,
`qk_normalization: true` (RMSNorm over the whole width before the head split), `qkv_bias: false`,
`layer_norm_eps: 1e-6`, erf GELU, and an odd head count (3 heads of 16; the 6B has 25 of 128).
Every parameter is random (RMSNorm weights and ls1/ls2 too, so a wrong norm or scale shows), then
rounded to bf16 as the real checkpoints are stored; the goldens are computed in f32 from the
rounded weights.

Writes fixtures/internvl/internvit6b/: `config.json` (`InternVisionConfig.to_dict()`, the real key
names), `model.safetensors` (`vision_model.*`, as inside a Sa2VA-26B checkpoint, bf16) and
`goldens.safetensors` (`pixel_values` (2, 3, 42, 42) and `hidden_states.{k}` for k = 0..L:
embeddings, then each layer's output, as `output_hidden_states=True` returns them).
"""
import importlib
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "fixtures/internvl/internvit6b")
SA2VA_GIT = "/work/.mirror/bytedance+Sa2VA/repo"
FILES = ["modeling_intern_vit.py", "configuration_intern_vit.py"]


def load_reference():
    d = tempfile.mkdtemp()
    pkg = os.path.join(d, "sa2va_vit")
    os.makedirs(pkg)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    for f in FILES:
        src = subprocess.check_output(["git", f"--git-dir={SA2VA_GIT}", "show", f"HEAD:projects/sa2va/hf/models/{f}"])
        with open(os.path.join(pkg, f), "wb") as out:
            out.write(src)
    sys.path.insert(0, d)
    m = importlib.import_module("sa2va_vit.modeling_intern_vit")
    c = importlib.import_module("sa2va_vit.configuration_intern_vit")
    commit = subprocess.check_output(["git", f"--git-dir={SA2VA_GIT}", "rev-parse", "HEAD"]).decode().strip()
    return m, c, commit


def main():
    torch.manual_seed(26)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    m, c, commit = load_reference()
    cfg = c.InternVisionConfig(
        num_channels=3, patch_size=14, image_size=42, qkv_bias=False, hidden_size=48, num_attention_heads=3,
        intermediate_size=192, qk_normalization=True, num_hidden_layers=2, use_flash_attn=False, hidden_act="gelu",
        norm_type="rms_norm", layer_norm_eps=1e-6, dropout=0.0, drop_path_rate=0.0, attention_dropout=0.0,
        initializer_range=0.02, initializer_factor=0.1)
    model = m.InternVisionModel(cfg).eval()
    assert isinstance(model.encoder.layers[0].norm1, m.InternRMSNorm)
    assert model.encoder.layers[0].attn.qkv.bias is None
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "q_norm.weight", "k_norm.weight")):
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
            elif name.endswith(("ls1", "ls2")):
                p.copy_(0.5 + 0.5 * torch.rand_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    px = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        out = model(pixel_values=px, output_hidden_states=True, return_dict=True)
    hs = out.hidden_states
    assert torch.equal(hs[-1], out.last_hidden_state)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2, sort_keys=True)
    save_file({f"vision_model.{k}": v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()},
              os.path.join(OUT, "model.safetensors"), metadata={"format": "pt"})
    g = {"pixel_values": px.contiguous()}
    for k, h in enumerate(hs):
        g[f"hidden_states.{k}"] = h.contiguous()
    save_file(g, os.path.join(OUT, "goldens.safetensors"),
              metadata={"generator": "tools/gen_internvit6b_goldens.py", "sa2va_commit": commit,
                        "torch": torch.__version__})
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"{OUT}: {len(hs)} hidden states, max |h| {max(h.abs().max().item() for h in hs):.3f}, {total} bytes")


if __name__ == "__main__":
    main()
