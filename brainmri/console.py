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


def print_results(results: dict[str, Any]) -> None:
    """Test metrics as a per-class table plus the headline numbers."""
    if results.get("test") is None and "test/acc" not in results:
        console.print(f"[bold]no test split[/bold]; best epoch {results['best_epoch']}")
        return
    table = Table(title=f"test results (best epoch {results['best_epoch']}, {results['test/size']} images)")
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, m in results["per_class"].items():
        table.add_row(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    table.add_section()
    table.add_row("[bold]accuracy", "", "", f"[bold]{results['test/acc']:.3f}", str(results["test/size"]))
    table.add_row("[bold]macro-F1", "", "", f"[bold]{results['test/macro_f1']:.3f}", "")
    console.print(table)
    cm = Table(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    for name in results["class_names"]:
        cm.add_column(name, justify="right")
    for name, row in zip(results["class_names"], results["confusion_matrix"]):
        cm.add_row(name, *map(str, row))
    console.print(cm)
