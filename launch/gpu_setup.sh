#!/bin/bash
# aeatrain's environment on a GPU machine without a package index, from a bundle of
# launch/gpu_wheels.sh:
#
#   launch/gpu_setup.sh VENV WHEELS [--require-cuda]
#
# VENV (made when missing) sees the packages of PYTHON (default python3), the machine's
# CUDA torch among them, and holds the bundle's wheels and aeatrain (editable); every
# install is offline (--no-index --no-deps; aeatrain built with the machine's setuptools).
# The GPU machines' python3 is itself a virtual environment (/opt/torch/.venv), and a
# virtual environment made from another sees only the base interpreter's packages through
# --system-site-packages, so a .pth file of VENV adds PYTHON's own site-packages (and runs
# the .pth files there) after VENV's.
# Then the check, printed: every requirement of aeatrain (pyproject.toml) and the
# bundle's versions are met by what VENV imports, aeatrain imports from this
# checkout, and with --require-cuda torch sees a GPU. A VENV that already passes the check is left
# as it is (a second run takes seconds). Exit 0 when the check passes, 1 when it fails,
# 2 (one line) for bad arguments.
set -euo pipefail
die() { echo "gpu_setup.sh: error: $*" >&2; exit 2; }
usage="usage: launch/gpu_setup.sh VENV WHEELS [--require-cuda]"
[ $# -eq 2 ] || { [ $# -eq 3 ] && [ "$3" = --require-cuda ]; } || die "$usage"
VENV=$(realpath -m -- "$1") WHEELS=$(realpath -m -- "$2") REQUIRE_CUDA=${3:+1}
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
[ -f "$WHEELS/BUNDLE.txt" ] || die "$WHEELS/BUNDLE.txt: no such file (make the bundle with launch/gpu_wheels.sh $2 where pip reaches PyPI, and carry it)"

check() {  # check quiet|loud: the environment meets every requirement
    "$VENV/bin/python" - "$WHEELS/BUNDLE.txt" "$1" "${REQUIRE_CUDA:-0}" <<'EOF'
import importlib.metadata as metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

bundle, quiet, require_cuda = Path(sys.argv[1]), sys.argv[2] == "quiet", sys.argv[3] == "1"
wanted = [Requirement(line) for line in bundle.read_text().split()]
wanted += map(Requirement, tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"])
problems, shown = [], set()
for requirement in wanted:
    try:
        version = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        problems.append(f"{requirement.name}: not installed (wanted {requirement})")
        continue
    if not requirement.specifier.contains(version, prereleases=True):
        problems.append(f"{requirement.name} {version}: not {requirement}")
    elif not quiet and requirement.name not in shown:
        shown.add(requirement.name)
        print(f"  {requirement.name} {version}")
import aeatrain  # noqa: E402

if Path(aeatrain.__file__).resolve().parents[1] != Path.cwd().resolve():
    problems.append(f"aeatrain imports from {aeatrain.__file__}, not from this checkout")
if not problems and not quiet:
    import data_prep.build, aeatrain.train, aeatrain.evaluate, imagecodecs, pytest, torch  # noqa
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}:",
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible")
    if require_cuda and not torch.cuda.is_available():
        problems.append("torch sees no GPU")
if problems:
    sys.exit("" if quiet else "gpu_setup.sh: " + "\n  ".join(["environment not ready:", *problems]))
EOF
}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv --without-pip --system-site-packages "$VENV"  # pip: PYTHON's
    purelib=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    # addsitedir, not a bare path: the .pth files in those folders count too, as there
    "$PYTHON" -c 'import site
for path in site.getsitepackages(): print(f"import site; site.addsitedir({path!r})")' \
        > "$purelib/_gpu_setup_python_site.pth"
fi
if check quiet 2>/dev/null; then
    echo "gpu_setup.sh: $VENV already holds the bundle and aeatrain"
else
    started=$SECONDS
    install=("$VENV/bin/python" -m pip install --quiet --no-index --no-deps --no-cache-dir
             --disable-pip-version-check)
    "${install[@]}" "$WHEELS"/*.whl
    "${install[@]}" --no-build-isolation --editable .
    echo "gpu_setup.sh: installed $(grep -c . "$WHEELS/BUNDLE.txt") wheels and aeatrain" \
         "into $VENV in $((SECONDS - started)) s"
fi
check loud
