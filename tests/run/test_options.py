"""aeatrain.run.options: how the tools that load a run read --device."""

import pytest
import torch

from aeatrain.errors import UserError
from aeatrain.run.options import choose_device


def test_choose_device_prefers_cuda_only_when_present():
    assert choose_device("cpu").type == "cpu"
    assert choose_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_device_torch_does_not_know_is_one_line_naming_the_option():
    with pytest.raises(UserError, match=r"--device tpu9: not a device"):
        choose_device("tpu9")
