"""Measure a GPU machine in one command of at most 8 minutes: the benchmark at 224 and 512 px with the
image cache on the device and on the host, then a short ``sartaj_gpu`` training; one JSON object.

    python tools/gpu_check.py --make-data ../shared/datasets/sartaj .gpu-data/sartaj   # here, once (~47 MB)
    python tools/gpu_check.py --wheels .whl        # here: wheels of what the steps import that the GPU image lacks
    python tools/gpu_check.py .gpu-data/sartaj     # on the GPU machine (tools/gpu_check.sh installs the wheels)
    python tools/gpu_check.py --dry                # the same steps, smaller, on a CPU: the test suite runs it

Every step runs in its own process under its own time limit, and the limits fit the whole
check into ``BUDGET_S``: a step that fails or overruns is recorded in the JSON with its error
and the last lines it wrote, and the others still run. The JSON is printed at the end and,
with ``--out FILE``, rewritten after every step, so a check cut short still leaves its figures.

``--dry`` runs exactly the real steps (the same recipes and settings) on the bundled demo
data, with only the sizes made small (``DRY``). ``--wheels`` runs the dry steps with Python's
import log on, maps every module they imported to its distribution, and fetches a wheel of
each one that the GPU image does not hold (``tools/gpu_image_packages.txt``), at the version
installed here: the list is never written by hand.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
SIZE = 256
BUDGET_S = 480  # the whole check, start to JSON
IMAGE_PACKAGES = REPO / "tools" / "gpu_image_packages.txt"
DEVICE_PYTHON = "3.12"  # the GPU image's interpreter (wheels are fetched for it)


@dataclass(frozen=True)
class Step:
    """One measurement: a script of launch/ with its settings, and the seconds it may take."""

    name: str
    script: str
    args: tuple[str, ...]
    limit_s: int
    kind: str  # bench | train
    dry_args: tuple[str, ...] = field(default=())  # what --dry adds: smaller sizes only

    def command(self, data: str, scratch: Path, dry: bool) -> list[str]:
        extra = [f"data.root={data}", f"data.cache_dir={scratch}/cache", *self.args]
        if self.kind == "train":
            extra.append(f"output_dir={scratch}/{self.name}")
        extra += self.dry_args if dry else ()
        return [sys.executable, str(REPO / "launch" / self.script), *extra]


BENCH_COUNTS = ("--json", "--steps=40", "--warmup=8", "--rounds=2")
DRY_BENCH = ("--steps=1", "--warmup=0", "--rounds=1", "data.image_size=32", "train.batch_size=8")


def _steps() -> list[Step]:
    # 512 px: pretrained weights cannot be fetched on a machine without network, and the speed
    # of a step does not depend on where the weights came from.
    steps = []
    for size, recipe, batch in (("224", "resnet18_224", 64), ("512", "resnet18_512", 32)):
        for location in ("device", "host"):
            steps.append(
                Step(
                    name=f"bench_{size}_{location}",
                    script="bench.py",
                    kind="bench",
                    limit_s=60,
                    args=(
                        f"recipe={recipe}",
                        f"data.cache_location={location}",
                        f"train.batch_size={batch}",
                        "model.pretrained=false",
                        *BENCH_COUNTS,
                    ),
                    dry_args=DRY_BENCH,
                )
            )
    steps.append(
        Step(
            name="sartaj_gpu",
            script="train.py",
            kind="train",
            limit_s=180,
            args=("recipe=sartaj_gpu", "train.epochs=8", "tracking.wandb=disabled"),
            dry_args=("train.epochs=1", "data.image_size=32", "train.batch_size=8"),
        )
    )
    return steps


STEPS = _steps()
assert sum(s.limit_s for s in STEPS) + 30 <= BUDGET_S, "the step limits must fit the check's budget"


def make_data(source: Path, target: Path) -> int:
    """Every image of ``source`` (Training/ and Testing/), resized to SIZE, same relative paths."""
    from PIL import Image

    count = 0
    for path in sorted(source.rglob("*")):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png") or path.name.startswith("."):
            continue
        out = target / path.relative_to(source).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR).save(out, quality=90)
        count += 1
    return count


def run_step(step: Step, data: str, scratch: Path, dry: bool, limit_s: float, env: Optional[dict] = None) -> dict:
    """Run one step under its limit; its figures, or its error and the end of its output."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            step.command(data, scratch, dry), cwd=REPO, capture_output=True, text=True, timeout=limit_s, env=env
        )
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-1500:]
        return {
            "error": f"timed out after {limit_s:.0f} s",
            "log_tail": tail.decode(errors="replace") if isinstance(tail, bytes) else tail,
            "wall_s": round(time.perf_counter() - start, 1),
        }
    seconds = round(time.perf_counter() - start, 1)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "log_tail": proc.stderr[-1500:], "wall_s": seconds}
    try:
        figures = bench_figures(proc.stdout) if step.kind == "bench" else train_figures(scratch / step.name)
    except (ValueError, OSError, KeyError) as e:
        return {"error": f"unreadable output: {e}", "log_tail": (proc.stdout + proc.stderr)[-1500:], "wall_s": seconds}
    return {**figures, "wall_s": seconds}


def bench_figures(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def train_figures(out: Path) -> dict:
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())
    return {
        "epochs": len(history),
        "train_img_s_per_epoch": [round(r["throughput"], 1) for r in history],
        "epoch_s": [round(r["epoch_time"], 2) for r in history],
        "best_val_acc": max(r["val/acc"] for r in history),
        "test_acc": results.get("test/acc"),
        "mixed_precision": results.get("mixed_precision"),
    }


