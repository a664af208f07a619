#!/usr/bin/env python3
"""Tiny random-weight InternVL2.5 / Sa2VA checkpoints + golden outputs from the reference code
(manual; never run in CI).

    python3 -m venv /work/venv-torch
    /work/venv-torch/bin/pip install torch torchvision transformers pillow numpy safetensors \
        timm einops tokenizers sentencepiece
    # tested with torch 2.15.0 (CPU), torchvision 0.29.2, transformers 5.24.0, tokenizers 0.23.3,
    # pillow 13.0.0, timm 1.0.31, einops 0.8.2
    git clone https://github.com/OpenGVLab/InternVL        /tmp/refsrc/InternVL
    git clone https://github.com/magic-research/Sa2VA      /tmp/refsrc/Sa2VA
    /work/venv-torch/bin/python tools/gen_internvl_goldens.py /tmp/refsrc
    # determinism check: regenerate elsewhere and diff against the committed fixtures
    /work/venv-torch/bin/python tools/gen_internvl_goldens.py /tmp/refsrc --out /tmp/ivl2 \
        --compare-with fixtures/internvl

What is used from the references (loaded with importlib from REFSRC, nothing edited):
  * Sa2VA  projects/sa2va/hf/models/: Sa2VAChatConfig, Sa2VAChatModel (the class named in a real
    Sa2VA config.json; its vision tower is InternVisionModel, its mlp1/pixel_shuffle/extract_feature
    are the InternVL ones), modeling_internlm2.InternLM2ForCausalLM, templates.PROMPT_TEMPLATE,
    and the predict_forward prompt construction (re-implemented verbatim below, see build_prompt).
  * InternVL internvl_chat/internvl/: train/dataset.py dynamic_preprocess + build_transform (the
    pixel_values), InternVLChatModel.pixel_shuffle/extract_feature and internlm2/modeling_internlm2
    (cross-checks: must reproduce the Sa2VA numbers exactly).
  * transformers' Qwen2ForCausalLM (what Sa2VAChatModel instantiates for Qwen2 LLMs).
Stubbed imports: peft, cv2, imageio, decord (unused by the code paths we run), the phi3 modules
(incompatible with transformers 5: transformers.modeling_attn_mask_utils is gone) and Sa2VA's SAM2
(replaced by a module holding only `sam2_model.no_mem_embed`, so `grounding_encoder.*` and
`text_hidden_fcs.*` keys appear in the checkpoint like in a real one).
"""
import argparse
import copy
import functools
import hashlib
import importlib
import json
import math
import os
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QUESTION = 'Describe the image in detail.'
MAX_NUM = 6          # dynamic_preprocess max_num used for the goldens
MIN_NUM = 1
IMAGE_SIZE = 56
N_NEW = 40           # generated tokens per golden
SEED = 20250101
MIN_DISTINCT = 8     # greedy output must not collapse onto a couple of tokens
# golden name -> candidate files in --images (first existing wins; the sidecar records which one)
IMAGES = {'chelsea': ['chelsea.png'], 'portrait': ['portrait.png', 'coffee_portrait.png']}
SPECIAL_TOKENS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<img>', '</img>', '<IMG_CONTEXT>',
                  '<quad>', '</quad>', '<ref>', '</ref>', '<box>', '</box>', '[SEG]', '<p>', '</p>',
                  '<vp>', '</vp>']
QWEN2_PRETOKENIZE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                           r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
BPE_VOCAB = 400      # byte alphabet (256) + merges, before the special tokens
# random init (std unless noted); linear/conv weights: N(0, (gain / sqrt(fan_in))^2), gain = llm_linear_gain
# inside language_model/text_hidden_fcs, vit_linear_gain for vision_model/mlp1
INIT = dict(norm_weight_std=0.1, norm_bias_std=0.05, layer_scale_mean=0.5, layer_scale_std=0.1,
            vit_embedding_std=0.1, tok_embedding_std=0.3, lm_head_std=0.3, vit_linear_gain=1.0,
            llm_linear_gain=2.0, bias_std=0.05, other_std=0.1)


