#!/usr/bin/env python3
"""The PyTorch reference side of tools/bench_e2e.sh: Sa2VA's `segment --force-seg` / `ask` pipeline, and
`perceptio depth`'s, on a real-size checkpoint (tools/gen_sa2va_realsize.py [--depth]), stage by stage,
printing one JSON line (manual; never in CI).

    /work/venv-torch/bin/python tools/bench_e2e_torch.py --model /work/realsize-f32 --image fixtures/images/chelsea.png \
        --mode segment --expression "the cat" [--threads 2] [--mask-out mask.npy]
    ... --mode ask --question "Describe the image." --max-new-tokens 32
    ... --model /work/realsize-f32-depth --mode depth [--force-depth] --max-new-tokens 101 [--depth-out map.npy]

What runs (fp32, torch.inference_mode, torch.set_num_threads(--threads)), all from the reference code:
  vision   Sa2VA's own Sa2VAChatModel.extract_feature (its InternVisionModel + pixel shuffle + mlp1) on the
           tiles of Sa2VA's dynamic_preprocess (InternVL's, max 12 + thumbnail); the ViT's naive attention is
           swapped for F.scaled_dot_product_attention (same math: the strongest PyTorch CPU kernel, what
           transformers' native InternVL runs), so the baseline is not handicapped by eager attention.
  llm      transformers' Qwen2ForCausalLM with SDPA (the Sa2VA model's own language_model): segment teacher-forces
           Sa2VA's prompt + "Sure, [SEG]." in one forward and takes the [SEG] row of hidden_states[-1] through
           text_hidden_fcs, as perceptio does; ask prefills the prompt, then decodes --max-new-tokens greedily
           with the KV cache (manual loop, fixed count: random weights rarely stop on their own).
  sam2     Meta's sam2 1.1.0, `configs/sam2/sam2_hiera_l.yaml` (Sa2VA builds SAM2, not 2.1), strict-loaded from
           the checkpoint's grounding_encoder.sam2_model.*: Sa2VA's 1024x1024 resize + ImageNet normalisation,
           forward_image + no_mem_embed (encode), then the prompt encoder with the [SEG] embedding as a third
           sparse token, the mask decoder, and the bilinear upsampling to the photo (decode).
  depth    what `perceptio depth IMG --model M` runs (src/cli/depth.rs, src/models/perceptio/mod.rs `respond`):
           the `perceptio.depth` block's prompt (default "<image>\nWhat is the depth map for the image?") in the
           template; with --force-depth the start marker appended to the prompt embeddings (so it is prefilled,
           not generated, and not among the generated ids); prefill = the Qwen2 body (Qwen2Model) over the prompt;
           decode = per step lm_head on the last hidden state, perceptio's depth constraint
           (DepthConstraint below, a transformers LogitsProcessor: before the block anything but codes and the
           end marker, inside exactly gh*gw codes, then only the end marker, after it anything but depth tokens),
           argmax, stop on the template's stop words / eos, else feed the token back (KV cache), up to
           --max-new-tokens; the same split as perceptio's generate_constrained. vqvae = AiT's own VQVAE
           (models/VQVAE.py from --ait, AURORA's config, strict-loaded from depth_vqvae.*) `decode(codes)`, then
           perceptio's DepthHead::decode tail: x*0.5+0.5 clamped to [0,1], bilinear (align_corners=False) to the
           photo's size, clamped. SAM2 is not built (nothing in `depth` uses it).
Weights are loaded from the checkpoint, so the mask (--mask-out) and the depth map (--depth-out) can be compared
with perceptio's.
Needs: torch, transformers 5, sam2 1.1.0 + hydra, the Sa2VA/InternVL sources of tools/gen_internvl_goldens.py.
"""
import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tools'))
FORCED_REPLY = 'Sure, [SEG].'


def log(*a):
    print(*a, file=sys.stderr, flush=True)


try:
    from transformers import LogitsProcessor as _LogitsProcessor
except ImportError:  # --help without transformers
    _LogitsProcessor = object


