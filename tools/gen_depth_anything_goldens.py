#!/usr/bin/env python3
"""Tiny random Depth Anything V2 checkpoint (Hugging Face layout) + goldens, made by transformers itself.

Usage (from the repo root; manual, never in CI):
    /work/venv-torch/bin/python tools/gen_depth_anything_goldens.py            # writes fixtures/depth_anything/*
    /work/venv-torch/bin/python tools/gen_depth_anything_goldens.py --check-only  # recompute, compare
    /work/venv-torch/bin/python tools/gen_depth_anything_goldens.py --bench     # time DA-V2-Small (random init)

The checkpoint is built by `DepthAnythingForDepthEstimation` from a tiny config, its weights are
rounded to bf16 and written by `save_pretrained` (which writes the hub key layout:
`attention.attention.query`, `attention.output.dense`, ... — transformers 5 renames them to
`q_proj`/`o_proj` only in memory). Goldens are computed in float32 from the rounded weights.
Preprocessing is `AutoImageProcessor.from_pretrained(<fixture dir>)` (the torchvision backend in
transformers 5: uint8 bicubic antialiased resize), post-processing is the processor's
`post_process_depth_estimation` (bicubic to the original size). See fixtures/depth_anything/README.md.
"""
import argparse, hashlib, json, os, sys, time

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file, load_file

import transformers
from transformers import AutoImageProcessor, DepthAnythingConfig, DepthAnythingForDepthEstimation
from transformers.image_utils import SizeDict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "depth_anything")
IMAGES = ["chelsea.png", "coffee_portrait.png"]
SEED = 3

# What the hub repos depth-anything/Depth-Anything-V2-*-hf ship as preprocessor_config.json.
PREPROCESSOR = {
    "do_normalize": True,
    "do_pad": False,
    "do_rescale": True,
    "do_resize": True,
    "ensure_multiple_of": 14,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "DPTImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "keep_aspect_ratio": True,
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 518, "width": 518},
    "size_divisor": None,
}


def tiny_config(metric=False):
    return DepthAnythingConfig(
        backbone_config=dict(
            model_type="dinov2", hidden_size=32, num_attention_heads=2, num_hidden_layers=5, mlp_ratio=4,
            image_size=56, patch_size=14, out_indices=[1, 3, 4, 5], reshape_hidden_states=False,
        ),
        patch_size=14,
        reassemble_hidden_size=32,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[8, 16, 24, 32],
        fusion_hidden_size=8,
        head_hidden_size=8,
        head_in_index=-1,
        depth_estimation_type="metric" if metric else "relative",
        max_depth=20 if metric else 1,
    )


