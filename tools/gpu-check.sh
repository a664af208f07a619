#!/usr/bin/env bash
# The one-command GPU check of perceptio's CUDA build: preflight, correctness on the tiny fixtures (CPU f32
# vs CUDA f32 / bf16), timings at Sa2VA-1B's real size next to PyTorch bf16 on the same GPU, and the goals.
# Writes $OUT/gpu-check.json (all numbers), $OUT/gpu-check-summary.txt (also printed) and
# $OUT/gpu-check-logs.tar.gz (every run's stdout/stderr). Fits 8 minutes on an H200; see docs/gpu-check.md.
#
#   tools/gpu-check.sh                               # GPU machine; binary: target/gpu-carry/perceptio-cuda.xz
#                                                    #   (from tools/gpu-check-pack.sh), else target/cuda/perceptio-cuda
#   tools/gpu-check.sh path/to/perceptio-cuda[.xz]   # another binary (a .xz is unpacked to $GPU_CHECK_WORK)
#   tools/gpu-check.sh --dry-run-cpu [BINARY]        # no GPU: the same plumbing on the CPU (default binary:
#                                                    #   target/release/perceptio, else target/debug/perceptio)
#   tools/gpu-check.sh [...] -- --budget-s 300       # anything after -- goes to tools/gpu_check.py
#
# Environment: OUT (default target/gpu-check-out), GPU_CHECK_WORK (scratch, default /tmp/perceptio-gpu-check:
# the 2 GB real-size checkpoint goes there, never under $OUT), PYTHON (default python3: the one with torch),
# GPU_CHECK_TIMEOUT (hard limit for the whole Python part, default 465 s).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
T_START=$(date +%s)

DRY=0
BIN=""
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run-cpu) DRY=1 ;;
        -h|--help) sed -n '2,19p' "${BASH_SOURCE[0]}"; exit 0 ;;
        --) shift; EXTRA+=("$@"); break ;;
        -*) echo "gpu-check.sh: unknown option $1 (options for gpu_check.py go after --)" >&2; exit 2 ;;
        *) BIN="$1" ;;
    esac
    shift
done

OUT="${OUT:-$ROOT/target/gpu-check-out}"
WORK="${GPU_CHECK_WORK:-/tmp/perceptio-gpu-check}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT" "$WORK"

if [ -z "$BIN" ]; then
    if [ "$DRY" = 1 ]; then
        for b in target/release/perceptio target/debug/perceptio; do
            [ -x "$b" ] && { BIN="$b"; break; }
        done
    else
        for b in target/gpu-carry/perceptio-cuda.xz target/cuda/perceptio-cuda; do
            [ -f "$b" ] && { BIN="$b"; break; }
        done
    fi
fi
if [ -z "$BIN" ] || [ ! -f "$BIN" ]; then
    echo "gpu-check.sh: no perceptio binary found (given: '${BIN}'). On the GPU machine carry target/gpu-carry" \
         "(made by tools/gpu-check-pack.sh) or pass the binary's path." >&2
    printf '{"schema": "perceptio-gpu-check/1", "fatal": "no perceptio binary found: %s"}\n' "$BIN" >"$OUT/gpu-check.json"
    exit 1
fi

echo "== gpu-check: binary $BIN, OUT=$OUT, WORK=$WORK, python $PY ($("$PY" --version 2>&1))"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/== gpu: /'
else
    echo "== gpu: nvidia-smi not found"
fi

# The carried binary is xz-compressed (63.5 MiB stripped does not fit the 64 MiB transfer with the tree).
RUNBIN="$BIN"
SHA_FILE=""
case "$BIN" in
    *.xz)
        RUNBIN="$WORK/$(basename "${BIN%.xz}")"
        SHA_FILE="${BIN%.xz}.sha256"
        t0=$(date +%s.%N)
        if command -v xz >/dev/null 2>&1; then
            xz -dc "$BIN" >"$RUNBIN.tmp"
        else
            "$PY" -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$BIN" "$RUNBIN.tmp"
        fi || { echo "gpu-check.sh: cannot decompress $BIN" >&2; exit 1; }
        mv "$RUNBIN.tmp" "$RUNBIN"
        echo "== unpacked $BIN -> $RUNBIN in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
        ;;
    *) [ -f "$BIN.sha256" ] && SHA_FILE="$BIN.sha256" ;;
esac
chmod +x "$RUNBIN" 2>/dev/null || true
SHA_ARGS=()
if [ -n "$SHA_FILE" ] && [ -f "$SHA_FILE" ]; then
    SHA_ARGS=(--expected-sha256 "$(cut -d' ' -f1 "$SHA_FILE")")
fi

# Meta's sam2 (+ hydra, omegaconf, antlr4, iopath) for the PyTorch SAM2 reference: pure-Python packages
# carried as target/gpu-carry/pylib.tar.xz, used only where the machine's python lacks them.
PYLIB_TAR="$(dirname "$BIN")/pylib.tar.xz"
[ -f "$PYLIB_TAR" ] || PYLIB_TAR="$ROOT/target/gpu-carry/pylib.tar.xz"
if ! "$PY" -c 'import sam2, hydra, omegaconf, iopath' >/dev/null 2>&1; then
    if [ -f "$PYLIB_TAR" ]; then
        rm -rf "$WORK/pylib" && mkdir -p "$WORK/pylib"
        tar -xJf "$PYLIB_TAR" -C "$WORK/pylib" && export PYTHONPATH="$WORK/pylib${PYTHONPATH:+:$PYTHONPATH}"
        if "$PY" -c 'import sam2, hydra, omegaconf, iopath' >/dev/null 2>&1; then
            echo "== sam2/hydra/omegaconf/iopath from $PYLIB_TAR"
        else
            echo "== WARNING: sam2 still not importable with $PYLIB_TAR; the PyTorch SAM2 reference will be missing"
        fi
    else
        echo "== WARNING: no sam2 in $PY and no pylib.tar.xz: the PyTorch SAM2 reference will be missing"
    fi
fi

# Libraries carried as target/gpu-carry/lib*.so*.xz (PACK_CURAND=1): a last resort for gpu_check.py's search.
for lx in "$(dirname "$BIN")"/lib*.so*.xz; do
    [ -f "$lx" ] || continue
    mkdir -p "$WORK/carried-lib"
    xz -dc "$lx" >"$WORK/carried-lib/$(basename "${lx%.xz}")" && echo "== carried library $(basename "${lx%.xz}") unpacked"
done

ARGS=(--binary "$RUNBIN" --binary-source "$BIN" --out "$OUT" --work "$WORK")
[ "$DRY" = 1 ] && ARGS+=(--dry-run-cpu)
export PYTHONUNBUFFERED=1
timeout -k 15 "${GPU_CHECK_TIMEOUT:-465}" "$PY" tools/gpu_check.py "${ARGS[@]}" "${SHA_ARGS[@]}" "${EXTRA[@]}"
rc=$?
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "gpu-check.sh: tools/gpu_check.py hit the hard limit (${GPU_CHECK_TIMEOUT:-465} s); $OUT/gpu-check.json holds every step finished before it" >&2
fi
echo "== gpu-check done in $(( $(date +%s) - T_START )) s (rc $rc): $OUT/gpu-check.json, $OUT/gpu-check-summary.txt"
exit "$rc"
