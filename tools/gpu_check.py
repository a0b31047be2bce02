"""Measure a GPU machine in one command: the benchmark at 224 and 512 px with the image cache on
the device and on the host, then a short ``sartaj_gpu`` training; one JSON object at the end.

    python tools/gpu_check.py --make-data ../shared/datasets/sartaj .gpu-data/sartaj   # here, once (~47 MB)
    bash tools/gpu_check.sh .gpu-data/sartaj                                          # on the GPU machine
    python tools/gpu_check.py --dry                                                   # every step, tiny, on a CPU

The resized copy keeps every file of both splits at 256 px (JPEG quality 90), small enough
to travel with a checkout; the benchmark resizes it to each size exactly as the real data
would be, so the images per second are those of the full-size dataset. ``--dry`` runs each
step on the bundled demo data at 32 px with one step per window: the test suite runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZE = 256


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


def run(args: list[str], timeout: float) -> tuple[int, str, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    sys.stderr.write(proc.stderr[-4000:] if proc.returncode else "")
    return proc.returncode, proc.stdout, time.perf_counter() - start


def bench(data: str, recipe: str, location: str, counts: list[str], extra: list[str], timeout: float) -> dict:
    code, out, seconds = run(["launch/bench.py", f"recipe={recipe}", f"data.root={data}", f"data.cache_location={location}",
                              "--json", *counts, *extra], timeout)
    result = json.loads(out.strip().splitlines()[-1]) if code == 0 else {"error": f"exit {code}"}
    return {**result, "wall_s": round(seconds, 1)}


def train(data: str, out: Path, epochs: int, extra: list[str], timeout: float) -> dict:
    code, _, seconds = run(["launch/train.py", "recipe=sartaj_gpu", f"data.root={data}", f"output_dir={out}",
                            f"train.epochs={epochs}", "tracking.wandb=disabled", *extra], timeout)
    if code != 0:
        return {"error": f"exit {code}", "wall_s": round(seconds, 1)}
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())
    return {
        "epochs": epochs, "wall_s": round(seconds, 1),
        "train_img_s_per_epoch": [round(r["throughput"], 1) for r in history],
        "epoch_s": [round(r["epoch_time"], 2) for r in history],
        "best_val_acc": max(r["val/acc"] for r in history),
        "test_acc": results.get("test/acc"),
    }


def check(data: str, dry: bool) -> dict:
    """Every measurement, each in its own process so one failure does not hide the others."""
    if dry:
        counts, extra, epochs, timeout = ["--steps=1", "--warmup=0", "--rounds=1"], ["data.image_size=32", "train.batch_size=8"], 1, 300
        sizes = {"224": ("demo", extra), "512": ("demo", extra)}
    else:
        counts, epochs, timeout = ["--steps=40", "--warmup=8", "--rounds=2"], 8, 240
        sizes = {"224": ("resnet18_224", ["train.batch_size=64"]), "512": ("resnet18_512", ["train.batch_size=32"])}
    out: dict = {"data": data, "dry": dry}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        cache = [f"data.cache_dir={scratch}/cache"]
        for size, (recipe, settings) in sizes.items():
            for location in ("device", "host"):
                out[f"bench_{size}_{location}"] = bench(data, recipe, location, counts, [*settings, *cache], timeout)
        out["sartaj_gpu"] = train(data, Path(scratch) / "run", epochs, [*cache, *(extra if dry else [])], timeout)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", help="the resized dataset (default with --dry: the bundled demo data)")
    parser.add_argument("--dry", action="store_true", help="every step on a CPU, tiny: proves the script works")
    parser.add_argument("--make-data", nargs=2, metavar=("SOURCE", "TARGET"), help="write the resized copy and stop")
    args = parser.parse_args()
    if args.make_data:
        source, target = map(Path, args.make_data)
        print(f"{make_data(source, target)} images resized to {SIZE} px in {target}")
        return 0
    if not args.data and not args.dry:
        parser.error("give the resized dataset (see --make-data), or --dry")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    result = check(args.data or "builtin:demo", args.dry)
    print(json.dumps(result))
    failed = [k for k, v in result.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