class DepthConstraint(_LogitsProcessor):
    """perceptio's DepthConstraint (src/models/depth_tokens.rs) as a transformers LogitsProcessor (so it also
    plugs into generate(logits_processor=[...])): the state is read from the tokens generated so far
    (input_ids[:, prompt_len:]; a forced start marker counts), the additive masks are built once."""

    def __init__(self, start, end, codes, n_codes, vocab, prompt_len):
        import torch
        self.start, self.end, self.codes, self.n, self.prompt_len = start, end, list(codes), n_codes, prompt_len
        neg = float('-inf')
        code_t = torch.tensor(self.codes)
        before = torch.zeros(vocab)
        before[code_t] = neg
        before[end] = neg
        after = before.clone()
        after[start] = neg
        inside = torch.full((vocab,), neg)
        inside[code_t] = 0.0
        only_end = torch.full((vocab,), neg)
        only_end[end] = 0.0
        self.masks = {'before': before, 'codes': inside, 'end': only_end, 'after': after}

    def state(self, seq):
        st, k = 'before', 0
        for t in seq:
            if st == 'before' and t == self.start:
                st, k = 'codes', 0
            elif st == 'codes':
                k += 1
                if k == self.n:
                    st = 'end'
            elif st == 'end':
                st = 'after'
        return st

    def __call__(self, input_ids, scores):
        st = self.state(input_ids[0, self.prompt_len:].tolist())
        return scores + self.masks[st].to(scores.dtype)


def load_tensors(model_dir, want=lambda k: True):
    """The checkpoint's tensors (names passing `want`): model.safetensors, or the shards of
    model.safetensors.index.json, each tensor from the file its weight_map names."""
    from safetensors import safe_open
    idx = os.path.join(model_dir, 'model.safetensors.index.json')
    if os.path.isfile(idx):
        with open(idx) as f:
            wm = json.load(f)['weight_map']
    else:
        with safe_open(os.path.join(model_dir, 'model.safetensors'), 'pt') as f:
            wm = {k: 'model.safetensors' for k in f.keys()}
    by_file = {}
    for k, fn in wm.items():
        if want(k):
            by_file.setdefault(fn, []).append(k)
    sd = {}
    for fn, names in sorted(by_file.items()):
        with safe_open(os.path.join(model_dir, fn), 'pt') as f:
            for k in names:
                sd[k] = f.get_tensor(k)
    return sd


def build_vqvae(ait, model_dir, cfg):
    """AiT's VQVAE at the block's vqvae_config, weights from the checkpoint's `depth_vqvae.*` (prefix from the block)."""
    d = cfg['perceptio']['depth']
    vc = dict(image_size=320, channels=1, num_tokens=128, codebook_dim=512, hidden_dim=16, num_resnet_blocks=2,
              downsample_ratio=32)
    vc.update(d.get('vqvae_config', {}))
    prefix = d['vqvae'].get('prefix')
    assert prefix, 'only the {"prefix": ...} VQ-VAE source is supported here (tools/gen_sa2va_realsize.py --depth)'
    sys.path.insert(0, ait)
    from models.VQVAE import VQVAE
    vae = VQVAE(**vc, train_objective='regression', max_value=10., residul_type='v1', loss_type='mse',
                use_norm=False).eval()
    sd = {k[len(prefix):]: v for k, v in load_tensors(model_dir, lambda k: k.startswith(prefix)).items()}
    vae.load_state_dict(sd, strict=True)
    return vae.float(), d, vc


