"""Evaluation tests run small models on small images: one torch thread is faster there
(no thread start-up per op, no fight over the CPU with other test processes)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
