"""RUN/, the folder of one training run: its layout and same-run policy (:mod:`.folder`),
checkpoints (:mod:`.checkpoint`), the trainer's lock (:mod:`.lock`), the final files that
evaluate, predict, refmaps and export read (:mod:`.final`), and the ``--weights/--device``
options of those tools (:mod:`.options`).

The names of the finished run's files live here, light to import (no torch): the
``--overwrite`` marker of a run folder (:data:`RUN`) is built from them."""

from aeatrain.files.outputs import Marker

RUN_FORMAT = "aeatrain-run"
RUN_JSON = "run.json"
CONFIG_YAML = "config.yaml"
WEIGHT_FILES = {"raw": "model.safetensors", "ema": "model_ema.safetensors"}
RUN = Marker(RUN_JSON, "format", RUN_FORMAT, "a run folder of aeatrain.train")
