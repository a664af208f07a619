#!/usr/bin/env python3
"""End-to-end Sa2VA golden: tiny InternVL (fixtures/internvl/tiny-qwen2) + tiny SAM2 (fixtures/sam2) + a new
text_hidden_fcs, assembled as a SHARDED Sa2VA checkpoint (manual; never run in CI).

    # venv + reference checkouts: see tools/gen_internvl_goldens.py and tools/gen_sam2_goldens.py
    /work/venv-torch/bin/python tools/gen_sa2va_e2e_goldens.py                 # writes fixtures/sa2va/*
    /work/venv-torch/bin/python tools/gen_sa2va_e2e_goldens.py --check-only    # recompute + compare, writes nothing
    /work/venv-torch/bin/python tools/gen_sa2va_e2e_goldens.py --materialize /tmp/sa2va-tiny
                                                    # only assemble the sharded checkpoint dir (for manual checks)
    /work/venv-torch/bin/python tools/gen_sa2va_e2e_goldens.py --search 10     # seed scan for text_hidden_fcs
    /work/venv-torch/bin/python tools/gen_sa2va_e2e_goldens.py --layout internvl3 [--check-only | --search N]
                                                    # Sa2VA-InternVL3 layout -> fixtures/sa2va_internvl3/*
    /work/venv-torch/bin/python tools/gen_sa2va_e2e_goldens.py --layout sa2va26b [--check-only | --search N]
                                                    # Sa2VA-26B layout -> fixtures/sa2va_26b/* (InternViT-6B-style
                                                    # tower, InternLM2, SentencePiece tokenizer.model)

--layout internvl3 makes its own InternVL part instead of tiny-qwen2 (see the comment at LAYOUT below and
fixtures/sa2va_internvl3/README.md): internvl.safetensors (untied lm_head), config.json, text_hidden_fcs, goldens;
its SAM2 masks are Sa2VA's (NOT gated by the object score), and --search varies the weights seed too.

Inputs (must already exist, made by the two other scripts): fixtures/internvl/tiny-qwen2/{config.json,
model.safetensors, tokenizer files}, fixtures/sam2/{tiny_sa2va_sam2.safetensors, tiny_sam2_config.json},
fixtures/images/{chelsea,coffee_portrait}.png; reference sources in /tmp/refsrc/{Sa2VA,InternVL}.

Outputs (fixtures/sa2va/): text_hidden_fcs.safetensors (4 new bf16 tensors), config.json (tiny-qwen2's + a
"sam2" geometry block), goldens.safetensors + goldens.json. See fixtures/sa2va/README.md.

The goldens are computed from the ASSEMBLED checkpoint (a temp dir built by `materialize`, read back through its
model.safetensors.index.json), so they depend on exactly the weights the Rust test assembles:
  model-00001-of-00003 = tiny-qwen2/model.safetensors minus text_hidden_fcs.* and minus grounding_encoder.*
                         (its 256-wide stub `grounding_encoder.sam2_model.no_mem_embed` would clash with SAM2's)
  model-00002-of-00003 = fixtures/sam2/tiny_sa2va_sam2.safetensors
  model-00003-of-00003 = fixtures/sa2va/text_hidden_fcs.safetensors
InternVL part: Sa2VA's Sa2VAChatModel (via tools/gen_internvl_goldens.py helpers, SAM2 stubbed with a module that
holds only no_mem_embed [1,1,32] so that text_hidden_fcs is built 64->64->32 by Sa2VA's own __init__).
SAM2 part: Meta sam2==1.1.0 model built exactly like tools/gen_sam2_goldens.py, strict-loaded from shard 2.
All compute float32 on CPU, 1 thread, deterministic algorithms.
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tools'))

IVL_DIR = os.path.join(REPO, 'fixtures/internvl/tiny-qwen2')
IVL_GOLDENS = os.path.join(REPO, 'fixtures/internvl/goldens')
SAM2_DIR = os.path.join(REPO, 'fixtures/sam2')
OUT_DIR = os.path.join(REPO, 'fixtures/sa2va')
IMAGES = {'chelsea': 'fixtures/images/chelsea.png', 'portrait': 'fixtures/images/coffee_portrait.png'}
# user turn = '<image>\n' + QUESTION (build_prompt prepends '<image>\n'); note the leading space: Sa2VA's
# RefCOCO evaluation prompt is '<image>\n Please segment {} in this image.'
QUESTIONS = {'chelsea': ' Please segment the cat in this image.',
             'portrait': ' Please segment the cup in this image.'}
FORCED_REPLY = 'Sure, [SEG].'
MAX_NEW = 24
FCS_SEED = int(os.environ.get('SA2VA_FCS_SEED', '19'))  # 19: --search 40, obj_score > 0 on both images
FCS_IN, FCS_OUT = 64, 32
# --layout internvl3 (Sa2VA-InternVL3-{2B,8B,14B}: InternViT-300M + Qwen2.5): the InternVL part is not tiny-qwen2
# but made here (fixtures/sa2va_internvl3/internvl.safetensors) from IVL3_SEED, in the layout InternVL >= 2.5 writes:
# InternVLChatConfig forces llm_config.tie_word_embeddings = False (InternVL commit 22839ce, "Update InternVL 2.5
# training code"), Sa2VA's convert_to_hf.py passes that config on (Sa2VAChatConfig.from_pretrained(cfg.path)), so
# the checkpoint stores its own language_model.lm_head.weight; other head counts than tiny-qwen2 (ViT 3 heads,
# LLM 6 heads over 2 KV heads), and a sliding_window shorter than the prompt with use_sliding_window false.
LAYOUT = 'internvl2_5'
IVL3_SEED_BASE = 20250401
IVL3_SEED = int(os.environ.get('SA2VA_IVL3_SEED', '23'))  # 23: --search 49, [SEG] in a greedy reply, every obj_score < 0
IVL3_FCS_IN = 48
# --layout sa2va26b (Sa2VA-26B: InternViT-6B + InternLM2.5-20B): InternVL part made here too
# (fixtures/sa2va_26b/internvl.safetensors) from S26B_SEED: a vision tower with InternViT-6B's switches (RMSNorm,
# qk-normalization over the whole width, no qkv bias, an odd head count, eps 1e-6; cf. gen_internvit6b_goldens.py),
# mlp1, an InternLM2 LLM (own `output` head, wqkv grouped per KV head) with template internlm2_chat and InternLM2's
# slow SentencePiece tokenizer (fixtures/tokenizer/internlm2-spm: tokenizer.model + tokenizer_config.json, loaded
# with Sa2VA's own tokenization_internlm2.InternLM2Tokenizer; encode() prepends <s>, as predict_forward's does).
S26B_SEED = int(os.environ.get('SA2VA_26B_SEED', '0'))
SPM_DIR = os.path.join(REPO, 'fixtures/tokenizer/internlm2-spm')
SPM_FILES = ['tokenizer.model', 'tokenizer_config.json']
S26B_FCS_IN = 32   # LLM width (the ~3k-piece vocab's embedding and output dominate the file)
SHARDS = ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors',
          'model-00003-of-00003.safetensors']
TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json']
CROP = (112, 144)


# ----------------------------------------------------------------------------- weights / config
def make_text_hidden_fcs(seed):
    """Linear(64,64) -> ReLU -> Linear(64,32); W ~ N(0, gain^2/fan_in) (gain sqrt2 then 1), b ~ N(0, 0.05^2); bf16."""
    import torch
    g = torch.Generator().manual_seed(seed)

    def n(shape, std):
        return (torch.randn(shape, generator=g, dtype=torch.float32) * std).to(torch.bfloat16).contiguous()
    return {
        'text_hidden_fcs.0.weight': n((FCS_IN, FCS_IN), math.sqrt(2.0) / math.sqrt(FCS_IN)),
        'text_hidden_fcs.0.bias': n((FCS_IN,), 0.05),
        'text_hidden_fcs.2.weight': n((FCS_OUT, FCS_IN), 1.0 / math.sqrt(FCS_IN)),
        'text_hidden_fcs.2.bias': n((FCS_OUT,), 0.05),
    }


def sam2_block():
    with open(os.path.join(SAM2_DIR, 'tiny_sam2_config.json')) as f:
        c = json.load(f)
    t, nk, md, sb = c['trunk'], c['neck'], c['mask_decoder'], c['sam2base']
    return {
        'image_size': c['image_size'],
        'trunk': {'num_heads': t['num_heads'], 'global_att_blocks': t['global_att_blocks'],
                  'window_spec': t['window_spec'], 'q_pool': t['q_pool'], 'q_stride': t['q_stride'],
                  'dim_mul': t['dim_mul'], 'head_mul': t['head_mul']},
        'neck': {'fpn_top_down_levels': nk['fpn_top_down_levels'], 'fpn_interp_model': nk['fpn_interp_model'],
                 'fuse_type': 'sum', 'scalp': nk['scalp']},
        'decoder': {'num_heads': md['transformer_num_heads'],
                    'iou_prediction_use_sigmoid': md['iou_prediction_use_sigmoid'],
                    'dynamic_multimask_via_stability': md['dynamic_multimask_via_stability'],
                    'dynamic_multimask_stability_delta': md['dynamic_multimask_stability_delta'],
                    'dynamic_multimask_stability_thresh': md['dynamic_multimask_stability_thresh'],
                    'use_multimask_token_for_obj_ptr': md['use_multimask_token_for_obj_ptr']},
        'directly_add_no_mem_embed': sb['directly_add_no_mem_embed'],
    }


def internvl3_config():
    """config.json of a Sa2VA-InternVL3 checkpoint, tiny: InternVLChatConfig.to_dict() fields of InternVL3 (ViT
    InternViT-300M-448px-V2_5 switches: LayerNorm, qkv bias, no qk-norm; llm_config a Qwen2Config of Qwen2.5 with
    tie_word_embeddings forced false) as Sa2VA's converter re-saves them (template qwen_chat from
    sa2va_in30_*.py, vocab_size = len(tokenizer)). Written in the transformers-4.x key style of the real files."""
    import gen_internvl_goldens as ivg
    tok = ivg.load_tokenizer(IVL_DIR)
    vocab = len(tok)
    with open(os.path.join(IVL_DIR, 'config.json')) as f:
        cfg = json.load(f)      # tiny-qwen2's top level: the same Sa2VAChatConfig fields
    vc = ivg.vision_config_dict()
    vc.update(hidden_size=24, num_attention_heads=3, intermediate_size=48)
    lc = ivg.llm_config_dict('qwen2', vocab, tok)
    lc.update(hidden_size=IVL3_FCS_IN, intermediate_size=96, num_attention_heads=6, num_key_value_heads=2,
              max_position_embeddings=32768, tie_word_embeddings=False, use_sliding_window=False,
              sliding_window=32, max_window_layers=1)
    cfg.update(_name_or_path='perceptio/tiny-internvl3-sa2va', hidden_size=lc['hidden_size'], llm_config=lc,
               vision_config=vc, template='qwen_chat', tie_word_embeddings=False)
    return dict(sorted(cfg.items()))


def load_spm_tokenizer(tok_dir):
    """Sa2VA's slow InternLM2Tokenizer (tokenization_internlm2.py from /tmp/refsrc) over tok_dir."""
    import importlib.util
    src = '/tmp/refsrc/Sa2VA/projects/sa2va/hf/models/tokenization_internlm2.py'
    spec = importlib.util.spec_from_file_location('sa2va_tokenization_internlm2', src)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m.InternLM2Tokenizer.from_pretrained(tok_dir)


