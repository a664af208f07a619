#!/usr/bin/env bash
# The depth chain's convolution-bound parts against their PyTorch references, alternating one
# process each on this machine (manual; never in CI): Depth Anything V2-Small at 518² (random
# weights in the hub geometry; transformers with SDPA) and AURORA's VQ-VAE (AiT's own VQVAE).
#
#   tools/bench_depth_chain.sh             # 3 rounds
#   ROUNDS=5 AIT=/tmp/ait/vae tools/bench_depth_chain.sh
#
# Needs the venv of tools/gen_depth_anything_goldens.py as $PY and AiT's vae/ folder as $AIT:
#   git --git-dir=<mirror of SwinTransformer/AiT> archive HEAD vae | tar -x -C /tmp/ait
# The Rust side is `cargo bench --bench depth_anything|vqvae` (which also time candle's own conv
# kernels in the same process). Prints per-round figures and the medians; docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv-torch/bin/python}
AIT=${AIT:-/tmp/ait/vae}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
OUT=${OUT:-target/bench-depth-chain}
mkdir -p "$OUT"
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
echo "# $(date -u +%FT%TZ) $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs; $THREADS threads" | tee "$OUT/log.txt"
cargo bench --bench depth_anything --bench vqvae --no-run 2>&1 | tail -1
for r in $(seq 1 "$ROUNDS"); do
  cargo bench -q --bench depth_anything 2>/dev/null | tee -a "$OUT/log.txt" | sed "s/^/[r$r rust] /"
  "$PY" tools/gen_depth_anything_goldens.py --bench | tee -a "$OUT/log.txt" | sed "s/^/[r$r torch] /"
  cargo bench -q --bench vqvae 2>/dev/null | tee -a "$OUT/log.txt" | sed "s/^/[r$r rust] /"
  "$PY" tools/bench_vqvae_torch.py --ait "$AIT" --threads "$THREADS" | tee -a "$OUT/log.txt" | sed "s/^/[r$r torch] /"
done
"$PY" - "$OUT/log.txt" <<'EOF'
import re, statistics as st, sys
rust = {}; torch = {}
label = None
for line in open(sys.argv[1]):
    m = re.match(r"perceptio conv kernels\s+forward .* median ([\d.]+) s .*backbone alone median ([\d.]+) s", line)
    if m:
        rust.setdefault("DA-V2-S forward 518² (s)", []).append(float(m[1]))
        rust.setdefault("  of which DINOv2 (s)", []).append(float(m[2]))
        continue
    m = re.match(r"PyTorch .*DA-V2-Small.*: median ([\d.]+) s .*backbone alone median ([\d.]+) s", line)
    if m:
        torch.setdefault("DA-V2-S forward 518² (s)", []).append(float(m[1]))
        torch.setdefault("  of which DINOv2 (s)", []).append(float(m[2]))
        continue
    m = re.match(r"((?:decode|encode) [^ ].*?)\s+median\s+([\d.]+) ms", line)
    if m:  # the PyTorch VQ-VAE lines carry the label and the median on one line
        torch.setdefault("VQ-VAE " + m[1].strip() + " (ms)", []).append(float(m[2]))
        continue
    if re.match(r"(decode|encode) ", line):
        label = "VQ-VAE " + line.strip() + " (ms)"
        continue
    m = re.match(r"\s+perceptio conv kernels\s+median\s+([\d.]+) ms", line)
    if m and label:
        rust.setdefault(label, []).append(float(m[1]))
print(f"{'stage':<52} {'perceptio':>10} {'PyTorch':>10} {'ratio':>6}")
for k in rust:
    a, b = st.median(rust[k]), st.median(torch.get(k, [float('nan')]))
    print(f"{k:<52} {a:>10.3f} {b:>10.3f} {a / b:>6.2f}")
EOF
