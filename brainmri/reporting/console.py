"""What the main process shows a person: the resolved config, a model summary, results.

Only entry scripts call these; the library itself logs through ``logging``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.syntax import Syntax
from rich.table import Table

# Off a terminal (job logs, CI) rich would assume 80 columns and fold every table.
console = Console(width=None if sys.stdout.isatty() else 140)


def setup_logging(is_main: bool, level: int = logging.INFO) -> None:
    """Rich logging on the main process; other ranks only say warnings and errors."""
    logging.basicConfig(
        level=level if is_main else logging.WARNING,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)],
        force=True,
    )
    # Each node builds its own image cache: every rank says when it builds or waits.
    logging.getLogger("brainmri.data.cache").setLevel(level)
    # Accelerate reports every file it checkpoints at INFO; one line per epoch is ours.
    for noisy in ("accelerate", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def print_config(yaml_text: str, title: str = "resolved config") -> None:
    console.rule(title)
    console.print(Syntax(yaml_text, "yaml", theme="ansi_dark", background_color="default"))


def print_model_summary(name: str, params: int, in_chans: int, image_size: int) -> None:
    table = Table(title="model", show_header=False)
    table.add_row("name", name)
    table.add_row("parameters", f"{params:,}")
    table.add_row("input", f"{in_chans}x{image_size}x{image_size}")
    console.print(table)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def print_metrics(metrics: dict[str, Any], split: str, title: str) -> None:
    """Per-class precision, recall (sensitivity), specificity, F1 and AUC, the headline
    numbers, then the confusion matrix: one split's :func:`brainmri.scoring.metrics.classification_metrics`."""
    table = Table(title=title)
    for column in ("class", "precision", "recall (sens.)", "specificity", "f1", "ROC AUC", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, m in metrics["per_class"].items():
        table.add_row(
            name,
            _fmt(m["precision"]),
            _fmt(m["recall"]),
            _fmt(m.get("specificity")),
            _fmt(m["f1"]),
            _fmt(m.get("auroc")),
            str(m["support"]),
        )
    table.add_section()
    size = sum(m["support"] for m in metrics["per_class"].values())
    headline = [
        ("accuracy", "acc"),
        ("balanced accuracy", "balanced_acc"),
        ("macro-F1", "macro_f1"),
        ("weighted F1", "weighted_f1"),
        ("macro ROC AUC", "auroc_macro"),
        ("ECE (15 bins)", "ece"),
    ]
    for label, key in headline:
        if f"{split}/{key}" in metrics:
            table.add_row(
                f"[bold]{label}",
                "",
                "",
                "",
                f"[bold]{_fmt(metrics[f'{split}/{key}'])}",
                "",
                str(size) if key == "acc" else "",
            )
    console.print(table)
    if "intervals" in metrics:
        console.print(interval_line(metrics["intervals"], split))
    cm = Table(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    for name in metrics["class_names"]:
        cm.add_column(name, justify="right")
    for name, row in zip(metrics["class_names"], metrics["confusion_matrix"]):
        cm.add_row(name, *map(str, row))
    console.print(cm)


def interval_line(intervals: dict[str, Any], split: str) -> str:
    """``accuracy 0.912 [0.884, 0.937], ...`` from a report's ``intervals`` entry
    (:func:`brainmri.scoring.intervals.intervals_json`)."""
    names = {"acc": "accuracy", "balanced_acc": "balanced accuracy", "macro_f1": "macro-F1"}
    parts = [
        f"{label} {i['value']:.3f} [{i['low']:.3f}, {i['high']:.3f}]"
        for key, label in names.items()
        if (i := intervals.get(f"{split}/{key}")) is not None
    ]
    spec = intervals.get("bootstrap", {})
    return (
        ", ".join(parts) + f" ({spec.get('level', 0.95):.0%} CI, stratified bootstrap, "
        f"{spec.get('resamples')} resamples, seed {spec.get('seed')})"
    )


def print_results(results: dict[str, Any]) -> None:
    """Test metrics of a finished training run (results.json)."""
    if results.get("test") is None and "test/acc" not in results:
        console.print(f"[bold]no test split[/bold]; best epoch {results['best_epoch']}")
        return
    print_metrics(results, "test", f"test results (best epoch {results['best_epoch']}, {results['test/size']} images)")
