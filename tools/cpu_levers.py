"""Which training default costs speed on this CPU: channels_last, the slice size, fused AdamW.

    python tools/cpu_levers.py --size 512 --steps 2 --rounds 4
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python tools/cpu_levers.py   # an AVX2-only CPU's kernels

Six candidates (batches of 32 in slices of 32, 16, 8 and 4 images as ``train.micro_batch`` runs
them, NCHW against channels_last, and the original notebooks' choices) train ResNet18 on random
images in one process, in alternating windows of --steps steps for --rounds rounds, so the
machine's drift lands on all of them alike. Prints one line per window and a JSON line per
candidate with its pooled images per second.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from brainmri.config import ModelConfig, OptimConfig
from brainmri.models import build_model
from brainmri.training.distributed import resolve_precision
from brainmri.training.optim import build_optimizer

CANDIDATES = [
    {"channels_last": True, "batch": 32, "slice": 32, "optimizer": "fused AdamW"},  # whole batches
    {"channels_last": True, "batch": 32, "slice": 16, "optimizer": "fused AdamW"},
    {"channels_last": True, "batch": 32, "slice": 8, "optimizer": "fused AdamW"},
    {"channels_last": True, "batch": 32, "slice": 4, "optimizer": "fused AdamW"},
    {"channels_last": False, "batch": 32, "slice": 16, "optimizer": "fused AdamW"},
    {"channels_last": False, "batch": 16, "slice": 16, "optimizer": "Adam"},  # the notebooks'
]


def build(candidate: dict, size: int):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet18"), 3, size, 4)
    x = torch.randn(candidate["batch"], 3, size, size)
    if candidate["channels_last"]:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = (
        build_optimizer(model, OptimConfig())
        if candidate["optimizer"] == "fused AdamW"
        else torch.optim.Adam(model.parameters())
    )
    return model, optimizer, x, torch.randint(0, 4, (candidate["batch"],)), candidate["slice"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    precision = resolve_precision("auto", torch.device("cpu"))
    loss_fn = nn.CrossEntropyLoss(reduction="sum")

    def step(model, optimizer, x, y, size) -> None:
        for start in range(0, len(y), size):  # each slice's share of the batch's mean loss, as TrainStep does
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = loss_fn(model(x[start : start + size]).float(), y[start : start + size]) / len(y)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    built = [build(c, args.size) for c in CANDIDATES]
    for parts in built:
        step(*parts)  # warm-up: oneDNN picks its kernels on the first step
    totals = [[0, 0.0] for _ in CANDIDATES]
    for r in range(args.rounds):
        for candidate, parts, total in zip(CANDIDATES, built, totals):
            start = time.perf_counter()
            for _ in range(args.steps):
                step(*parts)
            seconds = time.perf_counter() - start
            total[0] += args.steps * candidate["batch"]
            total[1] += seconds
            print(f"round {r + 1} {candidate}: {args.steps * candidate['batch'] / seconds:.3f} img/s", flush=True)
    for candidate, (images, seconds) in zip(CANDIDATES, totals):
        print(json.dumps({**candidate, "precision": precision, "size": args.size, "img_s": round(images / seconds, 3)}))


if __name__ == "__main__":
    main()
