"""``train.init_from``: the weights a new run starts from, of a finished run folder
(:func:`aeatrain.run.final.run_weights`) or of a package ``python -m aeatrain.export``
wrote (read here, beside the writer's names)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import torch

from aeatrain.files.yamlfile import load_yaml
from aeatrain.run.final import InitialWeights, RunError, run_weights


def read_initial_weights(source: str | Path) -> InitialWeights:
    """A finished run folder (EMA weights if it has them, as predict chooses) or a
    bioimage.io MODEL.zip written by ``python -m aeatrain.export`` (its pytorch_state_dict).

    Raises :class:`RunError` naming the source when it is neither, or is damaged.
    """
    path = Path(source)
    if path.is_dir():
        return run_weights(path)
    if path.is_file() and zipfile.is_zipfile(path):
        return package_weights(path)
    raise RunError(
        f"{path}: train.init_from must name a finished run folder or a MODEL.zip written by "
        f"python -m aeatrain.export"
    )


def package_weights(package: Path) -> InitialWeights:
    """The state dict of an aeatrain-exported bioimage.io package: the attachment its
    ``config.aeatrain`` names (or, in a package of an earlier aeatrain, its
    ``pytorch_state_dict`` weights built by ``aeatrain.models.build_model``)."""
    try:
        with zipfile.ZipFile(package) as archive:
            rdf = load_yaml(archive.read("rdf.yaml"), f"{package}: rdf.yaml")
            ours = ((rdf or {}).get("config") or {}).get("aeatrain") or {}
            entry = ((rdf or {}).get("weights") or {}).get("pytorch_state_dict") or {}
            architecture = entry.get("architecture") or {}
            if ours.get("state_dict"):
                source = str(ours["state_dict"])
                kwargs = {"name": ours["model"]["name"], **(ours["model"].get("kwargs") or {})}
            elif (architecture.get("import_from"), architecture.get("callable")) == (
                "aeatrain.models",
                "build_model",
            ):
                source, kwargs = str(entry["source"]), dict(architecture.get("kwargs") or {})
            else:
                raise RunError(
                    f"{package}: not a package exported by aeatrain (no config.aeatrain "
                    f"state_dict, and no pytorch_state_dict built by aeatrain.models)"
                )
            data = archive.read(source)
    except (KeyError, TypeError, OSError, zipfile.BadZipFile) as err:
        raise RunError(f"{package}: not a readable bioimage.io package ({err})") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged or foreign files
        raise RunError(f"{package}: {source} is not a readable state dict ({err})") from None
    name = kwargs.pop("name", None)
    record = {
        "path": str(package.resolve()),
        "kind": "bioimageio",
        "weights": source,
        "step": ((rdf.get("config") or {}).get("aeatrain") or {}).get("step"),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return InitialWeights(package, name, kwargs, state, record)
