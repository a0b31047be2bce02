"""Measure the input pipeline, the Trainer's step and end-to-end training speed (images/s).

    python launch/bench.py recipe=resnet18_512 data.root=/data/sartaj
    python launch/bench.py recipe=resnet18_224 data.root=/data/sartaj --pipelines=cached,pil --json
    python launch/bench.py recipe=resnet18_512 data.root=... --steps=6 --rounds=3 train.channels_last=false
    python launch/bench.py recipe=resnet18_512 data.root=... --notebook   # against the notebooks' recipe

After warm-up: pipeline_img_s (input alone), model_img_s (the Trainer's step on a batch
already on the device: the bound), train_img_s (the Trainer's step on real batches), and
train/model, for each pipeline; with --notebook, the notebooks' recipe (fp32, PIL, NCHW, Adam,
batch 16) trains in windows alternating with the first pipeline's, and vs notebook is the
toolkit's speed over it. Model and training steps alternate in --rounds windows of
--steps steps each, so drift in the machine's speed cancels out of the ratio. With --json
the last output line is one JSON object. The defaults take under 5 minutes at 512 px on 2
CPU cores without bf16 units; raise --steps and --rounds for tighter figures.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

from brainmri import shell
from brainmri.errors import BrainMRIError

RECIPES = shell.recipes_beside(__file__)
PIPELINES = ("cached", "pil")


def pipelines(value: str) -> tuple[str, ...]:
    chosen = tuple(p for p in value.split(",") if p)
    bad = [p for p in chosen if p not in PIPELINES] or ([] if chosen else [value])
    if bad:
        raise BrainMRIError(f"names unknown pipeline {bad[0]!r} (choose from {','.join(PIPELINES)})")
    return chosen


FLAGS = [
    shell.Flag("--json"),
    shell.Flag("--notebook"),
    shell.Flag("--pipelines", "cached,pil", pipelines, ("cached",)),
    shell.Flag("--steps", "N", shell.whole_number(1), 2),
    shell.Flag("--warmup", "N", shell.whole_number(0), 1),
    shell.Flag("--rounds", "N", shell.whole_number(1), 2),
]


def vs_cells(r: dict) -> tuple[str, str]:
    return (f"{r['notebook_img_s']:.2f}", f"{r['vs_notebook']:.3f}") if "notebook_img_s" in r else ("", "")


def show(result: dict, chosen: Sequence[str]) -> None:
    from rich.table import Table

    from brainmri.reporting.console import console

    bf16 = "native bf16" if result["cpu_native_bf16"] else "no native bf16"
    table = Table(
        title=f"{result['model']} {result['image_size']}px, batch {result['batch_size']}, {result['precision']} "
        f"on {result['device']} ({result['cpu']}, {bf16})"
    )
    columns = ("pipeline", "pipeline img/s", "model img/s", "train img/s", "train/model", "TFLOP/s", "of peak")
    vs = "notebook" in result
    columns += ("notebook img/s", "vs notebook") if vs else ()
    for column in columns:
        table.add_column(column, justify="right" if column != "pipeline" else "left")
    for p in chosen:
        r = result[p]
        share = f"{r['fraction_of_peak']:.1%}" if r["fraction_of_peak"] is not None else "-"
        table.add_row(
            p,
            f"{r['pipeline_img_s']:.1f}",
            f"{r['model_img_s']:.2f}",
            f"{r['train_img_s']:.2f}",
            f"{r['ratio']:.3f}",
            f"{r['train_tflops']:.3f}",
            share,
            *(vs_cells(r) if vs else ()),
        )
    console.print(table)
    extras = [
        f"cache build {result['cache_build_s']} s" if "cache_build_s" in result else "",
        f"cache on the device ({result['cache_upload_s']} s to load)" if result.get("cache_on_device") else "",
        f"one pil epoch ~{result['pil_epoch_s']} s" if "pil_epoch_s" in result else "",
        f"peak RSS {result['peak_rss_mb']} MB",
        f"{result['train_gflop_per_image']} GFLOP a training image; peak {result['peak_tflops']} TFLOP/s "
        f"({result['peak_basis']})",
    ]
    console.print(", ".join(e for e in extras if e))
    console.print("auto: " + "; ".join(result["auto_choices"]))
    if vs:
        console.print(f"the notebooks' recipe: {result['notebook']}")


def command(args: shell.Args) -> int:
    from brainmri.reporting.console import console
    from brainmri.training.bench import run_benchmark

    cfg = shell.load_run_config(args.settings, RECIPES, os.environ)
    Path(cfg.data.cache_dir).mkdir(parents=True, exist_ok=True)
    chosen = args["--pipelines"]
    result = run_benchmark(
        cfg,
        chosen,
        warmup=args["--warmup"],
        steps=args["--steps"],
        rounds=args["--rounds"],
        log=lambda m: console.log(m),
        isa_cap=os.environ.get("ONEDNN_MAX_CPU_ISA"),
        against_notebook=args["--notebook"],
    )
    show(result, chosen)
    if args["--json"]:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(shell.run(command, sys.argv[1:], FLAGS))