# ----------------------------------------------------------------------------- reference loading
def _stub(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def _pkg(name, path):
    """A package module whose __init__.py is NOT executed (the InternVL ones import the world)."""
    if not os.path.isdir(path):
        sys.exit(f'missing reference directory {path}')
    m = types.ModuleType(name)
    m.__path__ = [path]
    sys.modules[name] = m
    return m


def load_references(refsrc):
    import torch
    import torch.nn as nn

    class _Unavailable:
        def __init__(self, *a, **k):
            raise RuntimeError('stubbed out by gen_internvl_goldens.py')

    _stub('peft', LoraConfig=_Unavailable, get_peft_model=_Unavailable)
    _stub('cv2')
    _stub('imageio')
    _stub('decord', VideoReader=_Unavailable)

    class SAM2Stub(nn.Module):
        """Stands in for Sa2VA's SAM2 grounding encoder: only the attribute names/shape matter."""

        def __init__(self, *a, **k):
            super().__init__()
            self.sam2_model = nn.Module()
            self.sam2_model.no_mem_embed = nn.Parameter(torch.zeros(1, 1, 256))
            self.hidden_dim = 256

    iv = os.path.join(refsrc, 'InternVL/internvl_chat/internvl')
    _pkg('internvl', iv)
    _pkg('internvl.model', iv + '/model')
    _pkg('internvl.model.internvl_chat', iv + '/model/internvl_chat')
    _pkg('internvl.model.internlm2', iv + '/model/internlm2')
    _pkg('internvl.model.phi3', iv + '/model/phi3')
    _pkg('internvl.train', iv + '/train')
    _stub('internvl.model.phi3.modeling_phi3', Phi3ForCausalLM=_Unavailable)
    sv = os.path.join(refsrc, 'Sa2VA/projects/sa2va/hf/models')
    _pkg('sa2va_hf', sv)
    _stub('sa2va_hf.modeling_phi3', Phi3ForCausalLM=_Unavailable)
    _stub('sa2va_hf.sam2', SAM2=SAM2Stub)

    r = types.SimpleNamespace()
    r.iv_chat = importlib.import_module('internvl.model.internvl_chat.modeling_internvl_chat')
    r.iv_internlm2 = importlib.import_module('internvl.model.internlm2.modeling_internlm2')
    r.iv_dataset = importlib.import_module('internvl.train.dataset')
    r.sv_chat = importlib.import_module('sa2va_hf.modeling_sa2va_chat')
    r.sv_config = importlib.import_module('sa2va_hf.configuration_sa2va_chat')
    r.sv_internlm2 = importlib.import_module('sa2va_hf.modeling_internlm2')
    r.sv_templates = importlib.import_module('sa2va_hf.templates')
    r.sha256 = {}
    for mod in (r.iv_chat, r.iv_internlm2, r.iv_dataset, r.sv_chat, r.sv_config, r.sv_internlm2, r.sv_templates,
                importlib.import_module('internvl.model.internvl_chat.modeling_intern_vit'),
                importlib.import_module('sa2va_hf.modeling_intern_vit')):
        with open(mod.__file__, 'rb') as f:
            r.sha256[os.path.relpath(mod.__file__, refsrc)] = hashlib.sha256(f.read()).hexdigest()[:16]
    return r


# ----------------------------------------------------------------------------- tokenizer
def corpus_lines():
    base = """A small cat sits on the wooden table near the window.
The orange cat looks at the camera with bright green eyes.
This image shows a cup of coffee on a white saucer.
The photo was taken indoors with soft natural light.
There is a person standing in front of a brick wall.
The background is blurred and the subject is in focus.
Describe the image in detail, including colors and shapes.
What is the color of the object in the center of the picture?
Please segment the cat in the image and answer with a mask.
The woman on the left is holding a red umbrella in the rain.
Two dogs are running across a green field under a blue sky.
A bowl of fruit with apples, bananas and oranges is on the counter.
The street is busy with cars, buses and people walking by.
He said it's a sunny day, and they'll go to the beach later.
We're going to describe what we see: trees, houses and a river.
The quick brown fox jumps over the lazy dog 3 times in 10 seconds.
Sure, it is a photo of a cat. The cat is lying on a mat.
In the picture there are 2 people, 1 bicycle and many flowers.
The image shows an animal with striped fur and long whiskers.
The cup is white, the coffee is dark brown and there is foam on top.
Answer the question using a single word or phrase.
Can you find the region that matches the description?
The man wearing a hat is sitting on a bench in the park.
Light comes from the right side of the scene and casts long shadows.
The texture of the surface is rough, like old stone or concrete.
I'm sure that the object in the corner is a small wooden chair.
You'd see mountains in the distance and a lake in the foreground.
The kitten's paws are white and its tail is curled around its body."""
    lines = base.split('\n')
    subjects = ['The cat', 'A dog', 'The person', 'A small bird', 'The woman', 'The child', 'An old man',
                'The red car', 'A white cup', 'The tall tree']
    verbs = ['is sitting on', 'is looking at', 'is next to', 'is standing near', 'is lying under',
             'is walking towards']
    objects = ['the table.', 'the window.', 'a green chair.', 'the wall.', 'the river.', 'a big house.',
               'the camera.']
    for i, s in enumerate(subjects):
        for j, v in enumerate(verbs):
            o = objects[(i * 3 + j) % len(objects)]
            lines.append(f'{s} {v} {o}')
    for n in range(40):
        lines.append(f'Image {n}: there are {n % 7 + 1} objects, {(n * 13) % 100} percent visible.\n')
    return lines


def build_tokenizer(out_dir, tokenizer_class):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, \
        processors, trainers
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior='isolated', invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    n_base = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False,
                                       single_word=False) for t in SPECIAL_TOKENS])
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, 'tokenizer.json'), pretty=False)
    added = {}
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == n_base + i, (t, tok.token_to_id(t))
        added[str(n_base + i)] = {'content': t, 'lstrip': False, 'normalized': False, 'rstrip': False,
                                  'single_word': False, 'special': True}
    cfg = {
        'add_bos_token': False,
        'add_prefix_space': False,
        'added_tokens_decoder': added,
        'additional_special_tokens': SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:],
        'bos_token': None,
        'clean_up_tokenization_spaces': False,
        'eos_token': '<|im_end|>',
        'errors': 'replace',
        'model_max_length': 2048,
        'pad_token': '<|endoftext|>',
        'split_special_tokens': False,
        'tokenizer_class': tokenizer_class,
        'unk_token': None,
    }
    with open(os.path.join(out_dir, 'tokenizer_config.json'), 'w') as f:
        json.dump(cfg, f, indent=2)
        f.write('\n')
    stm = {'additional_special_tokens': cfg['additional_special_tokens'], 'eos_token': '<|im_end|>',
           'pad_token': '<|endoftext|>'}
    with open(os.path.join(out_dir, 'special_tokens_map.json'), 'w') as f:
        json.dump(stm, f, indent=2)
        f.write('\n')
    return tok.get_vocab_size()


