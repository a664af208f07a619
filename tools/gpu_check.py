#!/usr/bin/env python3
"""The one-command GPU check of perceptio's CUDA build (run through tools/gpu-check.sh).

    tools/gpu-check.sh                                # on the GPU machine: everything, JSON in $OUT/gpu-check.json
    tools/gpu-check.sh --dry-run-cpu target/debug/perceptio     # here: the same plumbing, CPU only

Sections (every step has its own timeout, a failure is recorded and the next step runs; the JSON is
rewritten after every step, so a kill leaves what was done):
  preflight     nvidia-smi, driver, the binary's sha256, `ldd` (LD_LIBRARY_PATH completed from torch's
                bundled nvidia/*/lib dirs when libcublas/libcudart/libcurand are not found), `--version`,
                the first CUDA process (its wall time is the PTX JIT cost), torch/transformers/sam2 versions
  correctness   tiny fixtures, the same inputs with --device cpu (f32, the reference), --device cuda f32 and
                bf16: token ids, mask IoU, SAM2 scores, depth maps; f32 must match (ids equal, IoU >= 0.999)
  realsize      a random-weight Sa2VA-1B-shaped checkpoint (tools/gen_sa2va_realsize.py, generated at the
                start in the background), perceptio segment (1 and 7 tiles), ask (100 new tokens), eval
                refcoco --model on a generated 12-sample set (1 and 7 tiles), and PyTorch bf16 on the same GPU
                for the same stages (this file's --torch-reference mode, in its own process)
  goals         segment 1 tile < 0.5 s, ask 100 tokens < 1.5 s, every stage at least level with PyTorch bf16

Only the Python standard library is needed for the orchestration; numpy for masks/depth comparisons (else
those fields say why they are missing); torch + transformers (+ Meta's sam2, carried as pure-Python
packages) for the PyTorch reference and the checkpoint generator.
"""
import argparse
import base64
import glob
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIX = os.path.join(ROOT, "fixtures")
CHELSEA = os.path.join(FIX, "images", "chelsea.png")
PORTRAIT = os.path.join(FIX, "images", "coffee_portrait.png")
SCHEMA = "perceptio-gpu-check/1"
T0 = time.perf_counter()

GOAL_SEGMENT_1TILE_S = 0.5
GOAL_ASK_100_S = 1.5
F32_MIN_IOU = 0.999


def now():
    return round(time.perf_counter() - T0, 2)


def log(*a):
    print(f"[{now():7.1f}s]", *a, file=sys.stderr, flush=True)


def tail(s, n=1500):
    s = s or ""
    return s if len(s) <= n else "…" + s[-n:]


# ----------------------------------------------------------------------------------------------
# running things
# ----------------------------------------------------------------------------------------------

def run_cmd(argv, timeout, env=None, cwd=None, stdout_path=None, stderr_path=None):
    """Run argv with a hard timeout (the whole process group is killed). Never raises."""
    t = time.perf_counter()
    r = {"argv": [str(a) for a in argv], "timeout_s": timeout}
    try:
        p = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             cwd=cwd, start_new_session=True)
    except OSError as e:
        r.update(rc=None, error=f"cannot start: {e}", wall_s=0.0, stdout="", stderr="", timed_out=False)
        return r
    try:
        out, err = p.communicate(timeout=timeout)
        r["timed_out"] = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        out, err = p.communicate()
        r["timed_out"] = True
    r["rc"] = p.returncode
    r["wall_s"] = round(time.perf_counter() - t, 3)
    r["stdout"] = out.decode("utf-8", "replace")
    r["stderr"] = err.decode("utf-8", "replace")
    for path, text in ((stdout_path, r["stdout"]), (stderr_path, r["stderr"])):
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    return r


def parse_json_out(text):
    """perceptio prints one compact JSON line per result (segment, depth) or one pretty object (ask, eval)."""
    text = (text or "").strip()
    if not text:
        return []
    try:
        return [json.loads(text)]
    except ValueError:
        pass
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


# ----------------------------------------------------------------------------------------------
# masks (COCO compressed RLE, pycocotools' rleFrString) and arrays
# ----------------------------------------------------------------------------------------------

def rle_counts(s):
    cnts, p, m = [], 0, 0
    while p < len(s):
        x, k, more = 0, 0, 1
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = c & 0x20
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if m > 2:
            x += cnts[m - 2]
        cnts.append(x)
        m += 1
    return cnts


def rle_decode(m):
    import numpy as np
    h, w = m["size"]
    c = m["counts"]
    counts = rle_counts(c) if isinstance(c, str) else list(c)
    vals = np.zeros(len(counts), dtype=bool)
    vals[1::2] = True
    flat = np.repeat(vals, counts)
    assert flat.size == h * w, (flat.size, h, w)
    return flat.reshape(w, h).T  # column-major


def mask_iou(a, b):
    """IoU of two RLE dicts (None = empty); 1.0 when both are empty."""
    import numpy as np
    if a is None and b is None:
        return 1.0
    ma = rle_decode(a) if a is not None else None
    mb = rle_decode(b) if b is not None else None
    if ma is None:
        ma = np.zeros_like(mb)
    if mb is None:
        mb = np.zeros_like(ma)
    if ma.shape != mb.shape:
        return 0.0
    u = int((ma | mb).sum())
    return 1.0 if u == 0 else float((ma & mb).sum()) / u


def max_abs(a, b):
    if a is None or b is None or len(a) != len(b):
        return None
    return max((abs(float(x) - float(y)) for x, y in zip(a, b)), default=0.0)