def load_tok(ckpt_dir):
    import gen_internvl_goldens as ivg
    if LAYOUT == 'sa2va26b':
        return load_spm_tokenizer(ckpt_dir)
    return ivg.load_tokenizer(ckpt_dir)


def sa2va26b_config():
    """config.json of a Sa2VA-26B checkpoint, tiny: vision_config with InternViT-6B-448px-V2_5's switches,
    llm_config an InternLM2Config (InternLM2ForCausalLM, untied `output`), template internlm2_chat,
    vocab_size = len(tokenizer) of the SentencePiece tokenizer; bos 1, eos 2, pad 2 as InternLM2's."""
    import gen_internvl_goldens as ivg
    tok = load_spm_tokenizer(SPM_DIR)
    vocab = len(tok)
    with open(os.path.join(IVL_DIR, 'config.json')) as f:
        cfg = json.load(f)
    vc = ivg.vision_config_dict()
    vc.update(hidden_size=24, num_attention_heads=3, intermediate_size=96, qkv_bias=False, norm_type='rms_norm',
              qk_normalization=True, layer_norm_eps=1e-6)
    lc = ivg.llm_config_dict('internlm2', vocab, ivg.load_tokenizer(IVL_DIR))
    lc.update(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=2, hidden_size=S26B_FCS_IN,
              intermediate_size=64, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=32768)
    cfg.update(_name_or_path='perceptio/tiny-sa2va-26b', hidden_size=lc['hidden_size'], llm_config=lc,
               vision_config=vc, template='internlm2_chat', tie_word_embeddings=False)
    return dict(sorted(cfg.items()))