def load_tokenizer(tok_dir):
    from transformers import PreTrainedTokenizerFast
    t = PreTrainedTokenizerFast(tokenizer_file=os.path.join(tok_dir, 'tokenizer.json'),
                                eos_token='<|im_end|>', pad_token='<|endoftext|>')
    return t


# ----------------------------------------------------------------------------- configs / models
def vision_config_dict():
    return dict(architectures=['InternVisionModel'], model_type='intern_vit_6b', hidden_size=32,
                num_attention_heads=4, intermediate_size=64, num_hidden_layers=2, image_size=IMAGE_SIZE,
                patch_size=14, num_channels=3, qkv_bias=True, norm_type='layer_norm', layer_norm_eps=1e-6,
                hidden_act='gelu', qk_normalization=False, use_flash_attn=False, drop_path_rate=0.0,
                dropout=0.0, attention_dropout=0.0, initializer_range=0.02, initializer_factor=0.1)


def llm_config_dict(kind, vocab, tok):
    bos = tok.convert_tokens_to_ids('<|endoftext|>')
    eos = tok.convert_tokens_to_ids('<|im_end|>')
    pad = tok.convert_tokens_to_ids('<|endoftext|>')
    if kind == 'qwen2':
        return dict(architectures=['Qwen2ForCausalLM'], model_type='qwen2', vocab_size=vocab, hidden_size=64,
                    intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    hidden_act='silu', max_position_embeddings=2048, initializer_range=0.02,
                    rms_norm_eps=1e-6, use_cache=True, tie_word_embeddings=True, rope_theta=1000000.0,
                    rope_scaling=None, use_sliding_window=False, sliding_window=2048, max_window_layers=2,
                    attention_dropout=0.0, bos_token_id=bos, eos_token_id=eos, pad_token_id=None,
                    torch_dtype='bfloat16')
    return dict(architectures=['InternLM2ForCausalLM'], model_type='internlm2', vocab_size=vocab, hidden_size=64,
                intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                hidden_act='silu', max_position_embeddings=2048, initializer_range=0.02, rms_norm_eps=1e-6,
                use_cache=True, tie_word_embeddings=False, bias=False, rope_theta=1000000, rope_scaling=None,
                attn_implementation='eager', bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
                torch_dtype='bfloat16',
                auto_map={'AutoConfig': 'configuration_internlm2.InternLM2Config',
                          'AutoModel': 'modeling_internlm2.InternLM2ForCausalLM',
                          'AutoModelForCausalLM': 'modeling_internlm2.InternLM2ForCausalLM'})


def top_config_kwargs(template):
    return dict(architectures=['Sa2VAChatModel'], template=template, force_image_size=IMAGE_SIZE,
                downsample_ratio=0.5, select_layer=-1, ps_version='v2', dynamic_image_size=True,
                use_thumbnail=True, min_dynamic_patch=1, max_dynamic_patch=12, pad2square=False,
                use_backbone_lora=0, use_llm_lora=0)


def config_json(refs, kind, template, vocab, tok):
    """config.json as a real Sa2VA repo has it: Sa2VAChatConfig fields + the sub-config dicts."""
    vc = vision_config_dict()
    lc = llm_config_dict(kind, vocab, tok)
    out = {'_name_or_path': f'perceptio/tiny-{kind}-sa2va', 'architectures': ['Sa2VAChatModel'],
           'auto_map': {'AutoConfig': 'configuration_sa2va_chat.Sa2VAChatConfig',
                        'AutoModel': 'modeling_sa2va_chat.Sa2VAChatModel',
                        'AutoModelForCausalLM': 'modeling_sa2va_chat.Sa2VAChatModel'}}
    kw = top_config_kwargs(template)
    kw.pop('architectures')
    out.update(kw)
    out.update({'hidden_size': lc['hidden_size'], 'llm_config': lc, 'vision_config': vc,
                'model_type': 'sa2va_chat', 'tie_word_embeddings': False, 'torch_dtype': 'bfloat16',
                'transformers_version': '4.42.3'})
    # the reference config class must accept it
    cfg = refs.sv_config.Sa2VAChatConfig(**copy.deepcopy({k: v for k, v in out.items() if k != 'model_type'}))
    assert cfg.template == template and cfg.ps_version == 'v2' and cfg.llm_config.vocab_size == vocab
    return dict(sorted(out.items()))


def build_model(refs, cfg_json):
    import torch
    kw = copy.deepcopy({k: v for k, v in cfg_json.items() if k != 'model_type'})
    config = refs.sv_config.Sa2VAChatConfig(**kw)
    config.llm_config._attn_implementation = 'eager'
    config.vision_config.use_flash_attn = False
    if config.llm_config.model_type == 'internlm2':
        # transformers 5 turns `rope_scaling` into a property returning the standardised
        # `rope_parameters` ({'rope_theta': .., 'rope_type': 'default'}), so the original
        # `if self.config.rope_scaling is None` test fails and `rope_scaling['type']` raises KeyError.
        # Clearing it restores what rope_scaling=None meant (plain RoPE with base=config.rope_theta).
        config.llm_config.rope_parameters = None
        assert config.llm_config.rope_scaling is None and config.llm_config.rope_theta == 1000000
    torch.manual_seed(SEED)
    model = refs.sv_chat.Sa2VAChatModel(config, use_flash_attn=False)
    model.eval()
    model.float()
    if config.llm_config.model_type == 'internlm2':
        for layer in model.language_model.model.layers:
            re = layer.attention.rotary_emb
            assert type(re).__name__ == 'InternLM2RotaryEmbedding' and re.base == 1000000
    return model, config


