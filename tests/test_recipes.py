"""Every recipe loads, opens with its comment, and dry-runs without touching data."""

from pathlib import Path

import pytest

from brainmri.config import load_config
from tests.conftest import REPO, python, run_script

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
PUBLISHED = {"cnn0_256": "33,488", "cnn1_256": "266,364", "cnn2_256": "146,860", "cnn3_256": "9,369,668"}


def test_required_recipes_exist():
    names = {p.stem for p in RECIPES}
    assert {"demo", "resnet18_512", "resnet18_224", "cnn0_256", "cnn1_256", "cnn2_256", "cnn3_256"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_and_documents_itself(path: Path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ") and any(
        ln.startswith("# Run:") and f"recipe={path.stem}" in ln for ln in lines[:4]
    )
    cfg = load_config([f"recipe={path.stem}"], REPO / "recipes")
    assert cfg.recipe == path.stem


def test_cnn_study_recipes_follow_the_paper():
    for name in ("cnn0_256", "cnn1_256", "cnn2_256", "cnn3_256"):
        cfg = load_config([f"recipe={name}"], REPO / "recipes")
        assert (cfg.optim.name, cfg.train.batch_size, cfg.train.epochs, cfg.data.image_size) == ("adam", 32, 10, 256)
        assert cfg.optim.lr == pytest.approx(7e-4 if name == "cnn3_256" else 3e-4)


def test_dry_run_every_recipe_prints_config_and_parameters(tmp_path):
    import contextlib
    import io

    from brainmri.training.entry import main  # in-process: one interpreter for all recipes

    for path in RECIPES:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            from brainmri.reporting import console

            console.console.file = buffer
            assert main(["--dry-run", f"recipe={path.stem}", "data.root=/does/not/exist"], REPO / "recipes", {}) == 0
        text = buffer.getvalue()
        assert "resolved config" in text and "parameters" in text
        if path.stem in PUBLISHED:
            assert PUBLISHED[path.stem] in text


def test_dry_run_subprocess_touches_no_data(tmp_path):
    proc = run_script(
        python(
            str(REPO / "launch" / "train.py"),
            "--dry-run",
            "recipe=cnn3_256",
            "data.root=/nope",
            f"output_dir={tmp_path / 'x'}",
        )
    )
    assert proc.returncode == 0, proc.stderr
    assert "9,369,668" in proc.stdout and not (tmp_path / "x").exists()
