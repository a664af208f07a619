#!/usr/bin/env python3
"""Reduced-precision reference noise + f16/bf16 goldens on the existing tiny checkpoints (manual; never run in CI).

    # the venv and reference checkouts of tools/gen_internvl_goldens.py and tools/gen_sam2_goldens.py, i.e.
    /work/venv-torch/bin/pip install transformers==5.24.0 tokenizers==0.23.3 timm==1.0.31 einops==0.8.2
    /work/venv-torch/bin/pip install sam2==1.1.0 --no-deps && /work/venv-torch/bin/pip install hydra-core omegaconf iopath
    # /tmp/refsrc/{InternVL,Sa2VA} as gen_internvl_goldens.py says (projects/sa2va/hf/models, sha256s in its goldens)
    /work/venv-torch/bin/python tools/gen_lowp_goldens.py               # writes fixtures/lowp/{goldens.safetensors,goldens.json}
    /work/venv-torch/bin/python tools/gen_lowp_goldens.py --check-only  # recompute, compare with the stored goldens
    /work/venv-torch/bin/python tools/gen_lowp_goldens.py --noise-only  # print the noise tables, write nothing

Every reference runs three times, in float32, float16 and bfloat16, on the CPU, from the same bf16-rounded weights,
and the low-precision outputs are compared with the float32 ones (the *reference noise*: what a faithful port in
that dtype cannot be expected to do better than). The float16 outputs are the goldens perceptio's `--dtype f16`
CPU path is tested against (tests/lowp.rs); the bfloat16 ones are stored for a CUDA check. How each model runs
in low precision, as the reference code runs it on a GPU:

  * InternVL / Sa2VA (Sa2VA's own Sa2VAChatModel, InternViT, transformers' Qwen2, the original InternLM2):
    `model.to(dtype)` and `pixel_values.to(dtype)`, as Sa2VA's predict_forward (torch_dtype=bfloat16) does; no
    autocast. transformers keeps RMSNorm statistics and the RoPE tables (then cast) in f32, and its eager
    attention does softmax(dtype=float32); InternViT's naive attention runs in the weight dtype.
  * SAM2 (Meta's sam2 1.1.0): weights in `dtype` (Sa2VA's checkpoint is bf16) under an emulation of
    `torch.autocast("cuda", dtype)` (class CudaAutocast below): Sa2VA runs SAM2 inside
    `torch.autocast(device_type="cuda", dtype=torch.bfloat16)` (language_embd_inference) and Meta's README wraps
    its predictor the same way. torch's CPU autocast uses other op lists (no f32 layer_norm / softmax / pow /
    sum), so the CUDA lists are applied by a TorchDispatchMode: mm/addmm/bmm/baddbmm/convolution/SDPA in `dtype`,
    layer_norm/group_norm/softmax/exp/log/pow/sum/rsqrt/... in f32 (f32 outputs, as on the GPU), everything else
    in its inputs' dtype. The mask logits are upsampled and thresholded in f32 (`.float()`, as Sa2VA's
    `_forward_sam_heads` and Meta's `postprocess_masks`). The Meta-predictor variant (f32 weights under the same
    autocast) is measured too (`noise.sam2.*.w32`).
  * Depth Anything V2 (transformers 5.24 DepthAnythingForDepthEstimation): `model.to(dtype)`, pixel_values in
    `dtype` (the processor's uint8 resize and normalisation stay f32: the antialiased bicubic has no f16/bf16 CPU
    kernel, `compute_index_ranges_weights` is not implemented for Half/BFloat16); sdpa attention.
  * The depth VQ-VAE is not run: perceptio runs it in f32 whatever --dtype says (its codebook distances pick codes).

torch CPU has every other op used here in f16 and bf16 (probed: conv2d, conv_transpose2d, bilinear/bicubic
upsampling without antialias, layer_norm, gelu, softmax, SDPA, max_pool2d, mm), so nothing else had to be upcast.

Outputs (fixtures/lowp/): goldens.safetensors (low-precision outputs in their own dtype, so exact; see the key list
in goldens.json `tensors`) and goldens.json (`noise`: per component the f32-vs-f16 and f32-vs-bf16 differences;
`summary`: tokens, masks, scores). 1 thread, deterministic algorithms.
"""
import argparse
import copy
import json
import os
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tools'))
OUT_DIR = os.path.join(REPO, 'fixtures/lowp')
IMAGES = {'chelsea': 'fixtures/images/chelsea.png', 'portrait': 'fixtures/images/coffee_portrait.png'}
DESCRIBE = 'Describe the image in detail.'
N_GREEDY = 40
CROP = (112, 144)


