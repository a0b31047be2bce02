"""brainmri/shell.py: the shell every entry script shares."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainmri import shell as cli
from brainmri.errors import BrainMRIError
from tests.conftest import REPO

FLAGS = [
    cli.Flag("--dry-run"),
    cli.Flag("--steps", "N", cli.whole_number(1), 8),
    cli.Flag("--out", "DIR", Path, Path(".")),
]


def test_settings_flags_and_defaults():
    args = cli.parse(["recipe=demo", "--dry-run", "--steps=3", "--out", "x", "optim.lr=1e-3"], FLAGS)
    assert args.settings == ["recipe=demo", "optim.lr=1e-3"]
    assert args["--dry-run"] is True and args["--steps"] == 3 and args["--out"] == Path("x")
    assert cli.parse([], FLAGS).flags == {"--dry-run": False, "--steps": 8, "--out": Path(".")}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--wait"], "unknown option --wait (options: --dry-run, --steps=N, --out=DIR; everything else is key=value)"),
        (["--steps=many"], "--steps wants a whole number >= 1, got 'many'"),
        (["--steps=0"], "--steps wants a whole number >= 1, got '0'"),
        (["--out"], "--out needs a value (--out=DIR)"),
        (["demo"], "expected key=value, got 'demo'"),
    ],
)
def test_mistakes_are_one_toolkit_error(argv, message):
    with pytest.raises(BrainMRIError) as e:
        cli.parse(argv, FLAGS)
    assert str(e.value) == message


def test_positional_arguments_and_paths_with_equals(tmp_path):
    odd = tmp_path / "a=b.png"
    odd.write_bytes(b"")
    args = cli.parse(["run=r", str(odd), "scans/x=1.png", "scans/"], positional=True)
    assert args.settings == ["run=r"] and args.positional == [str(odd), "scans/x=1.png", "scans/"]


def test_run_turns_toolkit_errors_into_one_line_and_exit_2(capsys):
    def fails(args):
        raise BrainMRIError("data.root does not exist: /nope")

    assert cli.run(fails, ["a=1"]) == 2
    assert capsys.readouterr().err == "error: data.root does not exist: /nope\n"
    assert cli.run(fails, ["a=1"], quiet=True) == 2 and capsys.readouterr().err == ""
    assert cli.run(lambda args: 0, ["a=1"]) == 0


def test_default_cache_dir_prefers_node_local_scratch(tmp_path):
    assert cli.default_cache_dir({"SLURM_TMPDIR": "/scratch/job1", "TMPDIR": "/tmp/x"}) == Path(
        "/scratch/job1/brainmri-cache"
    )
    assert cli.default_cache_dir({"TMPDIR": "/tmp/x"}) == Path("/tmp/x/brainmri-cache")
    assert cli.default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "brainmri"


def test_machine_defaults_sit_under_the_recipe_and_the_command_line():
    cfg = cli.load_run_config(["recipe=demo"], REPO / "recipes", {"TMPDIR": "/tmp/node"})
    assert cfg.data.cache_dir == "/tmp/node/brainmri-cache"
    cfg = cli.load_run_config(["recipe=demo", "data.cache_dir=/mine"], REPO / "recipes", {"TMPDIR": "/tmp/node"})
    assert cfg.data.cache_dir == "/mine"
