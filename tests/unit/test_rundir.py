import pytest

from brainmri.errors import RunDirError
from brainmri.rundir import RunDir, atomic_write_json, check_output_dir, clear_run, read_jsonl, write_jsonl


def test_new_empty_or_missing_dir_is_new(tmp_path):
    assert check_output_dir(tmp_path / "missing", "never", False) == "new"
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty", "never", False) == "new"


def test_existing_run_is_never_clobbered(tmp_path):
    (tmp_path / "config.yaml").write_text("x: 1\n")
    with pytest.raises(RunDirError, match="already holds a run: add resume=auto .* or overwrite=true"):
        check_output_dir(tmp_path, "never", False)
    assert check_output_dir(tmp_path, "auto", False) == "resume"
    assert check_output_dir(tmp_path, "never", True) == "overwrite"


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "thesis.tex").write_text("x")
    with pytest.raises(RunDirError, match="holds no brainmri run"):
        check_output_dir(tmp_path, "auto", False)


def test_overwrite_clears_only_run_files(tmp_path):
    run = RunDir(tmp_path)
    for p in (run.config, run.metrics, run.results):
        p.write_text("x")
    run.checkpoint(1).mkdir(parents=True)
    (tmp_path / "notes.md").write_text("keep me")
    clear_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md"]


def test_checkpoints_complete_only_and_pruning(tmp_path):
    run = RunDir(tmp_path)
    for epoch in (1, 2, 3, 4):
        run.checkpoint(epoch).mkdir(parents=True)
    run.temp_checkpoint(5).mkdir()
    assert run.latest_checkpoint()[0] == 4
    run.prune_checkpoints(keep=2, best_epoch=1)
    assert [e for e, _ in run.complete_checkpoints()] == [1, 3, 4]
    run.remove_temp_checkpoints()
    assert not run.temp_checkpoint(5).exists()


def test_mid_epoch_checkpoints_sort_after_their_epoch_and_are_pruned_once_passed(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoint(2, 7).name == "epoch_0002_batch_000007" and run.checkpoint(2).name == "epoch_0002"
    for epoch, batch in ((1, 0), (2, 0), (2, 7), (2, 12)):
        run.checkpoint(epoch, batch).mkdir(parents=True)
    run.temp_checkpoint(2, 20).mkdir()
    assert run.latest_checkpoint() == (2, run.checkpoint(2, 12))  # the newest, mid-epoch, complete one
    assert [e for e, _ in run.complete_checkpoints()] == [1, 2]  # epoch ends only
    run.prune_checkpoints(keep=2, best_epoch=1)
    assert [name for name, _ in run.all_checkpoints()] == [(1, 0), (2, 0), (2, 12)]  # only the newest mid-epoch one
    run.checkpoint(3).mkdir()
    run.prune_checkpoints(keep=2, best_epoch=1)
    assert [name for name, _ in run.all_checkpoints()] == [(1, 0), (2, 0), (3, 0)]  # passed: worth nothing now


def test_atomic_writes_leave_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    write_jsonl(tmp_path / "m.jsonl", [{"epoch": 1}, {"epoch": 2}])
    assert read_jsonl(tmp_path / "m.jsonl") == [{"epoch": 1}, {"epoch": 2}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "m.jsonl"]
