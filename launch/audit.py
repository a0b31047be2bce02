"""Audit a dataset folder before training on it: counts, sizes, unreadable files, duplicates, leakage.

    python launch/audit.py data.root=/data/sartaj
    python launch/audit.py data.root=/data/sartaj --near-threshold 6 --out reports/sartaj

Prints a report and writes audit.json into --out (default: the current folder; the dataset,
which may be read-only, is never written). audit.json holds exact_groups and near_groups
(lists of groups of paths relative to data.root), label_conflicts, counts, sizes, modes,
unreadable files and a summary of the Training/Testing leakage.
Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cli
from brainmri.errors import BrainMRIError


def near_threshold(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 32:
        raise BrainMRIError(f"wants a Hamming distance in 0..32, got {value!r}")
    return int(value)


FLAGS = [cli.Flag("--near-threshold", "N", near_threshold, 4), cli.Flag("--out", "DIR", Path, Path("."))]


def command(args: cli.Args) -> int:
    from rich.table import Table

    from brainmri import config as config_lib
    from brainmri.audit import audit
    from brainmri.console import console
    from brainmri.data.datasets import CLASS_NAMES, resolve_root
    from brainmri.data.loaders import auto_workers
    from brainmri.rundir import atomic_write_json

    cfg = config_lib.load_config(args.settings, cli.RECIPES, schema=config_lib.AuditConfig)
    threshold, out = args["--near-threshold"], args["--out"]
    root = resolve_root(cfg.data.root)
    if out.resolve() == root or root in out.resolve().parents:
        raise BrainMRIError(f"--out {out} is inside the dataset; the audit never writes into data.root")
    out.mkdir(parents=True, exist_ok=True)
    with console.status(f"reading every image in {root}"):
        report = audit(root, threshold, workers=auto_workers(1))
    counts = Table(title=f"{report['images']} images in {root}")
    counts.add_column("split")
    for name in CLASS_NAMES:
        counts.add_column(name, justify="right")
    counts.add_column("total", justify="right")
    for split, per_class in report["counts"].items():
        counts.add_row(split, *map(str, per_class.values()), str(sum(per_class.values())))
    console.print(counts)
    sizes = list(report["sizes"].items())
    console.print(f"{len(sizes)} distinct sizes; most common: " + ", ".join(f"{s} ({n})" for s, n in sizes[:5]))
    console.print("modes: " + ", ".join(f"{m} ({n})" for m, n in report["modes"].items()))
    if report["unreadable"]:
        console.print(f"[bold red]{len(report['unreadable'])} unreadable[/]: " + "; ".join(f"{p}: {r}" for p, r in list(report["unreadable"].items())[:5]))
    s = report["summary"]
    dup = Table(title=f"duplicates (near: perceptual hash within {threshold} bits)", show_header=False)
    dup.add_row("exact groups (same decoded pixels)", str(s["exact_groups"]), f"{s['exact_duplicate_images']} redundant images")
    dup.add_row("  within each split", ", ".join(f"{k} {v}" for k, v in s["exact_groups_within"].items()), "")
    dup.add_row("  across Training/Testing", str(s["exact_groups_across_splits"]), "")
    dup.add_row("near-duplicate groups (re-encoded, resized...)", str(s["near_groups"]), f"{s['near_groups_across_splits']} across splits")
    dup.add_row("groups whose labels disagree", str(s["label_conflicts"]), "")
    console.print(dup)
    if "test" in report["counts"]:
        n_test = sum(report["counts"]["test"].values())
        leak = Table(title="Training/Testing leakage", show_header=False)
        leak.add_row("test images byte-identical to a Training image", str(s["test_images_byte_identical_to_training"]), f"of {n_test}")
        leak.add_row("test images with the same pixels as a Training image", str(s["test_images_pixel_identical_to_training"]), "data.dedup=train_test drops these")
        leak.add_row("test images with an exact or near copy in Training", str(s["test_images_near_duplicate_of_training"]), "")
        console.print(leak)
    for conflict in report["label_conflicts"][:5]:
        console.print(f"[yellow]label conflict[/] {conflict['labels']}: {', '.join(conflict['files'][:4])}")
    path = out / "audit.json"
    atomic_write_json(path, report)
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(command, sys.argv[1:], FLAGS))
