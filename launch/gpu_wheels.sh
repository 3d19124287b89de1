#!/bin/bash
# The wheels a GPU machine without a package index needs to run aeatrain, downloaded here
# (where pip reaches PyPI) for that machine, once:
#
#   launch/gpu_wheels.sh DIR        # then carry DIR; launch/gpu_setup.sh installs from it
#
# The GPU machines (docs/benchmarks.md, "GPU training step") have CPython 3.12 on x86-64
# Linux with torch 2.11.0+cu130, accelerate 1.15.0, numpy 2.5, scipy, scikit-image,
# tifffile, opencv-python-headless, tensorboard, safetensors, tqdm, pyyaml, pytest,
# pytest-timeout, onnx, onnxruntime, packaging and setuptools. What aeatrain needs beyond
# them is pinned below: webdataset (+ braceexpand), pydantic (+ pydantic-core,
# annotated-types, typing-inspection), imagecodecs, and typing-extensions (pydantic-core
# needs >= 4.14.1; the machine's version is not recorded). deepspeed and bioimageio are
# left out: their tests skip there. Every wheel is for CPython 3.12 manylinux x86-64, taken
# without its dependencies; each requirement a wheel declares must be another wheel of the
# bundle or a package of the list above (checked here), and launch/gpu_setup.sh checks
# the versions there against aeatrain's requirements.
#
# DIR: a new or empty folder, or an earlier bundle (replaced). It receives the wheels and
# BUNDLE.txt (one name==version a line), and must stay under 35 MiB with the working tree
# (a GPU call carries 64 MiB at most); the size is printed. PYTHON: the python whose pip
# downloads (default python3). Exit 2 (one line) for a bad DIR, 1 when a download or a
# check fails (nothing is left in DIR then).
set -euo pipefail
die() { echo "gpu_wheels.sh: error: $*" >&2; exit 2; }
[ $# -eq 1 ] || die "usage: launch/gpu_wheels.sh DIR"
DIR=$(realpath -m -- "$1")
PYTHON=${PYTHON:-python3}
PINS=(
    webdataset==1.0.2 braceexpand==0.1.7
    pydantic==2.13.5 pydantic-core==2.46.5 annotated-types==0.7.0 typing-inspection==0.4.2
    typing-extensions==4.15.0
    imagecodecs==2026.3.6
)
# the GPU machine's packages that the wheels above may require (normalized names)
MACHINE="numpy pyyaml packaging setuptools torch"
LIMIT_MIB=35
if [ -e "$DIR" ] && ! { [ -d "$DIR" ] && { [ -z "$(ls -A "$DIR")" ] || [ -f "$DIR/BUNDLE.txt" ]; }; }; then
    die "$DIR: exists and is neither an empty folder nor a bundle of gpu_wheels.sh (BUNDLE.txt)"
fi
mkdir -p "$(dirname "$DIR")" || die "$(dirname "$DIR"): cannot create it"
STAGING=$(mktemp -d "$DIR.partial.XXXXXX") || die "$DIR: cannot create a folder beside it"
trap 'rm -rf "$STAGING"' EXIT
PLATFORMS=()  # pip matches manylinux_2_N exactly: name every N a wheel may carry
for n in $(seq 17 39); do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" --dest "$STAGING" "${PINS[@]}" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
[ "$(ls "$STAGING"/*.whl 2>/dev/null | wc -l)" -eq ${#PINS[@]} ] || {
    echo "gpu_wheels.sh: expected ${#PINS[@]} wheels, got: $(ls "$STAGING")" >&2; exit 1; }
"$PYTHON" - "$STAGING" "$MACHINE" <<'EOF' || exit 1
"""Every requirement of every wheel (for CPython 3.12 on Linux) is in the bundle or on the
machine; BUNDLE.txt lists the wheels' name==version."""
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

staging, machine = Path(sys.argv[1]), set(sys.argv[2].split())
environment = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
metadata = {}
for wheel in sorted(staging.glob("*.whl")):
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata[wheel.name] = Parser().parsestr(archive.read(name).decode())
bundle = {canonicalize_name(m["Name"]): m["Version"] for m in metadata.values()}
missing = []
for wheel, meta in metadata.items():
    for text in meta.get_all("Requires-Dist") or []:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        if name in bundle and not requirement.specifier.contains(bundle[name], prereleases=True):
            missing.append(f"{wheel} needs {requirement}, the bundle has {bundle[name]}")
        elif name not in bundle and name not in machine:
            missing.append(f"{wheel} needs {requirement}: neither in the bundle nor on the machine")
if missing:
    sys.exit("gpu_wheels.sh: " + "\n  ".join(["unmet requirements:", *missing]))
lines = [f"{name}=={version}\n" for name, version in sorted(bundle.items())]
(staging / "BUNDLE.txt").write_text("".join(lines))
EOF
chmod 755 "$STAGING"  # mktemp's 700 would travel as is
rm -rf "$DIR"
mv "$STAGING" "$DIR"
trap - EXIT
SIZE_KIB=$(du -sk "$DIR" | cut -f1)
echo "gpu_wheels.sh: ${#PINS[@]} wheels in $DIR, $((SIZE_KIB / 1024)).$((SIZE_KIB % 1024 * 10 / 1024)) MiB"
[ "$SIZE_KIB" -le $((LIMIT_MIB * 1024)) ] || {
    echo "gpu_wheels.sh: over the ${LIMIT_MIB} MiB the GPU call can carry beside the tree" >&2; exit 1; }