def check(data: str, dry: bool, out_file: Optional[Path] = None) -> dict:
    """Every step in turn, each limited so the whole check stays inside BUDGET_S."""
    started = time.perf_counter()
    result: dict = {"data": data, "dry": dry, "budget_s": BUDGET_S}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        for step in STEPS:
            left = BUDGET_S - 15 - (time.perf_counter() - started)
            if left < 10:
                result[step.name] = {"error": "skipped: the check's time budget is spent"}
            else:
                result[step.name] = run_step(step, data, Path(scratch), dry, min(step.limit_s, left))
            result["wall_s"] = round(time.perf_counter() - started, 1)
            if out_file is not None:
                out_file.write_text(json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------- wheels for the GPU image

# Imported when installed, never needed by the steps: timm imports wandb if it can, and the
# steps run with tracking.wandb=disabled. The import trace runs with these blocked, which
# also proves the steps pass without them, as they must on the GPU image.
OPTIONAL_IMPORTS = ("wandb",)
IMPORT_LINE = re.compile(r"^import time:\s+\d+\s+\|\s+\d+\s+\|\s*(\S+)\s*$")
RUN_BLOCKED = (
    "import runpy, sys\n"
    "for name in sys.argv[1].split(','): sys.modules[name] = None  # import raises ImportError\n"
    "sys.argv = sys.argv[2:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def imported_modules(data: str = "builtin:demo") -> set[str]:
    """The top-level modules the steps import, from Python's import log of their dry runs."""
    modules: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="gpu-check-imports-") as scratch:
        env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
        for step in STEPS:
            # A cold cache per step: a warm one would skip imports (the perceptual hash of the scan).
            python, *command = step.command(data, Path(scratch) / step.name, dry=True)
            blocked = [python, "-c", RUN_BLOCKED, ",".join(OPTIONAL_IMPORTS), *command]
            proc = subprocess.run(blocked, cwd=REPO, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"{step.name} failed in its dry run: {proc.stderr.strip().splitlines()[-1:]}")
            modules |= {m.group(1).split(".")[0] for m in map(IMPORT_LINE.match, proc.stderr.splitlines()) if m}
    return modules - set(OPTIONAL_IMPORTS)  # logged as attempts, and refused


def brainmri_closure(present: set[str]) -> set[str]:
    """brainmri's requirements and theirs, not descending into a distribution of the GPU
    image: what that image's version of a package needs, the image brings."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = ["brainmri"]
    while todo:
        name = todo.pop()
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue  # an extra's, or another platform's
            dep = canonical(requirement.name)
            if dep not in seen and dep not in OPTIONAL_IMPORTS:
                seen.add(dep)
                if dep not in present:
                    todo.append(dep)
    return seen


def missing_distributions(modules: set[str], present: set[str]) -> set[str]:
    """The distributions to carry: those the steps imported a module of, that brainmri needs
    (:func:`brainmri_closure`) and that the GPU image does not hold."""
    by_module = importlib.metadata.packages_distributions()
    imported = {canonical(d) for module in modules for d in by_module.get(module, [])}
    return (imported & brainmri_closure(present)) - present


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages() -> set[str]:
    lines = IMAGE_PACKAGES.read_text().splitlines()
    return {canonical(line.strip()) for line in lines if line.strip() and not line.startswith("#")}


def fetch_wheels(target: Path) -> list[str]:
    """Wheels of every imported distribution the GPU image lacks, plus brainmri's own."""
    present = image_packages()
    missing = sorted(missing_distributions(imported_modules(), present))
    target.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in missing]
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 27, 28)] + ["--platform=manylinux2014_x86_64"]
    for pin in pins:
        binary = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                f"--python-version={DEVICE_PYTHON}",
                "--implementation=cp",
                *platforms,
                "-d",
                str(target),
                pin,
            ],
            capture_output=True,
            text=True,
        )
        if binary.returncode != 0:  # pure Python published as source only: build the wheel here
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(target), pin], check=True
            )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(target), str(REPO)],
        check=True,
    )
    return pins


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", help="the resized dataset (default with --dry: the bundled demo data)")
    parser.add_argument("--dry", action="store_true", help="every step, smaller, on a CPU: proves the check works")
    parser.add_argument("--out", type=Path, help="also write the JSON here after every step")
    parser.add_argument("--make-data", nargs=2, metavar=("SOURCE", "TARGET"), help="write the resized copy and stop")
    parser.add_argument("--wheels", type=Path, metavar="DIR", help="fetch the wheels the GPU image lacks and stop")
    parser.add_argument("--list-imports", action="store_true", help="print the distributions the steps import and stop")
    args = parser.parse_args()
    if args.make_data:
        source, target = map(Path, args.make_data)
        print(f"{make_data(source, target)} images resized to {SIZE} px in {target}")
        return 0
    if args.list_imports:
        present = image_packages()
        modules = imported_modules()
        print(
            json.dumps(
                {"modules": sorted(modules), "missing_on_gpu_image": sorted(missing_distributions(modules, present))}
            )
        )
        return 0
    if args.wheels:
        pins = fetch_wheels(args.wheels)
        print(f"wheels for {', '.join(pins) or 'nothing'} and brainmri in {args.wheels}")
        return 0
    if not args.data and not args.dry:
        parser.error("give the resized dataset (see --make-data), or --dry")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    result = check(args.data or "builtin:demo", args.dry, args.out)
    print(json.dumps(result))
    failed = [k for k, v in result.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