def make_config():
    if LAYOUT == 'sa2va26b':
        cfg = sa2va26b_config()
    elif LAYOUT == 'internvl3':
        cfg = internvl3_config()
    else:
        with open(os.path.join(IVL_DIR, 'config.json')) as f:
            cfg = json.load(f)
    cfg['sam2'] = sam2_block()
    return cfg


def ivl_weights():
    """The file holding the InternVL part (vision_model, mlp1, language_model) of the layout."""
    if LAYOUT in ('internvl3', 'sa2va26b'):
        return os.path.join(OUT_DIR, 'internvl.safetensors')
    return os.path.join(IVL_DIR, 'model.safetensors')


def make_internvl3_part(refsrc, seed):
    """InternVL part of the InternVL3 layout: Sa2VAChatModel built from internvl3_config(), every parameter seeded
    (gen_internvl_goldens.reinit_), bf16; untied lm_head kept; grounding_encoder/text_hidden_fcs left out (shards
    2 and 3)."""
    import torch
    import gen_internvl_goldens as ivg
    refs = ivg.load_references(refsrc)
    install_sam2_stub(refs)
    cfg = sa2va26b_config() if LAYOUT == 'sa2va26b' else internvl3_config()
    model, config = ivg.build_model(refs, cfg)
    assert config.llm_config.tie_word_embeddings is False
    lm = model.language_model
    if LAYOUT == 'sa2va26b':
        assert type(lm).__name__ == 'InternLM2ForCausalLM'
        assert lm.output.weight.data_ptr() != lm.model.tok_embeddings.weight.data_ptr(), 'output tied'
        vm = model.vision_model
        assert type(vm.encoder.layers[0].norm1).__name__ == 'InternRMSNorm'
        assert vm.encoder.layers[0].attn.qk_normalization and vm.encoder.layers[0].attn.num_heads == 3
        assert vm.encoder.layers[0].attn.qkv.bias is None
    else:
        assert lm.lm_head.weight.data_ptr() != lm.model.embed_tokens.weight.data_ptr(), 'lm_head tied'
        # use_sliding_window false: transformers must not window any layer (sliding_window 32 < prompt length)
        assert config.llm_config.layer_types == ['full_attention'] * config.llm_config.num_hidden_layers
    ivg.reinit_(model, seed)
    out = {k: v.detach().to(torch.bfloat16).contiguous().clone() for k, v in model.state_dict().items()
           if not k.startswith(('grounding_encoder.', 'text_hidden_fcs.'))}
    assert ('language_model.output.weight' if LAYOUT == 'sa2va26b' else 'language_model.lm_head.weight') in out
    return out


def dump_json(obj, path):
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2)
        f.write('\n')


def materialize(dst, fcs_path, config_path):
    """Assemble the sharded Sa2VA checkpoint dir the Rust test builds (see module docstring)."""
    from safetensors.torch import load_file, save_file
    os.makedirs(dst, exist_ok=True)
    ivl = load_file(ivl_weights())
    shard1 = {k: v for k, v in ivl.items() if not k.startswith(('text_hidden_fcs.', 'grounding_encoder.'))}
    dropped = sorted(set(ivl) - set(shard1))
    save_file(shard1, os.path.join(dst, SHARDS[0]), metadata={'format': 'pt'})
    shutil.copyfile(os.path.join(SAM2_DIR, 'tiny_sa2va_sam2.safetensors'), os.path.join(dst, SHARDS[1]))
    shutil.copyfile(fcs_path, os.path.join(dst, SHARDS[2]))
    weight_map, total = {}, 0
    for sh in SHARDS:
        for k, v in load_file(os.path.join(dst, sh)).items():
            assert k not in weight_map, f'duplicate key {k} in {sh} and {weight_map[k]}'
            weight_map[k] = sh
            total += v.numel() * v.element_size()
    dump_json({'metadata': {'total_size': total}, 'weight_map': dict(sorted(weight_map.items()))},
              os.path.join(dst, 'model.safetensors.index.json'))
    shutil.copyfile(config_path, os.path.join(dst, 'config.json'))
    tok_dir, tok_files = (SPM_DIR, SPM_FILES) if LAYOUT == 'sa2va26b' else (IVL_DIR, TOKENIZER_FILES)
    for fn in tok_files:
        shutil.copyfile(os.path.join(tok_dir, fn), os.path.join(dst, fn))
    return dropped


def load_sharded(d):
    """Read a sharded checkpoint back through its index (every key exactly once, from the file the index names)."""
    from safetensors.torch import load_file
    with open(os.path.join(d, 'model.safetensors.index.json')) as f:
        wm = json.load(f)['weight_map']
    files = {sh: load_file(os.path.join(d, sh)) for sh in sorted(set(wm.values()))}
    assert sum(len(v) for v in files.values()) == len(wm), 'a shard holds keys the index does not list'
    return {k: files[sh][k] for k, sh in wm.items()}