def first_mismatch(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


# ----------------------------------------------------------------------------------------------
# fixtures assembled as the Rust tests do (tests/common/sa2va.rs), on raw safetensors bytes
# ----------------------------------------------------------------------------------------------

def st_read(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        h = json.loads(f.read(n))
        data = f.read()
    h.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in h.items()}


def st_write(path, tensors):
    h = {"__metadata__": {"format": "pt"}}
    off = 0
    names = sorted(tensors)
    for k in names:
        dt, shape, b = tensors[k]
        h[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}
        off += len(b)
    raw = json.dumps(h, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for k in names:
            f.write(tensors[k][2])


def assemble_sa2va(d):
    """fixtures/sa2va/README.md: 3 shards + index + config + tiny-qwen2's tokenizer files."""
    os.makedirs(d, exist_ok=True)
    base = st_read(os.path.join(FIX, "internvl/tiny-qwen2/model.safetensors"))
    shard1 = {k: v for k, v in base.items() if not k.startswith(("text_hidden_fcs.", "grounding_encoder."))}
    st_write(os.path.join(d, "model-00001-of-00003.safetensors"), shard1)
    shutil.copy(os.path.join(FIX, "sam2/tiny_sa2va_sam2.safetensors"), os.path.join(d, "model-00002-of-00003.safetensors"))
    shutil.copy(os.path.join(FIX, "sa2va/text_hidden_fcs.safetensors"), os.path.join(d, "model-00003-of-00003.safetensors"))
    wm = {}
    for f in ("model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"):
        for k in st_read(os.path.join(d, f)):
            assert k not in wm, f"duplicate key {k}"
            wm[k] = f
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": wm}, f)
    shutil.copy(os.path.join(FIX, "sa2va/config.json"), os.path.join(d, "config.json"))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(FIX, "internvl/tiny-qwen2", f), os.path.join(d, f))
    return d


def f32_to_bf16_bytes(vals):
    import struct
    out = bytearray()
    for v in vals:
        u = struct.unpack("<I", struct.pack("<f", v))[0]
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even
        out += struct.pack("<H", u & 0xFFFF)
    return bytes(out)


def add_depth_tokens(d):
    """tests/common/sa2va.rs add_depth_tokens: <DEPTH_START>, <DEPTH_END>, <DEPTH_0..15> (ids 417..434), the
    tied embedding grown by deterministic rows, the tiny VQ-VAE as vqvae.pt and a 3x3 / 16-code depth block."""
    import math
    tp = os.path.join(d, "tokenizer.json")
    with open(tp) as f:
        tok = json.load(f)
    base = 417
    names = ["<DEPTH_START>", "<DEPTH_END>"] + [f"<DEPTH_{k}>" for k in range(16)]
    for i, n in enumerate(names):
        tok["added_tokens"].append({"id": base + i, "content": n, "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": True})
    with open(tp, "w") as f:
        json.dump(tok, f)
    sp = os.path.join(d, "model-00001-of-00003.safetensors")
    t = st_read(sp)
    key = "language_model.model.embed_tokens.weight"
    dt, shape, b = t[key]
    assert dt == "BF16", dt
    h = shape[1]
    rows = [(((math.sin(i * 12.9898) * 43758.547) % 1.0) * 0.04) for i in range(len(names) * h)]
    t[key] = (dt, [shape[0] + len(names), h], b + f32_to_bf16_bytes(rows))
    st_write(sp, t)
    cp = os.path.join(d, "config.json")
    with open(cp) as f:
        cfg = json.load(f)
    cfg["llm_config"]["vocab_size"] = base + len(names)
    with open(os.path.join(FIX, "depth/goldens.json")) as f:
        vq = json.load(f)
    cfg["perceptio"] = {"depth": {"tokens": {"grid": [3, 3], "codebook_size": 16}, "vqvae": {"file": "vqvae.pt"},
                                  "vqvae_config": vq["tiny_config"]}}
    with open(cp, "w") as f:
        json.dump(cfg, f)
    shutil.copy(os.path.join(FIX, "depth/tiny_vqvae.pt"), os.path.join(d, "vqvae.pt"))
    return d


def make_refcoco_set(d, n_images=6, per_image=2):
    """A RefCOCO-format GT JSONL (docs/formats.md: `--annotations`) + images cut from chelsea.png at 3:2 sizes
    (3x2 tiles + thumbnail with --max-tiles 7), `sentence` and `file_name` per line, polygon masks."""
    from PIL import Image
    os.makedirs(os.path.join(d, "images"), exist_ok=True)
    src = Image.open(CHELSEA).convert("RGB")
    sizes = [(480, 320), (450, 300), (600, 400), (300, 200), (640, 427), (512, 341), (390, 260), (540, 360)]
    sents = ["the cat", "the cat on the left", "the animal", "the thing in the middle"]
    lines = []
    sid = 1
    for i in range(n_images):
        w, h = sizes[i % len(sizes)]
        x, y = (i * 37) % 120, (i * 23) % 60
        crop = src.crop((x, y, x + 330, y + 220)).resize((w, h), Image.BILINEAR)
        name = f"img{i:02d}.png"
        crop.save(os.path.join(d, "images", name))
        for j in range(per_image):
            x0, y0, x1, y1 = w * 0.2 + 5 * j, h * 0.15, w * 0.75, h * 0.9 - 5 * j
            lines.append({"sent_id": sid, "height": h, "width": w, "image_id": i, "ref_id": i * 10 + j,
                          "file_name": name, "sentence": sents[(i + j) % len(sents)],
                          "mask": {"polygons": [[x0, y0, x1, y0, x1, y1, x0, y1]]}})
            sid += 1
    gt = os.path.join(d, "gt.jsonl")
    with open(gt, "w") as f:
        for ln in lines:
            f.write(json.dumps(ln) + "\n")
    return gt, os.path.join(d, "images"), len(lines)


# ----------------------------------------------------------------------------------------------
# the check
# ----------------------------------------------------------------------------------------------

class Check:
    def __init__(self, a):
        self.a = a
        self.out_json = os.path.join(a.out, "gpu-check.json")
        self.deadline = T0 + a.budget_s
        self.R = {"schema": SCHEMA, "mode": "dry-run-cpu" if a.dry_run_cpu else "gpu",
                  "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "budget_s": a.budget_s, "args": {k: v for k, v in vars(a).items()},
                  "host": host_info(), "timeline": [], "errors": [], "notes": []}
        self.env = dict(os.environ)
        self.env.setdefault("RUST_BACKTRACE", "1")
        self.env["CUDA_CACHE_PATH"] = os.path.join(a.work, "nv-compute-cache")
        self.env.setdefault("CUDA_CACHE_MAXSIZE", str(4 * 1024 ** 3))
        self.save()

    def left(self):
        return self.deadline - time.perf_counter()

    def save(self):
        os.makedirs(self.a.out, exist_ok=True)
        tmp = self.out_json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.R, f, indent=1, default=str)
        os.replace(tmp, self.out_json)

    def step(self, name, fn, need_s=5):
        """Run fn() (returns a value stored by the caller); record wall time; never raise."""
        if self.left() < need_s:
            self.R["timeline"].append({"step": name, "status": "skipped: out of budget", "at_s": now()})
            log(f"== {name}: SKIPPED (budget: {self.left():.0f} s left, needs {need_s})")
            self.save()
            return None
        log(f"== {name}")
        t = time.perf_counter()
        st = "ok"
        v = None
        try:
            v = fn()
        except Exception as e:  # noqa: BLE001
            st = f"error: {type(e).__name__}: {e}"
            self.R["errors"].append({"step": name, "error": st, "traceback": tail(traceback.format_exc(), 4000)})
            log(f"   {st}")
        self.R["timeline"].append({"step": name, "status": st, "at_s": round(t - T0, 2),
                                   "wall_s": round(time.perf_counter() - t, 2)})
        self.save()
        return v

    def bin(self, args, timeout, tag, device="cpu", dtype="f32"):
        """Run the perceptio binary; stdout/stderr kept under work/logs/<tag>.*"""
        t = min(timeout, max(1.0, self.left()))
        argv = [self.a.binary] + [str(x) for x in args]
        if device is not None:
            argv += ["--device", device, "--dtype", dtype]
        logs = os.path.join(self.a.work, "logs")
        r = run_cmd(argv, t, env=self.env, stdout_path=os.path.join(logs, tag + ".stdout"),
                    stderr_path=os.path.join(logs, tag + ".stderr"))
        r["json"] = parse_json_out(r["stdout"])
        return r


def host_info():
    h = {"hostname": platform.node(), "python": platform.python_version(), "nproc": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for ln in out.splitlines():
            if ln.startswith(("Model name", "CPU(s):", "Vendor ID")):
                k, v = ln.split(":", 1)
                h[k.strip()] = v.strip()
    except Exception:  # noqa: BLE001
        pass
    try:
        with open("/proc/meminfo") as f:
            h["mem_total_kb"] = int(f.readline().split()[1])
    except Exception:  # noqa: BLE001
        pass
    return h


# ---- preflight -----------------------------------------------------------------------------------

LIB_SONAMES = ("libcuda.so.1", "libcublas.so.13", "libcublasLt.so.13", "libcudart.so.13", "libcurand.so.10",
               "libnvrtc.so.13")


def candidate_lib_dirs(extra=None):
    dirs = []
    try:
        import site
        sp = list(site.getsitepackages()) + [site.getusersitepackages()]
    except Exception:  # noqa: BLE001
        sp = []
    sp += [p for p in sys.path if p.endswith("site-packages")]
    for s in dict.fromkeys(sp):
        dirs += sorted(glob.glob(os.path.join(s, "nvidia", "cu1*", "lib")))
        dirs += sorted(glob.glob(os.path.join(s, "nvidia", "*", "lib")))
        dirs += [os.path.join(s, "torch", "lib")]
    dirs += ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
    dirs += sorted(glob.glob("/usr/local/cuda-1*/lib64"), reverse=True)
    dirs += ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib64"]
    if extra:
        dirs += extra  # last resort: libraries carried in target/gpu-carry (unpacked by gpu-check.sh)
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def search_libs(names, roots=("/usr/local", "/opt", "/usr/lib", "/usr/lib64", "/root"), limit_s=15.0):
    """A bounded walk for sonames no known place has: {soname: dir}."""
    found, t = {}, time.perf_counter()
    for r in roots:
        for dp, dns, fns in os.walk(r):
            if time.perf_counter() - t > limit_s:
                return found
            dns[:] = [d for d in dns if d not in ("proc", "sys", "__pycache__", "include", "share", "doc", "src")]
            for n in names:
                if n in fns and n not in found:
                    found[n] = dp
            if len(found) == len(names):
                return found
    return found


def ldd_missing(binary, env):
    r = run_cmd(["ldd", binary], 30, env=env)
    missing = re.findall(r"^\s*(\S+)\s+=>\s+not found", r["stdout"], re.M)
    return r, missing


def preflight(c):
    a = c.a
    P = c.R.setdefault("preflight", {})
    # nvidia-smi
    if shutil.which("nvidia-smi"):
        q = run_cmd(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm",
                     "--format=csv,noheader"], 30)
        full = run_cmd(["nvidia-smi"], 30)
        m = re.search(r"CUDA Version:\s*([\d.]+)", full["stdout"])
        fields = [x.strip() for x in q["stdout"].strip().split("\n")[0].split(",")] if q["rc"] == 0 else []
        P["nvidia_smi"] = {"ok": q["rc"] == 0, "query": q["stdout"].strip(), "cuda_version": m.group(1) if m else None,
                           "gpu_name": fields[0] if fields else None, "driver_version": fields[1] if len(fields) > 1 else None,
                           "memory_total": fields[2] if len(fields) > 2 else None,
                           "compute_cap": fields[3] if len(fields) > 3 else None, "full": tail(full["stdout"], 3000)}
    else:
        P["nvidia_smi"] = {"ok": False, "error": "nvidia-smi not on PATH"}
    # the binary
    b = a.binary
    info = {"path": b, "exists": os.path.isfile(b)}
    if info["exists"]:
        import hashlib
        hsh = hashlib.sha256()
        with open(b, "rb") as f:
            for blk in iter(lambda: f.read(1 << 20), b""):
                hsh.update(blk)
        info.update(size=os.path.getsize(b), sha256=hsh.hexdigest(), source=a.binary_source or b)
        if a.expected_sha256:
            info["expected_sha256"] = a.expected_sha256
            info["sha256_ok"] = a.expected_sha256 == info["sha256"]
    P["binary"] = info
    # ldd + LD_LIBRARY_PATH
    r, missing = ldd_missing(b, c.env)
    L = {"initial_missing": missing, "ld_library_path_before": c.env.get("LD_LIBRARY_PATH", "")}
    added = []
    if missing:
        dirs = candidate_lib_dirs([os.path.join(a.work, "carried-lib")])
        left = []
        for so in missing:
            for d in dirs:
                if os.path.exists(os.path.join(d, so)):
                    if d not in added:
                        added.append(d)
                    break
            else:
                left.append(so)
        if left:
            L["walk_found"] = search_libs(left)
            for so, d in L["walk_found"].items():
                if d not in added:
                    added.append(d)
        if added:
            c.env["LD_LIBRARY_PATH"] = ":".join(added + [p for p in c.env.get("LD_LIBRARY_PATH", "").split(":") if p])
        r, missing = ldd_missing(b, c.env)
        L["searched_dirs"] = dirs
    L.update(added_dirs=added, missing_after=missing, ld_library_path=c.env.get("LD_LIBRARY_PATH", ""),
             output=tail(r["stdout"], 3000))
    resolved = {}
    for so in LIB_SONAMES:
        m = re.search(r"^\s*" + re.escape(so) + r"\s+=>\s+(/\S+)", r["stdout"], re.M)
        if m:
            resolved[so] = m.group(1)
    L["resolved"] = resolved
    P["ldd"] = L
    if missing:
        c.R["notes"].append("libraries not found even after searching torch's nvidia/*/lib dirs: " + ", ".join(missing))
    # does it start?
    v = c.bin(["--version"], 30, "version", device=None)
    P["binary_starts"] = {"ok": v["rc"] == 0, "rc": v["rc"], "version": v["stdout"].strip(),
                          "stderr": tail(v["stderr"], 2000), "error": v.get("error")}
    if v["rc"] != 0:
        msg = ("THE BINARY CANNOT START: rc=%s %s; ldd missing: %s. Check that it is the stripped CUDA build, that "
               "libcuda.so.1 (driver) and libcublas.so.13/libcudart.so.13/libcurand.so.10 are on the loader path."
               % (v["rc"], tail(v["stderr"] or v.get("error") or "", 600), missing))
        c.R["notes"].append(msg)
        log(msg)
    # Python side
    c.R["python"] = python_info(a.python_probe)
    c.save()


