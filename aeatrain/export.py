"""Share a trained run as a BioImage Model Zoo package (bioimage.io model format 0.5).

    python -m aeatrain.export --run RUN --out MODEL.zip [--weights auto|raw|ema]
        [--data DATA] [--name NAME] [--author NAME ...] [--license SPDX] [--overwrite]

The package is what Fiji (deepImageJ), napari, ilastik and QuPath read (docs/export.md),
and it runs without aeatrain:

- weights in two formats, both of ``modelzoo.network.PackagedNetwork`` (the network
  with aeatrain's whole-image padding inside): TorchScript (traced) and ONNX (opset 17,
  IR version 8, dynamic batch, height and width; what deepImageJ's onnxruntime reads). The bare
  network's state dict rides along as an attachment named in ``config.aeatrain``, for
  ``train.init_from``;
- one input ``lr`` and one output ``sr``, axes (batch, channel, y, x). The input is the LR
  image ALREADY UPSAMPLED to the HR pixel grid (bicubic, by the run's scale): the network
  was trained on the registered LR warped into the HR frame, and a same-size model is the
  one every consumer tiles and overlays without scale arithmetic (docs/export.md says why);
- any size from ``2 * halo + 16`` px on: the network reflect-pads to its multiple and
  crops back, as ``aeatrain.protocol.inference.predict_full`` does, so a whole image through
  bioimageio.core gives aeatrain's prediction. The input's declared padding is the
  constant -1 (pixels are >= 0), which the network recognises and cuts off: the halo
  bioimageio.core pads around a whole image does not change the result. The output halo
  is the convolutions' measured receptive radius rounded up to the sampling grid, so
  consumers that tile crop every cut edge away. AEANet's attention is image-global: a
  tiled prediction uses each tile's attention summary instead of the whole image's (the
  package README says so);
- pre/postprocessing as the spec's operations: ``scale_linear`` by 1 / (2^bits - 1) to
  [0, 1], then ``clip`` to [0, 1] and ``scale_linear`` back to the input's range;
- test tensors cut from the run's own test data at the run's bit depth (an input tile and
  the package's output), a cover (input | output), a README with the "# Validation"
  section (training, the dataset's split and the run's evaluation if
  ``RUN/eval/metrics.json`` exists), citations, authors, license.

``--name`` and ``--license`` are checked before any work. The description is validated by
``bioimageio.spec`` and the finished zip read back by it BEFORE it is renamed onto
``--out``: a failed export leaves nothing. ``--overwrite`` replaces only a package this
command wrote (``config.aeatrain`` in its rdf.yaml). bioimageio.spec and onnx are the
optional ``export`` extra (``pip install 'aeatrain[export]'``); without them this command
says so in one line.

This module is the command: its checks, options and the final zip. What goes into the
package is built by aeatrain/modelzoo/ (network and weights, contents, description)."""

from __future__ import annotations

import argparse
import getpass
import importlib.util
import logging
import re
import tempfile
from pathlib import Path
from typing import Annotated

from aeatrain.errors import run_cli
from aeatrain.files.atomic import atomic_path
from aeatrain.files.outputs import AEATRAIN_PACKAGE, check_replaceable_file, check_writable
from aeatrain.modelzoo import ExportError
from aeatrain.modelzoo.contents import package_pieces
from aeatrain.modelzoo.description import describe

log = logging.getLogger(__name__)

EXPORT_EXTRA = "pip install 'aeatrain[export]'"


# ---------------------------------------------------------------------------- checks


