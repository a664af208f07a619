#!/usr/bin/env bash
# End-to-end speed of perceptio against the PyTorch reference at real size, side by side on this
# machine (manual; never in CI). Builds the real-size random checkpoint once, then runs the two
# alternately, one process each, and prints per-stage medians and ratios.
#
#   tools/bench_e2e.sh                         # segment --force-seg, 2 rounds
#   ROUNDS=3 MODES="segment ask" tools/bench_e2e.sh
#   PERCEPTIO=target/release/perceptio MODEL=/work/realsize-f32 tools/bench_e2e.sh
#   MODES=depth tools/bench_e2e.sh             # `depth` (model tokens -> VQ-VAE) on $DEPTH_MODEL
#   WARM=0 tools/bench_e2e.sh                  # without reading the checkpoint into the page cache first
#   MODES=depth DEPTH_TILES=1 ROUNDS=1 tools/bench_e2e.sh   # smoke: both sides run, ids agree
#
# depth: `perceptio depth IMG --model $DEPTH_MODEL --max-tiles $DEPTH_TILES --force-depth --max-new-tokens 101
# --json --npy ...` against tools/bench_e2e_torch.py --mode depth with the same flags (the PyTorch side mirrors
# perceptio's prompt, forced start marker, constraint, stop ids and stage split). A random-weight model does not
# write a depth block by itself, so the start marker is forced (FORCE_DEPTH=1) and 101 tokens (100 codes + the end
# marker) are decoded: the depth block the real model writes, less its start marker. FORCE_DEPTH=0 runs the
# CLI default (unforced, up to $DEPTH_NEW tokens). The checkpoint: tools/gen_sa2va_realsize.py --depth
# (written once if missing). Summary: per-stage medians (vision, prefill, decode, vqvae), decode tok/s,
# whether the generated ids and codes are equal, and the max |difference| of the two depth maps.
#
# Needs: a release build (cargo build --release), the venv of tools/gen_internvl_goldens.py
# (torch, transformers 5, Meta sam2 1.1.0 + hydra) as $PY, the reference sources in /tmp/refsrc
# (see tools/bench_e2e_torch.py). Results: one JSON line per run in $OUT (default
# target/bench-e2e/runs.jsonl, also kept as runs-<UTC time>.jsonl), the summary table with each
# round's all-compute ratio on stdout. Figures: docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv-torch/bin/python}
PERCEPTIO=${PERCEPTIO:-target/release/perceptio}
MODEL=${MODEL:-/work/realsize-f32}
IMAGE=${IMAGE:-fixtures/images/chelsea.png}
EXPR=${EXPR:-the cat}
QUESTION=${QUESTION:-Describe the image in detail.}
NEW=${NEW:-32}
ROUNDS=${ROUNDS:-2}
MODES=${MODES:-segment}
TILES=${TILES:-12}          # segment / ask
DEPTH_MODEL=${DEPTH_MODEL:-/work/realsize-f32-depth}
DEPTH_TILES=${DEPTH_TILES:-6}   # what `perceptio depth` uses on a CPU when --max-tiles is not given
FORCE_DEPTH=${FORCE_DEPTH:-1}
DEPTH_NEW=${DEPTH_NEW:-101}
THREADS=${THREADS:-2}
EXTRA=${EXTRA:-}            # extra perceptio flags, e.g. "--quantize q8_0"
WARM=${WARM:-1}             # read the checkpoint through the page cache before every run (0: don't)
OUTDIR=${OUTDIR:-target/bench-e2e}
mkdir -p "$OUTDIR"
OUT=${OUT:-$OUTDIR/runs.jsonl}
: > "$OUT"

[ -x "$PERCEPTIO" ] || { echo "no $PERCEPTIO: run cargo build --release" >&2; exit 2; }
case " $MODES " in *" segment "*|*" ask "*)
  "$PY" tools/gen_sa2va_realsize.py --out "$MODEL" --dtype f32 >&2 ;; esac
case " $MODES " in *" depth "*)
  "$PY" tools/gen_sa2va_realsize.py --out "$DEPTH_MODEL" --dtype f32 --depth >&2
  [ -f /tmp/ait/vae/models/VQVAE.py ] || { echo "no AiT sources in /tmp/ait/vae (see tools/bench_vqvae_torch.py)" >&2; exit 2; } ;;
esac
DFLAGS=(--max-new-tokens "$DEPTH_NEW")
[ "$FORCE_DEPTH" = 1 ] && DFLAGS+=(--force-depth)

echo "# $(date -u +%FT%TZ) $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs; $THREADS threads" >&2
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