def reinit_(model, seed):
    """Every parameter gets seeded random values (nothing zero / identity), rounded to bf16."""
    import torch
    import torch.nn as nn
    g = torch.Generator().manual_seed(seed)

    def normal(shape, mean, std):
        return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean

    seen = set()
    report = {}
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            full = f'{mname}.{pname}' if mname else pname
            cls = type(mod).__name__
            if isinstance(mod, nn.LayerNorm) or 'RMSNorm' in cls:
                v = normal(p.shape, 1.0, INIT['norm_weight_std']) if pname == 'weight' else \
                    normal(p.shape, 0.0, INIT['norm_bias_std'])
                rule = 'norm'
            elif pname in ('ls1', 'ls2'):
                v, rule = normal(p.shape, INIT['layer_scale_mean'], INIT['layer_scale_std']), 'layer_scale'
            elif pname in ('class_embedding', 'position_embedding'):
                v, rule = normal(p.shape, 0.0, INIT['vit_embedding_std']), 'vit_embedding'
            elif isinstance(mod, nn.Embedding):
                v, rule = normal(p.shape, 0.0, INIT['tok_embedding_std']), 'tok_embedding'
            elif isinstance(mod, (nn.Linear, nn.Conv2d)) and pname == 'weight':
                fan_in = p[0].numel()
                if full.endswith('language_model.output.weight') or full.endswith('lm_head.weight'):
                    v, rule = normal(p.shape, 0.0, INIT['lm_head_std']), 'lm_head'
                else:
                    gain = INIT['vit_linear_gain'] if full.startswith(('vision_model.', 'mlp1.')) else INIT['llm_linear_gain']
                    v, rule = normal(p.shape, 0.0, gain / math.sqrt(fan_in)), 'linear'
            elif isinstance(mod, (nn.Linear, nn.Conv2d)) and pname == 'bias':
                v, rule = normal(p.shape, 0.0, INIT['bias_std']), 'bias'
            elif pname == 'no_mem_embed':
                v, rule = normal(p.shape, 0.0, INIT['other_std']), 'other'
            else:
                raise RuntimeError(f'no init rule for {full} ({cls})')
            with torch.no_grad():
                p.copy_(v.to(torch.bfloat16).to(torch.float32))
            report[rule] = report.get(rule, 0) + p.numel()
    return report


def checkpoint_state_dict(model, kind):
    import torch
    sd = model.state_dict()
    if kind == 'qwen2':
        lm = model.language_model
        assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr(), 'lm_head not tied'
        sd.pop('language_model.lm_head.weight')
    out = {k: v.detach().to(torch.bfloat16).contiguous().clone() for k, v in sd.items()}
    for k, v in sd.items():   # the bf16 copy must be lossless (weights were rounded at init)
        assert torch.equal(out[k].float(), v.float()), k
    return out


# ----------------------------------------------------------------------------- inputs
def preprocess(refs, image):
    """InternVL train/dataset.py dynamic_preprocess + build_transform (== Sa2VA predict_forward)."""
    import torch
    ds = refs.iv_dataset
    tiles = ds.dynamic_preprocess(image, min_num=MIN_NUM, max_num=MAX_NUM, image_size=IMAGE_SIZE,
                                  use_thumbnail=True)
    tf = ds.build_transform(is_train=False, input_size=IMAGE_SIZE, pad2square=False, normalize_type='imagenet')
    pv = torch.stack([tf(t) for t in tiles])
    # Sa2VA's copy of dynamic_preprocess + its self.transformer must agree bit for bit
    import torchvision.transforms as T
    from torchvision.transforms.functional import InterpolationMode
    sv_tiles = refs.sv_chat.dynamic_preprocess(image, MIN_NUM, MAX_NUM, IMAGE_SIZE, True)
    sv_tf = T.Compose([T.Lambda(lambda img: img.convert('RGB') if img.mode != 'RGB' else img),
                       T.Resize((IMAGE_SIZE, IMAGE_SIZE), interpolation=InterpolationMode.BICUBIC),
                       T.ToTensor(), T.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))])
    assert torch.equal(pv, torch.stack([sv_tf(t) for t in sv_tiles]))
    # grid = the aspect ratio dynamic_preprocess picked
    w, h = image.size
    ratios = sorted({(i, j) for n in range(MIN_NUM, MAX_NUM + 1) for i in range(1, n + 1)
                     for j in range(1, n + 1) if MIN_NUM <= i * j <= MAX_NUM}, key=lambda x: x[0] * x[1])
    grid = ds.find_closest_aspect_ratio(w / h, ratios, w, h, IMAGE_SIZE)
    n_expected = grid[0] * grid[1] + (1 if grid[0] * grid[1] != 1 else 0)
    assert pv.shape[0] == n_expected
    return pv, list(grid)


