#!/usr/bin/env python3
"""Generate a tiny random-weight SAM2 checkpoint + golden outputs with Meta's `sam2==1.1.0`.

Usage (from repo root):
    /work/venv-torch/bin/pip install sam2==1.1.0 --no-deps
    /work/venv-torch/bin/pip install hydra-core omegaconf iopath tqdm
    /work/venv-torch/bin/python tools/gen_sam2_goldens.py [--out fixtures/sam2] [--check-only]

Everything runs on CPU in float32. See fixtures/sam2/README.md.
"""
import argparse, hashlib, json, os, sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import sam2  # noqa: F401  (initialises hydra config module "sam2")
from hydra import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.transformer import TwoWayTransformer
from sam2.sam2_image_predictor import SAM2ImagePredictor

SEED = int(os.environ.get("SAM2_TINY_SEED", "7"))  # 7: chosen by --search (obj scores > 0, Sa2VA mask ~44 %)
EMBED_DIM = 8  # 16 would make the trunk 300k params (over the 1.5 MB fixture budget)
D_MODEL = 32
MEM_DIM = 16
STAGES = [1, 1, 2, 1]
GLOBAL_ATT = [3]
WINDOW_SPEC = [8, 4, 4, 2]
BKG = [4, 4]
DEC_DEPTH, DEC_HEADS, DEC_MLP, IOU_HIDDEN = 2, 2, 64, 32
WEIGHT_DTYPE = torch.bfloat16  # size budget; goldens computed from the rounded weights

CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def overrides():
    chans = [EMBED_DIM * 2 ** i for i in range(len(STAGES))][::-1]
    m = "model."
    return [
        f"{m}image_encoder.trunk.embed_dim={EMBED_DIM}",
        f"{m}image_encoder.trunk.num_heads=1",
        f"{m}image_encoder.trunk.stages={STAGES}",
        f"{m}image_encoder.trunk.global_att_blocks={GLOBAL_ATT}",
        f"++{m}image_encoder.trunk.window_spec={WINDOW_SPEC}",
        f"{m}image_encoder.trunk.window_pos_embed_bkg_spatial_size={BKG}",
        f"{m}image_encoder.neck.d_model={D_MODEL}",
        f"{m}image_encoder.neck.backbone_channel_list={chans}",
        f"{m}image_encoder.neck.position_encoding.num_pos_feats={D_MODEL}",
        # memory modules (unused by the image path, as small as the classes allow)
        f"{m}memory_attention.d_model={D_MODEL}",
        f"{m}memory_attention.num_layers=1",
        f"{m}memory_attention.layer.d_model={D_MODEL}",
        f"{m}memory_attention.layer.dim_feedforward={D_MODEL}",
        f"{m}memory_attention.layer.self_attention.embedding_dim={D_MODEL}",
        f"{m}memory_attention.layer.cross_attention.embedding_dim={D_MODEL}",
        f"{m}memory_attention.layer.cross_attention.kv_in_dim={MEM_DIM}",
        f"{m}memory_encoder.out_dim={MEM_DIM}",
        f"{m}memory_encoder.position_encoding.num_pos_feats={MEM_DIM}",
        f"{m}memory_encoder.fuser.layer.dim={D_MODEL}",
        f"{m}memory_encoder.fuser.num_layers=1",
        f"++{m}memory_encoder.in_dim={D_MODEL}",
        f"++{m}memory_encoder.mask_downsampler.embed_dim={D_MODEL}",
        f"{m}memory_encoder.mask_downsampler.kernel_size=1",
        f"{m}memory_encoder.mask_downsampler.stride=4",
        f"{m}memory_encoder.mask_downsampler.padding=0",
        # match Sa2VA's SAM2 key set (Sa2VA builds the SAM2.0 variant: no
        # no_obj_embed_spatial, no obj_ptr_tpos_proj)
        f"{m}no_obj_embed_spatial=false",
        f"{m}add_tpos_enc_to_obj_ptrs=false",
        f"{m}proj_tpos_enc_in_obj_ptrs=false",
        f"{m}use_signed_tpos_enc_to_obj_ptrs=false",
        # same as build_sam2(apply_postprocessing=True) and Sa2VA
        f"++{m}sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
        f"++{m}sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
        f"++{m}sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    ]


def build():
    torch.manual_seed(SEED)
    cfg = compose(config_name=CFG, overrides=overrides())
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model, _recursive_=True)
    # SAM2Base._build_sam_heads hardcodes mlp_dim=2048, num_heads=8, iou_head_hidden_dim=256;
    # rebuild the mask decoder with Meta's own classes at tiny width (same structure).
    old = model.sam_mask_decoder
    model.sam_mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=DEC_DEPTH, embedding_dim=D_MODEL,
                                      mlp_dim=DEC_MLP, num_heads=DEC_HEADS),
        transformer_dim=D_MODEL,
        iou_head_depth=3,
        iou_head_hidden_dim=IOU_HIDDEN,
        use_high_res_features=model.use_high_res_features_in_sam,
        iou_prediction_use_sigmoid=model.iou_prediction_use_sigmoid,
        pred_obj_scores=model.pred_obj_scores,
        pred_obj_scores_mlp=model.pred_obj_scores_mlp,
        use_multimask_token_for_obj_ptr=model.use_multimask_token_for_obj_ptr,
        **(model.sam_mask_decoder_extra_args or {}),
    )
    del old
    model.eval()
    return model, cfg