# ----------------------------------------------------------------------------- CUDA autocast on the CPU
def cuda_autocast_class():
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_map
    aten = torch.ops.aten
    # torch/csrc/autograd/autocast_mode.cpp, CUDA: lower_precision_fp and fp32 / fp32_set_opt_dtype lists, as the
    # aten ops they reach below the Autograd key (linear -> addmm/mm/bmm, conv2d -> convolution, layer_norm ->
    # native_layer_norm, softmax -> _softmax, SDPA -> its CPU flash kernel or its math decomposition).
    lower = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.addbmm, aten.mv, aten.addmv, aten.addr,
             aten.convolution, aten._convolution, aten.prelu,
             aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention,
             aten._scaled_dot_product_efficient_attention}
    fp32 = {aten.native_layer_norm, aten.native_group_norm, aten._softmax, aten._log_softmax, aten.exp,
            aten.expm1, aten.log, aten.log10, aten.log2, aten.log1p, aten.reciprocal, aten.rsqrt, aten.pow,
            aten.acos, aten.asin, aten.cosh, aten.sinh, aten.tan, aten.erfinv, aten.softplus, aten.sum,
            aten.prod, aten.cumsum, aten.cumprod, aten.linalg_vector_norm, aten.norm, aten.logsumexp}

    class _Dispatch(TorchDispatchMode):
        def __init__(self, dtype, counts):
            super().__init__()
            self.dtype, self.counts = dtype, counts

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            pkt = func.overloadpacket
            if pkt in lower:
                def f(t):
                    return t.to(self.dtype) if torch.is_tensor(t) and t.is_floating_point() else t
                self.counts['lower'] += 1
                args, kwargs = tree_map(f, args), tree_map(f, kwargs)
            elif pkt in fp32:
                def f(t):
                    return t.float() if torch.is_tensor(t) and t.dtype in (torch.float16, torch.bfloat16) else t
                self.counts['fp32'] += 1
                args, kwargs = tree_map(f, args), tree_map(f, kwargs)
            return func(*args, **kwargs)

    # conv2d & co. check that input and bias dtypes agree in their CompositeImplicit kernels, before any op
    # reaches the dispatch mode; autocast casts above that, so these are cast at the Python level.
    convs = {torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d,
             torch.nn.functional.conv_transpose1d, torch.nn.functional.conv_transpose2d,
             torch.nn.functional.conv_transpose3d, torch.conv1d, torch.conv2d, torch.conv3d,
             torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d}

    class _Function(TorchFunctionMode):
        def __init__(self, dtype, counts):
            super().__init__()
            self.dtype, self.counts = dtype, counts

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in convs:
                def f(t):
                    return t.to(self.dtype) if torch.is_tensor(t) and t.is_floating_point() else t
                self.counts['conv'] += 1
                args, kwargs = tree_map(f, args), tree_map(f, kwargs)
            return func(*args, **kwargs)

    class CudaAutocast:
        """torch.autocast('cuda', dtype) semantics for CPU tensors (see the module docstring)."""

        def __init__(self, dtype):
            self.dtype = dtype
            self.counts = {'lower': 0, 'fp32': 0, 'conv': 0}
            self.modes = []

        def __enter__(self):
            self.modes = [_Function(self.dtype, self.counts), _Dispatch(self.dtype, self.counts)]
            for m in self.modes:
                m.__enter__()
            return self

        def __exit__(self, *exc):
            for m in reversed(self.modes):
                m.__exit__(*exc)
            return False
    return CudaAutocast