def build_prompt(template, question, n_tiles, num_image_token):
    """Sa2VAChatModel.predict_forward, single image, no mask prompts, no past_text."""
    IMG_START_TOKEN, IMG_CONTEXT_TOKEN, IMG_END_TOKEN = '<img>', '<IMG_CONTEXT>', '</img>'
    num_image_tokens = n_tiles * num_image_token
    num_frames = 1
    image_token_str = f'{IMG_START_TOKEN}{IMG_CONTEXT_TOKEN * num_image_tokens}{IMG_END_TOKEN}'
    image_token_str = image_token_str + '\n'
    image_token_str = image_token_str * num_frames
    image_token_str = image_token_str.strip()
    vp_token_str = ''
    text = '<image>\n' + question
    text = text.replace('<image>', image_token_str + vp_token_str)
    return template['INSTRUCTION'].format(input=text, round=1, bot_name='BOT')


# ----------------------------------------------------------------------------- reference runs
def lm_forward(lm, kind, *, inputs_embeds=None, input_ids=None, cache=None):
    """One call of the LLM with KV cache; returns logits [T,V], hidden_states[-1] [T,C], pre-norm [T,C], cache."""
    import torch
    if kind == 'qwen2':
        out = lm(inputs_embeds=inputs_embeds, input_ids=input_ids, cache=cache, use_cache=True,
                 output_hidden_states=True, return_dict=True)
        return out.logits[0], out.hidden_states[-1][0], out.cache
    # The original InternLM2 code builds `CausalLMOutputWithPast(past_key_values=...)`; use the tuple
    # path (return_dict=False) so nothing depends on transformers 5's output-class BC shims.
    out = lm(inputs_embeds=inputs_embeds, input_ids=input_ids, past_key_values=cache, use_cache=True,
             output_hidden_states=True, return_dict=False)
    logits, new_cache, hidden_states = out
    assert isinstance(new_cache, tuple) and len(hidden_states) == lm.config.num_hidden_layers + 1
    return logits[0], hidden_states[-1][0], new_cache


def run_golden(refs, model, kind, tok, pv):
    import torch
    m = model
    with torch.no_grad():
        vit_hidden = m.vision_model(pixel_values=pv, output_hidden_states=False, return_dict=True).last_hidden_state
        vit_embeds = m.extract_feature(pv)
        # cross-check: InternVL's own extract_feature/pixel_shuffle on the same modules
        shim = types.SimpleNamespace(vision_model=m.vision_model, mlp1=m.mlp1, select_layer=m.select_layer,
                                     ps_version=m.ps_version, downsample_ratio=m.downsample_ratio)
        shim.pixel_shuffle = functools.partial(refs.iv_chat.InternVLChatModel.pixel_shuffle, shim)
        assert torch.equal(refs.iv_chat.InternVLChatModel.extract_feature(shim, pv), vit_embeds)

        prompt = build_prompt(m.template, QUESTION, pv.shape[0], m.num_image_token)
        ids = torch.tensor(tok.encode(prompt), dtype=torch.long)
        img_ctx = tok.convert_tokens_to_ids('<IMG_CONTEXT>')
        assert int((ids == img_ctx).sum()) == pv.shape[0] * m.num_image_token
        # inputs_embeds exactly as Sa2VAChatModel.generate builds them
        emb = m.language_model.get_input_embeddings()(ids[None]).reshape(-1, vit_embeds.shape[-1]).clone()
        emb[ids == img_ctx] = vit_embeds.reshape(-1, vit_embeds.shape[-1])
        emb = emb[None]

        lm = m.language_model
        logits, hid, cache = lm_forward(lm, kind, inputs_embeds=emb)
        prefill_logits_last4 = logits[-4:].clone()
        prefill_hidden_last4 = hid[-4:].clone()
        # step i (like generate()'s output.logits[i] / output.hidden_states[i][-1][:, -1]): the last
        # position of that step's input -> its logits chose generated_ids[i]
        step_logits, gen, gen_hidden = [], [], []
        cur, cur_h = logits[-1], hid[-1]
        for i in range(N_NEW):
            nxt = int(torch.argmax(cur))
            step_logits.append(cur.clone())
            gen_hidden.append(cur_h.clone())
            gen.append(nxt)
            if i + 1 == N_NEW:
                break
            # feed the chosen token (generate() switches from inputs_embeds to input_ids after step 0)
            logits, hid, cache = lm_forward(lm, kind, input_ids=torch.tensor([[nxt]]), cache=cache)
            cur, cur_h = logits[-1], hid[-1]

        # independent check: one full forward (no cache) over prompt + generated tokens
        full = torch.cat([emb[0], lm.get_input_embeddings()(torch.tensor(gen))], 0)[None]
        fl, fh, _ = lm_forward(lm, kind, inputs_embeds=full)
        L = ids.shape[0]
        cache_vs_full = {
            'logits': float((fl[L - 1:L - 1 + N_NEW] - torch.stack(step_logits)).abs().max()),
            'hidden': float((fh[L - 1:L - 1 + N_NEW] - torch.stack(gen_hidden)).abs().max()),
        }
        # the hidden states are the ones the head reads (post final norm)
        head = lm.get_output_embeddings()
        assert float((head(torch.stack(gen_hidden)) - torch.stack(step_logits)).abs().max()) < 1e-4
    return dict(
        pixel_values=pv.contiguous(), vit_hidden=vit_hidden.contiguous(), vit_embeds=vit_embeds.contiguous(),
        input_ids=ids, prefill_logits_last4=prefill_logits_last4,
        prefill_hidden_last4=prefill_hidden_last4,
        generated_ids=torch.tensor(gen, dtype=torch.long), step_logits=torch.stack(step_logits),
        generated_hidden=torch.stack(gen_hidden),
    ), prompt, emb, cache_vs_full