# ----------------------------------------------------------------------------- models
def build_models(refsrc, ckpt_dir):
    import torch
    import torch.nn as nn
    import gen_internvl_goldens as ivg
    import gen_sam2_goldens as s2g
    refs = ivg.load_references(refsrc)
    install_sam2_stub(refs)

    with open(os.path.join(ckpt_dir, 'config.json')) as f:
        cfg = json.load(f)
    sam2_cfg = cfg.pop('sam2')
    model, _ = ivg.build_model(refs, cfg)
    assert isinstance(model.text_hidden_fcs[2], nn.Linear) and model.text_hidden_fcs[2].out_features == FCS_OUT
    assert model.text_hidden_fcs[0].in_features == FCS_IN
    sd = {k: v.float() for k, v in load_sharded(ckpt_dir).items()}
    ivl_sd = {k: v for k, v in sd.items() if not k.startswith('grounding_encoder.')
              or k == 'grounding_encoder.sam2_model.no_mem_embed'}
    missing, unexpected = model.load_state_dict(ivl_sd, strict=False)
    lm = model.language_model
    if LAYOUT == 'sa2va26b':   # InternLM2: untied `output`, every key present
        assert not missing and not unexpected, (missing, unexpected)
        assert not torch.equal(lm.output.weight, lm.model.tok_embeddings.weight)
    elif LAYOUT == 'internvl3':   # untied: every key present, lm_head its own tensor
        assert not missing and not unexpected, (missing, unexpected)
        assert lm.lm_head.weight.data_ptr() != lm.model.embed_tokens.weight.data_ptr()
        assert not torch.equal(lm.lm_head.weight, lm.model.embed_tokens.weight)
    else:
        assert missing == ['language_model.lm_head.weight'] and not unexpected, (missing, unexpected)
        assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    model.eval()
    return refs, model, finish_sam2(s2g, sd, sam2_cfg), ivg, s2g


def install_sam2_stub(refs):
    """Sa2VA's SAM2 replaced by a module holding only no_mem_embed [1,1,32] (hidden_dim 32)."""
    import torch
    import torch.nn as nn

    class SAM2Stub32(nn.Module):
        """Sa2VA's grounding encoder seen from Sa2VAChatModel.__init__: only hidden_dim / no_mem_embed matter."""

        def __init__(self, *a, **k):
            super().__init__()
            self.sam2_model = nn.Module()
            self.sam2_model.no_mem_embed = nn.Parameter(torch.zeros(1, 1, FCS_OUT))
            self.hidden_dim = FCS_OUT
    refs.sv_chat.SAM2 = SAM2Stub32   # modeling_sa2va_chat did `from .sam2 import SAM2`


def finish_sam2(s2g, sd, sam2_cfg):
    """Meta's SAM2 strict-loaded from the grounding_encoder.sam2_model.* keys, checked against the sam2 block."""
    sam, _ = s2g.build()
    pre = 'grounding_encoder.sam2_model.'
    missing, unexpected = sam.load_state_dict({k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)})
    assert not missing and not unexpected
    sam.eval()
    # the config block must describe the model we run
    t = sam.image_encoder.trunk
    assert [b.attn.num_heads for b in t.blocks][0] == sam2_cfg['trunk']['num_heads']
    assert sam.sam_mask_decoder.transformer.layers[0].self_attn.num_heads == sam2_cfg['decoder']['num_heads']
    assert sam.directly_add_no_mem_embed == sam2_cfg['directly_add_no_mem_embed']
    assert list(sam.image_encoder.neck.fpn_top_down_levels) == sam2_cfg['neck']['fpn_top_down_levels']
    return sam


# ----------------------------------------------------------------------------- runs
class Store:
    def __init__(self):
        self.t, self.meta = {}, {}

    def put(self, name, x, desc):
        import numpy as np
        import torch
        x = x.detach().contiguous().clone() if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
        self.t[name] = x
        self.meta[name] = {'shape': list(x.shape), 'dtype': str(x.dtype).replace('torch.', ''), 'desc': desc}


def sha(a):
    import numpy as np
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def sam2_image_features(s2g, sam, pil):
    """Sa2VA grounding preprocessing (DirectResize = PIL resize 1024x1024 default BICUBIC on uint8; /255;
    ImageNet mean/std; float32 here) + SAM2 image encoder (no_mem_embed added to the 64x64 level)."""
    import numpy as np
    import torch
    g = np.array(pil.resize((1024, 1024)))
    gx = torch.from_numpy(g).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    gx = ((gx - mean) / std)[None]
    feats, _, _ = s2g.encode(sam, gx)
    return feats, sha(g)


