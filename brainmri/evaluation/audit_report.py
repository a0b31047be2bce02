"""The dataset audit on the console: counts per split, sizes and modes, unreadable files,
duplicate groups, Training/Testing leakage and the first label conflicts.

``audit.json`` (:func:`brainmri.evaluation.audit.audit`) holds everything; this is the part a
person reads before deciding whether to trust a score computed on the folder.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from brainmri.data.samples import CLASS_NAMES


def show_audit(console: Console, report: dict, root: Path, near_threshold: int) -> None:
    """Print the audit ``report`` of ``root`` (near-duplicates within ``near_threshold`` bits)."""
    console.print(_counts(report, root))
    sizes = list(report["sizes"].items())
    console.print(f"{len(sizes)} distinct sizes; most common: " + ", ".join(f"{s} ({n})" for s, n in sizes[:5]))
    console.print("modes: " + ", ".join(f"{m} ({n})" for m, n in report["modes"].items()))
    if report["unreadable"]:
        console.print(
            f"[bold red]{len(report['unreadable'])} unreadable[/]: "
            + "; ".join(f"{p}: {r}" for p, r in list(report["unreadable"].items())[:5])
        )
    console.print(_duplicates(report["summary"], near_threshold))
    if "test" in report["counts"]:
        console.print(_leakage(report["summary"], sum(report["counts"]["test"].values())))
    for conflict in report["label_conflicts"][:5]:
        console.print(f"[yellow]label conflict[/] {conflict['labels']}: {', '.join(conflict['files'][:4])}")


def _counts(report: dict, root: Path) -> Table:
    table = Table(title=f"{report['images']} images in {root}")
    table.add_column("split")
    for name in CLASS_NAMES:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right")
    for split, per_class in report["counts"].items():
        table.add_row(split, *map(str, per_class.values()), str(sum(per_class.values())))
    return table


def _duplicates(s: dict, near_threshold: int) -> Table:
    table = Table(title=f"duplicates (near: perceptual hash within {near_threshold} bits)", show_header=False)
    table.add_row(
        "exact groups (same decoded pixels)", str(s["exact_groups"]), f"{s['exact_duplicate_images']} redundant images"
    )
    table.add_row("  within each split", ", ".join(f"{k} {v}" for k, v in s["exact_groups_within"].items()), "")
    table.add_row("  across Training/Testing", str(s["exact_groups_across_splits"]), "")
    table.add_row(
        "near-duplicate groups (re-encoded, resized...)",
        str(s["near_groups"]),
        f"{s['near_groups_across_splits']} across splits",
    )
    table.add_row("groups whose labels disagree", str(s["label_conflicts"]), "")
    return table


def _leakage(s: dict, n_test: int) -> Table:
    table = Table(title="Training/Testing leakage", show_header=False)
    table.add_row(
        "test images byte-identical to a Training image",
        str(s["test_images_byte_identical_to_training"]),
        f"of {n_test}",
    )
    table.add_row(
        "test images with the same pixels as a Training image",
        str(s["test_images_pixel_identical_to_training"]),
        "data.dedup=train_test drops these",
    )
    table.add_row(
        "test images with an exact or near copy in Training", str(s["test_images_near_duplicate_of_training"]), ""
    )
    return table
