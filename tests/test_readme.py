"""The README cannot rot: its commands still run, it stays a short guide, its links resolve.

Every command line in README.md's fenced code blocks that starts with ``python launch/``
(or ``accelerate launch ... launch/train.py``, or follows ``&&``) is checked:

- ``train.py``, ``submit.py`` and ``sweep.py sweep=...`` run as subprocesses from the repo
  root with ``--dry-run`` added: no data is read (``data.root`` stays as written), nothing
  is submitted (``slurm.check_resources=false``: the request is not compared with this
  machine's ``sinfo``), and ``output_dir`` values point into a temporary folder so that a
  run already there cannot make the dry run refuse. Exit code 0 expected.
- every other script (``evaluate.py``, ``predict.py``, ``calibrate.py``, ``audit.py``,
  ``bench.py``, ``sweep.py status``), and a command with placeholders (``<that run>``,
  ``RUN_DIR``), is checked for parsing only: the script exists and imports, its options
  are ones it declares, and its settings are valid keys of ``brainmri/config.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from brainmri import config as config_lib

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
LAUNCH = REPO / "launch"
RECIPES = REPO / "recipes"
MAX_LINES = 400
SECTIONS = ("data.", "model.", "train.", "optim.", "augment.", "tracking.", "slurm.", "figures.")
# The schema that validates all of a script's settings, where it has one.
SCHEMAS = {"evaluate": "EvalConfig", "predict": "EvalConfig", "export": "EvalConfig", "audit": "AuditConfig"}
PLACEHOLDER = re.compile(r"<[^>]*>|\b[A-Z][A-Z0-9]*_(?:DIR|FILE|PATH)\b|\.\.\.$")
DRY_RUN_TIMEOUT = 120


@dataclass(frozen=True)
class Command:
    line: str  # as written in the README (continuations joined)
    script: str  # launch/<script>.py
    args: tuple[str, ...]

    @property
    def settings(self) -> list[str]:
        """``key=value`` arguments (a path that holds "=" is not one)."""
        return [a for a in self.args if not a.startswith("-") and "=" in a and "/" not in a.partition("=")[0]]

    @property
    def has_placeholder(self) -> bool:
        return any(PLACEHOLDER.search(a) and not a.startswith("data.root=") for a in self.args)

    @property
    def dry_runnable(self) -> bool:
        if self.has_placeholder:
            return False
        if self.script == "sweep":
            return any(s.startswith("sweep=") for s in self.settings)
        return self.script in ("train", "submit")


def fenced_lines(text: str) -> list[str]:
    """The lines inside ``` blocks, with backslash continuations joined."""
    lines, inside, pending = [], False, ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        lines.append(line)
    return lines


def parse_command(part: str) -> Command | None:
    """A ``python launch/X.py ...`` or ``accelerate launch ... launch/X.py ...`` command, else None."""
    part = part.strip()
    if not (part.startswith("python launch/") or part.startswith("accelerate launch ")):
        return None
    tokens = shlex.split(part, comments=True)
    start = next((i for i, t in enumerate(tokens) if t.startswith("launch/") and t.endswith(".py")), None)
    assert start is not None, f"no launch/ script in README command: {part}"
    return Command(part, Path(tokens[start]).stem, tuple(tokens[start + 1 :]))


def readme_commands() -> list[Command]:
    commands: dict[tuple, Command] = {}
    for line in fenced_lines(README.read_text()):
        for part in line.split("&&"):
            cmd = parse_command(part)
            if cmd is not None:
                commands.setdefault((cmd.script, cmd.args), cmd)
    return list(commands.values())


COMMANDS = readme_commands()
DRY_RUNS = [c for c in COMMANDS if c.dry_runnable]
PARSE_ONLY = [c for c in COMMANDS if not c.dry_runnable]


def command_id(cmd: Command) -> str:
    return " ".join([cmd.script, *cmd.args])[:100]


def dry_run_argv(cmd: Command, scratch: Path) -> list[str]:
    args = []
    for a in cmd.args:
        key, _, value = a.partition("=")
        args.append(f"output_dir={scratch / Path(value).name}" if key == "output_dir" else a)
    if "--dry-run" not in args:
        args.append("--dry-run")
    if cmd.script in ("submit", "sweep"):
        args.append("slurm.check_resources=false")
    return [sys.executable, str(LAUNCH / f"{cmd.script}.py"), *args]


def run_dry(cmd: Command, scratch: Path) -> subprocess.CompletedProcess:
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(
        dry_run_argv(cmd, scratch), cwd=REPO, env=env, capture_output=True, text=True, timeout=DRY_RUN_TIMEOUT
    )


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """Every dry run, started at once on as many workers as there are cores."""
    scratch = tmp_path_factory.mktemp("readme-dry-runs")
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        yield {command_id(c): pool.submit(run_dry, c, scratch / f"cmd{i}") for i, c in enumerate(DRY_RUNS)}


def test_readme_has_commands_of_every_kind():
    scripts = {c.script for c in COMMANDS}
    assert {"train", "submit", "sweep", "evaluate"} <= scripts, scripts
    assert any(c.line.startswith("accelerate launch") for c in COMMANDS)
    assert any(c.args == ("recipe=demo",) and c.script == "train" for c in COMMANDS)  # the fresh-machine command


def test_fresh_machine_commands_are_as_ci_runs_them():
    lines = fenced_lines(README.read_text())
    assert "pip install -e . && python launch/train.py recipe=demo" in lines
    assert 'pip install -e ".[dev]" && python -m pytest -q' in lines


@pytest.mark.parametrize("cmd", DRY_RUNS, ids=command_id)
def test_readme_command_dry_runs(cmd: Command, dry_runs):
    proc = dry_runs[command_id(cmd)].result()
    assert proc.returncode == 0, f"{cmd.line}\nexit {proc.returncode}\n{proc.stderr[-3000:]}"


def launch_module(name: str):
    """An entry script's module, loaded from its file (its ``__main__`` block does not run)."""
    spec = importlib.util.spec_from_file_location(f"launch_{name}", LAUNCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("cmd", PARSE_ONLY, ids=command_id)
def test_readme_command_parses(cmd: Command):
    assert (LAUNCH / f"{cmd.script}.py").is_file(), f"{cmd.line}: no launch/{cmd.script}.py"
    module = launch_module(cmd.script)
    declared = {flag.name for flag in getattr(module, "FLAGS", [])}
    for arg in cmd.args:
        if arg.startswith("--"):
            assert arg.partition("=")[0] in declared, f"{cmd.line}: {cmd.script}.py has no option {arg}"
    settings = cmd.settings
    if cmd.script == "sweep":
        positional = [a for a in cmd.args if not a.startswith("-") and a not in settings]
        assert positional[:1] == ["status"] and len(positional) == 2, cmd.line
        settings = [s for s in settings if not s.startswith(("sweep=", "cv="))]
    # Keys of the training config (and the recipe they apply to) must exist and take these values.
    run_keys = [s for s in settings if s.startswith(SECTIONS) or s.startswith("recipe=")]
    if run_keys and not PLACEHOLDER.search(" ".join(run_keys)):
        config_lib.load_config(run_keys, RECIPES)
    elif run_keys:  # a placeholder value: the keys alone
        valid = set(config_lib.flat_dict(config_lib.to_dict(config_lib.Config())))
        for key in (s.partition("=")[0] for s in run_keys if not s.startswith("recipe=")):
            assert key in valid or key.startswith("slurm.additional."), f"{cmd.line}: unknown key {key}"
    # Scripts with a schema of their own (run=, split=, tta=...) validate all their settings;
    # a placeholder there (run=RUN_DIR) is just a string.
    schema = SCHEMAS.get(cmd.script)
    if schema and settings:
        config_lib.load_config(settings, RECIPES, schema=getattr(config_lib, schema))


# ---------------------------------------------------------------------------------------
# Length and links


def test_readme_is_a_short_guide():
    lines = README.read_text().count("\n")
    assert lines <= MAX_LINES, f"README.md has {lines} lines; keep it at most {MAX_LINES} (move detail to docs/)"


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> str:
    """The text outside fenced blocks and inline code."""
    out, inside = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def anchors(path: Path) -> set[str]:
    """The heading anchors GitHub makes for a Markdown file."""
    seen: dict[str, int] = {}
    out = set()
    inside = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if inside or not match:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


MARKDOWN = [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}:\n" + "\n".join(broken)
