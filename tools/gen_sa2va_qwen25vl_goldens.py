#!/usr/bin/env python3
"""Tiny random Sa2VA-Qwen2.5-VL checkpoint in the real layout + goldens from the reference code (manual; never
run in CI). Modelled on gen_sa2va_qwen3vl_goldens.py; Sa2VA's models_qwen2_5_vl code differs from its
models_qwen3vl code only in the wrapped transformers class.

Sa2VA pins transformers 4.57.0 for its Qwen-VL code (pyproject `latest` extra) and uses qwen_vl_utils; both
must come first on sys.path (the venv has 5.24 and no qwen_vl_utils):

    PYTHONPATH=/tmp/tf457:/tmp/qvu /work/venv-torch/bin/python tools/gen_sa2va_qwen25vl_goldens.py [/tmp/refsrc]

(or any python with transformers 4.57.0 + qwen_vl_utils on its path, e.g. /tmp/venv-tf457 with /tmp/wtB-qvu)

where /tmp/tf457 holds transformers 4.57.0 (with huggingface_hub 0.36, tokenizers 0.22) and /tmp/qvu
qwen_vl_utils 0.0.14 (`pip install --no-deps --target /tmp/qvu qwen-vl-utils`).

What runs is Sa2VA's own `Sa2VAChatModelQwen.predict_forward` (projects/sa2va/hf/models_qwen2_5_vl of
/tmp/refsrc/Sa2VA, or the bare mirror's HEAD) on transformers' `Qwen2_5_VLForConditionalGeneration` and
`Qwen2_5_VLProcessor` (Qwen2VLImageProcessorFast, patch 14), loaded back from the written directory with AutoProcessor. Deviations, all
forced by a tiny f32 CPU golden: `torch_dtype` float32 (Sa2VA casts the SAM2 input to bf16); generate's
max_new_tokens capped at MAX_NEW (Sa2VA: 2048); the SAM2 grounding encoder is Meta's sam2 1.1.0 tiny model of
fixtures/sam2 behind a stub with Sa2VA's interface (preprocess /255 + ImageNet stats in f32, multimask, best
by predicted IoU, no object-score gating: Sa2VA's own sam2.py has the gating commented out, 256 -> 1024
bilinear), as tools/gen_sa2va_e2e_goldens.py does for the InternVL family.

Outputs (fixtures/sa2va-qwen25vl/): config.json, model.safetensors (Qwen2.5-VL + text_hidden_fcs + the tiny
SAM2 under grounding_encoder.sam2_model.*), the processor files AutoProcessor writes (tokenizer, chat
template, preprocessor configs), goldens.safetensors + goldens.json.
"""
import hashlib
import importlib.util
import json
import math
import os
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tools'))
OUT = os.path.join(REPO, 'fixtures/sa2va-qwen25vl')
SAM2_W = os.path.join(REPO, 'fixtures/sam2/tiny_sa2va_sam2.safetensors')
IMAGES = {'chelsea': 'fixtures/images/chelsea.png', 'portrait': 'fixtures/images/coffee_portrait.png'}
# predict_forward's user text: the '<image>' is removed and the image goes first in the message content.
TEXTS = {'chelsea': '<image>\n Please segment the cat in this image.',
         'portrait': '<image>\nWhat is in the cup?'}
MAX_NEW = 24
FORCED_REPLY = 'Sure, [SEG].'
SEED = 7
MIRROR = os.environ.get('SA2VA_MIRROR', '/work/.mirror/bytedance+Sa2VA/repo')

# Qwen2.5-VL's added tokens (in their real order), then Sa2VA's (add_tokens(..., special_tokens=True)).
SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|object_ref_start|>', '<|object_ref_end|>',
            '<|box_start|>', '<|box_end|>', '<|quad_start|>', '<|quad_end|>', '<|vision_start|>',
            '<|vision_end|>', '<|vision_pad|>', '<|image_pad|>', '<|video_pad|>',
            '[SEG]', '<p>', '</p>', '<vp>', '</vp>']

