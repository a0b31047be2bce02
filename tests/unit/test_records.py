"""brainmri/records.py: the typed records and their JSON form on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brainmri.records import DatasetInfo, EpochRecord, RunResults, best_of, is_better, lower_is_better

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_v1"


def test_metric_direction_is_one_rule():
    assert lower_is_better("val/loss") and lower_is_better("train/loss")
    assert not lower_is_better("val/acc") and not lower_is_better("val/macro_f1")
    assert is_better("val/loss", 0.4, 0.5) and not is_better("val/loss", 0.6, 0.5)
    assert is_better("val/acc", 0.6, 0.5) and is_better("val/acc", 0.1, None)
    assert (
        best_of("val/loss", [0.5, 0.3, 0.4]) == 0.3
        and best_of("val/acc", [0.5, 0.7]) == 0.7
        and best_of("val/acc", []) is None
    )


def test_epoch_records_read_and_write_the_metrics_jsonl_of_earlier_runs_unchanged():
    line = (FIXTURE / "metrics.jsonl").read_text().splitlines()[0]
    record = EpochRecord.from_json(json.loads(line))
    assert record.epoch == 1 and record.value("val/macro_f1") == record.val_macro_f1
    assert json.dumps(record.to_json()) == line  # same keys, same order, same values
    with pytest.raises(KeyError):
        record.value("val/auroc")


def test_gpu_memory_is_written_only_when_measured():
    record = EpochRecord.from_json(json.loads((FIXTURE / "metrics.jsonl").read_text()))
    assert "gpu_mem_peak_gb" not in record.to_json()
    record.gpu_mem_peak_gb = 1.5
    assert record.to_json()["gpu_mem_peak_gb"] == 1.5


def test_dataset_info_round_trips_and_reads_older_files():
    text = (FIXTURE / "dataset.json").read_text()
    info = DatasetInfo.from_json(json.loads(text))
    assert json.dumps(info.to_json(), indent=2) + "\n" == text
    old = {k: v for k, v in json.loads(text).items() if k not in ("dedup", "train_test_leaks", "bad_images")}
    assert DatasetInfo.from_json(old).dedup == "none"


def test_results_json_keys():
    results = RunResults(3, "val/acc", 0.9, 2, "bf16", {"val/acc": 0.9, "val/loss": 0.3, "val/macro_f1": 0.8})
    assert results.to_json()["test"] is None and results.to_json()["val/acc"] == 0.9
    results.test, results.test_size = {"test/acc": 0.7, "confusion_matrix": [[1]]}, 10
    out = results.to_json()
    assert out["test/acc"] == 0.7 and out["test/size"] == 10 and "test" not in out and out["world_size"] == 2


def test_an_epoch_without_validation_writes_no_val_keys_and_last_selects_the_latest():
    record = EpochRecord(3, 0.5, 0.8, 0.79, 100.0, 2.0, None, None, None, 1e-3, 2.5)
    data = record.to_json()
    assert not any(k.startswith("val/") for k in data) and not record.has_val and record.val_metrics() == {}
    again = EpochRecord.from_json(json.loads(json.dumps(data)))
    assert again == record
    assert again.value("last") == 3.0 and is_better("last", 3.0, 2.0) and not lower_is_better("last")
