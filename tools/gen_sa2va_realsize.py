#!/usr/bin/env python3
"""A random-weight checkpoint with Sa2VA-1B's exact shapes, key layout, config and tokenizer.

    python3 tools/gen_sa2va_realsize.py --out /tmp/sa2va-1b-realsize            # bf16, ~2.1 GB
    python3 tools/gen_sa2va_realsize.py --out DIR --dtype f32                    # ~4.1 GB, the real file's size
    python3 tools/gen_sa2va_realsize.py --check-layout                           # compare with the tiny fixtures, write nothing
    /work/venv-torch/bin/python tools/gen_sa2va_realsize.py --dump-sam2-spec     # regenerate the SAM2 key list (needs Meta's sam2)

What it writes into --out (atomically: a temp dir renamed at the end, and a `.complete` marker that
names the settings, so a rerun with the same settings is a no-op unless --force):

  model.safetensors        one file, like the released Sa2VA-1B (4.05 GB there, f32, tied embeddings):
                           vision_model.*            InternViT-300M-448px-V2_5 (24 layers, 1024 wide, fused qkv
                                                     with bias, layer scale ls1/ls2, LayerNorm; no final norm)
                           mlp1.{0,1,3}.*            LayerNorm(4096) -> Linear(4096, 896) -> GELU -> Linear(896, 896)
                           language_model.model.*    Qwen2.5-0.5B (24 layers, 896 wide, 14/2 heads, 4864 MLP,
                                                     qkv bias), vocab 151679 = Qwen2.5's 151643 + 22 + InternVL's 9 +
                                                     Sa2VA's 5 added tokens; tied lm_head (no lm_head tensor)
                           text_hidden_fcs.{0,2}.*   Linear(896, 896) -> ReLU -> Linear(896, 256)
                           grounding_encoder.sam2_model.*   SAM2 (not 2.1) hiera-L with memory modules, exactly the
                                                     900 tensors of Meta's `configs/sam2/sam2_hiera_l.yaml` model
                                                     (tools/sa2va1b_sam2_hiera_l_keys.json), `.gamma` renamed
                                                     `.g_weight` as Sa2VA's convert_to_hf does
  config.json              `sa2va_chat` / `qwen_chat`, as Sa2VA's conversion writes it (no `sam2` block: perceptio
                           must infer hiera-L from the shapes, as it does for the released checkpoint)
  tokenizer.json           the real Qwen2.5 BPE (fixtures/tokenizer/qwen.tiktoken.gz, converted as transformers'
                           TikTokenConverter does, NFC normaliser) + 22 Qwen2.5 specials (151643..151664) +
                           <img> </img> <IMG_CONTEXT> <quad> </quad> <ref> </ref> <box> </box> (151665..151673) +
                           [SEG] <p> </p> <vp> </vp> (151674..151678); checked against the committed goldens
  tokenizer_config.json, special_tokens_map.json, added_tokens.json, generation_config.json

Weights: biases 0, 1-D norm weights 1, layer scale 0.1, everything else N(0, 0.02) (SAM2's prompt-encoder
Gaussian matrix N(0, 1)); one torch.Generator per tensor seeded from --seed and the tensor's name, so
the values do not depend on the tensor order (CUDA and CPU generators give different streams, so --device
is part of the marker). Generated on the GPU when one is visible (--device auto), written
tensor by tensor (peak memory ~ the largest tensor, the 151679x896 embedding), so it needs < 2 GB RAM.

Needs torch (CPU is fine) and the `tokenizers` package; no transformers, no sam2, no safetensors package.
"""
import argparse
import base64
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SAM2_SPEC = os.path.join(HERE, "sa2va1b_sam2_hiera_l_keys.json")
RANKS = os.path.join(ROOT, "fixtures", "tokenizer", "qwen.tiktoken.gz")
TOKENIZER_GOLDENS = os.path.join(ROOT, "fixtures", "tokenizer", "qwen25_internvl.json")
FORMAT_VERSION = 1  # bump when the output changes (invalidates .complete markers)

# ----------------------------------------------------------------------------------------------
# Sa2VA-1B geometry (InternVL2.5-1B = InternViT-300M-448px-V2_5 + Qwen2.5-0.5B-Instruct; SAM2 hiera-L)
# ----------------------------------------------------------------------------------------------
VIT = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
           image_size=448, patch_size=14)
LLM = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
           intermediate_size=4864)