def init_weights(model):
    """O(1) activations everywhere (HF's 0.02 init would make the neck output ~0), bf16-rounded."""
    g = torch.Generator().manual_seed(SEED)
    # ConvTranspose2d weights are (in, out, k, k) and, with stride = k, each output sees `in` taps
    transposed = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.ConvTranspose2d)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lambda1"):
                v = 0.5 + 0.2 * torch.randn(p.shape, generator=g)
            elif "norm" in name and name.endswith("weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
            elif p.dim() >= 2 and name.endswith("weight"):
                fan_in = p.shape[0] if name in transposed else p[0].numel()
                v = torch.randn(p.shape, generator=g) / fan_in ** 0.5
            else:
                v = 0.3 * torch.randn(p.shape, generator=g)
            p.copy_(v.to(torch.bfloat16).to(torch.float32))
        # the final ReLU would zero most of a random map: set conv3's bias so that ~85 % of the
        # pre-activation is positive on the first image (then bf16-rounded like the rest)
        pre = []
        hook = model.head.conv3.register_forward_hook(lambda m, i, o: pre.append(o - m.bias.view(1, -1, 1, 1)))
        from transformers import DPTImageProcessor
        pv = DPTImageProcessor(**{k: v for k, v in PREPROCESSOR.items() if k != "image_processor_type"})(images=load_rgb(IMAGES[0]), return_tensors="pt")["pixel_values"]
        model(pixel_values=pv)
        hook.remove()
        model.head.conv3.bias.fill_(-float(torch.quantile(pre[0].flatten(), 0.15)))
        model.head.conv3.bias.copy_(model.head.conv3.bias.to(torch.bfloat16).to(torch.float32))


def load_rgb(name):
    return Image.open(os.path.join(ROOT, "fixtures", "images", name)).convert("RGB")


def crops(t, k=6):
    """Top-left, centre and bottom-right k×k crops of a (..., H, W) tensor."""
    h, w = t.shape[-2:]
    return {
        "tl": t[..., :k, :k].clone(),
        "c": t[..., h // 2 - k // 2 : h // 2 - k // 2 + k, w // 2 - k // 2 : w // 2 - k // 2 + k].clone(),
        "br": t[..., h - k :, w - k :].clone(),
    }


def manual_feature_maps(model, pixel_values):
    """Dinov2 by hand (embeddings, layers, layernorm at out_indices; hidden_states[0] = embeddings),
    to pin down what `out_indices` means before trusting the backbone's feature_maps."""
    bb = model.backbone
    h = bb.embeddings(pixel_values)
    hs = [h]
    for layer in bb.encoder.layer:
        h = layer(h)
        hs.append(h)
    return [bb.layernorm(hs[i]) for i in bb.config.out_indices]


def run(model, proc, img, tag, g, meta):
    pv = preprocess(proc, img, tag, 518, g, meta)

    with torch.no_grad():
        out = model(pixel_values=pv, output_hidden_states=True)
        fmaps = model.backbone(pv).feature_maps
        manual = manual_feature_maps(model, pv)
    for a, b in zip(fmaps, manual):
        assert torch.allclose(a, b, atol=1e-5), "out_indices semantics differ from hidden_states[i] (0 = embeddings)"
    for i, f in enumerate(fmaps):
        g[f"{tag}.feature_map{i}.first_tokens"] = f[0, :5].clone()  # CLS + 4 patch tokens, all channels
        g[f"{tag}.feature_map{i}.token_sums"] = f[0].sum(dim=1).clone()
    pd = out.predicted_depth
    meta[f"{tag}.predicted_depth_shape"] = list(pd.shape)
    meta[f"{tag}.predicted_depth_fraction_positive"] = float((pd > 0).float().mean())
    for k, v in crops(pd[0]).items():
        g[f"{tag}.predicted_depth.{k}"] = v
    g[f"{tag}.predicted_depth.row_sums"] = pd[0].sum(dim=1).clone()
    g[f"{tag}.predicted_depth.col_sums"] = pd[0].sum(dim=0).clone()

    post = proc.post_process_depth_estimation(out, target_sizes=[(img.height, img.width)])[0]["predicted_depth"]
    meta[f"{tag}.post_shape"] = list(post.shape)
    for k, v in crops(post).items():
        g[f"{tag}.post.{k}"] = v
    g[f"{tag}.post.row_sums"] = post.sum(dim=1).clone()
    g[f"{tag}.post.col_sums"] = post.sum(dim=0).clone()
    return pv


def preprocess(proc, img, tag, size, g, meta):
    """pixel_values through the processor's own call at `size` (518: the hub value, upscaling both
    images; 98: a downscale), plus the sha256 of its uint8 resize (HWC bytes) for an exact check."""
    pv = proc(images=img, size={"height": size, "width": size}, return_tensors="pt")["pixel_values"]
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
    resized = proc.resize(t, SizeDict(height=size, width=size), resample=proc.resample,
                          ensure_multiple_of=proc.ensure_multiple_of, keep_aspect_ratio=proc.keep_aspect_ratio)
    assert resized.dtype == torch.uint8
    # the processor's fused rescale+normalise of that image must be what it returned
    m = torch.tensor(proc.image_mean) * (1.0 / proc.rescale_factor)
    s = torch.tensor(proc.image_std) * (1.0 / proc.rescale_factor)
    again = (resized.to(torch.float32) - m[:, None, None]) / s[:, None, None]
    assert torch.equal(again, pv[0]), "fused normalisation differs"
    meta[f"{tag}.resized_sha256"] = hashlib.sha256(resized.permute(1, 2, 0).contiguous().numpy().tobytes()).hexdigest()
    meta[f"{tag}.pixel_values_shape"] = list(pv.shape)
    for k, v in crops(pv[0]).items():
        g[f"{tag}.pixel_values.{k}"] = v
    g[f"{tag}.pixel_values.row_sums"] = pv[0].sum(dim=(0, 2)).clone()
    return pv


def build(out_dir):
    torch.manual_seed(SEED)
    model = DepthAnythingForDepthEstimation(tiny_config()).eval()
    init_weights(model)
    return model


def generate(out_dir, check_only):
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tiny = os.path.join(out_dir, "tiny")
    model = build(out_dir)
    if not check_only:
        os.makedirs(tiny, exist_ok=True)
        model.to(torch.bfloat16).save_pretrained(tiny)
        model.to(torch.float32)
        with open(os.path.join(tiny, "preprocessor_config.json"), "w") as f:
            json.dump(PREPROCESSOR, f, indent=2, sort_keys=True)
            f.write("\n")
    # reload what was written: the goldens come from the files the Rust side reads
    model = DepthAnythingForDepthEstimation.from_pretrained(tiny, dtype=torch.float32).eval()
    proc = AutoImageProcessor.from_pretrained(tiny)
    g, meta = {}, {
        "transformers": transformers.__version__, "torch": torch.__version__,
        "processor_class": type(proc).__name__, "seed": SEED,
    }
    import torchvision, PIL
    meta["torchvision"] = torchvision.__version__
    meta["pillow"] = PIL.__version__
    meta["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    for name in IMAGES:
        tag = name.split(".")[0]
        img = load_rgb(name)
        meta[f"{tag}.size_wh"] = [img.width, img.height]
        pv = run(model, proc, img, tag, g, meta)
        preprocess(proc, img, f"{tag}.s98", 98, g, meta)
    # metric head: same weights, sigmoid * max_depth
    metric = DepthAnythingForDepthEstimation(tiny_config(metric=True)).eval()
    metric.load_state_dict(model.state_dict())
    img = load_rgb(IMAGES[0])
    pv = proc(images=img, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pd = metric(pixel_values=pv).predicted_depth
    for k, v in crops(pd[0]).items():
        g[f"metric.predicted_depth.{k}"] = v
    g["metric.predicted_depth.row_sums"] = pd[0].sum(dim=1).clone()
    g = {k: v.contiguous().to(torch.float32) for k, v in g.items()}
    gpath = os.path.join(out_dir, "goldens.safetensors")
    if check_only:
        old = load_file(gpath)
        worst = max(float((old[k] - g[k]).abs().max()) for k in g)
        print("max |diff| vs stored goldens:", worst, "(identical)" if worst == 0 else "")
        return
    save_file(g, gpath)
    for fn in ("model.safetensors", "config.json", "preprocessor_config.json"):
        os.chmod(os.path.join(tiny, fn), 0o644)
    os.chmod(gpath, 0o644)
    with open(os.path.join(out_dir, "goldens.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    for k, v in sorted(meta.items()):
        print(k, v)
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(out_dir) for fn in fns)
    print("fixture bytes:", total)


def bench():
    """DA-V2-Small (the hub config's geometry), random init, 1x3x518x518, f32, 2 threads."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = DepthAnythingConfig(
        backbone_config=dict(model_type="dinov2", hidden_size=384, num_attention_heads=6, num_hidden_layers=12,
                             image_size=518, patch_size=14, out_indices=[9, 10, 11, 12], reshape_hidden_states=False),
        reassemble_hidden_size=384, neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32,
    )
    # The fastest attention transformers offers for DINOv2 on CPU (SDPA), not the eager default.
    cfg.backbone_config._attn_implementation = "sdpa"
    model = DepthAnythingForDepthEstimation(cfg).eval()
    px = torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        t = time.perf_counter()
        model(pixel_values=px)
        print(f"warm-up {time.perf_counter() - t:.3f} s")
        ts, bb = [], []
        for _ in range(3):
            t = time.perf_counter()
            model(pixel_values=px)
            ts.append(time.perf_counter() - t)
            t = time.perf_counter()
            model.backbone(pixel_values=px)  # DINOv2 alone, as the Rust bench's feature_maps
            bb.append(time.perf_counter() - t)
    print(f"PyTorch {torch.__version__} transformers {transformers.__version__} DA-V2-Small 518x518 f32, "
          f"{torch.get_num_threads()} threads, attn={model.backbone.config._attn_implementation}: "
          f"median {sorted(ts)[1]:.3f} s  runs {[round(x, 3) for x in ts]}; "
          f"DINOv2 backbone alone median {sorted(bb)[1]:.3f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--bench", action="store_true")
    a = ap.parse_args()
    if a.bench:
        bench()
        sys.exit(0)
    generate(a.out, a.check_only)
