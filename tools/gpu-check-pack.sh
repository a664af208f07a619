#!/usr/bin/env bash
# Make target/gpu-carry/, the one ignored folder the GPU session carries (device `run` carry list:
# ["target/gpu-carry"]), and check that it fits the 64 MiB transfer together with the working tree.
#
#   tools/gpu-check-pack.sh [BINARY]       # default target/cuda/perceptio-cuda (tools/build-cuda.sh's stripped copy)
#
# target/gpu-carry/
#   perceptio-cuda.xz       the stripped CUDA binary, xz -6 (63.5 MiB -> ~9 MiB; raw it would not fit)
#   perceptio-cuda.sha256   sha256 of the uncompressed binary (gpu-check.sh verifies it after unpacking)
#   pylib.tar.xz            Meta's sam2 1.1.0 + hydra-core + omegaconf + antlr4 runtime + iopath, pure Python,
#                           for the PyTorch SAM2 reference (the GPU image has torch and transformers, not these)
#   libcurand.so.10.xz      only with PACK_CURAND=1: CUDA 13.0's cuRAND from target/cuda-venv (127 MiB -> 41 MiB),
#                           for a GPU image without one (candle opens a cuRAND generator with every CUDA device);
#                           tree + carry is then ~60 MiB, close to the limit
#   MANIFEST.txt            sources, sizes, sha256s
# Environment: PYLIB_SITE = the site-packages to take those packages from (default: /work/venv-torch's);
# PACK_CURAND=1 as above.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${1:-target/cuda/perceptio-cuda}"
DEST=target/gpu-carry
LIMIT=$((64 * 1024 * 1024))
[ -f "$BIN" ] || { echo "gpu-check-pack.sh: $BIN not found (run tools/build-cuda.sh first)" >&2; exit 1; }
mkdir -p "$DEST"

sha=$(sha256sum "$BIN" | cut -d' ' -f1)
if [ -f "$DEST/perceptio-cuda.sha256" ] && [ "$(cut -d' ' -f1 "$DEST/perceptio-cuda.sha256")" = "$sha" ] \
    && [ -f "$DEST/perceptio-cuda.xz" ]; then
    echo "perceptio-cuda.xz is up to date ($sha)"
else
    xz -T0 -6 -c "$BIN" >"$DEST/perceptio-cuda.xz.tmp"
    mv "$DEST/perceptio-cuda.xz.tmp" "$DEST/perceptio-cuda.xz"
    echo "$sha  perceptio-cuda" >"$DEST/perceptio-cuda.sha256"
fi
xz -t "$DEST/perceptio-cuda.xz"

SITE="${PYLIB_SITE:-$(ls -d /work/venv-torch/lib/python3*/site-packages 2>/dev/null | head -1)}"
if [ -n "$SITE" ] && [ -d "$SITE/sam2" ]; then
    pkgs=()
    for p in sam2 hydra omegaconf antlr4 iopath; do
        [ -d "$SITE/$p" ] || { echo "gpu-check-pack.sh: $SITE/$p missing" >&2; exit 1; }
        pkgs+=("$p")
    done
    # dist-info too, so importlib.metadata.version("sam2") works; no __pycache__, no compiled extensions exist
    for d in "$SITE"/{sam2,hydra_core,omegaconf,antlr4_python3_runtime,iopath}-*.dist-info; do
        [ -d "$d" ] && pkgs+=("$(basename "$d")")
    done
    tar -C "$SITE" --exclude=__pycache__ --exclude='*.pyc' --sort=name --mtime=@0 --owner=0 --group=0 \
        -cf - "${pkgs[@]}" | xz -9 >"$DEST/pylib.tar.xz.tmp"
    mv "$DEST/pylib.tar.xz.tmp" "$DEST/pylib.tar.xz"
    if find "$SITE"/{sam2,hydra,omegaconf,antlr4,iopath} -name '*.so' | grep -q .; then
        echo "gpu-check-pack.sh: WARNING: compiled extensions in the carried packages (Python-version specific)" >&2
    fi
else
    echo "gpu-check-pack.sh: WARNING: no sam2 in '$SITE' (set PYLIB_SITE): the PyTorch SAM2 reference will be missing" >&2
fi

if [ "${PACK_CURAND:-0}" = 1 ]; then
    CURAND="$(ls target/cuda-venv/lib/python3*/site-packages/nvidia/cu13/lib/libcurand.so.10 2>/dev/null | head -1)"
    [ -n "$CURAND" ] || { echo "gpu-check-pack.sh: no libcurand.so.10 under target/cuda-venv (run tools/build-cuda.sh)" >&2; exit 1; }
    if [ ! -f "$DEST/libcurand.so.10.xz" ] || [ "$CURAND" -nt "$DEST/libcurand.so.10.xz" ]; then
        xz -T0 -6 -c "$CURAND" >"$DEST/libcurand.so.10.xz.tmp" && mv "$DEST/libcurand.so.10.xz.tmp" "$DEST/libcurand.so.10.xz"
    fi
else
    rm -f "$DEST/libcurand.so.10.xz"
fi

{
    echo "made $(date -u +%FT%TZ) by tools/gpu-check-pack.sh from $BIN ($(stat -c %s "$BIN") bytes, mtime $(date -u -r "$BIN" +%FT%TZ))"
    echo "binary sha256 $sha"
    (cd "$DEST" && for f in perceptio-cuda.xz pylib.tar.xz libcurand.so.10.xz; do
        if [ -f "$f" ]; then echo "$f $(stat -c %s "$f") $(sha256sum "$f" | cut -d' ' -f1)"; fi
    done)
} >"$DEST/MANIFEST.txt"

tree=$(git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
carry=$(find "$DEST" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
total=$((tree + carry))
mib() { awk -v b="$1" 'BEGIN{printf "%.1f MiB", b/1048576}'; }
echo "working tree (tracked + untracked, not ignored): $(mib "$tree")"
echo "target/gpu-carry: $(mib "$carry")"; (cd "$DEST" && ls -l | sed 's/^/  /')
echo "total that travels: $(mib "$total") of 64 MiB"
if [ "$total" -gt "$LIMIT" ]; then
    echo "gpu-check-pack.sh: TOO BIG for the 64 MiB transfer" >&2
    exit 1
fi
echo 'device run: carry ["target/gpu-carry"], command: bash tools/gpu-check.sh, timeout_s 540 (OUT is set there)'
