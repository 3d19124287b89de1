"""The GPU machine's offline environment: launch/gpu_setup.sh installs a bundle of wheels
and aeatrain with no index into an environment made from a python that is itself a virtual
environment (as the GPU machines' is), keeping that python's packages (its torch);
launch/gpu_wheels.sh refuses a folder that is not its own. The whole rehearsal
(launch/gpu_rehearsal.sh: CPython 3.12, the machine's versions, about 4 GB of downloads
the first time) runs here only when AEATRAIN_GPU_REHEARSAL names its work folder."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OFFLINE = {"PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}  # pip can reach nothing


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k != "PYTHONPATH"}  # fmt: skip
    return {**env, **OFFLINE, **extra}


def _probe_wheel(folder: Path) -> None:
    """A bundle of one tiny pure-Python wheel, probe-pkg 1.0, and its BUNDLE.txt."""
    folder.mkdir()
    files = {
        "probe_pkg/__init__.py": "VERSION = '1.0'\n",
        "probe_pkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: probe-pkg\nVersion: 1.0\n",
        "probe_pkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files["probe_pkg-1.0.dist-info/RECORD"] = "".join(f"{name},,\n" for name in files)
    with zipfile.ZipFile(folder / "probe_pkg-1.0-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    (folder / "BUNDLE.txt").write_text("probe-pkg==1.0\n")


@pytest.mark.slow  # an editable install of aeatrain and two torch imports: about 15 s
@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs pytest run from a venv")
def test_setup_installs_offline_and_keeps_the_packages_of_a_venv_python(tmp_path):
    _probe_wheel(tmp_path / "wheels")
    venv = tmp_path / "venv-gpu"
    result = subprocess.run(
        [str(REPO / "launch/gpu_setup.sh"), str(venv), str(tmp_path / "wheels")],
        env=_env(PYTHON=sys.executable), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"installed 1 wheels and aeatrain into {venv}" in result.stdout
    assert "  probe-pkg 1.0\n" in result.stdout and "no GPU visible" in result.stdout
    where = subprocess.run(
        [str(venv / "bin/python"), "-c",
         "import aeatrain, probe_pkg, torch; print(torch.__file__, probe_pkg.__file__, aeatrain.__file__)"],
        env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    torch_file, probe_file, aeatrain_file = map(Path, where.stdout.split())
    assert torch_file.is_relative_to(Path(sys.prefix))  # the python's own, not reinstalled
    assert probe_file.is_relative_to(venv) and aeatrain_file.is_relative_to(REPO)


def test_setup_and_wheels_refuse_what_is_not_theirs(tmp_path):
    setup = subprocess.run(
        [str(REPO / "launch/gpu_setup.sh"), str(tmp_path / "venv"), str(tmp_path)],
        env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert setup.returncode == 2 and setup.stdout == ""
    assert setup.stderr.startswith(f"gpu_setup.sh: error: {tmp_path}/BUNDLE.txt: no such file")
    (tmp_path / "theirs.txt").write_text("not ours\n")
    wheels = subprocess.run([str(REPO / "launch/gpu_wheels.sh"), str(tmp_path)],
                            env=_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert wheels.returncode == 2 and len(wheels.stderr.splitlines()) == 1
    assert "is neither an empty folder nor a bundle of gpu_wheels.sh" in wheels.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs.txt"]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("AEATRAIN_GPU_REHEARSAL"),
                    reason="the rehearsal takes minutes and 4 GB (CPython 3.12, the GPU "
                    "machine's packages); set AEATRAIN_GPU_REHEARSAL=WORK to run it")  # fmt: skip
def test_gpu_rehearsal_passes():
    work = os.environ["AEATRAIN_GPU_REHEARSAL"]
    result = subprocess.run([str(REPO / "launch/gpu_rehearsal.sh"), work],
                            capture_output=True, text=True, timeout=3600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    assert "gpu_rehearsal.sh: passed in" in result.stdout