def python_info(probe):
    code = ("import json,sys\nr={'python':sys.version.split()[0]}\n"
            "try:\n import torch;r['torch']=torch.__version__;r['cuda_available']=torch.cuda.is_available()\n"
            " r['torch_cuda']=torch.version.cuda\n"
            " if torch.cuda.is_available():\n  r['device']=torch.cuda.get_device_name(0);"
            "r['capability']=list(torch.cuda.get_device_capability(0))\n"
            "except Exception as e: r['torch']='unavailable: %s'%e\n"
            "for m in ('transformers','tokenizers','numpy','PIL','sam2','hydra','omegaconf','iopath'):\n"
            " try:\n  mod=__import__(m);r[m]=getattr(mod,'__version__','present')\n"
            " except Exception as e: r[m]='unavailable: %s'%e\n"
            "print(json.dumps(r))\n")
    r = run_cmd([sys.executable, "-c", code], 120)
    try:
        return json.loads(r["stdout"].strip().splitlines()[-1])
    except Exception:  # noqa: BLE001
        return {"error": tail(r["stderr"], 1500)}


# ---- correctness -----------------------------------------------------------------------------------

def correctness_cases(c):
    w = os.path.join(c.a.work, "fixtures")
    sa2va = os.path.join(w, "sa2va-tiny")
    perc = os.path.join(w, "perceptio-tiny")
    if not os.path.isdir(sa2va):
        assemble_sa2va(sa2va)
    if not os.path.isdir(perc):
        assemble_sa2va(perc)
        add_depth_tokens(perc)
    block = os.path.join(w, "tiny_sam2_block.json")
    with open(block, "w") as f:  # the block tests/segment.rs passes with --sam2-config
        json.dump({"sam2": {"trunk": {"num_heads": 1, "global_att_blocks": [3], "window_spec": [8, 4, 4, 2]},
                            "decoder": {"num_heads": 2}}}, f)
    q2 = os.path.join(FIX, "internvl/tiny-qwen2")
    il2 = os.path.join(FIX, "internvl/tiny-internlm2")
    pt = os.path.join(FIX, "sam2/tiny_sam2.pt")
    da = os.path.join(FIX, "depth_anything/tiny")
    gen = ["--max-new-tokens", "16"]
    cases = [
        # name, kind, args (without --device/--dtype); {npy} is replaced by a per-run path
        ("ask_qwen2_chelsea", "ask", ["ask", CHELSEA, "Describe the image.", "--model", q2, "--max-tiles", "2", "--json"] + gen),
        ("ask_qwen2_portrait", "ask", ["ask", PORTRAIT, "What is in the cup?", "--model", q2, "--max-tiles", "6", "--json"] + gen),
        ("ask_internlm2_chelsea", "ask", ["ask", CHELSEA, "Describe the image.", "--model", il2, "--max-tiles", "2", "--json"] + gen),
        ("ask_sa2va_chelsea", "ask", ["ask", CHELSEA, "Please segment the cat.", "--model", sa2va, "--max-tiles", "2", "--json"] + gen),
        ("segment_force_chelsea", "segment", ["segment", CHELSEA, "the cat", "--model", sa2va, "--force-seg", "--max-tiles", "2", "--json"]),
        ("segment_force_portrait", "segment", ["segment", PORTRAIT, "the cup", "the hand", "--model", sa2va, "--force-seg", "--max-tiles", "4", "--json"]),
        ("segment_generate_chelsea", "segment", ["segment", CHELSEA, "the cat", "--model", sa2va, "--max-tiles", "2", "--max-new-tokens", "12", "--json"]),
        ("sam2_point_meta_pt", "points", ["segment", CHELSEA, "--point", "225,150", "--sam2", pt, "--sam2-config", block, "--json"]),
        ("sam2_box_meta_pt", "points", ["segment", CHELSEA, "--box", "100,50,350,250", "--sam2", pt, "--sam2-config", block, "--json"]),
        ("sam2_points_in_sa2va", "points", ["segment", CHELSEA, "--point", "225,150", "--point", "100,80,0", "--model", sa2va, "--json"]),
        ("depth_teacher", "depth", ["depth", CHELSEA, "--source", "teacher", "--teacher", da, "--npy", "{npy}", "--json"]),
        ("depth_model_tokens", "depth_model", ["depth", CHELSEA, "--model", perc, "--force-depth", "--max-tiles", "2",
                                               "--max-new-tokens", "12", "--npy", "{npy}", "--json"]),
    ]
    return cases


def extract(kind, r, npy):
    """The comparable parts of one run."""
    e = {"rc": r["rc"], "wall_s": r["wall_s"], "timed_out": r["timed_out"]}
    ok_rc = (0, 3) if kind in ("segment", "depth_model") else (0,)
    e["ok"] = r["rc"] in ok_rc and bool(r["json"])
    if not e["ok"]:
        e["stderr"] = tail(r["stderr"], 1500)
        e["stdout"] = tail(r["stdout"], 500)
        return e
    js = r["json"]
    if kind == "ask":
        j = js[0]
        e.update(token_ids=j.get("token_ids"), answer=j.get("answer"), prompt_tokens=j.get("prompt_tokens"),
                 tiles=j.get("tiles"), segments=[s.get("mask") for s in j.get("segments", [])],
                 seg_scores=[s.get("score") for s in j.get("segments", [])], device=j.get("device"),
                 dtype=j.get("dtype"), timings=j.get("timings"))
    elif kind == "segment":
        e["items"] = [{"token_ids": j.get("token_ids"), "mask": j.get("mask"), "area": j.get("area"),
                       "scores": j.get("scores"), "object_scores": j.get("object_scores"),
                       "seg_count": j.get("seg_count"), "text": j.get("text"), "tiles": j.get("tiles"),
                       "timings": j.get("timings")} for j in js]
    elif kind == "points":
        j = js[0]
        e.update(mask=j.get("mask"), area=j.get("area"), scores=j.get("scores"), object_score=j.get("object_score"),
                 sam2_variant=j.get("sam2_variant"), timings=j.get("timings"))
    elif kind in ("depth", "depth_model"):
        j = js[0]
        e.update(min=j.get("min"), max=j.get("max"), tokens=j.get("tokens"), timings=j.get("timings"), npy=npy)
    return e


def compare(kind, ref, got):
    """got vs ref (both from extract)."""
    out = {}
    if not (ref.get("ok") and got.get("ok")):
        return {"comparable": False, "why": "a run failed" if ref.get("ok") else "the reference run failed"}
    out["comparable"] = True
    try:
        if kind == "ask":
            a, b = ref.get("token_ids") or [], got.get("token_ids") or []
            out.update(token_ids_equal=a == b, n_ref=len(a), n_got=len(b), first_mismatch=first_mismatch(a, b))
            if ref.get("segments") or got.get("segments"):
                n = min(len(ref["segments"]), len(got["segments"]))
                out["seg_count_equal"] = len(ref["segments"]) == len(got["segments"])
                out["mask_ious"] = [round(mask_iou(ref["segments"][i], got["segments"][i]), 6) for i in range(n)]
        elif kind == "segment":
            items = []
            for x, y in zip(ref["items"], got["items"]):
                it = {"token_ids_equal": x["token_ids"] == y["token_ids"],
                      "first_mismatch": first_mismatch(x["token_ids"] or [], y["token_ids"] or []),
                      "seg_count": [x["seg_count"], y["seg_count"]],
                      "mask_iou": round(mask_iou(x["mask"], y["mask"]), 6),
                      "area": [x["area"], y["area"]],
                      "scores_max_abs_diff": max_abs(x["scores"], y["scores"]),
                      "object_scores_max_abs_diff": max_abs(x["object_scores"], y["object_scores"])}
                items.append(it)
            out["items"] = items
            out["token_ids_equal"] = all(i["token_ids_equal"] for i in items) and len(ref["items"]) == len(got["items"])
            out["min_mask_iou"] = min((i["mask_iou"] for i in items), default=None)
        elif kind == "points":
            out.update(mask_iou=round(mask_iou(ref["mask"], got["mask"]), 6), area=[ref["area"], got["area"]],
                       scores_max_abs_diff=max_abs(ref["scores"], got["scores"]),
                       object_score_abs_diff=(abs(ref["object_score"] - got["object_score"])
                                              if ref.get("object_score") is not None and got.get("object_score") is not None else None))
        elif kind in ("depth", "depth_model"):
            import numpy as np
            x = np.load(ref["npy"]).astype(np.float64)
            y = np.load(got["npy"]).astype(np.float64)
            if x.shape != y.shape:
                out.update(shape=[list(x.shape), list(y.shape)], max_abs_diff=None)
            else:
                d = np.abs(x - y)
                rng = float(x.max() - x.min()) or 1.0
                out.update(shape=list(x.shape), max_abs_diff=float(d.max()), mean_abs_diff=float(d.mean()),
                           ref_range=rng, max_abs_diff_rel_range=float(d.max()) / rng)
            if kind == "depth_model":
                out["tokens_equal"] = ref.get("tokens") == got.get("tokens")
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def verdict(kind, cmp, strict):
    """Pass/fail of one comparison (strict = f32; bf16 is reported against loose bounds only)."""
    if not cmp.get("comparable"):
        return False
    if "error" in cmp:
        return False
    iou_min = F32_MIN_IOU if strict else 0.9
    if kind == "ask":
        ok = cmp["token_ids_equal"] if strict else True
        if cmp.get("mask_ious"):
            ok = ok and cmp.get("seg_count_equal", True) and min(cmp["mask_ious"]) >= iou_min
        return bool(ok)
    if kind == "segment":
        ok = (cmp["token_ids_equal"] or not strict) and (cmp["min_mask_iou"] or 0) >= iou_min
        return bool(ok)
    if kind == "points":
        return cmp["mask_iou"] >= iou_min and (cmp["scores_max_abs_diff"] or 0) < (1e-3 if strict else 0.1)
    if kind in ("depth", "depth_model"):
        rel = cmp.get("max_abs_diff_rel_range")
        ok = rel is not None and rel < (1e-3 if strict else 0.05)
        if kind == "depth_model" and strict:
            ok = ok and cmp.get("tokens_equal", False)
        return bool(ok)
    return False