# ----------------------------------------------------------------------------- metrics
def cmp(ref, x):
    """x vs ref: max |x-ref|, max |ref|, their ratio, and the relative RMS ||x-ref|| / ||ref||."""
    r, y = ref.detach().double().flatten(), x.detach().double().flatten()
    assert r.shape == y.shape, (r.shape, y.shape)
    d = (y - r).abs()
    ma, rm = float(d.max()), float(r.abs().max())
    return {'max_abs': ma, 'ref_max_abs': rm, 'rel': ma / max(rm, 1e-30),
            'rel_rms': float(d.norm() / max(float(r.norm()), 1e-30))}


def mask_stats(ref, x):
    """Binary masks (bool numpy): IoU, areas, flipped pixels."""
    import numpy as np
    inter, union = int(np.logical_and(ref, x).sum()), int(np.logical_or(ref, x).sum())
    return {'iou': inter / union if union else 1.0, 'area_ref': int(ref.sum()), 'area': int(x.sum()),
            'flips': int((ref != x).sum())}


def token_stats(ref, x):
    first = next((i for i, (a, b) in enumerate(zip(ref, x)) if a != b), min(len(ref), len(x)))
    return {'first_divergence': first, 'n': len(ref), 'agree_frac': sum(a == b for a, b in zip(ref, x)) / len(ref)}


class Store:
    def __init__(self):
        self.t, self.meta = {}, {}

    def put(self, name, x, desc):
        import numpy as np
        import torch
        x = x.detach().contiguous().clone() if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
        self.t[name] = x
        self.meta[name] = {'shape': list(x.shape), 'dtype': str(x.dtype).replace('torch.', ''), 'desc': desc}


def dt_name(dt):
    import torch
    return {torch.float32: 'f32', torch.float16: 'f16', torch.bfloat16: 'bf16'}[dt]


# ----------------------------------------------------------------------------- InternVL / Sa2VA
def greedy_fixed(ivg, lm, kind, emb, n):
    """run_golden's loop: n tokens, no stop; returns ids and each step's top1-top2 logit gap."""
    import torch
    logits, hid, cache = ivg.lm_forward(lm, kind, inputs_embeds=emb)
    cur = logits[-1]
    gen, gaps = [], []
    for i in range(n):
        top2 = cur.float().topk(2).values
        gaps.append(float(top2[0] - top2[1]))
        nxt = int(torch.argmax(cur))
        gen.append(nxt)
        if i + 1 == n:
            break
        logits, hid, cache = ivg.lm_forward(lm, kind, input_ids=torch.tensor([[nxt]]), cache=cache)
        cur = logits[-1]
    return gen, gaps


def internvl_runs(ivg, refs, model, kind, tok, pv):
    """vit_embeds, prefill logits (last 4) and 40 greedy tokens of the 'Describe' prompt in model's dtype."""
    import torch
    dt = next(model.parameters()).dtype
    img_ctx = tok.convert_tokens_to_ids('<IMG_CONTEXT>')
    with torch.no_grad():
        vit = model.extract_feature(pv.to(dt))
        prompt = ivg.build_prompt(model.template, DESCRIBE, pv.shape[0], model.num_image_token)
        ids = torch.tensor(tok.encode(prompt), dtype=torch.long)
        lm = model.language_model
        emb = lm.get_input_embeddings()(ids).clone()
        emb[ids == img_ctx] = vit.reshape(-1, emb.shape[-1]).to(emb.dtype)
        logits, _, _ = ivg.lm_forward(lm, kind, inputs_embeds=emb[None])
        gen, gaps = greedy_fixed(ivg, lm, kind, emb[None], N_GREEDY)
    return {'vit_embeds': vit, 'prefill_logits_last4': logits[-4:], 'ids': ids, 'gen': gen, 'gaps': gaps}


def sa2va_force_hidden(ivg, model, tok, pv, question):
    """Teacher-forced 'Sure, [SEG].' after Sa2VA's RES prompt: seg_hidden, seg_embedding (model dtype)."""
    import torch
    import gen_sa2va_e2e_goldens as e2e
    dt = next(model.parameters()).dtype
    img_ctx = tok.convert_tokens_to_ids('<IMG_CONTEXT>')
    seg_id = tok.convert_tokens_to_ids('[SEG]')
    with torch.no_grad():
        vit = model.extract_feature(pv.to(dt))
        prompt = ivg.build_prompt(model.template, question, pv.shape[0], model.num_image_token)
        ids = torch.tensor(tok.encode(prompt), dtype=torch.long)
        reply = tok.encode(e2e.FORCED_REPLY, add_special_tokens=False)
        full = torch.cat([ids, torch.tensor(reply, dtype=torch.long)])
        lm = model.language_model
        emb = lm.get_input_embeddings()(full).clone()
        emb[full == img_ctx] = vit.reshape(-1, emb.shape[-1]).to(emb.dtype)
        _, hid, _ = ivg.lm_forward(lm, 'qwen2', inputs_embeds=emb[None])
        pos = int((full == seg_id).nonzero()[0, 0])
        h = hid[pos][None]
        se = model.text_hidden_fcs(h)
    return h, se