SAM2_D_MODEL = 256

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                 "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
INTERNVL_SPECIALS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
# Sa2VA's config: special_tokens = ['[SEG]', '<p>', '</p>', '<vp>', '</vp>'], added after InternVL's
# (tokenizer.add_tokens(..., special_tokens=True), then resize_token_embeddings(len(tokenizer))).
SA2VA_SPECIALS = ["[SEG]", "<p>", "</p>", "<vp>", "</vp>"]
BASE_VOCAB = 151643
VOCAB = BASE_VOCAB + len(QWEN_SPECIALS) + len(INTERNVL_SPECIALS) + len(SA2VA_SPECIALS)  # 151679
PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def internvl_tensors():
    """(name, shape) of vision_model.*, mlp1.*, language_model.*, text_hidden_fcs.* in Sa2VA's layout."""
    D, F, L = VIT["hidden_size"], VIT["intermediate_size"], VIT["num_hidden_layers"]
    P = VIT["patch_size"]
    n_pos = (VIT["image_size"] // P) ** 2 + 1
    out = [("vision_model.embeddings.class_embedding", [1, 1, D]),
           ("vision_model.embeddings.patch_embedding.weight", [D, 3, P, P]),
           ("vision_model.embeddings.patch_embedding.bias", [D]),
           ("vision_model.embeddings.position_embedding", [1, n_pos, D])]
    for i in range(L):
        p = f"vision_model.encoder.layers.{i}."
        out += [(p + "ls1", [D]), (p + "ls2", [D]),
                (p + "attn.qkv.weight", [3 * D, D]), (p + "attn.qkv.bias", [3 * D]),
                (p + "attn.proj.weight", [D, D]), (p + "attn.proj.bias", [D]),
                (p + "mlp.fc1.weight", [F, D]), (p + "mlp.fc1.bias", [F]),
                (p + "mlp.fc2.weight", [D, F]), (p + "mlp.fc2.bias", [D]),
                (p + "norm1.weight", [D]), (p + "norm1.bias", [D]),
                (p + "norm2.weight", [D]), (p + "norm2.bias", [D])]
    H = LLM["hidden_size"]
    C4 = D * 4  # pixel shuffle 0.5: 4x the channels
    out += [("mlp1.0.weight", [C4]), ("mlp1.0.bias", [C4]), ("mlp1.1.weight", [H, C4]), ("mlp1.1.bias", [H]),
            ("mlp1.3.weight", [H, H]), ("mlp1.3.bias", [H])]
    hd = H // LLM["num_attention_heads"]
    kv = LLM["num_key_value_heads"] * hd
    I = LLM["intermediate_size"]
    out.append(("language_model.model.embed_tokens.weight", [VOCAB, H]))
    for i in range(LLM["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        out += [(p + "input_layernorm.weight", [H]), (p + "post_attention_layernorm.weight", [H]),
                (p + "self_attn.q_proj.weight", [H, H]), (p + "self_attn.q_proj.bias", [H]),
                (p + "self_attn.k_proj.weight", [kv, H]), (p + "self_attn.k_proj.bias", [kv]),
                (p + "self_attn.v_proj.weight", [kv, H]), (p + "self_attn.v_proj.bias", [kv]),
                (p + "self_attn.o_proj.weight", [H, H]),
                (p + "mlp.gate_proj.weight", [I, H]), (p + "mlp.up_proj.weight", [I, H]),
                (p + "mlp.down_proj.weight", [H, I])]
    out.append(("language_model.model.norm.weight", [H]))
    out += [("text_hidden_fcs.0.weight", [H, H]), ("text_hidden_fcs.0.bias", [H]),
            ("text_hidden_fcs.2.weight", [SAM2_D_MODEL, H]), ("text_hidden_fcs.2.bias", [SAM2_D_MODEL])]
    return out


def sam2_tensors():
    with open(SAM2_SPEC) as f:
        spec = json.load(f)
    return [("grounding_encoder.sam2_model." + k, s) for k, s in spec["tensors"]]


def all_tensors():
    t = internvl_tensors() + sam2_tensors()
    names = [n for n, _ in t]
    assert len(set(names)) == len(names), "duplicate tensor names"
    return sorted(t)


def init_of(name, shape):
    """('zeros'|'ones'|'const'|'normal', value)."""
    if name.endswith(".bias"):
        return ("zeros", 0.0)
    if re.search(r"\.ls[12]$", name) or name.endswith(".g_weight"):
        return ("const", 0.1)
    if len(shape) == 1 and name.endswith(".weight"):  # LayerNorm / RMSNorm / LayerNorm2d weights
        return ("ones", 1.0)
    if name.endswith("positional_encoding_gaussian_matrix"):
        return ("normal", 1.0)
    return ("normal", 0.02)


# ----------------------------------------------------------------------------------------------
# safetensors, written tensor by tensor
# ----------------------------------------------------------------------------------------------
ST_DTYPES = {"bf16": ("BF16", 2), "f32": ("F32", 4), "f16": ("F16", 2)}


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def safetensors_header(tensors, dtype):
    """tensors: [(name, shape)] in file order; returns (header bytes incl. the 8-byte length, data bytes)."""
    code, size = ST_DTYPES[dtype]
    h = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape in tensors:
        n = numel(shape) * size
        h[name] = {"dtype": code, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(h, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)  # data 8-byte aligned, as the safetensors writer pads
    return len(raw).to_bytes(8, "little") + raw, off


def write_weights(path, dtype, seed, device, tensors=None):
    import torch
    tensors = tensors or all_tensors()
    header, total = safetensors_header(tensors, dtype)
    tdt = {"bf16": torch.bfloat16, "f32": torch.float32, "f16": torch.float16}[dtype]
    dev = torch.device(device)
    t0 = time.perf_counter()
    written = 0
    with open(path, "wb", buffering=0) as f:
        f.write(header)
        for i, (name, shape) in enumerate(tensors):
            kind, v = init_of(name, shape)
            n = numel(shape)
            if kind == "normal":
                g = torch.Generator(device=dev).manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63))
                gen_dt = tdt if dev.type == "cuda" else torch.float32  # CPU: f32 normal_ then cast is faster
                x = torch.empty(n, dtype=gen_dt, device=dev).normal_(0.0, v, generator=g)
            else:
                x = torch.full((n,), v, dtype=tdt, device=dev)
            x = x.to(tdt).cpu().contiguous()
            b = x.view(torch.uint8).numpy()
            mv = memoryview(b)
            while len(mv):
                k = f.write(mv)
                mv = mv[k:]
            written += b.nbytes
            if (i + 1) % 400 == 0:
                log(f"  {i + 1}/{len(tensors)} tensors, {written / 2 ** 30:.2f} GiB, {time.perf_counter() - t0:.1f} s")
        os.fsync(f.fileno()) if os.environ.get("GEN_FSYNC") else None
    assert written == total, (written, total)
    return len(header) + total


# ----------------------------------------------------------------------------------------------
# tokenizer.json: Qwen2.5's BPE from the tiktoken ranks (as transformers' TikTokenConverter) + specials
# ----------------------------------------------------------------------------------------------

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_tokenizer(path):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    with gzip.open(RANKS, "rt") as f:
        ranks = {}
        for line in f:
            if line.strip():
                tok, r = line.split()
                ranks[base64.b64decode(tok)] = int(r)
    assert len(ranks) == BASE_VOCAB, len(ranks)
    be = bytes_to_unicode()
    s = lambda b: "".join(be[c] for c in b)  # noqa: E731
    vocab = {s(t): r for t, r in ranks.items()}
    merges = []
    for tok, rank in ranks.items():
        if len(tok) == 1:
            continue
        local = [(tok[:i], tok[i:], rank) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks]
        local.sort(key=lambda x: (ranks[x[0]], ranks[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2])
    merges = [(s(a), s(b)) for a, b, _ in merges]
    tok = Tokenizer(BPE(vocab, merges, fuse_unk=False))
    if hasattr(tok.model, "ignore_merges"):
        tok.model.ignore_merges = True
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t in QWEN_SPECIALS + INTERNVL_SPECIALS + SA2VA_SPECIALS])
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    # The committed goldens (made with transformers' own TikTokenConverter) must come out the same.
    with open(TOKENIZER_GOLDENS) as f:
        gold = json.load(f)
    for t, i in gold["special_ids"].items():
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t), i)
    checked = 0
    for c in gold["cases"]:
        if any(t in c["text"] for t in SA2VA_SPECIALS):
            continue  # the goldens' tokenizer is InternVL2.5's, without Sa2VA's added tokens
        got = tok.encode(c["text"], add_special_tokens=False).ids
        assert got == c["ids"], f"tokenizer differs from the goldens on {c['text'][:40]!r}"
        checked += 1
    assert checked >= 8, checked
    forced = tok.encode("Sure, [SEG].<|im_end|>", add_special_tokens=False).ids
    assert forced[-3:] == [151674, 13, 151645], forced
    ids = {t: tok.token_to_id(t) for t in SA2VA_SPECIALS}
    assert ids["[SEG]"] == 151674 and ids["</vp>"] == 151678, ids
    tok.save(path)
    return {t: tok.token_to_id(t) for t in QWEN_SPECIALS + INTERNVL_SPECIALS + SA2VA_SPECIALS}


