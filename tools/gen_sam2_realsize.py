#!/usr/bin/env python3
"""Real-size random-weight SAM2.1 checkpoints (Hiera-T / Hiera-L) + full-tensor goldens + torch CPU timings.

MANUAL tool: the outputs are large (~160 MB / ~900 MB checkpoints) and are NOT committed; they go to
/tmp/perceptio-sam2/ (override with --out). Use them for parity tests of the Rust port at real size (every
window/padding/global-attention layout of the real configs, real widths and head counts) and for benchmarks.

For each model name (hiera_t, hiera_l; also hiera_s, hiera_b+ for parity checks):
  * model = sam2.build_sam.build_sam2("configs/sam2.1/sam2.1_{name}.yaml", ckpt_path=None, device="cpu")
    (default apply_postprocessing=True overrides: dynamic_multimask_via_stability, delta 0.05, thresh 0.98);
  * every parameter re-initialised deterministically with the scheme of tools/gen_sam2_goldens.py
    (seeded torch.Generator(1234 + 7), modules/params in sorted name order: Linear/Conv weight N(0, 1/fan_in),
    biases N(0,0.05), LayerNorm/GroupNorm/LayerNorm2d weight 1+N(0,0.1) bias N(0,0.05), nn.Embedding N(0,1),
    other raw params N(0,0.1), PE gaussian buffer N(0,1)); float32, no bf16 rounding;
  * {out}/{name}.pt            torch.save({"model": state_dict}) -- Meta's checkpoint layout, float32
                               (strict-loads with build_sam2(cfg, ckpt_path=...));
  * {out}/{name}_golden.safetensors  FULL float32 tensors from SAM2ImagePredictor on fixtures/images/chelsea.png:
        high_res_feat0 [1,32,256,256], high_res_feat1 [1,64,128,128], image_embed [1,256,64,64]
            (= predictor._features after set_image: _prepare_backbone_features + no_mem_embed),
        point (x=225,y=150) label 1, multimask_output=True:
        low_res_masks [1,3,256,256] UNCLAMPED (model.sam_mask_decoder called directly; the predictor's
            return_logits output is checked to equal clamp(low_res_masks, -32, 32)), iou [1,3] (sigmoid),
            obj_score [1,1] (object_score_logits), coords [1,1,2], labels [1,1] (after the predictor's transform);
        metadata key "meta": JSON with config file, seed, shapes, summary;
  * timings (torch.set_num_threads(2), no_grad, float32) of model.forward_image(x) on the 1024x1024 input
    (1 warm-up + 3 timed for hiera_t, 1 + 2 for hiera_l) and of prompt encoder + mask decoder (1 warm-up +
    10 timed) -> printed and merged into {out}/torch_times.json.

Usage (from repo root, same venv as gen_sam2_goldens.py):
    /work/venv-torch/bin/python tools/gen_sam2_realsize.py [--models hiera_t,hiera_l] [--out /tmp/perceptio-sam2]
    /work/venv-torch/bin/python tools/gen_sam2_realsize.py --time-only   # re-time from the saved .pt (quiet machine!)
Hiera-L needs ~4 GB RAM and ~1 min per forward on 2 CPU threads.
"""
import argparse, json, os, platform, sys, time

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_sam2_goldens as gen  # noqa: E402  (reinit / encode / decode reused)
from sam2.build_sam import build_sam2  # noqa: E402
from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402

THREADS = 2
POINT = (225.0, 150.0)
N_FWD = {"hiera_t": 3, "hiera_l": 2, "hiera_s": 1, "hiera_b+": 1}
N_DEC = 10


def timeit(fn, n, warm=1, cpu=None):
    """Wall seconds per run; if cpu is a list, the process CPU seconds per run are appended to it
    (~THREADS x wall when the machine is otherwise idle -- a cheap contention check on a shared VM)."""
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        ts.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.process_time() - c0)
    return ts


