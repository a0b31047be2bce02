"""The SLURM tier runs against the real 2-node cluster of slurm/dev-cluster/up.sh."""

import subprocess

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="session", autouse=True)
def slurm_cluster():
    """Bring the dev cluster up (idempotent; .ci/run has already done it in CI)."""
    proc = subprocess.run(["bash", str(REPO / "slurm" / "dev-cluster" / "up.sh")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"dev cluster did not come up:\n{proc.stdout}\n{proc.stderr}"
