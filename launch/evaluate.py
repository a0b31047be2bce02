"""Evaluate a trained model on its test (or validation) split with every clinical metric.

    python launch/evaluate.py run=runs/sartaj_gpu-20261126-041500
    python launch/evaluate.py run=RUN_DIR split=val tta=none   # default tta=auto: as the run scored itself
    python launch/evaluate.py run=RUN_DIR data.root=/elsewhere/sartaj checkpoint=RUN_DIR/checkpoints/epoch_0020
    python launch/evaluate.py run=runs/sweeps/demo_cv                 # the ensemble of a sweep's finished runs
    python launch/evaluate.py run=RUN_A,RUN_B,RUN_C                    # the ensemble of these runs
    python launch/evaluate.py run=RUN_A compare=RUN_B                  # paired bootstrap and McNemar, A vs B
    python launch/evaluate.py run=RUN_DIR robustness=true   # accuracy on corrupted copies of the split

Accuracy, balanced accuracy, macro/weighted F1, per-class precision, recall (sensitivity),
specificity and ROC AUC, expected calibration error, the confusion matrix, 95% stratified
bootstrap intervals of accuracy, balanced accuracy and macro-F1; on the test
split also the same without test images that duplicate a Training image. Writes
eval_<split>.json and figures/eval_<split>_{confusion_matrix,roc,reliability}.png into
the run directory; with the run's temperature (calibration.json), ECE and NLL before and
after calibration and a second reliability diagram, _reliability_calibrated.png.
With robustness=true: accuracy per corruption and severity instead, robustness_<split>.json
and figures/robustness_<split>.png (docs/robustness.md).
Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from brainmri import config as config_lib
from brainmri import shell
from brainmri.errors import BrainMRIError
from brainmri.evaluation.report import calibration_line, comparison_line, evaluation_figures
from brainmri.evaluation.robustness import write_robustness
from brainmri.evaluation.trained import (
    TrainedModel,
    compare_on_same_images,
    evaluate,
    load_models,
    resolve_tta,
    split_samples,
)
from brainmri.reporting.console import console, print_metrics, setup_logging
from brainmri.reporting.tracking import resolve_mode
from brainmri.rundir import atomic_write_json
from brainmri.scoring.intervals import intervals_json

RECIPES = shell.recipes_beside(__file__)


def command(args: shell.Args) -> int:
    cfg = config_lib.load_config(args.settings, RECIPES, schema=config_lib.EvalConfig)
    setup_logging(True)
    models = load_models(cfg.run, cfg.checkpoint)
    trained, ensemble = models[0], len(models) > 1
    if ensemble and cfg.split == "val":
        raise BrainMRIError("split=val with an ensemble: every member has its own validation split; use split=test")
    others = load_models(cfg.compare) if cfg.compare else None  # B's files checked before scoring A
    splits = split_samples(trained, cfg.data.root, cfg.split)
    folder = report_folder(cfg.run, trained) if ensemble else (trained.run_dir or trained.weights.parent)
    if cfg.robustness:
        samples = splits.test if cfg.split == "test" else splits.val
        mode = resolve_mode(trained.cfg.tracking.wandb, os.environ)
        written = write_robustness(models, splits.root, samples, cfg.split, cfg.tta, cfg.batch_size, folder, mode)
        console.print(f"wrote {', '.join(map(str, written))}")
        return 0
    result = evaluate(models, splits, cfg.split, cfg.tta, cfg.batch_size)
    split, m, n = cfg.split, result.metrics, result.size
    tta = sorted({resolve_tta(member, cfg.tta) for member in models})
    what = f"the ensemble of {len(models)} runs (mean probability)" if ensemble else str(trained.weights)
    print_metrics(
        {**m, "intervals": intervals_json(result.intervals, split)},
        split,
        f"{split} split, {n} images ({what}{', hflip TTA' if 'hflip' in tta else ''})",
    )
    if result.leakage_free is not None:
        free = result.leakage_free
        print_metrics(
            free,
            split,
            f"{split} split without the {len(result.leaks)} image(s) whose pixels equal a Training image "
            f"({free['size']} images)",
        )
        console.print(
            f"[bold]{split} accuracy {m[f'{split}/acc']:.3f}[/bold] on all {n} images; "
            f"[bold]{free[f'{split}/acc']:.3f}[/bold] on the {free['size']} that do not duplicate a Training image"
        )
    console.print(calibration_line(result, models))
    if cfg.compare:
        result.comparison = compare_on_same_images(result, others, splits, cfg.tta, cfg.batch_size)
        console.print(comparison_line(result.comparison, cfg.compare, n))
    weights = str(trained.weights) if not ensemble else [str(t.weights) for t in models]
    report = result.report(weights, tta[0] if len(tta) == 1 else tta, splits.root)
    stem = f"eval_{split}_ensemble" if ensemble else f"eval_{split}"
    out = folder / f"{stem}.json"
    atomic_write_json(out, report)
    pngs = evaluation_figures(result, trained.class_names, folder / "figures", split, stem)
    console.print(f"wrote {out} and {', '.join(p.name for p in pngs)} in {pngs[0].parent}")
    return 0


def report_folder(run: str, first: TrainedModel) -> Path:
    """An ensemble's report goes to its sweep folder, or beside its first run."""
    folder = Path(run).expanduser()
    return folder if (folder / "manifest.json").is_file() else first.run("writing the report").path


if __name__ == "__main__":
    sys.exit(shell.run(command, sys.argv[1:]))