# ----------------------------------------------------------------------------------------------
# config.json (what Sa2VA's tools/convert_to_hf.py writes for Sa2VA-1B; fields perceptio reads marked)
# ----------------------------------------------------------------------------------------------

def config(dtype):
    td = {"bf16": "bfloat16", "f32": "float32", "f16": "float16"}[dtype]
    llm = {
        "_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct",
        "architectures": ["Qwen2ForCausalLM"],  # perceptio: selects the decoder
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "hidden_size": LLM["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": LLM["intermediate_size"],
        "max_position_embeddings": 32768,
        "max_window_layers": 21,
        "model_type": "qwen2",
        "num_attention_heads": LLM["num_attention_heads"],
        "num_hidden_layers": LLM["num_hidden_layers"],
        "num_key_value_heads": LLM["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,  # perceptio reads it here (the top level is forced to false)
        "torch_dtype": td,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB,
    }
    vision = {
        "architectures": ["InternVisionModel"],
        "attention_dropout": 0.0,
        "drop_path_rate": 0.0,
        "dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_size": VIT["hidden_size"],
        "image_size": VIT["image_size"],
        "initializer_factor": 0.1,
        "initializer_range": 1e-10,
        "intermediate_size": VIT["intermediate_size"],
        "layer_norm_eps": 1e-06,
        "model_type": "intern_vit_6b",
        "norm_type": "layer_norm",
        "num_attention_heads": VIT["num_attention_heads"],
        "num_channels": 3,
        "num_hidden_layers": VIT["num_hidden_layers"],
        "patch_size": VIT["patch_size"],
        "qk_normalization": False,
        "qkv_bias": True,
        "torch_dtype": td,
        "use_flash_attn": True,
    }
    return {
        "_name_or_path": "perceptio/sa2va-1b-realsize-random",
        "architectures": ["Sa2VAChatModel"],
        "auto_map": {"AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfig",
                     "AutoModel": "modeling_sa2va_chat.Sa2VAChatModel",
                     "AutoModelForCausalLM": "modeling_sa2va_chat.Sa2VAChatModel"},
        "downsample_ratio": 0.5,
        "dynamic_image_size": True,
        "force_image_size": VIT["image_size"],
        "hidden_size": LLM["hidden_size"],
        "llm_config": llm,
        "max_dynamic_patch": 12,
        "min_dynamic_patch": 1,
        "model_type": "sa2va_chat",
        "pad2square": False,
        "ps_version": "v2",
        "select_layer": -1,
        "template": "qwen_chat",
        "tie_word_embeddings": False,
        "torch_dtype": td,
        "transformers_version": "4.42.3",
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": True,
        "vision_config": vision,
    }


def side_files(d, special_ids):
    added = {t: i for t, i in sorted(special_ids.items(), key=lambda x: x[1])}
    with open(os.path.join(d, "added_tokens.json"), "w") as f:
        json.dump(added, f, indent=2, ensure_ascii=False)
    decoder = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True} for t, i in added.items()}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": decoder,
                   "additional_special_tokens": QWEN_SPECIALS[1:3] + INTERNVL_SPECIALS + SA2VA_SPECIALS,
                   "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
                   "errors": "replace", "model_max_length": 8192, "pad_token": "<|endoftext|>",
                   "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None},
                  f, indent=2, ensure_ascii=False)
    with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
        json.dump({"additional_special_tokens": QWEN_SPECIALS[1:3] + INTERNVL_SPECIALS + SA2VA_SPECIALS,
                   "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, f, indent=2)
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"_from_model_config": True, "transformers_version": "4.44.0"}, f, indent=2)


