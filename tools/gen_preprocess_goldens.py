#!/usr/bin/env python3
"""Generate goldens for perceptio's InternVL image preprocessing (manual; never run in CI).

    python3 -m venv .venv && .venv/bin/pip install pillow==13.0.0 numpy torch torchvision==0.29.2
    .venv/bin/pip install --no-deps --target /tmp/pil12_1 pillow==12.1.1   # optional, see below
    .venv/bin/pip install --no-deps --target /tmp/pil12_3 pillow==12.3.0
    .venv/bin/python tools/gen_preprocess_goldens.py [--refsrc DIR] [--photos DIR] \
        [--legacy-pillow /tmp/pil12_1 --legacy-pillow /tmp/pil12_3]

Writes fixtures/preprocess/goldens.json, fixtures/preprocess/tiles.bin (raw uint8 RGB tiles,
deduplicated; the JSON gives each tile's offset) and fixtures/preprocess/normalized.f32 (the
float32 pixel values of one case, little endian).

--photos DIR: the directory holding scikit-image's chelsea.png and coffee.png (from the
  scikit-image wheel: skimage/data/). When given, fixtures/images/{chelsea,coffee_portrait}.png
  are (re)written from them; otherwise the committed fixtures/images are used as they are.
--refsrc DIR: a directory holding InternVL/internvl_chat/internvl/train/dataset.py and
  Sa2VA/projects/sa2va/hf/models/modeling_sa2va_chat.py. When given, their
  find_closest_aspect_ratio / dynamic_preprocess are extracted and run on every tiling case, and
  the script fails unless both give exactly the tiles of the verbatim copy below.
--legacy-pillow DIR: also run the resize and tiling cases with the (older) Pillow installed in
  DIR, in a subprocess; where its bytes differ from Pillow 13's they are stored per version
  (Pillow 13 changed the order of the two resize passes for images whose height shrinks most).

Every expected uint8 value comes from Pillow (Image.open(...).convert('RGB'), Image.resize with
its default filter, Image.crop); the float values from torchvision's ToTensor + Normalize, i.e.
InternVL's build_transform(is_train=False, ...).
"""
import argparse
import ast
import base64
import hashlib
import json
import os
import platform
import struct
import sys
import zlib
from importlib.metadata import version

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.transforms.functional import InterpolationMode

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = os.path.join(ROOT, "fixtures", "preprocess")
IMAGES = os.path.join(ROOT, "fixtures", "images")
rng = np.random.default_rng(20261125)