def build(refsrc, model_dir, with_sam2=True):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import gen_internvl_goldens as ivg

    refs = ivg.load_references(refsrc)
    with open(os.path.join(model_dir, 'config.json')) as f:
        cfg = json.load(f)
    kw = {k: v for k, v in cfg.items() if k not in ('model_type', 'sam2', 'perceptio')}
    config = refs.sv_config.Sa2VAChatConfig(**kw)
    config.llm_config._attn_implementation = 'sdpa'
    config.vision_config.use_flash_attn = False
    sd = load_tensors(model_dir, lambda k: with_sam2 or not k.startswith('grounding_encoder.')
                      or k == 'grounding_encoder.sam2_model.no_mem_embed')
    model = refs.sv_chat.Sa2VAChatModel(config, use_flash_attn=False)
    ivl = {k: v for k, v in sd.items() if (not k.startswith('grounding_encoder.')
           or k == 'grounding_encoder.sam2_model.no_mem_embed') and not k.startswith('depth_vqvae.')}
    missing, unexpected = model.load_state_dict(ivl, strict=False)
    assert set(missing) <= {'language_model.lm_head.weight'} and not unexpected, (missing[:5], unexpected[:5])
    lm = model.language_model
    # transformers' SDPA kernel for the LLM (Sa2VA's config would leave it eager without
    # flash-attn): the strongest CPU baseline, as for the ViT below.
    lm.set_attn_implementation('sdpa')
    assert lm.config._attn_implementation == 'sdpa'
    lm.tie_weights()
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    model.float().eval()

    # The ViT's naive attention as SDPA (identical math, the fastest CPU kernel PyTorch has).
    attn_cls = type(model.vision_model.encoder.layers[0].attn)

    def sdpa_attn(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.qk_normalization:
            B_, H_, N_, D_ = q.shape
            q = self.q_norm(q.transpose(1, 2).flatten(-2, -1)).view(B_, N_, H_, D_).transpose(1, 2)
            k = self.k_norm(k.transpose(1, 2).flatten(-2, -1)).view(B_, N_, H_, D_).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))
    attn_cls._naive_attn = sdpa_attn

    if not with_sam2:
        del sd
        return refs, ivg, model, None
    from sam2.build_sam import build_sam2
    sam = build_sam2('configs/sam2/sam2_hiera_l.yaml', ckpt_path=None, device='cpu', mode='eval')
    pre = 'grounding_encoder.sam2_model.'
    ssd = {k[len(pre):].replace('.g_weight', '.gamma'): v for k, v in sd.items() if k.startswith(pre)}
    missing, unexpected = sam.load_state_dict(ssd, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    sam.eval()
    del sd
    return refs, ivg, model, sam


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--model', required=True)
    ap.add_argument('--image', required=True)
    ap.add_argument('--mode', choices=['segment', 'ask', 'depth'], default='segment')
    ap.add_argument('--expression', default='the cat')
    ap.add_argument('--question', default='Describe the image in detail.')
    ap.add_argument('--max-new-tokens', type=int, default=32)
    ap.add_argument('--max-tiles', type=int, default=12)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--refsrc', default='/tmp/refsrc')
    ap.add_argument('--mask-out')
    ap.add_argument('--force-depth', action='store_true', help='depth: start the reply with the start marker')
    ap.add_argument('--no-constrain', action='store_true', help='depth: decode without the depth constraint')
    ap.add_argument('--ait', default='/tmp/ait/vae', help="AiT's vae/ sources (models/VQVAE.py)")
    ap.add_argument('--depth-out', help='depth: write the [0,1] map (height x width, f32) as .npy')
    a = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    import torchvision.transforms as T
    from PIL import Image
    from torchvision.transforms.functional import InterpolationMode
    from tokenizers import Tokenizer
    torch.set_num_threads(a.threads)

    t0 = time.perf_counter()
    refs, ivg, model, sam = build(a.refsrc, a.model, with_sam2=a.mode == 'segment')
    if a.mode == 'depth':
        with open(os.path.join(a.model, 'config.json')) as f:
            full_cfg = json.load(f)
        assert 'perceptio' in full_cfg, f'{a.model}: no perceptio.depth block (tools/gen_sa2va_realsize.py --depth)'
        vae, dblock, vqcfg = build_vqvae(a.ait, a.model, full_cfg)
    tok = Tokenizer.from_file(os.path.join(a.model, 'tokenizer.json'))
    load_s = time.perf_counter() - t0
    template = model.template if isinstance(model.template, dict) else refs.sv_templates.PROMPT_TEMPLATE[model.template]
    img_ctx = tok.token_to_id('<IMG_CONTEXT>')
    seg_id = tok.token_to_id('[SEG]')
    pil = Image.open(a.image).convert('RGB')
    W, H = pil.size
    out = {'side': 'pytorch', 'torch': torch.__version__, 'threads': a.threads, 'load_s': round(load_s, 3),
           'llm_attn': model.language_model.config._attn_implementation}

    with torch.inference_mode():
        # ---- vision: Sa2VA predict_forward's preprocessing + extract_feature
        t = time.perf_counter()
        tiles = refs.sv_chat.dynamic_preprocess(pil, 1, a.max_tiles, 448, True)
        tf = T.Compose([T.Resize((448, 448), interpolation=InterpolationMode.BICUBIC), T.ToTensor(),
                        T.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))])
        pv = torch.stack([tf(x) for x in tiles])
        feats = model.extract_feature(pv)
        out['vision_s'] = time.perf_counter() - t
        out['tiles'] = len(tiles)

        question = f' Please segment {a.expression} in this image.' if a.mode == 'segment' else a.question
        prompt = ivg.build_prompt(template, question, len(tiles), model.num_image_token)
        if a.mode == 'depth':
            # perceptio sends the block's prompt as the whole user turn (<image> expanded where it stands)
            user = dblock.get('prompt', '<image>\nWhat is the depth map for the image?')
            img_str = '<img>' + '<IMG_CONTEXT>' * (len(tiles) * model.num_image_token) + '</img>'
            prompt = template['INSTRUCTION'].format(input=user.replace('<image>', img_str), round=1, bot_name='BOT')
        ids = tok.encode(prompt, add_special_tokens=True).ids
        out['prompt_tokens'] = len(ids)
        emb_layer = model.language_model.get_input_embeddings()
        lm = model.language_model

        def embeds(token_ids):
            e = emb_layer(torch.tensor([token_ids]))
            sel = torch.tensor(token_ids) == img_ctx
            e[0, sel] = feats.reshape(-1, feats.shape[-1]).to(e.dtype)
            return e

        if a.mode == 'segment':
            # ---- llm: teacher-forced reply in one forward (prompt + reply), [SEG] hidden -> text_hidden_fcs
            t = time.perf_counter()
            reply = tok.encode(FORCED_REPLY, add_special_tokens=False).ids
            o = lm(inputs_embeds=embeds(ids + reply), output_hidden_states=True, use_cache=False,
                   logits_to_keep=1)
            h = o.hidden_states[-1][0, len(ids):]
            seg_rows = h[torch.tensor(reply) == seg_id]
            seg_emb = model.text_hidden_fcs(seg_rows)
            out['llm_s'] = time.perf_counter() - t

            # ---- sam2 encode: Sa2VA's DirectResize 1024 + ImageNet norm; forward_image + no_mem_embed
            t = time.perf_counter()
            g = np.array(pil.resize((1024, 1024)))
            gx = torch.from_numpy(g).permute(2, 0, 1).float() / 255.0
            mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
            std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
            gx = ((gx - mean) / std)[None]
            bo = sam.forward_image(gx)
            _, vf, _, sizes = sam._prepare_backbone_features(bo)
            vf[-1] = vf[-1] + sam.no_mem_embed
            fm = [f.permute(1, 2, 0).view(1, -1, *s) for f, s in zip(vf, sizes)]
            out['sam2_encode_s'] = time.perf_counter() - t

            # ---- sam2 decode: [SEG] as the third sparse token (Sa2VA), mask decoder, upsample to the photo
            t = time.perf_counter()
            pe = sam.sam_prompt_encoder
            sparse, dense = pe(points=(torch.zeros(1, 1, 2), -torch.ones(1, 1, dtype=torch.int32)),
                               boxes=None, masks=None)
            sparse = torch.cat([sparse, seg_emb[:1][None]], dim=1)
            low, iou, _, obj = sam.sam_mask_decoder(
                image_embeddings=fm[-1], image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense, multimask_output=True, repeat_image=False,
                high_res_features=fm[:-1])
            best = int(torch.argmax(iou, dim=-1)[0])
            m = F.interpolate(low[:, best:best + 1], size=(1024, 1024), mode='bilinear', align_corners=False)
            m = F.interpolate(m, size=(H, W), mode='bilinear', align_corners=False)[0, 0] > 0
            out['sam2_decode_s'] = time.perf_counter() - t
            out['mask_area'] = int(m.sum())
            if a.mask_out:
                np.save(a.mask_out, m.numpy())
            out['compute_s'] = out['vision_s'] + out['llm_s'] + out['sam2_encode_s'] + out['sam2_decode_s']
        elif a.mode == 'depth':
            tk = dblock.get('tokens', {})
            fmt = tk.get('code_format', '<DEPTH_{}>')
            gh, gw = tk.get('grid', [10, 10])
            start, end = tok.token_to_id(tk.get('start', '<DEPTH_START>')), tok.token_to_id(tk.get('end', '<DEPTH_END>'))
            codes = [tok.token_to_id(fmt.replace('{}', str(k), 1)) for k in range(tk.get('codebook_size', 128))]
            assert None not in codes and start is not None and end is not None, 'depth tokens missing from the tokenizer'
            code_of = {c: k for k, c in enumerate(codes)}
            stops = [tok.token_to_id(w) for w in template.get('STOP_WORDS', [])]
            with open(os.path.join(a.model, 'tokenizer_config.json')) as f:
                eos = json.load(f).get('eos_token')
            stops = sorted({s for s in stops + [tok.token_to_id(eos) if eos else None] if s is not None})
            prompt_ids = ids + ([start] if a.force_depth else [])
            out['prompt_tokens'] = len(prompt_ids)
            body, head = lm.model, lm.lm_head
            vocab = head.weight.shape[0]
            cons = None if a.no_constrain else DepthConstraint(start, end, codes, gh * gw, vocab, len(ids))
            # ---- prefill: the Qwen2 body over the prompt (lm_head runs per step below, as in perceptio)
            t = time.perf_counter()
            o = body(inputs_embeds=embeds(prompt_ids), use_cache=True)
            cache = o.cache if hasattr(o, 'cache') else o.past_key_values
            last = o.last_hidden_state[:, -1]
            out['prefill_s'] = time.perf_counter() - t
            # ---- decode: logits, constraint, argmax, stop or feed back
            seq = list(prompt_ids)
            gen = []
            t = time.perf_counter()
            while len(gen) < a.max_new_tokens:
                logits = head(last)
                if cons is not None:
                    logits = cons(torch.tensor([seq]), logits)
                nxt = int(logits[0].argmax())
                gen.append(nxt)
                seq.append(nxt)
                if nxt in stops or len(gen) == a.max_new_tokens:
                    break
                o = body(input_ids=torch.tensor([[nxt]]), cache=cache, use_cache=True)
                cache = o.cache if hasattr(o, 'cache') else o.past_key_values
                last = o.last_hidden_state[:, -1]
            out['decode_s'] = time.perf_counter() - t
            # every fed-back token went through the KV cache (a random model's repeated tokens would hide a
            # decode that lost its context, so check the cache length rather than trust the ids alone)
            kv = cache.get_seq_length()
            assert kv == len(seq) - 1, f'KV cache holds {kv} positions, {len(seq) - 1} expected'
            out['kv_len'] = kv
            out['new_tokens'] = len(gen)
            out['decode_tok_per_s'] = len(gen) / max(out['decode_s'], 1e-9)  # perceptio's definition
            out['token_ids'] = gen
            out['llm_s'] = out['prefill_s'] + out['decode_s']
            # ---- the block (perceptio's DepthTokenIds::parse, for a well-formed one) -> AiT VQVAE decode
            stream = ([start] if a.force_depth else []) + [i for i in gen if i not in stops]
            block = None
            if start in stream:
                p = stream.index(start)
                rest = stream[p + 1:]
                if end in rest and rest.index(end) == gh * gw and all(i in code_of for i in rest[:gh * gw]):
                    block = [code_of[i] for i in rest[:gh * gw]]
            out['depth_codes'] = block
            out['vqvae_s'] = 0.0
            if block is not None:
                t = time.perf_counter()
                x = vae.decode(torch.tensor(block).reshape(1, gh, gw))
                x = (x.float() * 0.5 + 0.5).clamp(0, 1)
                x = F.interpolate(x, size=(H, W), mode='bilinear', align_corners=False).clamp(0, 1)
                out['vqvae_s'] = time.perf_counter() - t
                dm = x[0, 0].numpy()
                out['depth_min'], out['depth_max'] = float(dm.min()), float(dm.max())
                if a.depth_out:
                    np.save(a.depth_out, dm)
            else:
                log('no well-formed depth block in the reply (try --force-depth)')
            out['compute_s'] = out['vision_s'] + out['prefill_s'] + out['decode_s'] + out['vqvae_s']
        else:
            # ---- ask: prefill, then greedy decode with the KV cache, a fixed number of tokens
            t = time.perf_counter()
            o = lm(inputs_embeds=embeds(ids), use_cache=True, logits_to_keep=1)
            cache = o.cache if hasattr(o, 'cache') else o.past_key_values
            nxt = int(o.logits[0, -1].argmax())
            out['prefill_s'] = time.perf_counter() - t
            gen = [nxt]
            t = time.perf_counter()
            for _ in range(a.max_new_tokens - 1):
                o = lm(input_ids=torch.tensor([[nxt]]), cache=cache, use_cache=True)
                cache = o.cache if hasattr(o, 'cache') else o.past_key_values
                nxt = int(o.logits[0, -1].argmax())
                gen.append(nxt)
            out['decode_s'] = time.perf_counter() - t
            out['new_tokens'] = len(gen)
            out['decode_tok_per_s'] = (len(gen) - 1) / out['decode_s']
            out['token_ids'] = gen
            out['compute_s'] = out['vision_s'] + out['prefill_s'] + out['decode_s']
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}), flush=True)


if __name__ == '__main__':
    main()
