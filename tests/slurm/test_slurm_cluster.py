"""The test cluster itself: two logical nodes give a real 2-node allocation."""

import pytest

pytestmark = pytest.mark.slow


def test_two_node_allocation_runs_one_task_per_node(slurm):
    out = slurm.run(
        "srun",
        "-N2",
        "-n2",
        "--ntasks-per-node=1",
        "bash",
        "-c",
        'echo "$SLURM_PROCID $SLURMD_NODENAME $SLURM_NNODES"',
    )
    lines = sorted(out.split("\n")[:-1])
    assert lines == ["0 n1 2", "1 n2 2"]
