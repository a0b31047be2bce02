"""Read an offline W&B run file (``run-<id>.wandb``) for assertions.

The file is a LevelDB-style log (7-byte file header, 32 KiB blocks, 7-byte record headers,
records split into FIRST/MIDDLE/LAST chunks) of ``wandb_internal_pb2.Record`` messages.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, records, pending = HEADER, [], b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:
            pos += left_in_block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind == FULL:
            payload = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        else:
            payload, pending = pending + chunk, b""
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def wait_for_exit_record(path: Path, timeout: float = 30.0) -> None:
    """Wait until W&B has written the run's ``exit`` record.

    wandb-core writes the offline file from its own process: ``run.finish()`` can return
    while the file still holds only its 7-byte header (seen about once in ten runs with
    wandb 0.31), and the process's exit completes it.
    """
    deadline = time.monotonic() + timeout
    while True:
        data = Path(path).read_bytes()
        if len(data) > HEADER and any(r.WhichOneof("record_type") == "exit" for r in read_records(path)):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has no exit record after {timeout:.0f} s ({len(data)} bytes)")
        time.sleep(0.2)


def summarize(path: Path) -> dict:
    """Run id, config keys, history rows (dicts) and summary keys of one run file."""
    out = {"run_ids": set(), "config": {}, "history": [], "summary": {}}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run_ids"].add(record.run.run_id)
            for item in record.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            out["history"].append(row)
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
    return out