# ----------------------------------------------------------------------------------------------

def pattern(name):
    return re.sub(r"\.\d+\.", ".N.", name)


def read_header(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def check_layout():
    """The key patterns equal the tiny fixtures' (same layout, smaller sizes); no file is written."""
    ours = all_tensors()
    ivl = {pattern(n) for n, _ in internvl_tensors()}
    tiny = {pattern(k) for k in read_header(os.path.join(ROOT, "fixtures/internvl/tiny-qwen2/model.safetensors"))
            if not k.startswith("grounding_encoder.")}
    sam = {pattern(n) for n, _ in sam2_tensors()}
    tiny_sam = {pattern(k).replace(".gamma", ".g_weight") for k in
                read_header(os.path.join(ROOT, "fixtures/sam2/tiny_sa2va_hiera_l_depths.safetensors"))}
    res = dict(internvl_only_here=sorted(ivl - tiny), internvl_only_fixture=sorted(tiny - ivl),
               sam2_only_here=sorted(sam - tiny_sam), sam2_only_fixture=sorted(tiny_sam - sam))
    n = sum(numel(s) for _, s in ours)
    res.update(tensors=len(ours), params=n, bytes_bf16=n * 2, bytes_f32=n * 4, vocab=VOCAB,
               ok=not any(res[k] for k in ("internvl_only_here", "internvl_only_fixture", "sam2_only_here",
                                           "sam2_only_fixture")))
    return res


def dump_sam2_spec():
    import torch
    from sam2.build_sam import build_sam2
    torch.manual_seed(0)
    m = build_sam2("configs/sam2/sam2_hiera_l.yaml", ckpt_path=None, device="cpu")
    sd = m.state_dict()
    tensors = [[k.replace(".gamma", ".g_weight"), list(v.shape)] for k, v in sd.items()]
    spec = {"what": "SAM2 (not 2.1) hiera-L state_dict keys and shapes, Meta sam2 1.1.0, "
                    "configs/sam2/sam2_hiera_l.yaml (what Sa2VA builds as SAM2_HIERA_L); `.gamma` renamed "
                    "`.g_weight` as Sa2VA's convert_to_hf; prefix grounding_encoder.sam2_model. is added by "
                    "tools/gen_sa2va_realsize.py",
            "generator": "tools/gen_sa2va_realsize.py --dump-sam2-spec",
            "params": sum(v.numel() for v in sd.values()), "tensors": tensors}
    with open(SAM2_SPEC, "w") as f:
        f.write('{"what": %s,\n "generator": %s,\n "params": %d,\n "tensors": [\n' % (
            json.dumps(spec["what"]), json.dumps(spec["generator"]), spec["params"]))
        f.write(",\n".join("  " + json.dumps(t) for t in tensors))
        f.write("\n ]}\n")
    return {"tensors": len(tensors), "params": spec["params"], "path": SAM2_SPEC}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/sa2va-1b-realsize")
    ap.add_argument("--dtype", choices=["bf16", "f32", "f16"], default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto (cuda if torch sees one), cpu, cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--force", action="store_true", help="regenerate even if --out is complete")
    ap.add_argument("--check-layout", action="store_true")
    ap.add_argument("--dump-sam2-spec", action="store_true")
    a = ap.parse_args()
    if a.check_layout:
        r = check_layout()
        print(json.dumps(r, indent=1))
        return 0 if r["ok"] else 1
    if a.dump_sam2_spec:
        print(json.dumps(dump_sam2_spec()))
        return 0
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = a.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    tensors = all_tensors()
    key = hashlib.sha256(json.dumps([FORMAT_VERSION, a.dtype, a.seed, dev, tensors]).encode()).hexdigest()
    marker = os.path.join(a.out, ".complete")
    if not a.force and os.path.isfile(marker) and open(marker).read().strip() == key:
        print(json.dumps({"out": a.out, "reused": True, "key": key}))
        return 0
    t0 = time.perf_counter()
    tmp = a.out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    special = build_tokenizer(os.path.join(tmp, "tokenizer.json"))
    t_tok = time.perf_counter() - t0
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config(a.dtype), f, indent=2)
    side_files(tmp, special)
    log(f"tokenizer + config in {t_tok:.1f} s; writing {len(tensors)} tensors ({a.dtype}) generated on {dev} ...")
    t1 = time.perf_counter()
    size = write_weights(os.path.join(tmp, "model.safetensors"), a.dtype, a.seed, dev, tensors)
    t_w = time.perf_counter() - t1
    with open(os.path.join(tmp, ".complete"), "w") as f:
        f.write(key + "\n")
    if os.path.isdir(a.out):
        shutil.rmtree(a.out)
    os.rename(tmp, a.out)
    r = {"out": a.out, "reused": False, "dtype": a.dtype, "device": dev, "seed": a.seed, "tensors": len(tensors),
         "params": sum(numel(s) for _, s in tensors), "model_safetensors_bytes": size, "vocab": VOCAB,
         "seg_token_id": special["[SEG]"], "img_context_id": special["<IMG_CONTEXT>"],
         "tokenizer_s": round(t_tok, 2), "weights_s": round(t_w, 2), "total_s": round(time.perf_counter() - t0, 2),
         "key": key}
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
