"""Measure input pipeline, model step and end-to-end training speed (images/s).

    python launch/bench.py recipe=resnet18_512 data.root=/data/sartaj
    python launch/bench.py recipe=resnet18_224 data.root=/data/sartaj --json        # last line: one JSON object
    python launch/bench.py recipe=resnet18_512 data.root=... --pipelines pil train.mixed_precision=no train.channels_last=false

After warm-up: pipeline_img_s (input alone), model_img_s (steps on a batch already on the
device: the bound), train_img_s (real steps), and train/model, for each pipeline. Model and
training steps alternate in --rounds windows of --steps steps each, so drift in the machine's
speed cancels out of the ratio.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from brainmri import config as config_lib  # noqa: E402
from brainmri.errors import BrainMRIError  # noqa: E402
from launch.train import RECIPES, default_cache_dir  # noqa: E402


def main(argv: Sequence[str]) -> int:
    from rich.table import Table

    from brainmri.bench import run_benchmark
    from brainmri.console import console

    as_json = "--json" in argv
    pipelines: tuple[str, ...] = ("cached", "pil")
    counts = {"--steps": 8, "--warmup": 2, "--rounds": 2}
    rest = []
    try:
        for arg in (a for a in argv if a != "--json"):
            name, _, value = arg.partition("=")
            if name == "--pipelines":
                pipelines = tuple(p for p in value.split(",") if p)
            elif name in counts:
                if not value.isdigit() or (name != "--warmup" and int(value) == 0):
                    raise BrainMRIError(f"{name} wants a whole number{' >= 1' if name != '--warmup' else ''}, got {value!r}")
                counts[name] = int(value)
            else:
                rest.append(arg)
        bad = [p for p in pipelines if p not in ("cached", "pil")] or [a for a in rest if a.startswith("-")]
        if bad:
            raise BrainMRIError(f"unknown option or pipeline {bad[0]} (options: --json, --pipelines=cached,pil, --steps=N, --warmup=N, --rounds=N)")
        cfg = config_lib.load_config(rest, RECIPES)
        if cfg.data.cache_dir is None:
            cfg.data.cache_dir = str(default_cache_dir(os.environ))
        Path(cfg.data.cache_dir).mkdir(parents=True, exist_ok=True)
        result = run_benchmark(cfg, pipelines, warmup=counts["--warmup"], steps=counts["--steps"], rounds=counts["--rounds"], log=lambda m: console.log(m))
    except BrainMRIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = Table(title=f"{result['model']} {result['image_size']}px, batch {result['batch_size']}, {result['precision']} on {result['device']}")
    for column in ("pipeline", "pipeline img/s", "model img/s", "train img/s", "train/model"):
        table.add_column(column, justify="right" if column != "pipeline" else "left")
    for p in pipelines:
        r = result[p]
        table.add_row(p, f"{r['pipeline_img_s']:.1f}", f"{r['model_img_s']:.1f}", f"{r['train_img_s']:.1f}", f"{r['ratio']:.2f}")
    console.print(table)
    extras = [f"cache build {result['cache_build_s']} s" if "cache_build_s" in result else "",
              f"cache on the device ({result['cache_upload_s']} s to load)" if result.get("cache_on_device") else "",
              f"one pil epoch ~{result['pil_epoch_s']} s" if "pil_epoch_s" in result else "", f"peak RSS {result['peak_rss_mb']} MB"]
    console.print(", ".join(e for e in extras if e))
    if as_json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
