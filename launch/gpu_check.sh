#!/bin/bash
# Everything a first GPU session measures, in one run of at most 7.6 minutes (the limits):
#
#   launch/gpu_check.sh OUT
#
# On a machine with an NVIDIA GPU and no package index: (1) the environment in .venv-gpu
# (kept between runs) by launch/gpu_setup.sh, offline, from the bundle of wheels that
# launch/gpu_wheels.sh made where pip reaches PyPI (GPU_WHEELS, default .gpu-wheels, carried
# with the checkout): the machine's CUDA torch is kept, aeatrain and the bundle installed
# with --no-deps --no-index; (2) pytest -m gpu (without deepspeed or bioimageio, whose
# tests skip there, saying so); (3) benchmarks/bench_gpu.py. OUT (new or empty) receives
# gpu_check.log (everything printed), gpu_check.json (card, stages, test counts, every
# benchmark figure), gpu_tests.xml and bench_gpu.json. Each stage has its own time limit
# (seconds, from the environment): SETUP_SECONDS (default 120), TESTS_SECONDS (120),
# BENCH_SECONDS (200). Exit 0 when every stage passed, 1 when one failed (gpu_check.json
# says which), 2 (one line) on a machine without CUDA, a bad OUT or no bundle. PYTHON: the
# python whose packages the environment sees (default python3); GPU_CHECK_VENV: the
# environment's folder (default .venv-gpu). launch/gpu_rehearsal.sh rehearses the setup on
# a CPU machine.
set -uo pipefail
die() { echo "gpu_check.sh: error: $*" >&2; exit 2; }
[ $# -eq 1 ] || die "usage: launch/gpu_check.sh OUT"
OUT=$(realpath -m -- "$1")
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ -e "$OUT" ] && { [ ! -d "$OUT" ] || [ -n "$(ls -A "$OUT")" ]; }; then
    die "$OUT: exists and is not an empty folder"
fi
CARD=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
[ -n "$CARD" ] || die "no CUDA GPU on this machine (nvidia-smi finds none); nothing was run"
WHEELS=$(realpath -m -- "${GPU_WHEELS:-.gpu-wheels}")
[ -f "$WHEELS/BUNDLE.txt" ] || die "$WHEELS/BUNDLE.txt: no such file (make the bundle with launch/gpu_wheels.sh $WHEELS where pip reaches PyPI, and carry it); nothing was run"
mkdir -p "$OUT" || die "$OUT: cannot create it"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
echo "gpu_check.sh: $CARD; output in $OUT"

VENV=${GPU_CHECK_VENV:-.venv-gpu}
STAGES=()  # name:exit status:seconds
stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, note its status and time
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout --kill-after=5 "$limit" "$@"
    rc=$?
    STAGES+=("$name:$rc:$((SECONDS - start))")
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    return $rc
}
BENCH_SECONDS=${BENCH_SECONDS:-200}
if stage setup "${SETUP_SECONDS:-120}" env PYTHON="$PYTHON" launch/gpu_setup.sh "$VENV" "$WHEELS" \
        --require-cuda; then
    stage gpu_tests "${TESTS_SECONDS:-120}" "$VENV/bin/python" -m pytest -m gpu tests -q \
        -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml"
    stage bench "$BENCH_SECONDS" "$VENV/bin/python" benchmarks/bench_gpu.py \
        --out "$OUT/bench_gpu.json" --budget-seconds $((BENCH_SECONDS - 35))
fi

REPORT_PYTHON=$([ -x "$VENV/bin/python" ] && echo "$VENV/bin/python" || echo "$PYTHON")
"$REPORT_PYTHON" - "$OUT" "$CARD" "${STAGES[@]}" <<'EOF'
"""Gather the stages, the GPU tests' counts and the benchmark's figures into one JSON."""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, card, stages = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
report = {"card": card, "stages": {}, "gpu_tests": None, "bench": None}
for item in stages:
    name, status, seconds = item.rsplit(":", 2)
    report["stages"][name] = {"exit": int(status), "seconds": int(seconds)}
if (out / "gpu_tests.xml").is_file():
    suite = ET.parse(out / "gpu_tests.xml").getroot().find("testsuite")
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    report["gpu_tests"] = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    report["gpu_tests"]["failed"] = failed
if (out / "bench_gpu.json").is_file():
    report["bench"] = json.loads((out / "bench_gpu.json").read_text())
partial = out / ".gpu_check.json.partial"  # renamed whole: never a half-written JSON
partial.write_text(json.dumps(report, indent=1) + "\n")
partial.replace(out / "gpu_check.json")
print(f"gpu_check.sh: wrote {out / 'gpu_check.json'}: stages {report['stages']}")
EOF
for item in "${STAGES[@]}"; do
    [ "$(echo "$item" | cut -d: -f2)" = 0 ] || exit 1
done
[ ${#STAGES[@]} -eq 3 ] || exit 1
