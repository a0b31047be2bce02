"""Each rank's heartbeat in the run directory, and who stopped answering when a collective fails.

A rank's thread rewrites ``heartbeats/rank_N.json`` (host, pid, step, time) every few seconds
while training runs. When a collective fails (a rank's process died, its node went down) or
times out (a rank hangs: a stuck filesystem, a wedged driver, SIGSTOP), the survivors read
every heartbeat: the rank whose heartbeat went quiet is the one lost, and its last step is
where it stopped. The thread stops with the process, so a killed or frozen rank goes quiet.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from brainmri.rundir import atomic_write_json

INTERVAL = 2.0  # seconds between beats
QUIET = 3 * INTERVAL  # a heartbeat older than this has gone quiet


@dataclass(frozen=True)
class Beat:
    """One rank's last sign of life."""

    rank: int
    host: str
    pid: int
    step: int
    time: float


def heartbeat_dir(run_dir: Path) -> Path:
    return run_dir / "heartbeats"


class Heartbeat:
    """The beating thread of one rank; :meth:`step` only records, the thread writes."""

    def __init__(self, run_dir: Path, rank: int, node: Optional[str] = None, interval: float = INTERVAL):
        self.path = heartbeat_dir(run_dir) / f"rank_{rank}.json"
        self.rank, self.interval = rank, interval
        self.host = node or socket.gethostname()
        self.current_step = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{rank}", daemon=True)

    def start(self) -> "Heartbeat":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write()
        self._thread.start()
        return self

    def step(self, step: int) -> None:
        self.current_step = step

    def stop(self) -> None:
        self._stop.set()

    def _write(self) -> None:
        beat = Beat(self.rank, self.host, os.getpid(), self.current_step, time.time())
        try:
            atomic_write_json(self.path, asdict(beat))
        except OSError:
            pass  # a full or flaky filesystem must not stop training; the beat is advisory

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._write()


def read_beats(run_dir: Path) -> list[Beat]:
    beats = []
    for path in sorted(heartbeat_dir(run_dir).glob("rank_*.json")):
        try:
            beats.append(Beat(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return beats


def quiet_rank(beats: list[Beat], me: int, now: float) -> Optional[Beat]:
    """The rank that stopped answering: the stalest heartbeat other than ``me``, when it is at
    least :data:`QUIET` seconds old at ``now``; None when every other rank still beats."""
    others = [b for b in beats if b.rank != me]
    if not others:
        return None
    stalest = min(others, key=lambda b: b.time)
    return stalest if now - stalest.time >= QUIET else None


def find_quiet_rank(run_dir: Path, me: int, wait: float = QUIET + INTERVAL) -> Optional[Beat]:
    """:func:`quiet_rank`, giving a rank that just died the time to go quiet: a peer's death
    breaks the survivors' collective within seconds, sooner than its heartbeat ages."""
    deadline = time.time() + wait
    while True:
        now = time.time()
        lost = quiet_rank(read_beats(run_dir), me, now)
        if lost is not None or now >= deadline:
            return lost
        time.sleep(0.5)


def describe_loss(beat: Beat, now: float, step: int) -> str:
    """``rank 1 on node2 lost at step 412 (its last heartbeat: step 410, 14 s ago, pid 3121)``:
    ``step`` is where the survivor's collective broke; the heartbeat may trail it by a beat."""
    seen = f"its last heartbeat: step {beat.step}, {now - beat.time:.0f} s ago, pid {beat.pid}"
    return f"rank {beat.rank} on {beat.host} lost at step {step} ({seen})"