# ---------------------------------------------------------------------------------------------
# Verbatim copy of InternVL's reference code (OpenGVLab/InternVL, MIT licence):
# internvl_chat/internvl/train/dataset.py and internvl/train/constants.py.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(is_train, input_size, pad2square=False, normalize_type='imagenet'):
    # eval branch only (is_train=False, pad2square=False, imagenet normalisation)
    assert not is_train and not pad2square and normalize_type == 'imagenet'
    MEAN, STD = IMAGENET_MEAN, IMAGENET_STD
    transform = T.Compose([
        T.Lambda(lambda img: img.convert('RGB') if img.mode != 'RGB' else img),
        T.Resize((input_size, input_size), interpolation=InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(mean=MEAN, std=STD)
    ])
    return transform


def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff = float('inf')
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    # print(f'width: {width}, height: {height}, best_ratio: {best_ratio}')
    return best_ratio


def dynamic_preprocess(image, min_num=1, max_num=6, image_size=448, use_thumbnail=False):
    orig_width, orig_height = image.size
    aspect_ratio = orig_width / orig_height

    # calculate the existing image aspect ratio
    target_ratios = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1) if
        i * j <= max_num and i * j >= min_num)
    target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])

    # find the closest aspect ratio to the target
    target_aspect_ratio = find_closest_aspect_ratio(
        aspect_ratio, target_ratios, orig_width, orig_height, image_size)

    # calculate the target width and height
    target_width = image_size * target_aspect_ratio[0]
    target_height = image_size * target_aspect_ratio[1]
    blocks = target_aspect_ratio[0] * target_aspect_ratio[1]

    # resize the image
    resized_img = image.resize((target_width, target_height))
    processed_images = []
    for i in range(blocks):
        box = (
            (i % (target_width // image_size)) * image_size,
            (i // (target_width // image_size)) * image_size,
            ((i % (target_width // image_size)) + 1) * image_size,
            ((i // (target_width // image_size)) + 1) * image_size
        )
        # split the image
        split_img = resized_img.crop(box)
        processed_images.append(split_img)
    assert len(processed_images) == blocks
    if use_thumbnail and len(processed_images) != 1:
        thumbnail_img = image.resize((image_size, image_size))
        processed_images.append(thumbnail_img)
    return processed_images
# ---------------------------------------------------------------------------------------------


def target_ratios(min_num, max_num):
    """The candidate list exactly as dynamic_preprocess builds it (CPython set order, then a
    stable sort by tile count)."""
    s = set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
            if i * j <= max_num and i * j >= min_num)
    return sorted(s, key=lambda x: x[0] * x[1])


def grid_of(image, min_num, max_num, image_size):
    w, h = image.size
    return find_closest_aspect_ratio(w / h, target_ratios(min_num, max_num), w, h, image_size)


def b64(b):
    return base64.b64encode(bytes(b)).decode("ascii")


def sha(b):
    return hashlib.sha256(bytes(b)).hexdigest()


def rgb_bytes(im):
    assert im.mode == "RGB"
    return np.asarray(im, dtype=np.uint8).tobytes()


def load_reference_impls(refsrc):
    """find_closest_aspect_ratio + dynamic_preprocess from the original files (exec'd alone)."""
    impls = {}
    files = {
        "internvl": os.path.join(refsrc, "InternVL/internvl_chat/internvl/train/dataset.py"),
        "sa2va": os.path.join(refsrc, "Sa2VA/projects/sa2va/hf/models/modeling_sa2va_chat.py"),
    }
    for name, path in files.items():
        src = open(path).read()
        tree = ast.parse(src)
        ns = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in ("find_closest_aspect_ratio", "dynamic_preprocess"):
                exec(compile(ast.Module([node], []), path, "exec"), ns)
        assert "dynamic_preprocess" in ns and "find_closest_aspect_ratio" in ns, path
        impls[name] = ns["dynamic_preprocess"]
    return impls


# --- small PNG writer (any colour type / bit depth, optional extra chunks) --------------------
def png_chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


def make_png(w, h, depth, ctype, rows, extra=b"", interlace=0):
    raw = b"".join(b"\x00" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))


def pack_bits(vals, depth):
    out, acc, n = bytearray(), 0, 0
    for v in vals:
        acc = (acc << depth) | v
        n += depth
        if n == 8:
            out.append(acc)
            acc, n = 0, 0
    if n:
        out.append(acc << (8 - n))
    return bytes(out)


def convert_cases():
    """PNGs of every colour type; expected = PIL's Image.open(...).convert('RGB')."""
    cases = []
    w, h = 7, 3

    def add(name, data):
        import io
        im = Image.open(io.BytesIO(data))
        mode = im.mode
        rgb = im.convert("RGB")
        cases.append({"name": name, "pil_mode": mode, "width": rgb.size[0], "height": rgb.size[1],
                      "png": b64(data), "rgb": b64(rgb_bytes(rgb))})

    def rows_of(arr, fmt):
        return [b"".join(struct.pack(fmt, *px) if isinstance(px, tuple) else struct.pack(fmt, px) for px in r)
                for r in arr]

    u8 = rng.integers(0, 256, (h, w, 4))
    u16 = rng.integers(0, 65536, (h, w, 4))
    small16 = rng.integers(0, 512, (h, w))  # I;16 values around the 255 clip
    add("rgb8", make_png(w, h, 8, 2, [bytes(u8[y, :, :3].astype(np.uint8).tobytes()) for y in range(h)]))
    add("rgba8", make_png(w, h, 8, 6, [bytes(u8[y].astype(np.uint8).tobytes()) for y in range(h)]))
    add("gray8", make_png(w, h, 8, 0, [bytes(u8[y, :, 0].astype(np.uint8).tobytes()) for y in range(h)]))
    add("graya8", make_png(w, h, 8, 4, [bytes(u8[y, :, :2].astype(np.uint8).tobytes()) for y in range(h)]))
    add("rgb16", make_png(w, h, 16, 2, [u16[y, :, :3].astype(">u2").tobytes() for y in range(h)]))
    add("rgba16", make_png(w, h, 16, 6, [u16[y].astype(">u2").tobytes() for y in range(h)]))
    add("graya16", make_png(w, h, 16, 4, [u16[y, :, :2].astype(">u2").tobytes() for y in range(h)]))
    add("gray16", make_png(w, h, 16, 0, [small16[y].astype(">u2").tobytes() for y in range(h)]))
    add("gray16_trns", make_png(w, h, 16, 0, [small16[y].astype(">u2").tobytes() for y in range(h)],
                                png_chunk(b"tRNS", struct.pack(">H", int(small16[0, 0])))))
    add("gray8_trns", make_png(w, h, 8, 0, [bytes(u8[y, :, 0].astype(np.uint8).tobytes()) for y in range(h)],
                               png_chunk(b"tRNS", struct.pack(">H", int(u8[0, 0, 0])))))
    add("rgb8_trns", make_png(w, h, 8, 2, [bytes(u8[y, :, :3].astype(np.uint8).tobytes()) for y in range(h)],
                              png_chunk(b"tRNS", struct.pack(">HHH", *[int(v) for v in u8[0, 0, :3]]))))
    for depth in (1, 2, 4):
        g = rng.integers(0, 1 << depth, (h, w))
        add(f"gray{depth}", make_png(w, h, depth, 0, [pack_bits(g[y], depth) for y in range(h)]))
    pal = rng.integers(0, 256, (16, 3)).astype(np.uint8)
    for depth in (1, 2, 4, 8):
        n = min(1 << depth, 16)
        idx = rng.integers(0, n, (h, w))
        rows = [pack_bits(idx[y], depth) for y in range(h)]
        add(f"palette{depth}", make_png(w, h, depth, 3, rows, png_chunk(b"PLTE", pal[:n].tobytes())))
    idx = rng.integers(0, 16, (h, w))
    add("palette8_trns", make_png(w, h, 8, 3, [pack_bits(idx[y], 8) for y in range(h)],
                                  png_chunk(b"PLTE", pal.tobytes()) + png_chunk(b"tRNS", bytes(range(0, 160, 10)))))
    # Adam7-interlaced RGB: build the 7 passes by hand.
    img = rng.integers(0, 256, (9, 11, 3)).astype(np.uint8)
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = img[y0::dy, x0::dx]
        if sub.shape[0] and sub.shape[1]:
            raw += b"".join(b"\x00" + sub[y].tobytes() for y in range(sub.shape[0]))
    ihdr = struct.pack(">IIBBBBB", 11, 9, 8, 2, 0, 0, 1)
    add("rgb8_adam7", b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b""))
    return cases


def resize_cases():
    """Direct Image.resize((w, h)) with the default filter on small random RGB images."""
    specs = [
        ("upscale_7x5_to_23x17", 7, 5, 23, 17, "noise"),
        ("downscale_37x29_to_11x13", 37, 29, 11, 13, "noise"),
        ("downscale_smooth_53x41_to_20x15", 53, 41, 20, 15, "smooth"),
        ("upscale_smooth_9x6_to_31x25", 9, 6, 31, 25, "smooth"),
        ("one_pixel_to_5x3", 1, 1, 5, 3, "noise"),
        ("one_pixel_identity", 1, 1, 1, 1, "noise"),
        ("to_one_pixel_10x10", 10, 10, 1, 1, "noise"),
        ("to_one_pixel_3x250", 3, 250, 1, 1, "noise"),
        ("single_row_40x1_to_7x3", 40, 1, 7, 3, "noise"),
        ("single_column_1x40_to_3x7", 1, 40, 3, 7, "noise"),
        ("wide_200x2_to_13x3", 200, 2, 13, 3, "noise"),
        ("tall_3x300_to_2x17", 3, 300, 2, 17, "noise"),
        ("tall_1x300_to_1x2", 1, 300, 1, 2, "noise"),
        ("tall_2x250_to_5x9", 2, 250, 5, 9, "noise"),
        ("wide_400x3_to_7x3", 400, 3, 7, 3, "noise"),
        ("vertical_only_17x9_to_17x4", 17, 9, 17, 4, "noise"),
        ("vertical_only_up_17x9_to_17x30", 17, 9, 17, 30, "noise"),
        ("horizontal_only_17x9_to_5x9", 17, 9, 5, 9, "noise"),
        ("horizontal_only_up_5x9_to_19x9", 5, 9, 19, 9, "noise"),
        ("identity_24x18", 24, 18, 24, 18, "noise"),
        ("near_identity_50x50_to_49x51", 50, 50, 49, 51, "noise"),
        ("checker_clip_16x16_to_37x29", 16, 16, 37, 29, "checker"),
        ("checker_clip_16x16_to_7x5", 16, 16, 7, 5, "checker"),
        ("mixed_up_down_30x8_to_11x27", 30, 8, 11, 27, "noise"),
        ("big_factor_97x61_to_3x2", 97, 61, 3, 2, "smooth"),
        # Pillow 13 runs the vertical pass first iff in_h - out_h > 0 and > 2 * (in_w - out_w);
        # Pillow 12.2/12.3 iff in_h > 100 * in_w and out_h < in_h; older ones never.
        ("order_boundary_hv_20x30_to_15x20", 20, 30, 15, 20, "noise"),
        ("order_boundary_vh_20x31_to_15x20", 20, 31, 15, 20, "noise"),
        ("order_width_up_5x40_to_9x10", 5, 40, 9, 10, "noise"),
        ("order_both_down_34x23_to_24x6", 34, 23, 24, 6, "noise"),
        ("order_both_down_13x53_to_5x22", 13, 53, 5, 22, "noise"),
        ("order_tall_2x201_to_3x50", 2, 201, 3, 50, "noise"),
        ("order_tall_3x299_to_5x40", 3, 299, 5, 40, "noise"),
        ("order_wide_300x40_to_20x30", 300, 40, 20, 30, "noise"),
        ("tile_like_120x80_to_56x56", 120, 80, 56, 56, "smooth"),
    ]
    out = []
    for name, w, h, ow, oh, kind in specs:
        if kind == "noise":
            a = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        elif kind == "checker":
            yy, xx = np.mgrid[0:h, 0:w]
            a = np.repeat((((yy // 2 + xx // 2) % 2) * 255).astype(np.uint8)[:, :, None], 3, axis=2)
            a[:, :, 1] = 255 - a[:, :, 1]
        else:  # smooth gradients plus mild noise
            yy, xx = np.mgrid[0:h, 0:w]
            base = np.stack([xx * 255.0 / max(w - 1, 1), yy * 255.0 / max(h - 1, 1),
                             128 + 100 * np.sin(xx / 3.0 + yy / 5.0)], axis=2)
            a = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        im = Image.fromarray(a, "RGB")
        r = im.resize((ow, oh))  # default filter, as dynamic_preprocess calls it
        assert rgb_bytes(r) == rgb_bytes(im.resize((ow, oh), Image.Resampling.BICUBIC))
        out.append({"name": name, "in_w": w, "in_h": h, "out_w": ow, "out_h": oh,
                    "input": b64(a.tobytes()), "output": b64(rgb_bytes(r))})
    return out


def synthetic_images():
    """Small extreme-aspect inputs for dynamic_preprocess (stored raw in the JSON)."""
    ims = {}
    for name, w, h in [("synthetic_wide_300x12", 300, 12), ("synthetic_tall_10x260", 10, 260),
                       ("synthetic_1x1", 1, 1), ("synthetic_5x2", 5, 2), ("synthetic_13x12", 13, 12),
                       ("synthetic_3x4", 3, 4)]:
        a = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        ims[name] = a
    return ims


def worker():
    """--worker: run the resize and tiling cases of a JSON job (stdin) with whatever Pillow is
    first on sys.path (an older release, via PYTHONPATH) and print the results as JSON."""
    import PIL
    job = json.load(sys.stdin)
    out = {"pillow": PIL.__version__, "resize": [], "tiles": []}
    for c in job["resize"]:
        a = np.frombuffer(base64.b64decode(c["input"]), np.uint8).reshape(c["in_h"], c["in_w"], 3)
        out["resize"].append(b64(rgb_bytes(Image.fromarray(a, "RGB").resize((c["out_w"], c["out_h"])))))
    for c in job["tiles"]:
        if "path" in c:
            im = Image.open(os.path.join(ROOT, c["path"])).convert("RGB")
        else:
            im = Image.fromarray(np.frombuffer(base64.b64decode(c["rgb"]), np.uint8).reshape(c["height"], c["width"], 3), "RGB")
        tiles = dynamic_preprocess(im, min_num=c["min_num"], max_num=c["max_num"], image_size=c["image_size"],
                                   use_thumbnail=c["use_thumbnail"])
        out["tiles"].append([sha(rgb_bytes(t)) for t in tiles])
    json.dump(out, sys.stdout)


def run_legacy(pillow_dir, resize, tile_cases, images_meta):
    import subprocess
    job = {"resize": resize, "tiles": []}
    for c in tile_cases:
        d = dict(images_meta[c["image"]])
        d.update({k: c[k] for k in ("image_size", "min_num", "max_num", "use_thumbnail")})
        job["tiles"].append(d)
    env = dict(os.environ, PYTHONPATH=pillow_dir)
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker"], input=json.dumps(job).encode(),
                       env=env, capture_output=True, check=True)
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--refsrc")
    ap.add_argument("--photos")
    ap.add_argument("--legacy-pillow", action="append", default=[],
                    help="a directory with an older Pillow (pip install --target DIR pillow==12.1.1); repeatable")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker()
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(IMAGES, exist_ok=True)

    if args.photos:
        src = Image.open(os.path.join(args.photos, "chelsea.png"))
        with open(os.path.join(args.photos, "chelsea.png"), "rb") as f:
            data = f.read()
        with open(os.path.join(IMAGES, "chelsea.png"), "wb") as f:
            f.write(data)  # byte-identical copy of scikit-image's file
        coffee = Image.open(os.path.join(args.photos, "coffee.png")).convert("RGB")
        coffee.crop((160, 0, 440, 400)).save(os.path.join(IMAGES, "coffee_portrait.png"), optimize=True)

    photos = {}
    images_meta = {}
    for name in ("chelsea", "coffee_portrait"):
        path = os.path.join(IMAGES, name + ".png")
        im = Image.open(path).convert("RGB")  # as InternVL's load_image / Sa2VA's demo do
        photos[name] = im
        images_meta[name] = {"path": f"fixtures/images/{name}.png", "width": im.size[0], "height": im.size[1],
                             "rgb_sha256": sha(rgb_bytes(im))}
    synth = synthetic_images()
    for name, a in synth.items():
        photos[name] = Image.fromarray(a, "RGB")
        images_meta[name] = {"width": a.shape[1], "height": a.shape[0], "rgb": b64(a.tobytes()),
                             "rgb_sha256": sha(a.tobytes())}

    # --- measured facts ----------------------------------------------------------------------
    facts = {}
    import inspect
    facts["pillow_resize_default_resample"] = "BICUBIC" if "resample = Resampling.BICUBIC" in inspect.getsource(Image.Image.resize) else "?"
    probe = Image.fromarray(rng.integers(0, 256, (31, 23, 3)).astype(np.uint8), "RGB")
    facts["pillow_default_equals_explicit_bicubic"] = all(
        rgb_bytes(probe.resize(s)) == rgb_bytes(probe.resize(s, Image.Resampling.BICUBIC))
        for s in [(7, 9), (50, 40), (23, 31), (1, 1)])
    facts["pillow_resize_same_size_is_identical_copy"] = rgb_bytes(probe.resize(probe.size)) == rgb_bytes(probe)
    tile = photos["chelsea"].resize((56, 56))
    facts["torchvision_resize_at_size_returns_input_object"] = T.Resize((56, 56), interpolation=InterpolationMode.BICUBIC)(tile) is tile

    # --- target ratio order ------------------------------------------------------------------
    orders_min1 = {str(mx): [list(r) for r in target_ratios(1, mx)] for mx in range(1, 41)}
    digests = {}
    for mx in range(1, 49):
        text = "\n".join(f"{mn}:" + ";".join(f"{i},{j}" for i, j in target_ratios(mn, mx)) for mn in range(0, mx + 2))
        digests[str(mx)] = sha(text.encode())
    # set(genexpr) (InternVL) and a set comprehension (Sa2VA) give the same order
    for mx in range(1, 49):
        for mn in range(0, mx + 2):
            comp = sorted({(i, j) for n in range(mn, mx + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                           if i * j <= mx and i * j >= mn}, key=lambda x: x[0] * x[1])
            assert comp == target_ratios(mn, mx)

    closest = []
    for (aspect_wh, ratios_src, S) in [((300, 400, 2), None, 448), ((300, 400, 2), None, 56), ((5, 2, 4), 4, 448),
                                       ((13, 12, 6), 6, 448), ((1000, 1000, 12), None, 448), ((10, 10, 12), None, 448),
                                       ((896, 448, 6), None, 448), ((897, 448, 6), None, 448), ((2, 1, 12), None, 1)]:
        w, h, mx = aspect_wh
        mn = ratios_src or 1
        ratios = target_ratios(mn, mx)
        closest.append({"width": w, "height": h, "min_num": mn, "max_num": mx, "image_size": S,
                        "aspect": w / h, "ratios": [list(r) for r in ratios],
                        "best": list(find_closest_aspect_ratio(w / h, ratios, w, h, S))})

    # --- tiling cases ------------------------------------------------------------------------
    ref_impls = load_reference_impls(args.refsrc) if args.refsrc else {}
    blob = bytearray()
    blob_index = {}

    def store(b):
        h = sha(b)
        if h not in blob_index:
            blob_index[h] = len(blob)
            blob.extend(b)
        return blob_index[h]

    tile_cases = []

    def tile_case(image, S, mn, mx, thumb, keep_bytes):
        im = photos[image]
        tiles = dynamic_preprocess(im, min_num=mn, max_num=mx, image_size=S, use_thumbnail=thumb)
        for name, impl in ref_impls.items():
            other = impl(im, min_num=mn, max_num=mx, image_size=S, use_thumbnail=thumb)
            assert [rgb_bytes(t) for t in other] == [rgb_bytes(t) for t in tiles], (name, image, S, mn, mx)
        grid = grid_of(im, mn, mx, S)
        c = {"image": image, "image_size": S, "min_num": mn, "max_num": mx, "use_thumbnail": thumb,
             "grid": [grid[0], grid[1]], "n_tiles": len(tiles), "sha256": [sha(rgb_bytes(t)) for t in tiles]}
        for t in tiles:
            assert t.size == (S, S) and t.mode == "RGB"
            # build_transform's Resize is a no-op on these tiles
            assert T.Resize((S, S), interpolation=InterpolationMode.BICUBIC)(t) is t
        if keep_bytes:
            c["offsets"] = [store(rgb_bytes(t)) for t in tiles]
        tile_cases.append(c)
        return tiles

    for image in ("chelsea", "coffee_portrait"):
        for S in (56, 112):
            for mx in (1, 6, 12):
                tile_case(image, S, 1, mx, True, True)
        for mx in (1, 6, 12):
            tile_case(image, 448, 1, mx, True, False)
        for mx in (2, 3, 4, 9):
            tile_case(image, 112, 1, mx, True, False)
        tile_case(image, 112, 1, 6, False, False)
        tile_case(image, 56, 3, 8, True, False)
    tile_case("synthetic_wide_300x12", 56, 1, 12, True, False)
    tile_case("synthetic_tall_10x260", 56, 1, 12, True, False)
    tile_case("synthetic_tall_10x260", 56, 1, 6, False, False)
    tile_case("synthetic_1x1", 56, 1, 6, True, True)
    tile_case("synthetic_1x1", 28, 1, 12, True, True)
    tile_case("synthetic_5x2", 28, 4, 4, True, False)  # CPython set order decides this tie
    tile_case("synthetic_13x12", 28, 6, 6, True, False)
    tile_case("synthetic_3x4", 28, 1, 2, True, False)   # aspect 0.75: tie between (1,1) and (1,2)
    tile_case("synthetic_3x4", 2, 1, 2, True, False)    # same tie, area above the threshold

    # --- normalised floats (build_transform, eval branch) --------------------------------------
    norm_case = {"image": "chelsea", "image_size": 56, "min_num": 1, "max_num": 2, "use_thumbnail": True}
    tiles = dynamic_preprocess(photos["chelsea"], min_num=1, max_num=2, image_size=56, use_thumbnail=True)
    transform = build_transform(is_train=False, input_size=56)
    pv = torch.stack([transform(t) for t in tiles]).numpy()
    assert pv.dtype == np.float32
    with open(os.path.join(OUT, "normalized.f32"), "wb") as f:
        f.write(pv.astype("<f4").tobytes())
    # numpy float32 re-implementation: (u8 / 255 - mean) / std, all in float32
    ref = []
    for t in tiles:
        a = np.asarray(t).astype(np.float32).transpose(2, 0, 1) / np.float32(255)
        m = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
        s = np.array(IMAGENET_STD, dtype=np.float32)[:, None, None]
        ref.append((a - m) / s)
    ref = np.stack(ref)
    facts["normalize_numpy_f32_equals_torchvision_bitwise"] = bool(np.array_equal(ref, pv))
    facts["normalize_numpy_f32_max_abs_diff"] = float(np.abs(ref - pv).max())
    norm_case.update({"shape": list(pv.shape), "file": "normalized.f32", "sha256": [sha(rgb_bytes(t)) for t in tiles]})

    with open(os.path.join(OUT, "tiles.bin"), "wb") as f:
        f.write(blob)

    # --- older Pillow releases (pass order of the two resize passes) ---------------------------
    resize = resize_cases()
    legacy_versions = []
    for d in args.legacy_pillow:
        res = run_legacy(d, resize, tile_cases, images_meta)
        v = res["pillow"]
        legacy_versions.append(v)
        for c, o in zip(resize, res["resize"]):
            if o != c["output"]:
                c.setdefault("output_by_pillow", {})[v] = o
        for c, shas in zip(tile_cases, res["tiles"]):
            if shas != c["sha256"]:
                c.setdefault("sha256_by_pillow", {})[v] = shas

    golden = {
        "generator": "tools/gen_preprocess_goldens.py",
        "versions": {"python": platform.python_version(), "pillow": version("pillow"), "numpy": np.__version__,
                     "torch": torch.__version__, "torchvision": version("torchvision"),
                     "machine": platform.machine()},
        "facts": facts,
        "images": images_meta,
        "target_ratios_min1": orders_min1,
        "target_ratios_digest": digests,
        "closest": closest,
        "legacy_pillow": legacy_versions,
        "resize": resize,
        "convert": convert_cases(),
        "tiles_blob": {"file": "tiles.bin", "bytes": len(blob), "sha256": sha(blob)},
        "tiles": tile_cases,
        "normalized": norm_case,
    }
    with open(os.path.join(OUT, "goldens.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(json.dumps(facts, indent=1))
    for c in tile_cases:
        print(c["image"], c["image_size"], c["min_num"], c["max_num"], c["use_thumbnail"], c["grid"], c["n_tiles"])
    print("tiles.bin", len(blob), "bytes")


if __name__ == "__main__":
    main()
