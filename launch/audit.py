"""Audit a dataset folder before training on it (counts, sizes, unreadable files, duplicates,
leakage), or its labels after a cross-validation sweep (confident learning).

    python launch/audit.py data.root=/data/sartaj
    python launch/audit.py data.root=/data/sartaj --near-threshold 6 --out reports/sartaj
    python launch/audit.py labels runs/sweeps/cnn_lr_cv --out reports/labels   # after sweep.py ... cv=5

``labels``: first states the out-of-fold accuracy (95% CI) against the majority-class rate,
and refuses when the folds do not beat it (they have not learned: their suspects are noise);
then ranks the Training images whose label is most likely wrong, from the
out-of-fold probabilities of the sweep's best setting (or --setting NAME): a table,
label_issues.csv (file, given, suggested, score; train again with data.exclude=it) and
label_issues.png (the top suspects with both labels).

Prints a report and writes audit.json into --out (default: the current folder; the dataset,
which may be read-only, is never written). audit.json holds exact_groups and near_groups
(lists of groups of paths relative to data.root), label_conflicts, counts, sizes, modes,
unreadable files and a summary of the Training/Testing leakage.
Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path

from brainmri import shell
from brainmri.errors import BrainMRIError

RECIPES = shell.recipes_beside(__file__)


def near_threshold(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 32:
        raise BrainMRIError(f"wants a Hamming distance in 0..32, got {value!r}")
    return int(value)


FLAGS = [
    shell.Flag("--near-threshold", "N", near_threshold, 4),
    shell.Flag("--out", "DIR", Path, Path(".")),
    shell.Flag("--setting", "NAME", str, None),
    shell.Flag("--top", "N", shell.whole_number(1), 24),
]


def labels(args: shell.Args) -> int:
    """Label issues of a cross-validation sweep's out-of-fold predictions."""
    from brainmri.evaluation.label_audit import show_label_issues
    from brainmri.evaluation.labels import read_out_of_fold
    from brainmri.reporting.console import console

    if len(args.positional) != 2:
        raise BrainMRIError("usage: python launch/audit.py labels SWEEP_DIR [--setting NAME] [--top N] [--out DIR]")
    oof = read_out_of_fold(Path(args.positional[1]), args["--setting"])
    written = show_label_issues(oof, args["--top"], args["--out"])
    console.print(f"wrote {', '.join(map(str, written))}")
    return 0


def command(args: shell.Args) -> int:
    if args.positional[:1] == ["labels"]:
        return labels(args)
    if args.positional:
        raise BrainMRIError(f"expected key=value, got '{args.positional[0]}' (or: audit.py labels SWEEP_DIR)")
    from brainmri import config as config_lib
    from brainmri.data.loaders import auto_workers
    from brainmri.data.samples import resolve_root
    from brainmri.evaluation.audit import audit
    from brainmri.evaluation.audit_report import show_audit
    from brainmri.reporting.console import console
    from brainmri.rundir import atomic_write_json

    cfg = config_lib.load_config(args.settings, RECIPES, schema=config_lib.AuditConfig)
    threshold, out = args["--near-threshold"], args["--out"]
    root = resolve_root(cfg.data.root)
    if out.resolve() == root or root in out.resolve().parents:
        raise BrainMRIError(f"--out {out} is inside the dataset; the audit never writes into data.root")
    out.mkdir(parents=True, exist_ok=True)
    with console.status(f"reading every image in {root}"):
        report = audit(root, threshold, workers=auto_workers(1))
    show_audit(console, report, root, threshold)
    path = out / "audit.json"
    atomic_write_json(path, report)
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(shell.run(command, sys.argv[1:], FLAGS, positional=True))