def correctness(c):
    a = c.a
    C = c.R.setdefault("correctness", {})
    if a.dry_run_cpu:
        configs = [("cpu_f32", "cpu", "f32"), ("cpu_f32_repeat", "cpu", "f32")]
        C["note"] = ("dry-run-cpu: cuda_f32 and cuda_bf16 are SKIPPED (no GPU); a second CPU f32 run stands in for "
                     "them so the comparison plumbing runs (it also checks that runs are deterministic)")
    else:
        configs = [("cpu_f32", "cpu", "f32"), ("cuda_f32", "cuda", "f32"), ("cuda_bf16", "cuda", "bf16")]
    C["configs"] = [x[0] for x in configs]
    C["reference"] = "cpu_f32"
    cases = correctness_cases(c)
    C["cases"] = {}
    for name, kind, args in cases:
        cs = C["cases"].setdefault(name, {"kind": kind, "runs": {}, "compare": {}})
        cs["command"] = " ".join(["perceptio"] + [os.path.relpath(x, ROOT) if os.path.isabs(str(x)) and str(x).startswith(ROOT) else str(x) for x in args])
        for cfg, dev, dt in configs:
            if c.left() < 15:
                cs["runs"][cfg] = {"ok": False, "skipped": "out of budget"}
                continue
            npy = os.path.join(a.work, "runs", name, cfg + ".npy")
            os.makedirs(os.path.dirname(npy), exist_ok=True)
            argv = [npy if x == "{npy}" else x for x in args]
            r = c.bin(argv, a.case_timeout, f"{name}.{cfg}", device=dev, dtype=dt)
            cs["runs"][cfg] = extract(kind, r, npy)
            log(f"   {name:28s} {cfg:14s} rc={r['rc']} {r['wall_s']:.2f}s")
        ref = cs["runs"].get("cpu_f32", {})
        for cfg, _, dt in configs[1:]:
            got = cs["runs"].get(cfg, {})
            cmpd = compare(kind, ref, got)
            cmpd["pass"] = verdict(kind, cmpd, strict=(dt == "f32"))
            cs["compare"][cfg] = cmpd
        c.save()
    # summary
    S = {}
    for cfg, _, dt in configs[1:]:
        rows = [(n, x["compare"].get(cfg, {})) for n, x in C["cases"].items()]
        S[cfg] = {"passed": sum(1 for _, r in rows if r.get("pass")), "cases": len(rows),
                  "failed": [n for n, r in rows if not r.get("pass")],
                  "strict": dt == "f32",
                  "min_mask_iou": min([v for _, r in rows for v in mask_ious(r)] or [None], key=lambda v: 2 if v is None else v),
                  "token_ids_equal": sum(1 for _, r in rows if r.get("token_ids_equal")),
                  "token_cases": sum(1 for _, r in rows if "token_ids_equal" in r),
                  "max_depth_abs_diff": max([r.get("max_abs_diff") for _, r in rows if r.get("max_abs_diff") is not None] or [None],
                                            key=lambda v: -1 if v is None else v)}
    C["summary"] = S
    C["cpu_ref_ok"] = sum(1 for x in C["cases"].values() if x["runs"].get("cpu_f32", {}).get("ok"))


def mask_ious(r):
    v = []
    if "mask_iou" in r:
        v.append(r["mask_iou"])
    if r.get("min_mask_iou") is not None:
        v.append(r["min_mask_iou"])
    v += r.get("mask_ious") or []
    return v


def first_cuda(c):
    """The first CUDA process: a tiny ask. Its wall time includes the driver's PTX JIT of candle's kernels."""
    q2 = os.path.join(FIX, "internvl/tiny-qwen2")
    out = {}
    for dt in ("f32", "bf16"):
        r = c.bin(["ask", CHELSEA, "Hi", "--model", q2, "--max-tiles", "1", "--max-new-tokens", "2", "--json"],
                  c.a.first_cuda_timeout, f"first_cuda_{dt}", device="cuda", dtype=dt)
        out[dt] = {"ok": r["rc"] == 0, "rc": r["rc"], "wall_s": r["wall_s"], "timed_out": r["timed_out"],
                   "stderr": tail(r["stderr"], 2500) if r["rc"] != 0 else tail(r["stderr"], 300)}
    cache = c.env["CUDA_CACHE_PATH"]
    size = 0
    for dp, _, fs in os.walk(cache):
        size += sum(os.path.getsize(os.path.join(dp, f)) for f in fs)
    out["jit_cache_bytes"] = size
    c.R.setdefault("preflight", {})["first_cuda"] = out
    if not out["f32"]["ok"]:
        c.R["notes"].append("the first CUDA run failed: " + out["f32"]["stderr"][-600:])


# ---- real size ---------------------------------------------------------------------------------------

def start_generation(c):
    if c.a.dry_run_cpu or c.a.no_realsize:
        return None
    d = c.a.realsize_dir
    logp = os.path.join(c.a.work, "logs", "gen_realsize.log")
    os.makedirs(os.path.dirname(logp), exist_ok=True)
    argv = [sys.executable, os.path.join(HERE, "gen_sa2va_realsize.py"), "--out", d, "--dtype", "bf16",
            "--device", "auto"]
    f = open(logp, "w")
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=f, start_new_session=True)
    c.R.setdefault("realsize", {})["generation"] = {"argv": argv, "started_at_s": now()}
    return (p, f, time.perf_counter())


def wait_generation(c, g):
    G = c.R["realsize"]["generation"]
    p, f, t = g
    t_wait = time.perf_counter()
    try:
        out, _ = p.communicate(timeout=max(1, min(c.a.gen_timeout - (time.perf_counter() - t), c.left() - 60)))
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        G.update(ok=False, error="timed out")
        return False
    f.close()
    G["rc"] = p.returncode
    G["waited_s"] = round(time.perf_counter() - t_wait, 2)  # the generator ran in the background before that
    G["done_by_s"] = now()
    try:
        G["result"] = json.loads(out.decode().strip().splitlines()[-1])
    except Exception:  # noqa: BLE001
        G["result"] = None
    with open(os.path.join(c.a.work, "logs", "gen_realsize.log")) as lf:
        G["log_tail"] = tail(lf.read(), 1500)
    G["ok"] = p.returncode == 0
    return G["ok"]


def seg_timing(j):
    t = dict(j.get("timings") or {})
    t["compute_s"] = round(sum(t.get(k) or 0 for k in ("vision_s", "llm_s", "sam2_encode_s", "sam2_decode_s")), 4)
    return t