# ----------------------------------------------------------------------------- SAM2
def sa2va_pixels(pil, dt):
    """Sa2VA's grounding input: PIL bicubic 1024 on uint8, then predict_forward's `.to(torch_dtype)` and
    preprocess_image (/255, -mean, /std with mean/std tensors in that dtype), so the normalisation itself runs
    in dt (f32 for the f32 run)."""
    import numpy as np
    import torch
    g = np.array(pil.resize((1024, 1024)))
    x = torch.from_numpy(g).permute(2, 0, 1).contiguous().to(dt)
    x = x / 255.
    x = x - torch.tensor([0.485, 0.456, 0.406], dtype=dt)[:, None, None]
    x = x / torch.tensor([0.229, 0.224, 0.225], dtype=dt)[:, None, None]
    return x[None]


def sam2_seg_run(s2g, sam, pil, seg_emb, autocast):
    """SAM2 image encoder + Sa2VA [SEG] decoding, ungated (as Sa2VA), upsampled 256 -> 1024 -> (H, W) in f32."""
    import torch
    import torch.nn.functional as F
    W, H = pil.size
    dt = next(sam.parameters()).dtype
    with torch.no_grad():
        x = sa2va_pixels(pil, dt)
        ctx = autocast if autocast is not None else _null()
        with ctx:
            feats, _, _ = s2g.encode(sam, x)
            pc = torch.zeros(1, 1, 2)
            pl = -torch.ones(1, 1, dtype=torch.int32)
            _, _, low, iou, _, obj = s2g.decode(sam, feats, pc, pl, True, extra_sparse=seg_emb.to(dt)[None])
        best = int(torch.argmax(iou.float(), dim=-1)[0])
        chosen = low[:, best:best + 1].float()
        hr = F.interpolate(chosen, size=(1024, 1024), mode='bilinear', align_corners=False)
        fin = F.interpolate(hr, size=(H, W), mode='bilinear', align_corners=False)
        mask = (fin > 0)[0, 0].numpy()
    return {'image_embed': feats[-1], 'low': low, 'chosen': chosen, 'iou': iou, 'obj': obj, 'best': best,
            'final_logits': fin, 'mask': mask}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def sam2_point_runs(s2g, sam, pil, autocast):
    """fixtures/sam2's point/box prompts through SAM2ImagePredictor's transforms (f32 input, like Meta)."""
    import numpy as np
    import torch
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    pred = SAM2ImagePredictor(sam)
    pred._orig_hw = [(pil.size[1], pil.size[0])]   # what set_image records (the features are computed below)
    out = {}
    with torch.no_grad():
        x = pred._transforms(pil)[None]
        ctx = autocast if autocast is not None else _null()
        with ctx:
            feats, _, _ = s2g.encode(sam, x)
            _, uc, lab, _ = pred._prep_prompts(np.array([[225.0, 150.0]]), np.array([1]), None, None, True)
            _, _, _, ub = pred._prep_prompts(None, None, np.array([100.0, 50.0, 350.0, 250.0]), None, True)
            for name, (c, l) in {'point': (uc, lab), 'box': (ub.reshape(-1, 2, 2), torch.tensor([[2, 3]], dtype=torch.int))}.items():
                for mm in (True, False):
                    _, _, low, iou, _, obj = s2g.decode(sam, feats, c, l, mm)
                    out[f'{name}.{"multi" if mm else "single"}'] = {'low': low, 'iou': iou, 'obj': obj}
    out['image_embed'] = feats[-1]
    return out


