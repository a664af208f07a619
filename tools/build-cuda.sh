#!/usr/bin/env bash
# Build perceptio with `--features cuda` on a machine WITHOUT a GPU and WITHOUT a system CUDA
# toolkit: everything CUDA comes from NVIDIA's official PyPI wheels, installed into a private
# venv under target/ (nothing is installed system-wide; needs python3 with venv, cc, binutils).
#
#   tools/build-cuda.sh            # venv + kernels + cargo build --release --features cuda
#
# Outputs:
#   target/cuda/release/perceptio  the binary as cargo built it (with line-table debug info)
#   target/cuda/perceptio-cuda     a stripped copy of it, the one to ship to the GPU machines
#
# Re-running is cheap: the venv is reused when its marker says the pinned set is complete, and
# cargo/candle-kernels reuse target/cuda (set CARGO_BUILD_JOBS to limit cargo's parallelism;
# nvcc's parallelism inside candle-kernels' build script follows CUDAFORGE_THREADS, which this
# script defaults to CARGO_BUILD_JOBS).
#
# Knobs (environment):
#   CUDA_COMPUTE_CAP   default 80, see "Compute capability" below
#   CARGO_BUILD_JOBS   passed through to cargo (and nvcc parallelism)
#   PYTHON             python used to create the venv (default python3)
#   PERCEPTIO_CUDA_TARGET_DIR, PERCEPTIO_CUDA_VENV
#                      where the build and the venv go (default target/cuda, target/cuda-venv);
#                      absolute paths, e.g. to share one of each between worktrees
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TARGET_DIR="${PERCEPTIO_CUDA_TARGET_DIR:-$ROOT/target/cuda}"
VENV="${PERCEPTIO_CUDA_VENV:-$ROOT/target/cuda-venv}"
PYTHON="${PYTHON:-python3}"

# ---------------------------------------------------------------------------------------------
# Pinned CUDA 13.0.x (CUDA 13.0 Update 2) components from PyPI.
#
# WHY 13.0 AND NOT THE NEWEST 13.x: the GPU machines we run on have NVIDIA driver 580, i.e.
# CUDA 13.0. candle ships its kernels as PTX text that the *driver* JIT-compiles when a module
# is loaded, and a driver only accepts PTX up to the ISA version it knows: nvcc 13.0 emits
# `.version 9.0`, which driver 580 loads; nvcc 13.1+ emits a newer PTX ISA that driver 580
# rejects at run time (CUDA_ERROR_UNSUPPORTED_PTX_VERSION) although everything compiles and
# links fine. cudarc also derives its driver-API bindings from `nvcc --version` (feature
# cuda-version-from-build-system), so a newer nvcc would bind `cuda-13xx0` entry points that a
# 13.0 driver may not export. So: compiler, headers and libraries all from the 13.0 line.
# (cuBLAS 13.1.0.3 *is* the cuBLAS of CUDA 13.0 Update 2 -- its embedded PTX is `.version 9.0`;
# cuRAND 10.4.0.x is CUDA 13.0's cuRAND.) Bump these only together with the GPU driver.
#
# Hashes pin the exact manylinux x86_64 wheels (pip --require-hashes).
# ---------------------------------------------------------------------------------------------
CUDA_REQUIREMENTS="$(cat <<'EOF'
nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-nvrtc==13.0.88 --hash=sha256:ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
nvidia-cublas==13.1.0.3 --hash=sha256:ee8722c1f0145ab246bccb9e452153b5e0515fd094c3678df50b2a0888b8b171
nvidia-curand==10.4.0.35 --hash=sha256:1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc
EOF
)"

# ---------------------------------------------------------------------------------------------
# Compute capability. There is no GPU here for nvidia-smi to query, so it must be explicit.
# candle-kernels (via cudaforge) takes ONE value from CUDA_COMPUTE_CAP and uses it twice:
#   * PTX for the ordinary kernels (affine, binary, cast, conv, fill, indexing, reduce, sort,
#     ternary, unary, quantized) -- embedded in the binary as strings and JIT-compiled by the
#     driver for whatever GPU it finds. PTX built for compute_80 JITs forward to sm_90 (H100/
#     H200) and later, so 80 covers both A100 and Hopper. A value >= 90 would NOT: cudaforge
#     turns 90 into the arch-specific `sm_90a`, whose PTX loads on Hopper only (not on A100 and
#     not forward to Blackwell).
#   * SASS (machine code, no PTX) for libmoe.a: the GGUF-quantized matmul (mmq/mmvq) and MoE
#     kernels. `-gencode=arch=compute_80,code=sm_80` SASS runs on sm_80/86/89 but NOT on sm_90:
#     on an H100 those particular kernels would fail with "no kernel image is available".
#     perceptio never calls them (no QTensor / GGUF / candle_nn::moe anywhere in src/), so this
#     costs nothing today; anyone adding quantized models must revisit this.
# dtype availability with 80: f32, f16 (needs >= 530) and bf16 (needs >= 800; bf16 WMMA in
# libmoe.a also stays enabled) kernels are all present -- bf16 is perceptio's CUDA default.
# The f8e4m3 kernels are compiled only for __CUDA_ARCH__ >= 890, so with 80 there are no FP8
# kernels on any GPU (perceptio does not use FP8).
# ---------------------------------------------------------------------------------------------
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"

