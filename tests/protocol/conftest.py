"""The protocol's tests run small models on small images, as the evaluation tests do: one
torch thread (tests/eval/conftest.py's fixture)."""

from tests.eval.conftest import _one_torch_thread  # noqa: F401  (an autouse fixture)