def sam2_seg(st, prefix, s2g, sam, feats, seg_embedding, hw):
    """Sa2VA language-prompted SAM2 head for one [SEG] embedding [1,32]; stores outputs under prefix."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    H, W = hw
    pc = torch.zeros(1, 1, 2)
    pl = -torch.ones(1, 1, dtype=torch.int32)
    sparse, dense, low, iou, tok, obj = s2g.decode(sam, feats, pc, pl, True, extra_sparse=seg_embedding[None])
    assert sparse.shape == (1, 3, FCS_OUT)
    # internvl3 layout: Sa2VA's own behaviour (its HF sam2.py has the object-score gating commented out); the
    # internvl2_5 goldens keep Meta's gated definition (equal there: obj_score > 0 on both images)
    gated = low if LAYOUT in ('internvl3', 'sa2va26b') else torch.where((obj > 0)[:, None, None], low, torch.tensor(-1024.0))
    best = int(torch.argmax(iou, dim=-1)[0])

    def finish(lowres):
        chosen = lowres[:, best:best + 1]
        hr = F.interpolate(chosen, size=(1024, 1024), mode='bilinear', align_corners=False)
        fin = F.interpolate(hr, size=(H, W), mode='bilinear', align_corners=False)
        final = (fin.sigmoid() > 0.5)[0, 0].numpy()
        return chosen, fin, final
    chosen, fin, final = finish(gated)
    assert np.array_equal(final, (fin > 0)[0, 0].numpy())
    _, _, final_ungated = finish(low)
    y0, y1 = CROP
    st.put(prefix + '.iou', iou, 'iou_predictions [1,3] (sigmoid), multimask outputs 1..3')
    st.put(prefix + '.obj_score', obj, 'object_score_logits [1,1]')
    st.put(prefix + '.best_idx', torch.tensor([best], dtype=torch.int64), 'argmax(iou) over the 3 masks')
    st.put(prefix + '.low_res_multimasks.m_sum', low[0].double().sum((1, 2)),
           'per-mask float64 sum of the raw (ungated) decoder low_res_masks [1,3,256,256]')
    st.put(prefix + '.chosen_low_res.crop_c', chosen[0, 0, y0:y1, y0:y1],
           f'chosen_low_res[0,0,{y0}:{y1},{y0}:{y1}] (chosen = ' + ('masks' if LAYOUT in ('internvl3', 'sa2va26b') else 'where(obj>0, masks, -1024)') + '[:, best], f32)')
    st.put(prefix + '.chosen_low_res.row_sums', chosen[0, 0].double().sum(1),
           'float64 row sums of chosen_low_res[0,0] (256 rows)')
    st.put(prefix + '.final_logits_row_sums', fin[0, 0].double().sum(1),
           f'float64 row sums of the [H={H},W={W}] logits (256->1024->HxW bilinear) before the threshold')
    st.put(prefix + '.final_mask_bits', np.packbits(final.reshape(-1)),
           f'final mask [{H},{W}] bool (sigmoid>0.5), np.packbits row-major MSB-first')
    st.put(prefix + '.final_frac', torch.tensor([float(final.mean())], dtype=torch.float64),
           'fraction of True pixels in the final mask')
    st.meta[prefix + '.chosen_low_res'] = {'shape': [1, 1, 256, 256], 'stored': False,
                                           'desc': 'not stored (see .crop_c/.row_sums)',
                                           'sha256_f32_le': sha(chosen.numpy())}
    return {'iou': iou[0].tolist(), 'obj_score': float(obj[0, 0]), 'best_idx': best,
            'final_frac': float(final.mean()), 'raw_frac_gt0': [float((low[0, i] > 0).float().mean()) for i in range(3)],
            'gating_changes_result': bool(not np.array_equal(final, final_ungated)),
            'iou_top1_top2_margin': float(iou[0].topk(2).values[0] - iou[0].topk(2).values[1]),
            'n_final_logits_abs_lt_1e-3': int((fin.abs() < 1e-3).sum()),
            'n_final_logits_abs_lt_1e-2': int((fin.abs() < 1e-2).sum()),
            'final_frac_ungated': float(final_ungated.mean())}


def lm_kind():
    return 'internlm2' if LAYOUT == 'sa2va26b' else 'qwen2'


def greedy(ivg, lm, emb, stop_ids):
    """predict_forward-style greedy decoding (max MAX_NEW new tokens, stop after emitting a stop token)."""
    import torch
    logits, hid, cache = ivg.lm_forward(lm, lm_kind(), inputs_embeds=emb)
    cur, cur_h = logits[-1], hid[-1]
    gen, hidden_fed, gaps = [], [], []
    for i in range(MAX_NEW):
        top2 = cur.topk(2).values
        gaps.append(float(top2[0] - top2[1]))
        nxt = int(torch.argmax(cur))
        gen.append(nxt)
        if nxt in stop_ids or i + 1 == MAX_NEW:
            break
        logits, hid, cache = ivg.lm_forward(lm, lm_kind(), input_ids=torch.tensor([[nxt]]), cache=cache)
        cur, cur_h = logits[-1], hid[-1]
        hidden_fed.append(cur_h.clone())   # hidden_states[-1] at the position whose input is gen[i]
    return gen, hidden_fed, gaps


def crosscheck_generate(refs, model, tok, pv, ids, gen):
    """Sa2VAChatModel.generate with predict_forward's generation config + stop criteria -> same tokens?"""
    import torch
    from transformers import GenerationConfig
    m = model
    m.img_context_token_id = tok.convert_tokens_to_ids('<IMG_CONTEXT>')
    if not hasattr(m.language_model, 'generation_config') or m.language_model.generation_config is None:
        m.language_model.generation_config = GenerationConfig()
    gc = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
    stop = refs.sv_chat.get_stop_criteria(tokenizer=tok, stop_words=m.template.get('STOP_WORDS', []))
    out = m.generate(pixel_values=pv, input_ids=ids[None], attention_mask=torch.ones_like(ids[None], dtype=torch.bool),
                     generation_config=gc, stopping_criteria=stop, output_hidden_states=True,
                     return_dict_in_generate=True)
    return out.sequences[0].tolist() == gen