# ---- timing helpers ---------------------------------------------------------------------------
T_ALL=$(date +%s.%N)
declare -a TIMES=()
step_start() { STEP_NAME="$1"; STEP_T0=$(date +%s.%N); echo; echo "==> [$STEP_NAME] start"; }
step_end() {
    local dt
    dt=$(awk -v a="$STEP_T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
    TIMES+=("$(printf '%-40s %8ss' "$STEP_NAME" "$dt")")
    echo "==> [$STEP_NAME] done in ${dt}s"
}

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "build-cuda.sh: only Linux x86_64 is supported (the pinned wheels are manylinux x86_64)" >&2
    exit 1
fi

# ---- 1. venv with the CUDA toolkit pieces -------------------------------------------------------
step_start "venv + CUDA 13.0 wheels"
MARKER="$VENV/.perceptio-cuda-complete"
want_marker="$(printf '%s\n' "$CUDA_REQUIREMENTS" | sha256sum | cut -d' ' -f1)"
cuda_tree() {   # the CUDA 13 wheels all unpack into this one toolkit-shaped tree
    echo "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13"
}
tree_complete() {
    local tree f
    tree="$(cuda_tree 2>/dev/null)" || return 1
    for f in bin/nvcc bin/ptxas nvvm/bin/cicc include/cuda.h include/cuda_runtime.h \
        include/crt/host_config.h include/cccl/cuda/std/version lib/libcudart.so.13 \
        lib/libcublas.so.13 lib/libcublasLt.so.13 lib/libcurand.so.10 lib/libnvrtc.so.13; do
        if [ ! -e "$tree/$f" ]; then
            echo "missing: $tree/$f"
            return 1
        fi
    done
}
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$want_marker" ] && tree_complete; then
    echo "reusing $VENV (pinned set unchanged and complete)"
else
    # Absent, interrupted, built from another pin set, or damaged: start from a fresh venv
    # (a cold install downloads ~720 MB of wheels and takes well under a minute here).
    if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ] && [ -n "$(ls -A "$VENV")" ]; then
        echo "build-cuda.sh: $VENV exists and is not a venv; refusing to delete it" >&2
        exit 1
    fi
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    req="$(mktemp)"
    printf '%s\n' "$CUDA_REQUIREMENTS" >"$req"
    # --no-deps: the list above is the complete closure we need (nvcc's own dependencies nvvm,
    # crt and runtime are listed and pinned), so pip cannot pull an unpinned newer CUDA piece.
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --no-deps \
        --only-binary=:all: --require-hashes -r "$req"
    rm -f "$req"
    if ! tree_complete; then
        echo "build-cuda.sh: the CUDA wheels did not install the files the build needs" >&2
        exit 1
    fi
    printf '%s' "$want_marker" >"$MARKER"
fi
CUDA_TREE="$(cuda_tree)"
step_end

# ---- 2. link-time directory: unversioned .so names + libcuda stub --------------------------------
step_start "link stubs + environment"
# The wheels ship only the runtime sonames (libcublas.so.13, ...). `-lcublas` needs the
# unversioned development name, which a toolkit install provides as a symlink; we make those
# symlinks in a separate directory, next to the libcuda link stub, and leave the pip tree as is.
LINKDIR="$VENV/cuda-link"
mkdir -p "$LINKDIR"
for pair in cudart:libcudart.so.13 cublas:libcublas.so.13 cublasLt:libcublasLt.so.13 \
    curand:libcurand.so.10 nvrtc:libnvrtc.so.13; do
    ln -sfn "$CUDA_TREE/lib/${pair#*:}" "$LINKDIR/lib${pair%%:*}.so"
done

# libcuda.so is the DRIVER, installed with the kernel module on GPU machines; no PyPI wheel
# ships it (NVIDIA's wheels have no lib/stubs/, the only "cuda-stubs" on PyPI is Python typing
# stubs). cudarc's `dynamic-linking` (forced by candle-core) links -lcuda, so the linker needs
# *a* libcuda.so. Like the toolkit's own lib/stubs/libcuda.so we build a link-time stub: every
# function the CUDA 13.0 cuda.h declares (plus cuProfilerStart/Stop from cudaProfiler.h, a
# header of a wheel we do not need), each returning CUDA_ERROR_STUB_LIBRARY (34), with SONAME
# libcuda.so.1. Only that SONAME ends up in the binary (NEEDED libcuda.so.1); at run time the
# real driver's libcuda.so.1 is loaded instead. The stub is never shipped and never on a GPU
# machine's loader path. Because the symbol list comes from
# the 13.0 headers, the link FAILS if anything references a driver entry point newer than 13.0.
STUB="$LINKDIR/libcuda.so"
stub_src="$LINKDIR/libcuda-stub.c"
stub_key="$(cat "$CUDA_TREE/include/cuda.h" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STUB" ] || [ "$(cat "$LINKDIR/.stub-key" 2>/dev/null)" != "$stub_key" ]; then
    {
        echo "/* GENERATED by tools/build-cuda.sh: link-time stub for libcuda.so.1. Never ship it. */"
        for def in "" "-DCUDA_API_PER_THREAD_DEFAULT_STREAM"; do
            # preprocessing applies cuda.h's `#define cuFoo cuFoo_v2` renames: we get link names
            cc -E -P $def -I "$CUDA_TREE/include" -x c - <<'EOF'
#include <cuda.h>
EOF
        done | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' \t(' \
             | { cat; printf '%s\n' cuProfilerStart cuProfilerStop; } | sort -u \
             | awk '{ printf "int %s(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }\n", $1 }'
    } >"$stub_src"
    cc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$STUB.tmp" "$stub_src"
    mv "$STUB.tmp" "$STUB"
    printf '%s' "$stub_key" >"$LINKDIR/.stub-key"
