"""The SLURM tier runs against the real 2-node cluster of slurm/dev-cluster/up.sh."""

import subprocess

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="session", autouse=True)
def slurm_cluster():
    """Bring the dev cluster up (idempotent; .ci/run has already done it in CI) and refuse to
    start on a busy queue: the tests size their jobs to the whole cluster, so a job left by
    someone else would keep them pending until their timeouts (15 minutes each), and the
    failure would then read as a hang instead of naming the job."""
    proc = subprocess.run(
        ["bash", str(REPO / "slurm" / "dev-cluster" / "up.sh")], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"dev cluster did not come up:\n{proc.stdout}\n{proc.stderr}"
    queue = subprocess.run(["squeue", "-h", "-o", "%i %j %T %N"], capture_output=True, text=True, timeout=60)
    assert queue.returncode == 0, f"squeue failed: {queue.stderr.strip()}"
    busy = queue.stdout.strip()
    assert not busy, (
        "the dev cluster's queue is not empty before the SLURM tests (id name state nodes): "
        f"{'; '.join(busy.splitlines())}; wait for them, or `bash slurm/dev-cluster/up.sh --clean` to cancel them"
    )