def check_hidden_is_post_norm(model, kind, emb):
    """Is transformers' output_hidden_states[-1] the final-RMSNorm output?  Returns True/False."""
    import torch
    lm = model.language_model
    captured = {}
    h = lm.model.norm.register_forward_hook(lambda mod, inp, out: captured.update(pre=inp[0], post=out))
    with torch.no_grad():
        _, hid, _ = lm_forward(lm, kind, inputs_embeds=emb)
    h.remove()
    post = torch.equal(hid, captured['post'][0])
    pre = torch.equal(hid, captured['pre'][0])
    assert post != pre
    return post


def crosscheck_internlm2(refs, model, emb, golden):
    """InternVL's copy of modeling_internlm2 must give the same numbers as Sa2VA's."""
    import torch
    lm = model.language_model
    other = refs.iv_internlm2.InternLM2ForCausalLM(lm.config)
    other.load_state_dict(lm.state_dict())
    other.eval().float()
    with torch.no_grad():
        logits, _, _ = lm_forward(other, 'internlm2', inputs_embeds=emb)
    return float((logits[-4:] - golden['prefill_logits_last4']).abs().max())


def crosscheck_generate(model, tok, golden, kind):
    """Sa2VAChatModel.generate (the predict_forward path), greedy, eos disabled -> same tokens/logits."""
    import torch
    from transformers import GenerationConfig
    m = model
    m.img_context_token_id = tok.convert_tokens_to_ids('<IMG_CONTEXT>')
    if not hasattr(m.language_model, 'generation_config'):   # Sa2VAChatModel never calls post_init()
        m.language_model.generation_config = GenerationConfig()
    ids = golden['input_ids'][None]
    gc = GenerationConfig(max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False, eos_token_id=None,
                          pad_token_id=tok.pad_token_id)
    out = m.generate(pixel_values=golden['pixel_values'], input_ids=ids,
                     attention_mask=torch.ones_like(ids, dtype=torch.bool), generation_config=gc,
                     output_hidden_states=True, return_dict_in_generate=True, output_logits=True)
    seq = out.sequences[0][-N_NEW:]
    same_ids = torch.equal(seq, golden['generated_ids'])
    lg = torch.stack([x[0] for x in out.logits])
    hs = torch.stack([step[-1][0, -1] for step in out.hidden_states])
    return same_ids, float((lg - golden['step_logits']).abs().max()), \
        float((hs - golden['generated_hidden']).abs().max())


def verify_layouts(model, kind):
    """Executable statements of the layouts the README documents (fails loudly if they are wrong)."""
    import torch
    import torch.nn.functional as F
    m = model
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # ViT position embedding: _get_pos_embed's bicubic resize 4x4 -> 4x4 is an exact identity
        emb = m.vision_model.embeddings
        pos = emb.position_embedding[:, 1:, :]
        assert torch.equal(emb._get_pos_embed(pos, 4, 4), pos)
        # ViT qkv rows: [q heads 0..H-1 | k heads | v heads], each head head_dim contiguous rows
        # pixel shuffle v2 (+ reshape in extract_feature): out[n, r2*2+c2, a*2C + b*C + ch]
        #   = x[n, 2*r2 + a, 2*c2 + b, ch]  with x = patch tokens as [n, 4 rows, 4 cols, C]
        x = torch.randn(2, 4, 4, 8, generator=g)
        y = m.pixel_shuffle(x, scale_factor=0.5).reshape(2, -1, 32)
        C = 8
        for r2 in range(2):
            for c2 in range(2):
                for a in range(2):
                    for b in range(2):
                        assert torch.equal(y[:, r2 * 2 + c2, a * 2 * C + b * C:a * 2 * C + (b + 1) * C],
                                           x[:, 2 * r2 + a, 2 * c2 + b, :])
        if kind != 'internlm2':
            return
        # InternLM2 wqkv: rows grouped per KV head g: [q_(g*G+0) .. q_(g*G+G-1), k_g, v_g], head_dim rows each
        att = m.language_model.model.layers[0].attention
        H, KV, D = att.num_heads, att.num_key_value_heads, att.head_dim
        G = H // KV
        T = 5
        hs = torch.randn(1, T, H * D, generator=g)
        W = att.wqkv.weight.view(KV, G + 2, D, H * D)
        q = torch.einsum('td,kgjd->tkgj', hs[0], W[:, :G]).reshape(T, H, D)       # head = g*G + j
        k = torch.einsum('td,kjd->tkj', hs[0], W[:, G])                             # [T, KV, D]
        v = torch.einsum('td,kjd->tkj', hs[0], W[:, G + 1])
        pos_ids = torch.arange(T)
        inv = 1.0 / (att.rotary_emb.base ** (torch.arange(0, D, 2).float() / D))
        fr = torch.outer(pos_ids.float(), inv)
        cos, sin = torch.cat([fr, fr], -1).cos(), torch.cat([fr, fr], -1).sin()

        def rope(t):   # non-interleaved: rotate_half on the two halves of each head
            t1, t2 = t[..., :D // 2], t[..., D // 2:]
            return t * cos[:, None] + torch.cat([-t2, t1], -1) * sin[:, None]
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(G, dim=1)
        v = v.repeat_interleave(G, dim=1)
        sc = torch.einsum('thd,shd->hts', q, k) / math.sqrt(D)
        sc = sc + torch.full((T, T), float('-inf')).triu(1)
        o = torch.einsum('hts,shd->thd', F.softmax(sc, -1), v).reshape(T, H * D)
        ref = att.wo(o)
        mask = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)[None, None]
        out = att(hs, attention_mask=mask, position_ids=pos_ids[None])[0][0]
        assert (out - ref).abs().max() < 1e-5, (out - ref).abs().max()