def reinit(model):
    g = torch.Generator().manual_seed(1234 + SEED)

    def n(shape, std, mean=0.0):
        return torch.randn(shape, generator=g) * std + mean

    with torch.no_grad():
        for mname, mod in sorted(model.named_modules(), key=lambda x: x[0]):
            for pname, p in sorted(mod.named_parameters(recurse=False), key=lambda x: x[0]):
                full = f"{mname}.{pname}" if mname else pname
                if isinstance(mod, (nn.LayerNorm, nn.GroupNorm)) or type(mod).__name__ == "LayerNorm2d":
                    v = n(p.shape, 0.1, 1.0) if pname == "weight" else n(p.shape, 0.05)
                elif isinstance(mod, nn.Embedding):
                    v = n(p.shape, 1.0)
                elif isinstance(mod, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                    if pname == "weight":
                        if isinstance(mod, nn.ConvTranspose2d):
                            fan_in = p.shape[0] * p[0, 0].numel() // (mod.stride[0] * mod.stride[1])
                        else:
                            fan_in = p[0].numel()
                        v = n(p.shape, (1.0 / max(fan_in, 1)) ** 0.5)
                    else:
                        v = n(p.shape, 0.05)
                else:  # raw parameters: pos embeds, no_mem_embed, layer scale gamma, ...
                    v = n(p.shape, 0.1)
                p.copy_(v)
            for bname, b in sorted(mod.named_buffers(recurse=False), key=lambda x: x[0]):
                if bname == "positional_encoding_gaussian_matrix":
                    b.copy_(n(b.shape, 1.0))
        # round to storage dtype so goldens match stored weights exactly
        for p in model.parameters():
            p.copy_(p.to(WEIGHT_DTYPE).float())
        for name, b in model.named_buffers():
            if b.is_floating_point():
                b.copy_(b.to(WEIGHT_DTYPE).float())


def sha(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


class Store:
    def __init__(self):
        self.t, self.meta = {}, {}

    def put(self, name, x, desc):
        x = x.detach().contiguous() if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
        self.t[name] = x.clone()
        self.meta[name] = {"shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", ""), "desc": desc}

    def spot(self, name, x, desc, crop=8):
        """Spot-check a big [1,C,H,W] float tensor: per-channel stats + two crops."""
        x = x.detach().float()
        _, C, H, W = x.shape
        self.meta[name] = {"shape": list(x.shape), "desc": desc, "stored": "spot-check only (see .crop_tl/.crop_c/.ch_*)",
                           "sha256_f32_le": sha(x.numpy())}
        self.put(name + ".crop_tl", x[0, :, :crop, :crop], f"{name}[0, :, 0:{crop}, 0:{crop}]")
        h0, w0 = H // 2 - crop // 2, W // 2 - crop // 2
        self.put(name + ".crop_c", x[0, :, h0:h0 + crop, w0:w0 + crop],
                 f"{name}[0, :, {h0}:{h0 + crop}, {w0}:{w0 + crop}]")
        xd = x[0].double()
        self.put(name + ".ch_sum", xd.sum((1, 2)), f"per-channel sum of {name} (float64)")
        self.put(name + ".ch_abssum", xd.abs().sum((1, 2)), f"per-channel sum |x| of {name} (float64)")
        self.put(name + ".ch_sqsum", (xd * xd).sum((1, 2)), f"per-channel sum x^2 of {name} (float64)")


def bits(mask):
    """bool [..., H, W] -> packed uint8, row-major over all dims, MSB first (np.packbits default)."""
    return np.packbits(np.asarray(mask, dtype=bool).reshape(-1))


def put_masks(st, name, low, desc):
    """low: [1, M, 256, 256] logits."""
    low = low.detach().float()
    st.put(name + ".bits_gt0", bits(low[0].numpy() > 0), f"{desc}: (logits > 0) packed bits, shape {list(low[0].shape)}, row-major MSB-first")
    st.put(name + ".m_sum", low[0].double().sum((1, 2)), f"{desc}: per-mask sum of logits (float64)")
    st.put(name + ".m_abssum", low[0].double().abs().sum((1, 2)), f"{desc}: per-mask sum |logits| (float64)")
    st.put(name + ".crop_c", low[0, :, 112:144, 112:144], f"{desc}: logits[0, :, 112:144, 112:144]")
    st.put(name + ".crop_tl", low[0, :, 0:16, 0:16], f"{desc}: logits[0, :, 0:16, 0:16]")
    st.meta[name] = {"shape": list(low.shape), "desc": desc, "sha256_f32_le": sha(low.numpy()),
                     "frac_gt0": [float((low[0, i] > 0).float().mean()) for i in range(low.shape[1])]}


def encode(model, x):
    """Same as SAM2ImagePredictor.set_image after the transform."""
    backbone_out = model.forward_image(x)
    _, vision_feats, vision_pos, feat_sizes = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    feats = [f.permute(1, 2, 0).view(1, -1, *s) for f, s in zip(vision_feats, feat_sizes)]
    pos = [p.permute(1, 2, 0).view(1, -1, *s) for p, s in zip(vision_pos, feat_sizes)]
    return feats, pos, feat_sizes


def decode(model, feats, coords, labels, multimask, extra_sparse=None):
    pe = model.sam_prompt_encoder
    sparse, dense = pe(points=(coords, labels) if coords is not None else None, boxes=None, masks=None)
    if extra_sparse is not None:
        sparse = torch.cat([sparse, extra_sparse], dim=1)
    low, iou, tokens, obj = model.sam_mask_decoder(
        image_embeddings=feats[-1], image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=multimask, repeat_image=False,
        high_res_features=feats[:-1])
    return sparse, dense, low, iou, tokens, obj


def run(out_dir, image_path, write=True):
    model, cfg = build()
    reinit(model)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # round-trip through Meta's checkpoint format with a fresh model, strict load
    if write:
        os.makedirs(out_dir, exist_ok=True)
        torch.save({"model": {k: v.to(WEIGHT_DTYPE) for k, v in sd.items()}}, os.path.join(out_dir, "tiny_sam2.pt"))
        save_file({"grounding_encoder.sam2_model." + k: v.to(WEIGHT_DTYPE).contiguous() for k, v in sd.items()},
                  os.path.join(out_dir, "tiny_sa2va_sam2.safetensors"))
        model2, _ = build()
        ck = torch.load(os.path.join(out_dir, "tiny_sam2.pt"), map_location="cpu", weights_only=True)["model"]
        missing, unexpected = model2.load_state_dict(ck)  # strict, like sam2.build_sam._load_checkpoint
        assert not missing and not unexpected
        model = model2.eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k

    st = Store()
    pil = Image.open(image_path).convert("RGB")
    W, H = pil.size
    pred = SAM2ImagePredictor(model)
    with torch.no_grad():
        # ---------------- SAM2ImagePredictor preprocessing ----------------
        x = pred._transforms(pil)[None]
        assert x.shape == (1, 3, 1024, 1024) and x.dtype == torch.float32
        img_meta = {"sha256_f32_le_per_channel": [sha(x[0, c].numpy()) for c in range(3)],
                    "sum_per_channel": [float(x[0, c].double().sum()) for c in range(3)],
                    "first8_per_channel": [x[0, c].reshape(-1)[:8].tolist() for c in range(3)]}
        st.put("sam2tf.image.crop_tl", x[0, :, :32, :32], "SAM2Transforms image[0, :, 0:32, 0:32]")
        st.put("sam2tf.image.crop_c", x[0, :, 496:528, 496:528], "SAM2Transforms image[0, :, 496:528, 496:528]")
        st.meta["sam2tf.image"] = dict(shape=[1, 3, 1024, 1024], desc="SAM2ImagePredictor input (not stored)", **img_meta)
        pred.set_image(pil)
        feats, pos, feat_sizes = encode(model, x)
        assert torch.equal(feats[-1], pred._features["image_embed"])
        for a, b in zip(feats[:-1], pred._features["high_res_feats"]):
            assert torch.equal(a, b)
        names = ["high_res_feat0", "high_res_feat1", "image_embed"]
        for nm, f in zip(names, feats):
            st.spot("sam2tf." + nm, f, f"{nm} {list(f.shape)} (after _prepare_backbone_features; image_embed has no_mem_embed added)")
        st.spot("sam2tf.vision_pos_enc_lowres", pos[-1], "vision_pos_enc of the 64x64 level (PositionEmbeddingSine, image-independent)")
        dense_pe = model.sam_prompt_encoder.get_dense_pe()
        st.spot("dense_pe", dense_pe, "sam_prompt_encoder.get_dense_pe() [1,32,64,64] (image_pe for the decoder)")
        st.put("no_mask_embed", model.sam_prompt_encoder.no_mask_embed.weight[0],
               "dense prompt when no mask = no_mask_embed.weight[0] broadcast to [1,32,64,64]")

        cases = {}
        # (a) one positive point
        mi, uc, lab, ub = pred._prep_prompts(np.array([[225.0, 150.0]]), np.array([1]), None, None, True)
        cases["point"] = (uc, lab)
        # (b) a box
        mi, uc2, lab2, ub2 = pred._prep_prompts(None, None, np.array([100.0, 50.0, 350.0, 250.0]), None, True)
        bc = ub2.reshape(-1, 2, 2)
        cases["box"] = (bc, torch.tensor([[2, 3]], dtype=torch.int))
        summary = {}
        for cname, (c, l) in cases.items():
            st.put(f"{cname}.coords", c, f"{cname}: point coords after SAM2Transforms.transform_coords (x/W*1024, y/H*1024)")
            st.put(f"{cname}.labels", l.to(torch.int32), f"{cname}: point labels (box = two corner points labelled 2,3)")
            for mm in (True, False):
                sparse, dense, low, iou, tok, obj = decode(model, feats, c, l, mm)
                tag = f"{cname}.{'multi' if mm else 'single'}"
                if mm:
                    st.put(f"{cname}.sparse", sparse, f"{cname}: sparse prompt embeddings")
                    assert torch.equal(dense, model.sam_prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 64, 64))
                put_masks(st, tag + ".low_res_masks", low, f"{tag} raw decoder low_res_masks (unclamped)")
                st.put(tag + ".iou", iou, f"{tag} iou_predictions (sigmoid applied)")
                st.put(tag + ".obj_score", obj, f"{tag} object_score_logits")
                st.put(tag + ".tokens", tok, f"{tag} sam_output_tokens")
                # check against the predictor's public path
                m2, iou2, low2 = pred._predict(c, l, None, None, multimask_output=mm, return_logits=True) if cname == "point" else \
                    pred._predict(None, None, ub2, None, multimask_output=mm, return_logits=True)
                assert torch.equal(iou2, iou) and torch.equal(low2, low.clamp(-32, 32))
                fb = None
                if not mm:
                    dec = model.sam_mask_decoder
                    dec.dynamic_multimask_via_stability = False
                    low_plain = decode(model, feats, c, l, False)[2]
                    dec.dynamic_multimask_via_stability = True
                    fb = not torch.equal(low_plain, low)
                summary[tag] = {"dynamic_stability_fallback_used": fb,"iou": iou[0].tolist(), "obj_score": obj[0].tolist(),
                                "frac_gt0": st.meta[tag + ".low_res_masks"]["frac_gt0"]}

        # ---------------- Sa2VA path ----------------
        g = pil.resize((1024, 1024))  # DirectResize: PIL default resample (BICUBIC) on uint8 RGB
        g = np.array(g)
        st.meta["sa2va.image_uint8"] = {"shape": list(g.shape), "desc": "PIL Image.resize((1024,1024)) (default bicubic) of the RGB image, HWC uint8", "sha256": sha(g)}
        st.put("sa2va.image_uint8.crop_tl", g[:64, :64], "sa2va uint8 HWC [0:64, 0:64, :]")
        gx = torch.from_numpy(g).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        gx = ((gx - mean) / std)[None]
        st.spot("sa2va.image", gx, "Sa2VA g_pixel_values after preprocess_image, float32 here", crop=32)
        sfeats, spos, _ = encode(model, gx)
        for nm, f in zip(names, sfeats):
            st.spot("sa2va." + nm, f, f"Sa2VA-preprocessed {nm} {list(f.shape)}")
        seg = torch.randn(1, 1, D_MODEL, generator=torch.Generator().manual_seed(4321 + SEED))
        st.put("sa2va.seg_embedding", seg, "[SEG] embedding (after text_hidden_fcs), appended as an extra sparse token")
        pc = torch.zeros(1, 1, 2)
        pl = -torch.ones(1, 1, dtype=torch.int32)
        sparse, dense, low, iou, tok, obj = decode(model, sfeats, pc, pl, True, extra_sparse=seg)
        st.put("sa2va.sparse", sparse, "sparse embeddings = [padding point (0,0) label -1 embedding, seg_embedding]")
        put_masks(st, "sa2va.low_res_multimasks_raw", low, "Sa2VA multimask decoder output before obj-score gating")
        st.put("sa2va.iou", iou, "iou_predictions (sigmoid)")
        st.put("sa2va.obj_score", obj, "object_score_logits")
        gated = torch.where((obj > 0)[:, None, None], low, torch.tensor(-1024.0))
        best = int(torch.argmax(iou, dim=-1)[0])
        chosen = gated[:, best:best + 1]
        st.put("sa2va.chosen_low_res", chosen, "gated low-res logits of the best-IoU mask [1,1,256,256] (full, float32)")
        st.put("sa2va.best_idx", torch.tensor([best], dtype=torch.int64), "argmax of iou")
        hr = F.interpolate(chosen, size=(1024, 1024), mode="bilinear", align_corners=False)
        st.spot("sa2va.high_res", hr, "bilinear(align_corners=False) 256->1024 of chosen", crop=32)
        fin = F.interpolate(hr, size=(H, W), mode="bilinear", align_corners=False)
        final = (fin.sigmoid() > 0.5)[0, 0].numpy()
        assert np.array_equal(final, (fin > 0)[0, 0].numpy())
        st.put("sa2va.final_mask_bits", bits(final), f"final mask [{H},{W}] bool packed, row-major MSB-first")
        st.put("sa2va.final_logits_row_sums", fin[0, 0].double().sum(1), "row sums of the [H,W] logits before threshold")
        summary["sa2va"] = {"iou": iou[0].tolist(), "obj_score": obj[0].tolist(), "best": best,
                            "final_frac": float(final.mean()),
                            "frac_gt0": st.meta["sa2va.low_res_multimasks_raw"]["frac_gt0"]}
    return model, cfg, sd, st, summary, (H, W)