def run(refsrc, ckpt_dir, verbose=True):
    import torch
    from PIL import Image
    from safetensors.torch import load_file
    refs, model, sam, ivg, s2g = build_models(refsrc, ckpt_dir)
    tok = load_tok(ckpt_dir)
    seg_id = tok.convert_tokens_to_ids('[SEG]')
    img_ctx = tok.convert_tokens_to_ids('<IMG_CONTEXT>')
    stop_ids = {tok.convert_tokens_to_ids(w) for w in model.template['STOP_WORDS']}
    reply_ids = tok.encode(FORCED_REPLY, add_special_tokens=False)
    assert reply_ids.count(seg_id) == 1
    st, summary, per_image = Store(), {}, {}
    lm = model.language_model
    sam2_gold = load_file(os.path.join(SAM2_DIR, 'goldens.safetensors'))
    for name, rel in IMAGES.items():
        pil = Image.open(os.path.join(REPO, rel)).convert('RGB')
        W, H = pil.size
        with torch.no_grad():
            pv, grid = ivg.preprocess(refs, pil)
            vit_embeds = model.extract_feature(pv)
            d_prefill = None
            if LAYOUT == 'internvl2_5':
                old = load_file(os.path.join(IVL_GOLDENS, f'tiny-qwen2_{name}.safetensors'))
                assert torch.equal(pv, old['pixel_values']), 'pixel_values differ from the internvl golden'
                # ~1e-6 apart on another CPU (kernel choice); the goldens were made on the machine they name
                d_vit = float((vit_embeds - old['vit_embeds']).abs().max())
                assert d_vit < 1e-5, f'vit_embeds differ from the internvl golden by {d_vit}'
                # the LLM too: re-run the internvl golden's own prompt
                e = lm.get_input_embeddings()(old['input_ids'])
                e[old['input_ids'] == img_ctx] = vit_embeds.reshape(-1, e.shape[-1])
                lg, _, _ = ivg.lm_forward(lm, 'qwen2', inputs_embeds=e[None])
                d_prefill = float((lg[-4:] - old['prefill_logits_last4']).abs().max())
                assert d_prefill < 1e-5 * max(1.0, float(old['prefill_logits_last4'].abs().max())), d_prefill

            prompt = ivg.build_prompt(model.template, QUESTIONS[name], pv.shape[0], model.num_image_token)
            assert '</img>\n Please segment' in prompt and prompt.endswith('<|im_start|>assistant\n')
            ids = torch.tensor(tok.encode(prompt), dtype=torch.long)
            if LAYOUT == 'sa2va26b':   # the slow InternLM2Tokenizer prepends <s>, exactly once
                assert int(ids[0]) == tok.bos_token_id == 1 and int((ids == 1).sum()) == 1
            assert int((ids == img_ctx).sum()) == pv.shape[0] * model.num_image_token
            emb = lm.get_input_embeddings()(ids).clone()
            emb[ids == img_ctx] = vit_embeds.reshape(-1, emb.shape[-1])

            feats, g_sha = sam2_image_features(s2g, sam, pil)
            ch_sum = feats[-1][0].double().sum((1, 2))
            sam2_check = None
            if name == 'chelsea':   # same image/weights/preprocessing as fixtures/sam2 sa2va.* goldens
                # bit-equal where the goldens were made; another CPU's kernels may move the last bits
                ref_sum = sam2_gold['sa2va.image_embed.ch_sum']
                d_sum = float((ch_sum - ref_sum).abs().max() / ref_sum.abs().max())
                sam2_check = bool(torch.equal(ch_sum, ref_sum)) or d_sum
                assert d_sum < 1e-5, f'SAM2 image_embed differs from fixtures/sam2 goldens ({d_sum} relative)'
            st.put(f'{name}.sam2.image_embed.ch_sum', ch_sum,
                   'float64 per-channel sum of the SAM2 image_embed [1,32,64,64] (no_mem_embed added), Sa2VA preprocessing')

            # ---- (a) greedy generation
            gen, hidden_fed, gaps = greedy(ivg, lm, emb[None], stop_ids)
            st.put(f'{name}.gen.generated_ids', torch.tensor(gen, dtype=torch.long),
                   f'greedy new tokens (max {MAX_NEW}; includes the stop token if one was emitted)')
            seg_js = [j for j, t in enumerate(gen[:-1]) if t == seg_id]   # predict_forward: sequences[0][:-1]
            gen_info = {'generated_ids': gen, 'generated_tokens': tok.convert_ids_to_tokens(gen),
                        'generated_text': tok.decode(gen, skip_special_tokens=False),
                        'stopped_by_stop_token': gen[-1] in stop_ids, 'n_new': len(gen),
                        'seg_positions_in_generated': seg_js,
                        'seg_as_last_token_ignored': gen[-1] == seg_id,
                        'min_top1_top2_logit_gap': min(gaps)}
            for k, j in enumerate(seg_js):
                h = hidden_fed[j][None]
                se = model.text_hidden_fcs(h)
                p = f'{name}.gen.seg{k}'
                st.put(p + '.seg_hidden', h, f'hidden_states[-1] at the position fed with generated_ids[{j}] = [SEG]')
                st.put(p + '.seg_embedding', se, 'text_hidden_fcs(seg_hidden)')
                gen_info[f'seg{k}'] = sam2_seg(st, p, s2g, sam, feats, se, (H, W))
            try:
                gen_info['sa2va_generate_same_ids'] = crosscheck_generate(refs, model, tok, pv, ids, gen)
            except Exception as ex:   # noqa: BLE001 - record, do not hide
                gen_info['sa2va_generate_error'] = f'{type(ex).__name__}: {ex}'[:300]

            # ---- (b) teacher-forced "Sure, [SEG]."
            full = torch.cat([ids, torch.tensor(reply_ids, dtype=torch.long)])
            femb = torch.cat([emb, lm.get_input_embeddings()(torch.tensor(reply_ids))], 0)
            flog, fhid, _ = ivg.lm_forward(lm, lm_kind(), inputs_embeds=femb[None])
            pos = int((full == seg_id).nonzero()[0, 0])
            assert int((full == seg_id).sum()) == 1 and pos == ids.shape[0] + reply_ids.index(seg_id)
            seg_hidden = fhid[pos][None]
            if LAYOUT == 'internvl3':   # the logits are the untied lm_head's, not the embedding's
                d_head = float((flog - fhid @ lm.lm_head.weight.T).abs().max())
                d_emb = float((flog - fhid @ lm.model.embed_tokens.weight.T).abs().max())
                assert d_head < 1e-4 < d_emb, (d_head, d_emb)
            if LAYOUT == 'sa2va26b':   # the logits are InternLM2's own `output`, not the embedding's
                d_head = float((flog - fhid @ lm.output.weight.T).abs().max())
                d_emb = float((flog - fhid @ lm.model.tok_embeddings.weight.T).abs().max())
                assert d_head < 1e-4 < d_emb, (d_head, d_emb)
            seg_emb = model.text_hidden_fcs(seg_hidden)
            p = f'{name}.force'
            st.put(p + '.input_ids', full, 'prompt ids + tokenizer("Sure, [SEG].", add_special_tokens=False)')
            st.put(p + '.seg_pos', torch.tensor([pos], dtype=torch.int64), 'index of [SEG] in force.input_ids')
            st.put(p + '.seg_hidden', seg_hidden, 'hidden_states[-1] (post final RMSNorm) at seg_pos, one full forward')
            st.put(p + '.seg_embedding', seg_emb, 'text_hidden_fcs(seg_hidden) [1,32]')
            force_info = sam2_seg(st, p, s2g, sam, feats, seg_emb, (H, W))
            force_info['seg_pos'] = pos
            force_info['seg_hidden_std'] = float(seg_hidden.std())
            force_info['seg_embedding_std'] = float(seg_emb.std())

        per_image[name] = {
            'image': rel, 'image_size_wh': [W, H], 'question': QUESTIONS[name], 'prompt': prompt,
            'user_turn': '<image>\n' + QUESTIONS[name], 'prompt_len': int(ids.shape[0]),
            'grid': grid, 'n_tiles': int(pv.shape[0]), 'max_num': ivg.MAX_NUM, 'min_num': ivg.MIN_NUM,
            'tile_size': ivg.IMAGE_SIZE, 'use_thumbnail': True,
            'sam2_image_uint8_sha256': g_sha,
            'check_vs_internvl_golden': None if d_prefill is None else {
                'pixel_values_equal': True, 'vit_embeds_max_abs_diff_lt': 1e-5,
                'prefill_logits_last4_max_abs_diff': d_prefill},
            'check_sam2_image_embed_vs_fixtures_sam2': sam2_check,
            'gen': gen_info, 'force': force_info,
        }
        if verbose:
            print(f'{name}: grid {grid} n_tiles {pv.shape[0]} L {ids.shape[0]} gen {gen} '
                  f'seg_in_gen {seg_js} force best {force_info["best_idx"]} iou {force_info["iou"]} '
                  f'obj {force_info["obj_score"]:.4f} frac {force_info["final_frac"]:.4f} '
                  f'gating_changes {force_info["gating_changes_result"]}', flush=True)
    summary['forced_reply'] = {'text': FORCED_REPLY, 'ids': reply_ids, 'tokens': tok.convert_ids_to_tokens(reply_ids)}
    summary['seg_token_id'] = seg_id
    summary['stop_token_ids'] = sorted(stop_ids)
    summary['per_image'] = per_image
    return st, summary