def realsize_runs(c, model, device, dtype, tiny):
    """perceptio at real size (or the tiny Sa2VA in the dry run): segment, ask, eval refcoco --model."""
    a = c.a
    RS = c.R.setdefault("realsize", {})
    runs = RS.setdefault("perceptio", {})
    tmo = a.run_timeout
    if tiny and not os.path.isdir(model):
        assemble_sa2va(model)
    tiles7 = "4" if tiny else "7"

    def record(name, r, kind):
        x = {"rc": r["rc"], "wall_s": r["wall_s"], "timed_out": r["timed_out"]}
        if r["rc"] not in (0, 3) or not r["json"]:
            x["stderr"] = tail(r["stderr"], 2500)
            x["ok"] = False
        else:
            x["ok"] = True
            j = r["json"][0]
            if kind == "segment":
                x.update(timings=seg_timing(j), tiles=j.get("tiles"), token_ids=j.get("token_ids"),
                         seg_count=j.get("seg_count"), area=j.get("area"), mask=j.get("mask"), score=j.get("score"))
            else:
                x.update(timings=j.get("timings"), tiles=j.get("tiles"), prompt_tokens=j.get("prompt_tokens"),
                         tokens_generated=j.get("tokens_generated"), device=j.get("device"), dtype=j.get("dtype"))
                t = x["timings"] or {}
                x["compute_s"] = round((t.get("vision_s") or 0) + (t.get("llm_s") or 0) + (t.get("sam2_s") or 0), 4)
        runs[name] = x
        log(f"   {name:22s} rc={r['rc']} wall {r['wall_s']:.2f}s " +
            (f"compute {x.get('timings', {}).get('compute_s', x.get('compute_s'))}" if x["ok"] else tail(r["stderr"], 200)))
        c.save()

    seg = ["segment", CHELSEA, "the cat", "--model", model, "--force-seg", "--json"]
    ask = ["ask", CHELSEA, "Describe the image in detail.", "--model", model, "--json", "--max-tiles", "1"]
    plan = [
        ("segment_1tile_a", "segment", seg + ["--max-tiles", "1"], dtype),
        ("segment_1tile_b", "segment", seg + ["--max-tiles", "1"], dtype),
        ("segment_7tiles", "segment", seg + ["--max-tiles", tiles7], dtype),
        ("ask_100_a", "ask", ask + ["--max-new-tokens", "100"], dtype),
        ("ask_100_b", "ask", ask + ["--max-new-tokens", "100"], dtype),
        ("ask_1", "ask", ask + ["--max-new-tokens", "1"], dtype),
    ]
    if device == "cuda":
        plan.append(("segment_1tile_f32", "segment", seg + ["--max-tiles", "1"], "f32"))
    plan.append(("segment_generate_1tile", "segment",
                 ["segment", CHELSEA, "the cat", "--model", model, "--json", "--max-tiles", "1", "--max-new-tokens", "8"], dtype))
    for name, kind, args, dt in plan:
        if c.left() < 20:
            runs[name] = {"ok": False, "skipped": "out of budget"}
            continue
        r = c.bin(args, tmo, "realsize." + name, device=device, dtype=dt)
        record(name, r, kind)
    f32 = runs.get("segment_1tile_f32", {})
    b16 = runs.get("segment_1tile_b", {})
    if f32.get("ok") and b16.get("ok"):
        try:
            RS["bf16_vs_f32_segment_mask_iou"] = round(mask_iou(f32["mask"], b16["mask"]), 6)
        except Exception as e:  # noqa: BLE001
            RS["bf16_vs_f32_segment_mask_iou"] = f"error: {e}"
    for k in runs.values():
        k.pop("mask", None)
    # eval refcoco --model: samples/s and warm per-stage timings from --log-samples
    d = os.path.join(a.work, "refcoco-set")
    gt, images, n = make_refcoco_set(d, n_images=6, per_image=2)
    RS["eval_set"] = {"samples": n, "images": 6, "gt": gt}
    for tiles in ("1", tiles7):
        name = f"eval_refcoco_{tiles}tile" + ("s" if tiles != "1" else "")
        if c.left() < 25:
            runs[name] = {"ok": False, "skipped": "out of budget"}
            continue
        pred = os.path.join(d, f"pred_{tiles}.jsonl")
        slog = os.path.join(d, f"samples_{tiles}.jsonl")
        for p in (pred, slog, pred + ".done.json"):
            if os.path.exists(p):
                os.remove(p)
        r = c.bin(["eval", "refcoco", "--annotations", gt, "--images", images, "--model", model, "--predictions", pred,
                   "--log-samples", slog, "--force-seg", "--max-tiles", tiles, "--json"], tmo * 2,
                  "realsize." + name, device=device, dtype=dtype)
        x = {"rc": r["rc"], "wall_s": r["wall_s"], "ok": r["rc"] == 0, "timed_out": r["timed_out"]}
        m = re.search(r"(\d+) of (\d+) samples predicted now.*?\(([\d.]+) samples/s\)", r["stderr"])
        if m:
            x.update(predicted=int(m.group(1)), planned=int(m.group(2)), samples_per_s=float(m.group(3)))
        if r["json"]:
            x["ciou"] = r["json"][0].get("ciou")
        if r["rc"] != 0:
            x["stderr"] = tail(r["stderr"], 2500)
        samples = []
        if os.path.isfile(slog):
            with open(slog) as f:
                samples = [json.loads(ln) for ln in f if ln.strip()]
        x["per_sample"] = [dict(seg_timing(s), sent_id=s.get("sent_id"), image=s.get("image")) for s in samples]
        # warm: the first sentence of every image but the first (features computed there), after process start
        seen, warm = set(), []
        for s in samples:
            im = s.get("image")
            if im not in seen:
                if seen:
                    warm.append(seg_timing(s))
                seen.add(im)
        reuse = [seg_timing(s) for s in samples if (s.get("timings") or {}).get("sam2_cached")]
        med = lambda xs, k: round(statistics.median([t.get(k) or 0 for t in xs]), 4) if xs else None  # noqa: E731
        x["warm_first_sentence"] = {k: med(warm, k) for k in ("vision_s", "llm_s", "sam2_encode_s", "sam2_decode_s", "compute_s")}
        x["warm_first_sentence"]["n"] = len(warm)
        x["reused_features"] = {k: med(reuse, k) for k in ("llm_s", "sam2_decode_s", "compute_s")}
        x["reused_features"]["n"] = len(reuse)
        runs[name] = x
        log(f"   {name:22s} rc={r['rc']} wall {r['wall_s']:.2f}s {x.get('samples_per_s')} samples/s; warm "
            f"{x['warm_first_sentence']}")
        c.save()


def prompt_lengths(tokenizer_json, tiles_list, tiny):
    """Prompt token counts of perceptio's segment (forced reply included) and ask prompts."""
    tok = None
    try:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(tokenizer_json)
    except Exception:  # noqa: BLE001
        pass
    per_tile = 4 if tiny else 256

    def n(text):
        if tok is None:
            return None
        return len(tok.encode(text, add_special_tokens=False).ids)

    def user(u, tiles):
        img = "<img>" + "<IMG_CONTEXT>" * (per_tile * tiles) + "</img>"
        return "<|im_start|>user\n" + u.replace("<image>", img) + "<|im_end|>\n<|im_start|>assistant\n"

    seg = {t: n(user("<image>\n Please segment the cat in this image.", t) + "Sure, [SEG].") for t in tiles_list}
    ask = n(user("<image>\nDescribe the image in detail.", 1))
    est = tok is None
    if est:
        seg = {t: per_tile * t + 24 for t in tiles_list}
        ask = per_tile + 20
    return {"segment_forced": seg, "ask_1tile": ask, "estimated": est}


def torch_reference_section(c, tiny):
    a = c.a
    RS = c.R.setdefault("realsize", {})
    tiles7 = 4 if tiny else 7
    tokjson = os.path.join(a.tiny_sa2va if tiny else a.realsize_dir, "tokenizer.json")
    pl = prompt_lengths(tokjson, [1, tiles7], tiny)
    ask_run = RS.get("perceptio", {}).get("ask_100_b") or RS.get("perceptio", {}).get("ask_100_a") or {}
    if ask_run.get("prompt_tokens"):
        pl["ask_1tile_perceptio"] = ask_run["prompt_tokens"]
    RS["prompt_lengths"] = pl
    outp = os.path.join(a.work, "torch_reference.json")
    argv = [sys.executable, os.path.abspath(__file__), "--torch-reference", "--torch-out", outp,
            "--torch-device", "cpu" if a.dry_run_cpu else "cuda", "--tiles", f"1,{tiles7}",
            "--prefill", f"{pl['segment_forced'][1]},{pl['segment_forced'][tiles7]}",
            "--ask-prompt", str(pl.get("ask_1tile_perceptio") or pl["ask_1tile"]), "--decode", "100"]
    if tiny:
        argv.append("--tiny")
    r = run_cmd(argv, min(a.torch_timeout, max(5, c.left() - 5)), env=c.env,
                stdout_path=os.path.join(a.work, "logs", "torch_reference.stdout"),
                stderr_path=os.path.join(a.work, "logs", "torch_reference.stderr"))
    T = {"rc": r["rc"], "wall_s": r["wall_s"], "timed_out": r["timed_out"], "argv": argv[2:]}
    if os.path.isfile(outp):
        with open(outp) as f:
            T.update(json.load(f))
    if r["rc"] != 0:
        T["stderr"] = tail(r["stderr"], 3000)
    RS["pytorch"] = T