def _require_export_packages() -> None:
    """bioimageio.spec and onnx, or one line saying how to get them (found, not imported:
    onnx is imported when the weights are written, after every check)."""
    missing = []
    for module in ("bioimageio.spec", "onnx"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # a parent package is missing
            found = False
        if not found:
            missing.append(module)
    if missing:
        raise ExportError(f"export needs {', '.join(missing)}: {EXPORT_EXTRA}")


def check_target(out: Path, *, overwrite: bool) -> None:
    """Refuse a target that is not a .zip, exists (without ``overwrite``), is not a
    bioimage.io package of ours to replace, or lies in a folder we cannot write."""
    if out.suffix.lower() != ".zip":
        raise ExportError(f"{out}: --out must name a .zip file (a bioimage.io package)")
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; --out must name a .zip file")
    check_replaceable_file(out, overwrite=overwrite, kind=AEATRAIN_PACKAGE)
    check_writable(out.parent, "--out")  # the folder the zip goes into


def load_network(run_dir: str, weights: str):
    """The run's float32 network in eval mode and its RunInfo; refuses non-networks."""
    from aeatrain.models import MODELS, trainable_names
    from aeatrain.run.final import RUN_JSON, load_run, read_run_json

    name = read_run_json(run_dir).model.name
    if name not in MODELS or not MODELS[name].trainable:  # lbnlm: a library built from data
        raise ExportError(
            f"{Path(run_dir) / RUN_JSON}: model {name!r} is not a trained neural network "
            f"({', '.join(trainable_names())}); a bioimage.io package holds network weights"
        )
    model, run = load_run(run_dir, weights=weights, device="cpu")
    if len(set(run.bit_depths)) != 1:
        raise ExportError(
            f"{Path(run_dir) / RUN_JSON}: trained on {sorted(set(run.bit_depths))}-bit data; "
            f"a package scales its input by one bit depth"
        )
    return model.float().eval(), run


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in this environment (some containers)
        raise ExportError("cannot tell your user name: pass --author NAME") from None


def save_package(descr, out: Path, *, overwrite: bool) -> None:
    """Zip the package beside ``out``, read it back with bioimageio.spec, then rename it."""
    from bioimageio.spec import InvalidDescr, load_model_description, save_bioimageio_package

    try:
        with atomic_path(out, overwrite=overwrite) as tmp:
            tmp.unlink()  # bioimageio.spec writes the zip itself
            save_bioimageio_package(descr, output_path=tmp)
            back = load_model_description(tmp, format_version=str(descr.format_version))
            if isinstance(back, InvalidDescr):
                raise AssertionError(f"bioimageio.spec rejects the package it wrote:\n{back}")
    except OSError as err:
        raise ExportError(f"{out}: cannot write ({err.strerror or err})") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m aeatrain.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--run", required=True, help="run folder (model.safetensors, run.json)")
    parser.add_argument("--out", required=True, help="the package to write, MODEL.zip")
    parser.add_argument(
        "--weights", choices=("auto", "raw", "ema"), default="auto", help="auto: EMA if any"
    )
    parser.add_argument(
        "--data", help="DATA folder to cut the test tensors from (default: the run's dataset)"
    )
    parser.add_argument(
        "--name",
        help="package name: ASCII letters, digits, _+- () (default: aeatrain MODEL RUN, "
        "other characters replaced by _)",
    )
    parser.add_argument(
        "--author",
        action="append",
        help="an author's name; repeat for several (default: your user name)",
    )
    parser.add_argument(
        "--license", default="CC-BY-4.0", help="SPDX licence of the weights (default CC-BY-4.0)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it is a package this command wrote (never any other file)",
    )
    return parser.parse_args(argv)


def default_name(model_name: str, run_dir: str) -> str:
    """``aeatrain MODEL RUN`` with every character the spec does not allow in a name (it
    takes ASCII letters, digits, ``_+- ()``) replaced by ``_``, at most 64 characters."""
    folder = Path(run_dir).resolve().name
    return re.sub(r"[^A-Za-z0-9_+\- ()]", "_", f"aeatrain {model_name} {folder}")[:NAME_LENGTH]


def check_metadata(args: argparse.Namespace) -> None:
    """Refuse a ``--name``/``--license`` the spec rejects before any work (one line each);
    fill in the default name and author."""
    from bioimageio.spec.model.v0_5 import ModelDescr
    from pydantic import TypeAdapter, ValidationError

    from aeatrain.run.final import read_run_json

    if args.name is None:
        model_name = read_run_json(args.run).model.name
        args.name = default_name(str(model_name), args.run)
    for option, value in (("--name", args.name), ("--license", args.license)):
        field = ModelDescr.model_fields[option[2:]]
        try:
            TypeAdapter(Annotated[(field.annotation, *field.metadata)]).validate_python(value)
        except ValidationError:
            raise ExportError(f"{option} {value!r}: {METADATA_RULES[option]}") from None
    args.author = args.author or [_user_name()]


NAME_LENGTH = 64  # bioimage.io wants a name of at most 64 characters (128 at the very most)
METADATA_RULES = {
    "--name": "a package name has 5 to 128 characters, ASCII letters, digits and _+- () only",
    "--license": "not an SPDX license identifier bioimage.io accepts (e.g. CC-BY-4.0, MIT, "
    "BSD-3-Clause; https://spdx.org/licenses)",
}


def export(args: argparse.Namespace) -> Path:
    """Check the target, the options and the run, build every piece, validate, write
    ``args.out``."""
    out = Path(args.out)
    check_target(out, overwrite=args.overwrite)
    _require_export_packages()
    check_metadata(args)
    model, run = load_network(args.run, args.weights)
    with tempfile.TemporaryDirectory(prefix="aeatrain-export-") as folder:
        geometry, files, info = package_pieces(
            model, run, Path(folder), data=args.data, name=args.name, authors=args.author,
            license=args.license,
        )  # fmt: skip
        descr = describe(run, geometry, files, info)
        save_package(descr, out, overwrite=args.overwrite)
    log.info(
        "%s: %s (%s weights, step %d), sizes from %d px, halo %d (receptive radius %d)",
        out, run.model_name, run.weights_kind, run.step, geometry.min_size, geometry.halo,
        geometry.radius,
    )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = export(parse_args(argv))
    print(f"wrote {out}; check it with: bioimageio test {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