def verify_reload(refs, out_dir, kind, golden, img_ctx):
    """Fresh model from the written config.json + model.safetensors reproduces the golden numbers."""
    import torch
    from safetensors.torch import load_file
    with open(os.path.join(out_dir, 'config.json')) as f:
        cfg = json.load(f)
    model, _ = build_model(refs, cfg)
    sd = {k: v.float() for k, v in load_file(os.path.join(out_dir, 'model.safetensors')).items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    if kind == 'qwen2':   # tied: lm_head is the embedding
        assert missing == ['language_model.lm_head.weight'], missing
        lm = model.language_model
        assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    else:
        assert not missing, missing
    with torch.no_grad():
        assert torch.equal(model.extract_feature(golden['pixel_values']), golden['vit_embeds'])
        ids = golden['input_ids']
        emb = model.language_model.get_input_embeddings()(ids)
        emb[ids == img_ctx] = golden['vit_embeds'].reshape(-1, emb.shape[-1])
        logits, _, _ = lm_forward(model.language_model, kind, inputs_embeds=emb[None])
        assert torch.equal(logits[-4:], golden['prefill_logits_last4'])


def verify_tokenizer_dir(tok_dir, tok, prompt):
    from transformers import AutoTokenizer
    at = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=False)
    for text in (prompt, prompt + " Hello w\u00f6rld 123  \n\n it's  \u00c5\u03a9\t<|im_end|>x[SEG]</p>"):
        assert at.encode(text) == tok.encode(text), text
    assert at.eos_token == '<|im_end|>' and at.pad_token == '<|endoftext|>' and at.bos_token is None
    return type(at).__name__


# ----------------------------------------------------------------------------- main
def load_images(images_dir):
    from PIL import Image
    imgs = {}
    for name, candidates in IMAGES.items():
        found = [os.path.join(images_dir, c) for c in candidates if os.path.exists(os.path.join(images_dir, c))]
        if not found:
            sys.exit(f'missing {" or ".join(os.path.join(images_dir, c) for c in candidates)}')
        p = found[0]
        imgs[name] = Image.open(p).convert('RGB')
        with open(p, 'rb') as f:
            imgs[name].info['sha256'] = hashlib.sha256(f.read()).hexdigest()
        rel = os.path.relpath(os.path.abspath(p), REPO)
        imgs[name].info['path'] = rel if not rel.startswith('..') else os.path.abspath(p)
    return imgs