NOTES = {
    'assembly': 'Sharded checkpoint: model-00001-of-00003 = fixtures/internvl/tiny-qwen2/model.safetensors minus '
                'text_hidden_fcs.* AND minus grounding_encoder.sam2_model.no_mem_embed (that file holds a [1,1,256] '
                'stub; the real [1,1,32] one is in shard 2, a key may live in only one shard); model-00002 = '
                'fixtures/sam2/tiny_sa2va_sam2.safetensors; model-00003 = fixtures/sa2va/text_hidden_fcs.safetensors; '
                'index weight_map from the shard contents; config.json = fixtures/sa2va/config.json; tokenizer files '
                'from tiny-qwen2. The goldens were computed from such a dir, read back through its index.',
    'prompt': "Sa2VA predict_forward: text = '<image>\\n' + question, '<image>' -> '<img>' + '<IMG_CONTEXT>'*(4*n_tiles) "
              "+ '</img>' (the trailing '\\n' is stripped), qwen_chat INSTRUCTION '<|im_start|>user\\n{input}<|im_end|>"
              "\\n<|im_start|>assistant\\n', tokenizer.encode (no BOS). Tiles: dynamic_preprocess min 1 max 6, tile 56, "
              "thumbnail (as fixtures/internvl goldens; real Sa2VA uses 448 and max 12).",
    'gen': 'greedy argmax (first index on ties), KV cache, inputs_embeds with IMG_CONTEXT rows replaced by vit_embeds; '
           'stops after emitting <|im_end|> (eos) or <|endoftext|> (qwen_chat STOP_WORDS) or after 24 new tokens. '
           'predict_forward looks for [SEG] in generated_ids[:-1] (sequences[0][:-1]); the hidden of a [SEG] is '
           'hidden_states[-1] at the step that FEEDS it back.',
    'force': 'LISA-style teacher forcing: input_ids = prompt + tokenizer("Sure, [SEG].") (add_special_tokens=False), '
             'ONE forward over the full sequence (no cache), hidden_states[-1] (after the final RMSNorm) at the position '
             'whose input token is [SEG]; seg_embedding = text_hidden_fcs(seg_hidden) = Linear(64,64) -> ReLU -> '
             'Linear(64,32).',
    'sam2_path': 'Sa2VA grounding: PIL resize to 1024x1024 (default BICUBIC) on uint8 RGB, /255, ImageNet mean/std '
                 '(float32 here; Sa2VA runs bf16); SAM2 image encoder, no_mem_embed added to the 64x64 level; sparse '
                 '= prompt encoder of point (0,0) label -1 (+ its automatic padding point, both = not_a_point_embed) '
                 'then seg_embedding as a 3rd token; dense = no_mask_embed; multimask_output=True (0 points -> '
                 '_use_multimask true), high-res features used; chosen = where(obj_score>0, masks, -1024)[:, argmax(iou)]; '
                 'bilinear(align_corners=False) 256->1024 then 1024->(H,W); sigmoid > 0.5.',
    'gating_quirk': "Sa2VA's HF sam2.py SAM2Base._forward_sam_heads (the one SAM2VideoPredictor uses) has the "
                    "where(obj_score>0, masks, NO_OBJ_SCORE) gating COMMENTED OUT, so real Sa2VA predict_forward masks "
                    "are NOT gated; Meta's SAM2Base and fixtures/sam2 gate. The goldens follow the gated definition; "
                    "summary.*.gating_changes_result says whether it matters (false when obj_score > 0) and "
                    "final_frac_ungated gives the ungated result.",
    'bits': 'np.packbits over the row-major flattened [H,W] bool mask, MSB first.',
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('refsrc', nargs='?', default='/tmp/refsrc')
    ap.add_argument('--layout', choices=['internvl2_5', 'internvl3', 'sa2va26b'], default='internvl2_5',
                    help='internvl2_5: tiny-qwen2 InternVL part -> fixtures/sa2va; internvl3: a new tied-free '
                         'Qwen2.5 InternVL3 part -> fixtures/sa2va_internvl3; sa2va26b: InternViT-6B-style tower + '
                         'InternLM2 + SentencePiece tokenizer -> fixtures/sa2va_26b')
    ap.add_argument('--out', default=None)
    ap.add_argument('--check-only', action='store_true', help='recompute from the stored files and compare')
    ap.add_argument('--materialize', metavar='DIR', help='only assemble the sharded checkpoint into DIR')
    ap.add_argument('--search', type=int, metavar='N', help='print force-mode results for fcs seeds 0..N-1')
    args = ap.parse_args()

    import warnings
    import torch
    import transformers
    from safetensors.torch import load_file, save_file
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings('ignore')
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    global FCS_SEED, LAYOUT, OUT_DIR, FCS_IN, IVL3_SEED
    LAYOUT = args.layout
    if LAYOUT == 'internvl3':
        OUT_DIR = os.path.join(REPO, 'fixtures/sa2va_internvl3')
        FCS_IN = IVL3_FCS_IN
        FCS_SEED = int(os.environ.get('SA2VA_FCS_SEED', str(IVL3_SEED)))
    elif LAYOUT == 'sa2va26b':
        OUT_DIR = os.path.join(REPO, 'fixtures/sa2va_26b')
        FCS_SEED = int(os.environ.get('SA2VA_FCS_SEED', str(S26B_SEED)))
        FCS_IN = S26B_FCS_IN
    if args.out is None:
        args.out = OUT_DIR
    OUT_DIR = args.out

    if args.materialize:
        fcs = os.path.join(args.out, 'text_hidden_fcs.safetensors')
        dropped = materialize(args.materialize, fcs, os.path.join(args.out, 'config.json'))
        print(f'assembled {args.materialize}; dropped from shard 1: {dropped}')
        return 0

    tmp = tempfile.mkdtemp(prefix='sa2va-e2e-')
    try:
        if args.search:
            cfgp = os.path.join(tmp, 'cfg.json')
            dump_json(make_config(), cfgp)
            for s in range(args.search):
                if LAYOUT in ('internvl3', 'sa2va26b'):   # weights and text_hidden_fcs from the same seed
                    OUT_DIR = tmp
                    save_file(make_internvl3_part(args.refsrc, IVL3_SEED_BASE + s), ivl_weights(),
                              metadata={'format': 'pt'})
                fp = os.path.join(tmp, 'fcs.safetensors')
                save_file(make_text_hidden_fcs(s), fp, metadata={'format': 'pt'})
                d = os.path.join(tmp, f'ck{s}')
                materialize(d, fp, cfgp)
                _, sm = run(args.refsrc, d, verbose=False)
                print(s, {n: (round(v['force']['obj_score'], 3), v['force']['best_idx'], round(v['force']['final_frac'], 3),
                              'gen_seg', v['gen']['seg_positions_in_generated'],
                              'stop', v['gen']['stopped_by_stop_token'])
                          for n, v in sm['per_image'].items()}, flush=True)
            return 0

        fcs_new = make_text_hidden_fcs(FCS_SEED)
        cfg_new = make_config()
        if LAYOUT in ('internvl3', 'sa2va26b'):
            ivl_new = make_internvl3_part(args.refsrc, IVL3_SEED_BASE + (S26B_SEED if LAYOUT == 'sa2va26b' else IVL3_SEED))
            if args.check_only:
                stored = load_file(ivl_weights())
                assert stored.keys() == ivl_new.keys() and all(torch.equal(stored[k], ivl_new[k]) for k in stored), \
                    'internvl.safetensors differs from a fresh one'
            else:
                os.makedirs(args.out, exist_ok=True)
                save_file(ivl_new, ivl_weights(), metadata={'format': 'pt'})
        if args.check_only:
            fcs_path, cfg_path = os.path.join(args.out, 'text_hidden_fcs.safetensors'), os.path.join(args.out, 'config.json')
            stored = load_file(fcs_path)
            assert stored.keys() == fcs_new.keys() and all(torch.equal(stored[k], fcs_new[k]) for k in stored), \
                'text_hidden_fcs.safetensors differs from a fresh one'
            with open(cfg_path) as f:
                assert json.load(f) == cfg_new, 'config.json differs from a fresh one'
        else:
            os.makedirs(args.out, exist_ok=True)
            fcs_path, cfg_path = os.path.join(args.out, 'text_hidden_fcs.safetensors'), os.path.join(args.out, 'config.json')
            save_file(fcs_new, fcs_path, metadata={'format': 'pt'})
            dump_json(cfg_new, cfg_path)
        ck = os.path.join(tmp, 'ckpt')
        dropped = materialize(ck, fcs_path, cfg_path)
        st, summary = run(args.refsrc, ck)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if args.check_only:
        old = load_file(os.path.join(args.out, 'goldens.safetensors'))
        bad = sorted(k for k in set(old) | set(st.t) if k not in old or k not in st.t or not torch.equal(old[k], st.t[k]))
        print('identical' if not bad else f'MISMATCH: {bad}')
        return 1 if bad else 0
    save_file(st.t, os.path.join(args.out, 'goldens.safetensors'), metadata={'format': 'pt'})
    notes = dict(NOTES)
    if LAYOUT == 'internvl3':
        notes['assembly'] = ('Sharded checkpoint: model-00001-of-00003 = fixtures/sa2va_internvl3/internvl.safetensors '
                             '(vision_model, mlp1, language_model with its own lm_head; made from IVL3_SEED); model-00002 '
                             '= fixtures/sam2/tiny_sa2va_sam2.safetensors; model-00003 = '
                             'fixtures/sa2va_internvl3/text_hidden_fcs.safetensors (48->48->32); config.json = '
                             'fixtures/sa2va_internvl3/config.json; tokenizer files from tiny-qwen2.')
        notes['gating_quirk'] = ("Masks are Sa2VA's: NOT gated by the object score (its HF sam2.py has the gating "
                                 "commented out); every obj_score here is < 0, so Meta's gating would empty them all.")
        notes['prompt'] = notes['prompt'].replace('(as fixtures/internvl goldens; ', '(')
    if LAYOUT == 'sa2va26b':
        notes['assembly'] = ('Sharded checkpoint: model-00001-of-00003 = fixtures/sa2va_26b/internvl.safetensors '
                             '(vision_model with InternViT-6B switches, mlp1, InternLM2 language_model with its own '
                             'output head; made from S26B_SEED); model-00002 = fixtures/sam2/tiny_sa2va_sam2.safetensors; '
                             f'model-00003 = fixtures/sa2va_26b/text_hidden_fcs.safetensors ({S26B_FCS_IN}->{S26B_FCS_IN}->32); config.json = '
                             'fixtures/sa2va_26b/config.json; tokenizer.model + tokenizer_config.json from '
                             'fixtures/tokenizer/internlm2-spm (Sa2VA\'s slow InternLM2Tokenizer).')
        notes['gating_quirk'] = "Masks are Sa2VA's: NOT gated by the object score (its HF sam2.py has the gating commented out)."
        notes['prompt'] = (notes['prompt'].replace('(as fixtures/internvl goldens; ', '(')
                           .replace('qwen_chat', 'internlm2_chat').replace('(no BOS)', '(slow InternLM2Tokenizer: <s> first)'))
    meta = {'layout': LAYOUT, 's26b_seed': S26B_SEED if LAYOUT == 'sa2va26b' else None,
            'ivl3_seed': IVL3_SEED if LAYOUT == 'internvl3' else None, 'fcs_seed': FCS_SEED,
            'dropped_from_shard1': dropped, 'notes': notes,
            'versions': {'torch': torch.__version__, 'transformers': transformers.__version__},
            'summary': summary, 'tensors': st.meta}
    dump_json(meta, os.path.join(args.out, 'goldens.json'))
    print(json.dumps({n: {'gen': v['gen']['generated_ids'], 'force': {k: v['force'][k] for k in
                      ('best_idx', 'iou', 'obj_score', 'final_frac', 'gating_changes_result')}}
                      for n, v in summary['per_image'].items()}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
