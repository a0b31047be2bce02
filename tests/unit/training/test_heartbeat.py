"""brainmri/training/heartbeat.py: each rank beats into the run directory; the rank that went
quiet is the one a failed collective lost."""

from __future__ import annotations

import time

import pytest

from brainmri.training.distributed import collective_failure
from brainmri.training.heartbeat import QUIET, Beat, Heartbeat, describe_loss, find_quiet_rank, quiet_rank, read_beats


def test_a_heartbeat_rewrites_its_file_with_the_latest_step(tmp_path):
    beat = Heartbeat(tmp_path, rank=1, node="node2", interval=0.05).start()
    try:
        beat.step(41)
        deadline = time.time() + 5
        while time.time() < deadline and [b.step for b in read_beats(tmp_path)] != [41]:
            time.sleep(0.02)
    finally:
        beat.stop()
    (seen,) = read_beats(tmp_path)
    assert (seen.rank, seen.host, seen.step) == (1, "node2", 41) and time.time() - seen.time < 5


def test_the_quiet_rank_is_the_stalest_other_than_me_and_only_when_it_is_really_quiet():
    now = 1000.0
    beats = [Beat(0, "node1", 10, 412, now), Beat(1, "node2", 11, 405, now - 14), Beat(2, "node1", 12, 412, now - 1)]
    assert quiet_rank(beats, me=0, now=now).rank == 1
    assert quiet_rank(beats, me=1, now=now) is None  # rank 2 is 1 s behind: still beating
    fresh = [Beat(0, "node1", 10, 5, now), Beat(1, "node2", 11, 5, now - 1)]
    assert quiet_rank(fresh, me=0, now=now) is None  # everyone beats: the error was something else
    assert describe_loss(beats[1], now, 412) == (
        "rank 1 on node2 lost at step 412 (its last heartbeat: step 405, 14 s ago, pid 11)"
    )


def test_a_rank_that_just_died_is_given_the_time_to_go_quiet(tmp_path):
    """A peer's death breaks the collective within seconds, before its last beat is old."""
    mine = Heartbeat(tmp_path, rank=0, interval=0.05).start()
    theirs = Heartbeat(tmp_path, rank=1, node="node2", interval=0.05).start()
    theirs.stop()  # rank 1 dies now
    try:
        started = time.time()
        lost = find_quiet_rank(tmp_path, me=0, wait=QUIET + 2)
        assert lost is not None and lost.rank == 1 and time.time() - started >= QUIET - 0.5
    finally:
        mine.stop()


@pytest.mark.parametrize(
    "message, lost",
    [
        ("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4011", True),
        ("Connection reset by peer", True),
        ("[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7) ran for 600000 ms", True),
        ("Timed out waiting 20000ms for recv operation to complete", True),
        ("mat1 and mat2 shapes cannot be multiplied (4x10 and 12x4)", False),
    ],
)
def test_collective_failures_are_told_from_bugs(message, lost):
    assert collective_failure(RuntimeError(message)) is lost
