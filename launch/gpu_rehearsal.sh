#!/bin/bash
# The GPU machine's first minutes, rehearsed on a CPU machine before any GPU time is spent:
#
#   launch/gpu_rehearsal.sh [WORK]     # WORK default ~/.cache/aeatrain-gpu-rehearsal
#
# 1. A stand-in for the GPU machine's python3 in WORK/machine (made once, then kept): a
#    CPython 3.12 virtual environment, as the machine's is, holding its recorded versions
#    (torch 2.11.0, the PyPI build: CUDA 13.0, running on the CPU here; accelerate 1.15.0,
#    numpy 2.5.2, safetensors 0.8.0, onnx 1.23.1, onnxruntime 1.30.0, huggingface_hub
#    1.33.0) and the newest releases of its other packages that aeatrain or the tests use
#    (their versions there are not recorded); WORK/machine.txt lists what it got. Needs
#    PyPI and about 4 GB of disk the first time (the downloads are kept in WORK/downloads).
#    PYTHON312: the interpreter (default python3.12, else pyenv's 3.12.1).
# 2. launch/gpu_wheels.sh WORK/bundle (PyPI).
# 3. Without a network (unshare -n where it works, else PIP_NO_INDEX=1) and without this
#    machine's pip configuration: launch/gpu_setup.sh WORK/venv-gpu WORK/bundle from
#    nothing, as gpu_check.sh and gpu_compare.sh do there; then pytest -m gpu over every
#    test module (they all import; the GPU tests skip on a CPU), the CPU smoke mode of
#    benchmarks/bench_gpu.py, and launch/gpu_compare.sh --smoke, all in WORK/venv-gpu.
# Prints each step's seconds and the bundle's size; exit 0 when every step passed.
set -euo pipefail
die() { echo "gpu_rehearsal.sh: error: $*" >&2; exit 2; }
[ $# -le 1 ] || die "usage: launch/gpu_rehearsal.sh [WORK]"
WORK=$(realpath -m -- "${1:-${XDG_CACHE_HOME:-$HOME/.cache}/aeatrain-gpu-rehearsal}")
cd "$(dirname "$0")/.."
if [ -z "${PYTHON312:-}" ]; then
    for PYTHON312 in python3.12 /root/.pyenv/versions/3.12.1/bin/python3.12; do
        "$PYTHON312" -c '' 2>/dev/null && break
    done
fi
"$PYTHON312" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null \
    || die "no Python 3.12 ($PYTHON312); set PYTHON312"
MACHINE_PINS=(torch==2.11.0 accelerate==1.15.0 numpy==2.5.2 safetensors==0.8.0 onnx==1.23.1
              onnxruntime==1.30.0 huggingface_hub==1.33.0 scipy scikit-image tifffile
              opencv-python-headless tensorboard tqdm pyyaml pytest pytest-timeout packaging
              setuptools)
mkdir -p "$WORK"
exec > >(tee "$WORK/rehearsal.log") 2>&1
STARTED=$SECONDS
step() {  # step NAME COMMAND...: run, print its seconds; stop the rehearsal if it fails
    local name=$1 start=$SECONDS
    shift
    echo "== $name"
    "$@" || { echo "gpu_rehearsal.sh: $name FAILED after $((SECONDS - start)) s"; exit 1; }
    echo "== $name: passed in $((SECONDS - start)) s"
}
machine() {
    [ -f "$WORK/machine.txt" ] && [ "$(head -1 "$WORK/machine.txt")" = "# ${MACHINE_PINS[*]}" ] \
        && { echo "kept $WORK/machine"; return; }
    rm -rf "$WORK/machine" "$WORK/machine.txt"  # (a function run under || ignores set -e)
    "$PYTHON312" -m venv "$WORK/machine" || return 1
    "$WORK/machine/bin/pip" download --quiet --only-binary=:all: -d "$WORK/downloads" \
        "${MACHINE_PINS[@]}" || return 1
    "$WORK/machine/bin/pip" install --quiet --no-index --find-links "$WORK/downloads" \
        "${MACHINE_PINS[@]}" || return 1
    { echo "# ${MACHINE_PINS[*]}"; "$WORK/machine/bin/pip" freeze; } > "$WORK/machine.txt.partial" \
        && mv "$WORK/machine.txt.partial" "$WORK/machine.txt"
}
offline() {  # the GPU machine's conditions: no network, no pip configuration of this machine
    local isolate=()
    unshare -n true 2>/dev/null && isolate=(unshare -n)
    env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_CONSTRAINT -u PYTHONPATH \
        PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 "${isolate[@]}" "$@"
}
step "stand-in machine ($WORK/machine)" machine
grep -iE "^(torch|accelerate|numpy|scipy|scikit.image|tifffile|opencv.python.headless)==" "$WORK/machine.txt" | tr '\n' ' ' || true
echo
step "bundle (launch/gpu_wheels.sh)" env PYTHON="$WORK/machine/bin/python" launch/gpu_wheels.sh "$WORK/bundle"
rm -rf "$WORK/venv-gpu" "$WORK/out"
step "offline setup (launch/gpu_setup.sh)" offline env PYTHON="$WORK/machine/bin/python" \
    launch/gpu_setup.sh "$WORK/venv-gpu" "$WORK/bundle"
step "pytest -m gpu (every module imported; GPU tests skip on a CPU)" offline \
    "$WORK/venv-gpu/bin/python" -m pytest -m gpu tests -q -p no:cacheprovider
mkdir -p "$WORK/out"
step "bench_gpu.py CPU smoke mode" offline env OMP_NUM_THREADS=1 "$WORK/venv-gpu/bin/python" \
    benchmarks/bench_gpu.py --device cpu --quick --out "$WORK/out/bench_smoke.json" --loader-workers 1
step "gpu_compare.sh --smoke" offline env GPU_VENV="$WORK/venv-gpu" GPU_WHEELS="$WORK/bundle" \
    PYTHON="$WORK/machine/bin/python" launch/gpu_compare.sh "$WORK/out/compare" --smoke
echo "gpu_rehearsal.sh: passed in $((SECONDS - STARTED)) s; bundle $(du -sh "$WORK/bundle" | cut -f1)"