fi
echo "libcuda link stub: $STUB ($(grep -c '^int ' "$stub_src") entry points)"
# For GPU-less smoke tests only (`perceptio --help` on this kind of machine): the binary cannot
# even start without *some* libcuda.so.1. This directory holds the stub under that name; put it
# on LD_LIBRARY_PATH here, never on a machine with a real driver.
mkdir -p "$VENV/cuda-stub-runtime"
ln -sfn "$STUB" "$VENV/cuda-stub-runtime/libcuda.so.1"

# Where the build scripts look:
#  * candle-kernels' build script (cudaforge) runs `nvcc` found on PATH (or $NVCC) and derives
#    the include dir from it; nvcc itself finds cicc/libdevice/ptxas via bin/nvcc.profile.
#  * cudarc's build script runs `nvcc --version` from PATH and adds -L $CUDA_ROOT/{lib,lib/stubs,..}.
#  * the final link of the binary (cc) also searches LIBRARY_PATH: our cuda-link dir.
# LIBRARY_PATH is not part of cargo's fingerprint, so changing it never forces a rebuild.
export CUDA_ROOT="$CUDA_TREE" CUDA_PATH="$CUDA_TREE" CUDA_HOME="$CUDA_TREE"
export NVCC="$CUDA_TREE/bin/nvcc"
export PATH="$CUDA_TREE/bin:$PATH"
export LIBRARY_PATH="$LINKDIR:$CUDA_TREE/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
if [ -n "${CARGO_BUILD_JOBS:-}" ]; then
    export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$CARGO_BUILD_JOBS}"
fi
nvcc --version | tail -2
echo "CUDA_ROOT=$CUDA_ROOT"
echo "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
step_end

# ---- 3. cargo build ----------------------------------------------------------------------------------
step_start "cargo build --release --features cuda"
cargo build --release --features cuda --target-dir "$TARGET_DIR"
step_end

# ---- 4. stripped copy + report -----------------------------------------------------------------------
step_start "strip + report"
BIN="$TARGET_DIR/release/perceptio"
OUT="$TARGET_DIR/perceptio-cuda"
if [ ! -f "$OUT" ] || [ "$BIN" -nt "$OUT" ]; then
    strip -o "$OUT.tmp" "$BIN"
    mv "$OUT.tmp" "$OUT"
fi
size_of() { stat -c %s "$1" | awk '{printf "%d bytes (%.1f MiB)", $1, $1/1048576}'; }
echo "unstripped: $BIN  $(size_of "$BIN")"
echo "stripped:   $OUT  $(size_of "$OUT")"
echo "NEEDED:"
readelf -d "$OUT" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/  \1/p'
# Smoke test that works without a GPU: with the pip libraries and the libcuda stub on the loader
# path, and LD_BIND_NOW so that every imported symbol must resolve at start-up (a driver entry
# point missing from the 13.0 API would fail here), the binary has to start and print its help.
RUN_LD_PATH="$CUDA_TREE/lib:$VENV/cuda-stub-runtime"
if ! LD_BIND_NOW=1 LD_LIBRARY_PATH="$RUN_LD_PATH" "$OUT" --help >/dev/null; then
    echo "build-cuda.sh: $OUT does not start even with the CUDA libraries on the loader path" >&2
    exit 1
fi
echo "smoke test: '$OUT --help' starts (LD_BIND_NOW=1, libcuda stub)"
step_end

echo
echo "==> timings"
printf '  %s\n' "${TIMES[@]}"
printf '  %-40s %8ss\n' "total" "$(awk -v a="$T_ALL" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')"
cat <<EOF

To run it on a GPU machine (driver >= 580) it needs the CUDA 13 user-space libraries NEEDED above
(libcudart.so.13, libcublas.so.13 + libcublasLt.so.13, libcurand.so.10) on the loader path, e.g.
the same pip wheels there:  LD_LIBRARY_PATH=<site-packages>/nvidia/cu13/lib $OUT ...
Without a GPU it cannot even start (libcuda.so.1 is the driver); for a smoke test only:
  LD_LIBRARY_PATH=$RUN_LD_PATH $OUT --help
EOF