def compare_dirs(a, b):
    import torch
    from safetensors.torch import load_file
    worst = {}
    for root, _, files in os.walk(a):
        for fn in sorted(files):
            pa = os.path.join(root, fn)
            pb = os.path.join(b, os.path.relpath(pa, a))
            if not os.path.exists(pb):
                print(f'  only in {a}: {os.path.relpath(pa, a)}')
                continue
            if fn.endswith('.safetensors'):
                ta, tb = load_file(pa), load_file(pb)
                assert ta.keys() == tb.keys(), pa
                for k in ta:
                    d = float((ta[k].double() - tb[k].double()).abs().max()) if ta[k].numel() else 0.0
                    worst[k] = max(worst.get(k, 0.0), d)
            else:
                same = open(pa, 'rb').read() == open(pb, 'rb').read()
                if not same:
                    print(f'  differs: {os.path.relpath(pa, a)}')
    for k, d in sorted(worst.items()):
        if d:
            print(f'  max|diff| {k}: {d:.3g}')
    print(f'  compared; max over all tensors: {max(worst.values()) if worst else 0.0:.3g}')


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('refsrc', nargs='?', default='/tmp/refsrc',
                    help='directory holding InternVL/ and Sa2VA/ checkouts (default /tmp/refsrc)')
    ap.add_argument('--images', default=os.path.join(REPO, 'fixtures/images'))
    ap.add_argument('--out', default=os.path.join(REPO, 'fixtures/internvl'))
    ap.add_argument('--compare-with', default=None, help='after writing, report max |diff| against this dir')
    args = ap.parse_args()

    import warnings
    import torch
    import transformers
    from safetensors.torch import save_file
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings('ignore', category=FutureWarning)
    warnings.filterwarnings('ignore', category=UserWarning)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    refs = load_references(args.refsrc)
    imgs = load_images(args.images)
    gold_dir = os.path.join(args.out, 'goldens')
    os.makedirs(gold_dir, exist_ok=True)

    for kind, template_name in [('qwen2', 'qwen_chat'), ('internlm2', 'internlm2_chat')]:
        name = f'tiny-{kind}'
        d = os.path.join(args.out, name)
        # tiny-qwen2 says Qwen2Tokenizer like a real Qwen repo (transformers rebuilds the same Qwen2
        # pipeline around tokenizer.json); tiny-internlm2 (real ones use sentencepiece) stays generic
        vocab = build_tokenizer(d, 'Qwen2Tokenizer' if kind == 'qwen2' else 'PreTrainedTokenizerFast')
        tok = load_tokenizer(d)
        assert len(tok) == vocab
        cfg = config_json(refs, kind, template_name, vocab, tok)
        model, config = build_model(refs, cfg)
        assert model.template is refs.sv_templates.PROMPT_TEMPLATE[template_name] or \
            model.template == refs.sv_templates.PROMPT_TEMPLATE[template_name]
        init_report = reinit_(model, SEED + (0 if kind == 'qwen2' else 1))
        if kind == 'qwen2':   # RoPE base actually in use
            inv = model.language_model.model.rotary_emb.inv_freq
            assert abs(float(inv[1]) / 1e6 ** (-2 / 16) - 1) < 1e-6, inv
        sd = checkpoint_state_dict(model, kind)
        save_file(sd, os.path.join(d, 'model.safetensors'), metadata={'format': 'pt'})
        with open(os.path.join(d, 'config.json'), 'w') as f:
            json.dump(cfg, f, indent=2)
            f.write('\n')
        print(f'{name}: {sum(v.numel() for v in sd.values())} params, init {init_report}')
        verify_layouts(model, kind)

        for img_name in IMAGES:
            pv, grid = preprocess(refs, imgs[img_name])
            golden, prompt, emb, cvf = run_golden(refs, model, kind, tok, pv)
            post = check_hidden_is_post_norm(model, kind, emb)
            verify_reload(refs, d, kind, golden, tok.convert_tokens_to_ids('<IMG_CONTEXT>'))
            tok_class = verify_tokenizer_dir(d, tok, prompt)
            extra = {}
            if kind == 'internlm2':
                extra['internvl_internlm2_vs_sa2va_max_abs_diff'] = crosscheck_internlm2(refs, model, emb, golden)
            try:
                same, dlog, dhid = crosscheck_generate(model, tok, golden, kind)
                extra['sa2va_generate_same_ids'] = same
                extra['sa2va_generate_logits_max_abs_diff'] = dlog
                extra['sa2va_generate_hidden_max_abs_diff'] = dhid
            except Exception as e:   # noqa: BLE001 - record, do not hide
                extra['sa2va_generate_error'] = f'{type(e).__name__}: {e}'[:300]
            gen = golden['generated_ids'].tolist()
            n_distinct = len(set(gen))
            assert n_distinct >= MIN_DISTINCT, f'degenerate greedy output {gen}'
            assert len(set(golden['prefill_logits_last4'].argmax(-1).tolist())) >= 2
            base = os.path.join(gold_dir, f'{name}_{img_name}')
            save_file({k: v.contiguous() for k, v in golden.items()}, base + '.safetensors',
                      metadata={'format': 'pt'})
            side = {
                'model': name, 'image': imgs[img_name].info['path'],
                'image_sha256': imgs[img_name].info['sha256'], 'image_size_wh': list(imgs[img_name].size),
                'template': template_name, 'question': QUESTION, 'prompt': prompt,
                'max_num': MAX_NUM, 'min_num': MIN_NUM, 'use_thumbnail': True, 'tile_size': IMAGE_SIZE,
                'grid': grid, 'n_tiles': int(pv.shape[0]), 'num_image_token': int(model.num_image_token),
                'prompt_len': int(golden['input_ids'].shape[0]),
                'prompt_tokens': tok.convert_ids_to_tokens(golden['input_ids'].tolist()),
                'generated_ids': gen,
                'generated_tokens': tok.convert_ids_to_tokens(gen),
                'generated_text': tok.decode(gen, skip_special_tokens=False),
                'n_distinct_generated': n_distinct,
                'min_top1_top2_logit_gap': {
                    'step_logits': float(torch.diff(-golden['step_logits'].topk(2, -1).values, dim=-1).min()),
                    'prefill_logits_last4': float(
                        torch.diff(-golden['prefill_logits_last4'].topk(2, -1).values, dim=-1).min())},
                'decoding': 'greedy argmax, manual loop with the KV cache, exactly 40 tokens, no EOS stop',
                'step_logits': 'row i = logits that chose generated_ids[i] (row 0 = last prompt position)',
                'generated_hidden': ('row i = hidden_states[-1] of generation step i at its last position, '
                                     'i.e. the hidden state whose logits are step_logits[i] (= generate()\'s '
                                     'output.hidden_states[i][-1][0, -1]): row 0 = last prompt position, row i>0 = '
                                     'position of generated_ids[i-1]. Sa2VA\'s [SEG] hidden for generated_ids[j] '
                                     '(get_seg_hidden_states) is row j+1.'),
                'prefill_hidden_last4': 'hidden_states[-1] of the last 4 prompt positions',
                'hidden_states_last_is_post_final_norm': post,
                'autotokenizer_class': tok_class,
                'reference_sources_sha256_16': refs.sha256,
                'cache_vs_full_forward_max_abs_diff': cvf,
                **extra,
            }
            with open(base + '.json', 'w') as f:
                json.dump(side, f, indent=1)
                f.write('\n')
            print(f'  {img_name}: grid {grid} n_tiles {pv.shape[0]} L {golden["input_ids"].shape[0]} '
                  f'distinct {n_distinct} post_norm {post} cache/full {cvf} {extra}')
            print('   ', tok.decode(gen, skip_special_tokens=False)[:200].replace('\n', '\\n'))

    if args.compare_with:
        print(f'compare {args.out} vs {args.compare_with}')
        compare_dirs(args.out, args.compare_with)


if __name__ == '__main__':
    main()
