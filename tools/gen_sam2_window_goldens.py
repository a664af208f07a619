#!/usr/bin/env python3
"""Window-padding goldens for the Hiera trunk: the committed tiny SAM2 weights with a different window_spec.

The tiny fixture (tools/gen_sam2_goldens.py) uses window_spec [8,4,4,2], which divides every grid (256/128/64/32),
so `window_partition` never pads. This script loads the SAME `fixtures/sam2/tiny_sam2.pt` (strict load; no
parameter shape depends on the windows except pos_embed_window, which is window_spec[0]=8 and stays 8) into a
model built exactly like gen_sam2_goldens.py but with trunk window_spec [8,6,14,7] and global_att_blocks []
(see WINDOW_SPEC / GLOBAL_ATT below for why not [2]), runs Meta's image path on fixtures/images/chelsea.png
and writes spot checks to fixtures/sam2/goldens_windows.safetensors.

Per-block window sizes (they lag a block: the first block of a stage uses the previous stage's last window):
    block:   0      1 (q-pool)   2 (q-pool)   3       4 (q-pool)
    grid:    256    256->128     128->64      64      64->32
    window:  8      8 (->4)      6 (->3)      14      14 (->7)
    pad:     -      -            128->132,    64->70  64->70,
                                 pooled 64->66        pooled 32->35
(window_spec[3]=7 is never used: stage 4 has a single block, which still uses stage 3's window.)
The script wraps hieradet.window_partition / window_unpartition and prints (and asserts) the padding.

Usage (from repo root; same venv/packages as gen_sam2_goldens.py):
    /work/venv-torch/bin/python tools/gen_sam2_window_goldens.py [--check-only]
"""
import argparse, json, os, sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_sam2_goldens as gen  # noqa: E402  (build/encode/decode/Store are reused verbatim)
import sam2.modeling.backbones.hieradet as hieradet  # noqa: E402
from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402

WINDOW_SPEC = [8, 6, 14, 7]
# Not [2]: block 2 is the q-pooled first block of stage 3 (the one that runs window 6 on the 128 grid ->
# pooled window 3 on the 64 grid, padding 64->66). Making it global would remove that case. With [] every
# padding case (q-pooled 128->132/66, plain 64->70, q-pooled 64->70/35) is exercised; global attention is
# already covered by the main goldens (block 3).
GLOBAL_ATT = []
# (H, W, window) -> pad seen by window_partition; unpartition gets (window, padded hw, hw)
EXPECTED_PART = [(256, 256, 8, 256), (256, 256, 8, 256), (128, 128, 6, 132), (64, 64, 14, 70), (64, 64, 14, 70)]
EXPECTED_UNPART = [(8, 256, 256), (4, 128, 128), (3, 66, 64), (14, 70, 64), (7, 35, 32)]
CONFIG_BLOCK = {"trunk": {"num_heads": 1, "global_att_blocks": GLOBAL_ATT, "window_spec": WINDOW_SPEC},
                "decoder": {"num_heads": 2}}

LOG = {"part": [], "unpart": []}
_part, _unpart = hieradet.window_partition, hieradet.window_unpartition


def _log_part(x, ws):
    out, (hp, wp) = _part(x, ws)
    H, W = x.shape[1:3]
    LOG["part"].append((H, W, ws, hp))
    print(f"  window_partition: grid {H}x{W} window {ws} -> padded {hp}x{wp}" + ("  (PADDED)" if (hp, wp) != (H, W) else ""))
    return out, (hp, wp)


def _log_unpart(windows, ws, pad_hw, hw):
    LOG["unpart"].append((ws, pad_hw[0], hw[0]))
    print(f"  window_unpartition: window {ws} padded {pad_hw[0]}x{pad_hw[1]} -> crop {hw[0]}x{hw[1]}"
          + ("  (PADDED)" if tuple(pad_hw) != tuple(hw) else ""))
    return _unpart(windows, ws, pad_hw, hw)