# Qwen2.5-VL-Instruct's chat template (image/text part): unlike Qwen3-VL's it adds a default system message.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def vision_cfg():
    # window_size 56 = 2 merged tokens of 2x14 per window side, so the test images get several windows
    # (partial ones at the edges); blocks 1 and 3 attend over the whole image (fullatt_block_indexes).
    return dict(depth=4, hidden_size=32, hidden_act='silu', intermediate_size=48, num_heads=2,
                in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                window_size=56, fullatt_block_indexes=[1, 3], tokens_per_second=2, initializer_range=0.02)


def text_cfg(vocab, ids):
    return dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, hidden_act='silu',
                max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1000000.0,
                rope_scaling={'type': 'mrope', 'mrope_section': [2, 3, 3]},
                tie_word_embeddings=False, bos_token_id=ids['<|endoftext|>'], eos_token_id=ids['<|im_end|>'],
                use_cache=True, dtype='float32', sliding_window=None, use_sliding_window=False)


def load_sa2va(refsrc, sam_model):
    """Import Sa2VA's models_qwen2_5_vl modules as a package, with `.sam2` replaced by a stub around sam_model."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import gen_sam2_goldens as s2g
    base = os.path.join(refsrc, 'Sa2VA/projects/sa2va/hf/models_qwen2_5_vl')
    if not os.path.isdir(base):   # a checkout without it: read Sa2VA's files from the bare mirror at HEAD
        import subprocess
        import tempfile
        base = tempfile.mkdtemp(prefix='sa2va-q25-')
        for fn in ['configuration_sa2va_chat.py', 'modeling_sa2va_qwen.py']:
            src = subprocess.check_output(['git', '-C', MIRROR, 'show', f'HEAD:projects/sa2va/hf/models_qwen2_5_vl/{fn}'])
            with open(os.path.join(base, fn), 'wb') as f:
                f.write(src)
    pkg = types.ModuleType('sa2va_q25')
    pkg.__path__ = [base]
    sys.modules['sa2va_q25'] = pkg

    class SAM2(nn.Module):
        """Sa2VA's grounding-encoder interface over Meta's tiny SAM2 (single image)."""

        def __init__(self):
            super().__init__()
            self.sam2_model = sam_model
            self.hidden_dim = 32

        def preprocess_image(self, image):
            mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
            std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
            return (image.float() / 255.0 - mean) / std

        def get_sam2_embeddings(self, images):
            feats, _, _ = s2g.encode(self.sam2_model, images.float())
            return feats

        def language_embd_inference(self, feats, language_embd):
            out = []
            for e in language_embd:
                pc, pl = torch.zeros(1, 1, 2), -torch.ones(1, 1, dtype=torch.int32)
                _, _, low, iou, _, obj = s2g.decode(self.sam2_model, feats, pc, pl, True, extra_sparse=e[None])
                best = int(torch.argmax(iou, dim=-1)[0])
                LOG['sam'].append({'iou': iou[0].tolist(), 'obj': float(obj[0, 0]), 'best': best})
                out.append(F.interpolate(low[:, best:best + 1], size=(1024, 1024), mode='bilinear',
                                         align_corners=False))
            return torch.cat(out, 0)

    sam_mod = types.ModuleType('sa2va_q25.sam2')
    sam_mod.SAM2 = SAM2
    sys.modules['sa2va_q25.sam2'] = sam_mod
    mods = {}
    for name in ['configuration_sa2va_chat', 'modeling_sa2va_qwen']:
        spec = importlib.util.spec_from_file_location(f'sa2va_q25.{name}', os.path.join(base, f'{name}.py'))
        m = importlib.util.module_from_spec(spec)
        sys.modules[f'sa2va_q25.{name}'] = m
        spec.loader.exec_module(m)
        mods[name] = m
    return mods


LOG = {'sam': []}


def reinit(model, seed):
    """Random weights large enough that greedy decoding is decisive (transformers' 0.02 init gives flat logits)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.startswith('grounding_encoder.'):
            continue
        with torch.no_grad():
            if name.endswith('norm.weight') or name.endswith('norm1.weight') or name.endswith('norm2.weight') \
                    or '_norm.' in name or 'layernorm' in name or name.endswith('ln_q.weight'):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith('.bias'):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif p.ndim >= 2 and 'embed_tokens' not in name and 'pos_embed' not in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


class Store:
    def __init__(self):
        self.t, self.meta = {}, {}

    def put(self, name, x, desc):
        import torch
        x = x.detach().contiguous().clone() if torch.is_tensor(x) else torch.as_tensor(x)
        self.t[name] = x.contiguous()
        self.meta[name] = {'shape': list(x.shape), 'dtype': str(x.dtype).replace('torch.', ''), 'desc': desc}


def main():
    import numpy as np
    import torch
    import transformers
    from PIL import Image
    from safetensors.torch import load_file, save_file
    assert transformers.__version__ == '4.57.0', f'Sa2VA pins transformers 4.57.0, got {transformers.__version__}'
    import gen_internvl_goldens as ivg
    import gen_sam2_goldens as s2g
    from transformers import AutoProcessor, Qwen2TokenizerFast, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl_fast import Qwen2VLImageProcessorFast
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    import qwen_vl_utils
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    refsrc = sys.argv[1] if len(sys.argv) > 1 else '/tmp/refsrc'
    os.makedirs(OUT, exist_ok=True)

    # ---- tokenizer + processor (as Sa2VA's converter saves them: processor.save_pretrained)
    ivg.SPECIAL_TOKENS = SPECIALS
    ivg.build_tokenizer(OUT, 'Qwen2Tokenizer')
    tok = Qwen2TokenizerFast(tokenizer_file=os.path.join(OUT, 'tokenizer.json'), eos_token='<|im_end|>',
                             pad_token='<|endoftext|>', unk_token=None, bos_token=None,
                             additional_special_tokens=[t for t in SPECIALS if t not in ('<|endoftext|>', '<|im_end|>')])
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]  # Qwen2.5-VL's
    ip = Qwen2VLImageProcessorFast(patch_size=14, temporal_patch_size=2, merge_size=2, image_mean=mean,
                                   image_std=std, min_pixels=3136, max_pixels=12845056)
    vp = Qwen2VLVideoProcessor(patch_size=14, temporal_patch_size=2, merge_size=2, image_mean=mean,
                               image_std=std, min_pixels=3136, max_pixels=12845056)
    Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp,
                     chat_template=CHAT_TEMPLATE).save_pretrained(OUT)
    processor = AutoProcessor.from_pretrained(OUT)
    assert type(processor.image_processor).__name__ == 'Qwen2VLImageProcessorFast', type(processor.image_processor)
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    vocab = len(processor.tokenizer)

    # ---- config as Sa2VA's convert_to_hf writes it
    sam_model, _ = s2g.build()
    pre = 'grounding_encoder.sam2_model.'
    sam_sd = load_file(SAM2_W)
    missing, unexpected = sam_model.load_state_dict({k[len(pre):]: v.float() for k, v in sam_sd.items()})
    assert not missing and not unexpected
    sam_model.eval()
    mods = load_sa2va(refsrc, sam_model)
    Cfg = mods['configuration_sa2va_chat'].Sa2VAChatConfigQwen
    cfg = Cfg(template='qwen_chat', text_config=text_cfg(vocab, ids), vision_config=vision_cfg(),
              image_token_id=ids['<|image_pad|>'], video_token_id=ids['<|video_pad|>'],
              vision_start_token_id=ids['<|vision_start|>'], vision_end_token_id=ids['<|vision_end|>'],
              tie_word_embeddings=False, architectures=['Sa2VAChatModelQwen'])
    cfg.auto_map = {'AutoConfig': 'configuration_sa2va_chat.Sa2VAChatConfigQwen',
                    'AutoModel': 'modeling_sa2va_qwen.Sa2VAChatModelQwen',
                    'AutoModelForCausalLM': 'modeling_sa2va_qwen.Sa2VAChatModelQwen'}
    cfg.text_config.tie_word_embeddings = False
    cfg.save_pretrained(OUT)
    # perceptio's `sam2` geometry block (docs/formats.md): the tiny SAM2 is not Sa2VA's hiera-L
    import gen_sa2va_e2e_goldens as e2e
    with open(os.path.join(OUT, 'config.json')) as f:
        cj = json.load(f)
    cj['sam2'] = e2e.sam2_block()
    with open(os.path.join(OUT, 'config.json'), 'w') as f:
        json.dump(cj, f, indent=2, sort_keys=True)
        f.write('\n')

    Model = mods['modeling_sa2va_qwen'].Sa2VAChatModelQwen
    model = Model(Cfg.from_pretrained(OUT))
    reinit(model, SEED)
    model.eval()
    model.torch_dtype = torch.float32
    # weights: the Sa2VA state dict + the tiny SAM2 (replacing the stub's view of it)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith(pre)}
    sd.update({k: v.float().contiguous() for k, v in sam_sd.items()})
    save_file(dict(sorted(sd.items())), os.path.join(OUT, 'model.safetensors'), metadata={'format': 'pt'})
    # reload from disk exactly (the goldens depend only on the written files)
    back = load_file(os.path.join(OUT, 'model.safetensors'))
    model.load_state_dict({k: v for k, v in back.items() if not k.startswith(pre)}, strict=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in back.items() if not k.startswith(pre))
    qwen = model.model
    print('generation eos', qwen.generation_config.eos_token_id, 'vocab', vocab)

    st, summary = Store(), {'per_image': {}}
    seg_id = ids['[SEG]']
    orig_generate = qwen.generate
    capture = {}

    def capped_generate(**kw):
        kw['max_new_tokens'] = MAX_NEW
        capture['inputs'] = {k: v for k, v in kw.items() if torch.is_tensor(v)}
        out = orig_generate(**kw)
        capture['out'] = out
        return out
    qwen.generate = capped_generate

    for name, rel in IMAGES.items():
        pil = Image.open(os.path.join(REPO, rel)).convert('RGB')
        W, H = pil.size
        LOG['sam'] = []
        # A [SEG] must appear in greedy output for predict_forward's grounding path; random weights rarely
        # pick it, so the [SEG] and <|im_end|> rows of lm_head are scaled (searched below, recorded).
        w0 = back['model.lm_head.weight'].clone()
        chosen = None
        for s_seg in [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]:
            for s_eos in [1.0, 2.0, 3.0, 4.0, 6.0]:
                with torch.no_grad():
                    qwen.lm_head.weight.copy_(w0)
                    qwen.lm_head.weight[seg_id] *= s_seg
                    qwen.lm_head.weight[ids['<|im_end|>']] *= s_eos
                    LOG['sam'] = []
                    res = model.predict_forward(image=pil, text=TEXTS[name], processor=processor)
                gen = capture['out'].sequences[0][capture['inputs']['input_ids'].shape[1]:].tolist()
                ok_seg = seg_id in gen[:-1]
                if name == 'portrait' or ok_seg:
                    chosen = (s_seg, s_eos)
                    break
            if chosen:
                break
        assert chosen, 'no scale gives a [SEG]'
        if name == 'chelsea':
            seg_scale = chosen
        else:
            seg_scale = SCALE  # noqa: F821  (set below for the first image; both images use one checkpoint)
            with torch.no_grad():
                qwen.lm_head.weight.copy_(w0)
                qwen.lm_head.weight[seg_id] *= seg_scale[0]
                qwen.lm_head.weight[ids['<|im_end|>']] *= seg_scale[1]
                LOG['sam'] = []
                res = model.predict_forward(image=pil, text=TEXTS[name], processor=processor)
        globals()['SCALE'] = seg_scale
        inp = capture['inputs']
        out = capture['out']
        L = inp['input_ids'].shape[1]
        gen = out.sequences[0][L:].tolist()
        p = name
        st.put(f'{p}.input_ids', inp['input_ids'][0], 'processor input_ids (prompt with <|image_pad|> expanded)')
        st.put(f'{p}.image_grid_thw', inp['image_grid_thw'][0], 'image_grid_thw (t, h, w) in patches')
        pv = inp['pixel_values']
        st.put(f'{p}.pixel_values.col_sums', pv.double().sum(0), 'float64 column sums of pixel_values [N, 1176]')
        rows = torch.linspace(0, pv.shape[0] - 1, 16).long()
        st.put(f'{p}.pixel_values.rows_idx', rows, 'indices of the stored pixel_values rows')
        st.put(f'{p}.pixel_values.rows', pv[rows], 'pixel_values at rows_idx')
        # the two resizes (qwen_vl_utils' PIL one, then the fast processor's torchvision one)
        fetched = qwen_vl_utils.fetch_image({'type': 'image', 'image': pil})
        a1 = np.array(fetched)
        import torchvision.transforms.v2.functional as TF
        t, gh, gw = inp['image_grid_thw'][0].tolist()
        r2 = TF.resize(torch.from_numpy(a1).permute(2, 0, 1).contiguous(), [gh * 14, gw * 14],
                       interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        pil2 = np.array(fetched.resize((gw * 14, gh * 14), Image.BICUBIC))
        diff_tv_pil = int((r2.permute(1, 2, 0).int() - torch.from_numpy(pil2).int()).abs().max())
        st.put(f'{p}.resize1_u8.row_sums', torch.from_numpy(a1.astype(np.int64)).sum((1, 2)),
               'row sums of the qwen_vl_utils-resized uint8 image (factor 28)')
        st.put(f'{p}.resize2_u8.row_sums', r2.long().sum((0, 2)),
               'row sums of the processor-resized uint8 image (factor 28, min/max pixels of predict_forward)')
        with torch.no_grad():
            ve = qwen.model.visual(pv, grid_thw=inp['image_grid_thw'])
            st.put(f'{p}.vision.embeds', ve, 'visual(pixel_values) merged tokens [N/4, 64] (window attention)')
            wi, cu = qwen.model.visual.get_window_index(inp['image_grid_thw'])
            st.put(f'{p}.vision.window_index', wi, 'get_window_index: merged-token order of the windows')
            st.put(f'{p}.vision.cu_window_seqlens', torch.unique_consecutive(torch.tensor(cu)), 'window bounds (patches)')
            pos, delta = qwen.model.get_rope_index(inp['input_ids'], inp['image_grid_thw'], None,
                                                   attention_mask=inp['attention_mask'])
            st.put(f'{p}.position_ids', pos[:, 0], 'get_rope_index (3, L)')
            st.put(f'{p}.rope_delta', delta[0], 'mrope_position_deltas')
            fw = qwen(**{k: v for k, v in inp.items()}, output_hidden_states=True)
            st.put(f'{p}.prefill.logits_last4', fw.logits[0, -4:], 'prefill logits at the last 4 prompt positions')
            st.put(f'{p}.prefill.hidden_last', fw.hidden_states[-1][0, -4:], 'hidden_states[-1] (4.57 Qwen2.5-VL: post-norm) last 4')
        st.put(f'{p}.gen.ids', torch.tensor(gen), f'greedy new tokens (max {MAX_NEW}) from Qwen2_5_VL generate')
        hs = torch.cat([h[-1][0] for h in out.hidden_states], 0)
        seq = out.sequences[0][:-1]
        seg_mask = seq == seg_id
        seg_h = hs[-len(seg_mask):][seg_mask]
        st.put(f'{p}.gen.seg_hidden', seg_h, 'hidden_states[-1] where the input token is [SEG] (predict_forward)')
        with torch.no_grad():
            st.put(f'{p}.gen.seg_embedding', model.text_hidden_fcs(seg_h), 'text_hidden_fcs(seg_hidden)')
        masks = res['prediction_masks']
        if masks:
            m = np.stack([mm[0] for mm in masks]).any(0)
            st.put(f'{p}.mask_bits', torch.from_numpy(np.packbits(m.reshape(-1))), f'OR of the [SEG] masks [{H},{W}] packbits')
        # LISA-style teacher forcing (perceptio's --force-seg): prompt + tokenizer("Sure, [SEG].") in ONE
        # forward, hidden_states[-1] at the [SEG] input position, then the same SAM2 path as predict_forward.
        sam_log = list(LOG['sam'])
        reply = processor.tokenizer.encode(FORCED_REPLY, add_special_tokens=False)
        full = torch.cat([inp['input_ids'][0], torch.tensor(reply)])[None]
        with torch.no_grad():
            fo = qwen(input_ids=full, attention_mask=torch.ones_like(full), pixel_values=pv,
                      image_grid_thw=inp['image_grid_thw'], output_hidden_states=True)
            fpos = L + reply.index(seg_id)
            fh = fo.hidden_states[-1][0, fpos][None]
            fe = model.text_hidden_fcs(fh)
            g_img = torch.from_numpy(np.array(pil.resize((1024, 1024)))).permute(2, 0, 1).contiguous()
            sam = model.grounding_encoder
            feats = sam.get_sam2_embeddings(sam.preprocess_image(g_img)[None])
            fm = sam.language_embd_inference(feats, [fe])
            fm = torch.nn.functional.interpolate(fm, size=(H, W), mode='bilinear', align_corners=False)[:, 0]
            fmask = (fm.sigmoid() > 0.5)[0].numpy()
        st.put(f'{p}.force.input_ids', full[0], 'prompt ids + tokenizer("Sure, [SEG].", add_special_tokens=False)')
        st.put(f'{p}.force.seg_hidden', fh, 'hidden_states[-1] (4.57 Qwen2.5-VL: post-norm) at the [SEG] input position')
        st.put(f'{p}.force.seg_embedding', fe, 'text_hidden_fcs(force.seg_hidden)')
        st.put(f'{p}.force.mask_bits', torch.from_numpy(np.packbits(fmask.reshape(-1))),
               f'teacher-forced mask [{H},{W}] packbits')
        summary['per_image'][name] = {
            'image': rel, 'size_wh': [W, H], 'text': TEXTS[name], 'prediction': res['prediction'],
            'generated_ids': gen, 'prompt_len': L, 'grid_thw': [t, gh, gw], 'resize1_hw': list(a1.shape[:2]),
            'torchvision_vs_pil_bicubic_max_diff': diff_tv_pil, 'n_seg': int(seg_mask.sum()),
            'mask_frac': float(m.mean()) if masks else None, 'sam': sam_log,
            'force_mask_frac': float(fmask.mean()), 'force_seg_pos': fpos,
            'prompt_text': processor.tokenizer.decode(inp['input_ids'][0][:8].tolist() + inp['input_ids'][0][-24:].tolist()),
        }
        print(name, json.dumps(summary['per_image'][name])[:900], flush=True)
    # the checkpoint holds the scaled lm_head rows (one set for both images)
    with torch.no_grad():
        w = back['model.lm_head.weight'].clone()
        w[seg_id] *= SCALE[0]  # noqa: F821
        w[ids['<|im_end|>']] *= SCALE[1]  # noqa: F821
        assert torch.equal(w, qwen.lm_head.weight)
    back['model.lm_head.weight'] = w
    save_file(dict(sorted(back.items())), os.path.join(OUT, 'model.safetensors'), metadata={'format': 'pt'})
    save_file(st.t, os.path.join(OUT, 'goldens.safetensors'), metadata={'format': 'pt'})
    meta = {'versions': {'torch': torch.__version__, 'transformers': transformers.__version__,
                         'qwen_vl_utils': '0.0.14'},
            'lm_head_scales_seg_eos': list(SCALE), 'seed': SEED, 'max_new_tokens': MAX_NEW,  # noqa: F821
            'token_ids': ids, 'summary': summary, 'tensors': st.meta,
            'sha256_model': hashlib.sha256(open(os.path.join(OUT, 'model.safetensors'), 'rb').read()).hexdigest()}
    with open(os.path.join(OUT, 'goldens.json'), 'w') as f:
        json.dump(meta, f, indent=1)
        f.write('\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
