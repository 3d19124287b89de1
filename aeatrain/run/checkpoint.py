"""Checkpoint folders of a run: ``RUN/checkpoints/step_N/``, only complete ones ever resumed.

A checkpoint is written under a temporary name (``.step_N.partial``) by every process
(``accelerator.save_state`` is collective: DeepSpeed writes one shard per rank), then the
main process adds ``trainer_state.json`` (last, flushed to disk) and renames the folder to
``step_N``. A rename within one file system is atomic, so a folder named ``step_N`` that
holds ``trainer_state.json`` is complete, whatever moment a crash or SIGKILL struck; a
``.partial`` folder is debris to delete. This module only knows folders and files: the
trainer (aeatrain/train.py) calls the accelerator around it.

Contents of a complete ``step_N``: what ``save_state`` writes (model weights, optimizer,
fp16 loss scaler, the Python/NumPy/torch RNG states of EVERY rank as
``random_states_<rank>.pkl``, and the objects registered with
``accelerator.register_for_checkpointing`` as ``custom_checkpoint_<i>.pkl``: 0 the
trainer's counters (step, skipped steps, init_from), 1 the EMA weights when EMA is on),
and ``trainer_state.json``, what a run folder is checked against before anything is
loaded:

    {"format": "aeatrain-trainer-state", "version": 2, "step": N, "data_position": N,
     "world_size": P, "seed": 0,
     "dataset": {"identity": "<sha256>", "path": "...", "manifest_sha256": "..."},
     "files": {"model.safetensors": BYTES, "optimizer.bin": BYTES, ...}}

Version 1 (aeatrain before the trainer state and EMA were registered with accelerate:
``ema.safetensors``, the counters in this file) is not resumed; the trainer refuses it in
one line (aeatrain/run/folder.py).

``data_position`` is the index of the next batch; the loader makes the batch of step s on
rank r a pure function of (seed, s, r), so the data position is the step itself.
``files`` lists every other file of the folder with its size, so a file lost or cut short
later (a full disk while copying a run, a half-synced folder) is noticed before resuming:
:func:`newest_intact` skips such a checkpoint (and names it) for the next older one.
Checkpoints written before ``files`` existed are checked by their file formats only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
STATE_FORMAT = "aeatrain-trainer-state"
STATE_VERSION = 2
_COMPLETE = re.compile(r"^step_(\d+)$")
_PARTIAL_SUFFIX = ".partial"


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """Where the complete checkpoint of ``step`` lives: ``RUN/checkpoints/step_N``."""
    return checkpoints_root(run_dir) / f"step_{step}"


def partial_path(run_dir: str | Path, step: int) -> Path:
    """The temporary name a checkpoint is written under before it is complete."""
    return checkpoints_root(run_dir) / f".step_{step}{_PARTIAL_SUFFIX}"


def complete_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete checkpoint, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        match = _COMPLETE.match(folder.name)
        if match and folder.is_dir() and (folder / STATE_FILE).is_file():
            found.append((int(match.group(1)), folder))
    return sorted(found)


def newest_complete(run_dir: str | Path) -> Path | None:
    """The checkpoint ``--resume`` takes: the highest step whose folder is complete."""
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def start_partial(run_dir: str | Path, step: int) -> Path:
    """Main process: an empty temporary folder for ``step`` (debris of a crash removed)."""
    folder = partial_path(run_dir, step)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def finish_partial(run_dir: str | Path, step: int, trainer_state: dict) -> Path:
    """Main process, after every rank has saved: add the trainer state, rename, return it.

    The state file is written last and flushed, then the folder renamed: a folder named
    ``step_N`` therefore never lacks a byte of what was saved into it.
    """
    partial = partial_path(run_dir, step)
    state = {
        "format": STATE_FORMAT, "version": STATE_VERSION, **trainer_state, "step": step,
        "files": _file_sizes(partial),
    }  # fmt: skip
    _write_json_synced(partial / STATE_FILE, state)
    final = checkpoint_path(run_dir, step)
    if final.exists():  # a complete save of the same step, e.g. before a crash: same state
        shutil.rmtree(final)
    partial.rename(final)
    _fsync_dir(final.parent)
    return final


def newest_intact(run_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint whose files are all there, and the broken newer ones.

    Returns ``(checkpoint or None, [(broken folder, what is wrong), ...])``, newest first.
    """
    broken = []
    for _, folder in reversed(complete_checkpoints(run_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, broken
        broken.append((folder, problem))
    return None, broken


def checkpoint_problem(folder: Path) -> str | None:
    """What makes a complete checkpoint unusable (one phrase naming the file), or None."""
    try:
        state = read_trainer_state(folder)
    except (OSError, UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        return f"{STATE_FILE} is not readable ({err})"
    for name, size in (state.get("files") or {}).items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is cut short or changed ({path.stat().st_size} of {size} bytes)"
    for path in sorted(folder.rglob("*")):
        problem = _format_problem(path) if path.is_file() else None
        if problem:
            return f"{path.relative_to(folder)} {problem}"
    return None


def _format_problem(path: Path) -> str | None:
    """Cheap whole-file checks: a safetensors file's header must account for its length;
    a ``torch.save`` file is a zip archive whose directory sits at its very end."""
    if path.suffix == ".safetensors":
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return "is not a safetensors file (shorter than its header)"
            (header_length,) = struct.unpack("<Q", head)
            if header_length > path.stat().st_size - 8:
                return "is cut short (inside its header)"
            try:
                header = json.loads(handle.read(header_length))
                ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
            except (ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError):
                return "is not a safetensors file (unreadable header)"
        expected = 8 + header_length + max(ends, default=0)
        if path.stat().st_size != expected:
            return f"is cut short ({path.stat().st_size} of {expected} bytes)"
    elif path.suffix in (".bin", ".pt", ".pkl") and not zipfile.is_zipfile(path):
        return "is cut short or not a torch.save file"
    return None


def _file_sizes(folder: Path) -> dict[str, int]:
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != STATE_FILE
    }


def prune(run_dir: str | Path, keep: int) -> list[Path]:
    """Main process: delete all but the newest ``keep`` complete checkpoints and any debris."""
    removed = [folder for _, folder in complete_checkpoints(run_dir)[:-keep]]
    root = checkpoints_root(run_dir)
    if root.is_dir():
        removed += [p for p in root.iterdir() if p.name.endswith(_PARTIAL_SUFFIX)]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


# What torch.save's C++ writer raises (as RuntimeError, not OSError) when a write fails,
# e.g. on a full disk: "basic_ios::clear: iostream error", "[enforce fail at
# inline_container.cc:672] . unexpected pos 704 vs 598", "PytorchStreamWriter failed ...".
_TORCH_WRITE_FAILURES = ("basic_ios::clear", "inline_container.cc", "PytorchStreamWriter")


def write_failure(err: BaseException, folder: Path) -> str | None:
    """What went wrong when writing into ``folder`` failed with ``err``, as a phrase for the
    user; None when ``err`` is not a failed write (a bug, which must raise as it is)."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    if isinstance(err, RuntimeError) and any(s in str(err) for s in _TORCH_WRITE_FAILURES):
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        free_mib = shutil.disk_usage(existing).free / 2**20
        return (
            f"torch.save could not write a file: the disk is full or failing? "
            f"{free_mib:,.0f} MiB free there"
        )
    return None


def read_trainer_state(checkpoint: str | Path) -> dict:
    """The trainer state of a complete checkpoint (raises ValueError if it is not ours)."""
    path = Path(checkpoint) / STATE_FILE
    state = json.loads(path.read_text())
    if (
        not isinstance(state, dict)
        or state.get("format") != STATE_FORMAT
        or state.get("version") != STATE_VERSION
    ):
        raise ValueError(f"{path}: not an {STATE_FORMAT} v{STATE_VERSION} file")
    return state


def state_version(checkpoint: str | Path) -> int | None:
    """The version of a checkpoint's ``trainer_state.json``; None when it is not ours."""
    try:
        state = json.loads((Path(checkpoint) / STATE_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return None
    version = state.get("version")
    return version if isinstance(version, int) else None


def _write_json_synced(path: Path, data: dict) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