# Before every run, either side's, the checkpoint is read once through the page cache (untimed):
# a run whose own load had to fetch part of it from disk computed 2-40 % slower afterwards
# (docs/performance.md, Zen 5 section), and which side drew that depended on what ran before.
warm_cache() { # mode
  [ "$WARM" = 1 ] || return 0
  local dir=$MODEL
  [ "$1" = depth ] && dir=$DEPTH_MODEL
  cat "$dir"/*.safetensors > /dev/null
}

run_perceptio() { # mode round
  local t0 t1 line
  warm_cache "$1"
  t0=$(date +%s.%N)
  if [ "$1" = segment ]; then
    # shellcheck disable=SC2086
    line=$("$PERCEPTIO" segment "$IMAGE" "$EXPR" --model "$MODEL" --force-seg --max-tiles "$TILES" --json \
      -o "$OUTDIR/perceptio-mask.png" $EXTRA 2>/dev/null | head -1)
  elif [ "$1" = depth ]; then
    # shellcheck disable=SC2086
    line=$("$PERCEPTIO" depth "$IMAGE" --model "$DEPTH_MODEL" --max-tiles "$DEPTH_TILES" "${DFLAGS[@]}" --json \
      --npy "$OUTDIR/perceptio-depth.npy" $EXTRA 2>"$OUTDIR/perceptio-depth.err" | head -1) || true
    [ -n "$line" ] || { echo "perceptio depth failed:" >&2; tail -5 "$OUTDIR/perceptio-depth.err" >&2; exit 1; }
  else
    # shellcheck disable=SC2086
    line=$("$PERCEPTIO" ask "$IMAGE" "$QUESTION" --model "$MODEL" --max-tiles "$TILES" --max-new-tokens "$NEW" \
      --json $EXTRA 2>/dev/null)
  fi
  t1=$(date +%s.%N)
  echo "$line" | "$PY" -c "
import json, sys
d = json.loads(sys.stdin.read())
t = d.get('timings', {})
t.update(side='perceptio', mode='$1', round=$2, wall_s=$t1 - $t0)
for k in ('token_ids', 'prompt_tokens', 'tiles'):
    if k in d: t[k] = d[k]
if '$1' == 'depth': t['depth_codes'] = d.get('tokens'); t['error'] = d.get('error')
print(json.dumps(t))" >> "$OUT"
}

run_torch() { # mode round
  local t0 t1 line
  warm_cache "$1"
  t0=$(date +%s.%N)
  if [ "$1" = depth ]; then
    line=$("$PY" tools/bench_e2e_torch.py --model "$DEPTH_MODEL" --image "$IMAGE" --mode depth \
      --max-tiles "$DEPTH_TILES" "${DFLAGS[@]}" --threads "$THREADS" --depth-out "$OUTDIR/torch-depth.npy" \
      2>"$OUTDIR/torch-depth.err" | tail -1) || true
    [ -n "$line" ] || { echo "PyTorch depth failed:" >&2; tail -5 "$OUTDIR/torch-depth.err" >&2; exit 1; }
  else
  line=$("$PY" tools/bench_e2e_torch.py --model "$MODEL" --image "$IMAGE" --mode "$1" --expression "$EXPR" \
    --question "$QUESTION" --max-new-tokens "$NEW" --max-tiles "$TILES" --threads "$THREADS" \
    --mask-out "$OUTDIR/torch-mask.npy" 2>/dev/null | tail -1)
  fi
  t1=$(date +%s.%N)
  echo "$line" | "$PY" -c "
import json, sys
d = json.loads(sys.stdin.read()); d.update(mode='$1', round=$2, wall_s=$t1 - $t0); print(json.dumps(d))" >> "$OUT"
}

# keep this invocation's rounds next to the latest (runs.jsonl is rewritten by the next one)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
trap 'cp "$OUT" "${OUT%.jsonl}-$STAMP.jsonl" 2>/dev/null || true' EXIT
for mode in $MODES; do
  for r in $(seq 1 "$ROUNDS"); do
    # alternate which side goes first, so neither always runs on a warmer machine
    if [ $((r % 2)) = 1 ]; then run_perceptio "$mode" "$r"; run_torch "$mode" "$r"
    else run_torch "$mode" "$r"; run_perceptio "$mode" "$r"; fi
    echo "round $r of $mode done" >&2
  done
done

"$PY" - "$OUT" "$OUTDIR" <<'EOF'
import json, statistics, sys, os
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(side, mode, key):
    v = [r[key] for r in runs if r.get('side') == side and r.get('mode') == mode and key in r]
    return statistics.median(v) if v else None
stages = {'segment': [('vision_s', 'vision_s'), ('llm_s', 'llm_s'), ('sam2_encode_s', 'sam2_encode_s'),
                      ('sam2_decode_s', 'sam2_decode_s'), ('load_s', 'load_s')],
          'ask': [('vision_s', 'vision_s'), ('prefill_s', 'prefill_s'), ('decode_s', 'decode_s'),
                  ('decode_tok_per_s', 'decode_tok_per_s'), ('load_s', 'load_s')],
          'depth': [('vision_s', 'vision_s'), ('prefill_s', 'prefill_s'), ('decode_s', 'decode_s'),
                    ('vqvae_s', 'vqvae_s'), ('decode_tok_per_s', 'decode_tok_per_s'), ('load_s', 'load_s')]}
for mode in sorted({r['mode'] for r in runs}):
    print(f"\n{mode}: median of {len([r for r in runs if r['mode'] == mode and r['side'] == 'perceptio'])} runs each")
    print(f"{'stage':<18}{'perceptio':>12}{'pytorch':>12}{'ratio':>8}")
    # the stages that add up to "all compute" (not the load, not a rate)
    keys = [k for _, k in stages[mode] if k not in ('load_s', 'decode_tok_per_s')]
    tot_p = tot_t = 0.0
    for name, key in stages[mode]:
        p, t = med('perceptio', mode, key), med('pytorch', mode, key)
        if p is None or t is None:
            continue
        if key in keys:
            tot_p += p; tot_t += t
        ratio = p / t if t else float('nan')
        print(f"{name:<18}{p:>12.3f}{t:>12.3f}{ratio:>8.2f}")
    print(f"{'all compute':<18}{tot_p:>12.3f}{tot_t:>12.3f}{tot_p / tot_t:>8.2f}")
    def total(side, r):
        v = [x for x in runs if x.get('side') == side and x.get('mode') == mode and x.get('round') == r]
        return sum(v[0].get(k, 0.0) for k in keys) if v else None
    for r in sorted({x['round'] for x in runs if x['mode'] == mode}):
        p, t = total('perceptio', r), total('pytorch', r)
        if p and t:
            print(f"  round {r}: all compute {p:.2f} vs {t:.2f} s ({p / t:.2f})")
    if mode == 'ask':
        pt = [r.get('token_ids') for r in runs if r['mode'] == 'ask' and r['side'] == 'perceptio']
        tt = [r.get('token_ids') for r in runs if r['mode'] == 'ask' and r['side'] == 'pytorch']
        if pt and tt and pt[0] and tt[0]:
            same = sum(a == b for a, b in zip(pt[0], tt[0]))
            print(f"greedy tokens equal: {same} of {min(len(pt[0]), len(tt[0]))}")
    if mode == 'depth':
        P = [r for r in runs if r['mode'] == 'depth' and r['side'] == 'perceptio']
        T = [r for r in runs if r['mode'] == 'depth' and r['side'] == 'pytorch']
        if P and T:
            p, t = P[0], T[0]
            print(f"prompt tokens (tiles and prompt): {p.get('prompt_tokens')} / {t.get('prompt_tokens')}"
                  f" (perceptio / PyTorch; PyTorch {t.get('tiles')} tiles)")
            pi, ti = p.get('token_ids') or [], t.get('token_ids') or []
            same = sum(a == b for a, b in zip(pi, ti))
            print(f"generated ids: {len(pi)} / {len(ti)}, equal at {same} positions; identical: {pi == ti}")
            print(f"depth codes identical: {p.get('depth_codes') == t.get('depth_codes')}"
                  + (f" (perceptio: {p['error']})" if p.get('error') else ''))
            print(f"every round identical: {all(r.get('token_ids') == pi for r in P + T)}")
dp, dt = (os.path.join(sys.argv[2], f) for f in ('perceptio-depth.npy', 'torch-depth.npy'))
if any(r['mode'] == 'depth' for r in runs) and os.path.exists(dp) and os.path.exists(dt):
    import numpy as np
    a, b = np.load(dp), np.load(dt)
    if a.shape == b.shape:
        print(f"\ndepth map perceptio vs PyTorch: max |diff| {np.abs(a - b).max():.3g}, {a.shape[1]}x{a.shape[0]},"
              f" range {a.min():.4f}..{a.max():.4f} / {b.min():.4f}..{b.max():.4f}")
    else:
        print(f"\ndepth maps differ in shape: {a.shape} vs {b.shape}")
m = os.path.join(sys.argv[2], 'torch-mask.npy')
p = os.path.join(sys.argv[2], 'perceptio-mask.png')
if os.path.exists(m) and os.path.exists(p):
    import numpy as np
    from PIL import Image
    a = np.load(m); b = np.array(Image.open(p)) > 0
    if b.ndim == 3: b = b[..., 0]
    inter, union = (a & b).sum(), (a | b).sum()
    print(f"\nsegment mask IoU perceptio vs PyTorch: {inter / max(union, 1):.5f} ({int(a.sum())} / {int(b.sum())} px)")
EOF
