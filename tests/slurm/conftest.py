"""A session-wide real SLURM cluster (2 logical nodes on 127.0.0.1) for launcher tests."""

import pytest

from tests.slurm.cluster import LocalSlurm, SlurmUnavailable


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"), nodes=2, cpus_per_node=1)
    try:
        cluster.start()
    except SlurmUnavailable as err:
        pytest.skip(f"no SLURM here: {err}")
    yield cluster
    cluster.stop()
