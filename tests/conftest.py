"""Shared fixtures: small synthetic datasets in both Kaggle layouts, and script runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


LAYOUTS = {
    "sartaj": ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"],
    "masoud": ["glioma", "meningioma", "notumor", "pituitary"],
}


def make_image(label: int, size: int, seed: int) -> Image.Image:
    """A grey slice with a bright blob whose position depends on the class, plus noise.

    The blob moves and grows a little with the seed, so no two images are perceptual near
    copies (the leakage-aware split would rightly keep such copies together)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(40, 12, (size, size)).clip(0, 255)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = [(0.3, 0.3), (0.3, 0.7), (0.5, 0.5), (0.7, 0.5)][label]
    cy, cx = cy + rng.uniform(-0.08, 0.08), cx + rng.uniform(-0.08, 0.08)
    radius = size * (0.05 if label == 2 else 0.15) * rng.uniform(0.8, 1.25)
    img[(yy - cy * size) ** 2 + (xx - cx * size) ** 2 < radius**2] = 220
    return Image.fromarray(img.astype(np.uint8), mode="L").convert("RGB")


def make_dataset(
    root: Path,
    layout: str = "sartaj",
    train_per_class: int = 8,
    test_per_class: int = 3,
    size: int = 48,
    splits: tuple[str, str] = ("Training", "Testing"),
) -> Path:
    """A tiny dataset in one of the two public layouts, with their naming conventions."""
    for split, n in zip(splits, (train_per_class, test_per_class)):
        if n == 0:
            continue
        for label, folder in enumerate(LAYOUTS[layout]):
            out = root / split / folder
            out.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                prefix = "Tr" if split.lower().startswith("tr") else "Te"
                name = f"{prefix}-{folder[:2]}_{i:04d}.jpg" if layout == "masoud" else f"image ({i}).jpg"
                make_image(label, size, seed=hash((split, label, i)) % 2**32).save(out / name, quality=95)
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


def run_script(
    args: list[str], timeout: float = 600, env: dict | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's environment; output captured as text."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def two_processes(*args: str) -> list[str]:
    """``accelerate launch`` of launch/train.py as 2 CPU processes over gloo, with ``args``."""
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    launcher = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    return [accelerate, "launch", *launcher, "--dynamo_backend", "no", str(REPO / "launch" / "train.py"), *args]


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def fast_overrides(root: Path, out: Path, epochs: int = 2) -> list[str]:
    """A run that takes seconds on a CPU: the smallest study CNN at 64 px."""
    return [
        "recipe=demo",
        f"data.root={root}",
        f"output_dir={out}",
        "model.name=cnn0",
        "data.image_size=64",
        "data.num_workers=0",
        f"train.epochs={epochs}",
        "train.batch_size=8",
        "augment.preset=none",
        "tracking.wandb=disabled",
        f"data.cache_dir={out.parent / 'cache'}",  # the cached pipeline (default) stays inside the test's folder
    ]