hieradet.window_partition, hieradet.window_unpartition = _log_part, _log_unpart


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fixtures/sam2")
    ap.add_argument("--image", default="fixtures/images/chelsea.png")
    ap.add_argument("--check-only", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    gen.WINDOW_SPEC, gen.GLOBAL_ATT = WINDOW_SPEC, GLOBAL_ATT
    model, _ = gen.build()
    ck = torch.load(os.path.join(a.out, "tiny_sam2.pt"), map_location="cpu", weights_only=True)["model"]
    missing, unexpected = model.load_state_dict(ck)  # strict
    assert not missing and not unexpected
    model.eval()
    t = model.image_encoder.trunk
    per_block = [{"window_size": b.window_size, "q_pool": b.pool is not None, "dim_out": b.dim_out,
                  "heads": b.attn.num_heads} for b in t.blocks]
    print("trunk.window_spec", list(t.window_spec), "global_att_blocks", list(t.global_att_blocks))
    print("per-block:", per_block)

    st = gen.Store()
    pil = Image.open(a.image).convert("RGB")
    pred = SAM2ImagePredictor(model)
    with torch.no_grad():
        x = pred._transforms(pil)[None]
        assert x.shape == (1, 3, 1024, 1024)
        print("forward_image:")
        feats, _, _ = gen.encode(model, x)
        assert LOG["part"] == EXPECTED_PART, LOG["part"]
        assert LOG["unpart"] == EXPECTED_UNPART, LOG["unpart"]
        LOG["part"].clear(); LOG["unpart"].clear()
        pred.set_image(pil)  # the predictor's own path must give the same features
        assert torch.equal(feats[-1], pred._features["image_embed"])
        for f0, f1 in zip(feats[:-1], pred._features["high_res_feats"]):
            assert torch.equal(f0, f1)
        for nm, f in zip(["high_res_feat0", "high_res_feat1", "image_embed"], feats):
            st.spot("win." + nm, f, f"{nm} {list(f.shape)} with window_spec {WINDOW_SPEC} (after "
                    "_prepare_backbone_features; image_embed has no_mem_embed added)")
        # extra: bottom-right corner of the 64x64 level, inside the windows that were padded (56:64 of 0:70)
        st.put("win.image_embed.crop_br", feats[-1][0, :, 56:64, 56:64], "image_embed[0, :, 56:64, 56:64] (padded windows)")
        _, uc, lab, _ = pred._prep_prompts(np.array([[225.0, 150.0]]), np.array([1]), None, None, True)
        _, _, low, iou, _, obj = gen.decode(model, feats, uc, lab, True)
        _, iou2, low2 = pred._predict(uc, lab, None, None, multimask_output=True, return_logits=True)
        assert torch.equal(iou2, iou) and torch.equal(low2, low.clamp(-32, 32))
        st.put("win.point.multi.iou", iou, "point (225,150) label 1 multimask iou_predictions (sigmoid)")
        st.put("win.point.multi.obj_score", obj, "point multimask object_score_logits")
        st.put("win.point.multi.low_res_masks.crop_c", low[0, :, 112:144, 112:144],
               "point multimask raw (unclamped) low_res_masks[0, :, 112:144, 112:144]")

    # the reference goldens (no padding) must share the high-res levels (blocks 0,1 unchanged, no FPN top-down
    # into levels 0/1) and differ at the 64x64 level
    ref = load_file(os.path.join(a.out, "goldens.safetensors"))
    for nm in ["high_res_feat0", "high_res_feat1"]:
        assert torch.equal(ref[f"sam2tf.{nm}.ch_sum"], st.t[f"win.{nm}.ch_sum"]), nm
    d = (ref["sam2tf.image_embed.crop_c"] - st.t["win.image_embed.crop_c"]).abs().max().item()
    print(f"image_embed crop_c max |diff| vs unpadded goldens: {d:.4g}")
    assert d > 1e-3
    summary = {"iou": iou[0].tolist(), "obj_score": obj[0].tolist(),
               "frac_gt0": [float((low[0, i] > 0).float().mean()) for i in range(low.shape[1])]}
    print(json.dumps(summary))

    path = os.path.join(a.out, "goldens_windows.safetensors")
    if a.check_only:
        old = load_file(path)
        bad = [k for k in st.t if not torch.equal(old[k], st.t[k])] + sorted(set(old) ^ set(st.t))
        print("identical" if not bad else f"MISMATCH: {bad}")
        return 1 if bad else 0
    # one metadata key: safetensors writes __metadata__ from a hash map, so several keys come out in random order
    meta = {"config": CONFIG_BLOCK, "per_block": per_block, "summary": summary,
            "source": "tools/gen_sam2_window_goldens.py; weights fixtures/sam2/tiny_sam2.pt; image " + a.image,
            "sha256_f32_le": {k: v["sha256_f32_le"] for k, v in st.meta.items() if "sha256_f32_le" in v},
            "desc": {k: v["desc"] for k, v in st.meta.items()}}
    save_file(st.t, path, metadata={"meta": json.dumps(meta)})
    os.chmod(path, 0o644)
    print(path, os.path.getsize(path), "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
