"""brainmri/reporting/tracking.py: when W&B goes online, and the Tracker's life from start to finish."""

import pytest

from brainmri.config import TrackingConfig
from brainmri.errors import ConfigError
from brainmri.reporting.tracking import Tracker, resolve_mode, wandb_credentials_present
from brainmri.rundir import RunDir


def test_auto_is_online_with_an_api_key(tmp_path):
    assert resolve_mode("auto", {"WANDB_API_KEY": "x" * 40}, home=tmp_path) == "online"


def test_auto_is_offline_without_credentials(tmp_path):
    assert resolve_mode("auto", {}, home=tmp_path) == "offline"


def test_auto_reads_netrc_for_the_configured_host(tmp_path):
    (tmp_path / ".netrc").write_text("machine wandb.example.org\n  login user\n  password secret\n")
    assert not wandb_credentials_present({}, home=tmp_path)
    assert wandb_credentials_present({"WANDB_BASE_URL": "https://wandb.example.org"}, home=tmp_path)


def test_broken_netrc_counts_as_no_credentials(tmp_path):
    (tmp_path / ".netrc").write_text("machine\n")
    assert resolve_mode("auto", {}, home=tmp_path) == "offline"


@pytest.mark.parametrize("mode", ["online", "offline", "disabled"])
def test_explicit_modes_are_kept(mode, tmp_path):
    assert resolve_mode(mode, {"WANDB_API_KEY": "k"}, home=tmp_path) == mode


def test_tracking_config_validation():
    with pytest.raises(ConfigError, match="tracking.wandb"):
        TrackingConfig(wandb="cloud")
    with pytest.raises(ConfigError, match="tracking.log_every"):
        TrackingConfig(log_every=0)


class MainProcess:
    """The parts of an Accelerator a disabled Tracker touches."""

    is_main_process = True


def test_tracker_needs_a_resolved_mode(tmp_path):
    with pytest.raises(ValueError, match="resolve_mode"):
        Tracker(MainProcess(), TrackingConfig(), RunDir(tmp_path), "auto")


def test_disabled_tracker_does_nothing(tmp_path):
    tracker = Tracker(MainProcess(), TrackingConfig(wandb="disabled"), RunDir(tmp_path), "disabled")
    tracker.start({"a": 1})
    tracker.log({"epoch": 1})
    tracker.log_figure("x", tmp_path / "missing.png")
    assert tracker.finish() is None and list(tmp_path.iterdir()) == []


def test_offline_tracker_writes_one_run_and_says_how_to_upload_it(tmp_path, monkeypatch):
    from accelerate import Accelerator

    from tests.wandb_records import summarize, wait_for_exit_record

    monkeypatch.setenv("WANDB_SILENT", "true")
    run = RunDir(tmp_path)
    tracker = Tracker(Accelerator(cpu=True), TrackingConfig(name="unit"), run, "offline")
    tracker.start({"optim": {"lr": 0.5}})
    tracker.log({"epoch": 1, "val/acc": 0.75})
    command = tracker.finish()
    assert command == f"wandb sync {tmp_path / 'wandb'}/offline-run-*"
    (offline,) = (tmp_path / "wandb").glob("offline-run-*")
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    run_file = next(offline.glob("run-*.wandb"))
    wait_for_exit_record(run_file)
    data = summarize(run_file)
    assert data["run_ids"] == {run_id} and data["config"]["optim"]["lr"] == 0.5
    assert any(row.get("val/acc") == 0.75 for row in data["history"])
    assert tracker.finish() is None  # finishing twice is harmless


def test_sweep_summary_is_one_offline_run_with_its_figures_table_and_numbers(tmp_path, monkeypatch):
    from brainmri.reporting.tracking import log_sweep_summary
    from tests.wandb_records import read_records, summarize, wait_for_exit_record

    monkeypatch.setenv("WANDB_SILENT", "true")
    png = tmp_path / "cv.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(png)
    cfg = TrackingConfig(group="cnn_lr")
    command = log_sweep_summary(
        cfg, "offline", tmp_path, {"cv/val/acc": png}, ["setting", "mean"], [["t00", "0.9"]], {"cv/val/acc/mean": 0.9}
    )
    assert command == f"wandb sync {tmp_path / 'wandb'}/offline-run-*"
    (offline,) = (tmp_path / "wandb").glob("offline-run-*")
    run_file = next(offline.glob("run-*.wandb"))
    wait_for_exit_record(run_file)
    data = summarize(run_file)
    assert data["run_ids"] == {(tmp_path / "wandb_id.txt").read_text().strip()}
    assert data["summary"]["cv/val/acc/_type"] == "image-file" and data["summary"]["cv/settings/_type"] == "table-file"
    assert data["summary"]["cv/val/acc/mean"] == 0.9
    (run,) = [r.run for r in read_records(run_file) if r.WhichOneof("record_type") == "run"]
    assert run.run_group == "cnn_lr" and run.job_type == "cv-summary"
    # Asked again with the same numbers: nothing new is logged (an offline resume would open a second run folder).
    again = log_sweep_summary(
        cfg, "offline", tmp_path, {"cv/val/acc": png}, ["setting", "mean"], [["t00", "0.9"]], {"cv/val/acc/mean": 0.9}
    )
    assert again == command and len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1
    assert log_sweep_summary(cfg, "disabled", tmp_path / "x", {}, [], [], {}) is None and not (tmp_path / "x").exists()