# ----------------------------------------------------------------------------- Depth Anything
def depth_anything_runs(st, noise, dts):
    """Depth Anything V2 in f16/bf16 (run before the InternVL references stub `peft`, which transformers probes)."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file
    import gen_depth_anything_goldens as dag
    from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation
    tiny = os.path.join(REPO, 'fixtures/depth_anything/tiny')
    da32 = DepthAnythingForDepthEstimation.from_pretrained(tiny, dtype=torch.float32).eval()
    proc = AutoImageProcessor.from_pretrained(tiny)
    dg = load_file(os.path.join(REPO, 'fixtures/depth_anything/goldens.safetensors'))
    for name in dag.IMAGES:
        tag = name.split('.')[0]
        img = dag.load_rgb(name)
        pv = proc(images=img, return_tensors='pt')['pixel_values']
        with torch.no_grad():
            pd32 = da32(pixel_values=pv).predicted_depth
            fm32 = da32.backbone(pv).feature_maps
        assert cmp(dg[f'{tag}.predicted_depth.c'], dag.crops(pd32[0])['c'])['max_abs'] < 1e-4
        for dt in dts:
            dn = dt_name(dt)
            m = copy.deepcopy(da32).to(dt)
            with torch.no_grad():
                pd = m(pixel_values=pv.to(dt)).predicted_depth
                fm = m.backbone(pv.to(dt)).feature_maps
            post32 = F.interpolate(pd32[None], size=(img.height, img.width), mode='bicubic', align_corners=False)[0, 0]
            post = F.interpolate(pd.float()[None], size=(img.height, img.width), mode='bicubic', align_corners=False)[0, 0]
            post_dt = proc.post_process_depth_estimation(
                type('O', (), {'predicted_depth': pd})(), target_sizes=[(img.height, img.width)])[0]['predicted_depth']
            noise.setdefault(f'depth_anything.{tag}', {})[dn] = {
                'feature_map_last': cmp(fm32[-1], fm[-1]), 'predicted_depth': cmp(pd32, pd),
                'post_f32_upsampling': cmp(post32, post), 'post_processor_in_dtype': cmp(post32, post_dt.float()),
            }
            for k, v in dag.crops(pd[0]).items():
                st.put(f'{dn}.da.{tag}.predicted_depth.{k}', v, f'predicted_depth {k} 6x6 crop ({dn})')
            st.put(f'{dn}.da.{tag}.predicted_depth.row_sums', pd[0].double().sum(1), 'float64 row sums')
            st.put(f'{dn}.da.{tag}.feature_map3.first_tokens', fm[-1][0, :5], 'last feature map, CLS + 4 tokens')
        print(f'depth_anything.{tag}', json.dumps({d: {k: round(v['rel'], 6) for k, v in noise[f'depth_anything.{tag}'][d].items()}
                                                   for d in noise[f'depth_anything.{tag}']}), flush=True)


# ----------------------------------------------------------------------------- main pass
def run(refsrc):
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file
    import gen_internvl_goldens as ivg
    import gen_sa2va_e2e_goldens as e2e
    import gen_sam2_goldens as s2g
    CudaAutocast = cuda_autocast_class()
    dts = [torch.float16, torch.bfloat16]
    st, noise, summary = Store(), {}, {}
    pils = {n: Image.open(os.path.join(REPO, p)).convert('RGB') for n, p in IMAGES.items()}
    depth_anything_runs(st, noise, dts)

    # ---- the assembled Sa2VA checkpoint (tiny-qwen2 + SAM2 + text_hidden_fcs) and tiny-internlm2
    tmp = tempfile.mkdtemp(prefix='lowp-')
    try:
        e2e.materialize(tmp, os.path.join(REPO, 'fixtures/sa2va/text_hidden_fcs.safetensors'),
                        os.path.join(REPO, 'fixtures/sa2va/config.json'))
        refs, sa2va, sam32, _, _ = e2e.build_models(refsrc, tmp)
        tok_q = ivg.load_tokenizer(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    d_l = os.path.join(REPO, 'fixtures/internvl/tiny-internlm2')
    with open(os.path.join(d_l, 'config.json')) as f:
        cfg_l = json.load(f)
    stub32 = refs.sv_chat.SAM2
    refs.sv_chat.SAM2 = sys.modules['sa2va_hf.sam2'].SAM2   # the 256-wide stub the internvl fixtures were made with
    internlm2, _ = ivg.build_model(refs, cfg_l)
    refs.sv_chat.SAM2 = stub32
    sd = {k: v.float() for k, v in load_file(os.path.join(d_l, 'model.safetensors')).items()}
    missing, unexpected = internlm2.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    internlm2.eval()
    tok_l = ivg.load_tokenizer(d_l)

    # ---- (1) InternVL: ViT features, prefill logits, greedy tokens
    for kind, m32, tok in [('qwen2', sa2va, tok_q), ('internlm2', internlm2, tok_l)]:
        for name, pil in pils.items():
            pv, _ = ivg.preprocess(refs, pil)
            ref = internvl_runs(ivg, refs, m32, kind, tok, pv)
            old = load_file(os.path.join(REPO, f'fixtures/internvl/goldens/tiny-{kind}_{name}.safetensors'))
            chk = cmp(old['vit_embeds'], ref['vit_embeds'])['max_abs']
            assert chk < 1e-4 and ref['gen'] == old['generated_ids'].tolist(), (kind, name, chk)
            key = f'internvl.{kind}.{name}'
            summary[key] = {'f32': {'generated_ids': ref['gen'], 'min_gap': min(ref['gaps']),
                                    'top1_top2_gaps': [round(g, 5) for g in ref['gaps']]}}
            for dt in dts:
                dn = dt_name(dt)
                low = internvl_runs(ivg, refs, copy.deepcopy(m32).to(dt), kind, tok, pv)
                assert torch.equal(low['ids'], ref['ids'])
                noise.setdefault(key, {})[dn] = {
                    'vit_embeds': cmp(ref['vit_embeds'], low['vit_embeds']),
                    'prefill_logits_last4': cmp(ref['prefill_logits_last4'], low['prefill_logits_last4']),
                    'greedy_tokens': token_stats(ref['gen'], low['gen']),
                    'prefill_argmax_agree': int((ref['prefill_logits_last4'].argmax(-1) ==
                                                 low['prefill_logits_last4'].float().argmax(-1)).sum()),
                }
                summary[key][dn] = {'generated_ids': low['gen'], 'min_gap': min(low['gaps']),
                                    'top1_top2_gaps': [round(g, 5) for g in low['gaps']]}
                st.put(f'{dn}.{key}.vit_embeds', low['vit_embeds'], f'extract_feature(pixel_values.to({dn})), model.to({dn})')
                st.put(f'{dn}.{key}.prefill_logits_last4', low['prefill_logits_last4'],
                       "lm logits of the last 4 prompt positions ('Describe the image in detail.' prompt)")
                st.put(f'{dn}.{key}.generated_ids', torch.tensor(low['gen'], dtype=torch.int64),
                       f'{N_GREEDY} greedy tokens (argmax on the {dn} logits, first index on ties), no stop')
            print(key, json.dumps({d: {k: (v if not isinstance(v, dict) else {kk: round(vv, 5) if isinstance(vv, float) else vv
                                                                          for kk, vv in v.items()})
                                       for k, v in noise[key][d].items()} for d in noise[key]}), flush=True)

    # ---- (2) Sa2VA end to end: teacher-forced "Sure, [SEG]." -> SAM2 mask, and the split by component
    sams = {torch.float32: sam32}
    for dt in dts:
        sams[dt] = copy.deepcopy(sam32).to(dt)
    lms = {torch.float32: sa2va}
    for dt in dts:
        lms[dt] = copy.deepcopy(sa2va).to(dt)
    for name, pil in pils.items():
        pv, _ = ivg.preprocess(refs, pil)
        q = e2e.QUESTIONS[name]
        h32, se32 = sa2va_force_hidden(ivg, sa2va, tok_q, pv, q)
        r32 = sam2_seg_run(s2g, sam32, pil, se32, None)
        gold = load_file(os.path.join(REPO, 'fixtures/sa2va/goldens.safetensors'))
        assert cmp(gold[f'{name}.force.seg_embedding'], se32)['max_abs'] < 1e-4
        want = np.unpackbits(gold[f'{name}.force.final_mask_bits'].numpy())[:r32['mask'].size].reshape(r32['mask'].shape)
        f32_vs_golden = mask_stats(want.astype(bool), r32['mask'])
        key = f'sa2va.{name}'
        summary[key] = {'f32': {'iou': r32['iou'][0].tolist(), 'obj_score': float(r32['obj'][0, 0]), 'best': r32['best'],
                                'area': int(r32['mask'].sum()), 'vs_fixtures_sa2va_mask': f32_vs_golden}}
        for dt in dts:
            dn = dt_name(dt)
            h, se = sa2va_force_hidden(ivg, lms[dt], tok_q, pv, q)
            # full low-precision chain (LLM in dt, SAM2 weights in dt under CUDA autocast(dt))
            ac = CudaAutocast(dt)
            r = sam2_seg_run(s2g, sams[dt], pil, se, ac)
            # the same SAM2 on the f32 [SEG] embedding (SAM2's share of the noise) and the f32 SAM2 on the dt
            # embedding (the LLM's share)
            r_sam_only = sam2_seg_run(s2g, sams[dt], pil, se32, CudaAutocast(dt))
            r_llm_only = sam2_seg_run(s2g, sam32, pil, se.float(), None)
            # Meta-predictor style: f32 weights under autocast (the residual streams stay f32)
            r_w32 = sam2_seg_run(s2g, sam32, pil, se32, CudaAutocast(dt))
            noise.setdefault(key, {})[dn] = {
                'seg_hidden': cmp(h32, h), 'seg_embedding': cmp(se32, se),
                'image_embed': cmp(r32['image_embed'], r['image_embed']),
                'low_res_chosen': cmp(r32['chosen'], r['chosen']),
                'final_logits': cmp(r32['final_logits'], r['final_logits']),
                'iou': cmp(r32['iou'], r['iou']), 'obj_score': cmp(r32['obj'], r['obj']),
                'best_same': r['best'] == r32['best'],
                'mask': mask_stats(r32['mask'], r['mask']),
                'mask_sam2_only': mask_stats(r32['mask'], r_sam_only['mask']),
                'mask_llm_only': mask_stats(r32['mask'], r_llm_only['mask']),
                'sam2_only_low_res_chosen': cmp(r32['chosen'], r_sam_only['chosen']),
                'w32_autocast': {'mask': mask_stats(r32['mask'], r_w32['mask']),
                                 'low_res_chosen': cmp(r32['chosen'], r_w32['chosen'])},
                'autocast_ops': ac.counts,
            }
            summary[key][dn] = {'iou': r['iou'][0].float().tolist(), 'obj_score': float(r['obj'][0, 0]),
                                'best': r['best'], 'area': int(r['mask'].sum())}
            p = f'{dn}.{key}.force'
            st.put(p + '.seg_hidden', h, 'hidden_states[-1] at [SEG] (teacher-forced "Sure, [SEG].", RES prompt)')
            st.put(p + '.seg_embedding', se, 'text_hidden_fcs(seg_hidden)')
            st.put(p + '.iou', r['iou'], 'SAM2 iou_predictions [1,3] (autocast output dtype)')
            st.put(p + '.obj_score', r['obj'], 'object_score_logits [1,1]')
            st.put(p + '.best_idx', torch.tensor([r['best']], dtype=torch.int64), 'argmax(iou)')
            y0, y1 = CROP
            st.put(p + '.chosen_low_res.crop_c', r['low'][0, r['best'], y0:y1, y0:y1],
                   f'chosen low-res logits [{y0}:{y1},{y0}:{y1}] (ungated decoder output, its dtype)')
            st.put(p + '.chosen_low_res.row_sums', r['chosen'][0, 0].double().sum(1), 'float64 row sums (256)')
            st.put(p + '.final_mask_bits', np.packbits(r['mask'].reshape(-1)),
                   'final mask (256 -> 1024 -> HxW bilinear in f32, > 0), np.packbits row-major MSB-first')
            e = r['image_embed'][0].float().double()
            st.put(f'{dn}.{key}.image_embed.ch_sum', e.sum((1, 2)), 'per-channel float64 sum of the SAM2 image_embed')
            st.put(f'{dn}.{key}.image_embed.ch_abssum', e.abs().sum((1, 2)), 'per-channel float64 sum |x|')
            st.put(f'{dn}.{key}.image_embed.crop_c', r['image_embed'][0, :, 28:36, 28:36], 'image_embed[0,:,28:36,28:36]')
        print(key, json.dumps({d: {k: v for k, v in noise[key][d].items() if k.startswith('mask') or k in ('iou', 'low_res_chosen')}
                               for d in noise[key]}), flush=True)

    # ---- (3) SAM2 alone (fixtures/sam2): point / box prompts through Meta's predictor transforms
    pil = pils['chelsea']
    r32 = sam2_point_runs(s2g, sam32, pil, None)
    for dt in dts:
        dn = dt_name(dt)
        r = sam2_point_runs(s2g, sams[dt], pil, CudaAutocast(dt))
        rw = sam2_point_runs(s2g, sam32, pil, CudaAutocast(dt))
        nz = {'image_embed': cmp(r32['image_embed'], r['image_embed'])}
        for case in ('point.multi', 'point.single', 'box.multi', 'box.single'):
            a, b, c = r32[case], r[case], rw[case]
            nz[case] = {'low_res': cmp(a['low'], b['low']), 'iou': cmp(a['iou'], b['iou']),
                        'obj_score': cmp(a['obj'], b['obj']),
                        'mask256_iou': mask_stats((a['low'] > 0).numpy(), (b['low'] > 0).numpy())['iou'],
                        'w32_low_res': cmp(a['low'], c['low'])}
            st.put(f'{dn}.sam2.{case}.iou', b['iou'], 'iou_predictions')
            st.put(f'{dn}.sam2.{case}.low_res.crop_c', b['low'][0, :, 112:144, 112:144], 'low_res_masks[0,:,112:144,112:144]')
            st.put(f'{dn}.sam2.{case}.low_res.m_sum', b['low'][0].double().sum((1, 2)), 'per-mask float64 sum of logits')
            st.put(f'{dn}.sam2.{case}.low_res.m_abssum', b['low'][0].double().abs().sum((1, 2)), 'per-mask sum |logits|')
        noise.setdefault('sam2.predictor', {})[dn] = nz
    print('sam2.predictor', json.dumps({d: {k: (v['low_res']['rel'] if 'low_res' in v else v['rel'])
                                            for k, v in noise['sam2.predictor'][d].items()} for d in noise['sam2.predictor']}))

    noise['vqvae'] = {'note': 'not run in low precision: perceptio runs the VQ-VAE in f32 whatever --dtype is'}
    return st, noise, summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('refsrc', nargs='?', default='/tmp/refsrc')
    ap.add_argument('--out', default=OUT_DIR)
    ap.add_argument('--check-only', action='store_true')
    ap.add_argument('--noise-only', action='store_true')
    args = ap.parse_args()
    import warnings
    import torch
    import transformers
    from safetensors.torch import load_file, save_file
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings('ignore')
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    st, noise, summary = run(args.refsrc)
    if args.noise_only:
        print(json.dumps(noise, indent=1))
        return 0
    if args.check_only:
        old = load_file(os.path.join(args.out, 'goldens.safetensors'))
        worst = {}
        for k in sorted(set(old) | set(st.t)):
            if k not in old or k not in st.t:
                worst[k] = 'missing'
            elif not torch.equal(old[k], st.t[k]):
                worst[k] = float((old[k].double() - st.t[k].double()).abs().max())
        print('identical' if not worst else f'DIFFERENT: {worst}')
        return 1 if worst else 0
    os.makedirs(args.out, exist_ok=True)
    save_file(st.t, os.path.join(args.out, 'goldens.safetensors'), metadata={'format': 'pt'})
    os.chmod(os.path.join(args.out, 'goldens.safetensors'), 0o644)
    meta = {'versions': {'torch': torch.__version__, 'transformers': transformers.__version__,
                         'cpu_capability': torch.backends.cpu.get_cpu_capability()},
            'noise': noise, 'summary': summary, 'tensors': st.meta}
    with open(os.path.join(args.out, 'goldens.json'), 'w') as f:
        json.dump(meta, f, indent=1)
        f.write('\n')
    print('bytes:', os.path.getsize(os.path.join(args.out, 'goldens.safetensors')))
    return 0


if __name__ == '__main__':
    sys.exit(main())