if __name__ == "__main__" and "--search" in sys.argv:
    # find a seed whose Sa2VA case is non-degenerate (object score > 0, final mask 5..95 %)
    torch.set_num_threads(4)
    for sd_ in range(int(sys.argv[-1])):
        SEED = sd_
        r = run(None, "fixtures/images/chelsea.png", write=False)[4]
        print(sd_, {k: (round(v["obj_score"][0], 3), [round(f, 3) for f in v["frac_gt0"]]) for k, v in r.items()},
              r["sa2va"]["final_frac"], flush=True)
    sys.exit(0)

if __name__ == "__main__" and "--count" in sys.argv:
    m, _ = build()
    sd = m.state_dict()
    print(sum(v.numel() for v in sd.values()))
    agg = {}
    for k, v in sd.items():
        agg[k.split(".")[0]] = agg.get(k.split(".")[0], 0) + v.numel()
    print(agg)
    sys.exit(0)


def cfg_json(model, cfg):
    c = OmegaConf.to_container(cfg.model, resolve=True)
    t = model.image_encoder.trunk
    return {
        "hydra_base_config": CFG, "hydra_overrides": overrides(), "sam2_version": "1.1.0",
        "seed": SEED, "weight_dtype": str(WEIGHT_DTYPE).replace("torch.", ""),
        "trunk": {"embed_dim": EMBED_DIM, "num_heads": 1, "stages": STAGES, "global_att_blocks": GLOBAL_ATT,
                  "window_spec": WINDOW_SPEC, "window_pos_embed_bkg_spatial_size": BKG, "q_pool": 3,
                  "q_stride": [2, 2], "dim_mul": 2.0, "head_mul": 2.0, "patch_kernel": [7, 7], "patch_stride": [4, 4],
                  "patch_padding": [3, 3], "mlp_ratio": 4.0, "channel_list": list(t.channel_list),
                  "stage_ends": list(t.stage_ends), "q_pool_blocks": list(t.q_pool_blocks),
                  "per_block": [{"dim": b.dim, "dim_out": b.dim_out, "heads": b.attn.num_heads,
                                 "window_size": b.window_size, "q_pool": b.pool is not None}
                                for b in t.blocks]},
        "neck": {"d_model": D_MODEL, "backbone_channel_list": list(model.image_encoder.neck.backbone_channel_list),
                 "fpn_top_down_levels": list(model.image_encoder.neck.fpn_top_down_levels),
                 "fpn_interp_model": "nearest", "scalp": 1, "position_encoding": c["image_encoder"]["neck"]["position_encoding"]},
        "hidden_dim": model.hidden_dim, "mem_dim": model.mem_dim, "image_size": model.image_size,
        "backbone_stride": model.backbone_stride, "sam_image_embedding_size": model.sam_image_embedding_size,
        "prompt_encoder": {"embed_dim": D_MODEL, "image_embedding_size": [64, 64], "input_image_size": [1024, 1024],
                           "mask_in_chans": 16, "pe_scale": 1.0},
        "mask_decoder": {"transformer_dim": D_MODEL, "transformer_depth": DEC_DEPTH, "transformer_num_heads": DEC_HEADS,
                         "transformer_mlp_dim": DEC_MLP, "attention_downsample_rate": 2, "num_multimask_outputs": 3,
                         "iou_head_depth": 3, "iou_head_hidden_dim": IOU_HIDDEN, "activation": "GELU",
                         "use_high_res_features": model.use_high_res_features_in_sam,
                         "iou_prediction_use_sigmoid": model.iou_prediction_use_sigmoid,
                         "pred_obj_scores": model.pred_obj_scores, "pred_obj_scores_mlp": model.pred_obj_scores_mlp,
                         "use_multimask_token_for_obj_ptr": model.use_multimask_token_for_obj_ptr,
                         "dynamic_multimask_via_stability": True, "dynamic_multimask_stability_delta": 0.05,
                         "dynamic_multimask_stability_thresh": 0.98},
        "sam2base": {k: c.get(k) for k in ["num_maskmem", "image_size", "sigmoid_scale_for_mem_enc",
                     "sigmoid_bias_for_mem_enc", "use_mask_input_as_output_without_sam", "directly_add_no_mem_embed",
                     "no_obj_embed_spatial", "use_high_res_features_in_sam", "multimask_output_in_sam",
                     "iou_prediction_use_sigmoid", "use_obj_ptrs_in_encoder", "add_tpos_enc_to_obj_ptrs",
                     "proj_tpos_enc_in_obj_ptrs", "use_signed_tpos_enc_to_obj_ptrs", "only_obj_ptrs_in_the_past_for_eval",
                     "pred_obj_scores", "pred_obj_scores_mlp", "fixed_no_obj_ptr", "multimask_output_for_tracking",
                     "use_multimask_token_for_obj_ptr", "multimask_min_pt_num", "multimask_max_pt_num",
                     "use_mlp_for_obj_ptr_proj"]},
        "memory_attention": c["memory_attention"], "memory_encoder": c["memory_encoder"],
    }


