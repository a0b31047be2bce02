"""Evaluate a trained model on its test (or validation) split with every clinical metric.

    python launch/evaluate.py run=runs/sartaj_gpu-20261126-041500
    python launch/evaluate.py run=RUN_DIR split=val tta=hflip
    python launch/evaluate.py run=RUN_DIR data.root=/elsewhere/sartaj checkpoint=RUN_DIR/checkpoints/epoch_0020

Accuracy, balanced accuracy, macro/weighted F1, per-class precision, recall (sensitivity),
specificity and ROC AUC, expected calibration error, the confusion matrix; on the test
split also the same without test images that duplicate a Training image. Writes
eval_<split>.json and figures/eval_<split>_{confusion_matrix,roc,reliability}.png into
the run directory. Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import sys

import cli
from brainmri import config as config_lib
from brainmri.console import console, print_metrics, setup_logging
from brainmri.evaluation import evaluate, evaluation_figures, load_trained, split_samples
from brainmri.rundir import atomic_write_json


def command(args: cli.Args) -> int:
    cfg = config_lib.load_config(args.settings, cli.RECIPES, schema=config_lib.EvalConfig)
    setup_logging(True)
    trained = load_trained(cfg.run, cfg.checkpoint)
    splits = split_samples(trained, cfg.data.root, cfg.split)
    result = evaluate(trained, splits, cfg.split, cfg.tta, cfg.batch_size)
    split, m = cfg.split, result["metrics"]
    n = len(result["targets"])
    print_metrics(m, split, f"{split} split, {n} images ({trained.weights}{', hflip TTA' if cfg.tta == 'hflip' else ''})")
    leaks = result["leaks"]
    if result["leakage_free"] is not None:
        free = result["leakage_free"]
        print_metrics(free, split, f"{split} split without the {len(leaks)} image(s) whose pixels equal a Training image ({free['size']} images)")
        console.print(
            f"[bold]{split} accuracy {m[f'{split}/acc']:.3f}[/bold] on all {n} images; "
            f"[bold]{free[f'{split}/acc']:.3f}[/bold] on the {free['size']} that do not duplicate a Training image"
        )
    report = {
        "split": split,
        "size": n,
        "weights": str(trained.weights),
        "tta": cfg.tta,
        "data_root": str(splits.root),
        **m,
        "train_test_leaks": len(leaks),
        "leaked_files": sorted(leaks),
        "leakage_free": result["leakage_free"],
    }
    run = trained.run("writing the report")
    out = run.path / f"eval_{split}.json"
    atomic_write_json(out, report)
    pngs = evaluation_figures(result, trained.class_names, run.path / "figures", split)
    console.print(f"wrote {out} and {', '.join(p.name for p in pngs)} in {pngs[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(command, sys.argv[1:]))
