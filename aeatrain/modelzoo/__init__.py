"""The bioimage.io model package of a run (format 0.5), what ``python -m aeatrain.export``
(aeatrain/export.py, the CLI) writes and ``train.init_from`` reads back:

- :mod:`.network`: the network as the package runs it (padding inside), its geometry
  (sizes, halo) and its TorchScript and ONNX weights;
- :mod:`.contents`: the test tensors, cover and README cut from the run's own data;
- :mod:`.description`: the rdf.yaml description, validated by bioimageio.spec;
- :mod:`.read`: the weights of a package, for ``train.init_from``.

Not named ``packaging``: ``aeatrain/train.py`` runs as a script, with aeatrain/ first on
sys.path, where a folder of that name would hide the ``packaging`` distribution.
"""

from aeatrain.errors import UserError

ONNX_OPSET = 17  # onnxruntime 1.13 (deepImageJ's engine) reads opset <= 17 ...
ONNX_IR_VERSION = 8  # ... and IR <= 8; torch's TorchScript-based exporter writes both
OUTSIDE = -1.0  # the package's padding value: pixels are >= 0, so a frame of it is padding
INPUT_ID, OUTPUT_ID = "lr", "sr"
STATE_DICT = "weights_state_dict.pt"  # an attachment, for train.init_from (not a weight format)


class ExportError(UserError):
    """An export that cannot be done as asked; the message names the file or option."""