def stage_table(c, tiny):
    """perceptio vs PyTorch bf16, stage by stage, and the goals."""
    RS = c.R.get("realsize", {})
    P = RS.get("perceptio", {})
    T = (RS.get("pytorch") or {}).get("stages", {})
    tiles7 = "4" if tiny else "7"
    e1 = P.get("eval_refcoco_1tile", {}).get("warm_first_sentence") or {}
    e7 = P.get(f"eval_refcoco_{tiles7}tiles", {}).get("warm_first_sentence") or {}
    s1 = (P.get("segment_1tile_b") or {}).get("timings") or {}
    s7 = (P.get("segment_7tiles") or {}).get("timings") or {}
    a100 = P.get("ask_100_b") if (P.get("ask_100_b") or {}).get("ok") else P.get("ask_100_a") or {}
    a1 = P.get("ask_1") or {}

    def pick(*vals):
        for v in vals:
            if v:
                return v
        return None

    dec_p = None
    if a100.get("ok") and a1.get("ok"):
        n = (a100.get("tokens_generated") or 0) - (a1.get("tokens_generated") or 0)
        if n > 0:
            dec_p = ((a100["timings"]["llm_s"] - a1["timings"]["llm_s"]) / n)
    tt = lambda k: (T.get(k) or {}).get("median_s")  # noqa: E731
    a100t = a100.get("timings") or {}
    rows = [
        # stage, perceptio, PyTorch, sync_safe (perceptio's number ends at a host sync on CUDA), note
        ("vision 1 tile (InternViT-300M + pixel shuffle + mlp1)", pick(e1.get("vision_s"), s1.get("vision_s")), tt("vision_1tile"), False,
         "perceptio: eval warm median (else the segment run), includes image preprocessing; PyTorch: the model only"),
        (f"vision {tiles7} tiles", pick(e7.get("vision_s"), s7.get("vision_s")), tt(f"vision_{tiles7}tiles"), False, "as above"),
        ("LLM forward, segment prompt + forced reply, 1 tile", pick(e1.get("llm_s"), s1.get("llm_s")), tt("prefill_segment_1tile"), False,
         "perceptio: llm_s of --force-seg (one forward, hidden states kept); PyTorch: prefill, logits_to_keep=1"),
        (f"LLM forward, segment prompt + forced reply, {tiles7} tiles", pick(e7.get("llm_s"), s7.get("llm_s")),
         tt(f"prefill_segment_{tiles7}tiles"), False, ""),
        ("LLM decode, per token (after the ask prompt)", dec_p, tt("decode_per_token"), True,
         "perceptio: (llm_s(100 new tokens) - llm_s(1)) / 99 from two ask processes"),
        ("ask: LLM prefill + 100 new tokens", a100t.get("llm_s"), tt("ask_prefill_plus_100"), True, ""),
        ("SAM2-L image encoder 1024² (bf16)", pick(e1.get("sam2_encode_s"), s1.get("sam2_encode_s")), tt("sam2_encode"), False,
         "perceptio includes the 1024² resize + normalise; PyTorch: forward_image + backbone preparation"),
        ("SAM2 prompt encoder + mask decoder + upsampling", pick(e1.get("sam2_decode_s"), s1.get("sam2_decode_s")), tt("sam2_decode"), True,
         "ends with the mask on the host (on CUDA it also absorbs GPU work queued by earlier, unsynchronised stages)"),
        ("segment 1 tile, all compute", pick(e1.get("compute_s"), s1.get("compute_s")), tt("segment_1tile_total"), True,
         "vision + LLM + SAM2 encode + decode (PyTorch: sum of its stage medians)"),
        (f"segment {tiles7} tiles, all compute", pick(e7.get("compute_s"), s7.get("compute_s")), tt(f"segment_{tiles7}tiles_total"), True, ""),
        ("ask 1 tile, 100 new tokens, all compute", a100.get("compute_s"), tt("ask_total"), True,
         "perceptio: vision_s + llm_s (+ sam2_s) of one ask process; PyTorch: vision 1 tile + prefill + 100 tokens"),
    ]
    table = []
    for stage, p, t, sync_safe, note in rows:
        ratio = round(p / t, 3) if p and t else None
        table.append({"stage": stage, "perceptio_s": round(p, 4) if p else None, "pytorch_bf16_s": round(t, 4) if t else None,
                      "ratio": ratio, "level": (ratio <= 1.0) if ratio else None,
                      "within_10pct": (ratio <= 1.1) if ratio else None, "sync_safe": sync_safe, "note": note})
    if a100t.get("decode_s") is not None:
        RS["perceptio_ask_split"] = {k: a100t.get(k) for k in ("prefill_s", "decode_s", "prefill_tok_per_s", "decode_tok_per_s")}
    if not tiny:
        RS["stage_timing_caveat"] = (
            "perceptio times its stages with the host clock and (as of this check) no device synchronize: on CUDA a "
            "stage that ends without a device-to-host copy (vision_s, sam2_encode_s, the --force-seg llm_s, prefill_s) "
            "can stop the clock before its kernels finish, and the next stage that waits (sam2_decode_s, decode) absorbs "
            "the rest. Rows with sync_safe=false may therefore flatter one stage and penalise the next; the totals are exact.")
    RS["stages"] = table
    seg_warm = e1.get("compute_s")
    seg_proc = s1.get("compute_s")
    ask_c = a100.get("compute_s")
    G = {
        "segment_1tile_under_0.5s": {"goal_s": GOAL_SEGMENT_1TILE_S, "warm_in_process_s": seg_warm,
                                     "single_process_compute_s": seg_proc,
                                     "single_process_wall_s": (P.get("segment_1tile_b") or {}).get("wall_s"),
                                     "met": (seg_warm < GOAL_SEGMENT_1TILE_S) if seg_warm else None},
        "ask_100_tokens_under_1.5s": {"goal_s": GOAL_ASK_100_S, "compute_s": ask_c,
                                      "wall_s": a100.get("wall_s"), "tokens_generated": a100.get("tokens_generated"),
                                      "met": (ask_c < GOAL_ASK_100_S) if ask_c else None,
                                      "note": "vision_s + llm_s (+ sam2_s) of the second ask process (first call in a process)"},
        "stages_level_with_pytorch_bf16": {"level": [r["stage"] for r in table if r["level"]],
                                           "behind": [f"{r['stage']} ({r['ratio']}x)" for r in table if r["level"] is False],
                                           "unmeasured": [r["stage"] for r in table if r["ratio"] is None],
                                           "met": all(r["level"] for r in table if r["ratio"] is not None) if any(r["ratio"] for r in table) else None},
    }
    if tiny:
        G["note"] = "dry-run-cpu: tiny model on the CPU; the goals are evaluated only to exercise the plumbing"
    c.R["goals"] = G


# ----------------------------------------------------------------------------------------------
# --torch-reference: PyTorch bf16 stage timings (own process)
# ----------------------------------------------------------------------------------------------

REAL_VIT = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                image_size=[448, 448], patch_size=[14, 14])
TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                image_size=[56, 56], patch_size=[14, 14])
REAL_LLM = dict(vocab_size=151679, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2)
TINY_LLM = dict(vocab_size=417, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)


