"""brainmri/cluster/waiting.py: squeue read, reasons that cannot clear, and jobs that left the queue
without a result, decided without a cluster (fake jobs, squeue rows given)."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

from brainmri.cluster import waiting


def fake_job(tmp_path: Path, job_id: str = "77"):
    paths = SimpleNamespace(folder=tmp_path, stderr=tmp_path / f"{job_id}_0_log.err")
    return SimpleNamespace(job_id=job_id, paths=paths, task=lambda i: SimpleNamespace(result=lambda: {"ok": i}))


def queue(state: str, reason: str = "None", job_id: str = "77") -> dict:
    return waiting.parse_squeue(f"{job_id}|{state}|{reason}|node[1-2]\n")


def no_down() -> set:
    return set()


def test_parse_squeue_and_describe():
    entry = waiting.parse_squeue("12_3|PENDING|Resources|\n13|RUNNING|None|node[1-2]\n")
    assert entry["12_3"].describe() == "PENDING (Resources)" and entry["13"].describe() == "RUNNING on node[1-2]"


@pytest.mark.parametrize(
    "reason, blocking",
    [
        ("PartitionConfig", True),
        ("AssocGrpGRES", False),
        ("AssocGrpCpuLimit", True),
        ("QOSMaxGRESPerUser", True),
        ("Resources", False),
        ("Priority", False),
        ("BeginTime", False),
        ("DependencyNeverSatisfied", True),
        ("ReqNodeNotAvail, UnavailableNodes:node[2-3]", True),
        ("ReqNodeNotAvail, UnavailableNodes:node4", False),
    ],
)
def test_reasons_that_cannot_clear(reason, blocking):
    assert (waiting.blocking_reason(reason, down=lambda: {"node3"}) is not None) is blocking


def test_a_job_that_cannot_start_ends_the_wait(tmp_path):
    watch = waiting.Watch(fake_job(tmp_path), "job 77", 2)
    out = waiting.step(
        watch, queue("PENDING", "PartitionConfig"), 0.0, 10.0, lambda r: waiting.blocking_reason(r, no_down)
    )
    assert not out.ok and out.message == (
        "cannot start: PartitionConfig (the request exceeds what partition's nodes offer); "
        "it is still queued: scancel 77"
    )
    assert waiting.step(watch, queue("PENDING", "Resources"), 0.0, 10.0, lambda r: None) is None


def test_a_job_that_left_the_queue_without_a_result_is_noticed_after_the_grace(tmp_path):
    watch = waiting.Watch(fake_job(tmp_path), "job 77", 2)
    assert waiting.step(watch, queue("PENDING", "BeginTime"), 0.0, 10.0, lambda r: None) is None
    assert waiting.step(watch, {}, 100.0, 10.0, lambda r: None) is None  # within the grace
    assert waiting.step(watch, None, 105.0, 10.0, lambda r: None) is None  # squeue did not answer: no conclusion
    out = waiting.step(watch, {}, 111.0, 10.0, lambda r: None)
    assert not out.ok and out.message.startswith(
        "left the queue without a result (before it started: cancelled, or its node failed)"
    )


def test_a_cancelled_job_still_listed_says_its_state(tmp_path):
    watch = waiting.Watch(fake_job(tmp_path), "job 77", 2)
    assert waiting.step(watch, queue("RUNNING"), 0.0, 0.0, lambda r: None) is None
    out = waiting.step(watch, queue("CANCELLED"), 1.0, 0.0, lambda r: None)
    assert out.message.startswith("ended CANCELLED after it started, without a result")


def test_a_finished_job_is_collected_once_every_task_wrote_its_result(tmp_path):
    watch = waiting.Watch(fake_job(tmp_path), "job 77", 2)
    (tmp_path / "77_0_result.pkl").write_bytes(pickle.dumps(("success", {})))
    assert waiting.step(watch, queue("COMPLETING"), 0.0, 0.0, lambda r: None) is None
    assert waiting.step(watch, queue("COMPLETED"), 0.0, 99.0, lambda r: None) is None  # task 1's result not yet there
    (tmp_path / "77_1_result.pkl").write_bytes(pickle.dumps(("success", {})))
    out = waiting.step(watch, queue("COMPLETED"), 0.0, 99.0, lambda r: None)
    assert out.ok and out.results == [{"ok": 0}, {"ok": 1}]


def test_an_elastic_job_ends_with_rank_0s_result_whatever_its_last_attempt_had(tmp_path):
    # slurm.nodes=1-2 that ended on one node: task 1 never wrote a result in that attempt.
    watch = waiting.Watch(fake_job(tmp_path), "job 77", 1)
    (tmp_path / "77_0_result.pkl").write_bytes(pickle.dumps(("success", {})))
    out = waiting.step(watch, queue("COMPLETED"), 0.0, 99.0, lambda r: None)
    assert out.ok and out.results == [{"ok": 0}]


def test_summary_line():
    watches = [waiting.Watch(SimpleNamespace(job_id=f"5_{i}"), f"trial {i}", 1) for i in range(3)]
    rows = waiting.parse_squeue("5_0|RUNNING|None|node1\n5_1|PENDING|Resources|\n5_2|PENDING|Resources|\n")
    assert waiting.summary(watches, rows) == "1 RUNNING on node1; 2 PENDING (Resources)"
    assert waiting.summary(watches[:1], rows) == "trial 0: RUNNING on node1"


def test_the_last_event_of_a_jobs_log_says_why_its_attempt_ended(tmp_path):
    log = tmp_path / "7_0_log.out"
    log.write_text(
        "[brainmri] job 7 rank 0/2 on node node1 ..., attempt 1\n"
        "epoch 1/4 ...\n"
        "[brainmri] rank 1 on node2 lost at step 12 (its last heartbeat: step 6, 22 s ago, pid 9); "
        "noticed by rank 0; requeued, attempt 2\n"
        "[brainmri] job 7 rank 0/2 on node node1 ..., attempt 2\n"
    )
    assert waiting.last_event(log).startswith("rank 1 on node2 lost at step 12") and "attempt 2" in waiting.last_event(
        log
    )
    assert waiting.last_event(tmp_path / "missing.out") is None
    (tmp_path / "quiet.out").write_text("[brainmri] job 8 rank 0/1 ..., attempt 1\n")
    assert waiting.last_event(tmp_path / "quiet.out") is None