NOTES = {
    "sam2tf_preprocess": "SAM2ImagePredictor/SAM2Transforms: PIL RGB -> ToTensor (uint8/255, CHW float32) -> "
        "torchvision Resize((1024,1024)) = bilinear, antialias=True, on the float tensor (no aspect preservation, "
        "no padding); bit-identical to F.interpolate(mode='bilinear', align_corners=False, antialias=True); "
        "max |diff| 6e-7 vs antialias=False (upscaling, so mathematically plain half-pixel bilinear) -> "
        "Normalize(mean=[0.485,0.456,0.406], std=[0.229,0.224,0.225]) as (x-mean)/std.",
    "sa2va_preprocess": "Sa2VA DirectResize: PIL Image.resize((1024,1024)) with the default resample (BICUBIC, "
        "Pillow 13) on the uint8 RGB image, then float/255, (x-mean)/std (Sa2VA does this in bf16 on GPU; here float32).",
    "encoder": "forward_image -> _prepare_backbone_features (scalp=1 drops the 32x32 level) -> no_mem_embed added to the "
        "64x64 level only -> [1,C,H,W]. High-res levels are already projected by sam_mask_decoder.conv_s0/conv_s1 "
        "inside forward_image (32->4 and 32->8 channels).",
    "point_transform": "coords = (x / W * 1024, y / H * 1024) with W,H the original size (float32); labels int32.",
    "box_transform": "box (x0,y0,x1,y1) -> two points [[x0,y0],[x1,y1]] transformed as above, labels [2,3], passed as "
        "points (boxes=None) to the prompt encoder, exactly as SAM2ImagePredictor._predict does.",
    "prompt_encoder": "PromptEncoder._embed_points: coords += 0.5 (pixel centre); since boxes=None (boxes are passed "
        "as points) pad=True ALWAYS appends one padding point (0,0) label -1; PE = [sin, cos](2*pi*((2*c/1024-1) @ G)) "
        "with G = pe_layer.positional_encoding_gaussian_matrix [2,16], x normalised by width, y by height; label -1 -> "
        "embedding = not_a_point_embed (PE zeroed); label k in 0..3 -> PE + point_embeddings[k]. Token counts: "
        "point = [point, pad] (2), box = [corner(2), corner(3), pad] (3), Sa2VA = [(0,0) label -1, pad, seg] (3; the "
        "first two are both exactly not_a_point_embed). dense = no_mask_embed broadcast to [1,32,64,64]; "
        "image_pe = get_dense_pe() (same random-Fourier PE on the 64x64 grid of cell centres).",
    "decoder": "MaskDecoder(multimask_output) with repeat_image=False, high_res_features=[feat0, feat1]. iou via sigmoid. "
        "multimask output = masks[:,1:4]; single = masks[:,0:1] unless dynamic_multimask_via_stability falls back "
        "(it did not fire for these cases; see summary.*.dynamic_stability_fallback_used). low_res_masks stored "
        "UNCLAMPED (the predictor clamps its returned low-res logits to [-32,32]; that was checked).",
    "sa2va_post": "Sa2VA _forward_sam_heads: masks = where(object_score_logits > 0, masks, -1024); best = argmax(iou); "
        "pred_masks = chosen [1,1,256,256] -> bilinear(align_corners=False) to 1024x1024 (_get_orig_video_res_output, "
        "video size = 1024) -> bilinear(align_corners=False) to (H,W) of the original image -> sigmoid > 0.5 "
        "(identical to > 0 here).",
    "bits": "bool masks packed with np.packbits over the row-major flattened array, MSB first; unpack and reshape.",
    "spot_checks": "tensors too big to store are given as .crop_tl/.crop_c (see desc for exact slices), per-channel "
        "float64 sum, sum|x|, sum x^2, and sha256 of the float32 little-endian bytes (bit-exact only).",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fixtures/sam2")
    ap.add_argument("--image", default="fixtures/images/chelsea.png")
    ap.add_argument("--keys-table", action="store_true", help="print the checkpoint key/shape table")
    ap.add_argument("--check-only", action="store_true", help="recompute and compare with stored goldens")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model, cfg, sd, st, summary, (H, W) = run(a.out, a.image, write=not a.check_only)
    print(json.dumps(summary, indent=1))
    if a.check_only:
        from safetensors.torch import load_file
        old = load_file(os.path.join(a.out, "goldens.safetensors"))
        bad = [k for k in st.t if not torch.equal(old[k], st.t[k])]
        print("identical" if not bad else f"MISMATCH: {bad}")
        return 1 if bad else 0
    save_file(st.t, os.path.join(a.out, "goldens.safetensors"))
    meta = {"image": a.image, "orig_hw": [H, W], "notes": NOTES, "tensors": st.meta, "summary": summary}
    json.dump(meta, open(os.path.join(a.out, "goldens.json"), "w"), indent=1)
    json.dump(cfg_json(model, cfg), open(os.path.join(a.out, "tiny_sam2_config.json"), "w"), indent=1)
    if a.keys_table:  # markdown table of checkpoint keys (pasted into README.md)
        print("| key | shape |\n|---|---|")
        for k, v in sd.items():
            print(f"| `{k}` | {list(v.shape)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