def torch_reference(a):
    import inspect
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    torch.set_grad_enabled(False)
    dev = torch.device(a.torch_device)
    dt = torch.bfloat16
    R = {"env": {"torch": torch.__version__, "device": str(dev), "dtype": "bfloat16", "tiny": a.tiny}, "stages": {},
         "errors": []}
    try:
        if dev.type == "cuda":
            R["env"]["gpu"] = torch.cuda.get_device_name(0)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            torch.set_num_threads(max(1, os.cpu_count() or 1))
    except Exception as e:  # noqa: BLE001
        R["errors"].append({"stage": "device", "error": f"{type(e).__name__}: {e}"})
        with open(a.torch_out, "w") as f:
            json.dump(R, f, indent=1)
        return 1
    try:
        import transformers
        R["env"]["transformers"] = transformers.__version__
    except Exception as e:  # noqa: BLE001
        R["env"]["transformers"] = f"unavailable: {e}"

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timeit(name, fn, warmup=2, runs=5, **extra):
        if a.torch_quick:  # testing the code paths only
            warmup, runs = 0, 1
        try:
            for _ in range(warmup):
                fn()
            sync()
            ts = []
            for _ in range(runs):
                sync()
                t = time.perf_counter()
                fn()
                sync()
                ts.append(time.perf_counter() - t)
            R["stages"][name] = dict(median_s=round(statistics.median(ts), 5), min_s=round(min(ts), 5),
                                     runs_s=[round(x, 5) for x in ts], **extra)
            log(f"[torch] {name}: {statistics.median(ts) * 1e3:.2f} ms")
        except Exception as e:  # noqa: BLE001
            R["errors"].append({"stage": name, "error": f"{type(e).__name__}: {e}", "traceback": tail(traceback.format_exc(), 3000)})
            log(f"[torch] {name}: ERROR {e}")

    def save():
        with open(a.torch_out, "w") as f:
            json.dump(R, f, indent=1)

    tiles = [int(x) for x in a.tiles.split(",")]
    prefill = [int(x) for x in a.prefill.split(",")]
    # --- InternViT + pixel shuffle + mlp1
    try:
        from transformers import InternVLVisionConfig, InternVLVisionModel
        vc = dict(TINY_VIT if a.tiny else REAL_VIT)
        vc.update(num_channels=3, hidden_act="gelu", layer_norm_eps=1e-6, norm_type="layer_norm", attention_bias=True,
                  use_qk_norm=False, layer_scale_init_value=0.1, use_mean_pooling=True,
                  use_absolute_position_embeddings=True, use_mask_token=False, attention_dropout=0.0,
                  projection_dropout=0.0, hidden_dropout_prob=0.0)
        t = time.perf_counter()
        with torch.device(dev):
            vit = InternVLVisionModel(InternVLVisionConfig(**vc))
        vit = vit.to(dt).eval()
        try:
            vit.set_attn_implementation("sdpa")
        except Exception as e:  # noqa: BLE001
            R["errors"].append({"stage": "vit set_attn_implementation", "error": str(e)})
        D = vc["hidden_size"]
        H = (TINY_LLM if a.tiny else REAL_LLM)["hidden_size"]
        mlp1 = nn.Sequential(nn.LayerNorm(4 * D), nn.Linear(4 * D, H), nn.GELU(), nn.Linear(H, H)).to(dev, dt).eval()
        R["env"]["vit_build_s"] = round(time.perf_counter() - t, 2)
        S = vc["image_size"][0]

        def vision(px):
            h = vit(pixel_values=px).last_hidden_state[:, 1:, :]
            n, L, C = h.shape
            s = int(L ** 0.5)
            x = h.reshape(n, s, s, C)
            x = x.view(n, s, s // 2, C * 2).permute(0, 2, 1, 3).contiguous()
            x = x.view(n, s // 2, s // 2, C * 4).permute(0, 2, 1, 3).contiguous()
            return mlp1(x.reshape(n, -1, C * 4))

        for n in tiles:
            px = torch.randn(n, 3, S, S, device=dev, dtype=dt)
            timeit(f"vision_{n}tile" + ("s" if n > 1 else ""), lambda: vision(px), warmup=2, runs=5, tiles=n,
                   what="InternVLVisionModel (sdpa) + pixel shuffle v2 + mlp1, bf16")
        del vit, mlp1
    except Exception as e:  # noqa: BLE001
        R["errors"].append({"stage": "vision", "error": f"{type(e).__name__}: {e}", "traceback": tail(traceback.format_exc(), 3000)})
    save()
    # --- Qwen2.5-0.5B
    try:
        from transformers import Qwen2Config, Qwen2ForCausalLM
        lc = dict(TINY_LLM if a.tiny else REAL_LLM)
        specials = dict(bos_token_id=400, eos_token_id=402, pad_token_id=None) if a.tiny else \
            dict(bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)
        lc.update(hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  use_sliding_window=False, attention_dropout=0.0, use_cache=True, **specials)
        try:
            cfg = Qwen2Config(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **lc)
        except TypeError:
            cfg = Qwen2Config(rope_theta=1000000.0, **lc)
        t = time.perf_counter()
        with torch.device(dev):
            llm = Qwen2ForCausalLM(cfg)
        llm = llm.to(dt).eval()
        try:
            llm.set_attn_implementation("sdpa")
        except Exception:  # noqa: BLE001
            pass
        R["env"]["llm_build_s"] = round(time.perf_counter() - t, 2)
        params = set(inspect.signature(llm.forward).parameters)
        ck = "cache" if "cache" in params else "past_key_values"
        R["env"]["cache_kwarg"] = ck
        emb = llm.get_input_embeddings()
        V = lc["vocab_size"]
        g = torch.Generator(device=dev).manual_seed(1)
        names = ["prefill_segment_1tile", f"prefill_segment_{tiles[-1]}tiles"]
        for nm, T in zip(names, prefill):
            ids = torch.randint(0, min(V, 151000), (1, T), device=dev, generator=g)
            e = emb(ids)
            timeit(nm, lambda: llm(inputs_embeds=e, use_cache=True, logits_to_keep=1).logits, warmup=2, runs=5,
                   tokens=T, what="Qwen2ForCausalLM sdpa, inputs_embeds, use_cache, logits_to_keep=1")
        P = a.ask_prompt
        N = a.decode
        ids = torch.randint(0, min(V, 151000), (1, P), device=dev, generator=g)
        e = emb(ids)

        def cache_of(out):
            v = getattr(out, "cache", None)
            return v if v is not None else getattr(out, "past_key_values", None)

        def ask_run(decode_only_box=None):
            out = llm(inputs_embeds=e, use_cache=True, logits_to_keep=1)
            cache = cache_of(out)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            if decode_only_box is not None:
                sync()
                t0 = time.perf_counter()
            for _ in range(N - 1):
                out = llm(input_ids=nxt, use_cache=True, **{ck: cache})
                cache = cache_of(out)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            if decode_only_box is not None:
                sync()
                decode_only_box.append(time.perf_counter() - t0)
            return nxt

        timeit("ask_prefill_plus_100", lambda: ask_run(), warmup=1, runs=3, prompt=P, new_tokens=N,
               what="prefill + (N-1) single-token forwards with KV cache, greedy argmax (as generate)")
        box = []
        try:
            for _ in range(1 if a.torch_quick else 3):
                ask_run(box)
            R["stages"]["decode_per_token"] = dict(median_s=round(statistics.median(box) / (N - 1), 6),
                                                   runs_s=[round(x, 4) for x in box], tokens=N - 1, prompt=P)
            log(f"[torch] decode_per_token: {statistics.median(box) / (N - 1) * 1e3:.2f} ms")
        except Exception as e:  # noqa: BLE001
            R["errors"].append({"stage": "decode_per_token", "error": str(e)})
        del llm
    except Exception as e:  # noqa: BLE001
        R["errors"].append({"stage": "llm", "error": f"{type(e).__name__}: {e}", "traceback": tail(traceback.format_exc(), 3000)})
    save()
    # --- SAM2 hiera-L (Sa2VA's: SAM2, not 2.1), bf16 weights under bf16 autocast, [SEG]-style sparse prompt
    try:
        from sam2.build_sam import build_sam2
        t = time.perf_counter()
        if a.tiny:
            with open(os.path.join(FIX, "sam2/tiny_sam2_config.json")) as f:
                tc = json.load(f)
            model = build_sam2(tc["hydra_base_config"], ckpt_path=None, device=str(dev),
                               hydra_overrides_extra=tc["hydra_overrides"])
        else:
            model = build_sam2("configs/sam2/sam2_hiera_l.yaml", ckpt_path=None, device=str(dev))
        model = model.eval()
        R["env"]["sam2_build_s"] = round(time.perf_counter() - t, 2)
        ac = lambda: torch.autocast(device_type=dev.type, dtype=dt)  # noqa: E731
        feats = {}
        img = None

        def encode():
            with ac():
                bo = model.forward_image(img)
                _, vf, _, _ = model._prepare_backbone_features(bo)
                if model.directly_add_no_mem_embed:
                    vf[-1] = vf[-1] + model.no_mem_embed
                sizes = [(256, 256), (128, 128), (64, 64)]
                fs = [f.permute(1, 2, 0).view(1, -1, *s) for f, s in zip(vf[::-1], sizes[::-1])][::-1]
            feats["image"], feats["high_res"] = fs[-1], fs[:-1]
            return fs

        d_model = model.sam_prompt_encoder.embed_dim
        seg = None

        def decode():
            with ac():
                coords = torch.zeros(1, 1, 2, device=dev)
                labels = -torch.ones(1, 1, dtype=torch.int32, device=dev)
                sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
                sparse = torch.cat([sparse, seg.to(sparse.dtype)], dim=1)  # Sa2VA: language_embd as a 3rd token
                low, iou, _, obj = model.sam_mask_decoder(
                    image_embeddings=feats["image"], image_pe=model.sam_prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
                    repeat_image=False, high_res_features=feats["high_res"])
                best = low[:, iou[0].argmax()].unsqueeze(1)
                m = F.interpolate(best.float(), (1024, 1024), mode="bilinear", align_corners=False)
                m = F.interpolate(m, (300, 451), mode="bilinear", align_corners=False)
                return (m > 0).cpu()

        # Sa2VA loads the whole model in bf16 and runs SAM2 under bf16 autocast; where a bf16-weight op is
        # refused (CPU autocast leaves LayerNorm alone), fall back to f32 weights under the same autocast.
        variant = None
        for name, wdt in (("bf16 weights + bf16 autocast", dt), ("f32 weights + bf16 autocast", torch.float32)):
            try:
                model = model.to(wdt)
                img = torch.randn(1, 3, 1024, 1024, device=dev, dtype=wdt)
                seg = torch.randn(1, 1, d_model, device=dev, dtype=wdt)
                encode()
                decode()
                variant = name
                break
            except Exception as e:  # noqa: BLE001
                rec = {"stage": "sam2 " + name, "error": f"{type(e).__name__}: {e}"}
                if wdt is torch.float32:
                    rec["traceback"] = tail(traceback.format_exc(), 3000)
                    R["errors"].append(rec)
                else:
                    R.setdefault("fallbacks", []).append(rec)
        R["env"]["sam2_variant"] = variant
        if variant:
            timeit("sam2_encode", encode, warmup=2, runs=5, variant=variant,
                   what="SAM2 hiera-L forward_image + _prepare_backbone_features + no_mem_embed")
            timeit("sam2_decode", decode, warmup=3, runs=10, variant=variant,
                   what="prompt encoder (pad point) + [SEG] token, mask decoder multimask, best by IoU, 256->1024->photo, >0, to host")
        del model
    except Exception as e:  # noqa: BLE001
        R["errors"].append({"stage": "sam2", "error": f"{type(e).__name__}: {e}", "traceback": tail(traceback.format_exc(), 3000)})
    st = R["stages"]
    n7 = tiles[-1]
    for name, keys in (("segment_1tile_total", ("vision_1tile", "prefill_segment_1tile", "sam2_encode", "sam2_decode")),
                       (f"segment_{n7}tiles_total", (f"vision_{n7}tiles", f"prefill_segment_{n7}tiles", "sam2_encode", "sam2_decode")),
                       ("ask_total", ("vision_1tile", "ask_prefill_plus_100"))):
        parts = [st.get(k, {}).get("median_s") for k in keys]
        if all(parts):
            st[name] = {"median_s": round(sum(parts), 5), "what": "sum of the stage medians " + " + ".join(keys)}
    save()
    return 0 if not R["errors"] else 1


# ----------------------------------------------------------------------------------------------

def summary_text(R):
    L = []
    L.append(f"perceptio GPU check ({R['mode']}) started {R['started_utc']}, {R.get('total_wall_s')} s")
    P = R.get("preflight", {})
    ns = P.get("nvidia_smi", {})
    L.append(f"GPU: {ns.get('gpu_name')}  driver {ns.get('driver_version')}  CUDA {ns.get('cuda_version')}  "
             f"cc {ns.get('compute_cap')}" if ns.get("ok") else f"GPU: none ({ns.get('error', 'nvidia-smi failed')})")
    b = P.get("binary", {})
    L.append(f"binary: {b.get('path')} {b.get('size')} B sha256 {str(b.get('sha256'))[:16]}… "
             f"starts={P.get('binary_starts', {}).get('ok')} ldd-missing={P.get('ldd', {}).get('missing_after')}")
    if P.get("ldd", {}).get("added_dirs"):
        L.append(f"LD_LIBRARY_PATH += {P['ldd']['added_dirs']}")
    fc = P.get("first_cuda")
    if fc:
        L.append(f"first CUDA process: f32 {fc['f32']['ok']} {fc['f32']['wall_s']} s, bf16 {fc['bf16']['ok']} "
                 f"{fc['bf16']['wall_s']} s (PTX JIT cache {fc.get('jit_cache_bytes')} B)")
    C = R.get("correctness", {})
    if C:
        L.append(f"correctness: reference cpu_f32 ran for {C.get('cpu_ref_ok')}/{len(C.get('cases', {}))} cases")
        if C.get("note"):
            L.append("  " + C["note"])
        for cfg, s in (C.get("summary") or {}).items():
            L.append(f"  {cfg:15s} pass {s['passed']}/{s['cases']} ({'strict' if s['strict'] else 'loose'}), token ids "
                     f"equal {s['token_ids_equal']}/{s['token_cases']}, min mask IoU {s['min_mask_iou']}, max depth "
                     f"|diff| {s['max_depth_abs_diff']}; failed: {s['failed']}")
    RS = R.get("realsize", {})
    if RS:
        g = RS.get("generation", {})
        if g:
            res = g.get("result") or {}
            how = ("reused (.complete marker)" if res.get("reused") else
                   f"generated on {res.get('device')} in {res.get('total_s')} s, {res.get('model_safetensors_bytes')} B")
            L.append(f"real-size checkpoint: ok={g.get('ok')} {how}; waited {g.get('waited_s')} s for it "
                     f"{g.get('error', '')}")
        for k, v in (RS.get("perceptio") or {}).items():
            if v.get("ok"):
                t = v.get("timings") or {}
                extra = (f" {v.get('samples_per_s')} samples/s, warm {v.get('warm_first_sentence')}"
                         if "samples_per_s" in v else
                         f" tiles {v.get('tiles')} timings {json.dumps({x: (round(y, 4) if isinstance(y, float) else y) for x, y in t.items()})}")
                L.append(f"  {k:24s} wall {v.get('wall_s')} s{extra}")
            else:
                L.append(f"  {k:24s} FAILED/skipped: {v.get('skipped') or tail((v.get('stderr') or '').strip(), 300)}")
        if RS.get("bf16_vs_f32_segment_mask_iou") is not None:
            L.append(f"  real-size segment mask IoU bf16 vs f32 (CUDA): {RS['bf16_vs_f32_segment_mask_iou']}")
        T = RS.get("pytorch")
        if T:
            errs = [e["stage"] + ": " + e["error"][:120] for e in T.get("errors", [])]
            if T.get("rc") not in (0, None) and not errs:
                errs = [tail((T.get("stderr") or "").strip(), 300)]
            L.append(f"PyTorch reference: rc {T.get('rc')} {T.get('wall_s')} s, sam2 variant "
                     f"{(T.get('env') or {}).get('sam2_variant')}, errors {errs}")
        if RS.get("stages"):
            L.append(f"{'stage':58s} {'perceptio':>10s} {'pytorch':>10s} {'ratio':>7s}")
            for r in RS["stages"]:
                fmt = lambda v: f"{v * 1e3:9.2f}ms" if isinstance(v, (int, float)) else f"{'-':>11s}"  # noqa: E731
                L.append(f"{r['stage'][:58]:58s} {fmt(r['perceptio_s'])} {fmt(r['pytorch_bf16_s'])} {str(r['ratio']):>7s}")
    G = R.get("goals")
    if G:
        for k, v in G.items():
            if isinstance(v, dict):
                L.append(f"goal {k}: met={v.get('met')} " + json.dumps({x: y for x, y in v.items() if x not in ('met', 'level')})[:300])
    if R.get("errors"):
        L.append(f"errors: {[e['step'] + ': ' + e['error'] for e in R['errors']]}")
    for n in R.get("notes", []):
        L.append("NOTE: " + n)
    return "\n".join(L)


def pack_logs(c):
    """work/logs/* (stdout/stderr of every run) as one tar.gz in $OUT (at most a few MB)."""
    logs = os.path.join(c.a.work, "logs")
    if not os.path.isdir(logs):
        return
    p = os.path.join(c.a.out, "gpu-check-logs.tar.gz")
    with tarfile.open(p, "w:gz") as t:
        t.add(logs, arcname="logs")
        tr = os.path.join(c.a.work, "torch_reference.json")
        if os.path.isfile(tr):
            t.add(tr, arcname="torch_reference.json")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/cuda/perceptio-cuda"))
    ap.add_argument("--binary-source", default=None, help="where the binary came from (e.g. the .xz), for the record")
    ap.add_argument("--expected-sha256", default=None)
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "target/gpu-check-out"))
    ap.add_argument("--work", default="/tmp/perceptio-gpu-check")
    ap.add_argument("--realsize-dir", default=None, help="default: WORK/sa2va-1b-realsize")
    ap.add_argument("--dry-run-cpu", action="store_true", help="CPU only: correctness with --device cpu, the timing "
                    "plumbing on the tiny Sa2VA, the PyTorch reference with tiny configs on the CPU")
    ap.add_argument("--no-correctness", action="store_true", help="skip the tiny-fixture comparisons (for a rerun)")
    ap.add_argument("--no-realsize", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--budget-s", type=float, default=450.0, help="overall budget; later steps are skipped past it")
    ap.add_argument("--case-timeout", type=float, default=60.0)
    ap.add_argument("--first-cuda-timeout", type=float, default=150.0)
    ap.add_argument("--run-timeout", type=float, default=90.0)
    ap.add_argument("--gen-timeout", type=float, default=300.0)
    ap.add_argument("--torch-timeout", type=float, default=150.0)
    ap.add_argument("--python-probe", default=sys.executable)
    # --torch-reference (internal, own process)
    ap.add_argument("--torch-reference", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--torch-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--torch-device", default="cuda", help=argparse.SUPPRESS)
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tiles", default="1,7", help=argparse.SUPPRESS)
    ap.add_argument("--prefill", default="281,1817", help=argparse.SUPPRESS)
    ap.add_argument("--ask-prompt", type=int, default=280, help=argparse.SUPPRESS)
    ap.add_argument("--decode", type=int, default=100, help=argparse.SUPPRESS)
    ap.add_argument("--torch-quick", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_reference:
        return torch_reference(a)
    a.binary = os.path.abspath(a.binary)
    a.realsize_dir = a.realsize_dir or os.path.join(a.work, "sa2va-1b-realsize")
    a.tiny_sa2va = os.path.join(a.work, "fixtures", "sa2va-tiny")
    os.makedirs(a.work, exist_ok=True)
    shutil.rmtree(os.path.join(a.work, "logs"), ignore_errors=True)
    shutil.rmtree(os.path.join(a.work, "fixtures"), ignore_errors=True)
    c = Check(a)
    gen = c.step("start real-size checkpoint generation", lambda: start_generation(c), need_s=1)
    c.step("preflight", lambda: preflight(c), need_s=10)
    starts = c.R.get("preflight", {}).get("binary_starts", {}).get("ok")
    if starts and not a.dry_run_cpu:
        c.step("first CUDA process (PTX JIT)", lambda: first_cuda(c), need_s=30)
    elif a.dry_run_cpu:
        c.R["notes"].append("dry-run-cpu: no CUDA process was started (first-CUDA / JIT step skipped)")
    if starts and not a.no_correctness:
        c.step("correctness (tiny fixtures)", lambda: correctness(c), need_s=30)
    elif not starts:
        c.R["notes"].append("correctness and perceptio timings skipped: the binary does not start")
    if a.dry_run_cpu:
        if starts:
            c.step("timing plumbing (tiny Sa2VA, cpu)", lambda: realsize_runs(c, a.tiny_sa2va, "cpu", "f32", tiny=True), need_s=20)
        if not a.no_torch:
            c.step("PyTorch reference (tiny configs, cpu)", lambda: torch_reference_section(c, tiny=True), need_s=20)
        c.step("stage table + goals", lambda: stage_table(c, tiny=True), need_s=0)
    elif not a.no_realsize:
        ok = gen is not None and c.step("wait for the real-size checkpoint", lambda: wait_generation(c, gen), need_s=10)
        if ok and starts:
            c.step("perceptio at real size (cuda bf16)", lambda: realsize_runs(c, a.realsize_dir, "cuda", "bf16", tiny=False), need_s=40)
        if not a.no_torch:  # runs even without the checkpoint (prompt lengths are then estimated)
            c.step("PyTorch bf16 reference (cuda)", lambda: torch_reference_section(c, tiny=False), need_s=40)
        c.step("stage table + goals", lambda: stage_table(c, tiny=False), need_s=0)
    c.R["total_wall_s"] = now()
    c.save()
    s = summary_text(c.R)
    with open(os.path.join(a.out, "gpu-check-summary.txt"), "w") as f:
        f.write(s + "\n")
    try:
        pack_logs(c)
    except Exception as e:  # noqa: BLE001
        c.R["errors"].append({"step": "pack logs", "error": str(e)})
        c.save()
    print(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