def run(name, out, image, time_only=False):
    cfg = f"configs/sam2.1/sam2.1_{name}.yaml"
    t0 = time.perf_counter()
    if time_only:
        return run_times(name, build_sam2(cfg, ckpt_path=os.path.join(out, f"{name}.pt"), device="cpu"), image)
    model = build_sam2(cfg, ckpt_path=None, device="cpu")
    gen.WEIGHT_DTYPE = torch.float32  # gen.reinit's final rounding becomes a no-op
    gen.reinit(model)
    model.eval()
    sd = model.state_dict()
    nparams = sum(v.numel() for v in sd.values())
    ck = os.path.join(out, f"{name}.pt")
    torch.save({"model": sd}, ck)
    print(f"[{name}] built+reinit+saved {nparams} values -> {ck} ({os.path.getsize(ck)} bytes) "
          f"in {time.perf_counter() - t0:.1f}s", flush=True)
    # strict round trip through Meta's loader
    m2 = build_sam2(cfg, ckpt_path=ck, device="cpu")
    for k, v in m2.state_dict().items():
        assert torch.equal(v, sd[k]), k
    del m2

    pil = Image.open(image).convert("RGB")
    pred = SAM2ImagePredictor(model)
    res = {}
    with torch.no_grad():
        t0 = time.perf_counter()
        pred.set_image(pil)
        print(f"[{name}] set_image {time.perf_counter() - t0:.2f}s", flush=True)
        feats = pred._features["high_res_feats"] + [pred._features["image_embed"]]
        pts, lab = np.array([POINT]), np.array([1])
        masks, iou_np, low_np = pred.predict(point_coords=pts, point_labels=lab, multimask_output=True,
                                             return_logits=True)
        _, uc, ul, _ = pred._prep_prompts(pts, lab, None, None, True)
        _, _, low, iou, _, obj = gen.decode(model, feats, uc, ul, True)
        assert np.array_equal(iou_np, iou[0].numpy())
        assert np.array_equal(low_np, low[0].clamp(-32, 32).numpy())
        t = {"high_res_feat0": feats[0], "high_res_feat1": feats[1], "image_embed": feats[2],
             "low_res_masks": low, "iou": iou, "obj_score": obj, "coords": uc, "labels": ul.to(torch.int32)}
        t = {k: v.detach().contiguous().clone() for k, v in t.items()}
        summary = {"iou": iou[0].tolist(), "obj_score": obj[0].tolist(),
                   "frac_gt0": [float((low[0, i] > 0).float().mean()) for i in range(low.shape[1])],
                   "image_embed_absmean": float(feats[2].abs().mean()),
                   "low_res_absmax": float(low.abs().max())}
        print(f"[{name}] {json.dumps(summary)}", flush=True)
        meta = {"config": cfg, "build": "build_sam2(cfg, ckpt_path=None, device='cpu'), apply_postprocessing=True",
                "init": "tools/gen_sam2_goldens.py reinit scheme, torch.Generator seed 1234+7, float32",
                "image": image, "point": list(POINT), "label": 1, "multimask_output": True,
                "shapes": {k: list(v.shape) for k, v in t.items()}, "summary": summary,
                "sam2_version": "1.1.0", "torch": torch.__version__}
        gp = os.path.join(out, f"{name}_golden.safetensors")
        save_file(t, gp, metadata={"meta": json.dumps(meta)})
        os.chmod(gp, 0o644)
        print(f"[{name}] wrote {gp} ({os.path.getsize(gp)} bytes)", flush=True)
    res = run_times(name, model, image, pred)
    res["params"] = nparams
    return res


def run_times(name, model, image, pred=None):
    pil = Image.open(image).convert("RGB")
    if pred is None:
        pred = SAM2ImagePredictor(model)
        with torch.no_grad():
            pred.set_image(pil)
    res = {}
    with torch.no_grad():
        feats = pred._features["high_res_feats"] + [pred._features["image_embed"]]
        _, uc, ul, _ = pred._prep_prompts(np.array([POINT]), np.array([1]), None, None, True)
        x = pred._transforms(pil)[None]
        ref = model.forward_image(x)["vision_features"]
        fwd_cpu, dec_cpu = [], []
        fwd = timeit(lambda: model.forward_image(x), N_FWD[name], warm=0, cpu=fwd_cpu)  # the call above was the warm-up
        again = model.forward_image(x)["vision_features"]
        res["forward_image_deterministic"] = bool(torch.equal(ref, again))
        print(f"[{name}] forward_image times {[round(s, 3) for s in fwd]} (deterministic: "
              f"{res['forward_image_deterministic']}; process cpu s {[round(s, 2) for s in fwd_cpu]})", flush=True)
        dec = timeit(lambda: gen.decode(model, feats, uc, ul, True), N_DEC, warm=1, cpu=dec_cpu)
        print(f"[{name}] prompt_encoder+mask_decoder times {[round(s, 4) for s in dec]} "
              f"(process cpu s {[round(s, 3) for s in dec_cpu]})", flush=True)
    res.update({"forward_image_s": fwd, "forward_image_mean_s": sum(fwd) / len(fwd),
                "forward_image_min_s": min(fwd), "warmup": 1,
                "forward_image_process_cpu_s": fwd_cpu, "decoder_process_cpu_s": dec_cpu,
                "decoder_s": dec, "decoder_mean_s": sum(dec) / len(dec), "decoder_min_s": min(dec)})
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="hiera_t,hiera_l")
    ap.add_argument("--out", default="/tmp/perceptio-sam2")
    ap.add_argument("--image", default="fixtures/images/chelsea.png")
    ap.add_argument("--time-only", action="store_true", help="load {out}/{name}.pt, only redo the timings")
    a = ap.parse_args()
    torch.set_num_threads(THREADS)
    os.makedirs(a.out, exist_ok=True)
    tp = os.path.join(a.out, "torch_times.json")
    times = json.load(open(tp)) if os.path.exists(tp) else {}
    for name in a.models.split(","):
        r = run(name, a.out, a.image, a.time_only)
        r.update({"threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor()
                  or platform.machine(), "nproc": os.cpu_count(), "loadavg_after": os.getloadavg(),
                  "input": "forward_image on [1,3,1024,1024] float32, torch.no_grad; decoder = prompt encoder "
                           "(1 point + pad) + sam_mask_decoder multimask with high-res feats"})
        times[name] = r
        json.dump(times, open(tp, "w"), indent=1)
        print(f"[{name}] times -> {tp}", flush=True)


if __name__ == "__main__":
    main()
